use crate::{Category, Level, TableName, TimestampMicros};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Column names the event envelope uses in every table; attributes may not
/// take them.
pub const RESERVED_COLUMNS: &[&str] = &[
    "time",
    "level",
    "category",
    "host",
    "message",
    "agent_id",
    "workspace_id",
    "table",
    "ingest_time",
];

/// A typed attribute value. On the wire a JSON boolean, integer, float or
/// string (decoded with a direct visitor, not serde's untagged probing,
/// which builds an error per failed variant).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a boolean, number or string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The type of a [`Value`], and of the column that stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Boolean column.
    Bool,
    /// 64-bit integer column.
    Int,
    /// 64-bit float column.
    Float,
    /// String column.
    Str,
}

impl ValueType {
    /// All types.
    pub const ALL: [ValueType; 4] = [ValueType::Bool, ValueType::Int, ValueType::Float, ValueType::Str];

    /// The lowercase name (`bool`, `int`, `float`, `str`), as in the registry.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Bool => "bool",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Str => "str",
        }
    }

    /// The narrowest type that can hold values of both `self` and `other`:
    /// equal types stay, int and float widen to float, anything else to string.
    pub fn widen(self, other: ValueType) -> ValueType {
        use ValueType::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Int, Float) | (Float, Int) => Float,
            _ => Str,
        }
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    /// The type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Bool(_) => ValueType::Bool,
            Value::Int(_) => ValueType::Int,
            Value::Float(_) => ValueType::Float,
            Value::Str(_) => ValueType::Str,
        }
    }

    /// A rough in-memory size, for batching bounds.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Str(s) => s.len() + 8,
            _ => 8,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// One event: a log line, an inventory record, a sample.
///
/// The workspace and agent are deliberately absent: the server takes them
/// from the authenticated client certificate, never from the payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Destination table.
    pub table: TableName,
    /// Event time, microseconds since the Unix epoch (UTC).
    pub time: TimestampMicros,
    /// The consent level needed to collect this event.
    pub level: Level,
    /// What kind of data this is.
    pub category: Category,
    /// The host the event comes from (as the agent reports it).
    pub host: String,
    /// The message text (a log line, or a summary).
    #[serde(default)]
    pub message: String,
    /// Typed attributes; each key becomes a column of the table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, Value>,
}

impl Event {
    /// A rough in-memory size, for batching bounds.
    pub fn approx_size(&self) -> usize {
        64 + self.host.len()
            + self.message.len()
            + self.attrs.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_to_their_json_type() {
        let v: Vec<Value> = serde_json::from_str(r#"[true, -3, 18446744073709551615, 1.5, "x"]"#).unwrap();
        assert_eq!(v, vec![Value::Bool(true), Value::Int(-3), Value::Float(18446744073709551615.0), Value::Float(1.5), Value::Str("x".into())]);
        assert!(serde_json::from_str::<Value>("null").is_err());
        assert!(serde_json::from_str::<Value>("[1]").is_err());
        assert!(serde_json::from_str::<Value>("{}").is_err());
    }
}
