//! The broker's shared state, apart from any connection: users, virtual
//! hosts, exchanges, queues and messages.
//!
//! [`Broker`] is a cheap handle (`Arc`) given to every connection. Nothing
//! here is global: each embedded broker has its own.

pub mod access;
pub mod alarm;
pub mod connections;
pub mod declare;
pub mod definitions;
pub mod disk;
pub mod durable;
pub mod events;
pub mod exchange;
pub mod headers;
pub mod inspect;
pub mod message;
pub mod queue;
pub mod restart;
pub mod topic;
pub mod vhost;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::config::Config;
use crate::protocol::ShortStr;
use crate::store::{DefOp, Store};
use access::AccessControl;
use alarm::Alarms;
pub use vhost::VirtualHost;

pub struct Broker {
    pub config: Config,
    /// Live counts, watchable (tests await them; the management API will read them).
    pub gauges: Gauges,
    /// Running totals since start, for metrics.
    pub totals: Arc<Totals>,
    /// Users, passwords and permissions.
    pub access: AccessControl,
    /// Memory accounting and resource alarms (flow control).
    pub alarms: Arc<Alarms>,
    /// What happens, for tests to await (see [`events`]).
    pub events: Arc<events::Events>,
    /// The open connections (see [`connections`]).
    pub connections: connections::Connections,
    pub vhosts: DashMap<ShortStr, Arc<VirtualHost>>,
    /// Where AMQP clients reach this broker, once its listener is bound
    /// (the HTTP API hands out URLs with it).
    pub amqp_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Where amqps clients reach it, if it has a TLS listener.
    pub amqps_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Restart requests, for the listener (see [`restart`]).
    pub restarts: restart::Restarts,
    /// Durable definitions and persistent messages on disk, with a data
    /// directory (see [`crate::store`]).
    pub store: Option<Arc<Store>>,
    /// The teaching demo (`crate::demo`) is playing: one at a time.
    pub demo_running: std::sync::atomic::AtomicBool,
    /// Keys for server-generated names; random per broker.
    name_seed: RandomState,
    name_counter: AtomicU64,
}

impl Broker {
    /// A broker for `config`; fails on settings that cannot work (an
    /// invalid permission regex, permissions for an unknown user).
    pub fn new(config: Config) -> Result<Arc<Broker>, String> {
        let access = AccessControl::from_config(&config)?;
        let alarms = Alarms::new(config.memory_high_watermark.bytes());
        let events = Arc::new(events::Events::default());
        let (store, recovery) = match &config.data_dir {
            Some(dir) => {
                let (store, recovery) = Store::open(dir).map_err(|e| format!("data directory: {e}"))?;
                (Some(store), Some(recovery))
            }
            None => (None, None),
        };
        let vhosts = DashMap::new();
        for name in &config.vhosts {
            let name = ShortStr::from(name.as_str());
            vhosts.insert(name.clone(), VirtualHost::new(name, alarms.clone(), events.clone(), store.clone()));
        }
        let broker = Arc::new(Broker {
            access,
            alarms,
            connections: connections::Connections::new(events.clone()),
            events,
            config,
            vhosts,
            amqp_addr: std::sync::OnceLock::new(),
            amqps_addr: std::sync::OnceLock::new(),
            restarts: restart::Restarts::default(),
            store,
            demo_running: Default::default(),
            name_seed: RandomState::new(),
            name_counter: AtomicU64::new(0),
            gauges: Gauges::default(),
            totals: Arc::default(),
        });
        if let Some(store) = &broker.store {
            for name in &broker.config.vhosts {
                store.definition(DefOp::Vhost(name.clone()));
            }
        }
        if let Some(recovery) = recovery {
            broker.recover(recovery)?;
        }
        if let Some(store) = &broker.store {
            broker.access.attach_store(store.clone());
        }
        broker.apply_topology(&broker.config.topology).map_err(|e| format!("load_definitions: {e}"))?;
        Ok(broker)
    }

    pub fn vhost(&self, name: &ShortStr) -> Option<Arc<VirtualHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    /// Adds a virtual host with RabbitMQ's standard exchanges; false if it
    /// exists already.
    pub fn add_vhost(&self, name: &ShortStr) -> bool {
        let mut added = false;
        self.vhosts.entry(name.clone()).or_insert_with(|| {
            added = true;
            VirtualHost::new(name.clone(), self.alarms.clone(), self.events.clone(), self.store.clone())
        });
        if let (true, Some(store)) = (added, &self.store) {
            store.definition(DefOp::Vhost(name.to_string()));
        }
        added
    }

    /// Deletes a virtual host with everything in it: its connections are
    /// closed (320, as RabbitMQ closes them), its permissions go, and its
    /// queues and exchanges go when the last connection using them has.
    /// False if there was none.
    pub fn delete_vhost(&self, name: &ShortStr) -> bool {
        if self.vhosts.remove(name).is_none() {
            return false;
        }
        if let Some(store) = &self.store {
            store.definition(DefOp::DeleteVhost(name.to_string()));
        }
        let text = name.to_string();
        self.access.forget_vhost(&text);
        for c in self.connections.all() {
            if c.details().is_some_and(|d| d.vhost == text) {
                c.force_close(&format!("vhost '{text}' is deleted"));
            }
        }
        true
    }

    /// Puts the broker back as it started, for the next test: every
    /// connection is sent `connection.close` 320 ("broker reset") and closed
    /// without waiting for `close-ok`, and its id returned; every virtual host is replaced by a fresh one (so every
    /// queue, exchange and binding not in the start-up configuration goes,
    /// and messages with them), vhosts added since are removed; users and
    /// permissions are the start-up ones again; alarms raised by hand are
    /// cleared; the start-up definitions' exchanges, queues and bindings are
    /// declared again. The connections finish closing on their own tasks
    /// ([`reset_and_wait`](Self::reset_and_wait) waits for them).
    pub fn reset(&self) -> Vec<u64> {
        let connections = self.connections.all();
        for c in &connections {
            c.close_now("broker reset");
        }
        self.vhosts.clear();
        if let Some(store) = &self.store {
            // The data directory is part of the state a reset clears.
            store.clear();
        }
        for name in &self.config.vhosts {
            self.add_vhost(&ShortStr::from(name.as_str()));
        }
        self.access.reset(&self.config);
        // It applied at start-up, on the same fresh vhosts.
        let _ = self.apply_topology(&self.config.topology);
        self.alarms.clear(alarm::Resource::Memory);
        self.alarms.clear(alarm::Resource::Disk);
        connections.iter().map(|c| c.id()).collect()
    }

    /// [`reset`](Self::reset), then waits until the connections it closed
    /// have gone (they do not wait for `close-ok`), or until `timeout`.
    pub async fn reset_and_wait(&self, timeout: std::time::Duration) -> Reset {
        let started = tokio::time::Instant::now();
        let mut count = self.gauges.connections.subscribe();
        let closed = self.reset();
        let gone = |_: &usize| closed.iter().all(|id| !self.connections.contains(*id));
        let all_gone = tokio::time::timeout(timeout, count.wait_for(gone)).await.is_ok();
        Reset { closed_connections: closed.len(), all_gone, took: started.elapsed() }
    }

    /// A new virtual host for one test, named `test-…` (unpredictable), in
    /// which `user` gets every permission. Delete it with
    /// [`delete_vhost`](Self::delete_vhost) when the test is done.
    pub fn fresh_vhost(&self, user: &str) -> Result<ShortStr, String> {
        let name = loop {
            let name = self.generate_name("test");
            if self.add_vhost(&name) {
                break name;
            }
        };
        if let Err(e) = self.access.set_permission(&crate::config::PermissionConfig::full(user, &name.to_string())) {
            self.delete_vhost(&name);
            return Err(e);
        }
        Ok(name)
    }

    /// A server-generated name, RabbitMQ style: `prefix-` and 22 URL-safe
    /// base64 characters of 16 unpredictable octets (`amq.gen-…`, `amq.ctag-…`).
    pub fn generate_name(&self, prefix: &str) -> ShortStr {
        let n = self.name_counter.fetch_add(1, Ordering::Relaxed);
        let mut octets = [0u8; 16];
        for (i, half) in octets.chunks_mut(8).enumerate() {
            let mut h = self.name_seed.build_hasher();
            h.write_u64(n);
            h.write_usize(i);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        ShortStr::from(format!("{prefix}-{}", base64url(&octets)))
    }
}

/// What a [`Broker::reset_and_wait`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    pub closed_connections: usize,
    /// Every connection closed by the reset had gone before the timeout.
    pub all_gone: bool,
    pub took: std::time::Duration,
}

/// Counts of live things, each a `watch` so a test can await a value
/// (`gauge.subscribe().wait_for(|n| *n == 0)`) instead of polling.
#[derive(Default)]
pub struct Gauges {
    pub connections: Arc<watch::Sender<usize>>,
    /// Heartbeat sender and monitor tasks running, over all connections.
    pub heartbeat_tasks: Arc<watch::Sender<usize>>,
}

/// Counts since the broker started that belong to no connection (message
/// counts are per connection, in `connections::Counters`).
#[derive(Debug, Default)]
pub struct Totals {
    /// Messages published through the HTTP API.
    pub http_published: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    /// Connections dropped for missed heartbeats.
    pub heartbeat_timeouts: AtomicU64,
}

impl Totals {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Counts one live thing for as long as it is held.
pub struct GaugeGuard(Arc<watch::Sender<usize>>);

impl GaugeGuard {
    pub fn new(gauge: &Arc<watch::Sender<usize>>) -> GaugeGuard {
        gauge.send_modify(|n| *n += 1);
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 2);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_look_like_rabbitmqs() {
        let b = Broker::new(Config::default()).unwrap();
        let a = b.generate_name("amq.gen");
        let c = b.generate_name("amq.gen");
        assert_ne!(a, c);
        let s = a.to_string();
        let suffix = s.strip_prefix("amq.gen-").unwrap();
        assert_eq!(suffix.len(), 22);
        assert!(suffix.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
