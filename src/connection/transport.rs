//! The byte stream a connection runs on, split into the half the connection
//! reads and the half its writer task owns.
//!
//! Usually a TCP socket, split without a lock (`into_split`), where a
//! "kill" (fault injection) can be a real reset: linger 0 and no FIN.
//! Anything else that reads and writes bytes works too, through
//! `tokio::io::split`: the fuzzing harness drives whole connections over an
//! in-memory pipe, and a TLS stream is another such stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Any stream a connection can run on.
pub trait Stream: AsyncRead + AsyncWrite + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Stream for S {}

type Boxed = Pin<Box<dyn Stream>>;

pub enum ReadSide {
    Tcp(OwnedReadHalf),
    Other(ReadHalf<Boxed>),
}

pub enum WriteSide {
    Tcp(OwnedWriteHalf),
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

impl ReadSide {
    /// Makes the socket's close a reset (TCP only; other streams just close).
    pub fn reset_on_close(&self) {
        if let ReadSide::Tcp(r) = self {
            // Linger 0 never blocks (the deprecation is about positive
            // values): the close sends a reset at once.
            #[allow(deprecated)]
            let _ = r.as_ref().set_linger(Some(Duration::ZERO));
        }
    }
}

impl WriteSide {
    /// Lets go of the write half without shutting it down (no FIN).
    pub fn forget(self) {
        match self {
            WriteSide::Tcp(w) => w.forget(),
            WriteSide::Other(w) => drop(w),
        }
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Other(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, data),
            WriteSide::Other(w) => Pin::new(w).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteSide::Other(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Tcp(w) => w.is_write_vectored(),
            WriteSide::Other(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Other(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Other(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
