//! Exchanges and routing end to end, with lapin (and a raw client where the
//! exact close frame matters): declare/delete rules and texts, the
//! predeclared exchanges, auto-delete, topic and headers routing,
//! exchange-to-exchange bindings with loops, alternate exchanges, and a
//! topic exchange with many bindings.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use warren::broker::exchange::Destination;
use warren::broker::queue::Queue;
use warren::protocol::frame::{write_body_frame_header, write_content_header, write_method};
use warren::protocol::methods::{basic, channel, Method};
use warren::protocol::ShortStr;
use warren::EmbeddedBroker;

use common::RawClient;

const WAIT: Duration = Duration::from_secs(5);

async fn open(broker: &EmbeddedBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.expect("connect");
    let ch = channel(&conn).await;
    (conn, ch)
}

/// A new channel in confirm mode (the previous one may have been closed by an error).
async fn channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch
}

/// The reply code and text of the channel or connection close an
/// operation failed with.
fn refusal(e: lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, options: ExchangeDeclareOptions, args: FieldTable) {
    ch.exchange_declare(name.into(), kind, options, args).await.unwrap();
}

/// Declares a queue and binds it to `exchange` with `key`.
async fn bound_queue(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), args).await.unwrap();
}

/// Publishes and waits for the confirm; returns whether the message came
/// back with `basic.return`.
async fn publish(ch: &Channel, exchange: &str, key: &str, headers: Option<FieldTable>, mandatory: bool) -> bool {
    let mut props = BasicProperties::default();
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
    let options = BasicPublishOptions { mandatory, ..Default::default() };
    let confirm = ch.basic_publish(exchange.into(), key.into(), options, b"m", props).await.unwrap().await.unwrap();
    match confirm {
        Confirmation::Ack(returned) => returned.is_some(),
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// Ready messages in `queue`, and empties it.
async fn drain(ch: &Channel, queue: &str) -> u32 {
    let opts = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare(queue.into(), opts, FieldTable::default()).await.unwrap();
    ch.queue_purge(queue.into(), QueuePurgeOptions::default()).await.unwrap();
    q.message_count()
}

async fn exists(conn: &Connection, exchange: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let opts = ExchangeDeclareOptions { passive: true, ..Default::default() };
    match ch.exchange_declare(exchange.into(), ExchangeKind::Direct, opts, FieldTable::default()).await {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(refusal(e), (404, format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'")));
            false
        }
    }
}

#[tokio::test]
async fn declare_redeclare_and_delete_follow_rabbitmq() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (conn, ch) = open(&broker).await;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    exchange(&ch, "x", ExchangeKind::Topic, durable, FieldTable::default()).await;
    exchange(&ch, "x", ExchangeKind::Topic, durable, FieldTable::default()).await;

    let none = FieldTable::default;
    let cases = [
        (ExchangeKind::Fanout, durable, none(), "type", "'fanout'", "'topic'"),
        (ExchangeKind::Topic, ExchangeDeclareOptions::default(), none(), "durable", "'false'", "'true'"),
        (
            ExchangeKind::Topic,
            ExchangeDeclareOptions { auto_delete: true, ..durable },
            none(),
            "auto_delete",
            "'true'",
            "'false'",
        ),
        (
            ExchangeKind::Topic,
            ExchangeDeclareOptions { internal: true, ..durable },
            none(),
            "internal",
            "'true'",
            "'false'",
        ),
        (
            ExchangeKind::Topic,
            durable,
            table(&[("alternate-exchange", text("ae"))]),
            "alternate-exchange",
            "the value 'ae' of type 'longstr'",
            "none",
        ),
    ];
    for (kind, options, args, arg, received, current) in cases {
        let ch = channel(&conn).await;
        let e = ch.exchange_declare("x".into(), kind, options, args).await.unwrap_err();
        let expected = format!(
            "PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange 'x' in vhost '/': \
             received {received} but current is {current}"
        );
        assert_eq!(refusal(e), (406, expected));
    }

    let ch = channel(&conn).await;
    let e = ch.exchange_declare("amq.mine".into(), ExchangeKind::Direct, durable, FieldTable::default()).await;
    assert_eq!(
        refusal(e.unwrap_err()),
        (403, "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'".into())
    );
    let ch = channel(&conn).await;
    let e = ch.exchange_delete("amq.headers".into(), ExchangeDeleteOptions::default()).await;
    assert_eq!(
        refusal(e.unwrap_err()),
        (403, "ACCESS_REFUSED - deletion of system exchange 'amq.headers' in vhost '/' not allowed".into())
    );

    // if-unused counts bindings the exchange is the source of.
    let ch = channel(&conn).await;
    bound_queue(&ch, "q", "x", "k", FieldTable::default()).await;
    let if_unused = ExchangeDeleteOptions { if_unused: true, ..Default::default() };
    let e = ch.exchange_delete("x".into(), if_unused).await.unwrap_err();
    assert_eq!(refusal(e), (406, "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use".into()));
    let ch = channel(&conn).await;
    ch.queue_unbind("q".into(), "x".into(), "k".into(), FieldTable::default()).await.unwrap();
    ch.exchange_delete("x".into(), if_unused).await.unwrap();
    assert!(!exists(&conn, "x").await);
    // Deleting what does not exist is fine, as in RabbitMQ.
    ch.exchange_delete("x".into(), ExchangeDeleteOptions::default()).await.unwrap();

    // Deleting an exchange drops its bindings: a new one of the same name starts empty.
    exchange(&ch, "y", ExchangeKind::Fanout, ExchangeDeclareOptions::default(), FieldTable::default()).await;
    ch.queue_bind("q".into(), "y".into(), "".into(), QueueBindOptions::default(), FieldTable::default()).await.unwrap();
    ch.exchange_delete("y".into(), ExchangeDeleteOptions::default()).await.unwrap();
    exchange(&ch, "y", ExchangeKind::Fanout, ExchangeDeclareOptions::default(), FieldTable::default()).await;
    assert!(publish(&ch, "y", "", None, true).await, "returned: the old binding went with the old exchange");
    assert_eq!(drain(&ch, "q").await, 0);
}

#[tokio::test]
async fn unknown_type_is_a_connection_error_and_default_exchange_is_off_limits() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (conn, ch) = open(&broker).await;
    let default_refused = (403, "ACCESS_REFUSED - operation not permitted on the default exchange".to_string());
    let e = ch.exchange_declare("".into(), ExchangeKind::Direct, Default::default(), FieldTable::default()).await;
    assert_eq!(refusal(e.unwrap_err()), default_refused);
    let e = channel(&conn).await.exchange_delete("".into(), Default::default()).await;
    assert_eq!(refusal(e.unwrap_err()), default_refused);
    let ch = channel(&conn).await;
    ch.queue_declare("q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let e = ch.queue_bind("q".into(), "".into(), "q".into(), Default::default(), FieldTable::default()).await;
    assert_eq!(refusal(e.unwrap_err()), default_refused);

    // RabbitMQ 3.x: a connection error.
    let ch = channel(&conn).await;
    let e =
        ch.exchange_declare("z".into(), ExchangeKind::Custom("foo".into()), Default::default(), FieldTable::default());
    assert_eq!(refusal(e.await.unwrap_err()), (503, "COMMAND_INVALID - unknown exchange type 'foo'".into()));
}

#[tokio::test]
async fn every_vhost_has_rabbitmqs_predeclared_exchanges() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_conn, ch) = open(&broker).await;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        // Redeclaring with identical properties is allowed, even for amq.*.
        exchange(&ch, name, kind, durable, FieldTable::default()).await;
    }
    bound_queue(&ch, "m", "amq.match", "", table(&[("x-match", text("any")), ("a", text("1"))])).await;
    assert!(!publish(&ch, "amq.match", "", Some(table(&[("a", text("1"))])), true).await);
    assert_eq!(drain(&ch, "m").await, 1);
}

#[tokio::test]
async fn auto_delete_exchanges_go_with_their_last_binding() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (conn, ch) = open(&broker).await;
    let auto = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };

    // Never bound: stays.
    exchange(&ch, "lonely", ExchangeKind::Direct, auto, FieldTable::default()).await;
    assert!(exists(&conn, "lonely").await);

    // Unbinding the last of two bindings deletes it.
    exchange(&ch, "ad", ExchangeKind::Direct, auto, FieldTable::default()).await;
    bound_queue(&ch, "q1", "ad", "a", FieldTable::default()).await;
    ch.queue_bind("q1".into(), "ad".into(), "b".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_unbind("q1".into(), "ad".into(), "a".into(), FieldTable::default()).await.unwrap();
    assert!(exists(&conn, "ad").await);
    ch.queue_unbind("q1".into(), "ad".into(), "b".into(), FieldTable::default()).await.unwrap();
    assert!(!exists(&conn, "ad").await);

    // Deleting the bound queue deletes it, and an auto-delete exchange that
    // was bound only to that one goes too (a chain).
    exchange(&ch, "ad2", ExchangeKind::Fanout, auto, FieldTable::default()).await;
    exchange(&ch, "ad3", ExchangeKind::Fanout, auto, FieldTable::default()).await;
    bound_queue(&ch, "q2", "ad2", "", FieldTable::default()).await;
    ch.exchange_bind("ad2".into(), "ad3".into(), "".into(), Default::default(), FieldTable::default()).await.unwrap();
    ch.queue_delete("q2".into(), QueueDeleteOptions::default()).await.unwrap();
    assert!(!exists(&conn, "ad2").await);
    assert!(!exists(&conn, "ad3").await, "ad3's only binding led to ad2");
}

#[tokio::test]
async fn topic_routing_follows_rabbitmqs_word_rules() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_conn, ch) = open(&broker).await;
    exchange(&ch, "t", ExchangeKind::Topic, Default::default(), FieldTable::default()).await;
    let patterns = ["a.*.c", "a.#", "#", "*", "a..b", "", "#.z"];
    for (i, p) in patterns.iter().enumerate() {
        bound_queue(&ch, &format!("t{i}"), "t", p, FieldTable::default()).await;
    }
    // A queue bound twice with overlapping patterns gets one copy.
    ch.queue_bind("t0".into(), "t".into(), "a.b.*".into(), Default::default(), FieldTable::default()).await.unwrap();

    let cases: [(&str, [u32; 7]); 8] = [
        ("a.b.c", [1, 1, 1, 0, 0, 0, 0]),
        ("a", [0, 1, 1, 1, 0, 0, 0]),
        ("", [0, 0, 1, 0, 0, 1, 0]),
        ("a..b", [0, 1, 1, 0, 1, 0, 0]),
        ("a..c", [1, 1, 1, 0, 0, 0, 0]),
        ("z", [0, 0, 1, 1, 0, 0, 1]),
        ("x.y.z", [0, 0, 1, 0, 0, 0, 1]),
        ("b.c", [0, 0, 1, 0, 0, 0, 0]),
    ];
    for (key, expected) in cases {
        publish(&ch, "t", key, None, false).await;
        let mut got = [0; 7];
        for (i, n) in got.iter_mut().enumerate() {
            *n = drain(&ch, &format!("t{i}")).await;
        }
        assert_eq!(got, expected, "routing key {key:?} against {patterns:?}");
    }
}

#[tokio::test]
async fn headers_routing_with_every_x_match() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (conn, ch) = open(&broker).await;
    exchange(&ch, "h", ExchangeKind::Headers, Default::default(), FieldTable::default()).await;
    let bindings = [
        ("all", table(&[("x-match", text("all")), ("a", text("1")), ("b", AMQPValue::LongInt(2))])),
        ("any", table(&[("x-match", text("any")), ("a", text("1")), ("b", AMQPValue::LongInt(2))])),
        ("default", table(&[("a", text("1"))])),
        ("allx", table(&[("x-match", text("all-with-x")), ("x-k", text("v"))])),
        ("anyx", table(&[("x-match", text("any-with-x")), ("x-k", text("v")), ("c", text("3"))])),
        ("present", table(&[("p", AMQPValue::Void)])),
        ("ignoresx", table(&[("x-match", text("all")), ("x-k", text("other"))])),
    ];
    for (q, args) in &bindings {
        bound_queue(&ch, q, "h", "", args.clone()).await;
    }
    let cases = [
        (table(&[("a", text("1")), ("b", AMQPValue::LongLongInt(2))]), [1, 1, 1, 0, 0, 0, 1]),
        (table(&[("a", text("1"))]), [0, 1, 1, 0, 0, 0, 1]),
        (table(&[("b", AMQPValue::LongInt(3))]), [0, 0, 0, 0, 0, 0, 1]),
        (table(&[("x-k", text("v"))]), [0, 0, 0, 1, 1, 0, 1]),
        (table(&[("c", text("3")), ("p", AMQPValue::Boolean(false))]), [0, 0, 0, 0, 1, 1, 1]),
    ];
    for (headers, expected) in cases {
        publish(&ch, "h", "ignored", Some(headers.clone()), false).await;
        let mut got = [0; 7];
        for (i, (q, _)) in bindings.iter().enumerate() {
            got[i] = drain(&ch, q).await;
        }
        assert_eq!(got, expected, "headers {headers:?}");
    }
    // No headers at all: only the bindings with nothing to compare match.
    publish(&ch, "h", "", None, false).await;
    assert_eq!(drain(&ch, "ignoresx").await, 1);
    assert_eq!(drain(&ch, "all").await, 0);

    let ch = channel(&conn).await;
    let e = ch
        .queue_bind("all".into(), "h".into(), "".into(), Default::default(), table(&[("x-match", text("most"))]))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(e),
        (
            406,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"most\">>; \
             expected all, any, all-with-x, or any-with-x"
                .into()
        )
    );
    let ch = channel(&conn).await;
    let args = table(&[("x-match", AMQPValue::Boolean(true))]);
    let e = ch.queue_bind("all".into(), "h".into(), "".into(), Default::default(), args).await.unwrap_err();
    assert_eq!(
        refusal(e),
        (406, "PRECONDITION_FAILED - Invalid x-match field type bool (value true); expected longstr".into())
    );
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_once_and_survive_loops() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (conn, ch) = open(&broker).await;
    for (name, kind) in [("a", ExchangeKind::Direct), ("b", ExchangeKind::Topic), ("c", ExchangeKind::Fanout)] {
        exchange(&ch, name, kind, Default::default(), FieldTable::default()).await;
    }
    // a --k--> b --#--> c, a loop back c -> a, and queues on all three.
    ch.exchange_bind("b".into(), "a".into(), "k".into(), Default::default(), FieldTable::default()).await.unwrap();
    ch.exchange_bind("c".into(), "b".into(), "#".into(), Default::default(), FieldTable::default()).await.unwrap();
    ch.exchange_bind("a".into(), "c".into(), "".into(), Default::default(), FieldTable::default()).await.unwrap();
    bound_queue(&ch, "qa", "a", "k", FieldTable::default()).await;
    bound_queue(&ch, "qb", "b", "k", FieldTable::default()).await;
    bound_queue(&ch, "qc", "c", "", FieldTable::default()).await;
    // qc also bound straight to a: still one copy.
    ch.queue_bind("qc".into(), "a".into(), "k".into(), Default::default(), FieldTable::default()).await.unwrap();

    assert!(!publish(&ch, "a", "k", None, true).await);
    assert_eq!([drain(&ch, "qa").await, drain(&ch, "qb").await, drain(&ch, "qc").await], [1, 1, 1]);
    // Entering the loop elsewhere: c -> a -> b -> (c seen).
    assert!(!publish(&ch, "c", "k", None, true).await);
    assert_eq!([drain(&ch, "qa").await, drain(&ch, "qb").await, drain(&ch, "qc").await], [1, 1, 1]);
    // a routes "other" nowhere; the binding to b needs "k".
    assert!(publish(&ch, "a", "other", None, true).await);

    ch.exchange_unbind("b".into(), "a".into(), "k".into(), Default::default(), FieldTable::default()).await.unwrap();
    // Unbinding what is not bound is not an error.
    ch.exchange_unbind("b".into(), "a".into(), "k".into(), Default::default(), FieldTable::default()).await.unwrap();
    publish(&ch, "a", "k", None, false).await;
    assert_eq!([drain(&ch, "qa").await, drain(&ch, "qb").await, drain(&ch, "qc").await], [1, 0, 1]);

    // Deleting a destination exchange removes the bindings to it.
    ch.exchange_delete("a".into(), Default::default()).await.unwrap();
    publish(&ch, "c", "", None, false).await;
    assert_eq!(drain(&ch, "qc").await, 1);

    for (dest, src) in [("", "b"), ("b", "")] {
        let ch = channel(&conn).await;
        let e = ch.exchange_bind(dest.into(), src.into(), "".into(), Default::default(), FieldTable::default());
        assert_eq!(
            refusal(e.await.unwrap_err()),
            (403, "ACCESS_REFUSED - operation not permitted on the default exchange".into())
        );
    }
    // The source is reported first when both are missing.
    let ch = channel(&conn).await;
    let e = ch.exchange_bind("nod".into(), "nos".into(), "".into(), Default::default(), FieldTable::default());
    assert_eq!(refusal(e.await.unwrap_err()), (404, "NOT_FOUND - no exchange 'nos' in vhost '/'".into()));
    let ch = channel(&conn).await;
    let e = ch.exchange_unbind("nod".into(), "b".into(), "".into(), Default::default(), FieldTable::default());
    assert_eq!(refusal(e.await.unwrap_err()), (404, "NOT_FOUND - no exchange 'nod' in vhost '/'".into()));
}

#[tokio::test]
async fn alternate_exchanges_take_what_nothing_else_routes() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_conn, ch) = open(&broker).await;
    let with_ae = |ae: &str| table(&[("alternate-exchange", text(ae))]);
    exchange(&ch, "main", ExchangeKind::Direct, Default::default(), with_ae("ae")).await;
    exchange(&ch, "ae", ExchangeKind::Fanout, Default::default(), FieldTable::default()).await;
    bound_queue(&ch, "routed", "main", "k", FieldTable::default()).await;
    bound_queue(&ch, "unrouted", "ae", "", FieldTable::default()).await;

    assert!(!publish(&ch, "main", "k", None, true).await);
    assert!(!publish(&ch, "main", "nope", None, true).await, "the alternate exchange routed it: no return");
    assert_eq!([drain(&ch, "routed").await, drain(&ch, "unrouted").await], [1, 1]);

    // An alternate exchange that routes nowhere, or does not exist: returned.
    ch.queue_unbind("unrouted".into(), "ae".into(), "".into(), FieldTable::default()).await.unwrap();
    assert!(publish(&ch, "main", "nope", None, true).await);
    exchange(&ch, "dangling", ExchangeKind::Direct, Default::default(), with_ae("missing")).await;
    assert!(publish(&ch, "dangling", "k", None, true).await);

    // Alternate exchanges pointing at each other end; each one's own
    // bindings still count, and an internal exchange can be an alternate.
    let internal = ExchangeDeclareOptions { internal: true, ..Default::default() };
    exchange(&ch, "p", ExchangeKind::Direct, Default::default(), with_ae("q")).await;
    exchange(&ch, "q", ExchangeKind::Direct, internal, with_ae("p")).await;
    assert!(publish(&ch, "p", "k", None, true).await);
    bound_queue(&ch, "viaq", "q", "k", FieldTable::default()).await;
    assert!(!publish(&ch, "p", "k", None, true).await);
    assert_eq!(drain(&ch, "viaq").await, 1);

    // Used only when the exchange itself matched nothing: a binding to an
    // exchange that then routes nowhere still counts as a match.
    exchange(&ch, "sink", ExchangeKind::Direct, Default::default(), FieldTable::default()).await;
    ch.exchange_bind("sink".into(), "main".into(), "s".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    bound_queue(&ch, "unrouted2", "ae", "", FieldTable::default()).await;
    assert!(publish(&ch, "main", "s", None, true).await);
    assert_eq!(drain(&ch, "unrouted2").await, 0);
}

/// `basic.publish` + content header (no properties) + body on channel 1.
fn publish_to(buf: &mut BytesMut, exchange: &str, routing_key: &str) {
    let m = basic::Publish { exchange: exchange.into(), routing_key: routing_key.into(), ..Default::default() };
    write_method(buf, 1, &m.into());
    write_content_header(buf, 1, 60, 1, &[0, 0]);
    write_body_frame_header(buf, 1, 1);
    buf.extend_from_slice(b"m\xce");
}

#[tokio::test]
async fn publishing_to_missing_or_internal_exchanges_closes_the_channel() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_conn, ch) = open(&broker).await;
    let internal = ExchangeDeclareOptions { internal: true, ..Default::default() };
    exchange(&ch, "inner", ExchangeKind::Fanout, internal, FieldTable::default()).await;

    let mut c = RawClient::open(broker.addr(), 0).await;
    for (exchange, code, text) in [
        ("inner", 403, "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'"),
        ("nowhere", 404, "NOT_FOUND - no exchange 'nowhere' in vhost '/'"),
    ] {
        let mut buf = BytesMut::new();
        publish_to(&mut buf, exchange, "k");
        c.send_raw(&buf).await;
        let (chan, m) = c.expect_method(WAIT).await;
        let Method::ChannelClose(close) = m else { panic!("expected channel.close, got {m:?}") };
        assert_eq!(chan, 1);
        assert_eq!(
            (close.reply_code, close.reply_text.to_string(), close.class_id, close.method_id),
            (code, text.to_string(), 60, 40)
        );
        c.send(1, channel::CloseOk {}).await;
        c.send(1, channel::Open { reserved_1: "".into() }).await;
        let (_, ok) = c.expect_method(WAIT).await;
        assert!(matches!(ok, Method::ChannelOpenOk(_)), "{ok:?}");
    }
}

#[tokio::test]
async fn connection_start_advertises_exchange_to_exchange_bindings() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut c = RawClient::connect(broker.addr()).await;
    c.send_raw(warren::protocol::PROTOCOL_HEADER).await;
    let (_, start) = c.expect_method(WAIT).await;
    let Method::ConnectionStart(start) = start else { panic!("{start:?}") };
    let caps = start.server_properties.get("capabilities").and_then(|v| v.as_table()).unwrap().clone();
    assert_eq!(caps.get("exchange_exchange_bindings").and_then(|v| v.as_bool()), Some(true));
}

/// Routing cost follows the routing key, not the number of bindings: with
/// 50 000 topic bindings a route still takes microseconds.
#[tokio::test]
async fn topic_routing_stays_fast_with_many_bindings() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let (_conn, ch) = open(&broker).await;
    let vhost = broker.broker().vhost(&"/".into()).unwrap();
    let x = vhost.exchange(&"amq.topic".into()).unwrap();
    let mut queues: Vec<Arc<Queue>> = Vec::new();
    for i in 0..100 {
        let name = format!("q{i}");
        ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
        queues.push(vhost.queue(&name.into()).unwrap());
    }
    for i in 0..50_000 {
        let key = ShortStr::from(format!("stock.{i}.*.#"));
        vhost.bind(&x, Destination::Queue(queues[i % 100].clone()), key, Default::default()).unwrap();
    }
    let props = Bytes::from_static(&[0, 0]);
    let mut out = Vec::new();
    let started = Instant::now();
    for i in 0..10_000 {
        out.clear();
        let key = ShortStr::from(format!("stock.{}.nyse.x.y", i * 5));
        vhost.route(&"amq.topic".into(), &key, &props, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(Arc::ptr_eq(&out[0], &queues[(i * 5) % 100]));
    }
    // A linear scan would take seconds here (5·10⁸ matches); the trie takes
    // a few milliseconds even in a debug build.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}
