//! warren inside a test suite: one call starts an isolated broker on an
//! ephemeral loopback port.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let broker = warren::EmbeddedBroker::builder().heartbeat(1).start().await?;
//! let url = broker.url(); // amqp://guest:guest@127.0.0.1:PORT/%2f
//! // ... connect any AMQP client to `url` ...
//! broker.shutdown().await; // or just drop it
//! # Ok(())
//! # }
//! ```
//!
//! Each broker has its own state; any number can run in one process. The
//! broker runs on the caller's tokio runtime.
//!
//! For TLS, one more call makes a throwaway certificate authority, server
//! and client certificates, and an amqps listener:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let dir = std::env::temp_dir().join("my-test-certs");
//! let broker = warren::EmbeddedBroker::builder().tls_self_signed(&dir).start().await?;
//! let url = broker.amqps_url().unwrap(); // amqps://guest:guest@localhost:PORT/%2f
//! let certs = broker.certificates().unwrap(); // ca_certificate, client_certificate, client_key
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::alarm::MemoryStrategy;
use crate::broker::alarm::Resource;
pub use crate::broker::connections::{ConnectionHandle, ConnectionState, ConnectionStats};
use crate::broker::events::Event;
pub use crate::broker::restart::{Restart, Restarted};
use crate::broker::Broker;
use crate::config::tls::Verify;
use crate::config::{Config, PermissionConfig, UserConfig};
use crate::server::Listeners;
pub use crate::tls::certs::TestCertificates;
use crate::tls::Acceptor;

/// Options for an embedded broker; the defaults are RabbitMQ's, on
/// 127.0.0.1 port 0.
///
/// Permissions: to keep tests short, every user gets full permissions on
/// every virtual host, unless [`permissions`](Self::permissions) is given
/// for that user, which then grants exactly what it lists.
#[derive(Debug, Clone)]
pub struct EmbeddedBuilder {
    config: Config,
    /// Users whose permissions were set explicitly.
    restricted: Vec<String>,
    /// Serve the HTTP control API too.
    http: bool,
    /// Make test certificates here at start, and listen for amqps.
    self_signed: Option<std::path::PathBuf>,
}

impl Default for EmbeddedBuilder {
    fn default() -> Self {
        let mut config = Config::default();
        config.listen.set_port(0);
        // Embedded brokers share their process with the test and with each
        // other: each watches only its own messages (see `broker::alarm`).
        config.memory_strategy = MemoryStrategy::Legacy;
        EmbeddedBuilder { config, restricted: Vec::new(), http: false, self_signed: None }
    }
}

impl EmbeddedBuilder {
    /// Heartbeat proposed in `connection.tune`, seconds (clients decide).
    pub fn heartbeat(mut self, secs: u16) -> Self {
        self.config.heartbeat = secs;
        self
    }

    pub fn frame_max(mut self, frame_max: u32) -> Self {
        self.config.frame_max = frame_max;
        self
    }

    pub fn channel_max(mut self, channel_max: u16) -> Self {
        self.config.channel_max = channel_max;
        self
    }

    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Also serves the HTTP control API on a free loopback port
    /// ([`EmbeddedBroker::http_addr`]).
    pub fn http(mut self, on: bool) -> Self {
        self.http = on;
        self
    }

    /// Timeouts and the connection cap of the HTTP API.
    pub fn http_limits(mut self, limits: crate::config::HttpLimits) -> Self {
        self.config.http_limits = limits;
        self
    }

    /// Logs every frame in and out (through `tracing`, target
    /// `warren::frames`), as `--trace-frames` does for the binary.
    pub fn trace_frames(mut self, on: bool) -> Self {
        self.config.trace_frames = on;
        self
    }

    /// How long a delivery may stay unacknowledged (`consumer_timeout`).
    pub fn consumer_timeout(mut self, timeout: Duration) -> Self {
        self.config.consumer_timeout = Some(timeout);
        self
    }

    /// The memory high watermark in bytes: past it, publishers are blocked
    /// (`vm_memory_high_watermark.absolute`).
    pub fn memory_high_watermark(mut self, bytes: usize) -> Self {
        self.config.memory_high_watermark = crate::config::Watermark::Absolute(bytes);
        self
    }

    /// What the watermark is compared with besides the broker's own
    /// messages (`vm_memory_calculation_strategy`); embedded brokers default
    /// to `Legacy`, their own messages only.
    pub fn memory_strategy(mut self, strategy: MemoryStrategy) -> Self {
        self.config.memory_strategy = strategy;
        self
    }

    /// Most connections at once (`connection_max`); past it, 530 at
    /// `connection.open`.
    pub fn connection_max(mut self, max: usize) -> Self {
        self.config.connection_max = Some(max);
        self
    }

    /// Largest message body (`max_message_size`), at most 512 MiB.
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.config.max_message_size = bytes.min(crate::config::MAX_MESSAGE_SIZE_CAP);
        self
    }

    /// Adds a user without tags (guest/guest, an administrator, exists
    /// unless the config is replaced).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.config.users.retain(|u| u.name != name);
        self.config.users.push(UserConfig::plain(name, password));
        self
    }

    /// Adds a user with RabbitMQ user tags (`administrator`, `monitoring`,
    /// `policymaker`, `management`), which decide what it may do on the
    /// HTTP API.
    pub fn user_with_tags(mut self, name: &str, password: &str, tags: &[&str]) -> Self {
        self.config.users.retain(|u| u.name != name);
        let tags = tags.iter().map(|t| t.to_string()).collect();
        self.config.users.push(UserConfig { tags, ..UserConfig::plain(name, password) });
        self
    }

    /// Sets `user`'s permissions in `vhost` (regexes, as in RabbitMQ). A user
    /// given any permissions here has only those.
    pub fn permissions(mut self, user: &str, vhost: &str, configure: &str, write: &str, read: &str) -> Self {
        if !self.restricted.iter().any(|u| u == user) {
            self.restricted.push(user.into());
            self.config.permissions.retain(|p| p.user != user);
        }
        self.config.permissions.retain(|p| !(p.user == user && p.vhost == vhost));
        self.config.permissions.push(PermissionConfig {
            user: user.into(),
            vhost: vhost.into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        });
        self
    }

    /// Users that may connect only from loopback (RabbitMQ's default: guest).
    pub fn loopback_users(mut self, users: &[&str]) -> Self {
        self.config.loopback_users = users.iter().map(|u| u.to_string()).collect();
        self
    }

    /// Adds a virtual host ("/" exists by default).
    pub fn vhost(mut self, name: &str) -> Self {
        self.config.vhosts.push(name.into());
        self
    }

    /// Keeps durable definitions and persistent messages in `dir` and
    /// recovers them from it at start (see `store`).
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.data_dir = Some(dir.into());
        self
    }

    /// Free space on the data directory's disk below which publishers are
    /// blocked (`disk_free_limit`; 50 MB by default).
    pub fn disk_free_limit(mut self, limit: crate::config::DiskLimit) -> Self {
        self.config.disk_free_limit = limit;
        self
    }

    /// Starts from a whole [`Config`] instead (its listen address is used).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// An amqps listener on 127.0.0.1 (a free port), with a certificate
    /// authority, a server certificate (localhost, 127.0.0.1, ::1) and a
    /// client certificate for `guest` made in `dir` at start (see
    /// [`TestCertificates`]). Client certificates are asked for and checked
    /// (`verify_peer`), not required (`fail_if_no_peer_cert = false`);
    /// [`config`](Self::config) with other `ssl_options` for anything else.
    pub fn tls_self_signed(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.self_signed = Some(dir.into());
        self
    }

    /// Whether there is a plain AMQP listener (default: yes). Without one,
    /// [`EmbeddedBroker::addr`] is the TLS listener's address.
    pub fn tcp(mut self, on: bool) -> Self {
        self.config.tcp_listener = on;
        self
    }

    pub async fn start(mut self) -> io::Result<EmbeddedBroker> {
        for user in &self.config.users {
            if self.restricted.contains(&user.name) {
                continue;
            }
            for vhost in &self.config.vhosts {
                if !self.config.permissions.iter().any(|p| p.user == user.name && p.vhost == *vhost) {
                    self.config.permissions.push(PermissionConfig::full(&user.name, vhost));
                }
            }
        }
        let certificates = match &self.self_signed {
            Some(dir) => {
                let certs = TestCertificates::generate(dir, "guest").map_err(io::Error::other)?;
                let o = &mut self.config.ssl_options;
                o.certfile = Some(certs.server_certificate.clone());
                o.keyfile = Some(certs.server_key.clone());
                o.cacertfile = Some(certs.ca_certificate.clone());
                o.verify = Verify::Peer;
                o.fail_if_no_peer_cert = false;
                self.config.tls_listen.get_or_insert(SocketAddr::from(([127, 0, 0, 1], 0)));
                Some(certs)
            }
            None => None,
        };
        let broker = Broker::new(self.config.clone()).map_err(io::Error::other)?;
        let tcp = match self.config.tcp_listener {
            true => Some(TcpListener::bind(self.config.listen).await?),
            false => None,
        };
        let tls = match self.config.tls_listen {
            Some(at) => {
                let acceptor = Acceptor::new(&self.config.ssl_options).map_err(io::Error::other)?;
                Some((TcpListener::bind(at).await?, Arc::new(acceptor)))
            }
            None => None,
        };
        let tls_addr = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
        let addr = match (&tcp, tls_addr) {
            (Some(l), _) => l.local_addr()?,
            (None, Some(a)) => a,
            (None, None) => return Err(io::Error::other("no listener: neither TCP nor TLS")),
        };
        let (shutdown, stop) = watch::channel(false);
        let http_addr = if self.http {
            let http = TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
            let http_addr = http.local_addr()?;
            tokio::spawn(crate::http::serve(http, broker.clone(), stop.clone()));
            Some(http_addr)
        } else {
            None
        };
        let task = tokio::spawn(crate::server::serve(Listeners { tcp, tls }, broker.clone(), stop));
        Ok(EmbeddedBroker { addr, tls_addr, certificates, http_addr, broker, shutdown, task: Some(task) })
    }
}

/// A running embedded broker. Dropping it shuts it down.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    certificates: Option<TestCertificates>,
    http_addr: Option<SocketAddr>,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    pub fn builder() -> EmbeddedBuilder {
        EmbeddedBuilder::default()
    }

    /// Starts a broker with the defaults.
    pub async fn start() -> io::Result<EmbeddedBroker> {
        EmbeddedBuilder::default().start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the amqps listener is, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The files [`EmbeddedBuilder::tls_self_signed`] made.
    pub fn certificates(&self) -> Option<&TestCertificates> {
        self.certificates.as_ref()
    }

    /// `amqps://guest:guest@localhost:PORT/%2f`, if there is a TLS
    /// listener: `localhost`, the name the test server certificate is for.
    pub fn amqps_url(&self) -> Option<String> {
        self.amqps_url_for("guest", "guest", "/")
    }

    pub fn amqps_url_for(&self, user: &str, password: &str, vhost: &str) -> Option<String> {
        let vhost = vhost.replace('%', "%25").replace('/', "%2f");
        self.tls_addr.map(|a| format!("amqps://{user}:{password}@localhost:{}/{vhost}", a.port()))
    }

    /// Where the HTTP control API listens, if the builder asked for it.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`: the vhost spelled `%2f`,
    /// because some clients read a bare trailing `/` as the empty vhost.
    pub fn url(&self) -> String {
        self.url_for("guest", "guest", "/")
    }

    pub fn url_for(&self, user: &str, password: &str, vhost: &str) -> String {
        let vhost = vhost.replace('%', "%25").replace('/', "%2f");
        format!("amqp://{user}:{password}@{}/{vhost}", self.addr)
    }

    /// A virtual host of its own for one test, with every permission for
    /// guest; it is deleted (its connections closed, its queues gone) when
    /// the returned value is dropped.
    pub fn fresh_vhost(&self) -> FreshVhost {
        let name = self.broker.fresh_vhost("guest").expect("guest is a start-up user");
        let url = self.url_for("guest", "guest", &name.to_string());
        FreshVhost { broker: self.broker.clone(), name: name.to_string(), url }
    }

    /// Raises a resource alarm by hand, as if memory (or disk) had run low:
    /// publishing connections get blocked, exactly as under a real alarm.
    pub fn raise_alarm(&self, resource: Resource) {
        self.broker.alarms.raise(resource);
    }

    /// Clears an alarm raised with [`raise_alarm`](Self::raise_alarm).
    pub fn clear_alarm(&self, resource: Resource) {
        self.broker.alarms.clear(resource);
    }

    /// The open connections, by name (`client -> server`), with their
    /// state (`running`, `blocking`, `blocked`, `flow`…).
    pub fn connections(&self) -> Vec<(String, ConnectionState)> {
        self.broker.connections.all().iter().map(|c| (c.name().to_string(), c.state())).collect()
    }

    /// Starts listening to what happens in the broker (see [`Event`]).
    /// Subscribe before doing what should cause the event you wait for.
    pub fn events(&self) -> EventStream {
        EventStream { rx: self.broker.events.subscribe() }
    }

    /// Every open connection, as handles for inspection and fault injection.
    pub fn all_connections(&self) -> Vec<ConnectionHandle> {
        self.broker.connections.all()
    }

    /// The open connection with this name, RabbitMQ style
    /// (`127.0.0.1:50000 -> 127.0.0.1:5672`), or with this client-provided
    /// `connection_name`.
    pub fn connection(&self, name: &str) -> Option<ConnectionHandle> {
        self.broker.connections.find(name)
    }

    /// The first open connection that `predicate` accepts.
    pub fn find_connection(&self, predicate: impl Fn(&ConnectionHandle) -> bool) -> Option<ConnectionHandle> {
        self.all_connections().into_iter().find(|c| predicate(c))
    }

    /// Waits (up to `timeout`) for a connection that `predicate` accepts to
    /// be open and running.
    pub async fn wait_for_connection(
        &self,
        predicate: impl Fn(&ConnectionHandle) -> bool,
        timeout: Duration,
    ) -> Option<ConnectionHandle> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let watch = self.watch_connections();
            let running = self.find_connection(|c| c.state() != ConnectionState::Starting && predicate(c));
            if running.is_some() {
                return running;
            }
            if !watch.changed(deadline).await {
                return None;
            }
        }
    }

    /// Waits until some connection is in `state` (and returns its name),
    /// or until `timeout` passes.
    pub async fn wait_for_connection_state(&self, state: ConnectionState, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let watch = self.watch_connections();
            if let Some(c) = self.find_connection(|c| c.state() == state) {
                return Some(c.name().to_string());
            }
            if !watch.changed(deadline).await {
                return None;
            }
        }
    }

    /// Starts watching for any change among the connections: one opening
    /// or closing, or one changing state. Taken before looking, so that a
    /// change in between is not missed.
    fn watch_connections(&self) -> ConnectionsWatch {
        ConnectionsWatch {
            count: self.broker.gauges.connections.subscribe(),
            states: self.broker.connections.watch_states(),
        }
    }

    /// Puts the broker back as it started, between tests: closes every
    /// connection (320 "broker reset") and waits (up to 5 s) for them to go;
    /// removes every queue, exchange, binding, vhost, user and permission
    /// not in its start-up configuration; clears alarms raised by hand.
    pub async fn reset(&self) -> crate::broker::Reset {
        self.broker.reset_and_wait(Duration::from_secs(5)).await
    }

    /// Restarts the broker as a RabbitMQ node restarts: connections closed
    /// (320 'shutdown') or, with `crash`, reset; the port refusing
    /// connections for `downtime`; durable exchanges, durable queues, their
    /// bindings and persistent messages kept, the rest gone (see
    /// `broker::restart`). Returns once it listens again on the same port.
    pub async fn restart(&self, restart: Restart) -> Result<Restarted, String> {
        self.broker.restart(restart).await
    }

    /// The broker's shared state, for inspection in tests.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Closes every connection (320 CONNECTION_FORCED) and waits until
    /// the broker has stopped.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// A virtual host for one test, from [`EmbeddedBroker::fresh_vhost`];
/// deleted on drop.
pub struct FreshVhost {
    broker: Arc<Broker>,
    name: String,
    url: String,
}

impl FreshVhost {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/test-…`
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for FreshVhost {
    fn drop(&mut self) {
        self.broker.delete_vhost(&self.name.as_str().into());
    }
}

/// Events as they happen, from [`EmbeddedBroker::events`].
pub struct EventStream {
    rx: tokio::sync::broadcast::Receiver<crate::broker::events::Stamped>,
}

impl EventStream {
    /// The next event, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Ok(stamped)) => return Some(stamped.event),
                // Fell behind: the oldest events are gone; go on with the rest.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The next event that `matches`, skipping others; None after `timeout`.
    pub async fn wait_for(&mut self, matches: impl Fn(&Event) -> bool, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            if matches(&event) {
                return Some(event);
            }
        }
    }
}

/// Watches the connections for any change (see `watch_connections`).
struct ConnectionsWatch {
    count: watch::Receiver<usize>,
    states: watch::Receiver<u64>,
}

impl ConnectionsWatch {
    /// True at the first change, false if `deadline` comes first.
    async fn changed(mut self, deadline: tokio::time::Instant) -> bool {
        tokio::select! {
            _ = self.states.changed() => true,
            _ = self.count.changed() => true,
            _ = tokio::time::sleep_until(deadline) => false,
        }
    }
}
