//! Ledger pruning on PostgreSQL (see [`crate::ledger`]).

use chrono::{DateTime, Utc};

use super::{error, PgStore};
use crate::ledger::LedgerPruning;
use crate::StoreError;

/// One batch: the oldest-recorded rows first (index `ix_applied_event_applied_at`),
/// `SKIP LOCKED` so a row the writer is touching is left for the next run.
const PRUNE_BATCH: &str = "\
    WITH doomed AS (
        SELECT event_id FROM mirror.applied_event
         WHERE applied_at < $1
         ORDER BY applied_at
         LIMIT $2
           FOR UPDATE SKIP LOCKED)
    DELETE FROM mirror.applied_event a USING doomed WHERE a.event_id = doomed.event_id";

impl LedgerPruning for PgStore {
    async fn prune_ledger_batch(
        &self,
        before: DateTime<Utc>,
        batch: usize,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let rows = client
            .execute(PRUNE_BATCH, &[&before, &limit])
            .await
            .map_err(error::pg)?;
        crate::telemetry::ledger_pruned(crate::telemetry::POSTGRESQL, rows);
        Ok(rows)
    }
}
