//! The texts a connection writes about itself, worded as RabbitMQ words
//! them: a connection's age, octets printed the way Erlang prints a binary,
//! and the reply texts for damage at the frame layer.

use std::time::Duration;

use crate::error::AmqpError;
use crate::protocol::constants::FRAME_OVERHEAD;
use crate::protocol::frame::FrameError;
use crate::protocol::methods::MethodError;

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

/// RabbitMQ's texts for damage at the frame layer (all connection errors).
pub fn frame_error(e: FrameError) -> AmqpError {
    match e {
        FrameError::TooLarge { frame_type, size, max_payload, .. } => AmqpError::frame_error(format!(
            "type {frame_type}, all octets = <<>>: {{frame_too_large,{size},{}}}",
            max_payload as usize - FRAME_OVERHEAD
        )),
        FrameError::BadFrameEnd { frame_type, end, payload, .. } => AmqpError::frame_error(format!(
            "type {frame_type}, {}: {{invalid_frame_end_marker,{end}}}",
            payload_snippet(&payload)
        )),
        FrameError::UnknownType { frame_type, payload, .. } => {
            AmqpError::frame_error(format!("type {frame_type}, {}: unknown_frame", payload_snippet(&payload)))
        }
        FrameError::HeartbeatPayload { payload, .. } => {
            AmqpError::frame_error(format!("type 8, {}: unknown_frame", payload_snippet(&payload)))
        }
        FrameError::Method { error: MethodError::Unknown { class_id, method_id }, .. } => {
            AmqpError::command_invalid(format!("unknown method: class {class_id}, method {method_id}"))
        }
        FrameError::Method { error: MethodError::Syntax { class_id, method_id, name, error }, .. } => {
            AmqpError::frame_error(format!("cannot decode {name}: {error}")).during((class_id, method_id))
        }
        FrameError::Header { error, .. } => AmqpError::frame_error(format!("cannot decode content header: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
