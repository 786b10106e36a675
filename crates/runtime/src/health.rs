//! Health and metrics over HTTP: one server per process on the configured
//! address, serving
//!
//! - `GET /healthz` — 200 while the process runs (liveness);
//! - `GET /readyz` — 200 when the last probes of the bus and the store
//!   answered and the job is not paused for an outage, else 503 with the
//!   reasons (readiness);
//! - `GET /metrics` — Prometheus text of every metric the process emits.
//!
//! Readiness is read from a [`Health`] that a background [`watch`] task keeps
//! up to date (probing on a fixed interval, never per request), so a probe
//! storm cannot load the database, and a slow database cannot make `/readyz`
//! hang. The same task samples the gauges that need a query: the
//! subscription backlog, the dead-letter queue, replays and the publisher
//! checkpoint age.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use mirror_bus::EventBus;
use mirror_store::MirrorStore;

use crate::telemetry::names;

/// What `/readyz` reports; shared by the job, the probe task and the server.
#[derive(Debug, Default)]
pub struct Health {
    bus_down: AtomicBool,
    store_down: AtomicBool,
    paused: AtomicBool,
    /// Until the first probe ran, not ready.
    probed: AtomicBool,
}

static GLOBAL: std::sync::OnceLock<Arc<Health>> = std::sync::OnceLock::new();

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// The process's health (one server per process, like the metrics
    /// recorder): what the jobs' typed events update and `main` serves.
    pub fn global() -> Arc<Health> {
        GLOBAL.get_or_init(Health::new).clone()
    }

    /// The job stopped taking work because a dependency is down (the writer
    /// during a database outage).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        gauge!(names::WRITER_PAUSED).set(if paused { 1.0 } else { 0.0 });
    }

    fn set_probe(&self, component: &'static str, up: bool) {
        let flag = match component {
            "bus" => &self.bus_down,
            _ => &self.store_down,
        };
        flag.store(!up, Ordering::Release);
        gauge!(names::PROBE_UP, "component" => component).set(if up { 1.0 } else { 0.0 });
    }

    /// `Ok` when ready, else why not (one reason per line).
    pub fn readiness(&self) -> Result<(), String> {
        let mut why = Vec::new();
        if !self.probed.load(Ordering::Acquire) {
            why.push("not probed yet");
        }
        if self.bus_down.load(Ordering::Acquire) {
            why.push("bus does not answer");
        }
        if self.store_down.load(Ordering::Acquire) {
            why.push("store does not answer");
        }
        if self.paused.load(Ordering::Acquire) {
            why.push("paused: the database is unavailable");
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("\n"))
        }
    }
}

#[derive(Clone)]
struct ServerState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// A running health/metrics server.
#[derive(Debug)]
pub struct Server {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Failure to start the server (the address is taken or invalid).
#[derive(Debug, thiserror::Error)]
#[error("cannot serve health and metrics on {addr}: {source}")]
pub struct ServeError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Bind `addr` and serve `/healthz`, `/readyz` and `/metrics` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError { addr, source })?;
    let state = ServerState { health, metrics };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    Ok(Server { addr: bound, task })
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, String) {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics_text(
    State(state): State<ServerState>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    state.metrics.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// What the probe task samples besides readiness.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Subscription whose backlog and dead-letter queue to sample (the writer's).
    pub subscription: Option<String>,
    /// The publisher checkpoint `(module, shard)` whose age to report.
    pub checkpoint: Option<(String, String)>,
    /// Time between probes.
    pub interval: Duration,
    /// Longest wait for one probe's answer.
    pub timeout: Duration,
}

/// How many dead letters one sample scans at most (the gauge saturates there).
pub const DEAD_LETTER_SCAN_LIMIT: usize = 1000;

/// Probe the bus and the store every `interval` and record the result in
/// `health` (and the sampled gauges) until `shutdown`. The first probe runs at
/// once, so a job is ready within one probe of starting.
///
/// Bus probe: [`EventBus::ensure_topology`] (idempotent; a broker round trip
/// on both adapters). Store probe: reading a checkpoint row. With a
/// `subscription`, also its backlog and dead letters; with a
/// `checkpoint`, its age.
pub async fn watch<B: EventBus, S: MirrorStore>(
    bus: Arc<B>,
    store: Arc<S>,
    health: Arc<Health>,
    options: WatchOptions,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(options.interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // Bus: the idempotent topology check is the one call every adapter
        // answers with a broker round trip and without side effects on
        // messages (Service Bus opens no prefetching receiver for it).
        match tokio::time::timeout(options.timeout, bus.ensure_topology()).await {
            Ok(Ok(())) => health.set_probe("bus", true),
            Ok(Err(e)) => {
                health.set_probe("bus", false);
                tracing::warn!(error = %e, "readiness: the bus does not answer");
            }
            Err(_) => {
                health.set_probe("bus", false);
                tracing::warn!(
                    timeout_s = options.timeout.as_secs_f64(),
                    "readiness: no answer from the bus"
                );
            }
        }
        // Backlog, seen from outside any consumer (the port's contract: no
        // receiver that could prefetch or lock the writers' messages).
        if let Some(subscription) = &options.subscription {
            if let Ok(Ok(Some(b))) =
                tokio::time::timeout(options.timeout, bus.subscription_backlog(subscription)).await
            {
                gauge!(names::BACKLOG, "subscription" => subscription.clone(), "state" => "pending")
                    .set(b.pending as f64);
                gauge!(names::BACKLOG, "subscription" => subscription.clone(), "state" => "in_flight")
                    .set(b.in_flight as f64);
            }
        }
        // Store: read the checkpoint (any answer, even "no row", means it is up).
        let (module, shard) = options
            .checkpoint
            .clone()
            .unwrap_or_else(|| ("sql-writer".to_owned(), "health-probe".to_owned()));
        match tokio::time::timeout(options.timeout, store.load_checkpoint(&module, &shard)).await {
            Ok(Ok(checkpoint)) => {
                health.set_probe("store", true);
                if options.checkpoint.is_some() {
                    if let Some(at) = checkpoint.and_then(|c| c.last_processed_at) {
                        let age = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
                        gauge!(names::CHECKPOINT_AGE, "shard" => shard.clone()).set(age);
                    }
                }
            }
            Ok(Err(e)) => {
                health.set_probe("store", false);
                tracing::warn!(error = %e, "readiness: the store does not answer");
            }
            Err(_) => {
                health.set_probe("store", false);
                tracing::warn!(
                    timeout_s = options.timeout.as_secs_f64(),
                    "readiness: no answer from the store"
                );
            }
        }
        health.probed.store(true, Ordering::Release);
        // Dead letters and replays: heavier reads, every fourth round.
        if let (Some(subscription), 0) = (&options.subscription, round % 4) {
            sample_dead_letters(&*bus, &*store, subscription, options.timeout).await;
        }
        round += 1;
    }
}

async fn sample_dead_letters<B: EventBus, S: MirrorStore>(
    bus: &B,
    store: &S,
    subscription: &str,
    timeout: Duration,
) {
    if let Ok(Ok(queue)) = tokio::time::timeout(
        timeout,
        bus.list_dead_letters(subscription, DEAD_LETTER_SCAN_LIMIT),
    )
    .await
    {
        gauge!(names::DEAD_LETTER_QUEUE, "subscription" => subscription.to_owned())
            .set(queue.len() as f64);
    }
    if let Ok(Ok(rows)) =
        tokio::time::timeout(timeout, store.list_dead_letters(DEAD_LETTER_SCAN_LIMIT)).await
    {
        let replays: u64 = rows.iter().map(|r| u64::from(r.replay_count)).sum();
        gauge!(names::REPLAYS).set(replays as f64);
    }
}
