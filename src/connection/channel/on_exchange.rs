//! Class `exchange`: declaring and deleting exchanges.

use super::{Channel, Session};
use crate::broker::exchange::{Exchange, ExchangeKind};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::exchange;

impl Channel {
    pub(super) fn exchange_declare(&mut self, s: &mut Session, m: exchange::Declare) -> AmqpResult<()> {
        if m.exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if m.passive {
            s.vhost.exchange(&m.exchange)?;
        } else {
            let kind = ExchangeKind::parse(&m.kind)?;
            let existing = s.vhost.exchanges.get(&m.exchange).map(|x| x.clone());
            match existing {
                Some(x) => {
                    let describe = format!("exchange '{}' in vhost '{}'", m.exchange, s.vhost.name);
                    let fail = |arg: &str, new: &str, cur: &str| {
                        Err(AmqpError::precondition_failed(format!(
                            "inequivalent arg '{arg}' for {describe}: received '{new}' but current is '{cur}'"
                        )))
                    };
                    if x.kind != kind {
                        return fail("type", kind.name(), x.kind.name());
                    }
                    if x.durable != m.durable {
                        return fail("durable", &m.durable.to_string(), &x.durable.to_string());
                    }
                    if x.auto_delete != m.auto_delete {
                        return fail("auto_delete", &m.auto_delete.to_string(), &x.auto_delete.to_string());
                    }
                    if x.internal != m.internal {
                        return fail("internal", &m.internal.to_string(), &x.internal.to_string());
                    }
                }
                None => {
                    if m.exchange.starts_with(b"amq.") {
                        return Err(AmqpError::access_refused(format!(
                            "exchange name '{}' contains reserved prefix 'amq.*'",
                            m.exchange
                        )));
                    }
                    let x = Exchange::new(m.exchange.clone(), kind, m.durable, m.auto_delete, m.internal, m.arguments);
                    s.vhost.exchanges.entry(m.exchange).or_insert(x);
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
        if let Some(x) = s.vhost.exchanges.get(&m.exchange).map(|x| x.clone()) {
            if m.if_unused && x.has_bindings() {
                return Err(AmqpError::precondition_failed(format!(
                    "exchange '{}' in vhost '{}' in use",
                    m.exchange, s.vhost.name
                )));
            }
            s.vhost.exchanges.remove(&m.exchange);
        }
        if !m.no_wait {
            self.reply(s, exchange::DeleteOk {});
        }
        Ok(())
    }
}
