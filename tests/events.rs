//! The event stream with real clients: what a test can await, in the order
//! it happens, matching what the client saw.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{publish_frames, RawClient};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::broker::alarm::Resource;
use warren::protocol::methods::basic;
use warren::protocol::Method;
use warren::{EmbeddedBroker, Event};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_message_round_trip_is_told_in_order() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut events = broker.events();
    let props = ConnectionProperties::default().with_connection_name("events-test".into());
    let conn = Connection::connect(&broker.url(), props).await.unwrap();
    let opened = events.wait_for(|e| matches!(e, Event::ConnectionOpened { .. }), WAIT).await.unwrap();
    let Event::ConnectionOpened { connection, client_properties, frame_max, .. } = opened else { unreachable!() };
    assert_eq!(frame_max, 131_072);
    let name = client_properties.get("connection_name").and_then(|v| v.as_bytes()).map(|b| b.to_vec());
    assert_eq!(name.as_deref(), Some(&b"events-test"[..]));

    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("ev".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.basic_publish("".into(), "ev".into(), BasicPublishOptions::default(), b"m", BasicProperties::default())
        .await
        .unwrap();
    let mut consumer =
        ch.basic_consume("ev".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await.unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await.unwrap();
    let again = consumer.next().await.unwrap().unwrap();
    again.ack(BasicAckOptions::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 6 {
        let e = events.next(WAIT).await.expect("more events");
        match e {
            Event::Published { queues, .. } => seen.push(format!("published to {queues}")),
            Event::Delivered { delivery_tag, redelivered, .. } => {
                seen.push(format!("delivered {delivery_tag} {redelivered}"))
            }
            Event::Nacked { delivery_tag, requeue, .. } => seen.push(format!("nacked {delivery_tag} {requeue}")),
            Event::Requeued { count, .. } => seen.push(format!("requeued {count}")),
            Event::Acked { delivery_tag, .. } => seen.push(format!("acked {delivery_tag}")),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        ["published to 1", "delivered 1 false", "nacked 1 true", "requeued 1", "delivered 2 true", "acked 2"]
    );
    conn.close(200, "bye".into()).await.unwrap();
    let closed = events.wait_for(|e| matches!(e, Event::ConnectionClosed { .. }), WAIT).await.unwrap();
    assert!(matches!(closed, Event::ConnectionClosed { connection: c, .. } if c == connection));
}

#[tokio::test]
async fn heartbeats_and_their_timeout_are_events() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut events = broker.events();
    let mut client = RawClient::open(broker.addr(), 1).await;
    events.wait_for(|e| matches!(e, Event::HeartbeatSent { .. }), WAIT).await.expect("the server's heartbeat");
    client.send_raw(&warren::protocol::frame::HEARTBEAT_FRAME).await;
    events.wait_for(|e| matches!(e, Event::HeartbeatReceived { .. }), WAIT).await.expect("the client's heartbeat");
    // Silence from now on.
    let timeout = events.wait_for(|e| matches!(e, Event::HeartbeatTimeout { .. }), WAIT).await.unwrap();
    let Event::HeartbeatTimeout { timeout, silence, .. } = timeout else { unreachable!() };
    assert_eq!(timeout, 1);
    // Measured from the monitor tick that last saw a byte: two silent ticks.
    assert!(silence >= Duration::from_millis(1900) && silence <= Duration::from_millis(3100), "{silence:?}");
    drop(client);
}

#[tokio::test]
async fn blocking_channel_errors_expiry_and_dead_letters_are_events() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut events = broker.events();
    let mut client = RawClient::open(broker.addr(), 0).await;
    let args = warren::protocol::FieldTable::new()
        .with("x-message-ttl", warren::protocol::FieldValue::I32(10))
        .with("x-dead-letter-exchange", warren::protocol::FieldValue::LongStr("".into()))
        .with("x-dead-letter-routing-key", warren::protocol::FieldValue::LongStr("dead".into()));
    client.declare_queue("dead").await;
    client
        .send(
            1,
            warren::protocol::methods::queue::Declare { queue: "ttl".into(), arguments: args, ..Default::default() },
        )
        .await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::QueueDeclareOk(_)));
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "ttl", false, b"short-lived");
    client.send_raw(&frames).await;
    let expired = events.wait_for(|e| matches!(e, Event::Expired { .. }), WAIT).await.unwrap();
    assert_eq!(expired, Event::Expired { queue: "ttl".into(), count: 1 });
    let dead = events.wait_for(|e| matches!(e, Event::DeadLettered { .. }), WAIT).await.unwrap();
    assert_eq!(dead, Event::DeadLettered { queue: "ttl".into(), reason: "expired".into(), count: 1 });

    broker.raise_alarm(Resource::Memory);
    client.send_raw(&frames).await;
    let blocked = events.wait_for(|e| matches!(e, Event::Blocked { .. }), WAIT).await.unwrap();
    assert!(matches!(blocked, Event::Blocked { reason, .. } if reason == "low on memory"));
    broker.clear_alarm(Resource::Memory);
    events.wait_for(|e| matches!(e, Event::Unblocked { .. }), WAIT).await.unwrap();

    client.send(1, basic::Ack { delivery_tag: 99, multiple: false }).await;
    let closed = events.wait_for(|e| matches!(e, Event::ChannelClosed { .. }), WAIT).await.unwrap();
    assert!(
        matches!(closed, Event::ChannelClosed { channel: 1, code: 406, ref text, .. } if text == "PRECONDITION_FAILED - unknown delivery tag 99")
    );
    let stats = broker.find_connection(|_| true).unwrap().stats();
    assert!(stats.bytes_in > 0 && stats.bytes_out > 0, "{stats:?}");
}
