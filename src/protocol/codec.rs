//! The primitive AMQP domains (spec 4.2.5): octet, short, long, longlong,
//! packed bits, shortstr and longstr.
//!
//! [`Decoder`] is a cursor over one frame payload. The numbers are read with
//! nom's big-endian parsers; strings come back as `Bytes` slices of the
//! payload (a reference-count bump, never a copy). Consecutive `bit` fields
//! share one octet, low bit first, which is why the cursor keeps a little bit
//! state: any non-bit field ends a run of bits.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};
use nom::IResult;

use super::field_table::{self, FieldTable};

/// A payload that does not parse: a field runs past the end of the frame,
/// an unknown field-table type, trailing garbage. RabbitMQ answers these with
/// 502 SYNTAX_ERROR (or 501 FRAME_ERROR for frame-level damage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub what: String,
}

impl DecodeError {
    pub fn new(what: impl Into<String>) -> Self {
        DecodeError { what: what.into() }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for DecodeError {}

/// An AMQP short string: at most 255 octets, not necessarily UTF-8 (RabbitMQ
/// treats names as binaries). Cheap to clone: it shares the frame's buffer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ShortStr(Bytes);

impl ShortStr {
    pub const MAX_LEN: usize = 255;

    /// A short string from a buffer already known to be at most 255 octets.
    pub fn from_bytes(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() <= Self::MAX_LEN);
        ShortStr(bytes)
    }

    pub const fn from_static(s: &'static str) -> Self {
        ShortStr(Bytes::from_static(s.as_bytes()))
    }

    /// Builds a short string from text we generate (reply texts, names),
    /// cutting it at 255 octets on a character boundary as RabbitMQ does.
    pub fn truncated(s: impl Into<String>) -> Self {
        let mut s: String = s.into();
        if s.len() > Self::MAX_LEN {
            let mut end = Self::MAX_LEN;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        ShortStr(Bytes::from(s))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text, with invalid UTF-8 replaced: for logs and reply texts.
    pub fn as_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        self.0.starts_with(prefix)
    }
}

impl From<&str> for ShortStr {
    fn from(s: &str) -> Self {
        ShortStr::truncated(s)
    }
}

impl From<String> for ShortStr {
    fn from(s: String) -> Self {
        ShortStr::truncated(s)
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str_lossy())
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str_lossy())
    }
}

/// Reads AMQP fields, in order, from one frame payload.
pub struct Decoder<'a> {
    src: &'a Bytes,
    pos: usize,
    /// The octet holding the current run of bits, and how many of its bits
    /// have been read; 8 means no run is open.
    bits: u8,
    bit_index: u8,
}

type NomResult<'a, T> = IResult<&'a [u8], T>;

impl<'a> Decoder<'a> {
    pub fn new(src: &'a Bytes) -> Self {
        Decoder { src, pos: 0, bits: 0, bit_index: 8 }
    }

    /// Starts at an offset into the payload (after class and method ids, say).
    pub fn at(src: &'a Bytes, pos: usize) -> Self {
        Decoder { pos, ..Decoder::new(src) }
    }

    pub fn remaining(&self) -> usize {
        self.src.len() - self.pos
    }

    fn run<T>(
        &mut self,
        what: &'static str,
        mut parser: impl FnMut(&'a [u8]) -> NomResult<'a, T>,
    ) -> Result<T, DecodeError> {
        self.bit_index = 8;
        let input = &self.src[self.pos..];
        match parser(input) {
            Ok((rest, value)) => {
                self.pos = self.src.len() - rest.len();
                Ok(value)
            }
            Err(_) => Err(DecodeError::new(format!("truncated {what}"))),
        }
    }

    pub fn octet(&mut self) -> Result<u8, DecodeError> {
        self.run("octet", be_u8)
    }

    pub fn short(&mut self) -> Result<u16, DecodeError> {
        self.run("short", be_u16)
    }

    pub fn long(&mut self) -> Result<u32, DecodeError> {
        self.run("long", be_u32)
    }

    pub fn longlong(&mut self) -> Result<u64, DecodeError> {
        self.run("longlong", be_u64)
    }

    pub fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.bit_index >= 8 {
            self.bits = self.octet()?;
            self.bit_index = 0;
        }
        let value = (self.bits >> self.bit_index) & 1 == 1;
        self.bit_index += 1;
        Ok(value)
    }

    pub fn shortstr(&mut self) -> Result<ShortStr, DecodeError> {
        let data = self.run("shortstr", |i| {
            let (i, len) = be_u8(i)?;
            take(len)(i)
        })?;
        Ok(ShortStr(self.src.slice_ref(data)))
    }

    pub fn longstr(&mut self) -> Result<Bytes, DecodeError> {
        let data = self.run("longstr", |i| {
            let (i, len) = be_u32(i)?;
            take(len)(i)
        })?;
        Ok(self.src.slice_ref(data))
    }

    /// Raw octets, for the content-header property list kept undecoded.
    pub fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let data = self.run("octets", take(len))?;
        Ok(self.src.slice_ref(data))
    }

    pub fn table(&mut self) -> Result<FieldTable, DecodeError> {
        self.bit_index = 8;
        let src = self.src;
        let input = &src[self.pos..];
        let (rest, table) = field_table::parse_table(src, input)?;
        self.pos = src.len() - rest.len();
        Ok(table)
    }
}

/// Writes AMQP fields into a buffer, packing consecutive bits into octets.
pub struct Encoder<'a> {
    buf: &'a mut BytesMut,
    /// Where the octet of the open run of bits is, and how many bits it holds.
    bit_octet: usize,
    bit_count: u8,
}

impl<'a> Encoder<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Encoder { buf, bit_octet: 0, bit_count: 8 }
    }

    fn end_bits(&mut self) {
        self.bit_count = 8;
    }

    pub fn octet(&mut self, v: u8) {
        self.end_bits();
        self.buf.put_u8(v);
    }

    pub fn short(&mut self, v: u16) {
        self.end_bits();
        self.buf.put_u16(v);
    }

    pub fn long(&mut self, v: u32) {
        self.end_bits();
        self.buf.put_u32(v);
    }

    pub fn longlong(&mut self, v: u64) {
        self.end_bits();
        self.buf.put_u64(v);
    }

    pub fn bit(&mut self, v: bool) {
        if self.bit_count >= 8 {
            self.bit_octet = self.buf.len();
            self.buf.put_u8(0);
            self.bit_count = 0;
        }
        if v {
            self.buf[self.bit_octet] |= 1 << self.bit_count;
        }
        self.bit_count += 1;
    }

    pub fn shortstr(&mut self, v: &ShortStr) {
        self.end_bits();
        self.buf.put_u8(v.len() as u8);
        self.buf.put_slice(v.as_bytes());
    }

    pub fn longstr(&mut self, v: &[u8]) {
        self.end_bits();
        self.buf.put_u32(v.len() as u32);
        self.buf.put_slice(v);
    }

    pub fn raw(&mut self, v: &[u8]) {
        self.end_bits();
        self.buf.put_slice(v);
    }

    pub fn table(&mut self, v: &FieldTable) {
        self.end_bits();
        field_table::encode_table(self.buf, v);
    }
}

/// How a field value reads in a frame trace: numbers and flags as they
/// are, short strings quoted, long strings quoted when printable, tables
/// compact.
pub trait Traced {
    fn trace(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

macro_rules! traced_by_display {
    ($($t:ty),*) => {$(
        impl Traced for $t {
            fn trace(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{self}")
            }
        }
    )*};
}
traced_by_display!(u8, u16, u32, u64, bool);

impl Traced for ShortStr {
    fn trace(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl Traced for Bytes {
    fn trace(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self) {
            Ok(text) if text.chars().all(|c| !c.is_control()) => write!(f, "{text:?}"),
            _ => write!(f, "<{} octets>", self.len()),
        }
    }
}

impl Traced for FieldTable {
    fn trace(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            // Debug, not Display: a key is client text and must not put a
            // newline into a log line (see `crate::logging`).
            write!(f, "{k:?}: {v:?}")?;
        }
        f.write_str("}")
    }
}

/// A type that is one AMQP field: lets the method definitions in
/// [`super::methods`] be plain lists of typed fields.
pub trait Field: Sized {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError>;
    fn encode(&self, e: &mut Encoder<'_>);
}

impl Field for u8 {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.octet()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.octet(*self)
    }
}

impl Field for u16 {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.short()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.short(*self)
    }
}

impl Field for u32 {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.long()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.long(*self)
    }
}

impl Field for u64 {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.longlong()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.longlong(*self)
    }
}

impl Field for bool {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.bit()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.bit(*self)
    }
}

impl Field for ShortStr {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.shortstr()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.shortstr(self)
    }
}

/// A long string (`longstr`): arbitrary octets, e.g. SASL responses.
impl Field for Bytes {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.longstr()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.longstr(self)
    }
}

impl Field for FieldTable {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.table()
    }
    fn encode(&self, e: &mut Encoder<'_>) {
        e.table(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_pack_low_bit_first_and_end_at_other_fields() {
        let mut buf = BytesMut::new();
        let mut e = Encoder::new(&mut buf);
        e.bit(true);
        e.bit(false);
        e.bit(true);
        e.short(7);
        e.bit(true);
        assert_eq!(&buf[..], &[0b101, 0, 7, 1]);

        let bytes = buf.freeze();
        let mut d = Decoder::new(&bytes);
        assert!(d.bit().unwrap());
        assert!(!d.bit().unwrap());
        assert!(d.bit().unwrap());
        assert_eq!(d.short().unwrap(), 7);
        assert!(d.bit().unwrap());
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn strings_are_slices_of_the_payload() {
        let bytes = Bytes::from_static(b"\x03abc\x00\x00\x00\x02xy");
        let mut d = Decoder::new(&bytes);
        let s = d.shortstr().unwrap();
        assert_eq!(s.as_bytes(), b"abc");
        assert_eq!(s.bytes().as_ptr(), bytes[1..].as_ptr());
        assert_eq!(&d.longstr().unwrap()[..], b"xy");
        assert!(d.octet().is_err());
    }

    #[test]
    fn truncated_fields_are_errors_not_panics() {
        let bytes = Bytes::from_static(b"\x05ab");
        assert!(Decoder::new(&bytes).shortstr().is_err());
        let bytes = Bytes::from_static(b"\x00\x00\x01");
        assert!(Decoder::new(&bytes).long().is_err());
    }

    #[test]
    fn long_reply_texts_are_cut_on_a_char_boundary() {
        let s = ShortStr::truncated("é".repeat(200));
        assert!(s.len() <= 255);
        assert!(std::str::from_utf8(s.as_bytes()).is_ok());
    }
}
