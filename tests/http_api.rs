//! The HTTP control API over real HTTP: management-API fields, basic auth,
//! forced close, fault injection and events by long polling.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::{publish_frames, RawClient};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::protocol::Method;
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(5);
/// `guest:guest`, base64.
const GUEST: &str = "Z3Vlc3Q6Z3Vlc3Q=";

/// One HTTP/1.1 request; returns the status and the body as JSON (Null if none).
async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>, auth: Option<&str>) -> (u16, Value) {
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
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = call(addr, "GET", path, None, Some(GUEST)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn encode(name: &str) -> String {
    name.replace(' ', "%20").replace('>', "%3E").replace('/', "%2F")
}

#[tokio::test]
async fn management_endpoints_speak_rabbitmqs_json() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    assert_eq!(call(http, "GET", "/api/overview", None, None).await.0, 401);
    assert_eq!(call(http, "GET", "/api/overview", None, Some("Z3Vlc3Q6bm9wZQ==")).await.0, 401);

    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    client.send(1, warren::protocol::methods::basic::Qos::default()).await;
    client.expect_method(WAIT).await;

    let overview = get(http, "/api/overview").await;
    assert_eq!(overview["product_name"], "warren");
    assert_eq!(overview["object_totals"]["connections"], 1);
    assert_eq!(overview["queue_totals"]["messages_ready"], 1);

    let connections = get(http, "/api/connections").await;
    let c = &connections[0];
    assert_eq!(
        (c["user"].as_str(), c["vhost"].as_str(), c["state"].as_str()),
        (Some("guest"), Some("/"), Some("running"))
    );
    assert_eq!(c["timeout"], 0);
    assert!(c["recv_oct"].as_u64().unwrap() > 0);

    let q = get(http, "/api/queues/%2F/q").await;
    assert_eq!(
        (q["messages"].as_u64(), q["messages_ready"].as_u64(), q["consumers"].as_u64()),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(get(http, "/api/queues").await.as_array().unwrap().len(), 1);
    assert_eq!(call(http, "GET", "/api/queues/%2F/nope", None, Some(GUEST)).await.0, 404);
    let exchanges = get(http, "/api/exchanges").await;
    assert!(exchanges.as_array().unwrap().iter().any(|x| x["name"] == "amq.topic" && x["type"] == "topic"));

    let name = c["name"].as_str().unwrap().to_string();
    let (status, _) = call(http, "DELETE", &format!("/api/connections/{}", encode(&name)), None, Some(GUEST)).await;
    assert_eq!(status, 204);
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(close)) => {
            assert_eq!(close.reply_code, 320);
            assert_eq!(close.reply_text.to_string(), "CONNECTION_FORCED - Closed via management plugin");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn faults_alarms_and_events_over_http() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;

    let events = get(http, "/api/warren/events?since=0&timeout_ms=2000").await;
    let opened = events["events"].as_array().unwrap().iter().find(|e| e["type"] == "connection.opened").cloned();
    let opened = opened.expect("connection.opened in the log");
    let name = opened["connection"].as_str().unwrap().to_string();
    let last = events["last"].as_u64().unwrap();

    let (status, _) = call(
        http,
        "POST",
        &format!("/api/warren/connections/{}/faults", encode(&name)),
        Some(r#"{"block": true}"#),
        Some(GUEST),
    )
    .await;
    assert_eq!(status, 204);
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionBlocked(_))));
    let events = get(http, &format!("/api/warren/events?since={last}&timeout_ms=2000")).await;
    assert!(events["events"].as_array().unwrap().iter().any(|e| e["type"] == "connection.blocked"), "{events}");

    call(
        http,
        "POST",
        &format!("/api/warren/connections/{}/faults", encode(&name)),
        Some(r#"{"block": false}"#),
        Some(GUEST),
    )
    .await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionUnblocked(_))));
    assert_eq!(call(http, "PUT", "/api/warren/alarms/memory", None, Some(GUEST)).await.0, 204);
    assert!(get(http, "/api/overview").await["alarms"]["memory"].as_bool().unwrap());
    assert_eq!(call(http, "DELETE", "/api/warren/alarms/memory", None, Some(GUEST)).await.0, 204);
    assert_eq!(call(http, "PUT", "/api/warren/alarms/cpu", None, Some(GUEST)).await.0, 404);
}
