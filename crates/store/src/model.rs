//! The reference semantics of the mirror, in memory: what every store must do.
//!
//! [`Model::apply`] is the specification the SQL functions and procedures
//! implement; the conformance suite and the property tests compare each store's
//! [`crate::MirrorStore::snapshot`] with a model fed the same events. Keep it
//! simple and obviously right rather than fast.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use mirror_schema::{FollowState, MirrorEvent, Op, Payload, Subject};
use uuid::Uuid;

use crate::state::{
    participant_hash, AuditRow, BlockRow, ConversationRow, FollowEdgeRow, FollowEventRow,
    MessageRow, MirrorState, ParticipantRow,
};
use crate::ApplyOutcome;

/// An in-memory mirror with the contract's semantics.
#[derive(Debug, Clone, Default)]
pub struct Model {
    applied: HashSet<Uuid>,
    state: MirrorState,
}

/// `(time, id)`: the total order of versions of one entity.
type Version = (DateTime<Utc>, Uuid);

fn newer(event: &MirrorEvent, stored: Option<Version>) -> bool {
    match stored {
        None => true,
        Some(v) => (event.time(), event.id()) > v,
    }
}

/// The `follow_event` type for a state transition, if it is one.
pub fn follow_transition(
    prev: Option<FollowState>,
    next: Option<FollowState>,
) -> Option<&'static str> {
    use FollowState::*;
    match (prev, next) {
        (a, b) if a == b => None,
        (Some(Blocked), None) => Some("unblock"),
        (Some(_), None) => Some("remove"),
        (_, Some(Blocked)) => Some("block"),
        (Some(Blocked), Some(_)) => Some("unblock"),
        (_, Some(Pending)) => Some("request"),
        (_, Some(Accepted)) => Some("accept"),
        (None, None) => None,
    }
}

fn follow_state(s: &str) -> Option<FollowState> {
    match s {
        "pending" => Some(FollowState::Pending),
        "accepted" => Some(FollowState::Accepted),
        "blocked" => Some(FollowState::Blocked),
        _ => None,
    }
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// The state after everything applied so far.
    pub fn state(&self) -> MirrorState {
        self.state.clone().normalized()
    }

    /// Apply one event with the contract's semantics.
    pub fn apply(&mut self, event: &MirrorEvent) -> ApplyOutcome {
        if !self.applied.insert(event.id()) {
            return ApplyOutcome::Duplicate;
        }
        let applied = match event.subject() {
            Subject::Conversation { conversation_id } => self.conversation(event, conversation_id),
            Subject::Message {
                conversation_id,
                message_id,
            } => self.message(event, conversation_id, message_id),
            Subject::Block {
                user_id,
                target_user_id,
            } => self.block(event, user_id, target_user_id),
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            } => self.follow(event, follower_user_id, target_user_id),
        };
        if applied {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Stale
        }
    }

    fn conversation(&mut self, event: &MirrorEvent, cid: &str) -> bool {
        let Payload::Conversation(p) = event.payload() else {
            unreachable!("schema guarantees the payload")
        };
        let stored = self
            .state
            .conversations
            .get(cid)
            .and_then(|c| c.source_version.zip(c.last_event_id));
        if !newer(event, stored) {
            return false;
        }
        self.state.participants.retain(|(c, _), _| c != cid);
        for part in &p.participants {
            self.state.participants.insert(
                (cid.to_owned(), part.user_id.clone()),
                ParticipantRow {
                    role: part.role.as_str().to_owned(),
                    joined_at: part.joined_at,
                    mute_state: part.mute_state.as_str().to_owned(),
                    read_pointer_message_id: part.read_pointer_message_id.clone(),
                },
            );
        }
        let row = ConversationRow {
            kind: Some(p.kind.as_str().to_owned()),
            created_at: Some(p.created_at),
            updated_at: None,
            doc_updated_at: Some(p.updated_at),
            last_message_id: None,
            last_message_at: None,
            participant_hash: Some(participant_hash(
                p.participants.iter().map(|x| x.user_id.as_str()),
            )),
            placeholder: false,
            source_version: Some(event.time()),
            last_event_id: Some(event.id()),
        };
        self.state.conversations.insert(cid.to_owned(), row);
        self.refresh_summary(cid);
        true
    }

    fn message(&mut self, event: &MirrorEvent, cid: &str, mid: &str) -> bool {
        self.ensure_conversation(cid);
        let key = (cid.to_owned(), mid.to_owned());
        let stored = self
            .state
            .messages
            .get(&key)
            .map(|m| (m.source_version, m.last_event_id));
        if !newer(event, stored) {
            return false;
        }
        let (row, audit) = match event.payload() {
            Payload::Message(p) => {
                let row = MessageRow {
                    author_user_id: Some(p.author_user_id.clone()),
                    body_text: Some(p.body_text.clone()),
                    attachments: p.attachments.clone().map(serde_json::Value::Array),
                    external_media: p.external_media.clone().map(serde_json::Value::Array),
                    created_at: Some(p.created_at),
                    edited_at: p.edited_at,
                    deleted_at: p.deleted_at,
                    client_message_id: p.client_message_id.clone(),
                    tombstone: false,
                    source_version: event.time(),
                    last_event_id: event.id(),
                };
                let audit = (event.event_type().op() == Op::Update).then(|| {
                    let action = if p.deleted_at.is_some() {
                        "soft_delete"
                    } else {
                        "edit"
                    };
                    (action, Some(p.author_user_id.clone()))
                });
                (row, audit)
            }
            Payload::MessageDelete(d) => (
                MessageRow {
                    author_user_id: None,
                    body_text: None,
                    attachments: None,
                    external_media: None,
                    created_at: None,
                    edited_at: None,
                    deleted_at: Some(event.time()),
                    client_message_id: None,
                    tombstone: true,
                    source_version: event.time(),
                    last_event_id: event.id(),
                },
                Some(("delete", d.performed_by.clone())),
            ),
            _ => unreachable!("schema guarantees the payload"),
        };
        self.state.messages.insert(key, row);
        if let Some((action, performed_by)) = audit {
            self.state.audit.push(AuditRow {
                event_id: event.id(),
                conversation_id: cid.to_owned(),
                message_id: mid.to_owned(),
                action: action.to_owned(),
                performed_by,
                created_at: event.time(),
            });
        }
        self.refresh_summary(cid);
        true
    }

    fn ensure_conversation(&mut self, cid: &str) {
        self.state
            .conversations
            .entry(cid.to_owned())
            .or_insert(ConversationRow {
                kind: None,
                created_at: None,
                updated_at: None,
                doc_updated_at: None,
                last_message_id: None,
                last_message_at: None,
                participant_hash: None,
                placeholder: true,
                source_version: None,
                last_event_id: None,
            });
    }

    /// `last_message_*` and `updated_at` from the live messages of `cid`.
    fn refresh_summary(&mut self, cid: &str) {
        let last = self
            .state
            .messages
            .iter()
            .filter(|((c, _), m)| c == cid && m.deleted_at.is_none())
            .filter_map(|((_, mid), m)| m.created_at.map(|t| (t, mid.clone())))
            .max();
        let conv = self
            .state
            .conversations
            .get_mut(cid)
            .expect("conversation exists");
        conv.last_message_at = last.as_ref().map(|(t, _)| *t);
        conv.last_message_id = last.map(|(_, m)| m);
        conv.updated_at = match (conv.doc_updated_at, conv.last_message_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    fn block(&mut self, event: &MirrorEvent, uid: &str, tid: &str) -> bool {
        let key = (uid.to_owned(), tid.to_owned());
        let stored = self
            .state
            .blocks
            .get(&key)
            .map(|r| (r.source_version, r.last_event_id));
        if !newer(event, stored) {
            return false;
        }
        let row = match event.payload() {
            Payload::Block(p) => BlockRow {
                created_at: Some(p.created_at),
                revoked_at: p.revoked_at,
                source: Some(p.source.as_str().to_owned()),
                deleted_at: None,
                source_version: event.time(),
                last_event_id: event.id(),
            },
            Payload::BlockDelete => BlockRow {
                created_at: None,
                revoked_at: None,
                source: None,
                deleted_at: Some(event.time()),
                source_version: event.time(),
                last_event_id: event.id(),
            },
            _ => unreachable!("schema guarantees the payload"),
        };
        self.state.blocks.insert(key, row);
        true
    }

    fn follow(&mut self, event: &MirrorEvent, fid: &str, tid: &str) -> bool {
        let key = (fid.to_owned(), tid.to_owned());
        let prev = self.state.follow_edges.get(&key);
        if !newer(event, prev.map(|r| (r.source_version, r.last_event_id))) {
            return false;
        }
        let prev_state = prev.and_then(|r| r.state.as_deref()).and_then(follow_state);
        let row = match event.payload() {
            Payload::FollowEdge(p) => FollowEdgeRow {
                state: Some(p.state.as_str().to_owned()),
                source: Some(p.source.as_str().to_owned()),
                created_at: Some(p.created_at),
                deleted_at: None,
                source_version: event.time(),
                last_event_id: event.id(),
            },
            Payload::FollowEdgeDelete => FollowEdgeRow {
                state: None,
                source: None,
                created_at: None,
                deleted_at: Some(event.time()),
                source_version: event.time(),
                last_event_id: event.id(),
            },
            _ => unreachable!("schema guarantees the payload"),
        };
        let next_state = row.state.as_deref().and_then(follow_state);
        if let Some(kind) = follow_transition(prev_state, next_state) {
            self.state.follow_events.push(FollowEventRow {
                event_id: event.id(),
                follower_user_id: fid.to_owned(),
                target_user_id: tid.to_owned(),
                event_type: kind.to_owned(),
                created_at: event.time(),
            });
        }
        self.state.follow_edges.insert(key, row);
        true
    }
}

/// The entity state that applying only the newest event of each entity gives:
/// the order-independence guarantee's right-hand side.
pub fn newest_only(events: &[MirrorEvent]) -> MirrorState {
    let mut newest: BTreeMap<String, &MirrorEvent> = BTreeMap::new();
    for e in events {
        let slot = newest.entry(e.entity_key()).or_insert(e);
        if (e.time(), e.id()) > (slot.time(), slot.id()) {
            *slot = e;
        }
    }
    let mut model = Model::new();
    // Conversations first only for readability; the model is order-independent.
    for e in newest.values() {
        model.apply(e);
    }
    model.state().entities()
}

#[cfg(test)]
mod tests {
    use super::*;
    use FollowState::*;

    #[test]
    fn follow_transitions() {
        assert_eq!(follow_transition(None, Some(Pending)), Some("request"));
        assert_eq!(
            follow_transition(Some(Pending), Some(Accepted)),
            Some("accept")
        );
        assert_eq!(follow_transition(None, Some(Accepted)), Some("accept"));
        assert_eq!(follow_transition(Some(Accepted), None), Some("remove"));
        assert_eq!(
            follow_transition(Some(Accepted), Some(Blocked)),
            Some("block")
        );
        assert_eq!(
            follow_transition(Some(Blocked), Some(Accepted)),
            Some("unblock")
        );
        assert_eq!(follow_transition(Some(Blocked), None), Some("unblock"));
        assert_eq!(follow_transition(Some(Accepted), Some(Accepted)), None);
        assert_eq!(follow_transition(None, None), None);
    }
}
