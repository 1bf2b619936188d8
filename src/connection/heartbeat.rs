//! Server-side heartbeats: the heart of warren.
//!
//! AMQP 0-9-1 (spec section 4.2.7) lets each side say "I am alive" with
//! heartbeat frames (`08 0000 00000000 CE`) when it has nothing else to send.
//! The interval T, in seconds, is negotiated in `connection.tune` /
//! `tune-ok`; RabbitMQ uses the value the client sends in `tune-ok` exactly
//! as sent, for both directions, and 0 turns heartbeats off. warren does the
//! same, and copies RabbitMQ's timing (`rabbit_heartbeat.erl`), which is two
//! tiny loops per connection started when `tune-ok` is processed:
//!
//! ```text
//!   tune-ok        T/2        T         3T/2       2T        5T/2       3T
//!     |-----------|----------|----------|----------|----------|----------|
//! sender:      tick:send   tick:idle? tick:idle? tick ...               (every T/2)
//! monitor:                 tick:seen? -------- tick:seen? -------- tick:seen?  (every T)
//! ```
//!
//! - **Sender** ([`run_sender`]): every T/2 it compares the connection's
//!   bytes-sent counter with the previous tick; if nothing was sent in
//!   between, it sends a heartbeat. The first tick always sends one (RabbitMQ
//!   3.7.11 and later), so a client hears from the server within T/2. Our own
//!   heartbeat octets are not counted as traffic.
//! - **Receiver monitor** ([`run_monitor`]): every T it compares the
//!   bytes-received counter with the previous tick. Any octet counts (a
//!   publish is as good as a heartbeat). On the *second* consecutive tick
//!   with no change it gives up, so a peer that falls silent is detected
//!   between 2T and 3T after its last octet, depending on where that octet
//!   fell between two ticks. The connection then logs
//!   `missed heartbeats from client, timeout: Ts` and closes the socket
//!   without a `connection.close`: the peer is presumed dead.
//!
//! While flow control blocks a connection, warren (like RabbitMQ) stops
//! reading its socket, so inbound octets stop counting up through no fault of
//! the client. The monitor is therefore paused ([`MonitorControl::pause`]);
//! the sender keeps going, and a failing heartbeat write is then how a dead
//! peer is found. On resume the monitor starts a fresh 2T..3T window.
//!
//! Neither loop reads a clock per frame: the socket reader and the writer
//! just bump counters ([`Counters`]), and each tick compares two readings.
//! Both loops run as tasks owned by their connection ([`Heartbeats`]) and
//! end with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{self, Instant, MissedTickBehavior};

use super::writer::{Outbound, Outlet};
use crate::broker::connections::{ConnectionEntry, Counters};
use crate::broker::events::{Event, Events};
use crate::broker::GaugeGuard;

/// The sender's period: T/2, in whole milliseconds as RabbitMQ computes it
/// (`T * 1000 div 2`).
pub fn sender_period(timeout_secs: u16) -> Duration {
    Duration::from_millis(u64::from(timeout_secs) * 1000 / 2)
}

/// The monitor's period: T.
pub fn monitor_period(timeout_secs: u16) -> Duration {
    Duration::from_secs(u64::from(timeout_secs))
}

/// Sends a heartbeat at every tick (period T/2) that follows a period with
/// no outbound traffic, and at the first tick. `bytes_sent` reads the
/// counter; `send_heartbeat` queues a heartbeat frame and returns false once
/// the connection is gone, which ends the loop.
pub async fn run_sender(period: Duration, bytes_sent: impl Fn() -> u64, mut send_heartbeat: impl FnMut() -> bool) {
    let mut ticks = time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen: Option<u64> = None;
    loop {
        ticks.tick().await;
        let now = bytes_sent();
        // The first tick (nothing seen yet) always sends; later ticks send
        // only when the counter has not moved since the previous tick.
        let idle = last_seen.is_none_or(|last| last == now);
        if idle && !send_heartbeat() {
            return;
        }
        last_seen = Some(now);
    }
}

/// Pause and resume for a connection's receiver monitor; the flow-control
/// code pauses it while the connection is blocked. A switch and a bell:
/// every pause or resume rings it, and the monitor, woken, starts over.
#[derive(Debug, Clone, Default)]
pub struct MonitorControl(Arc<PauseSwitch>);

#[derive(Debug, Default)]
struct PauseSwitch {
    paused: AtomicBool,
    changed: Notify,
}

impl MonitorControl {
    pub fn pause(&self) {
        self.set(true);
    }

    /// Resumes monitoring with a fresh 2T..3T window.
    pub fn resume(&self) {
        self.set(false);
    }

    fn set(&self, paused: bool) {
        self.0.paused.store(paused, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.0.paused.load(Ordering::SeqCst)
    }

    /// Resolves at the next pause or resume. Take it *before* looking at
    /// [`is_paused`](Self::is_paused): a change made in between still wakes it.
    fn changed(&self) -> Notified<'_> {
        self.0.changed.notified()
    }
}

/// Why the monitor gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissedHeartbeats {
    /// Time since the tick that last saw the counter move (or since the
    /// monitor started or resumed): two silent ticks, 2T. The last octet
    /// itself came up to T earlier, so 2T..3T before detection.
    pub silence: Duration,
}

/// Watches `bytes_received` every `period` (T) and returns when two
/// consecutive ticks saw no change. Never returns while paused. `on_tick`
/// hears each tick's count of consecutive silent ticks (0: traffic seen),
/// for the event stream.
pub async fn run_monitor(
    period: Duration,
    bytes_received: impl Fn() -> u64,
    control: &MonitorControl,
    mut on_tick: impl FnMut(u8),
) -> MissedHeartbeats {
    'window: loop {
        // Wait out a pause before (re)starting the window.
        let mut changed = std::pin::pin!(control.changed());
        while control.is_paused() {
            changed.as_mut().await;
            changed.set(control.changed());
        }
        let mut ticks = time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = bytes_received();
        let mut last_change = Instant::now();
        let mut silent_ticks = 0;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = changed.as_mut() => continue 'window,
            }
            let now = bytes_received();
            if now != last_seen {
                last_seen = now;
                last_change = Instant::now();
                silent_ticks = 0;
            } else {
                silent_ticks += 1;
            }
            on_tick(silent_ticks);
            if silent_ticks >= 2 {
                return MissedHeartbeats { silence: last_change.elapsed() };
            }
        }
    }
}

/// The two heartbeat tasks of one connection. Started at `tune-ok`;
/// dropping this aborts them.
#[derive(Default)]
pub struct Heartbeats {
    /// Ends by itself only when the writer has gone, which the connection
    /// learns from the writer itself.
    sender: Option<JoinHandle<()>>,
    /// Ends when the monitor gives up.
    monitor: Option<JoinHandle<MissedHeartbeats>>,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Heartbeats {
    /// Starts the sender and the monitor with T as the client sent it in
    /// `tune-ok`; T = 0 starts neither. `gauge` counts the running tasks.
    pub fn start(
        &mut self,
        t: u16,
        entry: &Arc<ConnectionEntry>,
        outlet: &Arc<Outlet>,
        monitor: &MonitorControl,
        events: &Arc<Events>,
        gauge: &Arc<watch::Sender<usize>>,
    ) {
        if t == 0 {
            return;
        }
        let (e, out, ev, alive) = (entry.clone(), outlet.clone(), events.clone(), GaugeGuard::new(gauge));
        self.sender = Some(tokio::spawn(async move {
            let _alive = alive;
            let sent = || e.counters.send_oct_besides_heartbeats.load(Ordering::Relaxed);
            // Withheld heartbeats (fault injection) are simply not sent.
            let send = || {
                if e.faults.withhold_heartbeats() {
                    return true;
                }
                ev.emit(|| Event::HeartbeatSent { connection: e.name.clone() });
                out.send(Outbound::Heartbeat)
            };
            run_sender(sender_period(t), sent, send).await;
        }));
        let (e, ev, control, alive) = (entry.clone(), events.clone(), monitor.clone(), GaugeGuard::new(gauge));
        self.monitor = Some(tokio::spawn(async move {
            let _alive = alive;
            let c: &Counters = &e.counters;
            let received = || c.recv_oct.load(Ordering::Relaxed);
            let tick = |silent| {
                let idle = c.since(&c.last_counted_ms);
                ev.emit(|| Event::MonitorTick { connection: e.name.clone(), silent, idle });
            };
            run_monitor(monitor_period(t), received, &control, tick).await
        }));
    }

    /// Resolves when the monitor has given up; never while no task runs.
    pub async fn missed(&mut self) -> MissedHeartbeats {
        let Some(monitor) = &mut self.monitor else { return std::future::pending().await };
        let ended = monitor.await;
        // Done: a finished task's handle must not be awaited again.
        self.monitor = None;
        match ended {
            Ok(missed) => missed,
            // Aborted (the connection is ending) or panicked: no verdict.
            Err(_) => std::future::pending().await,
        }
    }

    pub fn stop(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    const T: Duration = Duration::from_secs(1);

    /// Records the times (since start) at which the sender sent heartbeats.
    fn spawn_sender(sent: Arc<AtomicU64>) -> Arc<Mutex<Vec<Duration>>> {
        let beats = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let b = beats.clone();
        tokio::spawn(async move {
            run_sender(
                sender_period(1),
                move || sent.load(Ordering::SeqCst),
                move || {
                    b.lock().unwrap().push(start.elapsed());
                    true
                },
            )
            .await
        });
        beats
    }

    #[tokio::test(start_paused = true)]
    async fn sender_first_tick_always_sends_then_only_when_idle() {
        let sent = Arc::new(AtomicU64::new(0));
        let beats = spawn_sender(sent.clone());
        time::sleep(Duration::from_millis(1600)).await;
        // Idle: a heartbeat at every T/2 tick from the first.
        assert_eq!(*beats.lock().unwrap(), [500, 1000, 1500].map(Duration::from_millis));
        // Traffic during each period suppresses the heartbeats.
        for _ in 0..4 {
            sent.fetch_add(10, Ordering::SeqCst);
            time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(beats.lock().unwrap().len(), 3);
        // Idle again: heartbeats resume at the next tick with no traffic.
        time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(beats.lock().unwrap().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn sender_first_tick_sends_even_after_traffic() {
        let sent = Arc::new(AtomicU64::new(0));
        let beats = spawn_sender(sent.clone());
        sent.fetch_add(100, Ordering::SeqCst);
        time::sleep(Duration::from_millis(600)).await;
        assert_eq!(*beats.lock().unwrap(), [Duration::from_millis(500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn sender_stops_when_the_connection_is_gone() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let task = tokio::spawn(run_sender(
            sender_period(1),
            || 0,
            move || {
                c.fetch_add(1, Ordering::SeqCst);
                false
            },
        ));
        time::sleep(Duration::from_secs(5)).await;
        assert!(task.is_finished());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    async fn time_to_detection(last_byte_at: Duration) -> Duration {
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        let start = Instant::now();
        let control = MonitorControl::default();
        let monitor =
            tokio::spawn(async move { run_monitor(T, move || r.load(Ordering::SeqCst), &control, |_| {}).await });
        time::sleep(last_byte_at).await;
        received.fetch_add(1, Ordering::SeqCst);
        let missed = monitor.await.unwrap();
        let detected = start.elapsed() - last_byte_at;
        assert!(missed.silence <= detected);
        detected
    }

    #[tokio::test(start_paused = true)]
    async fn monitor_fires_between_2t_and_3t_after_the_last_byte() {
        // A byte just after a tick: 3T minus a little.
        let d = time_to_detection(Duration::from_millis(1010)).await;
        assert_eq!(d, Duration::from_millis(2990));
        // A byte just before a tick: 2T plus a little.
        let d = time_to_detection(Duration::from_millis(1990)).await;
        assert_eq!(d, Duration::from_millis(2010));
    }

    #[tokio::test(start_paused = true)]
    async fn monitor_with_no_traffic_at_all_fires_at_2t() {
        let control = MonitorControl::default();
        let start = Instant::now();
        run_monitor(T, || 0, &control, |_| {}).await;
        assert_eq!(start.elapsed(), 2 * T);
    }

    #[tokio::test(start_paused = true)]
    async fn monitor_reports_each_tick_with_its_silent_count() {
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let (t, start) = (ticks.clone(), Instant::now());
        let control = MonitorControl::default();
        let monitor = tokio::spawn(async move {
            run_monitor(
                T,
                move || r.load(Ordering::SeqCst),
                &control,
                move |silent| t.lock().unwrap().push((start.elapsed(), silent)),
            )
            .await
        });
        time::sleep(Duration::from_millis(1500)).await;
        received.fetch_add(1, Ordering::SeqCst);
        monitor.await.unwrap();
        let secs = |s| Duration::from_secs(s);
        assert_eq!(*ticks.lock().unwrap(), [(secs(1), 1), (secs(2), 0), (secs(3), 1), (secs(4), 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn any_inbound_byte_keeps_the_connection() {
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        let control = MonitorControl::default();
        let monitor =
            tokio::spawn(async move { run_monitor(T, move || r.load(Ordering::SeqCst), &control, |_| {}).await });
        for _ in 0..20 {
            time::sleep(Duration::from_millis(900)).await;
            received.fetch_add(1, Ordering::SeqCst);
        }
        assert!(!monitor.is_finished());
        monitor.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn paused_monitor_never_fires_and_resume_gives_a_fresh_window() {
        let control = MonitorControl::default();
        let c = control.clone();
        let start = Instant::now();
        let monitor = tokio::spawn(async move { run_monitor(T, || 0, &c, |_| {}).await });
        time::sleep(Duration::from_millis(1500)).await;
        control.pause();
        time::sleep(Duration::from_secs(30)).await;
        assert!(!monitor.is_finished());
        let resumed_at = start.elapsed();
        control.resume();
        monitor.await.unwrap();
        // Silent throughout: a full fresh window of exactly 2T after resume.
        assert_eq!(start.elapsed() - resumed_at, 2 * T);
    }
}
