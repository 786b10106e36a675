//! Typed payloads, one per event family, with the contract's field names.
//!
//! Field names are Firestore's (camelCase). `null` and absent both mean "not
//! set". Fields the contract does not name are ignored (Firestore documents
//! grow fields the mirror has no column for); fields it names must have the
//! right type and value, or decoding fails naming `data.payload.<field>`.

use serde::{Deserialize, Serialize};

use crate::subject::check_id;
use crate::time::serde_ts;
use crate::{DecodeError, EventFamily, EventType, Op, SourceTime};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $( $variant:ident => $text:literal ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $( #[serde(rename = $text)] $variant, )* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }
        }
    };
}

string_enum!(
    /// `dm.conversation.*` `type`.
    ConversationKind { Direct => "direct", Group => "group" }
);
string_enum!(
    /// A participant's `role`.
    ParticipantRole { Owner => "owner", Member => "member" }
);
string_enum!(
    /// A participant's `muteState`.
    MuteState { None => "none", Muted => "muted" }
);
string_enum!(
    /// `dm.block.*` `source`.
    BlockSource { Client => "client", Admin => "admin" }
);
string_enum!(
    /// `follow.edge.*` `state`.
    FollowState { Pending => "pending", Accepted => "accepted", Blocked => "blocked" }
);
string_enum!(
    /// `follow.edge.*` `source`.
    FollowSource { Mobile => "mobile", Web => "web", Admin => "admin" }
);

/// One member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub user_id: String,
    pub role: ParticipantRole,
    #[serde(with = "serde_ts")]
    pub joined_at: SourceTime,
    pub mute_state: MuteState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_pointer_message_id: Option<String>,
}

/// `dm.conversation.create` / `.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationPayload {
    #[serde(rename = "type")]
    pub kind: ConversationKind,
    pub participants: Vec<Participant>,
    #[serde(with = "serde_ts")]
    pub created_at: SourceTime,
    #[serde(with = "serde_ts")]
    pub updated_at: SourceTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<String>,
}

/// `dm.message.create` / `.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePayload {
    pub author_user_id: String,
    pub body_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_media: Option<Vec<serde_json::Value>>,
    #[serde(with = "serde_ts")]
    pub created_at: SourceTime,
    #[serde(
        default,
        with = "serde_ts::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub edited_at: Option<SourceTime>,
    #[serde(
        default,
        with = "serde_ts::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deleted_at: Option<SourceTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

/// `dm.message.delete`: a hard delete of the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDeletePayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performed_by: Option<String>,
}

/// `dm.block.create` / `.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockPayload {
    #[serde(with = "serde_ts")]
    pub created_at: SourceTime,
    #[serde(
        default,
        with = "serde_ts::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<SourceTime>,
    pub source: BlockSource,
}

/// `follow.edge.create` / `.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowEdgePayload {
    pub state: FollowState,
    pub source: FollowSource,
    #[serde(with = "serde_ts")]
    pub created_at: SourceTime,
}

/// The typed `data.payload` of an event; which variant is fixed by the type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Conversation(ConversationPayload),
    Message(MessagePayload),
    MessageDelete(MessageDeletePayload),
    Block(BlockPayload),
    /// `dm.block.delete` (`{}`).
    BlockDelete,
    FollowEdge(FollowEdgePayload),
    /// `follow.edge.delete` (`{}`).
    FollowEdgeDelete,
}

impl Payload {
    /// Decode `value` as the payload of `event_type`, naming the field that is wrong.
    pub fn from_json(
        event_type: EventType,
        value: &serde_json::Value,
    ) -> Result<Payload, DecodeError> {
        if !value.is_object() {
            return Err(DecodeError::invalid("data.payload", "is not a JSON object"));
        }
        let payload = match (event_type.family(), event_type.op()) {
            (EventFamily::Conversation, _) => Payload::Conversation(typed(value)?),
            (EventFamily::Message, Op::Delete) => Payload::MessageDelete(typed(value)?),
            (EventFamily::Message, _) => Payload::Message(typed(value)?),
            (EventFamily::Block, Op::Delete) => Payload::BlockDelete,
            (EventFamily::Block, _) => Payload::Block(typed(value)?),
            (EventFamily::FollowEdge, Op::Delete) => Payload::FollowEdgeDelete,
            (EventFamily::FollowEdge, _) => Payload::FollowEdge(typed(value)?),
        };
        payload.validate()?;
        Ok(payload)
    }

    /// The payload as contract JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Payload::Conversation(p) => serde_json::to_value(p),
            Payload::Message(p) => serde_json::to_value(p),
            Payload::MessageDelete(p) => serde_json::to_value(p),
            Payload::Block(p) => serde_json::to_value(p),
            Payload::FollowEdge(p) => serde_json::to_value(p),
            Payload::BlockDelete | Payload::FollowEdgeDelete => Ok(serde_json::json!({})),
        };
        v.expect("payload types serialize infallibly")
    }

    /// Whether this payload is the right shape for `event_type`.
    pub fn fits(&self, event_type: EventType) -> bool {
        matches!(
            (self, event_type.family(), event_type.op()),
            (
                Payload::Conversation(_),
                EventFamily::Conversation,
                Op::Create | Op::Update
            ) | (
                Payload::Message(_),
                EventFamily::Message,
                Op::Create | Op::Update
            ) | (Payload::MessageDelete(_), EventFamily::Message, Op::Delete)
                | (
                    Payload::Block(_),
                    EventFamily::Block,
                    Op::Create | Op::Update
                )
                | (Payload::BlockDelete, EventFamily::Block, Op::Delete)
                | (
                    Payload::FollowEdge(_),
                    EventFamily::FollowEdge,
                    Op::Create | Op::Update
                )
                | (
                    Payload::FollowEdgeDelete,
                    EventFamily::FollowEdge,
                    Op::Delete
                )
        )
    }

    /// Value checks serde cannot express: id lengths, unique participants.
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Payload::Conversation(c) => {
                let mut seen = std::collections::HashSet::new();
                for (i, p) in c.participants.iter().enumerate() {
                    let field = format!("data.payload.participants[{i}].userId");
                    check_id(&field, &p.user_id)?;
                    if !seen.insert(p.user_id.as_str()) {
                        return Err(DecodeError::invalid(
                            field,
                            format!("`{}` is listed twice", p.user_id),
                        ));
                    }
                    if let Some(m) = &p.read_pointer_message_id {
                        check_id(
                            &format!("data.payload.participants[{i}].readPointerMessageId"),
                            m,
                        )?;
                    }
                }
                if let Some(m) = &c.last_message_id {
                    check_id("data.payload.lastMessageId", m)?;
                }
            }
            Payload::Message(m) => {
                check_id("data.payload.authorUserId", &m.author_user_id)?;
                if let Some(c) = &m.client_message_id {
                    check_id("data.payload.clientMessageId", c)?;
                }
            }
            Payload::MessageDelete(d) => {
                if let Some(p) = &d.performed_by {
                    check_id("data.payload.performedBy", p)?;
                }
            }
            Payload::Block(_)
            | Payload::BlockDelete
            | Payload::FollowEdge(_)
            | Payload::FollowEdgeDelete => {}
        }
        Ok(())
    }
}

/// Deserialize with the failing path in the error (`data.payload.participants[0].role`).
fn typed<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "data.payload".to_owned()
        } else {
            format!("data.payload.{path}")
        };
        DecodeError::invalid(field, e.into_inner())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_failing_field() {
        let e = Payload::from_json(
            EventType::DmConversationCreate,
            &json!({"type": "direct", "participants": [{"userId": "u1", "role": "admin", "joinedAt": "2025-01-01T00:00:00Z", "muteState": "none"}], "createdAt": "2025-01-01T00:00:00Z", "updatedAt": "2025-01-01T00:00:00Z"}),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid `data.payload.participants[0].role`"),
            "{e}"
        );

        let e = Payload::from_json(
            EventType::DmMessageCreate,
            &json!({"bodyText": "hi", "createdAt": "2025-01-01T00:00:00Z"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("authorUserId"), "{e}");

        let e = Payload::from_json(
            EventType::FollowEdgeCreate,
            &json!({"state": "accepted", "source": "web", "createdAt": "yesterday"}),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid `data.payload.createdAt`"),
            "{e}"
        );
    }

    #[test]
    fn null_means_not_set_and_unknown_fields_are_ignored() {
        let p = Payload::from_json(
            EventType::DmMessageUpdate,
            &json!({"authorUserId": "u1", "bodyText": "x", "createdAt": "2025-01-01T00:00:00Z", "editedAt": null, "reactions": {"👍": 2}}),
        )
        .unwrap();
        match p {
            Payload::Message(m) => assert_eq!(m.edited_at, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deletes_take_empty_objects() {
        assert_eq!(
            Payload::from_json(EventType::FollowEdgeDelete, &json!({})).unwrap(),
            Payload::FollowEdgeDelete
        );
        assert!(Payload::from_json(EventType::FollowEdgeDelete, &json!([])).is_err());
    }
}
