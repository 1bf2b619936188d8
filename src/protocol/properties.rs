//! Content headers (spec 4.2.6) and the 14 basic properties.
//!
//! A content header carries the class, the body size and a property list
//! introduced by 16-bit flag words. The broker almost never needs the
//! properties, so [`ContentHeader`] keeps them as raw bytes (flags included)
//! and passes them to consumers untouched, as RabbitMQ's command assembler
//! does; [`BasicProperties::decode`] reads them when someone asks.

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
/// Bit 0 says another flag word follows; basic has only 14 properties, so a
/// continuation carries nothing we know and is skipped.
const CONTINUATION: u16 = 1;

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

/// The per-message TTL from the `expiration` property (milliseconds as a
/// decimal string); None when absent or not a number, as RabbitMQ ignores it.
pub fn message_expiration(raw: &Bytes) -> Option<std::time::Duration> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & EXPIRATION == 0 {
        return None;
    }
    let expiration = BasicProperties::decode(raw).ok()?.expiration?;
    let ms: u64 = std::str::from_utf8(expiration.as_bytes()).ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

impl BasicProperties {
    pub fn decode(raw: &Bytes) -> Result<BasicProperties, DecodeError> {
        let mut d = Decoder::new(raw);
        let flags = d.short()?;
        let mut extra = flags;
        while extra & CONTINUATION != 0 {
            extra = d.short()?;
        }
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
    fn content_header_keeps_raw_properties() {
        let payload = Bytes::from_static(b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x10\x00\x01");
        let h = ContentHeader::decode(&payload).unwrap();
        assert_eq!(h.class_id, 60);
        assert_eq!(h.body_size, 5);
        assert_eq!(&h.raw_properties[..], b"\x10\x00\x01");
        assert_eq!(h.properties().unwrap().delivery_mode, Some(1));
    }
}
