//! The memory high watermark, end to end against the real binary: a
//! publisher flat out with no consumer is blocked before warren's resident
//! memory reaches twice the watermark; a consumer drains the queue, the
//! publisher is unblocked, and every message arrives exactly once.

mod common;
// The binary as a child process (not in `common`, which examples share).
#[path = "common/binary.rs"]
mod binary;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use binary::{rss_bytes, Warren};
use bytes::BytesMut;
use common::{publish_frames, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::protocol::frame::parse_frame;
use warren::protocol::methods::basic;
use warren::protocol::{Frame, Method};

const WATERMARK: usize = 64 << 20;
const MESSAGES: u32 = 40_000;
const BODY: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_out_publisher_is_blocked_below_twice_the_watermark_and_nothing_is_lost() {
    let warren = Warren::start(&[], &format!("vm_memory_high_watermark.absolute = {}MiB\n", WATERMARK >> 20));
    let (addr, pid) = (warren.amqp, warren.pid());

    // Peak resident memory, sampled while the test runs.
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut publisher = RawClient::open(addr, 0).await;
    publisher.declare_queue("big").await;
    let (mut pub_read, mut pub_write) = publisher.stream.into_split();
    let writer = tokio::spawn(async move {
        let mut batch = BytesMut::new();
        let mut body = vec![0u8; BODY];
        for seq in 0..MESSAGES {
            body[..4].copy_from_slice(&seq.to_be_bytes());
            publish_frames(&mut batch, "big", false, &body);
            if batch.len() > 256 * 1024 || seq + 1 == MESSAGES {
                pub_write.write_all(&batch).await.unwrap();
                batch.clear();
            }
        }
        pub_write
    });
    // connection.blocked, then (once a consumer drains) connection.unblocked.
    let (blocked_tx, blocked_rx) = tokio::sync::oneshot::channel();
    let notices = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let mut blocked_tx = Some(blocked_tx);
        loop {
            while let Some(frame) = parse_frame(&mut buf, 1 << 20).unwrap() {
                match frame {
                    Frame::Method { method: Method::ConnectionBlocked(b), .. } => {
                        seen.push(format!("blocked: {}", b.reason));
                        if let Some(tx) = blocked_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Frame::Method { method: Method::ConnectionUnblocked(_), .. } => {
                        seen.push("unblocked".to_string());
                        return seen;
                    }
                    _ => {}
                }
            }
            if pub_read.read_buf(&mut buf).await.unwrap() == 0 {
                return seen;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), blocked_rx).await.expect("the publisher is blocked").unwrap();
    let peak_while_blocked = peak.load(Ordering::Relaxed);

    // A consumer drains everything; every sequence number exactly once.
    let mut consumer = RawClient::open(addr, 0).await;
    consumer.send(1, basic::Consume { queue: "big".into(), no_ack: true, ..Default::default() }).await;
    let mut stream = consumer.stream;
    let mut buf = BytesMut::new();
    let mut seen = vec![false; MESSAGES as usize];
    let mut received = 0;
    while received < MESSAGES {
        while let Some(frame) = parse_frame(&mut buf, 1 << 20).unwrap() {
            if let Frame::Body { body, .. } = frame {
                let seq = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                assert!(!seen[seq], "message {seq} delivered twice");
                seen[seq] = true;
                received += 1;
            }
        }
        if received == MESSAGES {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf))
            .await
            .expect("deliveries")
            .unwrap();
        assert!(n > 0);
    }
    writer.await.unwrap();
    let notices = notices.await.unwrap();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "watermark {} MiB: peak RSS {} MiB ({} MiB when blocked); notices {notices:?}",
        WATERMARK >> 20,
        peak >> 20,
        peak_while_blocked >> 20
    );
    assert_eq!(notices.first().map(String::as_str), Some("blocked: low on memory"));
    assert!(notices.contains(&"unblocked".to_string()), "{notices:?}");
    assert!(peak < 2 * WATERMARK, "peak RSS {} MiB", peak >> 20);
}

/// One publisher at full speed, one slow consumer that acks: the broker's
/// memory stays bounded by the watermark (the publisher is blocked and
/// unblocked as the consumer catches up) and every message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_publisher_and_a_slow_consumer_stay_within_bounds_without_loss() {
    const LIMIT: usize = 8 << 20;
    const COUNT: u32 = 12_000;
    let broker = warren::EmbeddedBroker::builder().memory_high_watermark(LIMIT).start().await.unwrap();
    let mut publisher = RawClient::open(broker.addr(), 0).await;
    publisher.declare_queue("slow").await;
    let (mut pub_read, mut pub_write) = publisher.stream.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 1 << 16];
        while pub_read.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    tokio::spawn(async move {
        let mut batch = BytesMut::new();
        let mut body = vec![0u8; 2048];
        for seq in 0..COUNT {
            body[..4].copy_from_slice(&seq.to_be_bytes());
            publish_frames(&mut batch, "slow", false, &body);
            if batch.len() > 64 * 1024 || seq + 1 == COUNT {
                pub_write.write_all(&batch).await.unwrap();
                batch.clear();
            }
        }
    });

    let mut consumer = RawClient::open(broker.addr(), 0).await;
    consumer.send(1, basic::Qos { prefetch_count: 100, ..Default::default() }).await;
    consumer.send(1, basic::Consume { queue: "slow".into(), ..Default::default() }).await;
    let mut stream = consumer.stream;
    let mut buf = BytesMut::new();
    let mut seen = vec![false; COUNT as usize];
    let (mut received, mut peak_held, mut last_tag, mut acked) = (0, 0, 0, 0);
    while received < COUNT {
        while let Some(frame) = parse_frame(&mut buf, 1 << 20).unwrap() {
            match frame {
                Frame::Method { method: Method::BasicDeliver(d), .. } => last_tag = d.delivery_tag,
                Frame::Body { body, .. } => {
                    let seq = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                    assert!(!seen[seq], "message {seq} delivered twice");
                    seen[seq] = true;
                    received += 1;
                }
                _ => {}
            }
        }
        peak_held = peak_held.max(broker.broker().alarms.held());
        if received == COUNT {
            break;
        }
        if last_tag - acked >= 50 {
            // A slow consumer: a pause before each batch of acks.
            tokio::time::sleep(Duration::from_millis(2)).await;
            acked = last_tag;
            let mut ack = BytesMut::new();
            warren::protocol::frame::write_method(
                &mut ack,
                1,
                &basic::Ack { delivery_tag: last_tag, multiple: true }.into(),
            );
            stream.write_all(&ack).await.unwrap();
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf))
            .await
            .expect("deliveries")
            .unwrap();
        assert!(n > 0);
    }
    eprintln!("slow consumer: peak held {} KiB with a {} KiB watermark", peak_held >> 10, LIMIT >> 10);
    assert!(peak_held < 2 * LIMIT, "held {peak_held} bytes");
}
