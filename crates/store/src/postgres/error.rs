//! Driver errors (`tokio_postgres`, `deadpool`) as [`StoreError`]s.
//!
//! Only *what* failed is recorded here — a kind and the SQLSTATE — never
//! whether to retry: that is `sql_writer::policy`'s job.

use deadpool_postgres::{PoolError, TimeoutType};

use crate::{DbCode, StoreError, StoreErrorKind};

/// SQLSTATE `query_canceled`, which is what `statement_timeout` raises.
const QUERY_CANCELED: &str = "57014";

/// A `tokio_postgres` error: the database's own code when it sent one,
/// `Connect` when the connection is gone or the socket failed, `Protocol` for
/// anything else the driver could not make sense of (type conversions).
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    pg_in(e, StoreErrorKind::Protocol)
}

/// Like [`pg`], for errors while connecting: a driver error without a
/// SQLSTATE is then a connection failure, not a protocol one.
pub(crate) fn pg_connect(e: tokio_postgres::Error) -> StoreError {
    pg_in(e, StoreErrorKind::Connect)
}

fn pg_in(e: tokio_postgres::Error, otherwise: StoreErrorKind) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_owned();
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            message.push_str(&format!(" ({detail})"));
        }
        // The server's own advice, e.g. `53200`'s "You might need to increase
        // max_locks_per_transaction" when the batches' advisory locks fill
        // the lock table (docs/postgres.md, Operations).
        if let Some(hint) = db.hint() {
            message.push_str(&format!(" (hint: {hint})"));
        }
        let kind = if code == QUERY_CANCELED {
            StoreErrorKind::Timeout
        } else {
            StoreErrorKind::Database
        };
        return StoreError {
            kind,
            code: Some(DbCode::Sqlstate(code)),
            message,
        };
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let kind = if e.is_closed() || io {
        StoreErrorKind::Connect
    } else {
        otherwise
    };
    // `tokio_postgres::Error`'s Display carries the cause but never the password.
    StoreError::new(kind, error_chain(&e))
}

/// A pool checkout failure.
pub(crate) fn pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => StoreError::new(
            StoreErrorKind::PoolTimeout,
            "no pooled PostgreSQL connection became free in time",
        ),
        PoolError::Timeout(TimeoutType::Create) => StoreError::new(
            StoreErrorKind::Connect,
            "timed out connecting to PostgreSQL",
        ),
        PoolError::Timeout(TimeoutType::Recycle) => StoreError::new(
            StoreErrorKind::Connect,
            "timed out checking a pooled PostgreSQL connection",
        ),
        PoolError::Backend(e) => pg_connect(e),
        PoolError::Closed => {
            StoreError::new(StoreErrorKind::Connect, "the PostgreSQL pool is closed")
        }
        PoolError::NoRuntimeSpecified => StoreError::new(
            StoreErrorKind::Config,
            "the PostgreSQL pool has no async runtime for its timeouts",
        ),
        PoolError::PostCreateHook(e) => StoreError::new(
            StoreErrorKind::Connect,
            format!("new PostgreSQL connection rejected: {e}"),
        ),
    }
}

/// The error and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
