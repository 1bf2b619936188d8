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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;

use crate::broker::exchange::{Binding, ExchangeKind};
use crate::broker::message::{Body, Message, QueuedMessage};
use crate::broker::queue::{ChannelKey, Consumer, DeliveryTarget, Queue, QueueOptions, Refusal};
use crate::broker::{Broker, VirtualHost};
use crate::connection::writer::{Delivery, DeliveryKind, Outbound, Outlet};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::constants::CLASS_BASIC;
use crate::protocol::frame::{write_method, Frame};
use crate::protocol::methods::{basic, channel, confirm, exchange, queue, Method};
use crate::protocol::{ContentHeader, FieldTable, FieldValue, ReplyCode, ShortStr};

/// RabbitMQ's default `max_message_size` (128 MiB): a larger content header
/// is refused before any body is buffered.
pub const MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;

/// What a client announced in `client_properties.capabilities` that changes
/// what the server sends it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCapabilities {
    pub consumer_cancel_notify: bool,
    pub authentication_failure_close: bool,
    pub connection_blocked: bool,
}

impl ClientCapabilities {
    pub fn from_client_properties(props: &FieldTable) -> Self {
        let caps = props.get("capabilities").and_then(FieldValue::as_table);
        let flag = |name: &str| caps.and_then(|t| t.get(name)).and_then(FieldValue::as_bool).unwrap_or(false);
        ClientCapabilities {
            consumer_cancel_notify: flag("consumer_cancel_notify"),
            authentication_failure_close: flag("authentication_failure_close"),
            connection_blocked: flag("connection.blocked"),
        }
    }
}

/// What channels need from their connection once it is open.
pub struct Session {
    pub connection_id: u64,
    pub broker: Arc<Broker>,
    pub vhost: Arc<VirtualHost>,
    pub outlet: Arc<Outlet>,
    pub capabilities: ClientCapabilities,
    /// Exclusive queues this connection declared; deleted when it closes.
    pub exclusive_queues: Vec<Arc<Queue>>,
    /// Reused by every publish to collect the queues a message goes to.
    route_buf: Vec<Arc<Queue>>,
    /// Channels with publisher confirms to send once the frames at hand are
    /// processed (see [`Channel::flush_confirms`]).
    pub pending_confirms: Vec<u16>,
}

impl Session {
    pub fn new(
        connection_id: u64,
        broker: Arc<Broker>,
        vhost: Arc<VirtualHost>,
        outlet: Arc<Outlet>,
        capabilities: ClientCapabilities,
    ) -> Self {
        Session {
            connection_id,
            broker,
            vhost,
            outlet,
            capabilities,
            exclusive_queues: Vec::new(),
            route_buf: Vec::new(),
            pending_confirms: Vec::new(),
        }
    }

    pub fn send_method(&self, channel: u16, method: &Method) {
        let mut buf = BytesMut::with_capacity(64);
        write_method(&mut buf, channel, method);
        self.outlet.send(Outbound::Frames(buf.freeze()));
    }

    /// Deletes a queue: unbinds it, tells its consumers' channels.
    pub fn delete_queue(&mut self, q: &Arc<Queue>) -> u32 {
        let (count, consumers) = self.vhost.delete_queue(q);
        for c in consumers {
            c.target.consumer_cancelled(&c.tag);
        }
        self.exclusive_queues.retain(|x| !Arc::ptr_eq(x, q));
        count
    }

    /// Deletes the connection's exclusive queues (when it closes).
    pub fn delete_exclusive_queues(&mut self) {
        for q in std::mem::take(&mut self.exclusive_queues) {
            self.delete_queue(&q);
        }
    }
}

/// A delivery the client has not acknowledged yet.
struct Unacked {
    delivery_tag: u64,
    queue: Arc<Queue>,
    /// The consumer it went to; `None` for `basic.get`.
    consumer_tag: Option<ShortStr>,
    message: QueuedMessage,
}

/// The part of a channel that queues deliver into.
pub struct ChannelShared {
    key: ChannelKey,
    outlet: Arc<Outlet>,
    cancel_notify: bool,
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
    closed: bool,
}

impl ChannelShared {
    fn lock(&self) -> MutexGuard<'_, Deliveries> {
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers a delivery and queues it for the writer, holding the lock so
    /// tags reach the writer in order.
    fn send(
        &self,
        d: &mut Deliveries,
        kind: DeliveryKind,
        queue: &Arc<Queue>,
        consumer: Option<&ShortStr>,
        m: QueuedMessage,
        no_ack: bool,
    ) {
        d.last_tag += 1;
        let delivery = Delivery {
            channel: self.key.channel,
            kind,
            delivery_tag: d.last_tag,
            redelivered: m.redelivered,
            message: m.message.clone(),
        };
        if !no_ack {
            d.unacked.push_back(Unacked {
                delivery_tag: d.last_tag,
                queue: queue.clone(),
                consumer_tag: consumer.cloned(),
                message: m,
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
    ) -> Result<(), (QueuedMessage, Refusal)> {
        let mut d = self.lock();
        if d.closed {
            return Err((message, Refusal::Closed));
        }
        if !no_ack && d.global_prefetch != 0 && d.unacked.len() >= d.global_prefetch as usize {
            return Err((message, Refusal::Full));
        }
        if !self.outlet.reserve_delivery(queue) {
            return Err((message, Refusal::Full));
        }
        let kind = DeliveryKind::Deliver { consumer_tag: consumer_tag.clone() };
        self.send(&mut d, kind, queue, Some(consumer_tag), message, no_ack);
        Ok(())
    }

    fn consumer_cancelled(&self, consumer_tag: &ShortStr) {
        let mut d = self.lock();
        if d.closed {
            return;
        }
        d.cancelled.push(consumer_tag.clone());
        if self.cancel_notify {
            let mut buf = BytesMut::with_capacity(64);
            let cancel = Method::BasicCancel(basic::Cancel { consumer_tag: consumer_tag.clone(), no_wait: true });
            write_method(&mut buf, self.key.channel, &cancel);
            self.outlet.send(Outbound::Frames(buf.freeze()));
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
    /// The queue last declared on this channel: an empty queue name in later
    /// methods means this one.
    last_queue: Option<ShortStr>,
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
                deliveries: Mutex::new(Deliveries::default()),
            }),
            closing: false,
            content: Content::Idle,
            prefetch_count: 0,
            consumers: HashMap::new(),
            confirm_seq: None,
            confirmed: 0,
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
                self.handle_method(s, method).map_err(|e| if e.class_id == 0 { e.with_ids(ids.0, ids.1) } else { e })
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
                    .with_ids(60, 40));
                }
                if header.body_size > MAX_MESSAGE_SIZE {
                    return Err(AmqpError::precondition_failed(format!(
                        "message size {} is larger than max size {MAX_MESSAGE_SIZE}",
                        header.body_size
                    ))
                    .with_ids(60, 40));
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
            .with_ids(60, 40)),
            (Content::AwaitingBody { publish, header, mut body, remaining }, Frame::Body { body: chunk, .. }) => {
                let len = chunk.len() as u64;
                if len > remaining {
                    return Err(
                        AmqpError::frame_error("content body frame exceeds remaining content size").with_ids(60, 40)
                    );
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
                    .with_ids(60, 40))
            }
        }
    }

    fn handle_method(&mut self, s: &mut Session, method: Method) -> AmqpResult<()> {
        match method {
            Method::BasicPublish(m) => {
                self.content = Content::AwaitingHeader(m);
                Ok(())
            }
            Method::BasicAck(m) => {
                let settled = self.take_unacked(m.delivery_tag, m.multiple)?;
                self.settle(settled, false);
                Ok(())
            }
            Method::BasicNack(m) => {
                let settled = self.take_unacked(m.delivery_tag, m.multiple)?;
                self.settle(settled, m.requeue);
                Ok(())
            }
            Method::BasicReject(m) => {
                let settled = self.take_unacked(m.delivery_tag, false)?;
                self.settle(settled, m.requeue);
                Ok(())
            }
            Method::BasicConsume(m) => self.consume(s, m),
            Method::BasicCancel(m) => {
                self.forget_cancelled();
                if let Some(q) = self.consumers.remove(&m.consumer_tag) {
                    if q.cancel(self.key(), &m.consumer_tag).delete_queue {
                        s.delete_queue(&q);
                    }
                }
                if !m.no_wait {
                    self.reply(s, basic::CancelOk { consumer_tag: m.consumer_tag });
                }
                Ok(())
            }
            Method::BasicGet(m) => self.get(s, m),
            Method::BasicQos(m) => self.qos(s, m),
            Method::BasicRecover(basic::Recover { requeue })
            | Method::BasicRecoverAsync(basic::RecoverAsync { requeue }) => {
                let is_async = matches!(method, Method::BasicRecoverAsync(_));
                if !requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                let all = std::mem::take(&mut self.shared.lock().unacked);
                self.settle(Settled::Many(all.into()), true);
                if !is_async {
                    self.reply(s, basic::RecoverOk {});
                }
                Ok(())
            }
            Method::QueueDeclare(m) => self.queue_declare(s, m),
            Method::QueueBind(m) => {
                let qname = self.queue_name(&m.queue)?;
                let (x, q) = self.binding_ends(s, &m.exchange, &qname)?;
                x.bind(Binding { queue: q, routing_key: m.routing_key, arguments: m.arguments });
                if !m.no_wait {
                    self.reply(s, queue::BindOk {});
                }
                Ok(())
            }
            Method::QueueUnbind(m) => {
                let qname = self.queue_name(&m.queue)?;
                let (x, q) = self.binding_ends(s, &m.exchange, &qname)?;
                x.unbind(&q, &m.routing_key, &m.arguments);
                self.reply(s, queue::UnbindOk {});
                Ok(())
            }
            Method::QueuePurge(m) => {
                let q = s.vhost.queue(&self.queue_name(&m.queue)?)?;
                q.check_access(s.connection_id)?;
                let message_count = q.purge();
                if !m.no_wait {
                    self.reply(s, queue::PurgeOk { message_count });
                }
                Ok(())
            }
            Method::QueueDelete(m) => self.queue_delete(s, m),
            Method::ExchangeDeclare(m) => self.exchange_declare(s, m),
            Method::ExchangeDelete(m) => self.exchange_delete(s, m),
            Method::ExchangeBind(_) | Method::ExchangeUnbind(_) => {
                Err(AmqpError::not_implemented("exchange-to-exchange bindings are not supported yet"))
            }
            Method::ConfirmSelect(m) => {
                self.confirm_seq.get_or_insert(0);
                if !m.no_wait {
                    self.reply(s, confirm::SelectOk {});
                }
                Ok(())
            }
            Method::ChannelFlow(m) => {
                if !m.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.reply(s, channel::FlowOk { active: true });
                Ok(())
            }
            Method::ChannelOpen(_) => Err(AmqpError::channel_error("second 'channel.open' seen")),
            Method::TxSelect(_) | Method::TxCommit(_) | Method::TxRollback(_) => {
                Err(AmqpError::not_implemented("transactions are not supported yet"))
            }
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    /// A complete message: route it, enqueue it, confirm it.
    fn publish(&mut self, s: &mut Session, p: basic::Publish, header: ContentHeader, body: Body) -> AmqpResult<()> {
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true").with_ids(60, 40));
        }
        let mut route = std::mem::take(&mut s.route_buf);
        route.clear();
        if p.exchange.is_empty() {
            if let Some(q) = s.vhost.queues.get(&p.routing_key) {
                route.push(q.clone());
            }
        } else {
            let x = s.vhost.exchange(&p.exchange).map_err(|e| e.with_ids(60, 40))?;
            if x.internal {
                return Err(AmqpError::access_refused(format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    p.exchange, s.vhost.name
                ))
                .with_ids(60, 40));
            }
            x.route(&p.routing_key, &mut route);
        }
        let message = Arc::new(Message {
            exchange: p.exchange,
            routing_key: p.routing_key,
            properties: header.raw_properties,
            body_size: header.body_size,
            body,
        });
        if route.is_empty() && p.mandatory {
            s.outlet.force_reserve_delivery();
            s.outlet.send(Outbound::Deliver(Delivery {
                channel: self.id,
                kind: DeliveryKind::Return {
                    reply_code: ReplyCode::NoRoute.code(),
                    reply_text: ShortStr::from_static("NO_ROUTE"),
                },
                delivery_tag: 0,
                redelivered: false,
                message: message.clone(),
            }));
        }
        for q in route.drain(..) {
            q.publish(message.clone());
        }
        s.route_buf = route;
        if let Some(seq) = &mut self.confirm_seq {
            // Every message is in its queues (in memory) by now, so it can be
            // confirmed; the ack itself waits for the end of this batch of
            // frames so that a burst of publishes gets one `multiple` ack.
            *seq += 1;
            if *seq == self.confirmed + 1 {
                s.pending_confirms.push(self.id);
            }
        }
        Ok(())
    }

    /// Confirms every publish not yet confirmed, with one `basic.ack`
    /// (`multiple` when it covers more than one), as RabbitMQ batches them.
    pub fn flush_confirms(&mut self, s: &Session) {
        let Some(seq) = self.confirm_seq else { return };
        if seq == self.confirmed || self.closing {
            return;
        }
        let multiple = seq > self.confirmed + 1;
        self.confirmed = seq;
        self.reply(s, basic::Ack { delivery_tag: seq, multiple });
    }

    /// Resolves a queue name; empty means the last queue declared here.
    fn queue_name(&self, name: &ShortStr) -> AmqpResult<ShortStr> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        self.last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    fn binding_ends(
        &self,
        s: &Session,
        exchange: &ShortStr,
        queue: &ShortStr,
    ) -> AmqpResult<(Arc<crate::broker::exchange::Exchange>, Arc<Queue>)> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let x = s.vhost.exchange(exchange)?;
        let q = s.vhost.queue(queue)?;
        q.check_access(s.connection_id)?;
        Ok((x, q))
    }

    fn queue_declare(&mut self, s: &mut Session, m: queue::Declare) -> AmqpResult<()> {
        let q = if m.passive {
            let q = s.vhost.queue(&self.queue_name(&m.queue)?)?;
            q.check_access(s.connection_id)?;
            q
        } else {
            let name = if m.queue.is_empty() {
                s.broker.generate_name("amq.gen")
            } else if m.queue.starts_with(b"amq.") {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    m.queue
                )));
            } else {
                m.queue.clone()
            };
            let options = QueueOptions {
                durable: m.durable,
                exclusive_owner: m.exclusive.then_some(s.connection_id),
                auto_delete: m.auto_delete,
                arguments: m.arguments,
            };
            let existing = s.vhost.queues.get(&name).map(|q| q.clone());
            match existing {
                Some(q) => {
                    check_equivalent(&q, &options, s.connection_id)?;
                    q
                }
                None => {
                    let created = Queue::new(s.vhost.name.clone(), name.clone(), options);
                    // Two connections may race to declare the same name: the
                    // entry API makes exactly one of them the creator.
                    let q = s.vhost.queues.entry(name).or_insert_with(|| created.clone()).clone();
                    if Arc::ptr_eq(&q, &created) {
                        if created.options.exclusive_owner.is_some() {
                            s.exclusive_queues.push(created);
                        }
                    } else {
                        check_equivalent(&q, &created.options, s.connection_id)?;
                    }
                    q
                }
            }
        };
        self.last_queue = Some(q.name.clone());
        if !m.no_wait {
            let (message_count, consumer_count) = q.counts();
            self.reply(s, queue::DeclareOk { queue: q.name.clone(), message_count, consumer_count });
        }
        Ok(())
    }

    fn queue_delete(&mut self, s: &mut Session, m: queue::Delete) -> AmqpResult<()> {
        let name = self.queue_name(&m.queue)?;
        let message_count = match s.vhost.queue(&name) {
            // Deleting a queue that does not exist succeeds, as in RabbitMQ.
            Err(_) => 0,
            Ok(q) => {
                q.check_access(s.connection_id)?;
                let (messages, consumers) = q.counts();
                if m.if_unused && consumers > 0 {
                    return Err(AmqpError::precondition_failed(format!("{} in use", q.describe())));
                }
                if m.if_empty && messages > 0 {
                    return Err(AmqpError::precondition_failed(format!("{} not empty", q.describe())));
                }
                s.delete_queue(&q)
            }
        };
        if !m.no_wait {
            self.reply(s, queue::DeleteOk { message_count });
        }
        Ok(())
    }

    fn exchange_declare(&mut self, s: &mut Session, m: exchange::Declare) -> AmqpResult<()> {
        if m.exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if m.passive {
            s.vhost.exchange(&m.exchange)?;
        } else {
            let kind = ExchangeKind::parse(&m.kind)?;
            let existing = s.vhost.exchanges.get(&m.exchange).map(|x| x.clone());
            match existing {
                Some(x) => {
                    let describe = format!("exchange '{}' in vhost '{}'", m.exchange, s.vhost.name);
                    let fail = |arg: &str, new: &str, cur: &str| {
                        Err(AmqpError::precondition_failed(format!(
                            "inequivalent arg '{arg}' for {describe}: received '{new}' but current is '{cur}'"
                        )))
                    };
                    if x.kind != kind {
                        return fail("type", kind.name(), x.kind.name());
                    }
                    if x.durable != m.durable {
                        return fail("durable", &m.durable.to_string(), &x.durable.to_string());
                    }
                    if x.auto_delete != m.auto_delete {
                        return fail("auto_delete", &m.auto_delete.to_string(), &x.auto_delete.to_string());
                    }
                    if x.internal != m.internal {
                        return fail("internal", &m.internal.to_string(), &x.internal.to_string());
                    }
                }
                None => {
                    if m.exchange.starts_with(b"amq.") {
                        return Err(AmqpError::access_refused(format!(
                            "exchange name '{}' contains reserved prefix 'amq.*'",
                            m.exchange
                        )));
                    }
                    let x = crate::broker::exchange::Exchange::new(
                        m.exchange.clone(),
                        kind,
                        m.durable,
                        m.auto_delete,
                        m.internal,
                        m.arguments,
                    );
                    s.vhost.exchanges.entry(m.exchange).or_insert(x);
                }
            }
        }
        if !m.no_wait {
            self.reply(s, exchange::DeclareOk {});
        }
        Ok(())
    }

    fn exchange_delete(&mut self, s: &mut Session, m: exchange::Delete) -> AmqpResult<()> {
        if m.exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if m.exchange.starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{}' in vhost '{}' not allowed",
                m.exchange, s.vhost.name
            )));
        }
        if let Some(x) = s.vhost.exchanges.get(&m.exchange).map(|x| x.clone()) {
            if m.if_unused && x.has_bindings() {
                return Err(AmqpError::precondition_failed(format!(
                    "exchange '{}' in vhost '{}' in use",
                    m.exchange, s.vhost.name
                )));
            }
            s.vhost.exchanges.remove(&m.exchange);
        }
        if !m.no_wait {
            self.reply(s, exchange::DeleteOk {});
        }
        Ok(())
    }

    fn consume(&mut self, s: &mut Session, m: basic::Consume) -> AmqpResult<()> {
        self.forget_cancelled();
        let q = s.vhost.queue(&self.queue_name(&m.queue)?)?;
        q.check_access(s.connection_id)?;
        let tag = if m.consumer_tag.is_empty() { s.broker.generate_name("amq.ctag") } else { m.consumer_tag };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!("attempt to reuse consumer tag '{tag}'")));
        }
        let consumer = Consumer {
            tag: tag.clone(),
            channel: self.key(),
            target: self.shared.clone(),
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            prefetch_count: self.prefetch_count.into(),
            unacked: 0,
        };
        let consume_ok = (!m.no_wait).then(|| Method::BasicConsumeOk(basic::ConsumeOk { consumer_tag: tag.clone() }));
        q.consume(consumer, || {
            if let Some(ok) = &consume_ok {
                s.send_method(self.id, ok);
            }
        })?;
        self.consumers.insert(tag, q);
        Ok(())
    }

    fn get(&mut self, s: &mut Session, m: basic::Get) -> AmqpResult<()> {
        let q = s.vhost.queue(&self.queue_name(&m.queue)?)?;
        q.check_access(s.connection_id)?;
        match q.get(m.no_ack) {
            Some((message, message_count)) => {
                s.outlet.force_reserve_delivery();
                let mut d = self.shared.lock();
                self.shared.send(&mut d, DeliveryKind::GetOk { message_count }, &q, None, message, m.no_ack);
            }
            None => self.reply(s, basic::GetEmpty { reserved_1: ShortStr::default() }),
        }
        Ok(())
    }

    fn qos(&mut self, s: &mut Session, m: basic::Qos) -> AmqpResult<()> {
        if m.prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({})", m.prefetch_size)));
        }
        if m.global {
            self.shared.lock().global_prefetch = m.prefetch_count.into();
            // A larger limit takes effect now: let the queues deliver.
            for q in self.consumers.values() {
                q.dispatch();
            }
        } else {
            self.prefetch_count = m.prefetch_count;
        }
        self.reply(s, basic::QosOk {});
        Ok(())
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
    fn settle(&self, settled: Settled, requeue: bool) {
        let key = self.key();
        let runs: Vec<Unacked> = match settled {
            Settled::One(u) => {
                if requeue {
                    u.queue.requeue(key, u.consumer_tag.as_ref(), vec![u.message]);
                } else {
                    u.queue.settled(key, u.consumer_tag.as_ref(), 1);
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
            if requeue {
                first.queue.requeue(key, first.consumer_tag.as_ref(), messages);
            } else {
                first.queue.settled(key, first.consumer_tag.as_ref(), messages.len() as u32);
            }
        }
        if self.shared.lock().global_prefetch != 0 {
            for q in self.consumers.values() {
                q.dispatch();
            }
        }
    }

    /// Closes the channel: cancels its consumers, and requeues what it had
    /// not acknowledged, in order, marked redelivered.
    pub fn shutdown(&mut self, s: &mut Session) {
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
        self.settle(Settled::Many(unacked.into()), true);
    }
}

/// RabbitMQ's redeclare checks, in its order: exclusivity (strict), then
/// durable, auto_delete and arguments.
fn check_equivalent(q: &Queue, new: &QueueOptions, connection: u64) -> AmqpResult<()> {
    let cur = &q.options;
    if cur.exclusive_owner != new.exclusive_owner {
        q.check_access(connection)?;
        // Same connection, but the exclusive flag differs.
        return Err(AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.describe()
        )));
    }
    let fail = |arg: &str, received: String, current: String| {
        Err(AmqpError::precondition_failed(format!(
            "inequivalent arg '{arg}' for {}: received {received} but current is {current}",
            q.describe()
        )))
    };
    if cur.durable != new.durable {
        return fail("durable", format!("'{}'", new.durable), format!("'{}'", cur.durable));
    }
    if cur.auto_delete != new.auto_delete {
        return fail("auto_delete", format!("'{}'", new.auto_delete), format!("'{}'", cur.auto_delete));
    }
    for key in argument_keys(&cur.arguments, &new.arguments) {
        let (c, n) = (cur.arguments.get(&key), new.arguments.get(&key));
        let same = match (c, n) {
            (Some(a), Some(b)) => match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            },
            (None, None) => true,
            _ => false,
        };
        if !same {
            let describe = |v: Option<&FieldValue>, alone: bool| match v {
                None => "none".to_string(),
                Some(v) if alone => {
                    format!("the value '{}' of type '{}'", value_text(v), type_name(v))
                }
                Some(v) => format!("'{}'", value_text(v)),
            };
            let alone = c.is_none() || n.is_none();
            return fail(&key, describe(n, alone), describe(c, alone));
        }
    }
    Ok(())
}

fn argument_keys(a: &FieldTable, b: &FieldTable) -> Vec<String> {
    let mut keys: Vec<String> = a.iter().chain(b.iter()).map(|(k, _)| k.to_string()).collect();
    keys.sort();
    keys.dedup();
    keys
}

fn value_text(v: &FieldValue) -> String {
    match v {
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        FieldValue::Bool(b) => b.to_string(),
        other => other.as_i64().map_or_else(|| format!("{other:?}"), |i| i.to_string()),
    }
}

/// RabbitMQ's names for field types, as its inequivalence texts print them.
fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::LongStr(_) => "longstr",
        FieldValue::Bytes(_) => "binary",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
    }
}
