//! Typed internal events: each emits its log line and its metrics together, so
//! the two cannot drift apart (the pattern of vector's `internal_events`).
//! Every metric, its unit and buckets: `docs/metrics.md`; the names are
//! `mirror_runtime::telemetry::names`.
//!
//! - `mirror_events_total{type, outcome}` — outcome ∈ applied, duplicate,
//!   stale, retried, dead_lettered.
//! - `sql_mirror_latency_ms{type}` — source version (Firestore update time)
//!   to SQL commit, applied events; `mirror_hop_latency_ms{type, hop}` — the
//!   same path per hop: `source_to_publish` (the publisher's `publishtime`
//!   stamp), `publish_to_enqueue` (the broker's enqueue time),
//!   `enqueue_to_commit`.
//! - `messaging.process.duration` — one delivery, receive to settle
//!   (OpenTelemetry messaging conventions; `error.type` unless completed).
//! - `mirror_batch_seconds`, `mirror_events_in_flight`,
//!   `mirror_dead_letter_sql_inserts_total`, `mirror_dead_letter_sql_pending`,
//!   `mirror_writer_paused`, `mirror_settle_failures_total`.
//!
//! Log lines carry ids, types, reasons and counts, never payloads.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use mirror_bus::DeadLetter;
use mirror_runtime::telemetry::names;
use mirror_schema::{EventType, MirrorEvent};
use mirror_store::ApplyOutcome;

/// `messaging.system` and `messaging.destination.name` of the process's bus.
static DESTINATION: OnceLock<(&'static str, String)> = OnceLock::new();

/// Name the bus the process consumes (`nats` or `servicebus`, and the topic),
/// for the messaging attributes. Set once by `main`; unset reads `unknown`.
pub fn set_destination(system: &'static str, topic: &str) {
    let _ = DESTINATION.set((system, topic.to_owned()));
}

fn destination() -> (&'static str, String) {
    DESTINATION
        .get()
        .cloned()
        .unwrap_or(("unknown", mirror_bus::TOPIC.to_owned()))
}

/// The span of one event's settlement: its id and type, never its payload.
pub fn event_span(message_id: Option<&str>, event: Option<&MirrorEvent>) -> tracing::Span {
    tracing::info_span!(
        "event",
        event.id = message_id.unwrap_or("-"),
        event.r#type = event.map(|e| e.event_type().as_str()).unwrap_or("unknown"),
    )
}

/// Deliveries held by the writer; decremented when dropped (however the batch ends).
#[must_use]
pub struct InFlight(usize);

impl InFlight {
    /// A batch of `n` deliveries was received.
    pub fn received(n: usize) -> InFlight {
        gauge!(names::IN_FLIGHT).increment(n as f64);
        InFlight(n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(names::IN_FLIGHT).decrement(self.0 as f64);
    }
}

/// One delivery was settled (or released) `took` after its batch was received;
/// `error_type` is `None` when it completed.
pub fn message_processed(subscription: &str, took: Duration, error_type: Option<&str>) {
    let (system, topic) = destination();
    let seconds = took.as_secs_f64();
    match error_type {
        None => histogram!(
            names::MESSAGING_PROCESS_DURATION,
            "messaging.system" => system,
            "messaging.operation.name" => "process",
            "messaging.destination.name" => topic,
            "messaging.destination.subscription.name" => subscription.to_owned(),
        )
        .record(seconds),
        Some(error_type) => histogram!(
            names::MESSAGING_PROCESS_DURATION,
            "messaging.system" => system,
            "messaging.operation.name" => "process",
            "messaging.destination.name" => topic,
            "messaging.destination.subscription.name" => subscription.to_owned(),
            "error.type" => error_type.to_owned(),
        )
        .record(seconds),
    }
}

/// The timestamps of one event's path, for the latency histograms.
#[derive(Debug, Clone, Copy)]
pub struct Path {
    /// The source version (Firestore update time).
    pub source: DateTime<Utc>,
    /// The publisher's `publishtime` stamp, if it set one.
    pub published: Option<DateTime<Utc>>,
    /// The broker's enqueue time, if the adapter reports it.
    pub enqueued: Option<DateTime<Utc>>,
    /// The commit of the batch transaction.
    pub committed: DateTime<Utc>,
}

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0).max(0.0)
}

/// An event reached its final settlement.
pub fn event_completed(event_type: EventType, outcome: ApplyOutcome, path: Path) {
    let ty = event_type.as_str();
    counter!(names::EVENTS, "type" => ty, "outcome" => outcome.as_str()).increment(1);
    if outcome == ApplyOutcome::Applied {
        histogram!(names::SOURCE_TO_COMMIT_MS, "type" => ty)
            .record(ms(path.source, path.committed));
        if let Some(p) = path.published {
            histogram!(names::HOP_LATENCY_MS, "type" => ty, "hop" => "source_to_publish")
                .record(ms(path.source, p));
            if let Some(q) = path.enqueued {
                histogram!(names::HOP_LATENCY_MS, "type" => ty, "hop" => "publish_to_enqueue")
                    .record(ms(p, q));
            }
        }
        if let Some(q) = path.enqueued {
            histogram!(names::HOP_LATENCY_MS, "type" => ty, "hop" => "enqueue_to_commit")
                .record(ms(q, path.committed));
        }
    }
    tracing::debug!(outcome = outcome.as_str(), "event settled");
}

/// A delivery was released for a later attempt.
pub fn event_retried(
    message_id: Option<&str>,
    event_type: Option<EventType>,
    attempt: u32,
    delay: Duration,
    reason: &str,
) {
    counter!(names::EVENTS, "type" => event_type.map(|t| t.as_str()).unwrap_or("unknown"), "outcome" => "retried")
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
    counter!(names::EVENTS, "type" => event_type.map(|t| t.as_str()).unwrap_or("unknown"), "outcome" => "dead_lettered")
        .increment(1);
    tracing::error!(message_id, reason = %why.reason, attempts = why.attempts, description = %why.description, "event dead-lettered");
}

/// A `realtime_mirror_dead_letter` row was written.
pub fn dead_letter_row_written(key: &str, reason: &str) {
    counter!(names::DEAD_LETTER_SQL_INSERTS, "reason" => reason.to_owned()).increment(1);
    tracing::info!(key, reason, "dead-letter row written to SQL");
}

/// A batch finished.
pub fn batch_finished(size: usize, took: Duration) {
    histogram!(names::BATCH_SECONDS).record(took.as_secs_f64());
    tracing::debug!(size, took_ms = took.as_millis() as u64, "batch done");
}

/// Dead-letter rows waiting for the database to come back.
pub fn dead_letter_rows_pending(n: usize) {
    gauge!(names::DEAD_LETTER_SQL_PENDING).set(n as f64);
    if n > 0 {
        tracing::warn!(pending = n, "dead-letter rows waiting for the database");
    }
}

/// Intake paused (the database is unavailable) or resumed; `/readyz` follows.
pub fn intake_paused(paused: bool) {
    mirror_runtime::health::Health::global().set_paused(paused);
    if paused {
        tracing::warn!("intake paused: not ready until the database answers");
    } else {
        tracing::info!("intake resumed");
    }
}

/// Settling a message with the bus failed (it will be redelivered; harmless).
pub fn settle_failed(message_id: Option<&str>, error: &dyn std::fmt::Display) {
    counter!(names::SETTLE_FAILURES).increment(1);
    tracing::warn!(message_id, error = %error, "could not settle message; it will be redelivered");
}
