//! A queue: ready messages in order, its consumers, and dispatch to them.
//!
//! The state sits behind a `std::sync::Mutex`. Every operation on it is short
//! and never awaits (pushing a delivery to a connection's writer is a
//! non-blocking channel send), so a blocking mutex is both correct and faster
//! than an async one or a queue task with its own mailbox: a publish that
//! finds a waiting consumer hands the message over in the publisher's task,
//! with no extra hop.
//!
//! Lock order: queue, then channel. Code that holds a channel's lock never
//! takes a queue's; it collects what to do and lets go first. Likewise a
//! queue never publishes into another queue while it holds its own lock:
//! messages it dead-letters are collected and republished after.
//!
//! Time-driven work (message TTL, `x-expires`) is done by a small task per
//! queue that sleeps until the next deadline (`timers.rs`).
//!
//! - [`args`]: the `x-…` arguments, parsed at declaration.
//! - [`ready`]: the ready messages, by priority.
//! - [`dead_letter`]: `x-death` and republishing to the dead-letter exchange.
//! - `consumers.rs`: adding and cancelling consumers, prefetch.
//! - `journal.rs`: a durable queue's journal on disk, and recovery into it.

pub mod args;
mod consumers;
pub mod dead_letter;
mod journal;
pub mod ready;
mod timers;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use self::args::{Overflow, QueueArgs};
use self::dead_letter::{DeadLetter, Reason};
use self::ready::Ready;
use super::events::Event;
use super::message::{Message, QueuedMessage};
use super::VirtualHost;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::properties::{message_expiration, message_priority};
use crate::protocol::{FieldTable, FieldValue, ShortStr};
use crate::store::Journal;

/// Identifies a channel broker-wide: the connection's id and the channel number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub connection: u64,
    pub channel: u16,
}

/// Why a consumer's channel did not take a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The connection's writer has too much queued, or the channel is at its
    /// global prefetch; the queue is dispatched again when that changes.
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
        now: Instant,
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
    /// `x-priority` from `basic.consume`: higher goes first while it has credit.
    pub priority: i64,
    /// Deliveries not yet acknowledged.
    pub unacked: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch_count == 0 || self.unacked < self.prefetch_count
    }

    /// Reads `x-priority` from `basic.consume` arguments.
    pub fn priority_from(arguments: &FieldTable) -> i64 {
        arguments.get("x-priority").and_then(FieldValue::as_i64).unwrap_or(0)
    }
}

/// A consumer as inspection shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub tag: ShortStr,
    pub channel: ChannelKey,
    pub prefetch_count: u32,
    pub unacked: u32,
    pub ack_required: bool,
    pub exclusive: bool,
    pub priority: i64,
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
    pub vhost_name: ShortStr,
    pub options: QueueOptions,
    pub args: QueueArgs,
    /// For dead-lettering and for deleting itself when it expires.
    vhost: Weak<VirtualHost>,
    state: Mutex<QueueState>,
    /// Wakes the timer task when a nearer deadline appears.
    timer_wake: Arc<Notify>,
    timer_started: AtomicBool,
    /// Where its persistent messages go on disk: set once the queue is
    /// declared, if it is durable and the broker has a data directory.
    journal: OnceLock<Journal>,
}

struct QueueState {
    ready: Ready,
    next_seq: u64,
    consumers: Vec<Consumer>,
    /// Index of the consumer to try first: round-robin.
    next_consumer: usize,
    /// Delivered and not yet acknowledged, over all consumers and gets.
    unacked: usize,
    /// Last declaration, `basic.get` or consumer change (`x-expires`).
    last_used: Instant,
    /// Set by `queue.delete`: late publishes and requeues are dropped.
    deleted: bool,
    /// Messages ever enqueued and delivered (or got), for message rates.
    totals: QueueTotals,
}

/// How many messages a queue has taken in and handed out since it was
/// declared; a reader takes two readings and divides by the time between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    pub published: u64,
    pub delivered: u64,
}

/// What `basic.cancel` left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Cancelled {
    pub found: bool,
    /// An auto-delete queue whose last consumer went: the caller deletes it.
    pub delete_queue: bool,
}

/// Whether a published message was taken (`x-overflow = reject-publish`
/// refuses messages when the queue is full; the publisher gets a nack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    Rejected,
}

impl Queue {
    pub fn new(vhost: &Arc<VirtualHost>, name: ShortStr, options: QueueOptions, args: QueueArgs) -> Arc<Queue> {
        Self::with_vhost(Arc::downgrade(vhost), vhost.name.clone(), name, options, args)
    }

    /// A queue not attached to a virtual host (unit tests): nothing to
    /// dead-letter into, nothing to delete it from.
    pub fn detached(name: ShortStr, options: QueueOptions, args: QueueArgs) -> Arc<Queue> {
        Self::with_vhost(Weak::new(), "/".into(), name, options, args)
    }

    fn with_vhost(
        vhost: Weak<VirtualHost>,
        vhost_name: ShortStr,
        name: ShortStr,
        options: QueueOptions,
        args: QueueArgs,
    ) -> Arc<Queue> {
        let state = QueueState {
            ready: Ready::new(args.max_priority),
            next_seq: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            unacked: 0,
            last_used: Instant::now(),
            deleted: false,
            totals: QueueTotals::default(),
        };
        let needs_timer = args.message_ttl.is_some() || args.expires.is_some();
        let q = Arc::new(Queue {
            name,
            vhost_name,
            options,
            args,
            vhost,
            state: Mutex::new(state),
            timer_wake: Arc::new(Notify::new()),
            timer_started: AtomicBool::new(false),
            journal: OnceLock::new(),
        });
        if needs_timer {
            q.start_timer();
        }
        q
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock is a bug elsewhere; the state itself
        // is still consistent enough to keep serving the other connections.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the locked state, then, with the lock released,
    /// republishes whatever `f` dead-lettered.
    fn with_state<R>(self: &Arc<Self>, f: impl FnOnce(&mut QueueState, &mut Vec<DeadLetter>) -> R) -> R {
        let mut dead = Vec::new();
        let r = {
            let mut st = self.lock();
            f(&mut st, &mut dead)
        };
        if let Some(journal) = self.journal.get() {
            for seq in dead.iter().filter_map(|d| d.stored) {
                journal.removed(seq);
            }
        }
        if !dead.is_empty() {
            if let Some(vhost) = self.vhost.upgrade() {
                self.report_deaths(&vhost, &dead);
                dead_letter::publish(&vhost, self, dead);
            }
        }
        r
    }

    /// Tells the event stream what died: expired messages, and what goes to
    /// a dead-letter exchange, by reason.
    fn report_deaths(&self, vhost: &VirtualHost, dead: &[DeadLetter]) {
        let count = |reason: Reason| dead.iter().filter(|d| d.reason == reason).count();
        let queue = || self.name.to_string();
        let expired = count(Reason::Expired);
        if expired > 0 {
            vhost.events.emit(|| Event::Expired { queue: queue(), count: expired });
        }
        if self.args.dead_letter_exchange.is_some() {
            for reason in [Reason::Rejected, Reason::Expired, Reason::MaxLen] {
                let n = count(reason);
                if n > 0 {
                    vhost.events.emit(|| Event::DeadLettered {
                        queue: queue(),
                        reason: reason.as_str().into(),
                        count: n,
                    });
                }
            }
        }
    }

    /// `queue 'q' in vhost '/'`, as RabbitMQ's texts name a queue.
    pub fn describe(&self) -> String {
        format!("queue '{}' in vhost '{}'", self.name, self.vhost_name)
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

    /// Ready messages and consumers.
    /// Body octets of the ready messages.
    pub fn ready_bytes(&self) -> usize {
        self.lock().ready.bytes()
    }

    pub fn counts(&self) -> (u32, u32) {
        let st = self.lock();
        (st.ready.len() as u32, st.consumers.len() as u32)
    }

    /// Ready messages and consumers for `queue.declare-ok`; a declaration
    /// also counts as use for `x-expires`.
    pub fn declared(&self) -> (u32, u32) {
        let mut st = self.lock();
        st.last_used = Instant::now();
        (st.ready.len() as u32, st.consumers.len() as u32)
    }

    pub fn unacked_count(&self) -> usize {
        self.lock().unacked
    }

    pub fn totals(&self) -> QueueTotals {
        self.lock().totals
    }

    /// Enqueues a published message, makes room or refuses it if the queue
    /// is full, and hands it to a consumer if one can take it.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Enqueued {
        self.publish_at(message, Instant::now())
    }

    /// [`publish`](Self::publish) with the publisher's clock reading: a
    /// message routed to ten queues reads the clock once, not ten times.
    pub fn publish_at(self: &Arc<Self>, message: Arc<Message>, now: Instant) -> Enqueued {
        let priority = match self.args.max_priority {
            Some(_) => message_priority(&message.properties).unwrap_or(0),
            None => 0,
        };
        let ttl = match (self.args.message_ttl, message_expiration(&message.properties)) {
            (Some(q), Some(m)) => Some(q.min(m)),
            (q, m) => q.or(m),
        };
        if ttl.is_some() && self.args.message_ttl.is_none() {
            self.start_timer();
        }
        let outcome = self.with_state(|st, dead| {
            if st.deleted {
                return Enqueued::Accepted;
            }
            let fits = |st: &QueueState, extra: usize, extra_bytes: usize| {
                self.args.max_length.is_none_or(|max| st.ready.len() + extra <= max)
                    && self.args.max_length_bytes.is_none_or(|max| st.ready.bytes() + extra_bytes <= max)
            };
            let size = message.body_size as usize;
            if !fits(st, 1, size) && self.args.overflow != Overflow::DropHead {
                if self.args.overflow == Overflow::RejectPublishDlx {
                    dead.push(DeadLetter { message, reason: Reason::MaxLen, stored: None });
                }
                return Enqueued::Rejected;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let level = st.ready.level_for(priority);
            let expires_at = ttl.map(|t| now + t);
            // Appended under the lock, so that the journal sees a queue's
            // messages in the order of their positions.
            let stored = match self.journal.get() {
                Some(journal) if message.is_persistent() => {
                    journal.append(seq, &message);
                    true
                }
                _ => false,
            };
            st.ready.push_back(QueuedMessage { seq, redelivered: false, expires_at, priority: level, message, stored });
            st.totals.published += 1;
            while !fits(st, 0, 0) {
                match st.ready.pop_oldest() {
                    Some(m) => dead.push(DeadLetter::of(m, Reason::MaxLen)),
                    None => break,
                }
            }
            self.dispatch_locked(st, now, dead);
            Enqueued::Accepted
        });
        if ttl.is_some() {
            self.timer_wake.notify_one();
        }
        outcome
    }

    /// Delivers ready messages to consumers with credit until the queue is
    /// empty or no consumer can take more.
    pub fn dispatch(self: &Arc<Self>) {
        let now = Instant::now();
        self.with_state(|st, dead| self.dispatch_locked(st, now, dead));
    }

    /// The heart of delivery: expired heads are dropped first (an expired
    /// message never reaches a consumer); then each message goes to the
    /// highest-priority consumer with credit, round-robin among equals. With
    /// `x-single-active-consumer` only the oldest consumer receives.
    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState, now: Instant, dead: &mut Vec<DeadLetter>) {
        let mut expired = Vec::new();
        let active = if self.args.single_active_consumer { st.consumers.len().min(1) } else { st.consumers.len() };
        // Consumers whose channel refused a delivery in this pass (writer
        // full, channel prefetch reached): skipped until the next dispatch.
        let mut refused: Vec<usize> = Vec::new();
        loop {
            st.ready.take_expired(now, &mut expired);
            if st.ready.is_empty() || active == 0 {
                break;
            }
            let Some(index) = Self::next_consumer(st, active, &refused) else { break };
            let message = st.ready.pop_front().expect("checked non-empty");
            let consumer = &mut st.consumers[index];
            let no_ack = consumer.no_ack;
            st.next_consumer = index + 1;
            let stored = message.stored.then_some(message.seq);
            match consumer.target.deliver(self, &consumer.tag, message, no_ack, now) {
                Ok(()) => {
                    st.totals.delivered += 1;
                    if let Some(seq) = stored {
                        self.journal_delivery(seq, no_ack);
                    }
                    if !no_ack {
                        consumer.unacked += 1;
                        st.unacked += 1;
                    }
                }
                Err((message, _)) => {
                    st.ready.push_front(message);
                    refused.push(index);
                }
            }
        }
        dead.extend(expired.into_iter().map(|m| DeadLetter::of(m, Reason::Expired)));
    }

    /// The consumer the next message goes to: among the first `active`
    /// consumers with credit and not in `refused`, the highest priority,
    /// round-robin from `next_consumer` among equals.
    fn next_consumer(st: &QueueState, active: usize, refused: &[usize]) -> Option<usize> {
        let consumers = &st.consumers[..active];
        let eligible = |i: usize| consumers[i].has_credit() && !refused.contains(&i);
        let best = (0..active).filter(|&i| eligible(i)).map(|i| consumers[i].priority).max()?;
        (0..active).map(|i| (st.next_consumer + i) % active).find(|&i| consumers[i].priority == best && eligible(i))
    }

    /// `basic.get`: the next ready message and how many are left after it.
    /// With `no_ack = false` the caller records it as unacknowledged.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let now = Instant::now();
        self.with_state(|st, dead| {
            st.last_used = now;
            let mut expired = Vec::new();
            st.ready.take_expired(now, &mut expired);
            dead.extend(expired.into_iter().map(|m| DeadLetter::of(m, Reason::Expired)));
            let message = st.ready.pop_front()?;
            st.totals.delivered += 1;
            if !no_ack {
                st.unacked += 1;
            }
            if message.stored {
                self.journal_delivery(message.seq, no_ack);
            }
            Some((message, st.ready.len() as u32))
        })
    }

    fn release_credit(st: &mut QueueState, channel: ChannelKey, consumer: Option<&ShortStr>, count: usize) {
        st.unacked = st.unacked.saturating_sub(count);
        if let Some(tag) = consumer {
            if let Some(c) = st.consumers.iter_mut().find(|c| c.channel == channel && c.tag == *tag) {
                c.unacked = c.unacked.saturating_sub(count as u32);
            }
        }
    }

    /// Acknowledgements of deliveries made to `consumer` (None for
    /// `basic.get`): frees prefetch credit and delivers more.
    pub fn settled(self: &Arc<Self>, channel: ChannelKey, consumer: Option<&ShortStr>, acked: &[QueuedMessage]) {
        let now = Instant::now();
        if let Some(journal) = self.journal.get() {
            for m in acked.iter().filter(|m| m.stored) {
                journal.removed(m.seq);
            }
        }
        self.with_state(|st, dead| {
            Self::release_credit(st, channel, consumer, acked.len());
            self.dispatch_locked(st, now, dead);
        });
    }

    /// Rejections without requeue: the messages are dead-lettered (or
    /// dropped when the queue has no dead-letter exchange).
    pub fn rejected(self: &Arc<Self>, channel: ChannelKey, consumer: Option<&ShortStr>, messages: Vec<QueuedMessage>) {
        let now = Instant::now();
        self.with_state(|st, dead| {
            Self::release_credit(st, channel, consumer, messages.len());
            dead.extend(messages.into_iter().map(|m| DeadLetter::of(m, Reason::Rejected)));
            self.dispatch_locked(st, now, dead);
        });
    }

    /// Puts unacknowledged messages back in their original positions, marked
    /// redelivered, and frees the credit they held.
    pub fn requeue(self: &Arc<Self>, channel: ChannelKey, consumer: Option<&ShortStr>, messages: Vec<QueuedMessage>) {
        let now = Instant::now();
        self.with_state(|st, dead| {
            Self::release_credit(st, channel, consumer, messages.len());
            if st.deleted {
                return;
            }
            let count = messages.len();
            for mut m in messages {
                m.redelivered = true;
                st.ready.insert_in_order(m);
            }
            if let Some(vhost) = self.vhost.upgrade() {
                vhost.events.emit(|| Event::Requeued { queue: self.name.to_string(), count });
            }
            self.dispatch_locked(st, now, dead);
        });
    }

    /// `queue.purge`: drops ready messages (not unacknowledged ones).
    pub fn purge(&self) -> u32 {
        let mut st = self.lock();
        if let Some(journal) = self.journal.get() {
            for m in st.ready.iter().filter(|m| m.stored) {
                journal.removed(m.seq);
            }
        }
        st.ready.clear() as u32
    }

    /// Marks the queue deleted and empties it; returns the ready count and
    /// the consumers that were attached, so their channels can be told.
    pub fn delete(&self) -> (u32, Vec<Consumer>) {
        if let Some(journal) = self.journal.get() {
            journal.drop_queue();
        }
        let mut st = self.lock();
        st.deleted = true;
        let n = st.ready.clear() as u32;
        let consumers = std::mem::take(&mut st.consumers);
        drop(st);
        self.timer_wake.notify_one();
        (n, consumers)
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Up to `n` ready messages, in delivery order, left in the queue.
    pub fn peek(&self, n: usize) -> Vec<QueuedMessage> {
        self.lock().ready.iter().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests;
