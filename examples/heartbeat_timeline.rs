//! Draws the heartbeat timeline of a real run, from warren's event stream:
//! a client negotiates T = 1 s, sends heartbeats for 1.5 s, then falls
//! silent; warren keeps sending its own every T/2 and drops the client
//! between 2T and 3T after its last byte. docs/heartbeats.md shows the
//! output; regenerate it with
//!
//! ```sh
//! cargo run --example heartbeat_timeline
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use tokio::time::Instant;
use warren::protocol::frame::HEARTBEAT_FRAME;
use warren::{EmbeddedBroker, Event};

const STEP: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut events = broker.events();
    let mut client = common::RawClient::open(broker.addr(), 1).await;
    let start = Instant::now();
    let mut rows: Vec<(Duration, &str)> = Vec::new();

    // The client's heartbeats for 1.5 s, then silence.
    let talker = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            client.send_raw(&HEARTBEAT_FRAME).await;
        }
        // Keep the socket open, silent, until the broker drops it.
        let _ = client.read_bytes(Duration::from_secs(10)).await;
    });
    while let Some(event) = events.next(Duration::from_secs(6)).await {
        let at = start.elapsed();
        match event {
            Event::HeartbeatSent { .. } => rows.push((at, "warren -> client: heartbeat")),
            Event::HeartbeatReceived { .. } => rows.push((at, "client -> warren: heartbeat")),
            Event::HeartbeatTimeout { .. } => {
                rows.push((at, "warren: missed heartbeats from client, timeout: 1s (socket closed)"));
                break;
            }
            _ => {}
        }
    }
    talker.abort();

    let last_client =
        rows.iter().filter(|(_, what)| what.starts_with("client")).map(|(t, _)| *t).max().unwrap_or_default();
    let end = rows.last().map(|(t, _)| *t).unwrap_or_default();
    let columns = (end.as_millis() / STEP.as_millis()) as usize + 2;
    let mut server_line = vec!['-'; columns];
    let mut client_line = vec!['-'; columns];
    for (at, what) in &rows {
        let col = (at.as_millis() / STEP.as_millis()) as usize;
        match *what {
            w if w.starts_with("warren -> client") => server_line[col] = 'H',
            w if w.starts_with("client") => client_line[col] = 'h',
            _ => server_line[col] = 'X',
        }
    }
    let ruler: String =
        (0..columns).map(|c| if c % 10 == 0 { char::from(b'0' + (c / 10) as u8) } else { ' ' }).collect();
    println!("seconds after connection.open, one column per {} ms (T = 1 s):\n", STEP.as_millis());
    println!("           {ruler}");
    println!("warren  -> {}", server_line.iter().collect::<String>());
    println!("client  -> {}", client_line.iter().collect::<String>());
    println!("\nH: warren's heartbeat  h: the client's heartbeat  X: warren drops the client\n");
    for (at, what) in &rows {
        println!("{:>7.3} s  {what}", at.as_secs_f64());
    }
    println!(
        "\nlast client byte at {:.3} s, dropped at {:.3} s: {:.3} s of silence (window 2T..3T = 2..3 s)",
        last_client.as_secs_f64(),
        end.as_secs_f64(),
        (end - last_client).as_secs_f64()
    );
}
