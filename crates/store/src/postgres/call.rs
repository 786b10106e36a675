//! One contract event as one call of its family's plpgsql function.
//!
//! Rust only passes typed parameters (named, so a reordering of the function's
//! arguments cannot silently shift them) and reads back the outcome text; all
//! semantics live in `sql/postgres/V2__mirror_functions.sql`.

use mirror_schema::{MirrorEvent, Payload, Subject};
use tokio_postgres::types::ToSql;

/// A parameter value owned by the call.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// The statement and parameters that apply one event.
pub(crate) struct Call {
    pub sql: &'static str,
    pub params: Vec<Param>,
}

impl Call {
    pub fn param_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

const UPSERT_DM_CONVERSATION: &str = "SELECT mirror.sp_store_mirror_upsert_dm_conversation(\
    p_event_id => $1, p_event_type => $2, p_source_time => $3, p_conversation_id => $4, p_type => $5, \
    p_participants => $6, p_created_at => $7, p_updated_at => $8, p_sync_source => $9)";

const UPSERT_DM_MESSAGE: &str = "SELECT mirror.sp_store_mirror_upsert_dm_message(\
    p_event_id => $1, p_event_type => $2, p_source_time => $3, p_conversation_id => $4, p_message_id => $5, \
    p_author_user_id => $6, p_body_text => $7, p_attachments => $8, p_external_media => $9, p_created_at => $10, \
    p_edited_at => $11, p_deleted_at => $12, p_client_message_id => $13, p_sync_source => $14, p_payload => $15)";

const DELETE_DM_MESSAGE: &str = "SELECT mirror.sp_store_mirror_delete_dm_message(\
    p_event_id => $1, p_event_type => $2, p_source_time => $3, p_conversation_id => $4, p_message_id => $5, \
    p_performed_by => $6, p_sync_source => $7, p_payload => $8)";

const UPSERT_DM_BLOCK: &str = "SELECT mirror.sp_store_mirror_upsert_dm_block(\
    p_event_id => $1, p_event_type => $2, p_source_time => $3, p_user_id => $4, p_target_user_id => $5, \
    p_created_at => $6, p_revoked_at => $7, p_source => $8, p_sync_source => $9)";

const DELETE_DM_BLOCK: &str = "SELECT mirror.sp_store_mirror_delete_dm_block(\
    p_event_id => $1, p_event_type => $2, p_source_time => $3, p_user_id => $4, p_target_user_id => $5, \
    p_sync_source => $6)";

const UPSERT_FOLLOW_EDGE: &str = "SELECT mirror.sp_store_mirror_upsert_follow_edge(\
    p_event_id => $1, p_event_type => $2, p_source_time => $3, p_follower_user_id => $4, p_target_user_id => $5, \
    p_state => $6, p_source => $7, p_created_at => $8, p_sync_source => $9)";

const DELETE_FOLLOW_EDGE: &str = "SELECT mirror.sp_store_mirror_delete_follow_edge(\
    p_event_id => $1, p_event_type => $2, p_source_time => $3, p_follower_user_id => $4, p_target_user_id => $5, \
    p_sync_source => $6)";

/// Every statement [`call`] can produce, for preparing them up front.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const ALL_STATEMENTS: [&str; 7] = [
    UPSERT_DM_CONVERSATION,
    UPSERT_DM_MESSAGE,
    DELETE_DM_MESSAGE,
    UPSERT_DM_BLOCK,
    DELETE_DM_BLOCK,
    UPSERT_FOLLOW_EDGE,
    DELETE_FOLLOW_EDGE,
];

macro_rules! params {
    ($($value:expr),* $(,)?) => { vec![$(Box::new($value) as Param),*] };
}

/// The function call that applies `event`.
pub(crate) fn call(event: &MirrorEvent) -> Call {
    let id = event.id();
    let ty = event.event_type().as_str().to_owned();
    let time = event.time();
    let sync = event.sync_source().to_owned();
    match (event.subject(), event.payload()) {
        (Subject::Conversation { conversation_id }, Payload::Conversation(p)) => Call {
            sql: UPSERT_DM_CONVERSATION,
            params: params![
                id,
                ty,
                time,
                conversation_id.clone(),
                p.kind.as_str().to_owned(),
                serde_json::to_value(&p.participants).expect("participants serialize infallibly"),
                p.created_at,
                p.updated_at,
                sync,
            ],
        },
        (
            Subject::Message {
                conversation_id,
                message_id,
            },
            Payload::Message(p),
        ) => Call {
            sql: UPSERT_DM_MESSAGE,
            params: params![
                id,
                ty,
                time,
                conversation_id.clone(),
                message_id.clone(),
                p.author_user_id.clone(),
                p.body_text.clone(),
                p.attachments.clone().map(serde_json::Value::Array),
                p.external_media.clone().map(serde_json::Value::Array),
                p.created_at,
                p.edited_at,
                p.deleted_at,
                p.client_message_id.clone(),
                sync,
                event.payload().to_json(),
            ],
        },
        (
            Subject::Message {
                conversation_id,
                message_id,
            },
            Payload::MessageDelete(p),
        ) => Call {
            sql: DELETE_DM_MESSAGE,
            params: params![
                id,
                ty,
                time,
                conversation_id.clone(),
                message_id.clone(),
                p.performed_by.clone(),
                sync,
                event.payload().to_json(),
            ],
        },
        (
            Subject::Block {
                user_id,
                target_user_id,
            },
            Payload::Block(p),
        ) => Call {
            sql: UPSERT_DM_BLOCK,
            params: params![
                id,
                ty,
                time,
                user_id.clone(),
                target_user_id.clone(),
                p.created_at,
                p.revoked_at,
                p.source.as_str().to_owned(),
                sync,
            ],
        },
        (
            Subject::Block {
                user_id,
                target_user_id,
            },
            Payload::BlockDelete,
        ) => Call {
            sql: DELETE_DM_BLOCK,
            params: params![id, ty, time, user_id.clone(), target_user_id.clone(), sync],
        },
        (
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            },
            Payload::FollowEdge(p),
        ) => Call {
            sql: UPSERT_FOLLOW_EDGE,
            params: params![
                id,
                ty,
                time,
                follower_user_id.clone(),
                target_user_id.clone(),
                p.state.as_str().to_owned(),
                p.source.as_str().to_owned(),
                p.created_at,
                sync,
            ],
        },
        (
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            },
            Payload::FollowEdgeDelete,
        ) => Call {
            sql: DELETE_FOLLOW_EDGE,
            params: params![
                id,
                ty,
                time,
                follower_user_id.clone(),
                target_user_id.clone(),
                sync
            ],
        },
        _ => unreachable!("MirrorEvent guarantees the payload fits the subject"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use mirror_schema::*;

    fn events() -> Vec<MirrorEvent> {
        let time = Utc.with_ymd_and_hms(2025, 10, 8, 12, 0, 0).unwrap();
        let conversation = Subject::Conversation {
            conversation_id: "c1".into(),
        };
        let message = Subject::Message {
            conversation_id: "c1".into(),
            message_id: "m1".into(),
        };
        let block = Subject::Block {
            user_id: "u1".into(),
            target_user_id: "u2".into(),
        };
        let follow = Subject::FollowEdge {
            follower_user_id: "u1".into(),
            target_user_id: "u2".into(),
        };
        EventType::ALL
            .iter()
            .map(|&ty| {
                let (subject, payload) = match (ty.family(), ty.op()) {
                    (EventFamily::Conversation, _) => (
                        conversation.clone(),
                        Payload::Conversation(ConversationPayload {
                            kind: ConversationKind::Direct,
                            participants: vec![],
                            created_at: time,
                            updated_at: time,
                            last_message_id: None,
                        }),
                    ),
                    (EventFamily::Message, Op::Delete) => (
                        message.clone(),
                        Payload::MessageDelete(MessageDeletePayload::default()),
                    ),
                    (EventFamily::Message, _) => (
                        message.clone(),
                        Payload::Message(MessagePayload {
                            author_user_id: "u1".into(),
                            body_text: "hi".into(),
                            attachments: None,
                            external_media: None,
                            created_at: time,
                            edited_at: None,
                            deleted_at: None,
                            client_message_id: None,
                        }),
                    ),
                    (EventFamily::Block, Op::Delete) => (block.clone(), Payload::BlockDelete),
                    (EventFamily::Block, _) => (
                        block.clone(),
                        Payload::Block(BlockPayload {
                            created_at: time,
                            revoked_at: None,
                            source: BlockSource::Client,
                        }),
                    ),
                    (EventFamily::FollowEdge, Op::Delete) => {
                        (follow.clone(), Payload::FollowEdgeDelete)
                    }
                    (EventFamily::FollowEdge, _) => (
                        follow.clone(),
                        Payload::FollowEdge(FollowEdgePayload {
                            state: FollowState::Pending,
                            source: FollowSource::Web,
                            created_at: time,
                        }),
                    ),
                };
                MirrorEvent::new(ty, subject.clone(), time, "firestore://x", payload).unwrap()
            })
            .collect()
    }

    #[test]
    fn every_event_type_binds_one_value_per_placeholder() {
        for e in events() {
            let call = call(&e);
            let placeholders = (1..=call.params.len() + 1)
                .filter(|n| call.sql.contains(&format!("${n}")))
                .count();
            assert_eq!(
                placeholders,
                call.params.len(),
                "{}: {}",
                e.event_type(),
                call.sql
            );
            let noun = match (e.event_type().family(), e.event_type().op()) {
                (EventFamily::Conversation, _) => "upsert_dm_conversation",
                (EventFamily::Message, Op::Delete) => "delete_dm_message",
                (EventFamily::Message, _) => "upsert_dm_message",
                (EventFamily::Block, Op::Delete) => "delete_dm_block",
                (EventFamily::Block, _) => "upsert_dm_block",
                (EventFamily::FollowEdge, Op::Delete) => "delete_follow_edge",
                (EventFamily::FollowEdge, _) => "upsert_follow_edge",
            };
            assert!(
                call.sql
                    .starts_with(&format!("SELECT mirror.sp_store_mirror_{noun}(")),
                "{}",
                call.sql
            );
        }
    }

    #[test]
    fn a_conversation_sorts_before_its_messages() {
        use crate::plan::lock_key;
        let events = events();
        let conv = events
            .iter()
            .find(|e| e.event_type() == EventType::DmConversationUpdate)
            .unwrap();
        let msg = events
            .iter()
            .find(|e| e.event_type() == EventType::DmMessageDelete)
            .unwrap();
        let block = events
            .iter()
            .find(|e| e.event_type() == EventType::DmBlockCreate)
            .unwrap();
        assert!(lock_key(conv) <= lock_key(msg));
        assert!(lock_key(msg) < lock_key(block));
    }
}
