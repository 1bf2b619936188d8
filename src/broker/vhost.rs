//! A virtual host: its own namespace of exchanges and queues.

use std::sync::Arc;

use dashmap::DashMap;

use super::exchange::{Exchange, ExchangeKind};
use super::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{FieldTable, ShortStr};

pub struct VirtualHost {
    pub name: ShortStr,
    pub exchanges: DashMap<ShortStr, Arc<Exchange>>,
    pub queues: DashMap<ShortStr, Arc<Queue>>,
}

impl VirtualHost {
    /// A virtual host with the exchanges every RabbitMQ vhost starts with.
    pub fn new(name: ShortStr) -> Arc<VirtualHost> {
        let vhost = VirtualHost { name, exchanges: DashMap::new(), queues: DashMap::new() };
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
        ] {
            let name = ShortStr::from_static(name);
            vhost.exchanges.insert(name.clone(), Exchange::new(name, kind, true, false, false, FieldTable::new()));
        }
        Arc::new(vhost)
    }

    pub fn exchange(&self, name: &ShortStr) -> AmqpResult<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|e| e.clone())
            .ok_or_else(|| AmqpError::not_found(format!("no exchange '{}' in vhost '{}'", name, self.name)))
    }

    pub fn queue(&self, name: &ShortStr) -> AmqpResult<Arc<Queue>> {
        self.queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(|| AmqpError::not_found(format!("no queue '{}' in vhost '{}'", name, self.name)))
    }

    /// Removes a queue and every binding to it. Returns its ready count and
    /// its consumers, whose channels must be told (`basic.cancel`) or cleaned.
    pub fn delete_queue(&self, queue: &Arc<Queue>) -> (u32, Vec<super::queue::Consumer>) {
        self.queues.remove_if(&queue.name, |_, q| Arc::ptr_eq(q, queue));
        for e in self.exchanges.iter() {
            e.unbind_queue(queue);
        }
        queue.delete()
    }
}
