//! The CloudEvents AMQP binding over [`WireMessage`] (binary content mode).
//!
//! Attributes travel as application properties named `cloudEvents_<attr>`
//! (readers also accept `cloudEvents:<attr>`, the prefix of the original
//! binding); `datacontenttype` is the AMQP content-type and the body is the
//! data. This is the binding the Service Bus adapter uses when a message
//! carries CloudEvents properties; structured mode (`application/cloudevents+json`
//! body) goes through [`crate::decode_structured`].
//!
//! The module is pure: it knows [`WireMessage`]/[`WireValue`], never an AMQP
//! crate, so the schema crate stays free of transport dependencies.
//!
//! # Values
//!
//! Readers accept attribute values in the AMQP type system (`timestamp` for
//! `time`, `uuid` for `id`, `long`, `boolean`, `binary`) or as canonical
//! strings. Writers use strings for everything the contract defines, and in
//! particular write `time` as an RFC 3339 **string**: an AMQP `timestamp` has
//! millisecond precision, and the contract's deterministic id is computed over
//! the microsecond time, so a native timestamp would change the id a reader
//! derives. A producer that sends a native `timestamp` is still accepted — its
//! id must then be the id of the millisecond time it sent.
//!
//! # Entry points
//!
//! - [`decode_binary`] validates a binary-mode message against the contract
//!   (through [`crate::decode_cloudevent`], so every structured-mode rule applies).
//! - [`encode_binary`] writes a [`MirrorEvent`] in binary mode.
//! - [`BinaryMessage`] / [`BinaryMessageSerializer`] are the cloudevents-sdk
//!   `BinaryDeserializer` / `BinarySerializer` of the binding, for any
//!   CloudEvent, not only contract events.

use std::borrow::Borrow;

use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::event::SpecVersion;
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, Error as MessageError, MessageAttributeValue,
    MessageDeserializer, StructuredDeserializer, StructuredSerializer,
};
use cloudevents::Event;

use crate::types::truncate;
use crate::{
    DecodeError, EventType, MirrorEvent, WireMessage, WireValue, MAX_EVENT_BYTES,
    STRUCTURED_CONTENT_TYPE,
};

/// The property prefixes of the AMQP binding: the one written first.
pub const PREFIXES: [&str; 2] = ["cloudEvents_", "cloudEvents:"];

/// The prefix writers use.
pub const WRITE_PREFIX: &str = PREFIXES[0];

/// Whether any property carries a CloudEvents attribute.
pub fn has_binary_attributes(message: &WireMessage) -> bool {
    message
        .properties
        .iter()
        .any(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)))
}

/// The attribute name of a property, if it is a CloudEvents property.
fn attribute_name(property: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|p| property.strip_prefix(p))
}

/// The context attributes CloudEvents 1.0 defines (everything else is an extension).
const SPEC_ATTRIBUTES: [&str; 8] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// The attributes this contract requires, with the static names errors carry.
const REQUIRED: [&str; 5] = ["id", "source", "type", "subject", "time"];

/// How a [`WireValue`] is called in error messages (its AMQP type).
fn amqp_type(value: &WireValue) -> &'static str {
    match value {
        WireValue::String(_) => "an AMQP string",
        WireValue::Bool(_) => "an AMQP boolean",
        WireValue::Int(_) => "an AMQP long",
        WireValue::Timestamp(_) => "an AMQP timestamp",
        WireValue::Uuid(_) => "an AMQP uuid",
        WireValue::Binary(_) => "AMQP binary",
    }
}

/// A time in RFC 3339 at the precision it has: microseconds (the contract's
/// canonical form) unless it carries nanoseconds.
fn time_string(t: &DateTime<Utc>) -> String {
    use chrono::Timelike;
    let format = if t.nanosecond().is_multiple_of(1_000) {
        SecondsFormat::Micros
    } else {
        SecondsFormat::Nanos
    };
    t.to_rfc3339_opts(format, true)
}

fn to_attribute_value(value: &WireValue) -> MessageAttributeValue {
    match value {
        WireValue::String(s) => MessageAttributeValue::String(s.clone()),
        WireValue::Bool(b) => MessageAttributeValue::Boolean(*b),
        WireValue::Int(i) => MessageAttributeValue::Integer(*i),
        // An AMQP timestamp is whole milliseconds; read it as the wire holds it.
        WireValue::Timestamp(t) => {
            MessageAttributeValue::DateTime(chrono::SubsecRound::trunc_subsecs(*t, 3))
        }
        WireValue::Uuid(u) => MessageAttributeValue::String(u.hyphenated().to_string()),
        WireValue::Binary(b) => MessageAttributeValue::Binary(b.clone()),
    }
}

fn to_wire_value(value: MessageAttributeValue) -> WireValue {
    match value {
        MessageAttributeValue::Boolean(b) => WireValue::Bool(b),
        MessageAttributeValue::Integer(i) => WireValue::Int(i),
        MessageAttributeValue::String(s) => WireValue::String(s),
        MessageAttributeValue::Binary(b) => WireValue::Binary(b),
        MessageAttributeValue::Uri(u) => WireValue::String(u.to_string()),
        MessageAttributeValue::UriRef(u) => WireValue::String(u),
        MessageAttributeValue::DateTime(t) => WireValue::String(time_string(&t)),
    }
}

fn other(message: String) -> MessageError {
    MessageError::Other {
        source: message.into(),
    }
}

/// A [`WireMessage`] read through the CloudEvents AMQP binding: the SDK's
/// `BinaryDeserializer` (and `StructuredDeserializer` for
/// `application/cloudevents+json` bodies). Wraps `&WireMessage` or `WireMessage`.
///
/// It maps values faithfully and leaves contract rules to [`decode_binary`];
/// use it directly to read CloudEvents that are not contract events.
#[derive(Debug, Clone)]
pub struct BinaryMessage<M>(pub M);

impl<M: Borrow<WireMessage>> BinaryMessage<M> {
    fn message(&self) -> &WireMessage {
        self.0.borrow()
    }

    /// The CloudEvents attributes of the message as `(attribute, value)`, in
    /// property order. An attribute given twice (under both prefixes, say) is an error.
    fn attributes(&self) -> Result<Vec<(&str, &WireValue)>, String> {
        let mut out: Vec<(&str, &WireValue)> = Vec::new();
        for (key, value) in &self.message().properties {
            let Some(name) = attribute_name(key) else {
                continue;
            };
            if out.iter().any(|(n, _)| *n == name) {
                return Err(format!("attribute `{}` is given twice", truncate(name, 64)));
            }
            out.push((name, value));
        }
        Ok(out)
    }
}

impl<M: Borrow<WireMessage>> BinaryDeserializer for BinaryMessage<M> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        self,
        mut visitor: V,
    ) -> cloudevents::message::Result<R> {
        if self.encoding() != Encoding::BINARY {
            return Err(MessageError::WrongEncoding {});
        }
        let attributes = self.attributes().map_err(other)?;
        let spec_version = match attributes.iter().find(|(n, _)| *n == "specversion") {
            Some((_, WireValue::String(s))) => SpecVersion::try_from(s.as_str())?,
            Some((_, v)) => {
                return Err(other(format!(
                    "`specversion` is {}, not a string",
                    amqp_type(v)
                )))
            }
            None => return Err(MessageError::WrongEncoding {}),
        };
        let names = spec_version.attribute_names();
        visitor = visitor.set_spec_version(spec_version)?;
        if let Some(ct) = &self.message().content_type {
            visitor = visitor
                .set_attribute("datacontenttype", MessageAttributeValue::String(ct.clone()))?;
        }
        for (name, value) in attributes {
            match name {
                "specversion" => {}
                // The binding carries it as the AMQP content-type; a property of that
                // name is not part of the binding.
                "datacontenttype" => {
                    return Err(other(
                        "`datacontenttype` must travel as the AMQP content-type, not as a property"
                            .into(),
                    ))
                }
                n if names.contains(&n) => {
                    visitor = visitor.set_attribute(n, to_attribute_value(value))?
                }
                n => visitor = visitor.set_extension(n, to_attribute_value(value))?,
            }
        }
        let body = &self.message().body;
        if body.is_empty() {
            visitor.end()
        } else {
            visitor.end_with_data(body.clone())
        }
    }
}

impl<M: Borrow<WireMessage>> StructuredDeserializer for BinaryMessage<M> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(
        self,
        visitor: V,
    ) -> cloudevents::message::Result<R> {
        if self.encoding() != Encoding::STRUCTURED {
            return Err(MessageError::WrongEncoding {});
        }
        visitor.set_structured_event(self.message().body.clone())
    }
}

impl<M: Borrow<WireMessage>> MessageDeserializer for BinaryMessage<M> {
    fn encoding(&self) -> Encoding {
        let m = self.message();
        let structured = m
            .content_type
            .as_deref()
            .map(|ct| {
                ct.trim()
                    .to_ascii_lowercase()
                    .starts_with(STRUCTURED_CONTENT_TYPE)
            })
            .unwrap_or(false);
        if structured {
            Encoding::STRUCTURED
        } else if m
            .properties
            .iter()
            .any(|(k, _)| attribute_name(k) == Some("specversion"))
        {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

/// The SDK's `BinarySerializer` (and `StructuredSerializer`) producing a
/// [`WireMessage`]: attributes become `cloudEvents_` properties,
/// `datacontenttype` the content type, data the body. Times are written as
/// RFC 3339 strings (see the module docs for why not AMQP `timestamp`).
#[derive(Debug, Clone, Default)]
pub struct BinaryMessageSerializer {
    message: WireMessage,
}

impl BinaryMessageSerializer {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, name: &str, value: WireValue) {
        self.message
            .properties
            .push((format!("{WRITE_PREFIX}{name}"), value));
    }
}

impl BinarySerializer<WireMessage> for BinaryMessageSerializer {
    fn set_spec_version(mut self, spec_version: SpecVersion) -> cloudevents::message::Result<Self> {
        self.push(
            "specversion",
            WireValue::String(spec_version.as_str().to_owned()),
        );
        Ok(self)
    }

    fn set_attribute(
        mut self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        if name == "datacontenttype" {
            self.message.content_type = Some(value.to_string());
        } else {
            self.push(name, to_wire_value(value));
        }
        Ok(self)
    }

    fn set_extension(
        mut self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        self.push(name, to_wire_value(value));
        Ok(self)
    }

    fn end_with_data(mut self, bytes: Vec<u8>) -> cloudevents::message::Result<WireMessage> {
        self.message.body = bytes;
        Ok(self.message)
    }

    fn end(self) -> cloudevents::message::Result<WireMessage> {
        Ok(self.message)
    }
}

impl StructuredSerializer<WireMessage> for BinaryMessageSerializer {
    fn set_structured_event(self, bytes: Vec<u8>) -> cloudevents::message::Result<WireMessage> {
        Ok(WireMessage {
            content_type: Some(STRUCTURED_CONTENT_TYPE.to_owned()),
            properties: Vec::new(),
            body: bytes,
        })
    }
}

/// `event` as a CloudEvent in AMQP binary mode.
pub fn encode_binary(event: &MirrorEvent) -> WireMessage {
    // Both halves are infallible: `Event::deserialize_binary` only fails when its
    // visitor does (ours never does) or when JSON data fails to serialize (a
    // `serde_json::Value` always serializes).
    BinaryDeserializer::deserialize_binary(event.to_cloudevent(), BinaryMessageSerializer::new())
        .expect("encoding a contract event to a WireMessage cannot fail")
}

/// `event` as a CloudEvent in structured mode (a `WireMessage` the same as
/// [`WireMessage::structured`]), for symmetry with [`encode_binary`].
pub fn encode_structured(event: &MirrorEvent) -> WireMessage {
    WireMessage::structured(event)
}

/// Decode a binary-mode message, validating it against the contract.
///
/// Checks the binding's own rules first (so the error names the property that
/// was wrong: a missing `specversion`, a `subject` that is an AMQP long, a
/// `time` that is not RFC 3339, …), then builds the CloudEvent with the SDK and
/// hands it to [`crate::decode_cloudevent`] for the contract's rules.
pub fn decode_binary(message: &WireMessage) -> Result<MirrorEvent, DecodeError> {
    let size = message.size();
    if size > MAX_EVENT_BYTES {
        return Err(DecodeError::TooLarge {
            size,
            limit: MAX_EVENT_BYTES,
        });
    }
    let wrapped = BinaryMessage(message);
    let attributes = wrapped.attributes().map_err(DecodeError::Malformed)?;
    let get = |name: &str| attributes.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);

    match get("specversion") {
        None => return Err(DecodeError::Missing("specversion")),
        Some(WireValue::String(s)) if s == "1.0" => {}
        Some(WireValue::String(s)) => {
            return Err(DecodeError::invalid(
                "specversion",
                format!("`{}` is not `1.0`", truncate(s, 32)),
            ))
        }
        Some(v) => {
            return Err(DecodeError::invalid(
                "specversion",
                format!("is {}, not a string", amqp_type(v)),
            ))
        }
    }
    for attr in REQUIRED {
        match (attr, get(attr)) {
            (_, None) => return Err(DecodeError::Missing(attr)),
            (_, Some(WireValue::String(_))) => {}
            ("id", Some(WireValue::Uuid(_))) => {}
            ("time", Some(WireValue::Timestamp(_))) => {}
            (_, Some(v)) => {
                let expected = match attr {
                    "id" => "a string or uuid",
                    "time" => "an RFC 3339 string or timestamp",
                    _ => "a string",
                };
                return Err(DecodeError::invalid(
                    attr,
                    format!("is {}, not {expected}", amqp_type(v)),
                ));
            }
        }
    }
    // The type is checked before the envelope so that an unknown type is reported as such.
    if let Some(WireValue::String(ty)) = get("type") {
        ty.parse::<EventType>()?;
    }
    if let Some(WireValue::String(time)) = get("time") {
        crate::parse_time("time", time)?;
    }
    if get("datacontenttype").is_some() {
        return Err(DecodeError::invalid(
            "datacontenttype",
            "must travel as the AMQP content-type, not as a property",
        ));
    }
    match get("partitionkey") {
        None | Some(WireValue::String(_)) => {}
        Some(v) => {
            return Err(DecodeError::invalid(
                "partitionkey",
                format!("is {}, not a string", amqp_type(v)),
            ))
        }
    }
    if let Some((name, _)) = attributes.iter().find(|(n, v)| {
        SPEC_ATTRIBUTES.contains(n)
            && !matches!(
                v,
                WireValue::String(_) | WireValue::Uuid(_) | WireValue::Timestamp(_)
            )
    }) {
        // dataschema (the only one left unchecked) must be a URI string.
        return Err(DecodeError::invalid(*name, "is not a string"));
    }

    let event: Event = BinaryDeserializer::into_event(wrapped).map_err(|e| {
        DecodeError::Malformed(format!(
            "not a CloudEvent in AMQP binary mode: {}",
            truncate(&e.to_string(), 200)
        ))
    })?;
    crate::decode_cloudevent(&event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_wire, Payload, Subject};
    use chrono::TimeZone;
    use serde_json::json;

    const TIME: &str = "2025-10-08T12:34:56.123456Z";

    fn data() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "firestoreId": "m1",
            "conversationId": "c1",
            "op": "create",
            "payload": { "authorUserId": "u1", "bodyText": "hi", "createdAt": TIME }
        }))
        .unwrap()
    }

    fn event_at(time: DateTime<Utc>) -> MirrorEvent {
        let subject =
            Subject::parse("conversations/c1/messages/m1", crate::EventFamily::Message).unwrap();
        let payload = Payload::from_json(
            EventType::DmMessageCreate,
            &json!({ "authorUserId": "u1", "bodyText": "hi", "createdAt": TIME }),
        )
        .unwrap();
        let source = MirrorEvent::firestore_source("demo", &subject);
        MirrorEvent::new(EventType::DmMessageCreate, subject, time, source, payload).unwrap()
    }

    fn contract_event() -> MirrorEvent {
        event_at(crate::parse_time("time", TIME).unwrap())
    }

    fn s(v: &str) -> WireValue {
        WireValue::String(v.to_owned())
    }

    /// The AMQP binding spec's binary-mode example, adapted to the contract:
    /// string values, `content-type: application/json; charset=utf-8`.
    fn spec_binary_example(prefix: &str) -> WireMessage {
        let ev = contract_event();
        WireMessage {
            content_type: Some("application/json; charset=utf-8".into()),
            properties: vec![
                (format!("{prefix}specversion"), s("1.0")),
                (format!("{prefix}type"), s("dm.message.create")),
                (format!("{prefix}time"), s(TIME)),
                (format!("{prefix}id"), s(&ev.id().to_string())),
                (format!("{prefix}source"), s(ev.source())),
                (
                    format!("{prefix}subject"),
                    s("conversations/c1/messages/m1"),
                ),
                (format!("{prefix}partitionkey"), s("c1")),
                // an unrelated application property is left alone
                ("Diagnostic-Id".into(), s("00-abc-def-01")),
            ],
            body: data(),
        }
    }

    fn with(mut m: WireMessage, name: &str, value: Option<WireValue>) -> WireMessage {
        let pos = m
            .properties
            .iter()
            .position(|(k, _)| attribute_name(k) == Some(name));
        match (pos, value) {
            (Some(i), Some(v)) => m.properties[i].1 = v,
            (Some(i), None) => {
                m.properties.remove(i);
            }
            (None, Some(v)) => m.properties.push((format!("cloudEvents_{name}"), v)),
            (None, None) => {}
        }
        m
    }

    #[test]
    fn accepts_valid_messages() {
        let ev = contract_event();
        let ms = Utc.with_ymd_and_hms(2025, 10, 8, 12, 34, 56).unwrap()
            + chrono::Duration::milliseconds(123);
        let ms_event = event_at(ms);
        let native = WireMessage {
            content_type: Some("application/json".into()),
            properties: vec![
                ("cloudEvents_specversion".into(), s("1.0")),
                ("cloudEvents_type".into(), s("dm.message.create")),
                ("cloudEvents_time".into(), WireValue::Timestamp(ms)),
                ("cloudEvents_id".into(), WireValue::Uuid(ms_event.id())),
                ("cloudEvents_source".into(), s(ms_event.source())),
                (
                    "cloudEvents_subject".into(),
                    s("conversations/c1/messages/m1"),
                ),
                ("cloudEvents_partitionkey".into(), s("c1")),
                (
                    "cloudEvents_traceparent".into(),
                    s("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
                ("cloudEvents_retries".into(), WireValue::Int(2)),
                ("cloudEvents_replayed".into(), WireValue::Bool(true)),
            ],
            body: data(),
        };
        let mut mixed = spec_binary_example("cloudEvents:");
        mixed.properties[0].0 = "cloudEvents_specversion".into();
        mixed.properties[2].0 = "cloudEvents_time".into();
        let structured = WireMessage {
            content_type: Some("application/cloudevents+json; charset=utf-8".into()),
            properties: vec![],
            body: ev.to_structured_json(),
        };
        let mut uppercase_id = spec_binary_example("cloudEvents_");
        uppercase_id = with(
            uppercase_id,
            "id",
            Some(s(&ev.id().to_string().to_uppercase())),
        );
        let no_content_type = WireMessage {
            content_type: None,
            ..spec_binary_example("cloudEvents_")
        };
        let no_partition_key = with(spec_binary_example("cloudEvents_"), "partitionkey", None);
        let offset_time = with(
            spec_binary_example("cloudEvents_"),
            "time",
            Some(s("2025-10-08T14:34:56.123456+02:00")),
        );

        let cases: Vec<(&str, WireMessage, &MirrorEvent)> = vec![
            (
                "spec example, `cloudEvents_` prefix",
                spec_binary_example("cloudEvents_"),
                &ev,
            ),
            (
                "spec example, `cloudEvents:` prefix",
                spec_binary_example("cloudEvents:"),
                &ev,
            ),
            ("both prefixes in one message", mixed, &ev),
            (
                "native AMQP values (uuid id, timestamp time, long, boolean)",
                native,
                &ms_event,
            ),
            ("structured mode with charset", structured, &ev),
            ("id in upper case", uppercase_id, &ev),
            ("no content type", no_content_type, &ev),
            ("no partitionkey", no_partition_key, &ev),
            ("time with an offset", offset_time, &ev),
            ("encode_binary output", encode_binary(&ev), &ev),
            ("encode_structured output", encode_structured(&ev), &ev),
        ];
        for (name, message, expected) in cases {
            match decode_wire(&message) {
                Ok(got) => assert_eq!(&got, expected, "case `{name}`"),
                Err(e) => panic!("case `{name}` was rejected: {e}"),
            }
        }
    }

    #[test]
    fn rejects_invalid_messages_naming_the_problem() {
        let base = || spec_binary_example("cloudEvents_");
        let ev = contract_event();
        let mut duplicate = base();
        duplicate
            .properties
            .push(("cloudEvents:type".into(), s("dm.message.update")));
        let micro_as_timestamp = with(base(), "time", Some(WireValue::Timestamp(ev.time())));
        let cases: Vec<(&str, WireMessage, &str, &str)> = vec![
            (
                "missing specversion",
                with(base(), "specversion", None),
                "missing_field",
                "`specversion`",
            ),
            (
                "specversion 0.3",
                with(base(), "specversion", Some(s("0.3"))),
                "invalid_field",
                "`specversion`",
            ),
            (
                "specversion as a long",
                with(base(), "specversion", Some(WireValue::Int(1))),
                "invalid_field",
                "AMQP long",
            ),
            (
                "missing id",
                with(base(), "id", None),
                "missing_field",
                "`id`",
            ),
            (
                "missing source",
                with(base(), "source", None),
                "missing_field",
                "`source`",
            ),
            (
                "bad time",
                with(base(), "time", Some(s("yesterday"))),
                "invalid_field",
                "`time`",
            ),
            (
                "time as a long",
                with(base(), "time", Some(WireValue::Int(1_759_926_896))),
                "invalid_field",
                "`time`",
            ),
            (
                "unknown type",
                with(base(), "type", Some(s("dm.message.explode"))),
                "unknown_type",
                "dm.message.explode",
            ),
            (
                "subject as a long",
                with(base(), "subject", Some(WireValue::Int(5))),
                "invalid_field",
                "`subject`",
            ),
            (
                "type as binary",
                with(base(), "type", Some(WireValue::Binary(b"dm".to_vec()))),
                "invalid_field",
                "`type`",
            ),
            (
                "partitionkey as a boolean",
                with(base(), "partitionkey", Some(WireValue::Bool(true))),
                "invalid_field",
                "`partitionkey`",
            ),
            (
                "partitionkey of another conversation",
                with(base(), "partitionkey", Some(s("c2"))),
                "id_mismatch",
                "partitionkey",
            ),
            (
                "datacontenttype as a property",
                with(base(), "datacontenttype", Some(s("application/json"))),
                "invalid_field",
                "`datacontenttype`",
            ),
            (
                "dataschema as a long",
                with(base(), "dataschema", Some(WireValue::Int(3))),
                "invalid_field",
                "`dataschema`",
            ),
            (
                "attribute under both prefixes",
                duplicate,
                "malformed",
                "`type` is given twice",
            ),
            (
                "non-JSON body",
                WireMessage {
                    body: b"<xml/>".to_vec(),
                    ..base()
                },
                "invalid_field",
                "`data`",
            ),
            (
                "empty body",
                WireMessage {
                    body: vec![],
                    ..base()
                },
                "missing_field",
                "`data`",
            ),
            (
                "text/plain content type",
                WireMessage {
                    content_type: Some("text/plain".into()),
                    ..base()
                },
                "invalid_field",
                "`datacontenttype`",
            ),
            (
                "oversized",
                WireMessage {
                    body: vec![b' '; MAX_EVENT_BYTES + 1],
                    ..base()
                },
                "too_large",
                "limit",
            ),
            (
                "wrong id",
                with(base(), "id", Some(WireValue::Uuid(uuid::Uuid::nil()))),
                "wrong_id",
                "deterministic",
            ),
            (
                "microsecond time sent as a millisecond timestamp",
                micro_as_timestamp,
                "wrong_id",
                "deterministic",
            ),
            (
                "subject of another family",
                with(base(), "subject", Some(s("follows/u1/targets/u2"))),
                "invalid_field",
                "`subject`",
            ),
            (
                "structured mode, body not JSON",
                WireMessage {
                    content_type: Some(STRUCTURED_CONTENT_TYPE.into()),
                    properties: vec![],
                    body: b"{".to_vec(),
                },
                "malformed",
                "not JSON",
            ),
            (
                "structured mode, missing specversion",
                WireMessage {
                    content_type: Some(STRUCTURED_CONTENT_TYPE.into()),
                    properties: vec![],
                    body: serde_json::to_vec(&json!({"id": "x", "type": "dm.message.create"}))
                        .unwrap(),
                },
                "missing_field",
                "`specversion`",
            ),
        ];
        for (name, message, code, needle) in cases {
            let direct = decode_binary(&message);
            let via_wire = decode_wire(&message);
            for (how, result) in [("decode_wire", via_wire), ("decode_binary", direct)] {
                if how == "decode_binary"
                    && message.content_type.as_deref() == Some(STRUCTURED_CONTENT_TYPE)
                {
                    continue;
                }
                match result {
                    Ok(_) => panic!("case `{name}` ({how}) was accepted"),
                    Err(e) => {
                        assert_eq!(e.code(), code, "case `{name}` ({how}): {e}");
                        assert!(
                            e.to_string().contains(needle),
                            "case `{name}` ({how}): `{e}` does not mention {needle}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn encodes_binary_mode_as_the_binding_says() {
        let ev = contract_event();
        let m = encode_binary(&ev);
        assert!(m.is_binary_mode());
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert!(
            m.properties
                .iter()
                .all(|(k, _)| k.starts_with("cloudEvents_")),
            "{:?}",
            m.properties
        );
        assert_eq!(m.property("cloudEvents_specversion"), Some(&s("1.0")));
        assert_eq!(m.property("cloudEvents_id"), Some(&s(&ev.id().to_string())));
        assert_eq!(
            m.property("cloudEvents_type"),
            Some(&s("dm.message.create"))
        );
        // time keeps its microseconds: a string, not a millisecond AMQP timestamp
        assert_eq!(m.property("cloudEvents_time"), Some(&s(TIME)));
        assert_eq!(m.property("cloudEvents_partitionkey"), Some(&s("c1")));
        assert_eq!(m.property("cloudEvents_datacontenttype"), None);
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body, ev.data_json());
        assert_eq!(decode_binary(&m).unwrap(), ev);
    }

    #[test]
    fn sdk_round_trip_for_any_cloudevent() {
        use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
        let original = EventBuilderV10::new()
            .id("0001")
            .ty("com.example.someevent")
            .source("/mycontext/subcontext")
            .time(
                Utc.with_ymd_and_hms(2018, 4, 5, 3, 56, 24).unwrap()
                    + chrono::Duration::nanoseconds(5),
            )
            .extension("someint", 10)
            .extension("somebool", true)
            .data("text/xml", b"<much wow=\"xml\"/>".to_vec())
            .build()
            .unwrap();
        let wire = BinaryDeserializer::deserialize_binary(
            original.clone(),
            BinaryMessageSerializer::new(),
        )
        .unwrap();
        assert_eq!(wire.content_type.as_deref(), Some("text/xml"));
        assert_eq!(
            wire.property("cloudEvents_someint"),
            Some(&WireValue::Int(10))
        );
        assert_eq!(
            wire.property("cloudEvents_time"),
            Some(&s("2018-04-05T03:56:24.000000005Z"))
        );
        let back = BinaryDeserializer::into_event(BinaryMessage(&wire)).unwrap();
        assert_eq!(back.time(), original.time());
        assert_eq!(back.id(), "0001");
        assert_eq!(back.extension("someint"), original.extension("someint"));
        assert_eq!(back.extension("somebool"), original.extension("somebool"));
        // owned wrapper and MessageDeserializer dispatch
        assert_eq!(
            MessageDeserializer::encoding(&BinaryMessage(wire.clone())),
            Encoding::BINARY
        );
        assert!(MessageDeserializer::into_event(BinaryMessage(wire)).is_ok());
        // structured through the same wrapper
        let structured = encode_structured(&contract_event());
        assert_eq!(
            MessageDeserializer::encoding(&BinaryMessage(&structured)),
            Encoding::STRUCTURED
        );
        let ce = MessageDeserializer::into_event(BinaryMessage(&structured)).unwrap();
        assert_eq!(crate::decode_cloudevent(&ce).unwrap(), contract_event());
        assert_eq!(
            MessageDeserializer::encoding(&BinaryMessage(WireMessage::default())),
            Encoding::UNKNOWN
        );
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = WireValue> {
            prop_oneof![
                ".{0,40}".prop_map(WireValue::String),
                prop_oneof![
                    Just("1.0".to_owned()),
                    Just(TIME.to_owned()),
                    Just("dm.message.create".to_owned())
                ]
                .prop_map(WireValue::String),
                any::<bool>().prop_map(WireValue::Bool),
                any::<i64>().prop_map(WireValue::Int),
                (-10_000_000_000_000i64..10_000_000_000_000i64).prop_map(
                    |ms| WireValue::Timestamp(DateTime::from_timestamp_millis(ms).unwrap())
                ),
                any::<u128>().prop_map(|u| WireValue::Uuid(uuid::Uuid::from_u128(u))),
                proptest::collection::vec(any::<u8>(), 0..16).prop_map(WireValue::Binary),
            ]
        }

        fn name() -> impl Strategy<Value = String> {
            let attrs = prop_oneof![
                Just("specversion"),
                Just("id"),
                Just("source"),
                Just("type"),
                Just("subject"),
                Just("time"),
                Just("partitionkey"),
                Just("datacontenttype"),
                Just("dataschema"),
                Just("x")
            ];
            (
                prop_oneof![Just("cloudEvents_"), Just("cloudEvents:"), Just("")],
                attrs,
            )
                .prop_map(|(p, a)| format!("{p}{a}"))
        }

        proptest! {
            #[test]
            fn decode_binary_never_panics(
                props in proptest::collection::vec((name(), value()), 0..12),
                content_type in proptest::option::of(".{0,30}"),
                body in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let m = WireMessage { content_type, properties: props, body };
                let _ = decode_binary(&m);
                let _ = decode_wire(&m);
                let _ = BinaryDeserializer::into_event(BinaryMessage(&m));
            }
        }
    }
}
