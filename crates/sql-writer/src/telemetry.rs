//! Typed internal events: each emits its log line and its metrics together, so
//! the two cannot drift apart (the pattern of vector's `internal_events`).
//!
//! Metric names (Prometheus, via the `metrics` facade):
//! - `mirror_events_total{type, outcome}` — outcome ∈ applied, duplicate,
//!   stale, retried, dead_lettered.
//! - `sql_mirror_latency_ms{type}` — histogram: source version (Firestore
//!   update time) to SQL commit, for applied events.
//! - `mirror_batch_seconds` — histogram: one batch's apply + settle.
//! - `mirror_dead_letter_sql_pending` — gauge: dead-letter rows waiting for the database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use mirror_bus::DeadLetter;
use mirror_schema::EventType;
use mirror_store::ApplyOutcome;

/// An event reached its final settlement.
pub fn event_completed(
    event_type: EventType,
    outcome: ApplyOutcome,
    source_time: DateTime<Utc>,
    committed_at: DateTime<Utc>,
) {
    counter!("mirror_events_total", "type" => event_type.as_str(), "outcome" => outcome.as_str())
        .increment(1);
    if outcome == ApplyOutcome::Applied {
        let ms = (committed_at - source_time)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64
            / 1000.0;
        histogram!("sql_mirror_latency_ms", "type" => event_type.as_str()).record(ms.max(0.0));
    }
    tracing::debug!(r#type = %event_type, outcome = outcome.as_str(), "event settled");
}

/// A delivery was released for a later attempt.
pub fn event_retried(
    message_id: Option<&str>,
    event_type: Option<EventType>,
    attempt: u32,
    delay: Duration,
    reason: &str,
) {
    counter!("mirror_events_total", "type" => event_type.map(|t| t.as_str()).unwrap_or("unknown"), "outcome" => "retried")
        .increment(1);
    tracing::warn!(
        message_id,
        attempt,
        delay_ms = delay.as_millis() as u64,
        reason,
        "transient failure, will retry"
    );
}

/// A delivery was dead-lettered.
pub fn event_dead_lettered(
    message_id: Option<&str>,
    event_type: Option<EventType>,
    why: &DeadLetter,
) {
    counter!("mirror_events_total", "type" => event_type.map(|t| t.as_str()).unwrap_or("unknown"), "outcome" => "dead_lettered")
        .increment(1);
    tracing::error!(message_id, reason = %why.reason, attempts = why.attempts, description = %why.description, "event dead-lettered");
}

/// A batch finished.
pub fn batch_finished(size: usize, took: Duration) {
    histogram!("mirror_batch_seconds").record(took.as_secs_f64());
    tracing::debug!(size, took_ms = took.as_millis() as u64, "batch done");
}

/// Dead-letter rows waiting for the database to come back.
pub fn dead_letter_rows_pending(n: usize) {
    gauge!("mirror_dead_letter_sql_pending").set(n as f64);
    if n > 0 {
        tracing::warn!(pending = n, "dead-letter rows waiting for the database");
    }
}

/// Settling a message with the bus failed (it will be redelivered; harmless).
pub fn settle_failed(message_id: Option<&str>, error: &dyn std::fmt::Display) {
    counter!("mirror_settle_failures_total").increment(1);
    tracing::warn!(message_id, error = %error, "could not settle message; it will be redelivered");
}
