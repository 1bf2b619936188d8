//! Field tables and arrays (spec 4.2.5.5) with every type RabbitMQ speaks.
//!
//! RabbitMQ's field types differ from the 0-9-1 spec's own table (see the
//! spec errata and `rabbit_binary_parser.erl`), and clients follow RabbitMQ:
//!
//! | tag | type             | tag | type                     |
//! |-----|------------------|-----|--------------------------|
//! | `t` | boolean          | `f` | float (32-bit)           |
//! | `b` | signed 8         | `d` | double (64-bit)          |
//! | `B` | unsigned 8       | `D` | decimal (scale, u32)     |
//! | `s` | signed 16        | `S` | long string              |
//! | `u` | unsigned 16      | `x` | byte array               |
//! | `I` | signed 32        | `A` | array                    |
//! | `i` | unsigned 32      | `T` | timestamp (u64 seconds)  |
//! | `l` | signed 64        | `F` | nested table             |
//! | `L` | signed 64 (as RabbitMQ reads it) | `V` | void (no value) |
//!
//! Tables are parsed only where the broker needs their contents (arguments,
//! client properties). Message properties keep their raw bytes instead, so a
//! header table goes from publisher to consumer byte for byte.
//!
//! # Nesting is bounded
//!
//! A table can hold a table (`F`) or an array (`A`), which can hold another,
//! and so on: five octets per level, so one frame can nest thousands of
//! levels deep. Everything that walks a [`FieldValue`] (this parser, the
//! encoder, `Clone`, `Drop`, the JSON of the HTTP API, the frame trace)
//! recurses once per level, and a worker thread's stack runs out after a
//! few thousand levels, which aborts the whole process. Rather than make
//! every walker iterative, the parser refuses, at the door, any value nested
//! deeper than [`MAX_DEPTH`] levels: a decode error, which the connection
//! turns into the reply RabbitMQ gives for a frame it cannot decode. Every
//! table inside warren therefore has at most that depth, and the recursive
//! walkers are safe. 128 is serde_json's own limit, so a table read from
//! JSON (HTTP API, definitions) and one read from AMQP are bounded alike;
//! real clients nest three or four levels (`x-death` is the deepest common
//! case).

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::{be_f32, be_f64, be_i16, be_i32, be_i64, be_i8, be_u16, be_u32, be_u64, be_u8};
use nom::IResult;

use super::codec::{DecodeError, ShortStr};

/// One value in a field table or array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal { scale: u8, value: u32 },
    LongStr(Bytes),
    Bytes(Bytes),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
}

impl FieldValue {
    /// The value as an integer, whatever integer type the client chose:
    /// clients send `x-message-ttl` as `I`, `l`, `s`… and RabbitMQ accepts all.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// RabbitMQ's name for the value's type, as its error texts print it
    /// (`signedint`, `longstr`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal { .. } => "decimal",
            FieldValue::LongStr(_) => "longstr",
            FieldValue::Bytes(_) => "binary",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            FieldValue::LongStr(v) | FieldValue::Bytes(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }
}

/// A field table: ordered (name, value) pairs, as on the wire. Lookups are
/// linear, which is right for the handful of entries tables hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k.as_bytes() == key.as_bytes()).map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: impl Into<ShortStr>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn with(mut self, key: &str, value: FieldValue) -> Self {
        self.insert(key, value);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(ShortStr, FieldValue)> {
        self.0.iter()
    }
}

/// How deep tables and arrays may nest: the top-level table is depth 1, a
/// table or array inside it depth 2, and so on (see the module docs).
pub const MAX_DEPTH: usize = 128;

type Res<'a, T> = IResult<&'a [u8], T>;

fn syntax(e: nom::Err<nom::error::Error<&[u8]>>) -> DecodeError {
    let _ = e;
    DecodeError::new("malformed field table")
}

/// Parses a length-prefixed table from `input`, a suffix of `src`; strings in
/// the result are slices of `src`.
pub fn parse_table<'a>(src: &Bytes, input: &'a [u8]) -> Result<(&'a [u8], FieldTable), DecodeError> {
    let (rest, body) = length_prefixed(input).map_err(syntax)?;
    Ok((rest, parse_table_body(src, body)?))
}

/// Parses the entries of a table whose length prefix is already consumed
/// (AMQPLAIN responses are sent that way).
pub fn parse_table_body(src: &Bytes, body: &[u8]) -> Result<FieldTable, DecodeError> {
    table_entries(src, body, 1)
}

/// `depth` is the nesting level of the table being read (1 at the top).
fn table_entries(src: &Bytes, mut body: &[u8], depth: usize) -> Result<FieldTable, DecodeError> {
    let mut entries = Vec::new();
    while !body.is_empty() {
        let (rest, name) = short_string(body).map_err(syntax)?;
        let (rest, value) = field_value(src, rest, depth)?;
        entries.push((ShortStr::from_bytes(slice(src, name)), value));
        body = rest;
    }
    Ok(FieldTable(entries))
}

fn array_values(src: &Bytes, mut body: &[u8], depth: usize) -> Result<Vec<FieldValue>, DecodeError> {
    let mut values = Vec::new();
    while !body.is_empty() {
        let (rest, value) = field_value(src, body, depth)?;
        values.push(value);
        body = rest;
    }
    Ok(values)
}

/// The error for a table or array that would sit at `depth`.
fn too_deep(depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(format!("field table nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(())
}

fn length_prefixed(i: &[u8]) -> Res<'_, &[u8]> {
    let (i, len) = be_u32(i)?;
    take(len)(i)
}

fn short_string(i: &[u8]) -> Res<'_, &[u8]> {
    let (i, len) = be_u8(i)?;
    take(len)(i)
}

/// `src.slice_ref` that tolerates being handed a slice of a different buffer
/// (tables parsed from a plain `&[u8]` in tests): then it copies.
fn slice(src: &Bytes, part: &[u8]) -> Bytes {
    let start = src.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    if p >= start && p + part.len() <= start + src.len() {
        src.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// One tagged value of a table or array at nesting level `depth`.
fn field_value<'a>(src: &Bytes, i: &'a [u8], depth: usize) -> Result<(&'a [u8], FieldValue), DecodeError> {
    let (i, tag) = be_u8(i).map_err(syntax)?;
    let r: Res<'a, FieldValue> = match tag {
        b't' => be_u8(i).map(|(i, v)| (i, FieldValue::Bool(v != 0))),
        b'b' => be_i8(i).map(|(i, v)| (i, FieldValue::I8(v))),
        b'B' => be_u8(i).map(|(i, v)| (i, FieldValue::U8(v))),
        b's' => be_i16(i).map(|(i, v)| (i, FieldValue::I16(v))),
        b'u' => be_u16(i).map(|(i, v)| (i, FieldValue::U16(v))),
        b'I' => be_i32(i).map(|(i, v)| (i, FieldValue::I32(v))),
        b'i' => be_u32(i).map(|(i, v)| (i, FieldValue::U32(v))),
        b'l' | b'L' => be_i64(i).map(|(i, v)| (i, FieldValue::I64(v))),
        b'f' => be_f32(i).map(|(i, v)| (i, FieldValue::F32(v))),
        b'd' => be_f64(i).map(|(i, v)| (i, FieldValue::F64(v))),
        b'D' => be_u8(i).and_then(|(i, scale)| be_u32(i).map(|(i, value)| (i, FieldValue::Decimal { scale, value }))),
        b'S' => length_prefixed(i).map(|(i, v)| (i, FieldValue::LongStr(slice(src, v)))),
        b'x' => length_prefixed(i).map(|(i, v)| (i, FieldValue::Bytes(slice(src, v)))),
        b'T' => be_u64(i).map(|(i, v)| (i, FieldValue::Timestamp(v))),
        b'V' => Ok((i, FieldValue::Void)),
        b'A' => {
            too_deep(depth + 1)?;
            let (rest, body) = length_prefixed(i).map_err(syntax)?;
            return Ok((rest, FieldValue::Array(array_values(src, body, depth + 1)?)));
        }
        b'F' => {
            too_deep(depth + 1)?;
            let (rest, body) = length_prefixed(i).map_err(syntax)?;
            return Ok((rest, FieldValue::Table(table_entries(src, body, depth + 1)?)));
        }
        other => {
            return Err(DecodeError::new(format!("unknown field table type '{}'", (other as char).escape_default())))
        }
    };
    r.map_err(syntax)
}

/// Checks that `input` starts with a well-formed length-prefixed table,
/// nested no deeper than [`MAX_DEPTH`], without building it; returns what
/// follows it. For content properties, which the broker passes on as raw
/// bytes but must not accept broken (see [`super::properties`]).
pub fn skip_table(input: &[u8]) -> Result<&[u8], DecodeError> {
    let (rest, body) = length_prefixed(input).map_err(syntax)?;
    skip_entries(body, 1, true)?;
    Ok(rest)
}

/// Walks a table body (`named`: entries have names) or an array body.
fn skip_entries(mut body: &[u8], depth: usize, named: bool) -> Result<(), DecodeError> {
    while !body.is_empty() {
        if named {
            body = short_string(body).map_err(syntax)?.0;
        }
        let (i, tag) = be_u8(body).map_err(syntax)?;
        let fixed = match tag {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'S' | b'x' => {
                body = length_prefixed(i).map_err(syntax)?.0;
                continue;
            }
            b'A' | b'F' => {
                too_deep(depth + 1)?;
                let (rest, inner) = length_prefixed(i).map_err(syntax)?;
                skip_entries(inner, depth + 1, tag == b'F')?;
                body = rest;
                continue;
            }
            other => {
                return Err(DecodeError::new(format!(
                    "unknown field table type '{}'",
                    (other as char).escape_default()
                )))
            }
        };
        body = take::<usize, &[u8], nom::error::Error<&[u8]>>(fixed)(i).map_err(syntax)?.0;
    }
    Ok(())
}

/// Writes a table with its 4-octet length prefix.
pub fn encode_table(buf: &mut BytesMut, table: &FieldTable) {
    let at = buf.len();
    buf.put_u32(0);
    for (name, value) in &table.0 {
        buf.put_u8(name.len() as u8);
        buf.put_slice(name.as_bytes());
        encode_value(buf, value);
    }
    patch_len(buf, at);
}

fn patch_len(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn encode_value(buf: &mut BytesMut, value: &FieldValue) {
    match value {
        FieldValue::Bool(v) => {
            buf.put_u8(b't');
            buf.put_u8(*v as u8);
        }
        FieldValue::I8(v) => {
            buf.put_u8(b'b');
            buf.put_i8(*v);
        }
        FieldValue::U8(v) => {
            buf.put_u8(b'B');
            buf.put_u8(*v);
        }
        FieldValue::I16(v) => {
            buf.put_u8(b's');
            buf.put_i16(*v);
        }
        FieldValue::U16(v) => {
            buf.put_u8(b'u');
            buf.put_u16(*v);
        }
        FieldValue::I32(v) => {
            buf.put_u8(b'I');
            buf.put_i32(*v);
        }
        FieldValue::U32(v) => {
            buf.put_u8(b'i');
            buf.put_u32(*v);
        }
        FieldValue::I64(v) => {
            buf.put_u8(b'l');
            buf.put_i64(*v);
        }
        FieldValue::F32(v) => {
            buf.put_u8(b'f');
            buf.put_f32(*v);
        }
        FieldValue::F64(v) => {
            buf.put_u8(b'd');
            buf.put_f64(*v);
        }
        FieldValue::Decimal { scale, value } => {
            buf.put_u8(b'D');
            buf.put_u8(*scale);
            buf.put_u32(*value);
        }
        FieldValue::LongStr(v) => {
            buf.put_u8(b'S');
            buf.put_u32(v.len() as u32);
            buf.put_slice(v);
        }
        FieldValue::Bytes(v) => {
            buf.put_u8(b'x');
            buf.put_u32(v.len() as u32);
            buf.put_slice(v);
        }
        FieldValue::Array(values) => {
            buf.put_u8(b'A');
            let at = buf.len();
            buf.put_u32(0);
            for v in values {
                encode_value(buf, v);
            }
            patch_len(buf, at);
        }
        FieldValue::Timestamp(v) => {
            buf.put_u8(b'T');
            buf.put_u64(*v);
        }
        FieldValue::Table(t) => {
            buf.put_u8(b'F');
            encode_table(buf, t);
        }
        FieldValue::Void => buf.put_u8(b'V'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(table: &FieldTable) -> FieldTable {
        let mut buf = BytesMut::new();
        encode_table(&mut buf, table);
        let bytes = buf.freeze();
        let (rest, parsed) = parse_table(&bytes, &bytes).unwrap();
        assert!(rest.is_empty());
        parsed
    }

    #[test]
    fn every_field_type_round_trips() {
        let table = FieldTable::new()
            .with("t", FieldValue::Bool(true))
            .with("b", FieldValue::I8(-2))
            .with("B", FieldValue::U8(250))
            .with("s", FieldValue::I16(-300))
            .with("u", FieldValue::U16(60000))
            .with("I", FieldValue::I32(-70000))
            .with("i", FieldValue::U32(4_000_000_000))
            .with("l", FieldValue::I64(-1 << 40))
            .with("f", FieldValue::F32(1.5))
            .with("d", FieldValue::F64(-2.25))
            .with("D", FieldValue::Decimal { scale: 2, value: 12345 })
            .with("S", FieldValue::LongStr(Bytes::from_static(b"long string")))
            .with("x", FieldValue::Bytes(Bytes::from_static(&[0, 1, 2])))
            .with("A", FieldValue::Array(vec![FieldValue::I32(1), FieldValue::Void, FieldValue::Bool(false)]))
            .with("T", FieldValue::Timestamp(1_700_000_000))
            .with("F", FieldValue::Table(FieldTable::new().with("k", FieldValue::Void)))
            .with("V", FieldValue::Void);
        assert_eq!(round_trip(&table), table);
    }

    #[test]
    fn byte_literal_table() {
        // {"a": I 1, "b": t true}
        let wire: &[u8] = b"\x00\x00\x00\x0b\x01aI\x00\x00\x00\x01\x01bt\x01";
        let bytes = Bytes::copy_from_slice(wire);
        let (_, table) = parse_table(&bytes, &bytes).unwrap();
        assert_eq!(table.get("a"), Some(&FieldValue::I32(1)));
        assert_eq!(table.get("b"), Some(&FieldValue::Bool(true)));
        let mut buf = BytesMut::new();
        encode_table(&mut buf, &table);
        assert_eq!(&buf[..], wire);
    }

    #[test]
    fn capital_l_reads_as_signed_64_like_rabbitmq() {
        let bytes = Bytes::from_static(b"\x00\x00\x00\x0b\x01nL\xff\xff\xff\xff\xff\xff\xff\xff");
        let (_, table) = parse_table(&bytes, &bytes).unwrap();
        assert_eq!(table.get("n"), Some(&FieldValue::I64(-1)));
    }

    /// A table (depth 1) whose entry "n" starts a chain of `F` or `A`
    /// containers, the deepest of them at depth `levels`.
    fn nested(levels: usize, tag: u8) -> Bytes {
        let entry = |v: Vec<u8>| [&b"\x01n"[..], &v].concat();
        let mut value: Option<Vec<u8>> = None;
        for _ in 2..=levels {
            let contents = match value.take() {
                None => Vec::new(),
                Some(v) if tag == b'F' => entry(v),
                Some(v) => v,
            };
            let mut v = vec![tag];
            v.extend_from_slice(&(contents.len() as u32).to_be_bytes());
            v.extend_from_slice(&contents);
            value = Some(v);
        }
        let top = value.map(entry).unwrap_or_default();
        let mut wire = (top.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&top);
        Bytes::from(wire)
    }

    fn depth_of(v: &FieldValue) -> usize {
        match v {
            FieldValue::Table(t) => 1 + t.iter().map(|(_, v)| depth_of(v)).max().unwrap_or(0),
            FieldValue::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn nesting_up_to_the_limit_parses_and_one_more_is_refused() {
        for tag in [b'F', b'A'] {
            let ok = nested(MAX_DEPTH, tag);
            let (_, table) = parse_table(&ok, &ok).unwrap();
            let depth = 1 + table.iter().map(|(_, v)| depth_of(v)).max().unwrap_or(0);
            assert_eq!(depth, MAX_DEPTH, "tag {}", tag as char);
            let deep = nested(MAX_DEPTH + 1, tag);
            let err = parse_table(&deep, &deep).unwrap_err();
            assert_eq!(err.what, "field table nested deeper than 128 levels");
        }
    }

    #[test]
    fn thousands_of_levels_are_refused_without_exhausting_the_stack() {
        // ~4,000 levels in a 24 kB frame crashed the broker before nesting was
        // bounded. Run on a stack the size of a tokio worker's (2 MiB), so a
        // regression aborts this test rather than passing.
        let deep = nested(4_000, b'F');
        let arrays = nested(4_000, b'A');
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                assert!(parse_table(&deep, &deep).is_err());
                assert!(parse_table(&arrays, &arrays).is_err());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn skipping_accepts_what_parsing_accepts() {
        let mut buf = BytesMut::new();
        let table = FieldTable::new()
            .with("A", FieldValue::Array(vec![FieldValue::I32(1), FieldValue::Table(FieldTable::new())]))
            .with("S", FieldValue::LongStr(Bytes::from_static(b"s")))
            .with("D", FieldValue::Decimal { scale: 1, value: 2 })
            .with("V", FieldValue::Void);
        encode_table(&mut buf, &table);
        buf.extend_from_slice(b"after");
        assert_eq!(skip_table(&buf).unwrap(), b"after");
        for tag in [b'F', b'A'] {
            assert!(skip_table(&nested(MAX_DEPTH, tag)).is_ok());
            assert!(skip_table(&nested(MAX_DEPTH + 1, tag)).is_err());
        }
    }

    #[test]
    fn bad_tables_are_errors() {
        for wire in [
            &b"\x00\x00\x00\x03\x01aZ"[..],                 // unknown type
            &b"\x00\x00\x00\x09\x01aI\x00"[..],             // length past the end
            &b"\x00\x00\x00\x04\x01aI\x00"[..],             // value cut by the table length
            &b"\x00\x00\x00\x06\x01aA\x00\x00\x00\x09"[..], // array past its table
        ] {
            let bytes = Bytes::copy_from_slice(wire);
            assert!(parse_table(&bytes, &bytes).is_err(), "{wire:?}");
            assert!(skip_table(wire).is_err(), "{wire:?}");
        }
    }
}
