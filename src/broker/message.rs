//! A published message as the broker holds it.

use std::sync::Arc;

use tokio::time::Instant;

use bytes::Bytes;

use super::alarm::{Charge, MESSAGE_OVERHEAD};
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
    /// What the message is charged for memory: body, properties, overhead.
    pub fn footprint(&self) -> usize {
        self.body_size as usize
            + self.properties.len()
            + self.exchange.len()
            + self.routing_key.len()
            + MESSAGE_OVERHEAD
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
    pub message: Arc<Message>,
}

impl QueuedMessage {
    /// Expired strictly before `now`: a message with TTL 0 can still go to a
    /// consumer that is ready in the same instant it arrives, as in RabbitMQ.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at < now)
    }
}
