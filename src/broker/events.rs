//! What happens in the broker, as a stream a test can await (the test
//! toolkit's events).
//!
//! Events are only built when someone listens: with no subscriber, an
//! `emit` is one atomic load, so the message path pays nothing for them.

use std::time::Duration;

use tokio::sync::broadcast;

use crate::protocol::FieldTable;

/// One thing that happened. Connections are named RabbitMQ style
/// (`client -> server`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ConnectionOpened {
        connection: String,
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
}

/// Capacity of the broadcast buffer: a subscriber that falls this far
/// behind loses the oldest events (and is told so by `RecvError::Lagged`).
const BUFFER: usize = 16 * 1024;

pub struct Events {
    tx: broadcast::Sender<Event>,
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
            let _ = self.tx.send(make());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
