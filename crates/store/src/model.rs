//! The reference semantics of the mirror, in memory: what every store must do.
//!
//! [`Model::apply`] is the specification the SQL functions and procedures
//! implement; the conformance suite and the property tests compare each store's
//! [`crate::MirrorStore::snapshot`] with a model fed the same events. Keep it
//! simple and obviously right rather than fast.
//!
//! History (contract v1.1) is a function of the *set* of distinct events that
//! reached the store, never of their arrival order: one audit row per distinct
//! `dm.message.update`/`.delete` id (applied or stale) carrying the event's own
//! payload, and one follow-edge observation per distinct follow-edge id, from
//! which `follow_event` rows are derived in `(time, id)` order ([`History`]).

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
    /// The current-state tables (the logs are left empty here; see `history`).
    state: MirrorState,
    history: History,
}

/// The history tables as a function of the distinct events recorded:
/// `dm_message_audit` rows and follow-edge observations.
#[derive(Debug, Clone, Default)]
pub struct History {
    audit: BTreeMap<Uuid, AuditRow>,
    /// Per edge, the state each distinct event observed (None: deleted), by `(time, id)`.
    observations: BTreeMap<(String, String), BTreeMap<Version, Option<FollowState>>>,
}

impl History {
    /// Record one event (idempotent by id; events without history are ignored).
    pub fn record(&mut self, event: &MirrorEvent) {
        if let Some(row) = audit_row(event) {
            self.audit.entry(row.event_id).or_insert(row);
        }
        if let Subject::FollowEdge {
            follower_user_id,
            target_user_id,
        } = event.subject()
        {
            let state = match event.payload() {
                Payload::FollowEdge(p) => Some(p.state),
                _ => None,
            };
            self.observations
                .entry((follower_user_id.clone(), target_user_id.clone()))
                .or_default()
                .entry((event.time(), event.id()))
                .or_insert(state);
        }
    }

    /// The history of a set of events (repeats count once).
    pub fn of<'a>(events: impl IntoIterator<Item = &'a MirrorEvent>) -> History {
        let mut h = History::default();
        for e in events {
            h.record(e);
        }
        h
    }

    pub fn audit(&self) -> Vec<AuditRow> {
        self.audit.values().cloned().collect()
    }

    /// `follow_event`: per edge, in `(time, id)` order, the transition from the
    /// previous observation's state (None if there is none) to this one's,
    /// wherever [`follow_transition`] names one.
    pub fn follow_events(&self) -> Vec<FollowEventRow> {
        let mut out = Vec::new();
        for ((fid, tid), observed) in &self.observations {
            let mut prev = None;
            for (&(time, id), &state) in observed {
                if let Some(kind) = follow_transition(prev, state) {
                    out.push(FollowEventRow {
                        event_id: id,
                        follower_user_id: fid.clone(),
                        target_user_id: tid.clone(),
                        event_type: kind.to_owned(),
                        created_at: time,
                    });
                }
                prev = state;
            }
        }
        out
    }
}

/// The `dm_message_audit` row of an update or delete event (None for other types).
pub fn audit_row(event: &MirrorEvent) -> Option<AuditRow> {
    let Subject::Message {
        conversation_id,
        message_id,
    } = event.subject()
    else {
        return None;
    };
    let (action, performed_by) = match event.payload() {
        Payload::Message(p) if event.event_type().op() == Op::Update => (
            if p.deleted_at.is_some() {
                "soft_delete"
            } else {
                "edit"
            },
            Some(p.author_user_id.clone()),
        ),
        Payload::MessageDelete(d) => ("delete", d.performed_by.clone()),
        _ => return None,
    };
    Some(AuditRow {
        event_id: event.id(),
        conversation_id: conversation_id.clone(),
        message_id: message_id.clone(),
        action: action.to_owned(),
        performed_by,
        created_at: event.time(),
        payload: event.payload().to_json(),
    })
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

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// The state after everything applied so far, history included.
    pub fn state(&self) -> MirrorState {
        MirrorState {
            audit: self.history.audit(),
            follow_events: self.history.follow_events(),
            ..self.state.clone()
        }
        .normalized()
    }

    /// Apply one event with the contract's semantics.
    pub fn apply(&mut self, event: &MirrorEvent) -> ApplyOutcome {
        if !self.applied.insert(event.id()) {
            return ApplyOutcome::Duplicate;
        }
        // Stale or not, a new event is part of the history.
        self.history.record(event);
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
        let row = match event.payload() {
            Payload::Message(p) => MessageRow {
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
            },
            Payload::MessageDelete(_) => MessageRow {
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
            _ => unreachable!("schema guarantees the payload"),
        };
        self.state.messages.insert(key, row);
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
        self.state.follow_edges.insert(key, row);
        true
    }
}

/// The order-independence guarantee's right-hand side: the current-state
/// tables as applying only the newest `(time, id)` event of each entity gives
/// them, and the history of the set of distinct events ([`History::of`]).
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
    let history = History::of(events);
    MirrorState {
        audit: history.audit(),
        follow_events: history.follow_events(),
        ..model.state().entities()
    }
    .normalized()
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

    fn follow(f: &str, state: Option<FollowState>, secs: i64) -> MirrorEvent {
        use chrono::TimeZone;
        let time =
            Utc.with_ymd_and_hms(2025, 10, 8, 12, 0, 0).unwrap() + chrono::Duration::seconds(secs);
        let subject = Subject::FollowEdge {
            follower_user_id: f.into(),
            target_user_id: "t".into(),
        };
        let (ty, payload) = match state {
            Some(state) => (
                mirror_schema::EventType::FollowEdgeUpdate,
                Payload::FollowEdge(mirror_schema::FollowEdgePayload {
                    state,
                    source: mirror_schema::FollowSource::Web,
                    created_at: time,
                }),
            ),
            None => (
                mirror_schema::EventType::FollowEdgeDelete,
                Payload::FollowEdgeDelete,
            ),
        };
        MirrorEvent::new(ty, subject, time, "firestore://x", payload).unwrap()
    }

    #[test]
    fn a_late_follow_event_re_derives_its_neighbours() {
        let a = follow("u1", Some(Pending), 1);
        let b = follow("u1", Some(Blocked), 2);
        let c = follow("u1", Some(Accepted), 3);
        let mut in_order = Model::new();
        for e in [&a, &b, &c] {
            in_order.apply(e);
        }
        let mut late = Model::new();
        for e in [&c, &a, &b, &a] {
            late.apply(e);
        }
        assert_eq!(in_order.state(), late.state());
        let kinds: Vec<String> = late
            .state()
            .follow_events
            .iter()
            .map(|f| f.event_type.clone())
            .collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(sorted, ["block", "request", "unblock"]);
        assert_eq!(
            late.state(),
            newest_only(&[c.clone(), b.clone(), a.clone()])
        );
    }
}
