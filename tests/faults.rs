//! Fault injection with real clients over TCP: each fault as the client sees
//! it. lapin finds withheld heartbeats; a client whose traffic is ignored is
//! dropped as after missed heartbeats; a black hole is silent but open; a
//! kill is a TCP reset; a forced close is 320 with the text; latency delays
//! deliveries; one connection can be blocked on its own. Connections are
//! addressed by name, by client-provided name, or by predicate.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{publish_frames, RawClient, Read};
use futures_lite::StreamExt;
use lapin::{Connection, ConnectionProperties};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use warren::protocol::methods::{basic, connection};
use warren::protocol::{Frame, Method};
use warren::ConnectionState;
use warren::{ConnectionHandle, EmbeddedBroker};

const WAIT: Duration = Duration::from_secs(5);

async fn only_connection(broker: &EmbeddedBroker) -> ConnectionHandle {
    broker.wait_for_connection(|_| true, WAIT).await.expect("a connection")
}

#[tokio::test]
async fn withheld_heartbeats_make_lapin_report_a_missing_heartbeat() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let props = ConnectionProperties::default().with_connection_name("lapin-under-test".into());
    let conn = Connection::connect(&broker.url(), props).await.unwrap();
    let mut events = conn.events_listener();
    let handle = broker
        .wait_for_connection(|c| c.client_name() == Some("lapin-under-test"), WAIT)
        .await
        .expect("addressed by its client-provided name");
    let started = Instant::now();
    handle.withhold_heartbeats(true);
    let error = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return e;
            }
        }
        panic!("events ended")
    })
    .await
    .expect("lapin notices the silence");
    assert!(matches!(error.kind(), lapin::ErrorKind::MissingHeartbeatError), "{error:?}");
    // lapin gives up after 2T without reads; T = 1.
    assert!(started.elapsed() < Duration::from_millis(3500), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_ignored_client_is_dropped_as_after_missed_heartbeats() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    let handle = only_connection(&broker).await;
    assert_eq!(broker.connection(handle.name()).map(|c| c.name().to_string()), Some(handle.name().to_string()));
    handle.ignore_client(true);
    let ignored = Instant::now();
    // The client keeps sending heartbeats; they no longer count.
    loop {
        client.send_raw(&warren::protocol::frame::HEARTBEAT_FRAME).await;
        match tokio::time::timeout(Duration::from_millis(400), client.read(Duration::from_secs(10))).await {
            Ok(Read::Closed) => break,
            Ok(Read::Frame(_)) | Err(_) => {}
        }
        assert!(ignored.elapsed() < Duration::from_secs(5), "never dropped");
    }
    let after = ignored.elapsed();
    assert!(after >= Duration::from_secs(2) && after <= Duration::from_millis(3400), "dropped after {after:?}");
}

#[tokio::test]
async fn a_black_hole_is_silent_but_keeps_the_connection_open() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    let handle = only_connection(&broker).await;
    handle.black_hole(true);
    client.send(1, basic::Qos { prefetch_count: 1, ..Default::default() }).await;
    // 3T of silence: no heartbeat, no qos-ok, and no close either.
    let silence = client.read_bytes(Duration::from_secs(3)).await;
    assert!(silence.is_empty(), "the black hole sent {silence:?}");
    handle.black_hole(false);
    // Released: the request sent into the hole is answered.
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicQosOk(_)));
}

#[tokio::test]
async fn a_kill_is_a_tcp_reset() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let client = RawClient::open(broker.addr(), 0).await;
    only_connection(&broker).await.kill();
    let mut stream = client.stream;
    let mut buf = [0u8; 64];
    let result = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("the connection ends");
    match result {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} octets"),
    }
}

#[tokio::test]
async fn a_forced_close_is_320_with_the_text() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    let handle = broker.find_connection(|c| c.state() == ConnectionState::Running).expect("by predicate");
    handle.force_close("Closed via the test toolkit");
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(c)) => {
            assert_eq!(c.reply_code, 320);
            assert_eq!(c.reply_text.to_string(), "CONNECTION_FORCED - Closed via the test toolkit");
        }
        other => panic!("{other:?}"),
    }
    client.send(0, connection::CloseOk {}).await;
    assert!(matches!(client.read(WAIT).await, Read::Closed));
}

#[tokio::test]
async fn delivery_latency_holds_deliveries_back() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    client.send(1, basic::Consume { queue: "q".into(), no_ack: true, ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicConsumeOk(_)));
    only_connection(&broker).await.delivery_latency(Duration::from_millis(400));
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"late");
    let sent = Instant::now();
    client.send_raw(&frames).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicDeliver(_)));
    assert!(sent.elapsed() >= Duration::from_millis(400), "delivered after {:?}", sent.elapsed());
}

#[tokio::test]
async fn one_connection_can_be_blocked_while_others_publish() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut blocked = RawClient::open(broker.addr(), 0).await;
    blocked.declare_queue("q").await;
    let target = only_connection(&broker).await;
    let mut free = RawClient::open(broker.addr(), 0).await;
    target.block(true);
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"x");
    blocked.send_raw(&frames).await;
    assert!(matches!(blocked.expect_method(WAIT).await, (0, Method::ConnectionBlocked(_))));
    free.send_raw(&frames).await;
    free.send(1, basic::Get { queue: "q".into(), no_ack: true, ..Default::default() }).await;
    assert!(matches!(free.expect_method(WAIT).await.1, Method::BasicGetOk(_)), "the other connection publishes");
    assert!(matches!(free.read(WAIT).await, Read::Frame(Frame::Header { .. })));
    target.block(false);
    assert!(matches!(blocked.expect_method(WAIT).await, (0, Method::ConnectionUnblocked(_))));
}
