//! Declaring queues and exchanges, for AMQP (`queue.declare`,
//! `exchange.declare`) and the HTTP API (`PUT /api/queues/…`) alike: create
//! what is missing, or check that what is there is equivalent, with
//! RabbitMQ's checks, in its order, and its texts.

use std::sync::Arc;

use super::exchange::{Exchange, ExchangeKind};
use super::queue::args::QueueArgs;
use super::queue::{Queue, QueueOptions};
use super::VirtualHost;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{FieldTable, FieldValue, ShortStr};

/// What an exchange is declared with.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

impl VirtualHost {
    /// Declares a queue named `name` (already checked: not empty, not
    /// `amq.*` unless it exists) for `connection` (the HTTP API passes
    /// [`super::connections::NO_CONNECTION`]). Returns the queue and whether
    /// this call created it.
    pub fn declare_queue(
        self: &Arc<Self>,
        name: ShortStr,
        options: QueueOptions,
        connection: u64,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        let describe = format!("queue '{}' in vhost '{}'", name, self.name);
        let args = QueueArgs::parse(&options.arguments, &describe)?;
        if let Some(q) = self.queues.get(&name).map(|q| q.clone()) {
            check_queue_equivalent(&q, &options, connection)?;
            return Ok((q, false));
        }
        let created = Queue::new(self, name.clone(), options, args);
        // Two connections may race to declare the same name: the entry API
        // makes exactly one of them the creator.
        let q = self.queues.entry(name).or_insert_with(|| created.clone()).clone();
        if !Arc::ptr_eq(&q, &created) {
            check_queue_equivalent(&q, &created.options, connection)?;
            return Ok((q, false));
        }
        self.queue_created(&q);
        Ok((q, true))
    }

    /// Declares an exchange named `name` (not empty). Returns it and whether
    /// this call created it.
    pub fn declare_exchange(&self, name: &ShortStr, spec: &ExchangeSpec) -> AmqpResult<(Arc<Exchange>, bool)> {
        if let Some(x) = self.exchanges.get(name).map(|x| x.clone()) {
            check_exchange_equivalent(&x, spec)?;
            return Ok((x, false));
        }
        if name.starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!("exchange name '{name}' contains reserved prefix 'amq.*'")));
        }
        let created = Exchange::new(
            self.name.clone(),
            name.clone(),
            spec.kind,
            spec.durable,
            spec.auto_delete,
            spec.internal,
            spec.arguments.clone(),
        );
        // Two channels may declare the same name at once: the first one in
        // wins, the other is checked against it.
        let x = self.exchanges.entry(name.clone()).or_insert_with(|| created.clone()).clone();
        if !Arc::ptr_eq(&x, &created) {
            check_exchange_equivalent(&x, spec)?;
            return Ok((x, false));
        }
        self.exchange_created(&x);
        Ok((x, true))
    }
}

/// RabbitMQ's queue redeclare checks, in its order: exclusivity (strict),
/// then durable, auto_delete and arguments.
fn check_queue_equivalent(q: &Queue, new: &QueueOptions, connection: u64) -> AmqpResult<()> {
    let cur = &q.options;
    if cur.exclusive_owner != new.exclusive_owner {
        q.check_access(connection)?;
        // Same connection, but the exclusive flag differs.
        return Err(AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.describe()
        )));
    }
    let fail = |arg: &str, received: String, current: String| inequivalent(&q.describe(), arg, received, current);
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

/// RabbitMQ's exchange redeclare checks, in its order: type, durable,
/// auto_delete, internal, then the `alternate-exchange` argument (the only
/// argument it compares for exchanges).
fn check_exchange_equivalent(x: &Exchange, new: &ExchangeSpec) -> AmqpResult<()> {
    let fail = |arg: &str, received: String, current: String| inequivalent(&x.describe(), arg, received, current);
    let quoted = |v: &dyn std::fmt::Display| format!("'{v}'");
    if x.kind != new.kind {
        return fail("type", quoted(&new.kind.name()), quoted(&x.kind.name()));
    }
    if x.durable != new.durable {
        return fail("durable", quoted(&new.durable), quoted(&x.durable));
    }
    if x.auto_delete != new.auto_delete {
        return fail("auto_delete", quoted(&new.auto_delete), quoted(&x.auto_delete));
    }
    if x.internal != new.internal {
        return fail("internal", quoted(&new.internal), quoted(&x.internal));
    }
    let (cur, received) = (x.arguments.get("alternate-exchange"), new.arguments.get("alternate-exchange"));
    if cur != received {
        let describe = |v: Option<&FieldValue>| match v {
            None => "none".to_string(),
            Some(v) => match v.as_bytes() {
                Some(b) if cur.is_some() && received.is_some() => format!("'{}'", String::from_utf8_lossy(b)),
                Some(b) => format!(
                    "the value '{}' of type '{}'",
                    String::from_utf8_lossy(b),
                    if matches!(v, FieldValue::Bytes(_)) { "binary" } else { "longstr" }
                ),
                None => format!("'{v:?}'"),
            },
        };
        return fail("alternate-exchange", describe(received), describe(cur));
    }
    Ok(())
}

fn inequivalent<T>(what: &str, arg: &str, received: String, current: String) -> AmqpResult<T> {
    Err(AmqpError::precondition_failed(format!(
        "inequivalent arg '{arg}' for {what}: received {received} but current is {current}"
    )))
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
