//! Log lines that a client cannot forge.
//!
//! Much of what warren logs was chosen by a client: user names (before they
//! are authenticated), the `connection_name` client property, the
//! authentication mechanism, queue and exchange names in error texts. A
//! name containing a newline would start a new line in the log that looks
//! like one of warren's own (`... user 'x\n[ERROR] disk full`), and an
//! escape character could rewrite a terminal. So:
//!
//! - every client-supplied string is written into a log line through
//!   [`Escaped`], which spells control characters as Rust escapes (`\n`,
//!   `\u{1b}`), so one event is always one line, whatever subscriber
//!   formats it (an embedding test suite has its own);
//! - the binary's subscriber also escapes every field it prints
//!   ([`escaping_fields`]), as a second line of defence for anything a
//!   future log line forgets to wrap.

use std::fmt;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};
use tracing_subscriber::fmt::FormatFields;

/// Writes a string with its control characters (and the Unicode line and
/// paragraph separators) escaped.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found at a char boundary");
            write!(f, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// The binary's field formatter: the default layout (the message, then
/// `name=value` pairs), with every value escaped.
pub fn escaping_fields() -> impl for<'w> FormatFields<'w> + 'static {
    debug_fn(|w: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
        let text = format!("{value:?}");
        match field.name() {
            "message" => write!(w, "{}", Escaped(&text)),
            name => write!(w, "{name}={}", Escaped(&text)),
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line() {
        let forged = "guest\n2026-12-01T00:00:00Z ERROR fake\r\u{1b}[2J\u{2028}end";
        let shown = Escaped(forged).to_string();
        assert_eq!(shown, "guest\\n2026-12-01T00:00:00Z ERROR fake\\r\\u{1b}[2J\\u{2028}end");
        assert!(!shown.chars().any(needs_escape));
        assert_eq!(Escaped("plain 'name' é").to_string(), "plain 'name' é");
    }
}
