//! Reading every mirrored row back as a [`MirrorState`] (Firestore ids in
//! place of surrogate keys), in one repeatable-read snapshot.

use tokio_postgres::Transaction;

use super::error::pg;
use crate::state::{
    AuditRow, BlockRow, ConversationRow, FollowEdgeRow, FollowEventRow, MessageRow, MirrorState,
    ParticipantRow,
};
use crate::StoreError;

const CONVERSATIONS: &str = "\
    SELECT c.firestore_id, c.type, c.created_at, c.updated_at, c.doc_updated_at, m.firestore_id AS last_message,
           c.last_message_at, c.participant_hash, c.is_placeholder, c.source_version, c.last_event_id
      FROM mirror.dm_conversation AS c
      LEFT JOIN mirror.dm_message AS m ON m.message_id = c.last_message_id";

const PARTICIPANTS: &str = "\
    SELECT c.firestore_id, p.user_id, p.role, p.joined_at, p.mute_state, p.firestore_pointer
      FROM mirror.dm_participant AS p
      JOIN mirror.dm_conversation AS c ON c.conversation_id = p.conversation_id";

const MESSAGES: &str = "\
    SELECT c.firestore_id, m.firestore_id, m.author_user_id, m.body_text, m.attachment_json, m.external_media_json,
           m.created_at, m.edited_at, m.deleted_at, m.client_message_id, m.tombstone, m.source_version, m.event_id
      FROM mirror.dm_message AS m
      JOIN mirror.dm_conversation AS c ON c.conversation_id = m.conversation_id";

const BLOCKS: &str = "\
    SELECT user_id, target_user_id, created_at, revoked_at, source, deleted_at, source_version, last_event_id
      FROM mirror.dm_block";

const FOLLOW_EDGES: &str = "\
    SELECT follower_user_id, target_user_id, state, source, created_at, deleted_at, source_version, event_id
      FROM mirror.follow_edge";

const AUDIT: &str = "\
    SELECT a.event_id, c.firestore_id, m.firestore_id, a.action, a.performed_by, a.created_at, a.payload_json
      FROM mirror.dm_message_audit AS a
      JOIN mirror.dm_message AS m ON m.message_id = a.message_id
      JOIN mirror.dm_conversation AS c ON c.conversation_id = m.conversation_id";

const FOLLOW_EVENTS: &str = "\
    SELECT event_id, follower_user_id, target_user_id, event_type, created_at FROM mirror.follow_event";

/// Read the whole mirror inside `tx` (which should be REPEATABLE READ).
pub(crate) async fn read(tx: &Transaction<'_>) -> Result<MirrorState, StoreError> {
    let mut state = MirrorState::default();
    for r in tx.query(CONVERSATIONS, &[]).await.map_err(pg)? {
        state.conversations.insert(
            r.try_get(0).map_err(pg)?,
            ConversationRow {
                kind: r.try_get(1).map_err(pg)?,
                created_at: r.try_get(2).map_err(pg)?,
                updated_at: r.try_get(3).map_err(pg)?,
                doc_updated_at: r.try_get(4).map_err(pg)?,
                last_message_id: r.try_get(5).map_err(pg)?,
                last_message_at: r.try_get(6).map_err(pg)?,
                participant_hash: r.try_get(7).map_err(pg)?,
                placeholder: r.try_get(8).map_err(pg)?,
                source_version: r.try_get(9).map_err(pg)?,
                last_event_id: r.try_get(10).map_err(pg)?,
            },
        );
    }
    for r in tx.query(PARTICIPANTS, &[]).await.map_err(pg)? {
        state.participants.insert(
            (r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?),
            ParticipantRow {
                role: r.try_get(2).map_err(pg)?,
                joined_at: r.try_get(3).map_err(pg)?,
                mute_state: r.try_get(4).map_err(pg)?,
                read_pointer_message_id: r.try_get(5).map_err(pg)?,
            },
        );
    }
    for r in tx.query(MESSAGES, &[]).await.map_err(pg)? {
        state.messages.insert(
            (r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?),
            MessageRow {
                author_user_id: r.try_get(2).map_err(pg)?,
                body_text: r.try_get(3).map_err(pg)?,
                attachments: r.try_get(4).map_err(pg)?,
                external_media: r.try_get(5).map_err(pg)?,
                created_at: r.try_get(6).map_err(pg)?,
                edited_at: r.try_get(7).map_err(pg)?,
                deleted_at: r.try_get(8).map_err(pg)?,
                client_message_id: r.try_get(9).map_err(pg)?,
                tombstone: r.try_get(10).map_err(pg)?,
                source_version: r.try_get(11).map_err(pg)?,
                last_event_id: r.try_get(12).map_err(pg)?,
            },
        );
    }
    for r in tx.query(BLOCKS, &[]).await.map_err(pg)? {
        state.blocks.insert(
            (r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?),
            BlockRow {
                created_at: r.try_get(2).map_err(pg)?,
                revoked_at: r.try_get(3).map_err(pg)?,
                source: r.try_get(4).map_err(pg)?,
                deleted_at: r.try_get(5).map_err(pg)?,
                source_version: r.try_get(6).map_err(pg)?,
                last_event_id: r.try_get(7).map_err(pg)?,
            },
        );
    }
    for r in tx.query(FOLLOW_EDGES, &[]).await.map_err(pg)? {
        state.follow_edges.insert(
            (r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?),
            FollowEdgeRow {
                state: r.try_get(2).map_err(pg)?,
                source: r.try_get(3).map_err(pg)?,
                created_at: r.try_get(4).map_err(pg)?,
                deleted_at: r.try_get(5).map_err(pg)?,
                source_version: r.try_get(6).map_err(pg)?,
                last_event_id: r.try_get(7).map_err(pg)?,
            },
        );
    }
    for r in tx.query(AUDIT, &[]).await.map_err(pg)? {
        state.audit.push(AuditRow {
            event_id: r.try_get(0).map_err(pg)?,
            conversation_id: r.try_get(1).map_err(pg)?,
            message_id: r.try_get(2).map_err(pg)?,
            action: r.try_get(3).map_err(pg)?,
            performed_by: r.try_get(4).map_err(pg)?,
            created_at: r.try_get(5).map_err(pg)?,
            payload: r
                .try_get::<_, Option<serde_json::Value>>(6)
                .map_err(pg)?
                .unwrap_or(serde_json::Value::Null),
        });
    }
    for r in tx.query(FOLLOW_EVENTS, &[]).await.map_err(pg)? {
        state.follow_events.push(FollowEventRow {
            event_id: r.try_get(0).map_err(pg)?,
            follower_user_id: r.try_get(1).map_err(pg)?,
            target_user_id: r.try_get(2).map_err(pg)?,
            event_type: r.try_get(3).map_err(pg)?,
            created_at: r.try_get(4).map_err(pg)?,
        });
    }
    Ok(state.normalized())
}
