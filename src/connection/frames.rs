//! What a frame does: the frames read are cut out of the buffer and handed
//! on by channel. Channel 0 carries the handshake and then `update-secret`
//! and `close`; every other channel goes to [`Channels`]. A connection
//! error starts the close handshake ([`Connection::begin_close`]).

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::time::Instant;
use tracing::{debug, error, info};

use super::channel::Session;
use super::channels::Channels;
use super::ending::{End, Stop};
use super::handshake::{Limits, Opened, Step};
use super::texts::{frame_error, payload_snippet};
use super::writer::Outbound;
use super::{Connection, Phase, Stage, Turn, CLOSE_TIMEOUT, FRAMES_PER_TURN, READ_BUFFER, SMALL_READ};

use crate::broker::events::Event;
use crate::error::AmqpError;
use crate::logging::Escaped;
use crate::protocol::frame::{parse_frame, FrameError};
use crate::protocol::methods::connection as conn;
use crate::protocol::{Frame, Method, ShortStr};

impl Connection {
    /// Handles the complete frames already read, up to [`FRAMES_PER_TURN`]
    /// of them, unless the throttle has stopped this connection from taking
    /// input.
    pub(super) fn handle_buffered(&mut self) -> Result<Turn, End> {
        let mut turn = Turn::Done;
        let mut handled = 0;
        while !self.discard_input && self.throttle.reading() {
            if handled == FRAMES_PER_TURN {
                turn = Turn::More;
                break;
            }
            handled += 1;
            match parse_frame(&mut self.buf, self.frame_max) {
                Ok(Some(frame)) => match self.frame(frame) {
                    Ok(()) => {}
                    Err(Stop::Error(e)) => self.begin_close(e),
                    Err(Stop::Silent(reason)) => return Err(End::Silent(reason)),
                    Err(Stop::Done) => return Err(End::Closed),
                },
                Ok(None) => break,
                Err(e) => {
                    // Only a bad size or frame end loses the frame
                    // boundaries; after any other frame error the
                    // client's close-ok can still be read, as in RabbitMQ.
                    if matches!(e, FrameError::TooLarge { .. } | FrameError::BadFrameEnd { .. }) {
                        self.discard_input = true;
                    }
                    let e = frame_error(e);
                    if self.phase() < Phase::Opening {
                        return Err(End::Silent(e.to_string()));
                    }
                    self.begin_close(e);
                }
            }
        }
        if self.discard_input {
            self.buf.clear();
        }
        if let Stage::Open(channels) = &mut self.stage {
            channels.flush_confirms();
        }
        self.size_read_buffer();
        Ok(turn)
    }

    /// Sizes the read buffer for the next read. A client sending in earnest
    /// (its last read was big or filled the room it had) gets room for
    /// [`READ_BUFFER`] octets, so that its frames come in few reads. A
    /// quiet one whose input is all handled gives its buffer back, and reads
    /// into [`SMALL_READ`] octets made when the socket is next readable.
    /// Kept, a big buffer would be walked through by an idle connection's
    /// heartbeats, eight octets at a time, until every page of it was
    /// resident; and message bodies are cut from this buffer and keep their
    /// part of it alive while queued, so a message published now and then
    /// must pin a small buffer, never a big one.
    fn size_read_buffer(&mut self) {
        let room = self.buf.capacity() - self.buf.len();
        if !self.last_read_small {
            if room < 4096 {
                // Asking for the same total size each time lets the
                // allocator reuse freed buffers instead of fragmenting the heap.
                self.buf.reserve(READ_BUFFER.saturating_sub(self.buf.len()).max(4096));
            }
        } else if self.buf.is_empty() {
            self.buf = BytesMut::new();
        } else if room < SMALL_READ / 4 {
            self.buf.reserve(SMALL_READ);
        }
    }

    /// Handles a frame; a content frame on a connection in `blocking`
    /// state then blocks it.
    fn frame(&mut self, frame: Frame) -> Result<(), Stop> {
        self.entry.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        if self.outlet.trace {
            trace_inbound(&frame);
        }
        let content = matches!(frame, Frame::Header { .. } | Frame::Body { .. });
        self.dispatch(frame)?;
        if content {
            self.throttle.content_arrived();
        }
        Ok(())
    }

    fn dispatch(&mut self, frame: Frame) -> Result<(), Stop> {
        let phase = self.phase();
        if phase == Phase::Closing {
            // Spec 2.2.4: after sending close, discard everything but close
            // and close-ok.
            return match frame {
                Frame::Method { channel: 0, method: Method::ConnectionCloseOk(_) } => Err(Stop::Done),
                Frame::Method { channel: 0, method: Method::ConnectionClose(_) } => {
                    self.outlet.send_method(0, &conn::CloseOk {}.into());
                    Err(Stop::Done)
                }
                _ => Ok(()),
            };
        }
        match frame {
            // A heartbeat's only job is to make bytes arrive, which the
            // reader has already counted.
            Frame::Heartbeat { channel: 0 } => {
                self.entry.counters.heartbeats_received.fetch_add(1, Ordering::Relaxed);
                self.broker.events.emit(|| Event::HeartbeatReceived { connection: self.entry.name.clone() });
                Ok(())
            }
            Frame::Method { channel: 0, method } => self.method0(method),
            other if phase < Phase::Opening => Err(Stop::Silent(format!(
                "unexpected frame on channel {} in connection state {}",
                other.channel(),
                phase.name()
            ))),
            Frame::Heartbeat { .. } => Err(AmqpError::unexpected_frame("type 8, all octets = <<>>").into()),
            other if phase == Phase::Opening => Err(AmqpError::unexpected_frame(format!(
                "unexpected frame on channel {} in connection state opening",
                other.channel()
            ))
            .into()),
            Frame::Header { channel: 0, .. } => Err(AmqpError::unexpected_frame("type 2, all octets = <<>>").into()),
            Frame::Body { channel: 0, body } => {
                Err(AmqpError::unexpected_frame(format!("type 3, {}", payload_snippet(&body))).into())
            }
            frame => match &mut self.stage {
                Stage::Open(channels) => Ok(channels.frame(frame)?),
                // Running (checked above) means open.
                Stage::Handshake(_) => Ok(()),
            },
        }
    }

    /// A method on channel 0: the handshake, then `update-secret` and `close`.
    fn method0(&mut self, method: Method) -> Result<(), Stop> {
        match (&mut self.stage, method) {
            (Stage::Open(channels), Method::ConnectionClose(_)) => {
                // Like RabbitMQ, give everything back before confirming, so a
                // client that saw close-ok finds its unacked messages requeued.
                channels.release();
                self.outlet.send_method(0, &conn::CloseOk {}.into());
                Err(Stop::Done)
            }
            (Stage::Handshake(h), Method::ConnectionClose(_)) if h.phase() == Phase::Opening => {
                self.outlet.send_method(0, &conn::CloseOk {}.into());
                Err(Stop::Done)
            }
            (Stage::Handshake(h), method) => match h.step(method, &self.broker) {
                Step::Reply(reply) => {
                    self.outlet.send_method(0, &reply);
                    Ok(())
                }
                Step::Tuned(limits) => {
                    self.tuned(limits);
                    Ok(())
                }
                Step::Opened(opened) => {
                    self.open(opened);
                    Ok(())
                }
                Step::Failed(stop) => Err(stop),
            },
            (Stage::Open(channels), Method::ConnectionUpdateSecret(m)) => {
                // RabbitMQ hands the new secret to the auth backends whose
                // credentials can expire (OAuth 2); the internal user
                // database is not one of them, so for its users the update
                // always succeeds and changes nothing.
                let (user, reason) = (Escaped(&channels.session().user), m.reason.as_str_lossy());
                let name = &self.entry.name;
                debug!("connection {name}: user '{user}' asked to update secret, reason: {}", Escaped(&reason));
                self.outlet.send_method(0, &conn::UpdateSecretOk {}.into());
                info!("connection {name}: user '{user}' updated secret, reason: {}", Escaped(&reason));
                Ok(())
            }
            (Stage::Open(_), method) => Err(AmqpError::channel_error("unexpected method in connection state running")
                .during(method.ids())
                .into()),
        }
    }

    /// `tune-ok` accepted: frames may now be as large as agreed, and the
    /// heartbeats start.
    fn tuned(&mut self, limits: Limits) {
        self.frame_max = limits.frame_max;
        self.heartbeat = limits.heartbeat;
        self.outlet.send(Outbound::FrameMax(limits.frame_max));
        let (events, gauge) = (&self.broker.events, &self.broker.gauges.heartbeat_tasks);
        self.heartbeats.start(limits.heartbeat, &self.entry, &self.outlet, self.throttle.monitor(), events, gauge);
    }

    /// `connection.open` accepted: the handshake gives way to the channels.
    fn open(&mut self, Opened { vhost, details, capabilities }: Opened) {
        let name = self.entry.name.clone();
        let session = Session::new(
            self.entry.id,
            self.broker.clone(),
            vhost,
            self.outlet.clone(),
            capabilities,
            details.user.clone(),
            name.as_str().into(),
        );
        let channels = Channels::new(session, details.channel_max, self.entry.clone());
        self.entry.set_details(details.clone());
        self.broker.events.emit(|| Event::ConnectionOpened {
            connection: name,
            user: details.user,
            vhost: details.vhost,
            client_properties: details.client_properties,
            channel_max: details.channel_max,
            frame_max: details.frame_max,
            heartbeat: details.heartbeat,
        });
        self.stage = Stage::Open(channels);
        self.outlet.send_method(0, &conn::OpenOk { reserved_1: ShortStr::default() }.into());
        self.throttle.opened(capabilities.connection_blocked);
    }

    /// Sends `connection.close` for `e` and waits (up to `CLOSE_TIMEOUT`)
    /// for `close-ok`, ignoring everything else.
    pub(super) fn begin_close(&mut self, e: AmqpError) {
        let phase = self.phase();
        if phase == Phase::Closing {
            return;
        }
        let (vhost, user) = match &self.stage {
            Stage::Open(channels) => (channels.session().vhost.name.to_string(), channels.session().user.as_str()),
            Stage::Handshake(h) => (String::new(), h.user()),
        };
        error!(
            "Error on AMQP connection <0.{}.0> ({}, vhost: '{}', user: '{}', state: {}), channel 0: operation {} caused a connection exception {}: \"{}\"",
            self.entry.id,
            self.entry.name,
            Escaped(&vhost),
            Escaped(user),
            phase.name(),
            Method::name_of(e.class_id, e.method_id).unwrap_or("none"),
            e.code.name().to_lowercase(),
            Escaped(&e.message)
        );
        self.outlet.send_method(
            0,
            &Method::ConnectionClose(conn::Close {
                reply_code: e.code.code(),
                reply_text: e.reply_text(),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
        self.throttle.closing();
        self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }
}

/// Logs a frame received, for `--trace-frames`.
fn trace_inbound(frame: &Frame) {
    match frame {
        Frame::Method { channel, method } => info!(target: "warren::frames", "<- [{channel}] {}", method.trace()),
        Frame::Header { channel, header } => {
            info!(target: "warren::frames", "<- [{channel}] content header body_size={}", header.body_size)
        }
        Frame::Body { channel, body } => {
            info!(target: "warren::frames", "<- [{channel}] content body {} octets", body.len())
        }
        Frame::Heartbeat { .. } => info!(target: "warren::frames", "<- heartbeat"),
    }
}
