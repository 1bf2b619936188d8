//! Class `queue`: declaring, binding, purging and deleting queues.

use std::sync::Arc;

use super::{tell_cancelled, Channel, Session};
use crate::broker::access::Access;
use crate::broker::queue::args::QueueArgs;
use crate::broker::queue::{Queue, QueueOptions};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::queue;
use crate::protocol::{FieldTable, FieldValue, ShortStr};

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
            let describe = format!("queue '{}' in vhost '{}'", name, s.vhost.name);
            let args = QueueArgs::parse(&options.arguments, &describe)?;
            let existing = s.vhost.queues.get(&name).map(|q| q.clone());
            match existing {
                Some(q) => {
                    check_equivalent(&q, &options, s.connection_id)?;
                    q
                }
                None => {
                    let created = Queue::new(&s.vhost, name.clone(), options, args);
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
                    format!("the value '{}' of type '{}'", value_text(v), v.type_name())
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
