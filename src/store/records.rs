//! The bytes on disk: segment files of messages and their marks files.
//!
//! Every file starts with an 8-octet magic, so that a foreign file is
//! named as such instead of being read as garbage. Then records, each
//! guarded by a CRC-32 of its contents:
//!
//! ```text
//! segment (NNNNNNNN.seg):  "WRNSEG01" then per message
//!     u32 length | u32 crc32(payload) | payload
//!     payload = u64 seq | u8 len, exchange | u8 len, routing key
//!             | u32 len, properties (flags and list, as published) | body
//! marks (NNNNNNNN.mrk):    "WRNMRK01" then per mark, 13 octets
//!     u8 kind (1 delivered, 2 removed) | u64 seq | u32 crc32(kind, seq)
//! ```
//!
//! A write cut short by a crash leaves a partial record at the end of the
//! file it was appended to; [`read_messages`] and [`read_marks`] stop at the
//! first record that is short or fails its checksum and report the offset,
//! so recovery keeps the intact prefix and cuts the rest.

use bytes::{BufMut, Bytes, BytesMut};

use crate::broker::message::Message;

pub const SEGMENT_MAGIC: &[u8; 8] = b"WRNSEG01";
pub const MARKS_MAGIC: &[u8; 8] = b"WRNMRK01";
pub const MARK_LEN: usize = 13;

/// A mark: what happened to a stored message after it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Handed to a consumer that will acknowledge it: if the broker stops
    /// before the ack, the message comes back `redelivered`.
    Delivered,
    /// Acknowledged, or otherwise gone from the queue: not recovered.
    Removed,
}

/// One message as read back from a segment.
#[derive(Debug)]
pub struct StoredMessage {
    pub seq: u64,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

/// The record header and payload prefix of `message`, to be followed on
/// disk by its body chunks: written as slices, the body is not copied into
/// a buffer of its own first.
pub fn message_head(seq: u64, message: &Message, out: &mut BytesMut) {
    let mut crc = crc32fast::Hasher::new();
    let start = out.len();
    out.put_u32(0); // length, filled in below
    out.put_u32(0); // crc, filled in below
    let payload = out.len();
    out.put_u64(seq);
    out.put_u8(message.exchange.len() as u8);
    out.put_slice(message.exchange.as_bytes());
    out.put_u8(message.routing_key.len() as u8);
    out.put_slice(message.routing_key.as_bytes());
    out.put_u32(message.properties.len() as u32);
    out.put_slice(&message.properties);
    crc.update(&out[payload..]);
    for chunk in message.body.chunks() {
        crc.update(chunk);
    }
    let length = (out.len() - payload) as u64 + message.body_size;
    out[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.finalize().to_be_bytes());
}

pub fn mark(kind: Mark, seq: u64, out: &mut BytesMut) {
    let mut record = [0u8; 9];
    record[0] = match kind {
        Mark::Delivered => 1,
        Mark::Removed => 2,
    };
    record[1..].copy_from_slice(&seq.to_be_bytes());
    out.put_slice(&record);
    out.put_u32(crc32fast::hash(&record));
}

/// What reading a file found: the records, and where the intact part ends
/// if something after it was not a whole, valid record.
#[derive(Debug)]
pub struct Read<T> {
    pub records: Vec<T>,
    /// Offset of the first bad or partial record, if any.
    pub torn_at: Option<u64>,
}

/// Reads a segment file's contents. Err: not a segment file at all.
pub fn read_messages(file: &Bytes) -> Result<Read<StoredMessage>, String> {
    check_magic(file, SEGMENT_MAGIC)?;
    let mut records = Vec::new();
    let mut at = SEGMENT_MAGIC.len().min(file.len());
    let torn_at = loop {
        if at == file.len() {
            break None;
        }
        match message_at(file, at) {
            Some((m, next)) => {
                records.push(m);
                at = next;
            }
            None => break Some(at as u64),
        }
    };
    Ok(Read { records, torn_at })
}

fn message_at(file: &Bytes, at: usize) -> Option<(StoredMessage, usize)> {
    let header = file.get(at..at + 8)?;
    let length = u32::from_be_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header[4..].try_into().ok()?);
    let payload = file.slice(at + 8..(at + 8).checked_add(length).filter(|end| *end <= file.len())?);
    if crc32fast::hash(&payload) != crc {
        return None;
    }
    let mut i = 0;
    let mut take = |n: usize| {
        let part = payload.get(i..i + n).map(|_| payload.slice(i..i + n));
        i += n;
        part
    };
    let seq = u64::from_be_bytes(take(8)?[..].try_into().ok()?);
    let exchange_len = take(1)?[0] as usize;
    let exchange = take(exchange_len)?;
    let key_len = take(1)?[0] as usize;
    let routing_key = take(key_len)?;
    let props_len = u32::from_be_bytes(take(4)?[..].try_into().ok()?) as usize;
    let properties = take(props_len)?;
    let body = payload.slice(i.min(payload.len())..);
    Some((StoredMessage { seq, exchange, routing_key, properties, body }, at + 8 + length))
}

/// Reads a marks file's contents. Err: not a marks file at all.
pub fn read_marks(file: &[u8]) -> Result<Read<(Mark, u64)>, String> {
    check_magic(file, MARKS_MAGIC)?;
    let mut records = Vec::new();
    let mut torn_at = None;
    let body = file.get(MARKS_MAGIC.len()..).unwrap_or_default();
    for (n, record) in body.chunks(MARK_LEN).enumerate() {
        let valid = record.len() == MARK_LEN && crc32fast::hash(&record[..9]).to_be_bytes() == record[9..];
        let kind = match record[0] {
            1 => Some(Mark::Delivered),
            2 => Some(Mark::Removed),
            _ => None,
        };
        match kind {
            Some(kind) if valid => {
                records.push((kind, u64::from_be_bytes(record[1..9].try_into().expect("8 octets"))));
            }
            _ => {
                torn_at = Some((MARKS_MAGIC.len() + n * MARK_LEN) as u64);
                break;
            }
        }
    }
    Ok(Read { records, torn_at })
}

fn check_magic(file: &[u8], magic: &[u8; 8]) -> Result<(), String> {
    if file.len() < magic.len() && magic.starts_with(file) {
        // Created, then cut off before its magic was whole: empty.
        return Ok(());
    }
    if !file.starts_with(magic) {
        return Err(format!("not a warren {} file", String::from_utf8_lossy(&magic[3..6]).to_lowercase()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Body;

    fn message(body: &[u8]) -> Message {
        let props = Bytes::from_static(&[0x10, 0x00, 2]); // delivery_mode 2
        Message::new(&"x".into(), &"key".into(), &props, body.len() as u64, Body::One(Bytes::copy_from_slice(body)))
    }

    fn segment(messages: &[(u64, &[u8])]) -> BytesMut {
        let mut file = BytesMut::from(&SEGMENT_MAGIC[..]);
        for (seq, body) in messages {
            let m = message(body);
            message_head(*seq, &m, &mut file);
            for chunk in m.body.chunks() {
                file.put_slice(chunk);
            }
        }
        file
    }

    #[test]
    fn messages_read_back_as_written() {
        let file = segment(&[(1, b"one"), (7, b""), (8, &[9; 5000])]).freeze();
        let read = read_messages(&file).unwrap();
        assert_eq!(read.torn_at, None);
        let seen: Vec<_> = read.records.iter().map(|m| (m.seq, m.body.len())).collect();
        assert_eq!(seen, [(1, 3), (7, 0), (8, 5000)]);
        assert_eq!(&read.records[0].exchange[..], b"x");
        assert_eq!(&read.records[0].routing_key[..], b"key");
        assert_eq!(&read.records[0].properties[..], &[0x10, 0, 2]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_found_and_the_prefix_kept() {
        let whole = segment(&[(1, b"one"), (2, b"two")]);
        let first_end = segment(&[(1, b"one")]).len() as u64;
        for cut in 1..(whole.len() as u64 - first_end) {
            let file = Bytes::copy_from_slice(&whole[..whole.len() - cut as usize]);
            let read = read_messages(&file).unwrap();
            assert_eq!((read.records.len(), read.torn_at), (1, Some(first_end)), "cut {cut}");
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let read = read_messages(&flipped.freeze()).unwrap();
        assert_eq!((read.records.len(), read.torn_at), (1, Some(first_end)));
    }

    #[test]
    fn marks_round_trip_and_stop_at_a_torn_one() {
        let mut file = BytesMut::from(&MARKS_MAGIC[..]);
        mark(Mark::Delivered, 3, &mut file);
        mark(Mark::Removed, 3, &mut file);
        let read = read_marks(&file).unwrap();
        assert_eq!(read.records, [(Mark::Delivered, 3), (Mark::Removed, 3)]);
        let read = read_marks(&file[..file.len() - 4]).unwrap();
        assert_eq!((read.records.len(), read.torn_at), (1, Some(8 + 13)));
    }

    #[test]
    fn a_foreign_file_is_refused_and_an_empty_one_accepted() {
        assert_eq!(read_messages(&Bytes::from_static(b"PK\x03\x04 a zip file")).unwrap_err(), "not a warren seg file");
        assert_eq!(read_marks(b"hello").unwrap_err(), "not a warren mrk file");
        assert!(read_messages(&Bytes::from_static(b"WRN")).unwrap().records.is_empty());
    }
}
