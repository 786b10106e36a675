//! `sql-writer` binary: parse config, connect the adapters, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use sql_writer::config::{Cli, LogFormat, Settings};
use sql_writer::{with_bus, with_store, Deps};
use std::sync::Arc;

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
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(addr) = settings.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }
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
        with_bus!(&settings.bus, |bus| {
            sql_writer::adapters::start_background(&bus, &settings.writer.subscription, hook)
                .await?;
            let deps = Deps {
                bus: Arc::new(bus),
                store,
            };
            sql_writer::run(deps, settings.writer.clone(), shutdown_signal()).await?
        })
    });
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
