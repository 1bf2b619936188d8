//! The codec on the message path, one message at a time:
//!
//! - "parse publish+header+body": what the connection does with a client's
//!   `basic.publish`, its content header (a few properties) and a 100-octet
//!   body, from a read buffer that already holds them;
//! - "encode deliver+header+body": what the writer does for one delivery,
//!   `FrameBuffer::delivery` and `write_to` a sink.
//!
//! Before the benchmarks run, a counting global allocator reports how many
//! allocations each makes per message once warmed up (`tests/alloc.rs`
//! asserts the same numbers).
//!
//! `cargo bench --bench codec`; each benchmark measures for 2 s.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput};
use tokio::io::AsyncWrite;

use warren::broker::message::{Body, Message};
use warren::connection::writer::{Delivery, DeliveryKind, FrameBuffer};
use warren::protocol::constants::{CLASS_BASIC, FRAME_END};
use warren::protocol::frame::{parse_frame, write_body_frame_header, write_content_header, write_method};
use warren::protocol::methods::basic;
use warren::protocol::properties::BasicProperties;
use warren::protocol::{Frame, Method, ShortStr};

// ---------------------------------------------------------------------------
// Counting allocations.

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_in;

// ---------------------------------------------------------------------------
// The message.

const FRAME_MAX: u32 = 131_072;

/// One publish as a client sends it: method, content header with
/// content-type, delivery-mode, message-id and timestamp, 100-octet body.
fn publish_wire() -> Vec<u8> {
    let mut wire = BytesMut::new();
    let publish = Method::BasicPublish(basic::Publish {
        reserved_1: 0,
        exchange: "amq.direct".into(),
        routing_key: "orders.eu".into(),
        mandatory: false,
        immediate: false,
    });
    write_method(&mut wire, 1, &publish);
    let properties = BasicProperties {
        content_type: Some("application/json".into()),
        delivery_mode: Some(2),
        message_id: Some("5f1c9a7e-0b4d-4c1e-9a55-3f2d8e6b7c10".into()),
        timestamp: Some(1_700_000_000),
        ..Default::default()
    }
    .to_bytes();
    let body = [b'x'; 100];
    write_content_header(&mut wire, 1, CLASS_BASIC, body.len() as u64, &properties);
    write_body_frame_header(&mut wire, 1, body.len());
    wire.put_slice(&body);
    wire.put_u8(FRAME_END);
    wire.to_vec()
}

/// Parses one publish (three frames) off the front of `buf`.
fn parse_publish(buf: &mut BytesMut) -> (Frame, Frame, Frame) {
    let mut next = || parse_frame(buf, FRAME_MAX).expect("valid frame").expect("complete frame");
    (next(), next(), next())
}

/// A read buffer holding `n` publishes, already split once (as after the
/// first frame the connection parsed) so its storage is shared.
fn read_buffer(wire: &[u8], n: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(wire.len() * n);
    for _ in 0..n {
        buf.extend_from_slice(wire);
    }
    drop(buf.split_to(0));
    buf
}

/// The message as the broker holds it after parsing the publish.
fn parsed_message(wire: &[u8]) -> Arc<Message> {
    let mut buf = BytesMut::from(wire);
    let (method, header, body) = parse_publish(&mut buf);
    let (
        Frame::Method { method: Method::BasicPublish(publish), .. },
        Frame::Header { header, .. },
        Frame::Body { body, .. },
    ) = (method, header, body)
    else {
        panic!("not a publish");
    };
    Arc::new(Message {
        exchange: publish.exchange,
        routing_key: publish.routing_key,
        properties: header.raw_properties,
        body_size: header.body_size,
        body: Body::One(body),
        charge: None,
    })
}

/// Delivers with the frame buffer and writes it out. Writing to a sink never
/// blocks, so one poll finishes `write_to`; no runtime is needed.
fn encode_delivery<W: AsyncWrite + Unpin>(frames: &mut FrameBuffer, sink: &mut W, d: &Delivery) -> usize {
    frames.delivery(d, FRAME_MAX);
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(frames.write_to(sink)).as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.expect("the sink cannot fail"),
        Poll::Pending => unreachable!("the sink does not block"),
    }
}

fn delivery(message: &Arc<Message>, consumer_tag: &ShortStr, delivery_tag: u64) -> Delivery {
    Delivery {
        channel: 1,
        kind: DeliveryKind::Deliver { consumer_tag: consumer_tag.clone() },
        delivery_tag,
        redelivered: false,
        message: message.clone(),
    }
}

// ---------------------------------------------------------------------------
// Allocations per message, reported once.

const WARM_UP: usize = 100;
const MESSAGES: usize = 1000;

fn report_allocations() {
    let wire = publish_wire();

    let mut buf = read_buffer(&wire, WARM_UP + MESSAGES);
    for _ in 0..WARM_UP {
        black_box(parse_publish(&mut buf));
    }
    let parse = allocations_in(|| {
        for _ in 0..MESSAGES {
            black_box(parse_publish(&mut buf));
        }
    });

    let message = parsed_message(&wire);
    let consumer_tag = ShortStr::from("amq.ctag-bench");
    let mut frames = FrameBuffer::default();
    let mut sink = tokio::io::sink();
    for tag in 0..WARM_UP as u64 {
        encode_delivery(&mut frames, &mut sink, &delivery(&message, &consumer_tag, tag));
    }
    let encode = allocations_in(|| {
        for tag in 0..MESSAGES as u64 {
            black_box(encode_delivery(&mut frames, &mut sink, &delivery(&message, &consumer_tag, tag)));
        }
    });

    println!(
        "parse: {:.2} allocations/message, encode: {:.2} allocations/message",
        parse as f64 / MESSAGES as f64,
        encode as f64 / MESSAGES as f64
    );
}

// ---------------------------------------------------------------------------
// Benchmarks.

/// Messages per pre-filled read buffer: the buffer is rebuilt (untimed)
/// every `BATCH` messages, so parsing always starts from bytes in memory.
const BATCH: usize = 1024;

fn bench_parse(c: &mut Criterion) {
    let wire = publish_wire();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse publish+header+body", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(BATCH);
                let mut buf = read_buffer(&wire, n);
                let start = Instant::now();
                for _ in 0..n {
                    black_box(parse_publish(&mut buf));
                }
                elapsed += start.elapsed();
                left -= n;
            }
            elapsed
        })
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let message = parsed_message(&publish_wire());
    let consumer_tag = ShortStr::from("amq.ctag-bench");
    let mut frames = FrameBuffer::default();
    let mut sink = tokio::io::sink();
    let mut delivery_tag = 0;
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode deliver+header+body", |b| {
        b.iter(|| {
            delivery_tag += 1;
            let d = delivery(&message, &consumer_tag, delivery_tag);
            black_box(encode_delivery(&mut frames, &mut sink, &d))
        })
    });
    group.finish();
}

fn main() {
    report_allocations();
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_parse(&mut c);
    bench_encode(&mut c);
    c.final_summary();
}
