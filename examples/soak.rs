//! A soak run against the real binary: publishers with confirms and
//! consumers with acks (lapin, reconnecting when their connection is taken
//! from them), connection and queue churn, faults injected at random
//! through the HTTP API (kills, forced closes, blocks, latency, withheld
//! heartbeats), the memory alarm raised and cleared — for as long as asked.
//! At the end it checks what a user would: every confirmed message was
//! delivered, nothing panicked, the broker is still up, and resident memory
//! stayed flat once warm.
//!
//! ```sh
//! scripts/soak.sh 30          # thirty minutes (builds the release binary)
//! cargo run --release --example soak -- --minutes 1 --binary target/release/warren
//! ```
//!
//! `tests/soak_smoke.rs` runs the same for a few seconds under `cargo test`.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Options {
    pub binary: PathBuf,
    pub duration: Duration,
    pub queues: usize,
    pub publishers: usize,
    pub consumers: usize,
    /// Messages per second per publisher.
    pub rate: usize,
    /// How often resident memory is sampled.
    pub sample_every: Duration,
}

#[derive(Debug, Default)]
pub struct Report {
    pub confirmed: usize,
    pub delivered: usize,
    pub redeliveries: usize,
    /// Confirmed but never delivered.
    pub lost: Vec<String>,
    pub faults: usize,
    pub alarms: usize,
    pub churned: usize,
    pub reconnects: usize,
    /// (seconds since start, resident bytes).
    pub rss: Vec<(u64, usize)>,
    /// Log lines of the broker that mention a panic.
    pub panics: Vec<String>,
    pub alive_at_end: bool,
}

/// What the workers share.
struct Shared {
    amqp: SocketAddr,
    http: SocketAddr,
    queues: usize,
    stop: AtomicBool,
    confirmed: Mutex<HashSet<String>>,
    delivered: Mutex<HashSet<String>>,
    redeliveries: AtomicUsize,
    faults: AtomicUsize,
    alarms: AtomicUsize,
    churned: AtomicUsize,
    reconnects: AtomicUsize,
}

impl Shared {
    fn url(&self) -> String {
        // heartbeat 2: a client whose heartbeats are withheld notices in ~4 s.
        format!("amqp://guest:guest@{}/%2f?heartbeat=2", self.amqp)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A small xorshift generator: the soak needs variety, not a crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const STEP: Duration = Duration::from_secs(5);

async fn connect(shared: &Shared, name: &str) -> Option<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(STEP, Connection::connect(&shared.url(), props)).await.ok()?.ok()
}

async fn declare_queues(ch: &lapin::Channel, queues: usize) -> Option<()> {
    for q in 0..queues {
        let name = format!("soak-{q}");
        tokio::time::timeout(
            STEP,
            ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()),
        )
        .await
        .ok()?
        .ok()?;
    }
    Some(())
}

/// Publishes `rate` messages a second in batches, each batch confirmed
/// before the next; a batch interrupted by a lost connection is published
/// again on a new one (at least once).
async fn publisher(shared: Arc<Shared>, id: usize, rate: usize) {
    let mut seq = 0u64;
    let mut pending: Vec<String> = Vec::new();
    let batch = (rate / 10).max(1);
    while !shared.stopped() {
        let Some(conn) = connect(&shared, &format!("soak-publisher-{id}")).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let session = async {
            let ch = conn.create_channel().await.ok()?;
            ch.confirm_select(ConfirmSelectOptions::default()).await.ok()?;
            declare_queues(&ch, shared.queues).await?;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !shared.stopped() {
                tick.tick().await;
                while pending.len() < batch {
                    seq += 1;
                    pending.push(format!("{id}:{seq}"));
                }
                let mut confirms = Vec::new();
                for body in &pending {
                    // Spread over the queues by the sequence number's last digit.
                    let last = usize::from(body.as_bytes()[body.len() - 1]);
                    let queue = format!("soak-{}", last % shared.queues);
                    let confirm = ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            BasicProperties::default(),
                        )
                        .await
                        .ok()?;
                    confirms.push(confirm);
                }
                for confirm in confirms {
                    match tokio::time::timeout(STEP, confirm).await.ok()?.ok()? {
                        lapin::Confirmation::Ack(_) => {}
                        _ => return None,
                    }
                }
                shared.confirmed.lock().unwrap().extend(pending.drain(..));
            }
            let _ = conn.close(200, "done".into()).await;
            Some(())
        };
        if session.await.is_none() && !shared.stopped() {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Consumes a queue with manual acks (now and then a requeueing nack),
/// recording what arrives.
async fn consumer(shared: Arc<Shared>, id: usize) {
    let mut rng = Rng::new(id as u64 + 7);
    let queue = format!("soak-{}", id % shared.queues);
    loop {
        let Some(conn) = connect(&shared, &format!("soak-consumer-{id}")).await else {
            if shared.stopped() && shared.drained() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let session = async {
            let ch = conn.create_channel().await.ok()?;
            ch.basic_qos(50, BasicQosOptions::default()).await.ok()?;
            declare_queues(&ch, shared.queues).await?;
            let mut deliveries = ch
                .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .ok()?;
            loop {
                let next = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await;
                let delivery = match next {
                    Ok(Some(Ok(d))) => d,
                    Ok(_) => return None,
                    Err(_) if shared.stopped() && shared.drained() => {
                        let _ = conn.close(200, "done".into()).await;
                        return Some(());
                    }
                    Err(_) => continue,
                };
                if delivery.redelivered {
                    shared.redeliveries.fetch_add(1, Ordering::Relaxed);
                }
                if rng.below(100) == 0 {
                    delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.ok()?;
                    continue;
                }
                let body = String::from_utf8_lossy(&delivery.data).into_owned();
                delivery.ack(BasicAckOptions::default()).await.ok()?;
                shared.delivered.lock().unwrap().insert(body);
            }
        };
        match session.await {
            Some(()) => return,
            None => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Shared {
    /// Everything confirmed has been delivered.
    fn drained(&self) -> bool {
        let confirmed = self.confirmed.lock().unwrap();
        let delivered = self.delivered.lock().unwrap();
        confirmed.iter().all(|m| delivered.contains(m))
    }
}

/// Short-lived connections, channels and queues.
async fn churn(shared: Arc<Shared>) {
    let mut n = 0usize;
    while !shared.stopped() {
        n += 1;
        let round = async {
            let conn = connect(&shared, &format!("soak-churn-{n}")).await?;
            let ch = conn.create_channel().await.ok()?;
            let q = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions { exclusive: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .ok()?;
            ch.basic_publish(
                "".into(),
                q.name().clone(),
                BasicPublishOptions::default(),
                b"churn",
                BasicProperties::default(),
            )
            .await
            .ok()?;
            let _ = ch.basic_get(q.name().clone(), BasicGetOptions { no_ack: true }).await;
            ch.queue_delete(q.name().clone(), QueueDeleteOptions::default()).await.ok()?;
            conn.close(200, "churn".into()).await.ok()
        };
        if tokio::time::timeout(STEP, round).await.ok().flatten().is_some() {
            shared.churned.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request to the control API as guest; the status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.split(' ').nth(1)?.parse().ok()?, body.to_string()))
    };
    tokio::time::timeout(STEP, request).await.ok().flatten()
}

fn encode_path(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every few seconds, a fault on a random client connection.
async fn faults(shared: Arc<Shared>) {
    let mut rng = Rng::new(42);
    while !shared.stopped() {
        tokio::time::sleep(Duration::from_millis(2_000 + rng.below(3_000) as u64)).await;
        let Some((200, body)) = http(shared.http, "GET", "/api/connections", "").await else { continue };
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
        let names: Vec<String> =
            list.as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect();
        if names.is_empty() {
            continue;
        }
        let target = encode_path(&names[rng.below(names.len())]);
        let path = format!("/api/warren/connections/{target}/faults");
        let (on, off) = match rng.below(6) {
            0 => (r#"{"kill": true}"#, None),
            1 => (r#"{"force_close": "soak"}"#, None),
            2 => (r#"{"block": true}"#, Some(r#"{"block": false}"#)),
            3 => (r#"{"delivery_latency_ms": 200}"#, Some(r#"{"delivery_latency_ms": 0}"#)),
            4 => (r#"{"withhold_heartbeats": true}"#, None),
            _ => (r#"{"black_hole": true}"#, Some(r#"{"black_hole": false}"#)),
        };
        if http(shared.http, "POST", &path, on).await.is_some() {
            shared.faults.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(off) = off {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            let _ = http(shared.http, "POST", &path, off).await;
        }
    }
}

/// The memory alarm on for two seconds in every twenty.
async fn alarms(shared: Arc<Shared>) {
    while !shared.stopped() {
        tokio::time::sleep(Duration::from_secs(18)).await;
        if shared.stopped() {
            break;
        }
        if let Some((204, _)) = http(shared.http, "PUT", "/api/warren/alarms/memory", "").await {
            shared.alarms.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = http(shared.http, "DELETE", "/api/warren/alarms/memory", "").await;
    }
}

fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Starts the binary, runs the workers for `opts.duration`, lets the
/// consumers drain, and reports.
pub async fn run(opts: &Options) -> Report {
    let mut child = Command::new(&opts.binary)
        .args(["--port", "0", "--http-port", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", opts.binary.display()));
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).expect("ready line");
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("ready JSON");
    let addr = |k: &str| ready[k].as_str().unwrap().parse::<SocketAddr>().unwrap();
    let panics = Arc::new(Mutex::new(Vec::new()));
    {
        let panics = panics.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("panicked") || line.contains("overflowed its stack") {
                    panics.lock().unwrap().push(line);
                }
            }
        });
    }
    let shared = Arc::new(Shared {
        amqp: addr("amqp"),
        http: addr("http"),
        queues: opts.queues,
        stop: AtomicBool::new(false),
        confirmed: Mutex::default(),
        delivered: Mutex::default(),
        redeliveries: AtomicUsize::new(0),
        faults: AtomicUsize::new(0),
        alarms: AtomicUsize::new(0),
        churned: AtomicUsize::new(0),
        reconnects: AtomicUsize::new(0),
    });
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..opts.publishers {
        workers.spawn(publisher(shared.clone(), id, opts.rate));
    }
    let mut consumers = tokio::task::JoinSet::new();
    for id in 0..opts.consumers.max(opts.queues) {
        consumers.spawn(consumer(shared.clone(), id));
    }
    workers.spawn(churn(shared.clone()));
    workers.spawn(faults(shared.clone()));
    workers.spawn(alarms(shared.clone()));

    let start = Instant::now();
    let pid = child.id();
    let mut rss = Vec::new();
    while start.elapsed() < opts.duration {
        tokio::time::sleep(opts.sample_every.min(opts.duration.saturating_sub(start.elapsed()))).await;
        rss.push((start.elapsed().as_secs(), rss_bytes(pid)));
    }
    shared.stop.store(true, Ordering::Relaxed);
    // The workers stop within a step or two; an alarm left on is cleared.
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while workers.join_next().await.is_some() {} }).await;
    let _ = http(shared.http, "DELETE", "/api/warren/alarms/memory", "").await;
    let _ =
        tokio::time::timeout(Duration::from_secs(60), async { while consumers.join_next().await.is_some() {} }).await;

    let alive_at_end = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    let confirmed = shared.confirmed.lock().unwrap();
    let delivered = shared.delivered.lock().unwrap();
    let mut lost: Vec<String> = confirmed.iter().filter(|m| !delivered.contains(*m)).cloned().collect();
    lost.sort();
    let panics = panics.lock().unwrap().clone();
    Report {
        confirmed: confirmed.len(),
        delivered: delivered.len(),
        redeliveries: shared.redeliveries.load(Ordering::Relaxed),
        lost,
        faults: shared.faults.load(Ordering::Relaxed),
        alarms: shared.alarms.load(Ordering::Relaxed),
        churned: shared.churned.load(Ordering::Relaxed),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        rss,
        panics,
        alive_at_end,
    }
}

impl Report {
    /// Resident memory over the middle and the last third of the run (the
    /// first third is warm-up): (middle peak, last peak).
    pub fn rss_thirds(&self) -> (usize, usize) {
        let n = self.rss.len();
        let peak = |s: &[(u64, usize)]| s.iter().map(|r| r.1).max().unwrap_or(0);
        (peak(&self.rss[n / 3..2 * n / 3]), peak(&self.rss[2 * n / 3..]))
    }

    /// What went wrong, if anything.
    pub fn problems(&self, check_memory: bool) -> Vec<String> {
        let mut p = Vec::new();
        if !self.lost.is_empty() {
            p.push(format!(
                "{} confirmed messages never delivered, e.g. {:?}",
                self.lost.len(),
                &self.lost[..self.lost.len().min(5)]
            ));
        }
        if !self.panics.is_empty() {
            p.push(format!("the broker panicked: {:?}", self.panics));
        }
        if !self.alive_at_end {
            p.push("the broker exited".into());
        }
        if self.confirmed == 0 {
            p.push("nothing was confirmed".into());
        }
        let (middle, last) = self.rss_thirds();
        // Flat once warm: the last third's peak within 10 % (and 8 MiB of
        // noise) of the middle third's.
        if check_memory && last > middle + middle / 10 + (8 << 20) {
            p.push(format!("resident memory grew from {} MiB to {} MiB", middle >> 20, last >> 20));
        }
        p
    }

    pub fn print(&self) {
        let (middle, last) = self.rss_thirds();
        println!(
            "confirmed {}, delivered {} (redeliveries {}), lost {}; faults {}, alarms {}, churned connections {}, client reconnects {}",
            self.confirmed,
            self.delivered,
            self.redeliveries,
            self.lost.len(),
            self.faults,
            self.alarms,
            self.churned,
            self.reconnects
        );
        println!(
            "resident memory (MiB) by sample: {:?}",
            self.rss.iter().map(|(t, r)| format!("{t}s:{}", r >> 20)).collect::<Vec<_>>()
        );
        println!("peak resident memory: middle third {} MiB, last third {} MiB", middle >> 20, last >> 20);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let minutes: f64 = flag("--minutes").and_then(|m| m.parse().ok()).unwrap_or(30.0);
    let opts = Options {
        binary: flag("--binary").map_or_else(|| PathBuf::from("target/release/warren"), PathBuf::from),
        duration: Duration::from_secs_f64(minutes * 60.0),
        queues: 4,
        publishers: 4,
        consumers: 4,
        rate: 1_000,
        sample_every: Duration::from_secs(10),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(run(&opts));
    report.print();
    let problems = report.problems(true);
    if problems.is_empty() {
        println!("soak passed");
    } else {
        for p in &problems {
            println!("FAILED: {p}");
        }
        std::process::exit(1);
    }
}
