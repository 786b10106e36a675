//! The direct structured-mode decoder: one pass from bytes to a
//! [`MirrorEvent`] for a well-formed event, with no JSON tree in between.
//!
//! The reference decoder ([`crate::event::decode_structured_reference`])
//! builds a `serde_json::Value`, converts it into the CloudEvents SDK's
//! `Event` (a second tree), then reads `data` out of it: at 20,000 events/s
//! that was a third of the writer's CPU, most of it allocation. This path
//! reads the envelope into borrowed fields and the payload straight into its
//! typed struct, and applies the same contract rules ([`Envelope::build`],
//! [`DataIds::check`]).
//!
//! It takes only a strict subset of what the reference accepts: an object of
//! the contract's attributes and nothing else, each a string where the
//! contract says so (`data` an object), no key twice. For anything else, valid or not, it
//! returns `None` and the reference decides, so only the reference produces
//! error messages. A differential property test (below) and the fuzz target
//! `decode_structured` check that whenever this path returns an event, the
//! reference returns the same one.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{DataIds, Envelope, IdField};
use crate::{DecodeError, EventFamily, EventType, MirrorEvent, Op, Payload};

/// The structured-mode attributes this path takes; any other key (an
/// unknown extension, `dataschema`, `data_base64`) sends the event to the
/// reference decoder.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Structured<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    subject: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(default)]
    partitionkey: Option<String>,
    #[serde(default)]
    datacontenttype: Option<String>,
    #[serde(default)]
    publishtime: Option<String>,
    /// An object only ([`object`]): serde's derived structs also take arrays,
    /// which the reference rejects.
    #[serde(borrow, deserialize_with = "object")]
    data: Data<'a>,
}

/// `T` read from a JSON object and nothing else (a derived struct's own
/// `Deserialize` also takes a JSON array of its fields).
fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Object<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_map(Object(std::marker::PhantomData))
}

/// `data`: the fields the rules read (others are ignored, as the reference
/// ignores them) and the payload, still as text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    firestore_id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    target_user_id: Option<String>,
    #[serde(default)]
    follower_user_id: Option<String>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

fn id_field(value: &Option<String>) -> IdField<'_> {
    match value {
        None => IdField::Unset,
        Some(s) => IdField::Text(s),
    }
}

/// The event, if `bytes` is a well-formed event this path takes; `None`
/// otherwise (the caller then runs the reference decoder).
pub(crate) fn decode(bytes: &[u8]) -> Option<MirrorEvent> {
    // An object, as the reference requires (a derived struct takes an array
    // too), with nothing the skipped values would leave unchecked.
    if bytes.trim_ascii_start().first() != Some(&b'{') || !plain(bytes) {
        return None;
    }
    let Structured {
        specversion,
        id,
        source,
        ty,
        subject,
        time,
        partitionkey,
        datacontenttype,
        publishtime,
        data,
    } = serde_json::from_slice(bytes).ok()?;
    if specversion != "1.0" {
        return None;
    }
    let event_type: EventType = ty.parse().ok()?;
    // The SDK reads `data` as JSON only under a content type that starts
    // with `application/json` as written (no space, no capitals): take only
    // those, where both decoders agree.
    if let Some(ct) = &datacontenttype {
        if !ct.starts_with("application/json") {
            return None;
        }
        crate::event::check_content_type(ct).ok()?;
    }
    let time = crate::parse_time("time", &time).ok()?;
    let envelope = Envelope {
        event_type,
        subject: &subject,
        time: Ok(time),
        source: source.into_owned(),
        id: &id,
        partition_key: partitionkey.as_deref().map(Ok),
        content_type: datacontenttype.as_deref(),
        published_at: publishtime.as_deref(),
    };
    envelope
        .build(|subject| {
            DataIds {
                op: data.op.as_deref().map(Ok),
                firestore_id: id_field(&data.firestore_id),
                conversation_id: id_field(&data.conversation_id),
                user_id: id_field(&data.user_id),
                target_user_id: id_field(&data.target_user_id),
                follower_user_id: id_field(&data.follower_user_id),
            }
            .check(event_type, subject)?;
            data.payload
                .and_then(|p| payload_of(event_type, p.get()))
                .ok_or(DecodeError::Missing("data.payload"))
        })
        .ok()
}

/// Deepest nesting this path takes. The reference's JSON tree fails past
/// serde_json's recursion limit (128), while the values this path skips or
/// parses from an inner slice do not count the levels above them; far below
/// the limit both agree, and no event the publisher writes comes near it.
const MAX_DEPTH: usize = 32;

/// Longest run of digits outside strings this path takes (a number that
/// long may overflow `f64`, which the reference rejects).
const MAX_DIGITS: usize = 18;

/// Whether `bytes` holds nothing that serde_json checks when it builds a
/// value but not when it skips one (values this path ignores: fields of
/// `data` and of the payload the contract does not name): invalid UTF-8, a
/// `\u` escape in the surrogate range (a lone one is an error), a number
/// with an exponent or too many digits (it may overflow), nesting deeper than
/// [`MAX_DEPTH`]. Such events are rare and valid or not; the reference
/// decides them.
fn plain(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut depth = 0usize;
    let mut digits = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
                if b == b'u' && matches!(bytes.get(i + 1), Some(b'd' | b'D')) {
                    return false;
                }
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'e' | b'E' if prev.is_ascii_digit() || prev == b'.' => return false,
            _ => {}
        }
        if b.is_ascii_digit() {
            digits += 1;
            if digits > MAX_DIGITS {
                return false;
            }
        } else {
            digits = 0;
        }
        prev = b;
    }
    true
}

/// The typed payload of `text` (a JSON value), if it is one of `event_type`'s
/// that passes [`Payload::validate`].
fn payload_of(event_type: EventType, text: &str) -> Option<Payload> {
    if !text.starts_with('{') {
        return None;
    }
    let payload = match (event_type.family(), event_type.op()) {
        (EventFamily::Conversation, _) => Payload::Conversation(serde_json::from_str(text).ok()?),
        (EventFamily::Message, Op::Delete) => {
            Payload::MessageDelete(serde_json::from_str(text).ok()?)
        }
        (EventFamily::Message, _) => Payload::Message(serde_json::from_str(text).ok()?),
        (EventFamily::Block, Op::Delete) => Payload::BlockDelete,
        (EventFamily::Block, _) => Payload::Block(serde_json::from_str(text).ok()?),
        (EventFamily::FollowEdge, Op::Delete) => Payload::FollowEdgeDelete,
        (EventFamily::FollowEdge, _) => Payload::FollowEdge(serde_json::from_str(text).ok()?),
    };
    payload.validate().ok()?;
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the publisher writes ([`MirrorEvent::to_structured_json`]) takes
    /// this path, for every event type: the path the writer's hot loop runs.
    #[test]
    fn what_the_publisher_writes_takes_the_direct_path() {
        let text = r#"{"specversion":"1.0","id":"ID","source":"firestore://projects/p/databases/(default)/documents/conversations/c1/messages/m1","type":"dm.message.create","subject":"conversations/c1/messages/m1","time":"2025-10-08T12:34:56.123456Z","partitionkey":"c1","datacontenttype":"application/json","data":{"firestoreId":"m1","conversationId":"c1","op":"create","payload":{"authorUserId":"u1","bodyText":"hi \"there\"","createdAt":"2025-10-08T12:34:56Z"}}}"#;
        let id = uuid::Uuid::new_v5(
            &crate::ID_NAMESPACE,
            b"dm.message.create\nconversations/c1/messages/m1\n2025-10-08T12:34:56.123456Z",
        );
        let event =
            crate::decode_structured_reference(text.replace("ID", &id.to_string()).as_bytes())
                .expect("valid");
        let stamped = event.with_published_at(chrono::Utc::now());
        let bytes = stamped.to_structured_json();
        let direct = decode(&bytes).expect("the direct path takes it");
        assert_eq!(direct, stamped);
        assert_eq!(direct.published_at(), stamped.published_at());

        for ty in EventType::ALL {
            let subject = match ty.family() {
                EventFamily::Conversation => "conversations/c1",
                EventFamily::Message => "conversations/c1/messages/m1",
                EventFamily::Block => "blocks/u1/targets/u2",
                EventFamily::FollowEdge => "follows/u1/targets/u2",
            };
            let subject = crate::Subject::parse(subject, ty.family()).unwrap();
            let t = "2025-10-08T12:00:00Z";
            let payload = match (ty.family(), ty.op()) {
                (EventFamily::Conversation, _) => {
                    serde_json::json!({"type": "direct", "participants": [{"userId": "u1", "role": "owner", "joinedAt": t, "muteState": "none"}], "createdAt": t, "updatedAt": t})
                }
                (EventFamily::Message, Op::Delete) => serde_json::json!({"performedBy": "u1"}),
                (EventFamily::Message, _) => {
                    serde_json::json!({"authorUserId": "u1", "bodyText": "b", "createdAt": t})
                }
                (EventFamily::Block, Op::Delete) | (EventFamily::FollowEdge, Op::Delete) => {
                    serde_json::json!({})
                }
                (EventFamily::Block, _) => serde_json::json!({"createdAt": t, "source": "client"}),
                (EventFamily::FollowEdge, _) => {
                    serde_json::json!({"state": "pending", "source": "web", "createdAt": t})
                }
            };
            let payload = Payload::from_json(*ty, &payload).unwrap();
            let event = MirrorEvent::new(
                *ty,
                subject.clone(),
                chrono::Utc::now(),
                "firestore://x",
                payload,
            )
            .unwrap();
            let bytes = event.to_structured_json();
            assert_eq!(decode(&bytes).as_ref(), Some(&event), "{ty}");
        }
    }
}
