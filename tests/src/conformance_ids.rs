//! Conformance cases about ids (issue 12), run by every store through
//! [`crate::store_conformance`]: ids that differ only in leading, trailing or
//! inner spaces are different entities, and the longest id the contract allows
//! (128 characters, some outside the Basic Multilingual Plane) is stored, in
//! every id position: conversation, message, participant, author, performer,
//! read pointer, block and follow user ids. The model is the oracle.
//!
//! Both cases once failed on SQL Server (whose `=` and unique keys ignore
//! trailing spaces, and whose `NVARCHAR(128)` counts UTF-16 code units), while
//! PostgreSQL and the model agreed.

use chrono::{DateTime, Utc};
use mirror_schema::*;
use mirror_store::model::Model;
use mirror_store::{ApplyOutcome, MirrorStore};

use crate::events::{block, follow, participant, t};
use crate::store_conformance::{apply_all, assert_matches_model};

/// 127 ASCII letters and an emoji: 128 characters, 129 UTF-16 code units.
pub fn longest_mixed_id(fill: char) -> String {
    let mut id: String = std::iter::repeat_n(fill, 127).collect();
    id.push('😀');
    id
}

/// 128 emoji: 128 characters, 256 UTF-16 code units, 512 UTF-8 bytes.
pub fn longest_emoji_id() -> String {
    "😀".repeat(128)
}

fn ev(ty: EventType, subject: Subject, time: DateTime<Utc>, payload: Payload) -> MirrorEvent {
    let source = MirrorEvent::firestore_source("demo", &subject);
    let event = MirrorEvent::new(ty, subject, time, source, payload).expect("valid event");
    // Every event here is one the decoder accepts: the ids are contract-valid.
    let decoded = decode_structured(&event.to_structured_json())
        .unwrap_or_else(|e| panic!("the decoder rejects {}: {e}", event.subject()));
    assert_eq!(decoded.id(), event.id());
    event
}

fn conversation_of(
    op: Op,
    cid: &str,
    users: &[&str],
    pointer: Option<&str>,
    time: DateTime<Utc>,
) -> MirrorEvent {
    let participants = users
        .iter()
        .enumerate()
        .map(|(i, u)| Participant {
            read_pointer_message_id: pointer.map(str::to_owned),
            ..participant(
                u,
                if i == 0 {
                    ParticipantRole::Owner
                } else {
                    ParticipantRole::Member
                },
            )
        })
        .collect();
    ev(
        EventType::of(EventFamily::Conversation, op).unwrap(),
        Subject::Conversation {
            conversation_id: cid.into(),
        },
        time,
        Payload::Conversation(ConversationPayload {
            kind: ConversationKind::Group,
            participants,
            created_at: t(0),
            updated_at: time,
            last_message_id: None,
        }),
    )
}

/// A message (or its delete) whose author, client message id and performer
/// are the given ids.
fn message_by(
    op: Op,
    cid: &str,
    mid: &str,
    author: &str,
    created_at: DateTime<Utc>,
    time: DateTime<Utc>,
) -> MirrorEvent {
    let payload = if op == Op::Delete {
        Payload::MessageDelete(MessageDeletePayload {
            performed_by: Some(author.into()),
        })
    } else {
        Payload::Message(MessagePayload {
            author_user_id: author.into(),
            body_text: format!("{mid} by {author} at {}", format_time(&time)),
            attachments: None,
            external_media: None,
            created_at,
            edited_at: (op == Op::Update).then_some(time),
            deleted_at: None,
            client_message_id: Some(mid.into()),
        })
    };
    ev(
        EventType::of(EventFamily::Message, op).unwrap(),
        Subject::Message {
            conversation_id: cid.into(),
            message_id: mid.into(),
        },
        time,
        payload,
    )
}

pub async fn ids_differing_only_in_spaces_are_distinct<S: MirrorStore>(store: S) {
    // Leading, trailing (one and two) and inner spaces; every one its own entity.
    let conversations = ["c1", "c1 ", " c1", "c 1", "c1  "];
    let users = ["u1", "u1 ", " u1", "u 1"];
    let messages = ["m1", "m1 ", " m1"];
    let mut events = Vec::new();
    for (n, cid) in conversations.iter().enumerate() {
        let n = n as i64;
        // Each conversation a different participant list, so a collapsed row shows.
        events.push(conversation_of(
            Op::Create,
            cid,
            &users[..(n as usize % 3) + 2],
            None,
            t(10 + n),
        ));
        for (k, mid) in messages.iter().enumerate() {
            let k = k as i64;
            // Same createdAt: the last-message tie-break compares the ids themselves.
            events.push(message_by(
                Op::Create,
                cid,
                mid,
                users[k as usize],
                t(1),
                t(20 + n * 10 + k),
            ));
        }
        events.push(message_by(Op::Update, cid, "m1 ", "u1 ", t(1), t(60 + n)));
        events.push(message_by(Op::Delete, cid, " m1", " u1", t(1), t(70 + n)));
    }
    // One participant list holding ids that differ only in spaces: four people.
    events.push(conversation_of(
        Op::Update,
        "c1",
        &users,
        Some("m1 "),
        t(80),
    ));
    for (i, a) in users.iter().enumerate() {
        for (j, b) in users.iter().enumerate() {
            let k = (i * users.len() + j) as i64;
            events.push(block(Op::Create, a, b, t(100 + k)));
            let state = [
                FollowState::Pending,
                FollowState::Accepted,
                FollowState::Blocked,
            ][(i + j) % 3];
            events.push(follow(Op::Create, a, b, state, t(100 + k)));
        }
    }
    // Changes addressed to one of them must not touch its look-alikes.
    events.push(block(Op::Delete, "u1 ", "u1", t(200)));
    events.push(follow(
        Op::Update,
        " u1",
        "u1 ",
        FollowState::Accepted,
        t(200),
    ));
    events.push(follow(
        Op::Delete,
        "u1",
        "u 1",
        FollowState::Accepted,
        t(201),
    ));

    let mut model = Model::new();
    let outcomes = apply_all(&store, &mut model, &events).await;
    assert!(
        outcomes.iter().all(|o| *o == ApplyOutcome::Applied),
        "every event is about its own entity: {outcomes:?}"
    );
    let state = assert_matches_model(&store, &model, "ids differing only in spaces").await;
    assert_eq!(state.conversations.len(), conversations.len());
    assert_eq!(state.messages.len(), conversations.len() * messages.len());
    assert_eq!(
        state.participants.keys().filter(|(c, _)| c == "c1").count(),
        users.len(),
        "`u1`, `u1 `, ` u1` and `u 1` are four participants"
    );
    assert_eq!(state.blocks.len(), users.len() * users.len());
    assert_eq!(state.follow_edges.len(), users.len() * users.len());
    // A second delivery of each is a duplicate, not a new row or a conflict.
    for e in &events {
        assert_eq!(store.apply(e).await.unwrap(), ApplyOutcome::Duplicate);
    }
}

pub async fn longest_ids_with_characters_outside_the_bmp_are_stored<S: MirrorStore>(store: S) {
    let mixed = longest_mixed_id('a');
    let mixed_b = longest_mixed_id('b');
    let emoji = longest_emoji_id();
    // Two of the widest ids in one key: 1,024 bytes of UTF-16 (over SQL
    // Server's 900-byte clustered-key limit).
    let other_emoji = "🙂".repeat(MAX_ID_LEN);
    // Two-byte UTF-8 characters too, and an id that sorts after the emoji in
    // UTF-16 code-unit order but before it in UTF-8 (U+FF5E vs U+1F600).
    let accented: String = "é".repeat(128);
    let fullwidth: String = "～".repeat(128);
    for id in [&mixed, &emoji, &accented, &fullwidth] {
        assert_eq!(id.chars().count(), MAX_ID_LEN, "{id}");
    }
    let users = [
        mixed.as_str(),
        emoji.as_str(),
        accented.as_str(),
        fullwidth.as_str(),
    ];
    let events = vec![
        // conversation id, participant user ids, read pointer
        conversation_of(Op::Create, &mixed, &users, Some(&emoji), t(1)),
        conversation_of(Op::Create, &emoji, &users[1..], Some(&mixed), t(1)),
        // message ids, author, client message id, performer; equal createdAt so
        // the last message is decided by the ids' UTF-8 order
        message_by(Op::Create, &mixed, &emoji, &accented, t(5), t(2)),
        message_by(Op::Create, &mixed, &fullwidth, &mixed, t(5), t(3)),
        message_by(Op::Create, &mixed, &mixed, &emoji, t(4), t(4)),
        message_by(Op::Update, &mixed, &mixed, &fullwidth, t(4), t(5)),
        message_by(Op::Create, &emoji, &accented, &emoji, t(5), t(2)),
        message_by(Op::Delete, &emoji, &accented, &fullwidth, t(5), t(6)),
        // a placeholder conversation with the longest id
        message_by(Op::Create, &fullwidth, &emoji, &mixed_b, t(5), t(7)),
        // block and follow user ids
        block(Op::Create, &mixed, &emoji, t(8)),
        block(Op::Create, &emoji, &mixed, t(8)),
        block(Op::Delete, &fullwidth, &accented, t(9)),
        block(Op::Create, &emoji, &other_emoji, t(8)),
        follow(Op::Create, &mixed, &emoji, FollowState::Pending, t(8)),
        follow(Op::Update, &mixed, &emoji, FollowState::Accepted, t(9)),
        follow(
            Op::Create,
            &accented,
            &fullwidth,
            FollowState::Blocked,
            t(8),
        ),
        follow(
            Op::Delete,
            &accented,
            &fullwidth,
            FollowState::Blocked,
            t(9),
        ),
    ];
    let mut model = Model::new();
    let outcomes = apply_all(&store, &mut model, &events).await;
    assert!(
        outcomes.iter().all(|o| *o == ApplyOutcome::Applied),
        "{outcomes:?}"
    );
    let state = assert_matches_model(&store, &model, "longest ids").await;
    assert_eq!(
        state.conversations[&mixed].last_message_id.as_deref(),
        Some(emoji.as_str()),
        "U+1F600 is greater than U+FF5E in UTF-8 (and code point) order"
    );
    assert_eq!(
        state.conversations[&mixed].participant_hash.as_deref(),
        Some(mirror_store::state::participant_hash(users).as_str())
    );
    assert!(state.conversations[&fullwidth].placeholder);
}
