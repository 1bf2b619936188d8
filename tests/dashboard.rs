//! What the live page stands on, over real sockets: the page itself behind
//! basic auth, the `stats` the event stream carries when asked, the events
//! that draw a timeline (monitor ticks, state changes, fault switches, each
//! with its time), and the teaching demo playing the seed's story.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use common::http::{call, call_with_head, GUEST};
use common::sse::Listener;
use common::{publish_frames, RawClient};
use serde_json::Value;
use tokio::time::Instant;
use warren::{EmbeddedBroker, Event};

const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

/// The next `event: stats` of a stream asked for them, parsed.
async fn next_stats(l: &mut Listener) -> Value {
    l.line_containing("event: stats\ndata: ").await;
    serde_json::from_str(l.line_containing("\n").await.trim()).unwrap()
}

/// Events until one of type `kind` whose fields include `with`, parsed.
async fn until_event(l: &mut Listener, kind: &str, with: &[(&str, Value)]) -> Value {
    loop {
        let (_, data) = l.next_event().await;
        let event: Value = serde_json::from_str(&data).unwrap();
        if event["type"] == kind && with.iter().all(|(k, v)| event[*k] == *v) {
            return event;
        }
    }
}

#[tokio::test]
async fn the_page_is_served_behind_basic_auth_with_a_policy_that_forbids_anything_but_its_own_origin() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let (status, head, _) = call_with_head(http, "GET", "/", None, None).await;
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: basic"), "{head}");
    let (status, head, _) = call_with_head(http, "GET", "/", None, Some(GUEST)).await;
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.contains("connect-src 'self'"), "{head}");
}

#[tokio::test]
async fn a_stream_asked_for_stats_gets_them_first_and_then_again_with_each_connection_and_queue() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    client.declare_queue("q").await;
    let mut l = Listener::open_path(http, "/api/warren/events/stream?stats=1", None, None).await;
    let first = next_stats(&mut l).await;
    assert!((first["now"].as_f64().unwrap() - now_ms()).abs() < 5_000.0, "the broker's clock: {first}");
    let c = &first["connections"][0];
    assert_eq!(
        (c["heartbeat"].as_u64(), c["state"].as_str(), c["user"].as_str()),
        (Some(1), Some("running"), Some("guest"))
    );
    assert_eq!(c["monitor_paused"], false);
    assert_eq!(c["faults"]["ignore_client"], false);
    assert!(c["idle_in_ms"].as_u64().unwrap() < 5_000, "{c}");
    let q = first["queues"].as_array().unwrap().iter().find(|q| q["name"] == "q").unwrap().clone();
    assert_eq!((q["messages_ready"].as_u64(), q["published"].as_u64()), (Some(0), Some(0)));

    let mut frames = BytesMut::new();
    for _ in 0..3 {
        publish_frames(&mut frames, "q", false, b"m");
    }
    client.send_raw(&frames).await;
    // The next stats show the publishes: they come again, unasked.
    let mut published = 0;
    for _ in 0..5 {
        let stats = next_stats(&mut l).await;
        let q = stats["queues"].as_array().unwrap().iter().find(|q| q["name"] == "q").cloned().unwrap();
        published = q["published"].as_u64().unwrap();
        if published == 3 {
            assert_eq!(q["messages_ready"], 3);
            break;
        }
    }
    assert_eq!(published, 3);
    // A stream not asked for stats gets none: only events.
    let mut plain = Listener::open(http, None, None).await;
    drop(RawClient::open(broker.addr(), 0).await);
    let seen = plain.until("\"type\":\"connection.closed\"").await;
    assert!(!plain_text_has_stats(&seen), "{seen:?}");
}

fn plain_text_has_stats(seen: &[(u64, String)]) -> bool {
    seen.iter().any(|(_, data)| data.contains("\"queues\""))
}

#[tokio::test]
async fn monitor_ticks_state_changes_and_fault_switches_are_events_stamped_with_their_time() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut l = Listener::open(http, None, None).await;

    // A silent client: the monitor's ticks count 1, then 2, and it is dropped.
    let _silent = RawClient::open(broker.addr(), 1).await;
    let opened = until_event(&mut l, "connection.opened", &[]).await;
    let name = opened["connection"].clone();
    let one = until_event(&mut l, "monitor.tick", &[("connection", name.clone()), ("silent", 1.into())]).await;
    let two = until_event(&mut l, "monitor.tick", &[("connection", name.clone()), ("silent", 2.into())]).await;
    let gone = until_event(&mut l, "heartbeat.timeout", &[("connection", name.clone())]).await;
    let at = |e: &Value| e["at"].as_f64().unwrap();
    assert!((at(&opened) - now_ms()).abs() < 10_000.0, "{opened}");
    // Ticks come every T, whatever the load of the machine within reason.
    let gap = at(&two) - at(&one);
    assert!((900.0..1_500.0).contains(&gap), "ticks {gap} ms apart");
    assert!(at(&gone) >= at(&two));
    assert!(two["idle_ms"].as_u64().unwrap() >= 1_000, "{two}");

    // A fault switch flipped over HTTP is an event with every switch.
    let mut client = RawClient::open(broker.addr(), 1).await;
    client.declare_queue("q").await;
    let name = until_event(&mut l, "connection.opened", &[]).await["connection"].clone();
    let path =
        format!("/api/warren/connections/{}/faults", name.as_str().unwrap().replace(' ', "%20").replace('>', "%3E"));
    let (status, _) = call(http, "POST", &path, Some(r#"{"block": true}"#), Some(GUEST)).await;
    assert_eq!(status, 204);
    let faults = until_event(&mut l, "connection.faults", &[("connection", name.clone())]).await;
    assert_eq!(faults["faults"]["block"], true);
    assert_eq!(faults["faults"]["ignore_client"], false);
    // Blocking at the next publish, with the monitor paused.
    let state =
        until_event(&mut l, "connection.state", &[("connection", name.clone()), ("state", "blocking".into())]).await;
    assert_eq!(state["monitor_paused"], false);
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    let state =
        until_event(&mut l, "connection.state", &[("connection", name.clone()), ("state", "blocked".into())]).await;
    assert_eq!(state["monitor_paused"], true);
    let (status, _) = call(http, "POST", &path, Some(r#"{"block": false}"#), Some(GUEST)).await;
    assert_eq!(status, 204);
    let state =
        until_event(&mut l, "connection.state", &[("connection", name.clone()), ("state", "running".into())]).await;
    assert_eq!(state["monitor_paused"], false);
}

#[tokio::test]
async fn the_demo_plays_the_seed_story_a_worker_dropped_in_the_window_and_its_task_redelivered() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut events = broker.events();
    let (status, body) = call(http, "POST", "/api/warren/demo", None, Some(GUEST)).await;
    assert_eq!(status, 202, "{body}");
    let worker = body["worker"].as_str().unwrap().to_string();
    assert_eq!(body["queue"], "demo.tasks");
    // One story at a time.
    let (status, body) = call(http, "POST", "/api/warren/demo", None, Some(GUEST)).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("the demo is already running")));

    // The worker heartbeats until its task comes, then falls silent and is
    // dropped 2T..3T (T = 1 s) after its last byte.
    let mut last_heartbeat = None;
    let silence = loop {
        match events.next(WAIT).await.expect("the story goes on") {
            Event::HeartbeatReceived { connection } if connection == worker => last_heartbeat = Some(Instant::now()),
            Event::HeartbeatTimeout { connection, timeout, .. } if connection == worker => {
                assert_eq!(timeout, 1);
                break last_heartbeat.expect("the worker sent heartbeats first").elapsed();
            }
            _ => {}
        }
    };
    assert!(silence >= Duration::from_millis(1_900) && silence <= Duration::from_millis(3_300), "{silence:?}");
    // Its late ack is lost; a second worker gets the task again, redelivered.
    let redelivered = events
        .wait_for(|e| matches!(e, Event::Delivered { queue, .. } if queue == "demo.tasks"), WAIT)
        .await
        .expect("the task is delivered again");
    assert!(matches!(redelivered, Event::Delivered { redelivered: true, .. }), "{redelivered:?}");
    let step = events
        .wait_for(|e| matches!(e, Event::DemoStep { text, .. } if text.contains("redelivered = true")), WAIT)
        .await;
    assert!(step.is_some());
    // The queue ends empty: the second worker acked.
    let closed = events.wait_for(|e| matches!(e, Event::ConnectionClosed { .. }), WAIT).await;
    assert!(closed.is_some());
    let q = broker.broker().queue_infos().into_iter().find(|q| q.name == "demo.tasks").unwrap();
    assert_eq!((q.messages_ready, q.messages_unacknowledged), (0, 0));
}

#[tokio::test]
async fn the_demo_refuses_a_vhost_that_is_not_there_and_callers_who_are_not_administrators() {
    let broker = EmbeddedBroker::builder()
        .http(true)
        .user_with_tags("watcher", "pw", &["monitoring"])
        .permissions("watcher", "/", ".*", ".*", ".*")
        .start()
        .await
        .unwrap();
    let http = broker.http_addr().unwrap();
    let watcher = common::http::basic("watcher", "pw");
    let (status, body) = call(http, "POST", "/api/warren/demo", None, Some(&watcher)).await;
    assert_eq!((status, body["reason"].as_str()), (401, Some("Not administrator user")));
    let (status, body) = call(http, "POST", "/api/warren/demo", Some(r#"{"vhost": "nowhere"}"#), Some(GUEST)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("could not connect"), "{body}");
    let (status, _) = call(http, "POST", "/api/warren/demo", Some(r#"{"vhost": 7}"#), Some(GUEST)).await;
    assert_eq!(status, 400);
    let long = format!(r#"{{"vhost": "{}"}}"#, "v".repeat(300));
    let (status, _) = call(http, "POST", "/api/warren/demo", Some(&long), Some(GUEST)).await;
    assert_eq!(status, 400);
    // After a failed start, a good one goes ahead.
    let (status, body) = call(http, "POST", "/api/warren/demo", None, Some(GUEST)).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_peek_leaves_messages_as_they_are_and_its_count_and_bodies_are_bounded() {
    let broker = EmbeddedBroker::builder().http(true).start().await.unwrap();
    let http = broker.http_addr().unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"first");
    publish_frames(&mut frames, "q", false, &[b'x'; 10_000]);
    client.send_raw(&frames).await;
    client.declare_queue("q").await; // handled after the publishes
    for _ in 0..2 {
        let (status, body) = call(http, "GET", "/api/warren/queues/%2F/q/peek?count=5", None, Some(GUEST)).await;
        assert_eq!(status, 200, "{body}");
        let shown = body.as_array().unwrap();
        assert_eq!(shown.len(), 2);
        assert_eq!((shown[0]["payload"].as_str(), shown[0]["redelivered"].as_bool()), (Some("first"), Some(false)));
        assert_eq!(shown[1]["payload_bytes"], 10_000);
        assert_eq!(shown[1]["payload"].as_str().unwrap().len(), 4096, "bodies are cut to 4 KiB");
    }
    let q = broker.broker().queue_infos().into_iter().find(|q| q.name == "q").unwrap();
    assert_eq!((q.messages_ready, q.messages_unacknowledged), (2, 0), "nothing was taken");
    for bad in ["0", "101", "many", "-1"] {
        let (status, body) =
            call(http, "GET", &format!("/api/warren/queues/%2F/q/peek?count={bad}"), None, Some(GUEST)).await;
        assert_eq!((status, body["reason"].as_str()), (400, Some("count must be a number from 1 to 100")), "{bad}");
    }
    assert_eq!(call(http, "GET", "/api/warren/queues/%2F/none/peek", None, Some(GUEST)).await.0, 404);
    assert_eq!(call(http, "GET", "/api/warren/queues/nowhere/q/peek", None, Some(GUEST)).await.0, 404);
}
