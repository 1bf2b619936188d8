//! Exchanges and their bindings: where a published message goes.
//!
//! The default exchange (`""`) has no bindings of its own: it routes to the
//! queue named by the routing key, which the virtual host looks up directly.
//! Declared exchanges keep a list of bindings behind a `RwLock`; routing only
//! reads it, and bindings change rarely.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{FieldTable, ShortStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
}

impl ExchangeKind {
    pub fn parse(kind: &ShortStr) -> AmqpResult<ExchangeKind> {
        match kind.as_bytes() {
            b"direct" => Ok(ExchangeKind::Direct),
            b"fanout" => Ok(ExchangeKind::Fanout),
            b"topic" => Ok(ExchangeKind::Topic),
            _ => Err(AmqpError::command_invalid(format!("unknown exchange type '{kind}'"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
        }
    }
}

/// A queue bound to an exchange with a routing key.
#[derive(Clone)]
pub struct Binding {
    pub queue: Arc<Queue>,
    pub routing_key: ShortStr,
    pub arguments: FieldTable,
}

pub struct Exchange {
    pub name: ShortStr,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    bindings: RwLock<Bindings>,
}

#[derive(Default)]
struct Bindings {
    all: Vec<Binding>,
    /// Direct exchanges route by exact key: index the bindings by it.
    by_key: HashMap<ShortStr, Vec<Arc<Queue>>>,
}

impl Exchange {
    pub fn new(
        name: ShortStr,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Arc<Exchange> {
        Arc::new(Exchange { name, kind, durable, auto_delete, internal, arguments, bindings: RwLock::default() })
    }

    /// Adds a binding; binding the same queue with the same key twice is a no-op.
    pub fn bind(&self, binding: Binding) {
        let mut b = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        let exists = b.all.iter().any(|x| {
            Arc::ptr_eq(&x.queue, &binding.queue)
                && x.routing_key == binding.routing_key
                && x.arguments == binding.arguments
        });
        if exists {
            return;
        }
        let queues = b.by_key.entry(binding.routing_key.clone()).or_default();
        if !queues.iter().any(|q| Arc::ptr_eq(q, &binding.queue)) {
            queues.push(binding.queue.clone());
        }
        b.all.push(binding);
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, queue: &Arc<Queue>, routing_key: &ShortStr, arguments: &FieldTable) -> bool {
        let mut b = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        let before = b.all.len();
        b.all.retain(|x| !(Arc::ptr_eq(&x.queue, queue) && x.routing_key == *routing_key && x.arguments == *arguments));
        let removed = b.all.len() != before;
        if removed {
            Self::reindex_key(&mut b, routing_key);
        }
        removed
    }

    /// Drops every binding to a deleted queue.
    pub fn unbind_queue(&self, queue: &Arc<Queue>) {
        let mut b = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        if !b.all.iter().any(|x| Arc::ptr_eq(&x.queue, queue)) {
            return;
        }
        b.all.retain(|x| !Arc::ptr_eq(&x.queue, queue));
        b.by_key.retain(|_, qs| {
            qs.retain(|q| !Arc::ptr_eq(q, queue));
            !qs.is_empty()
        });
    }

    fn reindex_key(b: &mut Bindings, key: &ShortStr) {
        let queues: Vec<Arc<Queue>> = b.all.iter().filter(|x| x.routing_key == *key).fold(Vec::new(), |mut v, x| {
            if !v.iter().any(|q| Arc::ptr_eq(q, &x.queue)) {
                v.push(x.queue.clone());
            }
            v
        });
        if queues.is_empty() {
            b.by_key.remove(key);
        } else {
            b.by_key.insert(key.clone(), queues);
        }
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().unwrap_or_else(|e| e.into_inner()).all.is_empty()
    }

    /// Appends the queues a message with `routing_key` goes to, each once.
    /// `out` is the caller's reusable buffer, so routing allocates nothing.
    pub fn route(&self, routing_key: &ShortStr, out: &mut Vec<Arc<Queue>>) {
        let b = self.bindings.read().unwrap_or_else(|e| e.into_inner());
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(queues) = b.by_key.get(routing_key) {
                    out.extend(queues.iter().cloned());
                }
            }
            ExchangeKind::Fanout => push_unique(out, b.all.iter().map(|x| &x.queue)),
            ExchangeKind::Topic => push_unique(
                out,
                b.all
                    .iter()
                    .filter(|x| topic_matches(x.routing_key.as_bytes(), routing_key.as_bytes()))
                    .map(|x| &x.queue),
            ),
        }
    }
}

fn push_unique<'a>(out: &mut Vec<Arc<Queue>>, queues: impl Iterator<Item = &'a Arc<Queue>>) {
    for q in queues {
        if !out.iter().any(|x| Arc::ptr_eq(x, q)) {
            out.push(q.clone());
        }
    }
}

/// AMQP topic matching: words are separated by `.`; `*` matches exactly one
/// word, `#` zero or more.
pub fn topic_matches(pattern: &[u8], key: &[u8]) -> bool {
    fn go(p: &[&[u8]], k: &[&[u8]]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&b"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&w, rest)) => match k.split_first() {
                Some((&kw, krest)) => (w == b"*" || w == kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&[u8]> = pattern.split(|&c| c == b'.').collect();
    let k: Vec<&[u8]> = key.split(|&c| c == b'.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches(b"a.*.c", b"a.b.c"));
        assert!(!topic_matches(b"a.*.c", b"a.c"));
        assert!(topic_matches(b"a.#", b"a"));
        assert!(topic_matches(b"a.#", b"a.b.c"));
        assert!(topic_matches(b"#", b""));
        assert!(topic_matches(b"#.c", b"a.b.c"));
        assert!(!topic_matches(b"a.b", b"a.b.c"));
    }
}
