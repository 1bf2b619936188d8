//! Class `exchange`: declaring and deleting exchanges.

use super::{Channel, Session};
use crate::broker::access::Access;
use crate::broker::declare::ExchangeSpec;
use crate::broker::exchange::ExchangeKind;
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
            s.check(Access::Configure, "exchange", &m.exchange)?;
            // RabbitMQ checks the type before looking at what exists.
            let kind = ExchangeKind::parse(&m.kind)?;
            let spec = ExchangeSpec {
                kind,
                durable: m.durable,
                auto_delete: m.auto_delete,
                internal: m.internal,
                arguments: m.arguments,
            };
            s.vhost.declare_exchange(&m.exchange, &spec)?;
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
