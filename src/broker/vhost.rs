//! A virtual host: its own namespace of exchanges and queues, and the one
//! place a message is routed ([`VirtualHost::route`]).

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use super::alarm::Alarms;
use super::events::Events;
use super::exchange::{dedup_queues, keep_unseen, Destination, Exchange, ExchangeKind, LazyHeaders};
use super::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{FieldTable, ShortStr};
use crate::store::Store;

pub struct VirtualHost {
    pub name: ShortStr,
    /// The broker's memory account, charged for every message published here.
    pub alarms: Arc<Alarms>,
    /// The broker's event stream (queues report expiry, requeues, deaths).
    pub events: Arc<Events>,
    pub exchanges: DashMap<ShortStr, Arc<Exchange>>,
    pub queues: DashMap<ShortStr, Arc<Queue>>,
    /// The broker's message store, with a data directory (see `durable`).
    pub store: Option<Arc<Store>>,
}

impl VirtualHost {
    /// A virtual host with the exchanges every RabbitMQ vhost starts with,
    /// all durable: `amq.match` is RabbitMQ's second headers exchange.
    pub fn new(
        name: ShortStr,
        alarms: Arc<Alarms>,
        events: Arc<Events>,
        store: Option<Arc<Store>>,
    ) -> Arc<VirtualHost> {
        let vhost = VirtualHost { name, alarms, events, exchanges: DashMap::new(), queues: DashMap::new(), store };
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            let name = ShortStr::from_static(name);
            let x = Exchange::new(vhost.name.clone(), name.clone(), kind, true, false, false, FieldTable::new());
            vhost.exchanges.insert(name, x);
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

    /// Routes a published message: appends to `out` every queue it goes to,
    /// each once. `out` is the caller's reusable buffer, so routing through
    /// the default exchange or a direct or fanout exchange allocates nothing.
    ///
    /// Errors are RabbitMQ's for `basic.publish`: 404 for a missing exchange,
    /// 403 for an internal one. An empty `out` afterwards means the message
    /// is unroutable (a `mandatory` publish is returned).
    pub fn route(
        &self,
        exchange: &ShortStr,
        routing_key: &ShortStr,
        raw_properties: &Bytes,
        out: &mut Vec<Arc<Queue>>,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            if let Some(q) = self.queues.get(routing_key) {
                out.push(q.clone());
            }
            return Ok(());
        }
        let x = self.exchange(exchange)?;
        if x.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange, self.name
            )));
        }
        self.route_through(x, routing_key, raw_properties, out);
        Ok(())
    }

    /// Routes a message the broker republishes itself (a dead letter): as
    /// RabbitMQ's dead-lettering, it may go through an internal exchange, and
    /// a missing exchange simply routes it nowhere.
    pub fn route_republished(
        &self,
        exchange: &ShortStr,
        routing_key: &ShortStr,
        raw_properties: &Bytes,
        out: &mut Vec<Arc<Queue>>,
    ) {
        if exchange.is_empty() {
            if let Some(q) = self.queues.get(routing_key) {
                out.push(q.clone());
            }
        } else if let Some(x) = self.exchanges.get(exchange).map(|x| x.clone()) {
            self.route_through(x, routing_key, raw_properties, out);
        }
    }

    /// RabbitMQ's `rabbit_exchange:route/2`: a work list of exchanges, starting
    /// with `first`. Each adds its queues to `out` and its exchange
    /// destinations to the list; one that matched nothing at all adds its
    /// alternate exchange instead. Every exchange is visited at most once, so
    /// loops end. The lists allocate only when there is a second exchange.
    fn route_through(&self, first: Arc<Exchange>, routing_key: &ShortStr, raw: &Bytes, out: &mut Vec<Arc<Queue>>) {
        let start = out.len();
        let mut headers = LazyHeaders::new(raw);
        let mut work: Vec<Arc<Exchange>> = Vec::new();
        let mut seen: Vec<*const Exchange> = Vec::new();
        let mut x = first;
        loop {
            let before = work.len();
            let matched = x.route_bindings(routing_key, &mut headers, out, &mut work);
            if !matched {
                if let Some(ae) = x.alternate.as_ref().and_then(|name| self.exchanges.get(name)) {
                    work.push(ae.clone());
                }
            }
            if work.len() > before {
                if seen.is_empty() {
                    seen.push(Arc::as_ptr(&x));
                }
                keep_unseen(&mut work, before, &mut seen);
            }
            match work.pop() {
                Some(next) => x = next,
                None => break,
            }
        }
        dedup_queues(out, start);
    }

    /// Binds `destination` to `source`; 404 if `source` was deleted meanwhile,
    /// 406 for invalid headers-exchange arguments.
    pub fn bind(
        &self,
        source: &Arc<Exchange>,
        destination: Destination,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        source.bind(destination.clone(), routing_key.clone(), arguments.clone())?;
        self.binding_changed(true, source, &destination, &routing_key, &arguments);
        Ok(())
    }

    /// Removes a binding; an auto-delete source that loses its last binding
    /// is deleted, as RabbitMQ does.
    pub fn unbind(
        &self,
        source: &Arc<Exchange>,
        destination: &Destination,
        routing_key: &ShortStr,
        arguments: &FieldTable,
    ) {
        let unbound = source.unbind(destination, routing_key, arguments);
        self.binding_changed(false, source, destination, routing_key, arguments);
        if unbound.auto_deleted {
            self.forget_exchange(source);
        }
    }

    /// Deletes an exchange with every binding from or to it.
    pub fn delete_exchange(&self, x: &Arc<Exchange>) {
        x.mark_deleted();
        self.forget_exchange(x);
    }

    /// Removes a deleted exchange from the namespace and the bindings that
    /// lead to it; sources that thereby lose their last binding and are
    /// auto-delete go too, and so on down the chain.
    fn forget_exchange(&self, x: &Arc<Exchange>) {
        let mut gone = vec![x.clone()];
        while let Some(x) = gone.pop() {
            if self.exchanges.remove_if(&x.name, |_, current| Arc::ptr_eq(current, &x)).is_some() {
                self.exchange_deleted(&x);
            }
            gone.extend(self.unbind_everywhere(&Destination::Exchange(x)));
        }
    }

    /// Drops every binding to `destination`; returns the exchanges that were
    /// auto-deleted as a result (already marked deleted).
    fn unbind_everywhere(&self, destination: &Destination) -> Vec<Arc<Exchange>> {
        // Collect first: a DashMap iterator holds shard locks, and removing
        // an auto-deleted exchange from the same map under them would deadlock.
        let all: Vec<Arc<Exchange>> = self.exchanges.iter().map(|e| e.value().clone()).collect();
        all.into_iter().filter(|x| x.unbind_destination(destination).auto_deleted).collect()
    }

    /// Removes a queue and every binding to it (auto-delete exchanges that
    /// lose their last binding go too). Returns its ready count and its
    /// consumers, whose channels must be told (`basic.cancel`) or cleaned.
    pub fn delete_queue(&self, queue: &Arc<Queue>) -> (u32, Vec<super::queue::Consumer>) {
        if self.queues.remove_if(&queue.name, |_, q| Arc::ptr_eq(q, queue)).is_some() {
            self.queue_deleted(queue);
        }
        for x in self.unbind_everywhere(&Destination::Queue(queue.clone())) {
            self.forget_exchange(&x);
        }
        queue.delete()
    }
}

impl Drop for VirtualHost {
    /// Exchange-to-exchange bindings can form cycles (`x` bound to itself,
    /// or `a` to `b` to `a`), and an `Arc` cycle is never freed. When the
    /// virtual host goes (its broker dropped, as an embedded broker is at the
    /// end of a test), every exchange lets go of its bindings, so that the
    /// exchanges, the queues they lead to and those queues' timer tasks go
    /// too. Found by the connection fuzz target: a task outlived its broker.
    fn drop(&mut self) {
        for x in self.exchanges.iter() {
            x.mark_deleted();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::alarm::Alarms;
    use crate::broker::queue::args::QueueArgs;
    use crate::broker::queue::QueueOptions;

    #[test]
    fn cyclic_exchange_bindings_are_freed_with_their_vhost() {
        let vhost = VirtualHost::new("/".into(), Alarms::new(None), Arc::default(), None);
        let (a, b) = ("a".into(), "b".into());
        let x = |name: ShortStr| {
            let x =
                Exchange::new("/".into(), name.clone(), ExchangeKind::Fanout, false, false, false, FieldTable::new());
            vhost.exchanges.insert(name, x.clone());
            x
        };
        let (a, b) = (x(a), x(b));
        let q = Queue::new(
            &vhost,
            "q".into(),
            QueueOptions { durable: false, exclusive_owner: None, auto_delete: false, arguments: FieldTable::new() },
            QueueArgs::default(),
        );
        vhost.queues.insert("q".into(), q.clone());
        let bind = |from: &Arc<Exchange>, to: Destination| vhost.bind(from, to, "".into(), FieldTable::new()).unwrap();
        bind(&a, Destination::Exchange(a.clone()));
        bind(&a, Destination::Exchange(b.clone()));
        bind(&b, Destination::Exchange(a.clone()));
        bind(&b, Destination::Queue(q.clone()));
        let weak = (Arc::downgrade(&a), Arc::downgrade(&b), Arc::downgrade(&q));
        drop((a, b, q));
        drop(vhost);
        let (a, b, q) = weak;
        assert!(a.upgrade().is_none() && b.upgrade().is_none(), "an exchange in a binding cycle outlived its vhost");
        assert!(q.upgrade().is_none(), "a queue bound from a cycle outlived its vhost");
    }
}
