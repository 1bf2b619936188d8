//! Class `exchange`: declaring and deleting exchanges.

use super::{Channel, Session};
use crate::broker::access::Access;
use crate::broker::exchange::{Exchange, ExchangeKind};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::exchange;
use crate::protocol::{FieldTable, FieldValue};

impl Channel {
    pub(super) fn exchange_declare(&mut self, s: &mut Session, m: exchange::Declare) -> AmqpResult<()> {
        if m.exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if m.passive {
            s.vhost.exchange(&m.exchange)?;
        } else {
            s.check(Access::Configure, "exchange", &m.exchange)?;
            // RabbitMQ checks the type before looking at what exists.
            let kind = ExchangeKind::parse(&m.kind)?;
            match s.vhost.exchanges.get(&m.exchange).map(|x| x.clone()) {
                Some(x) => check_equivalent(&x, kind, &m)?,
                None => {
                    if m.exchange.starts_with(b"amq.") {
                        return Err(AmqpError::access_refused(format!(
                            "exchange name '{}' contains reserved prefix 'amq.*'",
                            m.exchange
                        )));
                    }
                    let x = Exchange::new(
                        s.vhost.name.clone(),
                        m.exchange.clone(),
                        kind,
                        m.durable,
                        m.auto_delete,
                        m.internal,
                        m.arguments.clone(),
                    );
                    // Two channels may declare the same name at once: the
                    // first one in wins, the other is checked against it.
                    let existing = s.vhost.exchanges.entry(m.exchange.clone()).or_insert(x).clone();
                    check_equivalent(&existing, kind, &m)?;
                }
            }
        }
        if !m.no_wait {
            self.reply(s, exchange::DeclareOk {});
        }
        Ok(())
    }

    pub(super) fn exchange_delete(&mut self, s: &mut Session, m: exchange::Delete) -> AmqpResult<()> {
        if m.exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if m.exchange.starts_with(b"amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{}' in vhost '{}' not allowed",
                m.exchange, s.vhost.name
            )));
        }
        s.check(Access::Configure, "exchange", &m.exchange)?;
        // Deleting a missing exchange succeeds, as in RabbitMQ.
        if let Some(x) = s.vhost.exchanges.get(&m.exchange).map(|x| x.clone()) {
            if m.if_unused && x.has_bindings() {
                return Err(AmqpError::precondition_failed(format!("{} in use", x.describe())));
            }
            s.vhost.delete_exchange(&x);
        }
        if !m.no_wait {
            self.reply(s, exchange::DeleteOk {});
        }
        Ok(())
    }
}

/// RabbitMQ's redeclare checks, in its order: type, durable, auto_delete,
/// internal, then the `alternate-exchange` argument (the only argument it
/// compares for exchanges).
fn check_equivalent(x: &Exchange, kind: ExchangeKind, m: &exchange::Declare) -> AmqpResult<()> {
    let fail = |arg: &str, received: String, current: String| {
        Err(AmqpError::precondition_failed(format!(
            "inequivalent arg '{arg}' for {}: received {received} but current is {current}",
            x.describe()
        )))
    };
    let quoted = |v: &dyn std::fmt::Display| format!("'{v}'");
    if x.kind != kind {
        return fail("type", quoted(&kind.name()), quoted(&x.kind.name()));
    }
    if x.durable != m.durable {
        return fail("durable", quoted(&m.durable), quoted(&x.durable));
    }
    if x.auto_delete != m.auto_delete {
        return fail("auto_delete", quoted(&m.auto_delete), quoted(&x.auto_delete));
    }
    if x.internal != m.internal {
        return fail("internal", quoted(&m.internal), quoted(&x.internal));
    }
    let (cur, new) = (alternate(&x.arguments), alternate(&m.arguments));
    if cur != new {
        let describe = |v: Option<&FieldValue>| match v {
            None => "none".to_string(),
            Some(v) => match v.as_bytes() {
                Some(b) if cur.is_some() && new.is_some() => format!("'{}'", String::from_utf8_lossy(b)),
                Some(b) => format!(
                    "the value '{}' of type '{}'",
                    String::from_utf8_lossy(b),
                    if matches!(v, FieldValue::Bytes(_)) { "binary" } else { "longstr" }
                ),
                None => format!("'{v:?}'"),
            },
        };
        return fail("alternate-exchange", describe(new), describe(cur));
    }
    Ok(())
}

fn alternate(arguments: &FieldTable) -> Option<&FieldValue> {
    arguments.get("alternate-exchange")
}
