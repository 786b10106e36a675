//! SQL Server / Azure SQL adapter of [`MirrorStore`](crate::MirrorStore), on tiberius.
//!
//! Events are applied by the stored procedures of `sql/mssql/` (one per event
//! family and operation, see [`params::PROCEDURES`]), called by RPC with typed,
//! named parameters; each returns one row with `Outcome` = `applied` |
//! `duplicate` | `stale`. The procedures implement [`crate::model::Model`]
//! exactly; this module only builds calls, runs them and reads rows back.
//!
//! - Connections: a small bb8 pool of tiberius clients ([`MssqlConfig`] from an
//!   ADO.NET string), TLS by rustls, SQL login or Entra ID access tokens
//!   (`azure_identity`, scope [`config::ENTRA_SCOPE`]), Azure SQL gateway
//!   redirects followed (up to [`config::MAX_REDIRECTS`]).
//! - Every database call is bounded by the command timeout
//!   ([`StoreErrorKind::Timeout`]); a connection that timed out or broke is
//!   dropped by the pool, never reused mid-response.
//! - [`MirrorStore::apply_batch`](crate::MirrorStore::apply_batch): one
//!   transaction, `SAVE TRANSACTION` before each event. The procedures run with
//!   `XACT_ABORT ON` (a rejected event dooms the whole transaction, as SQL
//!   Server does for any error under it), so when an event fails the batch is
//!   rolled back and re-run without it; the events before it are re-applied
//!   with the same result, and every event still gets its own result. The
//!   events run in [`lock_order`] (a stable sort by entity lock), so
//!   concurrent batches take their applocks in one global order and cannot
//!   deadlock on them; results come back in input order.
//! - Errors: server errors keep their number ([`DbCode::Mssql`]); the writer's
//!   policy classifies them, with [`TRANSIENT_ERRORS`] / [`PERMANENT_ERRORS`]
//!   exported here. The procedures' own numbers are in [`PROCEDURE_ERRORS`].
//!
//! **Not run against a real SQL Server on the development machine** (none can
//! run there): the SQL is parsed by `tests/mssql_sql_parses.rs`, the pure parts
//! are unit-tested, and CI (`.github/workflows/integration-mssql.yml`) runs the
//! conformance suite against SQL Server 2022.

mod checksum;
pub mod config;
pub mod errors;
pub mod params;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Future;
use mirror_schema::{MirrorEvent, Subject};
use tiberius::{Command, Row, SqlBrowser};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use uuid::Uuid;

pub use config::{MssqlAuth, MssqlConfig};
pub use errors::{
    map_error, PERMANENT_ERRORS, PROCEDURE_ERRORS, PROCEDURE_PERMANENT_ERRORS, TRANSIENT_ERRORS,
};
pub use params::{procedure_call, ProcedureCall, SqlParam, PROCEDURES};

use crate::state::{
    AuditRow, BlockRow, ConversationRow, FollowEdgeRow, FollowEventRow, MessageRow, MirrorState,
    ParticipantRow,
};
use crate::{
    ApplyOutcome, Checkpoint, DeadLetterRecord, MetricSample, MirrorStore, StoreError,
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
        "V2__sp_refresh_dm_conversation_summary",
        include_str!("../../../sql/mssql/V2__sp_refresh_dm_conversation_summary.sql"),
    ),
    (
        "V3__sp_upsert_dm_conversation",
        include_str!("../../../sql/mssql/V3__sp_upsert_dm_conversation.sql"),
    ),
    (
        "V4__sp_upsert_dm_message",
        include_str!("../../../sql/mssql/V4__sp_upsert_dm_message.sql"),
    ),
    (
        "V5__sp_delete_dm_message",
        include_str!("../../../sql/mssql/V5__sp_delete_dm_message.sql"),
    ),
    (
        "V6__sp_upsert_dm_block",
        include_str!("../../../sql/mssql/V6__sp_upsert_dm_block.sql"),
    ),
    (
        "V7__sp_delete_dm_block",
        include_str!("../../../sql/mssql/V7__sp_delete_dm_block.sql"),
    ),
    (
        "V8__sp_upsert_follow_edge",
        include_str!("../../../sql/mssql/V8__sp_upsert_follow_edge.sql"),
    ),
    (
        "V9__sp_delete_follow_edge",
        include_str!("../../../sql/mssql/V9__sp_delete_follow_edge.sql"),
    ),
    (
        "V50__consistency_row_hash",
        include_str!("../../../sql/mssql/V50__consistency_row_hash.sql"),
    ),
    (
        "V51__prepare_repair",
        include_str!("../../../sql/mssql/V51__prepare_repair.sql"),
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
// connections

/// Where a redirect (`ENVCHANGE` routing, Azure SQL's gateway → worker) sends
/// the next login: the new host and port. The certificate is still checked
/// against the name the client asked for (the worker presents the server's
/// certificate), unless the connection string set `HostNameInCertificate`.
pub fn redirected(
    config: &tiberius::Config,
    original_host: &str,
    host: &str,
    port: u16,
) -> tiberius::Config {
    let mut next = config.clone();
    // A routing host may carry an instance name (`host\instance`); the port is explicit.
    let host = host.split('\\').next().unwrap_or(host);
    next.host(host);
    next.port(port);
    next.hostname_in_certificate(original_host);
    next
}

/// The host part of `config.get_addr()`.
fn host_of(config: &tiberius::Config) -> String {
    let addr = config.get_addr();
    addr.rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .unwrap_or(addr)
}

type Credential = Arc<dyn azure_core::credentials::TokenCredential>;

fn credential(auth: &MssqlAuth) -> Result<Option<Credential>, StoreError> {
    let cred: Credential = match auth {
        MssqlAuth::SqlPassword => return Ok(None),
        MssqlAuth::EntraDefault => azure_identity::DefaultAzureCredential::new().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Config,
                format!("Entra DefaultAzureCredential: {e}"),
            )
        })?,
        MssqlAuth::EntraManagedIdentity { client_id } => {
            azure_identity::ManagedIdentityCredential::new(Some(
                azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                },
            ))
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Config,
                    format!("Entra managed identity: {e}"),
                )
            })?
        }
    };
    Ok(Some(cred))
}

/// Open one logged-in connection, following redirects.
async fn open(config: &MssqlConfig, credential: Option<&Credential>) -> Result<Client, StoreError> {
    let token = match credential {
        None => None,
        Some(c) => {
            let t = c
                .get_token(&[config::ENTRA_SCOPE], None)
                .await
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Connect,
                        format!("no Entra access token for SQL: {e}"),
                    )
                })?;
            Some(t.token.secret().to_owned())
        }
    };
    let mut cfg = config.tiberius_config(token.as_deref())?;
    let original_host = host_of(&cfg);
    for _ in 0..=config::MAX_REDIRECTS {
        let attempt = async {
            let tcp = TcpStream::connect_named(&cfg).await?;
            tcp.set_nodelay(true)?;
            tiberius::Client::connect(cfg.clone(), tcp.compat_write()).await
        };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Err(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Connect,
                    format!(
                        "could not connect to {} within {:?}",
                        cfg.get_addr(),
                        config.connect_timeout
                    ),
                ))
            }
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(tiberius::error::Error::Routing { host, port })) => {
                tracing::debug!(%host, port, "SQL Server redirected the connection");
                cfg = redirected(&cfg, &original_host, &host, port);
            }
            Ok(Err(e)) => {
                let mut err = map_error(e);
                if err.kind == StoreErrorKind::Timeout {
                    err.kind = StoreErrorKind::Connect;
                }
                return Err(err);
            }
        }
    }
    Err(StoreError::new(
        StoreErrorKind::Connect,
        format!(
            "SQL Server redirected the login more than {} times",
            config::MAX_REDIRECTS
        ),
    ))
}

/// A pooled connection; `broken` once a call timed out or the stream failed.
pub struct Conn {
    client: Client,
    broken: bool,
}

/// The bb8 manager (tiberius' own pool crates pin tiberius 0.12).
pub struct Manager {
    config: Arc<MssqlConfig>,
    credential: Option<Credential>,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = StoreError;

    async fn connect(&self) -> Result<Conn, StoreError> {
        let client = open(&self.config, self.credential.as_ref()).await?;
        Ok(Conn {
            client,
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> impl Future<Output = Result<(), StoreError>> + Send {
        let timeout = self.config.command_timeout;
        async move {
            timed(timeout, async {
                conn.client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(map_error)?
                    .into_results()
                    .await
                    .map_err(map_error)?;
                Ok(())
            })
            .await
        }
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// Run `fut` within `limit`, else [`StoreErrorKind::Timeout`].
async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::new(
            StoreErrorKind::Timeout,
            format!("SQL Server call exceeded the command timeout ({limit:?})"),
        )),
    }
}

// ---------------------------------------------------------------------------
// the store

/// The SQL Server store.
#[derive(Clone)]
pub struct MssqlStore {
    pool: bb8::Pool<Manager>,
    config: Arc<MssqlConfig>,
}

impl std::fmt::Debug for MssqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MssqlStore {
    /// Build the pool and open one connection, so bad settings fail at start.
    pub async fn connect(config: &MssqlConfig) -> Result<MssqlStore, StoreError> {
        let config = Arc::new(config.clone());
        let manager = Manager {
            credential: credential(&config.auth)?,
            config: config.clone(),
        };
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size.max(1))
            .connection_timeout(config.connect_timeout + config.command_timeout)
            .test_on_check_out(false)
            .build_unchecked(manager);
        let store = MssqlStore { pool, config };
        drop(store.conn().await?);
        Ok(store)
    }

    pub fn config(&self) -> &MssqlConfig {
        &self.config
    }

    async fn conn(&self) -> Result<bb8::PooledConnection<'_, Manager>, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => StoreError::new(
                StoreErrorKind::PoolTimeout,
                "no SQL Server connection became free in time",
            ),
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
            if errors::breaks_connection(e) {
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

/// Create the database `config` names (connecting to `master`) unless it
/// exists; true if it was created. For tests and first-time setup; in Azure
/// SQL, creating databases usually belongs to infrastructure as code.
pub async fn create_database_if_missing(config: &MssqlConfig) -> Result<bool, StoreError> {
    let name = database_name(config)?;
    let mut client = open(
        &config.for_database("master"),
        credential(&config.auth)?.as_ref(),
    )
    .await?;
    let sql = "IF DB_ID(@P1) IS NULL
               BEGIN
                   DECLARE @sql NVARCHAR(400) = N'CREATE DATABASE ' + QUOTENAME(@P1);
                   EXEC (@sql);
                   SELECT CAST(1 AS BIT) AS Created;
               END
               ELSE SELECT CAST(0 AS BIT) AS Created;";
    let row = timed(config.command_timeout * 4, async {
        client
            .query(sql, &[&name])
            .await
            .map_err(map_error)?
            .into_row()
            .await
            .map_err(map_error)
    })
    .await?;
    Ok(row
        .map(|r| get::<bool>(&r, "Created"))
        .transpose()?
        .flatten()
        .unwrap_or(false))
}

/// Drop the database `config` names (connecting to `master`), closing its
/// sessions first. For tests against a disposable server.
pub async fn drop_database(config: &MssqlConfig) -> Result<(), StoreError> {
    let name = database_name(config)?;
    let mut client = open(
        &config.for_database("master"),
        credential(&config.auth)?.as_ref(),
    )
    .await?;
    let sql = "IF DB_ID(@P1) IS NOT NULL
               BEGIN
                   DECLARE @sql NVARCHAR(600) = N'ALTER DATABASE ' + QUOTENAME(@P1) + N' SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE ' + QUOTENAME(@P1);
                   EXEC (@sql);
               END;";
    timed(config.command_timeout * 4, async {
        client.execute(sql, &[&name]).await.map_err(map_error)?;
        Ok(())
    })
    .await
}

fn database_name(config: &MssqlConfig) -> Result<String, StoreError> {
    match config.database() {
        Some(db)
            if !db.is_empty()
                && db.chars().count() <= 128
                && !db.eq_ignore_ascii_case("master") =>
        {
            Ok(db.to_owned())
        }
        _ => Err(StoreError::new(
            StoreErrorKind::Config,
            "MSSQL connection string names no database (`Database=`) to create or drop",
        )),
    }
}

type BoxFut<'c, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;

/// Bind `call` to a tiberius RPC command.
fn command(call: &ProcedureCall) -> Command<'static> {
    let mut cmd = Command::new(call.procedure);
    for (name, value) in &call.params {
        match value {
            SqlParam::Uuid(u) => cmd.bind_param(*name, *u),
            SqlParam::Text(s) => cmd.bind_param(*name, s.clone()),
            SqlParam::Time(t) => cmd.bind_param(*name, t.map(|t| t.fixed_offset())),
        }
    }
    cmd
}

/// Run one procedure call and read its `Outcome`.
async fn run_call(client: &mut Client, call: &ProcedureCall) -> Result<ApplyOutcome, StoreError> {
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
                return ApplyOutcome::parse(text).ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Protocol,
                        format!("{} returned the outcome `{text}`", call.procedure),
                    )
                });
            }
        }
    }
    Err(StoreError::new(
        StoreErrorKind::Protocol,
        format!("{} returned no Outcome row", call.procedure),
    ))
}

async fn exec_sql(client: &mut Client, sql: &str) -> Result<(), StoreError> {
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
pub fn lock_order(events: &[MirrorEvent]) -> Vec<usize> {
    fn key(e: &MirrorEvent) -> (u8, &str, &str) {
        match e.subject() {
            Subject::Conversation { conversation_id }
            | Subject::Message {
                conversation_id, ..
            } => (0, conversation_id, ""),
            Subject::Block {
                user_id,
                target_user_id,
            } => (1, user_id, target_user_id),
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            } => (2, follower_user_id, target_user_id),
        }
    }
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| key(&events[a]).cmp(&key(&events[b])));
    order
}

/// One transaction, a savepoint per event; see the module docs for why a
/// failed event restarts the batch without it.
async fn apply_batch_on(
    client: &mut Client,
    calls: &[ProcedureCall],
    limit: Duration,
) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
    let mut rejected: Vec<Option<StoreError>> = vec![None; calls.len()];
    'attempt: loop {
        timed(limit, exec_sql(client, "BEGIN TRANSACTION")).await?;
        let mut results = Vec::with_capacity(calls.len());
        for (i, call) in calls.iter().enumerate() {
            if let Some(e) = &rejected[i] {
                results.push(Err(e.clone()));
                continue;
            }
            timed(limit, exec_sql(client, "SAVE TRANSACTION rm_event")).await?;
            match timed(limit, run_call(client, call)).await {
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

fn get<'a, T: tiberius::FromSql<'a>>(row: &'a Row, col: &str) -> Result<Option<T>, StoreError> {
    row.try_get::<T, _>(col)
        .map_err(|e| StoreError::new(StoreErrorKind::Protocol, format!("column {col}: {e}")))
}

fn req<'a, T: tiberius::FromSql<'a>>(row: &'a Row, col: &str) -> Result<T, StoreError> {
    get::<T>(row, col)?
        .ok_or_else(|| StoreError::new(StoreErrorKind::Protocol, format!("column {col} is NULL")))
}

fn text(row: &Row, col: &str) -> Result<Option<String>, StoreError> {
    Ok(get::<&str>(row, col)?.map(str::to_owned))
}

fn req_text(row: &Row, col: &str) -> Result<String, StoreError> {
    Ok(req::<&str>(row, col)?.to_owned())
}

fn json(row: &Row, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
    get::<&str>(row, col)?
        .map(|s| {
            serde_json::from_str(s).map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Protocol,
                    format!("column {col} is not JSON: {e}"),
                )
            })
        })
        .transpose()
}

fn ts(t: DateTime<Utc>) -> chrono::DateTime<chrono::FixedOffset> {
    t.fixed_offset()
}

async fn rows(client: &mut Client, sql: &str) -> Result<Vec<Row>, StoreError> {
    client
        .simple_query(sql)
        .await
        .map_err(map_error)?
        .into_first_result()
        .await
        .map_err(map_error)
}

fn dead_letter(row: &Row) -> Result<StoredDeadLetter, StoreError> {
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

impl MirrorStore for MssqlStore {
    async fn apply(&self, event: &MirrorEvent) -> Result<ApplyOutcome, StoreError> {
        let call = procedure_call(event);
        self.run(move |c| Box::pin(async move { run_call(c, &call).await }))
            .await
    }

    async fn apply_batch(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Run in lock order (see [`lock_order`]), answer in input order.
        let order = lock_order(events);
        let calls: Vec<ProcedureCall> = order.iter().map(|&i| procedure_call(&events[i])).collect();
        let limit = self.config.command_timeout;
        let mut conn = self.conn().await?;
        let result = apply_batch_on(&mut conn.client, &calls, limit).await;
        let sorted = match result {
            Ok(r) => r,
            Err(e) => {
                // The transaction may still be open or the stream mid-response:
                // never hand this connection to anyone else.
                conn.broken = true;
                return Err(e);
            }
        };
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

    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.run(move |c| {
            Box::pin(async move {
                let sql = "SET XACT_ABORT ON;
                    BEGIN TRANSACTION;
                    -- Same semantics as the PostgreSQL store: the first failure time is
                    -- kept, attempts add up, the latest text wins, ids are never erased.
                    UPDATE dbo.RealtimeMirrorDeadLetter WITH (UPDLOCK, SERIALIZABLE)
                    SET EventId = COALESCE(@P2, EventId),
                        EventType = COALESCE(@P3, EventType),
                        Subject = COALESCE(@P4, Subject),
                        Payload = @P5, Reason = @P6, Error = @P7,
                        Attempts = CAST(CASE WHEN CAST(Attempts AS BIGINT) + @P8 > 2147483647 THEN 2147483647
                                             ELSE CAST(Attempts AS BIGINT) + @P8 END AS INT),
                        Subscription = @P9,
                        LastFailedAt = CASE WHEN LastFailedAt > @P10 THEN LastFailedAt ELSE @P10 END
                    WHERE DeadLetterKey = @P1;
                    IF @@ROWCOUNT = 0
                        INSERT INTO dbo.RealtimeMirrorDeadLetter
                            (DeadLetterKey, EventId, EventType, Subject, Payload, Reason, Error, Attempts, Subscription, FirstFailedAt, LastFailedAt)
                        VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P10);
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
                let when = mirror_schema::format_time(&at);
                let at = ts(at);
                c.execute(
                    "UPDATE dbo.RealtimeMirrorDeadLetter
                     SET ReplayCount = ReplayCount + 1,
                         LastReplayedAt = CASE WHEN LastReplayedAt > @P2 THEN LastReplayedAt ELSE @P2 END,
                         ReplayHistoryJson = JSON_MODIFY(ISNULL(ReplayHistoryJson, N'[]'), 'append $', @P3)
                     WHERE DeadLetterKey = @P1",
                    &[&key, &at, &when],
                )
                .await
                .map_err(map_error)?;
                Ok(())
            })
        })
        .await
    }

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
        self.run(|c| Box::pin(async move { snapshot_on(c).await }))
            .await
    }
}

async fn snapshot_on(c: &mut Client) -> Result<MirrorState, StoreError> {
    let mut state = MirrorState::default();
    // One snapshot-consistent read: all the SELECTs in one transaction at REPEATABLE READ
    // would still see concurrent inserts, so the caller quiesces writers first (as the
    // conformance suite does); these are plain reads.
    for r in rows(
        c,
        "SELECT FirestoreId, Type, CreatedAt, UpdatedAt, DocUpdatedAt, LastMessageId, LastMessageAt, ParticipantHash,
                IsPlaceholder, SourceVersion, LastSyncedEventId
         FROM dbo.DmConversation",
    )
    .await?
    {
        state.conversations.insert(
            req_text(&r, "FirestoreId")?,
            ConversationRow {
                kind: text(&r, "Type")?,
                created_at: get(&r, "CreatedAt")?,
                updated_at: get(&r, "UpdatedAt")?,
                doc_updated_at: get(&r, "DocUpdatedAt")?,
                last_message_id: text(&r, "LastMessageId")?,
                last_message_at: get(&r, "LastMessageAt")?,
                participant_hash: text(&r, "ParticipantHash")?.map(|h| h.trim().to_owned()),
                placeholder: req(&r, "IsPlaceholder")?,
                source_version: get(&r, "SourceVersion")?,
                last_event_id: get(&r, "LastSyncedEventId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT c.FirestoreId AS ConversationFirestoreId, p.UserId, p.Role, p.JoinedAt, p.MuteState, p.ReadPointerMessageId
         FROM dbo.DmParticipant AS p JOIN dbo.DmConversation AS c ON c.ConversationId = p.ConversationId",
    )
    .await?
    {
        state.participants.insert(
            (req_text(&r, "ConversationFirestoreId")?, req_text(&r, "UserId")?),
            ParticipantRow {
                role: req_text(&r, "Role")?,
                joined_at: req(&r, "JoinedAt")?,
                mute_state: req_text(&r, "MuteState")?,
                read_pointer_message_id: text(&r, "ReadPointerMessageId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT c.FirestoreId AS ConversationFirestoreId, m.FirestoreId, m.AuthorUserId, m.BodyText, m.AttachmentJson,
                m.ExternalMediaJson, m.CreatedAt, m.EditedAt, m.DeletedAt, m.ClientMessageId, m.Tombstone,
                m.SourceVersion, m.EventId
         FROM dbo.DmMessage AS m JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId",
    )
    .await?
    {
        state.messages.insert(
            (req_text(&r, "ConversationFirestoreId")?, req_text(&r, "FirestoreId")?),
            MessageRow {
                author_user_id: text(&r, "AuthorUserId")?,
                body_text: text(&r, "BodyText")?,
                attachments: json(&r, "AttachmentJson")?,
                external_media: json(&r, "ExternalMediaJson")?,
                created_at: get(&r, "CreatedAt")?,
                edited_at: get(&r, "EditedAt")?,
                deleted_at: get(&r, "DeletedAt")?,
                client_message_id: text(&r, "ClientMessageId")?,
                tombstone: req(&r, "Tombstone")?,
                source_version: req(&r, "SourceVersion")?,
                last_event_id: req(&r, "EventId")?,
            },
        );
    }
    for r in rows(c, "SELECT UserId, TargetUserId, CreatedAt, RevokedAt, Source, DeletedAt, SourceVersion, EventId FROM dbo.DmBlock").await? {
        state.blocks.insert(
            (req_text(&r, "UserId")?, req_text(&r, "TargetUserId")?),
            BlockRow {
                created_at: get(&r, "CreatedAt")?,
                revoked_at: get(&r, "RevokedAt")?,
                source: text(&r, "Source")?,
                deleted_at: get(&r, "DeletedAt")?,
                source_version: req(&r, "SourceVersion")?,
                last_event_id: req(&r, "EventId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT FollowerUserId, TargetUserId, State, Source, CreatedAt, DeletedAt, SourceVersion, EventId FROM dbo.FollowEdge",
    )
    .await?
    {
        state.follow_edges.insert(
            (req_text(&r, "FollowerUserId")?, req_text(&r, "TargetUserId")?),
            FollowEdgeRow {
                state: text(&r, "State")?,
                source: text(&r, "Source")?,
                created_at: get(&r, "CreatedAt")?,
                deleted_at: get(&r, "DeletedAt")?,
                source_version: req(&r, "SourceVersion")?,
                last_event_id: req(&r, "EventId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT a.EventId, c.FirestoreId AS ConversationFirestoreId, m.FirestoreId AS MessageFirestoreId, a.Action,
                a.PerformedBy, a.CreatedAt
         FROM dbo.DmMessageAudit AS a
         JOIN dbo.DmMessage AS m ON m.MessageId = a.MessageId
         JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId",
    )
    .await?
    {
        state.audit.push(AuditRow {
            event_id: req(&r, "EventId")?,
            conversation_id: req_text(&r, "ConversationFirestoreId")?,
            message_id: req_text(&r, "MessageFirestoreId")?,
            action: req_text(&r, "Action")?,
            performed_by: text(&r, "PerformedBy")?,
            created_at: req(&r, "CreatedAt")?,
        });
    }
    for r in rows(
        c,
        "SELECT EventId, FollowerUserId, TargetUserId, EventType, CreatedAt FROM dbo.FollowEvent",
    )
    .await?
    {
        state.follow_events.push(FollowEventRow {
            event_id: req(&r, "EventId")?,
            follower_user_id: req_text(&r, "FollowerUserId")?,
            target_user_id: req_text(&r, "TargetUserId")?,
            event_type: req_text(&r, "EventType")?,
            created_at: req(&r, "CreatedAt")?,
        });
    }
    Ok(state.normalized())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_the_certificate_name() {
        let base = tiberius::Config::from_ado_string(
            "Server=tcp:myserver.database.windows.net,1433;User Id=a;Password=b",
        )
        .unwrap();
        let original = host_of(&base);
        assert_eq!(original, "myserver.database.windows.net");
        let next = redirected(
            &base,
            &original,
            "abc.tr5.westeurope1-a.worker.database.windows.net",
            11002,
        );
        assert_eq!(
            next.get_addr(),
            "abc.tr5.westeurope1-a.worker.database.windows.net:11002"
        );
        assert!(
            format!("{next:?}").contains("myserver.database.windows.net"),
            "certificate name kept"
        );
        let next = redirected(&base, &original, "host\\instance", 1500);
        assert_eq!(next.get_addr(), "host:1500");
    }

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
    fn commands_bind_every_parameter() {
        let call = ProcedureCall {
            procedure: "dbo.sp_X",
            params: vec![
                ("@A", SqlParam::Uuid(Uuid::nil())),
                ("@B", SqlParam::Text(None)),
                ("@C", SqlParam::Time(Some(Utc::now()))),
            ],
        };
        let debug = format!("{:?}", command(&call));
        for p in ["@A", "@B", "@C", "dbo.sp_X", "DateTimeOffset", "Guid"] {
            assert!(debug.contains(p), "{p} missing in {debug}");
        }
    }
}
