//! Resource alarms and memory accounting: what makes the broker block
//! publishers, as RabbitMQ's memory high watermark does.
//!
//! Every message the broker holds is charged to an account when it is
//! created and credited back when its last reference goes (a [`Charge`]
//! inside the message). The charge is the body and properties plus an
//! estimate of the bookkeeping around them. When the account reaches the
//! high watermark the memory alarm goes on; it goes off again once the
//! account has drained below 90 % of the watermark, so that a queue hovering
//! at the limit does not make publishers flap between blocked and unblocked.
//!
//! Alarms can also be raised and cleared by hand (embedded tests, the
//! binary's SIGUSR1/SIGUSR2), for either resource RabbitMQ knows: memory and
//! disk. Connections watch the [`AlarmSet`] and block their publishers while
//! any alarm is on (see `connection::flow`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Bytes charged per message on top of body and properties: the message
/// and queue entry structs and the frame headers that share its buffer.
pub const MESSAGE_OVERHEAD: usize = 256;

/// The alarm goes off below this share of the watermark.
const CLEAR_RATIO: f64 = 0.9;

/// A resource RabbitMQ raises alarms for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Memory,
    Disk,
}

/// Which alarms are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmSet {
    pub memory: bool,
    pub disk: bool,
}

impl AlarmSet {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason RabbitMQ gives in `connection.blocked`.
    pub fn reason(self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory & disk",
            (false, true) => "low on disk",
            _ => "low on memory",
        }
    }
}

pub struct Alarms {
    state: watch::Sender<AlarmSet>,
    /// Bytes charged for the messages alive now.
    held: AtomicUsize,
    /// The memory high watermark in bytes; None: no limit.
    watermark: Option<usize>,
    /// The memory alarm raised by the watermark (kept apart from a manual one).
    watermark_alarm: AtomicBool,
    /// Alarms raised by hand.
    manual: Mutex<AlarmSet>,
}

impl Alarms {
    pub fn new(watermark: Option<usize>) -> Arc<Alarms> {
        // A watermark of 0 blocks every publisher from the start, as in RabbitMQ.
        let on = watermark == Some(0);
        Arc::new(Alarms {
            state: watch::Sender::new(AlarmSet { memory: on, disk: false }),
            held: AtomicUsize::new(0),
            watermark,
            watermark_alarm: AtomicBool::new(on),
            manual: Mutex::new(AlarmSet::default()),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<AlarmSet> {
        self.state.subscribe()
    }

    pub fn current(&self) -> AlarmSet {
        *self.state.borrow()
    }

    /// Bytes held by the broker's messages now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn watermark(&self) -> Option<usize> {
        self.watermark
    }

    /// Charges a new message's bytes; the returned charge gives them back
    /// when dropped.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let held = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(limit) = self.watermark {
            if held >= limit && !self.watermark_alarm.swap(true, Ordering::AcqRel) {
                tracing::warn!("memory resource limit alarm set: {held} bytes held, high watermark {limit} bytes");
                self.publish();
            }
        }
        Charge { alarms: self.clone(), bytes }
    }

    fn credit(&self, bytes: usize) {
        let held = self.held.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        if let Some(limit) = self.watermark {
            if (held as f64) < limit as f64 * CLEAR_RATIO && self.watermark_alarm.swap(false, Ordering::AcqRel) {
                tracing::warn!("memory resource limit alarm cleared: {held} bytes held");
                self.publish();
            }
        }
    }

    /// Raises an alarm by hand, as if the resource had run low.
    pub fn raise(&self, resource: Resource) {
        self.set_manual(resource, true);
    }

    /// Clears an alarm raised by hand (a watermark alarm stays while memory is high).
    pub fn clear(&self, resource: Resource) {
        self.set_manual(resource, false);
    }

    fn set_manual(&self, resource: Resource, on: bool) {
        {
            let mut manual = self.manual.lock().unwrap_or_else(|e| e.into_inner());
            match resource {
                Resource::Memory => manual.memory = on,
                Resource::Disk => manual.disk = on,
            }
        }
        self.publish();
    }

    /// Recomputes the alarm set and tells the watchers if it changed.
    fn publish(&self) {
        let manual = *self.manual.lock().unwrap_or_else(|e| e.into_inner());
        let set = AlarmSet { memory: manual.memory || self.watermark_alarm.load(Ordering::Acquire), disk: manual.disk };
        self.state.send_if_modified(|current| {
            let changed = *current != set;
            *current = set;
            changed
        });
    }
}

/// Bytes charged for one message, given back when the message goes.
pub struct Charge {
    alarms: Arc<Alarms>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.alarms.credit(self.bytes);
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({})", self.bytes)
    }
}

/// The machine's total memory, for `vm_memory_high_watermark.relative`.
pub fn total_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_raises_and_clears_with_hysteresis() {
        let alarms = Alarms::new(Some(1000));
        let a = alarms.charge(900);
        assert!(!alarms.current().memory);
        let b = alarms.charge(100);
        assert!(alarms.current().memory, "1000 held: at the watermark");
        assert_eq!(alarms.current().reason(), "low on memory");
        let c = alarms.charge(50);
        drop(b); // 950 held: below the watermark but above 90 % of it
        assert!(alarms.current().memory);
        drop(c); // 900 held: not below 90 %
        assert!(alarms.current().memory);
        drop(a); // 0 held
        assert!(!alarms.current().memory);
        assert_eq!(alarms.held(), 0);
    }

    #[test]
    fn manual_alarms_combine_with_the_watermark() {
        let alarms = Alarms::new(None);
        let mut rx = alarms.subscribe();
        alarms.raise(Resource::Disk);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().reason(), "low on disk");
        alarms.raise(Resource::Memory);
        assert_eq!(alarms.current().reason(), "low on memory & disk");
        alarms.clear(Resource::Disk);
        alarms.clear(Resource::Memory);
        assert!(!alarms.current().any());
    }
}
