//! RabbitMQ definitions: the JSON of `rabbitmqctl export_definitions` and
//! of the management API's `/api/definitions`, read by `load_definitions`
//! at start-up and by `POST /api/definitions` at run time. warren takes
//! users, vhosts, permissions, exchanges, queues and bindings; the sections
//! it has nothing for (policies, parameters, topic permissions) are named
//! so that the caller can warn.

use serde_json::Value;

use super::{parse_tags, PasswordConfig, PermissionConfig, UserConfig};
use crate::json::json_table;
use crate::protocol::FieldTable;

/// Exchanges, queues and bindings to declare.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Everything a definitions document holds that warren acts on.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub users: Vec<UserConfig>,
    pub vhosts: Vec<String>,
    pub permissions: Vec<PermissionConfig>,
    pub topology: Topology,
    /// Sections present but not imported.
    pub ignored: Vec<&'static str>,
}

/// Most entries a definitions document may hold, section by section.
const MAX_ENTRIES: usize = 100_000;

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn required(v: &Value, key: &str, what: &str) -> Result<String, String> {
    text(v, key).ok_or_else(|| format!("{what} without '{key}'"))
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn arguments(v: &Value, what: &str) -> Result<FieldTable, String> {
    match v.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(a) => json_table(a).map_err(|e| format!("{what}: arguments: {e}")),
    }
}

/// Reads a definitions document.
pub fn parse(json: &Value) -> Result<Definitions, String> {
    let list = |key: &str| -> Result<&[Value], String> {
        let items = json.get(key).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        if items.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} {key}"));
        }
        Ok(items)
    };
    let mut d = Definitions::default();
    for v in list("vhosts")? {
        d.vhosts.push(required(v, "name", "a vhost")?);
    }
    for u in list("users")? {
        let name = required(u, "name", "a user")?;
        let password = match (text(u, "password"), text(u, "password_hash")) {
            (Some(p), _) => PasswordConfig::Plain(p),
            (None, Some(h)) => {
                let algorithm = text(u, "hashing_algorithm").unwrap_or_default();
                if !algorithm.is_empty() && algorithm != "rabbit_password_hashing_sha256" {
                    return Err(format!("user '{name}': hashing_algorithm {algorithm} is not supported"));
                }
                PasswordConfig::Sha256Base64(h)
            }
            (None, None) => return Err(format!("user '{name}' has neither password nor password_hash")),
        };
        d.users.push(UserConfig { name, password, tags: parse_tags(u.get("tags")) });
    }
    for p in list("permissions")? {
        let get = |k: &str| required(p, k, "a permission");
        d.permissions.push(PermissionConfig {
            user: get("user")?,
            vhost: get("vhost")?,
            configure: get("configure")?,
            write: get("write")?,
            read: get("read")?,
        });
    }
    for x in list("exchanges")? {
        let name = required(x, "name", "an exchange")?;
        d.topology.exchanges.push(ExchangeDef {
            vhost: required(x, "vhost", "an exchange")?,
            kind: text(x, "type").unwrap_or_else(|| "direct".into()),
            durable: flag(x, "durable", true),
            auto_delete: flag(x, "auto_delete", false),
            internal: flag(x, "internal", false),
            arguments: arguments(x, &format!("exchange '{name}'"))?,
            name,
        });
    }
    for q in list("queues")? {
        let name = required(q, "name", "a queue")?;
        d.topology.queues.push(QueueDef {
            vhost: required(q, "vhost", "a queue")?,
            durable: flag(q, "durable", true),
            auto_delete: flag(q, "auto_delete", false),
            arguments: arguments(q, &format!("queue '{name}'"))?,
            name,
        });
    }
    for b in list("bindings")? {
        let what = "a binding";
        d.topology.bindings.push(BindingDef {
            vhost: required(b, "vhost", what)?,
            source: required(b, "source", what)?,
            destination: required(b, "destination", what)?,
            destination_type: required(b, "destination_type", what)?,
            routing_key: text(b, "routing_key").unwrap_or_default(),
            arguments: arguments(b, what)?,
        });
    }
    for section in ["policies", "parameters", "global_parameters", "topic_permissions"] {
        let present = json.get(section).is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()));
        // RabbitMQ always exports its cluster_name as a global parameter;
        // that alone is nothing to warn about.
        let only_cluster_name = section == "global_parameters"
            && list(section)?.iter().all(|p| p.get("name").and_then(Value::as_str) == Some("cluster_name"));
        if present && !only_cluster_name {
            d.ignored.push(section);
        }
    }
    Ok(d)
}
