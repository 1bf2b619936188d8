//! The byte stream a connection runs on, split into the half the connection
//! reads and the half its writer task owns.
//!
//! Usually a TCP socket, split without a lock (`into_split`), where a
//! "kill" (fault injection) can be a real reset: linger 0 and no FIN.
//! Anything else that reads and writes bytes works too, through
//! `tokio::io::split`: the fuzzing harness drives whole connections over an
//! in-memory pipe.
//!
//! A TLS stream runs over a [`Metered`] socket, which counts the octets
//! that cross the TCP socket itself, encrypted, as RabbitMQ's `recv_oct`
//! and `send_oct` do for an ssl socket: the heartbeat monitor watches what
//! arrives on the wire, so a client that stalls in the middle of a TLS
//! record is as silent as one that sends nothing. The connection then
//! leaves those counters alone ([`ReadSide::counted_below`]). A second
//! handle on the socket lets a kill reset it under TLS too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::broker::connections::{Counters, Faults};

/// Any stream a connection can run on.
pub trait Stream: AsyncRead + AsyncWrite + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Stream for S {}

type Boxed = Pin<Box<dyn Stream>>;

pub enum ReadSide {
    Tcp(OwnedReadHalf),
    /// TLS over a [`Metered`] socket; `socket` is a second handle on it.
    Tls {
        half: ReadHalf<Boxed>,
        socket: std::net::TcpStream,
    },
    Other(ReadHalf<Boxed>),
}

pub enum WriteSide {
    Tcp(OwnedWriteHalf),
    Tls(WriteHalf<Boxed>),
    Other(WriteHalf<Boxed>),
}

/// Splits a TCP socket (Nagle off: the writer batches frames already).
pub fn tcp(socket: TcpStream) -> (ReadSide, WriteSide) {
    let _ = socket.set_nodelay(true);
    let (r, w) = socket.into_split();
    (ReadSide::Tcp(r), WriteSide::Tcp(w))
}

/// Splits any other stream.
pub fn other(stream: impl Stream) -> (ReadSide, WriteSide) {
    let (r, w) = tokio::io::split(Box::pin(stream) as Boxed);
    (ReadSide::Other(r), WriteSide::Other(w))
}

/// Splits a TLS stream that runs over a [`Metered`] socket; `socket` is a
/// second handle on that socket (see [`Metered::handle`]).
pub fn tls(stream: impl Stream, socket: std::net::TcpStream) -> (ReadSide, WriteSide) {
    let (r, w) = tokio::io::split(Box::pin(stream) as Boxed);
    (ReadSide::Tls { half: r, socket }, WriteSide::Tls(w))
}

/// A TCP socket that counts the octets crossing it into a connection's
/// [`Counters`]: what arrives (unless the ignore-client fault is on, as for
/// plain connections) and what leaves. TLS runs on top of it.
pub struct Metered {
    socket: TcpStream,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
}

impl Metered {
    pub fn new(socket: TcpStream, counters: Arc<Counters>, faults: Arc<Faults>) -> Metered {
        let _ = socket.set_nodelay(true);
        Metered { socket, counters, faults }
    }

    /// A second handle on the socket, through which a kill can make its
    /// close a reset once the TLS stream owns the first.
    /// (A duplicated descriptor: the same socket, closed once both are.)
    pub fn handle(&self) -> io::Result<std::net::TcpStream> {
        use std::os::fd::AsFd;
        Ok(std::net::TcpStream::from(self.socket.as_fd().try_clone_to_owned()?))
    }
}

impl AsyncRead for Metered {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.socket).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let c = &me.counters;
            let now = c.now_ms();
            c.last_read_ms.store(now, Ordering::Relaxed);
            if !me.faults.ignore_client() {
                c.recv_oct.fetch_add(n, Ordering::Relaxed);
                c.last_counted_ms.store(now, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.socket).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            me.counters.send_oct.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.socket).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            me.counters.send_oct.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

impl ReadSide {
    /// Waits until a read would find something (TCP), without a buffer to
    /// read into; other streams are read at once (TLS keeps its own
    /// buffers anyway).
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            // `poll_read_ready` keeps the waker in the socket's own
            // registration; `readable()` would keep a waiter node in the
            // connection's future, 200 octets for its whole life.
            ReadSide::Tcp(r) => std::future::poll_fn(|cx| r.as_ref().poll_read_ready(cx)).await,
            ReadSide::Tls { .. } | ReadSide::Other(_) => Ok(()),
        }
    }

    /// Makes the socket's close a reset (TCP and TLS; other streams just
    /// close).
    pub fn reset_on_close(&self) {
        // Linger 0 never blocks (the deprecation is about positive values):
        // the close sends a reset at once.
        match self {
            #[allow(deprecated)]
            ReadSide::Tcp(r) => {
                let _ = r.as_ref().set_linger(Some(Duration::ZERO));
            }
            ReadSide::Tls { socket, .. } => {
                let _ = linger_zero(socket);
            }
            ReadSide::Other(_) => {}
        }
    }

    /// Whether the octets read are counted below this stream, at the socket
    /// (TLS over [`Metered`]), so the connection must not count them again.
    pub fn counted_below(&self) -> bool {
        matches!(self, ReadSide::Tls { .. })
    }
}

/// Linger 0 on a std socket: its close (once every handle is closed) is a reset.
fn linger_zero(socket: &std::net::TcpStream) -> io::Result<()> {
    // std has no stable set_linger; tokio's takes a tokio socket, so the
    // handle is lent to tokio for the call and taken back.
    let tokio = TcpStream::from_std(socket.try_clone()?)?;
    #[allow(deprecated)]
    let set = tokio.set_linger(Some(Duration::ZERO));
    // The clone's descriptor closes here; the socket stays open.
    drop(tokio);
    set
}

impl WriteSide {
    /// Lets go of the write half without shutting it down (no FIN, and for
    /// TLS no close_notify).
    pub fn forget(self) {
        match self {
            WriteSide::Tcp(w) => w.forget(),
            WriteSide::Tls(w) | WriteSide::Other(w) => drop(w),
        }
    }

    /// Whether the octets written are counted below this stream, at the
    /// socket (see [`ReadSide::counted_below`]).
    pub fn counted_below(&self) -> bool {
        matches!(self, WriteSide::Tls(_))
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls { half, .. } => Pin::new(half).poll_read(cx, buf),
            ReadSide::Other(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, data),
            WriteSide::Tls(w) | WriteSide::Other(w) => Pin::new(w).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteSide::Tls(w) | WriteSide::Other(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Tcp(w) => w.is_write_vectored(),
            WriteSide::Tls(w) | WriteSide::Other(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Tls(w) | WriteSide::Other(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Tls(w) | WriteSide::Other(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
