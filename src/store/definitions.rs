//! Durable definitions on disk: an append-only log of changes, one JSON
//! line each, replayed at start-up into the live set ([`Model`]) and
//! rewritten from it when the log has grown well past it (LavinMQ's way).
//!
//! ```text
//! {"vhost":"/"}
//! {"exchange":{"vhost":"/","name":"jobs","type":"direct","auto_delete":false,"internal":false,"arguments":{},"arguments_amqp":"AAAAAA=="}}
//! {"queue":{"vhost":"/","name":"work","auto_delete":false,"arguments":{"x-max-length":5},"arguments_amqp":"AAAAEgx4LW1heC1sZW5ndGhJAAAABQ=="}}
//! {"bind":{"vhost":"/","source":"jobs","destination":"work","destination_type":"queue","routing_key":"k","arguments":{},"arguments_amqp":"AAAAAA=="}}
//! {"delete_queue":{"vhost":"/","name":"work"}}
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::broker::access::{base64_decode, base64_encode};
use crate::config::definitions::{BindingDef, ExchangeDef, QueueDef, Topology};
use crate::config::{PasswordConfig, PermissionConfig, UserConfig};
use crate::json::table_json;
use crate::protocol::field_table::{encode_table, parse_table};
use crate::protocol::FieldTable;

/// Arguments as their AMQP encoding (base64): JSON would turn a short
/// integer into a long one, a byte array into a string. A readable copy is
/// written beside it for people; only this one is read back.
fn arguments_line(t: &FieldTable) -> (Value, Value) {
    let mut buf = bytes::BytesMut::new();
    encode_table(&mut buf, t);
    (table_json(t), json!(base64_encode(&buf)))
}

fn arguments_read(body: &Value) -> Result<FieldTable, String> {
    let Some(text) = body.get("arguments_amqp").and_then(Value::as_str) else { return Ok(FieldTable::new()) };
    let raw = bytes::Bytes::from(base64_decode(text).ok_or("arguments_amqp: not base64")?);
    let (rest, table) = parse_table(&raw, &raw).map_err(|e| format!("arguments_amqp: {e}"))?;
    if !rest.is_empty() {
        return Err("arguments_amqp: octets after the table".into());
    }
    Ok(table)
}

/// One change to the durable definitions.
#[derive(Debug, Clone, PartialEq)]
pub enum DefOp {
    Vhost(String),
    DeleteVhost(String),
    Exchange(ExchangeDef),
    DeleteExchange {
        vhost: String,
        name: String,
    },
    Queue(QueueDef),
    DeleteQueue {
        vhost: String,
        name: String,
    },
    Bind(BindingDef),
    Unbind(BindingDef),
    /// A user with its password as RabbitMQ's salted SHA-256 hash.
    User(UserConfig),
    DeleteUser(String),
    Permission(PermissionConfig),
    ClearPermission {
        user: String,
        vhost: String,
    },
}

/// The durable definitions as the log says they are now.
#[derive(Debug, Default)]
pub struct Model {
    pub vhosts: Vec<String>,
    exchanges: BTreeMap<(String, String), ExchangeDef>,
    queues: BTreeMap<(String, String), QueueDef>,
    bindings: Vec<BindingDef>,
    users: BTreeMap<String, UserConfig>,
    permissions: BTreeMap<(String, String), PermissionConfig>,
}

impl Model {
    pub fn apply(&mut self, op: &DefOp) {
        match op {
            DefOp::Vhost(v) => {
                if !self.vhosts.contains(v) {
                    self.vhosts.push(v.clone());
                }
            }
            DefOp::DeleteVhost(v) => {
                self.vhosts.retain(|x| x != v);
                self.exchanges.retain(|(vh, _), _| vh != v);
                self.queues.retain(|(vh, _), _| vh != v);
                self.bindings.retain(|b| &b.vhost != v);
                self.permissions.retain(|(_, vh), _| vh != v);
            }
            DefOp::Exchange(x) => {
                self.exchanges.insert((x.vhost.clone(), x.name.clone()), x.clone());
            }
            DefOp::DeleteExchange { vhost, name } => {
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                self.bindings.retain(|b| {
                    !(&b.vhost == vhost
                        && (&b.source == name || (b.destination_type == "exchange" && &b.destination == name)))
                });
            }
            DefOp::Queue(q) => {
                self.queues.insert((q.vhost.clone(), q.name.clone()), q.clone());
            }
            DefOp::DeleteQueue { vhost, name } => {
                self.queues.remove(&(vhost.clone(), name.clone()));
                self.bindings
                    .retain(|b| !(&b.vhost == vhost && b.destination_type == "queue" && &b.destination == name));
            }
            DefOp::Bind(b) => {
                if !self.bindings.contains(b) {
                    self.bindings.push(b.clone());
                }
            }
            DefOp::Unbind(b) => self.bindings.retain(|x| x != b),
            DefOp::User(u) => {
                self.users.insert(u.name.clone(), u.clone());
            }
            DefOp::DeleteUser(name) => {
                self.users.remove(name);
                self.permissions.retain(|(user, _), _| user != name);
            }
            DefOp::Permission(p) => {
                self.permissions.insert((p.user.clone(), p.vhost.clone()), p.clone());
            }
            DefOp::ClearPermission { user, vhost } => {
                self.permissions.remove(&(user.clone(), vhost.clone()));
            }
        }
    }

    /// How many lines the live set takes.
    pub fn len(&self) -> usize {
        self.vhosts.len()
            + self.exchanges.len()
            + self.queues.len()
            + self.bindings.len()
            + self.users.len()
            + self.permissions.len()
    }

    /// The live set as the operations that make it, in an order that
    /// declares everything before it is bound.
    pub fn ops(&self) -> Vec<DefOp> {
        let vhosts = self.vhosts.iter().cloned().map(DefOp::Vhost);
        let exchanges = self.exchanges.values().cloned().map(DefOp::Exchange);
        let queues = self.queues.values().cloned().map(DefOp::Queue);
        let bindings = self.bindings.iter().cloned().map(DefOp::Bind);
        let users = self.users.values().cloned().map(DefOp::User);
        let permissions = self.permissions.values().cloned().map(DefOp::Permission);
        vhosts.chain(exchanges).chain(queues).chain(bindings).chain(users).chain(permissions).collect()
    }

    pub fn users(&self) -> Vec<UserConfig> {
        self.users.values().cloned().collect()
    }

    pub fn permissions(&self) -> Vec<PermissionConfig> {
        self.permissions.values().cloned().collect()
    }

    pub fn topology(&self) -> Topology {
        Topology {
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings: self.bindings.clone(),
        }
    }
}

/// One log line, without its newline.
pub fn encode(op: &DefOp) -> String {
    let named = |vhost: &str, name: &str| json!({"vhost": vhost, "name": name});
    let binding = |b: &BindingDef| {
        let (arguments, exact) = arguments_line(&b.arguments);
        json!({"vhost": b.vhost, "source": b.source, "destination": b.destination,
               "destination_type": b.destination_type, "routing_key": b.routing_key,
               "arguments": arguments, "arguments_amqp": exact})
    };
    let line = match op {
        DefOp::Vhost(v) => json!({ "vhost": v }),
        DefOp::DeleteVhost(v) => json!({ "delete_vhost": v }),
        DefOp::Exchange(x) => {
            let (arguments, exact) = arguments_line(&x.arguments);
            json!({"exchange": {
                "vhost": x.vhost, "name": x.name, "type": x.kind, "auto_delete": x.auto_delete,
                "internal": x.internal, "arguments": arguments, "arguments_amqp": exact}})
        }
        DefOp::DeleteExchange { vhost, name } => json!({ "delete_exchange": named(vhost, name) }),
        DefOp::Queue(q) => {
            let (arguments, exact) = arguments_line(&q.arguments);
            json!({"queue": {
                "vhost": q.vhost, "name": q.name, "auto_delete": q.auto_delete,
                "arguments": arguments, "arguments_amqp": exact}})
        }
        DefOp::DeleteQueue { vhost, name } => json!({ "delete_queue": named(vhost, name) }),
        DefOp::Bind(b) => json!({ "bind": binding(b) }),
        DefOp::Unbind(b) => json!({ "unbind": binding(b) }),
        DefOp::User(u) => {
            let hash = match &u.password {
                PasswordConfig::Sha256Base64(h) => h.clone(),
                // Callers hand over hashes; a plain one is never written.
                PasswordConfig::Plain(_) => String::new(),
            };
            json!({"user": {"name": u.name, "password_hash": hash, "tags": u.tags}})
        }
        DefOp::DeleteUser(name) => json!({ "delete_user": name }),
        DefOp::Permission(p) => json!({"permission": {
            "user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read}}),
        DefOp::ClearPermission { user, vhost } => json!({"clear_permission": {"user": user, "vhost": vhost}}),
    };
    line.to_string()
}

/// Reads one log line back.
pub fn decode(line: &str) -> Result<DefOp, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let (key, body) = v.as_object().and_then(|o| o.iter().next()).ok_or("not an object with one key")?;
    let text = |field: &str| -> Result<String, String> {
        body.get(field).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("{key}: no '{field}'"))
    };
    let flag = |field: &str| body.get(field).and_then(Value::as_bool).unwrap_or(false);
    let arguments = || arguments_read(body).map_err(|e| format!("{key}: {e}"));
    let binding = || -> Result<BindingDef, String> {
        Ok(BindingDef {
            vhost: text("vhost")?,
            source: text("source")?,
            destination: text("destination")?,
            destination_type: text("destination_type")?,
            routing_key: text("routing_key")?,
            arguments: arguments()?,
        })
    };
    Ok(match key.as_str() {
        "vhost" => DefOp::Vhost(body.as_str().ok_or("vhost: not a string")?.to_string()),
        "delete_vhost" => DefOp::DeleteVhost(body.as_str().ok_or("delete_vhost: not a string")?.to_string()),
        "exchange" => DefOp::Exchange(ExchangeDef {
            vhost: text("vhost")?,
            name: text("name")?,
            kind: text("type")?,
            durable: true,
            auto_delete: flag("auto_delete"),
            internal: flag("internal"),
            arguments: arguments()?,
        }),
        "delete_exchange" => DefOp::DeleteExchange { vhost: text("vhost")?, name: text("name")? },
        "queue" => DefOp::Queue(QueueDef {
            vhost: text("vhost")?,
            name: text("name")?,
            durable: true,
            auto_delete: flag("auto_delete"),
            arguments: arguments()?,
        }),
        "delete_queue" => DefOp::DeleteQueue { vhost: text("vhost")?, name: text("name")? },
        "bind" => DefOp::Bind(binding()?),
        "unbind" => DefOp::Unbind(binding()?),
        "user" => DefOp::User(UserConfig {
            name: text("name")?,
            password: PasswordConfig::Sha256Base64(text("password_hash")?),
            tags: body
                .get("tags")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
        }),
        "delete_user" => DefOp::DeleteUser(body.as_str().ok_or("delete_user: not a string")?.to_string()),
        "permission" => DefOp::Permission(PermissionConfig {
            user: text("user")?,
            vhost: text("vhost")?,
            configure: text("configure")?,
            write: text("write")?,
            read: text("read")?,
        }),
        "clear_permission" => DefOp::ClearPermission { user: text("user")?, vhost: text("vhost")? },
        other => return Err(format!("unknown entry '{other}'")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FieldTable, FieldValue};

    #[test]
    fn every_op_reads_back_as_written_and_the_model_follows_deletes() {
        let mut args = FieldTable::new();
        args.insert("x-max-length", FieldValue::I32(5));
        let queue = QueueDef {
            vhost: "/".into(),
            name: "q\n\"odd\"".into(),
            durable: true,
            auto_delete: false,
            arguments: args,
        };
        let exchange = ExchangeDef {
            vhost: "/".into(),
            name: "x".into(),
            kind: "topic".into(),
            durable: true,
            auto_delete: true,
            internal: false,
            arguments: FieldTable::new(),
        };
        let bind = BindingDef {
            vhost: "/".into(),
            source: "x".into(),
            destination: queue.name.clone(),
            destination_type: "queue".into(),
            routing_key: "a.#".into(),
            arguments: FieldTable::new(),
        };
        let ops = [
            DefOp::Vhost("/".into()),
            DefOp::Exchange(exchange.clone()),
            DefOp::Queue(queue.clone()),
            DefOp::Bind(bind.clone()),
            DefOp::Unbind(bind.clone()),
            DefOp::Bind(bind.clone()),
            DefOp::DeleteQueue { vhost: "/".into(), name: "gone".into() },
            DefOp::DeleteExchange { vhost: "/".into(), name: "gone".into() },
            DefOp::DeleteVhost("old".into()),
            DefOp::User(UserConfig {
                name: "ann".into(),
                password: PasswordConfig::Sha256Base64("c2FsdGhhc2g=".into()),
                tags: vec!["monitoring".into()],
            }),
            DefOp::Permission(PermissionConfig {
                user: "ann".into(),
                vhost: "/".into(),
                configure: "".into(),
                write: ".*".into(),
                read: "^q$".into(),
            }),
            DefOp::ClearPermission { user: "ann".into(), vhost: "/".into() },
            DefOp::DeleteUser("bob".into()),
        ];
        let mut model = Model::default();
        for op in &ops {
            let line = encode(op);
            assert!(!line.contains('\n'), "one line: {line}");
            assert_eq!(&decode(&line).unwrap(), op);
            model.apply(op);
        }
        assert_eq!(model.topology().bindings, [bind]);
        model.apply(&DefOp::DeleteQueue { vhost: "/".into(), name: queue.name.clone() });
        assert!(model.topology().bindings.is_empty(), "a queue's bindings go with it");
        assert_eq!(model.len(), 3, "vhost, exchange, user");
        assert!(decode("{\"frobnicate\":1}").unwrap_err().contains("unknown entry"));
        assert!(decode("{\"queue\":{\"vhost\":\"/\"}}").unwrap_err().contains("no 'name'"));
    }
}
