//! Helpers shared by the integration tests: an embedded broker per test and
//! a raw AMQP client that speaks frames directly, for the cases a polite
//! client library would never produce (silence, bad frames, odd tune-ok).

#![allow(dead_code)]

pub mod http;
pub mod sse;
pub mod tls;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use warren::protocol::frame::{
    parse_frame, write_body_frame_header, write_content_header, write_method, PROTOCOL_HEADER,
};
use warren::protocol::methods::{basic, channel, connection, queue};
use warren::protocol::{FieldTable, Frame, Method};

/// A client that reads and writes raw frames, over TCP or any other
/// stream (TLS).
pub struct RawClient<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
}

/// What reading the next frame found.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// The server closed the socket (EOF or reset).
    Closed,
}

impl RawClient {
    pub async fn connect(addr: std::net::SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        RawClient { stream, buf: BytesMut::new() }
    }

    /// A full handshake with the given heartbeat, and channel 1 opened.
    pub async fn open(addr: std::net::SocketAddr, heartbeat: u16) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        c.open_on(heartbeat).await;
        c
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawClient<S> {
    /// A client on a stream already connected.
    pub fn over(stream: S) -> RawClient<S> {
        RawClient { stream, buf: BytesMut::new() }
    }

    /// A full handshake on this client's stream, and channel 1 opened.
    pub async fn open_on(&mut self, heartbeat: u16) {
        self.handshake_to_tune_ok(2047, 131_072, heartbeat).await;
        self.send(0, connection::Open { virtual_host: "/".into(), reserved_1: "".into(), reserved_2: false }).await;
        let (_, ok) = self.expect_method(Duration::from_secs(5)).await;
        assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
        self.send(1, channel::Open { reserved_1: "".into() }).await;
        let (_, ok) = self.expect_method(Duration::from_secs(5)).await;
        assert!(matches!(ok, Method::ChannelOpenOk(_)), "{ok:?}");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, channel: u16, method: impl Into<Method>) {
        let mut buf = BytesMut::new();
        write_method(&mut buf, channel, &method.into());
        self.send_raw(&buf).await;
    }

    /// The next frame, or `Closed`; panics after `limit` without either.
    pub async fn read(&mut self, limit: Duration) -> Read {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(frame) = parse_frame(&mut self.buf, 1 << 20).expect("server sent a bad frame") {
                return Read::Frame(frame);
            }
            match timeout(deadline.saturating_duration_since(Instant::now()), self.stream.read_buf(&mut self.buf)).await
            {
                Err(_) => panic!("nothing from the server within {limit:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads the raw bytes the server sends until `limit` or EOF.
    pub async fn read_bytes(&mut self, limit: Duration) -> Vec<u8> {
        let mut out = self.buf.split().to_vec();
        let mut chunk = [0u8; 1024];
        let deadline = Instant::now() + limit;
        loop {
            match timeout(deadline.saturating_duration_since(Instant::now()), self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
                _ => return out,
            }
        }
    }

    pub async fn expect_method(&mut self, limit: Duration) -> (u16, Method) {
        loop {
            match self.read(limit).await {
                Read::Frame(Frame::Method { channel, method }) => return (channel, method),
                Read::Frame(Frame::Heartbeat { .. }) => continue,
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Protocol header, start-ok (PLAIN guest/guest), tune-ok with the
    /// given values. Returns the server's `connection.tune`.
    pub async fn handshake_to_tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) -> connection::Tune {
        self.handshake_to_tune_ok_as("guest", "guest", channel_max, frame_max, heartbeat).await
    }

    /// The same as another user.
    pub async fn handshake_to_tune_ok_as(
        &mut self,
        user: &str,
        password: &str,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> connection::Tune {
        self.send_raw(PROTOCOL_HEADER).await;
        let (_, start) = self.expect_method(Duration::from_secs(5)).await;
        assert!(matches!(start, Method::ConnectionStart(_)), "{start:?}");
        let caps = FieldTable::new()
            .with("authentication_failure_close", warren::protocol::FieldValue::Bool(true))
            .with("consumer_cancel_notify", warren::protocol::FieldValue::Bool(true))
            .with("connection.blocked", warren::protocol::FieldValue::Bool(true));
        let props = FieldTable::new().with("capabilities", warren::protocol::FieldValue::Table(caps));
        self.send(
            0,
            connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: Bytes::from(format!("\0{user}\0{password}")),
                locale: "en_US".into(),
            },
        )
        .await;
        let (_, tune) = self.expect_method(Duration::from_secs(5)).await;
        let Method::ConnectionTune(tune) = tune else { panic!("expected tune, got {tune:?}") };
        self.send(0, connection::TuneOk { channel_max, frame_max, heartbeat }).await;
        tune
    }
}

/// Appends `basic.publish` to the default exchange, a content header without
/// properties and the body (no body frame when it is empty) on channel 1.
pub fn publish_frames(buf: &mut BytesMut, routing_key: &str, mandatory: bool, body: &[u8]) {
    let m = basic::Publish { exchange: "".into(), routing_key: routing_key.into(), mandatory, ..Default::default() };
    write_method(buf, 1, &m.into());
    write_content_header(buf, 1, 60, body.len() as u64, &[0, 0]);
    if !body.is_empty() {
        write_body_frame_header(buf, 1, body.len());
        buf.extend_from_slice(body);
        buf.extend_from_slice(&[0xce]);
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawClient<S> {
    /// Declares a queue on channel 1 and waits for declare-ok.
    pub async fn declare_queue(&mut self, name: &str) {
        self.send(1, queue::Declare { queue: name.into(), ..Default::default() }).await;
        let (_, ok) = self.expect_method(Duration::from_secs(3)).await;
        assert!(matches!(ok, Method::QueueDeclareOk(_)), "{ok:?}");
    }

    /// How many messages `queue` holds, by a passive `queue.declare`.
    pub async fn message_count(&mut self, queue: &str) -> u32 {
        self.send(1, queue::Declare { queue: queue.into(), passive: true, ..Default::default() }).await;
        match self.expect_method(Duration::from_secs(10)).await.1 {
            Method::QueueDeclareOk(ok) => ok.message_count,
            other => panic!("{other:?}"),
        }
    }
}
