//! Headers routing: a binding's arguments are matched against a message's
//! `headers` property, as RabbitMQ's `rabbit_exchange_type_headers` does.
//!
//! The binding argument `x-match` says how:
//! - `all` (the default) — every binding argument must be in the headers
//!   with an equal value;
//! - `any` — at least one must;
//! - `all-with-x` / `any-with-x` — the same, but arguments whose names start
//!   with `x-` take part; plain `all` / `any` ignore them. `x-match` itself
//!   never takes part.
//!
//! A binding argument of type void matches the mere presence of the header.
//! Values are compared as Erlang's `==` compares them: the field type does
//! not matter for numbers (`I` 1 equals `l` 1 and `d` 1.0) nor for strings
//! (`S` and `x`).

use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{FieldTable, FieldValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

/// One headers-exchange binding's arguments, with `x-match` read once at
/// bind time rather than per message.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersBinding {
    pub x_match: XMatch,
    pub arguments: FieldTable,
}

impl HeadersBinding {
    /// Validates `arguments` as RabbitMQ's `validate_binding` does: a bad
    /// `x-match` is 406 PRECONDITION_FAILED with its text.
    pub fn new(arguments: FieldTable) -> AmqpResult<HeadersBinding> {
        let x_match = match arguments.get("x-match") {
            None => XMatch::All,
            Some(FieldValue::LongStr(v)) => match &v[..] {
                b"all" => XMatch::All,
                b"any" => XMatch::Any,
                b"all-with-x" => XMatch::AllWithX,
                b"any-with-x" => XMatch::AnyWithX,
                _ => {
                    return Err(AmqpError::precondition_failed(format!(
                        "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                        erlang_term(&FieldValue::LongStr(v.clone()))
                    )))
                }
            },
            Some(other) => {
                return Err(AmqpError::precondition_failed(format!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    other.type_name(),
                    erlang_term(other)
                )))
            }
        };
        Ok(HeadersBinding { x_match, arguments })
    }

    /// Whether a message with these `headers` (none counts as empty) matches.
    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let with_x = matches!(self.x_match, XMatch::AllWithX | XMatch::AnyWithX);
        let all = matches!(self.x_match, XMatch::All | XMatch::AllWithX);
        let mut considered = self.arguments.iter().filter(|(k, _)| {
            let k = k.as_bytes();
            k != b"x-match" && (with_x || !k.starts_with(b"x-"))
        });
        let hit = |(key, want): &(crate::protocol::ShortStr, FieldValue)| {
            let have = headers.and_then(|h| h.iter().find(|(k, _)| k == key).map(|(_, v)| v));
            match (want, have) {
                (_, None) => false,
                (FieldValue::Void, Some(_)) => true,
                (want, Some(have)) => values_equal(want, have),
            }
        };
        if all {
            considered.all(hit)
        } else {
            considered.any(hit)
        }
    }
}

/// Erlang's `==` over decoded field values: numbers compare by value
/// whatever their width or type, strings by their octets.
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    fn number(v: &FieldValue) -> Option<f64> {
        match *v {
            FieldValue::F32(f) => Some(f.into()),
            FieldValue::F64(f) => Some(f),
            _ => None,
        }
    }
    fn integer(v: &FieldValue) -> Option<i128> {
        match *v {
            FieldValue::Timestamp(t) => Some(t.into()),
            _ => v.as_i64().map(i128::from),
        }
    }
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (number(a).or(integer(a).map(|i| i as f64)), number(b).or(integer(b).map(|i| i as f64)))
    {
        return x == y;
    }
    match (a.as_bytes(), b.as_bytes()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A value as Erlang's `~tp` prints it, for the simple values an `x-match`
/// might hold: `<<"foo">>`, `<<1,2>>`, `true`, `42`.
fn erlang_term(v: &FieldValue) -> String {
    match v {
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => {
            if b.iter().all(|&c| (0x20..0x7f).contains(&c)) {
                let text: String = b
                    .iter()
                    .flat_map(|&c| match c {
                        b'"' | b'\\' => vec!['\\', c as char],
                        _ => vec![c as char],
                    })
                    .collect();
                format!("<<\"{text}\">>")
            } else if let Ok(s) = std::str::from_utf8(b) {
                format!("<<\"{}\"/utf8>>", s.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                let octets: Vec<String> = b.iter().map(u8::to_string).collect();
                format!("<<{}>>", octets.join(","))
            }
        }
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::F32(f) => format!("{f:?}"),
        FieldValue::F64(f) => format!("{f:?}"),
        FieldValue::Timestamp(t) => t.to_string(),
        FieldValue::Void => "undefined".to_string(),
        other => other.as_i64().map_or_else(|| format!("{other:?}"), |i| i.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn s(v: &'static str) -> FieldValue {
        FieldValue::LongStr(Bytes::from_static(v.as_bytes()))
    }

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs.iter().fold(FieldTable::new(), |t, (k, v)| t.with(k, v.clone()))
    }

    fn binding(pairs: &[(&str, FieldValue)]) -> HeadersBinding {
        HeadersBinding::new(table(pairs)).unwrap()
    }

    #[test]
    fn all_and_any() {
        let all = binding(&[("x-match", s("all")), ("a", s("1")), ("b", FieldValue::I32(2))]);
        let any = binding(&[("x-match", s("any")), ("a", s("1")), ("b", FieldValue::I32(2))]);
        let both = table(&[("b", FieldValue::I64(2)), ("a", FieldValue::Bytes(Bytes::from_static(b"1")))]);
        let one = table(&[("a", s("1")), ("c", s("3"))]);
        let wrong = table(&[("a", s("2"))]);
        assert!(all.matches(Some(&both)));
        assert!(!all.matches(Some(&one)));
        assert!(any.matches(Some(&one)));
        assert!(!any.matches(Some(&wrong)));
        assert!(!any.matches(None));
        assert!(!all.matches(None));
    }

    #[test]
    fn empty_binding_matches_everything_with_all_nothing_with_any() {
        assert!(binding(&[]).matches(None));
        assert!(binding(&[("x-match", s("all"))]).matches(Some(&table(&[("a", s("1"))]))));
        assert!(!binding(&[("x-match", s("any"))]).matches(Some(&table(&[("a", s("1"))]))));
    }

    #[test]
    fn x_arguments_count_only_with_x() {
        let headers = table(&[("x-a", s("1"))]);
        let other = table(&[("x-a", s("2"))]);
        assert!(binding(&[("x-match", s("all")), ("x-a", s("1"))]).matches(Some(&other)));
        assert!(!binding(&[("x-match", s("any")), ("x-a", s("1"))]).matches(Some(&headers)));
        assert!(binding(&[("x-match", s("all-with-x")), ("x-a", s("1"))]).matches(Some(&headers)));
        assert!(!binding(&[("x-match", s("all-with-x")), ("x-a", s("1"))]).matches(Some(&other)));
        assert!(binding(&[("x-match", s("any-with-x")), ("x-a", s("1")), ("b", s("9"))]).matches(Some(&headers)));
    }

    #[test]
    fn void_matches_presence() {
        let b = binding(&[("a", FieldValue::Void)]);
        assert!(b.matches(Some(&table(&[("a", FieldValue::Bool(false))]))));
        assert!(!b.matches(Some(&table(&[("b", s("1"))]))));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(values_equal(&FieldValue::I8(1), &FieldValue::U32(1)));
        assert!(values_equal(&FieldValue::I32(1), &FieldValue::F64(1.0)));
        assert!(!values_equal(&FieldValue::I32(1), &s("1")));
        assert!(!values_equal(&FieldValue::Bool(true), &FieldValue::I8(1)));
    }

    #[test]
    fn invalid_x_match_texts() {
        let e = HeadersBinding::new(table(&[("x-match", s("some"))])).unwrap_err();
        assert_eq!(
            e.reply_text().to_string(),
            "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; \
             expected all, any, all-with-x, or any-with-x"
        );
        let e = HeadersBinding::new(table(&[("x-match", FieldValue::Bool(true))])).unwrap_err();
        assert_eq!(e.message, "Invalid x-match field type bool (value true); expected longstr");
    }
}
