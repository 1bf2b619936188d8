//! `warren perf`: a load tool for any AMQP 0-9-1 broker, in RabbitMQ
//! PerfTest's language, so that its figures read like PerfTest's:
//!
//! ```text
//! warren perf -h amqp://guest:guest@127.0.0.1:5672/%2f -x 1 -y 1 -s 16 -q 1000 -c 1000 --multi-ack-every 100 -z 10
//! id: test-1, time: 1.000s, sent: 812345 msg/s, received: 811002 msg/s, min/median/75th/95th/99th consumer latency: 210/1893/2650/4001/5123 µs
//! ...
//! ```
//!
//! The flags are PerfTest's where it has one (`-x` producers, `-y`
//! consumers, `-s` size, `-q` prefetch, `-c` confirm window, `-r` rate per
//! producer, `-z` seconds, `-C` messages per producer, `-a` auto-ack,
//! `--multi-ack-every`, `-u` queue, `-e` exchange, `-t` type, `-k`
//! routing key, `-f persistent`, `--queue-pattern` with
//! `--queue-pattern-from`/`-to`, `-h` the URI), and at the end it prints PerfTest's averages and, with `--json FILE`, a summary. Scenarios
//! PerfTest lacks come with `--scenario` (see [`scenarios`]): connection
//! churn, queue churn, idle connections with the broker's memory per
//! connection, and a heartbeat check under load.
//!
//! Each producer and consumer has a connection of its own. A message's
//! body starts with the time it was sent (µs on this process's clock), so
//! consumer latency is measured end to end; bodies shorter than 8 octets
//! carry no time.

mod publish;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Load for any AMQP 0-9-1 broker, with RabbitMQ PerfTest's flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "warren perf", disable_help_flag = true)]
pub struct Options {
    /// The broker's URI, amqp:// or amqps://.
    #[arg(short = 'h', long = "uri", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// For amqps://: the authorities to trust (a PEM file).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Producers.
    #[arg(short = 'x', long = "producers", default_value_t = 1)]
    pub producers: usize,
    /// Consumers.
    #[arg(short = 'y', long = "consumers", default_value_t = 1)]
    pub consumers: usize,
    /// Message size in octets.
    #[arg(short = 's', long = "size", default_value_t = 12)]
    pub size: usize,
    /// Consumer prefetch (basic.qos); 0 for none.
    #[arg(short = 'q', long = "qos", default_value_t = 0)]
    pub qos: u16,
    /// Publisher confirms, at most this many unconfirmed; 0 for none.
    #[arg(short = 'c', long = "confirm", default_value_t = 0)]
    pub confirm: usize,
    /// Messages per second per producer; 0 for as fast as possible.
    #[arg(short = 'r', long = "rate", default_value_t = 0)]
    pub rate: u64,
    /// Seconds to run; 0 to run until the message counts are done.
    #[arg(short = 'z', long = "time", default_value_t = 0)]
    pub time: u64,
    /// Messages each producer sends; 0 for no limit.
    #[arg(short = 'C', long = "pmessages", default_value_t = 0)]
    pub pmessages: u64,
    /// Consumers auto-ack (no_ack).
    #[arg(short = 'a', long = "autoack")]
    pub autoack: bool,
    /// Ack with `multiple` every this many messages; 0 acks each.
    #[arg(short = 'A', long = "multi-ack-every", default_value_t = 0)]
    pub multi_ack_every: u64,
    /// The queue; default a queue of the run's own, deleted at the end.
    #[arg(short = 'u', long = "queue")]
    pub queue: Option<String>,
    /// Message flags: `persistent` (delivery_mode 2, and durable queues).
    #[arg(short = 'f', long = "flag")]
    pub flag: Vec<String>,
    /// The exchange producers publish to. None: with `-t`, one of the run's
    /// own (declared, deleted at the end); without, the default exchange,
    /// each producer publishing to its queue by name.
    #[arg(short = 'e', long = "exchange")]
    pub exchange: Option<String>,
    /// The exchange's type when the run declares it: direct, fanout, topic.
    #[arg(short = 't', long = "type")]
    pub kind: Option<String>,
    /// With an exchange: the routing key producers publish with, and the
    /// key each queue is bound with. Without `-u` or a pattern, each
    /// consumer gets a queue of its own (PerfTest's way), so fanout to N
    /// queues is `-t fanout -y N`.
    #[arg(short = 'k', long = "routing-key", default_value = "perf.a.b")]
    pub routing_key: String,
    /// With an exchange: this many more bindings of the first queue, none
    /// matching the routing key (for topic, half `perf.<i>.*` and half
    /// `perf.*.x<i>`, so a lookup meets both wildcards and many siblings).
    #[arg(long, default_value_t = 0)]
    pub extra_bindings: usize,
    /// Queues named by this pattern, `%d` replaced by each number from
    /// --queue-pattern-from to --queue-pattern-to; producers and consumers
    /// are spread over them, one each by one each.
    #[arg(long)]
    pub queue_pattern: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub queue_pattern_from: usize,
    #[arg(long, default_value_t = 1)]
    pub queue_pattern_to: usize,
    /// What to run: publish-consume, connection-churn, queue-churn, idle,
    /// heartbeat-check.
    #[arg(long, default_value = "publish-consume")]
    pub scenario: String,
    /// idle: how many connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// The heartbeat the tool's connections ask for (idle,
    /// heartbeat-check; 0 elsewhere).
    #[arg(long, default_value_t = 2)]
    pub heartbeat: u16,
    /// The broker's process id, to read its resident memory (idle: per
    /// connection; publish-consume: before and at its peak).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// queue-churn: declare/delete pairs in flight at once.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// The tool's threads; 0 for one per core. On a machine the broker
    /// shares, one thread leaves the broker a core of its own.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Write a JSON summary here (`-` for standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The run's id in the report lines.
    #[arg(long, default_value = "test-1")]
    pub id: String,
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl Options {
    pub fn persistent(&self) -> bool {
        self.flag.iter().any(|f| f == "persistent")
    }
}

/// `warren perf ARGS`: `args` starts with the word `perf`.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let options = match Options::try_parse_from(args) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let built = match options.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren perf: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenarios::run(options.clone())) {
        Ok(summary) => {
            if let Some(path) = &options.json {
                let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
                let written = match path.to_str() {
                    Some("-") => {
                        println!("{text}");
                        Ok(())
                    }
                    _ => std::fs::write(path, text + "\n"),
                };
                if let Err(e) = written {
                    eprintln!("warren perf: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warren perf: {e}");
            ExitCode::FAILURE
        }
    }
}
