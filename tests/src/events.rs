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
        Subject::Conversation {
            conversation_id: cid.into(),
        },
        time,
        Payload::Conversation(ConversationPayload {
            kind: if users.len() == 2 {
                ConversationKind::Direct
            } else {
                ConversationKind::Group
            },
            participants: users
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    participant(
                        u,
                        if i == 0 {
                            ParticipantRole::Owner
                        } else {
                            ParticipantRole::Member
                        },
                    )
                })
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
        Payload::MessageDelete(MessageDeletePayload {
            performed_by: Some("u1".into()),
        })
    } else {
        Payload::Message(MessagePayload {
            author_user_id: "u1".into(),
            body_text: body.into(),
            attachments: Some(vec![
                serde_json::json!({"kind": "image", "url": "gs://b/x.png"}),
            ]),
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

pub fn follow(
    op: Op,
    follower: &str,
    target: &str,
    state: FollowState,
    time: DateTime<Utc>,
) -> MirrorEvent {
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

/// A random history over a handful of entities of every family: creates,
/// updates, soft and hard deletes, blocks, follow transitions, with some events
/// repeated (`duplicates` extra copies drawn from the history). Times may tie.
///
/// Payload choices are derived from the event's id inputs (type, subject,
/// time), never drawn independently: one id is one change, as the contract
/// requires of every producer, so two events with the same id are identical.
pub fn random_history(
    rng: &mut impl rand::Rng,
    events: usize,
    duplicates: usize,
) -> Vec<MirrorEvent> {
    use rand::seq::IndexedRandom;
    let convs = ["c1", "c2", "c3"];
    let msgs = ["m1", "m2", "m3", "m4"];
    let users = ["u1", "u2", "u3"];
    let states = [
        FollowState::Pending,
        FollowState::Accepted,
        FollowState::Blocked,
    ];
    // A stable per-change choice: hash of what determines the id.
    let pick = |parts: &[&str], secs: i64, n: usize| -> usize {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in parts
            .iter()
            .flat_map(|p| p.bytes().chain(std::iter::once(0)))
            .chain(secs.to_le_bytes())
        {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        (h % n as u64) as usize
    };
    let mut out = Vec::with_capacity(events + duplicates);
    for _ in 0..events {
        let secs = rng.random_range(0..40);
        let time = t(secs);
        let op = *[Op::Create, Op::Update, Op::Delete].choose(rng).unwrap();
        let c = *convs.choose(rng).unwrap();
        let e = match rng.random_range(0..10) {
            0 | 1 => {
                let op = if op == Op::Delete { Op::Update } else { op };
                let n = 2 + pick(&["conv", c, op.as_str()], secs, 2);
                conversation(op, c, &users[..n], time)
            }
            2..=5 => {
                let m = *msgs.choose(rng).unwrap();
                let soft =
                    (op == Op::Update && pick(&["soft", c, m], secs, 5) == 0).then_some(time);
                let body = format!("body {}", pick(&["body", c, m, op.as_str()], secs, 1000));
                message_with(op, c, m, &body, time, soft)
            }
            6 | 7 => {
                let (a, b) = (*users.choose(rng).unwrap(), *users.choose(rng).unwrap());
                let state = states[pick(&["state", a, b, op.as_str()], secs, 3)];
                follow(op, a, b, state, time)
            }
            _ => {
                let (a, b) = (*users.choose(rng).unwrap(), *users.choose(rng).unwrap());
                block(op, a, b, time)
            }
        };
        out.push(e);
    }
    for _ in 0..duplicates {
        if let Some(e) = out.choose(rng).cloned() {
            out.push(e);
        }
    }
    out
}
