//! Subjects: the Firestore document path an event is about, parsed into ids.

use std::fmt;

use crate::{DecodeError, EventFamily};

/// Longest document id the mirror accepts, in characters (Unicode scalar
/// values), not bytes or UTF-16 code units: PostgreSQL keys are
/// `varchar(128)` (characters); SQL Server keys are `NVARCHAR(256)` because a
/// character outside the BMP takes two UTF-16 code units, and its procedures
/// count characters too (`dbo.fn_StoreMirror_IsValidId`).
pub const MAX_ID_LEN: usize = 128;

/// A document path relative to `documents/`, one shape per event family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// `conversations/{conversationId}`
    Conversation { conversation_id: String },
    /// `conversations/{conversationId}/messages/{messageId}`
    Message {
        conversation_id: String,
        message_id: String,
    },
    /// `blocks/{userId}/targets/{targetUserId}`
    Block {
        user_id: String,
        target_user_id: String,
    },
    /// `follows/{followerUserId}/targets/{targetUserId}`
    FollowEdge {
        follower_user_id: String,
        target_user_id: String,
    },
}

impl Subject {
    /// Parse `path` and check it has the shape `family` requires.
    pub fn parse(path: &str, family: EventFamily) -> Result<Subject, DecodeError> {
        let shape = match family {
            EventFamily::Conversation => "conversations/{conversationId}",
            EventFamily::Message => "conversations/{conversationId}/messages/{messageId}",
            EventFamily::Block => "blocks/{userId}/targets/{targetUserId}",
            EventFamily::FollowEdge => "follows/{followerUserId}/targets/{targetUserId}",
        };
        let bad = || {
            DecodeError::invalid(
                "subject",
                format!(
                    "`{}` is not of the form `{shape}`",
                    crate::types::truncate(path, 200)
                ),
            )
        };
        let parts: Vec<&str> = path.split('/').collect();
        let subject = match (family, parts.as_slice()) {
            (EventFamily::Conversation, ["conversations", c]) => Subject::Conversation {
                conversation_id: id(c)?,
            },
            (EventFamily::Message, ["conversations", c, "messages", m]) => Subject::Message {
                conversation_id: id(c)?,
                message_id: id(m)?,
            },
            (EventFamily::Block, ["blocks", u, "targets", t]) => Subject::Block {
                user_id: id(u)?,
                target_user_id: id(t)?,
            },
            (EventFamily::FollowEdge, ["follows", u, "targets", t]) => Subject::FollowEdge {
                follower_user_id: id(u)?,
                target_user_id: id(t)?,
            },
            _ => return Err(bad()),
        };
        Ok(subject)
    }

    pub fn family(&self) -> EventFamily {
        match self {
            Subject::Conversation { .. } => EventFamily::Conversation,
            Subject::Message { .. } => EventFamily::Message,
            Subject::Block { .. } => EventFamily::Block,
            Subject::FollowEdge { .. } => EventFamily::FollowEdge,
        }
    }

    /// The id of the document itself (`data.firestoreId`).
    pub fn document_id(&self) -> &str {
        match self {
            Subject::Conversation { conversation_id } => conversation_id,
            Subject::Message { message_id, .. } => message_id,
            Subject::Block { target_user_id, .. } => target_user_id,
            Subject::FollowEdge { target_user_id, .. } => target_user_id,
        }
    }

    /// The conversation a `dm.conversation.*`/`dm.message.*` subject belongs to.
    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            Subject::Conversation { conversation_id }
            | Subject::Message {
                conversation_id, ..
            } => Some(conversation_id),
            _ => None,
        }
    }

    /// The contract's `partitionkey`: conversation id for dm conversations and
    /// messages, follower for follow edges, blocking user for blocks.
    pub fn partition_key(&self) -> &str {
        match self {
            Subject::Conversation { conversation_id }
            | Subject::Message {
                conversation_id, ..
            } => conversation_id,
            Subject::Block { user_id, .. } => user_id,
            Subject::FollowEdge {
                follower_user_id, ..
            } => follower_user_id,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Conversation { conversation_id } => {
                write!(f, "conversations/{conversation_id}")
            }
            Subject::Message {
                conversation_id,
                message_id,
            } => write!(f, "conversations/{conversation_id}/messages/{message_id}"),
            Subject::Block {
                user_id,
                target_user_id,
            } => write!(f, "blocks/{user_id}/targets/{target_user_id}"),
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            } => write!(f, "follows/{follower_user_id}/targets/{target_user_id}"),
        }
    }
}

/// A Firestore document id as the mirror stores it.
fn id(s: &str) -> Result<String, DecodeError> {
    check_id("subject", s)?;
    Ok(s.to_owned())
}

/// Validate a document or user id: non-empty, at most [`MAX_ID_LEN`] characters,
/// no control characters, not `.`/`..` (Firestore forbids them). Spaces are
/// allowed anywhere, leading and trailing ones included: `c1` and `c1 ` are
/// two documents, and every store keeps them apart.
pub(crate) fn check_id(field: &str, s: &str) -> Result<(), DecodeError> {
    if s.is_empty() {
        return Err(DecodeError::invalid(field, "an id is empty"));
    }
    if s.chars().count() > MAX_ID_LEN {
        return Err(DecodeError::invalid(
            field,
            format!(
                "id `{}` is longer than {MAX_ID_LEN} characters",
                crate::types::truncate(s, 40)
            ),
        ));
    }
    if s == "." || s == ".." || s.chars().any(|c| c.is_control() || c == '/') {
        return Err(DecodeError::invalid(
            field,
            format!(
                "id `{}` is not a valid document id",
                crate::types::truncate(s, 40)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_shape_and_round_trips() {
        for (path, family) in [
            ("conversations/c1", EventFamily::Conversation),
            ("conversations/c1/messages/m1", EventFamily::Message),
            ("blocks/u1/targets/u2", EventFamily::Block),
            ("follows/u1/targets/u2", EventFamily::FollowEdge),
        ] {
            let s = Subject::parse(path, family).unwrap();
            assert_eq!(s.to_string(), path);
            assert_eq!(s.family(), family);
        }
    }

    #[test]
    fn rejects_wrong_shapes() {
        for (path, family) in [
            ("conversations/c1", EventFamily::Message),
            ("conversations//messages/m1", EventFamily::Message),
            ("follows/u1/targets", EventFamily::FollowEdge),
            ("blocks/u1/blocked/u2", EventFamily::Block),
            ("/conversations/c1", EventFamily::Conversation),
        ] {
            assert!(Subject::parse(path, family).is_err(), "{path}");
        }
        let long = format!("conversations/{}", "x".repeat(MAX_ID_LEN + 1));
        let e = Subject::parse(&long, EventFamily::Conversation).unwrap_err();
        assert!(e.to_string().contains("longer than 128"), "{e}");
    }

    #[test]
    fn the_length_limit_counts_characters_not_bytes_or_utf16_units() {
        let shape =
            |id: &str| Subject::parse(&format!("follows/{id}/targets/u2"), EventFamily::FollowEdge);
        // 127 ASCII + one emoji: 128 characters, 129 UTF-16 units, 131 bytes.
        let mixed = format!("{}😀", "a".repeat(127));
        assert_eq!(mixed.chars().count(), MAX_ID_LEN);
        assert_eq!(mixed.encode_utf16().count(), MAX_ID_LEN + 1);
        assert!(shape(&mixed).is_ok());
        // 128 emoji: 256 UTF-16 units, 512 bytes, still 128 characters.
        let emoji = "😀".repeat(MAX_ID_LEN);
        assert!(shape(&emoji).is_ok());
        assert!(shape(&"é".repeat(MAX_ID_LEN)).is_ok());
        // One character more is rejected, whatever its width.
        for too_long in [
            "a".repeat(MAX_ID_LEN + 1),
            format!("{mixed}a"),
            "😀".repeat(MAX_ID_LEN + 1),
        ] {
            let e = shape(&too_long).unwrap_err();
            assert!(e.to_string().contains("longer than 128 characters"), "{e}");
        }
        // The same limit applies to ids inside payloads.
        assert!(check_id("data.payload.authorUserId", &emoji).is_ok());
        assert!(check_id("data.payload.authorUserId", &format!("{emoji}x")).is_err());
    }

    #[test]
    fn spaces_are_part_of_an_id() {
        for id in ["c1 ", " c1", "c 1", " ", "c1  ", ". ", " .."] {
            let s = Subject::parse(&format!("conversations/{id}"), EventFamily::Conversation)
                .unwrap_or_else(|e| panic!("`{id}`: {e}"));
            assert_eq!(s.conversation_id(), Some(id), "kept exactly");
        }
        for bad in [".", "..", "c\u{7f}1", "c\t1", ""] {
            assert!(
                Subject::parse(&format!("conversations/{bad}"), EventFamily::Conversation).is_err(),
                "`{bad}`"
            );
        }
    }
}
