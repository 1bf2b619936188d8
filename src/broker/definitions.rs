//! Definitions in and out of a running broker: declare what a definitions
//! document holds (at start-up, at each reset, or through
//! `POST /api/definitions`), and export the broker's own in RabbitMQ's
//! format, so that a file exported from RabbitMQ imports into warren and
//! one exported from warren imports into RabbitMQ.

use serde_json::{json, Value};

use super::declare::ExchangeSpec;
use super::exchange::{Destination, ExchangeKind};
use super::queue::QueueOptions;
use super::{connections::NO_CONNECTION, Broker};
use crate::config::definitions::{Definitions, Topology};
use crate::json::table_json;
use crate::protocol::ShortStr;

impl Broker {
    /// Declares exchanges, then queues, then bindings, in existing vhosts.
    /// Stops at the first that fails, with RabbitMQ's reason.
    pub fn apply_topology(&self, t: &Topology) -> Result<(), String> {
        let vhost = |name: &str| self.vhost(&name.into()).ok_or_else(|| format!("vhost '{name}' does not exist"));
        for x in &t.exchanges {
            let spec = ExchangeSpec {
                kind: ExchangeKind::parse(&x.kind.as_str().into()).map_err(|e| e.message)?,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
            };
            vhost(&x.vhost)?.declare_exchange(&x.name.as_str().into(), &spec).map_err(|e| e.message)?;
        }
        for q in &t.queues {
            let options = QueueOptions {
                durable: q.durable,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
            };
            vhost(&q.vhost)?.declare_queue(q.name.as_str().into(), options, NO_CONNECTION).map_err(|e| e.message)?;
        }
        for b in &t.bindings {
            let v = vhost(&b.vhost)?;
            let source = v.exchange(&b.source.as_str().into()).map_err(|e| e.message)?;
            let name = ShortStr::from(b.destination.as_str());
            let destination = match b.destination_type.as_str() {
                "queue" => Destination::Queue(v.queue(&name).map_err(|e| e.message)?),
                "exchange" => Destination::Exchange(v.exchange(&name).map_err(|e| e.message)?),
                other => return Err(format!("unknown destination_type '{other}'")),
            };
            v.bind(&source, destination, b.routing_key.as_str().into(), b.arguments.clone()).map_err(|e| e.message)?;
        }
        Ok(())
    }

    /// Imports a definitions document into the running broker: vhosts,
    /// users, permissions, then the topology.
    pub fn import_definitions(&self, d: &Definitions) -> Result<(), String> {
        for name in &d.vhosts {
            self.add_vhost(&name.as_str().into());
        }
        for u in &d.users {
            self.access.put_user(u)?;
        }
        for p in &d.permissions {
            self.access.set_permission(p)?;
        }
        self.apply_topology(&d.topology)
    }

    /// The broker's definitions in RabbitMQ's format; with `vhost`, that
    /// vhost's exchanges, queues and bindings only, as RabbitMQ's per-vhost
    /// export.
    pub fn export_definitions(&self, only: Option<&str>) -> Value {
        let wanted = |v: &str| only.is_none_or(|o| o == v);
        let mut exchanges = Vec::new();
        let mut bindings = Vec::new();
        for x in self.exchange_infos().into_iter().filter(|x| wanted(&x.vhost)) {
            for b in &x.bindings {
                bindings.push(json!({
                    "source": x.name, "vhost": x.vhost, "destination": b.destination,
                    "destination_type": b.destination_type, "routing_key": b.routing_key,
                    "arguments": table_json(&b.arguments),
                }));
            }
            // The default and amq.* exchanges exist in every vhost.
            if x.name.is_empty() || x.name.starts_with("amq.") {
                continue;
            }
            exchanges.push(json!({
                "name": x.name, "vhost": x.vhost, "type": x.kind, "durable": x.durable,
                "auto_delete": x.auto_delete, "internal": x.internal, "arguments": table_json(&x.arguments),
            }));
        }
        // Exclusive queues belong to their connection; RabbitMQ leaves them out.
        let queues: Vec<Value> = self
            .queue_infos()
            .into_iter()
            .filter(|q| wanted(&q.vhost) && !q.exclusive)
            .map(|q| {
                json!({
                    "name": q.name, "vhost": q.vhost, "durable": q.durable, "auto_delete": q.auto_delete,
                    "arguments": table_json(&q.arguments),
                })
            })
            .collect();
        let mut out = json!({ "queues": queues, "exchanges": exchanges, "bindings": bindings });
        if only.is_some() {
            // A per-vhost export names no vhost in its entries, as RabbitMQ's.
            for section in ["queues", "exchanges", "bindings"] {
                for entry in out[section].as_array_mut().into_iter().flatten() {
                    entry.as_object_mut().map(|e| e.remove("vhost"));
                }
            }
            out["parameters"] = json!([]);
            out["policies"] = json!([]);
        } else {
            let mut vhosts: Vec<String> = self.vhosts.iter().map(|v| v.key().to_string()).collect();
            vhosts.sort();
            let users: Vec<Value> = self
                .access
                .users()
                .iter()
                .map(|u| {
                    json!({
                        "name": u.name,
                        "password_hash": self.access.password_hash(&u.name).unwrap_or_default(),
                        "hashing_algorithm": "rabbit_password_hashing_sha256",
                        "tags": u.tags,
                        "limits": {},
                    })
                })
                .collect();
            let permissions: Vec<Value> = self
                .access
                .permissions()
                .iter()
                .map(|p| json!({"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read}))
                .collect();
            // The format version: RabbitMQ 3.10's, which 3.x and 4.x import.
            out["rabbit_version"] = json!("3.10.8");
            out["rabbitmq_version"] = json!("3.10.8");
            out["product_name"] = json!("warren");
            out["product_version"] = json!(env!("CARGO_PKG_VERSION"));
            out["users"] = json!(users);
            out["vhosts"] =
                json!(vhosts.iter().map(|v| json!({"name": v, "limits": [], "metadata": {}})).collect::<Vec<_>>());
            out["permissions"] = json!(permissions);
            out["topic_permissions"] = json!([]);
            out["parameters"] = json!([]);
            out["global_parameters"] = json!([]);
            out["policies"] = json!([]);
        }
        out
    }
}
