//! Encoding what a connection's writer sends. Small frames (methods,
//! content headers, body-frame headers) are encoded into one scratch buffer;
//! message bodies are queued as the `Bytes` they arrived in, so the kernel
//! reads them straight from the message (small ones excepted, see
//! [`COPIED_BODY_MAX`]); one vectored write sends it all.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::writer::Delivery;
use crate::protocol::constants::{CLASS_BASIC, FRAME_END, FRAME_OVERHEAD};
use crate::protocol::frame::{write_body_frame_header, write_content_header, HEARTBEAT_FRAME};
use crate::protocol::methods::write_method_frame;

/// The size of the scratch buffer's allocations.
const SCRATCH: usize = 16 * 1024;

/// Body pieces up to this size are copied into the scratch buffer instead
/// of being queued as a `Bytes` of their own. Queued, a 16-octet body costs
/// more than its copy: a clone and a drop of its `Bytes` (two atomic updates
/// of a reference count that the publisher's core wrote last), and a slot
/// of the vectored write, which takes at most 64: with every body in a slot
/// of its own, one `writev` carried at most 32 deliveries; copied, it
/// carries the whole batch.
const COPIED_BODY_MAX: usize = 512;

/// Frames waiting to be written: small frames and small bodies are encoded
/// into one buffer, larger bodies are queued as they are, and one vectored
/// write sends it all.
pub struct FrameBuffer {
    scratch: BytesMut,
    chunks: VecDeque<Bytes>,
    len: usize,
    /// Frames encoded since the last [`take_frames`](Self::take_frames).
    frames: u64,
}

impl Default for FrameBuffer {
    fn default() -> Self {
        FrameBuffer { scratch: BytesMut::new(), chunks: VecDeque::new(), len: 0, frames: 0 }
    }
}

impl FrameBuffer {
    /// Octets waiting to be written.
    pub fn len(&self) -> usize {
        self.len + self.scratch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn seal(&mut self) {
        if !self.scratch.is_empty() {
            let b = self.scratch.split().freeze();
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    fn push_chunk(&mut self, b: Bytes) {
        self.seal();
        self.len += b.len();
        self.chunks.push_back(b);
    }

    /// One already-encoded frame.
    pub fn frames(&mut self, frames: Bytes) {
        self.frames += 1;
        self.push_chunk(frames);
    }

    pub fn heartbeat(&mut self) {
        self.frames += 1;
        // Not encoded into the scratch buffer: a connection that only
        // heartbeats needs none.
        self.push_chunk(Bytes::from_static(&HEARTBEAT_FRAME));
    }

    /// The scratch buffer, made with [`SCRATCH`] octets when there is none.
    /// `BytesMut` remembers the capacity it was made with and gives each
    /// later allocation at least that much, so it must not start empty and
    /// grow a few octets at a time.
    fn scratch(&mut self) -> &mut BytesMut {
        if self.scratch.capacity() == 0 {
            self.scratch = BytesMut::with_capacity(SCRATCH);
        }
        &mut self.scratch
    }

    pub fn method(&mut self, channel: u16, encode: impl FnOnce(&mut BytesMut)) {
        self.frames += 1;
        write_method_frame(self.scratch(), channel, encode);
    }

    /// Gives the scratch buffer back, and the chunk queue's slots. Kept by
    /// an idle connection, each batch would encode a little further into
    /// the scratch buffer until all its pages were resident.
    pub fn release_scratch(&mut self) {
        self.scratch = BytesMut::new();
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
        }
    }

    /// How many frames were encoded since the last call.
    pub fn take_frames(&mut self) -> u64 {
        std::mem::take(&mut self.frames)
    }

    /// A content header and the body frames, split so that no frame exceeds
    /// `frame_max` (0: no limit). Bodies are queued as they are, but for
    /// pieces of at most [`COPIED_BODY_MAX`] octets.
    pub fn content(&mut self, channel: u16, raw_properties: &[u8], body: &[Bytes], frame_max: u32) {
        let body_size: usize = body.iter().map(Bytes::len).sum();
        write_content_header(self.scratch(), channel, CLASS_BASIC, body_size as u64, raw_properties);
        let max_payload = if frame_max == 0 { usize::MAX } else { frame_max as usize - FRAME_OVERHEAD };
        self.frames += 1 + body_size.div_ceil(max_payload) as u64;
        let (mut chunk, mut offset) = (0, 0);
        let mut remaining = body_size;
        while remaining > 0 {
            let frame_size = remaining.min(max_payload);
            write_body_frame_header(&mut self.scratch, channel, frame_size);
            let mut need = frame_size;
            while need > 0 {
                let c = &body[chunk];
                let take = (c.len() - offset).min(need);
                if take <= COPIED_BODY_MAX {
                    self.scratch.extend_from_slice(&c[offset..offset + take]);
                } else {
                    self.push_chunk(c.slice(offset..offset + take));
                }
                offset += take;
                need -= take;
                if offset == c.len() {
                    chunk += 1;
                    offset = 0;
                }
            }
            self.scratch.put_u8(FRAME_END);
            remaining -= frame_size;
        }
    }

    /// Encodes a delivery: method frame, content header, body frames.
    pub fn delivery(&mut self, d: &Delivery, frame_max: u32) {
        self.method(d.channel, |b| d.encode_method(b));
        self.content(d.channel, &d.message.properties, d.message.body.chunks(), frame_max);
    }

    /// Writes everything, in as few vectored writes as the socket allows.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<usize> {
        self.seal();
        let total = self.len;
        while !self.chunks.is_empty() {
            // The slices are made in each poll, on the stack: kept across the
            // await they would make every writer task's future a kilobyte
            // bigger, idle or not.
            let chunks = &self.chunks;
            let mut written = std::future::poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); 64];
                let mut count = 0;
                for (slot, chunk) in slices.iter_mut().zip(chunks.iter()) {
                    *slot = IoSlice::new(chunk);
                    count += 1;
                }
                Pin::new(&mut *w).poll_write_vectored(cx, &slices[..count])
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.len -= written;
            while written > 0 {
                let front = self.chunks.front_mut().expect("written octets come from chunks");
                if written >= front.len() {
                    written -= front.len();
                    self.chunks.pop_front();
                } else {
                    let _ = front.split_to(written);
                    written = 0;
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::message::{Body, Message};
    use crate::connection::writer::DeliveryKind;
    use crate::protocol::frame::{parse_frame, Frame};
    use crate::protocol::methods::basic;

    fn parse_all(mut wire: BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = parse_frame(&mut wire, 1 << 20).unwrap() {
            frames.push(f);
        }
        assert!(wire.is_empty());
        frames
    }

    #[tokio::test]
    async fn large_bodies_are_split_by_frame_max() {
        let body = Bytes::from(vec![7u8; 20_000]);
        let message = Arc::new(Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: Bytes::from_static(&[0, 0]),
            body_size: 20_000,
            body: Body::Many(vec![body.slice(..5), body.slice(5..)]),
            charge: None,
        });
        let mut buf = FrameBuffer::default();
        let d = Delivery {
            channel: 3,
            kind: DeliveryKind::Deliver { consumer_tag: "c".into() },
            delivery_tag: 9,
            redelivered: true,
            message,
        };
        buf.delivery(&d, 8192);
        let mut out = Vec::new();
        buf.write_to(&mut out).await.unwrap();
        let frames = parse_all(BytesMut::from(&out[..]));
        assert_eq!(frames.len(), 5); // method, header, 8184 + 8184 + 3632
        let sizes: Vec<usize> = frames[2..]
            .iter()
            .map(|f| match f {
                Frame::Body { body, .. } => body.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [8184, 8184, 3632]);
        assert!(matches!(&frames[1], Frame::Header { channel: 3, header } if header.body_size == 20_000));
    }

    /// `basic.deliver` is written field by field on the hot path; it must
    /// give the octets the method's own definition encodes.
    #[test]
    fn a_delivery_encodes_as_its_method_does() {
        let message =
            Arc::new(Message::new(&"ex".into(), &"a.key".into(), &Bytes::from_static(&[0, 0]), 0, Body::Empty));
        for (tag, redelivered) in [(1, false), (u64::MAX, true)] {
            let consumer_tag = "amq.ctag-1";
            let kind = DeliveryKind::Deliver { consumer_tag: consumer_tag.into() };
            let d = Delivery { channel: 1, kind, delivery_tag: tag, redelivered, message: message.clone() };
            let mut fast = BytesMut::new();
            d.encode_method(&mut fast);
            let mut oracle = BytesMut::new();
            basic::Deliver {
                consumer_tag: consumer_tag.into(),
                delivery_tag: tag,
                redelivered,
                exchange: "ex".into(),
                routing_key: "a.key".into(),
            }
            .encode(&mut oracle);
            assert_eq!(fast, oracle);
        }
    }

    /// Small bodies are copied into the scratch buffer, so a batch of them
    /// is one slot of the vectored write; a body over the bound is queued as
    /// it is, sharing its message's memory.
    #[tokio::test]
    async fn small_bodies_are_copied_and_larger_ones_queued() {
        let small = Bytes::from(vec![1u8; COPIED_BODY_MAX]);
        let large = Bytes::from(vec![2u8; COPIED_BODY_MAX + 1]);
        let deliver = |tag, body: &Bytes| Delivery {
            channel: 1,
            kind: DeliveryKind::Deliver { consumer_tag: "c".into() },
            delivery_tag: tag,
            redelivered: false,
            message: Arc::new(Message::new(
                &"".into(),
                &"q".into(),
                &Bytes::from_static(&[0, 0]),
                body.len() as u64,
                Body::One(body.clone()),
            )),
        };
        let mut buf = FrameBuffer::default();
        for tag in 1..=100 {
            buf.delivery(&deliver(tag, &small), 0);
        }
        buf.seal();
        assert_eq!(buf.chunks.len(), 1, "100 small deliveries make one chunk");

        let mut buf = FrameBuffer::default();
        let d = deliver(1, &large);
        buf.delivery(&d, 0);
        buf.seal();
        assert_eq!(buf.chunks.len(), 3, "header frames, the body, the frame end");
        let Body::One(kept) = &d.message.body else { panic!() };
        assert_eq!(buf.chunks[1].as_ptr(), kept.as_ptr(), "the body is queued, not copied");

        let mut out = Vec::new();
        buf.write_to(&mut out).await.unwrap();
        let frames = parse_all(BytesMut::from(&out[..]));
        assert!(matches!(&frames[2], Frame::Body { body, .. } if *body == large));
    }
}
