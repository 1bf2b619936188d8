//! The listener: accepts sockets and gives each its connection task.
//!
//! Shutdown is a `watch` signal. Every connection watches it, sends
//! `connection.close` 320 (CONNECTION_FORCED) to its client and ends; the
//! accept loop stops accepting and waits for its connections to finish
//! (bounded), so that a shut-down broker has let go of every socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::connection;

/// Accepts connections on `listener` until `shutdown` turns true (or its
/// sender is dropped), then waits for the connections to close.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        let _ = broker.amqp_addr.set(addr);
    }
    // The memory monitor lives as long as the listener (see `broker::alarm`).
    let config = &broker.config;
    let monitor = tokio::spawn(crate::broker::alarm::run_monitor(
        broker.alarms.clone(),
        config.memory_strategy,
        config.memory_monitor_interval,
        shutdown.clone(),
    ));
    let _monitor = AbortOnDrop(monitor);
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    connections.spawn(connection::serve(socket, broker.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning; the connections that exist keep working.
                    warn!("error accepting connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => break,
        }
    }
    drop(listener);
    info!("stopping: closing {} connection(s)", connections.len());
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), all_closed).await.is_err() {
        connections.abort_all();
    }
}

/// Aborts a task when dropped, so it cannot outlive what spawned it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
