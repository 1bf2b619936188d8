//! The AMQP 0-9-1 wire protocol, one module per layer.
//!
//! - [`frame`]: the outer frame (type, channel, size, payload, `0xCE`) and the
//!   protocol header; the size is checked against `frame_max` from the 7-byte
//!   header, before any payload is buffered.
//! - [`codec`]: the primitive AMQP types (octet, short, long, longlong, bit,
//!   shortstr, longstr) as a small cursor over a `Bytes` payload.
//! - [`field_table`]: field tables and arrays with every type RabbitMQ speaks.
//! - [`methods`]: one file per AMQP class, each method a struct that can be
//!   decoded and encoded.
//! - [`properties`]: the content header and the 14 basic properties, kept as
//!   raw bytes and decoded only when someone asks.
//! - [`constants`]: reply codes, frame types and other numbers from the spec.
//!
//! Everything that comes from the socket is a `Bytes` slice of the read
//! buffer: parsing a `basic.publish` with its header and body allocates nothing.

pub mod codec;
pub mod constants;
pub mod field_table;
pub mod frame;
pub mod methods;
pub mod properties;

pub use codec::{Decoder, Encoder, ShortStr};
pub use constants::ReplyCode;
pub use field_table::{FieldTable, FieldValue};
pub use frame::{Frame, FrameError, FrameHeader, PROTOCOL_HEADER};
pub use methods::Method;
pub use properties::{BasicProperties, ContentHeader};
