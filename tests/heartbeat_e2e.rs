//! Heartbeats end to end, over TCP with a raw client and T = 1 s, against
//! the windows RabbitMQ's timing defines (see src/connection/heartbeat.rs):
//! a silent peer is dropped between 2T and 3T after its last octet, without
//! `connection.close`; any inbound traffic keeps it; the server's first
//! heartbeat comes T/2 after tune-ok and it is never silent much longer than
//! T/2; tune-ok heartbeat 0 turns all of it off; and the client's value is
//! used even above the server's proposal.
//!
//! The bounds carry a tolerance for a loaded 2-core CI machine; what they
//! check is the window, not a precise instant.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{RawClient, Read};
use tokio::time::Instant;
use warren::protocol::frame::HEARTBEAT_FRAME;
use warren::protocol::methods::{basic, connection};
use warren::protocol::{Frame, Method};
use warren::EmbeddedBroker;

const SLACK: Duration = Duration::from_millis(350);

/// What the server sent until it closed the socket, and when it closed it.
async fn frames_until_closed(client: &mut RawClient, limit: Duration) -> (Vec<(Duration, Frame)>, Duration) {
    let start = Instant::now();
    let mut frames = Vec::new();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match client.read(left).await {
            Read::Frame(f) => frames.push((start.elapsed(), f)),
            Read::Closed => return (frames, start.elapsed()),
        }
    }
}

#[tokio::test]
async fn a_client_silent_after_tune_ok_is_dropped_between_2t_and_3t_without_close() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.handshake_to_tune_ok(2047, 131_072, 1).await;
    // From here on the client sends nothing at all.
    let (frames, closed_after) = frames_until_closed(&mut client, Duration::from_secs(6)).await;
    eprintln!("silent client dropped {closed_after:?} after tune-ok (T = 1 s)");
    assert!(
        closed_after >= Duration::from_secs(2) && closed_after <= Duration::from_secs(3) + SLACK,
        "dropped after {closed_after:?}, expected between 2 s and 3 s"
    );
    assert!(!frames.is_empty());
    for (_, f) in &frames {
        assert!(matches!(f, Frame::Heartbeat { channel: 0 }), "only heartbeats before the drop, got {f:?}");
    }
}

#[tokio::test]
async fn server_heartbeats_start_at_t_over_2_and_never_pause_much_longer() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.handshake_to_tune_ok(2047, 131_072, 1).await;
    let (frames, _) = frames_until_closed(&mut client, Duration::from_secs(6)).await;
    let times: Vec<Duration> = frames.iter().map(|(t, _)| *t).collect();
    eprintln!("server heartbeats at {times:?} after tune-ok (T = 1 s)");
    assert!(times.len() >= 3, "{times:?}");
    assert!(
        times[0] >= Duration::from_millis(400) && times[0] <= Duration::from_millis(500) + SLACK,
        "first heartbeat {:?} after tune-ok, expected about T/2",
        times[0]
    );
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap <= Duration::from_millis(500) + SLACK, "server silent for {gap:?}: {times:?}");
    }
}

/// `basic.publish` + header + a 5-octet body on channel 1.
fn publish_frames(routing_key: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    common::publish_frames(&mut buf, routing_key, false, b"hello");
    buf
}

#[tokio::test]
async fn any_inbound_traffic_counts_a_publisher_without_heartbeats_is_kept() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    client.declare_queue("hb").await;
    let frames = publish_frames("hb");
    // Five seconds (5T) of publishing every 300 ms, never a heartbeat frame.
    let start = Instant::now();
    let mut published = 0;
    while start.elapsed() < Duration::from_secs(5) {
        client.send_raw(&frames).await;
        published += 1;
        // The server's heartbeats arrive meanwhile; the socket must stay open.
        let wait = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                read = client.read(Duration::from_secs(2)) => match read {
                    Read::Closed => panic!("dropped after {:?} although it kept publishing", start.elapsed()),
                    Read::Frame(f) => assert!(matches!(f, Frame::Heartbeat { .. }), "{f:?}"),
                },
            }
        }
    }
    let vhost = broker.broker().vhost(&"/".into()).unwrap();
    assert_eq!(vhost.queue(&"hb".into()).unwrap().message_count(), published);
}

#[tokio::test]
async fn heartbeat_frames_alone_keep_a_connection() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        client.send_raw(&HEARTBEAT_FRAME).await;
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                read = client.read(Duration::from_secs(2)) => if let Read::Closed = read {
                    panic!("dropped after {:?} although it sent heartbeats", start.elapsed())
                },
            }
        }
    }
}

#[tokio::test]
async fn heartbeat_zero_sends_none_and_never_drops() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    // 3.5 s of silence in both directions: with T = 1 this would be a drop.
    let bytes = client.read_bytes(Duration::from_millis(3500)).await;
    assert!(bytes.is_empty(), "the server sent {bytes:?} with heartbeats off");
    client.send(0, connection::Close { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 }).await;
    let (_, ok) = client.expect_method(Duration::from_secs(2)).await;
    assert!(matches!(ok, Method::ConnectionCloseOk(_)), "still open after the silence: {ok:?}");
}

#[tokio::test]
async fn a_heartbeat_above_the_servers_proposal_is_taken_as_sent() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    let tune = client.handshake_to_tune_ok(2047, 131_072, 2).await;
    assert_eq!(tune.heartbeat, 1);
    let start = Instant::now();
    // With T = 2 the first server heartbeat comes at T/2 = 1 s, not 0.5 s.
    match client.read(Duration::from_secs(3)).await {
        Read::Frame(Frame::Heartbeat { .. }) => {}
        other => panic!("{other:?}"),
    }
    let first = start.elapsed();
    assert!(first >= Duration::from_millis(900) && first <= Duration::from_millis(1000) + SLACK, "{first:?}");
    // And silence is tolerated for 2T = 4 s, not 2 s.
    let (_, closed_after) = frames_until_closed(&mut client, Duration::from_secs(8)).await;
    let total = first + closed_after;
    assert!(total >= Duration::from_secs(4) && total <= Duration::from_secs(6) + SLACK, "dropped after {total:?}");
}

#[tokio::test]
async fn unacked_messages_of_a_dropped_connection_are_requeued() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    client.declare_queue("late").await;
    client.send_raw(&publish_frames("late")).await;
    client.send(1, basic::Get { reserved_1: 0, queue: "late".into(), no_ack: false }).await;
    let (_, got) = client.expect_method(Duration::from_secs(2)).await;
    assert!(matches!(got, Method::BasicGetOk(ref g) if !g.redelivered), "{got:?}");
    // Silence: the server drops us, and the message goes back.
    let (_, after) = frames_until_closed(&mut client, Duration::from_secs(6)).await;
    assert!(after <= Duration::from_secs(3) + SLACK);
    let vhost = broker.broker().vhost(&"/".into()).unwrap();
    let q = vhost.queue(&"late".into()).unwrap();
    let (m, _) = q.get(true).expect("requeued");
    assert!(m.redelivered);
}

/// Waits until the broker's count of heartbeat tasks is `n`.
async fn heartbeat_tasks_become(broker: &EmbeddedBroker, n: usize) {
    let mut gauge = broker.broker().gauges.heartbeat_tasks.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(5), gauge.wait_for(|tasks| *tasks == n)).await.is_ok();
    assert!(waited, "heartbeat tasks stayed at {}, expected {n}", *gauge.borrow());
}

#[tokio::test]
async fn heartbeat_tasks_start_at_tune_ok_and_end_with_the_connection_however_it_ends() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::connect(broker.addr()).await;
    client.send_raw(warren::protocol::frame::PROTOCOL_HEADER).await;
    client.expect_method(Duration::from_secs(2)).await;
    assert_eq!(*broker.broker().gauges.heartbeat_tasks.borrow(), 0, "none before tune-ok");
    drop(client);

    // A clean close.
    let mut client = RawClient::open(broker.addr(), 1).await;
    heartbeat_tasks_become(&broker, 2).await;
    client.send(0, connection::Close { reply_code: 200, reply_text: "".into(), class_id: 0, method_id: 0 }).await;
    client.expect_method(Duration::from_secs(2)).await;
    heartbeat_tasks_become(&broker, 0).await;

    // The client vanishes (socket closed without a word).
    let client = RawClient::open(broker.addr(), 1).await;
    heartbeat_tasks_become(&broker, 2).await;
    drop(client);
    heartbeat_tasks_become(&broker, 0).await;

    // Heartbeat 0 starts none.
    let _quiet = RawClient::open(broker.addr(), 0).await;
    let mut connections = broker.broker().gauges.connections.subscribe();
    connections.wait_for(|n| *n == 1).await.unwrap();
    assert_eq!(*broker.broker().gauges.heartbeat_tasks.borrow(), 0);
}
