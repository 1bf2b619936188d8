//! How long a broker takes to start on a data directory holding many
//! persistent messages: the directory is filled through a broker's own
//! journal (as publishes fill it), then a second broker is started on it and
//! timed until its queue holds every message again.
//!
//! ```sh
//! cargo bench --bench recovery                      # 1,000,000 messages of 16 B
//! MESSAGES=200000 SIZE=4096 cargo bench --bench recovery
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs a small smoke round.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use warren::broker::message::{Body, Message};
use warren::broker::queue::QueueOptions;
use warren::broker::Broker;
use warren::Config;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let messages = env_or("MESSAGES", if benching { 1_000_000 } else { 10_000 });
    let size = env_or("SIZE", 16);
    let dir = std::env::temp_dir().join(format!("warren-recovery-{}", std::process::id()));
    let config = Config { data_dir: Some(dir.clone()), ..Config::default() };

    let started = Instant::now();
    {
        let broker = Broker::new(config.clone()).expect("a broker on a fresh directory");
        let vhost = broker.vhost(&"/".into()).unwrap();
        let options =
            QueueOptions { durable: true, exclusive_owner: None, auto_delete: false, arguments: Default::default() };
        let (queue, _) = vhost.declare_queue("recovered".into(), options, 0).unwrap();
        let properties = Bytes::from_static(&[0x10, 0x00, 2]); // delivery_mode 2
        let body = Bytes::from(vec![b'x'; size]);
        for _ in 0..messages {
            let m = Message::new(&"".into(), &"recovered".into(), &properties, size as u64, Body::One(body.clone()));
            queue.publish(Arc::new(m));
        }
        broker.store.as_ref().unwrap().flush().await;
    }
    let written = started.elapsed();
    let bytes: u64 = walk(&dir);

    let started = Instant::now();
    let broker = Broker::new(config).expect("recovered");
    let recovered = started.elapsed();
    let count = broker.vhost(&"/".into()).unwrap().queue(&"recovered".into()).unwrap().message_count();
    assert_eq!(count, messages, "every message is back");
    println!(
        "recovery: {messages} persistent messages of {size} B ({:.0} MB on disk) written in {:.2} s, recovered in {:.2} s ({:.0} messages/s)",
        bytes as f64 / 1e6,
        written.as_secs_f64(),
        recovered.as_secs_f64(),
        messages as f64 / recovered.as_secs_f64()
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes in the files under `dir`.
fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}
