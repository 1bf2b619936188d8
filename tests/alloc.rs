//! Allocations on the message path, counted by a wrapping global allocator.
//!
//! The codec promises that parsing a `basic.publish` with its content header
//! and body allocates nothing: every string, the raw properties and the body
//! are `Bytes` slices of the read buffer (see `warren::protocol`). This test
//! holds it to that, and measures what encoding a delivery costs.
//!
//! Only allocations made on the measuring thread while a measurement runs are
//! counted (a thread-local flag), so the test harness's own threads cannot
//! disturb the numbers. All measurements are in the one `#[test]` below, one
//! after the other.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};

use warren::connection::writer::{Delivery, DeliveryKind, FrameBuffer};
use warren::protocol::methods::basic;
use warren::protocol::{Frame, Method};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "support/sample.rs"]
mod sample;
use counting_alloc::allocations_in;
use sample::{parse_publish, parsed_message, publish_wire, write_now, FRAME_MAX};
const WARM_UP: usize = 100;
const MESSAGES: usize = 1000;

/// Parsing from a read buffer that already holds the messages: allocations
/// for the first message, and for the `MESSAGES` after the warm-up.
fn parse_allocations() -> (usize, usize) {
    let wire = publish_wire();
    let mut buf = BytesMut::with_capacity(wire.len() * (WARM_UP + MESSAGES));
    for _ in 0..WARM_UP + MESSAGES {
        buf.extend_from_slice(&wire);
    }
    // Warm up. The first `split_to` inside `parse_frame` turns the buffer's
    // storage into shared storage (bytes allocates its small `Shared` header
    // once: the one allocation of the first message); after that a split is
    // a reference-count increment.
    let first = allocations_in(|| {
        black_box(parse_publish(&mut buf));
    });
    for _ in 1..WARM_UP {
        black_box(parse_publish(&mut buf));
    }
    let n = allocations_in(|| {
        for _ in 0..MESSAGES {
            let (method, header, body) = parse_publish(&mut buf);
            assert!(matches!(method, Frame::Method { method: Method::BasicPublish(_), .. }));
            assert!(matches!(header, Frame::Header { .. }));
            assert!(matches!(body, Frame::Body { .. }));
            black_box((method, header, body));
        }
    });
    assert!(buf.is_empty());
    (first, n)
}

/// Parsing as the connection does it: the socket's bytes are appended to the
/// read buffer a message at a time and parsed, and the frames are dropped
/// before the next read, so `BytesMut::reserve` can reclaim the space.
fn parse_refilled_allocations() -> usize {
    let wire = publish_wire();
    let mut buf = BytesMut::with_capacity(4096);
    for _ in 0..WARM_UP {
        buf.extend_from_slice(&wire);
        black_box(parse_publish(&mut buf));
    }
    allocations_in(|| {
        for _ in 0..MESSAGES {
            buf.extend_from_slice(&wire);
            black_box(parse_publish(&mut buf));
        }
    })
}

/// Encoding deliveries with `FrameBuffer::delivery` and writing them out
/// into a reused `Vec`, one message per write as under light load: the
/// allocations of the first delivery and of the `MESSAGES` after the warm-up,
/// and the octets written per delivery.
fn encode_allocations() -> (usize, usize, usize) {
    let message = parsed_message(&publish_wire());
    let consumer_tag: warren::protocol::ShortStr = "amq.ctag-alloc".into();
    let mut frames = FrameBuffer::default();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut tag = 0;
    let mut deliver = |frames: &mut FrameBuffer, out: &mut Vec<u8>| {
        tag += 1;
        // Building the `Delivery` clones two `Arc`-backed handles: no allocation.
        let d = Delivery {
            channel: 1,
            kind: DeliveryKind::Deliver { consumer_tag: consumer_tag.clone() },
            delivery_tag: tag,
            redelivered: false,
            message: message.clone(),
        };
        frames.delivery(&d, FRAME_MAX);
        out.clear();
        write_now(frames, out)
    };
    // Warm up. The first delivery makes three one-time allocations: the
    // consumer tag (a `Bytes` made from a `String`) moves to shared storage
    // on its first clone; the first `BytesMut::split` of the frame buffer's
    // scratch space does the same; the `VecDeque` of chunks gets its buffer.
    // After that nothing allocates: names, properties and body are clones of
    // shared `Bytes`, and when the 16 KiB scratch space is used up,
    // `reserve` finds it unique again (the written chunks were dropped) and
    // reuses it. (A batch larger than the scratch space, under load, grows it
    // once; that is amortised over the batch and not measured here.)
    let first = allocations_in(|| {
        deliver(&mut frames, &mut out);
    });
    for _ in 1..WARM_UP {
        deliver(&mut frames, &mut out);
    }
    let mut written = 0;
    let n = allocations_in(|| {
        for _ in 0..MESSAGES {
            written = deliver(&mut frames, &mut out);
        }
    });
    // Sanity: what was written is a deliver, a header and the body.
    let mut check = BytesMut::from(&out[..]);
    let (method, _, body) = parse_publish(&mut check);
    assert!(matches!(
        method,
        Frame::Method {
            method: Method::BasicDeliver(basic::Deliver { delivery_tag, .. }),
            ..
        } if delivery_tag == tag
    ));
    assert!(matches!(body, Frame::Body { body, .. } if body == Bytes::from_static(&[b'x'; 100])));
    (first, n, written)
}

#[test]
fn message_path_allocations() {
    // The counter itself works.
    assert_eq!(allocations_in(|| drop(black_box(vec![0u8; 16]))), 1);

    let (parse_first, parse) = parse_allocations();
    println!(
        "parse publish+header+body, pre-filled buffer: {} allocations in {MESSAGES} messages ({:.2}/message; first message: {parse_first})",
        parse,
        parse as f64 / MESSAGES as f64
    );
    let refilled = parse_refilled_allocations();
    println!(
        "parse publish+header+body, refilled buffer:   {} allocations in {MESSAGES} messages ({:.2}/message)",
        refilled,
        refilled as f64 / MESSAGES as f64
    );
    let (encode_first, encode, octets) = encode_allocations();
    println!(
        "encode deliver+header+body ({octets} octets) + write_to: {} allocations in {MESSAGES} messages ({:.2}/message; first message: {encode_first})",
        encode,
        encode as f64 / MESSAGES as f64
    );

    assert_eq!(parse, 0, "parsing basic.publish + header + body must not allocate once warmed up");
    assert_eq!(refilled, 0, "parsing from a refilled read buffer must not allocate once warmed up");
    // Measured: 0. See `encode_allocations` for the one-time allocations of
    // the first delivery and why none follow.
    assert_eq!(encode, 0, "encoding and writing a delivery must not allocate once warmed up");
}
