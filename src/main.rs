//! The `warren` binary: a standalone broker with RabbitMQ's defaults.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use tokio::signal::unix::{signal, SignalKind};
use warren::broker::alarm::Resource;
use warren::broker::Broker;
use warren::config::tls::Verify;
use warren::server::Listeners;
use warren::tls::Acceptor;
use warren::Config;

/// A small, fast AMQP 0-9-1 broker that behaves like RabbitMQ on the wire.
#[derive(Debug, Parser)]
#[command(name = "warren", version)]
struct Args {
    /// A new-style rabbitmq.conf (see rabbitmq.conf.example).
    #[arg(long, env = "RABBITMQ_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides listeners.tcp.default).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Port to listen on; 0 picks a free one (overrides listeners.tcp.default).
    #[arg(long)]
    port: Option<u16>,
    /// Heartbeat in seconds proposed to clients (overrides `heartbeat`).
    #[arg(long)]
    heartbeat: Option<u16>,
    /// Log every frame in and out of every connection, readably: watch the
    /// protocol and the heartbeats happen.
    #[arg(long)]
    trace_frames: bool,
    /// Also write the ready line (JSON, see below) to this file once the
    /// broker accepts connections.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Serve the HTTP API (management API, fault injection, events) on this
    /// port instead of `management.tcp.port` (15672); 0 picks a free one.
    /// Unlike the default port, a port asked for here must be free.
    #[arg(long, conflicts_with = "no_http")]
    http_port: Option<u16>,
    /// Do not serve the HTTP API.
    #[arg(long)]
    no_http: bool,
    /// Keep durable exchanges, queues, bindings and persistent messages in
    /// this directory, and recover them from it at start (overrides
    /// `data_dir`). Without one, everything is in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Teaching mode: play the seed's story over and over (a worker blocked
    /// by a long task is dropped for missed heartbeats, its message
    /// redelivered), to watch on the HTTP API's page (/). Its workers log
    /// in as the first configured user with a plain password.
    #[arg(long)]
    demo: bool,
    /// Listen for amqps (AMQP over TLS) on this port (overrides
    /// listeners.ssl.default); 0 picks a free one. Needs a certificate:
    /// --tls-cert and --tls-key, or --tls-self-signed.
    #[arg(long)]
    tls_port: Option<u16>,
    /// The server's certificate chain, PEM (ssl_options.certfile).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The server's private key, PEM (ssl_options.keyfile).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Authorities client certificates must chain to, PEM
    /// (ssl_options.cacertfile); asks clients for a certificate
    /// (verify_peer).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate (fail_if_no_peer_cert).
    #[arg(long)]
    tls_require_client_cert: bool,
    /// For tests: make a throwaway authority, a server certificate for
    /// localhost/127.0.0.1 and a client certificate for the default user in
    /// this directory, and listen for amqps with them (port 5671 unless
    /// --tls-port), asking clients for a certificate.
    #[arg(long)]
    tls_self_signed: Option<PathBuf>,
    /// No plain AMQP listener: TLS only (listeners.tcp = none).
    #[arg(long)]
    no_tcp: bool,
    /// Worker threads (1 to 256); by default one per core. Beside clients
    /// on a machine with few cores (a load generator, a test suite), fewer
    /// threads than cores keep the broker's threads and the clients' from
    /// taking turns on the same cores, where each turn is a scheduler
    /// time slice of latency.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
}

/// Applies the TLS flags on top of the config file's settings.
fn apply_tls_flags(args: &Args, config: &mut Config) -> Result<(), String> {
    let ip = config.tls_listen.map_or(config.listen.ip(), |a| a.ip());
    if let Some(dir) = &args.tls_self_signed {
        let user = config.users.first().map_or("guest", |u| u.name.as_str());
        let certs = warren::tls::certs::TestCertificates::generate(dir, user)?;
        let o = &mut config.ssl_options;
        o.certfile = Some(certs.server_certificate);
        o.keyfile = Some(certs.server_key);
        o.cacertfile = Some(certs.ca_certificate);
        o.verify = Verify::Peer;
        config.tls_listen.get_or_insert(SocketAddr::new(ip, 5671));
    }
    if let Some(port) = args.tls_port {
        config.tls_listen = Some(SocketAddr::new(ip, port));
    }
    let o = &mut config.ssl_options;
    o.certfile = args.tls_cert.clone().or(o.certfile.take());
    o.keyfile = args.tls_key.clone().or(o.keyfile.take());
    if let Some(ca) = &args.tls_ca {
        o.cacertfile = Some(ca.clone());
        o.verify = Verify::Peer;
    }
    o.fail_if_no_peer_cert |= args.tls_require_client_cert;
    if args.no_tcp {
        config.tcp_listener = false;
    }
    if !config.tcp_listener && config.tls_listen.is_none() {
        return Err("no listener: the plain one is off (--no-tcp, listeners.tcp = none) and there is no TLS one".into());
    }
    Ok(())
}

/// Binds the plain and the TLS listeners the config asks for.
async fn bind_listeners(config: &Config) -> Result<Listeners, String> {
    let tcp = match config.tcp_listener {
        true => Some(
            TcpListener::bind(config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?,
        ),
        false => None,
    };
    let tls = match config.tls_listen {
        Some(at) => {
            let acceptor = Acceptor::new(&config.ssl_options)?;
            let listener = TcpListener::bind(at).await.map_err(|e| format!("cannot listen for TLS on {at}: {e}"))?;
            Some((listener, Arc::new(acceptor)))
        }
        None => None,
    };
    Ok(Listeners { tcp, tls })
}

/// Who `--demo`'s workers log in as: the first user with a plain password,
/// in `/` if it exists, else in the first virtual host.
fn demo_login(config: &Config) -> Option<warren::demo::Login> {
    let user = config.users.iter().find_map(|u| match &u.password {
        warren::config::PasswordConfig::Plain(p) => Some((u.name.clone(), p.clone())),
        _ => None,
    })?;
    let vhost = if config.vhosts.iter().any(|v| v == "/") { "/".to_string() } else { config.vhosts.first()?.clone() };
    Some(warren::demo::Login { user: user.0, password: user.1, vhost })
}

/// What the broker prints on stdout, one JSON line, once it accepts
/// connections: where it is, for test suites that start it on `--port 0`.
fn ready_line(amqp: Option<SocketAddr>, amqps: Option<SocketAddr>, http: Option<SocketAddr>) -> String {
    serde_json::json!({
        "ready": true,
        "amqp": amqp.map(|a| a.to_string()),
        "amqp_port": amqp.map(|a| a.port()),
        "amqps": amqps.map(|a| a.to_string()),
        "amqps_port": amqps.map(|a| a.port()),
        "http": http.map(|a| a.to_string()),
        "http_port": http.map(|a| a.port()),
        "pid": std::process::id(),
    })
    .to_string()
}

/// One malloc arena for the whole process. glibc gives each thread its own
/// arena, and memory freed in one cannot serve another; messages are
/// allocated by the publisher's thread and freed by the consumer's, so with
/// several arenas the broker's resident memory could reach about twice what
/// its memory high watermark allows. One arena keeps it at the watermark,
/// with no measurable cost in throughput on this workload.
fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Raises the soft limit on open files to the hard limit, as servers do:
/// the default soft limit (often 1,024) would let a thousand idle clients,
/// AMQP and HTTP together, lock everyone else out long before the machine
/// minds. (RabbitMQ's packages raise it in their service files.)
fn raise_open_file_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> ExitCode {
    use_one_malloc_arena();
    raise_open_file_limit();
    tracing_subscriber::fmt()
        .fmt_fields(warren::logging::escaping_fields())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // `warren perf ...` is the load tool, a client of any broker.
    if std::env::args().nth(1).as_deref() == Some("perf") {
        return warren::perf::main(std::env::args().skip(1));
    }
    let args = Args::parse();
    let mut config = Config::default();
    if let Some(path) = &args.config {
        match Config::from_file(path) {
            Ok((c, warnings)) => {
                for w in warnings {
                    warn!("{}: {w}", path.display());
                }
                config = c;
            }
            Err(e) => {
                error!("{e}");
                eprintln!("warren: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut listen: SocketAddr = config.listen;
    if let Some(ip) = args.bind {
        listen.set_ip(ip);
    }
    if let Some(port) = args.port {
        listen.set_port(port);
    }
    config.listen = listen;
    if let Some(h) = args.heartbeat {
        config.heartbeat = h;
    }
    config.trace_frames |= args.trace_frames;
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if let Err(e) = apply_tls_flags(&args, &mut config) {
        eprintln!("warren: {e}");
        return ExitCode::from(2);
    }
    let ready_file = args.ready_file.clone();
    // None: no HTTP API; Some((address, required)).
    let http_listen = match (args.no_http, args.http_port) {
        (true, _) => None,
        (false, Some(port)) => Some((SocketAddr::new(config.management_listen.ip(), port), true)),
        (false, None) => Some((config.management_listen, false)),
    };

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.thread_name("warren-worker").enable_all();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.into());
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let broker = match Broker::new(config.clone()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::from(2);
            }
        };
        let demo = match (args.demo, demo_login(&config)) {
            (false, _) => None,
            (true, Some(login)) => Some(login),
            (true, None) => {
                eprintln!("warren: --demo needs a user with a plain password (the demo's workers log in as one)");
                return ExitCode::from(2);
            }
        };
        // Signal handlers go in before the listener is announced, so that a
        // signal sent as soon as warren is ready is never the default action.
        let (Ok(mut interrupt), Ok(mut terminate), Ok(mut raise), Ok(mut clear)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::user_defined1()),
            signal(SignalKind::user_defined2()),
        ) else {
            eprintln!("warren: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        // SIGUSR1 raises a memory alarm by hand and SIGUSR2 clears it: a
        // way to exercise publisher blocking without filling memory.
        let alarms = broker.alarms.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = raise.recv() => {
                        info!("SIGUSR1: raising the memory alarm");
                        alarms.raise(Resource::Memory);
                    }
                    Some(()) = clear.recv() => {
                        info!("SIGUSR2: clearing the memory alarm");
                        alarms.clear(Resource::Memory);
                    }
                    else => break,
                }
            }
        });
        let listeners = match bind_listeners(&config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::FAILURE;
            }
        };
        let address = |l: &TcpListener| l.local_addr().ok();
        let amqp = listeners.tcp.as_ref().and_then(address);
        let amqps = listeners.tls.as_ref().and_then(|(l, _)| address(l));
        info!(
            "heartbeat {}s, frame_max {}, channel_max {}, handshake_timeout {}ms",
            config.heartbeat,
            config.frame_max,
            config.channel_max,
            config.handshake_timeout.as_millis()
        );
        if let Some(a) = amqp {
            info!("started TCP listener on {a}");
        }
        if let Some(a) = amqps {
            info!("started TLS (amqps) listener on {a}");
        }
        let http = match http_listen {
            None => None,
            Some((addr, required)) => match TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) if required => {
                    eprintln!("warren: cannot listen for HTTP on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
                // The default port may well be taken (a RabbitMQ, another
                // warren): the broker is still useful without its API.
                Err(e) => {
                    warn!("cannot serve the HTTP API on {addr}: {e}; going on without it (set --http-port or management.tcp.port)");
                    None
                }
            },
        };
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(a) = http_addr {
            info!("started HTTP control API on {a}");
        }
        let ready = ready_line(amqp, amqps, http_addr);
        if let Some(path) = &ready_file {
            // Written whole under a temporary name, then renamed: a reader
            // never sees half a line.
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, format!("{ready}\n")).and_then(|()| std::fs::rename(&tmp, path)) {
                eprintln!("warren: cannot write the ready file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        println!("{ready}");
        let (shutdown, stop) = watch::channel(false);
        if let Some(l) = http {
            tokio::spawn(warren::http::serve(l, broker.clone(), stop.clone()));
        }
        // `serve` records the AMQP address when called: the demo needs it.
        let server = tokio::spawn(warren::server::serve(listeners, broker.clone(), stop));
        if let Some(login) = demo {
            if let Some(a) = http_addr {
                info!("teaching mode: watch the story on http://{}/", a);
            }
            tokio::spawn(warren::demo::play_forever(broker.clone(), login));
        }
        tokio::select! {
            _ = interrupt.recv() => info!("received SIGINT, shutting down"),
            _ = terminate.recv() => info!("received SIGTERM, shutting down"),
        }
        shutdown.send_replace(true);
        let _ = server.await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}
