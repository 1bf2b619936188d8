//! The per-queue timer: expires messages at their TTL and deletes the queue
//! when `x-expires` says it has been unused long enough.
//!
//! One small task per queue that needs it, sleeping until the nearest
//! deadline. It holds the queue only weakly, so it never keeps a deleted
//! queue alive, and ends when the queue is deleted or dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::time::{sleep_until, Instant};

use super::dead_letter::{DeadLetter, Reason};
use super::Queue;

impl Queue {
    /// Starts the timer task once (only inside a tokio runtime; outside one,
    /// expiry still happens lazily when messages are looked at).
    pub(super) fn start_timer(self: &Arc<Self>) {
        if self.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(Arc::downgrade(self)));
        }
    }

    /// The nearest deadline: the first message to expire, or the moment the
    /// unused queue expires. None while there is nothing to wait for.
    fn next_deadline(&self) -> Option<Instant> {
        let st = self.lock();
        if st.deleted {
            return None;
        }
        let unused_until = match self.args.expires {
            Some(expires) if st.consumers.is_empty() => Some(st.last_used + expires),
            _ => None,
        };
        [st.ready.next_expiry(), unused_until].into_iter().flatten().min()
    }

    /// Does what is due at `now`; returns false once the queue is gone.
    fn on_timer(self: &Arc<Self>, now: Instant) -> bool {
        let expired_queue = self.with_state(|st, dead| {
            if st.deleted {
                return false;
            }
            let mut expired = Vec::new();
            st.ready.take_expired(now, &mut expired);
            dead.extend(expired.into_iter().map(|m| DeadLetter::of(m, Reason::Expired)));
            self.args.expires.is_some_and(|e| st.consumers.is_empty() && now >= st.last_used + e)
        });
        if expired_queue {
            if let Some(vhost) = self.vhost.upgrade() {
                tracing::debug!("deleting {} after x-expires", crate::logging::Escaped(&self.describe()));
                vhost.delete_queue(self);
            }
            return false;
        }
        !self.is_deleted()
    }
}

impl Drop for Queue {
    /// A queue can go without being deleted (its broker dropped, as an
    /// embedded broker is at the end of a test): wake its timer so that the
    /// task finds the queue gone and ends instead of sleeping on forever.
    fn drop(&mut self) {
        self.timer_wake.notify_one();
    }
}

async fn run(queue: Weak<Queue>) {
    loop {
        let (deadline, wake) = match queue.upgrade() {
            Some(q) if !q.is_deleted() => (q.next_deadline(), q.timer_wake.clone()),
            _ => return,
        };
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = sleep_until(at) => {}
                    _ = wake.notified() => continue,
                }
            }
            None => wake.notified().await,
        }
        let Some(q) = queue.upgrade() else { return };
        if !q.on_timer(Instant::now()) {
            return;
        }
    }
}
