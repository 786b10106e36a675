//! Typed events of the store adapters: each emits its log line and its metric
//! together (the writer's `telemetry` pattern), so the two cannot drift apart.
//!
//! - `db.client.operation.duration` (histogram, seconds; OpenTelemetry
//!   database semantic conventions) with `db.system.name`,
//!   `db.operation.name`, `db.stored_procedure.name` and, on failure,
//!   `error.type`: one stored procedure call inside a batch transaction.

use std::time::Duration;

use metrics::histogram;

use crate::{StoreError, StoreErrorKind};

/// `db.system.name` values of the OpenTelemetry registry.
pub const POSTGRESQL: &str = "postgresql";
pub const SQL_SERVER: &str = "microsoft.sql_server";

/// The metric name (as in `mirror_runtime::telemetry::names`).
const DB_OPERATION_DURATION: &str = "db.client.operation.duration";

/// A stored procedure (plpgsql function) call returned, or failed.
pub fn procedure_called(
    system: &'static str,
    procedure: &str,
    took: Duration,
    error: Option<&StoreError>,
) {
    let procedure = procedure.to_owned();
    match error {
        None => histogram!(
            DB_OPERATION_DURATION,
            "db.system.name" => system,
            "db.operation.name" => "EXECUTE",
            "db.stored_procedure.name" => procedure.clone(),
        )
        .record(took.as_secs_f64()),
        Some(e) => {
            histogram!(
                DB_OPERATION_DURATION,
                "db.system.name" => system,
                "db.operation.name" => "EXECUTE",
                "db.stored_procedure.name" => procedure.clone(),
                "error.type" => error_type(e),
            )
            .record(took.as_secs_f64());
            tracing::debug!(procedure, error = %e, "stored procedure failed");
        }
    }
}

/// `error.type`: the error's kind (low cardinality), never its message.
pub fn error_type(e: &StoreError) -> &'static str {
    match e.kind {
        StoreErrorKind::Config => "config",
        StoreErrorKind::Connect => "connect",
        StoreErrorKind::PoolTimeout => "pool_timeout",
        StoreErrorKind::Timeout => "timeout",
        StoreErrorKind::NoAnswer => "no_answer",
        StoreErrorKind::Database => "database",
        StoreErrorKind::Protocol => "protocol",
        StoreErrorKind::Migration => "migration",
    }
}

/// The function a PostgreSQL call statement runs: `SELECT mirror.f(…)` → `mirror.f`.
pub fn pg_function(sql: &str) -> &str {
    let rest = sql.strip_prefix("SELECT ").unwrap_or(sql);
    rest.split('(').next().unwrap_or(rest).trim()
}

/// Applied-event ledger rows deleted by one pruning batch.
pub fn ledger_pruned(system: &'static str, rows: u64) {
    metrics::counter!("mirror_ledger_pruned_total", "db.system.name" => system).increment(rows);
    if rows > 0 {
        tracing::debug!(rows, "ledger rows pruned");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_postgres_function() {
        assert_eq!(
            super::pg_function("SELECT mirror.sp_store_mirror_delete_dm_block(p_event_id => $1)"),
            "mirror.sp_store_mirror_delete_dm_block"
        );
    }
}
