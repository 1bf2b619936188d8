//! Exchanges and their bindings: where a published message goes.
//!
//! The default exchange (`""`) has no bindings of its own: it routes to the
//! queue named by the routing key, which the virtual host looks up directly
//! (see [`super::VirtualHost::route`], the one entry point for routing).
//!
//! A binding's destination is a queue or, with RabbitMQ's exchange-to-exchange
//! extension, another exchange. Each exchange keeps its bindings twice behind
//! one `RwLock`: a plain list to answer "does this binding exist" and
//! "is this exchange in use", and an index shaped for its type so routing only
//! does the work the type needs:
//! - direct: a hash map from routing key to destinations;
//! - fanout: the distinct destinations;
//! - topic: a trie over words ([`super::topic`]);
//! - headers: each binding's parsed arguments ([`super::headers`]).
//!
//! Routing takes the read lock; bindings change rarely.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use super::headers::HeadersBinding;
use super::queue::Queue;
use super::topic::TopicTrie;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{BasicProperties, FieldTable, FieldValue, ShortStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// RabbitMQ 3.x refuses an unknown type with a connection error (503);
    /// 4.x made it a channel error, warren follows 3.x like its clients do.
    pub fn parse(kind: &ShortStr) -> AmqpResult<ExchangeKind> {
        match kind.as_bytes() {
            b"direct" => Ok(ExchangeKind::Direct),
            b"fanout" => Ok(ExchangeKind::Fanout),
            b"topic" => Ok(ExchangeKind::Topic),
            b"headers" => Ok(ExchangeKind::Headers),
            _ => Err(AmqpError::command_invalid(format!("unknown exchange type '{kind}'"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads: a queue, or another exchange that routes further.
/// Two destinations are the same when they are the same object, not merely
/// the same name: a queue deleted and redeclared is a new destination.
#[derive(Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Destination {
    fn addr(&self) -> usize {
        match self {
            Destination::Queue(q) => Arc::as_ptr(q) as *const () as usize,
            Destination::Exchange(x) => Arc::as_ptr(x) as *const () as usize,
        }
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        self.addr() == other.addr()
    }
}

impl Eq for Destination {}

impl Hash for Destination {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr().hash(state);
    }
}

pub struct Exchange {
    pub name: ShortStr,
    /// The virtual host's name, for RabbitMQ's "exchange 'x' in vhost '/'".
    pub vhost: ShortStr,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// The `alternate-exchange` argument: where messages this exchange
    /// cannot route go instead. Looked up by name at routing time, as
    /// RabbitMQ does, so it may be declared later (or never).
    pub alternate: Option<ShortStr>,
    bindings: RwLock<Bindings>,
}

struct Bindings {
    /// Set when the exchange is deleted (explicitly or because it was
    /// auto-delete and lost its last binding), under this lock, so that a
    /// concurrent bind cannot add to an exchange no longer in the vhost.
    deleted: bool,
    /// Every binding, grouped by destination and routing key; the argument
    /// tables tell apart bindings within a group.
    all: HashMap<(Destination, ShortStr), Vec<FieldTable>>,
    count: usize,
    index: Index,
}

enum Index {
    /// Routing key to the distinct destinations bound with it.
    Direct(HashMap<ShortStr, Vec<Destination>>),
    /// The distinct destinations, each with its number of binding groups.
    Fanout(Vec<(Destination, usize)>),
    Topic(TopicTrie<Destination>),
    /// One entry per binding: header bindings differ by arguments.
    Headers(Vec<(HeadersBinding, Destination)>),
}

/// What removing bindings left behind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// How many bindings went.
    pub bindings: usize,
    /// The exchange is auto-delete and that was its last binding: it is now
    /// marked deleted, and the caller removes it from its virtual host.
    pub auto_deleted: bool,
}

/// The message's `headers` property, decoded only if a headers exchange is
/// on the route, and then once however many such exchanges there are.
pub struct LazyHeaders<'a> {
    raw_properties: &'a Bytes,
    decoded: Option<Option<FieldTable>>,
}

impl<'a> LazyHeaders<'a> {
    pub fn new(raw_properties: &'a Bytes) -> Self {
        LazyHeaders { raw_properties, decoded: None }
    }

    /// Properties that do not decode count as no headers: the message was
    /// accepted with them and is routed on what can be read.
    fn get(&mut self) -> Option<&FieldTable> {
        let raw = self.raw_properties;
        self.decoded.get_or_insert_with(|| BasicProperties::decode(raw).ok().and_then(|p| p.headers)).as_ref()
    }
}

impl Exchange {
    pub fn new(
        vhost: ShortStr,
        name: ShortStr,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Arc<Exchange> {
        let alternate = match arguments.get("alternate-exchange") {
            Some(FieldValue::LongStr(b)) | Some(FieldValue::Bytes(b)) if b.len() <= ShortStr::MAX_LEN => {
                Some(ShortStr::from_bytes(b.clone()))
            }
            _ => None,
        };
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(HashMap::new()),
            ExchangeKind::Fanout => Index::Fanout(Vec::new()),
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers(Vec::new()),
        };
        let bindings = Bindings { deleted: false, all: HashMap::new(), count: 0, index };
        Arc::new(Exchange {
            name,
            vhost,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate,
            bindings: RwLock::new(bindings),
        })
    }

    /// `exchange 'x' in vhost '/'`, as RabbitMQ's texts name an exchange.
    pub fn describe(&self) -> String {
        format!("exchange '{}' in vhost '{}'", self.name, self.vhost)
    }

    fn read(&self) -> RwLockReadGuard<'_, Bindings> {
        // A panic elsewhere while holding the lock leaves the bindings usable.
        self.bindings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Bindings> {
        self.bindings.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks binding arguments as this exchange's type requires (headers
    /// exchanges validate `x-match`); done before anything is changed.
    pub fn validate_binding(&self, arguments: &FieldTable) -> AmqpResult<()> {
        if self.kind == ExchangeKind::Headers {
            HeadersBinding::new(arguments.clone())?;
        }
        Ok(())
    }

    /// Adds a binding; an identical one (same destination, key and
    /// arguments) is a no-op. Fails with 404 if the exchange was deleted
    /// meanwhile, and with 406 for invalid headers arguments.
    pub fn bind(&self, destination: Destination, routing_key: ShortStr, arguments: FieldTable) -> AmqpResult<()> {
        let headers = match self.kind {
            ExchangeKind::Headers => Some(HeadersBinding::new(arguments.clone())?),
            _ => None,
        };
        // Bindings outlive the frame they came in; keep the key in a buffer
        // of its own instead of pinning the connection's read buffer.
        let routing_key = ShortStr::from_bytes(Bytes::copy_from_slice(routing_key.as_bytes()));
        let mut b = self.write();
        if b.deleted {
            return Err(AmqpError::not_found(format!("no {}", self.describe())));
        }
        let group = b.all.entry((destination.clone(), routing_key.clone())).or_default();
        if group.contains(&arguments) {
            return Ok(());
        }
        let new_group = group.is_empty();
        group.push(arguments);
        b.count += 1;
        match &mut b.index {
            Index::Direct(by_key) => {
                if new_group {
                    by_key.entry(routing_key).or_default().push(destination);
                }
            }
            Index::Fanout(all) => {
                if new_group {
                    match all.iter_mut().find(|(d, _)| *d == destination) {
                        Some((_, groups)) => *groups += 1,
                        None => all.push((destination, 1)),
                    }
                }
            }
            Index::Topic(trie) => {
                if new_group {
                    trie.insert(routing_key.as_bytes(), destination);
                }
            }
            Index::Headers(list) => {
                if let Some(h) = headers {
                    list.push((h, destination));
                }
            }
        }
        Ok(())
    }

    /// Removes one binding. Unbinding what is not bound is not an error
    /// (RabbitMQ answers `unbind-ok` too).
    pub fn unbind(&self, destination: &Destination, routing_key: &ShortStr, arguments: &FieldTable) -> Removed {
        let mut b = self.write();
        let group_key = (destination.clone(), routing_key.clone());
        let Some(group) = b.all.get_mut(&group_key) else { return Removed::default() };
        let Some(at) = group.iter().position(|a| a == arguments) else { return Removed::default() };
        group.remove(at);
        let group_gone = group.is_empty();
        if group_gone {
            b.all.remove(&group_key);
        }
        b.count -= 1;
        match &mut b.index {
            Index::Direct(by_key) if group_gone => {
                if let Some(dests) = by_key.get_mut(routing_key) {
                    dests.retain(|d| d != destination);
                    if dests.is_empty() {
                        by_key.remove(routing_key);
                    }
                }
            }
            Index::Fanout(all) if group_gone => {
                if let Some(i) = all.iter().position(|(d, _)| d == destination) {
                    all[i].1 -= 1;
                    if all[i].1 == 0 {
                        all.swap_remove(i);
                    }
                }
            }
            Index::Topic(trie) if group_gone => {
                trie.remove(routing_key.as_bytes(), destination);
            }
            Index::Headers(list) => {
                if let Some(i) = list.iter().position(|(h, d)| d == destination && h.arguments == *arguments) {
                    list.remove(i);
                }
            }
            _ => {}
        }
        self.after_removal(&mut b, 1)
    }

    /// Drops every binding to `destination` (a queue or exchange being deleted).
    pub fn unbind_destination(&self, destination: &Destination) -> Removed {
        let mut b = self.write();
        let before = b.count;
        let mut removed = 0;
        b.all.retain(|(d, _), args| {
            if d == destination {
                removed += args.len();
                false
            } else {
                true
            }
        });
        if removed == 0 {
            return Removed::default();
        }
        b.count = before - removed;
        match &mut b.index {
            Index::Direct(by_key) => by_key.retain(|_, dests| {
                dests.retain(|d| d != destination);
                !dests.is_empty()
            }),
            Index::Fanout(all) => all.retain(|(d, _)| d != destination),
            Index::Topic(trie) => {
                trie.remove_everywhere(destination);
            }
            Index::Headers(list) => list.retain(|(_, d)| d != destination),
        }
        self.after_removal(&mut b, removed)
    }

    /// An auto-delete exchange goes with its last binding (RabbitMQ counts
    /// only bindings it is the source of).
    fn after_removal(&self, b: &mut Bindings, removed: usize) -> Removed {
        let auto_deleted = self.auto_delete && b.count == 0 && !b.deleted;
        if auto_deleted {
            b.deleted = true;
        }
        Removed { bindings: removed, auto_deleted }
    }

    /// Marks the exchange deleted and drops the bindings it is the source of.
    pub fn mark_deleted(&self) {
        let mut b = self.write();
        b.deleted = true;
        b.all.clear();
        b.count = 0;
        match &mut b.index {
            Index::Direct(m) => m.clear(),
            Index::Fanout(v) => v.clear(),
            Index::Topic(t) => *t = TopicTrie::default(),
            Index::Headers(v) => v.clear(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.read().deleted
    }

    /// Whether the exchange is the source of any binding (`if-unused`).
    /// The bindings from this exchange, for inspection: destination kind
    /// (`queue` or `exchange`), destination name, routing key, arguments.
    pub fn bindings(&self) -> Vec<(&'static str, ShortStr, ShortStr, FieldTable)> {
        let b = self.bindings.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(b.count);
        for ((destination, key), tables) in &b.all {
            let (kind, name) = match destination {
                Destination::Queue(q) => ("queue", q.name.clone()),
                Destination::Exchange(x) => ("exchange", x.name.clone()),
            };
            out.extend(tables.iter().map(|t| (kind, name.clone(), key.clone(), t.clone())));
        }
        out
    }

    pub fn has_bindings(&self) -> bool {
        self.read().count > 0
    }

    /// This exchange's own matches for one message: queues go to `queues`,
    /// exchanges to `exchanges` (the caller routes through them, after this
    /// lock is released). Returns whether anything matched at all, which is
    /// what decides whether the alternate exchange is used.
    pub fn route_bindings(
        &self,
        routing_key: &ShortStr,
        headers: &mut LazyHeaders<'_>,
        queues: &mut Vec<Arc<Queue>>,
        exchanges: &mut Vec<Arc<Exchange>>,
    ) -> bool {
        let b = self.read();
        let mut matched = false;
        let mut take = |d: &Destination| {
            matched = true;
            match d {
                Destination::Queue(q) => queues.push(q.clone()),
                Destination::Exchange(x) => exchanges.push(x.clone()),
            }
        };
        match &b.index {
            Index::Direct(by_key) => {
                if let Some(dests) = by_key.get(routing_key) {
                    dests.iter().for_each(take);
                }
            }
            Index::Fanout(all) => all.iter().for_each(|(d, _)| take(d)),
            Index::Topic(trie) => trie.route(routing_key.as_bytes(), &mut take),
            Index::Headers(list) => {
                if !list.is_empty() {
                    let h = headers.get();
                    list.iter().filter(|(spec, _)| spec.matches(h)).for_each(|(_, d)| take(d));
                }
            }
        }
        matched
    }
}

/// Drops from `work[from..]` the exchanges already visited and records the
/// rest as visited, so that an exchange loop (a → b → a) ends.
pub(super) fn keep_unseen(work: &mut Vec<Arc<Exchange>>, from: usize, seen: &mut Vec<*const Exchange>) {
    let mut i = from;
    while i < work.len() {
        let p = Arc::as_ptr(&work[i]);
        if seen.contains(&p) {
            work.swap_remove(i);
        } else {
            seen.push(p);
            i += 1;
        }
    }
}

/// Removes repeated queues from `out[start..]`: a queue reached by several
/// bindings or exchanges gets the message once.
pub(super) fn dedup_queues(out: &mut Vec<Arc<Queue>>, start: usize) {
    let n = out.len() - start;
    if n < 2 {
        return;
    }
    if n <= 32 {
        let mut kept = start;
        for i in start..out.len() {
            if !out[start..kept].iter().any(|q| Arc::ptr_eq(q, &out[i])) {
                out.swap(kept, i);
                kept += 1;
            }
        }
        out.truncate(kept);
    } else {
        out[start..].sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        let mut tail = out.split_off(start);
        tail.dedup_by(|a, b| Arc::ptr_eq(a, b));
        out.append(&mut tail);
    }
}
