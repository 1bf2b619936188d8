//! Class `tx`: transactions over publishes and acknowledgements.
//!
//! After `tx.select`, publishes and acks/nacks/rejects on the channel are
//! held back; `tx.commit` applies them in order, `tx.rollback` drops the
//! publishes and gives the acknowledged deliveries back to the channel's
//! unacknowledged list, as RabbitMQ does. A channel is either
//! transactional or in confirm mode, never both.

use std::sync::Arc;

use super::{Channel, Outcome, Session, Settled};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::methods::tx;

/// A publish routed when it arrived, waiting for `tx.commit`.
pub(super) struct Routed {
    pub message: Arc<Message>,
    pub queues: Vec<Arc<Queue>>,
    pub mandatory: bool,
}

/// What a transaction holds until it is committed.
#[derive(Default)]
pub(super) struct Transaction {
    pub publishes: Vec<Routed>,
    pub settles: Vec<(Settled, Outcome)>,
}

impl Channel {
    pub(super) fn tx_select(&mut self, s: &mut Session) -> AmqpResult<()> {
        if self.confirm_seq.is_some() {
            return Err(AmqpError::precondition_failed("cannot switch from confirm to tx mode"));
        }
        self.tx.get_or_insert_with(Transaction::default);
        self.reply(s, tx::SelectOk {});
        Ok(())
    }

    fn transaction(&mut self) -> AmqpResult<Transaction> {
        match &mut self.tx {
            Some(t) => Ok(std::mem::take(t)),
            None => Err(AmqpError::precondition_failed("channel is not transactional")),
        }
    }

    pub(super) fn tx_commit(&mut self, s: &mut Session) -> AmqpResult<()> {
        let t = self.transaction()?;
        for p in t.publishes {
            self.enqueue(s, &p.message, &p.queues, p.mandatory);
        }
        for (settled, outcome) in t.settles {
            self.settle(settled, outcome);
        }
        self.reply(s, tx::CommitOk {});
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, s: &mut Session) -> AmqpResult<()> {
        let t = self.transaction()?;
        self.unsettle(t.settles);
        self.reply(s, tx::RollbackOk {});
        Ok(())
    }

    /// Puts deliveries whose acknowledgement was not committed back on the
    /// unacknowledged list, in delivery-tag order.
    pub(super) fn unsettle(&self, settles: Vec<(Settled, Outcome)>) {
        let mut d = self.shared.lock();
        for (settled, _) in settles {
            let list = match settled {
                Settled::One(u) => vec![u],
                Settled::Many(v) => v,
            };
            for u in list {
                let at = d.unacked.partition_point(|x| x.delivery_tag < u.delivery_tag);
                d.unacked.insert(at, u);
            }
        }
    }
}
