//! The start-up check of the database's lock table against what this writer's batches hold.
//!
//! Each lane's transaction takes one lock per entity of its batch (the
//! store's per-entity advisory locks), so one writer holds up to
//! `lanes × batch_size` at once. PostgreSQL keeps them in one shared table
//! of fixed size; when it is full, every statement that needs a lock fails
//! with `53200` (out of shared memory) — batches, then the event-by-event
//! retries, until events are dead-lettered past the attempt limit. The
//! writer cannot see how many replicas or other applications share the
//! table, so it only says, once at start, how many writers like itself fit.

use mirror_store::{answer, MirrorStore};

/// How this writer's batches fit the database's lock table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `writers` writers like this one fit, and at least two do.
    Fits { writers: u64 },
    /// Only one writer like this one fits: a second replica can exhaust it.
    Tight,
    /// Full batches of this one writer alone can exhaust it.
    TooSmall,
}

/// The most locks a writer of `lanes` × `batch_size` holds at once (a zero
/// setting counts as one, as the writer runs it).
fn holds(lanes: usize, batch_size: usize) -> u64 {
    (lanes.max(1) as u64).saturating_mul(batch_size.max(1) as u64)
}

/// `capacity` lock slots against a writer of `lanes` × `batch_size`.
pub fn verdict(capacity: u64, lanes: usize, batch_size: usize) -> Verdict {
    match capacity / holds(lanes, batch_size) {
        0 => Verdict::TooSmall,
        1 => Verdict::Tight,
        writers => Verdict::Fits { writers },
    }
}

/// Ask the store for its lock capacity and log what it means for this
/// writer. Never fails: a store that cannot tell (or cannot answer now, the
/// writer rides out outages) only gets a debug line.
pub async fn check<S: MirrorStore>(
    store: &S,
    lanes: usize,
    batch_size: usize,
    timeout: std::time::Duration,
) {
    let capacity = match answer(timeout, store.lock_capacity()).await {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "could not read the database's lock capacity");
            return;
        }
    };
    let holds = holds(lanes, batch_size);
    const FIX: &str = "raise PostgreSQL's max_locks_per_transaction (docs/postgres.md, Operations) or lower --batch-size or --concurrency";
    match verdict(capacity, lanes, batch_size) {
        Verdict::Fits { writers } => tracing::info!(
            lock_table = capacity,
            holds,
            writers,
            "the database's lock table fits this many writers like this one (lanes × batch size locks each)"
        ),
        Verdict::Tight => tracing::warn!(
            lock_table = capacity,
            holds,
            "the database's lock table fits only one writer like this one (lanes × batch size locks each): a second replica's full batches can fail with 53200; {FIX}"
        ),
        Verdict::TooSmall => tracing::warn!(
            lock_table = capacity,
            holds,
            "the database's lock table is smaller than what this writer's full batches hold (lanes × batch size locks): they will fail with 53200 under load; {FIX}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_that_fit_are_counted_by_lanes_times_batch() {
        // PostgreSQL's defaults: 64 × (100 + 0) slots.
        assert_eq!(verdict(6_400, 4, 512), Verdict::Fits { writers: 3 });
        assert_eq!(verdict(25_600, 4, 512), Verdict::Fits { writers: 12 });
        assert_eq!(verdict(6_400, 4, 1_024), Verdict::Tight);
        assert_eq!(verdict(6_400, 8, 1_024), Verdict::TooSmall);
        assert_eq!(verdict(4_096, 4, 1_024), Verdict::Tight);
        assert_eq!(verdict(4_095, 4, 1_024), Verdict::TooSmall);
    }

    #[test]
    fn zero_settings_count_as_one() {
        assert_eq!(verdict(10, 0, 0), Verdict::Fits { writers: 10 });
        assert_eq!(verdict(0, 1, 1), Verdict::TooSmall);
    }
}
