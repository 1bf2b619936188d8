//! End to end with lapin, a real AMQP client, over TCP against an embedded
//! broker: declare, publish, consume, ack, nack/requeue, redelivery after a
//! connection dies, qos.

mod common;

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(5);

async fn connect(broker: &EmbeddedBroker) -> Connection {
    Connection::connect(&broker.url(), ConnectionProperties::default()).await.expect("connect")
}

async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery within 5 s")
        .expect("consumer stream ended")
        .expect("delivery error")
}

async fn declare(ch: &Channel, queue: &str) -> lapin::Queue {
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap()
}

/// Publishes to the default exchange and waits for the broker's confirm
/// (on a channel in confirm mode) or for the frames to be sent.
async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, BasicProperties::default())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> lapin::Consumer {
    ch.basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default()).await.unwrap()
}

fn ready(broker: &EmbeddedBroker, queue: &str) -> (usize, usize) {
    let vhost = broker.broker().vhost(&"/".into()).unwrap();
    let q = vhost.queue(&queue.into()).unwrap();
    (q.message_count(), q.unacked_count())
}

#[tokio::test]
async fn publish_consume_ack_round_trip_with_properties() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = declare(&ch, "rt").await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));

    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongInt(42));
    headers.insert("s".into(), AMQPValue::LongString("text".into()));
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("c-1".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    for i in 0..3u8 {
        ch.basic_publish("".into(), "rt".into(), BasicPublishOptions::default(), &[i; 10], props.clone())
            .await
            .unwrap();
    }
    let mut consumer = consume(&ch, "rt", "c").await;
    for i in 0..3u8 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, vec![i; 10]);
        assert_eq!(d.delivery_tag, u64::from(i) + 1, "tags start at 1 per channel");
        assert!(!d.redelivered);
        assert_eq!(d.routing_key.as_str(), "rt");
        assert_eq!(d.properties, props);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let q = ch
        .queue_declare("rt".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn nack_with_requeue_redelivers_and_reject_drops() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "nq").await;
    for body in [b"one", b"two"] {
        publish(&ch, "nq", body).await;
    }
    let first = ch.basic_get("nq".into(), BasicGetOptions::default()).await.unwrap().expect("a message");
    assert_eq!(first.delivery.data, b"one");
    assert!(!first.delivery.redelivered);
    assert_eq!(first.message_count, 1);
    first.delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await.unwrap();

    // Back at the head of the queue, marked redelivered.
    let again = ch.basic_get("nq".into(), BasicGetOptions::default()).await.unwrap().expect("requeued");
    assert_eq!(again.delivery.data, b"one");
    assert!(again.delivery.redelivered);
    again.delivery.reject(BasicRejectOptions { requeue: false }).await.unwrap();

    let second = ch.basic_get("nq".into(), BasicGetOptions::default()).await.unwrap().expect("second");
    assert_eq!(second.delivery.data, b"two");
    second.delivery.ack(BasicAckOptions::default()).await.unwrap();
    assert!(ch.basic_get("nq".into(), BasicGetOptions::default()).await.unwrap().is_none());
}

#[tokio::test]
async fn unacked_messages_of_a_closed_connection_are_redelivered_in_order() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let a = connect(&broker).await;
    let ch = a.create_channel().await.unwrap();
    declare(&ch, "rd").await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for i in 0..4u8 {
        publish(&ch, "rd", &[i]).await;
    }
    let mut consumer = consume(&ch, "rd", "").await;
    for i in 0..4u8 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, [i]);
        if i == 1 {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    a.close(200, "going".into()).await.unwrap();

    let b = connect(&broker).await;
    let ch = b.create_channel().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = ch.basic_get("rd".into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        got.push((m.delivery.data[0], m.delivery.redelivered));
    }
    assert_eq!(got, [(0, true), (2, true), (3, true)]);
}

#[tokio::test]
async fn prefetch_limits_unacked_deliveries_per_consumer() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "pf").await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for i in 0..3u8 {
        publish(&ch, "pf", &[i]).await;
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch, "pf", "").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, [0]);
    // With prefetch 1 the queue holds the rest until the ack.
    assert_eq!(ready(&broker, "pf"), (2, 1));
    d.ack(BasicAckOptions::default()).await.unwrap();
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, [1]);
    assert_eq!(ready(&broker, "pf"), (1, 1));
    d.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(next_delivery(&mut consumer).await.data, [2]);
}

#[tokio::test]
async fn consumers_share_a_queue_round_robin() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "rr").await;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut a = ch.basic_consume("rr".into(), "a".into(), opts, FieldTable::default()).await.unwrap();
    let mut b = ch.basic_consume("rr".into(), "b".into(), opts, FieldTable::default()).await.unwrap();
    for i in 0..6u8 {
        ch.basic_publish("".into(), "rr".into(), BasicPublishOptions::default(), &[i], BasicProperties::default())
            .await
            .unwrap();
    }
    for i in (0..6u8).step_by(2) {
        assert_eq!(next_delivery(&mut a).await.data, [i]);
        assert_eq!(next_delivery(&mut b).await.data, [i + 1]);
    }
}

#[tokio::test]
async fn amq_direct_routes_by_key_and_large_bodies_arrive_whole() {
    let broker = EmbeddedBroker::builder().frame_max(8192).start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"));
    ch.queue_bind(
        q.name().clone(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ch.basic_publish(
        "amq.direct".into(),
        "other".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "amq.direct".into(),
        "k".into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(q.name().clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.exchange.as_str(), "amq.direct");
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body);
}

#[tokio::test]
async fn channel_errors_close_the_channel_not_the_connection() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "missing".into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("404") || text.contains("NOT_FOUND"), "{text}");
    assert!(text.contains("no queue 'missing' in vhost '/'"), "{text}");
    // The connection is still usable.
    let ch2 = conn.create_channel().await.unwrap();
    declare(&ch2, "fine").await;
}

#[tokio::test]
async fn exclusive_queues_are_locked_to_their_connection_and_go_with_it() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let owner = connect(&broker).await;
    let ch = owner.create_channel().await.unwrap();
    ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions { exclusive: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let other = connect(&broker).await;
    let ch2 = other.create_channel().await.unwrap();
    let err = ch2
        .basic_consume("mine".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("RESOURCE_LOCKED"), "{err}");
    owner.close(200, "bye".into()).await.unwrap();
    let vhost = broker.broker().vhost(&"/".into()).unwrap();
    assert!(vhost.queue(&"mine".into()).is_err(), "the exclusive queue went with its connection");
}

#[tokio::test]
async fn brokers_in_one_process_are_isolated() {
    let one = EmbeddedBroker::start().await.unwrap();
    let two = EmbeddedBroker::start().await.unwrap();
    assert_ne!(one.addr(), two.addr());
    let c1 = connect(&one).await;
    let ch1 = c1.create_channel().await.unwrap();
    declare(&ch1, "only-in-one").await;
    let c2 = connect(&two).await;
    let ch2 = c2.create_channel().await.unwrap();
    let err = ch2
        .queue_declare(
            "only-in-one".into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
}
