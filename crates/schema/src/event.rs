//! [`MirrorEvent`]: a validated contract event, and its CloudEvents encodings.

use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::time::format_time;
use crate::types::truncate;
use crate::{DecodeError, EventFamily, EventType, Payload, SourceTime, Subject, MAX_EVENT_BYTES};

/// The contract's UUID v5 namespace for event ids.
pub const ID_NAMESPACE: Uuid = uuid::uuid!("a61aad53-8b85-4d33-902a-40915aaca62f");

/// The contract's deterministic id: UUID v5 of `type + "\n" + subject + "\n" + time`.
pub fn deterministic_id(event_type: EventType, subject: &Subject, time: &SourceTime) -> Uuid {
    let name = format!(
        "{}\n{}\n{}",
        event_type.as_str(),
        subject,
        format_time(time)
    );
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes())
}

/// The CloudEvents extension attribute in which the publisher stamps the time
/// it handed the event to the bus (RFC 3339, microseconds), for per-hop latency.
///
/// Delivery metadata, not contract content: it is not part of the id (so
/// duplicate detection and the ledger are untouched), two events that differ
/// only in it are equal, and an unreadable value is ignored rather than
/// rejected (a latency stamp must never dead-letter a valid event).
pub const PUBLISH_TIME_ATTRIBUTE: &str = "publishtime";

/// One valid realtime-mirror event. Constructed only by [`MirrorEvent::new`] or
/// the decoders, so every value of this type satisfies the contract.
#[derive(Debug, Clone)]
pub struct MirrorEvent {
    id: Uuid,
    event_type: EventType,
    source: String,
    subject: Subject,
    time: SourceTime,
    payload: Payload,
    /// [`PUBLISH_TIME_ATTRIBUTE`], if the publisher stamped it.
    published_at: Option<SourceTime>,
}

/// Equal when the contract content is equal; the publish stamp is delivery
/// metadata (a re-publish of the same event carries another one).
impl PartialEq for MirrorEvent {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.event_type == other.event_type
            && self.source == other.source
            && self.subject == other.subject
            && self.time == other.time
            && self.payload == other.payload
    }
}
impl Eq for MirrorEvent {}

impl MirrorEvent {
    /// Build an event, deriving its deterministic id; fails if `payload` is not
    /// the shape `event_type` requires or `subject` is of another family.
    pub fn new(
        event_type: EventType,
        subject: Subject,
        time: SourceTime,
        source: impl Into<String>,
        payload: Payload,
    ) -> Result<MirrorEvent, DecodeError> {
        if subject.family() != event_type.family() {
            return Err(DecodeError::invalid(
                "subject",
                format!("`{subject}` is not a subject for `{event_type}`"),
            ));
        }
        if !payload.fits(event_type) {
            return Err(DecodeError::invalid(
                "data.payload",
                format!("is not a `{event_type}` payload"),
            ));
        }
        payload.validate()?;
        let time = time.trunc_subsecs_micros();
        Ok(MirrorEvent {
            id: deterministic_id(event_type, &subject, &time),
            event_type,
            source: source.into(),
            subject,
            time,
            payload,
            published_at: None,
        })
    }

    /// The default `source` for a document of `project`'s default database.
    pub fn firestore_source(project: &str, subject: &Subject) -> String {
        format!("firestore://projects/{project}/databases/(default)/documents/{subject}")
    }

    pub fn id(&self) -> Uuid {
        self.id
    }
    pub fn event_type(&self) -> EventType {
        self.event_type
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
    /// The source version.
    pub fn time(&self) -> SourceTime {
        self.time
    }
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
    /// When the publisher handed this event to the bus ([`PUBLISH_TIME_ATTRIBUTE`]).
    pub fn published_at(&self) -> Option<SourceTime> {
        self.published_at
    }
    /// This event stamped with its publish time (microsecond precision); the
    /// id and every contract attribute stay as they are.
    pub fn with_published_at(mut self, at: SourceTime) -> MirrorEvent {
        self.published_at = Some(at.trunc_subsecs_micros());
        self
    }
    pub fn partition_key(&self) -> &str {
        self.subject.partition_key()
    }
    /// The entity this event is about; events of one entity are ordered by `time`.
    pub fn entity_key(&self) -> String {
        self.subject.to_string()
    }
    /// Where the change came from, for the `SyncSource` column: the scheme of
    /// `source` (`firestore`, `gateway`, …), at most 32 characters.
    pub fn sync_source(&self) -> &str {
        let scheme = self.source.split_once("://").map(|(s, _)| s).unwrap_or("");
        if scheme.is_empty()
            || scheme.len() > 32
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            "unknown"
        } else {
            scheme
        }
    }

    /// `data` as the contract lays it out.
    pub fn data_json(&self) -> Value {
        let mut data = json!({
            "firestoreId": self.subject.document_id(),
            "op": self.event_type.op().as_str(),
            "payload": self.payload.to_json(),
        });
        if let Some(c) = self.subject.conversation_id() {
            data["conversationId"] = json!(c);
        }
        data
    }

    /// This event as a CloudEvents 1.0 [`Event`].
    pub fn to_cloudevent(&self) -> Event {
        let mut builder = EventBuilderV10::new()
            .id(self.id.to_string())
            .source(self.source.clone())
            .ty(self.event_type.as_str())
            .subject(self.subject.to_string())
            .time(self.time)
            .extension("partitionkey", self.partition_key());
        if let Some(at) = &self.published_at {
            builder = builder.extension(PUBLISH_TIME_ATTRIBUTE, format_time(at));
        }
        builder
            .data("application/json", self.data_json())
            .build()
            .expect("all required CloudEvents attributes are set")
    }

    /// Structured mode JSON (`application/cloudevents+json`), with `time` in the
    /// contract's canonical form.
    pub fn to_structured_json(&self) -> Vec<u8> {
        let mut v = json!({
            "specversion": "1.0",
            "id": self.id.to_string(),
            "source": self.source,
            "type": self.event_type.as_str(),
            "subject": self.subject.to_string(),
            "time": format_time(&self.time),
            "partitionkey": self.partition_key(),
            "datacontenttype": "application/json",
            "data": self.data_json(),
        });
        if let Some(at) = &self.published_at {
            v[PUBLISH_TIME_ATTRIBUTE] = json!(format_time(at));
        }
        serde_json::to_vec(&v).expect("JSON values serialize infallibly")
    }
}

trait TruncMicros {
    fn trunc_subsecs_micros(self) -> Self;
}
impl TruncMicros for SourceTime {
    fn trunc_subsecs_micros(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 6)
    }
}

/// Decode one structured-mode JSON event, validating it against the contract.
///
/// A well-formed event takes the direct path ([`crate::direct`]): one pass
/// from bytes to typed values. Anything that path does not take, valid or
/// not, goes through the reference decoder ([`decode_structured_reference`]),
/// which alone produces errors, so both paths accept exactly the same events
/// with the same result (a differential property test and the fuzz target
/// check it).
pub fn decode_structured(bytes: &[u8]) -> Result<MirrorEvent, DecodeError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_EVENT_BYTES,
        });
    }
    match crate::direct::decode(bytes) {
        Some(event) => Ok(event),
        None => decode_structured_reference(bytes),
    }
}

/// The reference structured-mode decoder: a JSON tree, the CloudEvents SDK's
/// envelope, then the contract's rules. Slower than the direct path and the
/// source of every error message; public for the differential test and the
/// fuzz target only.
#[doc(hidden)]
pub fn decode_structured_reference(bytes: &[u8]) -> Result<MirrorEvent, DecodeError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_EVENT_BYTES,
        });
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Malformed(format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| DecodeError::Malformed("the event is not a JSON object".into()))?;
    // Check the contract's own attributes first so the error names them, then let
    // the CloudEvents SDK validate the envelope.
    match obj.get("specversion") {
        None => return Err(DecodeError::Missing("specversion")),
        Some(Value::String(s)) if s == "1.0" => {}
        Some(other) => {
            return Err(DecodeError::invalid(
                "specversion",
                format!("`{}` is not `1.0`", truncate(&other.to_string(), 32)),
            ))
        }
    }
    for attr in ["id", "source", "type", "subject", "time"] {
        match obj.get(attr) {
            None | Some(Value::Null) => return Err(DecodeError::Missing(static_attr(attr))),
            Some(Value::String(_)) => {}
            Some(_) => return Err(DecodeError::invalid(attr, "is not a string")),
        }
    }
    // The type is checked before the envelope so that an unknown type is reported as such.
    obj["type"]
        .as_str()
        .unwrap_or_default()
        .parse::<EventType>()?;
    let raw_time = obj["time"].as_str().unwrap_or_default().to_owned();
    crate::parse_time("time", &raw_time)?;
    match obj.get("datacontenttype") {
        None | Some(Value::Null) => {}
        Some(Value::String(ct)) => check_content_type(ct)?,
        Some(_) => return Err(DecodeError::invalid("datacontenttype", "is not a string")),
    }
    let event: Event = serde_json::from_value(value)
        .map_err(|e| DecodeError::Malformed(format!("not a CloudEvent: {e}")))?;
    decode_cloudevent_with_time(&event, Some(&raw_time))
}

/// Validate a CloudEvent (from any binding) against the contract.
pub fn decode_cloudevent(event: &Event) -> Result<MirrorEvent, DecodeError> {
    decode_cloudevent_with_time(event, None)
}

fn decode_cloudevent_with_time(
    event: &Event,
    raw_time: Option<&str>,
) -> Result<MirrorEvent, DecodeError> {
    let event_type: EventType = event.ty().parse()?;
    let subject = event.subject().ok_or(DecodeError::Missing("subject"))?;
    let time = match raw_time {
        Some(raw) => crate::parse_time("time", raw),
        None => event.time().copied().ok_or(DecodeError::Missing("time")),
    };
    let source = event.source().to_string();
    let partition_key = event.extension("partitionkey").map(|pk| match pk {
        ExtensionValue::String(s) => Ok(s.as_str()),
        other => Err(other.to_string()),
    });
    // Parsed only when the envelope checks before it pass (as it always was).
    let data = || -> Result<Value, DecodeError> {
        match event.data() {
            None => Err(DecodeError::Missing("data")),
            Some(Data::Json(v)) => Ok(v.clone()),
            Some(Data::String(s)) => serde_json::from_str(s)
                .map_err(|e| DecodeError::invalid("data", format!("is not JSON: {e}"))),
            Some(Data::Binary(b)) => serde_json::from_slice(b)
                .map_err(|e| DecodeError::invalid("data", format!("is not JSON: {e}"))),
        }
    };
    let published_at = match event.extension(PUBLISH_TIME_ATTRIBUTE) {
        Some(ExtensionValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let envelope = Envelope {
        event_type,
        subject,
        time,
        source,
        id: event.id(),
        partition_key,
        content_type: event.datacontenttype(),
        published_at,
    };
    envelope.build(|subject| {
        let data = data()?;
        let data = data
            .as_object()
            .ok_or_else(|| DecodeError::invalid("data", "is not a JSON object"))?;
        DataIds::of_map(data).check(event_type, subject)?;
        let payload_value = data
            .get("payload")
            .ok_or(DecodeError::Missing("data.payload"))?;
        Payload::from_json(event_type, payload_value)
    })
}

/// The attributes of an event, however it was read, before the contract's
/// rules ([`Envelope::build`]) made it a [`MirrorEvent`].
pub(crate) struct Envelope<'a> {
    pub event_type: EventType,
    pub subject: &'a str,
    /// Not yet truncated to microseconds; an error is reported after the
    /// subject's.
    pub time: Result<SourceTime, DecodeError>,
    pub source: String,
    pub id: &'a str,
    /// `partitionkey`: a string, or the text of a value of another kind.
    pub partition_key: Option<Result<&'a str, String>>,
    pub content_type: Option<&'a str>,
    /// [`PUBLISH_TIME_ATTRIBUTE`] when it is a string.
    pub published_at: Option<&'a str>,
}

impl Envelope<'_> {
    /// The contract's rules, in the order their errors are reported; `data`
    /// checks `data` against the subject and returns the typed payload.
    pub(crate) fn build(
        self,
        data: impl FnOnce(&Subject) -> Result<Payload, DecodeError>,
    ) -> Result<MirrorEvent, DecodeError> {
        let event_type = self.event_type;
        let subject = Subject::parse(self.subject, event_type.family())?;
        let time = self.time?.trunc_subsecs_micros();
        if self.source.is_empty() {
            return Err(DecodeError::invalid("source", "is empty"));
        }
        let expected_id = deterministic_id(event_type, &subject, &time);
        // The canonical text of the same UUID, in any case (or any form the
        // `uuid` crate parses).
        if Uuid::parse_str(self.id).ok() != Some(expected_id) {
            return Err(DecodeError::WrongId {
                found: truncate(self.id, 64),
                expected: expected_id.to_string(),
            });
        }
        match &self.partition_key {
            None => {}
            Some(Ok(pk)) if *pk == subject.partition_key() => {}
            Some(found) => {
                return Err(DecodeError::Mismatch {
                    field: "partitionkey",
                    found: truncate(found.as_deref().unwrap_or_else(|text| text), 64),
                    expected: subject.partition_key().to_owned(),
                })
            }
        }
        if let Some(ct) = self.content_type {
            check_content_type(ct)?;
        }
        let payload = data(&subject)?;
        let published_at = self.published_at.and_then(|s| {
            crate::parse_time(PUBLISH_TIME_ATTRIBUTE, s)
                .ok()
                .map(|t| t.trunc_subsecs_micros())
        });
        Ok(MirrorEvent {
            id: expected_id,
            event_type,
            source: self.source,
            subject,
            time,
            payload,
            published_at,
        })
    }
}

/// One identifier field of `data`, as the rules see it.
#[derive(Clone, Copy)]
pub(crate) enum IdField<'a> {
    /// Absent or `null`.
    Unset,
    Text(&'a str),
    /// Present, of another JSON kind.
    NotText,
}

/// The identifier fields of `data` the subject must agree with.
pub(crate) struct DataIds<'a> {
    pub op: Option<Result<&'a str, String>>,
    pub firestore_id: IdField<'a>,
    pub conversation_id: IdField<'a>,
    pub user_id: IdField<'a>,
    pub target_user_id: IdField<'a>,
    pub follower_user_id: IdField<'a>,
}

impl<'a> DataIds<'a> {
    fn of_map(data: &'a serde_json::Map<String, Value>) -> DataIds<'a> {
        let field = |key: &str| match data.get(key) {
            None | Some(Value::Null) => IdField::Unset,
            Some(Value::String(s)) => IdField::Text(s),
            Some(_) => IdField::NotText,
        };
        DataIds {
            op: data.get("op").map(|op| match op {
                Value::String(s) => Ok(s.as_str()),
                other => Err(other.to_string()),
            }),
            firestore_id: field("firestoreId"),
            conversation_id: field("conversationId"),
            user_id: field("userId"),
            target_user_id: field("targetUserId"),
            follower_user_id: field("followerUserId"),
        }
    }

    /// `data.op` must be the type's operation, and the ids in `data` the
    /// subject's (the document and conversation ids always; the user ids of
    /// blocks and follow edges when present).
    pub(crate) fn check(
        &self,
        event_type: EventType,
        subject: &Subject,
    ) -> Result<(), DecodeError> {
        let op = self.op.as_ref().ok_or(DecodeError::Missing("data.op"))?;
        if op.as_ref().ok().copied() != Some(event_type.op().as_str()) {
            let text = match op {
                Ok(s) => Value::String((*s).to_owned()).to_string(),
                Err(other) => other.clone(),
            };
            return Err(DecodeError::invalid(
                "data.op",
                format!(
                    "`{}` does not match type `{event_type}`",
                    truncate(&text, 32)
                ),
            ));
        }
        check_data_id(
            self.firestore_id,
            "data.firestoreId",
            subject.document_id(),
            true,
        )?;
        if let Some(conversation_id) = subject.conversation_id() {
            check_data_id(
                self.conversation_id,
                "data.conversationId",
                conversation_id,
                true,
            )?;
        }
        // Blocks and follow edges: the two user ids, when `data` has them.
        let (user, user_field, expected_user, target) = match subject {
            Subject::Block {
                user_id,
                target_user_id,
            } => (self.user_id, "data.userId", user_id, target_user_id),
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            } => (
                self.follower_user_id,
                "data.followerUserId",
                follower_user_id,
                target_user_id,
            ),
            _ => return Ok(()),
        };
        check_data_id(user, user_field, expected_user, false)?;
        check_data_id(self.target_user_id, "data.targetUserId", target, false)
    }
}

/// `datacontenttype` must be JSON (parameters such as `charset` allowed).
pub(crate) fn check_content_type(ct: &str) -> Result<(), DecodeError> {
    let base = ct.split(';').next().unwrap_or("").trim();
    if base.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(DecodeError::invalid(
            "datacontenttype",
            format!("`{}` is not `application/json`", truncate(ct, 64)),
        ))
    }
}

fn check_data_id(
    value: IdField<'_>,
    field: &'static str,
    expected: &str,
    required: bool,
) -> Result<(), DecodeError> {
    match value {
        IdField::Unset if !required => Ok(()),
        IdField::Unset => Err(DecodeError::Missing(field)),
        IdField::Text(s) if s == expected => Ok(()),
        IdField::Text(s) => Err(DecodeError::Mismatch {
            field,
            found: truncate(s, 64),
            expected: expected.to_owned(),
        }),
        IdField::NotText => Err(DecodeError::invalid(field, "is not a string")),
    }
}

fn static_attr(name: &str) -> &'static str {
    match name {
        "id" => "id",
        "source" => "source",
        "type" => "type",
        "subject" => "subject",
        _ => "time",
    }
}

impl EventFamily {
    /// The SQL procedure family name, as in `sp_StoreMirror_Upsert<Name>`.
    pub fn procedure_noun(self) -> &'static str {
        match self {
            EventFamily::Conversation => "DmConversation",
            EventFamily::Message => "DmMessage",
            EventFamily::Block => "DmBlock",
            EventFamily::FollowEdge => "FollowEdge",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the contract, byte for byte except the id, which the
    /// contract's example leaves illustrative.
    fn contract_example(id: &str) -> Value {
        json!({
          "specversion": "1.0",
          "id": id,
          "source": "firestore://projects/demo/databases/(default)/documents/conversations/c1/messages/m1",
          "type": "dm.message.create",
          "subject": "conversations/c1/messages/m1",
          "time": "2025-10-08T12:34:56.123456Z",
          "partitionkey": "c1",
          "datacontenttype": "application/json",
          "data": {
            "firestoreId": "m1",
            "conversationId": "c1",
            "op": "create",
            "payload": { "authorUserId": "u1", "bodyText": "hi", "createdAt": "2025-10-08T12:34:56.123456Z" }
          }
        })
    }

    fn example_id() -> String {
        let name = "dm.message.create\nconversations/c1/messages/m1\n2025-10-08T12:34:56.123456Z";
        Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
    }

    #[test]
    fn decodes_the_contract_example() {
        let bytes = serde_json::to_vec(&contract_example(&example_id())).unwrap();
        let ev = decode_structured(&bytes).unwrap();
        assert_eq!(ev.event_type(), EventType::DmMessageCreate);
        assert_eq!(ev.partition_key(), "c1");
        assert_eq!(ev.id().to_string(), example_id());
        assert_eq!(ev.sync_source(), "firestore");
        // and re-encodes to something that decodes to the same event
        assert_eq!(decode_structured(&ev.to_structured_json()).unwrap(), ev);
        assert_eq!(decode_cloudevent(&ev.to_cloudevent()).unwrap(), ev);
    }

    #[test]
    fn the_publish_stamp_travels_without_touching_the_id() {
        let bytes = serde_json::to_vec(&contract_example(&example_id())).unwrap();
        let ev = decode_structured(&bytes).unwrap();
        assert_eq!(ev.published_at(), None);
        let at = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2025, 10, 8, 12, 34, 57).unwrap()
            + chrono::Duration::nanoseconds(1_234_567);
        let stamped = ev.clone().with_published_at(at);
        assert_eq!(stamped.id(), ev.id());
        assert_eq!(stamped, ev, "the stamp is metadata, not content");
        let json: Value = serde_json::from_slice(&stamped.to_structured_json()).unwrap();
        assert_eq!(json["publishtime"], "2025-10-08T12:34:57.001234Z");
        let back = decode_structured(&stamped.to_structured_json()).unwrap();
        assert_eq!(back.published_at(), stamped.published_at());
        assert_eq!(back.id().to_string(), example_id());
        let via_sdk = decode_cloudevent(&stamped.to_cloudevent()).unwrap();
        assert_eq!(via_sdk.published_at(), stamped.published_at());
        // An unreadable stamp is ignored, never a reason to reject the event.
        let mut bad = contract_example(&example_id());
        bad["publishtime"] = json!("yesterday");
        let ev = decode_structured(&serde_json::to_vec(&bad).unwrap()).unwrap();
        assert_eq!(ev.published_at(), None);
    }

    #[test]
    fn rejects_a_non_deterministic_id() {
        let bytes =
            serde_json::to_vec(&contract_example("5f0c3b9e-8e0f-5c8a-9d57-1d7a0c1f2b3c")).unwrap();
        let e = decode_structured(&bytes).unwrap_err();
        assert_eq!(e.code(), "wrong_id");
        assert!(e.to_string().contains(&example_id()), "{e}");
    }
}
