//! Field tables as JSON and back, as RabbitMQ's management API and its
//! definitions files write them.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::protocol::{FieldTable, FieldValue, ShortStr};

/// A field table as the management API shows it: a JSON object.
pub fn table_json(t: &FieldTable) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.to_string(), value_json(v))).collect())
}

pub fn value_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::F32(f) => json!(f),
        FieldValue::F64(f) => json!(f),
        FieldValue::Decimal { scale, value } => json!(f64::from(*value) / 10f64.powi(i32::from(*scale))),
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => json!(String::from_utf8_lossy(b)),
        FieldValue::Array(a) => Value::Array(a.iter().map(value_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table_json(t),
        FieldValue::Void => Value::Null,
        other => json!(other.as_i64()),
    }
}

/// A JSON object as a field table, as RabbitMQ reads arguments and headers:
/// strings become long strings, integers signed 64-bit, other numbers
/// doubles, `null` void. (The JSON parser already bounds the nesting.)
pub fn json_table(v: &Value) -> Result<FieldTable, String> {
    // An empty list is an empty table, as RabbitMQ reads it (clients such as
    // pyrabbit2 send `"arguments": []`).
    if v.as_array().is_some_and(Vec::is_empty) {
        return Ok(FieldTable::new());
    }
    let Some(fields) = v.as_object() else { return Err("expected a JSON object".into()) };
    let mut table = FieldTable::new();
    for (key, value) in fields {
        if key.len() > ShortStr::MAX_LEN {
            return Err(format!("a table key is at most {} octets long", ShortStr::MAX_LEN));
        }
        table.insert(key.as_str(), json_value(value)?);
    }
    Ok(table)
}

fn json_value(v: &Value) -> Result<FieldValue, String> {
    Ok(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => FieldValue::LongStr(Bytes::from(s.clone())),
        Value::Array(items) => FieldValue::Array(items.iter().map(json_value).collect::<Result<_, _>>()?),
        Value::Object(_) => FieldValue::Table(json_table(v)?),
    })
}
