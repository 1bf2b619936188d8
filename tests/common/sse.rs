//! A listener on the server-sent event stream, reading it as text.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::http::GUEST;

const WAIT: Duration = Duration::from_secs(10);

/// A stream, read as text: `id:` lines, `data:` lines, `event:` lines.
pub struct Listener {
    socket: TcpStream,
    text: String,
    /// How far `next_line` has read.
    at: usize,
}

impl Listener {
    pub async fn open(http: SocketAddr, last_event_id: Option<u64>, receive_buffer: Option<u32>) -> Listener {
        Listener::open_path(http, "/api/warren/events/stream", last_event_id, receive_buffer).await
    }

    /// The same on another path (e.g. with `?stats=1`).
    pub async fn open_path(
        http: SocketAddr,
        path: &str,
        last_event_id: Option<u64>,
        receive_buffer: Option<u32>,
    ) -> Listener {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut socket = socket.connect(http).await.unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {GUEST}\r\n{resume}\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut l = Listener { socket, text: String::new(), at: 0 };
        let head = l.line_containing("\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(l.text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", l.text);
        l
    }

    /// Reads until `needle` appears after what was consumed; returns the
    /// text up to and including it, and consumes it.
    pub async fn line_containing(&mut self, needle: &str) -> String {
        loop {
            if let Some(i) = self.text[self.at..].find(needle) {
                let found = self.text[self.at..self.at + i + needle.len()].to_string();
                self.at += i + needle.len();
                return found;
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.socket.read(&mut buf)).await.expect("stream stalled").unwrap();
            assert!(n > 0, "stream closed");
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// The next event's id and data.
    pub async fn next_event(&mut self) -> (u64, String) {
        self.line_containing("id: ").await;
        let id: u64 = self.line_containing("\n").await.trim().parse().unwrap();
        self.line_containing("data: ").await;
        let data = self.line_containing("\n").await.trim().to_string();
        (id, data)
    }

    /// Events until one whose data contains `needle`.
    pub async fn until(&mut self, needle: &str) -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        loop {
            let event = self.next_event().await;
            let done = event.1.contains(needle);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}
