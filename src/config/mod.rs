//! Broker settings, and the new-style `rabbitmq.conf` format that sets them.
//!
//! The file is RabbitMQ's sysctl-like format: one `key = value` per line,
//! `#` starts a comment. warren reads the keys below; any other key gets a
//! warning that names it and its line, never a silent ignore.
//!
//! | key | default | meaning |
//! |-----|---------|---------|
//! | `listeners.tcp.default` | `5672` | port, or `ip:port` |
//! | `heartbeat` | `60` | seconds proposed in `connection.tune` |
//! | `frame_max` | `131072` | largest frame proposed in `connection.tune` |
//! | `channel_max` | `2047` | most channels proposed in `connection.tune` |
//! | `handshake_timeout` | `10000` | ms from accept to `connection.open` |
//! | `consumer_timeout` | `1800000` | ms a delivery may stay unacknowledged |
//! | `default_user`, `default_pass` | `guest` | the user created at start |
//! | `default_vhost` | `/` | the virtual host created at start |
//! | `default_permissions.configure` / `.write` / `.read` | `.*` | the default user's permissions |
//! | `loopback_users.NAME` | `guest = true` | whether NAME may only connect from loopback |
//! | `loopback_users` | | `none`: no user is loopback-only |
//! | `load_definitions` | | a RabbitMQ definitions JSON: users, vhosts, permissions |
//! | `vm_memory_high_watermark.relative` | `0.4` | share of the machine's memory before publishers are blocked |
//! | `vm_memory_high_watermark.absolute` | | the same as a size: `512MB`, `1GiB` |
//! | `vm_memory_calculation_strategy` | `rss` | what the watermark is compared with: `rss`, `allocated` or `legacy` (messages only) |
//! | `memory_monitor_interval` | `1000` | ms between samples of the process's memory |
//! | `default_user_tags.TAG` | `administrator = true` | the default user's tags (management API rights) |
//! | `connection_max` | `infinity` | most connections; more are refused at `connection.open` (530) |
//! | `max_message_size` | `134217728` | largest message body, at most 512 MiB (406) |
//! | `management.tcp.port` | `15672` | the binary's HTTP API port (`--http-port` overrides it, `--no-http` turns the API off) |
//! | `management.tcp.ip` | `127.0.0.1` | the HTTP API's address |
//! | `management.tcp.request_timeout` | `5000` | ms to receive a request's headers on the HTTP API |
//! | `management.tcp.idle_timeout` | `60000` | ms an HTTP connection may stay silent |
//! | `management.tcp.max_connections` | `1024` | most HTTP connections at once (warren's key; RabbitMQ's is fixed at 1024) |
//! | `data_dir` | | keep durable definitions and persistent messages here (warren's key; `--data-dir`) |
//! | `disk_free_limit.absolute` | `50MB` | with a data directory: free disk space below which publishers are blocked |
//! | `disk_free_limit.relative` | | the same as a multiple of the machine's memory, such as `1.0` |
//!
//! The TLS keys (`listeners.ssl.default`, `ssl_options.*`,
//! `auth_mechanisms.N`, `listeners.tcp = none`) are in [`tls`].

pub mod definitions;
pub mod tls;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub use crate::broker::disk::DiskLimit;

use crate::broker::alarm::MemoryStrategy;
use crate::protocol::constants::FRAME_MIN_SIZE;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the AMQP listener binds.
    pub listen: SocketAddr,
    /// Whether there is a plain AMQP listener at all (`listeners.tcp =
    /// none`: TLS only).
    pub tcp_listener: bool,
    /// Where the amqps listener binds, if there is one.
    pub tls_listen: Option<SocketAddr>,
    /// What it is set up with.
    pub ssl_options: tls::SslOptions,
    /// SASL mechanisms offered, in order (EXTERNAL only on TLS with a
    /// verified client certificate).
    pub auth_mechanisms: Vec<tls::AuthMechanism>,
    /// Heartbeat proposed to clients, seconds; the client's tune-ok decides.
    pub heartbeat: u16,
    /// Largest frame (header and end included) a client may negotiate.
    pub frame_max: u32,
    /// Most channels a connection may have open at once.
    pub channel_max: u16,
    /// From accept to `connection.open`; slower clients are dropped.
    pub handshake_timeout: Duration,
    /// How long a delivery may stay unacknowledged before its channel is
    /// closed (406); None for no limit. Queues may set `x-consumer-timeout`.
    pub consumer_timeout: Option<Duration>,
    /// Users; the first is the default user (`default_user`).
    pub users: Vec<UserConfig>,
    pub vhosts: Vec<String>,
    /// Who may do what where; a user without an entry for a virtual host
    /// cannot open it.
    pub permissions: Vec<PermissionConfig>,
    /// Users that may only connect from a loopback address (`guest`).
    pub loopback_users: Vec<String>,
    /// Memory the broker may hold before it blocks publishers.
    pub memory_high_watermark: Watermark,
    /// What the watermark is compared with, besides the broker's own account
    /// of its messages (see `broker::alarm`).
    pub memory_strategy: MemoryStrategy,
    /// How often the process's memory is sampled.
    pub memory_monitor_interval: Duration,
    /// Most connections at once; a connection past it is refused at
    /// `connection.open`, as RabbitMQ 3.11.12 and later do. None: no limit.
    pub connection_max: Option<usize>,
    /// Largest message body accepted (RabbitMQ's `max_message_size`).
    pub max_message_size: u64,
    /// Where the standalone binary serves the HTTP API
    /// (`management.tcp.ip`, `management.tcp.port`): 127.0.0.1:15672, as
    /// RabbitMQ's management plugin, but on loopback. Embedded brokers serve
    /// it only when asked (`EmbeddedBuilder::http`).
    pub management_listen: SocketAddr,
    /// Limits of the HTTP API's connections.
    pub http_limits: HttpLimits,
    /// Exchanges, queues and bindings declared at start-up (and again at
    /// each reset), from `load_definitions`.
    pub topology: definitions::Topology,
    /// Log every frame in and out of every connection, readably
    /// (`<- basic.publish exchange="" routing_key="q"`, `-> heartbeat`).
    pub trace_frames: bool,
    /// Where durable definitions and persistent messages are kept
    /// (`data_dir`, `--data-dir`); None: in memory only (see `store`).
    pub data_dir: Option<std::path::PathBuf>,
    /// Free space on the data directory's disk below which publishers are
    /// blocked (`disk_free_limit.*`).
    pub disk_free_limit: DiskLimit,
}

/// RabbitMQ's cap on `max_message_size`: 512 MiB.
pub const MAX_MESSAGE_SIZE_CAP: u64 = 512 << 20;

/// Limits that keep HTTP clients from holding sockets the AMQP side needs
/// (cowboy's defaults, which RabbitMQ's management plugin uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From the connection's start (or the end of the previous request) to
    /// the end of the request's headers.
    pub request_timeout: Duration,
    /// How long a connection may stay silent, between or during requests.
    pub idle_timeout: Duration,
    /// HTTP connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_timeout: Duration::from_millis(5_000),
            idle_timeout: Duration::from_millis(60_000),
            max_connections: 1024,
        }
    }
}

/// `vm_memory_high_watermark`: a share of the machine's memory or a size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    Relative(f64),
    Absolute(usize),
}

impl Watermark {
    /// The limit in bytes (None when the machine's memory cannot be read
    /// for a relative watermark: then there is no limit).
    pub fn bytes(self) -> Option<usize> {
        match self {
            Watermark::Relative(share) => {
                crate::broker::alarm::total_memory().map(|total| (total as f64 * share) as usize)
            }
            Watermark::Absolute(bytes) => Some(bytes),
        }
    }
}

/// User tags as RabbitMQ writes them: a JSON list (3.9 and later) or a
/// comma-separated string (earlier definitions files).
pub fn parse_tags(value: Option<&serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::Array(list)) => list.iter().filter_map(|t| t.as_str()).map(str::to_string).collect(),
        Some(serde_json::Value::String(text)) => {
            text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

/// A memory size as RabbitMQ writes it: `1024`, `512MB` (10^6), `512MiB`
/// (2^20), `2GB`, `2GiB`, `64kB`, `64KiB`, also `M`/`G`/`k` as binary units.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number.parse().ok()?;
    let factor: usize = match unit.trim() {
        "" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A user and how its password is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserConfig {
    pub name: String,
    pub password: PasswordConfig,
    /// RabbitMQ's user tags: `administrator`, `monitoring`, `policymaker`,
    /// `management` give rights on the management API (see `http`).
    pub tags: Vec<String>,
}

impl UserConfig {
    /// A user with a plain password and no tags, as `rabbitmqctl add_user`
    /// creates one.
    pub fn plain(name: &str, password: &str) -> Self {
        UserConfig { name: name.into(), password: PasswordConfig::Plain(password.into()), tags: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PasswordConfig {
    Plain(String),
    /// `password_hash` from RabbitMQ definitions (salted SHA-256, base64).
    Sha256Base64(String),
}

/// RabbitMQ's permission triple for a user in a virtual host: regexes over
/// resource names for configure, write and read.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionConfig {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl PermissionConfig {
    pub fn full(user: &str, vhost: &str) -> Self {
        PermissionConfig {
            user: user.into(),
            vhost: vhost.into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5672),
            tcp_listener: true,
            tls_listen: None,
            ssl_options: tls::SslOptions::default(),
            auth_mechanisms: tls::AuthMechanism::defaults(),
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            handshake_timeout: Duration::from_millis(10_000),
            consumer_timeout: Some(Duration::from_millis(1_800_000)),
            users: vec![UserConfig { tags: vec!["administrator".into()], ..UserConfig::plain("guest", "guest") }],
            vhosts: vec!["/".into()],
            permissions: vec![PermissionConfig::full("guest", "/")],
            loopback_users: vec!["guest".into()],
            memory_high_watermark: Watermark::Relative(0.4),
            memory_strategy: MemoryStrategy::Rss,
            memory_monitor_interval: Duration::from_millis(1_000),
            connection_max: None,
            max_message_size: 128 << 20,
            management_listen: SocketAddr::from(([127, 0, 0, 1], 15672)),
            http_limits: HttpLimits::default(),
            topology: definitions::Topology::default(),
            trace_frames: false,
            data_dir: None,
            disk_free_limit: DiskLimit::default(),
        }
    }
}

/// A key warren does not act on, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub line: usize,
    pub key: String,
    pub reason: &'static str,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {} '{}'", self.line, self.reason, self.key)
    }
}

/// A file warren cannot use; the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Keys RabbitMQ users commonly set that warren accepts but does not act on
/// yet: a warning says so instead of calling them unknown.
const NOT_YET_SUPPORTED: &[&str] = &["log.console", "log.console.level", "log.file", "log.file.level"];

impl Config {
    pub fn from_file(path: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let mut config = Config::default();
        let warnings = config.apply(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        Ok((config, warnings))
    }

    /// Applies the settings in a `rabbitmq.conf` text on top of `self`.
    pub fn apply(&mut self, text: &str) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut warnings = Vec::new();
        let mut default_user: Option<String> = None;
        let mut default_pass: Option<String> = None;
        let mut default_vhost: Option<String> = None;
        let mut default_permissions = [".*".to_string(), ".*".to_string(), ".*".to_string()];
        let mut default_tags = self.users.first().map(|u| u.tags.clone()).unwrap_or_default();
        let mut mechanisms_listed = false;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
            if content.is_empty() {
                continue;
            }
            let Some((key, value)) = content.split_once('=') else {
                return Err(ConfigError(format!("line {line}: expected 'key = value', got '{content}'")));
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |what: &str| ConfigError(format!("line {line}: invalid value '{value}' for '{key}': {what}"));
            match key {
                "listeners.tcp.default" | "listeners.tcp.1" => {
                    self.listen = parse_listener(value).ok_or_else(|| bad("expected a port or ip:port"))?;
                    self.tcp_listener = true;
                }
                k if tls::handles(k) => tls::apply(self, k, value, line, &mut mechanisms_listed, &mut warnings)?,
                "heartbeat" => self.heartbeat = value.parse().map_err(|_| bad("expected seconds, 0 to 65535"))?,
                "frame_max" => {
                    let v: u32 = value.parse().map_err(|_| bad("expected a number of bytes"))?;
                    if v != 0 && v < FRAME_MIN_SIZE {
                        return Err(bad(&format!("must be at least {FRAME_MIN_SIZE}")));
                    }
                    self.frame_max = v;
                }
                "channel_max" => self.channel_max = value.parse().map_err(|_| bad("expected 0 to 65535"))?,
                "handshake_timeout" => {
                    let ms: u64 = value.parse().map_err(|_| bad("expected milliseconds"))?;
                    self.handshake_timeout = Duration::from_millis(ms);
                }
                "consumer_timeout" => {
                    self.consumer_timeout = match value {
                        "false" | "infinity" => None,
                        ms => Some(Duration::from_millis(ms.parse().map_err(|_| bad("expected milliseconds"))?)),
                    };
                }
                "default_user" => default_user = Some(value.to_string()),
                "default_pass" => default_pass = Some(value.to_string()),
                "default_vhost" => default_vhost = Some(value.to_string()),
                "default_permissions.configure" => default_permissions[0] = value.to_string(),
                "default_permissions.write" => default_permissions[1] = value.to_string(),
                "default_permissions.read" => default_permissions[2] = value.to_string(),
                "loopback_users" if value == "none" => self.loopback_users.clear(),
                k if k.starts_with("loopback_users.") => {
                    let user = &k["loopback_users.".len()..];
                    self.loopback_users.retain(|u| u != user);
                    match value {
                        "true" => self.loopback_users.push(user.to_string()),
                        "false" => {}
                        _ => return Err(bad("expected true or false")),
                    }
                }
                "vm_memory_high_watermark.relative" => {
                    let share: f64 = value.parse().map_err(|_| bad("expected a fraction such as 0.4"))?;
                    if !(0.0..=1.0).contains(&share) {
                        return Err(bad("expected a fraction between 0 and 1"));
                    }
                    self.memory_high_watermark = Watermark::Relative(share);
                }
                "disk_free_limit.absolute" => {
                    let bytes = parse_size(value).ok_or_else(|| bad("expected a size such as 50MB or 1GiB"))?;
                    self.disk_free_limit = DiskLimit::Absolute(bytes as u64);
                }
                "disk_free_limit.relative" => {
                    let ratio: f64 = value.parse().map_err(|_| bad("expected a multiple of memory such as 1.0"))?;
                    if !(0.0..=100.0).contains(&ratio) {
                        return Err(bad("expected a multiple of memory between 0 and 100"));
                    }
                    self.disk_free_limit = DiskLimit::Relative(ratio);
                }
                "vm_memory_high_watermark.absolute" => {
                    let bytes = parse_size(value).ok_or_else(|| bad("expected a size such as 512MB or 1GiB"))?;
                    self.memory_high_watermark = Watermark::Absolute(bytes);
                }
                "vm_memory_calculation_strategy" => {
                    self.memory_strategy =
                        MemoryStrategy::parse(value).ok_or_else(|| bad("expected rss, allocated or legacy"))?;
                }
                "memory_monitor_interval" => {
                    let ms: u64 = value.parse().map_err(|_| bad("expected milliseconds"))?;
                    self.memory_monitor_interval = Duration::from_millis(ms.max(10));
                }
                k if k.starts_with("default_user_tags.") => {
                    let tag = k["default_user_tags.".len()..].to_string();
                    default_tags.retain(|t| *t != tag);
                    match value {
                        "true" => default_tags.push(tag),
                        "false" => {}
                        _ => return Err(bad("expected true or false")),
                    }
                }
                "connection_max" => {
                    self.connection_max = match value {
                        "infinity" => None,
                        n => Some(n.parse().map_err(|_| bad("expected a number or infinity"))?),
                    };
                }
                "max_message_size" => {
                    let size = parse_size(value).ok_or_else(|| bad("expected a size in bytes"))? as u64;
                    if size == 0 || size > MAX_MESSAGE_SIZE_CAP {
                        return Err(bad("Max message size should be between 0 and 512MB"));
                    }
                    self.max_message_size = size;
                }
                "management.tcp.request_timeout" | "management.tcp.idle_timeout" => {
                    let ms: u64 = value.parse().map_err(|_| bad("expected milliseconds"))?;
                    let limit = if key.ends_with("request_timeout") {
                        &mut self.http_limits.request_timeout
                    } else {
                        &mut self.http_limits.idle_timeout
                    };
                    *limit = Duration::from_millis(ms);
                }
                "management.tcp.port" => {
                    let port = value.parse().map_err(|_| bad("expected a port number"))?;
                    self.management_listen.set_port(port);
                }
                "management.tcp.ip" => {
                    let ip = value.parse().map_err(|_| bad("expected an IP address such as 127.0.0.1"))?;
                    self.management_listen.set_ip(ip);
                }
                "management.tcp.max_connections" => {
                    self.http_limits.max_connections =
                        value.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad("expected a positive number"))?;
                }
                // warren's own key: RabbitMQ takes its data directory from
                // RABBITMQ_MNESIA_BASE in rabbitmq-env.conf, not this file.
                "data_dir" => self.data_dir = Some(std::path::PathBuf::from(value)),
                "load_definitions" => {
                    self.load_definitions(Path::new(value), line, &mut warnings)
                        .map_err(|e| ConfigError(format!("line {line}: {e}")))?;
                }
                k if NOT_YET_SUPPORTED.contains(&k) => warnings.push(ConfigWarning {
                    line,
                    key: k.to_string(),
                    reason: "not supported by warren yet, ignored:",
                }),
                k => warnings.push(ConfigWarning { line, key: k.to_string(), reason: "unknown key, ignored:" }),
            }
        }
        // The default user is the first; it gets `default_permissions` in the
        // default virtual host, as RabbitMQ creates them at first start.
        if self.users.is_empty() || self.vhosts.is_empty() || self.permissions.is_empty() {
            return Ok(warnings);
        }
        let old_default = self.users[0].name.clone();
        if default_user.is_some() || default_pass.is_some() {
            let name = default_user.unwrap_or_else(|| "guest".into());
            let pass = default_pass.unwrap_or_else(|| "guest".into());
            self.users[0] = UserConfig::plain(&name, &pass);
        }
        self.users[0].tags = default_tags;
        if let Some(vhost) = default_vhost {
            self.vhosts[0] = vhost;
        }
        let [configure, write, read] = default_permissions;
        self.permissions[0] = PermissionConfig {
            user: self.users[0].name.clone(),
            vhost: self.vhosts[0].clone(),
            configure,
            write,
            read,
        };
        if self.users[0].name != old_default {
            self.loopback_users.retain(|u| *u != old_default);
        }
        Ok(warnings)
    }

    /// Reads users, virtual hosts and permissions from a RabbitMQ
    /// definitions file (`rabbitmqctl export_definitions`). Users may give
    /// `password` (plain) or RabbitMQ's `password_hash` (SHA-256).
    fn load_definitions(&mut self, path: &Path, line: usize, warnings: &mut Vec<ConfigWarning>) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
        let d = definitions::parse(&json)?;
        self.merge(d.vhosts, d.users, d.permissions);
        self.topology.exchanges.extend(d.topology.exchanges);
        self.topology.queues.extend(d.topology.queues);
        self.topology.bindings.extend(d.topology.bindings);
        for section in d.ignored {
            warnings.push(ConfigWarning {
                line,
                key: format!("load_definitions: {section}"),
                reason: "not imported by warren yet, ignored:",
            });
        }
        Ok(())
    }

    /// Adds vhosts, users and permissions; a user or permission given again
    /// replaces the earlier one.
    fn merge(&mut self, vhosts: Vec<String>, users: Vec<UserConfig>, permissions: Vec<PermissionConfig>) {
        for name in vhosts {
            if !self.vhosts.contains(&name) {
                self.vhosts.push(name);
            }
        }
        for u in users {
            self.users.retain(|x| x.name != u.name);
            self.users.push(u);
        }
        for p in permissions {
            self.permissions.retain(|x| !(x.user == p.user && x.vhost == p.vhost));
            self.permissions.push(p);
        }
    }
}

fn parse_listener(value: &str) -> Option<SocketAddr> {
    if let Ok(port) = value.parse::<u16>() {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests;
