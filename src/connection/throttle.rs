//! Flow control: when a connection stops reading its client, and why.
//!
//! RabbitMQ protects itself in two ways, and warren does the same:
//!
//! - **Resource alarms** (memory high watermark, or one raised by hand): a
//!   connection goes from `running` to `blocking`. It keeps reading, because
//!   a connection that only consumes must never be blocked; the moment it
//!   next publishes (a content header arrives), it becomes `blocked`: it
//!   stops reading its socket, so TCP pushes back on the publisher, and, if
//!   the client announced the `connection.blocked` capability, it is told
//!   with `connection.blocked` and the reason. When the alarm clears it is
//!   sent `connection.unblocked` and reading resumes.
//! - **Flow**: a client that publishes faster than it reads what the broker
//!   answers (confirms, returns) makes the connection's reply backlog grow;
//!   past a bound the connection stops reading it until the writer has
//!   caught up. No `connection.blocked` is sent for flow alone.
//!
//! While a connection is not reading, its client's bytes cannot arrive, so
//! the heartbeat receiver monitor is paused (`heartbeat::MonitorControl`);
//! it resumes with a fresh 2T..3T window. The heartbeat sender keeps going:
//! a heartbeat write that fails is how a client that died while blocked is
//! found. The black-hole fault also stops reading, and pauses the monitor
//! the same way.
//!
//! [`Throttle`] owns all of this state and decides in one place,
//! [`Throttle::recompute`], as RabbitMQ's `control_throttle` does with its
//! `#throttle` record. The connection calls it before every wait, and the
//! wait includes every input that can change the answer (an alarm, a fault
//! switch, the writer draining).

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, info};

use super::heartbeat::MonitorControl;
use super::writer::{Outlet, REPLY_BACKLOG_HIGH, REPLY_BACKLOG_LOW};
use crate::broker::alarm::AlarmSet;
use crate::broker::connections::{ConnectionEntry, ConnectionState};
use crate::broker::events::{Event, Events};
use crate::protocol::methods::connection as conn;
use crate::protocol::ShortStr;

pub struct Throttle {
    state: ConnectionState,
    alarms: watch::Receiver<AlarmSet>,
    /// Pauses the heartbeat receiver monitor while nothing is read.
    monitor: MonitorControl,
    /// The client announced the `connection.blocked` capability.
    tell_client: bool,
    /// `connection.blocked` was sent; `connection.unblocked` is owed.
    blocked_notified: bool,
    /// The black-hole fault was on at the last recompute.
    black_holed: bool,
    /// The state and monitor pause last told to the event stream.
    announced: (ConnectionState, bool),
    entry: Arc<ConnectionEntry>,
    outlet: Arc<Outlet>,
    events: Arc<Events>,
}

impl Throttle {
    pub fn new(
        alarms: watch::Receiver<AlarmSet>,
        entry: Arc<ConnectionEntry>,
        outlet: Arc<Outlet>,
        events: Arc<Events>,
    ) -> Throttle {
        Throttle {
            state: ConnectionState::Starting,
            alarms,
            monitor: MonitorControl::default(),
            tell_client: false,
            blocked_notified: false,
            black_holed: false,
            announced: (ConnectionState::Starting, false),
            entry,
            outlet,
            events,
        }
    }

    /// The switch the heartbeat receiver monitor obeys.
    pub fn monitor(&self) -> &MonitorControl {
        &self.monitor
    }

    /// Whether the connection may read its socket now.
    pub fn reading(&self) -> bool {
        !self.state.paused() && !self.entry.faults.black_hole()
    }

    /// In `flow`: waiting for the writer to drain the reply backlog.
    pub fn in_flow(&self) -> bool {
        self.state == ConnectionState::Flow
    }

    /// Resolves when an alarm goes on or off.
    pub async fn alarm_changed(&mut self) {
        // The broker holds the sender for as long as connections run.
        let _ = self.alarms.changed().await;
    }

    /// The handshake is done: the connection runs, and from now on can be
    /// throttled. `tell_client`: it announced `connection.blocked`.
    pub fn opened(&mut self, tell_client: bool) {
        self.tell_client = tell_client;
        self.set(ConnectionState::Running);
    }

    /// `connection.close` was sent or received: no more throttling.
    pub fn closing(&mut self) {
        self.set(ConnectionState::Closing);
    }

    /// A content frame was handled: a connection in `blocking` blocks now.
    pub fn content_arrived(&mut self) {
        if self.state != ConnectionState::Blocking {
            return;
        }
        self.set(ConnectionState::Blocked);
        let reason = self.alarms.borrow().reason();
        self.events.emit(|| Event::Blocked { connection: self.entry.name.clone(), reason: reason.to_string() });
        if self.tell_client {
            self.outlet.send_method(0, &conn::Blocked { reason: ShortStr::from(reason) }.into());
            self.blocked_notified = true;
        }
    }

    /// Decides the state from the alarms, the fault switches and the reply
    /// backlog. Only a running connection is throttled.
    pub fn recompute(&mut self) {
        // A black hole (fault injection) reads nothing; the silence is for
        // the client to notice, so the monitor waits it out.
        let black_hole = self.entry.faults.black_hole();
        if black_hole != self.black_holed {
            self.black_holed = black_hole;
            if black_hole {
                self.monitor.pause();
            } else if !self.state.paused() {
                self.monitor.resume();
            }
            self.announce();
        }
        if matches!(self.state, ConnectionState::Starting | ConnectionState::Closing) {
            return;
        }
        let alarm = self.alarms.borrow_and_update().any() || self.entry.faults.blocked();
        let backlog = self.outlet.reply_backlog();
        let in_flow = backlog > REPLY_BACKLOG_HIGH || (self.in_flow() && backlog >= REPLY_BACKLOG_LOW);
        let next = match self.state {
            ConnectionState::Blocked if alarm => ConnectionState::Blocked,
            _ if in_flow => ConnectionState::Flow,
            _ if alarm => ConnectionState::Blocking,
            _ => ConnectionState::Running,
        };
        if self.state == ConnectionState::Blocked && next != ConnectionState::Blocked {
            self.events.emit(|| Event::Unblocked { connection: self.entry.name.clone() });
            if self.blocked_notified {
                self.outlet.send_method(0, &conn::Unblocked {}.into());
                self.blocked_notified = false;
            }
        }
        self.set(next);
    }

    /// Moves to a state: pauses the heartbeat monitor while the socket is
    /// not read, resumes it (with a fresh window) when reading resumes, and
    /// logs and publishes the change.
    fn set(&mut self, next: ConnectionState) {
        if self.state == next {
            return;
        }
        match (self.state.paused(), next.paused()) {
            (false, true) => self.monitor.pause(),
            (true, false) if !self.black_holed => self.monitor.resume(),
            _ => {}
        }
        if self.state == ConnectionState::Starting {
            // Every connection's start: the log's "accepting" and
            // "authenticated" lines already say it.
            debug!("connection {}: state {} -> {next}", self.entry.name, self.state);
        } else {
            info!("connection {}: state {} -> {next}", self.entry.name, self.state);
        }
        self.state = next;
        self.entry.set_state(next);
        self.announce();
    }

    /// Tells the event stream the state and whether the monitor is paused,
    /// if either changed since it was last told.
    fn announce(&mut self) {
        let now = (self.state, self.monitor.is_paused());
        if now != self.announced {
            self.announced = now;
            let (state, monitor_paused) = now;
            self.events.emit(|| Event::StateChanged { connection: self.entry.name.clone(), state, monitor_paused });
        }
    }
}
