//! Channels: AMQP's lightweight sessions multiplexed over one connection.
//!
//! A [`Channel`] belongs to its connection's task and does what the client
//! asks on it: it assembles `basic.publish` + content header + body frames
//! into a message (RabbitMQ's command assembler), runs queue, exchange and
//! basic methods against the virtual host, and tracks its consumers.
//!
//! The part queues need to reach, [`ChannelShared`], is behind an `Arc`: the
//! delivery-tag counter and the list of unacknowledged deliveries. A queue
//! delivering to a consumer takes that lock, numbers the delivery and hands
//! it to the writer in one step, so delivery tags reach the client in order
//! even when several queues deliver at once.
//!
//! The methods of each AMQP class are handled in a file of their own:
//! `on_basic.rs` (publish, consume, get, ack…), `on_queue.rs`,
//! `on_exchange.rs` and `on_bindings.rs`; what the channels of a connection
//! share is in `session.rs`.

mod on_basic;
mod on_bindings;
mod on_exchange;
mod on_queue;
mod on_tx;
mod session;

pub use session::{tell_cancelled, ClientCapabilities, Session};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::events::{Event, Events};
use crate::broker::message::{Body, QueuedMessage};
use crate::broker::queue::{ChannelKey, DeliveryTarget, Queue, Refusal};
use crate::connection::timeouts::DeliveryDeadlines;
use crate::connection::writer::{Delivery, DeliveryKind, Outbound, Outlet};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::constants::CLASS_BASIC;
use crate::protocol::frame::Frame;
use crate::protocol::methods::{basic, channel, confirm, Method};
use crate::protocol::{ContentHeader, ShortStr};

/// A delivery the client has not acknowledged yet.
struct Unacked {
    delivery_tag: u64,
    queue: Arc<Queue>,
    /// The consumer it went to; `None` for `basic.get`.
    consumer_tag: Option<ShortStr>,
    message: QueuedMessage,
    /// `consumer_timeout`: when the channel is closed if still unacknowledged,
    /// and the timeout that set it.
    deadline: Option<(Instant, Duration)>,
}

/// The part of a channel that queues deliver into.
pub struct ChannelShared {
    key: ChannelKey,
    outlet: Arc<Outlet>,
    cancel_notify: bool,
    /// The broker's `consumer_timeout`, used unless the queue sets its own.
    consumer_timeout: Option<Duration>,
    /// The event stream, and this channel's connection's name in it.
    events: Arc<Events>,
    connection_name: Arc<str>,
    deadlines: Arc<DeliveryDeadlines>,
    deliveries: Mutex<Deliveries>,
}

#[derive(Default)]
struct Deliveries {
    /// The last delivery tag used; tags start at 1 per channel.
    last_tag: u64,
    /// In delivery-tag order, so `multiple` acks and requeues keep order.
    unacked: VecDeque<Unacked>,
    /// Channel-wide prefetch (`basic.qos` with `global`), 0 for none.
    global_prefetch: u32,
    /// Consumers whose queue was deleted under them, for the channel to forget.
    cancelled: Vec<ShortStr>,
    /// `channel.flow(active = false)` from the client: no deliveries until
    /// it sends `active = true` again.
    paused: bool,
    closed: bool,
}

impl ChannelShared {
    fn lock(&self) -> MutexGuard<'_, Deliveries> {
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers a delivery and queues it for the writer, holding the lock so
    /// tags reach the writer in order. `now` starts its consumer timeout: the
    /// queue's clock reading for the whole dispatch, not one per delivery.
    fn send(
        &self,
        d: &mut Deliveries,
        kind: DeliveryKind,
        queue: &Arc<Queue>,
        m: QueuedMessage,
        no_ack: bool,
        now: Instant,
    ) {
        d.last_tag += 1;
        self.outlet.counters.delivered.fetch_add(1, Ordering::Relaxed);
        self.events.emit(|| Event::Delivered {
            connection: self.connection_name.to_string(),
            channel: self.key.channel,
            queue: queue.name.to_string(),
            delivery_tag: d.last_tag,
            redelivered: m.redelivered,
        });
        let delivery = Delivery {
            channel: self.key.channel,
            kind,
            delivery_tag: d.last_tag,
            redelivered: m.redelivered,
            message: m.message.clone(),
        };
        if !no_ack {
            let deadline = queue.consumer_timeout(self.consumer_timeout).map(|t| (now + t, t));
            if let Some((at, _)) = deadline {
                self.deadlines.note(at);
            }
            d.unacked.push_back(Unacked {
                delivery_tag: d.last_tag,
                queue: queue.clone(),
                consumer_tag: match &delivery.kind {
                    DeliveryKind::Deliver { consumer_tag } => Some(consumer_tag.clone()),
                    _ => None,
                },
                message: m,
                deadline,
            });
        }
        self.outlet.send(Outbound::Deliver(delivery));
    }
}

impl DeliveryTarget for ChannelShared {
    fn deliver(
        &self,
        queue: &Arc<Queue>,
        consumer_tag: &ShortStr,
        message: QueuedMessage,
        no_ack: bool,
        now: Instant,
    ) -> Result<(), (QueuedMessage, Refusal)> {
        let mut d = self.lock();
        if d.closed {
            return Err((message, Refusal::Closed));
        }
        if d.paused {
            return Err((message, Refusal::Full));
        }
        if !no_ack && d.global_prefetch != 0 && d.unacked.len() >= d.global_prefetch as usize {
            return Err((message, Refusal::Full));
        }
        if !self.outlet.reserve_delivery(queue) {
            return Err((message, Refusal::Full));
        }
        let kind = DeliveryKind::Deliver { consumer_tag: consumer_tag.clone() };
        self.send(&mut d, kind, queue, message, no_ack, now);
        Ok(())
    }

    fn consumer_cancelled(&self, consumer_tag: &ShortStr) {
        let mut d = self.lock();
        if d.closed {
            return;
        }
        d.cancelled.push(consumer_tag.clone());
        if self.cancel_notify {
            let cancel = Method::BasicCancel(basic::Cancel { consumer_tag: consumer_tag.clone(), no_wait: true });
            self.outlet.send_method(self.key.channel, &cancel);
        }
    }
}

/// Where the channel is in assembling a published message.
enum Content {
    Idle,
    /// `basic.publish` seen; its content header comes next.
    AwaitingHeader(basic::Publish),
    AwaitingBody {
        publish: basic::Publish,
        header: ContentHeader,
        body: Body,
        remaining: u64,
    },
}

/// What becomes of settled deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `basic.ack`: done with.
    Ack,
    /// Back to the queue, marked redelivered.
    Requeue,
    /// Rejected without requeue: dead-lettered, or dropped.
    Reject,
}

/// Acknowledged or rejected deliveries taken off the unacked list.
enum Settled {
    One(Unacked),
    Many(Vec<Unacked>),
}

pub struct Channel {
    pub id: u16,
    shared: Arc<ChannelShared>,
    /// We sent `channel.close` and wait for `close-ok`: everything else the
    /// client sends on this channel meanwhile is ignored (spec 2.2.4).
    pub closing: bool,
    content: Content,
    /// Prefetch given to consumers created from now on (`basic.qos`).
    prefetch_count: u16,
    /// Consumer tag to the queue it consumes from.
    consumers: HashMap<ShortStr, Arc<Queue>>,
    /// In confirm mode, the sequence number of the last publish.
    confirm_seq: Option<u64>,
    /// The last publish sequence number confirmed to the client.
    confirmed: u64,
    /// Publishes a queue refused (`x-overflow = reject-publish`), to be
    /// nacked rather than acked, in order.
    nacked: Vec<u64>,
    /// Publishes written to the store, by confirm sequence number, with the
    /// store ticket to wait for: their confirms wait until it is synced.
    awaiting_disk: std::collections::VecDeque<(u64, u64)>,
    /// The queue last declared on this channel: an empty queue name in later
    /// methods means this one.
    last_queue: Option<ShortStr>,
    /// After `tx.select`: the publishes and acks waiting for `tx.commit`.
    tx: Option<on_tx::Transaction>,
    /// The exchange this channel last had write permission for.
    write_permitted: Option<ShortStr>,
}

impl Channel {
    pub fn new(id: u16, s: &Session) -> Channel {
        let key = ChannelKey { connection: s.connection_id, channel: id };
        Channel {
            id,
            shared: Arc::new(ChannelShared {
                key,
                outlet: s.outlet.clone(),
                cancel_notify: s.capabilities.consumer_cancel_notify,
                consumer_timeout: s.broker.config.consumer_timeout,
                events: s.broker.events.clone(),
                connection_name: s.connection_name.clone(),
                deadlines: s.deadlines.clone(),
                deliveries: Mutex::new(Deliveries::default()),
            }),
            closing: false,
            content: Content::Idle,
            prefetch_count: 0,
            consumers: HashMap::new(),
            confirm_seq: None,
            confirmed: 0,
            nacked: Vec::new(),
            awaiting_disk: std::collections::VecDeque::new(),
            tx: None,
            write_permitted: None,
            last_queue: None,
        }
    }

    fn key(&self) -> ChannelKey {
        self.shared.key
    }

    fn reply(&self, s: &Session, method: impl Into<Method>) {
        s.send_method(self.id, &method.into());
    }

    /// Handles a frame addressed to this open channel (other than
    /// `channel.close` / `close-ok`, which the connection handles).
    pub fn handle_frame(&mut self, s: &mut Session, frame: Frame) -> AmqpResult<()> {
        let content = std::mem::replace(&mut self.content, Content::Idle);
        match (content, frame) {
            (Content::Idle, Frame::Method { method, .. }) => {
                let ids = method.ids();
                self.handle_method(s, method).map_err(|e| if e.class_id == 0 { e.during(ids) } else { e })
            }
            (Content::Idle, _) => {
                Err(AmqpError::unexpected_frame("expected method frame, got non method frame instead"))
            }
            (Content::AwaitingHeader(publish), Frame::Header { header, .. }) => {
                if header.class_id != CLASS_BASIC {
                    return Err(AmqpError::unexpected_frame(format!(
                        "expected content header for class 60, got one for class {} instead",
                        header.class_id
                    ))
                    .during(basic::Publish::IDS));
                }
                // RabbitMQ checks the assembled body; the header announces
                // its size, so warren refuses before buffering any of it.
                let max = s.broker.config.max_message_size;
                if header.body_size > max {
                    let configured = if max == crate::config::MAX_MESSAGE_SIZE_CAP { "" } else { "configured " };
                    return Err(AmqpError::precondition_failed(format!(
                        "message size {} is larger than {configured}max size {max}",
                        header.body_size
                    ))
                    .during(basic::Publish::IDS));
                }
                if header.body_size == 0 {
                    return self.publish(s, publish, header, Body::Empty);
                }
                let remaining = header.body_size;
                self.content = Content::AwaitingBody { publish, header, body: Body::Empty, remaining };
                Ok(())
            }
            (Content::AwaitingHeader(_), _) => Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .during(basic::Publish::IDS)),
            (Content::AwaitingBody { publish, header, mut body, remaining }, Frame::Body { body: chunk, .. }) => {
                let len = chunk.len() as u64;
                if len > remaining {
                    return Err(AmqpError::frame_error("content body frame exceeds remaining content size")
                        .during(basic::Publish::IDS));
                }
                if len > 0 {
                    body.push(chunk);
                }
                if remaining == len {
                    return self.publish(s, publish, header, body);
                }
                self.content = Content::AwaitingBody { publish, header, body, remaining: remaining - len };
                Ok(())
            }
            (Content::AwaitingBody { .. }, _) => {
                Err(AmqpError::unexpected_frame("expected content body, got non content body frame instead")
                    .during(basic::Publish::IDS))
            }
        }
    }

    fn handle_method(&mut self, s: &mut Session, method: Method) -> AmqpResult<()> {
        match method {
            Method::BasicPublish(m) => {
                self.content = Content::AwaitingHeader(m);
                Ok(())
            }
            Method::BasicAck(m) => self.ack(m.delivery_tag, m.multiple, None),
            Method::BasicNack(m) => self.ack(m.delivery_tag, m.multiple, Some(m.requeue)),
            Method::BasicReject(m) => self.ack(m.delivery_tag, false, Some(m.requeue)),
            Method::BasicConsume(m) => self.consume(s, m),
            Method::BasicCancel(m) => self.cancel(s, m),
            Method::BasicGet(m) => self.get(s, m),
            Method::BasicQos(m) => self.qos(s, m),
            Method::BasicRecover(m) => self.recover(s, m.requeue, true),
            Method::BasicRecoverAsync(m) => self.recover(s, m.requeue, false),
            Method::QueueDeclare(m) => self.queue_declare(s, m),
            Method::QueueBind(m) => self.queue_bind(s, m),
            Method::QueueUnbind(m) => self.queue_unbind(s, m),
            Method::QueuePurge(m) => self.queue_purge(s, m),
            Method::QueueDelete(m) => self.queue_delete(s, m),
            Method::ExchangeDeclare(m) => self.exchange_declare(s, m),
            Method::ExchangeDelete(m) => self.exchange_delete(s, m),
            Method::ExchangeBind(m) => self.exchange_bind(s, m),
            Method::ExchangeUnbind(m) => self.exchange_unbind(s, m),
            Method::ConfirmSelect(m) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed("cannot switch from tx to confirm mode"));
                }
                self.confirm_seq.get_or_insert(0);
                if !m.no_wait {
                    self.reply(s, confirm::SelectOk {});
                }
                Ok(())
            }
            Method::ChannelFlow(m) => {
                // The client pauses (or resumes) deliveries to this channel.
                self.shared.lock().paused = !m.active;
                self.reply(s, channel::FlowOk { active: m.active });
                if m.active {
                    for q in self.consumers.values() {
                        q.dispatch();
                    }
                }
                Ok(())
            }
            Method::ChannelOpen(_) => Err(AmqpError::channel_error("second 'channel.open' seen")),
            Method::TxSelect(_) => self.tx_select(s),
            Method::TxCommit(_) => self.tx_commit(s),
            Method::TxRollback(_) => self.tx_rollback(s),
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    /// Drops consumers whose queue was deleted from under them.
    fn forget_cancelled(&mut self) {
        let cancelled = std::mem::take(&mut self.shared.lock().cancelled);
        for tag in cancelled {
            self.consumers.remove(&tag);
        }
    }

    /// Takes the deliveries an ack, nack or reject refers to; an unknown tag
    /// is a channel error. `multiple` with tag 0 means "all outstanding".
    fn take_unacked(&self, delivery_tag: u64, multiple: bool) -> AmqpResult<Settled> {
        let mut d = self.shared.lock();
        if multiple && delivery_tag == 0 {
            return Ok(Settled::Many(d.unacked.drain(..).collect()));
        }
        let unknown = || AmqpError::precondition_failed(format!("unknown delivery tag {delivery_tag}"));
        let at = d.unacked.binary_search_by_key(&delivery_tag, |u| u.delivery_tag).map_err(|_| unknown())?;
        if multiple {
            Ok(Settled::Many(d.unacked.drain(..=at).collect()))
        } else {
            Ok(Settled::One(d.unacked.remove(at).expect("index from binary search")))
        }
    }

    /// Gives settled deliveries back to their queues: dropped (acked, or
    /// rejected without requeue) or requeued in their original positions.
    fn settle(&self, settled: Settled, outcome: Outcome) {
        let key = self.key();
        let runs: Vec<Unacked> = match settled {
            Settled::One(u) => {
                let consumer = u.consumer_tag.as_ref();
                match outcome {
                    Outcome::Ack => {
                        self.shared.outlet.counters.acknowledged.fetch_add(1, Ordering::Relaxed);
                        u.queue.settled(key, consumer, std::slice::from_ref(&u.message))
                    }
                    Outcome::Requeue => u.queue.requeue(key, consumer, vec![u.message]),
                    Outcome::Reject => u.queue.rejected(key, consumer, vec![u.message]),
                }
                Vec::new()
            }
            Settled::Many(all) => all,
        };
        // Group consecutive deliveries of the same queue and consumer so each
        // queue is locked once per run rather than once per message.
        let mut iter = runs.into_iter().peekable();
        while let Some(first) = iter.next() {
            let mut messages = vec![first.message];
            while let Some(next) =
                iter.next_if(|u| Arc::ptr_eq(&u.queue, &first.queue) && u.consumer_tag == first.consumer_tag)
            {
                messages.push(next.message);
            }
            let consumer = first.consumer_tag.as_ref();
            if outcome == Outcome::Ack {
                self.shared.outlet.counters.acknowledged.fetch_add(messages.len() as u64, Ordering::Relaxed);
            }
            match outcome {
                Outcome::Ack => first.queue.settled(key, consumer, &messages),
                Outcome::Requeue => first.queue.requeue(key, consumer, messages),
                Outcome::Reject => first.queue.rejected(key, consumer, messages),
            }
        }
        if self.shared.lock().global_prefetch != 0 {
            for q in self.consumers.values() {
                q.dispatch();
            }
        }
    }

    /// `consumer_timeout`: the error that closes this channel if a delivery
    /// has waited past its deadline; otherwise notes the nearest deadline
    /// left.
    pub fn check_timeouts(&self, now: Instant) -> Option<AmqpError> {
        let d = self.shared.lock();
        let mut nearest: Option<Instant> = None;
        for u in &d.unacked {
            let Some((at, timeout)) = u.deadline else { continue };
            if at <= now {
                return Some(AmqpError::precondition_failed(format!(
                    "delivery acknowledgement on channel {} timed out. Timeout value used: {} ms. This timeout value can be configured, see consumers doc guide to learn more",
                    self.id,
                    timeout.as_millis()
                )));
            }
            nearest = Some(nearest.map_or(at, |n| n.min(at)));
        }
        if let Some(at) = nearest {
            self.shared.deadlines.note(at);
        }
        None
    }

    /// Closes the channel: cancels its consumers, and requeues what it had
    /// not acknowledged, in order, marked redelivered.
    pub fn shutdown(&mut self, s: &mut Session) {
        // Acknowledgements never committed did not happen.
        if let Some(t) = self.tx.take() {
            self.unsettle(t.settles);
        }
        for (tag, q) in self.consumers.drain() {
            if q.cancel(self.shared.key, &tag).delete_queue {
                s.delete_queue(&q);
            }
        }
        let unacked = {
            let mut d = self.shared.lock();
            d.closed = true;
            std::mem::take(&mut d.unacked)
        };
        self.settle(Settled::Many(unacked.into()), Outcome::Requeue);
    }
}
