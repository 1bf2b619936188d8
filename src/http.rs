//! The HTTP control API, on loopback: test suites in any language drive
//! warren through it.
//!
//! - The read-only subset of RabbitMQ's management API that test tools use,
//!   with the same JSON field names: `GET /api/overview`, `/api/connections`,
//!   `/api/queues`, `/api/queues/{vhost}`, `/api/queues/{vhost}/{name}`,
//!   `/api/exchanges`, and `DELETE /api/connections/{name}` (a forced close,
//!   320, as the management plugin does).
//! - warren's own: `POST /api/warren/connections/{name}/faults` (fault
//!   injection, a JSON object of switches), `PUT`/`DELETE
//!   /api/warren/alarms/{memory|disk}` (raise and clear an alarm), and
//!   `GET /api/warren/events?since=N&timeout_ms=T` (long polling over the
//!   event stream: events numbered after N, waiting up to T for one).
//!
//! Every request needs HTTP basic auth with one of the broker's users.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::broker::access::base64_decode;
use crate::broker::alarm::Resource;
use crate::broker::events::Event;
use crate::broker::Broker;
use crate::connection::faults::Command as FaultCommand;
use crate::protocol::{FieldTable, FieldValue};

/// The events kept for long polling.
const EVENT_LOG: usize = 10_000;

struct Http {
    broker: Arc<Broker>,
    /// Numbered recent events, for `GET /api/warren/events`.
    log: Mutex<(u64, VecDeque<(u64, Event)>)>,
    logged: Notify,
}

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let http = Arc::new(Http { broker: broker.clone(), log: Mutex::new((0, VecDeque::new())), logged: Notify::new() });
    let mut events = broker.events.subscribe();
    let logger = http.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    let mut log = logger.log.lock().unwrap_or_else(|e| e.into_inner());
                    log.0 += 1;
                    let seq = log.0;
                    log.1.push_back((seq, event));
                    if log.1.len() > EVENT_LOG {
                        log.1.pop_front();
                    }
                    drop(log);
                    logger.logged.notify_waiters();
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    let app = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/connections", get(connections))
        .route("/api/connections/{name}", get(connection).delete(close_connection))
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route("/api/queues/{vhost}/{name}", get(queue))
        .route("/api/exchanges", get(exchanges))
        .route("/api/warren/connections/{name}/faults", post(faults))
        .route("/api/warren/alarms/{resource}", put(raise_alarm).delete(clear_alarm))
        .route("/api/warren/events", get(events_since))
        .layer(middleware::from_fn_with_state(http.clone(), basic_auth))
        .with_state(http);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let _ = axum::serve(listener, app).with_graceful_shutdown(stop).await;
}

/// RabbitMQ's management API wants a user of the broker.
async fn basic_auth(State(http): State<Arc<Http>>, request: Request, next: Next) -> Response {
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(base64_decode)
        .and_then(|raw| String::from_utf8(raw).ok());
    let ok = credentials.as_deref().and_then(|c| c.split_once(':')).is_some_and(|(user, password)| {
        http.broker.access.authenticate(user, password, std::net::Ipv4Addr::LOCALHOST.into()).is_ok()
    });
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"warren\"")],
            Json(json!({
                "error": "not_authorized", "reason": "Login failed"
            })),
        )
            .into_response();
    }
    next.run(request).await
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "Object Not Found", "reason": what}))).into_response()
}

/// A field table as the management API shows it: a JSON object.
pub fn table_json(t: &FieldTable) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.to_string(), value_json(v))).collect())
}

fn value_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::F32(f) => json!(f),
        FieldValue::F64(f) => json!(f),
        FieldValue::Decimal { scale, value } => json!(f64::from(*value) / 10f64.powi(i32::from(*scale))),
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => json!(String::from_utf8_lossy(b)),
        FieldValue::Array(a) => Value::Array(a.iter().map(value_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table_json(t),
        FieldValue::Void => Value::Null,
        other => json!(other.as_i64()),
    }
}

fn connection_json(c: &crate::broker::inspect::ConnectionInfo) -> Value {
    let (peer, host) = c.name.split_once(" -> ").unwrap_or((&c.name, ""));
    let split = |addr: &str| -> (String, u16) {
        let a: Option<SocketAddr> = addr.parse().ok();
        a.map_or((String::new(), 0), |a| (a.ip().to_string(), a.port()))
    };
    let ((peer_host, peer_port), (host, port)) = (split(peer), split(host));
    let d = c.details.as_ref();
    json!({
        "name": c.name,
        "user_provided_name": c.client_name,
        "state": c.state.name(),
        "user": d.map(|d| d.user.clone()),
        "vhost": d.map(|d| d.vhost.clone()),
        "client_properties": d.map(|d| table_json(&d.client_properties)),
        "channel_max": d.map(|d| d.channel_max),
        "frame_max": d.map(|d| d.frame_max),
        "timeout": d.map(|d| d.heartbeat),
        "recv_oct": c.bytes_in,
        "send_oct": c.bytes_out,
        "recv_cnt": c.frames_in,
        "send_cnt": c.frames_out,
        "channels": c.channels.len(),
        "idle_ms": c.idle.as_millis() as u64,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": host,
        "port": port,
        "protocol": "AMQP 0-9-1",
        "type": "network",
    })
}

fn queue_json(q: &crate::broker::inspect::QueueInfo) -> Value {
    json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "exclusive": q.exclusive,
        "auto_delete": q.auto_delete,
        "arguments": table_json(&q.arguments),
        "messages": q.messages_ready + q.messages_unacknowledged,
        "messages_ready": q.messages_ready,
        "messages_unacknowledged": q.messages_unacknowledged,
        "consumers": q.consumers.len(),
        "type": "classic",
        "state": "running",
    })
}

async fn overview(State(http): State<Arc<Http>>) -> Json<Value> {
    let b = &http.broker;
    let queues = b.queue_infos();
    let ready: usize = queues.iter().map(|q| q.messages_ready).sum();
    let unacked: usize = queues.iter().map(|q| q.messages_unacknowledged).sum();
    Json(json!({
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": "warren",
        "node": "warren@localhost",
        "object_totals": {
            "connections": b.connections.len(),
            "queues": queues.len(),
            "exchanges": b.exchange_infos().len(),
            "consumers": queues.iter().map(|q| q.consumers.len()).sum::<usize>(),
        },
        "queue_totals": { "messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked },
        "memory": { "held": b.alarms.held(), "high_watermark": b.alarms.watermark() },
        "alarms": { "memory": b.alarms.current().memory, "disk": b.alarms.current().disk },
    }))
}

async fn connections(State(http): State<Arc<Http>>) -> Json<Value> {
    Json(Value::Array(http.broker.connection_infos().iter().map(connection_json).collect()))
}

async fn connection(State(http): State<Arc<Http>>, Path(name): Path<String>) -> Response {
    match http.broker.connection_infos().iter().find(|c| c.name == name) {
        Some(c) => Json(connection_json(c)).into_response(),
        None => not_found("connection not found"),
    }
}

async fn close_connection(State(http): State<Arc<Http>>, Path(name): Path<String>, request: Request) -> Response {
    // RabbitMQ's management plugin closes with this text unless the client
    // gives its own in the X-Reason header.
    let reason = request
        .headers()
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    match http.broker.connections.iter().find(|e| e.name == name || e.client_name.get() == Some(&name)) {
        Some(e) => {
            let _ = e.commands.send(FaultCommand::ForceClose(reason));
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found("connection not found"),
    }
}

async fn queues(State(http): State<Arc<Http>>) -> Json<Value> {
    Json(Value::Array(http.broker.queue_infos().iter().map(queue_json).collect()))
}

async fn queues_in(State(http): State<Arc<Http>>, Path(vhost): Path<String>) -> Json<Value> {
    Json(Value::Array(http.broker.queue_infos().iter().filter(|q| q.vhost == vhost).map(queue_json).collect()))
}

async fn queue(State(http): State<Arc<Http>>, Path((vhost, name)): Path<(String, String)>) -> Response {
    match http.broker.queue_infos().iter().find(|q| q.vhost == vhost && q.name == name) {
        Some(q) => Json(queue_json(q)).into_response(),
        None => not_found("queue not found"),
    }
}

async fn exchanges(State(http): State<Arc<Http>>) -> Json<Value> {
    Json(Value::Array(
        http.broker
            .exchange_infos()
            .iter()
            .map(|x| {
                json!({
                    "name": x.name, "vhost": x.vhost, "type": x.kind, "durable": x.durable,
                    "auto_delete": x.auto_delete, "internal": x.internal, "arguments": table_json(&x.arguments),
                })
            })
            .collect(),
    ))
}

/// `{"withhold_heartbeats": true, "ignore_client": false, "black_hole": …,
/// "block": …, "delivery_latency_ms": 200, "kill": true, "force_close": "text"}`
async fn faults(State(http): State<Arc<Http>>, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
    let Some(e) = http
        .broker
        .connections
        .iter()
        .find(|e| e.name == name || e.client_name.get() == Some(&name))
        .map(|e| e.clone())
    else {
        return not_found("connection not found");
    };
    let f = &e.faults;
    let flag = |key: &str| body.get(key).and_then(Value::as_bool);
    if let Some(on) = flag("withhold_heartbeats") {
        f.set_withhold_heartbeats(on);
    }
    if let Some(on) = flag("ignore_client") {
        f.set_ignore_client(on);
    }
    if let Some(on) = flag("black_hole") {
        f.set_black_hole(on);
    }
    if let Some(on) = flag("block") {
        f.set_blocked(on);
    }
    if let Some(ms) = body.get("delivery_latency_ms").and_then(Value::as_u64) {
        f.set_delivery_latency(Duration::from_millis(ms));
    }
    if let Some(text) = body.get("force_close").and_then(Value::as_str) {
        let _ = e.commands.send(FaultCommand::ForceClose(text.to_string()));
    }
    if flag("kill") == Some(true) {
        let _ = e.commands.send(FaultCommand::Kill);
    }
    StatusCode::NO_CONTENT.into_response()
}

fn resource(name: &str) -> Option<Resource> {
    match name {
        "memory" => Some(Resource::Memory),
        "disk" => Some(Resource::Disk),
        _ => None,
    }
}

async fn raise_alarm(State(http): State<Arc<Http>>, Path(name): Path<String>) -> Response {
    match resource(&name) {
        Some(r) => {
            http.broker.alarms.raise(r);
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found("no such resource: memory or disk"),
    }
}

async fn clear_alarm(State(http): State<Arc<Http>>, Path(name): Path<String>) -> Response {
    match resource(&name) {
        Some(r) => {
            http.broker.alarms.clear(r);
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found("no such resource: memory or disk"),
    }
}

/// Events numbered after `since`, waiting up to `timeout_ms` for the first.
async fn events_since(State(http): State<Arc<Http>>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let timeout = Duration::from_millis(q.get("timeout_ms").and_then(|s| s.parse().ok()).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let logged = http.logged.notified();
        let (last, found): (u64, Vec<Value>) = {
            let log = http.log.lock().unwrap_or_else(|e| e.into_inner());
            (log.0, log.1.iter().filter(|(seq, _)| *seq > since).map(|(seq, e)| event_json(*seq, e)).collect())
        };
        if !found.is_empty() || tokio::time::Instant::now() >= deadline {
            return Json(json!({ "last": last, "events": found }));
        }
        let _ = tokio::time::timeout_at(deadline, logged).await;
    }
}

fn event_json(seq: u64, e: &Event) -> Value {
    let mut v = match e {
        Event::ConnectionOpened { connection, client_properties, channel_max, frame_max, heartbeat } => json!({
            "type": "connection.opened", "connection": connection, "client_properties": table_json(client_properties),
            "channel_max": channel_max, "frame_max": frame_max, "heartbeat": heartbeat,
        }),
        Event::ConnectionClosed { connection, reason } => {
            json!({"type": "connection.closed", "connection": connection, "reason": reason})
        }
        Event::HeartbeatSent { connection } => json!({"type": "heartbeat.sent", "connection": connection}),
        Event::HeartbeatReceived { connection } => json!({"type": "heartbeat.received", "connection": connection}),
        Event::HeartbeatTimeout { connection, timeout, silence } => json!({
            "type": "heartbeat.timeout", "connection": connection, "timeout": timeout,
            "silence_ms": silence.as_millis() as u64,
        }),
        Event::Blocked { connection, reason } => {
            json!({"type": "connection.blocked", "connection": connection, "reason": reason})
        }
        Event::Unblocked { connection } => json!({"type": "connection.unblocked", "connection": connection}),
        Event::ChannelClosed { connection, channel, code, text } => json!({
            "type": "channel.closed", "connection": connection, "channel": channel, "code": code, "text": text,
        }),
        Event::Published { connection, exchange, routing_key, queues } => json!({
            "type": "message.published", "connection": connection, "exchange": exchange,
            "routing_key": routing_key, "queues": queues,
        }),
        Event::Delivered { connection, channel, queue, delivery_tag, redelivered } => json!({
            "type": "message.delivered", "connection": connection, "channel": channel, "queue": queue,
            "delivery_tag": delivery_tag, "redelivered": redelivered,
        }),
        Event::Acked { connection, channel, delivery_tag, multiple } => json!({
            "type": "message.acked", "connection": connection, "channel": channel,
            "delivery_tag": delivery_tag, "multiple": multiple,
        }),
        Event::Nacked { connection, channel, delivery_tag, multiple, requeue } => json!({
            "type": "message.nacked", "connection": connection, "channel": channel,
            "delivery_tag": delivery_tag, "multiple": multiple, "requeue": requeue,
        }),
        Event::Requeued { queue, count } => json!({"type": "message.requeued", "queue": queue, "count": count}),
        Event::Expired { queue, count } => json!({"type": "message.expired", "queue": queue, "count": count}),
        Event::DeadLettered { queue, reason, count } => {
            json!({"type": "message.dead_lettered", "queue": queue, "reason": reason, "count": count})
        }
    };
    v["seq"] = json!(seq);
    v
}
