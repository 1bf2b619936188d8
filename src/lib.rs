//! warren: a small, fast AMQP 0-9-1 broker that behaves like RabbitMQ on the
//! wire, down to its heartbeat timing.
//!
//! # Layout
//!
//! `docs/architecture.md` tells how the parts fit together.
//!
//! - [`protocol`]: the wire format, one module per layer: frames, primitive
//!   fields, field tables, methods (one file per class), content properties.
//!   Pure functions over `Bytes`; no I/O.
//! - [`broker`]: the shared state, apart from any socket: virtual hosts,
//!   exchanges, queues, messages, and the registry of open connections.
//! - [`connection`]: one AMQP connection's life: a loop over named wake-ups,
//!   the handshake, channels, flow control, the writer task and the
//!   heartbeats ([`connection::heartbeat`] is the place to learn how
//!   heartbeats work).
//! - [`server`]: the listener: accepts sockets, starts connections, shuts
//!   down cleanly.
//! - [`embedded`]: start an isolated broker inside a test in one call; the
//!   test toolkit (fault injection, events, inspection) lives on its handle.
//! - [`blocking`]: the same for test suites that are not async.
//! - [`demo`]: the teaching demo, a scripted client that plays the seed's
//!   story (a worker blocked by a long task is dropped for missed
//!   heartbeats, its message redelivered) for a learner to watch.
//! - [`http`]: the HTTP control API (management-API subset, fault
//!   injection, events) for test suites in any language, and the live
//!   page that draws connections and their heartbeats (`http/dashboard.html`).
//! - [`tls`]: amqps: the TLS listener's handshake in front of an ordinary
//!   connection, and throwaway certificates for tests.
//! - [`store`]: durable definitions and persistent messages on disk, with
//!   a data directory (group commit, segments, recovery).
//! - [`config`]: settings and the `rabbitmq.conf` format.
//! - [`client`]: a lean AMQP client on raw frames (it uses only
//!   [`protocol`]), for [`perf`] and [`demo`].
//! - [`perf`]: `warren perf`, a load tool for any AMQP broker in PerfTest's
//!   language.
//! - [`error`]: errors that carry the AMQP reply code they become.
//! - [`logging`]: log lines a client cannot forge (client-supplied text is
//!   escaped).

pub mod blocking;
pub mod broker;
pub mod client;
pub mod config;
pub mod connection;
pub mod demo;
pub mod embedded;
pub mod error;
pub mod http;
pub mod json;
pub mod logging;
pub mod perf;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tls;

pub use broker::connections::{ConnectionHandle, ConnectionState, ConnectionStats};
pub use broker::events::Event;
pub use config::Config;
pub use embedded::{EmbeddedBroker, EmbeddedBuilder, EventStream, FreshVhost, Restart, Restarted};
