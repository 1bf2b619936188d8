//! The broker's registry of open connections: what it knows of each one and
//! how the rest of warren (the HTTP API, the embedded test handle) finds one
//! and drives it.
//!
//! A connection task registers itself when its socket is accepted and is
//! removed when its [`Registration`] drops, whatever way the connection ends.
//! What is registered is plain shared state: the name, the flow-control
//! [`ConnectionState`] shown to users, traffic [`Counters`], the fault
//! switches ([`Faults`]) and a command queue for one-shot faults. Nothing
//! here knows about sockets or frames; the connection task (in
//! `crate::connection`) reads and writes this state, and everything else
//! goes through a [`ConnectionHandle`].

mod faults;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use tokio::time::Instant;

pub use faults::{Command as FaultCommand, FaultSwitches, Faults};

use super::events::{Event, Events};
use super::inspect::{ConnectionDetails, ConnectionInfo, TlsInfo};

/// A connection's state as RabbitMQ names it (`rabbitmqctl list_connections
/// state`): the handshake, then the flow-control states of
/// `crate::connection::throttle`, then closing.
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

/// Octets and frames in and out of one connection: the socket reader bumps
/// `recv_oct`, the writer `send_oct`. The heartbeat tasks only ever compare
/// two readings, so no clock is read per frame.
#[derive(Debug, Default)]
pub struct Counters {
    /// When the socket was accepted: the base of the `last_*_ms` stamps.
    pub accepted: Accepted,
    pub recv_oct: AtomicU64,
    /// Every octet written, heartbeats included (RabbitMQ's `send_oct`).
    pub send_oct: AtomicU64,
    /// Octets written other than heartbeat frames: what the heartbeat sender
    /// watches, so that its own heartbeat does not count as traffic at its
    /// next tick.
    pub send_oct_besides_heartbeats: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_received: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// Messages this connection published, had delivered (or got), and
    /// acknowledged: per connection, so that no two connections contend on
    /// one counter; the registry sums them (see [`Connections::messages`]).
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acknowledged: AtomicU64,
    /// When the client last sent anything, in ms since the connection was
    /// accepted (one clock read per socket read, not per frame).
    pub last_read_ms: AtomicU64,
    /// When the client last sent something the receiver monitor counts:
    /// `last_read_ms` but for what the ignore-client fault leaves out.
    pub last_counted_ms: AtomicU64,
    /// When the writer last wrote to the socket, in the same unit.
    pub last_write_ms: AtomicU64,
}

/// When a connection's socket was accepted: made when its counters are.
#[derive(Debug, Clone, Copy)]
pub struct Accepted(pub Instant);

impl Default for Accepted {
    fn default() -> Self {
        Accepted(Instant::now())
    }
}

impl Counters {
    /// Milliseconds since the socket was accepted, now: the unit of the
    /// `last_*_ms` stamps.
    pub fn now_ms(&self) -> u64 {
        self.accepted.0.elapsed().as_millis() as u64
    }

    /// How long ago the stamp `at` (one of the `last_*_ms`) was made.
    pub fn since(&self, at: &AtomicU64) -> Duration {
        self.accepted.0.elapsed().saturating_sub(Duration::from_millis(at.load(Ordering::Relaxed)))
    }
}

/// What the broker knows of one open connection. The connection task holds
/// it and writes to it; readers go through a [`ConnectionHandle`].
pub struct ConnectionEntry {
    pub id: u64,
    /// `client -> server`, RabbitMQ's connection name.
    pub name: String,
    /// The client's own name for the connection (`connection_name` in its
    /// client properties), once the handshake has told it.
    client_name: OnceLock<String>,
    state: Mutex<ConnectionState>,
    /// The registry's count of state changes, which this bumps: one watch
    /// for all connections rather than one each (320 octets apiece).
    state_changes: Arc<watch::Sender<u64>>,
    pub counters: Arc<Counters>,
    /// Fault switches the test toolkit flips.
    pub faults: Arc<Faults>,
    /// What the handshake settled, from `connection.open` on.
    details: OnceLock<ConnectionDetails>,
    /// For a TLS connection, what its TLS handshake settled.
    tls: OnceLock<TlsInfo>,
    /// The open channel numbers.
    channels: Mutex<BTreeSet<u16>>,
    /// Where fault switches flipped through a handle are announced.
    events: Arc<Events>,
}

impl ConnectionEntry {
    pub fn state(&self) -> ConnectionState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_state(&self, state: ConnectionState) {
        let old = std::mem::replace(&mut *self.state.lock().unwrap_or_else(|e| e.into_inner()), state);
        if old != state {
            self.state_changes.send_modify(|n| *n += 1);
        }
    }

    pub fn set_client_name(&self, name: String) {
        let _ = self.client_name.set(name);
    }

    pub fn set_details(&self, details: ConnectionDetails) {
        let _ = self.details.set(details);
    }

    pub fn set_tls(&self, tls: TlsInfo) {
        let _ = self.tls.set(tls);
    }

    /// What its TLS handshake settled; None for a plain connection.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.get()
    }

    pub fn channel_opened(&self, channel: u16) {
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).insert(channel);
    }

    pub fn channel_closed(&self, channel: u16) {
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(&channel);
    }
}

/// The connection id of requests that come from no connection (the HTTP
/// API): connection ids start at 1, so no exclusive queue belongs to it.
pub const NO_CONNECTION: u64 = 0;

/// Message counts over all connections, open and closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub published: u64,
    pub delivered: u64,
    pub acknowledged: u64,
}

impl MessageCounts {
    fn add(&mut self, c: &Counters) {
        self.published += c.published.load(Ordering::Relaxed);
        self.delivered += c.delivered.load(Ordering::Relaxed);
        self.acknowledged += c.acknowledged.load(Ordering::Relaxed);
    }
}

/// Every open connection of one broker, by id.
pub struct Connections {
    map: Arc<DashMap<u64, Arc<ConnectionEntry>>>,
    next_id: AtomicU64,
    /// The counts of the connections that have closed. A connection's counts
    /// move here and it leaves the map under this lock, and a sum is taken
    /// under it, so a sum never counts a connection twice or not at all.
    retired: Arc<Mutex<MessageCounts>>,
    events: Arc<Events>,
    /// Bumped at every connection's every state change.
    state_changes: Arc<watch::Sender<u64>>,
}

/// A connection's place in the registry, held by its task: dropping it marks
/// the connection closing and removes it, however the task ends.
pub struct Registration {
    pub entry: Arc<ConnectionEntry>,
    map: Arc<DashMap<u64, Arc<ConnectionEntry>>>,
    retired: Arc<Mutex<MessageCounts>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.entry.set_state(ConnectionState::Closing);
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.add(&self.entry.counters);
        self.map.remove(&self.entry.id);
    }
}

impl Connections {
    /// An empty registry whose connections announce changes to `events`.
    pub fn new(events: Arc<Events>) -> Connections {
        Connections {
            map: Arc::default(),
            next_id: AtomicU64::new(0),
            retired: Arc::default(),
            events,
            state_changes: Arc::default(),
        }
    }

    /// Registers a connection just accepted, named `client -> server`.
    pub fn register(&self, name: String) -> Registration {
        self.register_with(name, Arc::default(), Arc::default())
    }

    /// The same, with counters and fault switches made before (a TLS
    /// connection's socket counts its octets, and heeds the ignore-client
    /// fault, from before the TLS handshake).
    pub fn register_with(&self, name: String, counters: Arc<Counters>, faults: Arc<Faults>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ConnectionEntry {
            id,
            name,
            client_name: OnceLock::new(),
            state: Mutex::new(ConnectionState::Starting),
            state_changes: self.state_changes.clone(),
            counters,
            faults,
            details: OnceLock::new(),
            tls: OnceLock::new(),
            channels: Mutex::default(),
            events: self.events.clone(),
        });
        self.map.insert(id, entry.clone());
        Registration { entry, map: self.map.clone(), retired: self.retired.clone() }
    }

    /// How many connections are open (handshaking ones included, as
    /// RabbitMQ counts them for `connection_max`).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Messages published, delivered and acknowledged over every connection
    /// since the broker started.
    pub fn messages(&self) -> MessageCounts {
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = *retired;
        for e in self.map.iter() {
            sum.add(&e.counters);
        }
        sum
    }

    /// Whether the connection with this id is still open.
    pub fn contains(&self, id: u64) -> bool {
        self.map.contains_key(&id)
    }

    pub fn all(&self) -> Vec<ConnectionHandle> {
        self.map.iter().map(|e| ConnectionHandle { entry: e.value().clone() }).collect()
    }

    /// The connection with this RabbitMQ-style name
    /// (`127.0.0.1:50000 -> 127.0.0.1:5672`) or client-provided name.
    pub fn find(&self, name: &str) -> Option<ConnectionHandle> {
        self.all().into_iter().find(|c| c.name() == name || c.client_name() == Some(name))
    }

    /// A receiver that sees the next state change of any connection.
    pub fn watch_states(&self) -> watch::Receiver<u64> {
        self.state_changes.subscribe()
    }
}

/// One open connection, as tests and the HTTP API see it: what it is, its
/// traffic, and the faults that can be injected into it (see [`Faults`]).
#[derive(Clone)]
pub struct ConnectionHandle {
    entry: Arc<ConnectionEntry>,
}

/// Traffic counters of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Octets read from the client.
    pub bytes_in: u64,
    /// Octets written to the client, heartbeats included.
    pub bytes_out: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
}

impl ConnectionHandle {
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// `client -> server`, RabbitMQ's name for the connection.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// The client's `connection_name` property, if it gave one.
    pub fn client_name(&self) -> Option<&str> {
        self.entry.client_name.get().map(String::as_str)
    }

    pub fn state(&self) -> ConnectionState {
        self.entry.state()
    }

    /// What the handshake settled; None until `connection.open`.
    pub fn details(&self) -> Option<&ConnectionDetails> {
        self.entry.details.get()
    }

    /// The user the connection logged in as, once open.
    pub fn user(&self) -> Option<&str> {
        self.details().map(|d| d.user.as_str())
    }

    pub fn stats(&self) -> ConnectionStats {
        let c = &self.entry.counters;
        ConnectionStats {
            bytes_in: c.recv_oct.load(Ordering::Relaxed),
            bytes_out: c.send_oct.load(Ordering::Relaxed),
            heartbeats_sent: c.heartbeats_sent.load(Ordering::Relaxed),
            heartbeats_received: c.heartbeats_received.load(Ordering::Relaxed),
        }
    }

    /// Everything at once, for inspection and the HTTP API.
    pub fn info(&self) -> ConnectionInfo {
        let (e, c) = (&self.entry, &self.entry.counters);
        let stats = self.stats();
        ConnectionInfo {
            name: e.name.clone(),
            client_name: self.client_name().map(str::to_string),
            state: self.state(),
            details: self.details().cloned(),
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            frames_in: c.frames_in.load(Ordering::Relaxed),
            frames_out: c.frames_out.load(Ordering::Relaxed),
            heartbeats_sent: stats.heartbeats_sent,
            heartbeats_received: stats.heartbeats_received,
            channels: e.channels.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect(),
            idle: c.since(&c.last_read_ms),
            idle_counted: c.since(&c.last_counted_ms),
            idle_out: c.since(&c.last_write_ms),
            monitor_paused: self.monitor_paused(),
            faults: self.faults(),
            tls: e.tls().cloned(),
        }
    }

    /// Whether the receiver monitor is paused: the connection is not reading
    /// its socket (blocked, flow, black hole; see `connection::throttle`).
    pub fn monitor_paused(&self) -> bool {
        let state = self.state();
        state.paused() || (state != ConnectionState::Starting && self.entry.faults.black_hole())
    }

    /// The broker stops sending heartbeats to this client: the client has to
    /// find out the broker is gone.
    pub fn withhold_heartbeats(&self, on: bool) {
        self.entry.faults.set_withhold_heartbeats(on);
        self.faults_changed();
    }

    /// The client's heartbeats and traffic no longer count as a sign of
    /// life: the broker drops it 2T..3T later, as after missed heartbeats.
    pub fn ignore_client(&self, on: bool) {
        self.entry.faults.set_ignore_client(on);
        self.faults_changed();
    }

    /// Nothing is read from or written to the client while the TCP
    /// connection stays open.
    pub fn black_hole(&self, on: bool) {
        self.entry.faults.set_black_hole(on);
        self.faults_changed();
    }

    /// Blocks this connection as a resource alarm would (`connection.blocked`
    /// at its next publish), or releases it.
    pub fn block(&self, on: bool) {
        self.entry.faults.set_blocked(on);
        self.faults_changed();
    }

    /// Holds every delivery to this connection back for `latency`.
    pub fn delivery_latency(&self, latency: Duration) {
        self.entry.faults.set_delivery_latency(latency);
        self.faults_changed();
    }

    /// Where the fault switches stand.
    pub fn faults(&self) -> FaultSwitches {
        self.entry.faults.switches()
    }

    fn faults_changed(&self) {
        let e = &self.entry;
        e.events.emit(|| Event::FaultsChanged { connection: e.name.clone(), faults: e.faults.switches() });
    }

    /// Resets the TCP connection, without a word.
    pub fn kill(&self) {
        self.entry.faults.command(FaultCommand::Kill);
    }

    /// Closes the connection with `connection.close` 320 CONNECTION_FORCED
    /// and `text`, as `rabbitmqctl close_connection` does.
    pub fn force_close(&self, text: &str) {
        self.entry.faults.command(FaultCommand::ForceClose(text.to_string()));
    }

    /// Sends `connection.close` 320 with `text` and closes the socket
    /// without waiting for `close-ok`.
    pub fn close_now(&self, text: &str) {
        self.entry.faults.command(FaultCommand::CloseNow(text.to_string()));
    }
}
