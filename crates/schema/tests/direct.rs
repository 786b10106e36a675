//! The direct decoder against the reference: for valid events and random
//! mutations of them (keys removed, added, twice, retyped, escaped; content
//! types, times, ids, extensions in odd forms), `decode_structured` (direct
//! path first) and `decode_structured_reference` give the same event, with the
//! same publish stamp, or the same error.

use mirror_schema::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn id(ty: &str, subject: &str, time: &str) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{ty}\n{subject}\n{time}").as_bytes()).to_string()
}

/// One valid event per type family and op kind, with every optional field set.
fn valid() -> Vec<Value> {
    let ts = "2025-10-08T12:00:00Z";
    let time = "2025-10-08T12:34:56.123456Z";
    let env = |ty: &str, subject: &str, pk: &str, data: Value| {
        json!({
            "specversion": "1.0", "id": id(ty, subject, time),
            "source": format!("firestore://projects/demo/databases/(default)/documents/{subject}"),
            "type": ty, "subject": subject, "time": time, "partitionkey": pk,
            "datacontenttype": "application/json", "publishtime": "2025-10-08T12:34:57.000001Z",
            "data": data,
        })
    };
    let conv = json!({"type": "group", "participants": [
        {"userId": "u1", "role": "owner", "joinedAt": ts, "muteState": "none"},
        {"userId": "u2", "role": "member", "joinedAt": ts, "muteState": "muted", "readPointerMessageId": "m1"}],
        "createdAt": ts, "updatedAt": ts, "lastMessageId": "m1"});
    let msg = json!({"authorUserId": "u1", "bodyText": "hi \u{e9}", "attachments": [{"kind": "image", "n": 1.5}],
        "externalMedia": null, "createdAt": ts, "editedAt": ts, "deletedAt": null, "clientMessageId": "cm1"});
    vec![
        env(
            "dm.conversation.update",
            "conversations/c1",
            "c1",
            json!({"firestoreId": "c1", "conversationId": "c1", "op": "update", "payload": conv}),
        ),
        env(
            "dm.message.create",
            "conversations/c1/messages/m1",
            "c1",
            json!({"firestoreId": "m1", "conversationId": "c1", "op": "create", "payload": msg}),
        ),
        env(
            "dm.message.delete",
            "conversations/c1/messages/m1",
            "c1",
            json!({"firestoreId": "m1", "conversationId": "c1", "op": "delete", "payload": {"performedBy": "u9"}}),
        ),
        env(
            "dm.block.create",
            "blocks/u1/targets/u2",
            "u1",
            json!({"firestoreId": "u2", "userId": "u1", "targetUserId": "u2", "op": "create",
                   "payload": {"createdAt": ts, "revokedAt": null, "source": "admin"}}),
        ),
        env(
            "dm.block.delete",
            "blocks/u1/targets/u2",
            "u1",
            json!({"firestoreId": "u2", "op": "delete", "payload": {}}),
        ),
        env(
            "follow.edge.update",
            "follows/u1/targets/u2",
            "u1",
            json!({"firestoreId": "u2", "followerUserId": "u1", "targetUserId": "u2", "op": "update",
                   "payload": {"state": "accepted", "source": "web", "createdAt": ts}}),
        ),
        env(
            "follow.edge.delete",
            "follows/u1/targets/u2",
            "u1",
            json!({"firestoreId": "u2", "op": "delete", "payload": {}}),
        ),
    ]
}

/// Values a mutation can put anywhere.
fn odd_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(7),
        json!(-1.5),
        json!(""),
        json!("x"),
        json!([]),
        json!({}),
        json!(["u1"]),
        json!({"a": 1}),
        json!("1.0"),
        json!("c1"),
        json!("u1"),
        json!("u2"),
        json!("m1"),
        json!("create"),
        json!("update"),
        json!("delete"),
        json!("APPLICATION/JSON"),
        json!(" application/json"),
        json!("application/json; charset=utf-8"),
        json!("text/json"),
        json!("application/cloudevents+json"),
        json!("application/jsonx"),
        json!("application/xml"),
        json!("2025-10-08T14:34:56.123456789+02:00"),
        json!("2025-10-08T12:34:56.123456Z"),
        json!("2025-10-08 12:34"),
        json!("dm.message.update"),
        json!("dm.nope"),
        json!("conversations/c1/messages/m2"),
        json!("conversations/c2"),
        json!("gateway://x"),
        json!(":"),
        json!("SGVsbG8="),
    ]
}

const TOP_KEYS: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "partitionkey",
    "datacontenttype",
    "publishtime",
    "data",
    "data_base64",
    "dataschema",
    "other",
    "PartitionKey",
];
const DATA_KEYS: &[&str] = &[
    "op",
    "firestoreId",
    "conversationId",
    "userId",
    "targetUserId",
    "followerUserId",
    "payload",
    "extra",
];
const PAYLOAD_KEYS: &[&str] = &[
    "authorUserId",
    "bodyText",
    "attachments",
    "externalMedia",
    "createdAt",
    "editedAt",
    "deletedAt",
    "clientMessageId",
    "performedBy",
    "participants",
    "type",
    "updatedAt",
    "lastMessageId",
    "state",
    "source",
    "revokedAt",
    "unknownField",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// (level: 0 top, 1 data, 2 payload; key index; value index or None = remove)
    Set(u8, usize, Option<usize>),
    /// The id in another accepted or rejected form.
    Id(u8),
    /// A JSON escape for the `n`th string character that allows one.
    Escape(usize),
    /// A top-level key written twice (the reference keeps the last).
    Twice(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0u8..3, 0usize..32, proptest::option::of(0usize..64))
            .prop_map(|(l, k, v)| Mutation::Set(l, k, v)),
        (0u8..4).prop_map(Mutation::Id),
        (0usize..400).prop_map(Mutation::Escape),
        (0usize..32, 0usize..64).prop_map(|(k, v)| Mutation::Twice(k, v)),
    ]
}

fn apply(event: &mut Value, m: &Mutation, odd: &[Value]) {
    let pick = |v: Option<usize>| v.map(|i| odd[i % odd.len()].clone());
    match *m {
        Mutation::Set(level, k, v) => {
            let (map, keys): (Option<&mut Map<String, Value>>, &[&str]) = match level {
                0 => (event.as_object_mut(), TOP_KEYS),
                1 => (
                    event.get_mut("data").and_then(Value::as_object_mut),
                    DATA_KEYS,
                ),
                _ => (
                    event
                        .get_mut("data")
                        .and_then(|d| d.get_mut("payload"))
                        .and_then(Value::as_object_mut),
                    PAYLOAD_KEYS,
                ),
            };
            if let Some(map) = map {
                let key = keys[k % keys.len()].to_owned();
                match pick(v) {
                    Some(value) => map.insert(key, value),
                    None => map.remove(&key),
                };
            }
        }
        Mutation::Id(form) => {
            if let Some(Value::String(id)) = event.get_mut("id") {
                *id = match form {
                    0 => id.to_uppercase(),
                    1 => format!("{{{id}}}"),
                    2 => id.replace('-', ""),
                    _ => format!("{id} "),
                };
            }
        }
        Mutation::Escape(_) | Mutation::Twice(..) => {}
    }
}

/// Text-level mutations (escapes, duplicate keys) that a `Value` cannot hold.
fn apply_text(mut text: String, m: &Mutation, odd: &[Value]) -> String {
    match *m {
        Mutation::Escape(n) => {
            // Escape the n-th alphanumeric character inside a string literal.
            let mut in_string = false;
            let mut prev = ' ';
            let mut seen = 0;
            for (i, c) in text.char_indices() {
                if c == '"' && prev != '\\' {
                    in_string = !in_string;
                } else if in_string && c.is_ascii_alphanumeric() {
                    if seen == n {
                        text.replace_range(i..i + 1, &format!("\\u{:04x}", c as u32));
                        break;
                    }
                    seen += 1;
                }
                prev = c;
            }
            text
        }
        Mutation::Twice(k, v) => {
            let key = TOP_KEYS[k % TOP_KEYS.len()];
            let value = &odd[v % odd.len()];
            format!("{{\"{key}\":{value},{}", &text[1..])
        }
        _ => text,
    }
}

fn same(bytes: &[u8]) {
    let direct = decode_structured(bytes);
    let reference = decode_structured_reference(bytes);
    match (&direct, &reference) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{}", String::from_utf8_lossy(bytes));
            assert_eq!(
                a.published_at(),
                b.published_at(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(a.source(), b.source());
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(bytes)),
        _ => panic!(
            "direct {direct:?} but reference {reference:?} for {}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

#[test]
fn valid_events_decode_alike() {
    for v in valid() {
        let bytes = serde_json::to_vec(&v).unwrap();
        same(&bytes);
        decode_structured(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v["type"]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, .. ProptestConfig::default() })]

    #[test]
    fn mutated_events_decode_alike(which in 0usize..7, mutations in proptest::collection::vec(mutation(), 0..4)) {
        let odd = odd_values();
        let mut event = valid()[which].clone();
        for m in &mutations {
            apply(&mut event, m, &odd);
        }
        let mut text = event.to_string();
        for m in &mutations {
            text = apply_text(text, m, &odd);
        }
        same(text.as_bytes());
    }
}

/// serde's derived structs take a JSON array of the fields in order; the
/// reference takes only objects, at the top and in `data`.
#[test]
fn arrays_in_place_of_objects_decode_alike() {
    let event = valid()[1].clone();
    // The first ten of TOP_KEYS and seven of DATA_KEYS are the fields of the
    // direct path's envelope and data structs, in their declared order.
    let fields = &TOP_KEYS[..10];
    let as_array = |v: &Value, keys: &[&str]| {
        Value::Array(
            keys.iter()
                .map(|k| v.get(*k).cloned().unwrap_or(Value::Null))
                .collect(),
        )
    };
    let top = as_array(&event, fields);
    same(top.to_string().as_bytes());
    same(format!("  \n{top}").as_bytes());
    let data_keys = &DATA_KEYS[..7];
    let mut inner = event.clone();
    inner["data"] = as_array(&event["data"], data_keys);
    same(inner.to_string().as_bytes());
    let mut payload = event.clone();
    payload["data"]["payload"] = Value::Array(
        event["data"]["payload"]
            .as_object()
            .unwrap()
            .values()
            .cloned()
            .collect(),
    );
    same(payload.to_string().as_bytes());
}

/// The reference's JSON tree stops at serde_json's recursion limit; the
/// direct path skips unknown values without one and parses the payload from
/// an inner slice: deep nesting anywhere must decode alike.
#[test]
fn deep_nesting_decodes_alike() {
    let event = valid()[1].clone();
    for depth in [20, 31, 32, 33, 60, 125, 126, 127, 128, 129, 200] {
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let deep: Value = serde_json::from_str(&deep).unwrap_or(Value::Null);
        let text_deep = |path: &str| {
            // Splice the nesting in as text: a Value this deep may not build.
            let marker = "\"__deep__\"";
            let mut e = event.clone();
            match path {
                "top" => e["extension"] = json!("__deep__"),
                "data" => e["data"]["extra"] = json!("__deep__"),
                "payload" => e["data"]["payload"]["unknownField"] = json!("__deep__"),
                _ => e["data"]["payload"]["attachments"] = json!(["__deep__"]),
            }
            e.to_string().replace(
                marker,
                &format!("{}1{}", "[".repeat(depth), "]".repeat(depth)),
            )
        };
        for path in ["top", "data", "payload", "attachments"] {
            same(text_deep(path).as_bytes());
        }
        let _ = deep;
    }
}

/// What serde_json checks when it builds a value but not when it skips one
/// (the direct path skips the fields the contract does not name): lone
/// surrogates, invalid UTF-8, numbers that overflow. Placed where each path
/// skips or reads them, they must decode alike.
#[test]
fn values_checked_only_when_built_decode_alike() {
    let event = valid()[1].clone();
    let odd: &[&[u8]] = &[
        br#""\ud800""#,
        br#""\udc00x""#,
        br#""\ud83d\ude00""#,
        br#""\u00e9""#,
        b"\"\xff\xfe\"",
        b"\"caf\xc3\xa9\"",
        b"1e400",
        b"-1e400",
        b"1E5",
        b"1.5e-3",
        b"0.5",
        b"123456789012345678",
        b"1234567890123456789",
        &[b'9'; 400],
        b"18446744073709551616",
    ];
    for value in odd {
        for path in ["data", "payload", "attachments", "body"] {
            let mut e = event.clone();
            match path {
                "data" => e["data"]["extra"] = json!("__odd__"),
                "payload" => e["data"]["payload"]["unknownField"] = json!("__odd__"),
                "attachments" => e["data"]["payload"]["attachments"] = json!([{"x": "__odd__"}]),
                _ => e["data"]["payload"]["bodyText"] = json!("__odd__"),
            }
            let text = e.to_string();
            let (before, after) = text.split_once("\"__odd__\"").unwrap();
            let mut bytes = before.as_bytes().to_vec();
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(after.as_bytes());
            same(&bytes);
        }
    }
}
