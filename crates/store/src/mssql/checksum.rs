//! SQL Server side of [`ChecksumStore`] — **not run against a SQL Server
//! yet** (none runs on the development machine); the queries and
//! `sql/mssql/V22__consistency_row_hash.sql` follow the PostgreSQL side,
//! which is tested.
//!
//! HASHBYTES per row at audit time is slow on large tables, so for
//! `DmMessage`, `DmBlock` and `FollowEdge` the hashes live in **persisted
//! computed columns** (`MirrorBucketHash` = first 4 bytes of the SHA-256 of
//! the bucket key, `MirrorRowHash` = first 8 bytes of the SHA-256 of the
//! canonical row text) that the engine maintains on every write the
//! procedures make, with an index on `MirrorBucketHash`; an audit then only
//! sums stored hashes. `DmConversation` folds in its `DmParticipant` rows,
//! which a computed column cannot read, so its hash is computed at audit time
//! (conversations are few next to messages).
//!
//! SQL Server hashes `nvarchar` as UTF-16LE ([`Dialect::SqlServer`]) and the
//! stored JSON is the adapter's compact `serde_json` text. Timestamps are
//! written `yyyy-mm-ddThh:mi:ss.ffffffZ` from the stored `DATETIMEOFFSET(6)`,
//! which the adapter always stores at offset +00:00.

use mirror_schema::MirrorEvent;

use super::call::{subject_params, ProcedureCall, SqlParam};
use super::error::map_error;
use super::MssqlStore;
use crate::checksum::{BucketSum, ChecksumStore, Dialect, Scope, StoredRow, Table, MAX_LEVEL};
use crate::StoreError;

/// The canonical timestamp text of `col` (NULL mark when NULL).
fn ts(col: &str) -> String {
    format!(
        "ISNULL(CONVERT(nvarchar(19), CONVERT(datetime2(6), {col}), 126) + N'.' + RIGHT(N'00000' + CONVERT(nvarchar(6), DATEPART(microsecond, {col})), 6) + N'Z', NCHAR(30))"
    )
}

fn text(col: &str) -> String {
    format!("ISNULL({col}, NCHAR(30))")
}

/// The canonical field expressions of `table` (alias `t`; messages also `c`).
pub(crate) fn field_exprs(table: Table) -> Vec<String> {
    match table {
        Table::DmConversation => vec![
            ts("t.SourceVersion"),
            "CASE WHEN t.IsPlaceholder = 1 THEN N'placeholder' ELSE N'live' END".into(),
            text("t.Type"),
            ts("t.CreatedAt"),
            ts("t.DocUpdatedAt"),
            format!(
                "CASE WHEN t.IsPlaceholder = 1 THEN NCHAR(30) ELSE ISNULL((SELECT STRING_AGG(CAST(CONCAT(p.UserId, N',', p.Role, N',', {}, N',', p.MuteState, N',', ISNULL(p.ReadPointerMessageId, NCHAR(30))) AS nvarchar(max)), N';') WITHIN GROUP (ORDER BY p.UserId) FROM dbo.DmParticipant AS p WHERE p.ConversationId = t.ConversationId), N'') END",
                ts("p.JoinedAt")
            ),
        ],
        Table::DmMessage => vec![
            ts("t.SourceVersion"),
            "CASE WHEN t.Tombstone = 1 THEN N'tombstone' ELSE N'live' END".into(),
            text("t.AuthorUserId"),
            text("t.BodyText"),
            text("t.AttachmentJson"),
            text("t.ExternalMediaJson"),
            ts("t.CreatedAt"),
            ts("t.EditedAt"),
            ts("t.DeletedAt"),
            text("t.ClientMessageId"),
        ],
        Table::DmBlock => vec![
            ts("t.SourceVersion"),
            "CASE WHEN t.DeletedAt IS NULL THEN N'live' ELSE N'tombstone' END".into(),
            ts("t.CreatedAt"),
            ts("t.RevokedAt"),
            text("t.Source"),
        ],
        Table::FollowEdge => vec![
            ts("t.SourceVersion"),
            "CASE WHEN t.DeletedAt IS NULL THEN N'live' ELSE N'tombstone' END".into(),
            text("t.State"),
            text("t.Source"),
            ts("t.CreatedAt"),
        ],
    }
}

/// `CONCAT` of the fields with the separator: the text `MirrorRowHash` hashes.
pub(crate) fn row_text_expr(table: Table) -> String {
    format!("CONCAT({})", field_exprs(table).join(", NCHAR(31), "))
}

/// The bucket key expression (alias `t`).
pub(crate) fn bucket_key_expr(table: Table) -> &'static str {
    match table {
        Table::DmConversation => "t.FirestoreId",
        Table::DmMessage => "t.FirestoreId",
        Table::DmBlock => "CONCAT(t.UserId, N'/', t.TargetUserId)",
        Table::FollowEdge => "CONCAT(t.FollowerUserId, N'/', t.TargetUserId)",
    }
}

/// `FROM` clause, key, liveness and conversation columns.
fn from(table: Table) -> (&'static str, &'static str, &'static str, &'static str) {
    match table {
        Table::DmConversation => (
            "dbo.DmConversation AS t",
            "t.FirestoreId",
            "t.IsPlaceholder = 0",
            "t.FirestoreId",
        ),
        Table::DmMessage => (
            "dbo.DmMessage AS t JOIN dbo.DmConversation AS c ON c.ConversationId = t.ConversationId",
            "CONCAT(c.FirestoreId, N'/', t.FirestoreId)",
            "t.Tombstone = 0",
            "c.FirestoreId",
        ),
        Table::DmBlock => (
            "dbo.DmBlock AS t",
            "CONCAT(t.UserId, N'/', t.TargetUserId)",
            "t.DeletedAt IS NULL",
            "CAST(NULL AS nvarchar(128))",
        ),
        Table::FollowEdge => (
            "dbo.FollowEdge AS t",
            "CONCAT(t.FollowerUserId, N'/', t.TargetUserId)",
            "t.DeletedAt IS NULL",
            "CAST(NULL AS nvarchar(128))",
        ),
    }
}

/// The stored (or, for conversations, computed) hashes of a row.
fn hashes(table: Table) -> (String, String) {
    match table {
        Table::DmConversation => (
            format!(
                "CAST(HASHBYTES('SHA2_256', {}) AS binary(4))",
                bucket_key_expr(table)
            ),
            format!(
                "CAST(HASHBYTES('SHA2_256', {}) AS binary(8))",
                row_text_expr(table)
            ),
        ),
        _ => ("t.MirrorBucketHash".into(), "t.MirrorRowHash".into()),
    }
}

fn bucket_of(bucket_hash: &str, level: u8) -> String {
    let n = usize::from(level.min(MAX_LEVEL)) + 1;
    format!("CAST(SUBSTRING({bucket_hash}, 1, {n}) AS int)")
}

fn bucket_sums_sql(table: Table, level: u8, with_parents: bool) -> String {
    let (from, _, live, conv) = from(table);
    let (bh, rh) = hashes(table);
    let parent = if with_parents && level > 0 {
        format!(
            " AND {} IN (SELECT CAST(value AS int) FROM OPENJSON(@P3))",
            bucket_of("h.bh", level - 1)
        )
    } else {
        String::new()
    };
    format!(
        "SELECT {b} AS b, COUNT_BIG(*) AS n,
                SUM(CAST(CAST(SUBSTRING(h.rh, 1, 4) AS binary(4)) AS bigint)) % 4294967296 AS hi,
                SUM(CAST(CAST(SUBSTRING(h.rh, 5, 4) AS binary(4)) AS bigint)) % 4294967296 AS lo
           FROM (SELECT {bh} AS bh, {rh} AS rh FROM {from}
                  WHERE {live} AND t.SourceVersion >= @P1 AND (DATALENGTH(@P2) = 0 OR {conv} = @P2)) AS h
          WHERE 1 = 1{parent}
          GROUP BY {b}",
        b = bucket_of("h.bh", level),
    )
}

fn select_rows(table: Table, filter: &str) -> String {
    let (from, key, _, _) = from(table);
    let fields: Vec<String> = field_exprs(table)
        .into_iter()
        .enumerate()
        .map(|(i, e)| format!("NULLIF({e}, NCHAR(30)) AS f{i}"))
        .collect();
    format!(
        "SELECT {key} AS k, {} FROM {from} WHERE {filter}",
        fields.join(", ")
    )
}

/// The scope as always-typed parameters: tiberius sends a bound `None` as an
/// untyped NULL, which Babelfish rejects, so "no lower bound" is the least
/// DATETIMEOFFSET and "every conversation" the empty id (no valid id is empty;
/// tested with DATALENGTH, since `=` would call an id of spaces empty).
fn scope_params(scope: &Scope) -> (chrono::DateTime<chrono::FixedOffset>, String) {
    let least = chrono::DateTime::parse_from_rfc3339("0001-01-01T00:00:00+00:00")
        .expect("a valid constant");
    (
        scope.since.map(super::ts).unwrap_or(least),
        scope.conversation.clone().unwrap_or_default(),
    )
}

fn to_json(buckets: &[u32]) -> String {
    serde_json::to_string(buckets).expect("integers serialize")
}

fn stored_rows(table: Table, rows: Vec<tiberius::Row>) -> Result<Vec<StoredRow>, StoreError> {
    let n = table.fields().len();
    rows.iter()
        .map(|r| {
            let key: &str = r.try_get(0).map_err(map_error)?.unwrap_or_default();
            let fields = (1..=n)
                .map(|i| {
                    r.try_get::<&str, _>(i)
                        .map(|v| v.map(str::to_owned))
                        .map_err(map_error)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(StoredRow {
                key: key.to_owned(),
                fields,
            })
        })
        .collect()
}

impl ChecksumStore for MssqlStore {
    fn dialect(&self) -> Dialect {
        Dialect::SqlServer
    }

    async fn bucket_sums(
        &self,
        table: Table,
        scope: &Scope,
        level: u8,
        parents: Option<&[u32]>,
    ) -> Result<Vec<(u32, BucketSum)>, StoreError> {
        let sql = bucket_sums_sql(table, level, parents.is_some());
        let (since, conv) = scope_params(scope);
        let parents = parents.map(to_json);
        self.run(move |c| {
            Box::pin(async move {
                let mut q = tiberius::Query::new(sql);
                q.bind(since);
                q.bind(conv);
                if let Some(p) = parents {
                    q.bind(p);
                }
                let rows = q
                    .query(c)
                    .await
                    .map_err(map_error)?
                    .into_first_result()
                    .await
                    .map_err(map_error)?;
                rows.iter()
                    .map(|r| {
                        let b: i32 = r.try_get(0).map_err(map_error)?.unwrap_or_default();
                        let n: i64 = r.try_get(1).map_err(map_error)?.unwrap_or_default();
                        let hi: i64 = r.try_get(2).map_err(map_error)?.unwrap_or_default();
                        let lo: i64 = r.try_get(3).map_err(map_error)?.unwrap_or_default();
                        Ok((
                            b as u32,
                            BucketSum {
                                rows: n as u64,
                                high: hi as u32,
                                low: lo as u32,
                            },
                        ))
                    })
                    .collect()
            })
        })
        .await
    }

    async fn rows_in_buckets(
        &self,
        table: Table,
        scope: &Scope,
        level: u8,
        buckets: &[u32],
    ) -> Result<Vec<StoredRow>, StoreError> {
        let (_, _, _, conv) = from(table);
        let bucket = bucket_of(
            &format!(
                "CAST(HASHBYTES('SHA2_256', {}) AS binary(4))",
                bucket_key_expr(table)
            ),
            level,
        );
        let sql = select_rows(
            table,
            &format!(
                "(DATALENGTH(@P1) = 0 OR {conv} = @P1) AND {bucket} IN (SELECT CAST(value AS int) FROM OPENJSON(@P2))"
            ),
        );
        self.leaf_rows(
            table,
            sql,
            vec![Some(scope_params(scope).1), Some(to_json(buckets))],
        )
        .await
    }

    async fn rows_by_key(
        &self,
        table: Table,
        keys: &[String],
    ) -> Result<Vec<StoredRow>, StoreError> {
        let (_, key, _, _) = from(table);
        let sql = select_rows(
            table,
            &format!("{key} IN (SELECT value FROM OPENJSON(@P1))"),
        );
        let keys = serde_json::to_string(keys).expect("strings serialize");
        self.leaf_rows(table, sql, vec![Some(keys)]).await
    }
}

impl MssqlStore {
    /// The rows of a leaf query (`@P1`, `@P2`, … bound to `params` in order).
    async fn leaf_rows(
        &self,
        table: Table,
        sql: String,
        params: Vec<Option<String>>,
    ) -> Result<Vec<StoredRow>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let mut q = tiberius::Query::new(sql);
                for p in params {
                    q.bind(p);
                }
                let rows = q
                    .query(c)
                    .await
                    .map_err(map_error)?
                    .into_first_result()
                    .await
                    .map_err(map_error)?;
                stored_rows(table, rows)
            })
        })
        .await
    }
}

/// The call that prepares a repair event (`dbo.sp_StoreMirror_PrepareRepair`,
/// `sql/mssql/V23__prepare_repair.sql`), `None` for any other event. The
/// adapter runs it in the event's transaction and savepoint, right before the
/// event's own procedure ([`super::call::Step`]), as the PostgreSQL adapter
/// runs `mirror.prepare_repair`. `@A`/`@B` are the subject's ids (`@B` left
/// unbound, hence NULL, for a conversation).
pub(crate) fn prepare_repair(event: &MirrorEvent) -> Option<ProcedureCall> {
    if !crate::checksum::is_repair(event) {
        return None;
    }
    let mut ids = subject_params(event.subject())
        .into_iter()
        .map(|(_, value)| value);
    let a = ids.next().expect("every subject has an id");
    let b = ids.next().unwrap_or(SqlParam::Text(None));
    Some(ProcedureCall {
        procedure: PREPARE_REPAIR,
        params: vec![
            ("@EventId", SqlParam::Uuid(event.id())),
            (
                "@EventType",
                SqlParam::Text(Some(event.event_type().as_str().into())),
            ),
            ("@A", a),
            ("@B", b),
            ("@SourceVersion", SqlParam::Time(Some(event.time()))),
        ],
    })
}

const PREPARE_REPAIR: &str = "dbo.sp_StoreMirror_PrepareRepair";

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_schema::{EventType, Payload, Subject};

    /// The persisted columns of the migration hash exactly what the leaf reads return.
    #[test]
    fn the_migration_hashes_the_same_text_the_queries_read() {
        let sql = include_str!("../../../../sql/mssql/V22__consistency_row_hash.sql");
        for table in [Table::DmMessage, Table::DmBlock, Table::FollowEdge] {
            let row = row_text_expr(table).replace("t.", "");
            assert!(sql.contains(&row), "{table:?}: V22 lacks\n{row}");
            let key = bucket_key_expr(table).replace("t.", "");
            assert!(
                sql.contains(&format!("HASHBYTES('SHA2_256', {key})")),
                "{table:?}: {key}"
            );
        }
        let proc = include_str!("../../../../sql/mssql/V23__prepare_repair.sql");
        assert!(proc.contains("dbo.sp_StoreMirror_PrepareRepair"));
    }

    /// No scope parameter is ever bound as `None` (tiberius' untyped NULL).
    #[test]
    fn scope_parameters_are_always_typed_values() {
        let (since, conv) = scope_params(&Scope::default());
        assert_eq!(since.to_rfc3339(), "0001-01-01T00:00:00+00:00");
        assert_eq!(conv, "");
        let t = chrono::DateTime::parse_from_rfc3339("2025-10-08T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let scoped = Scope {
            since: Some(t),
            conversation: Some("  ".into()),
        };
        assert_eq!(
            scope_params(&scoped),
            (super::super::ts(t), "  ".to_owned())
        );
        for table in [Table::DmConversation, Table::DmMessage, Table::FollowEdge] {
            for sql in [
                bucket_sums_sql(table, 1, true),
                bucket_sums_sql(table, 0, false),
            ] {
                assert!(
                    !sql.contains("@P1 IS NULL") && !sql.contains("@P2 IS NULL"),
                    "{sql}"
                );
                assert!(sql.contains("DATALENGTH(@P2) = 0"), "{sql}");
            }
        }
    }

    fn event(source: &str, subject: Subject, payload: Payload, ty: EventType) -> MirrorEvent {
        let t = chrono::DateTime::parse_from_rfc3339("2025-10-08T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        MirrorEvent::new(ty, subject, t, source, payload).unwrap()
    }

    /// Only repairs are prepared; the parameters are the ones V23 declares,
    /// `@B` unbound (NULL by default) for a conversation.
    #[test]
    fn repairs_and_only_repairs_are_prepared_with_v23s_parameters() {
        let proc = include_str!("../../../../sql/mssql/V23__prepare_repair.sql");
        let follow = |source: &str| {
            event(
                source,
                Subject::FollowEdge {
                    follower_user_id: "u1".into(),
                    target_user_id: "u2".into(),
                },
                Payload::FollowEdgeDelete,
                EventType::FollowEdgeDelete,
            )
        };
        assert_eq!(prepare_repair(&follow("firestore://projects/p")), None);
        let repair = follow("repair://mirrorctl");
        let call = prepare_repair(&repair).expect("a repair is prepared");
        assert_eq!(call.procedure, PREPARE_REPAIR);
        for (name, _) in &call.params {
            assert!(
                proc.contains(&format!("    {name} ")),
                "V23 does not declare {name}"
            );
        }
        assert_eq!(call.param("@A"), Some(&SqlParam::Text(Some("u1".into()))));
        assert_eq!(call.param("@B"), Some(&SqlParam::Text(Some("u2".into()))));
        assert_eq!(call.param("@EventId"), Some(&SqlParam::Uuid(repair.id())));
        assert_eq!(
            call.param("@SourceVersion"),
            Some(&SqlParam::Time(Some(repair.time())))
        );

        let message = event(
            "repair://mirrorctl",
            Subject::Message {
                conversation_id: "c1".into(),
                message_id: "m1".into(),
            },
            Payload::MessageDelete(Default::default()),
            EventType::DmMessageDelete,
        );
        let call = prepare_repair(&message).unwrap();
        assert_eq!(call.param("@A"), Some(&SqlParam::Text(Some("c1".into()))));
        assert_eq!(call.param("@B"), Some(&SqlParam::Text(Some("m1".into()))));
    }
}
