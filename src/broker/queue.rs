//! A queue: ready messages in order, its consumers, and round-robin dispatch.
//!
//! The state sits behind a `std::sync::Mutex`. Every operation on it is short
//! and never awaits (pushing a delivery to a connection's writer is a
//! non-blocking channel send), so a blocking mutex is both correct and faster
//! than an async one or a queue task with its own mailbox: a publish that
//! finds a waiting consumer hands the message over in the publisher's task,
//! with no extra hop.
//!
//! Lock order: queue, then channel. Code that holds a channel's lock never
//! takes a queue's; it collects what to do and lets go first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::message::{Message, QueuedMessage};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{FieldTable, ShortStr};

/// Identifies a channel broker-wide: the connection's id and the channel number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub connection: u64,
    pub channel: u16,
}

/// Why a consumer's channel did not take a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The connection's writer has too much queued; it will call
    /// [`Queue::dispatch`] when it has drained.
    Full,
    /// The channel is closing; its consumers are about to be removed.
    Closed,
}

/// Where a consumer's deliveries go: the channel it was created on. A trait
/// keeps the queue ignorant of sockets (and lets tests use a fake channel).
pub trait DeliveryTarget: Send + Sync {
    /// Assigns a delivery tag and queues the delivery for writing, or gives
    /// the message back.
    fn deliver(
        &self,
        queue: &Arc<Queue>,
        consumer_tag: &ShortStr,
        message: QueuedMessage,
        no_ack: bool,
    ) -> Result<(), (QueuedMessage, Refusal)>;

    /// The queue went away under the consumer (`queue.delete`): the channel
    /// forgets the consumer and, if the client asked for it, is told with a
    /// `basic.cancel`.
    fn consumer_cancelled(&self, consumer_tag: &ShortStr);
}

/// A `basic.consume` registration.
pub struct Consumer {
    pub tag: ShortStr,
    pub channel: ChannelKey,
    pub target: Arc<dyn DeliveryTarget>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Most unacknowledged deliveries allowed (0 = no limit), from the
    /// channel's `basic.qos` when the consumer was created.
    pub prefetch_count: u32,
    /// Deliveries not yet acknowledged.
    pub unacked: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch_count == 0 || self.unacked < self.prefetch_count
    }
}

/// The properties fixed at `queue.declare`, compared on redeclaration.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

pub struct Queue {
    pub name: ShortStr,
    pub vhost: ShortStr,
    pub options: QueueOptions,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<QueuedMessage>,
    next_seq: u64,
    consumers: Vec<Consumer>,
    /// Index of the consumer to try first: round-robin.
    next_consumer: usize,
    /// Delivered and not yet acknowledged, over all consumers and gets.
    unacked: usize,
    /// Set by `queue.delete`: late publishes and requeues are dropped.
    deleted: bool,
}

/// What `basic.cancel` left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Cancelled {
    pub found: bool,
    /// An auto-delete queue whose last consumer went: the caller deletes it.
    pub delete_queue: bool,
}

impl Queue {
    pub fn new(vhost: ShortStr, name: ShortStr, options: QueueOptions) -> Arc<Queue> {
        Arc::new(Queue { name, vhost, options, state: Mutex::new(QueueState::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock is a bug elsewhere; the state itself
        // is still consistent enough to keep serving the other connections.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `'q' in vhost '/'`, as RabbitMQ's texts name a queue.
    pub fn describe(&self) -> String {
        format!("queue '{}' in vhost '{}'", self.name, self.vhost)
    }

    pub fn is_exclusive_to_other(&self, connection: u64) -> bool {
        matches!(self.options.exclusive_owner, Some(owner) if owner != connection)
    }

    /// 405 RESOURCE_LOCKED unless `connection` may use this queue.
    pub fn check_access(&self, connection: u64) -> AmqpResult<()> {
        if self.is_exclusive_to_other(connection) {
            return Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.describe()
            )));
        }
        Ok(())
    }

    pub fn message_count(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.len()
    }

    /// Ready messages and consumers, read together for `queue.declare-ok`.
    pub fn counts(&self) -> (u32, u32) {
        let st = self.lock();
        (st.ready.len() as u32, st.consumers.len() as u32)
    }

    pub fn unacked_count(&self) -> usize {
        self.lock().unacked
    }

    /// Enqueues a published message and hands it to a consumer if one can take it.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) {
        let mut st = self.lock();
        if st.deleted {
            return;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueuedMessage { seq, redelivered: false, message });
        self.dispatch_locked(&mut st);
    }

    /// Delivers ready messages to consumers with credit, round-robin, until
    /// the queue is empty or no consumer can take more.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        let mut refused_in_a_row = 0;
        while !st.ready.is_empty() && refused_in_a_row < st.consumers.len() {
            let index = st.next_consumer % st.consumers.len();
            st.next_consumer = index + 1;
            let consumer = &mut st.consumers[index];
            if !consumer.has_credit() {
                refused_in_a_row += 1;
                continue;
            }
            let message = st.ready.pop_front().expect("checked non-empty");
            let no_ack = consumer.no_ack;
            match consumer.target.deliver(self, &consumer.tag, message, no_ack) {
                Ok(()) => {
                    if !no_ack {
                        consumer.unacked += 1;
                        st.unacked += 1;
                    }
                    refused_in_a_row = 0;
                }
                Err((message, _)) => {
                    st.ready.push_front(message);
                    refused_in_a_row += 1;
                }
            }
        }
    }

    /// `basic.get`: the next ready message and how many are left after it.
    /// With `no_ack = false` the caller records it as unacknowledged.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut st = self.lock();
        let message = st.ready.pop_front()?;
        if !no_ack {
            st.unacked += 1;
        }
        Some((message, st.ready.len() as u32))
    }

    /// Adds a consumer; returns 403 if an exclusive consumer is in the way.
    /// `on_added` runs before the first delivery can be made, under the
    /// queue's lock: that is where `basic.consume-ok` is queued, so it always
    /// reaches the client ahead of the consumer's first `basic.deliver`.
    pub fn consume(self: &Arc<Self>, consumer: Consumer, on_added: impl FnOnce()) -> AmqpResult<()> {
        let mut st = self.lock();
        if st.consumers.iter().any(|c| c.exclusive) || (consumer.exclusive && !st.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        st.consumers.push(consumer);
        on_added();
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Removes one consumer (`basic.cancel`).
    pub fn cancel(&self, channel: ChannelKey, tag: &ShortStr) -> Cancelled {
        let mut st = self.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| !(c.channel == channel && c.tag == *tag));
        let found = st.consumers.len() != before;
        Cancelled { found, delete_queue: found && self.options.auto_delete && st.consumers.is_empty() }
    }

    /// Removes every consumer of a closing channel.
    pub fn cancel_channel(&self, channel: ChannelKey) -> Cancelled {
        let mut st = self.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| c.channel != channel);
        let found = st.consumers.len() != before;
        Cancelled { found, delete_queue: found && self.options.auto_delete && st.consumers.is_empty() }
    }

    /// Acknowledgements (or drops) of `count` deliveries made to `consumer`
    /// (None for `basic.get`): frees prefetch credit and delivers more.
    pub fn settled(self: &Arc<Self>, channel: ChannelKey, consumer: Option<&ShortStr>, count: u32) {
        let mut st = self.lock();
        st.unacked = st.unacked.saturating_sub(count as usize);
        if let Some(tag) = consumer {
            if let Some(c) = st.consumers.iter_mut().find(|c| c.channel == channel && c.tag == *tag) {
                c.unacked = c.unacked.saturating_sub(count);
            }
        }
        self.dispatch_locked(&mut st);
    }

    /// Puts unacknowledged messages back in their original positions, marked
    /// redelivered, and frees the credit they held.
    pub fn requeue(
        self: &Arc<Self>,
        channel: ChannelKey,
        consumer: Option<&ShortStr>,
        mut messages: Vec<QueuedMessage>,
    ) {
        let mut st = self.lock();
        let count = messages.len();
        st.unacked = st.unacked.saturating_sub(count);
        if let Some(tag) = consumer {
            if let Some(c) = st.consumers.iter_mut().find(|c| c.channel == channel && c.tag == *tag) {
                c.unacked = c.unacked.saturating_sub(count as u32);
            }
        }
        if st.deleted {
            return;
        }
        // Insert the highest sequence first so each insert finds its place
        // among the ready messages and the ones already put back.
        messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.seq));
        for mut m in messages {
            m.redelivered = true;
            let at = st.ready.partition_point(|r| r.seq < m.seq);
            st.ready.insert(at, m);
        }
        self.dispatch_locked(&mut st);
    }

    /// `queue.purge`: drops ready messages (not unacknowledged ones).
    pub fn purge(&self) -> u32 {
        let mut st = self.lock();
        let n = st.ready.len();
        st.ready.clear();
        n as u32
    }

    /// Marks the queue deleted and empties it; returns the ready count and
    /// the consumers that were attached, so their channels can be told.
    pub fn delete(&self) -> (u32, Vec<Consumer>) {
        let mut st = self.lock();
        st.deleted = true;
        let n = st.ready.len() as u32;
        st.ready.clear();
        (n, std::mem::take(&mut st.consumers))
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Body;
    use bytes::Bytes;

    /// A channel that records what it was given, and can refuse.
    #[derive(Default)]
    struct FakeChannel {
        got: Mutex<Vec<(ShortStr, u64, bool)>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl DeliveryTarget for FakeChannel {
        fn deliver(
            &self,
            _q: &Arc<Queue>,
            tag: &ShortStr,
            m: QueuedMessage,
            _no_ack: bool,
        ) -> Result<(), (QueuedMessage, Refusal)> {
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err((m, Refusal::Full));
            }
            self.got.lock().unwrap().push((tag.clone(), m.seq, m.redelivered));
            Ok(())
        }

        fn consumer_cancelled(&self, _tag: &ShortStr) {}
    }

    fn message(n: u8) -> Arc<Message> {
        Arc::new(Message {
            exchange: ShortStr::default(),
            routing_key: "q".into(),
            properties: Bytes::from_static(&[0, 0]),
            body_size: 1,
            body: Body::One(Bytes::copy_from_slice(&[n])),
        })
    }

    fn queue() -> Arc<Queue> {
        Queue::new(
            "/".into(),
            "q".into(),
            QueueOptions { durable: false, exclusive_owner: None, auto_delete: false, arguments: FieldTable::new() },
        )
    }

    const CH: ChannelKey = ChannelKey { connection: 1, channel: 1 };

    fn consumer(tag: &str, target: &Arc<FakeChannel>, prefetch: u32) -> Consumer {
        Consumer {
            tag: tag.into(),
            channel: CH,
            target: target.clone(),
            no_ack: false,
            exclusive: false,
            prefetch_count: prefetch,
            unacked: 0,
        }
    }

    #[test]
    fn round_robin_honours_prefetch() {
        let q = queue();
        let ch = Arc::new(FakeChannel::default());
        q.consume(consumer("a", &ch, 1), || {}).unwrap();
        q.consume(consumer("b", &ch, 2), || {}).unwrap();
        for n in 0..5 {
            q.publish(message(n));
        }
        let got: Vec<_> = ch.got.lock().unwrap().iter().map(|(t, s, _)| (t.to_string(), *s)).collect();
        assert_eq!(got, [("a".into(), 0), ("b".into(), 1), ("b".into(), 2)]);
        assert_eq!(q.message_count(), 2);
        q.settled(CH, Some(&"a".into()), 1);
        assert_eq!(ch.got.lock().unwrap().last().unwrap().1, 3);
    }

    #[test]
    fn requeued_messages_go_back_in_order_marked_redelivered() {
        let q = queue();
        for n in 0..4 {
            q.publish(message(n));
        }
        let (m0, _) = q.get(false).unwrap();
        let (m1, _) = q.get(false).unwrap();
        q.requeue(CH, None, vec![m1, m0]);
        let order: Vec<_> = (0..4).map(|_| q.get(true).unwrap().0).map(|m| (m.seq, m.redelivered)).collect();
        assert_eq!(order, [(0, true), (1, true), (2, false), (3, false)]);
    }

    #[test]
    fn refused_deliveries_stay_queued_until_dispatch() {
        let q = queue();
        let ch = Arc::new(FakeChannel::default());
        ch.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        q.consume(consumer("a", &ch, 0), || {}).unwrap();
        q.publish(message(0));
        assert_eq!(q.message_count(), 1);
        ch.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        q.dispatch();
        assert_eq!(q.message_count(), 0);
        assert_eq!(ch.got.lock().unwrap().len(), 1);
    }

    #[test]
    fn exclusive_consumers_shut_others_out() {
        let q = queue();
        let ch = Arc::new(FakeChannel::default());
        let mut c = consumer("a", &ch, 0);
        c.exclusive = true;
        q.consume(c, || {}).unwrap();
        let err = q.consume(consumer("b", &ch, 0), || {}).unwrap_err();
        assert_eq!(err.code, crate::protocol::ReplyCode::AccessRefused);
    }
}
