//! `GET /api/warren/events/stream`: the event log as server-sent events
//! (`text/event-stream`), for a browser's `EventSource` or any HTTP client
//! that reads as it goes. Each event is
//!
//! ```text
//! id: 42
//! data: {"seq":42,"type":"heartbeat.sent","connection":"127.0.0.1:50000 -> 127.0.0.1:5672"}
//! ```
//!
//! A client that reconnects with `Last-Event-ID: 42` resumes with event 43
//! (`EventSource` does this by itself); without it, a stream starts with
//! the next event. Listeners read from the same bounded log as the long
//! poll, at their own pace: the broker never waits for one. A listener that
//! has fallen behind what the log keeps is told what it missed,
//!
//! ```text
//! event: dropped
//! data: {"missed":1234,"resume_at":5678}
//! ```
//!
//! and goes on from the oldest event kept. An idle stream gets a comment
//! line every 15 s, so that proxies keep it and a gone client is noticed.
//!
//! With `?stats=1` the stream also carries, first thing and then once a
//! second, what no event tells as it changes: every connection's counters
//! and idle times, every queue's counts, the alarms (see
//! `dashboard::snapshot`). These have no id, so resuming is unaffected:
//!
//! ```text
//! event: stats
//! data: {"now":1764766258123.4,"connections":[…],"queues":[…],"alarms":{…}}
//! ```

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use serde_json::Value;
use tokio::time::Instant;

use super::auth::Caller;
use super::{dashboard, not_authorised, Http};

const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream asked for `stats` gets them.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Where one listener's stream stands.
struct Cursor {
    /// The number of the next event to send.
    next: u64,
    /// When to send the next `stats`, if asked for.
    stats_at: Option<Instant>,
}

pub(super) async fn event_stream(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if !caller.is_monitor() {
        return not_authorised("Not monitor user");
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let next = match resume {
        Some(id) => id.saturating_add(1),
        None => http.log.lock().unwrap_or_else(|e| e.into_inner()).last() + 1,
    };
    let stats_at = query.get("stats").is_some_and(|v| v != "0").then(Instant::now);
    let stream = futures_util::stream::unfold((http, Cursor { next, stats_at }), |(http, mut at)| async move {
        let chunk = next_chunk(&http, &mut at).await;
        Some((Ok::<_, std::convert::Infallible>(chunk), (http, at)))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(stream))
        .into_response()
}

/// The next piece of the stream: `stats` when they are due, else the
/// events from `at.next` on once there are any, else a keep-alive comment
/// after a quiet while.
async fn next_chunk(http: &Http, at: &mut Cursor) -> String {
    loop {
        if let Some(due) = at.stats_at.filter(|due| *due <= Instant::now()) {
            // A listener that was slow to read skips what it missed.
            let now = Instant::now();
            at.stats_at = Some(if due + STATS_EVERY > now { due + STATS_EVERY } else { now + STATS_EVERY });
            let snapshot: Value = dashboard::snapshot(&http.broker);
            return format!("event: stats\ndata: {snapshot}\n\n");
        }
        let next = at.next;
        // Taken before looking, so that an event logged in between wakes it.
        let logged = http.logged.notified();
        {
            let log = http.log.lock().unwrap_or_else(|e| e.into_inner());
            if log.last() >= next {
                let mut chunk = String::new();
                let oldest = log.oldest().unwrap_or(next);
                if oldest > next {
                    let _ = write!(
                        chunk,
                        "event: dropped\ndata: {{\"missed\":{},\"resume_at\":{oldest}}}\n\n",
                        oldest - next
                    );
                }
                for (seq, json) in log.since(next) {
                    let _ = write!(chunk, "id: {seq}\ndata: {json}\n\n");
                }
                at.next = log.last() + 1;
                return chunk;
            }
        }
        // Stats, when asked for, come far more often than a keep-alive is needed.
        let wake = at.stats_at.unwrap_or_else(|| Instant::now() + KEEP_ALIVE);
        if tokio::time::timeout_at(wake, logged).await.is_err() && at.stats_at.is_none() {
            return ": keep-alive\n\n".to_string();
        }
    }
}
