//! The disk alarm: with a data directory, free space on its file system is
//! checked every second against `disk_free_limit`; below it, publishers
//! are blocked exactly as under the memory alarm (and their heartbeat
//! monitors paused), so that a filling disk stops the writes before it is
//! full instead of failing them. Without a data directory warren writes
//! nothing, and nothing is checked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use super::alarm::Alarms;

/// `disk_free_limit`: RabbitMQ's default is 50 MB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskLimit {
    /// `disk_free_limit.absolute`, in bytes.
    Absolute(u64),
    /// `disk_free_limit.relative`: a multiple of the machine's memory.
    Relative(f64),
}

impl Default for DiskLimit {
    fn default() -> Self {
        DiskLimit::Absolute(50_000_000)
    }
}

impl DiskLimit {
    pub fn bytes(self) -> u64 {
        match self {
            DiskLimit::Absolute(b) => b,
            DiskLimit::Relative(r) => (crate::broker::alarm::total_memory().unwrap_or(0) as f64 * r) as u64,
        }
    }
}

/// Free bytes for an unprivileged writer on the file system holding `dir`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a valid C string; `stat` is written by statvfs.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn free_bytes(_dir: &std::path::Path) -> Option<u64> {
    None
}

/// Checks the free space under `dir` every second until `stop`.
pub async fn run_monitor(alarms: Arc<Alarms>, dir: PathBuf, limit: DiskLimit, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(free) = free_bytes(&dir) else { continue };
        let limit = limit.bytes();
        let low = free < limit;
        if alarms.set_disk_low(low) {
            if low {
                warn!("Free disk space is insufficient. Free bytes: {free}. Limit: {limit}");
                warn!("disk resource limit alarm set");
            } else {
                warn!("disk resource limit alarm cleared: free bytes {free}, limit {limit}");
            }
        }
    }
}
