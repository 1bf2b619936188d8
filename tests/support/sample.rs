//! A realistic message on the hot path, shared by `tests/alloc.rs` and
//! `benches/codec.rs` (each includes this file with `#[path]`).

#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWrite;
use warren::broker::message::{Body, Message};
use warren::connection::writer::FrameBuffer;
use warren::protocol::constants::{CLASS_BASIC, FRAME_END};
use warren::protocol::frame::{parse_frame, write_body_frame_header, write_content_header, write_method};
use warren::protocol::methods::basic;
use warren::protocol::properties::BasicProperties;
use warren::protocol::{FieldTable, FieldValue, Frame, Method};

pub const FRAME_MAX: u32 = 131_072;

/// A realistic publish as it arrives: method, content header with a few
/// properties (a headers table among them) and a 100-octet body.
pub fn publish_wire() -> Vec<u8> {
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
        message_id: Some("msg-0001".into()),
        headers: Some(FieldTable::new().with("attempt", FieldValue::I32(1))),
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
pub fn parse_publish(buf: &mut BytesMut) -> (Frame, Frame, Frame) {
    let mut next = || parse_frame(buf, FRAME_MAX).expect("valid frame").expect("complete frame");
    (next(), next(), next())
}

/// Runs `FrameBuffer::write_to` into a `Vec`, which never blocks: one poll
/// finishes it, and no runtime (with allocations of its own) is involved.
pub fn write_now<W: AsyncWrite + Unpin>(frames: &mut FrameBuffer, out: &mut W) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(frames.write_to(out)).as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.expect("writing to a Vec cannot fail"),
        Poll::Pending => unreachable!("writing to a Vec does not block"),
    }
}

/// The message as the broker holds it: built from a parsed publish, so its
/// names, properties and body are slices of a read buffer.
pub fn parsed_message(wire: &[u8]) -> Arc<Message> {
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
