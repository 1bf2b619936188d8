//! The event log as server-sent events (`GET /api/warren/events/stream`):
//! in order, the same for every listener, resumed with `Last-Event-ID`, and
//! a listener that stops reading is told what it missed while the broker
//! goes on without waiting for it.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::http::{call, GUEST};
use common::sse::Listener;
use common::{publish_frames, RawClient};
use warren::protocol::methods::queue;
use warren::protocol::Method;
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn every_listener_gets_the_events_in_order_and_a_reconnect_resumes_after_its_last_id() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(Listener::open(http, None, None).await);
    }
    drop(RawClient::open(broker.addr(), 0).await);
    let mut seen = Vec::new();
    for l in &mut listeners {
        seen.push(l.until("\"type\":\"connection.closed\"").await);
    }
    assert!(seen.iter().all(|s| *s == seen[0]), "every listener sees the same events: {seen:?}");
    let ids: Vec<u64> = seen[0].iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "in order, none missing: {ids:?}");
    assert!(seen[0][0].1.contains("\"type\":\"connection.opened\""));
    for (id, data) in &seen[0] {
        assert!(data.contains(&format!("\"seq\":{id}")), "{data}");
    }

    // EventSource reconnects with the last id it saw: the stream goes on
    // from the one after it.
    let first = ids[0];
    let mut resumed = Listener::open(http, Some(first), None).await;
    assert_eq!(resumed.next_event().await, seen[0][1]);
}

#[tokio::test]
async fn a_listener_that_stops_reading_never_holds_the_broker_up_and_one_too_far_behind_is_told_what_it_missed() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut slow = Listener::open(http, None, Some(4096)).await;
    // 20,000 publishes, each a `message.published` event, while `slow`
    // reads nothing: more than the log keeps (10,000 events).
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let mut frames = BytesMut::new();
    for _ in 0..20_000 {
        publish_frames(&mut frames, "q", false, b"m");
    }
    client.send_raw(&frames).await;
    // A channel's methods are handled in order: the declare-ok comes after
    // every publish before it, while the listener still reads nothing.
    client.send(1, queue::Declare { queue: "q".into(), passive: true, ..Default::default() }).await;
    match client.expect_method(WAIT).await {
        (1, Method::QueueDeclareOk(ok)) => assert_eq!(ok.message_count, 20_000, "the broker was not held up"),
        other => panic!("{other:?}"),
    }

    // A listener resuming from an event the log no longer keeps is told how
    // many it missed and goes on from the oldest kept. (The log is written
    // by a task of its own: a long poll waits until it holds event 10,002.)
    let (status, body) = call(http, "GET", "/api/warren/events?since=10001&timeout_ms=10000", None, Some(GUEST)).await;
    assert_eq!(status, 200);
    assert!(body["last"].as_u64().unwrap() > 10_001, "{}", body["last"]);
    let mut late = Listener::open(http, Some(1), None).await;
    late.line_containing("event: dropped\ndata: ").await;
    let notice = late.line_containing("\n").await;
    let field = |name: &str| -> u64 {
        notice.split(&format!("\"{name}\":")).nth(1).unwrap().split(['}', ',']).next().unwrap().parse().unwrap()
    };
    let (missed, resume_at) = (field("missed"), field("resume_at"));
    assert_eq!(missed, resume_at - 2, "events 2..{resume_at} are gone: {notice}");
    assert_eq!(late.next_event().await.0, resume_at);

    // The slow one, reading at last, gets what it is owed in order.
    let (mut last, _) = slow.next_event().await;
    for _ in 0..100 {
        let (id, _) = slow.next_event().await;
        assert!(id > last, "{id} after {last}");
        last = id;
    }
}
