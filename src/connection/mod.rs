//! One AMQP connection, from the protocol header to the closed socket.
//!
//! A connection is one task that waits for the next thing to happen, a
//! `Wake`, and handles it: bytes read from the socket, the heartbeat
//! monitor giving up, the writer failing, a deadline passing, an alarm or a
//! fault switch changing, a fault command, shutdown. Before each wait it
//! handles every complete frame already read, and asks the [`Throttle`]
//! whether it may read at all. `Connection::live` is that loop, and
//! `Connection::next_wake` lists every input in one place, as RabbitMQ's
//! `rabbit_reader` does with one clause per message it can receive.
//!
//! The connection owns its parts, each in a file of its own:
//!
//! - `frames.rs`: what each frame does, by channel; connection errors.
//! - [`handshake`]: start, secure, tune, open. It lives until `open-ok` and
//!   says what each step came to; it never touches the socket.
//! - [`channels`]: the open channels and the session they share, once open.
//! - [`throttle`]: flow control (alarms, the reply backlog, blocking).
//! - [`heartbeat`]: the two heartbeat tasks, started at `tune-ok`.
//! - [`writer`]: the task that owns the socket's write half.
//! - [`ending`]: why and how a connection ends, and its last log line.
//!
//! The phases of its life ([`Phase`], RabbitMQ's reader states):
//!
//! ```text
//!  Starting -> Securing -> Tuning -> Opening -> Running
//!  any phase --(error sent as connection.close)--> Closing --(close-ok)--> closed
//! ```
//!
//! All tasks end with the connection: the writer and the heartbeat tasks
//! are aborted when the connection drops their handles.

pub mod channel;
pub mod channels;
pub mod ending;
mod frame_buffer;
mod frames;
pub mod handshake;
pub mod heartbeat;
pub mod mailbox;
pub mod texts;
pub mod throttle;
pub mod timeouts;
pub mod transport;
pub mod writer;

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::Either;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{info, Instrument};

use self::channels::Channels;
use self::ending::{End, Obituary};
use self::handshake::{Handshake, Limits};
use self::heartbeat::{Heartbeats, MissedHeartbeats};
use self::texts::{erlang_binary, format_duration};
use self::throttle::Throttle;
use self::transport::{ReadSide, WriteSide};
use self::writer::{Outbound, Outlet};
use crate::broker::connections::{ConnectionEntry, Connections, Counters, FaultCommand, Faults, Registration};
use crate::broker::events::Event;
use crate::broker::inspect::TlsInfo;
use crate::broker::{Broker, GaugeGuard, Totals};
use crate::error::AmqpError;
use crate::logging::Escaped;
use crate::protocol::frame::{check_protocol_header, ProtocolHeader, PROTOCOL_HEADER};
use crate::protocol::ReplyCode;

/// Where a connection is in its life (spec 2.2.4, RabbitMQ's reader
/// states). Not to be confused with the flow-control state users see
/// ([`crate::broker::connections::ConnectionState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
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

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Securing => "securing",
            Phase::Tuning => "tuning",
            Phase::Opening => "opening",
            Phase::Running => "running",
            Phase::Closing => "closing",
        }
    }
}

/// What [`Connection::handle_buffered`] left: nothing it could handle, or
/// frames for the next turn.
enum Turn {
    Done,
    More,
}

/// The size of a busy connection's read buffer allocations.
const READ_BUFFER: usize = 64 * 1024;

/// The most frames a connection handles before it lets the runtime's other
/// tasks run. tokio counts a read as one unit of a task's budget of 128,
/// and a full 64 KiB read buffer holds about 2,000 frames of small
/// publishes, so without this one turn of a flat-out publisher drained its
/// socket: with a thousand of them busy, every task waited 1.6-4.3 s for
/// its next turn, a new connection waited as long for `connection.start`,
/// and some handshakes timed out. With 256 (about 85 publishes, a quarter
/// of a millisecond) the wait was 0.4-0.9 s and one publisher/one
/// consumer lost nothing measurable; 64 cut the wait to 0.16 s but cost
/// 10-15% of the throughput, each turn ending in a pass through the
/// runtime's I/O driver. RabbitMQ's scheduler preempts its processes in the
/// same spirit (a process runs for a bounded count of reductions).
const FRAMES_PER_TURN: usize = 256;

/// A read shorter than this that did not fill the buffer's room is a quiet
/// connection's: see [`Connection::size_read_buffer`].
const SMALL_READ: usize = 1024;

/// Reads from the client into `buf`. A quiet connection holds no read
/// buffer (see `Connection::size_read_buffer`): on TCP it waits for the
/// socket to become readable, and only then makes a small one to read into.
/// Cancel-safe, as the `select!` in `next_wake` needs: waiting for
/// readiness and `read_buf` both are.
async fn read_into(reader: &mut ReadSide, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() == 0 {
        reader.readable().await?;
        *buf = BytesMut::with_capacity(SMALL_READ);
    }
    reader.read_buf(buf).await
}

/// How long to wait for `close-ok` after sending `connection.close`, and
/// for the writer to flush at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything that can wake a connection up.
enum Wake {
    /// The socket read returned: octets, end of stream (0) or an error.
    Read(io::Result<usize>),
    MissedHeartbeats(MissedHeartbeats),
    WriterEnded(io::Error),
    /// The nearest deadline passed.
    Deadline(Deadline),
    /// A delivery noted a nearer consumer-timeout deadline.
    DeadlinesMoved,
    AlarmChanged,
    /// The writer caught up with the reply backlog (ends `flow`).
    OutletDrained,
    FaultsChanged,
    /// A one-shot fault was queued (it comes before the wait, not from it).
    Fault(FaultCommand),
    Shutdown,
    /// The store synced more: confirms held for the disk can go.
    DiskSynced,
}

/// What a connection may be waiting for with a time limit. It sleeps until
/// the nearest one only: one timer, not one for each.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// The handshake must be done by then (`handshake_timeout`).
    Handshake,
    /// No `close-ok` in time after our `connection.close`.
    Close,
    /// A delivery may have passed its `consumer_timeout`.
    ConsumerTimeout,
}

/// Before `open-ok`, the handshake; after it, the channels.
enum Stage {
    Handshake(Handshake),
    Open(Channels),
}

/// Aborts the writer if the connection ends without waiting for it.
struct WriterTask(JoinHandle<io::Result<()>>);

impl Drop for WriterTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Connection {
    broker: Arc<Broker>,
    /// This connection's entry in the broker's registry; removed on drop.
    _registration: Registration,
    entry: Arc<ConnectionEntry>,
    outlet: Arc<Outlet>,
    stage: Stage,
    throttle: Throttle,
    heartbeats: Heartbeats,
    reader: ReadSide,
    /// What was read and not yet cut into frames.
    buf: BytesMut,
    /// Whether the last read was short and left room: the client is quiet.
    last_read_small: bool,
    writer: WriterTask,
    shutdown: watch::Receiver<bool>,
    shutting_down: bool,
    /// The store's synced ticket, with a data directory: confirms held for
    /// the disk go out when it moves.
    disk_synced: Option<watch::Receiver<u64>>,
    /// Largest frame the client may send us: `FRAME_MIN_SIZE` until tune-ok.
    frame_max: u32,
    /// Negotiated heartbeat T in seconds, 0 when off.
    heartbeat: u16,
    handshake_deadline: Instant,
    /// Set when `connection.close` is sent: the connection is closing.
    close_deadline: Option<Instant>,
    /// After a frame error that loses the frame boundaries, the rest of the
    /// input cannot be trusted.
    discard_input: bool,
    /// Counts this connection in the broker's gauge until the very end.
    _alive: GaugeGuard,
}

/// Serves one accepted socket until the connection ends.
/// Not an `async fn`: one would keep its arguments, and the socket twice,
/// beside the connection's future for the connection's whole life.
pub fn serve(socket: TcpStream, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) -> impl Future<Output = ()> {
    let (Ok(peer), Ok(local)) = (socket.peer_addr(), socket.local_addr()) else {
        return Either::Right(std::future::ready(()));
    };
    let name = format!("{peer} -> {local}");
    Either::Left(serve_halves(transport::tcp(socket), |c| c.register(name), peer, broker, shutdown))
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
    let name = format!("{peer} -> {local}");
    serve_halves(transport::other(stream), |c| c.register(name), peer, broker, shutdown).await
}

/// Serves a connection over TLS, once its TLS handshake is done (see
/// `crate::tls`): `stream` runs over a `Metered` socket that counts into
/// `counters` and heeds `faults`; `socket` is a second handle on it.
#[allow(clippy::too_many_arguments)]
pub async fn serve_tls(
    stream: impl transport::Stream,
    socket: std::net::TcpStream,
    tls: TlsInfo,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
    (peer, local): (std::net::SocketAddr, std::net::SocketAddr),
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let register = |c: &Connections| {
        let registration = c.register_with(format!("{peer} -> {local}"), counters, faults);
        registration.entry.set_tls(tls);
        registration
    };
    serve_halves(transport::tls(stream, socket), register, peer, broker, shutdown).await
}

/// Makes the connection, then runs it in its span. Everything is set up
/// before the first `.await`, so that the task's future holds the
/// connection once and nothing that was only needed to build it: an idle
/// connection's memory is mostly its tasks' futures.
fn serve_halves(
    (reader, write_half): (ReadSide, WriteSide),
    register: impl FnOnce(&Connections) -> Registration,
    peer: std::net::SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    // Counted first and uncounted last, after the registry entry is gone
    // (it is the connection's last field).
    let alive = GaugeGuard::new(&broker.gauges.connections);
    let registration = register(&broker.connections);
    Totals::add(&broker.totals.connections_opened, 1);
    let entry = registration.entry.clone();
    let span = tracing::info_span!("connection", id = entry.id, %peer);
    span.in_scope(|| info!("accepting AMQP connection {}", entry.name));
    let outlet = Outlet::new(broker.config.trace_frames, entry.counters.clone());
    let writer = WriterTask(tokio::spawn(writer::run(write_half, outlet.clone(), entry.faults.clone())));
    let config = &broker.config;
    let proposed = Limits { channel_max: config.channel_max, frame_max: config.frame_max, heartbeat: config.heartbeat };
    let mut connection = Connection {
        stage: Stage::Handshake(Handshake::new(proposed, peer.ip(), entry.clone(), &config.auth_mechanisms)),
        throttle: Throttle::new(broker.alarms.subscribe(), entry.clone(), outlet.clone(), broker.events.clone()),
        heartbeats: Heartbeats::default(),
        handshake_deadline: entry.counters.accepted.0 + config.handshake_timeout,
        disk_synced: broker.store.as_ref().map(|s| s.synced()),
        broker,
        _registration: registration,
        entry,
        outlet,
        reader,
        buf: BytesMut::new(),
        last_read_small: true,
        writer,
        shutdown,
        shutting_down: false,
        frame_max: crate::protocol::constants::FRAME_MIN_SIZE,
        heartbeat: 0,
        close_deadline: None,
        discard_input: false,
        _alive: alive,
    };
    // The connection is the block's only capture, used in place: an async
    // fn that takes `self` by value keeps it twice (the argument and the
    // local it is moved to), 512 octets each, so `run` takes `&mut self`.
    async move { connection.run().await }.instrument(span)
}

impl Connection {
    async fn run(&mut self) {
        // Awaited apart from the `match`: a scrutinee's temporaries live to
        // the end of the match, and the header's future would take room
        // beside `live`'s for the connection's whole life.
        let header = self.read_protocol_header().await;
        let end = match header {
            Ok(()) => self.live().await,
            Err(end) => end,
        };
        self.finish(end).await
    }

    /// The protocol header comes first, within the handshake timeout.
    async fn read_protocol_header(&mut self) -> Result<(), End> {
        loop {
            match check_protocol_header(&self.buf) {
                ProtocolHeader::Supported => {
                    self.buf.advance(8);
                    return Ok(());
                }
                ProtocolHeader::Unsupported => {
                    // Spec 4.2.2: answer with the header we speak, then close.
                    self.outlet.send(Outbound::Frames(Bytes::from_static(PROTOCOL_HEADER)));
                    let sent = erlang_binary(&self.buf, 8);
                    return Err(End::Silent(format!("client did not start with AMQP protocol header: {sent}")));
                }
                ProtocolHeader::Incomplete => {}
            }
            tokio::select! {
                read = read_into(&mut self.reader, &mut self.buf) => self.read(read)?,
                _ = sleep_until(self.handshake_deadline) => return Err(End::HandshakeTimeout("handshake")),
            }
        }
    }

    /// The connection's life: handle what has been read, wait, handle what
    /// woke it up, until something ends it.
    async fn live(&mut self) -> End {
        let mechanisms = match &self.stage {
            Stage::Handshake(h) => h.mechanisms(),
            Stage::Open(_) => String::new(),
        };
        self.outlet.send_method(0, &handshake::start_method(&mechanisms).into());
        let faults = self.entry.faults.clone();
        loop {
            // Taken before the throttle looks at the switches, so that a
            // change made in between still wakes the wait below.
            let faults_changed = faults.changed();
            self.throttle.recompute();
            match self.handle_buffered() {
                Err(end) => return end,
                Ok(Turn::More) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Turn::Done) => {}
            }
            let wake = self.next_wake(faults_changed).await;
            if let Err(end) = self.handle(wake).await {
                return end;
            }
        }
    }

    /// Waits for whichever input comes first, of those that matter now.
    async fn next_wake(&mut self, faults_changed: Notified<'_>) -> Wake {
        // A one-shot fault rings the same bell as the switches, which
        // `faults_changed` was taken before: one sent after this look
        // still wakes the wait below.
        if let Some(command) = self.entry.faults.take_command() {
            return Wake::Fault(command);
        }
        let phase = self.phase();
        let deadlines = match &self.stage {
            Stage::Open(channels) if phase == Phase::Running => Some(channels.deadlines().clone()),
            _ => None,
        };
        let consumer_deadline = deadlines.as_ref().and_then(|d| d.earliest());
        let (reading, in_flow) = (self.throttle.reading(), self.throttle.in_flow());
        let awaiting_disk = matches!(&self.stage, Stage::Open(channels) if channels.awaiting_disk());
        let deadline = self.nearest_deadline(phase, consumer_deadline);
        let (at, which) = deadline.unwrap_or((self.handshake_deadline, Deadline::Handshake));
        tokio::select! {
            read = read_into(&mut self.reader, &mut self.buf), if reading => Wake::Read(read),
            missed = self.heartbeats.missed() => Wake::MissedHeartbeats(missed),
            ended = &mut self.writer.0 => Wake::WriterEnded(match ended {
                Ok(Err(e)) => e,
                Ok(Ok(())) => io::ErrorKind::BrokenPipe.into(),
                Err(join) => io::Error::other(join.to_string()),
            }),
            _ = sleep_until(at), if deadline.is_some() => Wake::Deadline(which),
            _ = async {
                match &deadlines {
                    Some(d) => d.nearer().await,
                    None => std::future::pending().await,
                }
            } => Wake::DeadlinesMoved,
            _ = self.throttle.alarm_changed() => Wake::AlarmChanged,
            _ = self.outlet.drained(), if in_flow => Wake::OutletDrained,
            _ = faults_changed => Wake::FaultsChanged,
            _ = self.shutdown.changed(), if !self.shutting_down => Wake::Shutdown,
            _ = async {
                match &mut self.disk_synced {
                    Some(synced) => synced.changed().await.ok(),
                    None => std::future::pending().await,
                }
            }, if awaiting_disk => Wake::DiskSynced,
        }
    }

    /// The nearest of the deadlines that apply now, and which it is.
    fn nearest_deadline(&self, phase: Phase, consumer: Option<Instant>) -> Option<(Instant, Deadline)> {
        let handshake = (phase < Phase::Running).then_some((self.handshake_deadline, Deadline::Handshake));
        let close = self.close_deadline.map(|at| (at, Deadline::Close));
        let consumer = consumer.map(|at| (at, Deadline::ConsumerTimeout));
        [handshake, close, consumer].into_iter().flatten().min_by_key(|&(at, _)| at)
    }

    async fn handle(&mut self, wake: Wake) -> Result<(), End> {
        match wake {
            Wake::Read(read) => self.read(read)?,
            Wake::MissedHeartbeats(missed) => return Err(End::MissedHeartbeats(missed)),
            Wake::WriterEnded(e) => return Err(End::WriterFailed(e)),
            Wake::Deadline(Deadline::Handshake) => return Err(End::HandshakeTimeout("frame_header")),
            Wake::Deadline(Deadline::Close) => return Err(End::CloseTimeout),
            Wake::Deadline(Deadline::ConsumerTimeout) => {
                if let Stage::Open(channels) = &mut self.stage {
                    channels.check_consumer_timeouts();
                }
            }
            // The throttle, recomputed at the top of the loop, acts on
            // these; waking the loop was all they had to do.
            Wake::DeadlinesMoved | Wake::AlarmChanged | Wake::OutletDrained | Wake::FaultsChanged => {}
            Wake::DiskSynced => {
                if let Stage::Open(channels) = &mut self.stage {
                    channels.flush_disk_confirms();
                }
            }
            Wake::Fault(FaultCommand::Kill) => {
                // A reset: no FIN from the writer, linger 0 on close.
                self.entry.faults.set_killed();
                self.reader.reset_on_close();
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut self.writer.0).await;
                return Err(End::Killed);
            }
            Wake::Fault(FaultCommand::ForceClose(text)) => {
                self.begin_close(AmqpError::new(ReplyCode::ConnectionForced, text));
            }
            Wake::Fault(FaultCommand::CloseNow(text)) => {
                self.begin_close(AmqpError::new(ReplyCode::ConnectionForced, text));
                return Err(End::Reset);
            }
            Wake::Shutdown => {
                self.shutting_down = true;
                if self.phase() != Phase::Running {
                    return Err(End::Shutdown);
                }
                self.begin_close(AmqpError::new(
                    ReplyCode::ConnectionForced,
                    "broker forced connection closure with reason 'shutdown'",
                ));
            }
        }
        Ok(())
    }

    /// Counts octets read from the client, unless the fault injection says
    /// to ignore the client (then the monitor sees silence).
    fn read(&mut self, read: io::Result<usize>) -> Result<(), End> {
        let n = match read {
            Ok(0) => return Err(End::PeerClosed(None)),
            Ok(n) => n,
            Err(e) => return Err(End::PeerClosed(Some(e))),
        };
        // The room the read had: `read_buf` only adds room when there was none.
        let room = self.buf.capacity() - (self.buf.len() - n);
        self.last_read_small = n < SMALL_READ && n < room;
        if self.reader.counted_below() {
            return Ok(());
        }
        let c = &self.entry.counters;
        let now = c.now_ms();
        c.last_read_ms.store(now, Ordering::Relaxed);
        if !self.entry.faults.ignore_client() {
            c.recv_oct.fetch_add(n as u64, Ordering::Relaxed);
            c.last_counted_ms.store(now, Ordering::Relaxed);
        }
        Ok(())
    }

    fn phase(&self) -> Phase {
        match &self.stage {
            _ if self.close_deadline.is_some() => Phase::Closing,
            Stage::Handshake(h) => h.phase(),
            Stage::Open(_) => Phase::Running,
        }
    }

    /// Tells how the connection ended and gives back what it held; the
    /// socket closes when the connection is dropped, right after.
    async fn finish(&mut self, end: End) {
        let name = &self.entry.name;
        let totals = &self.broker.totals;
        Totals::add(&totals.connections_closed, 1);
        if let End::MissedHeartbeats(m) = &end {
            Totals::add(&totals.heartbeat_timeouts, 1);
            let (timeout, silence) = (self.heartbeat, m.silence);
            self.broker.events.emit(|| Event::HeartbeatTimeout { connection: name.clone(), timeout, silence });
        }
        self.broker.events.emit(|| Event::ConnectionClosed { connection: name.clone(), reason: end.reason() });
        let who = match &self.stage {
            Stage::Open(channels) => {
                let s = channels.session();
                format!(", vhost: '{}', user: '{}'", Escaped(&s.vhost.name.as_str_lossy()), Escaped(&s.user))
            }
            Stage::Handshake(_) => String::new(),
        };
        end.log(&Obituary {
            id: self.entry.id,
            name,
            who,
            duration: format_duration(self.entry.counters.accepted.0.elapsed()),
            phase: self.phase(),
            received_nothing: self.entry.counters.recv_oct.load(Ordering::Relaxed) == 0,
            heartbeat: self.heartbeat,
        });
        // The heartbeat tasks end here, before anything else can happen.
        self.heartbeats.stop();
        if let Stage::Open(channels) = &mut self.stage {
            channels.release();
        }
        if end.flushes() {
            self.outlet.send(Outbound::Close);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut self.writer.0).await;
        }
    }
}
