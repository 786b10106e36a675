//! [`MirrorState`]: every mirrored row in a store-independent, comparable form.
//!
//! Surrogate keys are replaced by Firestore ids so that two stores (or a store
//! and the [`crate::model`]) can be compared row for row. Bookkeeping that is
//! not part of the mirrored state (`sync_source`, `applied_at`) is left out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

type Ts = DateTime<Utc>;

/// `dm_conversation`. A placeholder (a message arrived before its conversation)
/// has `placeholder = true` and no version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationRow {
    pub kind: Option<String>,
    pub created_at: Option<Ts>,
    /// `greatest(doc_updated_at, last_message_at)`.
    pub updated_at: Option<Ts>,
    /// The conversation document's own `updatedAt`.
    pub doc_updated_at: Option<Ts>,
    /// Firestore id of the newest live message (greatest `(created_at, firestore_id)`
    /// among messages with `deleted_at` null); derived, never taken from the payload.
    pub last_message_id: Option<String>,
    pub last_message_at: Option<Ts>,
    /// Hex SHA-256 of the sorted participant user ids joined by `,`.
    pub participant_hash: Option<String>,
    pub placeholder: bool,
    pub source_version: Option<Ts>,
    pub last_event_id: Option<Uuid>,
}

/// `dm_participant`, keyed by (conversation, user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantRow {
    pub role: String,
    pub joined_at: Ts,
    pub mute_state: String,
    pub read_pointer_message_id: Option<String>,
}

/// `dm_message`, keyed by (conversation, message). A hard delete nulls every
/// content column, sets `deleted_at` = event time and `tombstone = true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRow {
    pub author_user_id: Option<String>,
    pub body_text: Option<String>,
    pub attachments: Option<serde_json::Value>,
    pub external_media: Option<serde_json::Value>,
    pub created_at: Option<Ts>,
    pub edited_at: Option<Ts>,
    pub deleted_at: Option<Ts>,
    pub client_message_id: Option<String>,
    pub tombstone: bool,
    pub source_version: Ts,
    pub last_event_id: Uuid,
}

/// `dm_block`, keyed by (user, target). Delete: content nulled, `deleted_at` = time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockRow {
    pub created_at: Option<Ts>,
    pub revoked_at: Option<Ts>,
    pub source: Option<String>,
    pub deleted_at: Option<Ts>,
    pub source_version: Ts,
    pub last_event_id: Uuid,
}

/// `follow_edge`, keyed by (follower, target). Delete: content nulled, `deleted_at` = time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowEdgeRow {
    pub state: Option<String>,
    pub source: Option<String>,
    pub created_at: Option<Ts>,
    pub deleted_at: Option<Ts>,
    pub source_version: Ts,
    pub last_event_id: Uuid,
}

/// A `dm_message_audit` row: one per distinct `dm.message.update` /
/// `dm.message.delete` event id that reached the store, applied or stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub event_id: Uuid,
    pub conversation_id: String,
    pub message_id: String,
    /// `edit`, `soft_delete` or `delete`.
    pub action: String,
    pub performed_by: Option<String>,
    pub created_at: Ts,
    /// The event's own `data.payload` object (the version it carries).
    pub payload: serde_json::Value,
}

/// A `follow_event` row: derived from the edge's observations in `(time, id)`
/// order (see `model::History::follow_events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct FollowEventRow {
    pub event_id: Uuid,
    pub follower_user_id: String,
    pub target_user_id: String,
    /// `request`, `accept`, `remove`, `block` or `unblock`.
    pub event_type: String,
    pub created_at: Ts,
}

/// Every mirrored row. The entity tables are a pure function of the newest
/// event per entity, the history (`audit`, `follow_events`) a pure function of
/// the set of distinct events (contract v1.1): neither depends on arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MirrorState {
    pub conversations: BTreeMap<String, ConversationRow>,
    pub participants: BTreeMap<(String, String), ParticipantRow>,
    pub messages: BTreeMap<(String, String), MessageRow>,
    pub blocks: BTreeMap<(String, String), BlockRow>,
    pub follow_edges: BTreeMap<(String, String), FollowEdgeRow>,
    pub audit: Vec<AuditRow>,
    pub follow_events: Vec<FollowEventRow>,
}

impl MirrorState {
    /// The current-state tables only (history left out).
    pub fn entities(&self) -> MirrorState {
        MirrorState {
            audit: Vec::new(),
            follow_events: Vec::new(),
            ..self.clone()
        }
    }

    /// Sort the logs so two snapshots compare equal regardless of read order.
    pub fn normalized(mut self) -> MirrorState {
        self.audit.sort_by_key(|a| a.event_id);
        self.follow_events.sort();
        self
    }

    /// A readable line-by-line difference (`-` expected, `+` actual), empty when equal.
    pub fn diff(expected: &MirrorState, actual: &MirrorState) -> String {
        fn lines(s: &MirrorState) -> Vec<String> {
            let mut out = Vec::new();
            macro_rules! table {
                ($name:literal, $map:expr) => {
                    for (k, v) in $map.iter() {
                        out.push(format!(
                            "{} {:?} {}",
                            $name,
                            k,
                            serde_json::to_string(v).unwrap_or_default()
                        ));
                    }
                };
            }
            table!("dm_conversation", s.conversations);
            table!("dm_participant", s.participants);
            table!("dm_message", s.messages);
            table!("dm_block", s.blocks);
            table!("follow_edge", s.follow_edges);
            for a in &s.audit {
                out.push(format!(
                    "dm_message_audit {}",
                    serde_json::to_string(a).unwrap_or_default()
                ));
            }
            for f in &s.follow_events {
                out.push(format!(
                    "follow_event {}",
                    serde_json::to_string(f).unwrap_or_default()
                ));
            }
            out
        }
        let (e, a) = (lines(expected), lines(actual));
        let es: std::collections::BTreeSet<&String> = e.iter().collect();
        let as_: std::collections::BTreeSet<&String> = a.iter().collect();
        let mut out = String::new();
        for l in es.difference(&as_) {
            out.push_str(&format!("- {l}\n"));
        }
        for l in as_.difference(&es) {
            out.push_str(&format!("+ {l}\n"));
        }
        out
    }
}

/// The deterministic `ParticipantHash`: hex SHA-256 of the sorted user ids joined by `,`.
pub fn participant_hash<'a>(user_ids: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::{Digest, Sha256};
    let mut ids: Vec<&str> = user_ids.into_iter().collect();
    ids.sort_unstable();
    hex::encode(Sha256::digest(ids.join(",").as_bytes()))
}
