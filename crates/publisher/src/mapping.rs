//! Firestore document → contract [`MirrorEvent`] (field by field in
//! `docs/firestore-mapping.md`).
//!
//! Pure and total: every document either maps to a valid event, is outside the
//! mirror ([`route`] says `None`: e.g. a `messages` collection under another
//! parent), or yields a [`MappingError`] that names the path and the field, for
//! the caller to dead-letter. Nothing here panics on any input.

use base64::Engine as _;
use std::collections::BTreeMap;

use chrono::{SecondsFormat, SubsecRound};
use mirror_schema::{
    BlockPayload, BlockSource, ConversationKind, ConversationPayload, DecodeError, EventFamily,
    EventType, FollowEdgePayload, FollowSource, FollowState, MessageDeletePayload, MessagePayload,
    MirrorEvent, MuteState, Op, Participant, ParticipantRole, Payload, SourceTime, Subject,
};
use serde_json::json;

use crate::listen::{Change, UpsertOp};
use crate::value::{Document, Timestamp, Value};

/// Why a document cannot be mirrored. Every variant names the document path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    #[error("`{path}`: required field `{field}` is missing")]
    Missing { path: String, field: String },
    #[error("`{path}`: field `{field}` is a {found}, expected {expected}")]
    WrongType {
        path: String,
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`{path}`: field `{field}`: {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: String,
    },
    #[error("`{path}`: a {op} of this document has no contract event type")]
    NoEventType { path: String, op: &'static str },
    #[error("`{path}`: {source}")]
    Contract {
        path: String,
        #[source]
        source: DecodeError,
    },
}

impl MappingError {
    /// Short stable reason for dead letters and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            MappingError::Missing { .. } => "missing_field",
            MappingError::WrongType { .. } => "wrong_type",
            MappingError::Invalid { .. } => "invalid_field",
            MappingError::NoEventType { .. } => "no_event_type",
            MappingError::Contract { .. } => "contract_violation",
        }
    }

    /// The document path the error is about.
    pub fn path(&self) -> &str {
        match self {
            MappingError::Missing { path, .. }
            | MappingError::WrongType { path, .. }
            | MappingError::Invalid { path, .. }
            | MappingError::NoEventType { path, .. }
            | MappingError::Contract { path, .. } => path,
        }
    }
}

/// Where events say they come from: `firestore://projects/{project}/databases/{database}/documents/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub project: String,
    pub database: String,
}

impl SourceInfo {
    pub fn new(project: impl Into<String>, database: impl Into<String>) -> SourceInfo {
        SourceInfo {
            project: project.into(),
            database: database.into(),
        }
    }

    fn source(&self, subject: &Subject) -> String {
        format!(
            "firestore://projects/{}/databases/{}/documents/{subject}",
            self.project, self.database
        )
    }
}

/// The family of a mirrored document path, or `None` for a path the mirror
/// does not cover (another parent of a `messages`/`targets` collection group,
/// a deeper subcollection, …). Ids are not validated here.
pub fn route(path: &str) -> Option<EventFamily> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["conversations", c] if !c.is_empty() => Some(EventFamily::Conversation),
        ["conversations", c, "messages", m] if !c.is_empty() && !m.is_empty() => {
            Some(EventFamily::Message)
        }
        ["blocks", u, "targets", t] if !u.is_empty() && !t.is_empty() => Some(EventFamily::Block),
        ["follows", u, "targets", t] if !u.is_empty() && !t.is_empty() => {
            Some(EventFamily::FollowEdge)
        }
        _ => None,
    }
}

/// The event for one change of the listen core, or `None` if its path is not mirrored.
pub fn change_event(
    change: &Change,
    source: &SourceInfo,
) -> Result<Option<MirrorEvent>, MappingError> {
    match change {
        Change::Upsert { doc, op } => upsert_event(doc, *op, source),
        Change::Delete { path, time, .. } => delete_event(path, *time, source),
    }
}

/// The create/update event of a document version (`time` = its update time).
pub fn upsert_event(
    doc: &Document,
    op: UpsertOp,
    source: &SourceInfo,
) -> Result<Option<MirrorEvent>, MappingError> {
    let Some(family) = route(&doc.path) else {
        return Ok(None);
    };
    let subject = subject(&doc.path, family)?;
    let f = Fields {
        path: &doc.path,
        fields: &doc.fields,
    };
    let payload = match family {
        EventFamily::Conversation => Payload::Conversation(conversation(&f)?),
        EventFamily::Message => Payload::Message(message(&f)?),
        EventFamily::Block => Payload::Block(BlockPayload {
            created_at: f.timestamp("createdAt")?,
            revoked_at: f.opt_timestamp("revokedAt")?,
            source: f.enumerated(
                "source",
                &[
                    ("client", BlockSource::Client),
                    ("admin", BlockSource::Admin),
                ],
            )?,
        }),
        EventFamily::FollowEdge => Payload::FollowEdge(FollowEdgePayload {
            state: f.enumerated(
                "state",
                &[
                    ("pending", FollowState::Pending),
                    ("accepted", FollowState::Accepted),
                    ("blocked", FollowState::Blocked),
                ],
            )?,
            source: f.enumerated(
                "source",
                &[
                    ("mobile", FollowSource::Mobile),
                    ("web", FollowSource::Web),
                    ("admin", FollowSource::Admin),
                ],
            )?,
            created_at: f.timestamp("createdAt")?,
        }),
    };
    let op = match op {
        UpsertOp::Create => Op::Create,
        UpsertOp::Update => Op::Update,
    };
    let event_type = EventType::of(family, op).expect("every family has create and update");
    build(
        &doc.path,
        event_type,
        subject,
        doc.update_time,
        source,
        payload,
    )
    .map(Some)
}

/// The delete event of a document observed gone at `time`.
pub fn delete_event(
    path: &str,
    time: Timestamp,
    source: &SourceInfo,
) -> Result<Option<MirrorEvent>, MappingError> {
    let Some(family) = route(path) else {
        return Ok(None);
    };
    let subject = subject(path, family)?;
    let Some(event_type) = EventType::of(family, Op::Delete) else {
        return Err(MappingError::NoEventType {
            path: path.to_owned(),
            op: "delete",
        });
    };
    let payload = match family {
        EventFamily::Message => Payload::MessageDelete(MessageDeletePayload::default()),
        EventFamily::Block => Payload::BlockDelete,
        _ => Payload::FollowEdgeDelete,
    };
    build(path, event_type, subject, time, source, payload).map(Some)
}

fn subject(path: &str, family: EventFamily) -> Result<Subject, MappingError> {
    Subject::parse(path, family).map_err(|source| MappingError::Contract {
        path: path.to_owned(),
        source,
    })
}

fn build(
    path: &str,
    event_type: EventType,
    subject: Subject,
    time: Timestamp,
    source: &SourceInfo,
    payload: Payload,
) -> Result<MirrorEvent, MappingError> {
    let src = source.source(&subject);
    MirrorEvent::new(event_type, subject, time.trunc_subsecs(6), src, payload).map_err(|source| {
        MappingError::Contract {
            path: path.to_owned(),
            source,
        }
    })
}

fn conversation(f: &Fields<'_>) -> Result<ConversationPayload, MappingError> {
    let kind = f.enumerated(
        "type",
        &[
            ("direct", ConversationKind::Direct),
            ("group", ConversationKind::Group),
        ],
    )?;
    let participants = match f.get("participants") {
        None | Some(Value::Null) => return Err(f.missing("participants")),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("participants[{i}]");
                match item {
                    Value::Map(m) => participant(f.path, &field, m, None),
                    other => Err(f.wrong_type(&field, "map", other)),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        // Also accepted: a map keyed by user id.
        Some(Value::Map(by_user)) => by_user
            .iter()
            .map(|(user, item)| {
                let field = format!("participants.{user}");
                match item {
                    Value::Map(m) => participant(f.path, &field, m, Some(user)),
                    other => Err(f.wrong_type(&field, "map", other)),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(f.wrong_type("participants", "array or map", other)),
    };
    Ok(ConversationPayload {
        kind,
        participants,
        created_at: f.timestamp("createdAt")?,
        updated_at: f.timestamp("updatedAt")?,
        last_message_id: f.opt_id("lastMessageId")?,
    })
}

fn participant(
    path: &str,
    field: &str,
    m: &BTreeMap<String, Value>,
    key_user: Option<&str>,
) -> Result<Participant, MappingError> {
    let prefix = format!("{field}.");
    let f = Fields { path, fields: m }.prefixed(&prefix);
    let user_id = match (f.opt_id("userId")?, key_user) {
        (Some(u), _) => u,
        (None, Some(k)) => k.to_owned(),
        (None, None) => return Err(f.missing("userId")),
    };
    Ok(Participant {
        user_id,
        role: f.enumerated(
            "role",
            &[
                ("owner", ParticipantRole::Owner),
                ("member", ParticipantRole::Member),
            ],
        )?,
        joined_at: f.timestamp("joinedAt")?,
        mute_state: match f.get("muteState") {
            None | Some(Value::Null) => MuteState::None,
            Some(_) => f.enumerated(
                "muteState",
                &[("none", MuteState::None), ("muted", MuteState::Muted)],
            )?,
        },
        read_pointer_message_id: f.opt_id("readPointerMessageId")?,
    })
}

fn message(f: &Fields<'_>) -> Result<MessagePayload, MappingError> {
    Ok(MessagePayload {
        author_user_id: f.id("authorUserId")?,
        body_text: match f.get("bodyText") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(f.wrong_type("bodyText", "string", other)),
        },
        attachments: f.opt_json_array("attachments")?,
        external_media: f.opt_json_array("externalMedia")?,
        created_at: f.timestamp("createdAt")?,
        edited_at: f.opt_timestamp("editedAt")?,
        deleted_at: f.opt_timestamp("deletedAt")?,
        client_message_id: f.opt_id("clientMessageId")?,
    })
}

/// Typed access to a document's fields, naming `path` and the field in errors.
struct Fields<'a> {
    path: &'a str,
    fields: &'a BTreeMap<String, Value>,
}

/// [`Fields`] of a nested map, whose error field names carry a prefix.
struct Prefixed<'a> {
    inner: Fields<'a>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn prefixed(self, prefix: &str) -> Prefixed<'a> {
        Prefixed {
            inner: self,
            prefix: prefix.to_owned(),
        }
    }
}

trait Access {
    fn path(&self) -> &str;
    fn raw(&self, name: &str) -> Option<&Value>;
    fn name(&self, name: &str) -> String;

    fn get(&self, name: &str) -> Option<&Value> {
        self.raw(name)
    }
    fn missing(&self, name: &str) -> MappingError {
        MappingError::Missing {
            path: self.path().to_owned(),
            field: self.name(name),
        }
    }
    fn wrong_type(&self, name: &str, expected: &'static str, found: &Value) -> MappingError {
        MappingError::WrongType {
            path: self.path().to_owned(),
            field: self.name(name),
            expected,
            found: found.type_name(),
        }
    }
    fn invalid(&self, name: &str, reason: impl Into<String>) -> MappingError {
        MappingError::Invalid {
            path: self.path().to_owned(),
            field: self.name(name),
            reason: reason.into(),
        }
    }

    /// A timestamp; an RFC 3339 string is accepted too.
    fn opt_timestamp(&self, name: &str) -> Result<Option<SourceTime>, MappingError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Timestamp(t)) => Ok(Some(t.trunc_subsecs(6))),
            Some(Value::String(s)) => mirror_schema::parse_time(name, s).map(Some).map_err(|_| {
                self.invalid(name, format!("`{}` is not an RFC 3339 timestamp", clip(s)))
            }),
            Some(other) => Err(self.wrong_type(name, "timestamp", other)),
        }
    }
    fn timestamp(&self, name: &str) -> Result<SourceTime, MappingError> {
        self.opt_timestamp(name)?.ok_or_else(|| self.missing(name))
    }

    /// An id: a string, or a reference (its last path segment).
    fn opt_id(&self, name: &str) -> Result<Option<String>, MappingError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Reference(r)) => Ok(Some(reference_id(r).to_owned())),
            Some(other) => Err(self.wrong_type(name, "string or reference", other)),
        }
    }
    fn id(&self, name: &str) -> Result<String, MappingError> {
        self.opt_id(name)?.ok_or_else(|| self.missing(name))
    }

    fn enumerated<T: Copy>(&self, name: &str, allowed: &[(&str, T)]) -> Result<T, MappingError> {
        match self.get(name) {
            None | Some(Value::Null) => Err(self.missing(name)),
            Some(Value::String(s)) => allowed
                .iter()
                .find(|(k, _)| *k == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let names: Vec<&str> = allowed.iter().map(|(k, _)| *k).collect();
                    self.invalid(
                        name,
                        format!("`{}` is not one of {}", clip(s), names.join(", ")),
                    )
                }),
            Some(other) => Err(self.wrong_type(name, "string", other)),
        }
    }

    fn opt_json_array(&self, name: &str) -> Result<Option<Vec<serde_json::Value>>, MappingError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    to_json(v)
                        .map_err(|(sub, reason)| self.invalid(&format!("{name}[{i}]{sub}"), reason))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.wrong_type(name, "array", other)),
        }
    }
}

impl Access for Fields<'_> {
    fn path(&self) -> &str {
        self.path
    }
    fn raw(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }
    fn name(&self, name: &str) -> String {
        name.to_owned()
    }
}

impl Access for Prefixed<'_> {
    fn path(&self) -> &str {
        self.inner.path
    }
    fn raw(&self, name: &str) -> Option<&Value> {
        self.inner.fields.get(name)
    }
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// The id a reference points at: its last path segment.
pub fn reference_id(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// A Firestore value as JSON: timestamps → RFC 3339 UTC (microseconds),
/// references → ids, bytes → base64, geo points → `{latitude, longitude}`,
/// maps/arrays → objects/arrays. Fails (with the sub-path) on a non-finite double.
pub fn to_json(v: &Value) -> Result<serde_json::Value, (String, String)> {
    Ok(match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Integer(i) => json!(i),
        Value::Double(d) => match serde_json::Number::from_f64(*d) {
            Some(n) => serde_json::Value::Number(n),
            None => return Err((String::new(), format!("{d} is not representable in JSON"))),
        },
        Value::Timestamp(t) => json!(t
            .trunc_subsecs(6)
            .to_rfc3339_opts(SecondsFormat::Micros, true)),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Reference(r) => json!(reference_id(r)),
        Value::GeoPoint {
            latitude,
            longitude,
        } => {
            if !latitude.is_finite() || !longitude.is_finite() {
                return Err((String::new(), "geo point is not finite".into()));
            }
            json!({"latitude": latitude, "longitude": longitude})
        }
        Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v).map_err(|(sub, r)| (format!("[{i}]{sub}"), r)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| {
                    to_json(v)
                        .map(|j| (k.clone(), j))
                        .map_err(|(sub, r)| (format!(".{k}{sub}"), r))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The whole document as JSON (for dead-letter payloads).
pub fn document_json(doc: &Document) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = doc
        .fields
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                to_json(v).unwrap_or_else(|(_, r)| json!(format!("<{r}>"))),
            )
        })
        .collect();
    json!({
        "path": doc.path,
        "createTime": doc.create_time.to_rfc3339_opts(SecondsFormat::Nanos, true),
        "updateTime": doc.update_time.to_rfc3339_opts(SecondsFormat::Nanos, true),
        "fields": fields,
    })
}

fn clip(s: &str) -> String {
    if s.chars().count() > 64 {
        format!("{}…", s.chars().take(64).collect::<String>())
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests;
