//! The seed dataset: a log of Firestore document changes, turned into contract
//! events for `mirrorctl seed` and used as the expected source state by
//! `mirrorctl check`.
//!
//! The file format is documented in `fixtures/README.md`; in short:
//!
//! ```json
//! { "project": "demo",
//!   "changes": [ { "path": "conversations/c1/messages/m1", "op": "create",
//!                  "updateTime": "2025-10-08T12:34:56.123456Z",
//!                  "fields": { "authorUserId": "u1", "bodyText": "hi", "createdAt": "…" } } ] }
//! ```
//!
//! Each change becomes one event exactly as a producer following the contract
//! would build it: the type from the path's family and `op`, the path as the
//! subject, `updateTime` as the source version (`time`), the default Firestore
//! `source` of `project`, and `fields` decoded as the type's payload. Nothing is
//! repaired or skipped: the first change that is not a valid event fails the
//! load with a [`SeedError`] naming its index, its path and what is wrong.

use mirror_schema::{
    parse_time, DecodeError, EventFamily, EventType, MirrorEvent, Op, Payload, Subject,
};
use serde::{Deserialize, Serialize};

/// A whole seed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    /// The Firestore project the documents belong to (used for `source`).
    pub project: String,
    /// Document changes in the order they are published.
    pub changes: Vec<SeedChange>,
}

/// One Firestore document change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedChange {
    /// Document path relative to `documents/`, e.g. `conversations/c1/messages/m1`.
    pub path: String,
    /// `create`, `update` or `delete`.
    pub op: String,
    /// The document's update time (for a delete, the time it was observed), RFC 3339.
    pub update_time: String,
    /// The contract payload (camelCase field names); `{}` or `{"performedBy": …}` for deletes.
    #[serde(default = "empty_object")]
    pub fields: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Why a seed file could not be turned into events.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The text is not JSON of the seed file's shape.
    #[error("seed file is not a valid seed document: {0}")]
    Format(#[from] serde_json::Error),
    /// `project` is empty, so no event `source` can be built.
    #[error("seed file: `project` is empty")]
    EmptyProject,
    /// One change is not a valid contract event. `error` names the field: `path`,
    /// `op`, `updateTime`, or `fields.<name>` for the payload.
    #[error("seed change #{index} (`{path}`): {error}")]
    Change {
        index: usize,
        path: String,
        error: DecodeError,
    },
}

/// Parse a seed file and turn every change into a contract event, in file order.
pub fn load(json: &str) -> Result<Vec<MirrorEvent>, SeedError> {
    let file: SeedFile = serde_json::from_str(json)?;
    file.events()
}

impl SeedFile {
    /// Every change as a contract event, in file order.
    pub fn events(&self) -> Result<Vec<MirrorEvent>, SeedError> {
        if self.project.trim().is_empty() {
            return Err(SeedError::EmptyProject);
        }
        self.changes
            .iter()
            .enumerate()
            .map(|(index, change)| {
                change
                    .to_event(&self.project)
                    .map_err(|error| SeedError::Change {
                        index,
                        path: change.path.clone(),
                        error,
                    })
            })
            .collect()
    }
}

impl SeedChange {
    /// This change as the event a contract producer would publish for it.
    pub fn to_event(&self, project: &str) -> Result<MirrorEvent, DecodeError> {
        let family = family_of(&self.path)?;
        let op = match self.op.as_str() {
            "create" => Op::Create,
            "update" => Op::Update,
            "delete" => Op::Delete,
            other => {
                return Err(invalid(
                    "op",
                    format!("`{other}` is not `create`, `update` or `delete`"),
                ))
            }
        };
        let event_type = EventType::of(family, op).ok_or_else(|| {
            invalid(
                "op",
                format!(
                    "`{}` has no `{op}` event (the contract has no such type)",
                    self.path
                ),
            )
        })?;
        let subject =
            Subject::parse(&self.path, family).map_err(|e| rename_field(e, "subject", "path"))?;
        let time = parse_time("updateTime", &self.update_time)?;
        let payload = Payload::from_json(event_type, &self.fields)
            .map_err(|e| rename_field(e, "data.payload", "fields"))?;
        let source = MirrorEvent::firestore_source(project, &subject);
        MirrorEvent::new(event_type, subject, time, source, payload)
            .map_err(|e| rename_field(e, "data.payload", "fields"))
    }
}

/// The event family a document path belongs to, from its collection names.
fn family_of(path: &str) -> Result<EventFamily, DecodeError> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["conversations", _] => Ok(EventFamily::Conversation),
        ["conversations", _, "messages", _] => Ok(EventFamily::Message),
        ["blocks", _, "targets", _] => Ok(EventFamily::Block),
        ["follows", _, "targets", _] => Ok(EventFamily::FollowEdge),
        _ => Err(invalid(
            "path",
            format!(
                "`{}` is not a mirrored document (conversations/{{id}}, conversations/{{id}}/messages/{{id}}, blocks/{{user}}/targets/{{user}}, follows/{{user}}/targets/{{user}})",
                path.chars().take(200).collect::<String>()
            ),
        )),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Name fields as the seed file does (`fields.createdAt`) rather than as the
/// event does (`data.payload.createdAt`).
fn rename_field(e: DecodeError, from: &str, to: &str) -> DecodeError {
    match e {
        DecodeError::Invalid { field, reason }
            if field == from || field.starts_with(&format!("{from}.")) =>
        {
            DecodeError::Invalid {
                field: format!("{to}{}", &field[from.len()..]),
                reason,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use mirror_schema::{decode_structured, format_time};
    use serde_json::json;

    use super::*;

    const SEED: &str = include_str!("../../../fixtures/realtime_mirror_seed.json");
    const SAMPLE: &str = include_str!("../../../fixtures/events_sample.jsonl");
    const INVALID: &str = include_str!("../../../fixtures/events_invalid.jsonl");
    const README: &str = include_str!("../../../fixtures/README.md");

    fn fixture() -> Vec<MirrorEvent> {
        load(SEED).unwrap_or_else(|e| panic!("the committed fixture must load: {e}"))
    }

    #[test]
    fn the_fixture_loads_and_covers_every_event_type() {
        let events = fixture();
        let file: SeedFile = serde_json::from_str(SEED).unwrap();
        assert_eq!(events.len(), file.changes.len());
        assert!(
            (400..=650).contains(&events.len()),
            "{} changes",
            events.len()
        );
        let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &events {
            *per_type.entry(e.event_type().as_str()).or_default() += 1;
        }
        for t in EventType::ALL {
            assert!(
                per_type.contains_key(t.as_str()),
                "no `{t}` in the fixture: {per_type:?}"
            );
        }
        let ids: HashSet<_> = events.iter().map(|e| e.id()).collect();
        assert_eq!(ids.len(), events.len(), "event ids are not unique");
        for (e, c) in events.iter().zip(&file.changes) {
            assert_eq!(e.subject().to_string(), c.path);
            assert_eq!(
                format_time(&e.time()),
                c.update_time,
                "updateTime is not canonical (6 digits, Z)"
            );
            assert_eq!(
                e.source(),
                format!(
                    "firestore://projects/demo/databases/(default)/documents/{}",
                    c.path
                )
            );
        }
    }

    #[test]
    fn the_fixture_is_a_plausible_firestore_history() {
        let events = fixture();
        // Times strictly increase per document, in file order.
        let mut last: HashMap<String, _> = HashMap::new();
        for e in &events {
            if let Some(prev) = last.insert(e.entity_key(), e.time()) {
                assert!(
                    e.time() > prev,
                    "{} goes back in time at {}",
                    e.entity_key(),
                    format_time(&e.time())
                );
            }
        }
        // Some messages arrive before their conversation (late parents).
        let mut seen_conversations = HashSet::new();
        let mut late_parents = HashSet::new();
        for e in &events {
            match e.subject() {
                Subject::Conversation { conversation_id } => {
                    seen_conversations.insert(conversation_id.clone());
                }
                Subject::Message {
                    conversation_id, ..
                } if !seen_conversations.contains(conversation_id) => {
                    late_parents.insert(conversation_id.clone());
                }
                _ => {}
            }
        }
        assert!(late_parents.len() >= 2, "late parents: {late_parents:?}");
        // Soft deletes, edits, attachments, both conversation kinds.
        let messages: Vec<_> = events
            .iter()
            .filter_map(|e| match e.payload() {
                Payload::Message(m) => Some((e.event_type(), m)),
                _ => None,
            })
            .collect();
        assert!(messages
            .iter()
            .any(|(t, m)| *t == EventType::DmMessageUpdate && m.deleted_at.is_some()));
        assert!(messages
            .iter()
            .any(|(t, m)| *t == EventType::DmMessageUpdate && m.edited_at.is_some()));
        assert!(messages.iter().any(|(_, m)| m.attachments.is_some()));
        assert!(messages.iter().any(|(_, m)| m.external_media.is_some()));
        let kinds: HashSet<_> = events
            .iter()
            .filter_map(|e| match e.payload() {
                Payload::Conversation(c) => Some(c.kind),
                _ => None,
            })
            .collect();
        assert_eq!(kinds.len(), 2);
    }

    #[test]
    fn a_bad_change_is_named_by_index_and_field() {
        let good = json!({"path": "follows/u1/targets/u2", "op": "create", "updateTime": "2025-10-08T12:00:00.000001Z",
                          "fields": {"state": "pending", "source": "web", "createdAt": "2025-10-08T12:00:00Z"}});
        let with = |bad: serde_json::Value| {
            json!({"project": "demo", "changes": [good.clone(), good.clone(), bad]}).to_string()
        };
        let err = |bad: serde_json::Value| load(&with(bad)).expect_err("must fail").to_string();

        let e = err(
            json!({"path": "users/u1", "op": "create", "updateTime": "2025-10-08T12:00:00Z", "fields": {}}),
        );
        assert!(
            e.starts_with("seed change #2 (`users/u1`): invalid `path`"),
            "{e}"
        );

        let e = err(
            json!({"path": "follows/u1/targets/u3", "op": "upsert", "updateTime": "2025-10-08T12:00:00Z", "fields": {}}),
        );
        assert!(
            e.starts_with("seed change #2 (`follows/u1/targets/u3`): invalid `op`"),
            "{e}"
        );

        let e = err(
            json!({"path": "conversations/c1", "op": "delete", "updateTime": "2025-10-08T12:00:00Z"}),
        );
        assert!(
            e.starts_with("seed change #2 (`conversations/c1`): invalid `op`"),
            "{e}"
        );

        let e = err(
            json!({"path": "follows/u1/targets/u3", "op": "update", "updateTime": "2025-10-08T12:00:00Z",
                           "fields": {"state": "friends", "source": "web", "createdAt": "2025-10-08T12:00:00Z"}}),
        );
        assert!(
            e.starts_with("seed change #2 (`follows/u1/targets/u3`): invalid `fields.state`"),
            "{e}"
        );

        let e = err(
            json!({"path": "conversations/c1/messages/m1", "op": "create", "updateTime": "2025-10-08T12:00:00Z",
                           "fields": {"bodyText": "hi", "createdAt": "2025-10-08T12:00:00Z"}}),
        );
        assert!(
            e.starts_with("seed change #2 (`conversations/c1/messages/m1`): invalid `fields`")
                && e.contains("authorUserId"),
            "{e}"
        );

        let e = err(
            json!({"path": "conversations//messages/m1", "op": "create", "updateTime": "2025-10-08T12:00:00Z", "fields": {}}),
        );
        assert!(e.contains("invalid `path`"), "{e}");

        let e =
            err(json!({"path": "blocks/u1/targets/u2", "op": "delete", "updateTime": "yesterday"}));
        assert!(
            e.starts_with("seed change #2 (`blocks/u1/targets/u2`): invalid `updateTime`"),
            "{e}"
        );

        // The typed error carries the index and the underlying DecodeError.
        match load(&with(
            json!({"path": "follows/u1/targets/u3", "op": "create", "updateTime": "2025-10-08T12:00:00Z",
                                 "fields": {"state": "pending", "source": "fax", "createdAt": "2025-10-08T12:00:00Z"}}),
        )) {
            Err(SeedError::Change {
                index: 2,
                path,
                error: DecodeError::Invalid { field, .. },
            }) => {
                assert_eq!(
                    (path.as_str(), field.as_str()),
                    ("follows/u1/targets/u3", "fields.source")
                );
            }
            other => panic!("{other:?}"),
        }

        assert!(matches!(
            load("{\"project\": \"demo\"}"),
            Err(SeedError::Format(_))
        ));
        assert!(matches!(
            load("{\"project\": \"\", \"changes\": []}"),
            Err(SeedError::EmptyProject)
        ));
        assert_eq!(
            load("{\"project\": \"demo\", \"changes\": []}").unwrap(),
            vec![]
        );
    }

    #[test]
    fn sample_events_decode_and_match_the_fixture() {
        let fixture: HashMap<_, _> = fixture().into_iter().map(|e| (e.id(), e)).collect();
        let mut types = HashSet::new();
        let lines: Vec<&str> = SAMPLE.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            (15..=30).contains(&lines.len()),
            "{} sample events",
            lines.len()
        );
        for (n, line) in lines.iter().enumerate() {
            let e = decode_structured(line.as_bytes())
                .unwrap_or_else(|err| panic!("events_sample.jsonl:{}: {err}", n + 1));
            let from_seed = fixture.get(&e.id()).unwrap_or_else(|| {
                panic!("events_sample.jsonl:{}: not a change of the seed", n + 1)
            });
            assert_eq!(&e, from_seed, "events_sample.jsonl:{}", n + 1);
            // and it is exactly what this crate would encode
            let ours: serde_json::Value = serde_json::from_slice(&e.to_structured_json()).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(ours, theirs, "events_sample.jsonl:{}", n + 1);
            types.insert(e.event_type());
        }
        assert_eq!(
            types.len(),
            EventType::ALL.len(),
            "the sample covers every type"
        );
    }

    /// The expected rejection of each line of `events_invalid.jsonl` is the
    /// table in `fixtures/README.md`: `| line | `code` | field or attribute | why |`.
    fn expected_rejections() -> Vec<(usize, String, String)> {
        let section = README
            .split("## `events_invalid.jsonl`")
            .nth(1)
            .expect("README has an events_invalid.jsonl section");
        section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let line: usize = cells.get(1)?.parse().ok()?;
                let code = cells.get(2)?.trim_matches('`').to_owned();
                let field = cells.get(3)?.trim_matches('`').to_owned();
                Some((line, code, field))
            })
            .collect()
    }

    #[test]
    fn invalid_events_fail_for_the_documented_reason() {
        let lines: Vec<&str> = INVALID.lines().collect();
        let expected = expected_rejections();
        assert_eq!(
            expected.len(),
            lines.len(),
            "README documents every invalid line"
        );
        let mut codes = HashSet::new();
        for (line_no, code, field) in expected {
            let line = lines[line_no - 1];
            let e = decode_structured(line.as_bytes())
                .expect_err(&format!("events_invalid.jsonl:{line_no} must be rejected"));
            assert_eq!(e.code(), code, "events_invalid.jsonl:{line_no}: {e}");
            if field != "–" {
                assert!(
                    e.to_string().contains(&format!("`{field}`")),
                    "events_invalid.jsonl:{line_no}: {e} does not name `{field}`"
                );
            }
            codes.insert(code);
        }
        for code in [
            "malformed",
            "unknown_type",
            "missing_field",
            "invalid_field",
            "id_mismatch",
            "wrong_id",
        ] {
            assert!(codes.contains(code), "no invalid line of class {code}");
        }
    }
}
