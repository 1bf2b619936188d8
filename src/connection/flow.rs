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
//! found.

use std::fmt;

/// A connection's state as RabbitMQ names it (`rabbitmqctl list_connections state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionState {
    /// Handshake not finished yet.
    #[default]
    Starting,
    Running,
    /// An alarm is on; blocked at the next publish.
    Blocking,
    /// Not reading the socket until the alarm clears.
    Blocked,
    /// Not reading the socket until the reply backlog drains.
    Flow,
    Closing,
}

impl ConnectionState {
    /// Whether the connection has stopped reading its socket.
    pub fn paused(self) -> bool {
        matches!(self, ConnectionState::Blocked | ConnectionState::Flow)
    }

    pub fn name(self) -> &'static str {
        match self {
            ConnectionState::Starting => "starting",
            ConnectionState::Running => "running",
            ConnectionState::Blocking => "blocking",
            ConnectionState::Blocked => "blocked",
            ConnectionState::Flow => "flow",
            ConnectionState::Closing => "closing",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
