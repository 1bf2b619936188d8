//! End-to-end broker throughput with a lean, pipelining client, so the
//! broker rather than the client library is what is measured. Publishers
//! write publishes in batches with publisher confirms and a bounded window;
//! consumers take deliveries with a prefetch and ack with `multiple`. Works
//! against any AMQP 0-9-1 broker:
//!
//! ```sh
//! cargo bench --bench pipeline                                   # embedded warren
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo bench --bench pipeline
//! MESSAGES=1000000 SIZE=16 PUBLISHERS=2 CONSUMERS=2 PREFETCH=1000 cargo bench --bench pipeline
//! WATERMARK=4MiB SIZE=4096 cargo bench --bench pipeline      # with flow control engaging
//! PERSISTENT=1 cargo bench --bench pipeline     # a durable queue, delivery_mode 2, and the
//!                                               # embedded warren with a data directory
//! TLS=1 cargo bench --bench pipeline            # over amqps (embedded warren, test certificates)
//! AMQP_URL=amqps://guest:guest@localhost:5671/%2f TLS_CA=ca_certificate.pem cargo bench --bench pipeline
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs a small smoke round.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use warren::protocol::frame::{
    parse_frame, write_body_frame_header, write_content_header, write_method, PROTOCOL_HEADER,
};
use warren::protocol::methods::{basic, channel, confirm, connection, queue};
use warren::protocol::{FieldTable, Frame, Method};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Target {
    /// Over TLS (amqps://), trusting these authorities.
    tls: Option<Arc<rustls::ClientConfig>>,
    host: String,
    addr: String,
    user: String,
    password: String,
    vhost: String,
}

/// Reads `amqp://user:pass@host:port/vhost` (vhost `%2f` is `/`), or the
/// same as `amqps://`, trusting the authorities in the PEM file `ca`.
fn parse_url(url: &str, ca: Option<&std::path::Path>) -> Target {
    let (tls, rest) = match (url.strip_prefix("amqp://"), url.strip_prefix("amqps://")) {
        (Some(rest), _) => (None, rest),
        (None, Some(rest)) => {
            (Some(Arc::new(tls_client(ca.expect("amqps:// needs TLS_CA, the authority's PEM file")))), rest)
        }
        _ => panic!("an amqp:// or amqps:// URL"),
    };
    let (creds, rest) = rest.split_once('@').unwrap_or(("guest:guest", rest));
    let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
    let (addr, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
    let vhost = if vhost.is_empty() { "/".to_string() } else { vhost.replace("%2f", "/").replace("%2F", "/") };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
    Target { tls, host, addr: addr.to_string(), user: user.into(), password: password.into(), vhost }
}

fn tls_client(ca: &std::path::Path) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("TLS_CA: a PEM file") {
        roots.add(cert.expect("a certificate")).expect("a CA certificate");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

struct Client {
    reader: Box<dyn AsyncRead + Unpin + Send>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    buf: BytesMut,
}

impl Client {
    async fn send(&mut self, channel: u16, method: impl Into<Method>) {
        let mut out = BytesMut::new();
        write_method(&mut out, channel, &method.into());
        self.writer.write_all(&out).await.unwrap();
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, u32::MAX).expect("valid frames") {
                return f;
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            let n = self.reader.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "the broker closed the connection");
        }
    }

    async fn method(&mut self) -> Method {
        loop {
            if let Frame::Method { method, .. } = self.frame().await {
                return method;
            }
        }
    }

    async fn open(target: &Target) -> Client {
        let stream = TcpStream::connect(&target.addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (reader, writer): (Box<dyn AsyncRead + Unpin + Send>, Box<dyn AsyncWrite + Unpin + Send>) = match &target
            .tls
        {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone()).expect("a host name");
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await.expect("TLS");
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        let mut c = Client { reader, writer, buf: BytesMut::with_capacity(256 * 1024) };
        c.writer.write_all(PROTOCOL_HEADER).await.unwrap();
        assert!(matches!(c.method().await, Method::ConnectionStart(_)));
        let response = Bytes::from(format!("\0{}\0{}", target.user, target.password));
        c.send(
            0,
            connection::StartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response,
                locale: "en_US".into(),
            },
        )
        .await;
        let Method::ConnectionTune(tune) = c.method().await else { panic!("login failed") };
        c.send(0, connection::TuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max, heartbeat: 0 }).await;
        c.send(0, connection::Open { virtual_host: target.vhost.as_str().into(), ..Default::default() }).await;
        assert!(matches!(c.method().await, Method::ConnectionOpenOk(_)));
        c.send(1, channel::Open::default()).await;
        assert!(matches!(c.method().await, Method::ChannelOpenOk(_)));
        c
    }
}

/// Properties of a publish: none, or `delivery_mode` 2 (flag bit 12).
fn properties(persistent: bool) -> &'static [u8] {
    if persistent {
        &[0x10, 0x00, 2]
    } else {
        &[0, 0]
    }
}

async fn publisher(target: Arc<Target>, queue: String, count: usize, size: usize, persistent: bool) {
    let mut c = Client::open(&target).await;
    c.send(1, confirm::Select { no_wait: false }).await;
    assert!(matches!(c.method().await, Method::ConfirmSelectOk(_)));
    // One publish (method + header + body) encoded once, written many times.
    let mut one = BytesMut::new();
    let publish = basic::Publish { exchange: "".into(), routing_key: queue.as_str().into(), ..Default::default() };
    write_method(&mut one, 1, &publish.into());
    write_content_header(&mut one, 1, 60, size as u64, properties(persistent));
    write_body_frame_header(&mut one, 1, size);
    one.extend(std::iter::repeat_n(b'x', size));
    one.extend_from_slice(&[0xce]);
    const BATCH: usize = 100;
    const WINDOW: usize = 5000;
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * BATCH).collect();
    let (mut sent, mut confirmed) = (0, 0);
    while confirmed < count {
        while sent < count && sent - confirmed < WINDOW {
            let n = BATCH.min(count - sent);
            c.writer.write_all(&batch[..one.len() * n]).await.unwrap();
            sent += n;
        }
        match c.method().await {
            Method::BasicAck(a) => confirmed = a.delivery_tag as usize,
            other => panic!("publisher got {other:?}"),
        }
    }
}

async fn consumer(target: Arc<Target>, queue: String, prefetch: u16, received: Arc<AtomicUsize>, total: usize) {
    let mut c = Client::open(&target).await;
    c.send(1, basic::Qos { prefetch_count: prefetch, ..Default::default() }).await;
    assert!(matches!(c.method().await, Method::BasicQosOk(_)));
    c.send(1, basic::Consume { queue: queue.as_str().into(), ..Default::default() }).await;
    let ack_every = (prefetch as u64 / 2).max(1);
    let mut unacked = 0;
    while received.load(Ordering::Relaxed) < total {
        let frame = tokio::select! {
            f = c.frame() => f,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        if let Frame::Method { method: Method::BasicDeliver(d), .. } = frame {
            received.fetch_add(1, Ordering::Relaxed);
            unacked += 1;
            if unacked >= ack_every {
                c.send(1, basic::Ack { delivery_tag: d.delivery_tag, multiple: true }).await;
                unacked = 0;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let messages = env_or("MESSAGES", if benching { 1_000_000 } else { 10_000 });
    let size = env_or("SIZE", 16);
    let publishers = env_or("PUBLISHERS", 1);
    let consumers = env_or("CONSUMERS", 1);
    let prefetch = env_or("PREFETCH", 1000) as u16;

    let persistent = std::env::var("PERSISTENT").is_ok_and(|v| v == "1");
    let tls = std::env::var("TLS").is_ok_and(|v| v == "1");
    let cert_dir = std::env::temp_dir().join(format!("warren-pipeline-tls-{}", std::process::id()));
    let mut ca = std::env::var("TLS_CA").ok().map(std::path::PathBuf::from);
    let data_dir = std::env::temp_dir().join(format!("warren-pipeline-{}", std::process::id()));
    let embedded;
    let url = match std::env::var("AMQP_URL") {
        Ok(url) => url,
        Err(_) => {
            // WATERMARK (e.g. 4MiB) sets a memory high watermark on the
            // embedded broker, to measure with flow control engaging.
            let mut builder = warren::EmbeddedBroker::builder();
            if persistent {
                builder = builder.data_dir(&data_dir);
            }
            if let Some(w) = std::env::var("WATERMARK").ok().filter(|w| !w.is_empty()) {
                builder =
                    builder.memory_high_watermark(warren::config::parse_size(&w).expect("WATERMARK such as 4MiB"));
            }
            if tls {
                builder = builder.tls_self_signed(&cert_dir);
            }
            embedded = builder.start().await.expect("start warren");
            match tls {
                true => {
                    ca = embedded.certificates().map(|c| c.ca_certificate.clone());
                    embedded.amqps_url().unwrap()
                }
                false => embedded.url(),
            }
        }
    };
    let target = Arc::new(parse_url(&url, ca.as_deref()));
    let queue = format!("pipeline-{}", std::process::id());
    let mut admin = Client::open(&target).await;
    admin.send(1, queue::Declare { queue: queue.as_str().into(), durable: persistent, ..Default::default() }).await;
    assert!(matches!(admin.method().await, Method::QueueDeclareOk(_)));

    let received = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        tasks.push(tokio::spawn(consumer(target.clone(), queue.clone(), prefetch, received.clone(), messages)));
    }
    for i in 0..publishers {
        let share = messages / publishers + usize::from(i < messages % publishers);
        tasks.push(tokio::spawn(publisher(target.clone(), queue.clone(), share, size, persistent)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    admin.send(1, queue::Delete { queue: queue.as_str().into(), ..Default::default() }).await;
    let _ = admin.method().await;
    println!(
        "pipeline: {messages} {}messages of {size} B{}, {publishers} publisher(s), {consumers} consumer(s), prefetch {prefetch}: {:.2} s, {:.0} msg/s end to end",
        if persistent { "persistent " } else { "" },
        if target.tls.is_some() { " over TLS" } else { "" },
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_dir_all(&cert_dir);
}
