//! Bindings: `queue.bind` / `queue.unbind`, and RabbitMQ's exchange-to-exchange
//! extension `exchange.bind` / `exchange.unbind`.
//!
//! Checks come in RabbitMQ's order: the default exchange cannot take part in
//! any binding (403), then the source exchange must exist, then the
//! destination (404), then a queue must not be another connection's
//! exclusive queue (405); a headers exchange then validates the arguments
//! (406).

use std::sync::Arc;

use super::{Channel, Session};
use crate::broker::access::Access;
use crate::broker::exchange::{Destination, Exchange};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::{exchange, queue};
use crate::protocol::ShortStr;

fn not_default(name: &ShortStr) -> AmqpResult<()> {
    if name.is_empty() {
        return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
    }
    Ok(())
}

impl Channel {
    fn queue_binding_ends(
        &self,
        s: &Session,
        exchange: &ShortStr,
        queue: &ShortStr,
    ) -> AmqpResult<(Arc<Exchange>, Destination)> {
        not_default(exchange)?;
        // Permissions before existence, as RabbitMQ: write on the queue
        // bound, read on the exchange bound from.
        s.check(Access::Write, "queue", queue)?;
        s.check(Access::Read, "exchange", exchange)?;
        let x = s.vhost.exchange(exchange)?;
        let q = s.vhost.queue(queue)?;
        q.check_access(s.connection_id)?;
        Ok((x, Destination::Queue(q)))
    }

    fn exchange_binding_ends(
        &self,
        s: &Session,
        source: &ShortStr,
        destination: &ShortStr,
    ) -> AmqpResult<(Arc<Exchange>, Destination)> {
        not_default(destination)?;
        not_default(source)?;
        s.check(Access::Write, "exchange", destination)?;
        s.check(Access::Read, "exchange", source)?;
        let x = s.vhost.exchange(source)?;
        let d = s.vhost.exchange(destination)?;
        Ok((x, Destination::Exchange(d)))
    }

    pub(super) fn queue_bind(&mut self, s: &mut Session, m: queue::Bind) -> AmqpResult<()> {
        let qname = self.queue_name(&m.queue)?;
        let (x, q) = self.queue_binding_ends(s, &m.exchange, &qname)?;
        s.vhost.bind(&x, q, m.routing_key, m.arguments)?;
        if !m.no_wait {
            self.reply(s, queue::BindOk {});
        }
        Ok(())
    }

    pub(super) fn queue_unbind(&mut self, s: &mut Session, m: queue::Unbind) -> AmqpResult<()> {
        let qname = self.queue_name(&m.queue)?;
        let (x, q) = self.queue_binding_ends(s, &m.exchange, &qname)?;
        s.vhost.unbind(&x, &q, &m.routing_key, &m.arguments);
        self.reply(s, queue::UnbindOk {});
        Ok(())
    }

    pub(super) fn exchange_bind(&mut self, s: &mut Session, m: exchange::Bind) -> AmqpResult<()> {
        let (x, d) = self.exchange_binding_ends(s, &m.source, &m.destination)?;
        s.vhost.bind(&x, d, m.routing_key, m.arguments)?;
        if !m.no_wait {
            self.reply(s, exchange::BindOk {});
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(&mut self, s: &mut Session, m: exchange::Unbind) -> AmqpResult<()> {
        let (x, d) = self.exchange_binding_ends(s, &m.source, &m.destination)?;
        s.vhost.unbind(&x, &d, &m.routing_key, &m.arguments);
        if !m.no_wait {
            self.reply(s, exchange::UnbindOk {});
        }
        Ok(())
    }
}
