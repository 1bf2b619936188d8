//! Errors that become AMQP replies.
//!
//! Every failure a client can cause is an [`AmqpError`]: a reply code, the
//! explanation RabbitMQ would give, and the method that caused it. Whether it
//! closes the channel or the whole connection follows from the code (spec
//! 1.2.x: 4xx are channel errors, 5xx and 320 connection errors), so the
//! code that detects a problem only has to say what went wrong.

use std::fmt;

use crate::protocol::{ReplyCode, ShortStr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: ReplyCode,
    /// The explanation, without the `NOT_FOUND - ` prefix.
    pub message: String,
    /// The method that failed, or 0/0 when no method is to blame.
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    pub fn new(code: ReplyCode, message: impl Into<String>) -> Self {
        AmqpError { code, message: message.into(), class_id: 0, method_id: 0 }
    }

    /// Names the method that caused the error, as `close` frames report it:
    /// `during(basic::Publish::IDS)`, or `during(method.ids())`.
    pub fn during(mut self, (class_id, method_id): (u16, u16)) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    pub fn is_connection_error(&self) -> bool {
        self.code.is_connection_error()
    }

    /// The reply text as RabbitMQ writes it: `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub fn reply_text(&self) -> ShortStr {
        ShortStr::truncated(format!("{} - {}", self.code.name(), self.message))
    }

    pub fn access_refused(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::AccessRefused, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::NotFound, m)
    }
    pub fn resource_locked(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::ResourceLocked, m)
    }
    pub fn precondition_failed(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::PreconditionFailed, m)
    }
    pub fn frame_error(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::FrameError, m)
    }
    pub fn syntax_error(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::SyntaxError, m)
    }
    pub fn command_invalid(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::CommandInvalid, m)
    }
    pub fn channel_error(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::ChannelError, m)
    }
    pub fn unexpected_frame(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::UnexpectedFrame, m)
    }
    pub fn not_allowed(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::NotAllowed, m)
    }
    pub fn not_implemented(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::NotImplemented, m)
    }
    pub fn internal_error(m: impl Into<String>) -> Self {
        Self::new(ReplyCode::InternalError, m)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} - {}", self.code.code(), self.code.name(), self.message)
    }
}

impl std::error::Error for AmqpError {}

pub type AmqpResult<T> = Result<T, AmqpError>;
