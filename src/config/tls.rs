//! The TLS settings, read from RabbitMQ's keys:
//!
//! | key | default | meaning |
//! |-----|---------|---------|
//! | `listeners.ssl.default` | none | the amqps listener: port, or `ip:port` (5671 by convention) |
//! | `listeners.tcp` | | `none`: no plain listener (TLS only) |
//! | `ssl_options.certfile`, `ssl_options.keyfile` | | the server's certificate chain and key (PEM) |
//! | `ssl_options.cacertfile` | | the certificate authorities that client certificates must chain to (PEM) |
//! | `ssl_options.verify` | `verify_none` | `verify_peer`: ask for a client certificate and check it |
//! | `ssl_options.fail_if_no_peer_cert` | `false` | with `verify_peer`: refuse a client without a certificate |
//! | `ssl_options.versions.N` | TLS 1.2 and 1.3 | `tlsv1.3`, `tlsv1.2` (older versions are refused, with a warning) |
//! | `ssl_handshake_timeout` | `5000` | ms for a client to finish the TLS handshake |
//! | `auth_mechanisms.N` | `PLAIN`, `AMQPLAIN` | SASL mechanisms offered, in order: `PLAIN`, `AMQPLAIN`, `EXTERNAL` |
//! | `ssl_cert_login_from` | `common_name` | EXTERNAL takes the user name from the client certificate's subject CN |
//!
//! Other `ssl_options.*` keys (`depth`, `password`, `ciphers.N`,
//! `honor_cipher_order`, ...) are warned about by name: warren does not
//! honour them, and says so rather than ignoring them in silence.

use std::path::PathBuf;
use std::time::Duration;

use super::{parse_listener, Config, ConfigError, ConfigWarning};

/// What the TLS listener is set up with (`ssl_options.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct SslOptions {
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cacertfile: Option<PathBuf>,
    pub verify: Verify,
    pub fail_if_no_peer_cert: bool,
    /// The TLS versions allowed; empty for both of those warren speaks.
    pub versions: Vec<TlsVersion>,
    /// From accept to the end of the TLS handshake (`ssl_handshake_timeout`).
    pub handshake_timeout: Duration,
}

impl Default for SslOptions {
    fn default() -> Self {
        SslOptions {
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: Verify::None,
            fail_if_no_peer_cert: false,
            versions: Vec::new(),
            handshake_timeout: Duration::from_millis(5_000),
        }
    }
}

/// `ssl_options.verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No client certificate is asked for.
    None,
    /// A client certificate is asked for and, if given, must chain to
    /// `cacertfile`.
    Peer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// A SASL mechanism (`auth_mechanisms.N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    AmqPlain,
    /// The user named by the client certificate's subject CN, with no
    /// password (RabbitMQ's `rabbitmq_auth_mechanism_ssl`). Offered only on
    /// a TLS connection whose client presented a verified certificate.
    External,
}

impl AuthMechanism {
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::AmqPlain => "AMQPLAIN",
            AuthMechanism::External => "EXTERNAL",
        }
    }

    pub fn parse(name: &str) -> Option<AuthMechanism> {
        [AuthMechanism::Plain, AuthMechanism::AmqPlain, AuthMechanism::External].into_iter().find(|m| m.name() == name)
    }

    /// RabbitMQ's default list.
    pub fn defaults() -> Vec<AuthMechanism> {
        vec![AuthMechanism::Plain, AuthMechanism::AmqPlain]
    }
}

/// `ssl_options.*` keys RabbitMQ knows and warren does not honour.
const NOT_HONOURED: &[&str] = &[
    "depth",
    "password",
    "honor_cipher_order",
    "honor_ecc_order",
    "secure_renegotiate",
    "reuse_sessions",
    "client_renegotiation",
    "crl_check",
    "hibernate_after",
    "log_level",
    "sni",
    "dhfile",
];

/// The keys this file reads.
pub(super) fn handles(key: &str) -> bool {
    key == "listeners.tcp"
        || key == "listeners.ssl"
        || key.starts_with("listeners.ssl.")
        || key.starts_with("ssl_options.")
        || key.starts_with("auth_mechanisms.")
        || key == "ssl_handshake_timeout"
        || key == "ssl_cert_login_from"
}

/// Applies one TLS key of a `rabbitmq.conf` (see the table above).
/// `auth_mechanisms.N` lines build a new list: the first one replaces the
/// defaults (`listed` says whether one was seen).
pub(super) fn apply(
    config: &mut Config,
    key: &str,
    value: &str,
    line: usize,
    listed: &mut bool,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<(), ConfigError> {
    let bad = |what: &str| ConfigError(format!("line {line}: invalid value '{value}' for '{key}': {what}"));
    let flag = || match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad("expected true or false")),
    };
    let warn = |warnings: &mut Vec<ConfigWarning>, reason: &'static str| {
        warnings.push(ConfigWarning { line, key: format!("{key} = {value}"), reason })
    };
    match key {
        "listeners.tcp" if value == "none" => config.tcp_listener = false,
        "listeners.tcp" => return Err(bad("expected none, or listeners.tcp.default = port")),
        "listeners.ssl" if value == "none" => config.tls_listen = None,
        "listeners.ssl" => return Err(bad("expected none, or listeners.ssl.default = port")),
        "listeners.ssl.default" | "listeners.ssl.1" => {
            config.tls_listen = Some(parse_listener(value).ok_or_else(|| bad("expected a port or ip:port"))?);
        }
        "ssl_options.certfile" => config.ssl_options.certfile = Some(PathBuf::from(value)),
        "ssl_options.keyfile" => config.ssl_options.keyfile = Some(PathBuf::from(value)),
        "ssl_options.cacertfile" => config.ssl_options.cacertfile = Some(PathBuf::from(value)),
        "ssl_options.verify" => {
            config.ssl_options.verify = match value {
                "verify_peer" => Verify::Peer,
                "verify_none" => Verify::None,
                _ => return Err(bad("expected verify_peer or verify_none")),
            }
        }
        "ssl_options.fail_if_no_peer_cert" => config.ssl_options.fail_if_no_peer_cert = flag()?,
        "ssl_handshake_timeout" => {
            let ms: u64 = value.parse().map_err(|_| bad("expected milliseconds"))?;
            config.ssl_options.handshake_timeout = Duration::from_millis(ms.max(1));
        }
        k if k.starts_with("ssl_options.versions.") => match value.trim_matches('\'') {
            "tlsv1.3" => config.ssl_options.versions.push(TlsVersion::Tls13),
            "tlsv1.2" => config.ssl_options.versions.push(TlsVersion::Tls12),
            "tlsv1.1" | "tlsv1" | "sslv3" => {
                warn(warnings, "a TLS version warren does not speak (TLS 1.2 and 1.3 only), left out:")
            }
            _ => return Err(bad("expected tlsv1.3 or tlsv1.2")),
        },
        k if k.starts_with("auth_mechanisms.") => {
            if !*listed {
                config.auth_mechanisms.clear();
                *listed = true;
            }
            match AuthMechanism::parse(value) {
                Some(m) if !config.auth_mechanisms.contains(&m) => config.auth_mechanisms.push(m),
                Some(_) => {}
                None => warn(
                    warnings,
                    "an authentication mechanism warren does not have (PLAIN, AMQPLAIN, EXTERNAL), ignored:",
                ),
            }
        }
        "ssl_cert_login_from" if value == "common_name" => {}
        "ssl_cert_login_from" => {
            warn(warnings, "not supported by warren (it takes the user name from the common name only), ignored:")
        }
        k if k.starts_with("ssl_options.ciphers.") => {
            warn(warnings, "not supported by warren (rustls chooses among its own safe cipher suites), ignored:")
        }
        k if NOT_HONOURED.contains(&k.trim_start_matches("ssl_options.")) && k.starts_with("ssl_options.") => {
            warn(warnings, "not supported by warren, ignored:")
        }
        k => warnings.push(ConfigWarning { line, key: k.to_string(), reason: "unknown key, ignored:" }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rabbitmqs_tls_keys_and_names_those_it_does_not_honour() {
        let mut c = Config::default();
        let warnings = c
            .apply(
                "listeners.tcp = none\nlisteners.ssl.default = 5671\n\
                 ssl_options.cacertfile = /certs/ca.pem\nssl_options.certfile = /certs/server.pem\n\
                 ssl_options.keyfile = /certs/server.key\nssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\nssl_options.versions.1 = tlsv1.3\n\
                 ssl_options.versions.2 = tlsv1.1\nssl_options.depth = 2\nssl_options.password = secret\n\
                 ssl_options.ciphers.1 = ECDHE-ECDSA-AES256-GCM-SHA384\nssl_handshake_timeout = 3000\n\
                 auth_mechanisms.1 = EXTERNAL\nauth_mechanisms.2 = PLAIN\nauth_mechanisms.3 = RABBIT-CR-DEMO\n\
                 ssl_cert_login_from = distinguished_name\nssl_options.what = 1\n",
            )
            .unwrap();
        assert!(!c.tcp_listener);
        assert_eq!(c.tls_listen, Some("127.0.0.1:5671".parse().unwrap()));
        let o = &c.ssl_options;
        assert_eq!(o.certfile.as_deref(), Some(std::path::Path::new("/certs/server.pem")));
        assert_eq!((o.verify, o.fail_if_no_peer_cert), (Verify::Peer, true));
        assert_eq!(o.versions, [TlsVersion::Tls13]);
        assert_eq!(o.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.auth_mechanisms, [AuthMechanism::External, AuthMechanism::Plain]);
        let named: Vec<(usize, &str)> = warnings.iter().map(|w| (w.line, w.key.as_str())).collect();
        assert_eq!(
            named,
            [
                (9, "ssl_options.versions.2 = tlsv1.1"),
                (10, "ssl_options.depth = 2"),
                (11, "ssl_options.password = secret"),
                (12, "ssl_options.ciphers.1 = ECDHE-ECDSA-AES256-GCM-SHA384"),
                (16, "auth_mechanisms.3 = RABBIT-CR-DEMO"),
                (17, "ssl_cert_login_from = distinguished_name"),
                (18, "ssl_options.what"),
            ]
        );
    }

    #[test]
    fn bad_tls_values_are_readable_errors() {
        for (text, says) in [
            ("ssl_options.verify = maybe", "expected verify_peer or verify_none"),
            ("ssl_options.fail_if_no_peer_cert = yes", "expected true or false"),
            ("listeners.ssl.default = nowhere", "expected a port or ip:port"),
            ("listeners.tcp = off", "expected none"),
            ("ssl_options.versions.1 = tlsv9", "expected tlsv1.3 or tlsv1.2"),
        ] {
            let e = Config::default().apply(text).unwrap_err();
            assert!(e.0.contains(says) && e.0.starts_with("line 1:"), "{text}: {e}");
        }
    }
}
