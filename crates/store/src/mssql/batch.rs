//! A planned batch ([`crate::plan::Plan`]) as the one JSON parameter of
//! `dbo.sp_StoreMirror_ApplyBatch` (`sql/mssql/V24__sp_apply_batch.sql`), and
//! its rows back as one result per input event. Rust binds values; the T-SQL
//! decides. **Not run against a SQL Server yet.**
//!
//! Why one JSON parameter (`OPENJSON`) and not table-valued parameters:
//! tiberius 0.13 `Command::bind_table` asks the server for the table type's
//! layout before every call (`DECLARE @P AS <type>; SELECT TOP 0 * FROM @P`),
//! one more round trip per TVP per batch; a TVP needs a user-defined table
//! type, which a procedure using it pins (`DROP TYPE` fails while it exists),
//! so the re-runnable sqlcmd package would have to drop and recreate both in
//! step; and Babelfish has open TVP bugs (values with a single quote fail,
//! rows of one TVP mirroring the last one). `OPENJSON` is supported by SQL
//! Server 2016+ and Babelfish alike and the per-event procedures already use
//! it. A single `NVARCHAR(MAX)` that is never NULL also sidesteps tiberius'
//! untyped NULL (every bound `None` goes out as NULLTYPE, which Babelfish
//! rejects): an absent value is an absent JSON key, NULL in `OPENJSON ..
//! WITH`.
//!
//! Each event row carries exactly the named parameters of its per-event
//! procedure ([`procedure_call`], names without `@`), so the two paths bind
//! the same values; a unit test checks that every key the adapter sends is a
//! column the procedure reads.

use std::collections::HashMap;

use mirror_schema::{format_time, EventFamily, MirrorEvent, Op, Payload, Subject};
use serde_json::{json, Map, Value};
use tiberius::Command;
use uuid::Uuid;

use super::call::{outcome, procedure_call, SqlParam};
use super::error::map_error;
use super::snapshot::{get, req_text};
use super::Client;
use crate::plan::{Plan, Planned};
use crate::{ApplyOutcome, StoreError, StoreErrorKind};

/// The set-based procedure.
pub(crate) const APPLY_BATCH: &str = "dbo.sp_StoreMirror_ApplyBatch";

/// The applock the per-event procedures take first for `event`, as
/// `dbo.sp_StoreMirror_Lock`'s kind and the text whose bytes are its key: the
/// conversation id for conversations and their messages, the subject for
/// blocks and follow edges.
fn applock(event: &MirrorEvent) -> (&'static str, String) {
    match event.subject() {
        Subject::Conversation { conversation_id }
        | Subject::Message {
            conversation_id, ..
        } => ("conversation", conversation_id.clone()),
        Subject::Block { .. } => ("block", event.entity_key()),
        Subject::FollowEdge { .. } => ("follow-edge", event.entity_key()),
    }
}

fn family(event: &MirrorEvent) -> &'static str {
    match event.event_type().family() {
        EventFamily::Conversation => "conversation",
        EventFamily::Message => "message",
        EventFamily::Block => "block",
        EventFamily::FollowEdge => "follow",
    }
}

/// A bound value as JSON; `None` for NULL (the key is left out).
fn value(param: &SqlParam) -> Option<Value> {
    match param {
        SqlParam::Uuid(u) => Some(Value::String(u.to_string())),
        SqlParam::Text(s) => s.clone().map(Value::String),
        SqlParam::Time(t) => t.as_ref().map(|t| Value::String(format_time(t))),
    }
}

/// One element of `$.Events`.
fn event_row(ord: usize, planned: &Planned<'_>) -> Value {
    let e = planned.event;
    let mut row = Map::new();
    row.insert("Ord".into(), json!(ord));
    row.insert("Family".into(), json!(family(e)));
    row.insert("Subject".into(), json!(e.entity_key()));
    row.insert("Deleted".into(), json!(e.event_type().op() == Op::Delete));
    row.insert("Newest".into(), json!(planned.newest_so_far));
    row.insert("Winner".into(), json!(planned.winner));
    if let Payload::Conversation(c) = e.payload() {
        let hash =
            crate::state::participant_hash(c.participants.iter().map(|p| p.user_id.as_str()));
        row.insert("ParticipantHash".into(), json!(hash));
    }
    for (name, param) in procedure_call(e).params {
        if let Some(v) = value(&param) {
            row.insert(name.trim_start_matches('@').into(), v);
        }
    }
    Value::Object(row)
}

/// `@BatchJson` for `plan`: the locks in the plan's order, each once, and
/// every planned event in the plan's (lock) order.
pub(crate) fn batch_json(plan: &Plan<'_>) -> String {
    let mut locks: Vec<Value> = Vec::with_capacity(plan.locks.len());
    let mut last: Option<(&str, String)> = None;
    for p in &plan.events {
        let lock = applock(p.event);
        if last.as_ref() != Some(&lock) {
            locks.push(json!({ "Ord": locks.len() + 1, "Kind": lock.0, "Key": lock.1 }));
            last = Some(lock);
        }
    }
    let events: Vec<Value> = plan
        .events
        .iter()
        .enumerate()
        .map(|(i, p)| event_row(i + 1, p))
        .collect();
    json!({ "Locks": locks, "Events": events }).to_string()
}

/// The results per input event from the procedure's `(EventId, Outcome)`
/// rows: every planned event must have one.
pub(crate) fn answers(
    plan: &Plan<'_>,
    rows: Vec<(Uuid, ApplyOutcome)>,
) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
    let by_id: HashMap<Uuid, ApplyOutcome> = rows.into_iter().collect();
    let planned = plan
        .events
        .iter()
        .map(|p| {
            by_id.get(&p.event.id()).copied().map(Ok).ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Protocol,
                    format!(
                        "{APPLY_BATCH} returned no outcome for event {}",
                        p.event.id()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(plan.answer(planned))
}

/// Apply `plan` with one call. An `Err` of kind
/// [`StoreErrorKind::Database`] means the server rejected the batch and rolled
/// it back; any other means the connection's state is unknown.
pub(crate) async fn run(
    client: &mut Client,
    plan: &Plan<'_>,
) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
    let mut cmd = Command::new(APPLY_BATCH);
    cmd.bind_param("@BatchJson", batch_json(plan));
    let started = std::time::Instant::now();
    let rows = async {
        cmd.exec(client)
            .await
            .map_err(map_error)?
            .into_command_result()
            .await
            .map_err(map_error)
    }
    .await;
    crate::telemetry::procedure_called(
        crate::telemetry::SQL_SERVER,
        APPLY_BATCH,
        started.elapsed(),
        rows.as_ref().err(),
    );
    let rows = rows?
        .into_iter()
        .flatten()
        .map(|row| {
            let row = &row;
            let id = get::<Uuid>(row, "EventId")?.ok_or_else(|| {
                StoreError::new(StoreErrorKind::Protocol, "column EventId is NULL")
            })?;
            Ok((id, outcome(APPLY_BATCH, &req_text(row, "Outcome")?)?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    answers(plan, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use mirror_schema::*;

    fn t(s: i64) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 10, 8, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn message(c: &str, m: &str, s: i64, body: &str) -> MirrorEvent {
        MirrorEvent::new(
            EventType::DmMessageUpdate,
            Subject::Message {
                conversation_id: c.into(),
                message_id: m.into(),
            },
            t(s),
            "firestore://projects/p",
            Payload::Message(MessagePayload {
                author_user_id: "u1".into(),
                body_text: body.into(),
                attachments: None,
                external_media: None,
                created_at: t(0),
                edited_at: Some(t(s)),
                deleted_at: None,
                client_message_id: None,
            }),
        )
        .unwrap()
    }

    fn conversation(c: &str, users: &[&str], s: i64) -> MirrorEvent {
        MirrorEvent::new(
            EventType::DmConversationCreate,
            Subject::Conversation {
                conversation_id: c.into(),
            },
            t(s),
            "firestore://projects/p",
            Payload::Conversation(ConversationPayload {
                kind: ConversationKind::Group,
                participants: users
                    .iter()
                    .map(|u| Participant {
                        user_id: (*u).into(),
                        role: ParticipantRole::Member,
                        joined_at: t(0),
                        mute_state: MuteState::None,
                        read_pointer_message_id: None,
                    })
                    .collect(),
                created_at: t(0),
                updated_at: t(s),
                last_message_id: None,
            }),
        )
        .unwrap()
    }

    fn follow(f: &str, s: i64, state: Option<FollowState>) -> MirrorEvent {
        let (ty, payload) = match state {
            Some(state) => (
                EventType::FollowEdgeUpdate,
                Payload::FollowEdge(FollowEdgePayload {
                    state,
                    source: FollowSource::Web,
                    created_at: t(0),
                }),
            ),
            None => (EventType::FollowEdgeDelete, Payload::FollowEdgeDelete),
        };
        MirrorEvent::new(
            ty,
            Subject::FollowEdge {
                follower_user_id: f.into(),
                target_user_id: "t 1".into(),
            },
            t(s),
            "gateway://x",
            payload,
        )
        .unwrap()
    }

    fn batch(events: &[MirrorEvent]) -> (Plan<'_>, Value) {
        let plan = Plan::new(events);
        let json: Value = serde_json::from_str(&batch_json(&plan)).unwrap();
        (plan, json)
    }

    /// The columns `OPENJSON(@BatchJson, N'$.<array>') WITH (...)` reads.
    fn columns_read(array: &str) -> Vec<String> {
        let sql = include_str!("../../../../sql/mssql/V24__sp_apply_batch.sql");
        let from = format!("OPENJSON(@BatchJson, N'$.{array}') WITH (");
        let at = sql
            .find(&from)
            .unwrap_or_else(|| panic!("V24 reads no $.{array}"))
            + from.len();
        let body = &sql[at..at + sql[at..].find("\n    ) AS ").unwrap()];
        body.lines()
            .filter_map(|l| {
                let path = l.split('\'').nth(1)?;
                Some(path.trim_start_matches("$.").to_owned())
            })
            .collect()
    }

    #[test]
    fn every_key_the_adapter_sends_is_read_by_the_procedure() {
        let events = vec![
            conversation("c1", &["u2", "u1"], 1),
            message("c1", "m1", 2, "it's \"quoted\""),
            follow("u1", 3, Some(FollowState::Accepted)),
            follow("u1", 4, None),
            MirrorEvent::new(
                EventType::DmBlockCreate,
                Subject::Block {
                    user_id: "u1".into(),
                    target_user_id: "u2".into(),
                },
                t(5),
                "firestore://x",
                Payload::Block(BlockPayload {
                    created_at: t(5),
                    revoked_at: None,
                    source: BlockSource::Admin,
                }),
            )
            .unwrap(),
            MirrorEvent::new(
                EventType::DmMessageDelete,
                Subject::Message {
                    conversation_id: "c1".into(),
                    message_id: "m2".into(),
                },
                t(6),
                "firestore://x",
                Payload::MessageDelete(Default::default()),
            )
            .unwrap(),
        ];
        let (_, json) = batch(&events);
        let read = columns_read("Events");
        for row in json["Events"].as_array().unwrap() {
            for key in row.as_object().unwrap().keys() {
                assert!(read.contains(key), "V24 does not read `{key}`: {read:?}");
            }
        }
        let lock_keys: Vec<String> = json["Locks"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut read = columns_read("Locks");
        read.sort();
        assert_eq!(lock_keys, read);
    }

    /// The aliases of the `FOR JSON PATH` select that follows `marker` in V13.
    fn apply_one_sends(marker: &str) -> Vec<String> {
        let sql = include_str!("../../../../sql/mssql/V13__sp_apply_one.sql");
        let at = sql
            .find(marker)
            .unwrap_or_else(|| panic!("V13 lacks {marker}"));
        let select = &sql[at..at + sql[at..].find("FOR JSON PATH").unwrap()];
        let mut names: Vec<String> = select
            .split(" AS ")
            .skip(1)
            .map(|rest| {
                rest.trim_start_matches('[')
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .filter(|n| n != "BIT")
            .collect();
        names.sort();
        names
    }

    /// The per-event path (a batch of one built by `dbo.sp_StoreMirror_ApplyOne`)
    /// sends exactly the columns the batch reads.
    #[test]
    fn a_batch_of_one_sends_every_column_the_batch_reads() {
        for (array, marker) in [("Locks", "N'{\"Locks\":'"), ("Events", "N',\"Events\":'")] {
            let mut read = columns_read(array);
            read.sort();
            assert_eq!(apply_one_sends(marker), read, "{array}");
        }
    }

    #[test]
    fn rows_carry_the_per_event_parameters_and_the_plan() {
        let newer = message("c1", "m1", 5, "v5");
        let older = message("c1", "m1", 3, "v3");
        let events = vec![newer.clone(), older.clone(), newer.clone()];
        let (plan, json) = batch(&events);
        let rows = json["Events"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "the repeat is planned once");
        let row = &rows[0];
        assert_eq!(row["Ord"], 1);
        assert_eq!(row["Family"], "message");
        assert_eq!(row["EventId"], newer.id().to_string());
        assert_eq!(row["EventType"], "dm.message.update");
        assert_eq!(row["SourceVersion"], format_time(&t(5)));
        assert_eq!(row["Subject"], "conversations/c1/messages/m1");
        assert_eq!(row["SyncSource"], "firestore");
        assert_eq!(row["ConversationFirestoreId"], "c1");
        assert_eq!(row["MessageFirestoreId"], "m1");
        assert_eq!(row["BodyText"], "v5");
        assert_eq!(row["Deleted"], false);
        assert_eq!(
            (row["Newest"].clone(), row["Winner"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(
            (rows[1]["Newest"].clone(), rows[1]["Winner"].clone()),
            (json!(false), json!(false))
        );
        assert_eq!(
            row["PayloadJson"].as_str().unwrap(),
            newer.payload().to_json().to_string()
        );
        // NULLs are absent keys: never an untyped NULL.
        for absent in [
            "AttachmentJson",
            "DeletedAt",
            "ClientMessageId",
            "ParticipantHash",
        ] {
            assert!(row.get(absent).is_none(), "{absent}");
        }
        // Exactly the per-event call's values, under the same names.
        let call = procedure_call(&newer);
        for (name, param) in &call.params {
            assert_eq!(
                row.get(name.trim_start_matches('@')).cloned(),
                value(param),
                "{name}"
            );
        }
        assert_eq!(plan.events.len(), 2);
    }

    #[test]
    fn locks_follow_the_plan_once_each_with_the_per_event_keys() {
        let events = vec![
            follow("u2", 1, None),
            message("c2", "m1", 1, "x"),
            conversation("c1", &["u1"], 1),
            message("c1", "m9", 2, "x"),
            follow("u1", 2, Some(FollowState::Pending)),
            follow("u1", 3, None),
        ];
        let (plan, json) = batch(&events);
        let locks: Vec<(i64, String, String)> = json["Locks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["Ord"].as_i64().unwrap(),
                    l["Kind"].as_str().unwrap().to_owned(),
                    l["Key"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            locks,
            vec![
                (1, "conversation".into(), "c1".into()),
                (2, "conversation".into(), "c2".into()),
                (3, "follow-edge".into(), "follows/u1/targets/t 1".into()),
                (4, "follow-edge".into(), "follows/u2/targets/t 1".into()),
            ]
        );
        assert_eq!(locks.len(), plan.locks.len());
        // The kinds and keys are the ones a batch of one gets from
        // dbo.sp_StoreMirror_ApplyOne (the per-event path).
        let one = include_str!("../../../../sql/mssql/V13__sp_apply_one.sql");
        for needle in [
            "THEN N'block'",
            "THEN N'follow-edge'",
            "ELSE N'conversation'",
            "THEN @Subject ELSE @ConversationFirestoreId",
        ] {
            assert!(one.contains(needle), "{needle}");
        }
        // Conversations carry the hash the per-event procedure computes.
        let row = &json["Events"][0];
        assert_eq!(row["Family"], "conversation");
        assert_eq!(
            row["ParticipantHash"],
            crate::state::participant_hash(["u1"])
        );
        let deleted: Vec<bool> = json["Events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["Deleted"].as_bool().unwrap())
            .collect();
        assert_eq!(deleted, vec![false, false, false, false, true, true]);
    }

    #[test]
    fn answers_map_rows_back_to_input_order() {
        let a = message("c1", "m1", 5, "v5");
        let b = follow("u1", 1, None);
        let events = vec![b.clone(), a.clone(), b.clone()];
        let plan = Plan::new(&events);
        let got = answers(
            &plan,
            vec![
                (a.id(), ApplyOutcome::Applied),
                (b.id(), ApplyOutcome::Stale),
            ],
        )
        .unwrap();
        let got: Vec<ApplyOutcome> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            vec![
                ApplyOutcome::Stale,
                ApplyOutcome::Applied,
                ApplyOutcome::Duplicate
            ]
        );
        let missing = answers(&plan, vec![(a.id(), ApplyOutcome::Applied)]).unwrap_err();
        assert_eq!(missing.kind, StoreErrorKind::Protocol);
        assert!(missing.to_string().contains(&b.id().to_string()));
    }
}
