//! A queue's consumers: adding, cancelling, prefetch, and what the
//! management API shows of them. Delivery to them is `dispatch_locked`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Cancelled, ChannelKey, Consumer, ConsumerInfo, Queue};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::ShortStr;

impl Queue {
    /// Adds a consumer; returns 403 if an exclusive consumer is in the way.
    /// `on_added` runs before the first delivery can be made, under the
    /// queue's lock: that is where `basic.consume-ok` is queued, so it always
    /// reaches the client ahead of the consumer's first `basic.deliver`.
    pub fn consume(self: &Arc<Self>, consumer: Consumer, on_added: impl FnOnce()) -> AmqpResult<()> {
        let now = Instant::now();
        self.with_state(|st, dead| {
            if st.consumers.iter().any(|c| c.exclusive) || (consumer.exclusive && !st.consumers.is_empty()) {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost_name
                )));
            }
            st.consumers.push(consumer);
            st.last_used = now;
            on_added();
            self.dispatch_locked(st, now, dead);
            Ok(())
        })
    }

    fn remove_consumers(self: &Arc<Self>, keep: impl Fn(&Consumer) -> bool) -> Cancelled {
        let now = Instant::now();
        let cancelled = self.with_state(|st, dead| {
            let before = st.consumers.len();
            st.consumers.retain(keep);
            let found = st.consumers.len() != before;
            if found {
                st.last_used = now;
                // With a single active consumer, the next one may take over.
                self.dispatch_locked(st, now, dead);
            }
            Cancelled { found, delete_queue: found && self.options.auto_delete && st.consumers.is_empty() }
        });
        if self.args.expires.is_some() {
            self.timer_wake.notify_one();
        }
        cancelled
    }

    /// Changes a consumer's prefetch (`basic.qos` at run time) and delivers
    /// what a larger limit now allows.
    pub fn set_prefetch(self: &Arc<Self>, channel: ChannelKey, tag: &ShortStr, prefetch_count: u32) {
        let now = Instant::now();
        self.with_state(|st, dead| {
            if let Some(c) = st.consumers.iter_mut().find(|c| c.channel == channel && c.tag == *tag) {
                c.prefetch_count = prefetch_count;
            }
            self.dispatch_locked(st, now, dead);
        });
    }

    /// Removes one consumer (`basic.cancel`).
    pub fn cancel(self: &Arc<Self>, channel: ChannelKey, tag: &ShortStr) -> Cancelled {
        self.remove_consumers(|c| !(c.channel == channel && c.tag == *tag))
    }

    /// Removes every consumer of a closing channel.
    pub fn cancel_channel(self: &Arc<Self>, channel: ChannelKey) -> Cancelled {
        self.remove_consumers(|c| c.channel != channel)
    }

    /// The consumers, for inspection: tag, channel, prefetch, unacked,
    /// whether they acknowledge, their priority.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        self.lock()
            .consumers
            .iter()
            .map(|c| ConsumerInfo {
                tag: c.tag.clone(),
                channel: c.channel,
                prefetch_count: c.prefetch_count,
                unacked: c.unacked,
                ack_required: !c.no_ack,
                exclusive: c.exclusive,
                priority: c.priority,
            })
            .collect()
    }

    /// The consumer timeout for deliveries from this queue, if any.
    pub fn consumer_timeout(&self, broker_default: Option<Duration>) -> Option<Duration> {
        self.args.consumer_timeout.or(broker_default)
    }
}
