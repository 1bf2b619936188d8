//! Class `basic`: publishing, consuming, getting and acknowledging.

use std::sync::Arc;

use super::on_tx::Routed;
use super::{Channel, Outcome, Session, Settled};
use crate::broker::access::Access;
use crate::broker::events::Event;
use crate::broker::message::{Body, Message};
use crate::broker::queue::{Consumer, Enqueued, Queue};
use crate::connection::writer::{Delivery, DeliveryKind, Outbound};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::basic;
use crate::protocol::{ContentHeader, Method, ReplyCode, ShortStr};

impl Channel {
    /// A complete message: route it, then enqueue and confirm it, or, in a
    /// transaction, hold it until `tx.commit`. Routing happens now either
    /// way, so an unknown exchange is reported at `basic.publish`, as in
    /// RabbitMQ.
    pub(super) fn publish(
        &mut self,
        s: &mut Session,
        p: basic::Publish,
        header: ContentHeader,
        body: Body,
    ) -> AmqpResult<()> {
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true").during(basic::Publish::IDS));
        }
        // A channel usually publishes to one exchange: remember the last one
        // permitted rather than match the write permission every time.
        if self.write_permitted.as_ref() != Some(&p.exchange) {
            s.check(Access::Write, "exchange", &p.exchange).map_err(|e| e.during(basic::Publish::IDS))?;
            self.write_permitted = Some(p.exchange.clone());
        }
        check_properties(&header.raw_properties)?;
        let mut route = std::mem::take(&mut s.route_buf);
        route.clear();
        if let Err(e) = s.vhost.route(&p.exchange, &p.routing_key, &header.raw_properties, &mut route) {
            s.route_buf = route;
            return Err(e.during(basic::Publish::IDS));
        }
        let mut message = Message::new(&p.exchange, &p.routing_key, &header.raw_properties, header.body_size, body);
        message.charge = Some(s.vhost.alarms.charge(message.footprint()));
        let message = Arc::new(message);
        if let Some(tx) = &mut self.tx {
            tx.publishes.push(Routed { message, queues: route.clone(), mandatory: p.mandatory });
        } else {
            self.enqueue(s, &message, &route, p.mandatory);
        }
        s.route_buf = route;
        Ok(())
    }

    /// Puts a routed message in its queues; returns it to the publisher if
    /// mandatory and unroutable; notes its confirm.
    pub(super) fn enqueue(&mut self, s: &mut Session, message: &Arc<Message>, queues: &[Arc<Queue>], mandatory: bool) {
        if queues.is_empty() && mandatory {
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
        s.outlet.counters.published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.broker.events.emit(|| Event::Published {
            connection: s.connection_name.to_string(),
            exchange: message.exchange.to_string(),
            routing_key: message.routing_key.to_string(),
            queues: queues.len(),
        });
        let mut refused = false;
        let now = tokio::time::Instant::now();
        for q in queues {
            refused |= q.publish_at(message.clone(), now) == Enqueued::Rejected;
        }
        if let Some(seq) = &mut self.confirm_seq {
            // Every message is in its queues (in memory) by now, so it can be
            // confirmed; the ack itself waits for the end of this batch of
            // frames so that a burst of publishes gets one `multiple` ack.
            *seq += 1;
            if *seq == self.confirmed + 1 {
                s.pending_confirms.push(self.id);
            }
            if refused {
                self.nacked.push(*seq);
            }
            // A persistent message in a durable queue is confirmed once it
            // is on disk: when the store has synced its ticket.
            if let Some(store) = &s.broker.store {
                if message.is_persistent() && queues.iter().any(|q| q.is_journaled()) {
                    if self.awaiting_disk.is_empty() {
                        s.awaiting_disk.push(self.id);
                    }
                    self.awaiting_disk.push_back((*seq, store.last_ticket()));
                }
            }
        }
    }

    /// The last confirm sequence number that may be confirmed now: all of
    /// them, unless some wait for the disk.
    fn confirmable(&mut self, s: &Session, seq: u64) -> u64 {
        let Some(store) = &s.broker.store else { return seq };
        let synced = store.synced_now();
        while self.awaiting_disk.front().is_some_and(|(_, ticket)| *ticket <= synced) {
            self.awaiting_disk.pop_front();
        }
        self.awaiting_disk.front().map_or(seq, |(held, _)| held - 1)
    }

    /// Whether confirms are held back for the disk.
    pub fn awaits_disk(&self) -> bool {
        !self.awaiting_disk.is_empty()
    }

    /// Confirms every publish not yet confirmed, with as few frames as
    /// possible: one `basic.ack` (`multiple` when it covers more than one),
    /// as RabbitMQ batches them, split around any `basic.nack`.
    pub fn flush_confirms(&mut self, s: &Session) {
        let Some(seq) = self.confirm_seq else { return };
        if seq == self.confirmed || self.closing {
            return;
        }
        let limit = self.confirmable(s, seq);
        let due = self.nacked.iter().take_while(|n| **n <= limit).count();
        let nacks: Vec<u64> = self.nacked.drain(..due).collect();
        for nack in nacks {
            if nack > self.confirmed + 1 {
                self.reply(s, basic::Ack { delivery_tag: nack - 1, multiple: nack - 1 > self.confirmed + 1 });
            }
            self.reply(s, basic::Nack { delivery_tag: nack, multiple: false, requeue: false });
            self.confirmed = nack;
        }
        if limit > self.confirmed {
            self.reply(s, basic::Ack { delivery_tag: limit, multiple: limit > self.confirmed + 1 });
            self.confirmed = limit;
        }
    }

    pub(super) fn consume(&mut self, s: &mut Session, m: basic::Consume) -> AmqpResult<()> {
        self.forget_cancelled();
        let name = self.queue_name(&m.queue)?;
        s.check(Access::Read, "queue", &name)?;
        let q = s.vhost.queue(&name)?;
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
            priority: Consumer::priority_from(&m.arguments),
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

    pub(super) fn get(&mut self, s: &mut Session, m: basic::Get) -> AmqpResult<()> {
        let name = self.queue_name(&m.queue)?;
        s.check(Access::Read, "queue", &name)?;
        let q = s.vhost.queue(&name)?;
        q.check_access(s.connection_id)?;
        match q.get(m.no_ack) {
            Some((message, message_count)) => {
                s.outlet.force_reserve_delivery();
                let mut d = self.shared.lock();
                let kind = DeliveryKind::GetOk { message_count };
                self.shared.send(&mut d, kind, &q, message, m.no_ack, tokio::time::Instant::now());
            }
            None => self.reply(s, basic::GetEmpty { reserved_1: ShortStr::default() }),
        }
        Ok(())
    }

    pub(super) fn qos(&mut self, s: &mut Session, m: basic::Qos) -> AmqpResult<()> {
        if m.prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({})", m.prefetch_size)));
        }
        // qos-ok goes out before any delivery the new limit allows: a client
        // waiting for qos-ok (py-amqp, under Celery) must not get deliveries
        // first.
        self.reply(s, basic::QosOk {});
        if m.global {
            self.shared.lock().global_prefetch = m.prefetch_count.into();
            // A larger limit takes effect now: let the queues deliver.
            for q in self.consumers.values() {
                q.dispatch();
            }
        } else {
            // RabbitMQ applies a per-consumer prefetch to consumers created
            // afterwards only. warren applies it to the channel's existing
            // consumers too, so that a client raising its prefetch at run
            // time (Celery does, for ETA tasks) sees it take effect now.
            self.prefetch_count = m.prefetch_count;
            for (tag, q) in &self.consumers {
                q.set_prefetch(self.key(), tag, m.prefetch_count.into());
            }
        }
        Ok(())
    }

    /// `basic.ack` (`requeue` None), `basic.nack` and `basic.reject`.
    pub(super) fn ack(&mut self, delivery_tag: u64, multiple: bool, requeue: Option<bool>) -> AmqpResult<()> {
        let settled = self.take_unacked(delivery_tag, multiple)?;
        let (connection, channel) = (self.shared.connection_name.to_string(), self.id);
        self.shared.events.emit(|| match requeue {
            None => Event::Acked { connection, channel, delivery_tag, multiple },
            Some(requeue) => Event::Nacked { connection, channel, delivery_tag, multiple, requeue },
        });
        let outcome = match requeue {
            None => Outcome::Ack,
            Some(true) => Outcome::Requeue,
            Some(false) => Outcome::Reject,
        };
        match &mut self.tx {
            Some(tx) => tx.settles.push((settled, outcome)),
            None => self.settle(settled, outcome),
        }
        Ok(())
    }

    pub(super) fn cancel(&mut self, s: &mut Session, m: basic::Cancel) -> AmqpResult<()> {
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

    /// `basic.recover` (`reply` true) and `basic.recover-async`: requeue
    /// every unacknowledged delivery of the channel.
    pub(super) fn recover(&mut self, s: &mut Session, requeue: bool, reply: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        // recover-ok before the redeliveries it causes, as RabbitMQ orders them.
        if reply {
            self.reply(s, basic::RecoverOk {});
        }
        let all = std::mem::take(&mut self.shared.lock().unacked);
        self.settle(Settled::Many(all.into()), Outcome::Requeue);
        Ok(())
    }
}

/// Refuses a publish whose properties would reach consumers broken (see
/// [`crate::protocol::properties::check`]). RabbitMQ decodes the properties
/// of every publish too; one that does not decode crashes its channel
/// process and the client gets 541 INTERNAL_ERROR, so that is the code
/// here, with the reason in the text. An `expiration` that is not a TTL
/// RabbitMQ would accept is its 406 with its text.
fn check_properties(raw: &bytes::Bytes) -> AmqpResult<()> {
    use crate::protocol::properties::{check, message_expiration_text, parse_expiration};
    check(raw).map_err(|e| {
        AmqpError::internal_error(format!("cannot decode content properties: {e}")).during(basic::Publish::IDS)
    })?;
    if let Some(text) = message_expiration_text(raw) {
        if let Err(why) = parse_expiration(text.as_bytes()) {
            return Err(AmqpError::precondition_failed(format!("invalid expiration '{text}': {why}"))
                .during(basic::Publish::IDS));
        }
    }
    Ok(())
}
