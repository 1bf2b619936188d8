//! `consumer_timeout`: a delivery left unacknowledged too long closes its
//! channel with 406, as RabbitMQ does, and its messages are requeued.
//!
//! Each delivery that needs an ack gets a deadline (the queue's
//! `x-consumer-timeout`, else the broker's `consumer_timeout`). Deliveries
//! are made by queues on other tasks, so the connection learns of the
//! earliest deadline through [`DeliveryDeadlines`]: an atomic minimum plus a
//! wake-up for when a nearer one appears. The connection sleeps until that
//! instant and then asks each channel what has timed out.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

const NONE: u64 = u64::MAX;

pub struct DeliveryDeadlines {
    /// Deadlines are kept as milliseconds since this instant.
    base: Instant,
    earliest_ms: AtomicU64,
    wake: Notify,
}

impl Default for DeliveryDeadlines {
    fn default() -> Self {
        DeliveryDeadlines { base: Instant::now(), earliest_ms: AtomicU64::new(NONE), wake: Notify::new() }
    }
}

impl DeliveryDeadlines {
    /// Records a deadline; wakes the connection if it is the nearest one.
    pub fn note(&self, deadline: Instant) {
        // Rounded up: a deadline kept to the millisecond must never fall due
        // before the instant it stands for.
        let ms = deadline.saturating_duration_since(self.base).as_nanos().div_ceil(1_000_000) as u64;
        // Deadlines mostly come later than the one noted: a plain load spares
        // them the read-modify-write, whose cache line the connection reads.
        if ms < self.earliest_ms.load(Ordering::Acquire) && ms < self.earliest_ms.fetch_min(ms, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// The nearest deadline noted since the last [`take`](Self::take).
    pub fn earliest(&self) -> Option<Instant> {
        match self.earliest_ms.load(Ordering::Acquire) {
            NONE => None,
            ms => Some(self.base + Duration::from_millis(ms)),
        }
    }

    /// Forgets the noted deadline; the channels note their remaining ones.
    pub fn take(&self) {
        self.earliest_ms.store(NONE, Ordering::Release);
    }

    /// Resolves when a nearer deadline has been noted.
    pub async fn nearer(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noted_deadline_never_falls_due_early() {
        let deadlines = DeliveryDeadlines::default();
        let at = deadlines.base + Duration::from_micros(200_400);
        deadlines.note(at);
        let earliest = deadlines.earliest().unwrap();
        assert!(earliest >= at && earliest - at < Duration::from_millis(1), "{:?}", earliest - at);
        deadlines.note(at + Duration::from_secs(1));
        assert_eq!(deadlines.earliest(), Some(earliest), "a later deadline does not replace a nearer one");
        deadlines.take();
        assert_eq!(deadlines.earliest(), None);
    }
}
