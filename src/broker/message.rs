//! A published message as the broker holds it.
//!
//! # Why a message copies its small parts
//!
//! A message's names, properties and body arrive as slices of the
//! publisher's read buffer: parsing allocates nothing. But a slice keeps
//! its whole buffer (64 KiB) allocated for as long as the slice lives, and
//! a queued message can live for hours. A 16-octet message kept in a queue
//! while the rest of its buffer held a large message that went nowhere
//! would hold 64 KiB: 4,000 times its size, invisible to the memory
//! account, so a client could run the machine out of memory well below the
//! high watermark. So [`Message::new`] copies every part shorter than
//! [`SHARED_SLICE_MIN`] into one allocation of the message's own (one
//! allocation and a copy of a few hundred octets, for the common small
//! message) and lets only large body chunks go on sharing their buffer,
//! where the buffer is at most a few times the chunk.

use std::sync::Arc;

use tokio::time::Instant;

use bytes::Bytes;

use super::alarm::{Charge, MESSAGE_OVERHEAD};
use crate::protocol::properties::message_delivery_mode;
use crate::protocol::ShortStr;

/// A message body as it arrived: the body frames' payloads, each a slice of
/// the publisher's read buffer. Almost every message fits in one frame, so
/// that case needs no allocation at all.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Body {
    #[default]
    Empty,
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Body {
    pub fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => Body::Many(vec![first, chunk]),
            Body::Many(mut v) => {
                v.push(chunk);
                Body::Many(v)
            }
        };
    }

    pub fn chunks(&self) -> &[Bytes] {
        match self {
            Body::Empty => &[],
            Body::One(b) => std::slice::from_ref(b),
            Body::Many(v) => v,
        }
    }

    /// The whole body in one buffer; copies only when it came in pieces.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b.clone(),
            Body::Many(v) => v.concat().into(),
        }
    }
}

/// A body chunk at least this long keeps sharing the read buffer it was
/// parsed from: a read buffer is 64 KiB (or one frame, if larger), so such a
/// chunk holds at most four times its own size. Shorter parts are copied.
pub const SHARED_SLICE_MIN: usize = 16 * 1024;

/// An immutable published message. Queues share it through an `Arc`: a
/// message routed to three queues exists once.
#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Content-header property flags and list, exactly as published.
    pub properties: Bytes,
    pub body_size: u64,
    pub body: Body,
    /// The bytes this message is charged to the broker's memory account,
    /// given back when the message is dropped (None: not accounted).
    pub charge: Option<Charge>,
}

impl Message {
    /// A message from the parts of a publish, copying what is small (see the
    /// module docs). Not yet charged to the memory account.
    pub fn new(exchange: &ShortStr, routing_key: &ShortStr, properties: &Bytes, body_size: u64, body: Body) -> Message {
        let small = |c: &&Bytes| c.len() < SHARED_SLICE_MIN;
        let copied: usize = body.chunks().iter().filter(small).map(|c| c.len()).sum();
        let mut own = bytes::BytesMut::with_capacity(exchange.len() + routing_key.len() + properties.len() + copied);
        let mut take = |part: &[u8]| {
            own.extend_from_slice(part);
            own.split().freeze()
        };
        let exchange = take(exchange.as_bytes());
        let routing_key = take(routing_key.as_bytes());
        let properties = take(properties);
        let mut keep = |c: Bytes| if small(&&c) { take(&c) } else { c };
        let body = match body {
            Body::Empty => Body::Empty,
            Body::One(c) => Body::One(keep(c)),
            Body::Many(chunks) => Body::Many(chunks.into_iter().map(keep).collect()),
        };
        Message {
            exchange: ShortStr::from_bytes(exchange),
            routing_key: ShortStr::from_bytes(routing_key),
            properties,
            body_size,
            body,
            charge: None,
        }
    }

    /// Published with `delivery_mode` 2: it survives a restart in a durable
    /// queue.
    pub fn is_persistent(&self) -> bool {
        message_delivery_mode(&self.properties) == Some(2)
    }

    /// What the message is charged for memory: body, properties, overhead.
    pub fn footprint(&self) -> usize {
        self.body_size as usize
            + self.properties.len()
            + self.exchange.len()
            + self.routing_key.len()
            + MESSAGE_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `part` points into `buffer`'s memory.
    fn inside(part: &[u8], buffer: &Bytes) -> bool {
        let (p, b) = (part.as_ptr() as usize, buffer.as_ptr() as usize);
        p >= b && p < b + buffer.len()
    }

    #[test]
    fn small_parts_are_copied_and_large_chunks_shared() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let name = ShortStr::from_bytes(buffer.slice(0..5));
        let key = ShortStr::from_bytes(buffer.slice(5..10));
        let props = buffer.slice(10..20);
        let small = Message::new(&name, &key, &props, 16, Body::One(buffer.slice(100..116)));
        let Body::One(body) = &small.body else { panic!() };
        for part in [small.exchange.as_bytes(), small.routing_key.as_bytes(), &small.properties, body] {
            assert!(!inside(part, &buffer), "a small part still shares the read buffer");
        }
        assert_eq!((small.exchange.len(), small.routing_key.len(), small.properties.len(), body.len()), (5, 5, 10, 16));

        let large = buffer.slice(1000..1000 + SHARED_SLICE_MIN);
        let tail = buffer.slice(40_000..40_010);
        let big = Message::new(&name, &key, &props, (large.len() + 10) as u64, Body::Many(vec![large.clone(), tail]));
        let Body::Many(chunks) = &big.body else { panic!() };
        assert!(inside(&chunks[0], &buffer), "a large chunk is shared, not copied");
        assert_eq!(chunks[0], large);
        assert!(!inside(&chunks[1], &buffer));
        assert_eq!(&chunks[1][..], &[7u8; 10]);
        assert!(!inside(&big.properties, &buffer));
    }
}

/// A message's place in one queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue, increasing with each enqueue: requeued messages
    /// go back where this says, so order survives a redelivery.
    pub seq: u64,
    /// Set once the message has been delivered and given back.
    pub redelivered: bool,
    /// When the queue's or the message's TTL runs out, if either is set.
    pub expires_at: Option<Instant>,
    /// The priority level it is queued at (0 in queues without priorities).
    pub priority: u8,
    /// Written to the queue's journal on disk (persistent, in a durable
    /// queue of a broker with a data directory): what happens to it is
    /// written there too.
    pub stored: bool,
    pub message: Arc<Message>,
}

impl QueuedMessage {
    /// Expired strictly before `now`: a message with TTL 0 can still go to a
    /// consumer that is ready in the same instant it arrives, as in RabbitMQ.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at < now)
    }
}
