//! Unit tests of the queue: ordering, priorities, credit, requeue.

use super::*;
use crate::broker::message::Body;
use bytes::Bytes;

/// A channel that records what it was given, and can refuse.
#[derive(Default)]
struct FakeChannel {
    got: Mutex<Vec<(ShortStr, u64, bool)>>,
    refuse: std::sync::atomic::AtomicBool,
}

impl DeliveryTarget for FakeChannel {
    fn deliver(
        &self,
        _q: &Arc<Queue>,
        tag: &ShortStr,
        m: QueuedMessage,
        _no_ack: bool,
        _now: Instant,
    ) -> Result<(), (QueuedMessage, Refusal)> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err((m, Refusal::Full));
        }
        self.got.lock().unwrap().push((tag.clone(), m.seq, m.redelivered));
        Ok(())
    }

    fn consumer_cancelled(&self, _tag: &ShortStr) {}
}

fn message(n: u8) -> Arc<Message> {
    Arc::new(Message {
        exchange: ShortStr::default(),
        routing_key: "q".into(),
        properties: Bytes::from_static(&[0, 0]),
        body_size: 1,
        body: Body::One(Bytes::copy_from_slice(&[n])),
        charge: None,
    })
}

fn options() -> QueueOptions {
    QueueOptions { durable: false, exclusive_owner: None, auto_delete: false, arguments: FieldTable::new() }
}

fn queue() -> Arc<Queue> {
    Queue::detached("q".into(), options(), QueueArgs::default())
}

const CH: ChannelKey = ChannelKey { connection: 1, channel: 1 };

fn consumer(tag: &str, target: &Arc<FakeChannel>, prefetch: u32) -> Consumer {
    Consumer {
        tag: tag.into(),
        channel: CH,
        target: target.clone(),
        no_ack: false,
        exclusive: false,
        prefetch_count: prefetch,
        priority: 0,
        unacked: 0,
    }
}

#[test]
fn round_robin_honours_prefetch() {
    let q = queue();
    let ch = Arc::new(FakeChannel::default());
    q.consume(consumer("a", &ch, 1), || {}).unwrap();
    q.consume(consumer("b", &ch, 2), || {}).unwrap();
    for n in 0..5 {
        q.publish(message(n));
    }
    let got: Vec<_> = ch.got.lock().unwrap().iter().map(|(t, s, _)| (t.to_string(), *s)).collect();
    assert_eq!(got, [("a".into(), 0), ("b".into(), 1), ("b".into(), 2)]);
    assert_eq!(q.message_count(), 2);
    let acked =
        QueuedMessage { seq: 0, redelivered: false, expires_at: None, priority: 0, message: message(0), stored: false };
    q.settled(CH, Some(&"a".into()), &[acked]);
    assert_eq!(ch.got.lock().unwrap().last().unwrap().1, 3);
}

#[test]
fn requeued_messages_go_back_in_order_marked_redelivered() {
    let q = queue();
    for n in 0..4 {
        q.publish(message(n));
    }
    let (m0, _) = q.get(false).unwrap();
    let (m1, _) = q.get(false).unwrap();
    q.requeue(CH, None, vec![m1, m0]);
    let order: Vec<_> = (0..4).map(|_| q.get(true).unwrap().0).map(|m| (m.seq, m.redelivered)).collect();
    assert_eq!(order, [(0, true), (1, true), (2, false), (3, false)]);
}

#[test]
fn refused_deliveries_stay_queued_until_dispatch() {
    let q = queue();
    let ch = Arc::new(FakeChannel::default());
    ch.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    q.consume(consumer("a", &ch, 0), || {}).unwrap();
    q.publish(message(0));
    assert_eq!(q.message_count(), 1);
    ch.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    q.dispatch();
    assert_eq!(q.message_count(), 0);
    assert_eq!(ch.got.lock().unwrap().len(), 1);
}

#[test]
fn exclusive_consumers_shut_others_out() {
    let q = queue();
    let ch = Arc::new(FakeChannel::default());
    let mut c = consumer("a", &ch, 0);
    c.exclusive = true;
    q.consume(c, || {}).unwrap();
    let err = q.consume(consumer("b", &ch, 0), || {}).unwrap_err();
    assert_eq!(err.code, crate::protocol::ReplyCode::AccessRefused);
}
