//! What the channels of one open connection share: the session (user,
//! vhost, outlet, exclusive queues, confirms owed, consumer deadlines) and
//! the client's capabilities.

use std::sync::Arc;

use crate::broker::access::Access;
use crate::broker::queue::{Consumer, Queue};
use crate::broker::{Broker, VirtualHost};
use crate::connection::timeouts::DeliveryDeadlines;
use crate::connection::writer::Outlet;
use crate::error::AmqpResult;
use crate::protocol::methods::Method;
use crate::protocol::{FieldTable, FieldValue, ShortStr};

/// What a client announced in `client_properties.capabilities` that changes
/// what the server sends it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCapabilities {
    pub consumer_cancel_notify: bool,
    pub authentication_failure_close: bool,
    pub connection_blocked: bool,
}

impl ClientCapabilities {
    pub fn from_client_properties(props: &FieldTable) -> Self {
        let caps = props.get("capabilities").and_then(FieldValue::as_table);
        let flag = |name: &str| caps.and_then(|t| t.get(name)).and_then(FieldValue::as_bool).unwrap_or(false);
        ClientCapabilities {
            consumer_cancel_notify: flag("consumer_cancel_notify"),
            authentication_failure_close: flag("authentication_failure_close"),
            connection_blocked: flag("connection.blocked"),
        }
    }
}

/// What channels need from their connection once it is open.
pub struct Session {
    pub connection_id: u64,
    /// `client -> server`, for events.
    pub connection_name: Arc<str>,
    /// The authenticated user, whose permissions every operation checks.
    pub user: String,
    pub broker: Arc<Broker>,
    pub vhost: Arc<VirtualHost>,
    pub outlet: Arc<Outlet>,
    pub capabilities: ClientCapabilities,
    /// Exclusive queues this connection declared; deleted when it closes.
    pub exclusive_queues: Vec<Arc<Queue>>,
    /// Reused by every publish to collect the queues a message goes to.
    pub(super) route_buf: Vec<Arc<Queue>>,
    /// Channels with publisher confirms to send once the frames at hand are
    /// processed (see `Channel::flush_confirms`).
    pub pending_confirms: Vec<u16>,
    /// Channels holding confirms back until their messages are on disk
    /// (see `Channel::flush_confirms`).
    pub awaiting_disk: Vec<u16>,
    /// Where deliveries note their `consumer_timeout` deadlines.
    pub deadlines: Arc<DeliveryDeadlines>,
}

impl Session {
    pub fn new(
        connection_id: u64,
        broker: Arc<Broker>,
        vhost: Arc<VirtualHost>,
        outlet: Arc<Outlet>,
        capabilities: ClientCapabilities,
        user: String,
        connection_name: Arc<str>,
    ) -> Self {
        Session {
            connection_id,
            connection_name,
            user,
            broker,
            vhost,
            outlet,
            capabilities,
            exclusive_queues: Vec::new(),
            route_buf: Vec::new(),
            pending_confirms: Vec::new(),
            awaiting_disk: Vec::new(),
            deadlines: Arc::new(DeliveryDeadlines::default()),
        }
    }

    /// 403 unless the user may do `access` to the named queue or exchange.
    pub fn check(&self, access: Access, kind: &str, name: &ShortStr) -> AmqpResult<()> {
        let vhost = self.vhost.name.as_str_lossy();
        self.broker.access.check(&self.user, &vhost, access, kind, name)
    }

    pub fn send_method(&self, channel: u16, method: &Method) {
        self.outlet.send_method(channel, method);
    }

    /// Deletes a queue: unbinds it, tells its consumers' channels.
    pub fn delete_queue(&mut self, q: &Arc<Queue>) -> u32 {
        let (count, consumers) = self.remove_queue(q);
        tell_cancelled(consumers);
        count
    }

    /// Deletes a queue and returns its message count and the consumers it
    /// had, for the caller to tell ([`tell_cancelled`]) when the time is right.
    pub fn remove_queue(&mut self, q: &Arc<Queue>) -> (u32, Vec<Consumer>) {
        self.exclusive_queues.retain(|x| !Arc::ptr_eq(x, q));
        self.vhost.delete_queue(q)
    }

    /// Deletes the connection's exclusive queues (when it closes).
    pub fn delete_exclusive_queues(&mut self) {
        for q in std::mem::take(&mut self.exclusive_queues) {
            self.delete_queue(&q);
        }
    }
}

/// Tells consumers that their queue went away (`basic.cancel`).
pub fn tell_cancelled(consumers: Vec<Consumer>) {
    for c in consumers {
        c.target.consumer_cancelled(&c.tag);
    }
}
