//! The management API's exchanges, queues and bindings, as RabbitMQ serves
//! them: `PUT`/`DELETE /api/exchanges/{vhost}/{name}` and
//! `/api/queues/{vhost}/{name}` (201 created, 204 already there or deleted),
//! `DELETE /api/queues/{vhost}/{name}/contents` (purge), and bindings under
//! `/api/bindings/{vhost}/e/{source}/q/{queue}` and `…/e/{destination}`.
//!
//! Each change is checked as the same operation over AMQP would be (the
//! caller's permissions, RabbitMQ's equivalence checks and texts), and an
//! AMQP refusal becomes RabbitMQ's HTTP answer: 404 for what is missing,
//! 401 for what is not permitted, 400 for the rest.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{table_json, Http, JsonBody};
use crate::broker::access::Access;
use crate::broker::connections::NO_CONNECTION;
use crate::broker::declare::ExchangeSpec;
use crate::broker::exchange::{Destination, Exchange, ExchangeKind};
use crate::broker::queue::QueueOptions;
use crate::broker::VirtualHost;
use crate::error::AmqpError;
use crate::json::json_table;
use crate::protocol::{FieldTable, ReplyCode, ShortStr};

/// A refusal, as RabbitMQ's management API words it: the status, and
/// `{"error": …, "reason": …}`.
pub(super) struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.error, "reason": self.reason}))).into_response()
    }
}

fn bad_request(reason: &str) -> ApiError {
    ApiError { status: StatusCode::BAD_REQUEST, error: "bad_request", reason: reason.into() }
}

fn not_found(reason: &str) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, error: "Object Not Found", reason: reason.into() }
}

/// An AMQP refusal as RabbitMQ's management API answers it: 404 for what
/// is missing, 401 for what is not permitted, 400 for the rest.
pub(super) fn refusal(e: AmqpError) -> ApiError {
    match e.code {
        // RabbitMQ's API says no more than this, whatever is missing.
        ReplyCode::NotFound => not_found("Not Found"),
        ReplyCode::AccessRefused => {
            ApiError { status: StatusCode::UNAUTHORIZED, error: "not_authorised", reason: e.message }
        }
        _ => bad_request(&e.message),
    }
}

/// A queue or exchange name from a URL: at most 255 octets.
fn resource_name(name: &str) -> Result<ShortStr, ApiError> {
    if name.len() > ShortStr::MAX_LEN {
        return Err(bad_request(&format!("names are at most {} octets long", ShortStr::MAX_LEN)));
    }
    Ok(ShortStr::from(name))
}

/// The virtual host named in a URL, if the caller may use it.
pub(super) fn vhost_for(http: &Http, caller: &Caller, vhost: &str) -> Result<Arc<VirtualHost>, ApiError> {
    let v = http.broker.vhost(&vhost.into()).ok_or_else(|| not_found("Not Found"))?;
    if !caller.sees_vhost(&http.broker, vhost) {
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: "User not authorised to access virtual host".into(),
        });
    }
    Ok(v)
}

/// The caller's AMQP permission for an operation, as a channel checks it.
fn permitted(
    http: &Http,
    caller: &Caller,
    vhost: &str,
    access: Access,
    kind: &str,
    name: &ShortStr,
) -> Result<(), ApiError> {
    http.broker.access.check(&caller.name, vhost, access, kind, name).map_err(refusal)
}

fn flag(body: &Value, key: &str) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_request(&format!("{key} must be true or false"))),
    }
}

fn arguments(body: &Value) -> Result<FieldTable, ApiError> {
    match body.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(v) => json_table(v).map_err(|e| bad_request(&format!("arguments: {e}"))),
    }
}

fn created_or_not(created: bool) -> Response {
    if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT }.into_response()
}

/// `{"type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}`.
pub(super) async fn put_exchange(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = (|| -> Result<_, ApiError> {
        let v = vhost_for(&http, &caller, &vhost)?;
        let name = resource_name(&name)?;
        if name.is_empty() {
            return Err(refusal(AmqpError::access_refused("operation not permitted on the default exchange")));
        }
        permitted(&http, &caller, &vhost, Access::Configure, "exchange", &name)?;
        let kind = body.get("type").and_then(Value::as_str).unwrap_or("direct");
        let spec = ExchangeSpec {
            kind: ExchangeKind::parse(&kind.into()).map_err(refusal)?,
            durable: flag(&body, "durable")?,
            auto_delete: flag(&body, "auto_delete")?,
            internal: flag(&body, "internal")?,
            arguments: arguments(&body)?,
        };
        v.declare_exchange(&name, &spec).map(|(_, created)| created).map_err(refusal)
    })();
    result.map_or_else(IntoResponse::into_response, created_or_not)
}

pub(super) async fn delete_exchange(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = (|| -> Result<_, ApiError> {
        let v = vhost_for(&http, &caller, &vhost)?;
        let name = resource_name(&name)?;
        if name.is_empty() || name.starts_with(b"amq.") {
            return Err(refusal(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{vhost}' not allowed"
            ))));
        }
        permitted(&http, &caller, &vhost, Access::Configure, "exchange", &name)?;
        let x = v.exchange(&name).map_err(refusal)?;
        if query.get("if-unused").is_some_and(|v| v == "true") && x.has_bindings() {
            return Err(bad_request(&format!("{} in use", x.describe())));
        }
        v.delete_exchange(&x);
        Ok(())
    })();
    result.map_or_else(IntoResponse::into_response, |()| StatusCode::NO_CONTENT.into_response())
}

/// `{"durable": true, "auto_delete": false, "arguments": {}}`.
pub(super) async fn put_queue(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = (|| -> Result<_, ApiError> {
        let v = vhost_for(&http, &caller, &vhost)?;
        let name = resource_name(&name)?;
        if name.is_empty() {
            return Err(bad_request("a queue declared over HTTP needs a name"));
        }
        if name.starts_with(b"amq.") && v.queue(&name).is_err() {
            return Err(refusal(AmqpError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            ))));
        }
        permitted(&http, &caller, &vhost, Access::Configure, "queue", &name)?;
        if flag(&body, "exclusive")? {
            return Err(bad_request("a queue declared over HTTP cannot be exclusive"));
        }
        let options = QueueOptions {
            durable: flag(&body, "durable")?,
            exclusive_owner: None,
            auto_delete: flag(&body, "auto_delete")?,
            arguments: arguments(&body)?,
        };
        v.declare_queue(name, options, NO_CONNECTION).map(|(_, created)| created).map_err(refusal)
    })();
    result.map_or_else(IntoResponse::into_response, created_or_not)
}

pub(super) async fn delete_queue(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = (|| -> Result<_, ApiError> {
        let v = vhost_for(&http, &caller, &vhost)?;
        let name = resource_name(&name)?;
        permitted(&http, &caller, &vhost, Access::Configure, "queue", &name)?;
        let q = v.queue(&name).map_err(refusal)?;
        q.check_access(NO_CONNECTION).map_err(refusal)?;
        let (messages, consumers) = q.counts();
        let asked = |key: &str| query.get(key).is_some_and(|v| v == "true");
        if asked("if-unused") && consumers > 0 {
            return Err(bad_request(&format!("{} in use", q.describe())));
        }
        if asked("if-empty") && messages > 0 {
            return Err(bad_request(&format!("{} not empty", q.describe())));
        }
        let (_, consumers) = v.delete_queue(&q);
        crate::connection::channel::tell_cancelled(consumers);
        Ok(())
    })();
    result.map_or_else(IntoResponse::into_response, |()| StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn purge_queue(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let result = (|| -> Result<_, ApiError> {
        let v = vhost_for(&http, &caller, &vhost)?;
        let name = resource_name(&name)?;
        permitted(&http, &caller, &vhost, Access::Read, "queue", &name)?;
        let q = v.queue(&name).map_err(refusal)?;
        q.check_access(NO_CONNECTION).map_err(refusal)?;
        q.purge();
        Ok(())
    })();
    result.map_or_else(IntoResponse::into_response, |()| StatusCode::NO_CONTENT.into_response())
}

/// RabbitMQ's name for one binding in URLs: the routing key
/// percent-encoded (`a.#` is `a.%23`), `~` for an empty one, and with
/// arguments a `~` and a digest of them. (RabbitMQ's digest is Erlang's
/// `phash2`; warren's is its own, so a key with arguments differs.)
pub(super) fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    let mut key = String::new();
    for b in routing_key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => key.push(b as char),
            _ => key.push_str(&format!("%{b:02X}")),
        }
    }
    if arguments.is_empty() {
        return if key.is_empty() { "~".into() } else { key };
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table_json(arguments).to_string().hash(&mut h);
    format!("{key}~{:x}", h.finish())
}

/// Whether a binding is the one a URL names: the URL's last segment arrives
/// decoded (`a.#`), so it is encoded again to compare.
fn names_binding(props: &str, routing_key: &str, arguments: &FieldTable) -> bool {
    let again = properties_key(props.split('~').next().unwrap_or(""), &FieldTable::new());
    let wanted = match props.split_once('~') {
        Some((_, digest)) if !digest.is_empty() => format!("{}~{digest}", if again == "~" { "" } else { &again }),
        _ if props.is_empty() || props == "~" => "~".to_string(),
        _ => again,
    };
    properties_key(routing_key, arguments) == wanted
}

fn binding_json(vhost: &str, source: &str, kind: &str, destination: &str, key: &str, args: &FieldTable) -> Value {
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": key,
        "arguments": table_json(args),
        "properties_key": properties_key(key, args),
    })
}

/// Every binding of a virtual host, the default exchange's implicit ones
/// (one per queue, keyed by its name) first, as RabbitMQ lists them.
fn vhost_bindings(v: &VirtualHost) -> Vec<Value> {
    let vhost = v.name.to_string();
    let mut queues: Vec<String> = v.queues.iter().map(|q| q.key().to_string()).collect();
    queues.sort();
    let mut out: Vec<Value> =
        queues.iter().map(|q| binding_json(&vhost, "", "queue", q, q, &FieldTable::new())).collect();
    let mut exchanges: Vec<Arc<Exchange>> = v.exchanges.iter().map(|x| x.value().clone()).collect();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for x in exchanges {
        let mut bindings = x.bindings();
        bindings.sort_by(|a, b| (a.1.as_bytes(), a.2.as_bytes()).cmp(&(b.1.as_bytes(), b.2.as_bytes())));
        for (kind, destination, key, args) in bindings {
            out.push(binding_json(
                &vhost,
                &x.name.to_string(),
                kind,
                &destination.to_string(),
                &key.to_string(),
                &args,
            ));
        }
    }
    out
}

pub(super) async fn bindings(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let mut vhosts: Vec<Arc<VirtualHost>> = http.broker.vhosts.iter().map(|v| v.value().clone()).collect();
    vhosts.retain(|v| caller.sees_vhost(&http.broker, &v.name.to_string()));
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    Json(Value::Array(vhosts.iter().flat_map(|v| vhost_bindings(v)).collect()))
}

pub(super) async fn bindings_in(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> Response {
    match vhost_for(&http, &caller, &vhost) {
        Ok(v) => Json(Value::Array(vhost_bindings(&v))).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// The bindings of a queue (`GET /api/queues/{vhost}/{name}/bindings`).
pub(super) async fn queue_bindings(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    bindings_where(
        &http,
        &caller,
        &vhost,
        |v| v.queue(&name.as_str().into()).is_ok(),
        |b| b["destination_type"] == "queue" && b["destination"] == name.as_str(),
    )
}

/// The bindings an exchange is the source of
/// (`GET /api/exchanges/{vhost}/{name}/bindings/source`) or the destination of (`…/destination`).
pub(super) async fn exchange_bindings(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name, side)): Path<(String, String, String)>,
) -> Response {
    let exists =
        |v: &VirtualHost| v.exchange(&name.as_str().into()).is_ok() && (side == "source" || side == "destination");
    bindings_where(&http, &caller, &vhost, exists, |b| match side.as_str() {
        "source" => b["source"] == name.as_str(),
        _ => b["destination_type"] == "exchange" && b["destination"] == name.as_str(),
    })
}

/// The bindings of a vhost that `keep` accepts, once `exists` says the
/// object asked about is there (404 otherwise).
fn bindings_where(
    http: &Http,
    caller: &Caller,
    vhost: &str,
    exists: impl Fn(&VirtualHost) -> bool,
    keep: impl Fn(&Value) -> bool,
) -> Response {
    let v = match vhost_for(http, caller, vhost) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    if !exists(&v) {
        return not_found("Not Found").into_response();
    }
    Json(Value::Array(vhost_bindings(&v).into_iter().filter(|b| keep(b)).collect())).into_response()
}

/// `q` or `e`, as the binding URLs name the destination's kind.
fn destination(v: &VirtualHost, kind: &str, name: &ShortStr) -> Result<Destination, ApiError> {
    match kind {
        "q" => Ok(Destination::Queue(v.queue(name).map_err(refusal)?)),
        "e" => Ok(Destination::Exchange(v.exchange(name).map_err(refusal)?)),
        _ => Err(not_found("Not Found")),
    }
}

/// The bindings between two ends (`GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`).
pub(super) async fn bindings_between(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
) -> Response {
    let v = match vhost_for(&http, &caller, &vhost) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let kind_name = if kind == "q" { "queue" } else { "exchange" };
    let all = vhost_bindings(&v);
    let between = all.into_iter().filter(|b| {
        b["source"] == source.as_str() && b["destination"] == dest.as_str() && b["destination_type"] == kind_name
    });
    Json(Value::Array(between.collect())).into_response()
}

/// `{"routing_key": "k", "arguments": {}}`; answers 201 with the new
/// binding's `properties_key` in `Location`, as RabbitMQ does.
pub(super) async fn add_binding(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = (|| -> Result<_, ApiError> {
        let v = vhost_for(&http, &caller, &vhost)?;
        let (source, dest) = (resource_name(&source)?, resource_name(&dest)?);
        if source.is_empty() || (kind == "e" && dest.is_empty()) {
            return Err(refusal(AmqpError::access_refused("operation not permitted on the default exchange")));
        }
        let key = match body.get("routing_key") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(k)) if k.len() <= ShortStr::MAX_LEN => k.clone(),
            Some(_) => return Err(bad_request("routing_key must be a string of at most 255 octets")),
        };
        let args = arguments(&body)?;
        let kind_name = if kind == "q" { "queue" } else { "exchange" };
        permitted(&http, &caller, &vhost, Access::Write, kind_name, &dest)?;
        permitted(&http, &caller, &vhost, Access::Read, "exchange", &source)?;
        let x = v.exchange(&source).map_err(refusal)?;
        let d = destination(&v, &kind, &dest)?;
        if let Destination::Queue(q) = &d {
            q.check_access(NO_CONNECTION).map_err(refusal)?;
        }
        let location = properties_key(&key, &args);
        v.bind(&x, d, key.as_str().into(), args).map_err(refusal)?;
        Ok(location)
    })();
    match result {
        Ok(location) => (StatusCode::CREATED, [(header::LOCATION, location)]).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{properties_key}`.
pub(super) async fn delete_binding(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let result = (|| -> Result<_, ApiError> {
        let v = vhost_for(&http, &caller, &vhost)?;
        let (source, dest) = (resource_name(&source)?, resource_name(&dest)?);
        let kind_name = if kind == "q" { "queue" } else { "exchange" };
        permitted(&http, &caller, &vhost, Access::Write, kind_name, &dest)?;
        permitted(&http, &caller, &vhost, Access::Read, "exchange", &source)?;
        let x = v.exchange(&source).map_err(refusal)?;
        let d = destination(&v, &kind, &dest)?;
        let (dest_kind, dest_name) = match &d {
            Destination::Queue(q) => ("queue", q.name.clone()),
            Destination::Exchange(e) => ("exchange", e.name.clone()),
        };
        let found = x.bindings().into_iter().find(|(k, name, key, args)| {
            *k == dest_kind && *name == dest_name && names_binding(&props, &key.to_string(), args)
        });
        let Some((_, _, key, args)) = found else { return Err(not_found("Not Found")) };
        v.unbind(&x, &d, &key, &args);
        Ok(())
    })();
    result.map_or_else(IntoResponse::into_response, |()| StatusCode::NO_CONTENT.into_response())
}
