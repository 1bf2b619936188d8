//! A durable queue's journal on disk (see `crate::store`): what a queue
//! tells it, and putting back what it recovered. Nothing here runs without
//! a data directory, or for a queue that is not durable.

use std::sync::Arc;

use tokio::time::Instant;

use super::Queue;
use crate::broker::message::{Message, QueuedMessage};
use crate::protocol::properties::{message_expiration, message_priority};
use crate::store::Journal;

impl Queue {
    /// A delivery of a stored message: gone for good without an ack to
    /// wait for, otherwise marked delivered (it comes back `redelivered`
    /// if the broker stops before the ack).
    pub(super) fn journal_delivery(&self, seq: u64, no_ack: bool) {
        if let Some(journal) = self.journal.get() {
            match no_ack {
                true => journal.removed(seq),
                false => journal.delivered(seq),
            }
        }
    }

    /// Gives the queue its journal, once it is declared (see
    /// `VirtualHost::declare_queue`).
    pub fn attach_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    pub fn is_journaled(&self) -> bool {
        self.journal.get().is_some()
    }

    /// Puts back messages read from the journal at start-up, in order.
    /// They are on disk already: nothing is written.
    pub fn restore(&self, messages: impl IntoIterator<Item = (u64, bool, Arc<Message>)>) {
        let now = Instant::now();
        let mut st = self.lock();
        for (seq, redelivered, message) in messages {
            let priority = match self.args.max_priority {
                Some(_) => st.ready.level_for(message_priority(&message.properties).unwrap_or(0)),
                None => 0,
            };
            let ttl = match (self.args.message_ttl, message_expiration(&message.properties)) {
                (Some(q), Some(m)) => Some(q.min(m)),
                (q, m) => q.or(m),
            };
            let expires_at = ttl.map(|t| now + t);
            st.next_seq = st.next_seq.max(seq + 1);
            st.ready.push_back(QueuedMessage { seq, redelivered, expires_at, priority, message, stored: true });
        }
        drop(st);
        self.timer_wake.notify_one();
    }

    /// Drops the ready messages that are not persistent (what a restart
    /// does to a durable queue); returns how many went.
    pub fn drop_transient(&self) -> usize {
        self.lock().ready.retain(|m| m.message.is_persistent())
    }
}
