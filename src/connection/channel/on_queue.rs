//! Class `queue`: declaring, binding, purging and deleting queues.

use super::{tell_cancelled, Channel, Session};
use crate::broker::access::Access;
use crate::broker::queue::QueueOptions;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::queue;
use crate::protocol::ShortStr;

impl Channel {
    /// Resolves a queue name; empty means the last queue declared here.
    pub(super) fn queue_name(&self, name: &ShortStr) -> AmqpResult<ShortStr> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        self.last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    pub(super) fn queue_declare(&mut self, s: &mut Session, m: queue::Declare) -> AmqpResult<()> {
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
            s.check(Access::Configure, "queue", &name)?;
            let options = QueueOptions {
                durable: m.durable,
                exclusive_owner: m.exclusive.then_some(s.connection_id),
                auto_delete: m.auto_delete,
                arguments: m.arguments,
            };
            let (q, created) = s.vhost.declare_queue(name, options, s.connection_id)?;
            if created && q.options.exclusive_owner.is_some() {
                s.exclusive_queues.push(q.clone());
            }
            q
        };
        self.last_queue = Some(q.name.clone());
        if !m.no_wait {
            let (message_count, consumer_count) = q.declared();
            self.reply(s, queue::DeclareOk { queue: q.name.clone(), message_count, consumer_count });
        }
        Ok(())
    }

    pub(super) fn queue_delete(&mut self, s: &mut Session, m: queue::Delete) -> AmqpResult<()> {
        let name = self.queue_name(&m.queue)?;
        s.check(Access::Configure, "queue", &name)?;
        let (message_count, consumers) = match s.vhost.queue(&name) {
            // Deleting a queue that does not exist succeeds, as in RabbitMQ.
            Err(_) => (0, Vec::new()),
            Ok(q) => {
                q.check_access(s.connection_id)?;
                let (messages, consumers) = q.counts();
                if m.if_unused && consumers > 0 {
                    return Err(AmqpError::precondition_failed(format!("{} in use", q.describe())));
                }
                if m.if_empty && messages > 0 {
                    return Err(AmqpError::precondition_failed(format!("{} not empty", q.describe())));
                }
                s.remove_queue(&q)
            }
        };
        // delete-ok goes before the basic.cancel of any consumer on this
        // channel, as RabbitMQ orders them (py-amqp relies on it).
        if !m.no_wait {
            self.reply(s, queue::DeleteOk { message_count });
        }
        tell_cancelled(consumers);
        Ok(())
    }

    pub(super) fn queue_purge(&mut self, s: &mut Session, m: queue::Purge) -> AmqpResult<()> {
        let name = self.queue_name(&m.queue)?;
        s.check(Access::Read, "queue", &name)?;
        let q = s.vhost.queue(&name)?;
        q.check_access(s.connection_id)?;
        let message_count = q.purge();
        if !m.no_wait {
            self.reply(s, queue::PurgeOk { message_count });
        }
        Ok(())
    }
}
