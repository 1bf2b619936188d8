//! The messages of a queue waiting for a consumer, in order, by priority.
//!
//! A plain queue has one level. A priority queue (`x-max-priority = N`) has
//! N + 1 levels and always serves the highest non-empty one, FIFO within a
//! level, as RabbitMQ's classic priority queues do. Requeued messages go
//! back to their original position (by sequence number) within their level.

use std::collections::VecDeque;

use crate::broker::message::QueuedMessage;

pub struct Ready {
    /// Index = priority.
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    /// Body octets of all ready messages (`x-max-length-bytes`).
    bytes: usize,
}

impl Ready {
    pub fn new(max_priority: Option<u8>) -> Ready {
        let levels = usize::from(max_priority.unwrap_or(0)) + 1;
        Ready { levels: (0..levels).map(|_| VecDeque::new()).collect(), len: 0, bytes: 0 }
    }

    /// The level a message of `priority` goes to: capped at the maximum.
    pub fn level_for(&self, priority: u8) -> u8 {
        priority.min((self.levels.len() - 1) as u8)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push_back(&mut self, m: QueuedMessage) {
        self.len += 1;
        self.bytes += m.message.body_size as usize;
        let level = usize::from(m.priority);
        self.levels[level].push_back(m);
    }

    /// Puts a message back where its sequence number says it belongs.
    pub fn insert_in_order(&mut self, m: QueuedMessage) {
        self.len += 1;
        self.bytes += m.message.body_size as usize;
        let level = &mut self.levels[usize::from(m.priority)];
        let at = level.partition_point(|r| r.seq < m.seq);
        level.insert(at, m);
    }

    /// Puts a message back at the head of its level (a delivery that failed).
    pub fn push_front(&mut self, m: QueuedMessage) {
        self.len += 1;
        self.bytes += m.message.body_size as usize;
        let level = usize::from(m.priority);
        self.levels[level].push_front(m);
    }

    /// The next message to deliver: the head of the highest non-empty level.
    pub fn front(&self) -> Option<&QueuedMessage> {
        self.levels.iter().rev().find_map(|l| l.front())
    }

    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let m = self.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        self.taken(&m);
        Some(m)
    }

    /// The oldest message, whatever its priority: what `drop-head` drops.
    pub fn pop_oldest(&mut self) -> Option<QueuedMessage> {
        let level = self.levels.iter().enumerate().filter_map(|(i, l)| l.front().map(|m| (m.seq, i))).min()?.1;
        let m = self.levels[level].pop_front()?;
        self.taken(&m);
        Some(m)
    }

    /// Removes expired messages from the head of every level (RabbitMQ only
    /// ever expires messages at the head) and returns them.
    pub fn take_expired(&mut self, now: tokio::time::Instant, out: &mut Vec<QueuedMessage>) {
        for level in 0..self.levels.len() {
            while self.levels[level].front().is_some_and(|m| m.is_expired(now)) {
                let m = self.levels[level].pop_front().expect("checked");
                self.taken(&m);
                out.push(m);
            }
        }
    }

    /// The earliest expiry among the heads of the levels.
    pub fn next_expiry(&self) -> Option<tokio::time::Instant> {
        self.levels.iter().filter_map(|l| l.front()?.expires_at).min()
    }

    /// The ready messages in the order they would be delivered.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.levels.iter().rev().flat_map(|l| l.iter())
    }

    /// Keeps only the messages `keep` accepts, in order; returns how many
    /// went.
    pub fn retain(&mut self, mut keep: impl FnMut(&QueuedMessage) -> bool) -> usize {
        let before = self.len;
        for level in &mut self.levels {
            level.retain(|m| keep(m));
        }
        self.len = self.levels.iter().map(VecDeque::len).sum();
        self.bytes = self.iter().map(|m| m.message.body_size as usize).sum();
        before - self.len
    }

    pub fn clear(&mut self) -> usize {
        let n = self.len;
        for l in &mut self.levels {
            l.clear();
        }
        self.len = 0;
        self.bytes = 0;
        n
    }

    fn taken(&mut self, m: &QueuedMessage) {
        self.len -= 1;
        self.bytes -= m.message.body_size as usize;
    }
}
