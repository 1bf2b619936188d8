//! Flow control over TCP with raw clients: resource alarms block publishers
//! (and only publishers) with `connection.blocked`; a blocked connection is
//! not dropped for missed heartbeats, and gets a fresh 2T..3T window once
//! unblocked; a client that dies while blocked is found through the failing
//! heartbeat writes; a client that does not read its replies puts its
//! connection in `flow`; `channel.flow` pauses deliveries.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{publish_frames, RawClient, Read};
use tokio::time::Instant;
use warren::broker::alarm::Resource;
use warren::protocol::methods::{basic, channel, connection};
use warren::protocol::{Frame, Method};
use warren::ConnectionState;
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(5);

fn one_publish(routing_key: &str, body: &[u8]) -> BytesMut {
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, routing_key, false, body);
    frames
}

async fn expect_state(broker: &EmbeddedBroker, state: ConnectionState) -> String {
    broker
        .wait_for_connection_state(state, WAIT)
        .await
        .unwrap_or_else(|| panic!("no connection reached {state}; have {:?}", broker.connections()))
}

fn ready(broker: &EmbeddedBroker, queue: &str) -> usize {
    broker.broker().vhost(&"/".into()).unwrap().queue(&queue.into()).unwrap().message_count()
}

#[tokio::test]
async fn an_alarm_blocks_a_publisher_at_its_next_publish_and_never_a_consumer() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut consumer = RawClient::open(broker.addr(), 0).await;
    consumer.declare_queue("q").await;
    let mut publisher = RawClient::open(broker.addr(), 0).await;

    broker.raise_alarm(Resource::Memory);
    // Both go to "blocking"; neither is blocked before it publishes.
    let deadline = Instant::now() + WAIT;
    while broker.connections().iter().any(|(_, s)| *s != ConnectionState::Blocking) {
        assert!(Instant::now() < deadline, "{:?}", broker.connections());
        tokio::task::yield_now().await;
    }

    publisher.send_raw(&one_publish("q", b"first")).await;
    match publisher.expect_method(WAIT).await {
        (0, Method::ConnectionBlocked(b)) => assert_eq!(b.reason.to_string(), "low on memory"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    expect_state(&broker, ConnectionState::Blocked).await;
    // Not read while blocked: nothing published now reaches the queue.
    publisher.send_raw(&one_publish("q", b"second")).await;

    // The consumer-only connection works throughout.
    consumer.send(1, basic::Get { queue: "q".into(), ..Default::default() }).await;
    assert!(matches!(consumer.expect_method(WAIT).await.1, Method::BasicGetEmpty(_)));
    let states: Vec<ConnectionState> = broker.connections().into_iter().map(|(_, s)| s).collect();
    assert!(states.contains(&ConnectionState::Blocking) && states.contains(&ConnectionState::Blocked), "{states:?}");

    broker.clear_alarm(Resource::Memory);
    assert!(matches!(publisher.expect_method(WAIT).await, (0, Method::ConnectionUnblocked(_))));
    // Both messages arrive, once each, in order.
    consumer.send(1, basic::Consume { queue: "q".into(), no_ack: true, ..Default::default() }).await;
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        if let Read::Frame(Frame::Body { body, .. }) = consumer.read(WAIT).await {
            bodies.push(body);
        }
    }
    assert_eq!(bodies, [&b"first"[..], &b"second"[..]]);
    expect_state(&broker, ConnectionState::Running).await;
}

#[tokio::test]
async fn a_blocked_connection_is_not_dropped_for_missed_heartbeats_and_gets_a_fresh_window_after() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    client.declare_queue("q").await;
    broker.raise_alarm(Resource::Memory);
    expect_state(&broker, ConnectionState::Blocking).await;
    client.send_raw(&one_publish("q", b"m")).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ConnectionBlocked(_)));
    // From now on the client sends nothing at all, for 4 s = 4T.
    let blocked_at = Instant::now();
    while blocked_at.elapsed() < Duration::from_secs(4) {
        match client.read(Duration::from_secs(2)).await {
            Read::Frame(Frame::Heartbeat { .. }) => {}
            other => panic!("after {:?} blocked: {other:?}", blocked_at.elapsed()),
        }
    }
    broker.clear_alarm(Resource::Memory);
    let unblocked_at = Instant::now();
    // Still silent: now the monitor runs again, from a fresh window.
    while let Read::Frame(_) = client.read(Duration::from_secs(6)).await {}
    let after = unblocked_at.elapsed();
    assert!(after >= Duration::from_secs(2) && after <= Duration::from_millis(3350), "dropped {after:?} after unblock");
}

#[tokio::test]
async fn a_client_that_dies_while_blocked_is_found_and_its_unacked_messages_requeued() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    client.declare_queue("q").await;
    client.send_raw(&one_publish("q", b"taken")).await;
    client.send(1, basic::Get { queue: "q".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicGetOk(_)));
    assert!(matches!(client.read(WAIT).await, Read::Frame(Frame::Header { .. })));
    assert!(matches!(client.read(WAIT).await, Read::Frame(Frame::Body { .. })));
    broker.raise_alarm(Resource::Memory);
    expect_state(&broker, ConnectionState::Blocking).await;
    client.send_raw(&one_publish("q", b"more")).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ConnectionBlocked(_)));
    expect_state(&broker, ConnectionState::Blocked).await;

    // The client dies; the broker is not reading its socket, so only a
    // heartbeat write can find out.
    let mut gone = broker.broker().gauges.connections.subscribe();
    let died = Instant::now();
    drop(client);
    tokio::time::timeout(Duration::from_millis(2500), gone.wait_for(|n| *n == 0))
        .await
        .expect("the dead blocked connection is cleaned up within 2.5 s")
        .unwrap();
    eprintln!("dead blocked client found after {:?}", died.elapsed());
    let q = broker.broker().vhost(&"/".into()).unwrap().queue(&"q".into()).unwrap();
    let (m, _) = q.get(true).expect("the unacked message is back");
    assert!(m.redelivered);
}

#[tokio::test]
async fn a_client_that_never_reads_its_replies_is_put_in_flow_with_bounded_memory() {
    let broker = EmbeddedBroker::builder().heartbeat(1).start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 1).await;
    // Mandatory publishes to nowhere: each comes back as basic.return with
    // its body, which this client never reads.
    let body = vec![7u8; 16 * 1024];
    let mut frames = BytesMut::new();
    for _ in 0..64 {
        publish_frames(&mut frames, "nowhere", true, &body);
    }
    let writer = tokio::spawn(async move {
        // Writes stall once the broker stops reading; stop after 10 s at most.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if tokio::time::timeout(Duration::from_secs(1), client.send_raw(&frames)).await.is_err() {
                break;
            }
        }
        client
    });
    expect_state(&broker, ConnectionState::Flow).await;
    let writer_stalled = writer.await.unwrap();
    let held = broker.broker().alarms.held();
    eprintln!("in flow: {} KiB of returns held", held >> 10);
    assert!(held < 32 << 20, "returns held in memory: {held} bytes");
    // In flow the broker does not read the client, so its heartbeats cannot
    // count: the monitor is paused and 3T later the connection is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(broker.connections().first().map(|(_, s)| *s), Some(ConnectionState::Flow));
    drop(writer_stalled);
}

#[tokio::test]
async fn channel_flow_pauses_and_resumes_deliveries() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("q").await;
    client.send(1, channel::Flow { active: false }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ChannelFlowOk(ok) if !ok.active));
    client.send(1, basic::Consume { queue: "q".into(), no_ack: true, ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicConsumeOk(_)));
    client.send_raw(&one_publish("q", b"held")).await;
    // A round trip on the same channel: the publish has been handled by then.
    client.send(1, basic::Qos::default()).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicQosOk(_)));
    assert_eq!(ready(&broker, "q"), 1, "paused: the message waits in the queue");
    client.send(1, channel::Flow { active: true }).await;
    assert!(matches!(client.expect_method(WAIT).await.1, Method::ChannelFlowOk(ok) if ok.active));
    assert!(matches!(client.expect_method(WAIT).await.1, Method::BasicDeliver(_)));
    client.send(0, connection::Close { reply_code: 200, ..Default::default() }).await;
}
