//! The listener: accepts sockets and gives each its connection task.
//!
//! Shutdown is a `watch` signal. Every connection watches it, sends
//! `connection.close` 320 (CONNECTION_FORCED) to its client and ends; the
//! accept loop stops accepting and waits for its connections to finish
//! (bounded), so that a shut-down broker has let go of every socket.
//!
//! A restart (`broker::restart`) is the same stop without the end: the
//! listener and the connections go, then, after the downtime, the same
//! address is bound again and a new run of the accept loop begins.
//!
//! There are up to two listeners, as in RabbitMQ: plain AMQP
//! (`listeners.tcp.default`) and amqps (`listeners.ssl.default`), whose
//! sockets go through their TLS handshake first (`crate::tls`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::broker::restart::{Pending, Requests, Restarted};
use crate::broker::Broker;
use crate::connection;
use crate::tls::Acceptor;

/// The sockets a broker listens on: plain AMQP, amqps, or both.
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub tls: Option<(TcpListener, Arc<Acceptor>)>,
}

impl From<TcpListener> for Listeners {
    fn from(tcp: TcpListener) -> Listeners {
        Listeners { tcp: Some(tcp), tls: None }
    }
}

/// Where each listener is, to bind it again after a restart.
#[derive(Clone)]
struct Addresses {
    tcp: Option<SocketAddr>,
    tls: Option<(SocketAddr, Arc<Acceptor>)>,
}

impl Listeners {
    fn addresses(&self) -> std::io::Result<Addresses> {
        Ok(Addresses {
            tcp: self.tcp.as_ref().map(TcpListener::local_addr).transpose()?,
            tls: match &self.tls {
                Some((l, acceptor)) => Some((l.local_addr()?, acceptor.clone())),
                None => None,
            },
        })
    }
}

/// Accepts connections on `listeners` until `shutdown` turns true (or its
/// sender is dropped), then waits for the connections to close. Restarts
/// the listeners when asked to (see `broker::restart`).
pub fn serve(
    listeners: impl Into<Listeners>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    let listeners = listeners.into();
    // Done now, not when the task first runs: a restart asked for right
    // after start finds a listener to restart, and the demo an address.
    let addrs = listeners.addresses();
    if let Ok(a) = &addrs {
        if let Some(addr) = a.tcp.or(a.tls.as_ref().map(|t| t.0)) {
            let _ = broker.amqp_addr.set(addr);
        }
        if let Some((addr, _)) = &a.tls {
            let _ = broker.amqps_addr.set(*addr);
        }
    }
    let requests = broker.restarts.take_requests();
    serve_until_shutdown(listeners, addrs, requests, broker, shutdown)
}

async fn serve_until_shutdown(
    listeners: Listeners,
    addrs: std::io::Result<Addresses>,
    mut requests: Option<Requests>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(addrs) = addrs else {
        warn!("the listener has no address; not serving");
        return;
    };
    // The memory monitor lives as long as the listener (see `broker::alarm`).
    let config = &broker.config;
    let monitor = tokio::spawn(crate::broker::alarm::run_monitor(
        broker.alarms.clone(),
        config.memory_strategy,
        config.memory_monitor_interval,
        shutdown.clone(),
    ));
    let _monitor = AbortOnDrop(monitor);
    let _disk_monitor = config.data_dir.clone().map(|dir| {
        AbortOnDrop(tokio::spawn(crate::broker::disk::run_monitor(
            broker.alarms.clone(),
            dir,
            config.disk_free_limit,
            shutdown.clone(),
        )))
    });
    let mut listeners = listeners;
    while let (Some(Pending { restart, done }), closed_connections) =
        run(listeners, &broker, &shutdown, requests.as_mut()).await
    {
        let started = tokio::time::Instant::now();
        let (kept, dropped) = broker.keep_durable();
        broker.report_stopped(restart.crash);
        info!(
            "restart: stopped; kept {} queue(s) with {} message(s), dropped {} queue(s), {} exchange(s) \
             and {} message(s); back in {:?}",
            kept.queues, kept.messages, dropped.queues, dropped.exchanges, dropped.messages, restart.downtime
        );
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(restart.downtime) => {}
            _ = stop.wait_for(|stop| *stop) => {
                let _ = done.send(Err("the broker shut down during the restart".into()));
                return;
            }
        }
        listeners = match rebind_all(&addrs).await {
            Ok(l) => l,
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        };
        info!("restart: listening again");
        broker.report_started();
        let _ = done.send(Ok(Restarted { closed_connections, kept, dropped, took: started.elapsed() }));
    }
}

/// One run of the accept loop: accepts connections until shutdown (None)
/// or a restart request (returned); then closes the listener and every
/// connection (320 'shutdown', or a reset for a crash), waits for them and
/// says how many there were.
async fn run(
    listeners: Listeners,
    broker: &Arc<Broker>,
    shutdown: &watch::Receiver<bool>,
    mut requests: Option<&mut Requests>,
) -> (Option<Pending>, usize) {
    // The connections of this run watch this signal, not `shutdown`, so
    // that a restart can close them and leave the next run's alone.
    let (close, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    let tls = listeners.tls.as_ref().map(|(l, _)| l);
    let restart = loop {
        tokio::select! {
            accepted = accept(listeners.tcp.as_ref()) => match accepted {
                Ok((socket, _)) => {
                    connections.spawn(connection::serve(socket, broker.clone(), closing.clone()));
                }
                Err(e) => back_off(e).await,
            },
            accepted = accept(tls) => match (accepted, &listeners.tls) {
                (Ok((socket, _)), Some((_, acceptor))) => {
                    connections.spawn(crate::tls::serve(socket, acceptor.clone(), broker.clone(), closing.clone()));
                }
                (Err(e), _) => back_off(e).await,
                (Ok(_), None) => {}
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => break None,
            Some(request) = async { requests.as_mut()?.next().await }, if requests.is_some() => break Some(request),
        }
    };
    drop(listeners);
    let open = connections.len();
    info!("stopping: closing {open} connection(s)");
    if restart.as_ref().is_some_and(|r| r.restart.crash) {
        for c in broker.connections.all() {
            c.kill();
        }
    }
    // Connections still in their handshake (and all of them when not
    // crashing) are closed with 320.
    close.send_replace(true);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), all_closed).await.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    (restart, open)
}

/// The next socket `listener` accepts; never, if there is no listener.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Usually out of file descriptors: backs off instead of spinning; the
/// connections that exist keep working.
async fn back_off(e: std::io::Error) {
    warn!("error accepting connection: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Binds every listener again after a restart's downtime.
async fn rebind_all(addrs: &Addresses) -> Result<Listeners, String> {
    let again =
        |addr: SocketAddr| async move { rebind(addr).await.map_err(|e| format!("cannot listen on {addr} again: {e}")) };
    let tcp = match addrs.tcp {
        Some(addr) => Some(again(addr).await?),
        None => None,
    };
    let tls = match &addrs.tls {
        Some((addr, acceptor)) => Some((again(*addr).await?, acceptor.clone())),
        None => None,
    };
    Ok(Listeners { tcp, tls })
}

/// Binds `addr` again after a restart's downtime. The port was ours a
/// moment ago; a few tries ride out a socket that has not quite let go.
async fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if tries < 20 && e.kind() == std::io::ErrorKind::AddrInUse => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Aborts a task when dropped, so it cannot outlive what spawned it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
