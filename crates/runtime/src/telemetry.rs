//! Process-wide telemetry set-up shared by the long-running jobs: logging
//! (text without colour codes unless stderr is a terminal, or JSON), the
//! metrics recorder (Prometheus text for `/metrics`, with the histogram buckets
//! of `docs/metrics.md`), and the optional OTLP export.
//!
//! The metrics themselves are emitted where they happen, by the typed events of
//! each crate's `telemetry` module (`mirror_bus::telemetry`,
//! `mirror_store::telemetry`, `sql_writer::telemetry`): one function emits the
//! log line and the metric together. This module only decides how they leave
//! the process. Names and buckets are listed once, in [`names`] and
//! [`BUCKETS`], and documented in `docs/metrics.md`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line with the current span's fields (event id and type).
    Json,
}

/// Install the global `tracing` subscriber (filter from `RUST_LOG`, default
/// `info`) writing to stderr. Calling it again is a no-op.
///
/// Logs carry ids, types, reasons and counts, never payload bodies or
/// secrets: the typed events choose their fields, and secrets are
/// `SecretString`s whose `Debug` is redacted.
pub fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Metric names (the `metrics` keys; the Prometheus exposition replaces `.`
/// with `_`). OpenTelemetry semantic-convention names where one exists.
pub mod names {
    /// Counter `{message}`: messages delivered to the application by a receive.
    pub const MESSAGING_CONSUMED: &str = "messaging.client.consumed.messages";
    /// Counter `{message}`: messages the producer attempted to send.
    pub const MESSAGING_SENT: &str = "messaging.client.sent.messages";
    /// Histogram `s`: processing one delivered message (decode, apply, settle).
    pub const MESSAGING_PROCESS_DURATION: &str = "messaging.process.duration";
    /// Histogram `s`: one database operation (one stored procedure call).
    pub const DB_OPERATION_DURATION: &str = "db.client.operation.duration";
    /// Counter: events settled, by `type` and `outcome`.
    pub const EVENTS: &str = "mirror_events_total";
    /// Histogram `ms`: source version (Firestore update time) → SQL commit.
    pub const SOURCE_TO_COMMIT_MS: &str = "sql_mirror_latency_ms";
    /// Histogram `ms`: one hop, by `type` and `hop`.
    pub const HOP_LATENCY_MS: &str = "mirror_hop_latency_ms";
    /// Histogram `s`: one batch's apply + settle.
    pub const BATCH_SECONDS: &str = "mirror_batch_seconds";
    /// Gauge: deliveries held by the writer (received, not yet settled).
    pub const IN_FLIGHT: &str = "mirror_events_in_flight";
    /// Gauge: messages the subscription holds, by `state` (pending, in_flight).
    pub const BACKLOG: &str = "mirror_subscription_backlog";
    /// Gauge: messages in the subscription's dead-letter queue (capped at the scan limit).
    pub const DEAD_LETTER_QUEUE: &str = "mirror_dead_letter_queue_messages";
    /// Counter: `realtime_mirror_dead_letter` rows written.
    pub const DEAD_LETTER_SQL_INSERTS: &str = "mirror_dead_letter_sql_inserts_total";
    /// Gauge: dead-letter rows waiting for the database.
    pub const DEAD_LETTER_SQL_PENDING: &str = "mirror_dead_letter_sql_pending";
    /// Gauge: replays recorded on the SQL dead-letter rows (sum of `replay_count`).
    pub const REPLAYS: &str = "mirror_dead_letter_replays";
    /// Gauge `s`: now − the publisher checkpoint's position, by `shard`.
    pub const CHECKPOINT_AGE: &str = "mirror_publisher_checkpoint_age_seconds";
    /// Gauge 0/1: the writer paused intake because the database is unavailable.
    pub const WRITER_PAUSED: &str = "mirror_writer_paused";
    /// Gauge 0/1: the last readiness probe of `component` (bus, store) succeeded.
    pub const PROBE_UP: &str = "mirror_probe_up";
    /// Counter: applied-event ledger rows deleted by pruning.
    pub const LEDGER_PRUNED: &str = "mirror_ledger_pruned_total";
    /// Counter: settlements that failed (the message is redelivered).
    pub const SETTLE_FAILURES: &str = "mirror_settle_failures_total";
}

/// Histogram buckets per metric (upper bounds), as `docs/metrics.md` lists them.
pub const BUCKETS: &[(&str, &[f64])] = &[
    // OpenTelemetry's advice for messaging durations.
    (
        names::MESSAGING_PROCESS_DURATION,
        &[
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        ],
    ),
    // OpenTelemetry's advice for db.client.operation.duration.
    (
        names::DB_OPERATION_DURATION,
        &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0],
    ),
    // Dense around the 200 ms goal and the 250 ms alert.
    (names::SOURCE_TO_COMMIT_MS, LATENCY_MS),
    (names::HOP_LATENCY_MS, LATENCY_MS),
    (
        names::BATCH_SECONDS,
        &[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    ),
];

const LATENCY_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0,
    1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

/// The process's metrics recorder: Prometheus text through [`PrometheusHandle::render`].
static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the global metrics recorder once and return its handle (later
/// calls, e.g. several jobs started in one test process, share it).
pub fn install_metrics() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in BUCKETS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                    .expect("bucket lists are not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let installed = match otlp_endpoint() {
                None => metrics::set_global_recorder(recorder).is_ok(),
                Some(endpoint) => install_with_otlp(recorder, &endpoint).is_ok(),
            };
            if !installed {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only what reaches this one");
            }
            describe();
            handle
        })
        .clone()
}

/// Units and help texts, so `/metrics` carries `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::MESSAGING_CONSUMED,
        "Messages delivered to the application by a receive"
    );
    describe_counter!(
        names::MESSAGING_SENT,
        "Messages the producer attempted to send"
    );
    describe_histogram!(
        names::MESSAGING_PROCESS_DURATION,
        Unit::Seconds,
        "Processing one delivered message: decode, apply, settle"
    );
    describe_histogram!(
        names::DB_OPERATION_DURATION,
        Unit::Seconds,
        "One stored procedure call inside the batch transaction"
    );
    describe_counter!(names::EVENTS, "Events settled, by type and outcome");
    describe_histogram!(
        names::SOURCE_TO_COMMIT_MS,
        Unit::Milliseconds,
        "Source version (Firestore update time) to SQL commit, applied events"
    );
    describe_histogram!(
        names::HOP_LATENCY_MS,
        Unit::Milliseconds,
        "One hop: source_to_publish, publish_to_enqueue, enqueue_to_commit"
    );
    describe_histogram!(
        names::BATCH_SECONDS,
        Unit::Seconds,
        "One batch: apply and settle"
    );
    describe_gauge!(
        names::IN_FLIGHT,
        "Deliveries held by the writer, not yet settled"
    );
    describe_gauge!(names::BACKLOG, "Messages the subscription holds, by state");
    describe_gauge!(
        names::DEAD_LETTER_QUEUE,
        "Messages in the subscription's dead-letter queue"
    );
    describe_counter!(
        names::DEAD_LETTER_SQL_INSERTS,
        "realtime_mirror_dead_letter rows written"
    );
    describe_gauge!(
        names::DEAD_LETTER_SQL_PENDING,
        "Dead-letter rows waiting for the database"
    );
    describe_gauge!(
        names::REPLAYS,
        "Replays recorded on the SQL dead-letter rows"
    );
    describe_gauge!(
        names::CHECKPOINT_AGE,
        Unit::Seconds,
        "Now minus the position of the publisher's checkpoint"
    );
    describe_gauge!(
        names::WRITER_PAUSED,
        "1 while the writer takes no messages because the database is unavailable"
    );
    describe_gauge!(
        names::PROBE_UP,
        "1 if the last readiness probe of the component succeeded"
    );
    describe_counter!(
        names::LEDGER_PRUNED,
        "Applied-event ledger rows deleted by pruning"
    );
    describe_counter!(
        names::SETTLE_FAILURES,
        "Settlements that failed; the message is redelivered"
    );
}

/// Keeps the OTLP meter provider (and its export thread) alive.
#[cfg(feature = "otlp")]
static OTLP: OnceLock<crate::otlp::OtlpExport> = OnceLock::new();

/// Prometheus and OTLP side by side: every metric goes to both.
#[cfg(feature = "otlp")]
fn install_with_otlp(
    prometheus: metrics_exporter_prometheus::PrometheusRecorder,
    endpoint: &str,
) -> Result<(), metrics::SetRecorderError<metrics_util::layers::Fanout>> {
    let service = std::env::var("OTEL_SERVICE_NAME").ok().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "realtime-mirror".to_owned())
    });
    let mut fanout = metrics_util::layers::FanoutBuilder::default().add_recorder(prometheus);
    match crate::otlp::recorder(&service) {
        Ok((otlp, export)) => {
            let _ = OTLP.set(export);
            fanout = fanout.add_recorder(otlp);
            tracing::info!(endpoint, service, "exporting metrics over OTLP/HTTP too");
        }
        Err(e) => {
            tracing::error!(error = %e, "OTLP export disabled; /metrics still serves Prometheus text")
        }
    }
    metrics::set_global_recorder(fanout.build())
}

/// Without the `otlp` feature: Prometheus only, and a warning that says so.
#[cfg(not(feature = "otlp"))]
fn install_with_otlp(
    prometheus: metrics_exporter_prometheus::PrometheusRecorder,
    _endpoint: &str,
) -> Result<(), metrics::SetRecorderError<metrics_exporter_prometheus::PrometheusRecorder>> {
    tracing::warn!("OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no `otlp` feature: metrics are served as Prometheus text on /metrics only");
    metrics::set_global_recorder(prometheus)
}

/// Flush the OTLP export (at exit). A no-op without it.
pub fn shutdown_metrics() {
    #[cfg(feature = "otlp")]
    if let Some(export) = OTLP.get() {
        export.shutdown();
    }
}

/// The OTLP endpoint, if configured: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`,
/// else `OTEL_EXPORTER_OTLP_ENDPOINT` (the OpenTelemetry SDK variables). Unset:
/// no OTLP export.
pub fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
}
