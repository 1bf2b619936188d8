//! A bare HTTP/1.1 client for the control API tests: one request per
//! connection, the answer parsed as JSON.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

/// `guest:guest`, base64.
pub const GUEST: &str = "Z3Vlc3Q6Z3Vlc3Q=";

/// One HTTP/1.1 request; returns the status and the body as JSON (Null if none).
pub async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> (u16, Value) {
    let (status, _, body) = call_with_head(addr, method, path, body, auth).await;
    (status, body)
}

/// The same, with the response head too.
pub async fn call_with_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> (u16, String, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(a) = auth {
        request += &format!("Authorization: Basic {a}\r\n");
    }
    let body = body.unwrap_or("");
    request += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `user:password`, base64.
pub fn basic(user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

pub async fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = call(addr, "GET", path, None, Some(GUEST)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}
