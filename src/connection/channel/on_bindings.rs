//! Bindings: `queue.bind` / `queue.unbind` (and, later, exchange-to-exchange
//! `exchange.bind` / `exchange.unbind`).

use std::sync::Arc;

use super::{Channel, Session};
use crate::broker::exchange::{Binding, Exchange};
use crate::broker::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::queue;
use crate::protocol::ShortStr;

impl Channel {
    pub(super) fn binding_ends(
        &self,
        s: &Session,
        exchange: &ShortStr,
        queue: &ShortStr,
    ) -> AmqpResult<(Arc<Exchange>, Arc<Queue>)> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let x = s.vhost.exchange(exchange)?;
        let q = s.vhost.queue(queue)?;
        q.check_access(s.connection_id)?;
        Ok((x, q))
    }

    pub(super) fn queue_bind(&mut self, s: &mut Session, m: queue::Bind) -> AmqpResult<()> {
        let qname = self.queue_name(&m.queue)?;
        let (x, q) = self.binding_ends(s, &m.exchange, &qname)?;
        x.bind(Binding { queue: q, routing_key: m.routing_key, arguments: m.arguments });
        if !m.no_wait {
            self.reply(s, queue::BindOk {});
        }
        Ok(())
    }

    pub(super) fn queue_unbind(&mut self, s: &mut Session, m: queue::Unbind) -> AmqpResult<()> {
        let qname = self.queue_name(&m.queue)?;
        let (x, q) = self.binding_ends(s, &m.exchange, &qname)?;
        x.unbind(&q, &m.routing_key, &m.arguments);
        self.reply(s, queue::UnbindOk {});
        Ok(())
    }
}
