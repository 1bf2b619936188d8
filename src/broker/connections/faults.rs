//! Fault injection, per connection, at run time: the test toolkit's way of
//! making heartbeat loss, blocking and disconnects happen on demand.
//!
//! Each connection has a [`Faults`] switchboard, shared with the broker's
//! registry so a test (through the embedded handle) can flip it while the
//! connection runs, and takes the one-shot faults (commands) too:
//!
//! - **withhold heartbeats**: the sender sends none, so the client must
//!   notice a dead broker;
//! - **ignore the client**: its bytes stop counting as liveness, so the
//!   receiver monitor drops it exactly as after missed heartbeats (same log
//!   line);
//! - **black hole**: nothing is read or written while the TCP connection
//!   stays open (the monitor is paused too: the silence is for the client
//!   to detect);
//! - **delivery latency**: deliveries wait this long before being written;
//! - **block**: the connection is blocked as if a resource alarm were on;
//! - **kill** (a TCP reset) and **force close** (`connection.close` 320 with
//!   a text, what `rabbitmqctl close_connection` does): commands.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Faults {
    withhold_heartbeats: AtomicBool,
    ignore_client: AtomicBool,
    black_hole: AtomicBool,
    blocked: AtomicBool,
    delivery_latency_ms: AtomicU64,
    /// Set when the connection is being killed: the writer lets go of the
    /// socket without a FIN, so that its close is a reset.
    killed: AtomicBool,
    /// One-shot faults not yet carried out, oldest first.
    commands: Mutex<VecDeque<Command>>,
    /// Wakes the connection and its writer when a switch changes or a
    /// command comes.
    changed: Notify,
}

/// The switches' positions at one moment, as events and the HTTP API show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultSwitches {
    pub withhold_heartbeats: bool,
    pub ignore_client: bool,
    pub black_hole: bool,
    pub blocked: bool,
    pub delivery_latency: Duration,
}

/// One-shot faults, carried out by the connection task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the socket with a TCP reset, without a word.
    Kill,
    /// `connection.close` 320 CONNECTION_FORCED with this text.
    ForceClose(String),
    /// The same, then close the socket at once instead of waiting for the
    /// client's `close-ok` (a broker reset: a client that is not reading
    /// must not hold it up).
    CloseNow(String),
}

impl Faults {
    fn set(&self, flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn set_withhold_heartbeats(&self, on: bool) {
        self.set(&self.withhold_heartbeats, on);
    }

    pub fn set_ignore_client(&self, on: bool) {
        self.set(&self.ignore_client, on);
    }

    pub fn set_black_hole(&self, on: bool) {
        self.set(&self.black_hole, on);
    }

    pub fn set_blocked(&self, on: bool) {
        self.set(&self.blocked, on);
    }

    pub fn set_delivery_latency(&self, latency: Duration) {
        self.delivery_latency_ms.store(latency.as_millis() as u64, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn set_killed(&self) {
        self.set(&self.killed, true);
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    pub fn withhold_heartbeats(&self) -> bool {
        self.withhold_heartbeats.load(Ordering::SeqCst)
    }

    pub fn ignore_client(&self) -> bool {
        self.ignore_client.load(Ordering::SeqCst)
    }

    pub fn black_hole(&self) -> bool {
        self.black_hole.load(Ordering::SeqCst)
    }

    pub fn blocked(&self) -> bool {
        self.blocked.load(Ordering::SeqCst)
    }

    pub fn delivery_latency(&self) -> Duration {
        Duration::from_millis(self.delivery_latency_ms.load(Ordering::SeqCst))
    }

    /// Where every switch stands now.
    pub fn switches(&self) -> FaultSwitches {
        FaultSwitches {
            withhold_heartbeats: self.withhold_heartbeats(),
            ignore_client: self.ignore_client(),
            black_hole: self.black_hole(),
            blocked: self.blocked(),
            delivery_latency: self.delivery_latency(),
        }
    }

    /// Queues a one-shot fault for the connection task, which takes it
    /// with [`take_command`](Self::take_command) when woken.
    pub fn command(&self, command: Command) {
        self.commands.lock().unwrap_or_else(|e| e.into_inner()).push_back(command);
        self.changed.notify_waiters();
    }

    pub fn take_command(&self) -> Option<Command> {
        self.commands.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    /// Resolves at the next change of any switch, or command. Take it *before* looking
    /// at the switches: a change made in between still wakes it.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Waits while the connection is a black hole.
    pub async fn while_black_hole(&self) {
        loop {
            let changed = self.changed.notified();
            if !self.black_hole() {
                return;
            }
            changed.await;
        }
    }
}
