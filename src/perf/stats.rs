//! What a run counts: messages sent and received, and consumer latencies
//! in a histogram each consumer owns (no lock, no shared cache line on the
//! message path), read and reset once a second by the reporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Log-linear buckets: exact below 32 µs, then 16 per power of two (about
/// 6 % wide), up to the largest `u64`.
const BUCKETS: usize = 32 + 59 * 16;

fn bucket(us: u64) -> usize {
    if us < 32 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize; // 5..=63
    let sub = ((us >> (e - 4)) & 15) as usize;
    32 + (e - 5) * 16 + sub
}

/// The smallest value in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    if i < 32 {
        return i as u64;
    }
    let (e, sub) = ((i - 32) / 16 + 5, ((i - 32) % 16) as u64);
    (16 + sub) << (e - 4)
}

/// Latencies of one consumer, in microseconds.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    min: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), min: AtomicU64::new(u64::MAX) }
    }
}

impl Histogram {
    pub fn record(&self, us: u64) {
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.min.fetch_min(us, Ordering::Relaxed);
    }
}

/// Percentiles of what some histograms recorded since they were last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub count: u64,
    pub min: u64,
    pub median: u64,
    pub p75: u64,
    pub p95: u64,
    pub p99: u64,
}

impl Latency {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "min": self.min, "median": self.median,
            "p75": self.p75, "p95": self.p95, "p99": self.p99,
        })
    }
}

/// Reads and resets `histograms` into `total` (kept for the summary), and
/// returns the percentiles of what was read.
fn drain(histograms: &[Arc<Histogram>], total: &mut [u64], total_min: &mut u64) -> Latency {
    let mut counts = vec![0u64; BUCKETS];
    let mut min = u64::MAX;
    for h in histograms {
        for (c, a) in counts.iter_mut().zip(h.counts.iter()) {
            *c += a.swap(0, Ordering::Relaxed);
        }
        min = min.min(h.min.swap(u64::MAX, Ordering::Relaxed));
    }
    for (t, c) in total.iter_mut().zip(&counts) {
        *t += c;
    }
    *total_min = (*total_min).min(min);
    percentiles(&counts, min)
}

fn percentiles(counts: &[u64], min: u64) -> Latency {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return Latency::default();
    }
    let at = |q: f64| {
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).max(min);
            }
        }
        0
    };
    Latency { count, min, median: at(0.5), p75: at(0.75), p95: at(0.95), p99: at(0.99) }
}

/// Counts shared by producers, consumers and the reporter.
#[derive(Default)]
pub struct Meter {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    histograms: Mutex<Vec<Arc<Histogram>>>,
}

impl Meter {
    /// A histogram for one more consumer.
    pub fn histogram(&self) -> Arc<Histogram> {
        let h = Arc::new(Histogram::default());
        self.histograms.lock().unwrap_or_else(|e| e.into_inner()).push(h.clone());
        h
    }
}

/// One second of a run, as reported.
#[derive(Debug, Clone, Copy)]
pub struct Second {
    pub time_s: f64,
    pub sent_per_s: u64,
    pub received_per_s: u64,
    pub latency_us: Latency,
}

impl Second {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "time_s": self.time_s, "sent_per_s": self.sent_per_s,
            "received_per_s": self.received_per_s, "latency_us": self.latency_us.json(),
        })
    }
}

/// Reads a [`Meter`] once a second and prints PerfTest's report line.
pub struct Reporter {
    meter: Arc<Meter>,
    started: Instant,
    last: (Instant, u64, u64),
    total: Vec<u64>,
    total_min: u64,
    pub seconds: Vec<Second>,
}

impl Reporter {
    pub fn new(meter: Arc<Meter>) -> Reporter {
        let now = Instant::now();
        Reporter {
            meter,
            started: now,
            last: (now, 0, 0),
            total: vec![0; BUCKETS],
            total_min: u64::MAX,
            seconds: Vec::new(),
        }
    }

    /// Takes the second that just ended, prints it and keeps it.
    pub fn tick(&mut self, id: &str) {
        let now = Instant::now();
        let (sent, received) = (self.meter.sent.load(Ordering::Relaxed), self.meter.received.load(Ordering::Relaxed));
        let (then, sent_then, received_then) = self.last;
        let dt = now.duration_since(then).as_secs_f64();
        // The last, partial second of a run: too short to make a rate of
        // (what it recorded is taken in by `finish`).
        if dt < 0.1 {
            return;
        }
        let histograms = self.meter.histograms.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let latency = drain(&histograms, &mut self.total, &mut self.total_min);
        let second = Second {
            time_s: now.duration_since(self.started).as_secs_f64(),
            sent_per_s: ((sent - sent_then) as f64 / dt) as u64,
            received_per_s: ((received - received_then) as f64 / dt) as u64,
            latency_us: latency,
        };
        self.last = (now, sent, received);
        println!(
            "id: {id}, time: {:.3}s, sent: {} msg/s, received: {} msg/s, min/median/75th/95th/99th consumer latency: {}/{}/{}/{}/{} µs",
            second.time_s,
            second.sent_per_s,
            second.received_per_s,
            latency.min,
            latency.median,
            latency.p75,
            latency.p95,
            latency.p99
        );
        self.seconds.push(second);
    }

    /// Takes in what the consumers recorded since the last second, so that
    /// the run's latencies count every message: called once they are done.
    pub fn finish(&mut self) {
        let histograms = self.meter.histograms.lock().unwrap_or_else(|e| e.into_inner()).clone();
        drain(&histograms, &mut self.total, &mut self.total_min);
    }

    /// The latencies of the whole run.
    pub fn overall(&self) -> Latency {
        percentiles(&self.total, self.total_min)
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_32_and_within_7_percent_above() {
        for us in [0, 1, 31, 32, 33, 100, 1_000, 123_456, 10_000_000, u64::MAX / 2] {
            let low = lower_bound(bucket(us));
            assert!(low <= us, "{us}: {low}");
            assert!(us - low <= us / 16 + 1, "{us}: {low}");
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        let h = Arc::new(Histogram::default());
        for us in 1..=100 {
            h.record(us * 10);
        }
        let (mut total, mut min) = (vec![0; BUCKETS], u64::MAX);
        let l = drain(std::slice::from_ref(&h), &mut total, &mut min);
        assert_eq!((l.count, l.min), (100, 10));
        let near = |got: u64, want: u64| got <= want && want - got <= want / 16 + 1;
        assert!(near(l.median, 500) && near(l.p95, 950) && near(l.p99, 990), "{l:?}");
        // Drained: the next second starts empty.
        assert_eq!(drain(&[h], &mut total, &mut min).count, 0);
        assert_eq!(percentiles(&total, min).count, 100);
    }
}
