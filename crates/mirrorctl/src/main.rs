//! `mirrorctl`: operations for realtime-mirror — migrate, seed, publish,
//! counts, check, consistency (against the source, with repair), dead-letter
//! list/show/replay, backfill, bench, bench-consistency.
//!
//! Human output is a table; `--json` gives machine output. Long jobs show a
//! progress bar on a terminal.

mod bench;
mod bench_firestore;
mod drift;
use mirror_store::prelude::*;
use publisher::seed;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use mirror_bus::{EventBus, OutboundMessage, PublishOutcome};
use mirror_schema::{decode_structured, ClaimedAttributes, MirrorEvent};
use mirror_store::model::Model;
use sql_writer::config::{BusArgs, StoreArgs};
use sql_writer::writer::dead_letter_key;
use sql_writer::{with_bus, with_store};

#[derive(Debug, Parser)]
#[command(name = "mirrorctl", version, about = "realtime-mirror operations")]
struct Cli {
    /// Machine-readable JSON output instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Log format on stderr: text (colours only on a terminal) or json (one object per line)
    #[arg(
        long,
        global = true,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: mirror_runtime::telemetry::LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the database if missing (PostgreSQL) and apply pending migrations
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Publish the fixture dataset as contract events
    Seed {
        /// Seed file (see fixtures/README.md)
        #[arg(long, default_value = "fixtures/realtime_mirror_seed.json")]
        file: PathBuf,
        /// Validate and print what would be sent, publish nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Publish contract events from a file of structured-mode JSON, one per line
    Publish {
        file: PathBuf,
        /// Validate only
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Row counts of every mirror table
    Counts {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete applied-event ledger rows older than a window, in small batches
    /// that never block the writer (why that is safe: docs/runbook.md)
    PruneLedger {
        /// Keep rows recorded within this window: `30d`, `12h`, `90m`, `3600s`
        #[arg(long, value_parser = parse_window)]
        older_than: std::time::Duration,
        /// Rows per transaction
        #[arg(long, default_value_t = mirror_store::ledger::DEFAULT_BATCH)]
        batch: usize,
        /// Milliseconds to pause between batches, leaving the database to the writer
        #[arg(long, default_value_t = 50)]
        pause_ms: u64,
        /// Stop after this many rows (default: until nothing is older than the window)
        #[arg(long)]
        max_rows: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Consistency check: compare SQL with the state the source implies
    Check {
        /// Expected state from a seed file (the fixtures); Firestore otherwise needs `mirrorctl backfill --dry-run`-style access
        #[arg(long, default_value = "fixtures/realtime_mirror_seed.json")]
        expected_from: PathBuf,
        /// Alert above this drift percentage
        #[arg(long, default_value_t = 0.5)]
        threshold_pct: f64,
        /// Alert when more SQL rows than this are missing in the source
        #[arg(long, default_value_t = 100)]
        missing_in_source_limit: usize,
        /// Also write an HTML report here
        #[arg(long)]
        html: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Dead-letter queue: list, show, replay
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
    /// Backfill history from Firestore: runs `publisher backfill` (same flags and
    /// environment: FIRESTORE_PROJECT_ID, NATS_URL, DATABASE_URL, …)
    Backfill {
        /// `dm` (conversations, messages, blocks) or `follow` (follow edges)
        #[arg(long)]
        module: String,
        /// Conversations with `updatedAt` at or after this time (RFC 3339);
        /// messages, blocks and follows have no such field and are read whole
        #[arg(long)]
        since: Option<String>,
        /// Stop cleanly, with a checkpoint, after this many billed reads
        #[arg(long)]
        budget_reads: Option<u64>,
        /// Count documents and the reads a real run would cost; publish nothing
        #[arg(long)]
        dry_run: bool,
        /// Further `publisher` options (e.g. --bus, --store, --page-size, --fresh,
        /// --read-time T, --recover, --overlap-secs N)
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Measure throughput and latency of the writer on local servers
    Bench(bench::BenchArgs),
    /// Compare the source (Firestore or an export) with SQL by range checksums; report drift, optionally repair
    Consistency(Box<mirrorctl::consistency::cli::ConsistencyArgs>),
    /// Rows compared per second by `consistency` at 1 M mirrored rows, without and with differences
    BenchConsistency(mirrorctl::consistency::bench::BenchConsistencyArgs),
}

#[derive(Debug, Subcommand)]
enum DlqCmd {
    /// List dead-lettered messages (bus queue joined with the SQL rows)
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value = mirror_bus::SQL_WRITER_SUBSCRIPTION)]
        subscription: String,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one dead-lettered message by handle or event id
    Show {
        id: String,
        #[arg(long, default_value = mirror_bus::SQL_WRITER_SUBSCRIPTION)]
        subscription: String,
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Publish dead-lettered messages again (keeping their event ids) and remove them from the queue
    Replay {
        /// Only messages dead-lettered for this reason (e.g. retries_exhausted)
        #[arg(long)]
        reason: Option<String>,
        /// Only events of this type
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only messages dead-lettered at or after this time (RFC 3339)
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Show what would be replayed
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = mirror_bus::SQL_WRITER_SUBSCRIPTION)]
        subscription: String,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("mirrorctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<u8> {
    let json = cli.json;
    match cli.cmd {
        Cmd::Migrate { store } => {
            let settings = store.settings()?;
            let created = match &settings {
                sql_writer::config::StoreSettings::Postgres { url, .. } => {
                    mirror_store::postgres::create_database_if_missing(url).await?
                }
                sql_writer::config::StoreSettings::Mssql { ado, .. } => {
                    use secrecy::ExposeSecret;
                    let config = mirror_store::mssql::MssqlConfig::from_ado(ado.expose_secret())?;
                    mirror_store::mssql::create_database_if_missing(&config).await?
                }
            };
            if created {
                println!("created database");
            }
            let applied = with_store!(&settings, |store| store.migrate().await?);
            println!("migrations applied: {applied} ({})", settings.describe());
            Ok(0)
        }
        Cmd::Seed { file, dry_run, bus } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let events = seed::load(&text)?;
            if dry_run {
                print_dry_run(&events, json);
                return Ok(0);
            }
            let settings = bus.settings()?;
            let (published, duplicates) =
                with_bus!(&settings, |bus| publish_all(&bus, &events).await?);
            report_published(json, events.len(), published, duplicates, 0);
            Ok(0)
        }
        Cmd::Publish { file, dry_run, bus } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let mut events = Vec::new();
            let mut rejected = 0;
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match decode_structured(line.as_bytes()) {
                    Ok(e) => events.push(e),
                    Err(e) => {
                        rejected += 1;
                        eprintln!("{}:{}: rejected: {e}", file.display(), n + 1);
                    }
                }
            }
            if dry_run {
                print_dry_run(&events, json);
            } else {
                let settings = bus.settings()?;
                let (published, duplicates) =
                    with_bus!(&settings, |bus| publish_all(&bus, &events).await?);
                report_published(json, events.len(), published, duplicates, rejected);
            }
            Ok(if rejected > 0 { 2 } else { 0 })
        }
        Cmd::Counts { store } => {
            let settings = store.settings()?;
            let counts = with_store!(&settings, |store| store.table_counts().await?);
            if json {
                let map: serde_json::Map<String, serde_json::Value> = counts
                    .iter()
                    .map(|(t, n)| (t.clone(), (*n).into()))
                    .collect();
                println!("{}", serde_json::Value::Object(map));
            } else {
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                t.set_header(["table", "rows"]);
                for (name, n) in counts {
                    t.add_row([name, n.to_string()]);
                }
                println!("{t}");
            }
            Ok(0)
        }
        Cmd::PruneLedger {
            older_than,
            batch,
            pause_ms,
            max_rows,
            store,
        } => {
            if batch == 0 {
                anyhow::bail!("--batch must be at least 1");
            }
            let settings = store.settings()?;
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(older_than).context("--older-than is too large")?;
            let options = mirror_store::ledger::PruneOptions {
                batch,
                pause: std::time::Duration::from_millis(pause_ms),
                max_rows,
            };
            let started = std::time::Instant::now();
            let deleted = with_store!(&settings, |store| {
                mirror_store::ledger::prune(&store, before, options).await?
            });
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "deleted": deleted, "before": before.to_rfc3339(), "seconds": started.elapsed().as_secs_f64() })
                );
            } else {
                println!(
                    "deleted {deleted} ledger rows recorded before {} in {:.1} s",
                    before.to_rfc3339(),
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(0)
        }
        Cmd::Check {
            expected_from,
            threshold_pct,
            missing_in_source_limit,
            html,
            store,
        } => {
            let text = std::fs::read_to_string(&expected_from)
                .with_context(|| format!("cannot read {}", expected_from.display()))?;
            let events = seed::load(&text)?;
            let mut model = Model::new();
            for e in &events {
                model.apply(e);
            }
            let settings = store.settings()?;
            let actual = with_store!(&settings, |store| store.snapshot().await?);
            let report = drift::compare(
                &expected_from.display().to_string(),
                &model.state(),
                &actual,
                threshold_pct,
                missing_in_source_limit,
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_table());
            }
            if let Some(path) = html {
                std::fs::write(&path, report.to_html())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(if report.alert { 1 } else { 0 })
        }
        Cmd::Dlq { cmd } => dlq(cmd, json).await,
        Cmd::Backfill {
            module,
            since,
            budget_reads,
            dry_run,
            rest,
        } => {
            // One implementation: the publisher owns Firestore access and the
            // backfill; this is the operator's spelling of it.
            let mut args = vec!["backfill".to_owned(), "--module".to_owned(), module];
            if let Some(s) = since {
                args.extend(["--since".to_owned(), s]);
            }
            if let Some(b) = budget_reads {
                args.extend(["--budget-reads".to_owned(), b.to_string()]);
            }
            if dry_run {
                args.push("--dry-run".to_owned());
            }
            args.extend(rest);
            let publisher = sibling_binary("publisher");
            let status = std::process::Command::new(&publisher)
                .args(&args)
                .status()
                .with_context(|| format!("cannot run {}", publisher.display()))?;
            Ok(status.code().map(|c| c as u8).unwrap_or(1))
        }
        Cmd::Bench(args) => {
            let only = args.only.is_some();
            let code = bench::run(args, json).await?;
            if !only {
                bench_firestore::print(json);
            }
            Ok(code)
        }
        Cmd::Consistency(args) => mirrorctl::consistency::cli::run(*args, json).await,
        Cmd::BenchConsistency(args) => {
            let figures = mirrorctl::consistency::bench::run(&args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                println!("{}", mirrorctl::consistency::bench::to_table(&figures));
            }
            Ok(0)
        }
    }
}

/// Logs on stderr, `warn` and above unless `RUST_LOG` says otherwise (an
/// operator's tool: the output is the table or JSON on stdout).
fn init_logging(format: mirror_runtime::telemetry::LogFormat) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        mirror_runtime::telemetry::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
        mirror_runtime::telemetry::LogFormat::Json => builder.json().init(),
    }
}

/// A binary installed beside this one (`target/debug/`, `/usr/local/bin/`), else from `PATH`.
fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Publish every event, 64 in flight; returns (published, broker duplicates).
async fn publish_all<B: EventBus>(bus: &B, events: &[MirrorEvent]) -> Result<(usize, usize)> {
    let bar = progress(events.len(), "publishing");
    let outcomes: Vec<PublishOutcome> =
        futures::stream::iter(events.iter().map(OutboundMessage::from_event))
            .map(|m| {
                let bar = bar.clone();
                async move {
                    let r = bus.publish(&m).await;
                    bar.inc(1);
                    r
                }
            })
            .buffer_unordered(64)
            .try_collect()
            .await?;
    bar.finish_and_clear();
    let dup = outcomes
        .iter()
        .filter(|o| **o == PublishOutcome::Duplicate)
        .count();
    Ok((outcomes.len() - dup, dup))
}

fn report_published(
    json: bool,
    total: usize,
    published: usize,
    duplicates: usize,
    rejected: usize,
) {
    if json {
        println!(
            "{}",
            serde_json::json!({"events": total, "published": published, "duplicates": duplicates, "rejected": rejected})
        );
    } else {
        println!("events: {total}, published: {published}, suppressed as duplicates by the broker: {duplicates}, rejected: {rejected}");
    }
}

fn print_dry_run(events: &[MirrorEvent], json: bool) {
    let mut by_type = std::collections::BTreeMap::new();
    for e in events {
        *by_type.entry(e.event_type().as_str()).or_insert(0usize) += 1;
        if json {
            println!("{}", String::from_utf8_lossy(&e.to_structured_json()));
        } else {
            println!(
                "{} {} {} {}",
                e.id(),
                e.event_type(),
                e.subject(),
                mirror_schema::format_time(&e.time())
            );
        }
    }
    if !json {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(["type", "events"]);
        for (ty, n) in &by_type {
            t.add_row([ty.to_string(), n.to_string()]);
        }
        println!(
            "{t}\n{} valid events would be published (dry run)",
            events.len()
        );
    }
}

async fn dlq(cmd: DlqCmd, json: bool) -> Result<u8> {
    match cmd {
        DlqCmd::List {
            limit,
            subscription,
            bus,
            store,
        } => {
            let (bus, store) = (bus.settings()?, store.settings()?);
            let rows = with_bus!(&bus, |bus| bus
                .list_dead_letters(&subscription, limit)
                .await?);
            let sql = with_store!(&store, |store| store.list_dead_letters(10_000).await?);
            let replays: std::collections::HashMap<String, u32> = sql
                .iter()
                .map(|r| (r.record.key.clone(), r.replay_count))
                .collect();
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|d| {
                        let ClaimedAttributes {
                            event_type: ty,
                            subject,
                            ..
                        } = ClaimedAttributes::of(&d.message);
                        let key = dead_letter_key(&d.message);
                        serde_json::json!({
                            "handle": d.handle, "key": key, "type": ty, "subject": subject,
                            "reason": d.reason, "description": d.description, "attempts": d.attempts,
                            "dead_lettered_at": d.dead_lettered_at, "replays": replays.get(&key).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                t.set_header([
                    "handle",
                    "event id / key",
                    "type",
                    "subject",
                    "reason",
                    "attempts",
                    "dead-lettered at",
                    "replays",
                ]);
                for d in &rows {
                    let ClaimedAttributes {
                        event_type: ty,
                        subject,
                        ..
                    } = ClaimedAttributes::of(&d.message);
                    let key = dead_letter_key(&d.message);
                    t.add_row([
                        d.handle.clone(),
                        key.clone(),
                        ty.unwrap_or_default(),
                        subject.unwrap_or_default(),
                        d.reason.clone(),
                        d.attempts.to_string(),
                        d.dead_lettered_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default(),
                        replays.get(&key).copied().unwrap_or(0).to_string(),
                    ]);
                }
                println!(
                    "{t}\n{} dead-lettered message(s) in `{subscription}`",
                    rows.len()
                );
            }
            Ok(0)
        }
        DlqCmd::Show {
            id,
            subscription,
            bus,
        } => {
            let bus = bus.settings()?;
            let rows = with_bus!(&bus, |bus| bus
                .list_dead_letters(&subscription, 100_000)
                .await?);
            let Some(d) = rows
                .into_iter()
                .find(|d| d.handle == id || dead_letter_key(&d.message) == id)
            else {
                bail!("no dead-lettered message `{id}` in `{subscription}`");
            };
            let body: serde_json::Value = serde_json::from_slice(&d.message.body)
                .unwrap_or_else(|_| String::from_utf8_lossy(&d.message.body).into());
            let out = serde_json::json!({
                "handle": d.handle, "original_message_id": d.original_message_id, "reason": d.reason,
                "description": d.description, "attempts": d.attempts, "dead_lettered_at": d.dead_lettered_at,
                "content_type": d.message.content_type, "body": body,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        DlqCmd::Replay {
            reason,
            event_type,
            since,
            limit,
            dry_run,
            subscription,
            bus,
            store,
        } => {
            let (bus, store) = (bus.settings()?, store.settings()?);
            let filter = sql_writer::replay::ReplayFilter {
                reason,
                event_type,
                since,
                limit,
            };
            let replayed = with_store!(&store, |store| {
                with_bus!(&bus, |bus| sql_writer::replay::replay(
                    &bus,
                    &store,
                    &subscription,
                    &filter,
                    dry_run
                )
                .await?)
            });
            for r in &replayed {
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!(
                        "{} {} {} {} (reason {}, replay #{})",
                        if dry_run { "would replay" } else { "replayed" },
                        r.key,
                        r.event_type.as_deref().unwrap_or("?"),
                        r.subject.as_deref().unwrap_or("?"),
                        r.reason,
                        r.replay
                    );
                }
            }
            if !json {
                println!(
                    "{} message(s) {}",
                    replayed.len(),
                    if dry_run {
                        "would be replayed (dry run)"
                    } else {
                        "replayed"
                    }
                );
            }
            Ok(0)
        }
    }
}

/// `30d`, `12h`, `90m`, `3600s` → a duration of at least one hour (a shorter
/// window is almost certainly a typo, and buys nothing).
fn parse_window(text: &str) -> std::result::Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: use d, h, m or s (e.g. 30d)"))?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => return Err(format!("`{unit}` is not a unit: use d, h, m or s")),
    }
    .ok_or_else(|| format!("`{text}` is too large"))?;
    if secs < 3_600 {
        return Err(format!("`{text}` is under one hour"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod prune_window_tests {
    #[test]
    fn windows_parse_with_units_and_reject_typos() {
        use std::time::Duration;
        assert_eq!(
            super::parse_window("30d"),
            Ok(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            super::parse_window("12h"),
            Ok(Duration::from_secs(12 * 3_600))
        );
        assert_eq!(super::parse_window("90m"), Ok(Duration::from_secs(5_400)));
        for bad in ["30", "d", "5m", "30x", "-1d", ""] {
            assert!(super::parse_window(bad).is_err(), "{bad}");
        }
    }
}
