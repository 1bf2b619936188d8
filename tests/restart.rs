//! Restarts a test triggers: connections closed as at a RabbitMQ node's
//! shutdown (or reset, for a crash), the port refusing connections while the
//! broker is down, and afterwards exactly what RabbitMQ keeps: durable
//! exchanges and queues with their bindings and persistent messages, the
//! formerly unacknowledged ones redelivered.

mod common;

use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren::broker::events::Event;
use warren::protocol::Method;
use warren::{EmbeddedBroker, Restart};

use common::http::{call, GUEST};
use common::RawClient;

const WAIT: Duration = Duration::from_secs(5);

async fn connect(broker: &EmbeddedBroker) -> Connection {
    Connection::connect(&broker.url(), ConnectionProperties::default()).await.expect("connect")
}

fn options(durable: bool, exclusive: bool) -> QueueDeclareOptions {
    QueueDeclareOptions { durable, exclusive, ..Default::default() }
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str, persistent: bool) {
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Whether a queue exists, by a passive declare on a channel of its own.
async fn queue_exists(conn: &Connection, name: &str) -> Option<u32> {
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    ch.queue_declare(name.into(), passive, FieldTable::default()).await.ok().map(|q| q.message_count())
}

async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
    ch.exchange_declare(name.into(), ExchangeKind::Direct, passive, FieldTable::default()).await.is_ok()
}

#[tokio::test]
async fn a_restart_keeps_what_rabbitmq_keeps_and_redelivers_what_was_unacked() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let none = FieldTable::default;
    ch.queue_declare("work".into(), options(true, false), none()).await.unwrap();
    ch.queue_declare("scratch".into(), options(false, false), none()).await.unwrap();
    ch.queue_declare("mine".into(), options(true, true), none()).await.unwrap();
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare("jobs".into(), ExchangeKind::Direct, durable, none()).await.unwrap();
    ch.exchange_declare("temp".into(), ExchangeKind::Direct, Default::default(), none()).await.unwrap();
    ch.queue_bind("work".into(), "jobs".into(), "k".into(), Default::default(), none()).await.unwrap();
    ch.queue_bind("work".into(), "temp".into(), "t".into(), Default::default(), none()).await.unwrap();
    publish(&ch, "jobs", "k", "p1", true).await;
    publish(&ch, "jobs", "k", "t1", false).await;
    publish(&ch, "jobs", "k", "p2", true).await;
    publish(&ch, "", "scratch", "p-scratch", true).await;
    // p1 is delivered and left unacknowledged when the broker goes down.
    let got = ch.basic_get("work".into(), BasicGetOptions { no_ack: false }).await.unwrap().expect("p1");
    assert_eq!(got.delivery.data, b"p1");

    let mut events = broker.events();
    let restart = tokio::spawn({
        let b = broker.broker().clone();
        async move { b.restart(Restart { downtime: Duration::from_millis(300), crash: false }).await }
    });
    let stopped = events.wait_for(|e| matches!(e, Event::BrokerStopped { .. }), WAIT).await;
    assert_eq!(stopped, Some(Event::BrokerStopped { crash: false }));
    let refused = tokio::net::TcpStream::connect(broker.addr()).await;
    assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused, "down means refused");
    let done = restart.await.unwrap().expect("restarted");
    assert_eq!(done.closed_connections, 1);
    assert_eq!((done.kept.queues, done.kept.messages), (1, 2), "{done:?}");
    assert_eq!((done.dropped.queues, done.dropped.exchanges, done.dropped.messages), (1, 1, 2), "{done:?}");
    assert!(done.took >= Duration::from_millis(300));
    // The old connection is closed (its close frame is checked byte for
    // byte in the next test).
    assert!(ch.basic_get("work".into(), BasicGetOptions::default()).await.is_err());
    assert!(!conn.status().connected());

    let conn = connect(&broker).await;
    assert_eq!(queue_exists(&conn, "work").await, Some(2));
    assert_eq!(queue_exists(&conn, "scratch").await, None, "a non-durable queue is gone");
    assert_eq!(queue_exists(&conn, "mine").await, None, "an exclusive queue is gone");
    assert!(exchange_exists(&conn, "jobs").await);
    assert!(!exchange_exists(&conn, "temp").await, "a non-durable exchange is gone");
    let ch = conn.create_channel().await.unwrap();
    let mut seen = Vec::new();
    while let Some(m) = ch.basic_get("work".into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        seen.push((String::from_utf8(m.delivery.data.clone()).unwrap(), m.delivery.redelivered));
    }
    assert_eq!(seen, [("p1".to_string(), true), ("p2".to_string(), false)], "in order, transient gone");
    // The durable binding survived: jobs/k still routes to work.
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    publish(&ch, "jobs", "k", "after", true).await;
    assert_eq!(queue_exists(&conn, "work").await, Some(1));
}

#[tokio::test]
async fn a_graceful_restart_sends_rabbitmqs_shutdown_close_and_a_crash_only_a_reset() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let b = broker.broker().clone();
    let mut client = RawClient::open(broker.addr(), 0).await;
    let restart = tokio::spawn({
        let b = b.clone();
        async move { b.restart(Restart::default()).await }
    });
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(c)) => {
            assert_eq!(c.reply_code, 320);
            assert_eq!(
                c.reply_text.to_string(),
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
            );
        }
        other => panic!("{other:?}"),
    }
    restart.await.unwrap().unwrap();

    let mut client = RawClient::open(broker.addr(), 0).await;
    let done = b.restart(Restart { downtime: Duration::ZERO, crash: true }).await.unwrap();
    assert_eq!(done.closed_connections, 1);
    let mut buf = [0u8; 64];
    use tokio::io::AsyncReadExt;
    let read = tokio::time::timeout(WAIT, client.stream.read(&mut buf)).await.unwrap();
    assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset, "no close frame, a reset");
}

#[tokio::test]
async fn restart_over_http_and_its_bounds() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    for bad in [r#"{"downtime_ms": 60001}"#, r#"{"downtime_ms": -1}"#, r#"{"crash": "yes"}"#] {
        let (status, body) = call(http, "POST", "/api/warren/restart", Some(bad), Some(GUEST)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = call(http, "POST", "/api/warren/restart", Some(r#"{"downtime_ms": 10}"#), Some(GUEST)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed_connections"], 0);
    assert_eq!(body["kept"]["exchanges"], 5, "amq.direct, fanout, topic, headers, match: {body}");
    RawClient::open(broker.addr(), 0).await;
}

#[tokio::test]
async fn a_broker_without_a_listener_says_it_cannot_restart() {
    let b = warren::broker::Broker::new(warren::Config::default()).unwrap();
    assert_eq!(b.restart(Restart::default()).await.unwrap_err(), "no AMQP listener is running");
    let long = Restart { downtime: Duration::from_secs(61), crash: false };
    assert!(b.restart(long).await.unwrap_err().contains("at most 60 s"));
}
