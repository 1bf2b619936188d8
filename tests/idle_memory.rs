//! What an idle connection costs the broker: heap octets per connection,
//! counted by a global allocator that tracks the live total.
//!
//! The clients are `warren perf --scenario idle` in a process of their own,
//! so only the broker's allocations are in this process. A connection that
//! only heartbeats keeps no read buffer and no scratch buffer for its writer
//! (see `Connection::size_read_buffer` and `FrameBuffer::release_scratch`):
//! before they were given back, each idle connection held 80 KB of them.
//! And a message published now and then pins a small read buffer while it
//! is queued, never a big one.
//!
//! The live total is the whole process's, so the tests take turns.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use warren::client::{Client, Target};
use warren::protocol::frame::{write_body_frame_header, write_content_header, write_method};
use warren::protocol::methods::{basic, confirm, queue};
use warren::protocol::Method;
use warren::{EmbeddedBroker, Event};

struct LiveBytes;

/// Octets allocated and not yet freed, by every thread.
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// Enough that the event stream's ring (at most 16,384 events, which this
/// test's subscription keeps filled) is a small share of each connection's
/// figure, and few enough for the default limit of 1,024 open files.
const CONNECTIONS: usize = 500;

/// The bound: heap per idle, heartbeating connection (measured: 6.3 KB,
/// the event ring's share included; 12.6 KB before the connection's task
/// was built before its first await and stopped holding itself twice, and
/// the writer's queue, the fault commands, the read buffer, the monitor's
/// pause switch and the state watch stopped allocating while unused).
const MOST_PER_CONNECTION: isize = 8 * 1024;

/// One test at a time: each measures the process's live total.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_heartbeating_connection_holds_no_buffers() {
    let _turn = TURN.lock().await;
    let broker = EmbeddedBroker::start().await.unwrap();
    let mut events = broker.events();
    let before = LIVE.load(Ordering::Relaxed);
    let clients = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["perf", "-h", &broker.url(), "--scenario", "idle", "--heartbeat", "1", "-z", "30"])
        .args(["--connections", &CONNECTIONS.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _clients = KillOnDrop(clients);
    // Every connection has heartbeated three times: open, tuned and idle.
    let mut beats = std::collections::HashMap::<String, u32>::new();
    let mut idle = HashSet::new();
    while idle.len() < CONNECTIONS {
        let event = events.next(Duration::from_secs(20)).await.expect("heartbeats from every connection");
        if let Event::HeartbeatReceived { connection } = event {
            let n = beats.entry(connection.clone()).or_default();
            *n += 1;
            if *n >= 3 {
                idle.insert(connection);
            }
        }
    }
    let per_connection = (LIVE.load(Ordering::Relaxed) - before) / CONNECTIONS as isize;
    println!("heap per idle connection: {per_connection} octets");
    assert_eq!(broker.connections().len(), CONNECTIONS, "none dropped");
    assert!(per_connection < MOST_PER_CONNECTION, "{per_connection} octets per idle connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_now_and_then_pins_a_small_buffer_while_queued() {
    let _turn = TURN.lock().await;
    let broker = EmbeddedBroker::start().await.unwrap();
    let target = Target::parse(&broker.url(), None).unwrap();
    let mut c = Client::open(&target, 0, "now and then").await.unwrap();
    c.send(1, confirm::Select { no_wait: false }).await.unwrap();
    c.expect(|m| matches!(m, Method::ConfirmSelectOk(_))).await.unwrap();
    c.send(1, queue::Declare { queue: "kept".into(), ..Default::default() }).await.unwrap();
    c.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await.unwrap();
    // First a burst, so that the connection has had a big buffer.
    let one = |body: &[u8]| {
        let mut out = BytesMut::new();
        let publish = basic::Publish { routing_key: "kept".into(), ..Default::default() };
        write_method(&mut out, 1, &publish.into());
        write_content_header(&mut out, 1, 60, body.len() as u64, &[0, 0]);
        write_body_frame_header(&mut out, 1, body.len());
        out.extend_from_slice(body);
        out.extend_from_slice(&[0xce]);
        out
    };
    let burst: Vec<u8> = (0..2000).flat_map(|_| one(&[b'b'; 100]).to_vec()).collect();
    c.write(&burst).await.unwrap();
    let mut confirmed = 0;
    while confirmed < 2000 {
        if let Method::BasicAck(ack) = c.method().await.unwrap() {
            confirmed = if ack.multiple { ack.delivery_tag } else { confirmed + 1 };
        }
    }
    // Then one at a time, each waiting for its confirm: each is a read of
    // its own, and stays in the queue.
    const NOW_AND_THEN: isize = 300;
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..NOW_AND_THEN {
        c.write(&one(&[b'x'; 100])).await.unwrap();
        c.expect(|m| matches!(m, Method::BasicAck(_))).await.unwrap();
    }
    let per_message = (LIVE.load(Ordering::Relaxed) - before) / NOW_AND_THEN;
    println!("heap per message published now and then: {per_message} octets");
    let kept = broker.broker().queue_infos().into_iter().find(|q| q.name == "kept").unwrap();
    assert_eq!(kept.messages_ready, 2000 + NOW_AND_THEN as usize);
    assert!(per_message < 4096, "{per_message} octets per queued 100-octet message");
}

/// Ends the client process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
