//! `sql-writer` binary: parse config, connect the adapters, serve health and
//! metrics, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use sql_writer::config::{Cli, LogFormat, Settings};
use sql_writer::{with_bus, with_store, Deps};
use std::sync::Arc;
use std::time::Duration;

/// jemalloc, not glibc's malloc: the writer allocates per message (decode,
/// batch parameters, settles) and glibc's free-list work (`malloc_consolidate`,
/// `unlink_chunk`) was a quarter of its CPU. Measured with `mirrorctl bench
/// --only process`, same session: writer CPU per event 26.6–29.0 µs against
/// 37.7–40.2 µs, peak RSS 46 MiB against 39–41 MiB. mimalloc cut CPU as much
/// but took the RSS to 70–95 MiB, past the 64 MiB goal.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // async-nats and azservicebus need a process-wide rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sql-writer: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sql-writer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    mirror_runtime::telemetry::init_logging(match format {
        LogFormat::Text => mirror_runtime::telemetry::LogFormat::Text,
        LogFormat::Json => mirror_runtime::telemetry::LogFormat::Json,
    });
}

/// How often the background task probes the bus and the store for `/readyz`
/// and samples the backlog gauges.
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How often the ledger is pruned when `--ledger-retention-days` is set.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

async fn run(settings: Settings) -> anyhow::Result<()> {
    // Prometheus text for /metrics; also OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let metrics = mirror_runtime::telemetry::install_metrics();
    let (system, topic) = settings.bus.messaging_destination();
    sql_writer::telemetry::set_destination(system, topic);
    // One signal stops the writer, the probe task and the server.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let health = mirror_runtime::health::Health::global();
    let server = match settings.metrics_addr {
        Some(addr) => Some(
            mirror_runtime::health::serve(addr, health.clone(), metrics, stopped(stop_rx.clone()))
                .await?,
        ),
        None => None,
    };
    tracing::info!(route = %sql_writer::adapters::describe(&settings.bus, &settings.store), "starting");
    let report = with_store!(&settings.store, |store| {
        if settings.migrate {
            let report = store.migrate().await.context("migrations failed")?;
            tracing::info!(applied = report, "migrations applied");
        }
        let store = Arc::new(store);
        // Messages the bus adapter dead-letters on its own get their SQL row too.
        let (hook, _recorder) = sql_writer::writer::record_adapter_dead_letters(
            store.clone(),
            settings.writer.subscription.clone(),
        );
        if let Some(retention) = settings.ledger_retention {
            tokio::spawn(prune_ledger_every(
                store.clone(),
                retention,
                stopped(stop_rx.clone()),
            ));
        }
        with_bus!(&settings.bus, |bus| {
            sql_writer::adapters::start_background(&bus, &settings.writer.subscription, hook)
                .await?;
            let deps = Deps {
                bus: Arc::new(bus),
                store,
            };
            tokio::spawn(mirror_runtime::health::watch(
                deps.bus.clone(),
                deps.store.clone(),
                health.clone(),
                mirror_runtime::health::WatchOptions {
                    subscription: Some(settings.writer.subscription.clone()),
                    checkpoint: None,
                    interval: PROBE_EVERY,
                    timeout: settings.writer.apply_timeout.min(PROBE_EVERY),
                },
                stopped(stop_rx.clone()),
            ));
            sql_writer::run(deps, settings.writer.clone(), stopped(stop_rx.clone())).await?
        })
    });
    if let Some(server) = server {
        server.task.abort();
    }
    mirror_runtime::telemetry::shutdown_metrics();
    tracing::info!(
        applied = report.applied,
        duplicate = report.duplicate,
        stale = report.stale,
        retried = report.retried,
        dead_lettered = report.dead_lettered,
        "stopped"
    );
    Ok(())
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Prune the applied-event ledger every [`PRUNE_EVERY`], keeping `retention`;
/// small batches with pauses, so the writer is never blocked.
async fn prune_ledger_every<S: mirror_store::ledger::LedgerPruning>(
    store: Arc<S>,
    retention: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
        let prune = mirror_store::ledger::prune(&*store, before, Default::default());
        tokio::select! {
            _ = &mut shutdown => return,
            r = prune => match r {
                Ok(rows) => tracing::info!(rows, %before, "ledger pruned"),
                Err(e) => tracing::warn!(error = %e, "ledger pruning failed; next attempt in an hour"),
            },
        }
    }
}

/// Resolves on SIGTERM (container platforms, on every deploy) or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
