//! Restarts a test can trigger, and what survives them.
//!
//! "Does my worker reconnect when the broker restarts, and is the work still
//! there?" A restart here does what stopping and starting a RabbitMQ node
//! does, without leaving the process:
//!
//! 1. the listener closes, so the port refuses connections for the downtime;
//! 2. every connection is closed as at a node shutdown (`connection.close`
//!    320 "broker forced connection closure with reason 'shutdown'"), or,
//!    for a crash, reset without a word; as each goes, its unacknowledged
//!    messages go back to their queues marked redelivered, its exclusive
//!    queues are deleted and auto-delete queues lose their consumers, as on
//!    any connection loss;
//! 3. what a node would not find again after it starts is dropped
//!    ([`Broker::keep_durable`]): non-durable queues and exchanges (with
//!    their bindings) and, in durable queues, the messages not published
//!    persistent (`delivery_mode` 2);
//! 4. after the downtime the listener binds the same port again.
//!
//! Virtual hosts, users and permissions survive, as RabbitMQ keeps them in
//! its database. The listener's loop (`server::serve`) does steps 1, 2 and
//! 4, because it owns the socket and the connection tasks; this module holds
//! the request and the rule of what survives.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::events::Event;
use super::Broker;

/// Longest downtime a restart may ask for.
pub const MAX_DOWNTIME: Duration = Duration::from_secs(60);

/// What to do: how long to stay down, and whether to stop cleanly or crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restart {
    /// How long the port refuses connections.
    pub downtime: Duration,
    /// Reset every connection (TCP RST, no close frames) instead of closing
    /// it with 320: a crash, a `kill -9`, a lost host.
    pub crash: bool,
}

/// What a restart did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarted {
    pub closed_connections: usize,
    pub kept: Survivors,
    pub dropped: Survivors,
    /// From the moment every connection had gone to listening again,
    /// downtime included.
    pub took: Duration,
}

/// Queues, exchanges and messages, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Survivors {
    pub queues: usize,
    pub exchanges: usize,
    pub messages: usize,
}

type Request = (Restart, oneshot::Sender<Result<Restarted, String>>);

/// The way restart requests reach the listener.
pub struct Restarts {
    tx: mpsc::Sender<Request>,
    /// Taken by the listener when it starts; still here means no listener.
    rx: Mutex<Option<mpsc::Receiver<Request>>>,
}

impl Default for Restarts {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(4);
        Restarts { tx, rx: Mutex::new(Some(rx)) }
    }
}

/// A restart request as the listener receives it.
pub struct Pending {
    pub restart: Restart,
    pub done: oneshot::Sender<Result<Restarted, String>>,
}

impl Restarts {
    /// For the listener: the requests, from now on. A second listener on
    /// the same broker gets None and cannot be restarted.
    pub fn take_requests(&self) -> Option<Requests> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take().map(Requests)
    }
}

/// The listener's end of [`Restarts`].
pub struct Requests(mpsc::Receiver<Request>);

impl Requests {
    pub async fn next(&mut self) -> Option<Pending> {
        self.0.recv().await.map(|(restart, done)| Pending { restart, done })
    }
}

impl Broker {
    /// Restarts the broker's AMQP listener (see the module docs) and returns
    /// once it listens again, or with why it could not.
    pub async fn restart(&self, restart: Restart) -> Result<Restarted, String> {
        if restart.downtime > MAX_DOWNTIME {
            return Err(format!("downtime is at most {} s", MAX_DOWNTIME.as_secs()));
        }
        if self.restarts.rx.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Err("no AMQP listener is running".into());
        }
        let (done, result) = oneshot::channel();
        let gone = || "the AMQP listener has stopped".to_string();
        self.restarts.tx.send((restart, done)).await.map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    /// Drops what a restarted RabbitMQ node would not find again; to be
    /// called once every connection has gone. Returns what stayed and what
    /// went.
    pub fn keep_durable(&self) -> (Survivors, Survivors) {
        let (mut kept, mut dropped) = (Survivors::default(), Survivors::default());
        let vhosts: Vec<_> = self.vhosts.iter().map(|v| v.value().clone()).collect();
        for vhost in vhosts {
            // Collected first: deleting under a DashMap iterator deadlocks.
            let queues: Vec<_> = vhost.queues.iter().map(|q| q.value().clone()).collect();
            for q in queues {
                if q.options.durable && q.options.exclusive_owner.is_none() {
                    dropped.messages += q.drop_transient();
                    kept.queues += 1;
                    kept.messages += q.message_count();
                } else {
                    dropped.messages += vhost.delete_queue(&q).0 as usize;
                    dropped.queues += 1;
                }
            }
            let exchanges: Vec<_> = vhost.exchanges.iter().map(|x| x.value().clone()).collect();
            for x in exchanges {
                if x.durable {
                    kept.exchanges += 1;
                } else {
                    vhost.delete_exchange(&x);
                    dropped.exchanges += 1;
                }
            }
        }
        (kept, dropped)
    }

    pub(crate) fn report_stopped(&self, crash: bool) {
        self.events.emit(|| Event::BrokerStopped { crash });
    }

    pub(crate) fn report_started(&self) {
        self.events.emit(|| Event::BrokerStarted);
    }
}
