//! Users, passwords and permissions, checked as RabbitMQ checks them.
//!
//! A user's permissions in a virtual host are three regular expressions:
//! `configure` (declare and delete queues and exchanges), `write` (publish to
//! an exchange, bind a queue to one) and `read` (consume or get from a
//! queue, purge it, bind from an exchange). RabbitMQ matches them against
//! the resource name unanchored (`re:run`), an empty expression grants
//! nothing, and the default exchange is checked under the name `amq.default`.
//! A user with no permissions in a virtual host may not open it.
//!
//! `loopback_users` (by default just `guest`) may only log in from a
//! loopback address, exactly as RabbitMQ enforces.
//!
//! Users and permissions come from the configuration and change at run time
//! through the HTTP API. They are behind one `RwLock`, read on every check:
//! a change is rare, and applies to the next operation of every connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::config::{Config, PasswordConfig, PermissionConfig, UserConfig};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::ShortStr;
use crate::store::DefOp;

/// One permission expression, compiled, with its source.
#[derive(Debug, Clone)]
struct Expression {
    source: String,
    pattern: Pattern,
}

#[derive(Debug, Clone)]
enum Pattern {
    /// `""`: nothing.
    Nothing,
    /// `.*` and the like: everything, without running a regex per publish.
    Anything,
    Regex(Regex),
}

/// Longest permission expression accepted (a regex is compiled from it).
const MAX_EXPRESSION: usize = 4096;

impl Expression {
    fn new(source: &str) -> Result<Expression, String> {
        if source.len() > MAX_EXPRESSION {
            return Err(format!("permission regex longer than {MAX_EXPRESSION} characters"));
        }
        let pattern = match source {
            "" => Pattern::Nothing,
            ".*" | "^.*" | ".*$" | "^.*$" => Pattern::Anything,
            _ => Pattern::Regex(
                regex::RegexBuilder::new(source)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("invalid permission regex '{source}': {e}"))?,
            ),
        };
        Ok(Expression { source: source.to_string(), pattern })
    }

    fn matches(&self, name: &[u8]) -> bool {
        match &self.pattern {
            Pattern::Nothing => false,
            Pattern::Anything => true,
            Pattern::Regex(r) => r.is_match(&String::from_utf8_lossy(name)),
        }
    }
}

#[derive(Debug, Clone)]
struct Permission {
    configure: Expression,
    write: Expression,
    read: Expression,
}

impl Permission {
    fn new(p: &PermissionConfig) -> Result<Permission, String> {
        Ok(Permission {
            configure: Expression::new(&p.configure)?,
            write: Expression::new(&p.write)?,
            read: Expression::new(&p.read)?,
        })
    }
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    fn word(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

#[derive(Debug, Clone)]
enum Password {
    Plain(String),
    /// RabbitMQ's `rabbit_password_hashing_sha256`: salt and SHA-256 of salt ++ password.
    Sha256 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
struct User {
    password: Password,
    /// Virtual host name to permission.
    permissions: HashMap<String, Permission>,
    /// RabbitMQ's user tags (rights on the management API).
    tags: Vec<String>,
}

/// Why a login failed (the client only ever hears "refused").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    InvalidCredentials,
    LoopbackOnly,
}

#[derive(Debug, Default)]
pub struct AccessControl {
    users: RwLock<HashMap<String, User>>,
    loopback_users: Vec<String>,
    /// With a data directory: where changes made while running are written
    /// (set once start-up has recovered the last run's).
    store: std::sync::OnceLock<std::sync::Arc<crate::store::Store>>,
}

/// A user as the management API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub tags: Vec<String>,
    /// RabbitMQ's `password_hash` (salted SHA-256, base64) when the user was
    /// given one; None for a plain password.
    pub password_hash: Option<String>,
}

impl AccessControl {
    pub fn from_config(config: &Config) -> Result<AccessControl, String> {
        let access = AccessControl {
            users: RwLock::default(),
            loopback_users: config.loopback_users.clone(),
            store: std::sync::OnceLock::new(),
        };
        for u in &config.users {
            access.put_user(u)?;
        }
        for p in &config.permissions {
            access.set_permission(p)?;
        }
        Ok(access)
    }

    /// The users and permissions of `config` again, and only those.
    pub fn reset(&self, config: &Config) {
        // The configuration was accepted at start-up, so it builds again.
        if let Ok(fresh) = AccessControl::from_config(config) {
            *self.write() = fresh.users.into_inner().unwrap_or_else(|e| e.into_inner());
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, User>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, User>> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a user or replaces its password and tags (its permissions stay,
    /// as with RabbitMQ's `PUT /api/users/{name}`). True if it is new.
    pub fn put_user(&self, u: &UserConfig) -> Result<bool, String> {
        let password = match &u.password {
            PasswordConfig::Plain(p) => Password::Plain(p.clone()),
            PasswordConfig::Sha256Base64(b64) => {
                let raw =
                    base64_decode(b64).ok_or_else(|| format!("user '{}': password_hash is not base64", u.name))?;
                if raw.len() != 36 {
                    return Err(format!("user '{}': password_hash is not a salted SHA-256 hash", u.name));
                }
                Password::Sha256 { salt: raw[..4].to_vec(), hash: raw[4..].to_vec() }
            }
        };
        let mut users = self.write();
        let old = users.remove(&u.name);
        let created = old.is_none();
        let permissions = old.map(|old| old.permissions).unwrap_or_default();
        users.insert(u.name.clone(), User { password, permissions, tags: u.tags.clone() });
        drop(users);
        self.write_down(|| {
            let hash = self.password_hash(&u.name).unwrap_or_default();
            DefOp::User(UserConfig { password: PasswordConfig::Sha256Base64(hash), ..u.clone() })
        });
        Ok(created)
    }

    /// From now on, changes go to `store` too.
    pub fn attach_store(&self, store: std::sync::Arc<crate::store::Store>) {
        let _ = self.store.set(store);
    }

    fn write_down(&self, op: impl FnOnce() -> DefOp) {
        if let Some(store) = self.store.get() {
            store.definition(op());
        }
    }

    /// Removes a user and its permissions; false if there was none.
    pub fn delete_user(&self, name: &str) -> bool {
        let deleted = self.write().remove(name).is_some();
        if deleted {
            self.write_down(|| DefOp::DeleteUser(name.to_string()));
        }
        deleted
    }

    pub fn user(&self, name: &str) -> Option<UserInfo> {
        self.read().get(name).map(|u| UserInfo {
            name: name.to_string(),
            tags: u.tags.clone(),
            password_hash: match &u.password {
                Password::Plain(_) => None,
                Password::Sha256 { salt, hash } => Some(base64_encode(&[salt.as_slice(), hash.as_slice()].concat())),
            },
        })
    }

    /// The user's password as RabbitMQ's `password_hash` (base64 of a 4-octet
    /// salt and the SHA-256 of salt and password), for export: kept as given,
    /// or computed, with a fresh salt, from a plain password.
    pub fn password_hash(&self, name: &str) -> Option<String> {
        let users = self.read();
        Some(match &users.get(name)?.password {
            Password::Sha256 { salt, hash } => base64_encode(&[salt.as_slice(), hash.as_slice()].concat()),
            Password::Plain(p) => {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write(name.as_bytes());
                let salt = (h.finish() as u32).to_be_bytes();
                let mut sha = Sha256::new();
                sha.update(salt);
                sha.update(p.as_bytes());
                base64_encode(&[&salt[..], sha.finalize().as_slice()].concat())
            }
        })
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserInfo> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names.iter().filter_map(|n| self.user(n)).collect()
    }

    /// Sets a user's permissions in a virtual host; true if it had none there.
    pub fn set_permission(&self, p: &PermissionConfig) -> Result<bool, String> {
        let permission = Permission::new(p)?;
        let mut users = self.write();
        let user = users.get_mut(&p.user).ok_or_else(|| format!("permissions for unknown user '{}'", p.user))?;
        let created = user.permissions.insert(p.vhost.clone(), permission).is_none();
        drop(users);
        self.write_down(|| DefOp::Permission(p.clone()));
        Ok(created)
    }

    /// Removes a user's permissions in a virtual host; false if it had none.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> bool {
        let cleared = self.write().get_mut(user).is_some_and(|u| u.permissions.remove(vhost).is_some());
        if cleared {
            self.write_down(|| DefOp::ClearPermission { user: user.to_string(), vhost: vhost.to_string() });
        }
        cleared
    }

    /// Removes every permission in a virtual host (it is being deleted).
    pub fn forget_vhost(&self, vhost: &str) {
        for u in self.write().values_mut() {
            u.permissions.remove(vhost);
        }
    }

    /// Every permission entry, by user then virtual host.
    pub fn permissions(&self) -> Vec<PermissionConfig> {
        let users = self.read();
        let mut out: Vec<PermissionConfig> = users
            .iter()
            .flat_map(|(user, u)| {
                u.permissions.iter().map(move |(vhost, p)| PermissionConfig {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    configure: p.configure.source.clone(),
                    write: p.write.source.clone(),
                    read: p.read.source.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
        out
    }

    /// Checks a user's password, and that a loopback-only user is local.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<(), LoginError> {
        let users = self.read();
        let Some(u) = users.get(user) else { return Err(LoginError::InvalidCredentials) };
        let ok = match &u.password {
            Password::Plain(p) => p == password,
            Password::Sha256 { salt, hash } => {
                let mut h = Sha256::new();
                h.update(salt);
                h.update(password.as_bytes());
                h.finalize().as_slice() == hash.as_slice()
            }
        };
        if !ok {
            return Err(LoginError::InvalidCredentials);
        }
        self.check_loopback(user, peer)
    }

    /// EXTERNAL: the user the client certificate names, with no password
    /// (the TLS handshake has verified the certificate). As RabbitMQ's
    /// internal backend, the user must exist; `loopback_users` still apply.
    pub fn authenticate_external(&self, user: &str, peer: IpAddr) -> Result<(), LoginError> {
        if !self.read().contains_key(user) {
            return Err(LoginError::InvalidCredentials);
        }
        self.check_loopback(user, peer)
    }

    fn check_loopback(&self, user: &str, peer: IpAddr) -> Result<(), LoginError> {
        if self.loopback_users.iter().any(|l| l == user) && !is_loopback(peer) {
            return Err(LoginError::LoopbackOnly);
        }
        Ok(())
    }

    /// The user's tags (empty for an unknown user).
    pub fn tags(&self, user: &str) -> Vec<String> {
        self.read().get(user).map_or_else(Vec::new, |u| u.tags.clone())
    }

    /// Whether the user has any permission entry for the virtual host: what
    /// lets it open the vhost, and see it in the management API.
    pub fn has_vhost(&self, user: &str, vhost: &str) -> bool {
        self.read().get(user).is_some_and(|u| u.permissions.contains_key(vhost))
    }

    /// `connection.open`: 530 unless the user has permissions in the vhost.
    pub fn check_vhost(&self, user: &str, vhost: &str) -> AmqpResult<()> {
        match self.read().get(user) {
            Some(u) if u.permissions.contains_key(vhost) => Ok(()),
            _ => Err(AmqpError::not_allowed(format!("access to vhost '{vhost}' refused for user '{user}'"))),
        }
    }

    /// 403 unless `user` has `access` to the resource (`kind` is `queue` or
    /// `exchange`; the default exchange is named `amq.default` here).
    pub fn check(&self, user: &str, vhost: &str, access: Access, kind: &str, name: &ShortStr) -> AmqpResult<()> {
        let name_bytes: &[u8] = if kind == "exchange" && name.is_empty() { b"amq.default" } else { name.as_bytes() };
        let permitted = self.read().get(user).and_then(|u| u.permissions.get(vhost)).is_some_and(|p| {
            let pattern = match access {
                Access::Configure => &p.configure,
                Access::Write => &p.write,
                Access::Read => &p.read,
            };
            pattern.matches(name_bytes)
        });
        if permitted {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "{} access to {kind} '{}' in vhost '{vhost}' refused for user '{user}'",
            access.word(),
            String::from_utf8_lossy(name_bytes)
        )))
    }
}

/// Loopback as RabbitMQ counts it: 127.0.0.0/8, ::1, and IPv4-mapped 127.x.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

pub(crate) fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> AccessControl {
        let mut config = Config::default();
        config.users.push(UserConfig::plain("bob", "pw"));
        // RabbitMQ's own example: salt 908D C60A, password "test12".
        config.users.push(UserConfig {
            password: PasswordConfig::Sha256Base64("kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR".into()),
            ..UserConfig::plain("hashed", "")
        });
        config.permissions.push(PermissionConfig {
            user: "bob".into(),
            vhost: "/".into(),
            configure: "^bob-".into(),
            write: "".into(),
            read: "^(bob-.*|amq\\.default)$".into(),
        });
        AccessControl::from_config(&config).unwrap()
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn passwords_plain_and_hashed_and_loopback_users() {
        let a = control();
        assert_eq!(a.authenticate("guest", "guest", LOCAL), Ok(()));
        assert_eq!(a.authenticate("guest", "nope", LOCAL), Err(LoginError::InvalidCredentials));
        assert_eq!(a.authenticate("nobody", "guest", LOCAL), Err(LoginError::InvalidCredentials));
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(a.authenticate("guest", "guest", remote), Err(LoginError::LoopbackOnly));
        assert_eq!(a.authenticate("bob", "pw", remote), Ok(()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(a.authenticate("hashed", "test12", LOCAL), Ok(()));
        assert_eq!(a.authenticate("hashed", "test13", LOCAL), Err(LoginError::InvalidCredentials));
    }

    #[test]
    fn permissions_are_unanchored_regexes_and_empty_grants_nothing() {
        let a = control();
        assert!(a.check_vhost("bob", "/").is_ok());
        assert_eq!(a.check_vhost("hashed", "/").unwrap_err().message, "access to vhost '/' refused for user 'hashed'");
        assert!(a.check("bob", "/", Access::Configure, "queue", &"bob-1".into()).is_ok());
        let e = a.check("bob", "/", Access::Configure, "queue", &"alice".into()).unwrap_err();
        assert_eq!(e.message, "configure access to queue 'alice' in vhost '/' refused for user 'bob'");
        assert_eq!(e.code, crate::protocol::ReplyCode::AccessRefused);
        let e = a.check("bob", "/", Access::Write, "exchange", &"".into()).unwrap_err();
        assert_eq!(e.message, "write access to exchange 'amq.default' in vhost '/' refused for user 'bob'");
        assert!(a.check("bob", "/", Access::Read, "exchange", &"".into()).is_ok());
        assert!(a.check("guest", "/", Access::Write, "exchange", &"anything".into()).is_ok());
    }

    #[test]
    fn users_and_permissions_change_at_run_time() {
        let a = control();
        let carol = UserConfig { tags: vec!["management".into()], ..UserConfig::plain("carol", "pw") };
        assert_eq!(a.put_user(&carol), Ok(true));
        assert_eq!(a.authenticate("carol", "pw", LOCAL), Ok(()));
        assert!(a.check_vhost("carol", "/").is_err());
        let p = PermissionConfig {
            user: "carol".into(),
            vhost: "/".into(),
            configure: "^c-".into(),
            write: ".*".into(),
            read: "".into(),
        };
        assert_eq!(a.set_permission(&p), Ok(true));
        assert!(a.check("carol", "/", Access::Configure, "queue", &"c-1".into()).is_ok());
        assert!(a.check("carol", "/", Access::Read, "queue", &"c-1".into()).is_err());
        assert!(a.permissions().contains(&p), "the sources are kept for export");
        // A new password keeps the permissions, as RabbitMQ's PUT does.
        let hashed = PasswordConfig::Sha256Base64("kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR".into());
        assert_eq!(a.put_user(&UserConfig { password: hashed, ..carol.clone() }), Ok(false));
        assert_eq!(a.authenticate("carol", "test12", LOCAL), Ok(()));
        assert_eq!(
            a.user("carol").unwrap().password_hash.as_deref(),
            Some("kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR")
        );
        assert!(a.check_vhost("carol", "/").is_ok());
        assert!(a.set_permission(&PermissionConfig { read: "(".into(), ..p.clone() }).is_err());
        assert!(a.set_permission(&PermissionConfig { user: "nobody".into(), ..p.clone() }).is_err());
        a.forget_vhost("/");
        assert!(a.check_vhost("carol", "/").is_err());
        assert!(!a.clear_permission("carol", "/"));
        assert!(a.delete_user("carol"));
        assert_eq!(a.authenticate("carol", "test12", LOCAL), Err(LoginError::InvalidCredentials));
        assert!(!a.delete_user("carol"));
    }
}
