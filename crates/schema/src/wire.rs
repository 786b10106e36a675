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
