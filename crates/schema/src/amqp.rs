//! The CloudEvents AMQP binding over [`WireMessage`] (binary content mode).
//!
//! Attributes travel as application properties named `cloudEvents_<attr>`
//! (readers also accept `cloudEvents:<attr>`); `datacontenttype` is the AMQP
//! content-type and the body is the data.

use crate::{DecodeError, MirrorEvent, WireMessage};

/// The property prefixes of the AMQP binding: the one written first.
pub const PREFIXES: [&str; 2] = ["cloudEvents_", "cloudEvents:"];

/// Whether any property carries a CloudEvents attribute.
pub fn has_binary_attributes(message: &WireMessage) -> bool {
    message
        .properties
        .iter()
        .any(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)))
}

/// Decode a binary-mode message.
pub fn decode_binary(_message: &WireMessage) -> Result<MirrorEvent, DecodeError> {
    Err(DecodeError::Malformed("binary content mode is not supported yet".into()))
}
