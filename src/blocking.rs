//! warren for test suites that are not async: the same embedded broker,
//! running on a runtime of its own, behind plain blocking calls.
//!
//! ```no_run
//! let broker = warren::blocking::Broker::start().unwrap();
//! let url = broker.url(); // give it to any client, sync or async
//! let mut events = broker.events();
//! // ... drive the client ...
//! let opened = events.wait_for(|e| matches!(e, warren::Event::ConnectionOpened { .. }), std::time::Duration::from_secs(5));
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::broker::alarm::Resource;
use crate::broker::connections::ConnectionState;
use crate::embedded::{ConnectionHandle, EmbeddedBroker, EmbeddedBuilder, EventStream};
use crate::Event;

/// An embedded broker with its own runtime (two worker threads).
pub struct Broker {
    // Declared first so it is dropped (and shut down) before the runtime.
    inner: Option<EmbeddedBroker>,
    runtime: Runtime,
}

impl Broker {
    /// Starts a broker with the defaults.
    pub fn start() -> io::Result<Broker> {
        Self::start_with(EmbeddedBroker::builder())
    }

    /// Starts a broker from a builder (heartbeat, users, watermark…).
    pub fn start_with(builder: EmbeddedBuilder) -> io::Result<Broker> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("warren").enable_all().build()?;
        let inner = runtime.block_on(builder.start())?;
        Ok(Broker { inner: Some(inner), runtime })
    }

    fn broker(&self) -> &EmbeddedBroker {
        self.inner.as_ref().expect("present until dropped")
    }

    pub fn addr(&self) -> SocketAddr {
        self.broker().addr()
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn url(&self) -> String {
        self.broker().url()
    }

    pub fn embedded(&self) -> &EmbeddedBroker {
        self.broker()
    }

    pub fn raise_alarm(&self, resource: Resource) {
        self.broker().raise_alarm(resource);
    }

    pub fn clear_alarm(&self, resource: Resource) {
        self.broker().clear_alarm(resource);
    }

    /// The connection with this name or client-provided name.
    pub fn connection(&self, name: &str) -> Option<ConnectionHandle> {
        self.broker().connection(name)
    }

    /// Waits for a running connection that `predicate` accepts.
    pub fn wait_for_connection(
        &self,
        predicate: impl Fn(&ConnectionHandle) -> bool,
        timeout: Duration,
    ) -> Option<ConnectionHandle> {
        self.runtime.block_on(self.broker().wait_for_connection(predicate, timeout))
    }

    pub fn connections(&self) -> Vec<(String, ConnectionState)> {
        self.broker().connections()
    }

    /// Puts the broker back as it started (see [`EmbeddedBroker::reset`]).
    pub fn reset(&self) -> crate::broker::Reset {
        self.runtime.block_on(self.broker().reset())
    }

    /// Restarts the broker (see [`EmbeddedBroker::restart`]).
    pub fn restart(&self, restart: crate::embedded::Restart) -> Result<crate::embedded::Restarted, String> {
        self.runtime.block_on(self.broker().restart(restart))
    }

    /// Starts listening to events; subscribe before causing them.
    pub fn events(&self) -> Events<'_> {
        Events { stream: self.broker().events(), runtime: &self.runtime }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            self.runtime.block_on(inner.shutdown());
        }
    }
}

/// Events from a blocking [`Broker`].
pub struct Events<'a> {
    stream: EventStream,
    runtime: &'a Runtime,
}

impl Events<'_> {
    pub fn next(&mut self, timeout: Duration) -> Option<Event> {
        self.runtime.block_on(self.stream.next(timeout))
    }

    pub fn wait_for(&mut self, matches: impl Fn(&Event) -> bool, timeout: Duration) -> Option<Event> {
        self.runtime.block_on(self.stream.wait_for(matches, timeout))
    }
}
