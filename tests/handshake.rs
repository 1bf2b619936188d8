//! The connection handshake and connection-level errors, byte for byte,
//! with a raw client: what RabbitMQ sends is what warren sends.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{RawClient, Read};
use warren::protocol::frame::{write_method, PROTOCOL_HEADER};
use warren::protocol::methods::{basic, channel, connection};
use warren::protocol::{FieldTable, FieldValue, Frame, Method};
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(3);

async fn expect_close(client: &mut RawClient) -> connection::Close {
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(c)) => c,
        other => panic!("expected connection.close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_protocol_header_gets_ours_back_and_a_close() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.send_raw(b"AMQP\x00\x00\x08\x00").await;
    assert_eq!(client.read_bytes(WAIT).await, PROTOCOL_HEADER);
    let mut http = RawClient::connect(broker.addr()).await;
    http.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(http.read_bytes(WAIT).await, PROTOCOL_HEADER);
}

#[tokio::test]
async fn connection_start_announces_an_honest_server() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.send_raw(PROTOCOL_HEADER).await;
    let (channel, Method::ConnectionStart(start)) = client.expect_method(WAIT).await else { panic!() };
    assert_eq!(channel, 0);
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(&start.mechanisms[..], b"PLAIN AMQPLAIN");
    assert_eq!(&start.locales[..], b"en_US");
    let caps = start.server_properties.get("capabilities").and_then(FieldValue::as_table).unwrap();
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
        "connection.blocked",
        "exchange_exchange_bindings",
        "consumer_priorities",
    ] {
        assert_eq!(caps.get(cap), Some(&FieldValue::Bool(true)), "{cap}");
    }
    assert_eq!(caps.get("direct_reply_to"), Some(&FieldValue::Bool(false)), "not implemented, not advertised");
    assert!(start.server_properties.get("product").is_some());
}

#[tokio::test]
async fn tune_proposes_rabbitmq_defaults() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    let tune = client.handshake_to_tune_ok(2047, 131_072, 60).await;
    assert_eq!((tune.channel_max, tune.frame_max, tune.heartbeat), (2047, 131_072, 60));
}

#[tokio::test]
async fn bad_tune_ok_values_are_refused_with_530() {
    for (channel_max, frame_max, text) in [
        (2047, 4096, "NOT_ALLOWED - negotiated frame_max = 4096 is lower than the minimum allowed value (8192)"),
        (2047, 0, "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)"),
        (
            2047,
            200_000,
            "NOT_ALLOWED - negotiated frame_max = 200000 is higher than the maximum allowed value (131072)",
        ),
        (
            0,
            131_072,
            "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
        ),
    ] {
        let broker = EmbeddedBroker::start().await.unwrap();
        let mut client = RawClient::connect(broker.addr()).await;
        client.handshake_to_tune_ok(channel_max, frame_max, 60).await;
        let close = expect_close(&mut client).await;
        assert_eq!(close.reply_code, 530);
        assert_eq!(close.reply_text.to_string(), text);
        // The method to blame is tune-ok, as in RabbitMQ's protocol_error.
        assert_eq!((close.class_id, close.method_id), connection::TuneOk::IDS);
    }
}

#[tokio::test]
async fn wrong_password_is_refused_with_403_for_clients_that_ask() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.send_raw(PROTOCOL_HEADER).await;
    client.expect_method(WAIT).await;
    let caps = FieldTable::new().with("authentication_failure_close", FieldValue::Bool(true));
    client
        .send(
            0,
            connection::StartOk {
                client_properties: FieldTable::new().with("capabilities", FieldValue::Table(caps)),
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0guest\0wrong"),
                locale: "en_US".into(),
            },
        )
        .await;
    let close = expect_close(&mut client).await;
    assert_eq!(close.reply_code, 403);
    assert_eq!(
        close.reply_text.to_string(),
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
}

#[tokio::test]
async fn amqplain_and_configured_users_and_vhosts_work() {
    let broker = EmbeddedBroker::builder().user("bob", "pw").vhost("dev").start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.send_raw(PROTOCOL_HEADER).await;
    client.expect_method(WAIT).await;
    // AMQPLAIN: a field table without its length prefix.
    let mut table = BytesMut::new();
    let t = FieldTable::new()
        .with("LOGIN", FieldValue::LongStr(Bytes::from_static(b"bob")))
        .with("PASSWORD", FieldValue::LongStr(Bytes::from_static(b"pw")));
    warren::protocol::field_table::encode_table(&mut table, &t);
    let response = table.freeze().slice(4..);
    client
        .send(
            0,
            connection::StartOk {
                client_properties: FieldTable::new(),
                mechanism: "AMQPLAIN".into(),
                response,
                locale: "en_US".into(),
            },
        )
        .await;
    let (_, Method::ConnectionTune(_)) = client.expect_method(WAIT).await else { panic!("AMQPLAIN login failed") };
    client.send(0, connection::TuneOk { channel_max: 10, frame_max: 131_072, heartbeat: 0 }).await;
    client.send(0, connection::Open { virtual_host: "nope".into(), ..Default::default() }).await;
    let close = expect_close(&mut client).await;
    assert_eq!((close.reply_code, close.class_id, close.method_id), (530, 10, 40));
    assert_eq!(close.reply_text.to_string(), "NOT_ALLOWED - vhost nope not found");

    let mut client = RawClient::connect(broker.addr()).await;
    client.handshake_to_tune_ok(10, 131_072, 0).await;
    client.send(0, connection::Open { virtual_host: "dev".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ConnectionOpenOk(_)));
}

#[tokio::test]
async fn a_frame_over_frame_max_is_a_501_from_its_header_alone() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    // A body frame header announcing 200000 octets; no payload follows.
    client.send_raw(b"\x03\x00\x01\x00\x03\x0d\x40").await;
    let close = expect_close(&mut client).await;
    assert_eq!(close.reply_code, 501);
    assert_eq!(
        close.reply_text.to_string(),
        "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,200000,131064}"
    );
    assert_eq!((close.class_id, close.method_id), (0, 0));
}

#[tokio::test]
async fn a_bad_frame_end_is_a_501() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    let mut frame = BytesMut::new();
    write_method(&mut frame, 1, &Method::BasicQos(basic::Qos { prefetch_size: 0, prefetch_count: 1, global: false }));
    let last = frame.len() - 1;
    frame[last] = 0;
    client.send_raw(&frame).await;
    let close = expect_close(&mut client).await;
    assert_eq!(close.reply_code, 501);
    assert_eq!(
        close.reply_text.to_string(),
        "FRAME_ERROR - type 1, all octets = <<0,60,0,10,0,0,0,0,0,1,0>>: {invalid_frame_end_marker,0}"
    );
}

#[tokio::test]
async fn channel_max_counts_open_channels() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.handshake_to_tune_ok(2, 131_072, 0).await;
    client.send(0, connection::Open { virtual_host: "/".into(), ..Default::default() }).await;
    client.expect_method(WAIT).await;
    for id in [1, 2] {
        client.send(id, channel::Open::default()).await;
        assert!(matches!(client.expect_method(WAIT).await.1, Method::ChannelOpenOk(_)));
    }
    client.send(3, channel::Open::default()).await;
    let close = expect_close(&mut client).await;
    assert_eq!(close.reply_code, 530);
    assert_eq!(
        close.reply_text.to_string(),
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
    );
}

#[tokio::test]
async fn channel_state_errors_are_504() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.send(1, channel::Open::default()).await;
    let close = expect_close(&mut client).await;
    assert_eq!((close.reply_code, close.class_id, close.method_id), (504, 20, 10));
    assert_eq!(close.reply_text.to_string(), "CHANNEL_ERROR - second 'channel.open' seen");

    let mut client = RawClient::open(broker.addr(), 0).await;
    client.send(7, basic::Qos { prefetch_size: 0, prefetch_count: 1, global: false }).await;
    let close = expect_close(&mut client).await;
    assert_eq!((close.reply_code, close.class_id, close.method_id), (504, 60, 10));
    assert_eq!(close.reply_text.to_string(), "CHANNEL_ERROR - expected 'channel.open'");
}

#[tokio::test]
async fn immediate_publish_is_540_and_unknown_tag_is_406() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.send(1, basic::Ack { delivery_tag: 5, multiple: false }).await;
    match client.expect_method(WAIT).await {
        (1, Method::ChannelClose(c)) => {
            assert_eq!((c.reply_code, c.class_id, c.method_id), (406, 60, 80));
            assert_eq!(c.reply_text.to_string(), "PRECONDITION_FAILED - unknown delivery tag 5");
        }
        other => panic!("{other:?}"),
    }
    client.send(1, channel::CloseOk {}).await;
    client.send(2, channel::Open::default()).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ChannelOpenOk(_)));
    let mut frames = BytesMut::new();
    let publish =
        basic::Publish { exchange: "".into(), routing_key: "q".into(), immediate: true, ..Default::default() };
    write_method(&mut frames, 2, &publish.into());
    warren::protocol::frame::write_content_header(&mut frames, 2, 60, 0, &[0, 0]);
    client.send_raw(&frames).await;
    let close = expect_close(&mut client).await;
    assert_eq!((close.reply_code, close.class_id, close.method_id), (540, 60, 40));
    assert_eq!(close.reply_text.to_string(), "NOT_IMPLEMENTED - immediate=true");
}

#[tokio::test]
async fn client_close_is_answered_with_close_ok_then_eof() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.send(0, connection::Close { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ConnectionCloseOk(_)));
    assert!(matches!(client.read(WAIT).await, Read::Closed));
}

#[tokio::test]
async fn the_handshake_times_out() {
    let broker = EmbeddedBroker::builder().handshake_timeout(Duration::from_millis(300)).start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.send_raw(PROTOCOL_HEADER).await;
    match client.read(WAIT).await {
        Read::Frame(Frame::Method { method: Method::ConnectionStart(_), .. }) => {}
        other => panic!("{other:?}"),
    }
    // No start-ok: the broker gives up without a close frame.
    assert!(matches!(client.read(WAIT).await, Read::Closed));
}

#[tokio::test]
async fn shutdown_closes_connections_with_320() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    let stopping = tokio::spawn(broker.shutdown());
    let close = expect_close(&mut client).await;
    assert_eq!(close.reply_code, 320);
    assert_eq!(
        close.reply_text.to_string(),
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    client.send(0, connection::CloseOk {}).await;
    stopping.await.unwrap();
}

#[tokio::test]
async fn dropping_the_handle_shuts_the_broker_down() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let addr = broker.addr();
    let mut client = RawClient::open(addr, 0).await;
    drop(broker);
    let close = expect_close(&mut client).await;
    assert_eq!(close.reply_code, 320);
    client.send(0, connection::CloseOk {}).await;
    assert!(matches!(client.read(WAIT).await, Read::Closed));
    // The listener is gone too: new connections are refused.
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, refused).await.expect("the port still accepts connections");
}
