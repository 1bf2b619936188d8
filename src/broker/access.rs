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

use std::collections::HashMap;
use std::net::IpAddr;

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::config::{Config, PasswordConfig};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::ShortStr;

/// One permission expression.
#[derive(Debug, Clone)]
enum Pattern {
    /// `""`: nothing.
    Nothing,
    /// `.*` and the like: everything, without running a regex per publish.
    Anything,
    Regex(Regex),
}

impl Pattern {
    fn new(source: &str) -> Result<Pattern, String> {
        Ok(match source {
            "" => Pattern::Nothing,
            ".*" | "^.*" | ".*$" | "^.*$" => Pattern::Anything,
            _ => Pattern::Regex(Regex::new(source).map_err(|e| format!("invalid permission regex '{source}': {e}"))?),
        })
    }

    fn matches(&self, name: &[u8]) -> bool {
        match self {
            Pattern::Nothing => false,
            Pattern::Anything => true,
            Pattern::Regex(r) => r.is_match(&String::from_utf8_lossy(name)),
        }
    }
}

#[derive(Debug, Clone)]
struct Permission {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
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

#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    users: HashMap<String, User>,
    loopback_users: Vec<String>,
}

impl AccessControl {
    pub fn from_config(config: &Config) -> Result<AccessControl, String> {
        let mut users = HashMap::new();
        for u in &config.users {
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
            users.insert(u.name.clone(), User { password, permissions: HashMap::new(), tags: u.tags.clone() });
        }
        for p in &config.permissions {
            let user = users.get_mut(&p.user).ok_or_else(|| format!("permissions for unknown user '{}'", p.user))?;
            let permission = Permission {
                configure: Pattern::new(&p.configure)?,
                write: Pattern::new(&p.write)?,
                read: Pattern::new(&p.read)?,
            };
            user.permissions.insert(p.vhost.clone(), permission);
        }
        Ok(AccessControl { users, loopback_users: config.loopback_users.clone() })
    }

    /// Checks a user's password, and that a loopback-only user is local.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<(), LoginError> {
        let Some(u) = self.users.get(user) else { return Err(LoginError::InvalidCredentials) };
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
        if self.loopback_users.iter().any(|l| l == user) && !is_loopback(peer) {
            return Err(LoginError::LoopbackOnly);
        }
        Ok(())
    }

    /// The user's tags (empty for an unknown user).
    pub fn tags(&self, user: &str) -> &[String] {
        self.users.get(user).map_or(&[], |u| &u.tags)
    }

    /// Whether the user has any permission entry for the virtual host: what
    /// lets it open the vhost, and see it in the management API.
    pub fn has_vhost(&self, user: &str, vhost: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.permissions.contains_key(vhost))
    }

    /// `connection.open`: 530 unless the user has permissions in the vhost.
    pub fn check_vhost(&self, user: &str, vhost: &str) -> AmqpResult<()> {
        match self.users.get(user) {
            Some(u) if u.permissions.contains_key(vhost) => Ok(()),
            _ => Err(AmqpError::not_allowed(format!("access to vhost '{vhost}' refused for user '{user}'"))),
        }
    }

    /// 403 unless `user` has `access` to the resource (`kind` is `queue` or
    /// `exchange`; the default exchange is named `amq.default` here).
    pub fn check(&self, user: &str, vhost: &str, access: Access, kind: &str, name: &ShortStr) -> AmqpResult<()> {
        let name_bytes: &[u8] = if kind == "exchange" && name.is_empty() { b"amq.default" } else { name.as_bytes() };
        let permitted = self.users.get(user).and_then(|u| u.permissions.get(vhost)).is_some_and(|p| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PermissionConfig, UserConfig};

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
}
