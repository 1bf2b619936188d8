//! Round trips against an independent codec: the `amq-protocol` crate (the
//! codec under lapin), used as an oracle.
//!
//! - Client -> server: amq-protocol generates the frames a client sends,
//!   warren's [`parse_frame`] decodes them, and every decoded field is
//!   compared with what was generated.
//! - Server -> client: warren encodes the frames the broker sends (method
//!   replies with [`write_method`], deliveries with [`FrameBuffer`], exactly
//!   as the writer task does), amq-protocol parses them, and the decoded
//!   values are compared with what warren meant to send.
//!
//! Tables are compared by converting warren's decoded [`FieldTable`] into
//! amq-protocol's value type ([`oracle_table`]), which maps each field type
//! to exactly one oracle type, so a value that came back as a different type
//! (an `I32` read as a `U32`, say) is a failure, not a coincidence.
//!
//! Where the two codecs deliberately differ (field types `s`, `L`, `U`) the
//! tests at the end pin down what RabbitMQ does (`rabbit_binary_parser.erl`).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use amq_protocol::frame::{gen_frame, parse_frame as oracle_parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{self as amq, AMQPClass};
use amq_protocol::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable as OracleTable, LongString};
use bytes::{Bytes, BytesMut};

use warren::broker::message::{Body, Message};
use warren::connection::handshake::start_method;
use warren::connection::writer::{Delivery, DeliveryKind, FrameBuffer};
use warren::protocol::field_table::{parse_table, FieldTable, FieldValue};
use warren::protocol::frame::{parse_frame, write_method};
use warren::protocol::methods::{basic, channel, connection, exchange, queue};
use warren::protocol::properties::BasicProperties;
use warren::protocol::{ContentHeader, Frame, Method, ShortStr};

/// What clients negotiate in practice; warren accepts payloads up to this.
const FRAME_MAX: u32 = 131_072;

// ---------------------------------------------------------------------------
// The two codecs, behind small helpers.

/// Encodes one frame with amq-protocol, as a client would send it.
fn client_sends(frame: &AMQPFrame) -> Vec<u8> {
    let (wire, _) = gen_frame(frame)(WriteContext::from(Vec::new()))
        .unwrap_or_else(|e| panic!("amq-protocol could not generate {frame:?}: {e:?}"))
        .into_inner();
    wire
}

/// Decodes every frame in `wire` with warren; all of it must be consumed.
fn warren_parses(wire: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(wire);
    let mut frames = Vec::new();
    while !buf.is_empty() {
        match parse_frame(&mut buf, FRAME_MAX) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => panic!("warren saw an incomplete frame, {} octets left of {wire:02x?}", buf.len()),
            Err(e) => panic!("warren refused a frame amq-protocol generated: {e:?}\n{wire:02x?}"),
        }
    }
    frames
}

/// Generates one method frame with amq-protocol and decodes it with warren.
fn warren_method(channel: u16, class: AMQPClass) -> Method {
    let wire = client_sends(&AMQPFrame::Method(channel, class));
    match warren_parses(&wire).as_slice() {
        [Frame::Method { channel: ch, method }] => {
            assert_eq!(*ch, channel, "channel of {}", method.name());
            method.clone()
        }
        other => panic!("expected one method frame, warren parsed {other:?}"),
    }
}

/// Decodes every frame in `wire` with amq-protocol; all of it must be consumed.
fn oracle_parses(wire: &[u8]) -> Vec<AMQPFrame> {
    let mut rest = wire;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        match oracle_parse_frame(rest) {
            Ok((r, frame)) => {
                frames.push(frame);
                rest = r;
            }
            Err(e) => panic!(
                "amq-protocol refused what warren wrote ({} octets in): {e:?}\n{wire:02x?}",
                wire.len() - rest.len()
            ),
        }
    }
    frames
}

/// Encodes one method frame with warren and decodes it with amq-protocol.
fn oracle_method(channel: u16, method: impl Into<Method>) -> AMQPClass {
    let method = method.into();
    let mut wire = BytesMut::new();
    write_method(&mut wire, channel, &method);
    match oracle_parses(&wire).as_slice() {
        [AMQPFrame::Method(ch, class)] => {
            assert_eq!(*ch, channel, "channel of {}", method.name());
            class.clone()
        }
        other => panic!("expected one method frame, amq-protocol parsed {other:?}"),
    }
}

/// Runs `FrameBuffer::write_to` into a `Vec`. Writing to a `Vec` never
/// blocks, so one poll finishes it and no runtime is needed.
fn write_out(frames: &mut FrameBuffer) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let written = match pin!(frames.write_to(&mut out)).as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.expect("writing to a Vec cannot fail"),
        Poll::Pending => panic!("writing to a Vec returned Pending"),
    };
    assert_eq!(written, out.len());
    out
}

/// A short string as text; everything these tests send is UTF-8.
fn text(s: &ShortStr) -> &str {
    std::str::from_utf8(s.as_bytes()).expect("short string is UTF-8")
}

fn opt_text(s: &Option<ShortStr>) -> Option<&str> {
    s.as_ref().map(text)
}

fn oracle_opt_text(s: &Option<amq_protocol::types::ShortString>) -> Option<&str> {
    s.as_ref().map(|s| s.as_str())
}

/// Unwraps an enum variant or fails with what was there instead.
macro_rules! expect {
    ($value:expr, $pattern:pat => $out:expr) => {
        match $value {
            $pattern => $out,
            other => panic!("expected {}, got {other:?}", stringify!($pattern)),
        }
    };
}

// ---------------------------------------------------------------------------
// Field tables: warren's values in the oracle's terms.

/// The oracle type each warren field type must decode to, one to one.
fn oracle_value(v: &FieldValue) -> AMQPValue {
    match v {
        FieldValue::Bool(v) => AMQPValue::Boolean(*v),
        FieldValue::I8(v) => AMQPValue::ShortShortInt(*v),
        FieldValue::U8(v) => AMQPValue::ShortShortUInt(*v),
        FieldValue::I16(v) => AMQPValue::ShortInt(*v),
        FieldValue::U16(v) => AMQPValue::ShortUInt(*v),
        FieldValue::I32(v) => AMQPValue::LongInt(*v),
        FieldValue::U32(v) => AMQPValue::LongUInt(*v),
        FieldValue::I64(v) => AMQPValue::LongLongInt(*v),
        FieldValue::F32(v) => AMQPValue::Float(*v),
        FieldValue::F64(v) => AMQPValue::Double(*v),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue { scale: *scale, value: *value }),
        FieldValue::LongStr(v) => AMQPValue::LongString(LongString::from(v.to_vec())),
        FieldValue::Bytes(v) => AMQPValue::ByteArray(ByteArray::from(v.to_vec())),
        FieldValue::Array(vs) => {
            AMQPValue::FieldArray(FieldArray::from(vs.iter().map(oracle_value).collect::<Vec<_>>()))
        }
        FieldValue::Timestamp(v) => AMQPValue::Timestamp(*v),
        FieldValue::Table(t) => AMQPValue::FieldTable(oracle_table(t)),
        FieldValue::Void => AMQPValue::Void,
    }
}

/// The oracle keeps tables in a sorted map, so a duplicate key would vanish
/// in the conversion: refuse it instead.
fn oracle_table(t: &FieldTable) -> OracleTable {
    let mut out = OracleTable::default();
    for (key, value) in t.iter() {
        let key = text(key);
        assert!(!out.contains_key(key), "duplicate table key {key:?}");
        out.insert(key.into(), oracle_value(value));
    }
    out
}

fn otable(entries: Vec<(&str, AMQPValue)>) -> OracleTable {
    let mut t = OracleTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// A table with every field type amq-protocol can put on the wire.
/// (`AMQPValue::ShortString` is not one of them: amq-protocol writes it with
/// a placeholder tag `_` that no AMQP peer reads; RabbitMQ's `s` is a signed
/// short, see the tests at the end.)
fn oracle_every_type_table() -> OracleTable {
    let nested = otable(vec![
        ("depth", AMQPValue::ShortShortUInt(2)),
        ("deeper", AMQPValue::FieldTable(otable(vec![("leaf", AMQPValue::Void)]))),
    ]);
    otable(vec![
        ("bool-true", AMQPValue::Boolean(true)),
        ("bool-false", AMQPValue::Boolean(false)),
        ("i8", AMQPValue::ShortShortInt(i8::MIN)),
        ("u8", AMQPValue::ShortShortUInt(u8::MAX)),
        ("i16", AMQPValue::ShortInt(i16::MIN)),
        ("u16", AMQPValue::ShortUInt(u16::MAX)),
        ("i32", AMQPValue::LongInt(i32::MIN)),
        ("u32", AMQPValue::LongUInt(u32::MAX)),
        ("i64", AMQPValue::LongLongInt(i64::MIN)),
        ("f32", AMQPValue::Float(-0.0)),
        ("f32-small", AMQPValue::Float(f32::MIN_POSITIVE)),
        ("f64", AMQPValue::Double(std::f64::consts::PI)),
        ("decimal", AMQPValue::DecimalValue(DecimalValue { scale: 3, value: u32::MAX })),
        ("longstr", long_string("un texte assez long, accentué — ✓")),
        ("longstr-empty", long_string("")),
        ("longstr-binary", AMQPValue::LongString(LongString::from(vec![0u8, 0xce, 0xff, 1]))),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                long_string("two"),
                AMQPValue::Boolean(false),
                AMQPValue::Void,
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortShortUInt(3)])),
                AMQPValue::FieldTable(otable(vec![("k", AMQPValue::LongLongInt(4))])),
                AMQPValue::Timestamp(5),
                AMQPValue::DecimalValue(DecimalValue { scale: 1, value: 6 }),
                AMQPValue::ByteArray(ByteArray::from(vec![7u8])),
            ])),
        ),
        ("array-empty", AMQPValue::FieldArray(FieldArray::default())),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        ("table-empty", AMQPValue::FieldTable(OracleTable::default())),
        ("bytes", AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 0xce, 0xff]))),
        ("void", AMQPValue::Void),
        ("clé-ünïcødé", AMQPValue::Boolean(true)),
    ])
}

/// The same kind of table built with warren's types, for the other direction.
fn warren_every_type_table() -> FieldTable {
    let b = |s: &'static [u8]| Bytes::from_static(s);
    FieldTable::new()
        .with("bool-true", FieldValue::Bool(true))
        .with("bool-false", FieldValue::Bool(false))
        .with("i8", FieldValue::I8(i8::MIN))
        .with("u8", FieldValue::U8(u8::MAX))
        .with("i16", FieldValue::I16(i16::MIN))
        .with("u16", FieldValue::U16(u16::MAX))
        .with("i32", FieldValue::I32(i32::MIN))
        .with("u32", FieldValue::U32(u32::MAX))
        .with("i64", FieldValue::I64(i64::MIN))
        .with("f32", FieldValue::F32(-0.0))
        .with("f64", FieldValue::F64(-std::f64::consts::E))
        .with("decimal", FieldValue::Decimal { scale: 2, value: 123_456 })
        .with("longstr", FieldValue::LongStr(b("texte — ✓".as_bytes())))
        .with("longstr-binary", FieldValue::LongStr(b(&[0, 0xce, 0xff])))
        .with(
            "array",
            FieldValue::Array(vec![
                FieldValue::I32(-1),
                FieldValue::LongStr(b(b"two")),
                FieldValue::Void,
                FieldValue::Array(vec![FieldValue::U16(3)]),
                FieldValue::Table(FieldTable::new().with("k", FieldValue::Timestamp(4))),
            ]),
        )
        .with("array-empty", FieldValue::Array(Vec::new()))
        .with("timestamp", FieldValue::Timestamp(u64::MAX))
        .with("table", FieldValue::Table(FieldTable::new().with("inner", FieldValue::Table(FieldTable::new()))))
        .with("bytes", FieldValue::Bytes(b(&[0, 1, 0xce, 0xff])))
        .with("void", FieldValue::Void)
}

/// `PartialEq` on floats says `-0.0 == 0.0`; compare the bits of the float
/// entries too, so a lost sign would show.
fn assert_float_bits(warren: &FieldTable, oracle: &OracleTable) {
    for (key, value) in warren.iter() {
        let theirs = oracle.inner().get(text(key));
        match (value, theirs) {
            (FieldValue::F32(a), Some(AMQPValue::Float(b))) => {
                assert_eq!(a.to_bits(), b.to_bits(), "bits of {key}")
            }
            (FieldValue::F64(a), Some(AMQPValue::Double(b))) => {
                assert_eq!(a.to_bits(), b.to_bits(), "bits of {key}")
            }
            _ => {}
        }
    }
}

fn assert_same_table(warren: &FieldTable, oracle: &OracleTable, what: &str) {
    assert_eq!(warren.iter().count(), oracle.inner().len(), "{what}: number of entries");
    assert_eq!(&oracle_table(warren), oracle, "{what}");
    assert_float_bits(warren, oracle);
}

// ---------------------------------------------------------------------------
// Content properties.

/// All 14 basic properties, the headers table carrying a nested table, an
/// array, a decimal, a timestamp, a void and a byte array.
fn oracle_all_properties() -> amq::BasicProperties {
    let headers = otable(vec![
        (
            "nested",
            AMQPValue::FieldTable(otable(vec![
                ("a", AMQPValue::LongInt(1)),
                ("b", AMQPValue::FieldTable(otable(vec![("c", long_string("d"))]))),
            ])),
        ),
        (
            "x-death",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(otable(vec![
                ("count", AMQPValue::LongLongInt(3)),
                ("queue", long_string("orders")),
                ("reason", long_string("expired")),
                ("time", AMQPValue::Timestamp(1_700_000_123)),
            ]))])),
        ),
        ("price", AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 1999 })),
        ("sent-at", AMQPValue::Timestamp(1_700_000_000)),
        ("nothing", AMQPValue::Void),
        ("digest", AMQPValue::ByteArray(ByteArray::from(vec![0xde, 0xad, 0xbe, 0xef, 0xce]))),
    ]);
    amq::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(9)
        .with_correlation_id("corr-42".into())
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_expiration("60000".into())
        .with_message_id("msg-0001".into())
        .with_timestamp(1_700_000_001)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("codec-oracle".into())
        .with_cluster_id("legacy-cluster".into())
}

/// The same properties with warren's types.
fn warren_all_properties() -> BasicProperties {
    BasicProperties {
        content_type: Some("text/plain; charset=utf-8".into()),
        content_encoding: Some("identity".into()),
        headers: Some(
            FieldTable::new()
                .with("nested", FieldValue::Table(FieldTable::new().with("n", FieldValue::I64(-5))))
                .with("list", FieldValue::Array(vec![FieldValue::LongStr(Bytes::from_static(b"x"))]))
                .with("price", FieldValue::Decimal { scale: 4, value: 7 })
                .with("at", FieldValue::Timestamp(1_600_000_000))
                .with("nothing", FieldValue::Void)
                .with("raw", FieldValue::Bytes(Bytes::from_static(&[0, 0xce]))),
        ),
        delivery_mode: Some(1),
        priority: Some(0),
        correlation_id: Some("c".into()),
        reply_to: Some("replies".into()),
        expiration: Some("1500".into()),
        message_id: Some("m-7".into()),
        timestamp: Some(u64::MAX),
        kind: Some("kind".into()),
        user_id: Some("guest".into()),
        app_id: Some("warren".into()),
        cluster_id: Some("c1".into()),
    }
}

/// Compares the 14 properties one by one.
fn assert_same_properties(w: &BasicProperties, o: &amq::BasicProperties) {
    assert_eq!(opt_text(&w.content_type), oracle_opt_text(o.content_type()), "content-type");
    assert_eq!(opt_text(&w.content_encoding), oracle_opt_text(o.content_encoding()), "content-encoding");
    match (&w.headers, o.headers()) {
        (Some(w), Some(o)) => assert_same_table(w, o, "headers"),
        (w, o) => assert_eq!(w.is_some(), o.is_some(), "headers present"),
    }
    assert_eq!(w.delivery_mode, *o.delivery_mode(), "delivery-mode");
    assert_eq!(w.priority, *o.priority(), "priority");
    assert_eq!(opt_text(&w.correlation_id), oracle_opt_text(o.correlation_id()), "correlation-id");
    assert_eq!(opt_text(&w.reply_to), oracle_opt_text(o.reply_to()), "reply-to");
    assert_eq!(opt_text(&w.expiration), oracle_opt_text(o.expiration()), "expiration");
    assert_eq!(opt_text(&w.message_id), oracle_opt_text(o.message_id()), "message-id");
    assert_eq!(w.timestamp, *o.timestamp(), "timestamp");
    assert_eq!(opt_text(&w.kind), oracle_opt_text(o.kind()), "type");
    assert_eq!(opt_text(&w.user_id), oracle_opt_text(o.user_id()), "user-id");
    assert_eq!(opt_text(&w.app_id), oracle_opt_text(o.app_id()), "app-id");
    assert_eq!(opt_text(&w.cluster_id), oracle_opt_text(o.cluster_id()), "cluster-id");
}

/// `oracle_all_properties` with only the property at `index` (0..14) set,
/// so each flag bit is checked on its own.
fn oracle_single_property(index: usize) -> amq::BasicProperties {
    let all = oracle_all_properties();
    let p = amq::BasicProperties::default();
    match index {
        0 => p.with_content_type(all.content_type().clone().unwrap()),
        1 => p.with_content_encoding(all.content_encoding().clone().unwrap()),
        2 => p.with_headers(all.headers().clone().unwrap()),
        3 => p.with_delivery_mode(all.delivery_mode().unwrap()),
        4 => p.with_priority(all.priority().unwrap()),
        5 => p.with_correlation_id(all.correlation_id().clone().unwrap()),
        6 => p.with_reply_to(all.reply_to().clone().unwrap()),
        7 => p.with_expiration(all.expiration().clone().unwrap()),
        8 => p.with_message_id(all.message_id().clone().unwrap()),
        9 => p.with_timestamp(all.timestamp().unwrap()),
        10 => p.with_type(all.kind().clone().unwrap()),
        11 => p.with_user_id(all.user_id().clone().unwrap()),
        12 => p.with_app_id(all.app_id().clone().unwrap()),
        13 => p.with_cluster_id(all.cluster_id().clone().unwrap()),
        _ => unreachable!(),
    }
}

/// `warren_all_properties` with only the property at `index` set.
fn warren_single_property(index: usize) -> BasicProperties {
    let all = warren_all_properties();
    let mut p = BasicProperties::default();
    match index {
        0 => p.content_type = all.content_type,
        1 => p.content_encoding = all.content_encoding,
        2 => p.headers = all.headers,
        3 => p.delivery_mode = all.delivery_mode,
        4 => p.priority = all.priority,
        5 => p.correlation_id = all.correlation_id,
        6 => p.reply_to = all.reply_to,
        7 => p.expiration = all.expiration,
        8 => p.message_id = all.message_id,
        9 => p.timestamp = all.timestamp,
        10 => p.kind = all.kind,
        11 => p.user_id = all.user_id,
        12 => p.app_id = all.app_id,
        13 => p.cluster_id = all.cluster_id,
        _ => unreachable!(),
    }
    p
}

/// Octets 0..len in a pattern that does not repeat at frame boundaries.
fn patterned_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

// ===========================================================================
// a. Client -> server: amq-protocol generates, warren parses.

#[test]
fn client_connection_start_ok_with_every_field_type() {
    let mut client_properties = oracle_every_type_table();
    client_properties.insert("product".into(), long_string("lapin"));
    client_properties.insert(
        "capabilities".into(),
        AMQPValue::FieldTable(otable(vec![
            ("publisher_confirms", AMQPValue::Boolean(true)),
            ("consumer_cancel_notify", AMQPValue::Boolean(true)),
            ("basic.nack", AMQPValue::Boolean(true)),
            ("connection.blocked", AMQPValue::Boolean(true)),
        ])),
    );
    let sent = amq::connection::StartOk {
        client_properties,
        mechanism: "PLAIN".into(),
        response: LongString::from(&b"\0guest\0gu\xceest"[..]),
        locale: "en_US".into(),
    };
    let method = warren_method(0, AMQPClass::Connection(amq::connection::AMQPMethod::StartOk(sent.clone())));
    let got = expect!(method, Method::ConnectionStartOk(m) => m);
    assert_same_table(&got.client_properties, &sent.client_properties, "client-properties");
    assert_eq!(text(&got.mechanism), sent.mechanism.as_str());
    assert_eq!(&got.response[..], sent.response.as_bytes());
    assert_eq!(text(&got.locale), sent.locale.as_str());
}

#[test]
fn client_tune_ok_and_open() {
    for (channel_max, frame_max, heartbeat) in [(2047, 131_072, 60), (0, 0, 0), (u16::MAX, u32::MAX, u16::MAX)] {
        let sent = amq::connection::TuneOk { channel_max, frame_max, heartbeat };
        let method = warren_method(0, AMQPClass::Connection(amq::connection::AMQPMethod::TuneOk(sent.clone())));
        let got = expect!(method, Method::ConnectionTuneOk(m) => m);
        assert_eq!(got.channel_max, sent.channel_max);
        assert_eq!(got.frame_max, sent.frame_max);
        assert_eq!(got.heartbeat, sent.heartbeat);
    }

    let longest = "v".repeat(255);
    for vhost in ["/", "", "tenant-ü/prod", &longest] {
        let sent = amq::connection::Open { virtual_host: vhost.into() };
        let method = warren_method(0, AMQPClass::Connection(amq::connection::AMQPMethod::Open(sent)));
        let got = expect!(method, Method::ConnectionOpen(m) => m);
        assert_eq!(text(&got.virtual_host), vhost);
        // amq-protocol writes the reserved "capabilities" and "insist" as "" and false.
        assert!(got.reserved_1.is_empty());
        assert!(!got.reserved_2);
    }
}

#[test]
fn client_connection_close_and_close_ok() {
    let sent = amq::connection::Close { reply_code: 200, reply_text: "Goodbye".into(), class_id: 0, method_id: 0 };
    let method = warren_method(0, AMQPClass::Connection(amq::connection::AMQPMethod::Close(sent.clone())));
    let got = expect!(method, Method::ConnectionClose(m) => m);
    assert_eq!(got.reply_code, sent.reply_code);
    assert_eq!(text(&got.reply_text), sent.reply_text.as_str());
    assert_eq!((got.class_id, got.method_id), (0, 0));

    let method =
        warren_method(0, AMQPClass::Connection(amq::connection::AMQPMethod::CloseOk(amq::connection::CloseOk {})));
    expect!(method, Method::ConnectionCloseOk(_) => ());
}

#[test]
fn client_channel_open_close() {
    for channel in [1, 2047, u16::MAX] {
        let method = warren_method(channel, AMQPClass::Channel(amq::channel::AMQPMethod::Open(amq::channel::Open {})));
        let got = expect!(method, Method::ChannelOpen(m) => m);
        assert!(got.reserved_1.is_empty(), "reserved out-of-band");
    }

    let sent = amq::channel::Close {
        reply_code: 406,
        reply_text: "PRECONDITION_FAILED - client side close".into(),
        class_id: 50,
        method_id: 10,
    };
    let method = warren_method(3, AMQPClass::Channel(amq::channel::AMQPMethod::Close(sent.clone())));
    let got = expect!(method, Method::ChannelClose(m) => m);
    assert_eq!(got.reply_code, sent.reply_code);
    assert_eq!(text(&got.reply_text), sent.reply_text.as_str());
    assert_eq!(got.class_id, sent.class_id);
    assert_eq!(got.method_id, sent.method_id);

    let method = warren_method(3, AMQPClass::Channel(amq::channel::AMQPMethod::CloseOk(amq::channel::CloseOk {})));
    expect!(method, Method::ChannelCloseOk(_) => ());
}

#[test]
fn client_queue_declare_every_flag_combination() {
    let arguments = otable(vec![
        ("x-message-ttl", AMQPValue::LongInt(60_000)),
        ("x-expires", AMQPValue::LongUInt(1_800_000)),
        ("x-max-length", AMQPValue::LongLongInt(10_000)),
        ("x-max-priority", AMQPValue::ShortShortUInt(10)),
        ("x-dead-letter-exchange", long_string("dlx")),
        ("x-queue-type", long_string("classic")),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
    ]);
    for bits in 0..32u8 {
        let sent = amq::queue::Declare {
            queue: "orders.eu-west".into(),
            passive: bits & 1 != 0,
            durable: bits & 2 != 0,
            exclusive: bits & 4 != 0,
            auto_delete: bits & 8 != 0,
            nowait: bits & 16 != 0,
            arguments: arguments.clone(),
        };
        let method = warren_method(1, AMQPClass::Queue(amq::queue::AMQPMethod::Declare(sent.clone())));
        let got = expect!(method, Method::QueueDeclare(m) => m);
        assert_eq!(got.reserved_1, 0);
        assert_eq!(text(&got.queue), sent.queue.as_str());
        assert_eq!(
            (got.passive, got.durable, got.exclusive, got.auto_delete, got.no_wait),
            (sent.passive, sent.durable, sent.exclusive, sent.auto_delete, sent.nowait),
            "flags {bits:05b}"
        );
        assert_same_table(&got.arguments, &sent.arguments, "queue arguments");
    }

    // A server-named queue: the empty name.
    let method = warren_method(
        1,
        AMQPClass::Queue(amq::queue::AMQPMethod::Declare(amq::queue::Declare {
            exclusive: true,
            ..Default::default()
        })),
    );
    let got = expect!(method, Method::QueueDeclare(m) => m);
    assert!(got.queue.is_empty() && got.exclusive && got.arguments.is_empty());
}

#[test]
fn client_queue_bind() {
    let sent = amq::queue::Bind {
        queue: "q".into(),
        exchange: "amq.headers".into(),
        routing_key: "a.#.b".into(),
        nowait: true,
        arguments: otable(vec![
            ("x-match", long_string("any")),
            ("format", long_string("pdf")),
            ("size", AMQPValue::LongInt(42)),
        ]),
    };
    let method = warren_method(9, AMQPClass::Queue(amq::queue::AMQPMethod::Bind(sent.clone())));
    let got = expect!(method, Method::QueueBind(m) => m);
    assert_eq!(got.reserved_1, 0);
    assert_eq!(text(&got.queue), sent.queue.as_str());
    assert_eq!(text(&got.exchange), sent.exchange.as_str());
    assert_eq!(text(&got.routing_key), sent.routing_key.as_str());
    assert_eq!(got.no_wait, sent.nowait);
    assert_same_table(&got.arguments, &sent.arguments, "bind arguments");
}

#[test]
fn client_exchange_declare_every_flag_combination() {
    for bits in 0..32u8 {
        let sent = amq::exchange::Declare {
            exchange: "events".into(),
            kind: "topic".into(),
            passive: bits & 1 != 0,
            durable: bits & 2 != 0,
            auto_delete: bits & 4 != 0,
            internal: bits & 8 != 0,
            nowait: bits & 16 != 0,
            arguments: otable(vec![("alternate-exchange", long_string("unrouted"))]),
        };
        let method = warren_method(1, AMQPClass::Exchange(amq::exchange::AMQPMethod::Declare(sent.clone())));
        let got = expect!(method, Method::ExchangeDeclare(m) => m);
        assert_eq!(got.reserved_1, 0);
        assert_eq!(text(&got.exchange), sent.exchange.as_str());
        assert_eq!(text(&got.kind), sent.kind.as_str());
        assert_eq!(
            (got.passive, got.durable, got.auto_delete, got.internal, got.no_wait),
            (sent.passive, sent.durable, sent.auto_delete, sent.internal, sent.nowait),
            "flags {bits:05b}"
        );
        assert_same_table(&got.arguments, &sent.arguments, "exchange arguments");
    }
}

#[test]
fn client_basic_qos_consume_cancel() {
    for (prefetch_count, global) in [(0, false), (1, true), (u16::MAX, false)] {
        let method =
            warren_method(1, AMQPClass::Basic(amq::basic::AMQPMethod::Qos(amq::basic::Qos { prefetch_count, global })));
        let got = expect!(method, Method::BasicQos(m) => m);
        // amq-protocol always sends prefetch-size 0, as RabbitMQ requires.
        assert_eq!(got.prefetch_size, 0);
        assert_eq!(got.prefetch_count, prefetch_count);
        assert_eq!(got.global, global);
    }

    for bits in 0..16u8 {
        let sent = amq::basic::Consume {
            queue: "orders".into(),
            consumer_tag: if bits & 1 == 0 { "" } else { "ctag-1" }.into(),
            no_local: bits & 1 != 0,
            no_ack: bits & 2 != 0,
            exclusive: bits & 4 != 0,
            nowait: bits & 8 != 0,
            arguments: otable(vec![("x-priority", AMQPValue::LongInt(-3))]),
        };
        let method = warren_method(2, AMQPClass::Basic(amq::basic::AMQPMethod::Consume(sent.clone())));
        let got = expect!(method, Method::BasicConsume(m) => m);
        assert_eq!(got.reserved_1, 0);
        assert_eq!(text(&got.queue), sent.queue.as_str());
        assert_eq!(text(&got.consumer_tag), sent.consumer_tag.as_str());
        assert_eq!(
            (got.no_local, got.no_ack, got.exclusive, got.no_wait),
            (sent.no_local, sent.no_ack, sent.exclusive, sent.nowait),
            "flags {bits:04b}"
        );
        assert_same_table(&got.arguments, &sent.arguments, "consume arguments");
    }

    for nowait in [false, true] {
        let method = warren_method(
            2,
            AMQPClass::Basic(amq::basic::AMQPMethod::Cancel(amq::basic::Cancel {
                consumer_tag: "ctag-1".into(),
                nowait,
            })),
        );
        let got = expect!(method, Method::BasicCancel(m) => m);
        assert_eq!(text(&got.consumer_tag), "ctag-1");
        assert_eq!(got.no_wait, nowait);
    }
}

#[test]
fn client_publish_header_body_in_one_read_buffer() {
    let body = patterned_body(1000);
    let properties = oracle_all_properties();
    let publish = amq::basic::Publish {
        exchange: "amq.topic".into(),
        routing_key: "orders.eu.created".into(),
        mandatory: true,
        immediate: false,
    };
    // A body in two frames, as a client with a small frame_max sends it.
    let mut wire =
        client_sends(&AMQPFrame::Method(5, AMQPClass::Basic(amq::basic::AMQPMethod::Publish(publish.clone()))));
    wire.extend(client_sends(&AMQPFrame::Header(
        5,
        amq_protocol::frame::AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: properties.clone(),
        },
    )));
    wire.extend(client_sends(&AMQPFrame::Body(5, body[..600].to_vec())));
    wire.extend(client_sends(&AMQPFrame::Body(5, body[600..].to_vec())));

    let frames = warren_parses(&wire);
    assert_eq!(frames.len(), 4, "{frames:?}");
    let got = expect!(&frames[0], Frame::Method { channel: 5, method: Method::BasicPublish(m) } => m);
    assert_eq!(got.reserved_1, 0);
    assert_eq!(text(&got.exchange), publish.exchange.as_str());
    assert_eq!(text(&got.routing_key), publish.routing_key.as_str());
    assert_eq!(got.mandatory, publish.mandatory);
    assert_eq!(got.immediate, publish.immediate);

    let header = expect!(&frames[1], Frame::Header { channel: 5, header } => header);
    assert_eq!(header.class_id, 60);
    assert_eq!(header.body_size, body.len() as u64);
    let decoded = header.properties().expect("warren decodes the properties");
    assert_same_properties(&decoded, &properties);

    let mut reassembled = Vec::new();
    for frame in &frames[2..] {
        reassembled.extend_from_slice(expect!(frame, Frame::Body { channel: 5, body } => body));
    }
    assert_eq!(reassembled, body);

    // mandatory and immediate each on their own bit.
    for (mandatory, immediate) in [(false, false), (false, true), (true, true)] {
        let method = warren_method(
            1,
            AMQPClass::Basic(amq::basic::AMQPMethod::Publish(amq::basic::Publish {
                exchange: "".into(),
                routing_key: "q".into(),
                mandatory,
                immediate,
            })),
        );
        let got = expect!(method, Method::BasicPublish(m) => m);
        assert_eq!((got.mandatory, got.immediate), (mandatory, immediate));
    }
}

#[test]
fn client_content_header_each_property_alone_and_none() {
    let mut cases: Vec<amq::BasicProperties> = (0..14).map(oracle_single_property).collect();
    cases.push(amq::BasicProperties::default());
    for (i, properties) in cases.into_iter().enumerate() {
        let wire = client_sends(&AMQPFrame::Header(
            1,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size: u64::MAX,
                properties: properties.clone(),
            },
        ));
        let frames = warren_parses(&wire);
        let header: &ContentHeader = expect!(&frames[..], [Frame::Header { header, .. }] => header);
        assert_eq!(header.body_size, u64::MAX, "case {i}");
        // The raw property list starts with the flags word the client sent.
        assert_eq!(
            u16::from_be_bytes([header.raw_properties[0], header.raw_properties[1]]),
            properties.bitmask(),
            "flags of case {i}"
        );
        let decoded = header.properties().expect("warren decodes the properties");
        assert_same_properties(&decoded, &properties);
    }
}

#[test]
fn client_empty_body_frame() {
    let frames = warren_parses(&client_sends(&AMQPFrame::Body(7, Vec::new())));
    let body = expect!(&frames[..], [Frame::Body { channel: 7, body }] => body);
    assert!(body.is_empty());
}

#[test]
fn client_acks_nacks_rejects() {
    for (delivery_tag, multiple) in [(1, false), (42, true), (u64::MAX, true)] {
        let method =
            warren_method(1, AMQPClass::Basic(amq::basic::AMQPMethod::Ack(amq::basic::Ack { delivery_tag, multiple })));
        let got = expect!(method, Method::BasicAck(m) => m);
        assert_eq!((got.delivery_tag, got.multiple), (delivery_tag, multiple));
    }

    for bits in 0..4u8 {
        let sent =
            amq::basic::Nack { delivery_tag: 0x0102_0304_0506_0708, multiple: bits & 1 != 0, requeue: bits & 2 != 0 };
        let method = warren_method(1, AMQPClass::Basic(amq::basic::AMQPMethod::Nack(sent.clone())));
        let got = expect!(method, Method::BasicNack(m) => m);
        assert_eq!((got.delivery_tag, got.multiple, got.requeue), (sent.delivery_tag, sent.multiple, sent.requeue));
    }

    for requeue in [false, true] {
        let method = warren_method(
            1,
            AMQPClass::Basic(amq::basic::AMQPMethod::Reject(amq::basic::Reject { delivery_tag: 7, requeue })),
        );
        let got = expect!(method, Method::BasicReject(m) => m);
        assert_eq!((got.delivery_tag, got.requeue), (7, requeue));
    }
}

#[test]
fn client_confirm_select_and_heartbeat() {
    for nowait in [false, true] {
        let method =
            warren_method(1, AMQPClass::Confirm(amq::confirm::AMQPMethod::Select(amq::confirm::Select { nowait })));
        let got = expect!(method, Method::ConfirmSelect(m) => m);
        assert_eq!(got.no_wait, nowait);
    }

    let frames = warren_parses(&client_sends(&AMQPFrame::Heartbeat));
    assert_eq!(frames, [Frame::Heartbeat { channel: 0 }]);
}

// ===========================================================================
// b. Server -> client: warren encodes, amq-protocol parses.

#[test]
fn server_connection_start_as_sent_by_warren() {
    let start = start_method(warren::connection::handshake::MECHANISMS);
    let class = oracle_method(0, start.clone());
    let got = expect!(class, AMQPClass::Connection(amq::connection::AMQPMethod::Start(m)) => m);
    assert_eq!((got.version_major, got.version_minor), (start.version_major, start.version_minor));
    assert_same_table(&start.server_properties, &got.server_properties, "server-properties");
    assert_eq!(got.mechanisms.as_bytes(), &start.mechanisms[..]);
    assert_eq!(got.locales.as_bytes(), &start.locales[..]);
    // What clients look for (lapin and pika read these).
    let caps = expect!(
        got.server_properties.inner().get("capabilities"),
        Some(AMQPValue::FieldTable(t)) => t
    );
    assert_eq!(caps.inner().get("publisher_confirms"), Some(&AMQPValue::Boolean(true)));
}

#[test]
fn server_connection_start_with_every_field_type() {
    let start = connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: warren_every_type_table(),
        mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
        locales: Bytes::from_static(b"en_US"),
    };
    let class = oracle_method(0, start.clone());
    let got = expect!(class, AMQPClass::Connection(amq::connection::AMQPMethod::Start(m)) => m);
    assert_same_table(&start.server_properties, &got.server_properties, "server-properties");
}

#[test]
fn server_tune_open_ok_close() {
    let tune = connection::Tune { channel_max: 2047, frame_max: 131_072, heartbeat: 60 };
    let got = expect!(
        oracle_method(0, tune.clone()),
        AMQPClass::Connection(amq::connection::AMQPMethod::Tune(m)) => m
    );
    assert_eq!((got.channel_max, got.frame_max, got.heartbeat), (tune.channel_max, tune.frame_max, tune.heartbeat));

    expect!(
        oracle_method(0, connection::OpenOk::default()),
        AMQPClass::Connection(amq::connection::AMQPMethod::OpenOk(_)) => ()
    );

    let close = connection::Close {
        reply_code: 320,
        reply_text: ShortStr::truncated(format!("CONNECTION_FORCED - {}", "x".repeat(300))),
        class_id: 0,
        method_id: 0,
    };
    assert_eq!(close.reply_text.len(), 255);
    let got = expect!(
        oracle_method(0, close.clone()),
        AMQPClass::Connection(amq::connection::AMQPMethod::Close(m)) => m
    );
    assert_eq!(got.reply_code, close.reply_code);
    assert_eq!(got.reply_text.as_str(), text(&close.reply_text));
    assert_eq!((got.class_id, got.method_id), (0, 0));

    expect!(
        oracle_method(0, connection::CloseOk::default()),
        AMQPClass::Connection(amq::connection::AMQPMethod::CloseOk(_)) => ()
    );
}

#[test]
fn server_channel_open_ok_and_close() {
    expect!(
        oracle_method(1, channel::OpenOk::default()),
        AMQPClass::Channel(amq::channel::AMQPMethod::OpenOk(_)) => ()
    );
    let close = channel::Close {
        reply_code: 404,
        reply_text: "NOT_FOUND - no queue 'missing' in vhost '/'".into(),
        class_id: 50,
        method_id: 10,
    };
    let got = expect!(
        oracle_method(u16::MAX, close.clone()),
        AMQPClass::Channel(amq::channel::AMQPMethod::Close(m)) => m
    );
    assert_eq!(got.reply_code, close.reply_code);
    assert_eq!(got.reply_text.as_str(), text(&close.reply_text));
    assert_eq!((got.class_id, got.method_id), (50, 10));
    expect!(
        oracle_method(1, channel::CloseOk::default()),
        AMQPClass::Channel(amq::channel::AMQPMethod::CloseOk(_)) => ()
    );
}

#[test]
fn server_queue_declare_ok_and_consume_ok() {
    let ok =
        queue::DeclareOk { queue: "amq.gen-JzTY20BRgKO-HjmUJj0wLg".into(), message_count: u32::MAX, consumer_count: 3 };
    let got = expect!(
        oracle_method(1, ok.clone()),
        AMQPClass::Queue(amq::queue::AMQPMethod::DeclareOk(m)) => m
    );
    assert_eq!(got.queue.as_str(), text(&ok.queue));
    assert_eq!(got.message_count, ok.message_count);
    assert_eq!(got.consumer_count, ok.consumer_count);

    let ok = basic::ConsumeOk { consumer_tag: "amq.ctag-9Qx1".into() };
    let got = expect!(
        oracle_method(1, ok.clone()),
        AMQPClass::Basic(amq::basic::AMQPMethod::ConsumeOk(m)) => m
    );
    assert_eq!(got.consumer_tag.as_str(), text(&ok.consumer_tag));
}

/// Says whether amq-protocol parsed the method it should have.
type ParsedAs = fn(&AMQPClass) -> bool;

#[test]
fn server_empty_replies_have_the_right_ids() {
    let replies: Vec<(Method, ParsedAs)> = vec![
        (basic::QosOk::default().into(), |c| matches!(c, AMQPClass::Basic(amq::basic::AMQPMethod::QosOk(_)))),
        (basic::RecoverOk::default().into(), |c| matches!(c, AMQPClass::Basic(amq::basic::AMQPMethod::RecoverOk(_)))),
        (exchange::DeclareOk::default().into(), |c| {
            matches!(c, AMQPClass::Exchange(amq::exchange::AMQPMethod::DeclareOk(_)))
        }),
        (exchange::DeleteOk::default().into(), |c| {
            matches!(c, AMQPClass::Exchange(amq::exchange::AMQPMethod::DeleteOk(_)))
        }),
        (exchange::BindOk::default().into(), |c| {
            matches!(c, AMQPClass::Exchange(amq::exchange::AMQPMethod::BindOk(_)))
        }),
        // 40/51, not 40/41: RabbitMQ's oddity, which amq-protocol follows too.
        (exchange::UnbindOk::default().into(), |c| {
            matches!(c, AMQPClass::Exchange(amq::exchange::AMQPMethod::UnbindOk(_)))
        }),
        (queue::BindOk::default().into(), |c| matches!(c, AMQPClass::Queue(amq::queue::AMQPMethod::BindOk(_)))),
        (queue::UnbindOk::default().into(), |c| matches!(c, AMQPClass::Queue(amq::queue::AMQPMethod::UnbindOk(_)))),
        (warren::protocol::methods::confirm::SelectOk::default().into(), |c| {
            matches!(c, AMQPClass::Confirm(amq::confirm::AMQPMethod::SelectOk(_)))
        }),
        (warren::protocol::methods::tx::SelectOk::default().into(), |c| {
            matches!(c, AMQPClass::Tx(amq::tx::AMQPMethod::SelectOk(_)))
        }),
    ];
    for (method, is_expected) in replies {
        let name = method.name();
        let class = oracle_method(1, method);
        assert!(is_expected(&class), "{name} parsed as {class:?}");
    }

    let got = expect!(
        oracle_method(1, queue::PurgeOk { message_count: 17 }),
        AMQPClass::Queue(amq::queue::AMQPMethod::PurgeOk(m)) => m
    );
    assert_eq!(got.message_count, 17);
    let got = expect!(
        oracle_method(1, queue::DeleteOk { message_count: 18 }),
        AMQPClass::Queue(amq::queue::AMQPMethod::DeleteOk(m)) => m
    );
    assert_eq!(got.message_count, 18);
    let got = expect!(
        oracle_method(1, basic::CancelOk { consumer_tag: "t".into() }),
        AMQPClass::Basic(amq::basic::AMQPMethod::CancelOk(m)) => m
    );
    assert_eq!(got.consumer_tag.as_str(), "t");
}

#[test]
fn server_get_empty_confirms_and_consumer_cancel() {
    expect!(
        oracle_method(1, basic::GetEmpty::default()),
        AMQPClass::Basic(amq::basic::AMQPMethod::GetEmpty(_)) => ()
    );

    // Publisher confirms: the broker acks (and nacks) the publisher.
    for (delivery_tag, multiple) in [(1, false), (1000, true), (u64::MAX, false)] {
        let got = expect!(
            oracle_method(1, basic::Ack { delivery_tag, multiple }),
            AMQPClass::Basic(amq::basic::AMQPMethod::Ack(m)) => m
        );
        assert_eq!((got.delivery_tag, got.multiple), (delivery_tag, multiple));
    }
    let got = expect!(
        oracle_method(
            1,
            basic::Nack {
                delivery_tag: 5,
                multiple: true,
                requeue: false
            }
        ),
        AMQPClass::Basic(amq::basic::AMQPMethod::Nack(m)) => m
    );
    assert_eq!((got.delivery_tag, got.multiple, got.requeue), (5, true, false));

    // consumer_cancel_notify: the broker cancels a consumer whose queue went away.
    let got = expect!(
        oracle_method(
            2,
            basic::Cancel {
                consumer_tag: "amq.ctag-1".into(),
                no_wait: true
            }
        ),
        AMQPClass::Basic(amq::basic::AMQPMethod::Cancel(m)) => m
    );
    assert_eq!(got.consumer_tag.as_str(), "amq.ctag-1");
    assert!(got.nowait);
}

fn message(properties: &BasicProperties, body: Body) -> Arc<Message> {
    let body_size = body.chunks().iter().map(Bytes::len).sum::<usize>() as u64;
    Arc::new(Message {
        exchange: "amq.direct".into(),
        routing_key: "orders.eu".into(),
        properties: properties.to_bytes(),
        body_size,
        body,
        charge: None,
    })
}

/// Writes one delivery through `FrameBuffer`, as the writer task does, and
/// returns what amq-protocol parsed: the method, the header, the body.
fn oracle_delivery(d: &Delivery, frame_max: u32) -> (AMQPClass, amq_protocol::frame::AMQPContentHeader, Vec<Vec<u8>>) {
    let mut frames = FrameBuffer::default();
    frames.delivery(d, frame_max);
    let wire = write_out(&mut frames);
    let mut parsed = oracle_parses(&wire).into_iter();
    let method = expect!(parsed.next(), Some(AMQPFrame::Method(ch, m)) => {
        assert_eq!(ch, d.channel);
        m
    });
    let header = expect!(parsed.next(), Some(AMQPFrame::Header(ch, h)) => {
        assert_eq!(ch, d.channel);
        h
    });
    let bodies = parsed
        .map(|f| {
            expect!(f, AMQPFrame::Body(ch, b) => {
                assert_eq!(ch, d.channel);
                b
            })
        })
        .collect();
    (method, header, bodies)
}

#[test]
fn server_deliver_header_body() {
    let properties = warren_all_properties();
    let body = Bytes::from(patterned_body(100));
    let msg = message(&properties, Body::One(body.clone()));
    for (delivery_tag, redelivered) in [(1, false), (u64::MAX, true)] {
        let d = Delivery {
            channel: 7,
            kind: DeliveryKind::Deliver { consumer_tag: "amq.ctag-Kq3".into() },
            delivery_tag,
            redelivered,
            message: msg.clone(),
        };
        let (method, header, bodies) = oracle_delivery(&d, FRAME_MAX);
        let got = expect!(method, AMQPClass::Basic(amq::basic::AMQPMethod::Deliver(m)) => m);
        assert_eq!(got.consumer_tag.as_str(), "amq.ctag-Kq3");
        assert_eq!(got.delivery_tag, delivery_tag);
        assert_eq!(got.redelivered, redelivered);
        assert_eq!(got.exchange.as_str(), text(&msg.exchange));
        assert_eq!(got.routing_key.as_str(), text(&msg.routing_key));
        assert_eq!(header.class_id, 60);
        assert_eq!(header.body_size, 100);
        assert_same_properties(&properties, &header.properties);
        assert_eq!(bodies, [body.to_vec()]);
    }
}

#[test]
fn server_deliver_each_property_alone_and_none() {
    let mut cases: Vec<BasicProperties> = (0..14).map(warren_single_property).collect();
    cases.push(BasicProperties::default());
    for properties in cases {
        let d = Delivery {
            channel: 1,
            kind: DeliveryKind::Deliver { consumer_tag: "c".into() },
            delivery_tag: 1,
            redelivered: false,
            message: message(&properties, Body::One(Bytes::from_static(b"x"))),
        };
        let (_, header, _) = oracle_delivery(&d, FRAME_MAX);
        assert_same_properties(&properties, &header.properties);
    }
}

#[test]
fn server_get_ok_and_return() {
    let properties = warren_single_property(3);
    let m = message(&properties, Body::One(Bytes::from_static(b"hello")));

    let d = Delivery {
        channel: 2,
        kind: DeliveryKind::GetOk { message_count: 41 },
        delivery_tag: 8,
        redelivered: true,
        message: m.clone(),
    };
    let (method, header, bodies) = oracle_delivery(&d, FRAME_MAX);
    let got = expect!(method, AMQPClass::Basic(amq::basic::AMQPMethod::GetOk(m)) => m);
    assert_eq!(got.delivery_tag, 8);
    assert!(got.redelivered);
    assert_eq!(got.exchange.as_str(), "amq.direct");
    assert_eq!(got.routing_key.as_str(), "orders.eu");
    assert_eq!(got.message_count, 41);
    assert_eq!(header.body_size, 5);
    assert_same_properties(&properties, &header.properties);
    assert_eq!(bodies, [b"hello".to_vec()]);

    let d = Delivery {
        channel: 2,
        kind: DeliveryKind::Return { reply_code: 312, reply_text: "NO_ROUTE".into() },
        delivery_tag: 0,
        redelivered: false,
        message: m,
    };
    let (method, header, bodies) = oracle_delivery(&d, FRAME_MAX);
    let got = expect!(method, AMQPClass::Basic(amq::basic::AMQPMethod::Return(m)) => m);
    assert_eq!(got.reply_code, 312);
    assert_eq!(got.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(got.exchange.as_str(), "amq.direct");
    assert_eq!(got.routing_key.as_str(), "orders.eu");
    assert_eq!(header.body_size, 5);
    assert_eq!(bodies, [b"hello".to_vec()]);
}

#[test]
fn server_frames_written_back_to_back_parse_in_order() {
    // A writer batch: a method reply, a heartbeat and two deliveries in one write.
    let mut frames = FrameBuffer::default();
    frames.method(1, |b| {
        basic::QosOk::default().encode(b);
    });
    frames.heartbeat();
    let m = message(&BasicProperties::default(), Body::Empty);
    for tag in 1..=2 {
        frames.delivery(
            &Delivery {
                channel: 1,
                kind: DeliveryKind::Deliver { consumer_tag: "c".into() },
                delivery_tag: tag,
                redelivered: false,
                message: m.clone(),
            },
            FRAME_MAX,
        );
    }
    let parsed = oracle_parses(&write_out(&mut frames));
    // An empty body is sent as no body frame at all (spec 4.2.6.2).
    assert_eq!(parsed.len(), 1 + 1 + 2 * 2, "{parsed:#?}");
    assert!(matches!(parsed[0], AMQPFrame::Method(1, AMQPClass::Basic(amq::basic::AMQPMethod::QosOk(_)))));
    assert_eq!(parsed[1], AMQPFrame::Heartbeat);
    for (i, tag) in [(2, 1), (4, 2)] {
        let got = expect!(
            &parsed[i],
            AMQPFrame::Method(1, AMQPClass::Basic(amq::basic::AMQPMethod::Deliver(d))) => d
        );
        assert_eq!(got.delivery_tag, tag);
        let header = expect!(&parsed[i + 1], AMQPFrame::Header(1, h) => h);
        assert_eq!(header.body_size, 0);
    }
}

// ===========================================================================
// c. Bodies larger than frame_max.

/// Delivers `body` (held as `chunks`, the way it arrived) with `frame_max`
/// and checks the split and the reassembled body.
fn check_split(chunks: Vec<Bytes>, frame_max: u32) {
    let body: Vec<u8> = chunks.concat();
    let max_payload = frame_max as usize - 8;
    let d = Delivery {
        channel: 4,
        kind: DeliveryKind::Deliver { consumer_tag: "c".into() },
        delivery_tag: 1,
        redelivered: false,
        message: message(&warren_single_property(0), Body::Many(chunks)),
    };
    let (_, header, bodies) = oracle_delivery(&d, frame_max);
    assert_eq!(header.body_size, body.len() as u64);
    assert_eq!(bodies.len(), body.len().div_ceil(max_payload), "frame count");
    for (i, b) in bodies.iter().enumerate() {
        assert!(!b.is_empty(), "body frame {i} is empty");
        assert!(b.len() <= max_payload, "body frame {i}: {} octets", b.len());
        if i + 1 < bodies.len() {
            assert_eq!(b.len(), max_payload, "only the last frame may be short");
        }
    }
    assert!(bodies.concat() == body, "reassembled body differs");
}

#[test]
fn large_bodies_are_split_by_frame_max() {
    let body = Bytes::from(patterned_body(50_000));
    // Chunk boundaries (as the publisher's frames arrived) that do not line
    // up with the outgoing frame boundaries.
    let chunks = vec![body.slice(..1), body.slice(1..10_000), body.slice(10_000..10_001), body.slice(10_001..)];
    check_split(chunks, 8192);
    check_split(vec![body.clone()], 4096);
    // Exactly two full frames: no empty third frame.
    check_split(vec![Bytes::from(patterned_body(2 * 8184))], 8192);
    // One octet over.
    check_split(vec![Bytes::from(patterned_body(8185))], 8192);
    // The usual frame_max with a 200 kB body.
    check_split(vec![Bytes::from(patterned_body(200_000))], FRAME_MAX);
}

// ===========================================================================
// Where the codecs deliberately differ: what RabbitMQ does
// (rabbit_binary_parser.erl) decides.

fn warren_table(wire: &[u8]) -> Result<FieldTable, String> {
    let bytes = Bytes::copy_from_slice(wire);
    parse_table(&bytes, &bytes)
        .map(|(rest, t)| {
            assert!(rest.is_empty());
            t
        })
        .map_err(|e| e.to_string())
}

fn oracle_table_from(wire: &[u8]) -> Option<OracleTable> {
    amq_protocol::types::parsing::parse_field_table(wire).ok().map(|(rest, t)| {
        assert!(rest.is_empty());
        t
    })
}

#[test]
fn type_s_is_a_signed_short_as_rabbitmq_reads_it() {
    // The 0-9-1 spec's table says 's' is a short string; RabbitMQ (and so
    // every client) reads it as a signed 16-bit integer.
    let wire = b"\x00\x00\x00\x05\x01ks\xff\xfe";
    assert_eq!(warren_table(wire).unwrap().get("k"), Some(&FieldValue::I16(-2)));
    assert_eq!(oracle_table_from(wire).unwrap().inner().get("k"), Some(&AMQPValue::ShortInt(-2)));
}

#[test]
fn type_capital_l_is_a_signed_long_long_as_rabbitmq_reads_it() {
    // The spec says 'L' is unsigned 64; RabbitMQ decodes both 'l' and 'L'
    // as signed 64 (rabbitmq-server#1093), and so do warren and amq-protocol.
    let wire = b"\x00\x00\x00\x0b\x01kL\xff\xff\xff\xff\xff\xff\xff\xff";
    assert_eq!(warren_table(wire).unwrap().get("k"), Some(&FieldValue::I64(-1)));
    assert_eq!(oracle_table_from(wire).unwrap().inner().get("k"), Some(&AMQPValue::LongLongInt(-1)));
    // Both write it back as 'l', which RabbitMQ reads the same way.
    let mut out = BytesMut::new();
    warren::protocol::field_table::encode_table(&mut out, &warren_table(wire).unwrap());
    assert_eq!(&out[..], b"\x00\x00\x00\x0b\x01kl\xff\xff\xff\xff\xff\xff\xff\xff");
}

#[test]
fn type_capital_u_is_refused_as_rabbitmq_refuses_it() {
    // 'U' is the spec's letter for a signed short. amq-protocol reads it;
    // RabbitMQ has no clause for it and fails the table, and warren follows
    // RabbitMQ, so a client that sent one would get a syntax error from both.
    let wire = b"\x00\x00\x00\x05\x01kU\xff\xfe";
    assert!(warren_table(wire).is_err());
    assert_eq!(oracle_table_from(wire).unwrap().inner().get("k"), Some(&AMQPValue::ShortInt(-2)));
}

#[test]
fn boolean_octets_other_than_one_are_true() {
    // RabbitMQ: `(Value /= 0)`.
    let wire = b"\x00\x00\x00\x04\x01kt\x02";
    assert_eq!(warren_table(wire).unwrap().get("k"), Some(&FieldValue::Bool(true)));
    assert_eq!(oracle_table_from(wire).unwrap().inner().get("k"), Some(&AMQPValue::Boolean(true)));
}

#[test]
fn method_frames_with_trailing_octets_are_refused() {
    // RabbitMQ decodes method arguments with one exact binary pattern per
    // method (`rabbit_framing_amqp_0_9_1:decode_method_fields/2`); octets
    // left over after the last field match no clause and the connection is
    // closed with 501 FRAME_ERROR ("cannot decode ..."). amq-protocol parses
    // method payloads `all_consuming` and refuses them too.
    let frames = [
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(amq::basic::AMQPMethod::Ack(amq::basic::Ack { delivery_tag: 1, multiple: false })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(amq::basic::AMQPMethod::Publish(amq::basic::Publish {
                exchange: "".into(),
                routing_key: "q".into(),
                mandatory: false,
                immediate: false,
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Queue(amq::queue::AMQPMethod::Declare(amq::queue::Declare {
                queue: "q".into(),
                ..Default::default()
            })),
        ),
    ];
    for frame in frames {
        let mut wire = client_sends(&frame);
        // One more octet in the payload, before the frame end.
        let end = wire.pop().expect("frame end");
        wire.push(0);
        wire.push(end);
        let size = u32::from_be_bytes(wire[3..7].try_into().unwrap()) + 1;
        wire[3..7].copy_from_slice(&size.to_be_bytes());

        assert!(oracle_parse_frame(&wire[..]).is_err(), "amq-protocol refuses {frame}");
        let result = parse_frame(&mut BytesMut::from(&wire[..]), FRAME_MAX);
        assert!(
            result.is_err(),
            "CODEC BUG: warren accepted {frame} with one octet after its last field \
             (parsed as {result:?}). RabbitMQ closes the connection with 501 \
             FRAME_ERROR for this and amq-protocol refuses it: Method::decode \
             (src/protocol/methods/mod.rs) does not check that the arguments \
             used up the whole payload."
        );
    }
}
