//! The teaching demo: the seed's story, played in a few seconds by a
//! scripted client that runs inside the broker process and talks to it over
//! loopback TCP like any other client. A learner with nothing but the binary
//! starts it with `warren --demo` or the page's "Play the story" link
//! (`POST /api/warren/demo`) and watches it happen in the browser.
//!
//! With T = 1 s:
//!
//! 1. `demo worker` connects with heartbeat 1 and consumes from
//!    `demo.tasks`. For 2.5 seconds it waits for work; it and warren send
//!    each other heartbeats every T/2.
//! 2. A task is published and delivered. The worker runs it for five
//!    seconds on the thread that also drives its connection (as a pika
//!    `BlockingConnection` or a Celery worker does), so it sends nothing,
//!    heartbeats included, and reads nothing either.
//! 3. warren keeps sending heartbeats (they pile up unread). Its receiver
//!    monitor sees two silent ticks and drops the worker 2T..3T after its
//!    last byte: `missed heartbeats from client, timeout: 1s`.
//! 4. The task finishes; the worker's late ack meets a closed socket.
//! 5. warren put the unacknowledged message back in its queue: `demo worker
//!    2` gets it with `redelivered = true`, and the task runs a second time.
//!
//! Each step is told to the event stream as a `demo.step`, with the
//! connection it is about, so the page can caption its timeline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::broker::events::Event;
use crate::broker::Broker;
use crate::client::{Client, Target};
use crate::protocol::frame::{write_body_frame_header, write_content_header, write_method, HEARTBEAT_FRAME};
use crate::protocol::methods::{basic, queue};
use crate::protocol::{Frame, Method};

/// The heartbeat the workers ask for: short, so the story takes seconds.
pub const HEARTBEAT: u16 = 1;
/// The queue the story's task goes through.
pub const QUEUE: &str = "demo.tasks";
/// How long worker 1 waits for work, heartbeating, before the task comes:
/// its last byte then falls midway between two monitor ticks, so the drop
/// comes midway through the 2T..3T window (2.5 s of silence), not at an edge.
const WAITING: Duration = Duration::from_millis(2500);
/// How long the task blocks worker 1: longer than 3T, so it is dropped.
const TASK: Duration = Duration::from_secs(5);
/// The pause between two plays of `warren --demo`.
const BETWEEN_PLAYS: Duration = Duration::from_secs(5);
/// The longest any step may wait for the broker before the demo gives up.
const PATIENCE: Duration = Duration::from_secs(5);

/// Who the demo's workers log in as.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub password: String,
    pub vhost: String,
}

/// Why the demo did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// One story at a time per broker.
    AlreadyRunning,
    /// Worker 1 could not connect (a wrong login, a missing vhost…).
    Failed(String),
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStarted::AlreadyRunning => f.write_str("the demo is already running"),
            NotStarted::Failed(why) => write!(f, "the demo worker could not connect: {why}"),
        }
    }
}

/// A story playing: worker 1's connection name, and the task playing it.
pub struct Playing {
    pub worker: String,
    pub done: tokio::task::JoinHandle<()>,
}

/// Starts the story on its own task once worker 1 is connected.
pub async fn start(broker: Arc<Broker>, login: Login) -> Result<Playing, NotStarted> {
    if broker.demo_running.swap(true, Ordering::SeqCst) {
        return Err(NotStarted::AlreadyRunning);
    }
    let running = Running(broker.clone());
    let worker = Worker::connect(&broker, &login, "demo worker").await.map_err(NotStarted::Failed)?;
    let name = worker.name.clone();
    let done = tokio::spawn(async move {
        let _running = running;
        if let Err(e) = story(&broker, worker, &login).await {
            broker.events.emit(|| Event::DemoStep { connection: None, text: format!("The demo stopped: {e}") });
        }
    });
    Ok(Playing { worker: name, done })
}

/// Plays the story again and again, a few seconds apart (`warren --demo`),
/// so that a learner who opens the page at any moment soon sees it.
pub async fn play_forever(broker: Arc<Broker>, login: Login) {
    loop {
        match start(broker.clone(), login.clone()).await {
            Ok(playing) => {
                let _ = playing.done.await;
            }
            // A play started from the page is running: wait for the next turn.
            Err(NotStarted::AlreadyRunning) => {}
            Err(e) => tracing::warn!("demo: {e}"),
        }
        tokio::time::sleep(BETWEEN_PLAYS).await;
    }
}

/// Clears the broker's "demo running" flag however the story ends.
struct Running(Arc<Broker>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.demo_running.store(false, Ordering::SeqCst);
    }
}

async fn story(broker: &Broker, mut first: Worker, login: &Login) -> Result<(), String> {
    let say = |worker: &Worker, text: &str| {
        broker.events.emit(|| Event::DemoStep { connection: Some(worker.name.clone()), text: text.to_string() })
    };
    say(&first, "demo worker connects with heartbeat 1 s and waits for work on demo.tasks: it and warren send each other a heartbeat every T/2.");
    first.declare_and_consume().await?;
    first.talk(WAITING).await?;
    first.publish(b"resize photo 42").await?;
    let tag = first.next_delivery().await?.0;
    say(&first, "A task arrives. The worker runs it for 5 s on the thread that drives its connection: nothing leaves the worker now, not even heartbeats.");
    // The task: no reads, no writes. warren's heartbeats pile up unread.
    tokio::time::sleep(TASK).await;
    let outcome = first.ack(tag).await;
    let text = match outcome {
        Ok(()) => "The task is done, but the ack went through: the worker was not dropped.".to_string(),
        Err(e) => format!(
            "The task is done; the worker acks and finds its connection gone ({e}). The ack is lost, and the message goes back to demo.tasks."
        ),
    };
    say(&first, &text);
    drop(first);

    let mut second = Worker::connect(broker, login, "demo worker 2").await?;
    second.consume().await?;
    let (tag, redelivered) = second.next_delivery().await?;
    say(
        &second,
        &format!("demo worker 2 gets the same task with redelivered = {redelivered}: it runs a second time. Fixes: heartbeats from a thread of their own, or the task off the I/O thread."),
    );
    second.ack(tag).await?;
    second.talk(Duration::from_secs(2)).await?;
    second.close().await
}

/// A worker of the story: a [`Client`] that heartbeats while it waits.
struct Worker {
    /// The connection's name as warren gives it (`client -> server`).
    name: String,
    client: Client,
    /// When the worker's next heartbeat is due, while it heartbeats.
    next_beat: Instant,
}

impl Worker {
    async fn connect(broker: &Broker, login: &Login, client_name: &str) -> Result<Worker, String> {
        let listen = *broker.amqp_addr.get().ok_or("the AMQP listener is not up")?;
        let addr = SocketAddr::new(loopback_for(listen.ip()), listen.port());
        let target = Target {
            addr: addr.to_string(),
            host: addr.ip().to_string(),
            user: login.user.clone(),
            password: login.password.clone(),
            vhost: login.vhost.clone(),
            tls: None,
        };
        let client = Client::open(&target, HEARTBEAT, client_name).await?;
        Ok(Worker { name: format!("{} -> {addr}", client.local), client, next_beat: Instant::now() })
    }

    async fn declare_and_consume(&mut self) -> Result<(), String> {
        self.send(1, queue::Declare { queue: QUEUE.into(), ..Default::default() }).await?;
        self.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await?;
        // A story left over from an earlier run must not be delivered now.
        self.send(1, queue::Purge { queue: QUEUE.into(), ..Default::default() }).await?;
        self.expect(|m| matches!(m, Method::QueuePurgeOk(_))).await?;
        self.consume().await
    }

    async fn consume(&mut self) -> Result<(), String> {
        self.send(1, basic::Qos { prefetch_count: 1, ..Default::default() }).await?;
        self.expect(|m| matches!(m, Method::BasicQosOk(_))).await?;
        self.send(1, basic::Consume { queue: QUEUE.into(), ..Default::default() }).await?;
        self.expect(|m| matches!(m, Method::BasicConsumeOk(_))).await.map(drop)
    }

    async fn publish(&mut self, body: &[u8]) -> Result<(), String> {
        let mut buf = BytesMut::new();
        let publish = basic::Publish { routing_key: QUEUE.into(), ..Default::default() };
        write_method(&mut buf, 1, &publish.into());
        write_content_header(&mut buf, 1, 60, body.len() as u64, &[0, 0]);
        write_body_frame_header(&mut buf, 1, body.len());
        buf.extend_from_slice(body);
        buf.extend_from_slice(&[0xce]);
        self.client.write(&buf).await
    }

    /// Waits for a `basic.deliver` (and its content), heartbeating the while;
    /// its delivery tag and redelivered flag.
    async fn next_delivery(&mut self) -> Result<(u64, bool), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.read_until(deadline, true).await? {
                Some(Method::BasicDeliver(d)) => return Ok((d.delivery_tag, d.redelivered)),
                Some(_) => continue,
                None => return Err("no delivery came".into()),
            }
        }
    }

    /// Writes `basic.ack`, then reads: a socket warren has closed shows
    /// itself as an error or an end of file.
    async fn ack(&mut self, delivery_tag: u64) -> Result<(), String> {
        self.send(1, basic::Ack { delivery_tag, multiple: false }).await?;
        // Heartbeats warren sent while the task ran come first; what follows
        // them tells whether the connection is still there.
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.read_until(deadline, false).await?.is_some() {}
        // A second write finds the reset the first one provoked.
        self.client.write(&HEARTBEAT_FRAME).await
    }

    async fn close(self) -> Result<(), String> {
        self.client.close().await
    }

    /// An idle client for `period`: a heartbeat every T/2, frames read and
    /// dropped.
    async fn talk(&mut self, period: Duration) -> Result<(), String> {
        let deadline = Instant::now() + period;
        while self.read_until(deadline, true).await?.is_some() {}
        Ok(())
    }

    /// The next method, heartbeating every T/2 while waiting if `beat`;
    /// `None` at `deadline`. A closed socket is an error.
    async fn read_until(&mut self, deadline: Instant, beat: bool) -> Result<Option<Method>, String> {
        let half = Duration::from_millis(u64::from(HEARTBEAT) * 500);
        loop {
            if beat && Instant::now() >= self.next_beat {
                self.client.write(&HEARTBEAT_FRAME).await?;
                self.next_beat = Instant::now() + half;
            }
            let until = if beat { deadline.min(self.next_beat) } else { deadline };
            match self.client.frame_until(until).await? {
                Some(Frame::Method { method, .. }) => return Ok(Some(method)),
                Some(_) => {}
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    /// The next method, which `wanted` must accept.
    async fn expect(&mut self, wanted: impl Fn(&Method) -> bool) -> Result<Method, String> {
        match self.read_until(Instant::now() + PATIENCE, true).await? {
            Some(m) if wanted(&m) => Ok(m),
            Some(m) => Err(format!("unexpected {}", m.name())),
            None => Err("warren did not answer".into()),
        }
    }

    async fn send(&mut self, channel: u16, method: impl Into<Method>) -> Result<(), String> {
        self.client.send(channel, method).await
    }
}

/// Where to reach a listener bound to `ip` from this process.
fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}
