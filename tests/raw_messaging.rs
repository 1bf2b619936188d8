//! Messaging behaviour seen frame by frame with a raw client: the order and
//! exact content of what the broker sends, where a client library would
//! hide it.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{publish_frames, RawClient, Read};
use warren::protocol::methods::{basic, confirm, queue};
use warren::protocol::{FieldTable, FieldValue, Frame, Method};
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_burst_of_publishes_is_confirmed_with_one_multiple_ack() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("c").await;
    client.send(1, confirm::Select { no_wait: false }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ConfirmSelectOk(_)));
    let mut burst = BytesMut::new();
    for _ in 0..3 {
        publish_frames(&mut burst, "c", false, b"x");
    }
    client.send_raw(&burst).await;
    match client.expect_method(WAIT).await.1 {
        Method::BasicAck(a) => assert_eq!((a.delivery_tag, a.multiple), (3, true)),
        other => panic!("{other:?}"),
    }
    let mut one = BytesMut::new();
    publish_frames(&mut one, "c", false, b"y");
    client.send_raw(&one).await;
    match client.expect_method(WAIT).await.1 {
        Method::BasicAck(a) => assert_eq!((a.delivery_tag, a.multiple), (4, false)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unroutable_mandatory_messages_come_back_before_their_confirm() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.send(1, confirm::Select { no_wait: true }).await;
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "nowhere", true, b"lost");
    client.send_raw(&frames).await;
    match client.expect_method(WAIT).await.1 {
        Method::BasicReturn(r) => {
            assert_eq!((r.reply_code, r.reply_text.to_string()), (312, "NO_ROUTE".to_string()));
            assert_eq!(r.routing_key.to_string(), "nowhere");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.read(WAIT).await, Read::Frame(Frame::Header { .. })));
    match client.read(WAIT).await {
        Read::Frame(Frame::Body { body, .. }) => assert_eq!(&body[..], b"lost"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicAck(a) if a.delivery_tag == 1));
}

#[tokio::test]
async fn consume_ok_always_precedes_the_first_delivery() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("waiting").await;
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "waiting", false, b"m");
    client.send_raw(&frames).await;
    client.send(1, basic::Consume { queue: "waiting".into(), ..Default::default() }).await;
    let tag = match client.expect_method(WAIT).await.1 {
        Method::BasicConsumeOk(ok) => ok.consumer_tag,
        other => panic!("expected consume-ok first, got {other:?}"),
    };
    assert!(tag.to_string().starts_with("amq.ctag-"));
    assert_eq!(tag.len(), "amq.ctag-".len() + 22);
    match client.expect_method(WAIT).await.1 {
        Method::BasicDeliver(d) => {
            assert_eq!(d.consumer_tag, tag);
            assert_eq!(d.delivery_tag, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reusing_a_consumer_tag_is_a_530_connection_error() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    for _ in 0..2 {
        client.send(1, basic::Consume { queue: "q".into(), consumer_tag: "t".into(), ..Default::default() }).await;
    }
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicConsumeOk(_)));
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(c)) => {
            assert_eq!((c.reply_code, c.class_id, c.method_id), (530, 60, 20));
            assert_eq!(c.reply_text.to_string(), "NOT_ALLOWED - attempt to reuse consumer tag 't'");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn redeclaring_with_other_properties_is_406_with_rabbitmqs_text() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("d").await;
    client.send(1, queue::Declare { queue: "d".into(), durable: true, ..Default::default() }).await;
    match client.expect_method(WAIT).await.1 {
        Method::ChannelClose(c) => {
            assert_eq!((c.reply_code, c.class_id, c.method_id), (406, 50, 10));
            assert_eq!(
                c.reply_text.to_string(),
                "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'd' in vhost '/': received 'true' but current is 'false'"
            );
        }
        other => panic!("{other:?}"),
    }
    client.send(1, warren::protocol::methods::channel::CloseOk {}).await;
    client.send(1, warren::protocol::methods::channel::Open::default()).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ChannelOpenOk(_)));
    let args = FieldTable::new().with("x-max-length", FieldValue::I32(10));
    client.send(1, queue::Declare { queue: "d".into(), arguments: args, ..Default::default() }).await;
    match client.expect_method(WAIT).await.1 {
        Method::ChannelClose(c) => assert_eq!(
            c.reply_text.to_string(),
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'd' in vhost '/': received the value '10' of type 'signedint' but current is none"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn declare_ok_counts_ready_messages_and_consumers() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("n").await;
    let mut frames = BytesMut::new();
    for _ in 0..2 {
        publish_frames(&mut frames, "n", false, b"");
    }
    client.send_raw(&frames).await;
    client.send(1, queue::Declare { queue: "n".into(), passive: true, ..Default::default() }).await;
    match client.expect_method(WAIT).await.1 {
        Method::QueueDeclareOk(ok) => assert_eq!((ok.message_count, ok.consumer_count), (2, 0)),
        other => panic!("{other:?}"),
    }
    client.send(1, basic::Qos { prefetch_count: 1, ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicQosOk(_)));
    client.send(1, basic::Consume { queue: "n".into(), ..Default::default() }).await;
    client.send(1, queue::Declare { queue: "n".into(), passive: true, ..Default::default() }).await;
    loop {
        match client.expect_method(WAIT).await.1 {
            Method::QueueDeclareOk(ok) => {
                assert_eq!((ok.message_count, ok.consumer_count), (1, 1));
                break;
            }
            Method::BasicConsumeOk(_) => {}
            Method::BasicDeliver(_) => {
                // The delivery's content header follows (an empty body has no body frame).
                assert!(matches!(client.read(WAIT).await, Read::Frame(Frame::Header { .. })));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn deleting_a_consumed_queue_replies_delete_ok_before_basic_cancel() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("gone").await;
    client.send(1, basic::Consume { queue: "gone".into(), consumer_tag: "c".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicConsumeOk(_)));
    client.send(1, queue::Delete { queue: "gone".into(), ..Default::default() }).await;
    let first = client.expect_method(WAIT).await.1;
    assert!(matches!(first, Method::QueueDeleteOk(_)), "{first:?}");
    match client.expect_method(WAIT).await.1 {
        Method::BasicCancel(c) => assert_eq!(c.consumer_tag.to_string(), "c"),
        other => panic!("expected the server's basic.cancel, got {other:?}"),
    }
}

#[tokio::test]
async fn qos_ok_precedes_the_deliveries_a_larger_prefetch_releases() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let mut frames = BytesMut::new();
    for _ in 0..2 {
        publish_frames(&mut frames, "q", false, b"m");
    }
    client.send_raw(&frames).await;
    client.send(1, basic::Qos { prefetch_count: 1, ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicQosOk(_)));
    client.send(1, basic::Consume { queue: "q".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicConsumeOk(_)));
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicDeliver(d) if d.delivery_tag == 1));
    client.read(WAIT).await; // content header
    client.read(WAIT).await; // body
    client.send(1, basic::Qos { prefetch_count: 2, ..Default::default() }).await;
    let first = client.expect_method(WAIT).await.1;
    assert!(matches!(first, Method::BasicQosOk(_)), "qos-ok must come first, got {first:?}");
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicDeliver(d) if d.delivery_tag == 2));
}
