//! One test per collection and per failure class.

use std::collections::BTreeMap;

use mirror_schema::{decode_structured, EventType, Payload};

use super::*;

fn t(s: &str) -> Timestamp {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn src() -> SourceInfo {
    SourceInfo::new("demo", "(default)")
}

fn doc(path: &str, fields: Vec<(&str, Value)>, created: &str, updated: &str) -> Document {
    Document {
        path: path.to_owned(),
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        create_time: t(created),
        update_time: t(updated),
    }
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}
fn ts(v: &str) -> Value {
    Value::Timestamp(t(v))
}
fn map(items: Vec<(&str, Value)>) -> Value {
    Value::Map(
        items
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

const T0: &str = "2025-10-08T12:34:56.123456789Z";
const T1: &str = "2025-10-09T08:00:00Z";

fn message_fields() -> Vec<(&'static str, Value)> {
    vec![
        (
            "authorUserId",
            Value::Reference("projects/demo/databases/(default)/documents/users/u1".into()),
        ),
        ("bodyText", s("hi")),
        ("createdAt", ts(T0)),
        (
            "attachments",
            Value::Array(vec![map(vec![
                ("url", s("https://x/y.png")),
                ("size", Value::Integer(12)),
                ("ratio", Value::Double(1.5)),
                ("at", ts(T0)),
                ("thumb", Value::Bytes(vec![1, 2, 3, 4])),
                (
                    "where",
                    Value::GeoPoint {
                        latitude: 1.0,
                        longitude: 2.0,
                    },
                ),
                ("by", Value::Reference("users/u9".into())),
                ("flags", Value::Array(vec![Value::Bool(true), Value::Null])),
            ])]),
        ),
        ("reactions", map(vec![("x", Value::Integer(1))])), // not in the contract: ignored
    ]
}

#[test]
fn message_create_matches_the_contract_example() {
    let d = doc("conversations/c1/messages/m1", message_fields(), T0, T0);
    let ev = upsert_event(&d, UpsertOp::of(&d), &src()).unwrap().unwrap();
    assert_eq!(ev.event_type(), EventType::DmMessageCreate);
    assert_eq!(ev.subject().to_string(), "conversations/c1/messages/m1");
    assert_eq!(
        mirror_schema::format_time(&ev.time()),
        "2025-10-08T12:34:56.123456Z"
    );
    assert_eq!(ev.partition_key(), "c1");
    assert_eq!(
        ev.source(),
        "firestore://projects/demo/databases/(default)/documents/conversations/c1/messages/m1"
    );
    let Payload::Message(m) = ev.payload() else {
        panic!()
    };
    assert_eq!(m.author_user_id, "u1");
    assert_eq!(
        m.attachments.as_ref().unwrap()[0],
        serde_json::json!({
            "url": "https://x/y.png", "size": 12, "ratio": 1.5, "at": "2025-10-08T12:34:56.123456Z",
            "thumb": "AQIDBA==", "where": {"latitude": 1.0, "longitude": 2.0}, "by": "u9", "flags": [true, null]
        })
    );
    // It survives the wire: the writer's decoder accepts it unchanged.
    assert_eq!(decode_structured(&ev.to_structured_json()).unwrap(), ev);
}

#[test]
fn message_update_delete_and_soft_delete() {
    let mut fields = message_fields();
    fields.push(("editedAt", ts(T1)));
    fields.push(("deletedAt", s("2025-10-09T09:00:00+01:00")));
    fields.push(("clientMessageId", s("cm-1")));
    fields.retain(|(k, _)| *k != "bodyText"); // absent body → ""
    let d = doc("conversations/c1/messages/m1", fields, T0, T1);
    let ev = upsert_event(&d, UpsertOp::of(&d), &src()).unwrap().unwrap();
    assert_eq!(ev.event_type(), EventType::DmMessageUpdate);
    let Payload::Message(m) = ev.payload() else {
        panic!()
    };
    assert_eq!(m.body_text, "");
    assert_eq!(m.deleted_at, Some(t("2025-10-09T08:00:00Z")));
    assert_eq!(m.client_message_id.as_deref(), Some("cm-1"));

    let ev = delete_event("conversations/c1/messages/m1", t(T1), &src())
        .unwrap()
        .unwrap();
    assert_eq!(ev.event_type(), EventType::DmMessageDelete);
    assert_eq!(ev.payload().to_json(), serde_json::json!({}));
}

#[test]
fn conversation_from_a_participant_array_or_map() {
    let participant = |user: Option<&str>| {
        let mut p = vec![("role", s("owner")), ("joinedAt", ts(T0))];
        if let Some(u) = user {
            p.push(("userId", s(u)));
        }
        map(p)
    };
    for participants in [
        Value::Array(vec![
            participant(Some("u1")),
            map(vec![
                ("userId", s("u2")),
                ("role", s("member")),
                ("joinedAt", ts(T0)),
                ("muteState", s("muted")),
                ("readPointerMessageId", s("m1")),
            ]),
        ]),
        map(vec![
            ("u1", participant(None)),
            (
                "u2",
                map(vec![
                    ("role", s("member")),
                    ("joinedAt", ts(T0)),
                    ("muteState", s("muted")),
                    (
                        "readPointerMessageId",
                        Value::Reference("conversations/c1/messages/m1".into()),
                    ),
                ]),
            ),
        ]),
    ] {
        let d = doc(
            "conversations/c1",
            vec![
                ("type", s("group")),
                ("participants", participants),
                ("createdAt", ts(T0)),
                ("updatedAt", ts(T1)),
                ("lastMessageId", s("m1")),
            ],
            T0,
            T1,
        );
        let ev = upsert_event(&d, UpsertOp::of(&d), &src()).unwrap().unwrap();
        assert_eq!(ev.event_type(), EventType::DmConversationUpdate);
        let Payload::Conversation(c) = ev.payload() else {
            panic!()
        };
        assert_eq!(c.participants.len(), 2);
        assert_eq!(c.participants[0].user_id, "u1");
        assert_eq!(
            c.participants[0].mute_state,
            mirror_schema::MuteState::None,
            "absent muteState is none"
        );
        assert_eq!(
            c.participants[1].read_pointer_message_id.as_deref(),
            Some("m1")
        );
        assert_eq!(c.last_message_id.as_deref(), Some("m1"));
    }
}

#[test]
fn conversation_delete_has_no_contract_type() {
    let e = delete_event("conversations/c1", t(T1), &src()).unwrap_err();
    assert_eq!(e.code(), "no_event_type");
    assert_eq!(e.path(), "conversations/c1");
}

#[test]
fn blocks_and_follows() {
    let d = doc(
        "blocks/u1/targets/u2",
        vec![
            ("createdAt", ts(T0)),
            ("source", s("client")),
            ("revokedAt", Value::Null),
        ],
        T0,
        T0,
    );
    let ev = upsert_event(&d, UpsertOp::of(&d), &src()).unwrap().unwrap();
    assert_eq!(ev.event_type(), EventType::DmBlockCreate);
    assert_eq!(ev.partition_key(), "u1");
    let ev = delete_event("blocks/u1/targets/u2", t(T1), &src())
        .unwrap()
        .unwrap();
    assert_eq!(ev.event_type(), EventType::DmBlockDelete);

    let d = doc(
        "follows/u1/targets/u2",
        vec![
            ("createdAt", ts(T0)),
            ("source", s("web")),
            ("state", s("accepted")),
        ],
        T0,
        T1,
    );
    let ev = upsert_event(&d, UpsertOp::of(&d), &src()).unwrap().unwrap();
    assert_eq!(ev.event_type(), EventType::FollowEdgeUpdate);
    assert_eq!(ev.partition_key(), "u1");
    let ev = delete_event("follows/u1/targets/u2", t(T1), &src())
        .unwrap()
        .unwrap();
    assert_eq!(ev.event_type(), EventType::FollowEdgeDelete);
    // Same version, same id: the live path and the backfill agree.
    let again = upsert_event(&d, UpsertOp::of(&d), &src()).unwrap().unwrap();
    assert_eq!(
        again.id(),
        upsert_event(&d, UpsertOp::Update, &src())
            .unwrap()
            .unwrap()
            .id()
    );
}

#[test]
fn paths_outside_the_mirror_are_not_routed() {
    for p in [
        "users/u1/messages/m1",
        "conversations/c1/other/x",
        "a/b/follows/u1/targets/u2",
        "profiles/u1/targets/u2",
        "conversations",
    ] {
        assert_eq!(route(p), None, "{p}");
        let d = doc(p, vec![], T0, T0);
        assert_eq!(upsert_event(&d, UpsertOp::Create, &src()).unwrap(), None);
        assert_eq!(delete_event(p, t(T0), &src()).unwrap(), None);
    }
}

/// Every failure class, each naming the path and the field.
#[test]
fn failures_name_path_and_field() {
    let follow = |fields: Vec<(&str, Value)>| doc("follows/u1/targets/u2", fields, T0, T0);
    let cases: Vec<(Document, &str, &str)> = vec![
        (
            follow(vec![("source", s("web")), ("createdAt", ts(T0))]),
            "missing_field",
            "`state`",
        ),
        (
            follow(vec![
                ("state", Value::Integer(1)),
                ("source", s("web")),
                ("createdAt", ts(T0)),
            ]),
            "wrong_type",
            "`state` is a integer, expected string",
        ),
        (
            follow(vec![
                ("state", s("friends")),
                ("source", s("web")),
                ("createdAt", ts(T0)),
            ]),
            "invalid_field",
            "`friends` is not one of pending, accepted, blocked",
        ),
        (
            follow(vec![
                ("state", s("pending")),
                ("source", s("web")),
                ("createdAt", s("yesterday")),
            ]),
            "invalid_field",
            "`createdAt`",
        ),
        (
            follow(vec![
                ("state", s("pending")),
                ("source", s("web")),
                ("createdAt", Value::Bool(true)),
            ]),
            "wrong_type",
            "`createdAt`",
        ),
        (
            doc(
                "conversations/c1",
                vec![
                    ("type", s("direct")),
                    (
                        "participants",
                        Value::Array(vec![map(vec![("userId", s("u1")), ("joinedAt", ts(T0))])]),
                    ),
                    ("createdAt", ts(T0)),
                    ("updatedAt", ts(T0)),
                ],
                T0,
                T0,
            ),
            "missing_field",
            "`participants[0].role`",
        ),
        (
            doc(
                "conversations/c1",
                vec![
                    ("type", s("direct")),
                    ("participants", Value::Array(vec![s("u1")])),
                    ("createdAt", ts(T0)),
                    ("updatedAt", ts(T0)),
                ],
                T0,
                T0,
            ),
            "wrong_type",
            "`participants[0]` is a string, expected map",
        ),
        (
            doc(
                "conversations/c1",
                vec![
                    ("type", s("direct")),
                    (
                        "participants",
                        Value::Array(vec![
                            map(vec![
                                ("userId", s("u1")),
                                ("role", s("owner")),
                                ("joinedAt", ts(T0)),
                            ]),
                            map(vec![
                                ("userId", s("u1")),
                                ("role", s("member")),
                                ("joinedAt", ts(T0)),
                            ]),
                        ]),
                    ),
                    ("createdAt", ts(T0)),
                    ("updatedAt", ts(T0)),
                ],
                T0,
                T0,
            ),
            "contract_violation",
            "listed twice",
        ),
        (
            doc(
                "conversations/c1/messages/m1",
                vec![
                    ("authorUserId", s("u1")),
                    ("createdAt", ts(T0)),
                    (
                        "attachments",
                        Value::Array(vec![map(vec![("w", Value::Double(f64::NAN))])]),
                    ),
                ],
                T0,
                T0,
            ),
            "invalid_field",
            "`attachments[0].w`",
        ),
        (
            doc(
                "conversations/c1/messages/m1",
                vec![
                    ("authorUserId", s("u1")),
                    ("createdAt", ts(T0)),
                    ("externalMedia", s("x")),
                ],
                T0,
                T0,
            ),
            "wrong_type",
            "`externalMedia` is a string, expected array",
        ),
        (
            doc(
                "conversations/c1/messages/m1",
                vec![("authorUserId", Value::Integer(5)), ("createdAt", ts(T0))],
                T0,
                T0,
            ),
            "wrong_type",
            "`authorUserId`",
        ),
        (
            doc(
                &format!("conversations/{}", "x".repeat(200)),
                vec![],
                T0,
                T0,
            ),
            "contract_violation",
            "longer than 128",
        ),
    ];
    for (d, code, needle) in cases {
        let e = upsert_event(&d, UpsertOp::of(&d), &src()).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.code(), code, "{msg}");
        assert!(msg.contains(needle), "{msg} should contain {needle}");
        assert!(msg.starts_with(&format!("`{}`", d.path)), "{msg}");
        assert_eq!(e.path(), d.path);
    }
}

/// Bytes map to standard, padded base64 (docs/firestore-mapping.md).
#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, out) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, input.as_bytes()),
            out
        );
    }
}

#[test]
fn document_json_never_fails() {
    let d = doc(
        "x/y",
        vec![
            ("bad", Value::Double(f64::INFINITY)),
            ("ok", Value::Integer(1)),
        ],
        T0,
        T1,
    );
    let j = document_json(&d);
    assert_eq!(j["fields"]["ok"], 1);
    assert!(j["fields"]["bad"].as_str().unwrap().starts_with('<'));
}
