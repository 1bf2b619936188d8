//! What `warren perf` runs. `publish-consume` is PerfTest's run; the others
//! are what PerfTest lacks:
//!
//! - `connection-churn`: `-x` workers each open a connection and close it,
//!   again and again, for `-z` seconds;
//! - `queue-churn`: `-x` workers each declare a queue and delete it, with
//!   `--pipeline` pairs in flight;
//! - `idle`: `--connections` connections that heartbeat every T/2 and do
//!   nothing else, for `-z` seconds; with `--broker-pid`, the broker's
//!   resident memory before and after, per connection;
//! - `heartbeat-check`: the publish-consume load, and beside it one
//!   heartbeating idle connection, which must be kept, and one silent one,
//!   which must be dropped 2T..3T after its last byte.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::stats::{Meter, Reporter};
use super::Options;
use crate::client::{Client, Target};
use crate::protocol::frame::{write_body_frame_header, write_content_header, write_method};
use crate::protocol::methods::{basic, confirm, queue};
use crate::protocol::{Frame, Method};

pub async fn run(o: Options) -> Result<Value, String> {
    let target = Target::parse(&o.uri, o.tls_ca.as_deref())?;
    match o.scenario.as_str() {
        "publish-consume" => publish_consume(&o, &target).await,
        "connection-churn" => connection_churn(&o, &target).await,
        "queue-churn" => queue_churn(&o, &target).await,
        "idle" => idle(&o, &target).await,
        "heartbeat-check" => heartbeat_check(&o, &target).await,
        other => Err(format!(
            "unknown scenario '{other}'; known: publish-consume, connection-churn, queue-churn, idle, heartbeat-check"
        )),
    }
}

/// Microseconds since the Unix epoch: what a message's body carries. Wall
/// clock, not this process's own, so that a message left in a queue by an
/// earlier run shows how long it really waited.
fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The queues of a run, and whether it made them up (and so deletes them).
fn queues(o: &Options) -> (Vec<String>, bool) {
    match (&o.queue_pattern, &o.queue) {
        (Some(p), _) => {
            ((o.queue_pattern_from..=o.queue_pattern_to).map(|i| p.replace("%d", &i.to_string())).collect(), false)
        }
        (None, Some(q)) => (vec![q.clone()], false),
        (None, None) => (vec![format!("warren-perf-{}", std::process::id())], true),
    }
}

/// The run's end: its deadline (`-z`), if any.
fn deadline(o: &Options, default: u64) -> Instant {
    let secs = if o.time > 0 { o.time } else { default };
    Instant::now() + Duration::from_secs(secs)
}

async fn publish_consume(o: &Options, target: &Target) -> Result<Value, String> {
    let (names, made_up) = queues(o);
    let mut admin = Client::open(target, 0, "perf admin").await?;
    for q in &names {
        admin
            .send(1, queue::Declare { queue: q.as_str().into(), durable: o.persistent(), ..Default::default() })
            .await?;
        admin.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await?;
    }
    let meter = Arc::new(Meter::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut consumers = JoinSet::new();
    for i in 0..o.consumers {
        let (t, q, o2, m, s) = (target.clone(), names[i % names.len()].clone(), o.clone(), meter.clone(), stop.clone());
        let h = meter.histogram();
        consumers.spawn(async move { consume(&t, &q, &o2, &m, &h, s, i).await });
    }
    let mut producers = JoinSet::new();
    for i in 0..o.producers {
        let (t, q, o2, m, s) = (target.clone(), names[i % names.len()].clone(), o.clone(), meter.clone(), stop.clone());
        producers.spawn(async move { produce(&t, &q, &o2, &m, s, i).await });
    }
    let end = (o.time > 0).then(|| deadline(o, 0));
    let expected = if o.pmessages > 0 && o.consumers > 0 { Some(o.pmessages * o.producers as u64) } else { None };
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
    if made_up {
        for q in &names {
            admin.send(1, queue::Delete { queue: q.as_str().into(), ..Default::default() }).await?;
            admin.expect(|m| matches!(m, Method::QueueDeleteOk(_))).await?;
        }
    }
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
    Ok(json!({
        "scenario": "publish-consume", "id": o.id, "reason": reason,
        "producers": o.producers, "consumers": o.consumers, "queues": names.len(), "size": o.size,
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

fn encode_publish(queue: &str, size: usize, persistent: bool) -> Encoded {
    let mut one = BytesMut::new();
    let publish = basic::Publish { routing_key: queue.into(), ..Default::default() };
    write_method(&mut one, 1, &publish.into());
    let properties: &[u8] = if persistent { &[0x10, 0x00, 2] } else { &[0, 0] };
    write_content_header(&mut one, 1, 60, size as u64, properties);
    if size > 0 {
        write_body_frame_header(&mut one, 1, size);
    }
    let body_at = one.len();
    one.extend(std::iter::repeat_n(b'x', size));
    if size > 0 {
        one.extend_from_slice(&[0xce]);
    }
    Encoded { bytes: one.to_vec(), body_at }
}

async fn produce(
    target: &Target,
    queue: &str,
    o: &Options,
    meter: &Meter,
    stop: watch::Receiver<bool>,
    i: usize,
) -> Result<(), String> {
    let mut c = Client::open(target, 0, &format!("perf producer {i}")).await?;
    if o.confirm > 0 {
        c.send(1, confirm::Select { no_wait: false }).await?;
        c.expect(|m| matches!(m, Method::ConfirmSelectOk(_))).await?;
    }
    let one = encode_publish(queue, o.size, o.persistent());
    const BATCH: usize = 100;
    let mut batch: Vec<u8> = one.bytes.iter().copied().cycle().take(one.bytes.len() * BATCH).collect();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    let limit = if o.pmessages > 0 { o.pmessages } else { u64::MAX };
    let window = if o.confirm > 0 { o.confirm as u64 } else { u64::MAX };
    // A rate is kept by sending no more than the time elapsed allows,
    // looking again every millisecond.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    while sent < limit && !*stop.borrow() {
        let mut n = (BATCH as u64).min(limit - sent).min(window.saturating_sub(sent - confirmed));
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
    mut stop: watch::Receiver<bool>,
    i: usize,
) -> Result<(), String> {
    let mut c = Client::open(target, 0, &format!("perf consumer {i}")).await?;
    if o.qos > 0 {
        c.send(1, basic::Qos { prefetch_count: o.qos, ..Default::default() }).await?;
        c.expect(|m| matches!(m, Method::BasicQosOk(_))).await?;
    }
    c.send(1, basic::Consume { queue: queue.into(), no_ack: o.autoack, ..Default::default() }).await?;
    c.expect(|m| matches!(m, Method::BasicConsumeOk(_))).await?;
    // The content still to come of the delivery being read, its tag, and
    // whether its first body frame (with the send time) is still ahead.
    let (mut remaining, mut tag, mut first_body) = (0u64, 0u64, false);
    let mut unacked = 0u64;
    loop {
        let Some(frame) = c.frame_or_stop(&mut stop).await? else { break };
        let complete = match frame {
            Frame::Method { method: Method::BasicDeliver(d), .. } => {
                tag = d.delivery_tag;
                meter.received.fetch_add(1, Ordering::Relaxed);
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
        if complete && !o.autoack {
            unacked += 1;
            if o.multi_ack_every == 0 || unacked >= o.multi_ack_every {
                let multiple = o.multi_ack_every > 0;
                c.send(1, basic::Ack { delivery_tag: tag, multiple }).await?;
                unacked = 0;
            }
        }
    }
    let _ = c.close().await;
    Ok(())
}

/// Prints a progress line a second with what `count` counted, named `what`.
async fn count_for(o: &Options, end: Instant, count: &AtomicU64, what: &str) -> Vec<Value> {
    let mut seconds = Vec::new();
    let (started, mut last) = (Instant::now(), 0);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        let now = count.load(Ordering::Relaxed);
        let t = started.elapsed().as_secs_f64();
        println!("id: {}, time: {t:.3}s, {what}: {} /s", o.id, now - last);
        seconds.push(json!({"time_s": t, "per_s": now - last}));
        last = now;
    }
    seconds
}

async fn connection_churn(o: &Options, target: &Target) -> Result<Value, String> {
    let end = deadline(o, 10);
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for w in 0..o.producers.max(1) {
        let (t, n) = (target.clone(), count.clone());
        workers.spawn(async move {
            while Instant::now() < end {
                Client::open(&t, 0, &format!("perf churn {w}")).await?.close().await?;
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        });
    }
    let started = Instant::now();
    let seconds = count_for(o, end, &count, "connections opened and closed").await;
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let total = count.load(Ordering::Relaxed);
    let rate = total as f64 / started.elapsed().as_secs_f64();
    println!("id: {}, connections opened and closed: {total}, {} /s", o.id, rate as u64);
    Ok(
        json!({"scenario": "connection-churn", "workers": o.producers.max(1), "total": total, "rate": rate, "per_second": seconds}),
    )
}

async fn queue_churn(o: &Options, target: &Target) -> Result<Value, String> {
    let end = deadline(o, 10);
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    let window = o.pipeline.max(1);
    for w in 0..o.producers.max(1) {
        let (t, n) = (target.clone(), count.clone());
        workers.spawn(async move {
            let mut c = Client::open(&t, 0, &format!("perf queue churn {w}")).await?;
            let mut k = 0u64;
            while Instant::now() < end {
                let mut out = BytesMut::new();
                for _ in 0..window {
                    let name = format!("warren-perf-churn-{}-{w}-{k}", std::process::id());
                    k += 1;
                    write_method(
                        &mut out,
                        1,
                        &queue::Declare { queue: name.as_str().into(), ..Default::default() }.into(),
                    );
                    write_method(
                        &mut out,
                        1,
                        &queue::Delete { queue: name.as_str().into(), ..Default::default() }.into(),
                    );
                }
                c.write(&out).await?;
                for _ in 0..window {
                    c.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await?;
                    c.expect(|m| matches!(m, Method::QueueDeleteOk(_))).await?;
                }
                n.fetch_add(window as u64, Ordering::Relaxed);
            }
            c.close().await
        });
    }
    let started = Instant::now();
    let seconds = count_for(o, end, &count, "queues declared and deleted").await;
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let total = count.load(Ordering::Relaxed);
    let rate = total as f64 / started.elapsed().as_secs_f64();
    println!("id: {}, queues declared and deleted: {total}, {} /s", o.id, rate as u64);
    Ok(
        json!({"scenario": "queue-churn", "workers": o.producers.max(1), "pipeline": window, "total": total, "rate": rate, "per_second": seconds}),
    )
}

/// A process's resident memory, in octets, from /proc.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Keeps `c` alive as an idle, healthy client: a heartbeat every T/2, and
/// whatever the broker sends read and dropped. Returns when the broker
/// closes it.
async fn idle_client(c: Client, heartbeat: u16) -> String {
    let Client { mut reader, mut writer, .. } = c;
    let half = Duration::from_millis(u64::from(heartbeat.max(1)) * 500);
    let beat = async {
        use tokio::io::AsyncWriteExt;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        loop {
            ticks.tick().await;
            if heartbeat > 0 && writer.write_all(&crate::protocol::frame::HEARTBEAT_FRAME).await.is_err() {
                return "write failed".to_string();
            }
        }
    };
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return "closed by the broker".to_string(),
                Err(e) => return e.to_string(),
                Ok(_) => {}
            }
        }
    };
    tokio::select! { why = beat => why, why = read => why }
}

async fn idle(o: &Options, target: &Target) -> Result<Value, String> {
    let before = o.broker_pid.and_then(rss);
    let gate = Arc::new(Semaphore::new(100));
    let dropped = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut opening = JoinSet::new();
    for i in 0..o.connections {
        let (t, g, hb) = (target.clone(), gate.clone(), o.heartbeat);
        opening.spawn(async move {
            let _permit = g.acquire_owned().await.map_err(|e| e.to_string())?;
            Client::open(&t, hb, &format!("perf idle {i}")).await
        });
    }
    let mut alive = JoinSet::new();
    while let Some(opened) = opening.join_next().await {
        let c = opened.map_err(|e| e.to_string())??;
        let (hb, d) = (o.heartbeat, dropped.clone());
        alive.spawn(async move {
            idle_client(c, hb).await;
            d.fetch_add(1, Ordering::Relaxed);
        });
    }
    let opened_in = started.elapsed().as_secs_f64();
    println!("id: {}, {} connections open in {opened_in:.3} s", o.id, o.connections);
    let end = deadline(o, 10);
    let mut seconds = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        let memory = o.broker_pid.and_then(rss);
        let d = dropped.load(Ordering::Relaxed);
        println!(
            "id: {}, time: {:.3}s, open: {}, dropped: {d}{}",
            o.id,
            started.elapsed().as_secs_f64(),
            o.connections - d,
            memory.map(|m| format!(", broker RSS: {:.1} MiB", m as f64 / (1 << 20) as f64)).unwrap_or_default()
        );
        seconds.push(json!({"open": o.connections - d, "dropped": d, "broker_rss": memory}));
    }
    let after = o.broker_pid.and_then(rss);
    let per_connection = match (before, after) {
        (Some(b), Some(a)) if o.connections > 0 => Some(a.saturating_sub(b) as f64 / o.connections as f64),
        _ => None,
    };
    if let Some(p) = per_connection {
        println!("id: {}, broker memory per idle connection: {:.1} KB", o.id, p / 1024.0);
    }
    alive.abort_all();
    let d = dropped.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "idle", "connections": o.connections, "heartbeat": o.heartbeat,
        "opened_in_s": opened_in, "dropped": d,
        "broker_rss_before": before, "broker_rss_after": after, "bytes_per_connection": per_connection,
        "per_second": seconds,
    }))
}

async fn heartbeat_check(o: &Options, target: &Target) -> Result<Value, String> {
    let t = o.heartbeat.max(1);
    let healthy = Client::open(target, t, "perf heartbeat check: heartbeating").await?;
    let silent = Client::open(target, t, "perf heartbeat check: silent").await?;
    // The silent one's last octet: the end of its handshake, just now.
    let silent_since = Instant::now();
    let watch_silent = tokio::spawn(async move {
        let Client { mut reader, writer, .. } = silent;
        let _keep = writer;
        let mut buf = [0u8; 512];
        use tokio::io::AsyncReadExt;
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
        silent_since.elapsed()
    });
    let watch_healthy = tokio::spawn(idle_client(healthy, t));
    let mut load = o.clone();
    load.scenario = "publish-consume".into();
    load.time = o.time.max(4 * u64::from(t));
    let summary = publish_consume(&load, target).await?;
    let kept = !watch_healthy.is_finished();
    watch_healthy.abort();
    let silence = match tokio::time::timeout(Duration::from_secs(3 * u64::from(t) + 1), watch_silent).await {
        Ok(Ok(d)) => Some(d),
        _ => None,
    };
    let window =
        (Duration::from_secs(2 * u64::from(t)), Duration::from_secs(3 * u64::from(t)) + Duration::from_millis(250));
    let in_window = silence.is_some_and(|s| s >= window.0 && s <= window.1);
    println!(
        "id: {}, heartbeat check (T = {t} s): heartbeating connection {}, silent connection {}",
        o.id,
        if kept { "kept" } else { "DROPPED" },
        match silence {
            Some(s) => format!(
                "dropped after {:.3} s ({})",
                s.as_secs_f64(),
                if in_window { "inside 2T..3T" } else { "OUTSIDE 2T..3T" }
            ),
            None => "NOT dropped".into(),
        }
    );
    Ok(json!({
        "scenario": "heartbeat-check", "heartbeat": t, "heartbeating_kept": kept,
        "silent_dropped_after_s": silence.map(|s| s.as_secs_f64()), "silent_dropped_in_window": in_window,
        "load": summary,
    }))
}
