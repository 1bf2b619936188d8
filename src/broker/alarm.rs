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
//! # What memory is watched
//!
//! The account counts what warren's messages hold, and reacts at once, at
//! every publish. But a process holds more than its messages: connection
//! buffers, queues, bindings, allocator fragmentation. If the alarm watched
//! only the account, a client could make the process grow far past the
//! watermark while the alarm stayed off. So, as RabbitMQ does
//! (`vm_memory_calculation_strategy`), a monitor also samples what the
//! process really holds, every `memory_monitor_interval`, and the alarm
//! compares the larger of the two with the watermark:
//!
//! - `rss` (the binary's default, RabbitMQ's too): resident memory, from
//!   `/proc/self/statm`;
//! - `allocated`: bytes the allocator has handed out (glibc's
//!   `mallinfo2`), which ignores memory freed but not yet returned;
//! - `legacy`: the account alone. This is the embedded broker's default:
//!   many embedded brokers and their test share one process, and each
//!   should see only its own messages.
//!
//! Memory freed by the allocator is not always returned to the operating
//! system, and resident memory that stays high after a queue is drained
//! would keep publishers blocked for nothing. So when the process holds
//! much more than the account explains, the monitor asks glibc to give free
//! memory back (`malloc_trim`) before it samples.
//!
//! Alarms can also be raised and cleared by hand (embedded tests, the
//! binary's SIGUSR1/SIGUSR2), for either resource RabbitMQ knows: memory and
//! disk. Connections watch the [`AlarmSet`] and block their publishers while
//! any alarm is on (see `connection::throttle`).

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

/// How the process's memory is measured (`vm_memory_calculation_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryStrategy {
    /// Resident set size.
    Rss,
    /// Bytes in use by the allocator.
    Allocated,
    /// warren's own account of its messages only.
    Legacy,
}

impl MemoryStrategy {
    pub fn parse(text: &str) -> Option<MemoryStrategy> {
        match text {
            "rss" => Some(MemoryStrategy::Rss),
            "allocated" => Some(MemoryStrategy::Allocated),
            // RabbitMQ's `erlang` is its VM's own accounting: the same idea.
            "legacy" | "erlang" => Some(MemoryStrategy::Legacy),
            _ => None,
        }
    }

    /// The process's memory now, as this strategy measures it (None for
    /// `legacy`, or where it cannot be read).
    pub fn sample(self) -> Option<usize> {
        match self {
            MemoryStrategy::Rss => resident_memory(),
            MemoryStrategy::Allocated => allocated_memory().or_else(resident_memory),
            MemoryStrategy::Legacy => None,
        }
    }
}

pub struct Alarms {
    state: watch::Sender<AlarmSet>,
    /// Bytes charged for the messages alive now.
    held: AtomicUsize,
    /// The process's memory as the monitor last sampled it (0: not sampled).
    sampled: AtomicUsize,
    /// The memory high watermark in bytes; None: no limit.
    watermark: Option<usize>,
    /// The memory alarm raised by the watermark (kept apart from a manual one).
    watermark_alarm: AtomicBool,
    /// Set by the disk monitor (see `disk`) while free space is below
    /// `disk_free_limit`.
    disk_alarm: AtomicBool,
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
            sampled: AtomicUsize::new(0),
            watermark,
            watermark_alarm: AtomicBool::new(on),
            disk_alarm: AtomicBool::new(false),
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

    /// The process's memory as last sampled (0 with the `legacy` strategy).
    pub fn sampled(&self) -> usize {
        self.sampled.load(Ordering::Relaxed)
    }

    /// Charges a new message's bytes; the returned charge gives them back
    /// when dropped.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.held.fetch_add(bytes, Ordering::Relaxed);
        self.check_set();
        Charge { alarms: self.clone(), bytes }
    }

    fn credit(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.check_clear();
    }

    /// The memory the watermark is compared with: the larger of the account
    /// and the process's last sample.
    fn level(&self) -> usize {
        self.held().max(self.sampled())
    }

    fn check_set(&self) {
        let Some(limit) = self.watermark else { return };
        let level = self.level();
        if level >= limit && !self.watermark_alarm.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "memory resource limit alarm set: {level} bytes used ({} held by messages), high watermark {limit} bytes",
                self.held()
            );
            self.publish();
        }
    }

    fn check_clear(&self) {
        let Some(limit) = self.watermark else { return };
        let level = self.level();
        if (level as f64) < limit as f64 * CLEAR_RATIO && self.watermark_alarm.swap(false, Ordering::AcqRel) {
            tracing::warn!("memory resource limit alarm cleared: {level} bytes used");
            self.publish();
        }
    }

    /// Records a sample of the process's memory and re-evaluates the alarm.
    pub fn record_sample(&self, bytes: usize) {
        self.sampled.store(bytes, Ordering::Relaxed);
        self.check_set();
        self.check_clear();
    }

    /// Whether the process holds so much more than the account explains
    /// (above the level at which the alarm clears) that free memory should
    /// be given back to the system before the next sample.
    fn should_trim(&self) -> bool {
        let Some(limit) = self.watermark else { return false };
        let clear = (limit as f64 * CLEAR_RATIO) as usize;
        self.sampled() >= clear && self.held() < clear
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

    /// The disk monitor's verdict: free space is below the limit, or not.
    /// True when that changed.
    pub fn set_disk_low(&self, low: bool) -> bool {
        let changed = self.disk_alarm.swap(low, Ordering::AcqRel) != low;
        if changed {
            self.publish();
        }
        changed
    }

    /// Recomputes the alarm set and tells the watchers if it changed.
    fn publish(&self) {
        let manual = *self.manual.lock().unwrap_or_else(|e| e.into_inner());
        let set = AlarmSet {
            memory: manual.memory || self.watermark_alarm.load(Ordering::Acquire),
            disk: manual.disk || self.disk_alarm.load(Ordering::Acquire),
        };
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

/// Samples the process's memory every `interval` with `strategy` until
/// `stop` turns true, keeping the alarm up to date (see the module docs).
pub async fn run_monitor(
    alarms: Arc<Alarms>,
    strategy: MemoryStrategy,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    if strategy == MemoryStrategy::Legacy || alarms.watermark.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if alarms.should_trim() {
            give_back_free_memory();
        }
        if let Some(bytes) = strategy.sample() {
            alarms.record_sample(bytes);
        }
    }
}

/// Resident memory of this process.
pub fn resident_memory() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // statm counts pages, whose size varies (4 KiB, 16 KiB or 64 KiB on arm64).
    Some(pages * page_size())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn page_size() -> usize {
    4096
}

/// Bytes the allocator has handed out and not had back (glibc only).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn allocated_memory() -> Option<usize> {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks + info.hblkhd)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn allocated_memory() -> Option<usize> {
    None
}

/// Asks glibc to return free memory to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_free_memory() {
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_free_memory() {}

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
    fn the_process_sample_counts_as_much_as_the_account() {
        let alarms = Alarms::new(Some(1000));
        let _small = alarms.charge(10);
        alarms.record_sample(1200);
        assert!(alarms.current().memory, "the process holds more than the watermark");
        assert!(alarms.should_trim(), "far more than the account explains");
        alarms.record_sample(950);
        assert!(alarms.current().memory, "not below 90 %");
        alarms.record_sample(100);
        assert!(!alarms.current().memory);
        assert!(!alarms.should_trim());
    }

    #[test]
    fn memory_can_be_sampled_here() {
        let rss = MemoryStrategy::Rss.sample().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert!(MemoryStrategy::Allocated.sample().unwrap() > 0);
        assert_eq!(MemoryStrategy::Legacy.sample(), None);
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
