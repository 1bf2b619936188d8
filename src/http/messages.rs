//! Messages through the management API, as RabbitMQ's test tools use it:
//! `POST /api/exchanges/{vhost}/{name}/publish` (answers `{"routed": bool}`)
//! and `POST /api/queues/{vhost}/{name}/get` with `count`, `ackmode`
//! (`ack_requeue_true`, `ack_requeue_false`, `reject_requeue_true`,
//! `reject_requeue_false`), `encoding` (`auto` or `base64`) and `truncate`.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::auth::Caller;
use super::topology::{refusal, vhost_for};
use super::{bad_request, not_found, table_json, Http, JsonBody};
use crate::broker::access::{base64_decode, base64_encode, Access};
use crate::broker::connections::NO_CONNECTION;
use crate::broker::events::Event;
use crate::broker::message::{Body, Message};
use crate::broker::queue::ChannelKey;
use crate::broker::Totals;
use crate::json::json_table;
use crate::protocol::{BasicProperties, ShortStr};

/// Most messages one `get` may take.
const MAX_GET: u64 = 10_000;

/// `properties` as RabbitMQ's management API writes them.
fn properties_json(p: &BasicProperties) -> Value {
    let mut out = serde_json::Map::new();
    let mut text = |key: &str, v: &Option<ShortStr>| {
        if let Some(v) = v {
            out.insert(key.into(), json!(v.to_string()));
        }
    };
    text("content_type", &p.content_type);
    text("content_encoding", &p.content_encoding);
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("expiration", &p.expiration);
    text("message_id", &p.message_id);
    text("type", &p.kind);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    text("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        out.insert("headers".into(), table_json(h));
    }
    if let Some(m) = p.delivery_mode {
        out.insert("delivery_mode".into(), json!(m));
    }
    if let Some(pr) = p.priority {
        out.insert("priority".into(), json!(pr));
    }
    if let Some(t) = p.timestamp {
        out.insert("timestamp".into(), json!(t));
    }
    Value::Object(out)
}

/// `properties` from a publish request.
fn properties_from(v: Option<&Value>) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(p) };
    let fields = v.as_object().ok_or("properties must be an object")?;
    for (key, value) in fields {
        let text = || -> Result<Option<ShortStr>, String> {
            match value.as_str() {
                Some(s) if s.len() <= ShortStr::MAX_LEN => Ok(Some(s.into())),
                _ => Err(format!("property {key} must be a string of at most 255 octets")),
            }
        };
        let number = |max: u64| {
            value.as_u64().filter(|n| *n <= max).ok_or(format!("property {key} must be a number up to {max}"))
        };
        match key.as_str() {
            "content_type" => p.content_type = text()?,
            "content_encoding" => p.content_encoding = text()?,
            "correlation_id" => p.correlation_id = text()?,
            "reply_to" => p.reply_to = text()?,
            "expiration" => p.expiration = text()?,
            "message_id" => p.message_id = text()?,
            "type" => p.kind = text()?,
            "user_id" => p.user_id = text()?,
            "app_id" => p.app_id = text()?,
            "cluster_id" => p.cluster_id = text()?,
            "headers" => p.headers = Some(json_table(value).map_err(|e| format!("headers: {e}"))?),
            "delivery_mode" => p.delivery_mode = Some(number(2)? as u8),
            "priority" => p.priority = Some(number(255)? as u8),
            "timestamp" => p.timestamp = Some(number(u64::MAX)?),
            other => return Err(format!("unknown property {other}")),
        }
    }
    Ok(p)
}

/// `{"properties": {}, "routing_key": "k", "payload": "…", "payload_encoding": "string"}`.
pub(super) async fn publish(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, exchange)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    let v = match vhost_for(&http, &caller, &vhost) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    // The default exchange is `amq.default` in URLs, as in RabbitMQ's.
    let exchange_name = if exchange == "amq.default" { ShortStr::default() } else { ShortStr::from(exchange.as_str()) };
    if exchange.len() > ShortStr::MAX_LEN {
        return bad_request("names are at most 255 octets long");
    }
    if let Err(e) = http.broker.access.check(&caller.name, &vhost, Access::Write, "exchange", &exchange_name) {
        return refusal(e).into_response();
    }
    let routing_key = match body.get("routing_key").and_then(Value::as_str) {
        Some(k) if k.len() <= ShortStr::MAX_LEN => ShortStr::from(k),
        _ => return bad_request("routing_key must be a string of at most 255 octets"),
    };
    let payload = body.get("payload").and_then(Value::as_str).unwrap_or_default();
    let payload = match body.get("payload_encoding").and_then(Value::as_str).unwrap_or("string") {
        "string" => Bytes::from(payload.to_string()),
        "base64" => match base64_decode(payload) {
            Some(b) => Bytes::from(b),
            None => return bad_request("payload is not base64"),
        },
        _ => return bad_request("payload_encoding must be string or base64"),
    };
    if payload.len() as u64 > http.broker.config.max_message_size {
        return bad_request(&format!(
            "message size {} is larger than configured max size {}",
            payload.len(),
            http.broker.config.max_message_size
        ));
    }
    let properties = match properties_from(body.get("properties")) {
        Ok(p) => p,
        Err(reason) => return bad_request(&reason),
    };
    if let Some(text) = &properties.expiration {
        if let Err(why) = crate::protocol::properties::parse_expiration(text.as_bytes()) {
            return bad_request(&format!("invalid expiration '{text}': {why}"));
        }
    }
    let mut raw = BytesMut::new();
    properties.encode(&mut raw);
    let raw = raw.freeze();
    let mut queues = Vec::new();
    if let Err(e) = v.route(&exchange_name, &routing_key, &raw, &mut queues) {
        return refusal(e).into_response();
    }
    let size = payload.len() as u64;
    let mut message = Message::new(&exchange_name, &routing_key, &raw, size, Body::One(payload));
    message.charge = Some(v.alarms.charge(message.footprint()));
    let message = Arc::new(message);
    Totals::add(&http.broker.totals.http_published, 1);
    http.broker.events.emit(|| Event::Published {
        connection: "HTTP API".into(),
        exchange: exchange.clone(),
        routing_key: routing_key.to_string(),
        queues: queues.len(),
    });
    for q in &queues {
        q.publish(message.clone());
    }
    Json(json!({ "routed": !queues.is_empty() })).into_response()
}

/// What a `get` does with the messages it took.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Ack,
    Requeue,
    Reject,
}

/// `{"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000}`.
pub(super) async fn get(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    let v = match vhost_for(&http, &caller, &vhost) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let queue_name = ShortStr::from(name.as_str());
    if let Err(e) = http.broker.access.check(&caller.name, &vhost, Access::Read, "queue", &queue_name) {
        return refusal(e).into_response();
    }
    let count = match body.get("count").map(Value::as_u64) {
        None => 1,
        Some(Some(n)) if (1..=MAX_GET).contains(&n) => n,
        Some(_) => return bad_request(&format!("count must be a number from 1 to {MAX_GET}")),
    };
    let mode = match body.get("ackmode").and_then(Value::as_str) {
        Some("ack_requeue_true") | Some("reject_requeue_true") => AckMode::Requeue,
        Some("ack_requeue_false") => AckMode::Ack,
        Some("reject_requeue_false") => AckMode::Reject,
        _ => {
            return bad_request(
                "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false",
            )
        }
    };
    let base64 = match body.get("encoding").and_then(Value::as_str).unwrap_or("auto") {
        "auto" => false,
        "base64" => true,
        _ => return bad_request("encoding must be auto or base64"),
    };
    let truncate = body.get("truncate").and_then(Value::as_u64).map(|t| t as usize);
    let q = match v.queue(&queue_name) {
        Ok(q) => q,
        Err(e) => return refusal(e).into_response(),
    };
    if let Err(e) = q.check_access(NO_CONNECTION) {
        return refusal(e).into_response();
    }
    // Take them all first, then settle them together, so that a requeued
    // message is not taken twice.
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let Some((m, left)) = q.get(false) else { break };
        let properties = BasicProperties::decode(&m.message.properties).unwrap_or_default();
        let mut shown = message_json(&m.message.body.to_bytes(), &properties, truncate, base64);
        shown["redelivered"] = json!(m.redelivered);
        shown["exchange"] = json!(m.message.exchange.to_string());
        shown["routing_key"] = json!(m.message.routing_key.to_string());
        shown["message_count"] = json!(left);
        out.push(shown);
        taken.push(m);
    }
    let key = ChannelKey { connection: NO_CONNECTION, channel: 0 };
    match mode {
        AckMode::Ack => q.settled(key, None, &taken),
        AckMode::Requeue => q.requeue(key, None, taken),
        AckMode::Reject => q.rejected(key, None, taken),
    }
    Json(Value::Array(out)).into_response()
}

/// A message's body and properties as the management API shows them: the
/// body as text if it is UTF-8 (and `base64` was not asked for), else in
/// base64, cut to `truncate` octets.
fn message_json(body: &[u8], properties: &BasicProperties, truncate: Option<usize>, base64: bool) -> Value {
    let shown = truncate.map_or(body, |t| &body[..body.len().min(t)]);
    let (payload, encoding) = match std::str::from_utf8(shown) {
        Ok(text) if !base64 => (text.to_string(), "string"),
        _ => (base64_encode(shown), "base64"),
    };
    json!({
        "payload_bytes": body.len(),
        "properties": properties_json(properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// `GET /api/warren/queues/{vhost}/{name}/peek?count=N` (1 to
/// [`MAX_PEEK`], default 1): the first messages of a queue, left exactly as
/// they are — unlike the management API's `get`, which takes them and puts
/// them back marked redelivered. Bodies are cut to [`PEEK_TRUNCATE`] octets.
pub(super) async fn peek(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Err(refused) = vhost_for(&http, &caller, &vhost) {
        return refused.into_response();
    }
    let queue_name = ShortStr::from(name.as_str());
    if let Err(e) = http.broker.access.check(&caller.name, &vhost, Access::Read, "queue", &queue_name) {
        return refusal(e).into_response();
    }
    let count = match q.get("count").map(|c| c.parse::<u64>()) {
        None => 1,
        Some(Ok(n)) if (1..=MAX_PEEK).contains(&n) => n,
        Some(_) => return bad_request(&format!("count must be a number from 1 to {MAX_PEEK}")),
    };
    let Some(messages) = http.broker.peek(&vhost, &name, count as usize) else { return not_found("Not Found") };
    let shown = messages.iter().map(|m| {
        let mut shown = message_json(&m.body, &m.properties, Some(PEEK_TRUNCATE), false);
        shown["redelivered"] = json!(m.redelivered);
        shown["exchange"] = json!(m.exchange);
        shown["routing_key"] = json!(m.routing_key);
        shown
    });
    Json(Value::Array(shown.collect())).into_response()
}

/// The most messages one peek shows, and the most of each body.
pub const MAX_PEEK: u64 = 100;
pub const PEEK_TRUNCATE: usize = 4096;

/// `GET /api/aliveness-test/{vhost}`, as RabbitMQ does it: declares the
/// queue `aliveness-test`, publishes a message to it and gets it back.
pub(super) async fn aliveness_test(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> Response {
    let v = match vhost_for(&http, &caller, &vhost) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let name = ShortStr::from_static("aliveness-test");
    let options = crate::broker::queue::QueueOptions {
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: Default::default(),
    };
    let q = match v.declare_queue(name.clone(), options, NO_CONNECTION) {
        Ok((q, _)) => q,
        Err(e) => return refusal(e).into_response(),
    };
    let body = Bytes::from_static(b"test_message");
    let raw = Bytes::from_static(&[0, 0]);
    let message = Message::new(&ShortStr::default(), &name, &raw, body.len() as u64, Body::One(body.clone()));
    q.publish(Arc::new(message));
    let alive = q.get(true).is_some_and(|(m, _)| m.message.body.to_bytes() == body);
    if !alive {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed"}))).into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}
