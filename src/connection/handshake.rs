//! The connection handshake, from `connection.start` to `open-ok`:
//!
//! ```text
//!  protocol header   start-ok        (secure-ok)       tune-ok         open
//! ----------------> Starting ----> Securing ----> Tuning ----> Opening ----> open
//!   connection.start          (empty PLAIN)   connection.tune   heartbeats
//!                                                               start here
//! ```
//!
//! A [`Handshake`] lives only until the connection is open. Each method the
//! client sends on channel 0 is one [`Handshake::step`], which says what
//! happened ([`Step`]): a reply to send, tuned (start the heartbeats with
//! this T), opened (here is the virtual host and what was settled), or
//! failed. The connection acts on it; the handshake never touches the socket.
//! The rest of this file is pure functions: what the server announces in
//! `connection.start`, how SASL responses are read, how `tune-ok` is
//! validated.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{error, info};

use super::channel::ClientCapabilities;
use super::ending::Stop;
use super::texts::erlang_binary;
use super::Phase;
use crate::broker::access::LoginError;
use crate::broker::connections::ConnectionEntry;
use crate::broker::inspect::ConnectionDetails;
use crate::broker::{Broker, VirtualHost};
use crate::config::tls::AuthMechanism;
use crate::error::AmqpError;
use crate::logging::Escaped;
use crate::protocol::constants::FRAME_MIN_SIZE;
use crate::protocol::field_table::{parse_table_body, FieldTable, FieldValue};
use crate::protocol::methods::{connection, Method};

/// A connection between its protocol header and `connection.open`.
pub struct Handshake {
    phase: Phase,
    /// What the server proposes in `connection.tune`.
    proposed: Limits,
    /// Loopback-only users are checked against the client's address.
    peer: IpAddr,
    entry: Arc<ConnectionEntry>,
    mechanism: String,
    /// Known once authenticated.
    user: String,
    client_properties: FieldTable,
    capabilities: ClientCapabilities,
    /// What the client settled in `tune-ok`.
    tuned: Limits,
    /// The SASL mechanisms offered in `connection.start`; a client that
    /// picks another is refused.
    offered: Vec<AuthMechanism>,
}

/// What one handshake step came to.
pub enum Step {
    /// Send this on channel 0 and wait for the next method.
    Reply(Method),
    /// `tune-ok` accepted: these are the connection's limits, and its
    /// heartbeat T (0: none) starts now.
    Tuned(Limits),
    /// `connection.open` accepted: the handshake is over.
    Opened(Opened),
    Failed(Stop),
}

/// A handshake that succeeded.
pub struct Opened {
    pub vhost: Arc<VirtualHost>,
    pub details: ConnectionDetails,
    pub capabilities: ClientCapabilities,
}

impl Handshake {
    /// `configured`: `auth_mechanisms`, of which EXTERNAL is offered only
    /// to a TLS client that presented a verified certificate (as RabbitMQ's
    /// `rabbit_auth_mechanism_ssl:should_offer`).
    pub fn new(proposed: Limits, peer: IpAddr, entry: Arc<ConnectionEntry>, configured: &[AuthMechanism]) -> Handshake {
        let has_cert = entry.tls().is_some_and(|t| t.peer_cert_cn.is_some());
        let offered = configured.iter().copied().filter(|m| *m != AuthMechanism::External || has_cert).collect();
        Handshake {
            offered,
            phase: Phase::Starting,
            proposed,
            peer,
            entry,
            mechanism: String::new(),
            user: String::new(),
            client_properties: FieldTable::new(),
            capabilities: ClientCapabilities::default(),
            tuned: Limits { channel_max: 0, frame_max: FRAME_MIN_SIZE, heartbeat: 0 },
        }
    }

    /// The mechanisms offered, space-separated, for `connection.start`.
    pub fn mechanisms(&self) -> String {
        self.offered.iter().map(|m| m.name()).collect::<Vec<_>>().join(" ")
    }

    /// Starting, Securing, Tuning or Opening.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The authenticated user, or "" before authentication.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Takes one method the client sent on channel 0.
    pub fn step(&mut self, method: Method, broker: &Broker) -> Step {
        match (self.phase, method) {
            (Phase::Starting, Method::ConnectionStartOk(m)) => self.start_ok(m, broker),
            (Phase::Securing, Method::ConnectionSecureOk(m)) => {
                let mechanism = self.mechanism.clone();
                self.authenticate(mechanism.as_bytes(), &m.response, broker)
            }
            (Phase::Tuning, Method::ConnectionTuneOk(m)) => self.tune_ok(m),
            (Phase::Opening, Method::ConnectionOpen(m)) => self.open(m, broker),
            // Before tune-ok RabbitMQ closes the socket without a word.
            (phase @ (Phase::Starting | Phase::Securing | Phase::Tuning), method) => Step::Failed(Stop::Silent(
                format!("unexpected method {} in connection state {}", method.name(), phase.name()),
            )),
            (phase, method) => Step::Failed(Stop::Error(
                AmqpError::channel_error(format!("unexpected method in connection state {}", phase.name()))
                    .during(method.ids()),
            )),
        }
    }

    fn start_ok(&mut self, m: connection::StartOk, broker: &Broker) -> Step {
        if let Some(name) = m.client_properties.get("connection_name").and_then(FieldValue::as_bytes) {
            let name = String::from_utf8_lossy(name).into_owned();
            info!("connection {} has a client-provided name: {}", self.entry.name, Escaped(&name));
            self.entry.set_client_name(name);
        }
        self.capabilities = ClientCapabilities::from_client_properties(&m.client_properties);
        self.client_properties = m.client_properties;
        self.mechanism = m.mechanism.to_string();
        if m.mechanism.as_bytes() == b"PLAIN" && m.response.is_empty() {
            // SASL PLAIN without an initial response: ask for it.
            self.phase = Phase::Securing;
            return Step::Reply(connection::Secure { challenge: Bytes::new() }.into());
        }
        self.authenticate(m.mechanism.as_bytes(), &m.response, broker)
    }

    fn authenticate(&mut self, mechanism: &[u8], response: &Bytes, broker: &Broker) -> Step {
        let offered =
            std::str::from_utf8(mechanism).ok().and_then(AuthMechanism::parse).filter(|m| self.offered.contains(m));
        let Some(offered) = offered else {
            let m = String::from_utf8_lossy(mechanism);
            return Step::Failed(Stop::Silent(format!("unknown authentication mechanism '{m}'")));
        };
        let (credentials, result) = if offered == AuthMechanism::External {
            // The user is the certificate's common name; the response,
            // whatever it holds, is not a password (RabbitMQ ignores it).
            let user = self.entry.tls().and_then(|t| t.peer_cert_cn.clone()).unwrap_or_default();
            let result = broker.access.authenticate_external(&user, self.peer);
            (Credentials { username: user, password: String::new() }, result)
        } else {
            let credentials = match parse_response(mechanism, response) {
                Ok(c) => c,
                Err(AuthError::UnknownMechanism(m)) => {
                    return Step::Failed(Stop::Silent(format!("unknown authentication mechanism '{m}'")));
                }
                Err(AuthError::Malformed(why)) => return Step::Failed(Stop::Silent(why)),
            };
            let result = broker.access.authenticate(&credentials.username, &credentials.password, self.peer);
            (credentials, result)
        };
        if let Err(e) = result {
            let why = match e {
                LoginError::InvalidCredentials => "invalid credentials",
                LoginError::LoopbackOnly => "User can only log in via localhost",
            };
            error!(
                "Error on AMQP connection <0.{}.0> ({}, state: starting): {} login refused: user '{}' - {why}",
                self.entry.id,
                self.entry.name,
                Escaped(&self.mechanism),
                Escaped(&credentials.username)
            );
            if self.capabilities.authentication_failure_close {
                return Step::Failed(Stop::Error(login_refused(&self.mechanism)));
            }
            return Step::Failed(Stop::Silent("login refused".into()));
        }
        self.user = credentials.username;
        self.phase = Phase::Tuning;
        let l = self.proposed;
        Step::Reply(
            connection::Tune { channel_max: l.channel_max, frame_max: l.frame_max, heartbeat: l.heartbeat }.into(),
        )
    }

    fn tune_ok(&mut self, m: connection::TuneOk) -> Step {
        if let Err(e) = validate_tune_ok(self.proposed, &m) {
            // RabbitMQ logs this and drops the socket 3 s later without a
            // close frame; warren tells the client why (see README).
            return Step::Failed(Stop::Error(e.during(connection::TuneOk::IDS)));
        }
        self.tuned = Limits { channel_max: m.channel_max, frame_max: m.frame_max, heartbeat: m.heartbeat };
        self.phase = Phase::Opening;
        Step::Tuned(self.tuned)
    }

    fn open(&mut self, m: connection::Open, broker: &Broker) -> Step {
        let refused =
            |text: String| Step::Failed(Stop::Error(AmqpError::not_allowed(text).during(connection::Open::IDS)));
        let Some(vhost) = broker.vhost(&m.virtual_host) else {
            return refused(format!("vhost {} not found", m.virtual_host));
        };
        if let Some(max) = broker.config.connection_max {
            // Counted as RabbitMQ counts it: every accepted connection,
            // this one included.
            if broker.connections.len() > max {
                return refused(format!("connection refused: node connection limit ({max}) is reached"));
            }
        }
        if let Err(e) = broker.access.check_vhost(&self.user, &vhost.name.to_string()) {
            return Step::Failed(Stop::Error(e.during(connection::Open::IDS)));
        }
        info!(
            "connection {}: user '{}' authenticated and granted access to vhost '{}'",
            self.entry.name,
            Escaped(&self.user),
            Escaped(&vhost.name.as_str_lossy())
        );
        let details = ConnectionDetails {
            user: self.user.clone(),
            mechanism: self.mechanism.clone(),
            vhost: m.virtual_host.to_string(),
            client_properties: std::mem::take(&mut self.client_properties),
            channel_max: self.tuned.channel_max,
            frame_max: self.tuned.frame_max,
            heartbeat: self.tuned.heartbeat,
        };
        Step::Opened(Opened { vhost, details, capabilities: self.capabilities })
    }
}

/// Mechanisms offered by default, in RabbitMQ's order. py-amqp picks
/// AMQPLAIN from this list, kombu and most others PLAIN.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// `connection.start` with warren's server properties. The capabilities
/// table is honest: it lists only what warren implements, because clients
/// act on it (pika refuses `confirm_delivery` without `publisher_confirms`,
/// aiormq reads the table directly).
pub fn start_method(mechanisms: &str) -> connection::Start {
    let capabilities = FieldTable::new()
        .with("publisher_confirms", FieldValue::Bool(true))
        .with("exchange_exchange_bindings", FieldValue::Bool(true))
        .with("basic.nack", FieldValue::Bool(true))
        .with("consumer_cancel_notify", FieldValue::Bool(true))
        .with("connection.blocked", FieldValue::Bool(true))
        .with("consumer_priorities", FieldValue::Bool(true))
        .with("authentication_failure_close", FieldValue::Bool(true))
        .with("per_consumer_qos", FieldValue::Bool(true))
        .with("direct_reply_to", FieldValue::Bool(false));
    let text = |s: &'static str| FieldValue::LongStr(Bytes::from_static(s.as_bytes()));
    let server_properties = FieldTable::new()
        .with("capabilities", FieldValue::Table(capabilities))
        .with("cluster_name", text("warren"))
        .with("copyright", text("Copyright (c) the warren authors"))
        .with("information", text("warren: a small, fast AMQP 0-9-1 broker that behaves like RabbitMQ on the wire"))
        .with("platform", text("Rust"))
        .with("product", text("warren"))
        .with("version", text(env!("CARGO_PKG_VERSION")));
    connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties,
        mechanisms: Bytes::from(mechanisms.to_string()),
        locales: Bytes::from_static(b"en_US"),
    }
}

/// Credentials read from a SASL response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Why a `start-ok` could not be turned into credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A mechanism warren did not offer.
    UnknownMechanism(String),
    /// A response that does not parse (RabbitMQ: syntax_error).
    Malformed(String),
}

/// Reads the response of PLAIN (`authzid \0 user \0 password`, RFC 4616) or
/// AMQPLAIN (a field table *without* its length prefix, with `LOGIN` and
/// `PASSWORD`).
pub fn parse_response(mechanism: &[u8], response: &Bytes) -> Result<Credentials, AuthError> {
    match mechanism {
        b"PLAIN" => {
            let mut parts = response.split(|&b| b == 0);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(_authzid), Some(user), Some(pass), None) => Ok(Credentials {
                    username: String::from_utf8_lossy(user).into_owned(),
                    password: String::from_utf8_lossy(pass).into_owned(),
                }),
                _ => Err(AuthError::Malformed(format!("response {} invalid", erlang_binary(response, usize::MAX)))),
            }
        }
        b"AMQPLAIN" => {
            let table = parse_table_body(response, response)
                .map_err(|e| AuthError::Malformed(format!("AMQPLAIN auth info is not a field table: {e}")))?;
            let field =
                |k: &str| table.get(k).and_then(FieldValue::as_bytes).map(|b| String::from_utf8_lossy(b).into_owned());
            match (table.get("LOGIN"), table.get("PASSWORD")) {
                (Some(_), Some(_)) => match (field("LOGIN"), field("PASSWORD")) {
                    (Some(username), Some(password)) => Ok(Credentials { username, password }),
                    _ => Err(AuthError::Malformed(
                        "AMQPLAIN auth info uses unsupported type for LOGIN or PASSWORD field".into(),
                    )),
                },
                _ => Err(AuthError::Malformed("AMQPLAIN auth info is missing LOGIN or PASSWORD field".into())),
            }
        }
        other => Err(AuthError::UnknownMechanism(String::from_utf8_lossy(other).into_owned())),
    }
}

/// The text a client with `authentication_failure_close` gets (403).
pub fn login_refused(mechanism: &str) -> AmqpError {
    AmqpError::access_refused(format!(
        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
    ))
}

/// What the server proposes in `connection.tune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// RabbitMQ's `tune-ok` checks: frame_max first, then channel_max. Neither
/// may be 0 (no limit) or above the server's value (when the server has
/// one), and frame_max may not be below the minimum. The heartbeat is taken
/// as sent, whatever it is.
pub fn validate_tune_ok(server: Limits, tune_ok: &connection::TuneOk) -> Result<(), AmqpError> {
    fn check(field: &str, min: u64, server: u64, client: u64, no_limit_note: &str) -> Result<(), AmqpError> {
        if client != 0 && client < min {
            return Err(AmqpError::not_allowed(format!(
                "negotiated {field} = {client} is lower than the minimum allowed value ({min})"
            )));
        }
        if server != 0 && (client == 0 || client > server) {
            let detail = if client == 0 { no_limit_note } else { "" };
            return Err(AmqpError::not_allowed(format!(
                "negotiated {field} = {client}{detail} is higher than the maximum allowed value ({server})"
            )));
        }
        Ok(())
    }
    check("frame_max", FRAME_MIN_SIZE.into(), server.frame_max.into(), tune_ok.frame_max.into(), "")?;
    check("channel_max", 1, server.channel_max.into(), tune_ok.channel_max.into(), " (no limit)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ReplyCode;

    const SERVER: Limits = Limits { channel_max: 2047, frame_max: 131_072, heartbeat: 60 };

    fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> connection::TuneOk {
        connection::TuneOk { channel_max, frame_max, heartbeat }
    }

    #[test]
    fn tune_ok_validation_texts() {
        let text = |t| validate_tune_ok(SERVER, &t).unwrap_err().message;
        assert_eq!(
            text(tune_ok(2047, 4096, 60)),
            "negotiated frame_max = 4096 is lower than the minimum allowed value (8192)"
        );
        assert_eq!(
            text(tune_ok(2047, 200_000, 60)),
            "negotiated frame_max = 200000 is higher than the maximum allowed value (131072)"
        );
        assert_eq!(
            text(tune_ok(2047, 0, 60)),
            "negotiated frame_max = 0 is higher than the maximum allowed value (131072)"
        );
        assert_eq!(
            text(tune_ok(0, 131_072, 60)),
            "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"
        );
        assert_eq!(
            text(tune_ok(4000, 131_072, 60)),
            "negotiated channel_max = 4000 is higher than the maximum allowed value (2047)"
        );
        assert_eq!(validate_tune_ok(SERVER, &tune_ok(2047, 8192, 0)), Ok(()));
        // The heartbeat is never validated: above the proposal is fine.
        assert_eq!(validate_tune_ok(SERVER, &tune_ok(1, 131_072, 600)), Ok(()));
        assert_eq!(validate_tune_ok(SERVER, &tune_ok(0, 0, 0)).unwrap_err().code, ReplyCode::NotAllowed);
    }

    #[test]
    fn plain_and_amqplain_responses() {
        let plain = parse_response(b"PLAIN", &Bytes::from_static(b"\0guest\0secret")).unwrap();
        assert_eq!(plain, Credentials { username: "guest".into(), password: "secret".into() });
        assert!(matches!(parse_response(b"PLAIN", &Bytes::from_static(b"guest")), Err(AuthError::Malformed(_))));
        // LOGIN S "guest", PASSWORD S "guest", with no table length prefix.
        let amqplain = Bytes::from_static(b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest");
        let c = parse_response(b"AMQPLAIN", &amqplain).unwrap();
        assert_eq!(c.username, "guest");
        assert_eq!(c.password, "guest");
        assert_eq!(parse_response(b"EXTERNAL", &Bytes::new()), Err(AuthError::UnknownMechanism("EXTERNAL".into())));
    }
}
