//! Table-driven decoding tests: every event type decodes and round-trips, and
//! every class of invalid input is rejected with an error naming what was wrong.

use mirror_schema::*;
use serde_json::{json, Value};

const NS: uuid::Uuid = ID_NAMESPACE;

fn id(ty: &str, subject: &str, time: &str) -> String {
    uuid::Uuid::new_v5(&NS, format!("{ty}\n{subject}\n{time}").as_bytes()).to_string()
}

fn envelope(ty: &str, subject: &str, pk: &str, data: Value) -> Value {
    let time = "2025-10-08T12:34:56.123456Z";
    json!({
        "specversion": "1.0",
        "id": id(ty, subject, time),
        "source": format!("firestore://projects/demo/databases/(default)/documents/{subject}"),
        "type": ty,
        "subject": subject,
        "time": time,
        "partitionkey": pk,
        "datacontenttype": "application/json",
        "data": data,
    })
}

fn valid_examples() -> Vec<Value> {
    let ts = "2025-10-08T12:00:00Z";
    let conv = json!({"type": "group", "participants": [
        {"userId": "u1", "role": "owner", "joinedAt": ts, "muteState": "none"},
        {"userId": "u2", "role": "member", "joinedAt": ts, "muteState": "muted", "readPointerMessageId": "m1"}],
        "createdAt": ts, "updatedAt": ts, "lastMessageId": "m1"});
    let msg = json!({"authorUserId": "u1", "bodyText": "hi", "attachments": [{"kind": "image"}], "externalMedia": null,
        "createdAt": ts, "editedAt": ts, "deletedAt": null, "clientMessageId": "cm1"});
    let block = json!({"createdAt": ts, "revokedAt": null, "source": "admin"});
    let follow = json!({"state": "accepted", "source": "web", "createdAt": ts});
    let mut out = Vec::new();
    for op in ["create", "update"] {
        out.push(envelope(
            &format!("dm.conversation.{op}"),
            "conversations/c1",
            "c1",
            json!({"firestoreId": "c1", "conversationId": "c1", "op": op, "payload": conv}),
        ));
        out.push(envelope(
            &format!("dm.message.{op}"),
            "conversations/c1/messages/m1",
            "c1",
            json!({"firestoreId": "m1", "conversationId": "c1", "op": op, "payload": msg}),
        ));
        out.push(envelope(
            &format!("dm.block.{op}"),
            "blocks/u1/targets/u2",
            "u1",
            json!({"firestoreId": "u2", "op": op, "payload": block}),
        ));
        out.push(envelope(
            &format!("follow.edge.{op}"),
            "follows/u1/targets/u2",
            "u1",
            json!({"firestoreId": "u2", "op": op, "payload": follow}),
        ));
    }
    out.push(envelope("dm.message.delete", "conversations/c1/messages/m1", "c1", json!({"firestoreId": "m1", "conversationId": "c1", "op": "delete", "payload": {"performedBy": "u9"}})));
    out.push(envelope(
        "dm.block.delete",
        "blocks/u1/targets/u2",
        "u1",
        json!({"firestoreId": "u2", "op": "delete", "payload": {}}),
    ));
    out.push(envelope(
        "follow.edge.delete",
        "follows/u1/targets/u2",
        "u1",
        json!({"firestoreId": "u2", "op": "delete", "payload": {}}),
    ));
    out
}

#[test]
fn every_type_decodes_and_round_trips() {
    let examples = valid_examples();
    let mut seen = std::collections::BTreeSet::new();
    for v in examples {
        let bytes = serde_json::to_vec(&v).unwrap();
        let ev = decode_structured(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v["type"]));
        seen.insert(ev.event_type());
        assert_eq!(decode_structured(&ev.to_structured_json()).unwrap(), ev);
        assert_eq!(decode_wire(&WireMessage::structured(&ev)).unwrap(), ev);
    }
    assert_eq!(seen.len(), EventType::ALL.len());
}

#[test]
fn absent_partitionkey_and_datacontenttype_are_accepted() {
    let mut v = valid_examples().remove(1);
    v.as_object_mut().unwrap().remove("partitionkey");
    v.as_object_mut().unwrap().remove("datacontenttype");
    decode_structured(&serde_json::to_vec(&v).unwrap()).unwrap();
}

/// (case, mutation of the valid message event, expected error code, text the message must contain)
type Case = (&'static str, fn(&mut Value), &'static str, &'static str);

#[test]
fn every_class_of_invalid_input_is_rejected_with_its_reason() {
    let cases: Vec<Case> = vec![
        (
            "missing specversion",
            |v| {
                v.as_object_mut().unwrap().remove("specversion");
            },
            "missing_field",
            "specversion",
        ),
        (
            "wrong specversion",
            |v| v["specversion"] = json!("0.3"),
            "invalid_field",
            "specversion",
        ),
        (
            "missing id",
            |v| {
                v.as_object_mut().unwrap().remove("id");
            },
            "missing_field",
            "`id`",
        ),
        (
            "missing source",
            |v| {
                v.as_object_mut().unwrap().remove("source");
            },
            "missing_field",
            "source",
        ),
        (
            "missing type",
            |v| {
                v.as_object_mut().unwrap().remove("type");
            },
            "missing_field",
            "type",
        ),
        (
            "missing subject",
            |v| {
                v.as_object_mut().unwrap().remove("subject");
            },
            "missing_field",
            "subject",
        ),
        (
            "missing time",
            |v| {
                v.as_object_mut().unwrap().remove("time");
            },
            "missing_field",
            "time",
        ),
        (
            "type not a string",
            |v| v["type"] = json!(7),
            "invalid_field",
            "type",
        ),
        (
            "unknown type",
            |v| v["type"] = json!("dm.message.created"),
            "unknown_type",
            "dm.message.created",
        ),
        (
            "subject of another family",
            |v| v["subject"] = json!("follows/u1/targets/u2"),
            "invalid_field",
            "subject",
        ),
        (
            "subject with an empty id",
            |v| v["subject"] = json!("conversations//messages/m1"),
            "invalid_field",
            "subject",
        ),
        (
            "id too long",
            |v| v["subject"] = json!(format!("conversations/c1/messages/{}", "m".repeat(200))),
            "invalid_field",
            "longer than 128",
        ),
        (
            "bad time",
            |v| v["time"] = json!("yesterday"),
            "invalid_field",
            "time",
        ),
        (
            "non-deterministic id",
            |v| v["id"] = json!("5f0c3b9e-8e0f-5c8a-9d57-1d7a0c1f2b3c"),
            "wrong_id",
            "deterministic",
        ),
        (
            "partitionkey disagrees",
            |v| v["partitionkey"] = json!("c2"),
            "id_mismatch",
            "partitionkey",
        ),
        (
            "datacontenttype not json",
            |v| v["datacontenttype"] = json!("text/plain"),
            "invalid_field",
            "datacontenttype",
        ),
        (
            "no data",
            |v| {
                v.as_object_mut().unwrap().remove("data");
            },
            "missing_field",
            "data",
        ),
        (
            "data not an object",
            |v| v["data"] = json!([1, 2]),
            "invalid_field",
            "data",
        ),
        (
            "op missing",
            |v| {
                v["data"].as_object_mut().unwrap().remove("op");
            },
            "missing_field",
            "data.op",
        ),
        (
            "op disagrees with type",
            |v| v["data"]["op"] = json!("update"),
            "invalid_field",
            "data.op",
        ),
        (
            "firestoreId disagrees",
            |v| v["data"]["firestoreId"] = json!("m2"),
            "id_mismatch",
            "data.firestoreId",
        ),
        (
            "conversationId missing",
            |v| {
                v["data"].as_object_mut().unwrap().remove("conversationId");
            },
            "missing_field",
            "data.conversationId",
        ),
        (
            "conversationId disagrees",
            |v| v["data"]["conversationId"] = json!("c9"),
            "id_mismatch",
            "data.conversationId",
        ),
        (
            "payload missing",
            |v| {
                v["data"].as_object_mut().unwrap().remove("payload");
            },
            "missing_field",
            "data.payload",
        ),
        (
            "payload not an object",
            |v| v["data"]["payload"] = json!("hi"),
            "invalid_field",
            "data.payload",
        ),
        (
            "required field missing",
            |v| {
                v["data"]["payload"]
                    .as_object_mut()
                    .unwrap()
                    .remove("authorUserId");
            },
            "invalid_field",
            "authorUserId",
        ),
        (
            "field of the wrong type",
            |v| v["data"]["payload"]["bodyText"] = json!(42),
            "invalid_field",
            "data.payload.bodyText",
        ),
        (
            "payload timestamp not RFC 3339",
            |v| v["data"]["payload"]["createdAt"] = json!("12/10/2025"),
            "invalid_field",
            "data.payload.createdAt",
        ),
        (
            "attachments not an array",
            |v| v["data"]["payload"]["attachments"] = json!({"a": 1}),
            "invalid_field",
            "data.payload.attachments",
        ),
        (
            "author id too long",
            |v| v["data"]["payload"]["authorUserId"] = json!("u".repeat(129)),
            "invalid_field",
            "authorUserId",
        ),
    ];
    for (name, mutate, code, text) in cases {
        let mut v = valid_examples().remove(1); // dm.message.create
        mutate(&mut v);
        let err = decode_structured(&serde_json::to_vec(&v).unwrap()).expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err}");
        assert!(
            err.to_string().contains(text),
            "{name}: `{err}` should mention `{text}`"
        );
    }
}

#[test]
fn malformed_bytes_and_oversized_events_are_rejected() {
    for (bytes, code) in [
        (b"{not json".to_vec(), "malformed"),
        (b"[1,2,3]".to_vec(), "malformed"),
        (b"".to_vec(), "malformed"),
        (vec![0xff, 0xfe, 0x00], "malformed"),
        (vec![b' '; MAX_EVENT_BYTES + 1], "too_large"),
    ] {
        assert_eq!(decode_structured(&bytes).unwrap_err().code(), code);
    }
}

#[test]
fn enum_and_uniqueness_rules_in_payloads() {
    let mut conv = valid_examples().remove(0);
    conv["data"]["payload"]["participants"][1]["userId"] = json!("u1");
    let e = decode_structured(&serde_json::to_vec(&conv).unwrap()).unwrap_err();
    assert!(
        e.to_string().contains("participants[1].userId") && e.to_string().contains("twice"),
        "{e}"
    );

    let mut follow = valid_examples().remove(3);
    follow["data"]["payload"]["state"] = json!("rejected");
    let e = decode_structured(&serde_json::to_vec(&follow).unwrap()).unwrap_err();
    assert!(e.to_string().contains("data.payload.state"), "{e}");
}

#[test]
fn the_id_formula_matches_the_contract() {
    // From the contract: UUID v5 of `type\nsubject\ntime`, time with 6 digits and Z.
    let subject = Subject::Message {
        conversation_id: "c1".into(),
        message_id: "m1".into(),
    };
    let time = parse_time("time", "2025-10-08T12:34:56.123456Z").unwrap();
    let expected = id(
        "dm.message.create",
        "conversations/c1/messages/m1",
        "2025-10-08T12:34:56.123456Z",
    );
    assert_eq!(
        deterministic_id(EventType::DmMessageCreate, &subject, &time).to_string(),
        expected
    );
    // The same change with a differently written time is the same event.
    let t2 = parse_time("time", "2025-10-08T14:34:56.123456+02:00").unwrap();
    assert_eq!(
        deterministic_id(EventType::DmMessageCreate, &subject, &t2).to_string(),
        expected
    );
}
