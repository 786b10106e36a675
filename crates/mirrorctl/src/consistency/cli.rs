//! The `mirrorctl consistency` command line: options, source selection,
//! output files, repair and the exit code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sql_writer::config::{BusArgs, StoreArgs};

use super::metrics::{self, Targets};
use super::repair::{self, RepairSummary};
use super::source::{ExportSource, PagerSource, SourceReader};
use super::{check, Module, Options};

/// Where the source is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceArg {
    /// A local file (fixtures change log or document export).
    Export(PathBuf),
    /// Firestore through the publisher's pager (`FIRESTORE_PROJECT_ID`, credentials or `FIRESTORE_EMULATOR_HOST`).
    Firestore,
}

fn parse_source(s: &str) -> Result<SourceArg, String> {
    match s.split_once(':') {
        Some(("export", path)) if !path.is_empty() => Ok(SourceArg::Export(PathBuf::from(path))),
        None if s == "firestore" => Ok(SourceArg::Firestore),
        _ => Err(format!("`{s}` is not `export:FILE` or `firestore`")),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{s}` is not a number of seconds"))
}

#[derive(Debug, Clone, Args)]
pub struct ConsistencyArgs {
    /// `dm` (conversations, participants, messages, blocks), `follow` (follow edges) or `all`
    #[arg(long, value_enum, default_value = "all")]
    pub module: Module,
    /// Only this conversation and its messages
    #[arg(long)]
    pub conversation: Option<String>,
    /// Only documents and rows whose update time is at or after this time (RFC 3339)
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Fail (exit 1) when the drift is above this percentage
    #[arg(long, default_value_t = super::DEFAULT_THRESHOLD_PCT)]
    pub threshold: f64,
    /// Write the report as JSON to this file (`-` for standard output)
    #[arg(long = "json-file", alias = "json-out", value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// Write a self-contained HTML report to this file
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Republish the source's current version of every differing document through the bus (sync_source `repair`)
    #[arg(long)]
    pub repair: bool,
    /// `export:FILE` (fixtures change log or document export, see docs) or `firestore`
    #[arg(long, value_parser = parse_source, default_value = "export:fixtures/realtime_mirror_seed.json")]
    pub source: SourceArg,
    /// Firestore project for `--source firestore`
    #[arg(long, env = "FIRESTORE_PROJECT_ID")]
    pub firestore_project: Option<String>,
    /// Firestore database for `--source firestore`
    #[arg(long, env = "FIRESTORE_DATABASE", default_value = "(default)")]
    pub firestore_database: String,
    /// Differences newer than now minus this many seconds are in flight: checked again after the grace period
    #[arg(long, value_parser = parse_secs, default_value = "60", env = "CONSISTENCY_LAG_SECS")]
    pub lag: Duration,
    /// Seconds to wait before checking in-flight differences again
    #[arg(long, value_parser = parse_secs, default_value = "30", env = "CONSISTENCY_GRACE_SECS")]
    pub grace: Duration,
    /// Largest bucket read row by row instead of split further
    #[arg(long, default_value_t = super::DEFAULT_LEAF_ROWS)]
    pub leaf_rows: u64,
    /// Write the run's metrics (drift %, findings, last run) as a Prometheus
    /// textfile here; they also go over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
    #[arg(long, env = "CONSISTENCY_METRICS_FILE", value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Push the run's metrics to this Prometheus Pushgateway (plain HTTP, e.g. http://pushgateway:9091)
    #[arg(long, env = "CONSISTENCY_PUSHGATEWAY", value_name = "URL")]
    pub pushgateway: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub bus: BusArgs,
}

impl ConsistencyArgs {
    fn options(&self) -> Result<Options> {
        if self.threshold.is_nan() || self.threshold < 0.0 {
            bail!(
                "--threshold must be a percentage ≥ 0, not {}",
                self.threshold
            );
        }
        if self.conversation.is_some() && self.module == Module::Follow {
            bail!("--conversation needs --module dm (or all)");
        }
        Ok(Options {
            module: self.module,
            conversation: self.conversation.clone(),
            since: self.since,
            threshold_pct: self.threshold,
            lag: self.lag,
            grace: self.grace,
            leaf_rows: self.leaf_rows.max(1),
            examples: 20,
        })
    }
}

fn progress() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len} tables] {msg} ({elapsed})")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Run the command; returns the exit code (1 above the threshold).
pub async fn run(args: ConsistencyArgs, json_stdout: bool) -> Result<u8> {
    let opts = args.options()?;
    match &args.source {
        SourceArg::Export(path) => {
            let reader = ExportSource::load(path)?;
            with_reader(&args, &opts, &reader, json_stdout).await
        }
        SourceArg::Firestore => {
            let Some(project) = args.firestore_project.clone() else {
                bail!("--source firestore needs --firestore-project or FIRESTORE_PROJECT_ID");
            };
            let db = publisher::firestore::connect(&project, &args.firestore_database)
                .await
                .with_context(|| format!("cannot connect to Firestore project {project}"))?;
            let reader = PagerSource::new(
                publisher::firestore::FirestorePager::new(db),
                publisher::mapping::SourceInfo::new(project, args.firestore_database.clone()),
            );
            with_reader(&args, &opts, &reader, json_stdout).await
        }
    }
}

async fn with_reader<R: SourceReader>(
    args: &ConsistencyArgs,
    opts: &Options,
    reader: &R,
    json_stdout: bool,
) -> Result<u8> {
    let settings = args.store.clone().settings()?;
    let (report, sources) =
        sql_writer::with_store!(&settings, |store| check(&store, reader, opts, &progress())
            .await?);
    if json_stdout {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if let Some(path) = &args.json_file {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report.to_html())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    // Before the repair: the metrics say what this run found (a second run
    // after the writer drains reports the repaired state).
    let targets = Targets::from_env(args.metrics_file.clone(), args.pushgateway.clone());
    let export_errors = metrics::export(&report, &targets).await;
    for e in &export_errors {
        eprintln!("mirrorctl consistency: metrics not delivered: {e}");
    }
    if args.repair && !report.findings.is_empty() {
        let (events, not_repairable) = repair::plan(reader.project(), &report.findings, &sources);
        let bus = args.bus.clone().settings()?;
        let (published, broker_duplicates) =
            sql_writer::with_bus!(&bus, |bus| repair::publish(&bus, &events).await?);
        let summary = RepairSummary {
            published,
            broker_duplicates,
            not_repairable,
        };
        for (what, why) in &summary.not_repairable {
            eprintln!("not repairable: {what}: {why}");
        }
        println!(
            "repair: {} event(s) republished with sync_source `repair` ({} dropped by the broker as duplicates), {} not repairable; run the check again once the writer has drained",
            summary.published,
            summary.broker_duplicates,
            summary.not_repairable.len()
        );
    }
    Ok(if report.alert {
        1
    } else if !export_errors.is_empty() {
        // The check passed but the alerting pipeline did not hear of it.
        EXIT_METRICS_NOT_DELIVERED
    } else {
        0
    })
}

/// Exit code of a run within the threshold whose metrics did not reach a configured target.
pub const EXIT_METRICS_NOT_DELIVERED: u8 = 3;
