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

/// Accepts connections on `listener` until `shutdown` turns true (or its
/// sender is dropped), then waits for the connections to close. Restarts
/// the listener when asked to (see `broker::restart`).
pub fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    // Done now, not when the task first runs: a restart asked for right
    // after start finds a listener to restart.
    let addr = listener.local_addr();
    if let Ok(addr) = addr {
        let _ = broker.amqp_addr.set(addr);
    }
    let requests = broker.restarts.take_requests();
    serve_until_shutdown(listener, addr, requests, broker, shutdown)
}

async fn serve_until_shutdown(
    listener: TcpListener,
    addr: std::io::Result<SocketAddr>,
    mut requests: Option<Requests>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(addr) = addr else {
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
    let mut listener = listener;
    while let (Some(Pending { restart, done }), closed_connections) =
        run(listener, &broker, &shutdown, requests.as_mut()).await
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
        listener = match rebind(addr).await {
            Ok(l) => l,
            Err(e) => {
                let _ = done.send(Err(format!("cannot listen on {addr} again: {e}")));
                return;
            }
        };
        info!("restart: listening on {addr} again");
        broker.report_started();
        let _ = done.send(Ok(Restarted { closed_connections, kept, dropped, took: started.elapsed() }));
    }
}

/// One run of the accept loop: accepts connections until shutdown (None)
/// or a restart request (returned); then closes the listener and every
/// connection (320 'shutdown', or a reset for a crash), waits for them and
/// says how many there were.
async fn run(
    listener: TcpListener,
    broker: &Arc<Broker>,
    shutdown: &watch::Receiver<bool>,
    mut requests: Option<&mut Requests>,
) -> (Option<Pending>, usize) {
    // The connections of this run watch this signal, not `shutdown`, so
    // that a restart can close them and leave the next run's alone.
    let (close, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    let restart = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    connections.spawn(connection::serve(socket, broker.clone(), closing.clone()));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning; the connections that exist keep working.
                    warn!("error accepting connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => break None,
            Some(request) = async { requests.as_mut()?.next().await }, if requests.is_some() => break Some(request),
        }
    };
    drop(listener);
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
