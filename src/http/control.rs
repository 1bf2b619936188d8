//! warren's own control endpoints, for test suites in any language: fault
//! injection (`POST /api/warren/connections/{name}/faults`), resource alarms
//! raised by hand (`PUT`/`DELETE /api/warren/alarms/{memory|disk}`), and the
//! event stream by long polling (`GET /api/warren/events?since=N&timeout_ms=T`).
//! A request with an unknown key, a wrong type or an unknown resource is a
//! 400 naming what is known, and nothing in it is applied.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::auth::Caller;
use super::{admin_refusal, bad_request, not_authorised, not_found, table_json, Http, JsonBody, LONG_POLL_MAX};
use crate::broker::alarm::Resource;
use crate::broker::connections::FaultSwitches;
use crate::broker::events::{Event, Stamped};
use crate::broker::restart::{Restart, Survivors, MAX_DOWNTIME};

/// The events kept for long polling: at most this many…
const EVENT_LOG: usize = 10_000;
/// …and at most this many octets of their JSON, whichever comes first (a
/// `connection.opened` carries the client's properties, up to 4 KiB).
const EVENT_LOG_BYTES: usize = 8 << 20;
#[derive(Default)]
pub(super) struct EventLog {
    /// The number of the last event logged.
    last: u64,
    events: VecDeque<(u64, String)>,
    bytes: usize,
}

impl EventLog {
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// The number of the oldest event kept, if any.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.events.front().map(|(seq, _)| *seq)
    }

    /// The events kept from number `from` on, in order.
    pub(super) fn since(&self, from: u64) -> impl Iterator<Item = &(u64, String)> {
        let skip = self.oldest().map_or(0, |oldest| from.saturating_sub(oldest) as usize);
        self.events.iter().skip(skip)
    }

    pub(super) fn push(&mut self, stamped: &Stamped) {
        self.last += 1;
        let mut json = event_json(self.last, &stamped.event);
        json["at"] = json!(epoch_ms(stamped.at));
        let text = json.to_string();
        self.bytes += text.len();
        self.events.push_back((self.last, text));
        while self.events.len() > EVENT_LOG || self.bytes > EVENT_LOG_BYTES {
            let Some((_, old)) = self.events.pop_front() else { break };
            self.bytes -= old.len();
        }
    }
}

/// The faults endpoint's keys, as its 400 lists them.
const FAULT_KEYS: &str =
    "withhold_heartbeats, ignore_client, black_hole, block, delivery_latency_ms, kill, force_close";

/// The longest delivery latency a fault may ask for.
const MAX_DELIVERY_LATENCY_MS: u64 = 3_600_000;

/// One switch of a faults request, checked before any is applied.
enum FaultSwitch {
    WithholdHeartbeats(bool),
    IgnoreClient(bool),
    BlackHole(bool),
    Block(bool),
    DeliveryLatency(Duration),
    Kill(bool),
    ForceClose(String),
}

/// Reads `{"withhold_heartbeats": true, "ignore_client": false,
/// "black_hole": …, "block": …, "delivery_latency_ms": 200, "kill": true,
/// "force_close": "text"}`; an unknown key or a value of the wrong type is
/// refused with the reason, so that a typo is never a silent no-op.
fn fault_switches(body: &Value) -> Result<Vec<FaultSwitch>, String> {
    let Some(fields) = body.as_object() else {
        return Err(format!("expected a JSON object with any of: {FAULT_KEYS}"));
    };
    fields
        .iter()
        .map(|(key, value)| {
            let flag = || value.as_bool().ok_or_else(|| format!("{key} must be true or false"));
            Ok(match key.as_str() {
                "withhold_heartbeats" => FaultSwitch::WithholdHeartbeats(flag()?),
                "ignore_client" => FaultSwitch::IgnoreClient(flag()?),
                "black_hole" => FaultSwitch::BlackHole(flag()?),
                "block" => FaultSwitch::Block(flag()?),
                "kill" => FaultSwitch::Kill(flag()?),
                "delivery_latency_ms" => match value.as_u64() {
                    Some(ms) if ms <= MAX_DELIVERY_LATENCY_MS => {
                        FaultSwitch::DeliveryLatency(Duration::from_millis(ms))
                    }
                    _ => {
                        return Err(format!(
                            "delivery_latency_ms must be a whole number from 0 to {MAX_DELIVERY_LATENCY_MS}"
                        ))
                    }
                },
                "force_close" => match value.as_str() {
                    Some(text) => FaultSwitch::ForceClose(text.to_string()),
                    None => return Err("force_close must be a string (the close reason)".into()),
                },
                other => return Err(format!("unknown fault '{other}'; known faults: {FAULT_KEYS}")),
            })
        })
        .collect()
}

pub(super) async fn faults(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let switches = match fault_switches(&body) {
        Ok(switches) => switches,
        Err(reason) => return bad_request(&reason),
    };
    let Some(c) = http.broker.connections.find(&name) else { return not_found("connection not found") };
    for switch in switches {
        match switch {
            FaultSwitch::WithholdHeartbeats(on) => c.withhold_heartbeats(on),
            FaultSwitch::IgnoreClient(on) => c.ignore_client(on),
            FaultSwitch::BlackHole(on) => c.black_hole(on),
            FaultSwitch::Block(on) => c.block(on),
            FaultSwitch::DeliveryLatency(latency) => c.delivery_latency(latency),
            FaultSwitch::Kill(on) => {
                if on {
                    c.kill();
                }
            }
            FaultSwitch::ForceClose(text) => c.force_close(&text),
        }
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

pub(super) async fn raise_alarm(http: State<Arc<Http>>, caller: Extension<Caller>, name: Path<String>) -> Response {
    set_alarm(http, caller, name, true)
}

pub(super) async fn clear_alarm(http: State<Arc<Http>>, caller: Extension<Caller>, name: Path<String>) -> Response {
    set_alarm(http, caller, name, false)
}

/// Raises or clears a resource alarm by hand (administrators only).
fn set_alarm(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    on: bool,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let Some(r) = resource(&name) else {
        return bad_request(&format!("unknown resource '{name}'; known resources: memory, disk"));
    };
    if on {
        http.broker.alarms.raise(r);
    } else {
        http.broker.alarms.clear(r);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Events numbered after `since`, waiting up to `timeout_ms` (at most
/// [`LONG_POLL_MAX`]) for the first. Needs `monitoring`: the log shows
/// every connection.
pub(super) async fn events_since(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !caller.is_monitor() {
        return not_authorised("Not monitor user");
    }
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let timeout = Duration::from_millis(q.get("timeout_ms").and_then(|s| s.parse().ok()).unwrap_or(0));
    let deadline = Instant::now() + timeout.min(LONG_POLL_MAX);
    loop {
        let logged = http.logged.notified();
        let (last, found): (u64, Vec<String>) = {
            let log = http.log.lock().unwrap_or_else(|e| e.into_inner());
            let found = log.events.iter().filter(|(seq, _)| *seq > since).map(|(_, json)| json.clone()).collect();
            (log.last, found)
        };
        if !found.is_empty() || Instant::now() >= deadline {
            // The events are kept as JSON text: spliced in, not parsed again.
            let body = format!("{{\"last\":{last},\"events\":[{}]}}", found.join(","));
            return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        let _ = tokio::time::timeout_at(deadline, logged).await;
    }
}

fn event_json(seq: u64, e: &Event) -> Value {
    let mut v = match e {
        Event::ConnectionOpened { connection, user, vhost, client_properties, channel_max, frame_max, heartbeat } => {
            json!({
                "type": "connection.opened", "connection": connection, "user": user, "vhost": vhost,
                "client_properties": table_json(client_properties),
                "channel_max": channel_max, "frame_max": frame_max, "heartbeat": heartbeat,
            })
        }
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
        Event::BrokerStopped { crash } => json!({"type": "broker.stopped", "crash": crash}),
        Event::BrokerStarted => json!({"type": "broker.started"}),
        Event::MonitorTick { connection, silent, idle } => json!({
            "type": "monitor.tick", "connection": connection, "silent": silent,
            "idle_ms": idle.as_millis() as u64,
        }),
        Event::StateChanged { connection, state, monitor_paused } => json!({
            "type": "connection.state", "connection": connection, "state": state.name(),
            "monitor_paused": monitor_paused,
        }),
        Event::FaultsChanged { connection, faults } => {
            json!({"type": "connection.faults", "connection": connection, "faults": faults_json(faults)})
        }
        Event::DemoStep { connection, text } => json!({"type": "demo.step", "connection": connection, "text": text}),
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

/// The fault switches of one connection, by the names the faults endpoint takes.
pub(super) fn faults_json(f: &FaultSwitches) -> Value {
    json!({
        "withhold_heartbeats": f.withhold_heartbeats, "ignore_client": f.ignore_client,
        "black_hole": f.black_hole, "block": f.blocked,
        "delivery_latency_ms": f.delivery_latency.as_millis() as u64,
    })
}

/// Milliseconds since the Unix epoch, to the microsecond: what a browser's
/// `Date.now()` counts, so that a page can place events on its own clock.
pub(super) fn epoch_ms(at: std::time::SystemTime) -> f64 {
    let us = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    us as f64 / 1000.0
}

/// `POST /api/warren/reset`: the broker as it started (see
/// `Broker::reset`); answers once the closed connections have gone, with
/// how many there were and how long it took.
pub(super) async fn reset(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let done = http.broker.reset_and_wait(Duration::from_secs(5)).await;
    Json(json!({
        "closed_connections": done.closed_connections,
        "all_gone": done.all_gone,
        "took_us": done.took.as_micros() as u64,
    }))
    .into_response()
}

/// `POST /api/warren/vhosts`: a fresh virtual host for one test, in which
/// the caller gets every permission; answers 201 with its name and an AMQP
/// URL (without the password). `DELETE /api/vhosts/{name}` removes it.
pub(super) async fn fresh_vhost(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let name = match http.broker.fresh_vhost(&caller.name) {
        Ok(name) => name.to_string(),
        Err(reason) => return bad_request(&reason),
    };
    let addr = http.broker.amqp_addr.get().map(|a| a.to_string()).unwrap_or_default();
    let url = format!("amqp://{}@{addr}/{}", caller.name, name.replace('%', "%25").replace('/', "%2f"));
    (StatusCode::CREATED, Json(json!({ "name": name, "url": url }))).into_response()
}

/// `POST /api/warren/restart` with `{"downtime_ms": 500, "crash": false}`
/// (both optional): the broker restarts as a RabbitMQ node does (see
/// `broker::restart`); answers once it listens again, with what survived.
pub(super) async fn restart(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let downtime = match body.get("downtime_ms") {
        None => Duration::ZERO,
        Some(v) => match v.as_u64() {
            Some(ms) if Duration::from_millis(ms) <= MAX_DOWNTIME => Duration::from_millis(ms),
            _ => {
                return bad_request(&format!(
                    "downtime_ms: a number of milliseconds up to {}",
                    MAX_DOWNTIME.as_millis()
                ))
            }
        },
    };
    let crash = match body.get("crash") {
        None => false,
        Some(v) => match v.as_bool() {
            Some(crash) => crash,
            None => return bad_request("crash: true or false"),
        },
    };
    match http.broker.restart(Restart { downtime, crash }).await {
        Ok(done) => {
            let counts = |s: Survivors| json!({"queues": s.queues, "exchanges": s.exchanges, "messages": s.messages});
            Json(json!({
                "closed_connections": done.closed_connections,
                "kept": counts(done.kept),
                "dropped": counts(done.dropped),
                "took_us": done.took.as_micros() as u64,
            }))
            .into_response()
        }
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "unavailable", "reason": reason}))).into_response()
        }
    }
}
