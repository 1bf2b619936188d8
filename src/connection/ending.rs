//! How a connection ends: [`Stop`], what handling a frame can decide, and
//! [`End`], the way the connection's life actually ended, with the last log
//! line RabbitMQ writes for it.

use std::io;

use tracing::{debug, error, info, warn};

use super::heartbeat::MissedHeartbeats;
use super::{Phase, CLOSE_TIMEOUT};
use crate::error::AmqpError;
use crate::logging::Escaped;

/// Why handling a frame ends the connection's normal life.
pub enum Stop {
    /// Send this as `connection.close` and wait for `close-ok`.
    Error(AmqpError),
    /// Close the socket without a close frame, as RabbitMQ does for
    /// handshake failures; the text goes to the log.
    Silent(String),
    /// The close handshake is complete.
    Done,
}

impl From<AmqpError> for Stop {
    fn from(e: AmqpError) -> Stop {
        Stop::Error(e)
    }
}

/// How the connection ended.
pub enum End {
    Closed,
    /// Reset by the fault injection.
    Killed,
    PeerClosed(Option<io::Error>),
    MissedHeartbeats(MissedHeartbeats),
    HandshakeTimeout(&'static str),
    WriterFailed(io::Error),
    CloseTimeout,
    Silent(String),
    Shutdown,
    /// Closed by a broker reset, without waiting for `close-ok`.
    Reset,
}

/// What the last log line says about the connection.
pub struct Obituary<'a> {
    pub id: u64,
    /// `client -> server`.
    pub name: &'a str,
    /// `, vhost: '…', user: '…'` once open, else empty.
    pub who: String,
    /// Its age, as RabbitMQ prints it.
    pub duration: String,
    pub phase: Phase,
    pub received_nothing: bool,
    /// Negotiated heartbeat T, in seconds.
    pub heartbeat: u16,
}

impl End {
    /// Why the connection ended, in a few words, for the event stream.
    pub fn reason(&self) -> String {
        match self {
            End::Closed => "closed (connection.close handshake)".into(),
            End::Killed => "killed (TCP reset) by fault injection".into(),
            End::PeerClosed(_) => "client unexpectedly closed TCP connection".into(),
            End::MissedHeartbeats(_) => "missed heartbeats from client".into(),
            End::HandshakeTimeout(what) => format!("handshake timeout ({what})"),
            End::WriterFailed(e) => format!("write failed: {e}"),
            End::CloseTimeout => "no connection.close-ok in time".into(),
            End::Silent(reason) => reason.clone(),
            End::Shutdown => "broker shutdown".into(),
            End::Reset => "broker reset".into(),
        }
    }

    /// Whether what is queued for the client is still worth writing.
    pub fn flushes(&self) -> bool {
        matches!(self, End::Closed | End::Silent(_) | End::Shutdown | End::Reset)
    }

    /// Writes the last log line, in RabbitMQ's words.
    pub fn log(&self, o: &Obituary) {
        let Obituary { id, name, who, duration, .. } = o;
        // RabbitMQ names a connection by its process id; warren has an id.
        let log_name = format!("<0.{id}.0> ({name}");
        match self {
            End::Closed => info!("closing AMQP connection ({name}{who}, duration: '{duration}')"),
            End::PeerClosed(_) if o.phase == Phase::Starting && o.received_nothing => {
                debug!("closing AMQP connection {log_name}, duration: '{duration}'): connection closed with no data received")
            }
            // After our connection.close, the client may just hang up.
            End::PeerClosed(_) if o.phase == Phase::Closing => {}
            End::PeerClosed(e) => {
                let detail = e.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
                warn!("closing AMQP connection {log_name}{who}, duration: '{duration}'): client unexpectedly closed TCP connection{detail}")
            }
            End::MissedHeartbeats(m) => {
                error!(
                    "closing AMQP connection {log_name}, duration: '{duration}'): missed heartbeats from client, timeout: {}s",
                    o.heartbeat
                );
                debug!("silence before detection: {:?}", m.silence);
            }
            End::HandshakeTimeout(what) => {
                error!("closing AMQP connection {log_name}, duration: '{duration}'): {{handshake_timeout,{what}}}")
            }
            End::WriterFailed(e) => warn!("closing AMQP connection {log_name}{who}, duration: '{duration}'): {e}"),
            End::CloseTimeout => debug!("no connection.close-ok within {CLOSE_TIMEOUT:?}"),
            End::Silent(reason) => {
                error!("closing AMQP connection {log_name}, duration: '{duration}'): {}", Escaped(reason))
            }
            // begin_close has logged the 320 already.
            End::Shutdown | End::Reset => {}
            End::Killed => warn!(
                "closing AMQP connection {log_name}{who}, duration: '{duration}'): killed (TCP reset) by fault injection"
            ),
        }
    }
}
