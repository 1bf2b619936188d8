//! Inspection: what the broker holds, as plain data for tests (and for the
//! management-style HTTP API): connections, queues with their consumers,
//! exchanges with their bindings, and a look at a queue's messages that
//! does not consume them.

use std::time::Duration;

use bytes::Bytes;

use super::connections::{ConnectionState, FaultSwitches};
use super::queue::{ConsumerInfo, QueueTotals};
use super::Broker;
use crate::protocol::{BasicProperties, FieldTable, ShortStr};

/// What a TLS connection settled in its TLS handshake, named as RabbitMQ's
/// management API shows it (`ssl_protocol`, `ssl_cipher`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `tlsv1.3` or `tlsv1.2`.
    pub protocol: &'static str,
    /// RabbitMQ's split of the suite: key exchange (`any` under TLS 1.3),
    /// cipher (`aes_256_gcm`), hash (`sha384`).
    pub key_exchange: String,
    pub cipher: String,
    pub hash: String,
    /// The client certificate's subject and issuer (RFC 4514, as RabbitMQ
    /// prints them), if the client presented one; rustls has verified it.
    pub peer_cert_subject: Option<String>,
    pub peer_cert_issuer: Option<String>,
    /// Its subject's common name: the user for EXTERNAL authentication.
    pub peer_cert_cn: Option<String>,
}

/// What the handshake settled for a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionDetails {
    pub user: String,
    /// The SASL mechanism it logged in with (`PLAIN`, `AMQPLAIN`).
    pub mechanism: String,
    pub vhost: String,
    pub client_properties: FieldTable,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    pub name: String,
    pub client_name: Option<String>,
    pub state: ConnectionState,
    /// None until `connection.open`.
    pub details: Option<ConnectionDetails>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// The open channel numbers.
    pub channels: Vec<u16>,
    /// How long since the client last sent anything.
    pub idle: Duration,
    /// How long since the client last sent what the receiver monitor counts
    /// (`idle`, unless the ignore-client fault is on).
    pub idle_counted: Duration,
    /// How long since warren last wrote to the client.
    pub idle_out: Duration,
    pub monitor_paused: bool,
    pub faults: FaultSwitches,
    /// For a connection over TLS.
    pub tls: Option<TlsInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueInfo {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub messages_ready: usize,
    /// Body octets of the ready messages.
    pub message_bytes_ready: usize,
    pub messages_unacknowledged: usize,
    pub consumers: Vec<ConsumerInfo>,
    /// Messages enqueued and delivered since the queue was declared.
    pub totals: QueueTotals,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingInfo {
    /// `queue` or `exchange`.
    pub destination_type: &'static str,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeInfo {
    pub vhost: String,
    pub name: String,
    pub kind: &'static str,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    pub bindings: Vec<BindingInfo>,
}

/// A message still in its queue, as [`Broker::peek`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeekedMessage {
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Bytes,
}

impl Broker {
    pub fn connection_infos(&self) -> Vec<ConnectionInfo> {
        self.connections.all().iter().map(|c| c.info()).collect()
    }

    pub fn queue_infos(&self) -> Vec<QueueInfo> {
        let mut out = Vec::new();
        for vhost in self.vhosts.iter() {
            for q in vhost.queues.iter() {
                let (ready, _) = q.counts();
                out.push(QueueInfo {
                    vhost: vhost.name.to_string(),
                    name: q.name.to_string(),
                    durable: q.options.durable,
                    exclusive: q.options.exclusive_owner.is_some(),
                    auto_delete: q.options.auto_delete,
                    arguments: q.options.arguments.clone(),
                    messages_ready: ready as usize,
                    message_bytes_ready: q.ready_bytes(),
                    messages_unacknowledged: q.unacked_count(),
                    consumers: q.consumers(),
                    totals: q.totals(),
                });
            }
        }
        out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        out
    }

    pub fn exchange_infos(&self) -> Vec<ExchangeInfo> {
        let mut out = Vec::new();
        for vhost in self.vhosts.iter() {
            for x in vhost.exchanges.iter() {
                out.push(ExchangeInfo {
                    vhost: vhost.name.to_string(),
                    name: x.name.to_string(),
                    kind: x.kind.name(),
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                    bindings: x
                        .bindings()
                        .into_iter()
                        .map(|(kind, destination, key, arguments)| BindingInfo {
                            destination_type: kind,
                            destination: destination.to_string(),
                            routing_key: key.to_string(),
                            arguments,
                        })
                        .collect(),
                });
            }
        }
        out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        out
    }

    /// Up to `n` messages of a queue, in delivery order, left where they are.
    pub fn peek(&self, vhost: &str, queue: &str, n: usize) -> Option<Vec<PeekedMessage>> {
        let vhost = self.vhost(&ShortStr::from(vhost))?;
        let q = vhost.queue(&ShortStr::from(queue)).ok()?;
        Some(
            q.peek(n)
                .into_iter()
                .map(|m| PeekedMessage {
                    exchange: m.message.exchange.to_string(),
                    routing_key: m.message.routing_key.to_string(),
                    redelivered: m.redelivered,
                    properties: BasicProperties::decode(&m.message.properties).unwrap_or_default(),
                    body: m.message.body.to_bytes(),
                })
                .collect(),
        )
    }
}
