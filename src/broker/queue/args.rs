//! Queue arguments (`x-…` in `queue.declare`), checked as RabbitMQ checks them.

use std::time::Duration;

use crate::error::{AmqpError, AmqpResult};
use crate::protocol::properties::MAX_EXPIRY_MS;
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
        // An integer argument, checked as RabbitMQ's `check_int_arg` and the
        // range check `bound` (which returns RabbitMQ's reason term).
        let int = |key: &str, bound: fn(i64) -> Result<(), String>| -> AmqpResult<Option<i64>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) => bound(n).map(|()| Some(n)).map_err(|why| invalid(key, why)),
                    None => Err(invalid(key, format!("\"expected integer, got {}\"", v.type_name()))),
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
                _ => return Err(invalid("x-overflow", "invalid_overflow".into())),
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
        let dead_letter_exchange = string("x-dead-letter-exchange")?;
        let dead_letter_routing_key = string("x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined".into()));
        }
        Ok(QueueArgs {
            message_ttl: int("x-message-ttl", expiry)?.map(ms),
            expires: int("x-expires", expires)?.map(ms),
            max_length: int("x-max-length", non_negative)?.map(|n| n as usize),
            max_length_bytes: int("x-max-length-bytes", non_negative)?.map(|n| n as usize),
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority: int("x-max-priority", priority)?.map(|n| n as u8),
            single_active_consumer,
            consumer_timeout: int("x-consumer-timeout", non_negative)?.map(ms),
        })
    }
}

fn non_negative(n: i64) -> Result<(), String> {
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    Ok(())
}

/// `rabbit_misc:check_expiry`: not negative, at most ten years.
fn expiry(n: i64) -> Result<(), String> {
    non_negative(n)?;
    if n > MAX_EXPIRY_MS {
        return Err(format!("{{value_too_large,{n}}}"));
    }
    Ok(())
}

/// `x-expires`: an expiry, and not zero.
fn expires(n: i64) -> Result<(), String> {
    if n == 0 {
        return Err("{value_zero,0}".into());
    }
    expiry(n)
}

/// `x-max-priority`: RabbitMQ supports up to 255 levels.
fn priority(n: i64) -> Result<(), String> {
    non_negative(n)?;
    if n > 255 {
        return Err(format!("{{max_value_exceeded,{n}}}"));
    }
    Ok(())
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
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert_eq!(
            err(FieldTable::new().with("x-overflow", FieldValue::LongStr("explode".into()))),
            "invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"
        );
        assert_eq!(
            err(FieldTable::new().with("x-max-priority", FieldValue::I32(256))),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}"
        );
        assert_eq!(
            err(FieldTable::new().with("x-expires", FieldValue::I64(315_360_000_001))),
            "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_too_large,315360000001}"
        );
        assert_eq!(
            err(FieldTable::new().with("x-message-ttl", FieldValue::I64(315_360_000_001))),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_too_large,315360000001}"
        );
        assert_eq!(
            err(FieldTable::new().with("x-dead-letter-routing-key", FieldValue::LongStr("k".into()))),
            "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"
        );
        let limits = FieldTable::new()
            .with("x-max-priority", FieldValue::I32(255))
            .with("x-expires", FieldValue::I64(315_360_000_000))
            .with("x-message-ttl", FieldValue::I64(0));
        assert!(QueueArgs::parse(&limits, Q).is_ok());
    }
}
