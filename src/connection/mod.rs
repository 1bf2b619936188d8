//! One AMQP connection, from the protocol header to the closed socket.
//!
//! The connection task reads the socket, cuts the bytes into frames
//! ([`crate::protocol::frame::parse_frame`]) and drives an explicit state
//! machine, as RabbitMQ's `rabbit_reader` does:
//!
//! ```text
//!  protocol header   start-ok        (secure-ok)       tune-ok         open
//! ----------------> Starting ----> Securing ----> Tuning ----> Opening ----> Running
//!   connection.start          (empty PLAIN)   connection.tune   heartbeats    open-ok
//!                                                               start here
//!  any state --(error sent as connection.close)--> Closing --(close-ok)--> closed
//! ```
//!
//! Around it run a writer task ([`writer`], the only owner of the socket's
//! write half) and, from `tune-ok` on, the two heartbeat tasks
//! ([`heartbeat`]). All of them end with the connection: the writer is
//! aborted on drop and the heartbeat tasks live in a `JoinSet` the
//! connection owns. Frames for a channel go to its [`channel::Channel`].

pub mod channel;
pub mod faults;
pub mod flow;
pub mod handshake;
pub mod heartbeat;
pub mod timeouts;
pub mod transport;
pub mod writer;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn, Instrument};

use self::channel::{Channel, ClientCapabilities, Session};
use self::faults::{Command as FaultCommand, Faults};
use self::flow::ConnectionState;
use self::handshake::{format_duration, payload_snippet, AuthError, Limits};
use self::heartbeat::{MissedHeartbeats, MonitorControl};
use self::transport::{ReadSide, WriteSide};
use self::writer::{Outbound, Outlet, REPLY_BACKLOG_HIGH, REPLY_BACKLOG_LOW};
use crate::broker::access::LoginError;
use crate::broker::alarm::AlarmSet;
use crate::broker::events::Event;
use crate::broker::inspect::ConnectionDetails;
use crate::broker::{Broker, ConnectionEntry, GaugeGuard};
use crate::error::AmqpError;
use crate::logging::Escaped;
use crate::protocol::constants::FRAME_OVERHEAD;
use crate::protocol::frame::{check_protocol_header, parse_frame, FrameError, ProtocolHeader, PROTOCOL_HEADER};
use crate::protocol::methods::{connection as conn, MethodError};
use crate::protocol::{FieldTable, FieldValue, Frame, Method, ReplyCode, ShortStr};

/// Where a connection is in its life (spec 2.2.4, RabbitMQ's reader states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// `connection.start` sent; waiting for `start-ok`.
    Starting,
    /// `connection.secure` sent; waiting for `secure-ok`.
    Securing,
    /// `connection.tune` sent; waiting for `tune-ok`.
    Tuning,
    /// Tuned, heartbeats running; waiting for `connection.open`.
    Opening,
    Running,
    /// `connection.close` sent; waiting for `close-ok`.
    Closing,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Securing => "securing",
            State::Tuning => "tuning",
            State::Opening => "opening",
            State::Running => "running",
            State::Closing => "closing",
        }
    }
}

/// The size of a connection's read buffer allocations.
const READ_BUFFER: usize = 64 * 1024;

/// How long to wait for `close-ok` after sending `connection.close`, and
/// for the writer to flush at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why processing a frame ends the connection's normal life.
enum Stop {
    /// Send this as `connection.close` and wait for `close-ok`.
    Error(AmqpError),
    /// Close the socket without a close frame, as RabbitMQ does for
    /// handshake failures; the text goes to the log.
    Silent(String),
    /// The close handshake is complete.
    Done,
}

/// How the connection ended, for the last log line.
enum End {
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
}

impl End {
    /// Why the connection ended, in a few words, for the event stream.
    fn reason(&self) -> String {
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
        }
    }
}

enum HeartbeatEnd {
    SenderStopped,
    Missed(MissedHeartbeats),
}

/// Logs a frame received, for `--trace-frames`.
fn trace_inbound(frame: &Frame) {
    match frame {
        Frame::Method { channel, method } => info!(target: "warren::frames", "<- [{channel}] {}", method.trace()),
        Frame::Header { channel, header } => {
            info!(target: "warren::frames", "<- [{channel}] content header body_size={}", header.body_size)
        }
        Frame::Body { channel, body } => {
            info!(target: "warren::frames", "<- [{channel}] content body {} octets", body.len())
        }
        Frame::Heartbeat { .. } => info!(target: "warren::frames", "<- heartbeat"),
    }
}

/// A connection's entry in the broker's registry, removed when it ends.
struct Registered {
    broker: Arc<Broker>,
    id: u64,
    entry: Arc<ConnectionEntry>,
    /// Where the toolkit's one-shot faults arrive.
    commands: mpsc::UnboundedReceiver<FaultCommand>,
}

impl Registered {
    fn new(broker: &Arc<Broker>, id: u64, name: &str, outlet: Arc<Outlet>) -> Registered {
        let (tx, commands) = mpsc::unbounded_channel();
        let entry = Arc::new(ConnectionEntry {
            name: name.to_string(),
            client_name: std::sync::OnceLock::new(),
            state: watch::Sender::new(ConnectionState::Starting),
            faults: Arc::new(Faults::default()),
            commands: tx,
            outlet,
            details: std::sync::OnceLock::new(),
            channels: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            accepted: Instant::now(),
        });
        broker.connections.insert(id, entry.clone());
        Registered { broker: broker.clone(), id, entry, commands }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.entry.state.send_replace(ConnectionState::Closing);
        self.broker.connections.remove(&self.id);
    }
}

/// Aborts the writer if the connection ends without waiting for it.
struct WriterTask(JoinHandle<io::Result<()>>);

impl Drop for WriterTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Connection {
    id: u64,
    /// The client's address (loopback-only users are checked against it).
    peer: std::net::SocketAddr,
    /// `client:port -> server:port`, RabbitMQ's connection name.
    name: String,
    broker: Arc<Broker>,
    outlet: Arc<Outlet>,
    state: State,
    started: Instant,
    server_limits: Limits,
    /// Largest frame the client may send us: `FRAME_MIN_SIZE` until tune-ok.
    frame_max: u32,
    channel_max: u16,
    /// Negotiated heartbeat T in seconds, 0 when off.
    heartbeat: u16,
    mechanism: String,
    user: Option<String>,
    client_properties: FieldTable,
    capabilities: ClientCapabilities,
    session: Option<Session>,
    channels: HashMap<u16, Channel>,
    heartbeat_tasks: JoinSet<HeartbeatEnd>,
    /// Pauses the receiver monitor (flow control).
    pub monitor: MonitorControl,
    /// After a frame error the rest of the input cannot be trusted.
    discard_input: bool,
    close_deadline: Option<Instant>,
    shutting_down: bool,
    /// Resource alarms, watched to block publishers.
    alarms: watch::Receiver<AlarmSet>,
    /// The flow-control state once running (see [`flow`]).
    flow: ConnectionState,
    /// `connection.blocked` was sent; `connection.unblocked` is owed.
    blocked_notified: bool,
    /// This connection's entry in the broker's registry.
    entry: Arc<ConnectionEntry>,
    /// The black-hole fault is on (reading stopped, monitor paused).
    black_holed: bool,
}

/// Serves one accepted socket until the connection ends.
pub async fn serve(socket: TcpStream, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let (peer, local) = match (socket.peer_addr(), socket.local_addr()) {
        (Ok(p), Ok(l)) => (p, l),
        _ => return,
    };
    serve_halves(transport::tcp(socket), peer, local, broker, shutdown).await
}

/// Serves a connection over any byte stream (an in-memory pipe in the
/// fuzzing harness; TLS); `peer` and `local` name it.
pub async fn serve_stream(
    stream: impl transport::Stream,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    serve_halves(transport::other(stream), peer, local, broker, shutdown).await
}

async fn serve_halves(
    (reader, write_half): (ReadSide, WriteSide),
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let name = format!("{peer} -> {local}");
    let id = broker.next_connection_id();
    let span = tracing::info_span!("connection", id, %peer);
    async move {
        let _alive = GaugeGuard::new(&broker.gauges.connections);
        let (outlet, rx) = Outlet::new(broker.config.trace_frames);
        let mut registered = Registered::new(&broker, id, &name, outlet.clone());
        info!("accepting AMQP connection {name}");
        let faults = registered.entry.faults.clone();
        let writer = WriterTask(tokio::spawn(writer::run(write_half, rx, outlet.clone(), faults)));
        let config = &broker.config;
        let server_limits =
            Limits { channel_max: config.channel_max, frame_max: config.frame_max, heartbeat: config.heartbeat };
        let mut connection = Connection {
            id,
            peer,
            name,
            broker: broker.clone(),
            outlet,
            state: State::Starting,
            started: Instant::now(),
            server_limits,
            frame_max: crate::protocol::constants::FRAME_MIN_SIZE,
            channel_max: 0,
            heartbeat: 0,
            mechanism: String::new(),
            user: None,
            client_properties: FieldTable::new(),
            capabilities: ClientCapabilities::default(),
            session: None,
            channels: HashMap::new(),
            heartbeat_tasks: JoinSet::new(),
            monitor: MonitorControl::default(),
            discard_input: false,
            close_deadline: None,
            shutting_down: false,
            alarms: broker.alarms.subscribe(),
            flow: ConnectionState::Starting,
            blocked_notified: false,
            entry: registered.entry.clone(),
            black_holed: false,
        };
        connection.run(reader, writer, shutdown, &mut registered.commands).await;
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn run(
        &mut self,
        mut reader: ReadSide,
        mut writer: WriterTask,
        mut shutdown: watch::Receiver<bool>,
        commands: &mut mpsc::UnboundedReceiver<FaultCommand>,
    ) {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let handshake_deadline = self.started + self.broker.config.handshake_timeout;

        // The protocol header comes first, within the handshake timeout.
        let header_end = loop {
            match check_protocol_header(&buf) {
                ProtocolHeader::Supported => {
                    buf.advance(8);
                    break None;
                }
                ProtocolHeader::Unsupported => {
                    // Spec 4.2.2: answer with the header we speak, then close.
                    self.outlet.send(Outbound::Frames(Bytes::from_static(PROTOCOL_HEADER)));
                    break Some(End::Silent(format!(
                        "client did not start with AMQP protocol header: {}",
                        handshake::erlang_binary(&buf, 8)
                    )));
                }
                ProtocolHeader::Incomplete => {}
            }
            tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) => break Some(End::PeerClosed(None)),
                    Ok(n) => self.received(n),
                    Err(e) => break Some(End::PeerClosed(Some(e))),
                },
                _ = sleep_until(handshake_deadline) => break Some(End::HandshakeTimeout("handshake")),
            }
        };
        if let Some(end) = header_end {
            return self.finish(end, writer).await;
        }
        self.send_method(0, &handshake::start_method().into());

        let faults = self.entry.faults.clone();
        let end = 'life: loop {
            // Taken before update_flow looks at the switches, so that a
            // change made in between is not missed.
            let faults_changed = faults.changed();
            self.update_flow();
            // Handle every complete frame already buffered (unless flow
            // control has stopped this connection from taking input).
            while !self.discard_input && !self.flow.paused() && !self.entry.faults.black_hole() {
                match parse_frame(&mut buf, self.frame_max) {
                    Ok(Some(frame)) => match self.dispatch_and_throttle(frame) {
                        Ok(()) => {}
                        Err(Stop::Error(e)) => self.begin_close(e),
                        Err(Stop::Silent(reason)) => break 'life End::Silent(reason),
                        Err(Stop::Done) => break 'life End::Closed,
                    },
                    Ok(None) => break,
                    Err(e) => {
                        // Only a bad size or frame end loses the frame
                        // boundaries; after any other frame error the
                        // client's close-ok can still be read, as in RabbitMQ.
                        if matches!(e, FrameError::TooLarge { .. } | FrameError::BadFrameEnd { .. }) {
                            self.discard_input = true;
                        }
                        let e = self.frame_error(e);
                        if self.state < State::Opening {
                            break 'life End::Silent(e.to_string());
                        }
                        self.begin_close(e);
                    }
                }
            }
            if self.discard_input {
                buf.clear();
            }
            self.flush_confirms();
            if buf.capacity() - buf.len() < 4096 {
                // Read buffers are shared by the messages parsed out of them
                // and freed when the last one goes. Asking for the same total
                // size each time lets the allocator reuse freed buffers
                // instead of fragmenting the heap with ever-different sizes.
                buf.reserve(READ_BUFFER.saturating_sub(buf.len()).max(4096));
            }
            let handshaking = self.state < State::Running;
            let closing = self.close_deadline;
            let heartbeats_running = !self.heartbeat_tasks.is_empty();
            let deadlines = self.session.as_ref().map(|s| s.deadlines.clone());
            let deadlines_known = deadlines.is_some();
            let deadlines = deadlines.unwrap_or_default();
            let ack_deadline = if self.state == State::Running { deadlines.earliest() } else { None };
            let reading = !self.flow.paused() && !faults.black_hole();
            let in_flow = self.flow == ConnectionState::Flow;
            let outlet = self.outlet.clone();
            tokio::select! {
                read = reader.read_buf(&mut buf), if reading => match read {
                    Ok(0) => break End::PeerClosed(None),
                    Ok(n) => self.received(n),
                    Err(e) => break End::PeerClosed(Some(e)),
                },
                Some(ended) = self.heartbeat_tasks.join_next(), if heartbeats_running => {
                    if let Ok(HeartbeatEnd::Missed(missed)) = ended {
                        break End::MissedHeartbeats(missed);
                    }
                }
                result = &mut writer.0 => {
                    break End::WriterFailed(match result {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => io::ErrorKind::BrokenPipe.into(),
                        Err(join) => io::Error::other(join.to_string()),
                    });
                }
                _ = sleep_until(handshake_deadline), if handshaking => {
                    break End::HandshakeTimeout("frame_header");
                }
                _ = sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => break End::CloseTimeout,
                _ = sleep_until(ack_deadline.unwrap_or_else(Instant::now)), if ack_deadline.is_some() => {
                    self.check_consumer_timeouts();
                }
                _ = deadlines.nearer(), if deadlines_known => {}
                // An alarm went on or off: the loop's update_flow acts on it.
                _ = self.alarms.changed() => {}
                _ = outlet.drained(), if in_flow => {}
                // A fault switch changed: the loop's update_flow acts on it.
                _ = faults_changed => {}
                Some(command) = commands.recv() => match command {
                    FaultCommand::Kill => {
                        // A reset: no FIN from the writer, linger 0 on close.
                        self.entry.faults.set_killed();
                        reader.reset_on_close();
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut writer.0).await;
                        break End::Killed;
                    }
                    FaultCommand::ForceClose(text) => {
                        self.begin_close(AmqpError::new(ReplyCode::ConnectionForced, text));
                    }
                },
                _ = shutdown.changed(), if !self.shutting_down => {
                    self.shutting_down = true;
                    if self.state != State::Running {
                        break End::Shutdown;
                    }
                    self.begin_close(AmqpError::new(
                        ReplyCode::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
            }
        };
        self.finish(end, writer).await;
    }

    /// Counts octets read from the client, unless the fault injection says
    /// to ignore the client (then the monitor sees silence).
    fn received(&self, n: usize) {
        let c = &self.outlet.counters;
        c.last_read_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if !self.entry.faults.ignore_client() {
            c.recv_oct.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Handles a frame, then applies flow control: a content frame on a
    /// connection in `blocking` state blocks it.
    fn dispatch_and_throttle(&mut self, frame: Frame) -> Result<(), Stop> {
        self.outlet.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        if self.outlet.trace {
            trace_inbound(&frame);
        }
        let content = matches!(frame, Frame::Header { .. } | Frame::Body { .. });
        self.dispatch(frame)?;
        if content && self.flow == ConnectionState::Blocking {
            self.set_flow(ConnectionState::Blocked);
            let reason = self.alarms.borrow().reason().to_string();
            self.broker.events.emit(|| Event::Blocked { connection: self.name.clone(), reason });
            if self.capabilities.connection_blocked {
                let reason = ShortStr::from(self.alarms.borrow().reason());
                self.send_method(0, &conn::Blocked { reason }.into());
                self.blocked_notified = true;
            }
        }
        Ok(())
    }

    /// Re-evaluates the flow state from the alarms and the reply backlog
    /// (see [`flow`]). Only a running connection is throttled.
    fn update_flow(&mut self) {
        // A black hole (fault injection) reads nothing; the silence is for
        // the client to notice, so the monitor waits it out.
        let black_hole = self.entry.faults.black_hole();
        if black_hole != self.black_holed {
            self.black_holed = black_hole;
            if black_hole {
                self.monitor.pause();
            } else if !self.flow.paused() {
                self.monitor.resume();
            }
        }
        if self.state != State::Running {
            return;
        }
        let alarm = self.alarms.borrow_and_update().any() || self.entry.faults.blocked();
        let backlog = self.outlet.reply_backlog();
        let in_flow =
            backlog > REPLY_BACKLOG_HIGH || (self.flow == ConnectionState::Flow && backlog >= REPLY_BACKLOG_LOW);
        let next = match self.flow {
            ConnectionState::Blocked if alarm => ConnectionState::Blocked,
            _ if in_flow => ConnectionState::Flow,
            _ if alarm => ConnectionState::Blocking,
            _ => ConnectionState::Running,
        };
        if self.flow == ConnectionState::Blocked && next != ConnectionState::Blocked {
            self.broker.events.emit(|| Event::Unblocked { connection: self.name.clone() });
            if self.blocked_notified {
                self.send_method(0, &conn::Unblocked {}.into());
                self.blocked_notified = false;
            }
        }
        self.set_flow(next);
    }

    /// Moves to a flow state: pauses the heartbeat monitor while the socket
    /// is not read, resumes it (with a fresh window) when reading resumes,
    /// and logs and publishes the change.
    fn set_flow(&mut self, next: ConnectionState) {
        if self.flow == next {
            return;
        }
        match (self.flow.paused(), next.paused()) {
            (false, true) => self.monitor.pause(),
            (true, false) => self.monitor.resume(),
            _ => {}
        }
        info!("connection {}: state {} -> {next}", self.name, self.flow);
        self.flow = next;
        self.entry.state.send_replace(next);
    }

    fn send_method(&self, channel: u16, method: &Method) {
        self.outlet.send_method(channel, method);
    }

    /// `'<0.ID.0> (client -> server'`: RabbitMQ's way of naming a connection
    /// in logs, with warren's connection id where RabbitMQ has a process id.
    fn log_name(&self) -> String {
        format!("<0.{}.0> ({}", self.id, self.name)
    }

    fn duration(&self) -> String {
        format_duration(self.started.elapsed())
    }

    fn begin_close(&mut self, e: AmqpError) {
        if self.state == State::Closing {
            return;
        }
        let vhost = self.session.as_ref().map(|s| s.vhost.name.to_string()).unwrap_or_default();
        error!(
            "Error on AMQP connection {}, vhost: '{}', user: '{}', state: {}), channel 0: operation {} caused a connection exception {}: \"{}\"",
            self.log_name(),
            Escaped(&vhost),
            Escaped(self.user.as_deref().unwrap_or("")),
            self.state.name(),
            Method::name_of(e.class_id, e.method_id).unwrap_or("none"),
            e.code.name().to_lowercase(),
            Escaped(&e.message)
        );
        self.send_method(
            0,
            &Method::ConnectionClose(conn::Close {
                reply_code: e.code.code(),
                reply_text: e.reply_text(),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
        self.state = State::Closing;
        self.set_flow(ConnectionState::Closing);
        self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// RabbitMQ's texts for damage at the frame layer (all connection errors).
    fn frame_error(&self, e: FrameError) -> AmqpError {
        match e {
            FrameError::TooLarge { frame_type, size, max_payload, .. } => AmqpError::frame_error(format!(
                "type {frame_type}, all octets = <<>>: {{frame_too_large,{size},{}}}",
                max_payload as usize - FRAME_OVERHEAD
            )),
            FrameError::BadFrameEnd { frame_type, end, payload, .. } => AmqpError::frame_error(format!(
                "type {frame_type}, {}: {{invalid_frame_end_marker,{end}}}",
                payload_snippet(&payload)
            )),
            FrameError::UnknownType { frame_type, payload, .. } => {
                AmqpError::frame_error(format!("type {frame_type}, {}: unknown_frame", payload_snippet(&payload)))
            }
            FrameError::HeartbeatPayload { payload, .. } => {
                AmqpError::frame_error(format!("type 8, {}: unknown_frame", payload_snippet(&payload)))
            }
            FrameError::Method { error: MethodError::Unknown { class_id, method_id }, .. } => {
                AmqpError::command_invalid(format!("unknown method: class {class_id}, method {method_id}"))
            }
            FrameError::Method { error: MethodError::Syntax { class_id, method_id, name, error }, .. } => {
                AmqpError::frame_error(format!("cannot decode {name}: {error}")).with_ids(class_id, method_id)
            }
            FrameError::Header { error, .. } => {
                AmqpError::frame_error(format!("cannot decode content header: {error}"))
            }
        }
    }

    fn dispatch(&mut self, frame: Frame) -> Result<(), Stop> {
        if self.state == State::Closing {
            // Spec 2.2.4: after sending close, discard everything but close
            // and close-ok.
            return match frame {
                Frame::Method { channel: 0, method: Method::ConnectionCloseOk(_) } => Err(Stop::Done),
                Frame::Method { channel: 0, method: Method::ConnectionClose(_) } => {
                    self.send_method(0, &conn::CloseOk {}.into());
                    Err(Stop::Done)
                }
                _ => Ok(()),
            };
        }
        match frame {
            // A heartbeat's only job is to make bytes arrive, which the
            // reader has already counted.
            Frame::Heartbeat { channel: 0 } => {
                self.broker.events.emit(|| Event::HeartbeatReceived { connection: self.name.clone() });
                Ok(())
            }
            Frame::Method { channel: 0, method } => self.handle_method0(method),
            other if self.state < State::Opening => Err(Stop::Silent(format!(
                "unexpected frame on channel {} in connection state {}",
                other.channel(),
                self.state.name()
            ))),
            Frame::Heartbeat { .. } => Err(Stop::Error(AmqpError::unexpected_frame("type 8, all octets = <<>>"))),
            other if self.state == State::Opening => Err(Stop::Error(AmqpError::unexpected_frame(format!(
                "unexpected frame on channel {} in connection state opening",
                other.channel()
            )))),
            Frame::Header { channel: 0, .. } => {
                Err(Stop::Error(AmqpError::unexpected_frame("type 2, all octets = <<>>")))
            }
            Frame::Body { channel: 0, body } => {
                Err(Stop::Error(AmqpError::unexpected_frame(format!("type 3, {}", payload_snippet(&body)))))
            }
            frame => self.channel_frame(frame),
        }
    }

    fn handle_method0(&mut self, method: Method) -> Result<(), Stop> {
        let (class_id, method_id) = method.ids();
        match (self.state, method) {
            (State::Starting, Method::ConnectionStartOk(m)) => self.start_ok(m),
            (State::Securing, Method::ConnectionSecureOk(m)) => {
                let mechanism = self.mechanism.clone();
                self.authenticate(mechanism.as_bytes(), &m.response)
            }
            (State::Tuning, Method::ConnectionTuneOk(m)) => self.tune_ok(m),
            (State::Opening, Method::ConnectionOpen(m)) => self.open(m),
            (State::Running, Method::ConnectionUpdateSecret(m)) => {
                // RabbitMQ hands the new secret to the auth backends whose
                // credentials can expire (OAuth 2); the internal user
                // database is not one of them, so for its users the update
                // always succeeds and changes nothing.
                let user = self.user.as_deref().unwrap_or("");
                debug!(
                    "connection {}: user '{}' asked to update secret, reason: {}",
                    self.name,
                    Escaped(user),
                    Escaped(&m.reason.as_str_lossy())
                );
                self.send_method(0, &conn::UpdateSecretOk {}.into());
                info!(
                    "connection {}: user '{}' updated secret, reason: {}",
                    self.name,
                    Escaped(user),
                    Escaped(&m.reason.as_str_lossy())
                );
                Ok(())
            }
            (State::Opening | State::Running, Method::ConnectionClose(_)) => {
                // Like RabbitMQ, give everything back before confirming, so a
                // client that saw close-ok finds its unacked messages requeued.
                self.release_resources();
                self.send_method(0, &conn::CloseOk {}.into());
                Err(Stop::Done)
            }
            (state @ (State::Starting | State::Securing | State::Tuning), method) => {
                Err(Stop::Silent(format!("unexpected method {} in connection state {}", method.name(), state.name())))
            }
            (state, _) => Err(Stop::Error(
                AmqpError::channel_error(format!("unexpected method in connection state {}", state.name()))
                    .with_ids(class_id, method_id),
            )),
        }
    }

    fn start_ok(&mut self, m: conn::StartOk) -> Result<(), Stop> {
        if let Some(name) = m.client_properties.get("connection_name").and_then(FieldValue::as_bytes) {
            let name = String::from_utf8_lossy(name).into_owned();
            info!("connection {} has a client-provided name: {}", self.name, Escaped(&name));
            let _ = self.entry.client_name.set(name);
        }
        self.capabilities = ClientCapabilities::from_client_properties(&m.client_properties);
        self.client_properties = m.client_properties;
        self.mechanism = m.mechanism.to_string();
        if m.mechanism.as_bytes() == b"PLAIN" && m.response.is_empty() {
            // SASL PLAIN without an initial response: ask for it.
            self.send_method(0, &conn::Secure { challenge: Bytes::new() }.into());
            self.state = State::Securing;
            return Ok(());
        }
        self.authenticate(m.mechanism.as_bytes(), &m.response)
    }

    fn authenticate(&mut self, mechanism: &[u8], response: &Bytes) -> Result<(), Stop> {
        let credentials = match handshake::parse_response(mechanism, response) {
            Ok(c) => c,
            Err(AuthError::UnknownMechanism(m)) => {
                return Err(Stop::Silent(format!("unknown authentication mechanism '{m}'")));
            }
            Err(AuthError::Malformed(why)) => return Err(Stop::Silent(why)),
        };
        if let Err(e) = self.broker.access.authenticate(&credentials.username, &credentials.password, self.peer.ip()) {
            let why = match e {
                LoginError::InvalidCredentials => "invalid credentials",
                LoginError::LoopbackOnly => "User can only log in via localhost",
            };
            error!(
                "Error on AMQP connection {}, state: starting): {} login refused: user '{}' - {why}",
                self.log_name(),
                Escaped(&self.mechanism),
                Escaped(&credentials.username)
            );
            if self.capabilities.authentication_failure_close {
                return Err(Stop::Error(handshake::login_refused(&self.mechanism)));
            }
            return Err(Stop::Silent("login refused".into()));
        }
        self.user = Some(credentials.username);
        let l = self.server_limits;
        self.send_method(
            0,
            &conn::Tune { channel_max: l.channel_max, frame_max: l.frame_max, heartbeat: l.heartbeat }.into(),
        );
        self.state = State::Tuning;
        Ok(())
    }

    fn tune_ok(&mut self, m: conn::TuneOk) -> Result<(), Stop> {
        if let Err(e) = handshake::validate_tune_ok(self.server_limits, &m) {
            // RabbitMQ logs this and drops the socket 3 s later without a
            // close frame; warren tells the client why (see README).
            return Err(Stop::Error(e.with_ids(10, 30)));
        }
        self.frame_max = m.frame_max;
        self.channel_max = m.channel_max;
        self.heartbeat = m.heartbeat;
        self.outlet.send(Outbound::FrameMax(m.frame_max));
        self.start_heartbeats();
        self.state = State::Opening;
        Ok(())
    }

    /// Starts the two heartbeat tasks (see [`heartbeat`]) with T as the
    /// client sent it in tune-ok; T = 0 starts neither.
    fn start_heartbeats(&mut self) {
        let t = self.heartbeat;
        if t == 0 {
            return;
        }
        let gauge = &self.broker.gauges.heartbeat_tasks;
        let outlet = self.outlet.clone();
        let faults = self.entry.faults.clone();
        let (events, name) = (self.broker.events.clone(), self.name.clone());
        let alive = GaugeGuard::new(gauge);
        self.heartbeat_tasks.spawn(async move {
            let _alive = alive;
            let sent = || outlet.counters.send_oct.load(Ordering::Relaxed);
            // Withheld heartbeats (fault injection) are simply not sent.
            let send = || {
                if faults.withhold_heartbeats() {
                    return true;
                }
                events.emit(|| Event::HeartbeatSent { connection: name.clone() });
                outlet.send(Outbound::Heartbeat)
            };
            heartbeat::run_sender(heartbeat::sender_period(t), sent, send).await;
            HeartbeatEnd::SenderStopped
        });
        let outlet = self.outlet.clone();
        let control = self.monitor.clone();
        let alive = GaugeGuard::new(gauge);
        self.heartbeat_tasks.spawn(async move {
            let _alive = alive;
            let received = || outlet.counters.recv_oct.load(Ordering::Relaxed);
            HeartbeatEnd::Missed(heartbeat::run_monitor(heartbeat::monitor_period(t), received, &control).await)
        });
    }

    fn open(&mut self, m: conn::Open) -> Result<(), Stop> {
        let Some(vhost) = self.broker.vhost(&m.virtual_host) else {
            return Err(Stop::Error(
                AmqpError::not_allowed(format!("vhost {} not found", m.virtual_host)).with_ids(10, 40),
            ));
        };
        if let Some(max) = self.broker.config.connection_max {
            // Counted as RabbitMQ counts it: every accepted connection,
            // this one included.
            if self.broker.connections.len() > max {
                return Err(Stop::Error(
                    AmqpError::not_allowed(format!("connection refused: node connection limit ({max}) is reached"))
                        .with_ids(10, 40),
                ));
            }
        }
        let user = self.user.clone().unwrap_or_default();
        if let Err(e) = self.broker.access.check_vhost(&user, &vhost.name.to_string()) {
            return Err(Stop::Error(e.with_ids(10, 40)));
        }
        info!(
            "connection {}: user '{}' authenticated and granted access to vhost '{}'",
            self.name,
            Escaped(&user),
            Escaped(&vhost.name.as_str_lossy())
        );
        let session = Session::new(
            self.id,
            self.broker.clone(),
            vhost,
            self.outlet.clone(),
            self.capabilities,
            user,
            self.name.as_str().into(),
        );
        let _ = self.entry.details.set(ConnectionDetails {
            user: self.user.clone().unwrap_or_default(),
            vhost: m.virtual_host.to_string(),
            client_properties: self.client_properties.clone(),
            channel_max: self.channel_max,
            frame_max: self.frame_max,
            heartbeat: self.heartbeat,
        });
        self.broker.events.emit(|| Event::ConnectionOpened {
            connection: self.name.clone(),
            client_properties: self.client_properties.clone(),
            channel_max: self.channel_max,
            frame_max: self.frame_max,
            heartbeat: self.heartbeat,
        });
        self.session = Some(session);
        self.send_method(0, &conn::OpenOk { reserved_1: ShortStr::default() }.into());
        self.state = State::Running;
        self.set_flow(ConnectionState::Running);
        Ok(())
    }

    fn channel_frame(&mut self, frame: Frame) -> Result<(), Stop> {
        let id = frame.channel();
        let session = self.session.as_mut().expect("running connections have a session");
        let Some(ch) = self.channels.get_mut(&id) else {
            return match frame {
                Frame::Method { method: Method::ChannelOpen(_), .. } => {
                    if self.channel_max != 0 && self.channels.len() >= self.channel_max as usize {
                        return Err(Stop::Error(AmqpError::not_allowed(format!(
                            "number of channels opened ({}) has reached the negotiated channel_max ({})",
                            self.channels.len(),
                            self.channel_max
                        ))));
                    }
                    self.channels.insert(id, Channel::new(id, session));
                    self.entry.channels.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                    session.send_method(
                        id,
                        &crate::protocol::methods::channel::OpenOk { reserved_1: Bytes::new() }.into(),
                    );
                    Ok(())
                }
                Frame::Method { method, .. } => {
                    let (c, m) = method.ids();
                    Err(Stop::Error(AmqpError::channel_error("expected 'channel.open'").with_ids(c, m)))
                }
                _ => {
                    Err(Stop::Error(AmqpError::unexpected_frame("expected method frame, got non method frame instead")))
                }
            };
        };
        match frame {
            Frame::Method { method: Method::ChannelClose(_), .. } => {
                if !ch.closing {
                    ch.shutdown(session);
                }
                self.channels.remove(&id);
                self.entry.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                session.send_method(id, &crate::protocol::methods::channel::CloseOk {}.into());
                Ok(())
            }
            Frame::Method { method: Method::ChannelCloseOk(_), .. } => {
                if ch.closing {
                    self.channels.remove(&id);
                    self.entry.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    self.entry.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                }
                Ok(())
            }
            _ if ch.closing => Ok(()),
            frame => match ch.handle_frame(session, frame) {
                Ok(()) => Ok(()),
                Err(e) if e.is_connection_error() => Err(Stop::Error(e)),
                Err(e) => {
                    self.close_channel(id, e);
                    Ok(())
                }
            },
        }
    }

    fn flush_confirms(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        for id in std::mem::take(&mut session.pending_confirms) {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.flush_confirms(session);
            }
        }
    }

    /// A channel error: log it as RabbitMQ does, give back what the channel
    /// held, send `channel.close`, and ignore the channel until `close-ok`.
    fn close_channel(&mut self, id: u16, e: AmqpError) {
        let (Some(session), Some(ch)) = (self.session.as_mut(), self.channels.get_mut(&id)) else { return };
        error!(
            "Channel error on connection <0.{}.0> ({}, vhost: '{}', user: '{}'), channel {}: operation {} caused a channel exception {}: {}",
            self.id,
            self.name,
            Escaped(&session.vhost.name.as_str_lossy()),
            Escaped(self.user.as_deref().unwrap_or("")),
            id,
            Method::name_of(e.class_id, e.method_id).unwrap_or("none"),
            e.code.name().to_lowercase(),
            Escaped(&e.message)
        );
        ch.shutdown(session);
        ch.closing = true;
        self.broker.events.emit(|| Event::ChannelClosed {
            connection: self.name.clone(),
            channel: id,
            code: e.code.code(),
            text: e.reply_text().to_string(),
        });
        session.send_method(
            id,
            &Method::ChannelClose(crate::protocol::methods::channel::Close {
                reply_code: e.code.code(),
                reply_text: e.reply_text(),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
    }

    /// Closes the channels holding a delivery past its `consumer_timeout`.
    fn check_consumer_timeouts(&mut self) {
        let Some(session) = self.session.as_ref() else { return };
        session.deadlines.take();
        let now = Instant::now();
        let timed_out: Vec<(u16, AmqpError)> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.closing)
            .filter_map(|(id, ch)| ch.check_timeouts(now).map(|e| (*id, e)))
            .collect();
        for (id, e) in timed_out {
            self.close_channel(id, e);
        }
    }

    /// Closes every channel (requeueing what they had not acknowledged) and
    /// deletes the connection's exclusive queues. Idempotent.
    fn release_resources(&mut self) {
        if let Some(session) = self.session.as_mut() {
            for (_, mut ch) in self.channels.drain() {
                if !ch.closing {
                    ch.shutdown(session);
                }
            }
            session.delete_exclusive_queues();
        }
    }

    /// Logs how the connection ended, gives back what it held, and closes
    /// the socket (by dropping both halves).
    async fn finish(&mut self, end: End, writer: WriterTask) {
        let who = match &self.session {
            Some(s) => format!(
                ", vhost: '{}', user: '{}'",
                Escaped(&s.vhost.name.as_str_lossy()),
                Escaped(self.user.as_deref().unwrap_or(""))
            ),
            None => String::new(),
        };
        let duration = self.duration();
        if let End::MissedHeartbeats(m) = &end {
            let (timeout, silence) = (self.heartbeat, m.silence);
            self.broker.events.emit(|| Event::HeartbeatTimeout { connection: self.name.clone(), timeout, silence });
        }
        let reason = end.reason();
        self.broker.events.emit(|| Event::ConnectionClosed { connection: self.name.clone(), reason });
        let flush_writer = match &end {
            End::Closed => {
                info!("closing AMQP connection ({}{who}, duration: '{duration}')", self.name);
                true
            }
            End::PeerClosed(e) => {
                if self.state == State::Starting && self.outlet.counters.recv_oct.load(Ordering::Relaxed) == 0 {
                    debug!(
                        "closing AMQP connection {}, duration: '{duration}'): connection closed with no data received",
                        self.log_name()
                    );
                } else if self.state != State::Closing {
                    let detail = e.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
                    warn!(
                        "closing AMQP connection {}{who}, duration: '{duration}'): client unexpectedly closed TCP connection{detail}",
                        self.log_name()
                    );
                }
                false
            }
            End::MissedHeartbeats(m) => {
                error!(
                    "closing AMQP connection {}, duration: '{duration}'): missed heartbeats from client, timeout: {}s",
                    self.log_name(),
                    self.heartbeat
                );
                debug!("silence before detection: {:?}", m.silence);
                false
            }
            End::HandshakeTimeout(what) => {
                error!(
                    "closing AMQP connection {}, duration: '{duration}'): {{handshake_timeout,{what}}}",
                    self.log_name()
                );
                false
            }
            End::WriterFailed(e) => {
                warn!("closing AMQP connection {}{who}, duration: '{duration}'): {e}", self.log_name());
                false
            }
            End::CloseTimeout => {
                debug!("no connection.close-ok within {CLOSE_TIMEOUT:?}");
                false
            }
            End::Silent(reason) => {
                error!("closing AMQP connection {}, duration: '{duration}'): {}", self.log_name(), Escaped(reason));
                true
            }
            End::Shutdown => true,
            End::Killed => {
                warn!(
                    "closing AMQP connection {}{who}, duration: '{duration}'): killed (TCP reset) by fault injection",
                    self.log_name()
                );
                false
            }
        };
        // The heartbeat tasks end here, before anything else can happen.
        self.heartbeat_tasks.abort_all();
        self.release_resources();
        if flush_writer {
            self.outlet.send(Outbound::Close);
            let mut writer = writer;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut writer.0).await;
        }
    }
}
