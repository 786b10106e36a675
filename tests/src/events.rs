//! Small builders for contract events, so tests read as histories.

use chrono::{DateTime, TimeZone, Utc};
use mirror_schema::*;

/// `2025-10-08T12:00:00Z` plus `secs` seconds (and `micros`).
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 10, 8, 12, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

fn ev(ty: EventType, subject: Subject, time: DateTime<Utc>, payload: Payload) -> MirrorEvent {
    let source = MirrorEvent::firestore_source("demo", &subject);
    MirrorEvent::new(ty, subject, time, source, payload).expect("test event is valid")
}

pub fn participant(user: &str, role: ParticipantRole) -> Participant {
    Participant {
        user_id: user.into(),
        role,
        joined_at: t(0),
        mute_state: MuteState::None,
        read_pointer_message_id: None,
    }
}

pub fn conversation(op: Op, cid: &str, users: &[&str], time: DateTime<Utc>) -> MirrorEvent {
    let ty = EventType::of(EventFamily::Conversation, op).unwrap();
    ev(
        ty,
        Subject::Conversation { conversation_id: cid.into() },
        time,
        Payload::Conversation(ConversationPayload {
            kind: if users.len() == 2 { ConversationKind::Direct } else { ConversationKind::Group },
            participants: users
                .iter()
                .enumerate()
                .map(|(i, u)| participant(u, if i == 0 { ParticipantRole::Owner } else { ParticipantRole::Member }))
                .collect(),
            created_at: t(0),
            updated_at: time,
            last_message_id: None,
        }),
    )
}

pub fn message(op: Op, cid: &str, mid: &str, body: &str, time: DateTime<Utc>) -> MirrorEvent {
    message_with(op, cid, mid, body, time, None)
}

pub fn message_with(
    op: Op,
    cid: &str,
    mid: &str,
    body: &str,
    time: DateTime<Utc>,
    soft_deleted_at: Option<DateTime<Utc>>,
) -> MirrorEvent {
    let ty = EventType::of(EventFamily::Message, op).unwrap();
    let subject = Subject::Message {
        conversation_id: cid.into(),
        message_id: mid.into(),
    };
    let payload = if op == Op::Delete {
        Payload::MessageDelete(MessageDeletePayload { performed_by: Some("u1".into()) })
    } else {
        Payload::Message(MessagePayload {
            author_user_id: "u1".into(),
            body_text: body.into(),
            attachments: Some(vec![serde_json::json!({"kind": "image", "url": "gs://b/x.png"})]),
            external_media: None,
            created_at: t(1),
            edited_at: (op == Op::Update).then_some(time),
            deleted_at: soft_deleted_at,
            client_message_id: Some(format!("cm-{mid}")),
        })
    };
    ev(ty, subject, time, payload)
}

pub fn block(op: Op, user: &str, target: &str, time: DateTime<Utc>) -> MirrorEvent {
    let ty = EventType::of(EventFamily::Block, op).unwrap();
    let payload = if op == Op::Delete {
        Payload::BlockDelete
    } else {
        Payload::Block(BlockPayload {
            created_at: t(0),
            revoked_at: None,
            source: BlockSource::Client,
        })
    };
    ev(
        ty,
        Subject::Block {
            user_id: user.into(),
            target_user_id: target.into(),
        },
        time,
        payload,
    )
}

pub fn follow(op: Op, follower: &str, target: &str, state: FollowState, time: DateTime<Utc>) -> MirrorEvent {
    let ty = EventType::of(EventFamily::FollowEdge, op).unwrap();
    let payload = if op == Op::Delete {
        Payload::FollowEdgeDelete
    } else {
        Payload::FollowEdge(FollowEdgePayload {
            state,
            source: FollowSource::Mobile,
            created_at: t(0),
        })
    };
    ev(
        ty,
        Subject::FollowEdge {
            follower_user_id: follower.into(),
            target_user_id: target.into(),
        },
        time,
        payload,
    )
}
