//! Inspection with lapin: connections with what they negotiated, queues
//! with ready/unacked counts and consumers, exchanges with bindings, and a
//! peek at messages that leaves them in the queue.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::ConnectionState;
use warren::EmbeddedBroker;

#[tokio::test]
async fn the_broker_shows_what_it_holds() {
    let broker = EmbeddedBroker::builder().heartbeat(7).start().await.unwrap();
    let props = ConnectionProperties::default().with_connection_name("inspector".into());
    let conn = Connection::connect(&broker.url(), props).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("iq".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind("iq".into(), "amq.topic".into(), "a.#".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("k".into(), AMQPValue::LongString("v".into()));
    for body in [&b"first"[..], b"second", b"third"] {
        let props = BasicProperties::default().with_headers(headers.clone()).with_priority(3);
        ch.basic_publish("amq.topic".into(), "a.b".into(), BasicPublishOptions::default(), body, props)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let got = ch.basic_get("iq".into(), BasicGetOptions::default()).await.unwrap().unwrap();
    assert_eq!(got.delivery.data, b"first");
    ch.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let _consumer = ch
        .basic_consume("iq".into(), "watcher".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();

    let b = broker.broker();
    let connections = b.connection_infos();
    assert_eq!(connections.len(), 1);
    let c = &connections[0];
    assert_eq!(c.client_name.as_deref(), Some("inspector"));
    assert_eq!(c.state, ConnectionState::Running);
    let details = c.details.as_ref().unwrap();
    assert_eq!((details.user.as_str(), details.vhost.as_str(), details.heartbeat), ("guest", "/", 7));
    assert!(c.bytes_in > 0 && c.bytes_out > 0);
    assert!(c.frames_in >= 10 && c.frames_out >= 10, "{c:?}");
    assert_eq!(c.channels, [1]);
    assert!(c.idle < std::time::Duration::from_secs(5), "{:?}", c.idle);

    let q = b.queue_infos().into_iter().find(|q| q.name == "iq").unwrap();
    assert!(q.durable && !q.exclusive);
    assert_eq!(q.consumers.len(), 1);
    assert_eq!(q.consumers[0].tag.to_string(), "watcher");
    assert_eq!(q.consumers[0].prefetch_count, 5);
    assert_eq!(q.messages_ready + q.messages_unacknowledged, 3);

    let topic = b.exchange_infos().into_iter().find(|x| x.name == "amq.topic").unwrap();
    assert_eq!(topic.kind, "topic");
    assert_eq!(topic.bindings.len(), 1);
    assert_eq!(
        (
            topic.bindings[0].destination_type,
            topic.bindings[0].destination.as_str(),
            topic.bindings[0].routing_key.as_str()
        ),
        ("queue", "iq", "a.#")
    );
}

#[tokio::test]
async fn peek_shows_messages_without_taking_them() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("pq".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for body in [&b"one"[..], b"two"] {
        let props = BasicProperties::default().with_content_type("text/plain".into());
        ch.basic_publish("".into(), "pq".into(), BasicPublishOptions::default(), body, props)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let peeked = broker.broker().peek("/", "pq", 10).unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!(&peeked[0].body[..], b"one");
    assert_eq!(peeked[0].routing_key, "pq");
    assert_eq!(peeked[0].properties.content_type, Some("text/plain".into()));
    assert!(!peeked[0].redelivered);
    let q = broker.broker().queue_infos().into_iter().find(|q| q.name == "pq").unwrap();
    assert_eq!(q.messages_ready, 2, "peeking consumes nothing");
    assert!(broker.broker().peek("/", "missing", 1).is_none());
}
