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

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;

/// Options for an embedded broker; the defaults are RabbitMQ's, on
/// 127.0.0.1 port 0.
#[derive(Debug, Clone)]
pub struct EmbeddedBuilder {
    config: Config,
}

impl Default for EmbeddedBuilder {
    fn default() -> Self {
        let mut config = Config::default();
        config.listen.set_port(0);
        EmbeddedBuilder { config }
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

    /// How long a delivery may stay unacknowledged (`consumer_timeout`).
    pub fn consumer_timeout(mut self, timeout: Duration) -> Self {
        self.config.consumer_timeout = Some(timeout);
        self
    }

    /// Adds a user (guest/guest exists unless the config is replaced).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.config.users.push((name.into(), password.into()));
        self
    }

    /// Adds a virtual host ("/" exists by default).
    pub fn vhost(mut self, name: &str) -> Self {
        self.config.vhosts.push(name.into());
        self
    }

    /// Starts from a whole [`Config`] instead (its listen address is used).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    pub async fn start(self) -> io::Result<EmbeddedBroker> {
        let listener = TcpListener::bind(self.config.listen).await?;
        let addr = listener.local_addr()?;
        let broker = Broker::new(self.config);
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(crate::server::serve(listener, broker.clone(), stop));
        Ok(EmbeddedBroker { addr, broker, shutdown, task: Some(task) })
    }
}

/// A running embedded broker. Dropping it shuts it down.
pub struct EmbeddedBroker {
    addr: SocketAddr,
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

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`: the vhost spelled `%2f`,
    /// because some clients read a bare trailing `/` as the empty vhost.
    pub fn url(&self) -> String {
        self.url_for("guest", "guest", "/")
    }

    pub fn url_for(&self, user: &str, password: &str, vhost: &str) -> String {
        let vhost = vhost.replace('%', "%25").replace('/', "%2f");
        format!("amqp://{user}:{password}@{}/{vhost}", self.addr)
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
