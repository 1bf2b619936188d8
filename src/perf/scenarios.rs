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
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::publish::publish_consume;
use super::Options;
use crate::client::{Client, Target};
use crate::protocol::frame::write_method;
use crate::protocol::methods::queue;
use crate::protocol::Method;

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
pub(super) fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The run's end: its deadline (`-z`), if any.
pub(super) fn deadline(o: &Options, default: u64) -> Instant {
    let secs = if o.time > 0 { o.time } else { default };
    Instant::now() + Duration::from_secs(secs)
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
pub(super) fn rss(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

/// The most resident memory the process has had, in octets.
pub(super) fn peak_rss(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
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
    let opening = Instant::now();
    let silent = Client::open(target, t, "perf heartbeat check: silent").await?;
    // The silent one's last octet went out during its handshake, somewhere
    // between `opening` and now: the silence is timed from now, and the
    // window check allows for the handshake's span (a drop at exactly 2T
    // after the broker last heard from it reads as a little under 2T here).
    let silent_since = Instant::now();
    let handshake = silent_since - opening;
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
    let in_window = silence.is_some_and(|s| s + handshake >= window.0 && s <= window.1);
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
