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

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::{not_authorised, Http};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn event_stream(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if !caller.is_monitor() {
        return not_authorised("Not monitor user");
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let next = match resume {
        Some(id) => id.saturating_add(1),
        None => http.log.lock().unwrap_or_else(|e| e.into_inner()).last() + 1,
    };
    let stream = futures_util::stream::unfold((http, next), |(http, next)| async move {
        let (chunk, next) = next_chunk(&http, next).await;
        Some((Ok::<_, std::convert::Infallible>(chunk), (http, next)))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(stream))
        .into_response()
}

/// The events from `next` on, as one piece of the stream, once there are
/// any (or a keep-alive comment after a quiet while); and the next number
/// to send after it.
async fn next_chunk(http: &Http, next: u64) -> (String, u64) {
    loop {
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
                return (chunk, log.last() + 1);
            }
        }
        if tokio::time::timeout(KEEP_ALIVE, logged).await.is_err() {
            return (": keep-alive\n\n".to_string(), next);
        }
    }
}
