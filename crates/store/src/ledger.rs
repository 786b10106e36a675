//! Keeping the applied-event ledger bounded.
//!
//! The ledger (`mirror.applied_event` / `dbo.AppliedEvent`) holds one row per
//! event id the store has seen, so that a redelivered id is a no-op. It grows
//! with every event; pruning deletes rows older than a retention window, in
//! small batches, each its own short transaction that skips rows another
//! transaction holds, so it never blocks the writer.
//!
//! Why a redelivery older than the window stays harmless: once its ledger row
//! is gone, an old event is judged by the version guard alone. Every mirrored
//! row keeps its source version `(time, id)`; the old event is not newer than
//! the version already applied from it (or from anything after it), so it is
//! `stale` and changes no current-state row. Its history rows are keyed by
//! event id too (`dm_message_audit.event_id` and the follow-edge
//! observations are unique by event id, v1.1), so the procedures' history
//! insert finds the row it wrote the first time and adds nothing. What the
//! window costs is only this: such an event is reported `stale` instead of
//! `duplicate`, and it re-adds a ledger row. The window the docs recommend
//! (30 days) and why: `docs/runbook.md`.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::StoreError;

/// Rows per pruning transaction.
pub const DEFAULT_BATCH: usize = 1000;

/// A store whose ledger can be pruned.
pub trait LedgerPruning: Send + Sync + 'static {
    /// Delete at most `batch` ledger rows recorded before `before`, in one
    /// short transaction, skipping rows another transaction has locked.
    /// Returns how many rows it deleted.
    fn prune_ledger_batch(
        &self,
        before: DateTime<Utc>,
        batch: usize,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// How a pruning run goes.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Rows per transaction.
    pub batch: usize,
    /// Pause between batches, leaving the database to the writer.
    pub pause: Duration,
    /// Stop after this many rows (None: until nothing is older than the cutoff).
    pub max_rows: Option<u64>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            batch: DEFAULT_BATCH,
            pause: Duration::from_millis(50),
            max_rows: None,
        }
    }
}

/// Delete ledger rows recorded before `before`, batch after batch, until a
/// batch finds fewer rows than it may delete (or `max_rows` is reached).
/// Returns the rows deleted. Safe to run while the writer runs, and to stop at
/// any point (every batch is committed on its own).
pub async fn prune<L: LedgerPruning>(
    store: &L,
    before: DateTime<Utc>,
    options: PruneOptions,
) -> Result<u64, StoreError> {
    let batch = options.batch.max(1);
    let mut total = 0u64;
    loop {
        let want = match options.max_rows {
            Some(max) if total >= max => break,
            Some(max) => batch.min((max - total) as usize),
            None => batch,
        };
        let deleted = store.prune_ledger_batch(before, want).await?;
        total += deleted;
        if deleted < want as u64 {
            break;
        }
        if !options.pause.is_zero() {
            tokio::time::sleep(options.pause).await;
        }
    }
    Ok(total)
}
