//! Queue arguments and delivery rules with lapin over TCP: TTL (per queue and
//! per message), dead-lettering with `x-death`, length limits and overflow,
//! priorities, single active consumer, consumer priorities, `x-expires`.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::time::Instant;
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(5);

async fn channel(broker: &EmbeddedBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (conn, ch)
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

async fn declare(ch: &Channel, name: &str, arguments: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), arguments).await.unwrap();
}

async fn publish(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) -> Confirmation {
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, props).await.unwrap().await.unwrap()
}

async fn consume(ch: &Channel, queue: &str, arguments: FieldTable) -> lapin::Consumer {
    ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), arguments).await.unwrap()
}

async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(WAIT, consumer.next()).await.expect("a delivery").expect("stream").expect("delivery")
}

fn ready(broker: &EmbeddedBroker, queue: &str) -> usize {
    broker.broker().vhost(&"/".into()).unwrap().queue(&queue.into()).unwrap().message_count()
}

/// The `x-death` entries of a delivery, as (queue, reason, count).
fn deaths(d: &lapin::message::Delivery) -> Vec<(String, String, i64)> {
    let headers = d.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(entries)) = headers.inner().get("x-death").cloned() else { panic!("no x-death") };
    entries
        .as_slice()
        .iter()
        .map(|e| {
            let AMQPValue::FieldTable(t) = e else { panic!("{e:?}") };
            let s = |k: &str| match t.inner().get(k) {
                Some(AMQPValue::LongString(v)) => v.to_string(),
                other => panic!("{k}: {other:?}"),
            };
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                other => panic!("count: {other:?}"),
            };
            (s("queue"), s("reason"), count)
        })
        .collect()
}

/// A queue `name` dead-lettering into the default exchange with routing key `dead`.
async fn with_dead_letter_queue(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) -> lapin::Consumer {
    declare(ch, "dead", FieldTable::default()).await;
    let mut pairs = vec![("x-dead-letter-exchange", text("")), ("x-dead-letter-routing-key", text("dead"))];
    pairs.extend(extra.iter().cloned());
    declare(ch, name, args(&pairs)).await;
    consume(ch, "dead", FieldTable::default()).await
}

#[tokio::test]
async fn queue_ttl_expires_messages_into_the_dead_letter_exchange() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    let mut dead = with_dead_letter_queue(&ch, "ttl", &[("x-message-ttl", AMQPValue::LongInt(100))]).await;
    let sent = Instant::now();
    publish(&ch, "ttl", b"old", BasicProperties::default()).await;
    let d = next(&mut dead).await;
    assert!(sent.elapsed() >= Duration::from_millis(100), "expired after {:?}", sent.elapsed());
    assert_eq!(d.data, b"old");
    assert_eq!(deaths(&d), [("ttl".to_string(), "expired".to_string(), 1)]);
    assert_eq!(d.routing_key.as_str(), "dead");
    assert_eq!(ready(&broker, "ttl"), 0, "an expired message is gone from its queue");
}

#[tokio::test]
async fn per_message_expiration_and_expired_messages_never_reach_a_consumer() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    let mut dead = with_dead_letter_queue(&ch, "msgttl", &[]).await;
    publish(&ch, "msgttl", b"short", BasicProperties::default().with_expiration("50".into())).await;
    publish(&ch, "msgttl", b"long", BasicProperties::default().with_expiration("60000".into())).await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"short");
    let headers = d.properties.headers().clone().unwrap();
    let AMQPValue::FieldArray(entries) = headers.inner().get("x-death").unwrap().clone() else { panic!() };
    let AMQPValue::FieldTable(entry) = &entries.as_slice()[0] else { panic!() };
    assert_eq!(entry.inner().get("original-expiration"), Some(&text("50")));
    assert_eq!(d.properties.expiration(), &None, "the expiration is removed when dead-lettered");
    // The consumer that arrives now sees only the live message.
    let mut live = consume(&ch, "msgttl", FieldTable::default()).await;
    assert_eq!(next(&mut live).await.data, b"long");
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered_and_x_death_counts_repeats() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    // "work" dead-letters into "retry", whose TTL sends messages back to "work".
    declare(&ch, "work", args(&[("x-dead-letter-exchange", text("")), ("x-dead-letter-routing-key", text("retry"))]))
        .await;
    declare(
        &ch,
        "retry",
        args(&[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("work")),
            ("x-message-ttl", AMQPValue::LongInt(20)),
        ]),
    )
    .await;
    publish(&ch, "work", b"job", BasicProperties::default()).await;
    let mut work = consume(&ch, "work", FieldTable::default()).await;
    let first = next(&mut work).await;
    first.reject(BasicRejectOptions { requeue: false }).await.unwrap();
    let second = next(&mut work).await;
    assert_eq!(deaths(&second), [("retry".into(), "expired".into(), 1), ("work".into(), "rejected".into(), 1)]);
    second.nack(BasicNackOptions { requeue: false, multiple: false }).await.unwrap();
    let third = next(&mut work).await;
    assert_eq!(deaths(&third), [("retry".into(), "expired".into(), 2), ("work".into(), "rejected".into(), 2)]);
    let headers = third.properties.headers().clone().unwrap();
    assert_eq!(headers.inner().get("x-first-death-reason"), Some(&text("rejected")));
    assert_eq!(headers.inner().get("x-first-death-queue"), Some(&text("work")));
    third.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test]
async fn max_length_drops_the_head_into_the_dead_letter_exchange() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    let mut dead = with_dead_letter_queue(&ch, "short", &[("x-max-length", AMQPValue::LongInt(2))]).await;
    for body in [b"1", b"2", b"3"] {
        assert!(matches!(publish(&ch, "short", body, BasicProperties::default()).await, Confirmation::Ack(_)));
    }
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"1");
    assert_eq!(deaths(&d)[0].1, "maxlen");
    assert_eq!(ready(&broker, "short"), 2);
}

#[tokio::test]
async fn reject_publish_overflow_nacks_the_publisher() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    declare(
        &ch,
        "full",
        args(&[("x-max-length-bytes", AMQPValue::LongInt(10)), ("x-overflow", text("reject-publish"))]),
    )
    .await;
    assert!(matches!(publish(&ch, "full", b"0123456789", BasicProperties::default()).await, Confirmation::Ack(_)));
    assert!(matches!(publish(&ch, "full", b"x", BasicProperties::default()).await, Confirmation::Nack(_)));
    assert_eq!(ready(&broker, "full"), 1);
}

#[tokio::test]
async fn priority_queues_deliver_the_highest_priority_first() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    declare(&ch, "prio", args(&[("x-max-priority", AMQPValue::ShortShortUInt(10))])).await;
    for (body, priority) in [(&b"low"[..], 1), (b"top", 50), (b"mid", 5), (b"none", 0)] {
        publish(&ch, "prio", body, BasicProperties::default().with_priority(priority)).await;
    }
    let mut c = consume(&ch, "prio", FieldTable::default()).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(String::from_utf8(next(&mut c).await.data).unwrap());
    }
    // 50 is capped to the queue's maximum (10) and still comes first.
    assert_eq!(order, ["top", "mid", "low", "none"]);
}

#[tokio::test]
async fn a_single_active_consumer_gets_everything_until_it_goes() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    declare(&ch, "sac", args(&[("x-single-active-consumer", AMQPValue::Boolean(true))])).await;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut first = ch.basic_consume("sac".into(), "first".into(), opts, FieldTable::default()).await.unwrap();
    let mut second = ch.basic_consume("sac".into(), "second".into(), opts, FieldTable::default()).await.unwrap();
    for i in 0..3u8 {
        publish(&ch, "sac", &[i], BasicProperties::default()).await;
    }
    for i in 0..3u8 {
        assert_eq!(next(&mut first).await.data, [i]);
    }
    ch.basic_cancel("first".into(), BasicCancelOptions::default()).await.unwrap();
    publish(&ch, "sac", b"next", BasicProperties::default()).await;
    assert_eq!(next(&mut second).await.data, b"next");
}

#[tokio::test]
async fn higher_priority_consumers_are_served_first_while_they_have_credit() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    declare(&ch, "cp", FieldTable::default()).await;
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut low = consume(&ch, "cp", args(&[("x-priority", AMQPValue::LongInt(1))])).await;
    let mut high = consume(&ch, "cp", args(&[("x-priority", AMQPValue::LongInt(10))])).await;
    for i in 0..3u8 {
        publish(&ch, "cp", &[i], BasicProperties::default()).await;
    }
    // The high-priority consumer takes two (its prefetch), the third spills over.
    assert_eq!(next(&mut high).await.data, [0]);
    assert_eq!(next(&mut high).await.data, [1]);
    assert_eq!(next(&mut low).await.data, [2]);
}

#[tokio::test]
async fn unused_queues_expire_and_consumers_keep_them() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    let expires = args(&[("x-expires", AMQPValue::LongInt(150))]);
    declare(&ch, "kept", expires.clone()).await;
    let _consumer = consume(&ch, "kept", FieldTable::default()).await;
    let declared = Instant::now();
    declare(&ch, "gone", expires).await;
    let vhost = broker.broker().vhost(&"/".into()).unwrap();
    // Nothing tells a client that a queue expired; look until it has gone.
    while vhost.queue(&"gone".into()).is_ok() {
        assert!(declared.elapsed() < WAIT, "the unused queue never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(declared.elapsed() >= Duration::from_millis(150), "expired after {:?}", declared.elapsed());
    assert!(vhost.queue(&"kept".into()).is_ok(), "a queue with a consumer is in use");
}

#[tokio::test]
async fn invalid_arguments_are_refused_with_406() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    let err = ch
        .queue_declare("bad".into(), QueueDeclareOptions::default(), args(&[("x-message-ttl", AMQPValue::LongInt(-1))]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid arg 'x-message-ttl'"), "{err}");
}

#[tokio::test]
async fn an_unacked_delivery_past_its_consumer_timeout_closes_the_channel_and_is_requeued() {
    let broker = EmbeddedBroker::builder().consumer_timeout(Duration::from_secs(60)).start().await.unwrap();
    let (conn, ch) = channel(&broker).await;
    declare(&ch, "slow", args(&[("x-consumer-timeout", AMQPValue::LongInt(200))])).await;
    publish(&ch, "slow", b"task", BasicProperties::default()).await;
    // Taken before basic.consume is sent, so the broker's delivery (and the
    // deadline it starts) cannot come before it.
    let consumed = Instant::now();
    let mut c = consume(&ch, "slow", FieldTable::default()).await;
    let d = next(&mut c).await;
    assert!(!d.redelivered);
    // Never acked: the broker closes the channel once 200 ms have passed.
    let closed = tokio::time::timeout(WAIT, c.next()).await.expect("the channel closes");
    assert!(consumed.elapsed() >= Duration::from_millis(200), "closed after {:?}", consumed.elapsed());
    let err = match closed {
        Some(Err(e)) => e.to_string(),
        other => panic!("expected the consumer to fail with the close reason, got {other:?}"),
    };
    assert!(
        err.contains("delivery acknowledgement on channel 1 timed out. Timeout value used: 200 ms"),
        "unexpected close: {err}"
    );
    let ch2 = conn.create_channel().await.unwrap();
    let again = ch2.basic_get("slow".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("requeued");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn transactions_hold_publishes_and_acks_until_commit() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "txq", FieldTable::default()).await;
    ch.tx_select().await.unwrap();
    let plain = BasicProperties::default();
    ch.basic_publish("".into(), "txq".into(), BasicPublishOptions::default(), b"a", plain.clone()).await.unwrap();
    ch.tx_rollback().await.unwrap();
    assert_eq!(ready(&broker, "txq"), 0, "a rolled-back publish never arrives");
    ch.basic_publish("".into(), "txq".into(), BasicPublishOptions::default(), b"b", plain.clone()).await.unwrap();
    assert_eq!(ready(&broker, "txq"), 0, "not before the commit");
    ch.tx_commit().await.unwrap();
    assert_eq!(ready(&broker, "txq"), 1);

    let got = ch.basic_get("txq".into(), BasicGetOptions::default()).await.unwrap().expect("committed message");
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    ch.tx_rollback().await.unwrap();
    let queue = broker.broker().vhost(&"/".into()).unwrap().queue(&"txq".into()).unwrap();
    assert_eq!(queue.unacked_count(), 1, "a rolled-back ack leaves the delivery unacked");
    // lapin's acker acks a delivery once; ack the tag again directly.
    ch.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default()).await.unwrap();
    ch.tx_commit().await.unwrap();
    assert_eq!(queue.unacked_count(), 0);

    let err = ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("cannot switch from tx to confirm mode"), "{err}");
}

#[tokio::test]
async fn raising_the_prefetch_at_run_time_takes_effect_for_existing_consumers() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_c, ch) = channel(&broker).await;
    declare(&ch, "grow", FieldTable::default()).await;
    for i in 0..3u8 {
        publish(&ch, "grow", &[i], BasicProperties::default()).await;
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut c = consume(&ch, "grow", FieldTable::default()).await;
    assert_eq!(next(&mut c).await.data, [0]);
    assert_eq!(ready(&broker, "grow"), 2, "prefetch 1 holds the rest back");
    ch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
    assert_eq!(next(&mut c).await.data, [1]);
    assert_eq!(next(&mut c).await.data, [2]);
}
