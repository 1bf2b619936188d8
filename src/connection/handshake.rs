//! The pieces of the connection handshake that are pure functions: what the
//! server announces in `connection.start`, how SASL responses are read, how
//! `tune-ok` is validated, and the texts RabbitMQ writes about it all.

use std::time::Duration;

use bytes::Bytes;

use crate::error::AmqpError;
use crate::protocol::constants::FRAME_MIN_SIZE;
use crate::protocol::field_table::{parse_table_body, FieldTable, FieldValue};
use crate::protocol::methods::connection;

/// Mechanisms offered, in RabbitMQ's order. py-amqp picks AMQPLAIN from this
/// list, kombu and most others PLAIN; only list what works.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// `connection.start` with warren's server properties. The capabilities
/// table is honest: it lists only what warren implements, because clients
/// act on it (pika refuses `confirm_delivery` without `publisher_confirms`,
/// aiormq reads the table directly).
pub fn start_method() -> connection::Start {
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
        mechanisms: Bytes::from_static(MECHANISMS.as_bytes()),
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

/// A connection's age as RabbitMQ prints it: `850ms`, `12s`, `2M, 3s`,
/// `1H, 0M, 5s`, `2D, 1H, 0M, 5s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}D, {hours}H, {minutes}M, {seconds}s")
    } else if hours > 0 {
        format!("{hours}H, {minutes}M, {seconds}s")
    } else if minutes > 0 {
        format!("{minutes}M, {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Prints octets the way Erlang's `~p` prints a binary, as RabbitMQ's frame
/// error texts do: `<<"abc">>` when printable, else `<<1,2,3>>`; at most
/// `limit` octets.
pub fn erlang_binary(data: &[u8], limit: usize) -> String {
    let data = &data[..data.len().min(limit)];
    if !data.is_empty() && data.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        let escaped: String = data
            .iter()
            .flat_map(|&b| match b {
                b'"' => vec!['\\', '"'],
                b'\\' => vec!['\\', '\\'],
                _ => vec![b as char],
            })
            .collect();
        format!("<<\"{escaped}\">>")
    } else {
        let parts: Vec<String> = data.iter().map(u8::to_string).collect();
        format!("<<{}>>", parts.join(","))
    }
}

/// RabbitMQ's payload snippet in frame errors: `all octets = <<...>>` for
/// 16 octets or fewer, else `first 16 octets = <<...>>`.
pub fn payload_snippet(payload: &[u8]) -> String {
    if payload.len() <= 16 {
        format!("all octets = {}", erlang_binary(payload, 16))
    } else {
        format!("first 16 octets = {}", erlang_binary(payload, 16))
    }
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

    #[test]
    fn durations_and_snippets_as_rabbitmq_prints_them() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_secs(12)), "12s");
        assert_eq!(format_duration(Duration::from_secs(123)), "2M, 3s");
        assert_eq!(format_duration(Duration::from_secs(3605)), "1H, 0M, 5s");
        assert_eq!(payload_snippet(b""), "all octets = <<>>");
        assert_eq!(payload_snippet(b"abc"), "all octets = <<\"abc\">>");
        assert_eq!(payload_snippet(&[0, 10, 0, 10]), "all octets = <<0,10,0,10>>");
        assert!(payload_snippet(&[1; 20]).starts_with("first 16 octets = <<1,1,"));
    }
}
