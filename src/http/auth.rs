//! Who is calling: HTTP basic authentication against the broker's users,
//! `loopback_users`, and the management tags that decide what a caller may
//! see and do (see the module docs of `crate::http`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::listener::Peer;
use super::Http;
use crate::broker::access::{base64_decode, LoginError};
use crate::broker::Broker;

/// An authenticated caller with a management tag.
#[derive(Clone)]
pub(super) struct Caller {
    pub(super) name: String,
    /// What the caller authenticated with: the teaching demo logs its
    /// workers in as the caller who started it.
    pub(super) password: String,
    pub(super) tags: Vec<String>,
}

impl Caller {
    fn has(&self, tags: &[&str]) -> bool {
        self.tags.iter().any(|t| tags.contains(&t.as_str()))
    }

    pub(super) fn is_admin(&self) -> bool {
        self.has(&["administrator"])
    }

    /// `monitoring` or `administrator`: sees every connection.
    pub(super) fn is_monitor(&self) -> bool {
        self.has(&["administrator", "monitoring"])
    }

    /// Administrators see every virtual host; others those they have a
    /// permission entry in.
    pub(super) fn sees_vhost(&self, broker: &Broker, vhost: &str) -> bool {
        self.is_admin() || broker.access.has_vhost(&self.name, vhost)
    }
}

const MANAGEMENT_TAGS: &[&str] = &["administrator", "monitoring", "policymaker", "management"];
const REALM: &str = "Basic realm=\"RabbitMQ Management\"";

/// RabbitMQ's 401 for a caller it knows but refuses.
pub(super) fn not_authorised(reason: &str) -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({"error": "not_authorised", "reason": reason}))).into_response()
}

/// Steps 1 to 3 of `crate::http`'s module docs; the caller goes to the handler as an
/// extension.
pub(super) async fn authenticate(State(http): State<Arc<Http>>, mut request: Request, next: Next) -> Response {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, REALM)]).into_response();
    };
    let credentials = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(base64_decode)
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((user, password)) = credentials.as_deref().and_then(|c| c.split_once(':')) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let peer = request.extensions().get::<Peer>().map_or(IpAddr::from([127, 0, 0, 1]), |p| p.0);
    match http.broker.access.authenticate(user, password, peer) {
        Ok(()) => {}
        Err(LoginError::InvalidCredentials) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, REALM)],
                Json(json!({"error": "not_authorized", "reason": "Not_Authorized"})),
            )
                .into_response()
        }
        Err(LoginError::LoopbackOnly) => return not_authorised("User can only log in via localhost"),
    }
    let caller = Caller { name: user.to_string(), password: password.to_string(), tags: http.broker.access.tags(user) };
    if !caller.has(MANAGEMENT_TAGS) {
        return not_authorised("Not management user");
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}
