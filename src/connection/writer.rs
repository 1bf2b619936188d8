//! A connection's outbound side: one writer task per connection.
//!
//! Everything the broker sends on a connection (method replies, deliveries
//! from any queue, heartbeats) goes through one [`Mailbox`] to one task, the
//! only owner of the socket's write half. The task takes whatever has piled up,
//! encodes it into a [`FrameBuffer`], and writes it with vectored writes: many
//! frames, and message bodies straight from the messages' own memory (all
//! but the smallest, which are cheaper to copy), in a few syscalls. It
//! counts the octets it writes (RabbitMQ's `send_oct`) and, apart, those
//! that are not heartbeats, which the heartbeat sender watches.
//!
//! Deliveries are bounded: a queue must take a credit from the [`Outlet`]
//! before it hands over a message, and a connection that falls behind stops
//! getting more until its writer catches up and wakes the queues that waited.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

pub use super::frame_buffer::FrameBuffer;
use super::mailbox::Mailbox;

use crate::broker::connections::{Counters, Faults};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::protocol::codec::Encoder;
use crate::protocol::frame::write_method;
use crate::protocol::frame::HEARTBEAT_FRAME;
use crate::protocol::methods::{basic, Method};
use crate::protocol::ShortStr;

/// Most deliveries a connection may have queued for its writer but not yet
/// written. Past it, queues keep messages and wait (credit flow).
pub const DELIVERY_CREDIT: usize = 2000;

/// What the writer is asked to send.
#[derive(Debug)]
pub enum Outbound {
    /// Frames already encoded (method replies).
    Frames(Bytes),
    Heartbeat,
    Deliver(Delivery),
    /// The negotiated frame_max, once tune-ok is in: bodies are split by it.
    FrameMax(u32),
    /// Write what is queued, then shut the socket down.
    Close,
}

/// A message on its way to a client, as `basic.deliver` or `basic.get-ok`.
#[derive(Debug)]
pub struct Delivery {
    pub channel: u16,
    pub kind: DeliveryKind,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub message: Arc<Message>,
}

impl Delivery {
    /// Writes the payload of the method that carries the message (see
    /// [`Delivery::method`]). `basic.deliver`, the hot path, is written
    /// field by field from the message: building a [`basic::Deliver`] would
    /// clone three names, six atomic reference-count updates per delivery,
    /// on memory that with many messages in flight is no longer in cache.
    /// The fields are in the order of `basic::Deliver`'s definition; a test
    /// checks that both encodings give the same octets.
    pub fn encode_method(&self, buf: &mut BytesMut) {
        let DeliveryKind::Deliver { consumer_tag } = &self.kind else {
            return self.method().encode(buf);
        };
        buf.put_u16(basic::Deliver::CLASS_ID);
        buf.put_u16(basic::Deliver::METHOD_ID);
        let mut e = Encoder::new(buf);
        e.shortstr(consumer_tag);
        e.longlong(self.delivery_tag);
        e.bit(self.redelivered);
        e.shortstr(&self.message.exchange);
        e.shortstr(&self.message.routing_key);
    }

    /// The method that carries the message: `basic.deliver`, `basic.get-ok`
    /// or `basic.return`.
    pub fn method(&self) -> Method {
        let (exchange, routing_key) = (self.message.exchange.clone(), self.message.routing_key.clone());
        match &self.kind {
            DeliveryKind::Deliver { consumer_tag } => basic::Deliver {
                consumer_tag: consumer_tag.clone(),
                delivery_tag: self.delivery_tag,
                redelivered: self.redelivered,
                exchange,
                routing_key,
            }
            .into(),
            DeliveryKind::GetOk { message_count } => basic::GetOk {
                delivery_tag: self.delivery_tag,
                redelivered: self.redelivered,
                exchange,
                routing_key,
                message_count: *message_count,
            }
            .into(),
            DeliveryKind::Return { reply_code, reply_text } => {
                basic::Return { reply_code: *reply_code, reply_text: reply_text.clone(), exchange, routing_key }.into()
            }
        }
    }
}

#[derive(Debug)]
pub enum DeliveryKind {
    Deliver {
        consumer_tag: ShortStr,
    },
    GetOk {
        message_count: u32,
    },
    /// An unroutable mandatory message going back to its publisher.
    Return {
        reply_code: u16,
        reply_text: ShortStr,
    },
}

/// The handle through which the rest of the broker reaches a connection's
/// writer. Cheap to share: channels and queue consumers hold an `Arc`.
pub struct Outlet {
    /// What the writer is to send, in order.
    mailbox: Mailbox<Outbound>,
    /// The connection's counters, shared with the broker's registry.
    pub counters: Arc<Counters>,
    /// Deliveries handed to the writer and not yet written.
    queued_deliveries: AtomicUsize,
    /// Queues that found no credit; the writer wakes them when it drains.
    waiting_queues: Mutex<Vec<Weak<Queue>>>,
    /// Octets of replies (method frames, `basic.get-ok`, `basic.return`)
    /// queued and not yet written. A client that does not read them makes
    /// this grow; past [`REPLY_BACKLOG_HIGH`] the connection stops reading
    /// it (the "flow" state) until the writer has caught up.
    reply_backlog: AtomicUsize,
    /// Wakes the connection when the reply backlog has drained.
    drained: Notify,
    /// Log every frame sent, for learning and debugging (`--trace-frames`).
    pub trace: bool,
}

/// The reply backlog past which a connection stops reading its client.
pub const REPLY_BACKLOG_HIGH: usize = 4 << 20;
/// The backlog below which it reads again.
pub const REPLY_BACKLOG_LOW: usize = 1 << 20;

impl Outbound {
    /// Octets this item adds to the reply backlog.
    fn reply_weight(&self) -> usize {
        match self {
            Outbound::Frames(b) => b.len(),
            Outbound::Deliver(d) if !matches!(d.kind, DeliveryKind::Deliver { .. }) => {
                d.message.body_size as usize + d.message.properties.len() + 64
            }
            _ => 0,
        }
    }
}

impl Outlet {
    /// `trace` logs every frame sent (`--trace-frames`).
    pub fn new(trace: bool, counters: Arc<Counters>) -> Arc<Outlet> {
        Arc::new(Outlet {
            mailbox: Mailbox::default(),
            trace,
            counters,
            queued_deliveries: AtomicUsize::new(0),
            waiting_queues: Mutex::new(Vec::new()),
            reply_backlog: AtomicUsize::new(0),
            drained: Notify::new(),
        })
    }

    /// Queues something for the writer; false once the writer has gone.
    pub fn send(&self, item: Outbound) -> bool {
        let weight = item.reply_weight();
        if weight > 0 {
            self.reply_backlog.fetch_add(weight, Ordering::Relaxed);
        }
        self.mailbox.send(item)
    }

    /// Encodes a method frame and queues it (tracing it when asked to).
    pub fn send_method(&self, channel: u16, method: &Method) -> bool {
        if self.trace {
            tracing::info!(target: "warren::frames", "-> [{channel}] {}", method.trace());
        }
        let mut buf = BytesMut::with_capacity(64);
        write_method(&mut buf, channel, method);
        self.send(Outbound::Frames(buf.freeze()))
    }

    /// Reply octets queued and not yet written.
    pub fn reply_backlog(&self) -> usize {
        self.reply_backlog.load(Ordering::Relaxed)
    }

    /// Resolves once the reply backlog has fallen below the low mark.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.reply_backlog() < REPLY_BACKLOG_LOW {
                return;
            }
            notified.await;
        }
    }

    fn written(&self, reply_octets: usize) {
        if reply_octets > 0 {
            let left = self.reply_backlog.fetch_sub(reply_octets, Ordering::Relaxed) - reply_octets;
            if left < REPLY_BACKLOG_LOW {
                self.drained.notify_waiters();
            }
        }
    }

    /// Takes one delivery credit, or registers `queue` to be woken when
    /// the writer has drained and returns false.
    pub fn reserve_delivery(&self, queue: &Arc<Queue>) -> bool {
        if self.queued_deliveries.fetch_add(1, Ordering::SeqCst) < DELIVERY_CREDIT {
            return true;
        }
        self.queued_deliveries.fetch_sub(1, Ordering::SeqCst);
        {
            let mut waiting = self.waiting_queues.lock().unwrap_or_else(|e| e.into_inner());
            if !waiting.iter().any(|w| w.as_ptr() == Arc::as_ptr(queue)) {
                waiting.push(Arc::downgrade(queue));
            }
        }
        // The writer may have drained between our check and the registration;
        // look again so that wake-up cannot be lost.
        if self.queued_deliveries.fetch_add(1, Ordering::SeqCst) < DELIVERY_CREDIT {
            return true;
        }
        self.queued_deliveries.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// Takes a credit whatever the count: for messages that answer a request
    /// (`basic.get-ok`, `basic.return`) and so are bounded by the requests.
    pub fn force_reserve_delivery(&self) {
        self.queued_deliveries.fetch_add(1, Ordering::SeqCst);
    }

    /// Called by the writer after writing `n` deliveries.
    fn delivered(&self, n: usize) {
        if n == 0 {
            return;
        }
        let left = self.queued_deliveries.fetch_sub(n, Ordering::SeqCst) - n;
        if left < DELIVERY_CREDIT {
            let waiting = std::mem::take(&mut *self.waiting_queues.lock().unwrap_or_else(|e| e.into_inner()));
            for queue in waiting.iter().filter_map(Weak::upgrade) {
                queue.dispatch();
            }
        }
    }
}

/// Logs a delivery as the frames it becomes.
fn trace_delivery(d: &Delivery) {
    let size = d.message.body_size;
    tracing::info!(target: "warren::frames", "-> [{}] {}", d.channel, d.method().trace());
    tracing::info!(target: "warren::frames", "-> [{}] content header body_size={size}", d.channel);
    tracing::info!(target: "warren::frames", "-> [{}] content body {size} octets", d.channel);
}

/// Stop gathering more into one write past this many octets.
const BATCH_LIMIT: usize = 256 * 1024;

/// A batch deque grown past this many slots by a burst is given back once
/// batches are small again.
const BATCH_SLOTS_KEPT: usize = 256;

/// Closes the outlet's mailbox when the writer ends, however it ends (an
/// aborted task drops its future): later sends are refused, and what was
/// queued and never written is let go.
struct CloseOnDrop<'a>(&'a Outlet);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.mailbox.close();
    }
}

/// The writer task: takes what is queued in batches and writes them until
/// `Close`, or until the socket fails.
pub async fn run(mut socket: super::transport::WriteSide, outlet: Arc<Outlet>, faults: Arc<Faults>) -> io::Result<()> {
    let _close = CloseOnDrop(&outlet);
    let mut buf = FrameBuffer::default();
    let mut batch = VecDeque::new();
    let mut frame_max = crate::protocol::constants::FRAME_MIN_SIZE;
    let mut closing = false;
    while !closing {
        let changed = faults.changed();
        if faults.killed() {
            // Let go without a FIN: the connection's close becomes a reset.
            socket.forget();
            return Ok(());
        }
        if batch.is_empty() {
            tokio::select! {
                _ = outlet.mailbox.take_all(&mut batch) => {}
                _ = changed => continue,
            }
        }
        let (mut deliveries, mut heartbeats, mut replies, mut items) = (0usize, 0u64, 0usize, 0usize);
        // Encoded up to BATCH_LIMIT octets; the rest waits for the next write.
        while let Some(item) = batch.pop_front() {
            items += 1;
            replies += item.reply_weight();
            match item {
                Outbound::Frames(b) => buf.frames(b),
                Outbound::Heartbeat => {
                    if outlet.trace {
                        tracing::info!(target: "warren::frames", "-> heartbeat");
                    }
                    buf.heartbeat();
                    heartbeats += 1;
                }
                Outbound::Deliver(d) => {
                    if outlet.trace {
                        trace_delivery(&d);
                    }
                    buf.delivery(&d, frame_max);
                    deliveries += 1;
                }
                Outbound::FrameMax(max) => frame_max = max,
                Outbound::Close => {
                    closing = true;
                    break;
                }
            }
            if buf.len() >= BATCH_LIMIT {
                break;
            }
        }
        // Fault injection: a black hole writes nothing until released; a
        // delivery latency holds deliveries back.
        faults.while_black_hole().await;
        let latency = faults.delivery_latency();
        if deliveries > 0 && !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if faults.killed() {
            socket.forget();
            return Ok(());
        }
        let written = buf.write_to(&mut socket).await? as u64;
        // TLS may hold the tail of a record back until flushed; on TCP this
        // does nothing.
        socket.flush().await?;
        let c = &outlet.counters;
        if !socket.counted_below() {
            c.send_oct.fetch_add(written, Ordering::Relaxed);
        }
        c.send_oct_besides_heartbeats.fetch_add(written - heartbeats * HEARTBEAT_FRAME.len() as u64, Ordering::Relaxed);
        c.heartbeats_sent.fetch_add(heartbeats, Ordering::Relaxed);
        let frames = buf.take_frames();
        c.frames_out.fetch_add(frames, Ordering::Relaxed);
        if frames == heartbeats {
            // Only heartbeats: the connection is idle outbound, and a
            // heartbeat needs no scratch buffer, nor a batch kept for it.
            buf.release_scratch();
            batch = VecDeque::new();
        } else if batch.is_empty() && batch.capacity() > BATCH_SLOTS_KEPT && items < BATCH_SLOTS_KEPT / 4 {
            batch = VecDeque::new();
        }
        c.last_write_ms.store(c.now_ms(), Ordering::Relaxed);
        outlet.delivered(deliveries);
        outlet.written(replies);
    }
    socket.flush().await?;
    socket.shutdown().await
}
