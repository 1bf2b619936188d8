//! What happens in the broker, as a stream a test can await (the test
//! toolkit's events).
//!
//! Events are only built when someone listens: with no subscriber, an
//! `emit` is one atomic load, so the message path pays nothing for them.
//! Each is stamped with the wall-clock time it was emitted, so that a
//! listener that reads late (the HTTP event log, a browser) still places it
//! where it happened.

use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::connections::{ConnectionState, FaultSwitches};
use crate::protocol::FieldTable;

/// One thing that happened. Connections are named RabbitMQ style
/// (`client -> server`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ConnectionOpened {
        connection: String,
        user: String,
        vhost: String,
        client_properties: FieldTable,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionClosed {
        connection: String,
        reason: String,
    },
    HeartbeatSent {
        connection: String,
    },
    HeartbeatReceived {
        connection: String,
    },
    /// The receiver monitor looked at the client's byte counter (every T).
    /// `silent`: consecutive ticks that saw nothing new, this one included
    /// (0: it saw traffic; 2 ends the connection). `idle`: how long since
    /// the last byte the monitor counts.
    MonitorTick {
        connection: String,
        silent: u8,
        idle: Duration,
    },
    /// The receiver monitor gave up; `silence` is how long it saw nothing.
    HeartbeatTimeout {
        connection: String,
        timeout: u16,
        silence: Duration,
    },
    Blocked {
        connection: String,
        reason: String,
    },
    Unblocked {
        connection: String,
    },
    /// The connection moved to `state` (`crate::connection::throttle`), or
    /// its receiver monitor was paused or resumed.
    StateChanged {
        connection: String,
        state: ConnectionState,
        monitor_paused: bool,
    },
    /// A fault switch of the connection was flipped; `faults` is all of them now.
    FaultsChanged {
        connection: String,
        faults: FaultSwitches,
    },
    ChannelClosed {
        connection: String,
        channel: u16,
        code: u16,
        text: String,
    },
    /// A message was routed to `queues` queues (0: unroutable).
    Published {
        connection: String,
        exchange: String,
        routing_key: String,
        queues: usize,
    },
    Delivered {
        connection: String,
        channel: u16,
        queue: String,
        delivery_tag: u64,
        redelivered: bool,
    },
    Acked {
        connection: String,
        channel: u16,
        delivery_tag: u64,
        multiple: bool,
    },
    Nacked {
        connection: String,
        channel: u16,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Requeued {
        queue: String,
        count: usize,
    },
    Expired {
        queue: String,
        count: usize,
    },
    DeadLettered {
        queue: String,
        reason: String,
        count: usize,
    },
    /// A restart (see `broker::restart`) has closed the listener and every
    /// connection; the port refuses connections until `BrokerStarted`.
    BrokerStopped {
        crash: bool,
    },
    /// The listener is back after a restart.
    BrokerStarted,
    /// A step of the teaching demo's script (`crate::demo`), in words.
    DemoStep {
        connection: Option<String>,
        text: String,
    },
}

/// An event and when it was emitted.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub at: SystemTime,
    pub event: Event,
}

/// Capacity of the broadcast buffer: a subscriber that falls this far
/// behind loses the oldest events (and is told so by `RecvError::Lagged`).
const BUFFER: usize = 16 * 1024;

pub struct Events {
    tx: broadcast::Sender<Stamped>,
}

impl Default for Events {
    fn default() -> Self {
        Events { tx: broadcast::channel(BUFFER).0 }
    }
}

impl Events {
    /// Sends the event `make` builds, if anyone is listening.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Stamped { at: SystemTime::now(), event: make() });
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.tx.subscribe()
    }
}
