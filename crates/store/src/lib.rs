//! The `MirrorStore` port: where contract events become SQL rows, and its
//! adapters ([`postgres`], feature `postgres`; [`mssql`], feature `mssql`).
//!
//! # Contract (every adapter)
//!
//! The bus is at-least-once and unordered, so a store must make any
//! permutation of any multiset of valid events converge (see
//! `shared/event-contract.md`, "What the mirror must guarantee"):
//!
//! - **Idempotent by event id**: applying an id already applied returns
//!   [`ApplyOutcome::Duplicate`] and writes nothing (no second audit row or
//!   follow-edge observation).
//! - **History of the set, not the order** (contract v1.1): every new
//!   `dm.message.update`/`.delete` id writes one audit row with the event's own
//!   payload, and every new follow-edge id one observation, whether the event
//!   is applied or stale; `follow_event` is derived from the observations in
//!   `(time, id)` order (see [`model::History`]).
//! - **Last writer wins by source version**: an event whose `(time, id)` is not
//!   newer than the entity's stored version returns [`ApplyOutcome::Stale`] and
//!   changes nothing. `time` decides; the id only breaks exact ties, so the
//!   order is total and the result independent of arrival order.
//! - **Tombstones**: deletes keep the row with `deleted_at` = event time.
//! - **Atomic per event**: each event's effect (row, audit, follow
//!   observation, placeholder parent, conversation summary) commits or rolls
//!   back as one.
//! - **Safe under concurrent writers**: two processes applying events of the
//!   same entity at once never lose the newer version; a deadlock surfaces as
//!   a transient [`StoreError`] for the caller to retry.
//!
//! [`model`] is the reference semantics in plain Rust: the conformance suite
//! and the property tests check every adapter against it.
//!
//! Stores do not decide what to do about an error: they report what happened
//! ([`StoreErrorKind`], the database's own code) and the writer's policy decides
//! retry versus dead-letter in one place.

use std::future::Future;

use chrono::{DateTime, Utc};
use mirror_schema::MirrorEvent;
use uuid::Uuid;

pub mod checksum;
pub mod ledger;
pub mod model;
pub mod plan;
pub mod state;
pub mod telemetry;

#[cfg(feature = "mssql")]
pub mod mssql;
#[cfg(feature = "postgres")]
pub mod postgres;

pub use state::MirrorState;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApplyOutcome {
    /// The event was the newest version of its entity and is now stored.
    Applied,
    /// This event id was applied before; nothing changed.
    Duplicate,
    /// The entity already holds a newer version; nothing changed.
    Stale,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Applied => "applied",
            ApplyOutcome::Duplicate => "duplicate",
            ApplyOutcome::Stale => "stale",
        }
    }

    /// Parse the outcome text the stored procedures return.
    pub fn parse(s: &str) -> Option<ApplyOutcome> {
        match s.trim() {
            "applied" => Some(ApplyOutcome::Applied),
            "duplicate" => Some(ApplyOutcome::Duplicate),
            "stale" => Some(ApplyOutcome::Stale),
            _ => None,
        }
    }
}

/// How [`MirrorStore::apply_batch_as`] executes a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ApplyMode {
    /// Each event its own call of its family's procedure, inside its own
    /// savepoint, in one transaction.
    PerEvent,
    /// Set-based: one statement per family for the whole batch, planned by
    /// [`plan::Plan`], in one transaction; savepoints only on the failure path.
    #[default]
    Batched,
}

impl ApplyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyMode::PerEvent => "per-event",
            ApplyMode::Batched => "batched",
        }
    }
}

impl std::str::FromStr for ApplyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ApplyMode, String> {
        match s {
            "per-event" => Ok(ApplyMode::PerEvent),
            "batched" => Ok(ApplyMode::Batched),
            other => Err(format!("`{other}` is not per-event or batched")),
        }
    }
}

/// The database's own error code, for the writer's policy to classify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbCode {
    /// PostgreSQL SQLSTATE (`40001`, `23505`, the functions' own `RM…` codes).
    Sqlstate(String),
    /// SQL Server error number (`1205`, `2627`, the procedures' own 50000+ numbers).
    Mssql(u32),
}

/// What kind of thing failed, as far as the store can tell without judging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Bad configuration (URL, credentials format): fatal at start.
    Config,
    /// Could not reach or log in to the database, or the connection broke.
    Connect,
    /// No pooled connection became free in time.
    PoolTimeout,
    /// The statement did not finish within the command timeout (the database
    /// said so, or the adapter's own bound on one statement ran out).
    Timeout,
    /// The database gave no answer at all within a bound: hung, partitioned,
    /// or the connection silently dead (see [`StoreError::no_answer`]). The
    /// policy treats it as the database being unavailable, not as a failing
    /// event.
    NoAnswer,
    /// The database answered with an error (see [`StoreError::code`]).
    Database,
    /// The database answered something the adapter did not expect.
    Protocol,
    /// Applying migrations failed.
    Migration,
}

/// A store failure: what failed, the database's code if it gave one, and its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{message}", code.as_ref().map(|c| match c { DbCode::Sqlstate(s) => format!("SQLSTATE {s}: "), DbCode::Mssql(n) => format!("SQL Server error {n}: ") }).unwrap_or_default())]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub code: Option<DbCode>,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            code: None,
            message: message.into(),
        }
    }

    /// The database gave no answer within `limit` ([`StoreErrorKind::NoAnswer`]).
    pub fn no_answer(limit: std::time::Duration) -> StoreError {
        StoreError::new(
            StoreErrorKind::NoAnswer,
            format!(
                "no answer from the database within {:.1} s",
                limit.as_secs_f64()
            ),
        )
    }

    pub fn database(code: DbCode, message: impl Into<String>) -> StoreError {
        StoreError {
            kind: StoreErrorKind::Database,
            code: Some(code),
            message: message.into(),
        }
    }
}

/// `call`'s result, or a [`StoreError::no_answer`] failure once `limit` passed
/// without one (the call is dropped: a transaction in it is abandoned).
pub async fn answer<T>(
    limit: std::time::Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::no_answer(limit)))
}

/// A dead-lettered event as the SQL `realtime_mirror_dead_letter` table keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// Unique key: the event id when the message decodes (an undecodable
    /// message's claimed id is not trusted), else `sha256:<hex of the body>`. Recording the same key again updates
    /// `last_failed_at`/`attempts` and keeps `first_failed_at`.
    pub key: String,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub subject: Option<String>,
    /// The message body as received (lossy UTF-8).
    pub payload: String,
    /// Short reason code (same as the bus's `DeadLetterReason`).
    pub reason: String,
    /// Full error text.
    pub error: String,
    pub attempts: u32,
    pub failed_at: DateTime<Utc>,
    pub subscription: String,
}

/// A row of `realtime_mirror_dead_letter`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    pub record: DeadLetterRecord,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub replay_count: u32,
    pub last_replayed_at: Option<DateTime<Utc>>,
}

/// A resume position of a publisher module/shard (`realtime_mirror_checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub module: String,
    pub shard: String,
    pub last_processed_at: Option<DateTime<Utc>>,
    /// Opaque resume token or backfill cursor.
    pub cursor_token: Option<Vec<u8>>,
}

/// One measurement for `realtime_mirror_metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub module: String,
    pub metric: String,
    pub value: f64,
    pub recorded_at: DateTime<Utc>,
}

/// Applies contract events: the hot path, and the contract in the module docs.
pub trait ApplyEvents: Send + Sync + 'static {
    /// Apply one event in its own transaction.
    fn apply(
        &self,
        event: &MirrorEvent,
    ) -> impl Future<Output = Result<ApplyOutcome, StoreError>> + Send;

    /// Apply `events` as one batch: the same outcomes and rows as applying them
    /// one by one in input order, but one event the database rejects does not
    /// undo the others (it alone gets an `Err`). Returns one result per event,
    /// in input order. An `Err` of the whole call means nothing was committed
    /// (connection lost, commit failed) and every event must be retried.
    fn apply_batch(
        &self,
        events: &[MirrorEvent],
    ) -> impl Future<Output = Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError>> + Send;

    /// [`ApplyEvents::apply_batch`] in a chosen [`ApplyMode`]; both modes give
    /// the same results and rows. Adapters with one way of applying a batch
    /// keep this default, which ignores the mode.
    fn apply_batch_as(
        &self,
        events: &[MirrorEvent],
        mode: ApplyMode,
    ) -> impl Future<Output = Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError>> + Send
    {
        let _ = mode;
        self.apply_batch(events)
    }

    /// How many entity locks the database can hold at once, across all its
    /// transactions, if it has such a fixed limit: PostgreSQL's shared lock
    /// table (`max_locks_per_transaction` × (`max_connections` +
    /// `max_prepared_transactions`)), which every batch's per-entity
    /// advisory locks fill. `None` (the default) when the database has no
    /// fixed limit to report (SQL Server sizes its lock memory itself).
    fn lock_capacity(&self) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        async { Ok(None) }
    }
}

/// The SQL side of dead letters: one row per dead-letter key, idempotent.
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Insert or update a dead-letter row (keyed by [`DeadLetterRecord::key`]):
    /// recording the same key twice leaves one row.
    fn record_dead_letter(
        &self,
        record: &DeadLetterRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Dead-letter rows, newest failure first.
    fn list_dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, StoreError>> + Send;

    /// Note that the dead letter `key` was replayed at `at` (count and history).
    fn record_replay(
        &self,
        key: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The publisher's resume positions, one per `(module, shard)`.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The saved checkpoint, or `None` before the first save.
    fn load_checkpoint(
        &self,
        module: &str,
        shard: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;
    /// Replace the checkpoint of `(checkpoint.module, checkpoint.shard)`.
    fn save_checkpoint(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Rows of `realtime_mirror_metrics` (per-batch figures kept in SQL).
pub trait MetricsStore: Send + Sync + 'static {
    /// Append `samples`.
    fn record_metrics(
        &self,
        samples: &[MetricSample],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Reading the mirror back: counts for people, snapshots for tests and checks.
pub trait InspectStore: Send + Sync + 'static {
    /// Row counts of every mirror table, by table name, in schema order.
    fn table_counts(&self) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// Every mirrored row, normalised (Firestore ids instead of surrogate keys).
    fn snapshot(&self) -> impl Future<Output = Result<MirrorState, StoreError>> + Send;
}

/// A whole store: every seam above. Implemented for any type that has them
/// all, so adapters implement the small traits and code that needs only one
/// seam asks for only that one. A decorator that changes one seam implements
/// that trait and forwards the rest with [`delegate_store!`].
pub trait MirrorStore:
    ApplyEvents + DeadLetterStore + CheckpointStore + MetricsStore + InspectStore
{
}

impl<T> MirrorStore for T where
    T: ApplyEvents + DeadLetterStore + CheckpointStore + MetricsStore + InspectStore
{
}

/// Forward whole store traits of a decorator to one of its fields:
///
/// ```ignore
/// mirror_store::delegate_store!(impl[S: MirrorStore] Timed<S> => inner:
///     DeadLetterStore, CheckpointStore, MetricsStore, InspectStore);
/// ```
///
/// The decorator then implements only the trait it changes (here
/// [`ApplyEvents`]). The field may be the store itself or anything that
/// dereferences to it (`Arc<S>`).
#[macro_export]
macro_rules! delegate_store {
    (impl $g:tt $ty:ty => $f:ident: $($part:ident),+ $(,)?) => {
        $( $crate::delegate_store!(@$part $g $ty, $f); )+
    };
    (@ApplyEvents [$($g:tt)*] $ty:ty, $f:ident) => {
        impl<$($g)*> $crate::ApplyEvents for $ty {
            async fn apply(
                &self,
                event: &$crate::__MirrorEvent,
            ) -> Result<$crate::ApplyOutcome, $crate::StoreError> {
                {
                    use $crate::ApplyEvents as _;
                    self.$f.apply(event).await
                }
            }
            async fn apply_batch(
                &self,
                events: &[$crate::__MirrorEvent],
            ) -> Result<Vec<Result<$crate::ApplyOutcome, $crate::StoreError>>, $crate::StoreError> {
                {
                    use $crate::ApplyEvents as _;
                    self.$f.apply_batch(events).await
                }
            }
            async fn apply_batch_as(
                &self,
                events: &[$crate::__MirrorEvent],
                mode: $crate::ApplyMode,
            ) -> Result<Vec<Result<$crate::ApplyOutcome, $crate::StoreError>>, $crate::StoreError> {
                {
                    use $crate::ApplyEvents as _;
                    self.$f.apply_batch_as(events, mode).await
                }
            }
            async fn lock_capacity(&self) -> Result<Option<u64>, $crate::StoreError> {
                {
                    use $crate::ApplyEvents as _;
                    self.$f.lock_capacity().await
                }
            }
        }
    };
    (@DeadLetterStore [$($g:tt)*] $ty:ty, $f:ident) => {
        impl<$($g)*> $crate::DeadLetterStore for $ty {
            async fn record_dead_letter(
                &self,
                record: &$crate::DeadLetterRecord,
            ) -> Result<(), $crate::StoreError> {
                {
                    use $crate::DeadLetterStore as _;
                    self.$f.record_dead_letter(record).await
                }
            }
            async fn list_dead_letters(
                &self,
                limit: usize,
            ) -> Result<Vec<$crate::StoredDeadLetter>, $crate::StoreError> {
                {
                    use $crate::DeadLetterStore as _;
                    self.$f.list_dead_letters(limit).await
                }
            }
            async fn record_replay(
                &self,
                key: &str,
                at: $crate::__DateTime<$crate::__Utc>,
            ) -> Result<(), $crate::StoreError> {
                {
                    use $crate::DeadLetterStore as _;
                    self.$f.record_replay(key, at).await
                }
            }
        }
    };
    (@CheckpointStore [$($g:tt)*] $ty:ty, $f:ident) => {
        impl<$($g)*> $crate::CheckpointStore for $ty {
            async fn load_checkpoint(
                &self,
                module: &str,
                shard: &str,
            ) -> Result<Option<$crate::Checkpoint>, $crate::StoreError> {
                {
                    use $crate::CheckpointStore as _;
                    self.$f.load_checkpoint(module, shard).await
                }
            }
            async fn save_checkpoint(
                &self,
                checkpoint: &$crate::Checkpoint,
            ) -> Result<(), $crate::StoreError> {
                {
                    use $crate::CheckpointStore as _;
                    self.$f.save_checkpoint(checkpoint).await
                }
            }
        }
    };
    (@MetricsStore [$($g:tt)*] $ty:ty, $f:ident) => {
        impl<$($g)*> $crate::MetricsStore for $ty {
            async fn record_metrics(
                &self,
                samples: &[$crate::MetricSample],
            ) -> Result<(), $crate::StoreError> {
                {
                    use $crate::MetricsStore as _;
                    self.$f.record_metrics(samples).await
                }
            }
        }
    };
    (@InspectStore [$($g:tt)*] $ty:ty, $f:ident) => {
        impl<$($g)*> $crate::InspectStore for $ty {
            async fn table_counts(&self) -> Result<Vec<(String, i64)>, $crate::StoreError> {
                {
                    use $crate::InspectStore as _;
                    self.$f.table_counts().await
                }
            }
            async fn snapshot(&self) -> Result<$crate::MirrorState, $crate::StoreError> {
                {
                    use $crate::InspectStore as _;
                    self.$f.snapshot().await
                }
            }
        }
    };
}

/// Every store trait, for code that calls store methods on a concrete adapter
/// type (`use mirror_store::prelude::*;`).
pub mod prelude {
    pub use crate::{
        ApplyEvents, CheckpointStore, DeadLetterStore, InspectStore, MetricsStore, MirrorStore,
    };
}

// Paths the macro names, so its users need not depend on chrono or the schema.
#[doc(hidden)]
pub use chrono::{DateTime as __DateTime, Utc as __Utc};
#[doc(hidden)]
pub use mirror_schema::MirrorEvent as __MirrorEvent;
