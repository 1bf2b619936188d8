//! How long a reset takes between tests: a broker holding QUEUES queues
//! (with a message each) and CONNECTIONS open connections (lapin clients)
//! is reset with `EmbeddedBroker::reset`, ROUNDS times; prints the median
//! and the slowest, with the closed connections gone in each.
//!
//! ```sh
//! cargo bench --bench reset                          # 1,000 queues, 100 connections
//! QUEUES=10000 CONNECTIONS=500 cargo bench --bench reset
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs a small smoke round.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::EmbeddedBroker;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let queues = env_or("QUEUES", if benching { 1000 } else { 50 });
    let connections = env_or("CONNECTIONS", if benching { 100 } else { 5 }).max(1);
    let rounds = env_or("ROUNDS", if benching { 11 } else { 2 });
    let broker = EmbeddedBroker::start().await.expect("start warren");
    let mut took = Vec::new();
    for _ in 0..rounds {
        let mut clients = Vec::new();
        for c in 0..connections {
            let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.expect("connect");
            let ch = conn.create_channel().await.expect("channel");
            for q in (c..queues).step_by(connections) {
                let name = format!("q{q}");
                ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), Default::default())
                    .await
                    .expect("declare");
                ch.basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions::default(),
                    b"m",
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            }
            clients.push(conn);
        }
        assert_eq!(broker.broker().queue_infos().len(), queues);
        let done = broker.reset().await;
        assert!(done.all_gone && done.closed_connections == connections, "{done:?}");
        assert!(broker.broker().queue_infos().is_empty());
        took.push(done.took);
        drop(clients);
    }
    took.sort();
    let median = took[took.len() / 2];
    let slowest = took[took.len() - 1];
    println!(
        "reset: {queues} queues, {connections} connections: median {:.3} ms, slowest {:.3} ms over {rounds} rounds",
        ms(median),
        ms(slowest)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
