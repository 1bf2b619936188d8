//! The HTTP control API, on loopback: test suites in any language drive
//! warren through it.
//!
//! - RabbitMQ's management API as test tools use it, with the same JSON
//!   field names: `GET /api/overview`, `/api/connections`, `/api/queues`,
//!   `/api/queues/{vhost}`, `/api/queues/{vhost}/{name}`, `/api/exchanges`,
//!   and `DELETE /api/connections/{name}` (a forced close, 320, as the
//!   management plugin does), here;
//! - its write side: virtual hosts, users and permissions (`admin.rs`),
//!   exchanges, queues and bindings (`topology.rs`), publishing and getting
//!   messages (`messages.rs`), with RabbitMQ's routes, bodies, codes and
//!   JSON error shape.
//! - warren's own (`control.rs`): fault injection, alarms raised by hand,
//!   and the event stream by long polling.
//!
//! # Who may do what
//!
//! As RabbitMQ's management plugin decides it (`rabbit_mgmt_util`), in this
//! order, the first failure answering:
//!
//! 1. HTTP basic auth with one of the broker's users: no credentials is
//!    401 with `WWW-Authenticate`; a wrong password 401 `not_authorized`;
//! 2. `loopback_users` may only come from a loopback address (401);
//! 3. the user needs a management tag: `administrator`, `monitoring`,
//!    `policymaker` or `management` (401 "Not management user");
//! 4. then per endpoint: `administrator` sees and does everything;
//!    `monitoring` also sees every connection; everyone else sees only
//!    their own connections and the virtual hosts they have permissions in
//!    (401 "User not authorised to access virtual host" / "... object").
//!    warren's control endpoints (faults, alarms) need `administrator`;
//!    the event log, which shows every connection, needs `monitoring`.
//!
//! RabbitMQ answers every refusal with 401, never 403, and so does warren.
//!
//! # Bounded connections
//!
//! HTTP clients share file descriptors with AMQP clients, so an HTTP
//! connection that sends half a request, or nothing, must not keep its
//! socket: a request's headers must arrive within `request_timeout` of the
//! connection's start or of the previous response (5 s), a connection
//! silent for `idle_timeout` mid-request is closed (60 s), and at most
//! `max_connections` are served at once, the rest waiting in the listen
//! backlog, as cowboy and ranch bound RabbitMQ's. A long poll for events
//! waits at most [`LONG_POLL_MAX`].

mod admin;
mod auth;
mod channels;
mod control;
mod dashboard;
mod listener;
mod messages;
mod metrics;
mod stream;
mod topology;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Extension, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::broker::Broker;
pub use crate::json::table_json;
use auth::{authenticate, not_authorised, Caller};
use listener::accept_loop;

/// The longest a request for events may wait for one.
pub const LONG_POLL_MAX: Duration = Duration::from_secs(30);

struct Http {
    broker: Arc<Broker>,
    /// Recent events, numbered, as JSON, for `GET /api/warren/events`.
    log: Mutex<control::EventLog>,
    logged: Notify,
}

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let http = Arc::new(Http { broker: broker.clone(), log: Mutex::default(), logged: Notify::new() });
    let mut events = broker.events.subscribe();
    let logger = http.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    logger.log.lock().unwrap_or_else(|e| e.into_inner()).push(&event);
                    logger.logged.notify_waiters();
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    let app = router(http);
    accept_loop(listener, app, broker.config.http_limits, shutdown).await;
}

/// The API's routes, behind authentication.
fn router(http: Arc<Http>) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/connections", get(connections))
        .route("/api/connections/{name}", get(connection).delete(close_connection))
        .route("/api/channels", get(channels::channels))
        .route("/api/consumers", get(channels::consumers))
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route("/api/queues/{vhost}/{name}", get(queue).put(topology::put_queue).delete(topology::delete_queue))
        .route("/api/queues/{vhost}/{name}/contents", delete(topology::purge_queue))
        .route("/api/queues/{vhost}/{name}/bindings", get(topology::queue_bindings))
        .route("/api/queues/{vhost}/{name}/get", post(messages::get))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange).put(topology::put_exchange).delete(topology::delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(messages::publish))
        .route("/api/bindings", get(topology::bindings))
        .route("/api/bindings/{vhost}", get(topology::bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(topology::bindings_between).post(topology::add_binding),
        )
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", delete(topology::delete_binding))
        .route("/api/definitions", get(admin::definitions).post(admin::import_definitions))
        .route("/api/definitions/{vhost}", get(admin::vhost_definitions).post(admin::import_vhost_definitions))
        .route("/api/exchanges/{vhost}/{name}/bindings/{side}", get(topology::exchange_bindings))
        .route("/api/users/{name}/permissions", get(admin::user_permissions))
        .route("/api/vhosts/{name}/permissions", get(admin::vhost_permissions))
        .route("/api/aliveness-test/{vhost}", get(messages::aliveness_test))
        .route("/api/vhosts", get(admin::vhosts))
        .route("/api/vhosts/{name}", get(admin::vhost).put(admin::put_vhost).delete(admin::delete_vhost))
        .route("/api/users", get(admin::users))
        .route("/api/users/{name}", get(admin::user).put(admin::put_user).delete(admin::delete_user))
        .route("/api/permissions", get(admin::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(admin::permission).put(admin::put_permission).delete(admin::delete_permission),
        )
        .route("/api/warren/connections/{name}/faults", post(control::faults))
        .route("/api/warren/alarms/{resource}", put(control::raise_alarm).delete(control::clear_alarm))
        .route("/api/warren/events", get(control::events_since))
        .route("/api/warren/events/stream", get(stream::event_stream))
        .route("/api/warren/reset", post(control::reset))
        .route("/api/warren/restart", post(control::restart))
        .route("/api/warren/vhosts", post(control::fresh_vhost))
        .route("/api/warren/demo", post(dashboard::start_demo))
        .route("/api/warren/queues/{vhost}/{name}/peek", get(messages::peek))
        .route("/", get(dashboard::page))
        .layer(middleware::from_fn_with_state(http.clone(), authenticate))
        // Scrapers, like RabbitMQ's Prometheus endpoint, give no credentials.
        .route("/metrics", get(metrics::metrics))
        .with_state(http)
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "Object Not Found", "reason": what}))).into_response()
}

fn connection_json(c: &crate::broker::inspect::ConnectionInfo) -> Value {
    let (peer, host) = c.name.split_once(" -> ").unwrap_or((&c.name, ""));
    let split = |addr: &str| -> (String, u16) {
        let a: Option<SocketAddr> = addr.parse().ok();
        a.map_or((String::new(), 0), |a| (a.ip().to_string(), a.port()))
    };
    let ((peer_host, peer_port), (host, port)) = (split(peer), split(host));
    let d = c.details.as_ref();
    let tls = c.tls.as_ref();
    json!({
        "name": c.name,
        "user_provided_name": c.client_name,
        "state": c.state.name(),
        "user": d.map(|d| d.user.clone()),
        "vhost": d.map(|d| d.vhost.clone()),
        "auth_mechanism": d.map(|d| d.mechanism.clone()),
        "ssl": tls.is_some(),
        "ssl_protocol": tls.map(|t| t.protocol),
        "ssl_key_exchange": tls.map(|t| t.key_exchange.as_str()),
        "ssl_cipher": tls.map(|t| t.cipher.as_str()),
        "ssl_hash": tls.map(|t| t.hash.as_str()),
        "peer_cert_subject": tls.and_then(|t| t.peer_cert_subject.as_deref()),
        "peer_cert_issuer": tls.and_then(|t| t.peer_cert_issuer.as_deref()),
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
        "message_bytes_ready": q.message_bytes_ready,
        "consumers": q.consumers.len(),
        "exclusive_consumer_tag": q.consumers.iter().find(|c| c.exclusive).map(|c| c.tag.to_string()),
        "policy": null,
        "operator_policy": null,
        "type": "classic",
        "state": "running",
    })
}

/// The connections `caller` may see: all for monitors, else their own.
fn visible_connections(http: &Http, caller: &Caller) -> Vec<crate::broker::inspect::ConnectionInfo> {
    let mut all = http.broker.connection_infos();
    if !caller.is_monitor() {
        all.retain(|c| owner(c) == Some(caller.name.as_str()));
    }
    all
}

fn owner(c: &crate::broker::inspect::ConnectionInfo) -> Option<&str> {
    c.details.as_ref().map(|d| d.user.as_str())
}

/// The queues in virtual hosts `caller` may see.
fn visible_queues(http: &Http, caller: &Caller) -> Vec<crate::broker::inspect::QueueInfo> {
    let mut all = http.broker.queue_infos();
    all.retain(|q| caller.sees_vhost(&http.broker, &q.vhost));
    all
}

/// A virtual host named in a URL: 404 if there is none, 401 if the caller
/// may not see it (RabbitMQ checks in that order for a vhost that exists).
fn vhost_refusal(http: &Http, caller: &Caller, vhost: &str) -> Option<Response> {
    topology::vhost_for(http, caller, vhost).err().map(IntoResponse::into_response)
}

async fn overview(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let b = &http.broker;
    let queues = visible_queues(&http, &caller);
    let ready: usize = queues.iter().map(|q| q.messages_ready).sum();
    let unacked: usize = queues.iter().map(|q| q.messages_unacknowledged).sum();
    let exchanges = b.exchange_infos().iter().filter(|x| caller.sees_vhost(b, &x.vhost)).count();
    let mut totals = json!({
        "connections": visible_connections(&http, &caller).len(),
        "queues": queues.len(),
        "exchanges": exchanges,
    });
    if caller.is_monitor() {
        totals["consumers"] = json!(queues.iter().map(|q| q.consumers.len()).sum::<usize>());
    }
    Json(json!({
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": "warren",
        "node": "warren@localhost",
        "object_totals": totals,
        "queue_totals": { "messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked },
        "memory": { "held": b.alarms.held(), "sampled": b.alarms.sampled(), "high_watermark": b.alarms.watermark() },
        "alarms": { "memory": b.alarms.current().memory, "disk": b.alarms.current().disk },
    }))
}

async fn whoami(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({ "name": caller.name, "tags": caller.tags }))
}

async fn connections(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(Value::Array(visible_connections(&http, &caller).iter().map(connection_json).collect()))
}

async fn connection(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let all = http.broker.connection_infos();
    let Some(c) = all.iter().find(|c| c.name == name) else { return not_found("Not Found") };
    if !caller.is_monitor() && owner(c) != Some(caller.name.as_str()) {
        return not_authorised("User not authorised to access object");
    }
    Json(connection_json(c)).into_response()
}

async fn close_connection(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    // RabbitMQ's management plugin closes with this text unless the client
    // gives its own in the X-Reason header.
    let reason = request
        .headers()
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    let Some(connection) = http.broker.connections.find(&name) else { return not_found("Not Found") };
    let owned = connection.user() == Some(caller.name.as_str());
    // Monitors may look at anyone's connection but close only their own.
    if !caller.is_admin() && !owned {
        return not_authorised("User not authorised to access object");
    }
    connection.force_close(&reason);
    StatusCode::NO_CONTENT.into_response()
}

async fn queues(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(Value::Array(visible_queues(&http, &caller).iter().map(queue_json).collect()))
}

/// What one vhost holds, as JSON, once the caller may see the vhost: all
/// of `items` in it, or (with `name`) the one so named, 404 if none.
fn in_vhost<T>(
    http: &Http,
    caller: &Caller,
    vhost: &str,
    name: Option<&str>,
    items: Vec<T>,
    key: impl Fn(&T) -> (&str, &str),
    to_json: impl Fn(&T) -> Value,
) -> Response {
    if let Some(refused) = vhost_refusal(http, caller, vhost) {
        return refused;
    }
    let mut mine = items.iter().filter(|t| key(t).0 == vhost);
    match name {
        None => Json(Value::Array(mine.map(to_json).collect())).into_response(),
        Some(name) => match mine.find(|t| key(t).1 == name) {
            Some(t) => Json(to_json(t)).into_response(),
            None => not_found("Not Found"),
        },
    }
}

async fn queues_in(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> Response {
    in_vhost(&http, &caller, &vhost, None, http.broker.queue_infos(), |q| (&q.vhost, &q.name), queue_json)
}

async fn queue(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    in_vhost(&http, &caller, &vhost, Some(&name), http.broker.queue_infos(), |q| (&q.vhost, &q.name), queue_json)
}

fn exchange_json(x: &crate::broker::inspect::ExchangeInfo) -> Value {
    json!({
        "name": x.name, "vhost": x.vhost, "type": x.kind, "durable": x.durable,
        "auto_delete": x.auto_delete, "internal": x.internal, "arguments": table_json(&x.arguments),
    })
}

async fn exchanges(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let all = http.broker.exchange_infos();
    Json(Value::Array(all.iter().filter(|x| caller.sees_vhost(&http.broker, &x.vhost)).map(exchange_json).collect()))
}

async fn exchanges_in(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> Response {
    in_vhost(&http, &caller, &vhost, None, http.broker.exchange_infos(), |x| (&x.vhost, &x.name), exchange_json)
}

async fn exchange(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    // The default exchange is `amq.default` in URLs.
    let name = if name == "amq.default" { "" } else { &name };
    in_vhost(&http, &caller, &vhost, Some(name), http.broker.exchange_infos(), |x| (&x.vhost, &x.name), exchange_json)
}

/// A JSON request body, whatever its `Content-Type` says (RabbitMQ's API
/// reads JSON from clients that send none); a body that is not JSON is a 400.
struct JsonBody(Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(IntoResponse::into_response)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| bad_request(&format!("not JSON: {e}")))
    }
}

/// warren's control endpoints change what every client sees.
fn admin_refusal(caller: &Caller) -> Option<Response> {
    (!caller.is_admin()).then(|| not_authorised("Not administrator user"))
}

/// RabbitMQ's 400.
fn bad_request(reason: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": "bad_request", "reason": reason}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::listener::Peer;
    use super::*;
    use axum::body::Body;
    use std::net::IpAddr;
    use tower_service::Service;

    async fn overview_from(peer: [u8; 4]) -> (StatusCode, Value) {
        let broker = Broker::new(crate::Config::default()).unwrap();
        let mut app = router(Arc::new(Http { broker, log: Mutex::default(), logged: Notify::new() }));
        let mut request = axum::http::Request::get("/api/overview")
            .header(axum::http::header::AUTHORIZATION, "Basic Z3Vlc3Q6Z3Vlc3Q=") // guest:guest
            .body(Body::empty())
            .unwrap();
        request.extensions_mut().insert(Peer(IpAddr::from(peer)));
        let response = app.call(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn loopback_users_are_refused_from_other_addresses() {
        // The peer address is what the accept loop records for a request;
        // tests only use loopback sockets, so a remote peer is set here.
        assert_eq!(overview_from([127, 0, 0, 1]).await.0, StatusCode::OK);
        assert_eq!(
            overview_from([10, 1, 2, 3]).await,
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": "not_authorised", "reason": "User can only log in via localhost"})
            )
        );
    }
}
