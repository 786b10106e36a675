//! SQL Server / Azure SQL adapter of [`MirrorStore`](crate::MirrorStore), on tiberius.
//!
//! Events are applied by the stored procedures of `sql/mssql/` (one per event
//! family and operation, see [`call::PROCEDURES`]), called by RPC with typed,
//! named parameters (only the values present are bound); each returns one row
//! with `Outcome` = `applied` | `duplicate` | `stale`. The procedures implement
//! [`crate::model::Model`] exactly; this module only builds calls, runs them
//! and reads rows back. The T-SQL also runs on Babelfish for PostgreSQL.
//!
//! Layout (the same as `postgres/`): [`config`] (connection string),
//! [`connection`] (login, pool manager, command timeout, create/drop
//! database), [`call`] (event → procedure call, one call, a per-event batch),
//! `batch` (a planned batch → the one JSON parameter of the set-based
//! procedure), `checksum` (consistency checks, repair preparation), `ledger`
//! (pruning), [`error`] (tiberius errors → [`StoreError`], the procedures'
//! THROW numbers), [`snapshot`] (rows → [`MirrorState`]); this file holds the
//! store, its migrations and the bookkeeping statements.
//!
//! - Connections: a small bb8 pool of tiberius clients ([`MssqlConfig`] from an
//!   ADO.NET string), TLS by rustls, SQL login or Entra ID access tokens
//!   (`azure_identity`, scope [`config::ENTRA_SCOPE`]), Azure SQL gateway
//!   redirects followed (up to [`config::MAX_REDIRECTS`]). [`MssqlStore::connect`]
//!   opens the first connection itself, so a refused port, a failed TLS
//!   handshake or a failed login is reported at once with the server and the
//!   cause; a later pool timeout names the last connect error the pool saw.
//! - Every database call is bounded by the command timeout
//!   ([`StoreErrorKind::Timeout`]); a connection that timed out or broke is
//!   dropped by the pool, never reused mid-response.
//! - [`MirrorStore::apply_batch_as`](crate::MirrorStore::apply_batch_as):
//!   [`ApplyMode::Batched`] (also `apply_batch`) sends the batch planned by
//!   [`crate::plan::Plan`] as one call of `dbo.sp_StoreMirror_ApplyBatch`
//!   (one transaction, set-based, the summary once per conversation); if the
//!   server rejects it, the batch is applied again per event.
//!   [`ApplyMode::PerEvent`]: one transaction, `SAVE TRANSACTION` before each
//!   event. The procedures run with `XACT_ABORT ON` (a rejected event dooms
//!   the whole transaction, as SQL Server does for any error under it), so
//!   when an event fails the batch is rolled back and re-run without it; the
//!   events before it are re-applied with the same result, and every event
//!   still gets its own result. The events run in [`call::lock_order`] (a
//!   stable sort by entity lock), so concurrent batches take their applocks
//!   in one global order and cannot deadlock on them; results come back in
//!   input order. A repair event (`mirrorctl consistency --repair`) is
//!   prepared by `dbo.sp_StoreMirror_PrepareRepair` in its savepoint and
//!   always takes the per-event path.
//! - Errors: server errors keep their number ([`crate::DbCode::Mssql`]); the
//!   writer's policy classifies them. The procedures' own numbers are in
//!   [`PROCEDURE_ERRORS`].
//!
//! **Not run against a real SQL Server on the development machine** (none can
//! run there; the set-based batch has never run anywhere): the SQL is parsed
//! by `tests/mssql_sql_parses.rs`, the pure parts are unit-tested, and CI (`.github/workflows/integration-mssql.yml`) runs the
//! conformance suite against SQL Server 2022.

mod batch;
pub mod call;
mod checksum;
pub mod config;
pub mod connection;
pub mod error;
mod ledger;
pub mod snapshot;

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::Future;
use mirror_schema::MirrorEvent;
use tokio::net::TcpStream;
use tokio_util::compat::Compat;
use uuid::Uuid;

pub use call::{lock_order, procedure_call, ProcedureCall, SqlParam, PROCEDURES};
pub use config::{MssqlAuth, MssqlConfig};
pub use connection::{create_database_if_missing, drop_database, redirected, Manager};
pub use error::{map_error, PROCEDURE_ERRORS};

use call::{apply_batch_on, exec_sql, run_call, Step};
use connection::timed;
use snapshot::{get, req, req_text, rows, text, ts};

use crate::plan::Plan;
use crate::{
    ApplyEvents, ApplyMode, ApplyOutcome, Checkpoint, CheckpointStore, DeadLetterRecord,
    DeadLetterStore, InspectStore, MetricSample, MetricsStore, MirrorState, StoreError,
    StoreErrorKind, StoredDeadLetter,
};

/// A tiberius client over tokio TCP.
pub type Client = tiberius::Client<Compat<TcpStream>>;

/// The migrations of `sql/mssql/`, in order (embedded at build time).
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__tables",
        include_str!("../../../sql/mssql/V1__tables.sql"),
    ),
    (
        "V2__view_follow_event",
        include_str!("../../../sql/mssql/V2__view_follow_event.sql"),
    ),
    (
        "V3__fn_is_valid_id",
        include_str!("../../../sql/mssql/V3__fn_is_valid_id.sql"),
    ),
    (
        "V4__fn_utf8",
        include_str!("../../../sql/mssql/V4__fn_utf8.sql"),
    ),
    (
        "V5__fn_hex",
        include_str!("../../../sql/mssql/V5__fn_hex.sql"),
    ),
    (
        "V6__fn_is_newer",
        include_str!("../../../sql/mssql/V6__fn_is_newer.sql"),
    ),
    (
        "V7__fn_is_duplicate",
        include_str!("../../../sql/mssql/V7__fn_is_duplicate.sql"),
    ),
    (
        "V8__sp_check_event",
        include_str!("../../../sql/mssql/V8__sp_check_event.sql"),
    ),
    (
        "V9__sp_lock",
        include_str!("../../../sql/mssql/V9__sp_lock.sql"),
    ),
    (
        "V11__sp_refresh_dm_conversation_summary",
        include_str!("../../../sql/mssql/V11__sp_refresh_dm_conversation_summary.sql"),
    ),
    (
        "V12__sp_upsert_dm_conversation",
        include_str!("../../../sql/mssql/V12__sp_upsert_dm_conversation.sql"),
    ),
    (
        "V13__sp_apply_one",
        include_str!("../../../sql/mssql/V13__sp_apply_one.sql"),
    ),
    (
        "V14__sp_upsert_dm_message",
        include_str!("../../../sql/mssql/V14__sp_upsert_dm_message.sql"),
    ),
    (
        "V15__sp_delete_dm_message",
        include_str!("../../../sql/mssql/V15__sp_delete_dm_message.sql"),
    ),
    (
        "V17__sp_upsert_dm_block",
        include_str!("../../../sql/mssql/V17__sp_upsert_dm_block.sql"),
    ),
    (
        "V18__sp_delete_dm_block",
        include_str!("../../../sql/mssql/V18__sp_delete_dm_block.sql"),
    ),
    (
        "V20__sp_upsert_follow_edge",
        include_str!("../../../sql/mssql/V20__sp_upsert_follow_edge.sql"),
    ),
    (
        "V21__sp_delete_follow_edge",
        include_str!("../../../sql/mssql/V21__sp_delete_follow_edge.sql"),
    ),
    (
        "V22__consistency_row_hash",
        include_str!("../../../sql/mssql/V22__consistency_row_hash.sql"),
    ),
    (
        "V23__prepare_repair",
        include_str!("../../../sql/mssql/V23__prepare_repair.sql"),
    ),
    (
        "V24__sp_apply_batch",
        include_str!("../../../sql/mssql/V24__sp_apply_batch.sql"),
    ),
];

/// The mirror's tables in schema order, as [`MirrorStore::table_counts`] names them.
pub const TABLES: &[&str] = &[
    "DmConversation",
    "DmParticipant",
    "DmMessage",
    "DmMessageAudit",
    "DmBlock",
    "FollowEdge",
    "FollowEvent",
    "RealtimeMirrorCheckpoint",
    "RealtimeMirrorDeadLetter",
    "RealtimeMirrorMetrics",
    "AppliedEvent",
];

// ---------------------------------------------------------------------------
// the store

/// The SQL Server store.
#[derive(Clone)]
pub struct MssqlStore {
    pool: bb8::Pool<Manager>,
    config: Arc<MssqlConfig>,
    /// The pool manager's last connect error, named when the pool times out.
    last_connect_error: Arc<Mutex<Option<StoreError>>>,
}

impl std::fmt::Debug for MssqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MssqlStore {
    /// Open the first connection, then build the pool around it. The first
    /// connection is opened here rather than by the pool, so its own error
    /// (connection refused, TLS, login failed, not a SQL Server) reaches the
    /// caller within the connect timeout, naming the server and the cause:
    /// bb8 would retry it silently until its checkout timeout.
    pub async fn connect(config: &MssqlConfig) -> Result<MssqlStore, StoreError> {
        let store = MssqlStore::lazy(config)?;
        let first = store.pool.dedicated_connection().await?;
        // The pool is new and empty, so it has room; a refusal would only
        // mean the connection is already broken, and the pool opens another.
        let _ = store.pool.add(first);
        Ok(store)
    }

    /// The store without a connection yet: the pool connects on first use.
    fn lazy(config: &MssqlConfig) -> Result<MssqlStore, StoreError> {
        let config = Arc::new(config.clone());
        let manager = Manager::new(config.clone())?;
        let last_connect_error = manager.last_connect_error();
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size.max(1))
            .connection_timeout(config.connect_timeout + config.command_timeout)
            .test_on_check_out(false)
            .build_unchecked(manager);
        Ok(MssqlStore {
            pool,
            config,
            last_connect_error,
        })
    }

    pub fn config(&self) -> &MssqlConfig {
        &self.config
    }

    async fn conn(&self) -> Result<bb8::PooledConnection<'_, Manager>, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => {
                let last = self
                    .last_connect_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                pool_timeout(&self.config, last.as_ref())
            }
        })
    }

    /// Run `f` on a pooled connection within the command timeout; a connection
    /// that failed for anything but a clean server error is dropped.
    async fn run<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut Client) -> BoxFut<'c, T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let limit = self.config.command_timeout;
        let result = timed(limit, f(&mut conn.client)).await;
        if let Err(e) = &result {
            if error::breaks_connection(e) {
                conn.broken = true;
            }
        }
        result
    }

    /// Apply the embedded migrations with refinery (history in
    /// `dbo.refinery_schema_history`); returns how many were applied now.
    /// Use this or `deploy/sql/deploy_realtime_mirror.sqlcmd` on a database, not both.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(name, sql)| refinery::Migration::unapplied(name, sql))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Migration,
                    format!("bad embedded migration: {e}"),
                )
            })?;
        let mut conn = self.conn().await?;
        let runner = refinery::Runner::new(&migrations);
        // DDL can take longer than a command; refinery runs each file in a transaction.
        let limit = self.config.command_timeout * 10;
        let result = match tokio::time::timeout(limit, runner.run_async(&mut conn.client)).await {
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("migrations exceeded {limit:?}"),
            )),
            Ok(Err(e)) => Err(StoreError::new(
                StoreErrorKind::Migration,
                format!("SQL Server migration failed: {e}"),
            )),
            Ok(Ok(report)) => Ok(report.applied_migrations().len()),
        };
        if result.is_err() {
            conn.broken = true;
        }
        result
    }
}

/// The error of a pool checkout that timed out: the server, the timeout, and
/// the last connect error the pool saw (the likely cause), if any.
fn pool_timeout(config: &MssqlConfig, last: Option<&StoreError>) -> StoreError {
    let waited = config.connect_timeout + config.command_timeout;
    match last {
        Some(e) => StoreError::new(
            StoreErrorKind::PoolTimeout,
            format!(
                "no SQL Server connection to {} became free within {waited:?}; the last attempt to connect failed: {e}",
                config.server()
            ),
        ),
        None => StoreError::new(
            StoreErrorKind::PoolTimeout,
            format!(
                "no SQL Server connection to {} became free within {waited:?} (all {} in use)",
                config.server(),
                config.pool_size.max(1)
            ),
        ),
    }
}

type BoxFut<'c, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;

fn dead_letter(row: &tiberius::Row) -> Result<StoredDeadLetter, StoreError> {
    let last_failed_at: DateTime<Utc> = req(row, "LastFailedAt")?;
    Ok(StoredDeadLetter {
        record: DeadLetterRecord {
            key: req_text(row, "DeadLetterKey")?,
            event_id: get::<Uuid>(row, "EventId")?,
            event_type: text(row, "EventType")?,
            subject: text(row, "Subject")?,
            payload: req_text(row, "Payload")?,
            reason: req_text(row, "Reason")?,
            error: req_text(row, "Error")?,
            attempts: req::<i32>(row, "Attempts")?.max(0) as u32,
            failed_at: last_failed_at,
            subscription: req_text(row, "Subscription")?,
        },
        first_failed_at: req(row, "FirstFailedAt")?,
        last_failed_at,
        replay_count: req::<i32>(row, "ReplayCount")?.max(0) as u32,
        last_replayed_at: get(row, "LastReplayedAt")?,
    })
}

const DEAD_LETTER_COLUMNS: &str =
    "DeadLetterKey, EventId, EventType, Subject, Payload, Reason, Error, Attempts, Subscription, \
     FirstFailedAt, LastFailedAt, ReplayCount, LastReplayedAt";

impl MssqlStore {
    /// [`ApplyMode::Batched`]: the planned batch as one call of
    /// `dbo.sp_StoreMirror_ApplyBatch` (one transaction). If the server
    /// rejects it (a row breaking a constraint, a deadlock), it has rolled it
    /// back, and the batch is applied again event by event on the same
    /// connection, so only the events that fail on their own get an error.
    async fn apply_set_based(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let plan = Plan::new(events);
        let limit = self.config.command_timeout;
        let mut conn = self.conn().await?;
        let result = match timed(limit, batch::run(&mut conn.client, &plan)).await {
            Err(e) if e.kind == StoreErrorKind::Database => {
                tracing::debug!(error = %e, events = events.len(), "set-based batch rejected; applying it event by event");
                match timed(
                    limit,
                    exec_sql(&mut conn.client, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"),
                )
                .await
                {
                    Ok(()) => per_event_on(&mut conn.client, events, limit).await,
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        if result.is_err() {
            // The stream may be mid-response or a transaction open: never
            // hand this connection to anyone else.
            conn.broken = true;
        }
        result
    }

    /// [`ApplyMode::PerEvent`]: one transaction, each event its own procedure
    /// call inside its own savepoint, in lock order.
    async fn apply_per_event(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let limit = self.config.command_timeout;
        let mut conn = self.conn().await?;
        let result = per_event_on(&mut conn.client, events, limit).await;
        if result.is_err() {
            conn.broken = true;
        }
        result
    }
}

/// The per-event path on one connection: run in lock order (see
/// [`lock_order`]), answer in input order.
async fn per_event_on(
    client: &mut Client,
    events: &[MirrorEvent],
    limit: std::time::Duration,
) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
    let order = lock_order(events);
    let steps: Vec<Step> = order.iter().map(|&i| Step::new(&events[i])).collect();
    let sorted = apply_batch_on(client, &steps, limit).await?;
    let mut results: Vec<Option<Result<ApplyOutcome, StoreError>>> =
        (0..events.len()).map(|_| None).collect();
    for (slot, r) in order.into_iter().zip(sorted) {
        results[slot] = Some(r);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every event has a result"))
        .collect())
}

impl ApplyEvents for MssqlStore {
    async fn apply(&self, event: &MirrorEvent) -> Result<ApplyOutcome, StoreError> {
        if crate::checksum::is_repair(event) {
            // A repair is prepared and applied in one transaction.
            let mut results = self.apply_per_event(std::slice::from_ref(event)).await?;
            return results.pop().expect("one result per event");
        }
        let call = procedure_call(event);
        self.run(move |c| Box::pin(async move { run_call(c, &call).await }))
            .await
    }

    async fn apply_batch(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        self.apply_batch_as(events, ApplyMode::Batched).await
    }

    async fn apply_batch_as(
        &self,
        events: &[MirrorEvent],
        mode: ApplyMode,
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        match crate::plan::route(events, mode) {
            crate::plan::Route::Empty => Ok(Vec::new()),
            crate::plan::Route::PerEvent => self.apply_per_event(events).await,
            crate::plan::Route::SetBased => self.apply_set_based(events).await,
        }
    }
}

impl DeadLetterStore for MssqlStore {
    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.run(move |c| {
            Box::pin(async move {
                let sql = "SET XACT_ABORT ON;
                    BEGIN TRANSACTION;
                    -- Same semantics as the PostgreSQL store: the first failure time is
                    -- kept, attempts add up, the latest text wins, ids are never erased.
                    -- The key is matched as exact bytes (= ignores trailing spaces).
                    UPDATE dbo.RealtimeMirrorDeadLetter WITH (UPDLOCK, SERIALIZABLE)
                    SET EventId = COALESCE(@P2, EventId),
                        EventType = COALESCE(@P3, EventType),
                        Subject = COALESCE(@P4, Subject),
                        Payload = @P5, Reason = @P6, Error = @P7,
                        Attempts = CAST(CASE WHEN CAST(Attempts AS BIGINT) + @P8 > 2147483647 THEN 2147483647
                                             ELSE CAST(Attempts AS BIGINT) + @P8 END AS INT),
                        Subscription = @P9,
                        LastFailedAt = CASE WHEN LastFailedAt > @P10 THEN LastFailedAt ELSE @P10 END
                    WHERE DeadLetterKeyBytes = CAST(@P1 AS VARBINARY(400));
                    IF @@ROWCOUNT = 0
                        INSERT INTO dbo.RealtimeMirrorDeadLetter
                            (DeadLetterKey, DeadLetterKeyBytes, EventId, EventType, Subject, Payload, Reason, Error, Attempts,
                             Subscription, FirstFailedAt, LastFailedAt)
                        VALUES (@P1, CAST(@P1 AS VARBINARY(400)), @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P10);
                    COMMIT TRANSACTION;";
                let attempts = i32::try_from(r.attempts).unwrap_or(i32::MAX);
                let failed_at = ts(r.failed_at);
                c.execute(
                    sql,
                    &[&r.key, &r.event_id, &r.event_type, &r.subject, &r.payload, &r.reason, &r.error, &attempts, &r.subscription, &failed_at],
                )
                .await
                .map_err(map_error)?;
                Ok(())
            })
        })
        .await
    }

    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT TOP (@P1) {DEAD_LETTER_COLUMNS} FROM dbo.RealtimeMirrorDeadLetter ORDER BY LastFailedAt DESC, DeadLetterId DESC"
                );
                let rows = c.query(sql, &[&limit]).await.map_err(map_error)?.into_first_result().await.map_err(map_error)?;
                rows.iter().map(dead_letter).collect()
            })
        })
        .await
    }

    async fn record_replay(&self, key: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                // One JSON string appended to the array by text: Babelfish has no
                // JSON_MODIFY(.., 'append $', ..) on a root array. The history is
                // only ever written here, so it is `[..]` with no trailing space.
                let when = serde_json::Value::String(mirror_schema::format_time(&at)).to_string();
                let at = ts(at);
                c.execute(
                    "UPDATE dbo.RealtimeMirrorDeadLetter
                     SET ReplayCount = ReplayCount + 1,
                         LastReplayedAt = CASE WHEN LastReplayedAt > @P2 THEN LastReplayedAt ELSE @P2 END,
                         ReplayHistoryJson = CASE
                             WHEN ReplayHistoryJson IS NULL OR LEN(ReplayHistoryJson) < 2 THEN CONCAT(N'[', @P3, N']')
                             WHEN ReplayHistoryJson = N'[]' THEN CONCAT(N'[', @P3, N']')
                             ELSE CONCAT(LEFT(ReplayHistoryJson, LEN(ReplayHistoryJson) - 1), N',', @P3, N']')
                         END
                     WHERE DeadLetterKeyBytes = CAST(@P1 AS VARBINARY(400))",
                    &[&key, &at, &when],
                )
                .await
                .map_err(map_error)?;
                Ok(())
            })
        })
        .await
    }
}

impl CheckpointStore for MssqlStore {
    async fn load_checkpoint(
        &self,
        module: &str,
        shard: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let (module, shard) = (module.to_owned(), shard.to_owned());
        self.run(move |c| {
            Box::pin(async move {
                let row = c
                    .query(
                        "SELECT Module, Shard, LastProcessedAt, CursorToken FROM dbo.RealtimeMirrorCheckpoint WHERE Module = @P1 AND Shard = @P2",
                        &[&module, &shard],
                    )
                    .await
                    .map_err(map_error)?
                    .into_row()
                    .await
                    .map_err(map_error)?;
                row.map(|row| {
                    Ok(Checkpoint {
                        module: req_text(&row, "Module")?,
                        shard: req_text(&row, "Shard")?,
                        last_processed_at: get(&row, "LastProcessedAt")?,
                        cursor_token: get::<&[u8]>(&row, "CursorToken")?.map(<[u8]>::to_vec),
                    })
                })
                .transpose()
            })
        })
        .await
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let cp = checkpoint.clone();
        self.run(move |c| {
            Box::pin(async move {
                let at = cp.last_processed_at.map(ts);
                c.execute(
                    "SET XACT_ABORT ON;
                     BEGIN TRANSACTION;
                     UPDATE dbo.RealtimeMirrorCheckpoint WITH (UPDLOCK, SERIALIZABLE)
                     SET LastProcessedAt = @P3, CursorToken = @P4, UpdatedAt = TODATETIMEOFFSET(SYSUTCDATETIME(), 0)
                     WHERE Module = @P1 AND Shard = @P2;
                     IF @@ROWCOUNT = 0
                         INSERT INTO dbo.RealtimeMirrorCheckpoint (Module, Shard, LastProcessedAt, CursorToken)
                         VALUES (@P1, @P2, @P3, @P4);
                     COMMIT TRANSACTION;",
                    &[&cp.module, &cp.shard, &at, &cp.cursor_token],
                )
                .await
                .map_err(map_error)?;
                Ok(())
            })
        })
        .await
    }
}

impl MetricsStore for MssqlStore {
    async fn record_metrics(&self, samples: &[MetricSample]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let samples = samples.to_vec();
        self.run(move |c| {
            Box::pin(async move {
                // 4 parameters a row, well under the 2100-parameter limit per statement.
                for chunk in samples.chunks(400) {
                    let mut sql = String::from("INSERT INTO dbo.RealtimeMirrorMetrics (Module, Metric, Value, RecordedAt) VALUES ");
                    let mut query_params: Vec<Box<dyn tiberius::ToSql + Send + Sync>> = Vec::new();
                    for (i, s) in chunk.iter().enumerate() {
                        let n = i * 4;
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        sql.push_str(&format!("(@P{}, @P{}, @P{}, @P{})", n + 1, n + 2, n + 3, n + 4));
                        query_params.push(Box::new(s.module.clone()));
                        query_params.push(Box::new(s.metric.clone()));
                        query_params.push(Box::new(s.value));
                        query_params.push(Box::new(ts(s.recorded_at)));
                    }
                    let refs: Vec<&dyn tiberius::ToSql> = query_params.iter().map(|p| p.as_ref() as &dyn tiberius::ToSql).collect();
                    c.execute(sql, &refs).await.map_err(map_error)?;
                }
                Ok(())
            })
        })
        .await
    }
}

impl InspectStore for MssqlStore {
    async fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let sql = TABLES
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("SELECT {i} AS Ord, N'{t}' AS TableName, COUNT_BIG(*) AS Cnt FROM dbo.{t}"))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ")
                    + " ORDER BY Ord";
                rows(c, &sql)
                    .await?
                    .iter()
                    .map(|r| Ok((req_text(r, "TableName")?, req::<i64>(r, "Cnt")?)))
                    .collect()
            })
        })
        .await
    }

    async fn snapshot(&self) -> Result<MirrorState, StoreError> {
        self.run(|c| Box::pin(async move { snapshot::read(c).await }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_every_file_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sql/mssql");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort_by_key(|n| n[1..n.find("__").unwrap()].parse::<u32>().unwrap());
        let embedded: Vec<String> = MIGRATIONS.iter().map(|(n, _)| format!("{n}.sql")).collect();
        assert_eq!(files, embedded);
        for (name, sql) in MIGRATIONS {
            let m = refinery::Migration::unapplied(name, sql).unwrap();
            assert_eq!(format!("V{}__{}", m.version(), m.name()), *name);
        }
    }

    #[tokio::test]
    async fn a_pool_timeout_names_the_last_connect_error() {
        // A port nothing listens on: bind one, then free it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = MssqlConfig::from_ado(&format!(
            "Server=tcp:127.0.0.1,{port};Database=mirror;User Id=sa;Password=Sekr1t-pw;Connect Timeout=1;Command Timeout=1"
        ))
        .unwrap();
        let store = MssqlStore::lazy(&config).unwrap();
        let err = store.conn().await.map(|_| ()).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::PoolTimeout, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(
            text.contains("the last attempt to connect failed"),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("Sekr1t-pw"), "{text}");
    }
}
