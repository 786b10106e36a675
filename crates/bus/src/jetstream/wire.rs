//! Mapping between [`WireMessage`] and NATS headers.
//!
//! Outbound: `Nats-Msg-Id` is the message id, `Content-Type` the content type,
//! and every property becomes a header; non-string values are rendered
//! canonically (booleans `true`/`false`, integers in decimal, timestamps in
//! RFC 3339 UTC with milliseconds, UUIDs hyphenated lowercase, binary as
//! padded base64). Inbound: every header except `Nats-*` and `Content-Type`
//! comes back as a [`WireValue::String`] property, sorted by name (NATS does
//! not keep header order).

use base64::Engine as _;
use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use mirror_schema::wire::{WireMessage, WireValue};

use crate::{BusError, OutboundMessage};

pub(super) const MSG_ID: &str = "Nats-Msg-Id";
pub(super) const CONTENT_TYPE: &str = "Content-Type";

/// Headers the dead-letter publish adds (stripped again when listing).
pub(super) const DL_REASON: &str = "Rm-Dead-Letter-Reason";
pub(super) const DL_DESCRIPTION: &str = "Rm-Dead-Letter-Description";
pub(super) const DL_ATTEMPTS: &str = "Rm-Attempts";
pub(super) const DL_ORIGINAL_ID: &str = "Rm-Original-Id";
pub(super) const DL_SUBSCRIPTION: &str = "Rm-Subscription";
pub(super) const DL_AT: &str = "Rm-Dead-Lettered-At";
pub(super) const DL_STREAM_SEQ: &str = "Rm-Original-Stream-Seq";
pub(super) const DEAD_LETTER_HEADERS: [&str; 7] = [
    DL_REASON,
    DL_DESCRIPTION,
    DL_ATTEMPTS,
    DL_ORIGINAL_ID,
    DL_SUBSCRIPTION,
    DL_AT,
    DL_STREAM_SEQ,
];

/// Longest dead-letter description kept in a header, in bytes.
pub(super) const MAX_DESCRIPTION: usize = 2048;
/// Longest dead-letter reason kept in a header, in bytes.
pub(super) const MAX_REASON: usize = 128;

fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("nats-") || lower == "content-type"
}

pub(super) fn header_name(op: &'static str, name: &str) -> Result<HeaderName, BusError> {
    HeaderName::from_str(name)
        .map_err(|_| BusError::op(op, format!("`{name}` is not a valid NATS header name")))
}

pub(super) fn header_value(
    op: &'static str,
    name: &str,
    value: &str,
) -> Result<HeaderValue, BusError> {
    HeaderValue::from_str(value)
        .map_err(|_| BusError::op(op, format!("header `{name}`: value contains a line break")))
}

/// Set (replace) one header, validating name and value.
pub(super) fn set(
    headers: &mut HeaderMap,
    op: &'static str,
    name: &str,
    value: &str,
) -> Result<(), BusError> {
    headers.insert(header_name(op, name)?, header_value(op, name, value)?);
    Ok(())
}

/// The headers of a publish of `message`.
pub(super) fn outbound_headers(message: &OutboundMessage) -> Result<HeaderMap, BusError> {
    const OP: &str = "publish";
    let mut headers = HeaderMap::new();
    if !message.message_id.is_empty() {
        set(&mut headers, OP, MSG_ID, &message.message_id)?;
    }
    if let Some(ct) = &message.message.content_type {
        set(&mut headers, OP, CONTENT_TYPE, ct)?;
    }
    for (name, value) in &message.message.properties {
        if is_reserved(name) {
            return Err(BusError::op(
                OP,
                format!(
                    "message `{}`: property `{name}` uses a reserved header name",
                    message.message_id
                ),
            ));
        }
        let rendered = render(value);
        headers.append(header_name(OP, name)?, header_value(OP, name, &rendered)?);
    }
    Ok(headers)
}

/// Approximate size of headers on the wire.
pub(super) fn headers_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| AsRef::<str>::as_ref(k).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    if lines == 0 {
        0
    } else {
        lines + 12
    }
}

/// A message as it came off a stream, plus its `Nats-Msg-Id`.
pub(super) fn inbound(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    strip_dead_letter: bool,
) -> (WireMessage, Option<String>) {
    let mut message = WireMessage {
        content_type: None,
        properties: Vec::new(),
        body: payload.to_vec(),
    };
    let mut message_id = None;
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case(MSG_ID) {
                message_id = values.last().map(|v| v.as_str().to_owned());
            } else if name.eq_ignore_ascii_case(CONTENT_TYPE) {
                message.content_type = values.last().map(|v| v.as_str().to_owned());
            } else if name.to_ascii_lowercase().starts_with("nats-")
                || (strip_dead_letter
                    && DEAD_LETTER_HEADERS
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(name)))
            {
                continue;
            } else {
                for v in values {
                    message
                        .properties
                        .push((name.to_owned(), WireValue::String(v.as_str().to_owned())));
                }
            }
        }
    }
    // NATS keeps headers in a hash map; sort so the order is at least stable.
    message.properties.sort_by(|a, b| a.0.cmp(&b.0));
    (message, message_id)
}

/// The last value of header `name`, if any.
pub(super) fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, vs)| vs.last())
        .map(|v| v.as_str())
}

/// A property value as header text.
pub(super) fn render(value: &WireValue) -> String {
    match value {
        WireValue::String(s) => s.clone(),
        WireValue::Bool(b) => b.to_string(),
        WireValue::Int(i) => i.to_string(),
        WireValue::Timestamp(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        WireValue::Uuid(u) => u.hyphenated().to_string(),
        WireValue::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
    }
}

/// `text` on one line (control characters become spaces), at most `max` bytes,
/// cut on a character boundary and marked with `…` when cut.
pub(super) fn single_line(text: &str, max: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned();
    if line.len() <= max {
        return line;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn outbound(properties: Vec<(String, WireValue)>) -> OutboundMessage {
        OutboundMessage {
            message_id: "id-1".into(),
            partition_key: None,
            message: WireMessage {
                content_type: Some("application/cloudevents+json".into()),
                properties,
                body: b"{}".to_vec(),
            },
        }
    }

    #[test]
    fn renders_non_string_values_canonically() {
        let t = chrono::Utc
            .with_ymd_and_hms(2025, 10, 8, 12, 34, 56)
            .unwrap()
            + chrono::Duration::microseconds(123_456);
        let u = uuid::Uuid::parse_str("5F0C3B9E-8E0F-5C8A-9D57-1D7A0C1F2B3C").unwrap();
        assert_eq!(render(&WireValue::Bool(true)), "true");
        assert_eq!(render(&WireValue::Int(-42)), "-42");
        assert_eq!(render(&WireValue::Timestamp(t)), "2025-10-08T12:34:56.123Z");
        assert_eq!(
            render(&WireValue::Uuid(u)),
            "5f0c3b9e-8e0f-5c8a-9d57-1d7a0c1f2b3c"
        );
        assert_eq!(render(&WireValue::Binary(b"".to_vec())), "");
        assert_eq!(render(&WireValue::Binary(b"f".to_vec())), "Zg==");
        assert_eq!(render(&WireValue::Binary(b"fo".to_vec())), "Zm8=");
        assert_eq!(render(&WireValue::Binary(b"foobar".to_vec())), "Zm9vYmFy");
    }

    #[test]
    fn round_trips_headers() {
        let m = outbound(vec![
            (
                "ce_type".into(),
                WireValue::String("dm.message.create".into()),
            ),
            ("Attempt".into(), WireValue::Int(3)),
        ]);
        let headers = outbound_headers(&m).unwrap();
        let (wire, id) = inbound(Some(&headers), &m.message.body, false);
        assert_eq!(id.as_deref(), Some("id-1"));
        assert_eq!(wire.content_type, m.message.content_type);
        assert_eq!(
            wire.properties,
            vec![
                ("Attempt".to_owned(), WireValue::String("3".into())),
                (
                    "ce_type".to_owned(),
                    WireValue::String("dm.message.create".into())
                ),
            ]
        );
    }

    #[test]
    fn rejects_reserved_and_invalid_properties_without_panicking() {
        for (name, value) in [
            ("Nats-Expected-Stream", "x"),
            ("content-type", "x"),
            ("bad:name", "x"),
            ("bad name", "x"),
            ("ok", "two\nlines"),
        ] {
            let m = outbound(vec![(name.into(), WireValue::String(value.into()))]);
            let err = outbound_headers(&m).unwrap_err();
            assert!(err.to_string().starts_with("publish:"), "{err}");
        }
    }

    #[test]
    fn strips_dead_letter_headers_when_asked() {
        let mut headers = HeaderMap::new();
        set(&mut headers, "t", DL_REASON, "invalid_field").unwrap();
        set(&mut headers, "t", "keep", "me").unwrap();
        let (wire, _) = inbound(Some(&headers), b"", true);
        assert_eq!(
            wire.properties,
            vec![("keep".to_owned(), WireValue::String("me".into()))]
        );
    }

    #[test]
    fn single_line_flattens_and_truncates_on_char_boundary() {
        assert_eq!(single_line(" a\r\nb\tc ", 100), "a  b c");
        let s = "é".repeat(100);
        let cut = single_line(&s, 11);
        assert!(cut.len() <= 11, "{cut}");
        assert!(cut.ends_with('…'));
        assert_eq!(single_line("short", 5), "short");
    }
}
