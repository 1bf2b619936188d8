//! Between the broker's state and its store (see `store`): which changes
//! are durable and get written, and putting back what the store recovered
//! at start-up. Nothing here runs without a data directory.

use std::sync::Arc;

use bytes::Bytes;
use tracing::info;

use super::exchange::{Destination, Exchange};
use super::message::{Body, Message};
use super::queue::Queue;
use super::{Broker, VirtualHost};
use crate::config::definitions::{BindingDef, ExchangeDef, QueueDef};
use crate::protocol::{FieldTable, ShortStr};
use crate::store::{DefOp, Recovery};

/// What RabbitMQ keeps across a restart: durable, and not owned by a
/// connection.
pub fn queue_is_durable(q: &Queue) -> bool {
    q.options.durable && q.options.exclusive_owner.is_none()
}

fn destination_is_durable(d: &Destination) -> bool {
    match d {
        Destination::Queue(q) => queue_is_durable(q),
        Destination::Exchange(x) => x.durable,
    }
}

impl VirtualHost {
    fn write(&self, op: impl FnOnce() -> DefOp) {
        if let Some(store) = &self.store {
            store.definition(op());
        }
    }

    /// A queue was created: if durable, it gets its journal and its line.
    pub(super) fn queue_created(&self, q: &Queue) {
        let Some(store) = &self.store else { return };
        if !queue_is_durable(q) {
            return;
        }
        q.attach_journal(store.journal(&self.name.as_str_lossy(), &q.name.as_str_lossy()));
        store.definition(DefOp::Queue(QueueDef {
            vhost: self.name.to_string(),
            name: q.name.to_string(),
            durable: true,
            auto_delete: q.options.auto_delete,
            arguments: q.options.arguments.clone(),
        }));
    }

    pub(super) fn queue_deleted(&self, q: &Queue) {
        if queue_is_durable(q) {
            self.write(|| DefOp::DeleteQueue { vhost: self.name.to_string(), name: q.name.to_string() });
        }
    }

    pub(super) fn exchange_created(&self, x: &Exchange) {
        if x.durable {
            self.write(|| {
                DefOp::Exchange(ExchangeDef {
                    vhost: self.name.to_string(),
                    name: x.name.to_string(),
                    kind: x.kind.name().to_string(),
                    durable: true,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                })
            });
        }
    }

    pub(super) fn exchange_deleted(&self, x: &Exchange) {
        if x.durable {
            self.write(|| DefOp::DeleteExchange { vhost: self.name.to_string(), name: x.name.to_string() });
        }
    }

    /// A binding made (`bound`) or removed: written if both ends are.
    pub(super) fn binding_changed(
        &self,
        bound: bool,
        source: &Exchange,
        destination: &Destination,
        routing_key: &ShortStr,
        arguments: &FieldTable,
    ) {
        if !source.durable || !destination_is_durable(destination) {
            return;
        }
        self.write(|| {
            let (destination, destination_type) = match destination {
                Destination::Queue(q) => (q.name.to_string(), "queue"),
                Destination::Exchange(x) => (x.name.to_string(), "exchange"),
            };
            let b = BindingDef {
                vhost: self.name.to_string(),
                source: source.name.to_string(),
                destination,
                destination_type: destination_type.into(),
                routing_key: routing_key.to_string(),
                arguments: arguments.clone(),
            };
            if bound {
                DefOp::Bind(b)
            } else {
                DefOp::Unbind(b)
            }
        });
    }
}

impl Broker {
    /// Declares what the store recovered and puts the messages back.
    pub(super) fn recover(&self, r: Recovery) -> Result<(), String> {
        for v in &r.vhosts {
            self.add_vhost(&v.as_str().into());
        }
        self.apply_topology(&r.topology).map_err(|e| format!("recovering the data directory's definitions: {e}"))?;
        for u in &r.users {
            self.access.put_user(u).map_err(|e| format!("recovering the data directory's users: {e}"))?;
        }
        for p in &r.permissions {
            // A permission for a user the configuration no longer has is
            // dropped with the user, as RabbitMQ drops it.
            let _ = self.access.set_permission(p);
        }
        for ((vhost, name), messages) in r.messages {
            let Some(q) = self.vhost(&vhost.as_str().into()).and_then(|v| v.queue(&name.as_str().into()).ok()) else {
                continue;
            };
            let count = messages.len();
            q.restore(messages.into_iter().map(|m| {
                let s = m.message;
                let size = s.body.len() as u64;
                let body = if s.body.is_empty() { Body::Empty } else { Body::One(s.body) };
                let text = |b: Bytes| ShortStr::from_bytes(b);
                let mut message = Message::new(&text(s.exchange), &text(s.routing_key), &s.properties, size, body);
                message.charge = Some(self.alarms.charge(message.footprint()));
                (m.seq, m.redelivered, Arc::new(message))
            }));
            if count > 0 {
                info!("recovered {count} message(s) in {}", crate::logging::Escaped(&q.describe()));
            }
        }
        Ok(())
    }
}
