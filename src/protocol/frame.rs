//! Frames (spec 4.2.3): `type:octet channel:short size:long payload frame-end`.
//!
//! [`parse_frame`] is the only place bytes from a socket are turned into
//! frames. It reads the 7-byte header first and refuses a frame whose payload
//! is larger than the negotiated `frame_max` allows *before* buffering it, so a
//! client cannot make the broker allocate what it announces; it checks the
//! `0xCE` frame end; and it hands out the payload as a `Bytes` slice of the
//! read buffer. A frame that is not complete yet is `Ok(None)`: an expected
//! condition, not an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use nom::number::complete::{be_u16, be_u32, be_u8};

use super::codec::DecodeError;
use super::constants::*;
use super::methods::{Method, MethodError};
use super::properties::ContentHeader;

/// What a client sends first: `AMQP` 0 0 9 1.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The 0-9-1 header as some old clients spell it (`AMQP` 1 1 0 9), which
/// RabbitMQ also accepts.
pub const PROTOCOL_HEADER_ALT: &[u8; 8] = b"AMQP\x01\x01\x00\x09";

/// Result of looking at the first eight octets of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolHeader {
    /// Fewer than eight octets so far.
    Incomplete,
    /// AMQP 0-9-1: go on with `connection.start`.
    Supported,
    /// Anything else: answer with our header and close (spec 4.2.2).
    Unsupported,
}

pub fn check_protocol_header(buf: &[u8]) -> ProtocolHeader {
    if buf.len() < 8 {
        // A client that sends "HTTP" need not wait for eight octets to be refused.
        if !PROTOCOL_HEADER.starts_with(buf) && !PROTOCOL_HEADER_ALT.starts_with(buf) {
            return ProtocolHeader::Unsupported;
        }
        return ProtocolHeader::Incomplete;
    }
    let head = &buf[..8];
    if head == PROTOCOL_HEADER || head == PROTOCOL_HEADER_ALT {
        ProtocolHeader::Supported
    } else {
        ProtocolHeader::Unsupported
    }
}

/// The fixed 7-octet header in front of every frame payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_type: u8,
    pub channel: u16,
    pub size: u32,
}

impl FrameHeader {
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let r: nom::IResult<&[u8], FrameHeader> = (|| {
            let (i, frame_type) = be_u8(buf)?;
            let (i, channel) = be_u16(i)?;
            let (i, size) = be_u32(i)?;
            Ok((i, FrameHeader { frame_type, channel, size }))
        })();
        r.ok().map(|(_, h)| h)
    }
}

/// One decoded frame. Payload data are slices of the read buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method { channel: u16, method: Method },
    Header { channel: u16, header: ContentHeader },
    Body { channel: u16, body: Bytes },
    Heartbeat { channel: u16 },
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match *self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => channel,
        }
    }
}

/// Damage at the frame layer. All of these are connection errors; the
/// connection maps each to its reply code (mostly 501 FRAME_ERROR).
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// The header announces more payload than `frame_max` allows.
    TooLarge {
        frame_type: u8,
        channel: u16,
        size: u32,
        max_payload: u32,
    },
    /// The octet after the payload is not `0xCE`.
    BadFrameEnd {
        frame_type: u8,
        channel: u16,
        end: u8,
        payload: Bytes,
    },
    /// A frame type other than method, header, body or heartbeat.
    UnknownType {
        frame_type: u8,
        channel: u16,
        payload: Bytes,
    },
    /// A heartbeat frame must be empty; RabbitMQ reads one with a payload
    /// as an unknown frame.
    HeartbeatPayload {
        channel: u16,
        payload: Bytes,
    },
    Method {
        channel: u16,
        error: MethodError,
    },
    Header {
        channel: u16,
        error: DecodeError,
    },
}

/// Takes one frame off the front of `buf`, if a whole one is there.
/// `max_payload` is the largest payload accepted. (RabbitMQ accepts payloads
/// up to `frame_max` itself, 8 octets more than the spec allows, and the
/// connection does the same for compatibility.)
pub fn parse_frame(buf: &mut BytesMut, max_payload: u32) -> Result<Option<Frame>, FrameError> {
    let Some(h) = FrameHeader::parse(buf) else {
        return Ok(None);
    };
    if h.size > max_payload {
        return Err(FrameError::TooLarge { frame_type: h.frame_type, channel: h.channel, size: h.size, max_payload });
    }
    let total = FRAME_OVERHEAD + h.size as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(FrameError::BadFrameEnd {
            frame_type: h.frame_type,
            channel: h.channel,
            end,
            payload: Bytes::copy_from_slice(&buf[FRAME_HEADER_SIZE..total - 1]),
        });
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(FRAME_HEADER_SIZE);
    frame.truncate(h.size as usize);
    let channel = h.channel;
    let frame = match h.frame_type {
        FRAME_METHOD => {
            let payload = if keeps_nothing(&frame) { frame } else { Bytes::copy_from_slice(&frame) };
            Frame::Method {
                channel,
                method: Method::decode(&payload).map_err(|error| FrameError::Method { channel, error })?,
            }
        }
        FRAME_HEADER => Frame::Header {
            channel,
            header: ContentHeader::decode(&frame).map_err(|error| FrameError::Header { channel, error })?,
        },
        FRAME_BODY => Frame::Body { channel, body: frame },
        FRAME_HEARTBEAT => {
            if !frame.is_empty() {
                return Err(FrameError::HeartbeatPayload { channel, payload: frame });
            }
            Frame::Heartbeat { channel }
        }
        frame_type => return Err(FrameError::UnknownType { frame_type, channel, payload: frame }),
    };
    Ok(Some(frame))
}

/// Whether a method frame's payload may stay a slice of the read buffer.
///
/// A slice keeps its whole buffer allocated (64 KiB, shared with whatever
/// else was read with it) for as long as it lives. What a method leaves
/// behind can live for hours: a queue's name, a consumer tag, a binding's
/// arguments, the client properties of a connection. So method payloads
/// are copied into an allocation of their own, a few dozen octets, before
/// they are decoded; a client cannot make a 20-octet queue name hold 64 KiB.
/// The hot methods are the exception: `basic.publish`, whose names the
/// message compacts anyway (see `broker::message`), and the
/// acknowledgements, which keep nothing.
fn keeps_nothing(payload: &[u8]) -> bool {
    use super::methods::basic;
    matches!(
        payload.get(..4),
        Some(&[0, 60, 0, m]) if [basic::Publish::METHOD_ID, basic::Ack::METHOD_ID, basic::Nack::METHOD_ID, basic::Reject::METHOD_ID]
            .contains(&u16::from(m))
    )
}

/// The heartbeat frame, always on channel 0 with an empty payload.
pub const HEARTBEAT_FRAME: [u8; 8] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

/// Writes a method frame.
pub fn write_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    super::methods::write_method_frame(buf, channel, |b| method.encode(b));
}

/// Writes a content header frame with properties already in wire form.
pub fn write_content_header(buf: &mut BytesMut, channel: u16, class_id: u16, body_size: u64, raw_properties: &[u8]) {
    buf.put_u8(FRAME_HEADER);
    buf.put_u16(channel);
    buf.put_u32((12 + raw_properties.len()) as u32);
    buf.put_u16(class_id);
    buf.put_u16(0); // weight, always 0
    buf.put_u64(body_size);
    buf.put_slice(raw_properties);
    buf.put_u8(FRAME_END);
}

/// Writes the 7-octet header of a body frame; the payload and the frame end
/// follow separately, so a body can be sent without copying it.
pub fn write_body_frame_header(buf: &mut BytesMut, channel: u16, size: usize) {
    buf.put_u8(FRAME_BODY);
    buf.put_u16(channel);
    buf.put_u32(size as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::methods::basic;

    #[test]
    fn protocol_headers() {
        assert_eq!(check_protocol_header(b"AMQP\x00\x00\x09\x01"), ProtocolHeader::Supported);
        assert_eq!(check_protocol_header(b"AMQP\x01\x01\x00\x09"), ProtocolHeader::Supported);
        assert_eq!(check_protocol_header(b"AMQP"), ProtocolHeader::Incomplete);
        assert_eq!(check_protocol_header(b"AMQP\x00\x00\x08\x00"), ProtocolHeader::Unsupported);
        assert_eq!(check_protocol_header(b"GET "), ProtocolHeader::Unsupported);
    }

    #[test]
    fn heartbeat_frame_bytes() {
        let mut buf = BytesMut::from(&HEARTBEAT_FRAME[..]);
        assert_eq!(parse_frame(&mut buf, 131064).unwrap(), Some(Frame::Heartbeat { channel: 0 }));
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let mut buf = BytesMut::from(&b"\x03\x00\x01\x00\x00\x00\x05ab"[..]);
        assert_eq!(parse_frame(&mut buf, 131064).unwrap(), None);
        buf.extend_from_slice(b"cde\xce");
        assert_eq!(
            parse_frame(&mut buf, 131064).unwrap(),
            Some(Frame::Body { channel: 1, body: Bytes::from_static(b"abcde") })
        );
    }

    #[test]
    fn oversize_frames_are_refused_from_the_header_alone() {
        // Announces 200000 octets but only the header has arrived.
        let mut buf = BytesMut::from(&b"\x03\x00\x01\x00\x03\x0d\x40"[..]);
        assert_eq!(
            parse_frame(&mut buf, 131064),
            Err(FrameError::TooLarge { frame_type: 3, channel: 1, size: 200000, max_payload: 131064 })
        );
    }

    #[test]
    fn bad_frame_end_and_type() {
        let mut buf = BytesMut::from(&b"\x08\x00\x00\x00\x00\x00\x00\xcf"[..]);
        assert!(matches!(parse_frame(&mut buf, 100), Err(FrameError::BadFrameEnd { end: 0xcf, .. })));
        let mut buf = BytesMut::from(&b"\x09\x00\x00\x00\x00\x00\x00\xce"[..]);
        assert!(matches!(parse_frame(&mut buf, 100), Err(FrameError::UnknownType { frame_type: 9, .. })));
        let mut buf = BytesMut::from(&b"\x08\x00\x00\x00\x00\x00\x01x\xce"[..]);
        assert!(matches!(parse_frame(&mut buf, 100), Err(FrameError::HeartbeatPayload { .. })));
    }

    #[test]
    fn publish_method_frame_byte_literal() {
        // basic.publish on channel 1: exchange "", routing key "q", mandatory.
        let wire = b"\x01\x00\x01\x00\x00\x00\x0a\x00\x3c\x00\x28\x00\x00\x00\x01q\x01\xce";
        let mut buf = BytesMut::from(&wire[..]);
        let frame = parse_frame(&mut buf, 131064).unwrap().unwrap();
        let expected = Method::BasicPublish(basic::Publish {
            reserved_1: 0,
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: true,
            immediate: false,
        });
        assert_eq!(frame, Frame::Method { channel: 1, method: expected.clone() });
        let mut out = BytesMut::new();
        write_method(&mut out, 1, &expected);
        assert_eq!(&out[..], &wire[..]);
    }
}
