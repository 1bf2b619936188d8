//! Content headers (spec 4.2.6) and the 14 basic properties.
//!
//! A content header carries the class, the body size and a property list
//! introduced by 16-bit flag words. The broker almost never needs the
//! properties, so [`ContentHeader`] keeps them as raw bytes (flags included)
//! and passes them to consumers untouched, as RabbitMQ's command assembler
//! does; [`BasicProperties::decode`] reads them when someone asks.
//!
//! Passing bytes on unread must not mean passing garbage on: every publish
//! is checked with [`check`] (which builds nothing), so that a property list
//! that does not parse, sets flags no basic property has, or carries octets
//! after its last property is refused at the door rather than delivered to
//! consumers whose client library would choke on it. After that check,
//! every later decode of the same bytes succeeds.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, Decoder, Encoder, ShortStr};
use super::field_table::FieldTable;

/// A decoded content header frame payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    /// Property flags and property list exactly as received.
    pub raw_properties: Bytes,
}

impl ContentHeader {
    pub fn decode(payload: &Bytes) -> Result<ContentHeader, DecodeError> {
        let mut d = Decoder::new(payload);
        let class_id = d.short()?;
        let _weight = d.short()?;
        let body_size = d.longlong()?;
        let raw_properties = d.take(d.remaining())?;
        if raw_properties.len() < 2 {
            return Err(DecodeError::new("content header without property flags"));
        }
        Ok(ContentHeader { class_id, body_size, raw_properties })
    }

    pub fn properties(&self) -> Result<BasicProperties, DecodeError> {
        BasicProperties::decode(&self.raw_properties)
    }
}

/// The basic class's content properties. `None` means "flag not set".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    /// 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    pub timestamp: Option<u64>,
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

// Flag bits, most significant first, in property-list order.
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// The two low bits name no basic property (bit 0 would announce a second
/// flag word, which a class with 14 properties never needs).
const UNKNOWN_FLAGS: u16 = 0b11;

/// Raw properties with no flag set: what a publish without properties sends.
pub const EMPTY_PROPERTIES: &[u8] = &[0, 0];

/// The `priority` property, read without decoding the other properties
/// unless the flags say it is there.
pub fn message_priority(raw: &Bytes) -> Option<u8> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & PRIORITY == 0 {
        return None;
    }
    BasicProperties::decode(raw).ok()?.priority
}

/// The `delivery_mode` property (2: persistent), read by skipping the
/// three properties before it, without decoding anything else. `raw` is a
/// property list already checked (see [`check`]).
pub fn message_delivery_mode(raw: &[u8]) -> Option<u8> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & DELIVERY_MODE == 0 {
        return None;
    }
    let mut at = 2;
    for (flag, long) in [(CONTENT_TYPE, false), (CONTENT_ENCODING, false), (HEADERS, true)] {
        if flags & flag != 0 {
            at += if long {
                4 + u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize
            } else {
                1 + usize::from(*raw.get(at)?)
            };
        }
    }
    raw.get(at).copied()
}

/// The longest TTL RabbitMQ accepts, for `expiration`, `x-message-ttl` and
/// `x-expires`: ten years in milliseconds (`rabbit_misc:check_expiry`).
pub const MAX_EXPIRY_MS: i64 = 315_360_000_000;

/// Reads an `expiration` property as RabbitMQ does (`rabbit_basic:
/// parse_expiration`, Erlang's `string:to_integer`): an optional sign and
/// digits, nothing after them, from 0 to [`MAX_EXPIRY_MS`]. The error is
/// RabbitMQ's reason term, as its 406 text prints it.
pub fn parse_expiration(text: &[u8]) -> Result<u64, String> {
    let digits_from = usize::from(matches!(text.first(), Some(b'+' | b'-')));
    let digits = text[digits_from..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err("no_integer".into());
    }
    let end = digits_from + digits;
    if end < text.len() {
        return Err(format!("{{leftover_string,{:?}}}", String::from_utf8_lossy(&text[end..])));
    }
    let negative = text[0] == b'-';
    // More digits than an i64 holds are too large either way.
    let magnitude: i64 =
        std::str::from_utf8(&text[digits_from..end]).ok().and_then(|d| d.parse().ok()).unwrap_or(i64::MAX);
    // The integer as Erlang prints it: no plus sign, no leading zeros.
    let shown = || {
        let digits = String::from_utf8_lossy(&text[digits_from..end]);
        format!("{}{}", if negative { "-" } else { "" }, digits.trim_start_matches('0'))
    };
    match (negative, magnitude) {
        (_, 0) => Ok(0),
        (true, _) => Err(format!("{{value_negative,{}}}", shown())),
        (false, n) if n > MAX_EXPIRY_MS => Err(format!("{{value_too_large,{}}}", shown())),
        (false, n) => Ok(n as u64),
    }
}

/// The `expiration` property as sent, if the flags say it is there.
pub fn message_expiration_text(raw: &Bytes) -> Option<ShortStr> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & EXPIRATION == 0 {
        return None;
    }
    BasicProperties::decode(raw).ok()?.expiration
}

/// The per-message TTL from the `expiration` property (milliseconds as a
/// decimal string); None when absent. Publishes with an invalid one are
/// refused (see [`parse_expiration`]), so what is queued always reads.
pub fn message_expiration(raw: &Bytes) -> Option<std::time::Duration> {
    let expiration = message_expiration_text(raw)?;
    Some(std::time::Duration::from_millis(parse_expiration(expiration.as_bytes()).ok()?))
}

/// Checks a property list without building anything: known flags only,
/// every flagged property well formed (tables nested within bounds), no
/// octet left over.
pub fn check(raw: &[u8]) -> Result<(), DecodeError> {
    use nom::number::complete::{be_u16, be_u32, be_u8};
    type E<'a> = nom::error::Error<&'a [u8]>;
    let truncated = |what: &str| DecodeError::new(format!("truncated {what}"));
    let (mut i, flags) = be_u16::<_, E>(raw).map_err(|_| truncated("property flags"))?;
    if flags & UNKNOWN_FLAGS != 0 {
        return Err(DecodeError::new(format!("property flags {flags:#06x} set bits no basic property has")));
    }
    fn shortstr(i: &[u8]) -> Result<&[u8], DecodeError> {
        let (i, len) = be_u8::<_, E>(i).map_err(|_| DecodeError::new("truncated shortstr"))?;
        i.get(len as usize..).ok_or_else(|| DecodeError::new("truncated shortstr"))
    }
    fn fixed(i: &[u8], n: usize) -> Result<&[u8], DecodeError> {
        i.get(n..).ok_or_else(|| DecodeError::new("truncated property"))
    }
    for bit in (2..16).rev() {
        let flag = 1u16 << bit;
        if flags & flag == 0 {
            continue;
        }
        i = match flag {
            HEADERS => {
                be_u32::<_, E>(i).map_err(|_| truncated("headers"))?;
                super::field_table::skip_table(i)?
            }
            DELIVERY_MODE | PRIORITY => fixed(i, 1)?,
            TIMESTAMP => fixed(i, 8)?,
            _ => shortstr(i)?,
        };
    }
    if !i.is_empty() {
        return Err(DecodeError::new(format!("{} octets after the last property", i.len())));
    }
    Ok(())
}

impl BasicProperties {
    /// Decodes a property list, as strictly as [`check`] checks it.
    pub fn decode(raw: &Bytes) -> Result<BasicProperties, DecodeError> {
        check(raw)?;
        let mut d = Decoder::new(raw);
        let flags = d.short()?;
        let mut p = BasicProperties::default();
        macro_rules! read {
            ($flag:expr, $field:ident, $read:ident) => {
                if flags & $flag != 0 {
                    p.$field = Some(d.$read()?);
                }
            };
        }
        read!(CONTENT_TYPE, content_type, shortstr);
        read!(CONTENT_ENCODING, content_encoding, shortstr);
        read!(HEADERS, headers, table);
        read!(DELIVERY_MODE, delivery_mode, octet);
        read!(PRIORITY, priority, octet);
        read!(CORRELATION_ID, correlation_id, shortstr);
        read!(REPLY_TO, reply_to, shortstr);
        read!(EXPIRATION, expiration, shortstr);
        read!(MESSAGE_ID, message_id, shortstr);
        read!(TIMESTAMP, timestamp, longlong);
        read!(TYPE, kind, shortstr);
        read!(USER_ID, user_id, shortstr);
        read!(APP_ID, app_id, shortstr);
        read!(CLUSTER_ID, cluster_id, shortstr);
        debug_assert_eq!(d.remaining(), 0, "check() refuses trailing octets");
        Ok(p)
    }

    /// Flags and property list, as carried in a content header.
    pub fn encode(&self, buf: &mut BytesMut) {
        let flags_at = buf.len();
        buf.put_u16(0);
        let mut flags = 0u16;
        let mut e = Encoder::new(buf);
        macro_rules! write {
            ($flag:expr, $field:ident, $write:ident) => {
                if let Some(v) = &self.$field {
                    flags |= $flag;
                    e.$write(v);
                }
            };
            ($flag:expr, $field:ident, $write:ident, copy) => {
                if let Some(v) = self.$field {
                    flags |= $flag;
                    e.$write(v);
                }
            };
        }
        write!(CONTENT_TYPE, content_type, shortstr);
        write!(CONTENT_ENCODING, content_encoding, shortstr);
        write!(HEADERS, headers, table);
        write!(DELIVERY_MODE, delivery_mode, octet, copy);
        write!(PRIORITY, priority, octet, copy);
        write!(CORRELATION_ID, correlation_id, shortstr);
        write!(REPLY_TO, reply_to, shortstr);
        write!(EXPIRATION, expiration, shortstr);
        write!(MESSAGE_ID, message_id, shortstr);
        write!(TIMESTAMP, timestamp, longlong, copy);
        write!(TYPE, kind, shortstr);
        write!(USER_ID, user_id, shortstr);
        write!(APP_ID, app_id, shortstr);
        write!(CLUSTER_ID, cluster_id, shortstr);
        buf[flags_at..flags_at + 2].copy_from_slice(&flags.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::field_table::FieldValue;

    #[test]
    fn byte_literal_properties() {
        // content-type "text/plain", delivery-mode 2, timestamp 1.
        let raw = Bytes::from_static(b"\x90\x40\x0atext/plain\x02\x00\x00\x00\x00\x00\x00\x00\x01");
        let p = BasicProperties::decode(&raw).unwrap();
        assert_eq!(p.content_type, Some("text/plain".into()));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.timestamp, Some(1));
        assert_eq!(p.to_bytes(), raw);
    }

    #[test]
    fn all_fourteen_round_trip() {
        let p = BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers: Some(FieldTable::new().with("x", FieldValue::I32(1))),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("6000".into()),
            message_id: Some("m".into()),
            timestamp: Some(42),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("a".into()),
            cluster_id: Some("cl".into()),
        };
        assert_eq!(BasicProperties::decode(&p.to_bytes()).unwrap(), p);
    }

    #[test]
    fn broken_property_lists_are_refused() {
        let nested = {
            // headers {"n": F{"n": F{…}}} 200 levels deep
            let mut v: Vec<u8> = Vec::new();
            for _ in 0..200 {
                let mut t = b"\x01nF".to_vec();
                t.extend_from_slice(&(v.len() as u32).to_be_bytes());
                t.extend_from_slice(&v);
                v = t;
            }
            let mut raw = vec![0x20, 0x00];
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(&v);
            raw
        };
        for (raw, why) in [
            (&b"\x00\x01"[..], "property flags 0x0001 set bits no basic property has"),
            (&b"\x00\x02"[..], "property flags 0x0002 set bits no basic property has"),
            (&b"\x80\x00\x05ab"[..], "truncated shortstr"),
            (&b"\x10\x00"[..], "truncated property"),
            (&b"\x10\x00\x02x"[..], "1 octets after the last property"),
            (&b"\x20\x00\x00\x00\x00\x03\x01aZ"[..], "unknown field table type 'Z'"),
            (&nested[..], "field table nested deeper than 128 levels"),
        ] {
            assert_eq!(check(raw).unwrap_err().what, why, "{raw:?}");
            assert!(BasicProperties::decode(&Bytes::copy_from_slice(raw)).is_err());
        }
        assert!(check(EMPTY_PROPERTIES).is_ok());
    }

    #[test]
    fn expiration_reads_as_rabbitmq_reads_it() {
        for (text, expected) in [
            ("60000", Ok(60000)),
            ("+10", Ok(10)),
            ("0", Ok(0)),
            ("-0", Ok(0)),
            ("007", Ok(7)),
            ("315360000000", Ok(315_360_000_000)),
            ("315360000001", Err("{value_too_large,315360000001}")),
            ("99999999999999999999999", Err("{value_too_large,99999999999999999999999}")),
            ("-1", Err("{value_negative,-1}")),
            ("abc", Err("no_integer")),
            ("", Err("no_integer")),
            (" 10", Err("no_integer")),
            ("+", Err("no_integer")),
            ("10abc", Err("{leftover_string,\"abc\"}")),
            ("10 ", Err("{leftover_string,\" \"}")),
        ] {
            assert_eq!(parse_expiration(text.as_bytes()), expected.map_err(String::from), "{text:?}");
        }
    }

    #[test]
    fn content_header_keeps_raw_properties() {
        let payload = Bytes::from_static(b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x10\x00\x01");
        let h = ContentHeader::decode(&payload).unwrap();
        assert_eq!(h.class_id, 60);
        assert_eq!(h.body_size, 5);
        assert_eq!(&h.raw_properties[..], b"\x10\x00\x01");
        assert_eq!(h.properties().unwrap().delivery_mode, Some(1));
    }
}
