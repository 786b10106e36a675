//! Ledger pruning on SQL Server (see [`crate::ledger`]).

use chrono::{DateTime, Utc};

use super::{map_error, MssqlStore};
use crate::ledger::LedgerPruning;
use crate::StoreError;

/// One batch; `READPAST` skips rows another transaction has locked, `ROWLOCK`
/// keeps the delete from escalating while it stays under 5,000 rows.
const PRUNE_BATCH: &str = "\
    DELETE TOP (@P2) FROM dbo.AppliedEvent WITH (ROWLOCK, READPAST)
     WHERE AppliedAt < @P1;
    SELECT CAST(@@ROWCOUNT AS BIGINT) AS Deleted;";

impl LedgerPruning for MssqlStore {
    async fn prune_ledger_batch(
        &self,
        before: DateTime<Utc>,
        batch: usize,
    ) -> Result<u64, StoreError> {
        let top = i64::try_from(batch.min(4000)).unwrap_or(4000);
        let before = before.fixed_offset();
        let deleted = self
            .run(move |c| {
                Box::pin(async move {
                    let row = c
                        .query(PRUNE_BATCH, &[&before, &top])
                        .await
                        .map_err(map_error)?
                        .into_row()
                        .await
                        .map_err(map_error)?;
                    Ok(row
                        .and_then(|r| r.get::<i64, _>("Deleted"))
                        .unwrap_or(0)
                        .max(0) as u64)
                })
            })
            .await?;
        crate::telemetry::ledger_pruned(crate::telemetry::SQL_SERVER, deleted);
        Ok(deleted)
    }
}
