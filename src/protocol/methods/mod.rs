//! Method frames (spec 4.2.4 and the class reference), one file per class.
//!
//! Every method is a plain struct whose fields are listed in wire order; the
//! `method!` macro turns that list into `decode`/`encode`, so a method's
//! definition reads like the spec's own table. [`Method`] is the union of all
//! of them: a client's method frame is decoded into it, and the broker encodes
//! the server's replies from it (or straight from the struct on hot paths such
//! as `basic.deliver`).

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, Decoder};

/// Defines one method struct: its class id, method id, dotted name, and its
/// fields in wire order (each a [`super::codec::Field`] type; `bool` is a bit).
macro_rules! method {
    (
        $(#[$meta:meta])*
        $name:ident = $class:literal / $id:literal, $text:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            pub const CLASS_ID: u16 = $class;
            pub const METHOD_ID: u16 = $id;
            pub const NAME: &'static str = $text;
            /// `(class id, method id)`, as `close` frames name a method.
            pub const IDS: (u16, u16) = ($class, $id);

            #[allow(unused_variables)]
            pub fn decode_args(d: &mut $crate::protocol::codec::Decoder<'_>)
                -> Result<Self, $crate::protocol::codec::DecodeError> {
                Ok($name {
                    $( $field: <$ty as $crate::protocol::codec::Field>::decode(d)?, )*
                })
            }

            /// The method as a frame trace shows it: its name and its
            /// arguments (reserved fields left out).
            pub fn trace(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($text)?;
                $(
                    match stringify!($field) {
                        name if name.starts_with("reserved") => {}
                        // Credentials never go to a log.
                        name @ ("response" | "new_secret") => write!(f, " {name}=<hidden>")?,
                        name => {
                            write!(f, " {name}=")?;
                            $crate::protocol::codec::Traced::trace(&self.$field, f)?;
                        }
                    }
                )*
                Ok(())
            }

            /// Writes class id, method id and the arguments: a method frame's payload.
            #[allow(unused_variables, unused_mut)]
            pub fn encode(&self, buf: &mut bytes::BytesMut) {
                use bytes::BufMut;
                buf.put_u16($class);
                buf.put_u16($id);
                let mut e = $crate::protocol::codec::Encoder::new(buf);
                $( $crate::protocol::codec::Field::encode(&self.$field, &mut e); )*
            }
        }
    };
}

pub mod basic;
pub mod channel;
pub mod confirm;
pub mod connection;
pub mod exchange;
pub mod queue;
pub mod tx;

/// A method frame whose class and method ids the broker does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodError {
    Unknown { class_id: u16, method_id: u16 },
    Syntax { class_id: u16, method_id: u16, name: &'static str, error: DecodeError },
}

macro_rules! methods {
    ($( $variant:ident($ty:ty) ),* $(,)?) => {
        /// Every AMQP 0-9-1 method of the classes RabbitMQ implements.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $( $variant($ty), )*
        }

        impl Method {
            /// Decodes a method frame's payload. Strings in the result are
            /// slices of `payload`.
            pub fn decode(payload: &Bytes) -> Result<Method, MethodError> {
                let mut d = Decoder::new(payload);
                let (class_id, method_id) = match (d.short(), d.short()) {
                    (Ok(c), Ok(m)) => (c, m),
                    _ => return Err(MethodError::Syntax {
                        class_id: 0, method_id: 0, name: "method",
                        error: DecodeError::new("method frame shorter than its ids"),
                    }),
                };
                $(
                    if class_id == <$ty>::CLASS_ID && method_id == <$ty>::METHOD_ID {
                        // Every octet must belong to a field: trailing
                        // garbage is a decode error, as in RabbitMQ.
                        return <$ty>::decode_args(&mut d)
                            .and_then(|m| match d.remaining() {
                                0 => Ok(m),
                                n => Err(DecodeError::new(format!("{n} trailing octets"))),
                            })
                            .map(Method::$variant)
                            .map_err(|error| MethodError::Syntax {
                                class_id, method_id, name: <$ty>::NAME, error,
                            });
                    }
                )*
                Err(MethodError::Unknown { class_id, method_id })
            }

            /// Writes the method frame payload (ids and arguments).
            pub fn encode(&self, buf: &mut BytesMut) {
                match self {
                    $( Method::$variant(m) => m.encode(buf), )*
                }
            }

            /// `(class id, method id)`, as `connection.close` and
            /// `channel.close` report the method that failed.
            pub fn ids(&self) -> (u16, u16) {
                match self {
                    $( Method::$variant(_) => (<$ty>::CLASS_ID, <$ty>::METHOD_ID), )*
                }
            }

            /// The spec's dotted name, e.g. `basic.publish`.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Method::$variant(_) => <$ty>::NAME, )*
                }
            }

            /// The method as a frame trace shows it, e.g.
            /// `basic.publish exchange="" routing_key="q" mandatory=false immediate=false`.
            pub fn trace(&self) -> impl std::fmt::Display + '_ {
                struct Trace<'a>(&'a Method);
                impl std::fmt::Display for Trace<'_> {
                    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        match self.0 {
                            $( Method::$variant(m) => m.trace(f), )*
                        }
                    }
                }
                Trace(self)
            }

            /// Looks a name up by ids, for error texts about unknown frames.
            pub fn name_of(class_id: u16, method_id: u16) -> Option<&'static str> {
                $(
                    if class_id == <$ty>::CLASS_ID && method_id == <$ty>::METHOD_ID {
                        return Some(<$ty>::NAME);
                    }
                )*
                None
            }
        }

        $(
            impl From<$ty> for Method {
                fn from(m: $ty) -> Method {
                    Method::$variant(m)
                }
            }
        )*
    };
}

methods! {
    ConnectionStart(connection::Start),
    ConnectionStartOk(connection::StartOk),
    ConnectionSecure(connection::Secure),
    ConnectionSecureOk(connection::SecureOk),
    ConnectionTune(connection::Tune),
    ConnectionTuneOk(connection::TuneOk),
    ConnectionOpen(connection::Open),
    ConnectionOpenOk(connection::OpenOk),
    ConnectionClose(connection::Close),
    ConnectionCloseOk(connection::CloseOk),
    ConnectionBlocked(connection::Blocked),
    ConnectionUnblocked(connection::Unblocked),
    ConnectionUpdateSecret(connection::UpdateSecret),
    ConnectionUpdateSecretOk(connection::UpdateSecretOk),
    ChannelOpen(channel::Open),
    ChannelOpenOk(channel::OpenOk),
    ChannelFlow(channel::Flow),
    ChannelFlowOk(channel::FlowOk),
    ChannelClose(channel::Close),
    ChannelCloseOk(channel::CloseOk),
    ExchangeDeclare(exchange::Declare),
    ExchangeDeclareOk(exchange::DeclareOk),
    ExchangeDelete(exchange::Delete),
    ExchangeDeleteOk(exchange::DeleteOk),
    ExchangeBind(exchange::Bind),
    ExchangeBindOk(exchange::BindOk),
    ExchangeUnbind(exchange::Unbind),
    ExchangeUnbindOk(exchange::UnbindOk),
    QueueDeclare(queue::Declare),
    QueueDeclareOk(queue::DeclareOk),
    QueueBind(queue::Bind),
    QueueBindOk(queue::BindOk),
    QueuePurge(queue::Purge),
    QueuePurgeOk(queue::PurgeOk),
    QueueDelete(queue::Delete),
    QueueDeleteOk(queue::DeleteOk),
    QueueUnbind(queue::Unbind),
    QueueUnbindOk(queue::UnbindOk),
    BasicQos(basic::Qos),
    BasicQosOk(basic::QosOk),
    BasicConsume(basic::Consume),
    BasicConsumeOk(basic::ConsumeOk),
    BasicCancel(basic::Cancel),
    BasicCancelOk(basic::CancelOk),
    BasicPublish(basic::Publish),
    BasicReturn(basic::Return),
    BasicDeliver(basic::Deliver),
    BasicGet(basic::Get),
    BasicGetOk(basic::GetOk),
    BasicGetEmpty(basic::GetEmpty),
    BasicAck(basic::Ack),
    BasicReject(basic::Reject),
    BasicRecoverAsync(basic::RecoverAsync),
    BasicRecover(basic::Recover),
    BasicRecoverOk(basic::RecoverOk),
    BasicNack(basic::Nack),
    ConfirmSelect(confirm::Select),
    ConfirmSelectOk(confirm::SelectOk),
    TxSelect(tx::Select),
    TxSelectOk(tx::SelectOk),
    TxCommit(tx::Commit),
    TxCommitOk(tx::CommitOk),
    TxRollback(tx::Rollback),
    TxRollbackOk(tx::RollbackOk),
}

impl Method {
    /// Methods followed by a content header and body frames (spec 4.2.6).
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_) | Method::BasicReturn(_) | Method::BasicDeliver(_) | Method::BasicGetOk(_)
        )
    }
}

/// Writes a whole method frame (header, payload, frame end) for `channel`.
pub fn write_method_frame(buf: &mut BytesMut, channel: u16, encode: impl FnOnce(&mut BytesMut)) {
    use super::constants::{FRAME_END, FRAME_METHOD};
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    encode(buf);
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}
