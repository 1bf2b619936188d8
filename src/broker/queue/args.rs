//! Queue arguments (`x-…` in `queue.declare`), checked as RabbitMQ checks them.

use std::time::Duration;

use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{FieldTable, FieldValue, ShortStr};

/// What a full queue does with one more message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message: the publisher gets `basic.nack` in confirm mode.
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

/// The arguments warren acts on, parsed once at declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`: messages older than this are dropped or dead-lettered.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: the queue is deleted after being unused this long.
    pub expires: Option<Duration>,
    pub max_length: Option<usize>,
    pub max_length_bytes: Option<usize>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<ShortStr>,
    pub dead_letter_routing_key: Option<ShortStr>,
    /// `x-max-priority`: the number of priority levels above 0.
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    /// `x-consumer-timeout`, overriding the broker's `consumer_timeout`.
    pub consumer_timeout: Option<Duration>,
}

impl QueueArgs {
    /// Reads the arguments RabbitMQ validates; `describe` names the queue
    /// (`queue 'q' in vhost '/'`) in the error texts.
    pub fn parse(args: &FieldTable, describe: &str) -> AmqpResult<QueueArgs> {
        let invalid = |key: &str, why: String| {
            AmqpError::precondition_failed(format!("invalid arg '{key}' for {describe}: {why}"))
        };
        // An integer argument; `min` is the smallest valid value.
        let int = |key: &str, min: i64| -> AmqpResult<Option<i64>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n < min && min == 1 && n == 0 => Err(invalid(key, "{value_zero,0}".into())),
                    Some(n) if n < min => Err(invalid(key, format!("{{value_negative,{n}}}"))),
                    Some(n) => Ok(Some(n)),
                    None => Err(invalid(key, format!("{{unacceptable_type,{}}}", v.type_name()))),
                },
            }
        };
        let string = |key: &str| -> AmqpResult<Option<ShortStr>> {
            match args.get(key) {
                None => Ok(None),
                Some(FieldValue::LongStr(b)) if b.len() <= ShortStr::MAX_LEN => {
                    Ok(Some(ShortStr::from_bytes(b.clone())))
                }
                Some(v) => Err(invalid(key, format!("{{unacceptable_type,{}}}", v.type_name()))),
            }
        };
        let ms = |n: i64| Duration::from_millis(n as u64);
        let overflow = match args.get("x-overflow") {
            None => Overflow::DropHead,
            Some(FieldValue::LongStr(b)) => match &b[..] {
                b"drop-head" => Overflow::DropHead,
                b"reject-publish" => Overflow::RejectPublish,
                b"reject-publish-dlx" => Overflow::RejectPublishDlx,
                other => {
                    return Err(invalid(
                        "x-overflow",
                        format!("{{unknown_overflow_type,{}}}", String::from_utf8_lossy(other)),
                    ))
                }
            },
            Some(v) => return Err(invalid("x-overflow", format!("{{unacceptable_type,{}}}", v.type_name()))),
        };
        if let Some(v) = args.get("x-queue-type") {
            if v.as_bytes() != Some(b"classic") {
                let name = v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                return Err(AmqpError::precondition_failed(format!(
                    "invalid arg 'x-queue-type' for {describe}: warren supports only classic queues, not '{name}'"
                )));
            }
        }
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(FieldValue::Bool(b)) => *b,
            Some(v) => {
                return Err(invalid("x-single-active-consumer", format!("{{unacceptable_type,{}}}", v.type_name())))
            }
        };
        Ok(QueueArgs {
            message_ttl: int("x-message-ttl", 0)?.map(ms),
            expires: int("x-expires", 1)?.map(ms),
            max_length: int("x-max-length", 0)?.map(|n| n as usize),
            max_length_bytes: int("x-max-length-bytes", 0)?.map(|n| n as usize),
            overflow,
            dead_letter_exchange: string("x-dead-letter-exchange")?,
            dead_letter_routing_key: string("x-dead-letter-routing-key")?,
            // RabbitMQ caps priorities at 255.
            max_priority: int("x-max-priority", 0)?.map(|n| n.min(255) as u8),
            single_active_consumer,
            consumer_timeout: int("x-consumer-timeout", 0)?.map(ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "queue 'q' in vhost '/'";

    #[test]
    fn reads_the_arguments_rabbitmq_knows() {
        let t = FieldTable::new()
            .with("x-message-ttl", FieldValue::I32(1000))
            .with("x-expires", FieldValue::I64(5000))
            .with("x-max-length", FieldValue::I16(3))
            .with("x-overflow", FieldValue::LongStr("reject-publish".into()))
            .with("x-dead-letter-exchange", FieldValue::LongStr("dlx".into()))
            .with("x-max-priority", FieldValue::U8(10))
            .with("x-single-active-consumer", FieldValue::Bool(true));
        let a = QueueArgs::parse(&t, Q).unwrap();
        assert_eq!(a.message_ttl, Some(Duration::from_secs(1)));
        assert_eq!(a.expires, Some(Duration::from_secs(5)));
        assert_eq!(a.max_length, Some(3));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        assert_eq!(a.dead_letter_exchange, Some("dlx".into()));
        assert_eq!(a.max_priority, Some(10));
        assert!(a.single_active_consumer);
    }

    #[test]
    fn bad_values_are_406_with_rabbitmqs_reason() {
        let err = |t: FieldTable| QueueArgs::parse(&t, Q).unwrap_err().message;
        assert_eq!(
            err(FieldTable::new().with("x-message-ttl", FieldValue::I32(-5))),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-5}"
        );
        assert_eq!(
            err(FieldTable::new().with("x-expires", FieldValue::I32(0))),
            "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        assert_eq!(
            err(FieldTable::new().with("x-max-length", FieldValue::LongStr("ten".into()))),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {unacceptable_type,longstr}"
        );
        assert!(err(FieldTable::new().with("x-overflow", FieldValue::LongStr("explode".into()))).contains("x-overflow"));
    }
}
