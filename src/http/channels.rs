//! `GET /api/channels` and `GET /api/consumers`, with RabbitMQ's field
//! names for what warren tracks: a channel is named `connection (number)`;
//! a consumer carries its channel's details and its queue. Like
//! connections, a user who is not `monitoring` sees only its own.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::{visible_connections, Http};
use crate::broker::inspect::ConnectionInfo;

fn peer(c: &ConnectionInfo) -> (String, u16) {
    let peer = c.name.split_once(" -> ").map_or(c.name.as_str(), |(p, _)| p);
    peer.parse::<std::net::SocketAddr>().map_or((String::new(), 0), |a| (a.ip().to_string(), a.port()))
}

fn channel_details(c: &ConnectionInfo, number: u16) -> Value {
    let (peer_host, peer_port) = peer(c);
    json!({
        "name": format!("{} ({number})", c.name),
        "number": number,
        "connection_name": c.name,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "user": c.details.as_ref().map(|d| d.user.clone()),
    })
}

/// The connections the caller may see, by connection id.
fn visible_by_id(http: &Http, caller: &Caller) -> HashMap<u64, ConnectionInfo> {
    let infos = visible_connections(http, caller);
    let ids: HashMap<String, u64> =
        http.broker.connections.all().iter().map(|h| (h.name().to_string(), h.id())).collect();
    infos.into_iter().filter_map(|c| ids.get(&c.name).map(|id| (*id, c))).collect()
}

pub(super) async fn channels(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let connections = visible_by_id(&http, &caller);
    let queues = http.broker.queue_infos();
    let mut out = Vec::new();
    for (id, c) in &connections {
        for &number in &c.channels {
            let consumers: Vec<_> = queues
                .iter()
                .flat_map(|q| &q.consumers)
                .filter(|k| k.channel.connection == *id && k.channel.channel == number)
                .collect();
            let mut channel = channel_details(c, number);
            let extra = json!({
                "connection_details": { "name": c.name, "peer_host": peer(c).0, "peer_port": peer(c).1 },
                "vhost": c.details.as_ref().map(|d| d.vhost.clone()),
                "consumer_count": consumers.len(),
                "messages_unacknowledged": consumers.iter().map(|k| k.unacked).sum::<u32>(),
                "state": "running",
            });
            if let (Value::Object(channel), Value::Object(extra)) = (&mut channel, extra) {
                // At the top level RabbitMQ names the peer in connection_details only.
                for key in ["peer_host", "peer_port", "connection_name"] {
                    channel.remove(key);
                }
                channel.extend(extra);
            }
            out.push(channel);
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(Value::Array(out))
}

pub(super) async fn consumers(State(http): State<Arc<Http>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let connections = visible_by_id(&http, &caller);
    let mut out = Vec::new();
    for q in http.broker.queue_infos() {
        for k in &q.consumers {
            let Some(c) = connections.get(&k.channel.connection) else { continue };
            out.push(json!({
                "consumer_tag": k.tag.to_string(),
                "channel_details": channel_details(c, k.channel.channel),
                "queue": { "name": q.name, "vhost": q.vhost },
                "ack_required": k.ack_required,
                "prefetch_count": k.prefetch_count,
                "exclusive": k.exclusive,
                "arguments": if k.priority == 0 { json!({}) } else { json!({ "x-priority": k.priority }) },
                "active": true,
                "activity_status": "up",
            }));
        }
    }
    Json(Value::Array(out))
}
