//! The story warren exists for, reproduced in seconds.
//!
//! A consumer takes a message and runs a long task that blocks its thread.
//! Its AMQP client cannot send heartbeats while the thread is blocked; the
//! broker notices the silence after 2T..3T, logs "missed heartbeats from
//! client" and drops the connection; the late ack fails; the message is
//! redelivered and the task runs twice.
//!
//! Three runs, each with a 4 s task:
//! 1. heartbeat 1 s, the client's runtime blocked by the task: dropped,
//!    the message comes back redelivered;
//! 2. heartbeat 0 (lapin takes the broker's proposal, so the broker
//!    proposes 0): nobody checks, the ack lands, the task runs once;
//! 3. heartbeat 1, the task run off the client's runtime
//!    (`spawn_blocking`), so its heartbeats keep going: the ack lands.
//!
//! ```sh
//! cargo run --example seed_story
//! ```

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const TASK: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, Debug)]
enum Client {
    /// The task blocks the client's only thread (a blocking consumer).
    Blocking,
    /// The task runs on another thread; the client keeps its heartbeats.
    Offloaded,
}

/// Consumes one message, "works" on it for [`TASK`], then acks. Returns
/// whether the ack went through.
fn consume_once(url: String, client: Client) -> bool {
    // A single-threaded runtime: while the task blocks it, lapin cannot run.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume("tasks".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let delivery = consumer.next().await.unwrap().unwrap();
        println!("  got the task (redelivered: {}), working for {TASK:?}…", delivery.redelivered);
        match client {
            Client::Blocking => std::thread::sleep(TASK),
            Client::Offloaded => tokio::task::spawn_blocking(|| std::thread::sleep(TASK)).await.unwrap(),
        }
        // lapin queues the ack; the connection's fate shows when it is flushed.
        let ack = delivery.ack(BasicAckOptions::default()).await;
        let closed = conn.close(200, "done".into()).await;
        match (ack, closed) {
            (Ok(_), Ok(())) => true,
            (Err(e), _) | (_, Err(e)) => {
                println!("  late ack failed: {e}");
                false
            }
        }
    })
}

fn main() {
    for (title, heartbeat, client) in [
        ("1. heartbeat 1 s, the task blocks the client's thread", 1, Client::Blocking),
        ("2. heartbeat 0, the same blocking task", 0, Client::Blocking),
        ("3. heartbeat 1 s, the task off the client's runtime", 1, Client::Offloaded),
    ] {
        println!("{title}");
        // The broker on its own runtime, so the consumer's blocking cannot stop it.
        let builder = warren::EmbeddedBroker::builder().heartbeat(heartbeat);
        let broker = warren::blocking::Broker::start_with(builder).unwrap();
        let url = broker.url();
        publish_one(&url);
        let mut events = broker.events();
        let started = Instant::now();
        let acked = consume_once(url.clone(), client);
        let dropped = events.wait_for(|e| matches!(e, warren::Event::HeartbeatTimeout { .. }), Duration::ZERO);
        if let Some(warren::Event::HeartbeatTimeout { timeout, .. }) = dropped {
            println!("  warren: missed heartbeats from client, timeout: {timeout}s");
        }
        if !acked {
            // The unacked message went back to the queue: a second consumer gets it again.
            let again = consume_once(url.clone(), Client::Offloaded);
            println!("  redelivered and run a second time (ack: {again})");
        }
        let runs = if acked { "once" } else { "twice" };
        println!("  took {:.1} s; the task ran {runs}\n", started.elapsed().as_secs_f64());
    }
}

/// Declares the queue and puts one task in it.
fn publish_one(url: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare("tasks".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
        ch.basic_publish(
            "".into(),
            "tasks".into(),
            BasicPublishOptions::default(),
            b"task",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        conn.close(200, "published".into()).await.unwrap();
    });
}
