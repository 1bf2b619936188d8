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

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput};
use tokio::io::AsyncWrite;

use warren::broker::message::Message;
use warren::connection::writer::{Delivery, DeliveryKind, FrameBuffer};
use warren::protocol::ShortStr;

// ---------------------------------------------------------------------------
// Counting allocations.

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
#[path = "../tests/support/sample.rs"]
mod sample;
use counting_alloc::allocations_in;
use sample::{parse_publish, parsed_message, publish_wire, write_now, FRAME_MAX};

// ---------------------------------------------------------------------------
// The message.

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

/// Delivers with the frame buffer and writes it out.
fn encode_delivery<W: AsyncWrite + Unpin>(frames: &mut FrameBuffer, sink: &mut W, d: &Delivery) -> usize {
    frames.delivery(d, FRAME_MAX);
    write_now(frames, sink)
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
