//! `publish-consume`, PerfTest's run: producers publish, consumers
//! consume and ack, and each second a report line counts both and gives
//! the consumers' latency.
//!
//! The topology is PerfTest's. Without an exchange (`-e`/`-t`), producers
//! publish through the default exchange to their queue by name. With one,
//! the run binds each queue to it with `-k` and producers publish to the
//! exchange with `-k`; unless `-u` or a pattern names the queues, each
//! consumer gets a queue of its own, so `-t fanout -y 10` is a fanout to
//! ten queues and every message is ten deliveries. `--extra-bindings N`
//! adds N bindings that never match, to see what a big routing table costs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::scenarios::{deadline, now_us, peak_rss, rss};
use super::stats::{Meter, Reporter};
use super::Options;
use crate::client::{Client, Target};
use crate::protocol::frame::{write_body_frame_header, write_content_header, write_method};
use crate::protocol::methods::{basic, confirm, exchange, queue};
use crate::protocol::{Frame, Method};

/// Where a run's messages go.
struct Topology {
    /// The queues, and whether the run made them up (and so deletes them).
    queues: Vec<String>,
    made_up: bool,
    /// The exchange producers publish to ("" the default one), and whether
    /// the run declared it (and so deletes it).
    exchange: String,
    declared: bool,
}

impl Topology {
    fn of(o: &Options) -> Topology {
        let pid = std::process::id();
        let exchange = match (&o.exchange, &o.kind) {
            (Some(e), _) => e.clone(),
            (None, Some(kind)) => format!("warren-perf-{kind}-{pid}"),
            (None, None) => String::new(),
        };
        let declared = !exchange.is_empty() && o.exchange.is_none();
        let (queues, made_up) = match (&o.queue_pattern, &o.queue) {
            (Some(p), _) => {
                ((o.queue_pattern_from..=o.queue_pattern_to).map(|i| p.replace("%d", &i.to_string())).collect(), false)
            }
            (None, Some(q)) => (vec![q.clone()], false),
            (None, None) if !exchange.is_empty() => {
                ((0..o.consumers.max(1)).map(|i| format!("warren-perf-{pid}-{i}")).collect(), true)
            }
            (None, None) => (vec![format!("warren-perf-{pid}")], true),
        };
        Topology { queues, made_up, exchange, declared }
    }

    /// The binding key of extra binding `i`: never the routing key.
    fn extra_key(o: &Options, i: usize) -> String {
        match (o.kind.as_deref(), i % 2) {
            (Some("topic"), 0) => format!("perf.{i}.*"),
            (Some("topic"), _) => format!("perf.*.x{i}"),
            _ => format!("perf.{i}"),
        }
    }

    /// Declares what the run needs, with `admin`.
    async fn declare(&self, o: &Options, admin: &mut Client) -> Result<(), String> {
        if self.declared {
            let kind = o.kind.as_deref().unwrap_or("direct");
            admin
                .send(
                    1,
                    exchange::Declare {
                        exchange: self.exchange.as_str().into(),
                        kind: kind.into(),
                        ..Default::default()
                    },
                )
                .await?;
            admin.expect(|m| matches!(m, Method::ExchangeDeclareOk(_))).await?;
        }
        for q in &self.queues {
            admin
                .send(1, queue::Declare { queue: q.as_str().into(), durable: o.persistent(), ..Default::default() })
                .await?;
            admin.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await?;
            if !self.exchange.is_empty() {
                self.bind(admin, q, &o.routing_key).await?;
            }
        }
        // Many bindings, a thousand in flight at a time (all at once could
        // fill both directions' socket buffers and wedge both ends).
        let extra: Vec<String> = (0..o.extra_bindings).map(|i| Topology::extra_key(o, i)).collect();
        for chunk in extra.chunks(1000).filter(|_| !self.exchange.is_empty()) {
            let mut out = BytesMut::new();
            for key in chunk {
                let bind = queue::Bind {
                    queue: self.queues[0].as_str().into(),
                    exchange: self.exchange.as_str().into(),
                    routing_key: key.as_str().into(),
                    ..Default::default()
                };
                write_method(&mut out, 1, &bind.into());
            }
            admin.write(&out).await?;
            for _ in chunk {
                admin.expect(|m| matches!(m, Method::QueueBindOk(_))).await?;
            }
        }
        Ok(())
    }

    async fn bind(&self, admin: &mut Client, q: &str, key: &str) -> Result<(), String> {
        let bind = queue::Bind {
            queue: q.into(),
            exchange: self.exchange.as_str().into(),
            routing_key: key.into(),
            ..Default::default()
        };
        admin.send(1, bind).await?;
        admin.expect(|m| matches!(m, Method::QueueBindOk(_))).await.map(|_| ())
    }

    /// Deletes what the run made up.
    async fn delete(&self, admin: &mut Client) -> Result<(), String> {
        for q in self.queues.iter().filter(|_| self.made_up) {
            admin.send(1, queue::Delete { queue: q.as_str().into(), ..Default::default() }).await?;
            admin.expect(|m| matches!(m, Method::QueueDeleteOk(_))).await?;
        }
        if self.declared {
            admin.send(1, exchange::Delete { exchange: self.exchange.as_str().into(), ..Default::default() }).await?;
            admin.expect(|m| matches!(m, Method::ExchangeDeleteOk(_))).await?;
        }
        Ok(())
    }

    /// Producer `i`'s exchange and routing key.
    fn route<'a>(&'a self, o: &'a Options, i: usize) -> (&'a str, &'a str) {
        match self.exchange.as_str() {
            "" => ("", &self.queues[i % self.queues.len()]),
            e => (e, &o.routing_key),
        }
    }
}

pub async fn publish_consume(o: &Options, target: &Target) -> Result<Value, String> {
    let rss_before = o.broker_pid.and_then(rss);
    let topology = Topology::of(o);
    let names = &topology.queues;
    let mut admin = Client::open(target, 0, "perf admin").await?;
    topology.declare(o, &mut admin).await?;
    let meter = Arc::new(Meter::default());
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (go_tx, go) = watch::channel(false);
    let mut consumers = JoinSet::new();
    for i in 0..o.consumers {
        let (t, q, o2, m) = (target.clone(), names[i % names.len()].clone(), o.clone(), meter.clone());
        let (h, cues) = (meter.histogram(), Cues { ready: ready_tx.clone(), go: go.clone(), stop: stop.clone() });
        consumers.spawn(async move { consume(&t, &q, &o2, &m, &h, cues, i).await });
    }
    let mut producers = JoinSet::new();
    for i in 0..o.producers {
        let (exchange, key) = topology.route(o, i);
        let route = (exchange.to_string(), key.to_string());
        let (t, o2, m) = (target.clone(), o.clone(), meter.clone());
        let cues = Cues { ready: ready_tx.clone(), go: go.clone(), stop: stop.clone() };
        producers.spawn(async move { produce(&t, route, &o2, &m, cues, i).await });
    }
    drop(ready_tx);
    // PerfTest's order: the first publish waits until every consumer and
    // producer is connected and set up. Otherwise the figures would include
    // the ramp, and a broker busy with the first producers would keep the
    // last ones waiting at their handshake (a thousand pairs did, past the
    // broker's 10 s handshake timeout).
    let mut set_up = 0;
    while set_up < o.consumers + o.producers {
        tokio::select! {
            Some(()) = ready.recv() => set_up += 1,
            Some(done) = consumers.join_next() => done.map_err(|e| e.to_string())??,
            Some(done) = producers.join_next() => done.map_err(|e| e.to_string())??,
            else => return Err("perf: a consumer or producer ended before the run began".into()),
        }
    }
    go_tx.send_replace(true);
    let end = (o.time > 0).then(|| deadline(o, 0));
    // Through an exchange every message goes to every queue (each is bound
    // with the key the producers publish with).
    let copies = if topology.exchange.is_empty() { 1 } else { names.len() as u64 };
    let expected = match o.pmessages > 0 && o.consumers >= copies as usize {
        true => Some(o.pmessages * o.producers as u64 * copies),
        false => None,
    };
    let mut reporter = Reporter::new(meter.clone());
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    let mut producers_done = o.producers == 0;
    let reason = loop {
        tokio::select! {
            _ = ticks.tick() => reporter.tick(&o.id),
            Some(done) = producers.join_next(), if !producers_done => {
                done.map_err(|e| e.to_string())??;
                producers_done = producers.is_empty();
            }
            Some(done) = consumers.join_next() => done.map_err(|e| e.to_string())??,
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break "Reached time limit";
        }
        let received = meter.received.load(Ordering::Relaxed);
        if producers_done && expected.is_none_or(|n| received >= n) && o.pmessages > 0 {
            break "Reached message limit";
        }
    };
    stop_tx.send_replace(true);
    reporter.tick(&o.id);
    while let Some(done) = producers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    while let Some(done) = consumers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    reporter.finish();
    topology.delete(&mut admin).await?;
    let _ = admin.close().await;
    let elapsed = reporter.elapsed();
    let (sent, received) = (meter.sent.load(Ordering::Relaxed), meter.received.load(Ordering::Relaxed));
    let latency = reporter.overall();
    println!("test stopped ({reason})");
    println!("id: {}, sending rate avg: {} msg/s", o.id, (sent as f64 / elapsed) as u64);
    println!("id: {}, receiving rate avg: {} msg/s", o.id, (received as f64 / elapsed) as u64);
    println!(
        "id: {}, consumer latency min/median/75th/95th/99th {}/{}/{}/{}/{} µs",
        o.id, latency.min, latency.median, latency.p75, latency.p95, latency.p99
    );
    let peak = o.broker_pid.and_then(peak_rss);
    if let (Some(before), Some(peak)) = (rss_before, peak) {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "id: {}, broker resident memory: {:.1} MiB before, {:.1} MiB at its peak ({:.2}x the message size above it)",
            o.id,
            mib(before),
            mib(peak),
            peak.saturating_sub(before) as f64 / o.size.max(1) as f64
        );
    }
    Ok(json!({
        "scenario": "publish-consume", "broker_rss_before": rss_before, "broker_rss_peak": peak, "id": o.id, "reason": reason,
        "producers": o.producers, "consumers": o.consumers, "queues": names.len(),
        "exchange": topology.exchange, "type": o.kind, "extra_bindings": o.extra_bindings, "size": o.size,
        "confirm": o.confirm, "qos": o.qos, "rate": o.rate, "persistent": o.persistent(),
        "seconds": elapsed, "sent": sent, "received": received,
        "send_rate": sent as f64 / elapsed, "receive_rate": received as f64 / elapsed,
        "latency_us": latency.json(),
        "per_second": reporter.seconds.iter().map(|s| s.json()).collect::<Vec<_>>(),
    }))
}

/// One publish, encoded once; its body starts at `body_at` and holds the
/// send time in its first 8 octets.
struct Encoded {
    bytes: Vec<u8>,
    body_at: usize,
}

/// `size` octets of body in frames no bigger than `frame_max` (0: no limit).
fn encode_publish(exchange: &str, routing_key: &str, size: usize, persistent: bool, frame_max: u32) -> Encoded {
    let mut one = BytesMut::new();
    let publish = basic::Publish { exchange: exchange.into(), routing_key: routing_key.into(), ..Default::default() };
    write_method(&mut one, 1, &publish.into());
    let properties: &[u8] = if persistent { &[0x10, 0x00, 2] } else { &[0, 0] };
    write_content_header(&mut one, 1, 60, size as u64, properties);
    let most = match frame_max {
        0 => usize::MAX,
        max => max as usize - 8,
    };
    let mut body_at = 0;
    let mut left = size;
    while left > 0 {
        let n = left.min(most);
        write_body_frame_header(&mut one, 1, n);
        if body_at == 0 {
            body_at = one.len();
        }
        one.extend(std::iter::repeat_n(b'x', n));
        one.extend_from_slice(&[0xce]);
        left -= n;
    }
    Encoded { bytes: one.to_vec(), body_at }
}

async fn produce(
    target: &Target,
    (exchange, routing_key): (String, String),
    o: &Options,
    meter: &Meter,
    mut cues: Cues,
    i: usize,
) -> Result<(), String> {
    let mut c = Client::open(target, 0, &format!("perf producer {i}")).await?;
    if o.confirm > 0 {
        c.send(1, confirm::Select { no_wait: false }).await?;
        c.expect(|m| matches!(m, Method::ConfirmSelectOk(_))).await?;
    }
    let _ = cues.ready.send(());
    // An error here is the run ending before it began.
    let _ = cues.go.wait_for(|go| *go).await;
    let one = encode_publish(&exchange, &routing_key, o.size, o.persistent(), c.frame_max);
    // Up to 100 publishes a write, fewer when they are big (one when a
    // message is a megabyte or more).
    let batch_count = (1 << 20) / one.bytes.len().max(1);
    let batch_count = batch_count.clamp(1, 100);
    let mut batch: Vec<u8> = one.bytes.iter().copied().cycle().take(one.bytes.len() * batch_count).collect();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    let limit = if o.pmessages > 0 { o.pmessages } else { u64::MAX };
    let window = if o.confirm > 0 { o.confirm as u64 } else { u64::MAX };
    // A rate is kept by sending no more than the time elapsed allows,
    // looking again every millisecond.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    while sent < limit && !*cues.stop.borrow() {
        let mut n = (batch_count as u64).min(limit - sent).min(window.saturating_sub(sent - confirmed));
        if o.rate > 0 {
            let credit = (o.rate as f64 * started.elapsed().as_secs_f64() - sent as f64).min(o.rate as f64);
            n = n.min(credit.max(0.0) as u64);
        }
        if n > 0 {
            let stamp = now_us().to_be_bytes();
            if o.size >= 8 {
                for k in 0..n as usize {
                    let at = k * one.bytes.len() + one.body_at;
                    batch[at..at + 8].copy_from_slice(&stamp);
                }
            }
            c.write(&batch[..one.bytes.len() * n as usize]).await?;
            sent += n;
            meter.sent.fetch_add(n, Ordering::Relaxed);
            continue;
        }
        // Nothing may be sent now: wait for confirms, or for the rate.
        let waiting_on_confirms = window.saturating_sub(sent - confirmed) == 0;
        tokio::select! {
            m = c.method(), if o.confirm > 0 => confirmed = count_confirm(m?, confirmed),
            _ = ticks.tick(), if !waiting_on_confirms => {}
        }
    }
    // The confirms still owed, for a clean end (bounded by the broker).
    while o.confirm > 0 && confirmed < sent {
        match tokio::time::timeout(Duration::from_secs(5), c.method()).await {
            Ok(m) => confirmed = count_confirm(m?, confirmed),
            Err(_) => break,
        }
    }
    let _ = c.close().await;
    Ok(())
}

/// What a consumer or producer hears from the run: it says when it is set
/// up, a producer then waits for the word to start, and all stop when told.
struct Cues {
    ready: mpsc::UnboundedSender<()>,
    go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

/// How many publishes are confirmed after `m`.
fn count_confirm(m: Method, confirmed: u64) -> u64 {
    match m {
        Method::BasicAck(basic::Ack { delivery_tag, multiple: true })
        | Method::BasicNack(basic::Nack { delivery_tag, multiple: true, .. }) => delivery_tag.max(confirmed),
        Method::BasicAck(_) | Method::BasicNack(_) => confirmed + 1,
        _ => confirmed,
    }
}

async fn consume(
    target: &Target,
    queue: &str,
    o: &Options,
    meter: &Meter,
    histogram: &super::stats::Histogram,
    mut cues: Cues,
    i: usize,
) -> Result<(), String> {
    let mut c = Client::open(target, 0, &format!("perf consumer {i}")).await?;
    if o.qos > 0 {
        c.send(1, basic::Qos { prefetch_count: o.qos, ..Default::default() }).await?;
        c.expect(|m| matches!(m, Method::BasicQosOk(_))).await?;
    }
    c.send(1, basic::Consume { queue: queue.into(), no_ack: o.autoack, ..Default::default() }).await?;
    c.expect(|m| matches!(m, Method::BasicConsumeOk(_))).await?;
    let _ = cues.ready.send(());
    // The content still to come of the delivery being read, its tag, and
    // whether its first body frame (with the send time) is still ahead.
    let (mut remaining, mut tag, mut first_body) = (0u64, 0u64, false);
    let mut unacked = 0u64;
    loop {
        let Some(frame) = c.frame_or_stop(&mut cues.stop).await? else { break };
        let complete = match frame {
            Frame::Method { method: Method::BasicDeliver(d), .. } => {
                tag = d.delivery_tag;
                false
            }
            Frame::Header { header, .. } => {
                remaining = header.body_size;
                first_body = true;
                remaining == 0
            }
            Frame::Body { body, .. } => {
                if first_body && body.len() >= 8 && o.size >= 8 {
                    let sent = u64::from_be_bytes(body[..8].try_into().expect("eight octets"));
                    histogram.record(now_us().saturating_sub(sent));
                }
                first_body = false;
                remaining = remaining.saturating_sub(body.len() as u64);
                remaining == 0
            }
            Frame::Method { method: Method::ConnectionClose(close), .. } => {
                return Err(format!("consumer {i} closed by the broker: {} {}", close.reply_code, close.reply_text));
            }
            _ => false,
        };
        if complete {
            // Counted when whole, as PerfTest counts in handleDelivery: a
            // run that stops at its message limit has then read every
            // message to its end.
            meter.received.fetch_add(1, Ordering::Relaxed);
        }
        if complete && !o.autoack {
            unacked += 1;
            if o.multi_ack_every == 0 || unacked >= o.multi_ack_every {
                let multiple = o.multi_ack_every > 0;
                c.send(1, basic::Ack { delivery_tag: tag, multiple }).await?;
                unacked = 0;
            }
        }
    }
    // The messages read but not yet acked are acked before the close: a
    // close would requeue them, and another consumer still reading would
    // get them again and count them twice.
    if unacked > 0 {
        c.send(1, basic::Ack { delivery_tag: tag, multiple: true }).await?;
    }
    let _ = c.close().await;
    Ok(())
}
