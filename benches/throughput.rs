//! End-to-end throughput: one publisher and one consumer through a broker,
//! with the same client (lapin) whatever the broker, so warren and RabbitMQ
//! are measured alike.
//!
//! ```sh
//! cargo bench --bench throughput                       # embedded warren
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo bench --bench throughput                     # any broker
//! MESSAGES=200000 SIZE=1024 PREFETCH=500 cargo bench --bench throughput
//! PERSISTENT=1 cargo bench --bench throughput          # durable queue, delivery_mode 2,
//!                                                      # warren with a data directory
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs a small smoke round.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let messages = env_or("MESSAGES", if benching { 200_000 } else { 2_000 });
    let size = env_or("SIZE", 16);
    let prefetch = env_or("PREFETCH", 1000) as u16;

    let persistent = std::env::var("PERSISTENT").is_ok_and(|v| v == "1");
    let data_dir = std::env::temp_dir().join(format!("warren-throughput-{}", std::process::id()));
    let embedded;
    let url = match std::env::var("AMQP_URL") {
        Ok(url) => url,
        Err(_) => {
            let mut builder = warren::EmbeddedBroker::builder();
            if persistent {
                builder = builder.data_dir(&data_dir);
            }
            embedded = builder.start().await.expect("start warren");
            embedded.url()
        }
    };
    let publisher = Connection::connect(&url, ConnectionProperties::default()).await.expect("connect");
    let consumer_conn = Connection::connect(&url, ConnectionProperties::default()).await.expect("connect");
    let pch = publisher.create_channel().await.unwrap();
    let cch = consumer_conn.create_channel().await.unwrap();
    let queue = format!("throughput-{}", std::process::id());
    let options = QueueDeclareOptions { auto_delete: true, durable: persistent, ..Default::default() };
    cch.queue_declare(queue.as_str().into(), options, FieldTable::default()).await.unwrap();
    cch.basic_qos(prefetch, BasicQosOptions::default()).await.unwrap();
    let mut consumer = cch
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    pch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();

    let body = vec![b'x'; size];
    let properties = match persistent {
        true => BasicProperties::default().with_delivery_mode(2),
        false => BasicProperties::default(),
    };
    let start = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut received = 0;
        while received < messages {
            let delivery = consumer.next().await.expect("stream ended").expect("delivery");
            received += 1;
            if received % 100 == 0 || received == messages {
                delivery.ack(BasicAckOptions { multiple: true }).await.unwrap();
            }
        }
        Instant::now()
    });
    // Publish with confirms, keeping a bounded window in flight.
    let mut window = std::collections::VecDeque::new();
    for _ in 0..messages {
        let confirm = pch
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, properties.clone())
            .await
            .unwrap();
        window.push_back(confirm);
        if window.len() >= 1000 {
            window.pop_front().unwrap().await.unwrap();
        }
    }
    for confirm in window {
        confirm.await.unwrap();
    }
    let published = start.elapsed();
    let done = tokio::time::timeout(Duration::from_secs(120), consuming).await.expect("consumer finished").unwrap();
    let total = done - start;
    let rate = messages as f64 / total.as_secs_f64();
    println!(
        "throughput: {messages} {}messages of {size} B, prefetch {prefetch}: published in {:.2} s, consumed in {:.2} s: {:.0} msg/s end to end",
        if persistent { "persistent " } else { "" },
        published.as_secs_f64(),
        total.as_secs_f64(),
        rate
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}
