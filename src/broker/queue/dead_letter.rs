//! Dead-lettering: a message rejected without requeue, expired, or dropped
//! for length goes to the queue's `x-dead-letter-exchange`, carrying the
//! story of its deaths in the `x-death` header as RabbitMQ writes it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::Queue;
use crate::broker::message::{Message, QueuedMessage};
use crate::broker::VirtualHost;
use crate::protocol::{BasicProperties, FieldTable, FieldValue, ShortStr};

/// Why a message died, as the `reason` field of `x-death` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    MaxLen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
        }
    }
}

/// A message leaving `queue` for its dead-letter exchange (or for nowhere,
/// when the queue has none).
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: Reason,
    /// Its position in the queue's journal, if it was written there: the
    /// journal is told it is gone.
    pub stored: Option<u64>,
}

impl DeadLetter {
    /// A message that was in the queue.
    pub fn of(m: QueuedMessage, reason: Reason) -> DeadLetter {
        DeadLetter { stored: m.stored.then_some(m.seq), message: m.message, reason }
    }
}

fn longstr(s: &[u8]) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s))
}

/// The message as it is republished: `x-death` updated (an entry per queue
/// and reason, most recent first, with a count), the `x-first-death-*`
/// headers set once, and a per-message `expiration` removed (it would kill
/// the message again) and kept as `original-expiration`.
pub fn rewrite(m: &Message, queue: &ShortStr, reason: Reason, exchange: &ShortStr, routing_key: &ShortStr) -> Message {
    let mut props = BasicProperties::decode(&m.properties).unwrap_or_default();
    let mut headers = props.headers.take().unwrap_or_default();
    let mut deaths: Vec<FieldValue> = match headers.get("x-death") {
        Some(FieldValue::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.get("queue").and_then(FieldValue::as_bytes) == Some(queue.as_bytes())
            && t.get("reason").and_then(FieldValue::as_bytes) == Some(reason.as_str().as_bytes())
    };
    let existing = deaths.iter().position(|d| d.as_table().is_some_and(same));
    let entry = match existing {
        Some(i) => {
            let FieldValue::Table(mut t) = deaths.remove(i) else { unreachable!("matched a table") };
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            t.insert("count", FieldValue::I64(count + 1));
            t
        }
        None => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut t = FieldTable::new()
                .with("count", FieldValue::I64(1))
                .with("reason", longstr(reason.as_str().as_bytes()))
                .with("queue", longstr(queue.as_bytes()))
                .with("time", FieldValue::Timestamp(now))
                .with("exchange", longstr(m.exchange.as_bytes()))
                .with("routing-keys", FieldValue::Array(vec![longstr(m.routing_key.as_bytes())]));
            if let Some(expiration) = &props.expiration {
                t.insert("original-expiration", longstr(expiration.as_bytes()));
            }
            t
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    for (key, value) in [
        ("x-first-death-reason", reason.as_str().as_bytes()),
        ("x-first-death-queue", queue.as_bytes()),
        ("x-first-death-exchange", m.exchange.as_bytes()),
    ] {
        if headers.get(key).is_none() {
            headers.insert(key, longstr(value));
        }
    }
    props.headers = Some(headers);
    props.expiration = None;
    Message {
        exchange: exchange.clone(),
        routing_key: routing_key.clone(),
        properties: props.to_bytes(),
        body_size: m.body_size,
        body: m.body.clone(),
        charge: None,
    }
}

/// Whether delivering this dead-lettered message to `target` would close a
/// loop with no rejection in it (RabbitMQ drops such messages rather than
/// let them circle for ever).
fn is_cycle(m: &Message, target: &ShortStr) -> bool {
    let Ok(props) = BasicProperties::decode(&m.properties) else { return false };
    let Some(FieldValue::Array(deaths)) = props.headers.as_ref().and_then(|h| h.get("x-death")).cloned() else {
        return false;
    };
    let tables: Vec<&FieldTable> = deaths.iter().filter_map(FieldValue::as_table).collect();
    let rejected = tables.iter().any(|t| t.get("reason").and_then(FieldValue::as_bytes) == Some(b"rejected"));
    !rejected && tables.iter().any(|t| t.get("queue").and_then(FieldValue::as_bytes) == Some(target.as_bytes()))
}

/// Republishes dead letters from `queue` through its dead-letter exchange.
/// Without one, or if that exchange does not exist, they are dropped.
pub fn publish(vhost: &VirtualHost, queue: &Queue, letters: Vec<DeadLetter>) {
    let Some(dlx) = &queue.args.dead_letter_exchange else { return };
    let mut targets = Vec::new();
    for letter in letters {
        let routing_key = queue.args.dead_letter_routing_key.as_ref().unwrap_or(&letter.message.routing_key).clone();
        let mut message = rewrite(&letter.message, &queue.name, letter.reason, dlx, &routing_key);
        message.charge = Some(vhost.alarms.charge(message.footprint()));
        let message = Arc::new(message);
        targets.clear();
        vhost.route_republished(dlx, &routing_key, &message.properties, &mut targets);
        for target in targets.drain(..) {
            if !is_cycle(&message, &target.name) {
                target.publish(message.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Body;

    fn message(props: BasicProperties) -> Message {
        Message {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            properties: props.to_bytes(),
            body_size: 1,
            body: Body::One(Bytes::from_static(b"x")),
            charge: None,
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        let p = BasicProperties::decode(&m.properties).unwrap();
        let Some(FieldValue::Array(a)) = p.headers.unwrap().get("x-death").cloned() else { panic!() };
        a.into_iter().map(|v| v.as_table().unwrap().clone()).collect()
    }

    #[test]
    fn x_death_records_each_queue_and_reason_once_with_a_count() {
        let m = message(BasicProperties { expiration: Some("100".into()), ..Default::default() });
        let once = rewrite(&m, &"q1".into(), Reason::Expired, &"dlx".into(), &"rk".into());
        let d = deaths(&once);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(d[0].get("reason").and_then(FieldValue::as_bytes), Some(&b"expired"[..]));
        assert_eq!(d[0].get("original-expiration").and_then(FieldValue::as_bytes), Some(&b"100"[..]));
        assert_eq!(BasicProperties::decode(&once.properties).unwrap().expiration, None);
        assert_eq!(once.exchange, ShortStr::from("dlx"));

        let twice = rewrite(&once, &"q2".into(), Reason::Rejected, &"dlx".into(), &"rk".into());
        let thrice = rewrite(&twice, &"q1".into(), Reason::Expired, &"dlx".into(), &"rk".into());
        let d = deaths(&thrice);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].get("queue").and_then(FieldValue::as_bytes), Some(&b"q1"[..]));
        assert_eq!(d[0].get("count"), Some(&FieldValue::I64(2)));
        let headers = BasicProperties::decode(&thrice.properties).unwrap().headers.unwrap();
        assert_eq!(headers.get("x-first-death-queue").and_then(FieldValue::as_bytes), Some(&b"q1"[..]));
        assert_eq!(headers.get("x-first-death-reason").and_then(FieldValue::as_bytes), Some(&b"expired"[..]));
    }

    #[test]
    fn cycles_without_rejection_are_detected() {
        let m = message(BasicProperties::default());
        let dead = rewrite(&m, &"q1".into(), Reason::Expired, &"".into(), &"q1".into());
        assert!(is_cycle(&dead, &"q1".into()));
        assert!(!is_cycle(&dead, &"q2".into()));
        let rejected = rewrite(&m, &"q1".into(), Reason::Rejected, &"".into(), &"q1".into());
        assert!(!is_cycle(&rejected, &"q1".into()));
    }
}
