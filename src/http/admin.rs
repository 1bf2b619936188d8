//! The management API's virtual hosts, users and permissions, as RabbitMQ
//! serves them: `GET`/`PUT`/`DELETE /api/vhosts/{name}`,
//! `/api/users/{name}` and `/api/permissions/{vhost}/{user}`, and the lists
//! `GET /api/vhosts`, `/api/users`, `/api/permissions`. Changes need
//! `administrator`; `PUT` answers 201 when it created and 204 when it
//! replaced, `DELETE` 204, or 404 for what is not there.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{admin_refusal, bad_request, not_found, Http, JsonBody};
use crate::broker::access::UserInfo;
use crate::config::{PasswordConfig, PermissionConfig, UserConfig};

/// Longest user or virtual host name accepted (RabbitMQ's are AMQP short strings).
const MAX_NAME: usize = 255;

fn created_or_replaced(created: bool) -> Response {
    if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT }.into_response()
}

/// 204 when something was deleted, RabbitMQ's 404 when there was nothing.
fn deleted(found: bool) -> Response {
    if found {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found("Not Found")
    }
}

fn name_refusal(name: &str) -> Option<Response> {
    (name.is_empty() || name.len() > MAX_NAME).then(|| bad_request(&format!("names are 1 to {MAX_NAME} octets long")))
}

fn vhost_json(http: &Http, name: &str) -> Value {
    let queues = http.broker.queue_infos();
    let (ready, unacked) = queues
        .iter()
        .filter(|q| q.vhost == name)
        .fold((0, 0), |(r, u), q| (r + q.messages_ready, u + q.messages_unacknowledged));
    json!({
        "name": name, "description": "", "tags": [], "metadata": { "description": "", "tags": [] },
        "tracing": false, "messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked,
    })
}

pub(super) async fn vhosts(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let mut names: Vec<String> = http.broker.vhosts.iter().map(|v| v.key().to_string()).collect();
    names.retain(|v| caller.sees_vhost(&http.broker, v));
    names.sort();
    Json(Value::Array(names.iter().map(|n| vhost_json(&http, n)).collect()))
}

pub(super) async fn vhost(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = super::vhost_refusal(&http, &caller, &name) {
        return refused;
    }
    Json(vhost_json(&http, &name)).into_response()
}

pub(super) async fn put_vhost(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller).or_else(|| name_refusal(&name)) {
        return refused;
    }
    let created = http.broker.add_vhost(&name.as_str().into());
    if created {
        // As RabbitMQ's API does: whoever creates a vhost may use it.
        let _ = http.broker.access.set_permission(&PermissionConfig::full(&caller.name, &name));
    }
    created_or_replaced(created)
}

pub(super) async fn delete_vhost(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    if !http.broker.delete_vhost(&name.as_str().into()) {
        return not_found("Not Found");
    }
    StatusCode::NO_CONTENT.into_response()
}

fn user_json(u: &UserInfo) -> Value {
    json!({
        "name": u.name,
        "tags": u.tags,
        "password_hash": u.password_hash.clone().unwrap_or_default(),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "limits": {},
    })
}

pub(super) async fn users(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    Json(Value::Array(http.broker.access.users().iter().map(user_json).collect())).into_response()
}

pub(super) async fn user(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    match http.broker.access.user(&name) {
        Some(u) => Json(user_json(&u)).into_response(),
        None => not_found("Not Found"),
    }
}

/// `{"password": "…", "tags": "administrator"}` or `{"password_hash": "…"}`.
pub(super) async fn put_user(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    if let Some(refused) = admin_refusal(&caller).or_else(|| name_refusal(&name)) {
        return refused;
    }
    let password =
        match (body.get("password").and_then(Value::as_str), body.get("password_hash").and_then(Value::as_str)) {
            (Some(p), _) => PasswordConfig::Plain(p.to_string()),
            (None, Some(h)) => PasswordConfig::Sha256Base64(h.to_string()),
            (None, None) => return bad_request("password or password_hash must be set"),
        };
    let tags = crate::config::parse_tags(body.get("tags"));
    match http.broker.access.put_user(&UserConfig { name, password, tags }) {
        Ok(created) => created_or_replaced(created),
        Err(reason) => bad_request(&reason),
    }
}

pub(super) async fn delete_user(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    deleted(http.broker.access.delete_user(&name))
}

fn permission_json(p: &PermissionConfig) -> Value {
    json!({ "user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read })
}

pub(super) async fn permissions(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    Json(Value::Array(http.broker.access.permissions().iter().map(permission_json).collect())).into_response()
}

pub(super) async fn permission(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let all = http.broker.access.permissions();
    match all.iter().find(|p| p.vhost == vhost && p.user == user) {
        Some(p) => Json(permission_json(p)).into_response(),
        None => not_found("Not Found"),
    }
}

/// `{"configure": ".*", "write": ".*", "read": ".*"}`.
pub(super) async fn put_permission(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    if http.broker.vhost(&vhost.as_str().into()).is_none() || http.broker.access.user(&user).is_none() {
        return bad_request("no such vhost or user");
    }
    let field = |key: &str| body.get(key).and_then(Value::as_str).map(String::from);
    let (Some(configure), Some(write), Some(read)) = (field("configure"), field("write"), field("read")) else {
        return bad_request("configure, write and read must be set (regular expressions)");
    };
    match http.broker.access.set_permission(&PermissionConfig { user, vhost, configure, write, read }) {
        Ok(created) => created_or_replaced(created),
        Err(reason) => bad_request(&reason),
    }
}

pub(super) async fn delete_permission(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    deleted(http.broker.access.clear_permission(&user, &vhost))
}

/// `GET /api/definitions`: users, vhosts, permissions, exchanges, queues
/// and bindings, in RabbitMQ's format (administrators only).
pub(super) async fn definitions(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    Json(http.broker.export_definitions(None)).into_response()
}

/// `GET /api/definitions/{vhost}`: one vhost's exchanges, queues and bindings.
pub(super) async fn vhost_definitions(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller).or_else(|| super::vhost_refusal(&http, &caller, &vhost)) {
        return refused;
    }
    Json(http.broker.export_definitions(Some(&vhost))).into_response()
}

/// `POST /api/definitions`: imports a definitions document (one exported
/// by RabbitMQ or by warren). Sections warren has nothing for are ignored.
pub(super) async fn import_definitions(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    let imported = crate::config::definitions::parse(&body).and_then(|d| http.broker.import_definitions(&d));
    match imported {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(reason) => bad_request(&reason),
    }
}

/// `GET /api/users/{name}/permissions`: that user's permissions.
pub(super) async fn user_permissions(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller) {
        return refused;
    }
    if http.broker.access.user(&user).is_none() {
        return not_found("Not Found");
    }
    let all = http.broker.access.permissions();
    Json(Value::Array(all.iter().filter(|p| p.user == user).map(permission_json).collect())).into_response()
}

/// `GET /api/vhosts/{name}/permissions`: every user's permissions there.
pub(super) async fn vhost_permissions(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> Response {
    if let Some(refused) = admin_refusal(&caller).or_else(|| super::vhost_refusal(&http, &caller, &vhost)) {
        return refused;
    }
    let all = http.broker.access.permissions();
    Json(Value::Array(all.iter().filter(|p| p.vhost == vhost).map(permission_json).collect())).into_response()
}

/// `POST /api/definitions/{vhost}`: imports one vhost's exchanges, queues
/// and bindings (entries name no vhost, as RabbitMQ's per-vhost export).
pub(super) async fn import_vhost_definitions(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    JsonBody(mut body): JsonBody,
) -> Response {
    if let Some(refused) = admin_refusal(&caller).or_else(|| super::vhost_refusal(&http, &caller, &vhost)) {
        return refused;
    }
    for section in ["queues", "exchanges", "bindings"] {
        for entry in body.get_mut(section).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(e) = entry.as_object_mut() {
                e.entry("vhost").or_insert_with(|| json!(vhost));
            }
        }
    }
    let imported =
        crate::config::definitions::parse(&body).map(|d| d.topology).and_then(|t| http.broker.apply_topology(&t));
    match imported {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(reason) => bad_request(&reason),
    }
}
