//! A neutral, SDK-free model of a Firestore document and its values.
//!
//! The listen core, the mapping and the backfill work on these types only, so
//! they can be tested without Firestore and do not change when the SDK does.
//! The Firestore adapter (feature `firestore`) converts the gRPC types into
//! them in one place.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// A Firestore timestamp: nanosecond precision, UTC.
pub type Timestamp = DateTime<Utc>;

/// One Firestore field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Integer(i64),
    Double(f64),
    Timestamp(Timestamp),
    String(String),
    Bytes(Vec<u8>),
    /// A document reference, as a path relative to `documents/` (`users/u1`).
    Reference(String),
    GeoPoint {
        latitude: f64,
        longitude: f64,
    },
    Array(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// The Firestore type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Integer(_) => "integer",
            Value::Double(_) => "double",
            Value::Timestamp(_) => "timestamp",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Reference(_) => "reference",
            Value::GeoPoint { .. } => "geo point",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }
}

/// A document as Firestore returns it: path, fields and its two server times.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The path relative to `documents/` (`conversations/c1/messages/m1`).
    pub path: String,
    pub fields: BTreeMap<String, Value>,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
}

impl Document {
    /// The last path segment: the document id.
    pub fn id(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

/// Strip a full resource name (`projects/p/databases/d/documents/a/b`) to the
/// path relative to `documents/` (`a/b`); a path that is already relative is
/// returned unchanged.
pub fn relative_path(name: &str) -> &str {
    match name.find("/documents/") {
        Some(i) if name.starts_with("projects/") => &name[i + "/documents/".len()..],
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path("projects/p/databases/(default)/documents/conversations/c1"),
            "conversations/c1"
        );
        assert_eq!(relative_path("conversations/c1"), "conversations/c1");
    }
}
