//! Which stored procedure an event goes to, with which typed parameters, and
//! how a call and a batch of calls run on a connection.
//!
//! [`procedure_call`] is a pure function of the event, so the exact RPC a store
//! sends is unit-tested without a server. Every procedure parameter defaults
//! to `NULL` in the SQL, and [`command`] binds only the values that are
//! present: tiberius 0.13 sends a bound `None` as an untyped NULL (TDS type
//! 0x1F), which SQL Server accepts but Babelfish rejects.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mirror_schema::{MirrorEvent, Payload, Subject};
use tiberius::Command;
use uuid::Uuid;

use super::connection::timed;
use super::error::map_error;
use super::snapshot::get;
use super::Client;
use crate::{ApplyOutcome, StoreError, StoreErrorKind};

/// One typed RPC parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// `UNIQUEIDENTIFIER`
    Uuid(Uuid),
    /// `NVARCHAR` (`None` = NULL)
    Text(Option<String>),
    /// `DATETIMEOFFSET(6)`, sent with offset +00:00 (`None` = NULL)
    Time(Option<DateTime<Utc>>),
}

/// A stored procedure call: name and named parameters in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcedureCall {
    pub procedure: &'static str,
    pub params: Vec<(&'static str, SqlParam)>,
}

impl ProcedureCall {
    /// The value bound to `name`, if any.
    pub fn param(&self, name: &str) -> Option<&SqlParam> {
        self.params.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// The procedures of the event → procedure map, in migration order.
pub const PROCEDURES: &[&str] = &[
    "dbo.sp_StoreMirror_UpsertDmConversation",
    "dbo.sp_StoreMirror_UpsertDmMessage",
    "dbo.sp_StoreMirror_DeleteDmMessage",
    "dbo.sp_StoreMirror_UpsertDmBlock",
    "dbo.sp_StoreMirror_DeleteDmBlock",
    "dbo.sp_StoreMirror_UpsertFollowEdge",
    "dbo.sp_StoreMirror_DeleteFollowEdge",
];

fn text(s: impl Into<String>) -> SqlParam {
    SqlParam::Text(Some(s.into()))
}

fn opt_text(s: Option<&String>) -> SqlParam {
    SqlParam::Text(s.cloned())
}

fn time(t: DateTime<Utc>) -> SqlParam {
    SqlParam::Time(Some(t))
}

fn json_array(v: &Option<Vec<serde_json::Value>>) -> SqlParam {
    SqlParam::Text(
        v.as_ref()
            .map(|a| serde_json::to_string(a).expect("JSON values serialize infallibly")),
    )
}

/// The subject's ids as the named parameters every procedure of its family
/// declares right after the four common ones.
pub(crate) fn subject_params(subject: &Subject) -> Vec<(&'static str, SqlParam)> {
    match subject {
        Subject::Conversation { conversation_id } => {
            vec![("@ConversationFirestoreId", text(conversation_id))]
        }
        Subject::Message {
            conversation_id,
            message_id,
        } => vec![
            ("@ConversationFirestoreId", text(conversation_id)),
            ("@MessageFirestoreId", text(message_id)),
        ],
        Subject::Block {
            user_id,
            target_user_id,
        } => vec![
            ("@UserId", text(user_id)),
            ("@TargetUserId", text(target_user_id)),
        ],
        Subject::FollowEdge {
            follower_user_id,
            target_user_id,
        } => vec![
            ("@FollowerUserId", text(follower_user_id)),
            ("@TargetUserId", text(target_user_id)),
        ],
    }
}

/// The call that applies `event`.
pub fn procedure_call(event: &MirrorEvent) -> ProcedureCall {
    let mut params: Vec<(&'static str, SqlParam)> = vec![
        ("@EventId", SqlParam::Uuid(event.id())),
        ("@EventType", text(event.event_type().as_str())),
        ("@SourceVersion", time(event.time())),
        ("@SyncSource", text(event.sync_source())),
    ];
    // MirrorEvent guarantees the payload fits the subject, so the subject's
    // parameters and the payload's together are the procedure's.
    params.extend(subject_params(event.subject()));
    let payload_json = || text(event.payload().to_json().to_string());
    let procedure = match event.payload() {
        Payload::Conversation(p) => {
            let participants: Vec<serde_json::Value> = p
                .participants
                .iter()
                .map(|x| serde_json::to_value(x).expect("participants serialize infallibly"))
                .collect();
            params.extend([
                ("@Type", text(p.kind.as_str())),
                ("@CreatedAt", time(p.created_at)),
                ("@UpdatedAt", time(p.updated_at)),
                (
                    "@ParticipantsJson",
                    text(serde_json::Value::Array(participants).to_string()),
                ),
                ("@PayloadJson", payload_json()),
            ]);
            "dbo.sp_StoreMirror_UpsertDmConversation"
        }
        Payload::Message(p) => {
            params.extend([
                ("@AuthorUserId", text(&p.author_user_id)),
                ("@BodyText", text(&p.body_text)),
                ("@AttachmentJson", json_array(&p.attachments)),
                ("@ExternalMediaJson", json_array(&p.external_media)),
                ("@CreatedAt", time(p.created_at)),
                ("@EditedAt", SqlParam::Time(p.edited_at)),
                ("@DeletedAt", SqlParam::Time(p.deleted_at)),
                ("@ClientMessageId", opt_text(p.client_message_id.as_ref())),
                ("@PayloadJson", payload_json()),
            ]);
            "dbo.sp_StoreMirror_UpsertDmMessage"
        }
        Payload::MessageDelete(d) => {
            params.extend([
                ("@PerformedBy", opt_text(d.performed_by.as_ref())),
                ("@PayloadJson", payload_json()),
            ]);
            "dbo.sp_StoreMirror_DeleteDmMessage"
        }
        Payload::Block(p) => {
            params.extend([
                ("@CreatedAt", time(p.created_at)),
                ("@RevokedAt", SqlParam::Time(p.revoked_at)),
                ("@Source", text(p.source.as_str())),
            ]);
            "dbo.sp_StoreMirror_UpsertDmBlock"
        }
        Payload::BlockDelete => "dbo.sp_StoreMirror_DeleteDmBlock",
        Payload::FollowEdge(p) => {
            params.extend([
                ("@State", text(p.state.as_str())),
                ("@Source", text(p.source.as_str())),
                ("@CreatedAt", time(p.created_at)),
            ]);
            "dbo.sp_StoreMirror_UpsertFollowEdge"
        }
        Payload::FollowEdgeDelete => "dbo.sp_StoreMirror_DeleteFollowEdge",
    };
    ProcedureCall { procedure, params }
}

// ---------------------------------------------------------------------------
// running calls

/// Bind `call` to a tiberius RPC command: every value that is present, by
/// name; an absent one (`None`) is left to the procedure's `= NULL` default
/// rather than sent as tiberius' untyped NULL, which Babelfish rejects.
pub(crate) fn command(call: &ProcedureCall) -> Command<'static> {
    let mut cmd = Command::new(call.procedure);
    for (name, value) in &call.params {
        match value {
            SqlParam::Uuid(u) => cmd.bind_param(*name, *u),
            SqlParam::Text(Some(s)) => cmd.bind_param(*name, s.clone()),
            SqlParam::Time(Some(t)) => cmd.bind_param(*name, t.fixed_offset()),
            SqlParam::Text(None) | SqlParam::Time(None) => {}
        }
    }
    cmd
}

/// The outcome text `procedure` returned, parsed.
pub(crate) fn outcome(procedure: &str, text: &str) -> Result<ApplyOutcome, StoreError> {
    ApplyOutcome::parse(text).ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Protocol,
            format!("{procedure} returned the outcome `{text}`"),
        )
    })
}

/// Run one procedure call and read its `Outcome`.
pub(crate) async fn run_call(
    client: &mut Client,
    call: &ProcedureCall,
) -> Result<ApplyOutcome, StoreError> {
    let started = std::time::Instant::now();
    let outcome = run_call_untimed(client, call).await;
    crate::telemetry::procedure_called(
        crate::telemetry::SQL_SERVER,
        call.procedure,
        started.elapsed(),
        outcome.as_ref().err(),
    );
    outcome
}

async fn run_call_untimed(
    client: &mut Client,
    call: &ProcedureCall,
) -> Result<ApplyOutcome, StoreError> {
    let result = command(call)
        .exec(client)
        .await
        .map_err(map_error)?
        .into_command_result()
        .await
        .map_err(map_error)?;
    for rows in result {
        for row in rows {
            if let Ok(Some(text)) = row.try_get::<&str, _>("Outcome") {
                return outcome(call.procedure, text);
            }
        }
    }
    Err(StoreError::new(
        StoreErrorKind::Protocol,
        format!("{} returned no Outcome row", call.procedure),
    ))
}

/// Run a procedure that answers nothing (its result sets, if any, are read and dropped).
async fn run_void(client: &mut Client, call: &ProcedureCall) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let result = async {
        command(call)
            .exec(client)
            .await
            .map_err(map_error)?
            .into_command_result()
            .await
            .map_err(map_error)
            .map(drop)
    }
    .await;
    crate::telemetry::procedure_called(
        crate::telemetry::SQL_SERVER,
        call.procedure,
        started.elapsed(),
        result.as_ref().err(),
    );
    result
}

pub(crate) async fn exec_sql(client: &mut Client, sql: &str) -> Result<(), StoreError> {
    client
        .simple_query(sql)
        .await
        .map_err(map_error)?
        .into_results()
        .await
        .map_err(map_error)?;
    Ok(())
}

async fn transaction_state(client: &mut Client) -> Result<(i32, i16), StoreError> {
    let row = client
        .simple_query("SELECT @@TRANCOUNT AS TranCount, XACT_STATE() AS XactState")
        .await
        .map_err(map_error)?
        .into_row()
        .await
        .map_err(map_error)?
        .ok_or_else(|| StoreError::new(StoreErrorKind::Protocol, "no transaction state row"))?;
    Ok((
        get::<i32>(&row, "TranCount")?.unwrap_or(0),
        get::<i16>(&row, "XactState")?.unwrap_or(0),
    ))
}

/// The order in which a batch applies its events: a stable sort by the
/// entity lock each event takes first (its conversation for `dm.conversation.*`
/// and `dm.message.*`, else its block or follow edge). A batch holds its
/// applocks until it commits, so two batches taking the same locks in
/// different orders could deadlock; in one global order they cannot. The sort
/// is stable, so the events of one entity keep their relative order, and an
/// event's outcome depends only on earlier events of its own entity: the
/// outcomes and the final state equal those of the input order.
pub use crate::plan::lock_order;

/// One event of a per-event batch: its procedure call, and for a repair
/// (`mirrorctl consistency --repair`) the call that prepares it first, in the
/// same savepoint (see [`super::checksum::prepare_repair`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub prepare: Option<ProcedureCall>,
    pub call: ProcedureCall,
}

impl Step {
    pub fn new(event: &MirrorEvent) -> Step {
        Step {
            prepare: super::checksum::prepare_repair(event),
            call: procedure_call(event),
        }
    }

    async fn run(&self, client: &mut Client) -> Result<ApplyOutcome, StoreError> {
        if let Some(prepare) = &self.prepare {
            run_void(client, prepare).await?;
        }
        run_call(client, &self.call).await
    }
}

/// One transaction, a savepoint per event; see the module docs for why a
/// failed event restarts the batch without it.
pub(crate) async fn apply_batch_on(
    client: &mut Client,
    steps: &[Step],
    limit: Duration,
) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
    let mut rejected: Vec<Option<StoreError>> = vec![None; steps.len()];
    'attempt: loop {
        timed(limit, exec_sql(client, "BEGIN TRANSACTION")).await?;
        let mut results = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            if let Some(e) = &rejected[i] {
                results.push(Err(e.clone()));
                continue;
            }
            timed(limit, exec_sql(client, "SAVE TRANSACTION rm_event")).await?;
            match timed(limit, step.run(client)).await {
                Ok(outcome) => results.push(Ok(outcome)),
                // The connection or the driver failed: nothing is committed.
                Err(e) if e.kind != StoreErrorKind::Database => return Err(e),
                Err(e) => {
                    let (trancount, state) = timed(limit, transaction_state(client)).await?;
                    if trancount > 0 && state == 1 {
                        timed(limit, exec_sql(client, "ROLLBACK TRANSACTION rm_event")).await?;
                        results.push(Err(e));
                    } else {
                        if trancount > 0 {
                            timed(limit, exec_sql(client, "ROLLBACK TRANSACTION")).await?;
                        }
                        rejected[i] = Some(e);
                        continue 'attempt;
                    }
                }
            }
        }
        timed(limit, exec_sql(client, "COMMIT TRANSACTION")).await?;
        return Ok(results);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_schema::{decode_structured, EventType};
    use serde_json::json;

    fn event(
        event_type: &str,
        subject: &str,
        time: &str,
        payload: serde_json::Value,
    ) -> MirrorEvent {
        let et: EventType = event_type.parse().unwrap();
        let subj = Subject::parse(subject, et.family()).unwrap();
        let t = mirror_schema::parse_time("time", time).unwrap();
        let id = mirror_schema::deterministic_id(et, &subj, &t);
        let mut data = json!({ "firestoreId": subj.document_id(), "op": et.op().as_str(), "payload": payload });
        if let Some(c) = subj.conversation_id() {
            data["conversationId"] = json!(c);
        }
        let body = json!({
            "specversion": "1.0", "id": id.to_string(), "type": event_type, "subject": subject, "time": time,
            "source": format!("firestore://projects/demo/databases/(default)/documents/{subject}"),
            "datacontenttype": "application/json", "data": data,
        });
        decode_structured(body.to_string().as_bytes()).unwrap()
    }

    fn names(c: &ProcedureCall) -> Vec<&'static str> {
        c.params.iter().map(|(n, _)| *n).collect()
    }

    /// Every procedure's parameter list, as declared in sql/mssql (the order
    /// does not matter for named RPC parameters, but keeping it equal makes
    /// the comparison with the SQL files trivial).
    const SIGNATURES: &[(&str, &[&str])] = &[
        (
            "dbo.sp_StoreMirror_UpsertDmConversation",
            &[
                "@EventId",
                "@EventType",
                "@SourceVersion",
                "@SyncSource",
                "@ConversationFirestoreId",
                "@Type",
                "@CreatedAt",
                "@UpdatedAt",
                "@ParticipantsJson",
                "@PayloadJson",
            ],
        ),
        (
            "dbo.sp_StoreMirror_UpsertDmMessage",
            &[
                "@EventId",
                "@EventType",
                "@SourceVersion",
                "@SyncSource",
                "@ConversationFirestoreId",
                "@MessageFirestoreId",
                "@AuthorUserId",
                "@BodyText",
                "@AttachmentJson",
                "@ExternalMediaJson",
                "@CreatedAt",
                "@EditedAt",
                "@DeletedAt",
                "@ClientMessageId",
                "@PayloadJson",
            ],
        ),
        (
            "dbo.sp_StoreMirror_DeleteDmMessage",
            &[
                "@EventId",
                "@EventType",
                "@SourceVersion",
                "@SyncSource",
                "@ConversationFirestoreId",
                "@MessageFirestoreId",
                "@PerformedBy",
                "@PayloadJson",
            ],
        ),
        (
            "dbo.sp_StoreMirror_UpsertDmBlock",
            &[
                "@EventId",
                "@EventType",
                "@SourceVersion",
                "@SyncSource",
                "@UserId",
                "@TargetUserId",
                "@CreatedAt",
                "@RevokedAt",
                "@Source",
            ],
        ),
        (
            "dbo.sp_StoreMirror_DeleteDmBlock",
            &[
                "@EventId",
                "@EventType",
                "@SourceVersion",
                "@SyncSource",
                "@UserId",
                "@TargetUserId",
            ],
        ),
        (
            "dbo.sp_StoreMirror_UpsertFollowEdge",
            &[
                "@EventId",
                "@EventType",
                "@SourceVersion",
                "@SyncSource",
                "@FollowerUserId",
                "@TargetUserId",
                "@State",
                "@Source",
                "@CreatedAt",
            ],
        ),
        (
            "dbo.sp_StoreMirror_DeleteFollowEdge",
            &[
                "@EventId",
                "@EventType",
                "@SourceVersion",
                "@SyncSource",
                "@FollowerUserId",
                "@TargetUserId",
            ],
        ),
    ];

    fn signature(proc_name: &str) -> Vec<&'static str> {
        SIGNATURES
            .iter()
            .find(|(p, _)| *p == proc_name)
            .unwrap()
            .1
            .to_vec()
    }

    #[test]
    fn the_rust_signatures_match_the_sql_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sql/mssql");
        for (proc_name, params) in SIGNATURES {
            let short = proc_name.trim_start_matches("dbo.");
            let file = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    let text = std::fs::read_to_string(p).unwrap();
                    text.contains(&format!("CREATE PROCEDURE dbo.{short} ("))
                })
                .unwrap_or_else(|| panic!("no file creates {proc_name}"));
            let text = std::fs::read_to_string(&file).unwrap();
            let head = &text[text.find("CREATE PROCEDURE").unwrap()..text.find("\nAS\n").unwrap()];
            let declared: Vec<&str> = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .filter(|w| w.starts_with('@'))
                .collect();
            for line in head.lines().skip(1).filter(|l| l.trim().starts_with('@')) {
                assert!(
                    line.trim_end_matches(',').ends_with("= NULL"),
                    "{proc_name}: `{line}` needs a NULL default, the store binds only present values"
                );
            }
            assert_eq!(&declared, params, "{proc_name} in {}", file.display());
        }
        assert_eq!(
            SIGNATURES.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            PROCEDURES
        );
    }

    #[test]
    fn conversation_call() {
        let e = event(
            "dm.conversation.create",
            "conversations/c1",
            "2025-10-08T12:00:00.5Z",
            json!({"type": "direct", "createdAt": "2025-10-08T11:00:00Z", "updatedAt": "2025-10-08T12:00:00Z", "lastMessageId": "m9",
                   "participants": [
                       {"userId": "u2", "role": "member", "joinedAt": "2025-10-08T11:00:00Z", "muteState": "none"},
                       {"userId": "u1", "role": "owner", "joinedAt": "2025-10-08T11:00:00Z", "muteState": "muted", "readPointerMessageId": "m1"}]}),
        );
        let c = procedure_call(&e);
        assert_eq!(c.procedure, "dbo.sp_StoreMirror_UpsertDmConversation");
        assert_eq!(names(&c), signature(c.procedure));
        assert_eq!(c.param("@EventId"), Some(&SqlParam::Uuid(e.id())));
        assert_eq!(c.param("@EventType"), Some(&text("dm.conversation.create")));
        assert_eq!(c.param("@SyncSource"), Some(&text("firestore")));
        assert_eq!(c.param("@SourceVersion"), Some(&time(e.time())));
        assert_eq!(c.param("@Type"), Some(&text("direct")));
        let Some(SqlParam::Text(Some(p))) = c.param("@ParticipantsJson") else {
            panic!()
        };
        let p: serde_json::Value = serde_json::from_str(p).unwrap();
        assert_eq!(p[0]["userId"], "u2");
        assert_eq!(p[1]["readPointerMessageId"], "m1");
        assert_eq!(p[1]["joinedAt"], "2025-10-08T11:00:00.000000Z");
        assert!(p[0].get("readPointerMessageId").is_none());
    }

    #[test]
    fn message_calls() {
        let e = event(
            "dm.message.update",
            "conversations/c1/messages/m1",
            "2025-10-08T12:34:56.123456Z",
            json!({"authorUserId": "u1", "bodyText": "hi", "createdAt": "2025-10-08T12:34:56.123456Z",
                   "attachments": [{"url": "x"}], "deletedAt": "2025-10-08T12:40:00Z"}),
        );
        let c = procedure_call(&e);
        assert_eq!(c.procedure, "dbo.sp_StoreMirror_UpsertDmMessage");
        assert_eq!(names(&c), signature(c.procedure));
        assert_eq!(c.param("@AttachmentJson"), Some(&text(r#"[{"url":"x"}]"#)));
        assert_eq!(c.param("@ExternalMediaJson"), Some(&SqlParam::Text(None)));
        assert_eq!(c.param("@EditedAt"), Some(&SqlParam::Time(None)));
        assert!(matches!(
            c.param("@DeletedAt"),
            Some(SqlParam::Time(Some(_)))
        ));
        assert_eq!(c.param("@ClientMessageId"), Some(&SqlParam::Text(None)));

        let d = event(
            "dm.message.delete",
            "conversations/c1/messages/m1",
            "2025-10-08T13:00:00Z",
            json!({"performedBy": "admin1"}),
        );
        let c = procedure_call(&d);
        assert_eq!(c.procedure, "dbo.sp_StoreMirror_DeleteDmMessage");
        assert_eq!(names(&c), signature(c.procedure));
        assert_eq!(c.param("@PerformedBy"), Some(&text("admin1")));
        assert_eq!(
            c.param("@PayloadJson"),
            Some(&text(r#"{"performedBy":"admin1"}"#))
        );
    }

    #[test]
    fn block_and_follow_calls() {
        let b = event(
            "dm.block.create",
            "blocks/u1/targets/u2",
            "2025-10-08T13:00:00Z",
            json!({"createdAt": "2025-10-08T13:00:00Z", "source": "admin"}),
        );
        let c = procedure_call(&b);
        assert_eq!(c.procedure, "dbo.sp_StoreMirror_UpsertDmBlock");
        assert_eq!(names(&c), signature(c.procedure));
        assert_eq!(c.param("@UserId"), Some(&text("u1")));
        assert_eq!(c.param("@TargetUserId"), Some(&text("u2")));
        assert_eq!(c.param("@Source"), Some(&text("admin")));
        assert_eq!(c.param("@RevokedAt"), Some(&SqlParam::Time(None)));

        let c = procedure_call(&event(
            "dm.block.delete",
            "blocks/u1/targets/u2",
            "2025-10-08T13:00:00Z",
            json!({}),
        ));
        assert_eq!(c.procedure, "dbo.sp_StoreMirror_DeleteDmBlock");
        assert_eq!(names(&c), signature(c.procedure));

        let f = event(
            "follow.edge.update",
            "follows/u1/targets/u2",
            "2025-10-08T13:00:00Z",
            json!({"state": "accepted", "source": "web", "createdAt": "2025-10-08T12:00:00Z"}),
        );
        let c = procedure_call(&f);
        assert_eq!(c.procedure, "dbo.sp_StoreMirror_UpsertFollowEdge");
        assert_eq!(names(&c), signature(c.procedure));
        assert_eq!(c.param("@FollowerUserId"), Some(&text("u1")));
        assert_eq!(c.param("@State"), Some(&text("accepted")));
        assert_eq!(c.param("@EventType"), Some(&text("follow.edge.update")));

        let c = procedure_call(&event(
            "follow.edge.delete",
            "follows/u1/targets/u2",
            "2025-10-08T13:00:00Z",
            json!({}),
        ));
        assert_eq!(c.procedure, "dbo.sp_StoreMirror_DeleteFollowEdge");
        assert_eq!(names(&c), signature(c.procedure));
    }

    #[test]
    fn batches_run_in_lock_order_keeping_each_entitys_order() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let t0 = chrono::DateTime::parse_from_rfc3339("2025-10-08T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut events = Vec::new();
        for i in 0..60 {
            let a = format!("u{}", next() % 4);
            let b = format!("c{}", next() % 4);
            let time = t0 + chrono::Duration::seconds(i);
            let (ty, subject, payload) = match next() % 3 {
                0 => (
                    mirror_schema::EventType::DmMessageDelete,
                    Subject::Message {
                        conversation_id: b,
                        message_id: a,
                    },
                    mirror_schema::Payload::MessageDelete(Default::default()),
                ),
                1 => (
                    mirror_schema::EventType::DmBlockDelete,
                    Subject::Block {
                        user_id: a,
                        target_user_id: b,
                    },
                    mirror_schema::Payload::BlockDelete,
                ),
                _ => (
                    mirror_schema::EventType::FollowEdgeDelete,
                    Subject::FollowEdge {
                        follower_user_id: a,
                        target_user_id: b,
                    },
                    mirror_schema::Payload::FollowEdgeDelete,
                ),
            };
            events.push(MirrorEvent::new(ty, subject, time, "firestore://x", payload).unwrap());
        }
        let order = lock_order(&events);
        let mut seen = order.clone();
        seen.sort();
        assert_eq!(seen, (0..events.len()).collect::<Vec<_>>(), "a permutation");
        // Per entity, input order is kept.
        let mut last: std::collections::HashMap<String, usize> = Default::default();
        for &i in &order {
            if let Some(prev) = last.insert(events[i].entity_key(), i) {
                assert!(prev < i, "{} reordered", events[i].entity_key());
            }
        }
        // Lock keys never decrease.
        let conv = |e: &MirrorEvent| e.subject().conversation_id().map(str::to_owned);
        for w in order.windows(2) {
            let (a, b) = (&events[w[0]], &events[w[1]]);
            if let (Some(x), Some(y)) = (conv(a), conv(b)) {
                assert!(x <= y);
            }
        }
    }

    #[test]
    fn commands_bind_only_present_values() {
        let call = ProcedureCall {
            procedure: "dbo.sp_X",
            params: vec![
                ("@A", SqlParam::Uuid(Uuid::nil())),
                ("@B", SqlParam::Text(None)),
                ("@C", SqlParam::Time(Some(Utc::now()))),
                ("@D", SqlParam::Time(None)),
                ("@E", SqlParam::Text(Some("x".into()))),
            ],
        };
        let debug = format!("{:?}", command(&call));
        for p in ["@A", "@C", "@E", "dbo.sp_X", "DateTimeOffset", "Guid"] {
            assert!(debug.contains(p), "{p} missing in {debug}");
        }
        for p in ["@B", "@D"] {
            assert!(
                !debug.contains(p),
                "{p} is None and must not be bound: {debug}"
            );
        }
    }
}
