//! A hostile client, with raw frames: every input that once crashed, wedged
//! or blinded the broker (issue 8), each refused with the reply RabbitMQ
//! would give while every other connection and every queued message stays
//! intact.

mod common;
// The binary as a child process (not in `common`, which examples share).
#[path = "common/binary.rs"]
mod binary;

use std::time::Duration;

use binary::Warren;
use bytes::{Bytes, BytesMut};
use common::{publish_frames, RawClient, Read};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::protocol::frame::{write_body_frame_header, write_content_header, write_method};
use warren::protocol::methods::{basic, confirm, connection, exchange, queue};
use warren::protocol::{FieldTable, FieldValue, Frame, Method};
use warren::{EmbeddedBroker, Event};

const WAIT: Duration = Duration::from_secs(5);

/// A field table whose entry "n" starts `levels` levels of `F` (tables) or
/// `A` (arrays), each inside the last: five or seven octets a level.
fn nested_table(levels: usize, tag: u8) -> FieldTable {
    let mut value = FieldValue::Void;
    for _ in 0..levels {
        value = match tag {
            b'F' => FieldValue::Table(FieldTable::new().with("n", value)),
            _ => FieldValue::Array(vec![value]),
        };
    }
    FieldTable::new().with("n", value)
}

/// The wire form of a table nested that deep, built without recursion (the
/// encoder would recurse 4,000 times).
fn nested_table_wire(levels: usize, tag: u8) -> Vec<u8> {
    let mut inner: Vec<u8> = vec![b'V'];
    for _ in 0..levels {
        let mut outer = Vec::with_capacity(inner.len() + 8);
        outer.push(tag);
        let body_len = inner.len() + if tag == b'F' { 2 } else { 0 };
        outer.extend_from_slice(&(body_len as u32).to_be_bytes());
        if tag == b'F' {
            outer.extend_from_slice(b"\x01n");
        }
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    let mut table = (inner.len() as u32 + 2).to_be_bytes().to_vec();
    table.extend_from_slice(b"\x01n");
    table.extend_from_slice(&inner);
    table
}

/// A queue.declare on channel 1 whose arguments are `table` (wire form).
fn declare_with_raw_arguments(name: &str, table: &[u8]) -> BytesMut {
    let mut payload = BytesMut::new();
    payload.extend_from_slice(&[0, 50, 0, 10, 0, 0]); // queue.declare, reserved short
    payload.extend_from_slice(&[name.len() as u8]);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(&[0]); // bits
    payload.extend_from_slice(table);
    frame(1, 1, &payload)
}

fn frame(frame_type: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.extend_from_slice(&[frame_type]);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.extend_from_slice(&[0xce]);
    f
}

/// Publish + content header with these raw properties + body, on channel 1.
fn publish_with_properties(exchange: &str, routing_key: &str, properties: &[u8], body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    let m = basic::Publish { exchange: exchange.into(), routing_key: routing_key.into(), ..Default::default() };
    write_method(&mut buf, 1, &m.into());
    write_content_header(&mut buf, 1, 60, body.len() as u64, properties);
    write_body_frame_header(&mut buf, 1, body.len());
    buf.extend_from_slice(body);
    buf.extend_from_slice(&[0xce]);
    buf
}

/// Raw properties holding only `headers`, given in wire form.
fn headers_property(table: &[u8]) -> Vec<u8> {
    let mut p = vec![0x20, 0x00];
    p.extend_from_slice(table);
    p
}

/// The next connection.close or channel.close: (channel, code, text).
async fn expect_close(client: &mut RawClient) -> (u16, u16, String) {
    loop {
        match client.expect_method(WAIT).await {
            (ch, Method::ConnectionClose(c)) => return (ch, c.reply_code, c.reply_text.to_string()),
            (ch, Method::ChannelClose(c)) => return (ch, c.reply_code, c.reply_text.to_string()),
            _ => {}
        }
    }
}

/// After a channel error on channel 1: close-ok, and open it again.
async fn reopen_channel_1(client: &mut RawClient) {
    client.send(1, warren::protocol::methods::channel::CloseOk {}).await;
    client.send(1, warren::protocol::methods::channel::Open { reserved_1: "".into() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ChannelOpenOk(_)));
}

/// A bystander: a queue holding one message, checked at the end of a test
/// to prove that nothing the hostile client did reached it.
async fn bystander(addr: std::net::SocketAddr) -> RawClient {
    let mut c = RawClient::open(addr, 0).await;
    c.declare_queue("bystander").await;
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "bystander", false, b"still here");
    c.send_raw(&frames).await;
    c
}

async fn bystander_is_intact(c: &mut RawClient) {
    c.send(1, basic::Get { queue: "bystander".into(), no_ack: true, ..Default::default() }).await;
    assert!(matches!(c.expect_method(WAIT).await.1, Method::BasicGetOk(_)));
    assert!(matches!(c.read(WAIT).await, Read::Frame(Frame::Header { .. })));
    match c.read(WAIT).await {
        Read::Frame(Frame::Body { body, .. }) => assert_eq!(&body[..], b"still here"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn deeply_nested_arguments_before_connection_open_close_only_that_connection() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut other = bystander(broker.addr()).await;
    // 3,700 levels of tables fit in a 24 kB frame; decoding them recursively
    // overflowed a worker's stack and aborted the process.
    let mut hostile = RawClient::connect(broker.addr()).await;
    hostile.handshake_to_tune_ok(2047, 131_072, 0).await;
    let wire = nested_table_wire(3_700, b'F');
    assert!(wire.len() < 30_000);
    hostile.send_raw(&declare_with_raw_arguments("q", &wire)).await;
    let (channel, code, text) = expect_close(&mut hostile).await;
    assert_eq!((channel, code), (0, 501), "{text}");
    assert!(text.contains("field table nested deeper than 128 levels"), "{text}");
    bystander_is_intact(&mut other).await;
}

#[tokio::test]
async fn deeply_nested_arrays_and_tables_are_refused_at_every_door() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut other = bystander(broker.addr()).await;

    // Arrays in queue arguments, on a running connection.
    let mut hostile = RawClient::open(broker.addr(), 0).await;
    hostile.send_raw(&declare_with_raw_arguments("q", &nested_table_wire(4_000, b'A'))).await;
    let (_, code, text) = expect_close(&mut hostile).await;
    assert_eq!(code, 501, "{text}");

    // Message headers, which a headers exchange decodes to route.
    let mut hostile = RawClient::open(broker.addr(), 0).await;
    hostile.send(1, exchange::Declare { exchange: "h".into(), kind: "headers".into(), ..Default::default() }).await;
    assert!(matches!(hostile.expect_method(WAIT).await.1, Method::ExchangeDeclareOk(_)));
    let props = headers_property(&nested_table_wire(3_700, b'F'));
    hostile.send_raw(&publish_with_properties("h", "", &props, b"x")).await;
    let (channel, code, text) = expect_close(&mut hostile).await;
    assert_eq!((channel, code), (0, 541), "{text}");
    assert!(text.contains("nested deeper than 128 levels"), "{text}");

    // Up to the limit is fine, and goes through byte for byte.
    let mut fine = RawClient::open(broker.addr(), 0).await;
    fine.declare_queue("deep").await;
    let props = headers_property(&nested_table_wire(120, b'A'));
    fine.send_raw(&publish_with_properties("", "deep", &props, b"deep")).await;
    fine.send(1, basic::Get { queue: "deep".into(), no_ack: true, ..Default::default() }).await;
    assert!(matches!(fine.expect_method(WAIT).await.1, Method::BasicGetOk(_)));
    match fine.read(WAIT).await {
        Read::Frame(Frame::Header { header, .. }) => assert_eq!(&header.raw_properties[..], &props[..]),
        other => panic!("{other:?}"),
    }
    bystander_is_intact(&mut other).await;
}

#[tokio::test]
async fn nested_arguments_at_the_limit_are_accepted_and_one_more_level_refused() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    // The top-level table is level 1: 127 more levels is the deepest allowed.
    client
        .send(1, queue::Declare { queue: "ok".into(), arguments: nested_table(127, b'F'), ..Default::default() })
        .await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::QueueDeclareOk(_)));
    client
        .send(1, queue::Declare { queue: "no".into(), arguments: nested_table(128, b'F'), ..Default::default() })
        .await;
    assert_eq!(expect_close(&mut client).await.1, 501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_publish_with_many_hashes_and_a_long_key_does_not_wedge_the_broker() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.send(1, exchange::Declare { exchange: "t".into(), kind: "topic".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ExchangeDeclareOk(_)));
    client.declare_queue("hashes").await;
    // Sixteen `#` then `z`: the naive matcher tries every split of 64 words.
    let binding = format!("{}z", "#.".repeat(16));
    client
        .send(
            1,
            queue::Bind {
                queue: "hashes".into(),
                exchange: "t".into(),
                routing_key: binding.as_str().into(),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::QueueBindOk(_)));
    client.send(1, confirm::Select { no_wait: false }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ConfirmSelectOk(_)));
    let miss = vec!["w"; 64].join(".");
    let hit = vec!["w"; 63].join(".") + ".z";
    for key in [&miss, &hit] {
        let mut frames = BytesMut::new();
        write_method(
            &mut frames,
            1,
            &basic::Publish { exchange: "t".into(), routing_key: key.as_str().into(), ..Default::default() }.into(),
        );
        write_content_header(&mut frames, 1, 60, 0, &[0, 0]);
        client.send_raw(&frames).await;
    }
    // Both confirmed (a wedged broker never answers), the second routed.
    let mut confirmed = 0;
    while confirmed < 2 {
        match client.expect_method(Duration::from_secs(10)).await.1 {
            Method::BasicAck(a) => confirmed = a.delivery_tag,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(client.message_count("hashes").await, 1);
    // And a new client still gets its connection.start at once.
    RawClient::open(broker.addr(), 0).await;
}

#[tokio::test]
async fn broken_properties_are_refused_not_delivered() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut other = bystander(broker.addr()).await;
    let cases: [(&[u8], &str); 3] = [
        (b"\x00\x01\x80\x00", "property flags 0x0001 set bits no basic property has"),
        (b"\x10\x00\x02\x00", "1 octets after the last property"),
        (b"\x20\x00\x00\x00\x00\x03\x01aZ", "unknown field table type 'Z'"),
    ];
    for (props, why) in cases {
        let mut hostile = RawClient::open(broker.addr(), 0).await;
        hostile.declare_queue("never").await;
        hostile.send_raw(&publish_with_properties("", "never", props, b"garbage")).await;
        let (channel, code, text) = expect_close(&mut hostile).await;
        assert_eq!((channel, code), (0, 541), "{text}");
        assert_eq!(text, format!("INTERNAL_ERROR - cannot decode content properties: {why}"));
    }
    let mut check = RawClient::open(broker.addr(), 0).await;
    check.send(1, queue::Declare { queue: "never".into(), passive: true, ..Default::default() }).await;
    match check.expect_method(WAIT).await.1 {
        Method::QueueDeclareOk(ok) => assert_eq!(ok.message_count, 0, "a broken message was queued"),
        other => panic!("{other:?}"),
    }
    bystander_is_intact(&mut other).await;
}

#[tokio::test]
async fn an_invalid_expiration_is_406_with_rabbitmqs_text() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("ttl").await;
    for (expiration, reason) in [
        ("abc", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("315360000001", "{value_too_large,315360000001}"),
        ("10abc", "{leftover_string,\"abc\"}"),
    ] {
        let mut props = vec![0x01, 0x00, expiration.len() as u8];
        props.extend_from_slice(expiration.as_bytes());
        client.send_raw(&publish_with_properties("", "ttl", &props, b"x")).await;
        let (channel, code, text) = expect_close(&mut client).await;
        assert_eq!((channel, code), (1, 406));
        assert_eq!(text, format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}"));
        reopen_channel_1(&mut client).await;
    }
}

#[tokio::test]
async fn queue_arguments_beyond_rabbitmqs_limits_are_406() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    for (key, value, reason) in [
        ("x-max-priority", FieldValue::I32(256), "{max_value_exceeded,256}"),
        ("x-expires", FieldValue::I64(315_360_000_001), "{value_too_large,315360000001}"),
        ("x-message-ttl", FieldValue::I64(315_360_000_001), "{value_too_large,315360000001}"),
    ] {
        let arguments = FieldTable::new().with(key, value);
        client.send(1, queue::Declare { queue: "q".into(), arguments, ..Default::default() }).await;
        let (channel, code, text) = expect_close(&mut client).await;
        assert_eq!((channel, code), (1, 406));
        assert_eq!(text, format!("PRECONDITION_FAILED - invalid arg '{key}' for queue 'q' in vhost '/': {reason}"));
        reopen_channel_1(&mut client).await;
    }
}

#[tokio::test]
async fn after_a_frame_error_the_clients_close_ok_ends_the_connection() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut events = broker.events();
    let mut client = RawClient::open(broker.addr(), 0).await;
    // An unknown frame type: a frame error, but the frame boundaries are intact.
    client.send_raw(&frame(9, 0, b"junk")).await;
    let (_, code, _) = expect_close(&mut client).await;
    assert_eq!(code, 501);
    client.send(0, connection::CloseOk {}).await;
    assert!(matches!(client.read(WAIT).await, Read::Closed));
    let closed = events.wait_for(|e| matches!(e, Event::ConnectionClosed { .. }), WAIT).await.unwrap();
    let Event::ConnectionClosed { reason, .. } = closed else { unreachable!() };
    assert_eq!(reason, "closed (connection.close handshake)", "the close-ok was ignored");
}

#[tokio::test]
async fn update_secret_is_accepted_for_internal_users() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client
        .send(0, connection::UpdateSecret { new_secret: Bytes::from_static(b"guest"), reason: "token refresh".into() })
        .await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionUpdateSecretOk(_))));
    // Still a working connection.
    client.declare_queue("after-update").await;
}

#[test]
fn client_text_cannot_forge_log_lines() {
    let warren = Warren::start(&[], "");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // A user name with a newline, refused before authentication.
        let mut c = RawClient::connect(warren.amqp).await;
        c.send_raw(warren::protocol::PROTOCOL_HEADER).await;
        c.expect_method(WAIT).await;
        c.send(
            0,
            connection::StartOk {
                client_properties: FieldTable::new()
                    .with("connection_name", FieldValue::LongStr("app\nFORGED client name".into())),
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0evil\nFORGED user line\0pw"),
                locale: "en_US".into(),
            },
        )
        .await;
        let _ = c.read(WAIT).await;
    });
    let (line, before) = warren.wait_for_log("login refused");
    assert!(line.contains(r"user 'evil\nFORGED user line'"), "{line}");
    for l in &before {
        assert!(!l.starts_with("FORGED"), "a forged line: {l}");
    }
    let named = before.iter().find(|l| l.contains("client-provided name")).expect("the name was logged");
    assert!(named.ends_with(r"app\nFORGED client name"), "{named}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_kept_messages_do_not_pin_the_buffers_they_were_read_into() {
    // Each 16-octet message kept in a queue shared its 64 KiB read buffer
    // with a large message that went nowhere: 3,000 of them held ~180 MB
    // while the account showed under 1 MB, and a 64 MiB watermark never
    // blocked anyone.
    let warren = Warren::start(&[], "vm_memory_high_watermark.absolute = 64MiB\n");
    let mut client = RawClient::open(warren.amqp, 0).await;
    client.declare_queue("keep").await;
    let before = warren.rss();
    let unroutable = vec![0u8; 60 * 1024];
    let mut batch = BytesMut::new();
    for i in 0..3_000u32 {
        publish_frames(&mut batch, "keep", false, &i.to_be_bytes().repeat(4));
        publish_frames(&mut batch, "nowhere", false, &unroutable);
        if batch.len() > 1 << 20 {
            client.send_raw(&batch).await;
            batch.clear();
        }
    }
    client.send_raw(&batch).await;
    assert_eq!(client.message_count("keep").await, 3_000);
    let grown = warren.rss().saturating_sub(before);
    eprintln!("3,000 kept messages: resident memory grew {} KiB", grown >> 10);
    assert!(grown < 24 << 20, "resident memory grew {} MiB", grown >> 20);
}

/// Opens a connection that announces `connection.blocked` and publishes one
/// message with confirms; returns whether it was blocked instead.
async fn blocked_at_first_publish(addr: std::net::SocketAddr) -> bool {
    let mut client = RawClient::open(addr, 0).await;
    client.declare_queue("q").await;
    client.send(1, confirm::Select { no_wait: false }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ConfirmSelectOk(_)));
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    match client.expect_method(WAIT).await.1 {
        Method::ConnectionBlocked(b) => {
            assert_eq!(b.reason.to_string(), "low on memory");
            true
        }
        Method::BasicAck(_) => false,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_memory_alarm_watches_what_the_process_holds() {
    // A watermark below what any process holds: with `rss` (the binary's
    // default, as RabbitMQ's) the alarm is on at once; with `legacy` only
    // the messages count and one small message passes.
    let conf = |strategy: &str| {
        format!(
            "vm_memory_high_watermark.absolute = 512KiB\nvm_memory_calculation_strategy = {strategy}\nmemory_monitor_interval = 50\n"
        )
    };
    let rss = Warren::start(&[], &conf("rss"));
    rss.wait_for_log("memory resource limit alarm set");
    assert!(blocked_at_first_publish(rss.amqp).await);
    let allocated = Warren::start(&[], &conf("allocated"));
    allocated.wait_for_log("memory resource limit alarm set");
    assert!(blocked_at_first_publish(allocated.amqp).await);
    let legacy = Warren::start(&[], &conf("legacy"));
    assert!(!blocked_at_first_publish(legacy.amqp).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_with_the_http_api_on_keeps_memory_flat() {
    // Each connection.opened event kept by the HTTP API's event log held
    // the client properties, slices of the connection's 64 KiB read buffer:
    // resident memory grew ~45 MB a round of 700 connections.
    let warren = Warren::start(&["--http-port", "0"], "");
    let round = || async {
        for _ in 0..500 {
            let mut c = RawClient::open(warren.amqp, 0).await;
            c.send(0, connection::Close { reply_code: 200, ..Default::default() }).await;
            assert!(matches!(c.expect_method(WAIT).await.1, Method::ConnectionCloseOk(_)));
        }
    };
    let mut rss = Vec::new();
    for _ in 0..8 {
        round().await;
        rss.push(warren.rss());
    }
    eprintln!(
        "resident memory after each round of 500 connections (MiB): {:?}",
        rss.iter().map(|r| r >> 20).collect::<Vec<_>>()
    );
    let grown = rss[7].saturating_sub(rss[1]);
    // The event log fills up meanwhile (bounded at 10,000 events, 8 MiB).
    assert!(grown < 8 << 20, "grew {} MiB from round 2 to round 8", grown >> 20);
}

#[tokio::test]
async fn connections_past_connection_max_are_refused_at_open() {
    let broker = EmbeddedBroker::builder().connection_max(2).start().await.unwrap();
    let _first = RawClient::open(broker.addr(), 0).await;
    let _second = RawClient::open(broker.addr(), 0).await;
    let mut third = RawClient::connect(broker.addr()).await;
    third.handshake_to_tune_ok(2047, 131_072, 0).await;
    third.send(0, connection::Open { virtual_host: "/".into(), ..Default::default() }).await;
    match third.expect_method(WAIT).await {
        (0, Method::ConnectionClose(c)) => {
            assert_eq!((c.reply_code, c.class_id, c.method_id), (530, 10, 40));
            assert_eq!(
                c.reply_text.to_string(),
                "NOT_ALLOWED - connection refused: node connection limit (2) is reached"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_message_past_max_message_size_is_406_before_its_body_is_read() {
    let broker = EmbeddedBroker::builder().max_message_size(1000).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let mut frames = BytesMut::new();
    write_method(&mut frames, 1, &basic::Publish { routing_key: "q".into(), ..Default::default() }.into());
    write_content_header(&mut frames, 1, 60, 1001, &[0, 0]);
    client.send_raw(&frames).await;
    let (channel, code, text) = expect_close(&mut client).await;
    assert_eq!((channel, code), (1, 406));
    assert_eq!(text, "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000");
}

/// Reads frames until a method named `want` (within 30 s).
async fn wait_for_method(read: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut BytesMut, want: &str) {
    loop {
        while let Some(frame) = warren::protocol::frame::parse_frame(buf, 1 << 20).unwrap() {
            if matches!(&frame, Frame::Method { method, .. } if method.name() == want) {
                return;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(30), read.read_buf(buf))
            .await
            .unwrap_or_else(|_| panic!("no {want} within 30 s"))
            .unwrap();
        assert!(n > 0, "closed before {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_full_queue_clears_the_alarm_the_process_memory_raised() {
    // With `rss`, resident memory must come down once messages are gone, or
    // publishers blocked by the alarm would stay blocked: freed memory the
    // allocator keeps is handed back (malloc_trim).
    let warren = Warren::start(
        &[],
        "vm_memory_high_watermark.absolute = 48MiB\nvm_memory_calculation_strategy = rss\nmemory_monitor_interval = 100\n",
    );
    let mut publisher = RawClient::open(warren.amqp, 0).await;
    publisher.declare_queue("fill").await;
    let (mut read, mut write) = publisher.stream.into_split();
    // Flat out until the broker stops reading: blocked.
    let writer = tokio::spawn(async move {
        let mut batch = BytesMut::new();
        for _ in 0..64 {
            publish_frames(&mut batch, "fill", false, &[1u8; 4096]);
        }
        while write.write_all(&batch).await.is_ok() {}
    });
    let mut buf = BytesMut::new();
    wait_for_method(&mut read, &mut buf, "connection.blocked").await;
    let high = warren.rss();
    let mut other = RawClient::open(warren.amqp, 0).await;
    other.send(1, queue::Delete { queue: "fill".into(), ..Default::default() }).await;
    assert!(matches!(other.expect_method(WAIT).await.1, Method::QueueDeleteOk(_)));
    wait_for_method(&mut read, &mut buf, "connection.unblocked").await;
    eprintln!("blocked at {} MiB resident, unblocked at {} MiB", high >> 20, warren.rss() >> 20);
    writer.abort();
}
