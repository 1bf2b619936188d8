//! The channels of an open connection and the [`Session`] they share: which
//! channel numbers are open, what `channel.open` / `channel.close` do, and
//! what happens on a channel error (logged as RabbitMQ logs it, the
//! channel's deliveries given back, `channel.close` sent, and everything
//! else on that channel ignored until the client's `close-ok`).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::error;

use super::channel::{Channel, Session};
use super::timeouts::DeliveryDeadlines;
use crate::broker::connections::ConnectionEntry;
use crate::broker::events::Event;
use crate::error::AmqpError;
use crate::logging::Escaped;
use crate::protocol::methods::channel;
use crate::protocol::{Frame, Method};

pub struct Channels {
    session: Session,
    /// Boxed: a map's table holds room for more entries than it has, and
    /// a channel is some 400 octets, so unboxed a connection with one
    /// channel would carry room for three more.
    open: HashMap<u16, Box<Channel>>,
    /// Negotiated in `tune-ok`; 0 is no limit.
    channel_max: u16,
    entry: Arc<ConnectionEntry>,
}

impl Channels {
    pub fn new(session: Session, channel_max: u16, entry: Arc<ConnectionEntry>) -> Channels {
        Channels { session, open: HashMap::new(), channel_max, entry }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Where deliveries note their `consumer_timeout` deadlines.
    pub fn deadlines(&self) -> &Arc<DeliveryDeadlines> {
        &self.session.deadlines
    }

    /// A frame for channel `frame.channel()` (never 0). A channel error
    /// closes that channel; a connection error is returned.
    pub fn frame(&mut self, frame: Frame) -> Result<(), AmqpError> {
        let id = frame.channel();
        let session = &mut self.session;
        let Some(ch) = self.open.get_mut(&id) else {
            return match frame {
                Frame::Method { method: Method::ChannelOpen(_), .. } => self.open_channel(id),
                Frame::Method { method, .. } => {
                    Err(AmqpError::channel_error("expected 'channel.open'").during(method.ids()))
                }
                _ => Err(AmqpError::unexpected_frame("expected method frame, got non method frame instead")),
            };
        };
        match frame {
            Frame::Method { method: Method::ChannelClose(_), .. } => {
                if !ch.closing {
                    ch.shutdown(session);
                }
                self.forget(id);
                self.session.send_method(id, &channel::CloseOk {}.into());
                Ok(())
            }
            Frame::Method { method: Method::ChannelCloseOk(_), .. } => {
                if ch.closing {
                    self.forget(id);
                }
                Ok(())
            }
            _ if ch.closing => Ok(()),
            frame => match ch.handle_frame(session, frame) {
                Err(e) if !e.is_connection_error() => {
                    self.close_channel(id, e);
                    Ok(())
                }
                result => result,
            },
        }
    }

    fn open_channel(&mut self, id: u16) -> Result<(), AmqpError> {
        if self.channel_max != 0 && self.open.len() >= self.channel_max as usize {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened ({}) has reached the negotiated channel_max ({})",
                self.open.len(),
                self.channel_max
            )));
        }
        self.open.insert(id, Box::new(Channel::new(id, &self.session)));
        self.entry.channel_opened(id);
        self.session.send_method(id, &channel::OpenOk { reserved_1: Default::default() }.into());
        Ok(())
    }

    fn forget(&mut self, id: u16) {
        self.open.remove(&id);
        self.entry.channel_closed(id);
    }

    /// Sends the publisher confirms owed for the frames just processed.
    pub fn flush_confirms(&mut self) {
        for id in std::mem::take(&mut self.session.pending_confirms) {
            if let Some(ch) = self.open.get_mut(&id) {
                ch.flush_confirms(&self.session);
            }
        }
    }

    /// Whether some channel holds confirms back until the store syncs.
    pub fn awaiting_disk(&self) -> bool {
        !self.session.awaiting_disk.is_empty()
    }

    /// The store synced more: sends the confirms that were waiting for it.
    pub fn flush_disk_confirms(&mut self) {
        for id in std::mem::take(&mut self.session.awaiting_disk) {
            if let Some(ch) = self.open.get_mut(&id) {
                ch.flush_confirms(&self.session);
                if ch.awaits_disk() {
                    self.session.awaiting_disk.push(id);
                }
            }
        }
    }

    /// A channel error: log it as RabbitMQ does, give back what the channel
    /// held, send `channel.close`, and ignore the channel until `close-ok`.
    fn close_channel(&mut self, id: u16, e: AmqpError) {
        let (session, Some(ch)) = (&mut self.session, self.open.get_mut(&id)) else { return };
        error!(
            "Channel error on connection <0.{}.0> ({}, vhost: '{}', user: '{}'), channel {}: operation {} caused a channel exception {}: {}",
            session.connection_id,
            session.connection_name,
            Escaped(&session.vhost.name.as_str_lossy()),
            Escaped(&session.user),
            id,
            Method::name_of(e.class_id, e.method_id).unwrap_or("none"),
            e.code.name().to_lowercase(),
            Escaped(&e.message)
        );
        ch.shutdown(session);
        ch.closing = true;
        session.broker.events.emit(|| Event::ChannelClosed {
            connection: session.connection_name.to_string(),
            channel: id,
            code: e.code.code(),
            text: e.reply_text().to_string(),
        });
        session.send_method(
            id,
            &Method::ChannelClose(channel::Close {
                reply_code: e.code.code(),
                reply_text: e.reply_text(),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
    }

    /// Closes the channels holding a delivery past its `consumer_timeout`.
    pub fn check_consumer_timeouts(&mut self) {
        self.session.deadlines.take();
        let now = Instant::now();
        let timed_out: Vec<(u16, AmqpError)> = self
            .open
            .iter()
            .filter(|(_, ch)| !ch.closing)
            .filter_map(|(id, ch)| ch.check_timeouts(now).map(|e| (*id, e)))
            .collect();
        for (id, e) in timed_out {
            self.close_channel(id, e);
        }
    }

    /// Closes every channel (requeueing what they had not acknowledged) and
    /// deletes the connection's exclusive queues. Idempotent.
    pub fn release(&mut self) {
        for (id, mut ch) in self.open.drain() {
            if !ch.closing {
                ch.shutdown(&mut self.session);
            }
            self.entry.channel_closed(id);
        }
        self.session.delete_exclusive_queues();
    }
}
