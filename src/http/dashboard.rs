//! The live page (`GET /`): connections, their heartbeat timelines, flow
//! control and queues, drawn in the browser from the event stream, with
//! the fault switches one click away. It is one HTML file of plain
//! JavaScript and SVG (`dashboard.html`), built into the binary: no build
//! step, nothing fetched from elsewhere.
//!
//! What the page needs that no event says as it changes (byte counters,
//! idle times, queue counts) comes from [`snapshot`], which the event
//! stream sends once a second to a page that asks for it
//! (`/api/warren/events/stream?stats=1`). `POST /api/warren/demo` starts
//! the teaching demo (`crate::demo`).

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::control::{epoch_ms, faults_json};
use super::{admin_refusal, bad_request, Http, JsonBody};
use crate::broker::Broker;
use crate::demo::{self, Login, NotStarted};

const PAGE: &str = include_str!("dashboard.html");

/// The page may run its own inline script and talk to its own origin, and
/// nothing else: names it shows come from clients, so even a mistake in
/// escaping them could not load or send anything.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

/// Everything the page shows that events do not carry as it changes:
/// each connection's counters, idle times, state and fault switches, each
/// queue's counts and totals (the page turns two readings into rates), the
/// alarms, and the broker's clock (`now`, milliseconds since the epoch).
pub(super) fn snapshot(broker: &Broker) -> Value {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let connections: Vec<Value> = broker
        .connection_infos()
        .iter()
        .map(|c| {
            let d = c.details.as_ref();
            json!({
                "name": c.name,
                "user_provided_name": c.client_name,
                "user": d.map(|d| d.user.as_str()),
                "vhost": d.map(|d| d.vhost.as_str()),
                "heartbeat": d.map(|d| d.heartbeat),
                "state": c.state.name(),
                "monitor_paused": c.monitor_paused,
                "idle_in_ms": ms(c.idle),
                "idle_counted_ms": ms(c.idle_counted),
                "idle_out_ms": ms(c.idle_out),
                "recv_oct": c.bytes_in,
                "send_oct": c.bytes_out,
                "heartbeats_sent": c.heartbeats_sent,
                "heartbeats_received": c.heartbeats_received,
                "channels": c.channels.len(),
                "faults": faults_json(&c.faults),
                "tls": c.tls.as_ref().map(|t| t.protocol),
            })
        })
        .collect();
    let queues: Vec<Value> = broker
        .queue_infos()
        .iter()
        .map(|q| {
            json!({
                "vhost": q.vhost, "name": q.name,
                "messages_ready": q.messages_ready, "messages_unacknowledged": q.messages_unacknowledged,
                "consumers": q.consumers.len(),
                "published": q.totals.published, "delivered": q.totals.delivered,
            })
        })
        .collect();
    let alarms = broker.alarms.current();
    json!({
        "now": epoch_ms(std::time::SystemTime::now()),
        "connections": connections,
        "queues": queues,
        "alarms": {"memory": alarms.memory, "disk": alarms.disk},
        "demo_running": broker.demo_running.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// `POST /api/warren/demo`, optionally with `{"vhost": "/"}`: starts the
/// teaching demo, its workers logged in as the caller; 202 with the first
/// worker's connection name once it is connected, 409 while a demo plays.
pub(super) async fn start_demo(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let vhost = match body.get("vhost") {
        None => "/".to_string(),
        Some(Value::String(v)) if v.len() <= 255 => v.clone(),
        Some(_) => return bad_request("vhost: a virtual host name, at most 255 octets"),
    };
    let login = Login { user: caller.name.clone(), password: caller.password.clone(), vhost };
    match demo::start(http.broker.clone(), login).await {
        Ok(playing) => {
            (StatusCode::ACCEPTED, Json(json!({"worker": playing.worker, "queue": demo::QUEUE}))).into_response()
        }
        Err(e @ NotStarted::AlreadyRunning) => {
            (StatusCode::CONFLICT, Json(json!({"error": "conflict", "reason": e.to_string()}))).into_response()
        }
        Err(e) => bad_request(&e.to_string()),
    }
}
