//! Store health: whether the database is reachable, shared by every worker.
//!
//! When a batch finds the database unavailable (connection refused,
//! restarting, failing over, or hung past `apply_timeout`), [`StoreHealth`] is
//! marked down; the intake then takes no messages (lanes hand back what they
//! hold) and probes with growing
//! delays until the database answers again, so an outage costs a message one
//! delivery attempt, not all of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mirror_store::{answer, MirrorStore, StoreError};
use tokio::sync::watch;

use crate::policy::{store_unavailable, RetryPolicy};

/// The checkpoint row read to probe the database (any answer, even "no row", means it is up).
const PROBE_MODULE: &str = "sql-writer";
const PROBE_SHARD: &str = "health-probe";
/// Capped low: once the database is back, intake resumes within seconds.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(5);

/// Whether the database is currently considered unavailable.
#[derive(Debug, Default)]
pub struct StoreHealth {
    down: AtomicBool,
}

impl StoreHealth {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Note a store failure; if it means the database is unavailable, pause intake.
    pub fn note_failure(&self, worker: usize, e: &StoreError) {
        if store_unavailable(e) && !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(worker, error = %e, "database unavailable: releasing messages and pausing intake until it answers");
            crate::telemetry::intake_paused(true);
        }
    }

    /// Hold no messages while the database is unavailable: probe it with
    /// growing delays until it answers (or `stop` turns true).
    pub async fn wait_until_reachable<S: MirrorStore>(
        &self,
        store: &S,
        retry: &RetryPolicy,
        apply_timeout: Duration,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut probes = 0u32;
        let mut delays = retry.backoff.capped(MAX_PROBE_DELAY).delays();
        while self.is_down() && !*stop.borrow() {
            probes += 1;
            let delay = delays.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
            if !self.is_down() || *stop.borrow() {
                return;
            }
            let probe = answer(
                apply_timeout,
                store.load_checkpoint(PROBE_MODULE, PROBE_SHARD),
            );
            // A probe of a hung database must not hold up shutdown either.
            let answer = tokio::select! {
                r = probe => r.map(|_| ()),
                _ = stop.changed() => return,
            };
            match answer {
                Err(e) if store_unavailable(&e) => {
                    tracing::warn!(probes, error = %e, "database still unavailable; taking no messages");
                }
                // Reachable (an error of another kind is the batch's to classify).
                _ => {
                    if self.down.swap(false, Ordering::AcqRel) {
                        crate::telemetry::intake_paused(false);
                        tracing::info!(probes, "database reachable again; resuming");
                    }
                    return;
                }
            }
        }
    }
}
