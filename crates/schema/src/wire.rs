//! Transport-neutral messages: what a bus adapter hands the decoder.
//!
//! Adapters translate their native message (a JetStream message, an AMQP
//! message) into a [`WireMessage`] and never parse events themselves, so every
//! transport shares one decoder, one set of errors and one fuzz target.

use bytes_like::Body;

use crate::{DecodeError, MirrorEvent, MAX_EVENT_BYTES, STRUCTURED_CONTENT_TYPE};

mod bytes_like {
    /// The message body.
    pub type Body = Vec<u8>;
}

/// A value of a message property, as AMQP application properties can carry it
/// (NATS headers are always [`WireValue::String`]).
#[derive(Debug, Clone, PartialEq)]
pub enum WireValue {
    String(String),
    Bool(bool),
    Int(i64),
    /// AMQP `timestamp` (milliseconds since the epoch).
    Timestamp(chrono::DateTime<chrono::Utc>),
    Uuid(uuid::Uuid),
    Binary(Vec<u8>),
}

/// A message as it came off (or goes onto) a bus.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireMessage {
    /// The transport's content type (AMQP `content-type`, NATS `Content-Type` header).
    pub content_type: Option<String>,
    /// Application properties / headers, in transport order.
    pub properties: Vec<(String, WireValue)>,
    pub body: Body,
}

impl WireMessage {
    /// A structured-mode message carrying `event`.
    pub fn structured(event: &MirrorEvent) -> WireMessage {
        WireMessage {
            content_type: Some(STRUCTURED_CONTENT_TYPE.to_owned()),
            properties: Vec::new(),
            body: event.to_structured_json(),
        }
    }

    pub fn property(&self, name: &str) -> Option<&WireValue> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Size of the message as the limit counts it: body plus property names and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .properties
                .iter()
                .map(|(k, v)| {
                    k.len()
                        + match v {
                            WireValue::String(s) => s.len(),
                            WireValue::Binary(b) => b.len(),
                            _ => 16,
                        }
                })
                .sum::<usize>()
    }

    /// Whether this message uses the CloudEvents binary content mode (its
    /// attributes are properties) rather than structured mode.
    pub fn is_binary_mode(&self) -> bool {
        let structured = self
            .content_type
            .as_deref()
            .map(|ct| {
                ct.trim()
                    .to_ascii_lowercase()
                    .starts_with(STRUCTURED_CONTENT_TYPE)
            })
            .unwrap_or(false);
        !structured && crate::amqp::has_binary_attributes(self)
    }
}

/// The `id`, `type` and `subject` a message claims, read best-effort and not
/// validated: what names a message that failed validation (its dead-letter
/// row, `mirrorctl dead-letters`). Strings are clipped to
/// [`ClaimedAttributes::MAX_CHARS`] characters. Never a key: any producer can
/// put any id there (see `sql_writer::dead_letters::dead_letter_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimedAttributes {
    pub id: Option<uuid::Uuid>,
    pub event_type: Option<String>,
    pub subject: Option<String>,
}

impl ClaimedAttributes {
    /// Longest attribute string kept.
    pub const MAX_CHARS: usize = 128;

    /// Read from the CloudEvents properties (binary mode, either prefix) or
    /// the JSON body (structured mode); whatever is missing or unreadable
    /// stays `None`.
    pub fn of(message: &WireMessage) -> ClaimedAttributes {
        let clip = |s: &str| s.chars().take(Self::MAX_CHARS).collect::<String>();
        if message.is_binary_mode() {
            let get = |name: &str| {
                crate::amqp::PREFIXES.iter().find_map(|p| {
                    match message.property(&format!("{p}{name}")) {
                        Some(WireValue::String(s)) => Some(clip(s)),
                        Some(WireValue::Uuid(u)) => Some(u.to_string()),
                        _ => None,
                    }
                })
            };
            return ClaimedAttributes {
                id: get("id").and_then(|s| s.parse().ok()),
                event_type: get("type"),
                subject: get("subject"),
            };
        }
        let Ok(serde_json::Value::Object(obj)) =
            serde_json::from_slice::<serde_json::Value>(&message.body)
        else {
            return ClaimedAttributes::default();
        };
        let get = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(clip);
        ClaimedAttributes {
            id: get("id").and_then(|i| i.parse().ok()),
            event_type: get("type"),
            subject: get("subject"),
        }
    }
}

/// Decode a message from any transport: structured mode when the content type
/// says so or no CloudEvents properties are present, binary mode otherwise.
pub fn decode_wire(message: &WireMessage) -> Result<MirrorEvent, DecodeError> {
    let size = message.size();
    if size > MAX_EVENT_BYTES {
        return Err(DecodeError::TooLarge {
            size,
            limit: MAX_EVENT_BYTES,
        });
    }
    if message.is_binary_mode() {
        crate::amqp::decode_binary(message)
    } else {
        crate::decode_structured(&message.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_attributes_are_read_from_either_mode_without_validation() {
        let id = uuid::Uuid::from_u128(7);
        let structured = WireMessage {
            content_type: Some(STRUCTURED_CONTENT_TYPE.to_owned()),
            properties: Vec::new(),
            body: serde_json::json!({"id": id.to_string(), "type": "x.nonsense", "subject": "s".repeat(300)})
                .to_string()
                .into_bytes(),
        };
        let got = ClaimedAttributes::of(&structured);
        assert_eq!(got.id, Some(id));
        assert_eq!(got.event_type.as_deref(), Some("x.nonsense"));
        assert_eq!(
            got.subject.map(|s| s.len()),
            Some(ClaimedAttributes::MAX_CHARS)
        );

        for prefix in crate::amqp::PREFIXES {
            let binary = WireMessage {
                content_type: Some("application/json".to_owned()),
                properties: vec![
                    (
                        format!("{prefix}specversion"),
                        WireValue::String("1.0".into()),
                    ),
                    (format!("{prefix}id"), WireValue::Uuid(id)),
                    (format!("{prefix}type"), WireValue::String("t".into())),
                    (format!("{prefix}subject"), WireValue::Int(3)),
                ],
                body: b"not json".to_vec(),
            };
            assert_eq!(
                ClaimedAttributes::of(&binary),
                ClaimedAttributes {
                    id: Some(id),
                    event_type: Some("t".into()),
                    subject: None,
                },
                "{prefix}"
            );
        }
        let garbage = WireMessage {
            body: b"\xff{".to_vec(),
            ..WireMessage::default()
        };
        assert_eq!(
            ClaimedAttributes::of(&garbage),
            ClaimedAttributes::default()
        );
    }
}
