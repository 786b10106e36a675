//! PostgreSQL adapter of [`MirrorStore`]: tokio-postgres with a deadpool pool,
//! schema `mirror`, one plpgsql function per event family.
//!
//! All mirror semantics live in the functions of
//! `sql/postgres/V2__mirror_functions.sql` (embedded here with refinery and
//! applied by [`PgStore::migrate`]); this module only passes typed parameters
//! and reads back `applied | duplicate | stale`:
//!
//! - [`MirrorStore::apply`] is one statement, hence one implicit transaction.
//! - [`MirrorStore::apply_batch`] ([`ApplyMode::Batched`], the default) is one
//!   call of `mirror.apply_batch` (`V3__history_v1_1_and_batches.sql`, rewritten
//!   for speed in `V6__faster_apply_batch.sql`, typed array parameters since
//!   `V7__typed_apply_batch.sql`) with the
//!   batch planned by [`crate::plan::Plan`]: one statement per family, one
//!   transaction, the conversation summary once per conversation. If the
//!   database rejects the call, the batch is applied again per event, so only
//!   the events that fail on their own get an error.
//! - [`ApplyMode::PerEvent`] is one READ COMMITTED transaction with a
//!   savepoint per event, in the plan's lock order (so concurrent batches take
//!   their advisory locks in one global order). Events of one entity keep their
//!   relative order, so every outcome equals what applying the batch one by
//!   one in input order gives; results come back in input order.
//! - Errors carry the SQLSTATE (the functions' own are class `RM`); the store
//!   never decides between retry and dead-letter.
//!
//! TLS follows the URL's `sslmode`: `require` uses rustls with the
//! certificate verified against the Mozilla roots plus `PGSSLROOTCERT`;
//! `prefer` (the default) and `disable` connect in plain TCP (libpq's
//! `prefer` would encrypt without verifying, which we do not pretend is safe).
//! The password never appears in `Debug` output or error messages.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mirror_schema::MirrorEvent;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::Host;
use tokio_postgres::{IsolationLevel, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::plan::Plan;
use crate::{
    ApplyEvents, ApplyMode, ApplyOutcome, Checkpoint, CheckpointStore, DeadLetterRecord,
    DeadLetterStore, InspectStore, MetricSample, MetricsStore, MirrorState, StoreError,
    StoreErrorKind, StoredDeadLetter,
};

mod batch;
mod call;
mod checksum;
mod error;
mod ledger;
mod snapshot;

mod embedded {
    refinery::embed_migrations!("../../sql/postgres");
}

/// The mirror tables, in schema order (as [`MirrorStore::table_counts`] reports them).
pub const TABLES: [&str; 11] = [
    "dm_conversation",
    "dm_participant",
    "dm_message",
    "dm_message_audit",
    "dm_block",
    "follow_edge",
    "follow_event",
    "realtime_mirror_checkpoint",
    "realtime_mirror_dead_letter",
    "realtime_mirror_metrics",
    "applied_event",
];

/// Session-level advisory lock key that serializes concurrent `migrate` calls.
const MIGRATION_LOCK: i64 = 0x726d_6d69_6772_6174; // "rmmigrat"

/// Connection settings for [`PgStore::connect`].
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database?...` or a key=value
    /// connection string. A secret: never logged.
    pub url: SecretString,
    /// Most connections the pool opens (at least 1).
    pub pool_size: usize,
    /// Server-side `statement_timeout` of every pooled connection; also the
    /// longest wait for a free pooled connection and the connect timeout when
    /// the URL sets none. Zero disables the statement timeout.
    pub statement_timeout: Duration,
}

impl PgConfig {
    /// Settings for `url` with a pool of 8 and a 30 s statement timeout.
    pub fn from_url(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: SecretString::from(url.into()),
            pool_size: 8,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// The PostgreSQL [`MirrorStore`].
pub struct PgStore {
    pool: Pool,
    /// For `migrate`'s dedicated connection.
    pg_config: tokio_postgres::Config,
    /// `user@host:port/database`, for Debug and logs (no password).
    target: String,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .field("pool_size", &self.pool.status().max_size)
            .finish_non_exhaustive()
    }
}

/// Parse a URL or key=value string; the error never echoes the input.
fn parse_config(url: &SecretString) -> Result<tokio_postgres::Config, StoreError> {
    let mut config = url
        .expose_secret()
        .parse::<tokio_postgres::Config>()
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Config,
                format!("invalid PostgreSQL connection URL: {e}"),
            )
        })?;
    // libpq's `prefer` encrypts without checking the certificate, which
    // protects against nothing an attacker on the path cannot undo; we do not
    // pretend. `prefer` (the default) connects in plain TCP, `require` gets
    // TLS with a verified certificate.
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    Ok(config)
}

/// `user@host:port/database` of a config, without the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("?")
    )
}

/// The TLS connector for `sslmode=require`: rustls with the ring provider
/// (explicit, so a library user need not install a process default), the
/// Mozilla roots, and the PEM certificates in `PGSSLROOTCERT` if set (the
/// private CAs of AWS RDS or Cloud SQL, say).
fn tls() -> MakeRustlsConnect {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = std::env::var_os("PGSSLROOTCERT") {
        match CertificateDer::pem_file_iter(&path) {
            Ok(certs) => {
                for cert in certs.flatten() {
                    if let Err(e) = roots.add(cert) {
                        tracing::warn!(error = %e, "PGSSLROOTCERT: skipping a certificate");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %std::path::Path::new(&path).display(), "PGSSLROOTCERT: cannot read")
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// Open one unpooled connection (its driver task runs until the client drops).
async fn connect_once(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = config.connect(tls()).await.map_err(error::pg_connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Create the database `url` names if it does not exist (connecting to the
/// same server's `postgres` database). Returns whether it was created.
pub async fn create_database_if_missing(url: &SecretString) -> Result<bool, StoreError> {
    let config = parse_config(url)?;
    let name = config
        .get_dbname()
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Config,
                "the PostgreSQL URL names no database",
            )
        })?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect_once(&admin).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(error::pg)?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
    {
        Ok(()) => Ok(true),
        // Created concurrently by someone else: fine.
        Err(e) if e.code().map(|c| c.code()) == Some("42P04") => Ok(false),
        Err(e) => Err(error::pg(e)),
    }
}

/// Drop the database `db_url` names (terminating its sessions), connecting
/// through `server` (a URL of another database on the same server).
pub async fn drop_database(server: &SecretString, db_url: &SecretString) -> Result<(), StoreError> {
    let admin = parse_config(server)?;
    let target = parse_config(db_url)?;
    let name = target.get_dbname().ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Config,
            "the PostgreSQL URL names no database",
        )
    })?;
    if admin.get_dbname() == Some(name) {
        return Err(StoreError::new(
            StoreErrorKind::Config,
            format!("cannot drop database `{name}` through a connection to itself"),
        ));
    }
    let client = connect_once(&admin).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(error::pg)
}

impl PgStore {
    /// Build the pool and check that one connection can be opened, so bad
    /// settings fail at start.
    pub async fn connect(config: &PgConfig) -> Result<PgStore, StoreError> {
        let mut pg_config = parse_config(&config.url)?;
        let timeout = config.statement_timeout;
        let mut options = pg_config.get_options().unwrap_or("").to_owned();
        if !timeout.is_zero() {
            options.push_str(&format!(
                " -c statement_timeout={}",
                timeout.as_millis().max(1)
            ));
        }
        // Timestamps in JSON built by the server (audit payloads) come out in UTC.
        options.push_str(" -c TimeZone=UTC");
        pg_config.options(options.trim());
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("realtime-mirror");
        }
        let connect_timeout = if timeout.is_zero() {
            Duration::from_secs(30)
        } else {
            timeout
        };
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(connect_timeout);
        }
        let target = describe(&pg_config);

        let manager = Manager::from_config(
            pg_config.clone(),
            tls(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Config,
                    format!("cannot build the PostgreSQL pool: {e}"),
                )
            })?;
        let store = PgStore {
            pool,
            pg_config,
            target,
        };
        drop(store.client().await?);
        tracing::debug!(target = %store.target, pool_size = config.pool_size, "connected to PostgreSQL");
        Ok(store)
    }

    /// Apply the embedded migrations (`sql/postgres`) that are not applied
    /// yet; returns how many were. Concurrent callers serialize on an advisory
    /// lock, so several writers may call this at start-up.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        // A dedicated connection: the session lock goes away with it, whatever happens.
        let mut client = connect_once(&self.pg_config).await?;
        // Schema changes may outlast the writers' statement timeout, and so may
        // waiting for another process's migration.
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(error::pg)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(error::pg)?;
        let report = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Migration,
                    format!("PostgreSQL migration failed: {e}"),
                )
            })?;
        let applied = report.applied_migrations().len();
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        tracing::info!(target = %self.target, applied, "PostgreSQL migrations up to date");
        Ok(applied)
    }

    /// `user@host:port/database` (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(error::pool)
    }
}

/// The outcome text a mirror function returned.
fn outcome(row: &Row) -> Result<ApplyOutcome, StoreError> {
    outcome_at(row, 0)
}

fn outcome_at(row: &Row, column: usize) -> Result<ApplyOutcome, StoreError> {
    let text: String = row.try_get(column).map_err(error::pg)?;
    ApplyOutcome::parse(&text).ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Protocol,
            format!(
                "mirror function returned `{}`, not applied|duplicate|stale",
                text.chars().take(40).collect::<String>()
            ),
        )
    })
}

/// PostgreSQL text cannot hold U+0000; dead-letter rows must still be written,
/// so it becomes U+FFFD there (and only there).
fn storable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn count_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn count_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

const RECORD_DEAD_LETTER: &str = "\
    INSERT INTO mirror.realtime_mirror_dead_letter AS d
           (dead_letter_key, event_id, event_type, subject, payload, reason, error, attempts, subscription,
            first_failed_at, last_failed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
    ON CONFLICT (dead_letter_key) DO UPDATE
       SET event_id = coalesce(EXCLUDED.event_id, d.event_id),
           event_type = coalesce(EXCLUDED.event_type, d.event_type),
           subject = coalesce(EXCLUDED.subject, d.subject),
           payload = EXCLUDED.payload,
           reason = EXCLUDED.reason,
           error = EXCLUDED.error,
           attempts = least(d.attempts::bigint + EXCLUDED.attempts, 2147483647)::integer,
           subscription = EXCLUDED.subscription,
           last_failed_at = greatest(d.last_failed_at, EXCLUDED.last_failed_at)";

const LIST_DEAD_LETTERS: &str = "\
    SELECT dead_letter_key, event_id, event_type, subject, payload, reason, error, attempts, subscription,
           first_failed_at, last_failed_at, replay_count, last_replayed_at
      FROM mirror.realtime_mirror_dead_letter
     ORDER BY last_failed_at DESC, id DESC
     LIMIT $1";

const RECORD_REPLAY: &str = "\
    UPDATE mirror.realtime_mirror_dead_letter
       SET replay_count = replay_count + 1,
           last_replayed_at = greatest(last_replayed_at, $2),
           replay_history = replay_history || jsonb_build_array(mirror.fmt_ts($2))
     WHERE dead_letter_key = $1";

const LOAD_CHECKPOINT: &str = "\
    SELECT last_processed_at, cursor_token FROM mirror.realtime_mirror_checkpoint WHERE module = $1 AND shard = $2";

const SAVE_CHECKPOINT: &str = "\
    INSERT INTO mirror.realtime_mirror_checkpoint (module, shard, last_processed_at, cursor_token, updated_at)
    VALUES ($1, $2, $3, $4, now())
    ON CONFLICT (module, shard) DO UPDATE
       SET last_processed_at = EXCLUDED.last_processed_at,
           cursor_token = EXCLUDED.cursor_token,
           updated_at = EXCLUDED.updated_at";

const RECORD_METRICS: &str = "\
    INSERT INTO mirror.realtime_mirror_metrics (recorded_at, module, metric, value)
    SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::float8[])";

/// PostgreSQL's shared lock table: `max_locks_per_transaction` slots per
/// possible transaction (connections and prepared transactions).
const LOCK_CAPACITY: &str = "SELECT current_setting('max_locks_per_transaction')::bigint \
     * (current_setting('max_connections')::bigint + current_setting('max_prepared_transactions')::bigint)";

impl PgStore {
    /// [`ApplyMode::Batched`]: the planned batch as one call of
    /// `mirror.apply_batch` (one statement, hence one transaction). If the
    /// database rejects it (a row breaking a constraint, a lock wait past the
    /// statement timeout, a deadlock), nothing of it was committed and the
    /// batch is applied again event by event, so only the events that fail
    /// on their own get an error.
    async fn apply_set_based(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let plan = Plan::new(events);
        let params = batch::params(&plan);
        let rows = {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(batch::APPLY_BATCH)
                .await
                .map_err(error::pg)?;
            let started = std::time::Instant::now();
            let rows = client
                .query(&statement, &params.refs())
                .await
                .map_err(error::pg);
            crate::telemetry::procedure_called(
                crate::telemetry::POSTGRESQL,
                "mirror.apply_batch",
                started.elapsed(),
                rows.as_ref().err(),
            );
            rows
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                if e.kind == StoreErrorKind::Connect {
                    return Err(e);
                }
                tracing::debug!(error = %e, events = events.len(), "set-based batch rejected; applying it event by event");
                return self.apply_per_event(events).await;
            }
        };
        let mut outcomes: std::collections::HashMap<uuid::Uuid, ApplyOutcome> =
            std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: uuid::Uuid = row.try_get(0).map_err(error::pg)?;
            outcomes.insert(id, outcome_at(row, 1)?);
        }
        let planned = plan
            .events
            .iter()
            .map(|p| {
                Ok(outcomes
                    .get(&p.event.id())
                    .copied()
                    .unwrap_or(ApplyOutcome::Duplicate))
            })
            .collect();
        Ok(plan.answer(planned))
    }

    /// [`ApplyMode::PerEvent`]: one READ COMMITTED transaction, each event its
    /// own function call inside its own savepoint, in the plan's lock order.
    async fn apply_per_event(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let order = crate::plan::lock_order(events);
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(error::pg)?;
        let mut results: Vec<Option<Result<ApplyOutcome, StoreError>>> =
            (0..events.len()).map(|_| None).collect();
        // RELEASE of the previous event's savepoint travels with the next SAVEPOINT.
        let mut release_pending = false;
        for i in order {
            let call = call::call(&events[i]);
            let statement = tx.prepare_cached(call.sql).await.map_err(error::pg)?;
            let begin = if release_pending {
                "RELEASE SAVEPOINT mirror_event; SAVEPOINT mirror_event"
            } else {
                "SAVEPOINT mirror_event"
            };
            let params = call.param_refs();
            // Pipelined: both go out before either answer comes back.
            let started = std::time::Instant::now();
            let event = &events[i];
            let (savepoint, result) = tokio::join!(tx.batch_execute(begin), async {
                if crate::checksum::is_repair(event) {
                    checksum::prepare_repair(&tx, event).await?;
                }
                tx.query_one(&statement, &params).await
            });
            savepoint.map_err(error::pg)?;
            let result = result.map_err(error::pg).and_then(|row| outcome(&row));
            crate::telemetry::procedure_called(
                crate::telemetry::POSTGRESQL,
                crate::telemetry::pg_function(call.sql),
                started.elapsed(),
                result.as_ref().err(),
            );
            match result {
                Ok(o) => {
                    release_pending = true;
                    results[i] = Some(Ok(o));
                }
                Err(e) if e.kind == StoreErrorKind::Connect => return Err(e),
                Err(e) => {
                    tx.batch_execute(
                        "ROLLBACK TO SAVEPOINT mirror_event; RELEASE SAVEPOINT mirror_event",
                    )
                    .await
                    .map_err(error::pg)?;
                    release_pending = false;
                    results[i] = Some(Err(e));
                }
            }
        }
        tx.commit().await.map_err(error::pg)?;
        Ok(results
            .into_iter()
            .map(|r| r.expect("every event of the batch has a result"))
            .collect())
    }
}

impl ApplyEvents for PgStore {
    async fn apply(&self, event: &MirrorEvent) -> Result<ApplyOutcome, StoreError> {
        if crate::checksum::is_repair(event) {
            // A repair is prepared and applied in one transaction.
            let mut results = self.apply_per_event(std::slice::from_ref(event)).await?;
            return results.pop().expect("one result per event");
        }
        let client = self.client().await?;
        let call = call::call(event);
        let statement = client.prepare_cached(call.sql).await.map_err(error::pg)?;
        // One statement outside a transaction block: atomic on its own.
        let row = client
            .query_one(&statement, &call.param_refs())
            .await
            .map_err(error::pg)?;
        outcome(&row)
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

    async fn lock_capacity(&self) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(LOCK_CAPACITY, &[])
            .await
            .map_err(error::pg)?;
        let slots: i64 = row.get(0);
        Ok(u64::try_from(slots).ok())
    }
}

impl DeadLetterStore for PgStore {
    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(RECORD_DEAD_LETTER)
            .await
            .map_err(error::pg)?;
        let event_type = record.event_type.as_deref().map(storable);
        let subject = record.subject.as_deref().map(storable);
        client
            .execute(
                &statement,
                &[
                    &storable(&record.key).as_ref(),
                    &record.event_id,
                    &event_type.as_deref(),
                    &subject.as_deref(),
                    &storable(&record.payload).as_ref(),
                    &storable(&record.reason).as_ref(),
                    &storable(&record.error).as_ref(),
                    &count_i32(record.attempts),
                    &storable(&record.subscription).as_ref(),
                    &record.failed_at,
                ],
            )
            .await
            .map_err(error::pg)?;
        Ok(())
    }

    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(LIST_DEAD_LETTERS, &[&limit])
            .await
            .map_err(error::pg)?;
        rows.iter()
            .map(|r| {
                let last_failed_at: DateTime<Utc> = r.try_get(10).map_err(error::pg)?;
                Ok(StoredDeadLetter {
                    record: DeadLetterRecord {
                        key: r.try_get(0).map_err(error::pg)?,
                        event_id: r.try_get(1).map_err(error::pg)?,
                        event_type: r.try_get(2).map_err(error::pg)?,
                        subject: r.try_get(3).map_err(error::pg)?,
                        payload: r.try_get(4).map_err(error::pg)?,
                        reason: r.try_get(5).map_err(error::pg)?,
                        error: r.try_get(6).map_err(error::pg)?,
                        attempts: count_u32(r.try_get(7).map_err(error::pg)?),
                        failed_at: last_failed_at,
                        subscription: r.try_get(8).map_err(error::pg)?,
                    },
                    first_failed_at: r.try_get(9).map_err(error::pg)?,
                    last_failed_at,
                    replay_count: count_u32(r.try_get(11).map_err(error::pg)?),
                    last_replayed_at: r.try_get(12).map_err(error::pg)?,
                })
            })
            .collect()
    }

    /// A key with no dead-letter row is a no-op.
    async fn record_replay(&self, key: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(RECORD_REPLAY, &[&key, &at])
            .await
            .map_err(error::pg)?;
        Ok(())
    }
}

impl CheckpointStore for PgStore {
    async fn load_checkpoint(
        &self,
        module: &str,
        shard: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(LOAD_CHECKPOINT, &[&module, &shard])
            .await
            .map_err(error::pg)?;
        row.map(|r| {
            Ok(Checkpoint {
                module: module.to_owned(),
                shard: shard.to_owned(),
                last_processed_at: r.try_get(0).map_err(error::pg)?,
                cursor_token: r.try_get(1).map_err(error::pg)?,
            })
        })
        .transpose()
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                SAVE_CHECKPOINT,
                &[
                    &checkpoint.module,
                    &checkpoint.shard,
                    &checkpoint.last_processed_at,
                    &checkpoint.cursor_token,
                ],
            )
            .await
            .map_err(error::pg)?;
        Ok(())
    }
}

impl MetricsStore for PgStore {
    async fn record_metrics(&self, samples: &[MetricSample]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let recorded_at: Vec<DateTime<Utc>> = samples.iter().map(|s| s.recorded_at).collect();
        let modules: Vec<&str> = samples.iter().map(|s| s.module.as_str()).collect();
        let metrics: Vec<&str> = samples.iter().map(|s| s.metric.as_str()).collect();
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        let client = self.client().await?;
        client
            .execute(RECORD_METRICS, &[&recorded_at, &modules, &metrics, &values])
            .await
            .map_err(error::pg)?;
        Ok(())
    }
}

impl InspectStore for PgStore {
    async fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = TABLES
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!("SELECT {i} AS ord, '{t}'::text AS name, count(*) AS n FROM mirror.{t}")
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
            + " ORDER BY ord";
        let client = self.client().await?;
        let rows = client.query(sql.as_str(), &[]).await.map_err(error::pg)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(1).map_err(error::pg)?,
                    r.try_get(2).map_err(error::pg)?,
                ))
            })
            .collect()
    }

    async fn snapshot(&self) -> Result<MirrorState, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(error::pg)?;
        let state = snapshot::read(&tx).await?;
        tx.commit().await.map_err(error::pg)?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_and_describe_hide_the_password() {
        let config =
            PgConfig::from_url("postgres://mirror:hunter2@db.example:6432/mirror?sslmode=disable");
        assert!(!format!("{config:?}").contains("hunter2"));
        let parsed = parse_config(&config.url).unwrap();
        let text = describe(&parsed);
        assert_eq!(text, "mirror@db.example:6432/mirror");
        assert!(!format!(
            "{:?}",
            parse_config(&SecretString::from(
                "postgres://a:hunter2@h:bad/x".to_owned()
            ))
            .unwrap_err()
        )
        .contains("hunter2"));
    }

    #[test]
    fn every_statement_names_a_function_of_the_contract() {
        for sql in call::ALL_STATEMENTS {
            assert!(sql.starts_with("SELECT mirror.sp_store_mirror_"), "{sql}");
        }
    }

    #[test]
    fn nul_is_made_storable() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        assert!(matches!(storable("ab"), std::borrow::Cow::Borrowed(_)));
    }
}
