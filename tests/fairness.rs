//! A connection with a flood of input already read takes turns with the
//! others: it handles a bounded number of frames, then lets the runtime run
//! everyone else (`FRAMES_PER_TURN` in src/connection/mod.rs). Without that,
//! one turn of a publisher drained its socket, and with a thousand of them
//! busy a new connection's handshake waited seconds (some timed out).
//!
//! The broker and both clients share this test's single thread, so the
//! order in which they run is the runtime's and nothing else's.

mod common;

use bytes::BytesMut;
use common::RawClient;
use warren::EmbeddedBroker;

const FLOOD: u32 = 2_000;

#[tokio::test]
async fn another_connection_is_answered_while_a_flood_is_being_handled() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut flooder = RawClient::open(broker.addr(), 0).await;
    flooder.declare_queue("flood").await;
    let mut other = RawClient::open(broker.addr(), 0).await;
    let mut flood = BytesMut::new();
    for _ in 0..FLOOD {
        common::publish_frames(&mut flood, "flood", false, b"x");
    }
    // 6,000 frames (120 KB) in one write, then a question on the other
    // connection right behind it.
    flooder.send_raw(&flood).await;
    let counted = other.message_count("flood").await;
    assert!(counted < FLOOD, "the other connection waited until the flooder had handled all {FLOOD} publishes");
    // And nothing was lost: the flooder's own question, behind its flood,
    // sees all of it.
    assert_eq!(flooder.message_count("flood").await, FLOOD);
}
