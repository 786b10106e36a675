//! `publisher`: the live Firestore publisher (`publisher run`) and the
//! backfill (`publisher backfill`).
//!
//! Raw flags and environment variables are parsed once into [`Settings`]
//! (validated, secrets in `SecretString`), which build the adapters. Bad
//! configuration fails at start with a message naming the flag/variable.
//! The bus and store options are `mirror-runtime`'s, shared with sql-writer and
//! mirrorctl. Requires the `firestore` feature (on by default).

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Tails Firestore and publishes realtime-mirror contract events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Google Cloud project of the Firestore database.
    #[arg(long, env = "FIRESTORE_PROJECT_ID")]
    project: String,
    /// Firestore database id. (`FIRESTORE_EMULATOR_HOST` is honoured by the client.)
    #[arg(long, env = "FIRESTORE_DATABASE", default_value = "(default)")]
    firestore_database: String,
    #[command(flatten)]
    bus: mirror_runtime::config::BusArgs,
    /// Where checkpoints and dead letters are kept.
    #[command(flatten)]
    store: mirror_runtime::config::StoreArgs,
    /// This instance's shard (0-based).
    #[arg(long, env = "PUBLISHER_SHARD_INDEX", default_value_t = 0)]
    shard_index: u32,
    /// Number of publisher instances splitting the documents by partition key.
    #[arg(long, env = "PUBLISHER_SHARD_COUNT", default_value_t = 1)]
    shard_count: u32,
    /// Serve /healthz, /readyz and Prometheus /metrics on this address (e.g. 0.0.0.0:9464) [default: off]
    #[arg(long, env = "METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log format: text (colours only on a terminal) or json
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: mirror_runtime::telemetry::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Listen to Firestore and publish changes until stopped (the default).
    Run(RunArgs),
    /// Page existing documents and publish them (same events as the live path).
    Backfill(BackfillArgs),
}

#[derive(Debug, Default, clap::Args)]
struct RunArgs {
    /// Listen from this RFC 3339 read time instead of the saved tokens (after
    /// a backfill pinned to it or a recovery up to it). Ignored once the
    /// checkpoint is newer. Must be within Firestore's version retention
    /// (1 hour; 7 days at whole minutes with point-in-time recovery).
    #[arg(long, env = "PUBLISHER_START_READ_TIME")]
    start_read_time: Option<String>,
    /// Partition-key split points of the listen ranges (shard count − 1,
    /// ascending); by default even over the first character of random ids.
    #[arg(long, env = "PUBLISHER_LISTEN_SPLIT_POINTS", value_delimiter = ',')]
    listen_split_points: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct BackfillArgs {
    /// `conversations`: only documents with `updatedAt` at or after this RFC
    /// 3339 time. `messages` and `targets` have no such field: read whole.
    #[arg(long, conflicts_with = "recover")]
    since: Option<String>,
    /// Read every page at this RFC 3339 time (one snapshot; within 1 hour, or
    /// 7 days at whole minutes with point-in-time recovery).
    #[arg(long)]
    read_time: Option<String>,
    /// Recover after an outage longer than a resume token lives: walk each
    /// group's time fields from the live checkpoint minus `--overlap-secs`.
    #[arg(long)]
    recover: bool,
    #[arg(long, default_value_t = 300)]
    overlap_secs: u64,
    /// Stop cleanly (with a checkpoint) after this many billed reads.
    #[arg(long)]
    budget_reads: Option<u64>,
    /// Count documents and the reads a real run would cost; publish nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, default_value_t = 500)]
    page_size: u32,
    /// Module to backfill: `dm` (conversations, messages, blocks) or `follow` (follow edges); all by default
    #[arg(long, conflicts_with = "groups")]
    module: Option<String>,
    /// Collection groups to backfill (conversations, messages, targets); all by default.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Ignore saved checkpoints and start from the beginning.
    #[arg(long)]
    fresh: bool,
}

/// Validated settings.
#[cfg_attr(not(feature = "firestore"), allow(dead_code))] // without Firestore the binary only explains itself
struct Settings {
    source: publisher::mapping::SourceInfo,
    shard: publisher::sink::Shard,
    bus: mirror_runtime::config::BusSettings,
    store: mirror_runtime::config::StoreSettings,
    metrics_addr: Option<std::net::SocketAddr>,
    command: Command,
}

impl Cli {
    fn settings(self) -> anyhow::Result<Settings> {
        let shard = publisher::sink::Shard::new(self.shard_index, self.shard_count)
            .map_err(|e| anyhow::anyhow!("--shard-index / --shard-count: {e}"))?;
        if self.project.trim().is_empty() {
            anyhow::bail!("--project / FIRESTORE_PROJECT_ID is empty");
        }
        let bus = self.bus.settings()?;
        let store = self.store.settings()?;
        Ok(Settings {
            source: publisher::mapping::SourceInfo::new(self.project, self.firestore_database),
            shard,
            bus,
            store,
            metrics_addr: self.metrics_addr,
            command: self.command.unwrap_or(Command::Run(RunArgs::default())),
        })
    }
}

fn main() -> std::process::ExitCode {
    // First thing: TLS for Firestore (gRPC), Service Bus and NATS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    mirror_runtime::telemetry::init_logging(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(async { cli.settings().map(adapters::start) }) {
        Ok(fut) => match runtime.block_on(fut) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("publisher: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("publisher: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
#[allow(dead_code)]
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

#[allow(dead_code)]
fn backfill_options(
    args: &BackfillArgs,
    source: publisher::mapping::SourceInfo,
    shard: publisher::sink::Shard,
) -> anyhow::Result<publisher::backfill::BackfillOptions> {
    use publisher::backfill::Group;
    let since = args
        .since
        .as_deref()
        .map(|s| {
            mirror_schema::parse_time("--since", s).map_err(|e| anyhow::anyhow!("--since: {e}"))
        })
        .transpose()?;
    let module = args
        .module
        .as_deref()
        .map(|m| {
            publisher::backfill::Module::parse(m)
                .with_context(|| format!("--module: `{m}` is not dm or follow"))
        })
        .transpose()?;
    let groups = if let Some(m) = module {
        m.groups()
    } else if args.groups.is_empty() {
        Group::ALL.to_vec()
    } else {
        args.groups
            .iter()
            .map(|g| {
                Group::parse(g).with_context(|| {
                    format!("--groups: `{g}` is not conversations, messages or targets")
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if args.page_size == 0 {
        anyhow::bail!("--page-size must be at least 1");
    }
    Ok(publisher::backfill::BackfillOptions {
        groups,
        since,
        budget_reads: args.budget_reads,
        dry_run: args.dry_run,
        page_size: args.page_size,
        shard,
        source,
        fresh: args.fresh,
        families: module.map(|m| m.families()),
        read_time: args
            .read_time
            .as_deref()
            .map(|s| {
                mirror_schema::parse_time("--read-time", s)
                    .map_err(|e| anyhow::anyhow!("--read-time: {e}"))
            })
            .transpose()?,
        recovery: args.recover,
    })
}

#[cfg(feature = "firestore")]
mod adapters {
    //! Edge wiring: the only place naming concrete adapters.
    use std::time::Duration;

    use super::*;
    use futures::future::BoxFuture;
    use mirror_bus::EventBus;
    use publisher::firestore::{FirestorePager, FirestoreTransport};
    use publisher::PublisherStore;

    pub fn start(settings: Settings) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let db = publisher::firestore::connect(&settings.source.project, &settings.source.database)
                .await
                .context("connecting to Firestore (FIRESTORE_PROJECT_ID, FIRESTORE_DATABASE, FIRESTORE_EMULATOR_HOST)")?;
            let bus_settings = settings.bus.clone();
            let store_settings = settings.store.clone();
            if let (Command::Run(_), Some(addr)) = (&settings.command, settings.metrics_addr) {
                serve_health(addr, &settings).await?;
            }
            mirror_runtime::with_store!(&store_settings, |store| {
                mirror_runtime::with_bus!(&bus_settings, |bus| execute(settings, db, bus, store)
                    .await)
            })
        })
    }

    /// `/healthz`, `/readyz` (bus and store answer) and `/metrics` of the live
    /// publisher, with the checkpoint age of its shard. The probes use their
    /// own connections: the live loop owns its bus and store.
    async fn serve_health(addr: std::net::SocketAddr, settings: &Settings) -> anyhow::Result<()> {
        let metrics = mirror_runtime::telemetry::install_metrics();
        let health = mirror_runtime::health::Health::global();
        mirror_runtime::health::serve(addr, health.clone(), metrics, std::future::pending())
            .await?;
        let options = mirror_runtime::health::WatchOptions {
            subscription: None,
            checkpoint: Some((
                publisher::live::CHECKPOINT_MODULE.to_owned(),
                settings.shard.id(),
            )),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        };
        mirror_runtime::with_store!(&settings.store, |store| {
            mirror_runtime::with_bus!(&settings.bus, |bus| {
                tokio::spawn(mirror_runtime::health::watch(
                    std::sync::Arc::new(bus),
                    std::sync::Arc::new(store),
                    health,
                    options,
                    std::future::pending(),
                ));
            })
        });
        Ok(())
    }

    async fn execute<B: EventBus, S: PublisherStore>(
        settings: Settings,
        db: publisher::firestore::FirestoreDb,
        bus: B,
        store: S,
    ) -> anyhow::Result<()> {
        match settings.command {
            Command::Run(args) => {
                tracing::info!(project = %settings.source.project, database = %settings.source.database, shard = %settings.shard.id(), "live publisher starting");
                let mut config = publisher::live::LiveConfig::new(settings.source, settings.shard);
                let points = (!args.listen_split_points.is_empty())
                    .then_some(args.listen_split_points.as_slice());
                config.range = publisher::sink::KeyRange::of_shard(settings.shard, points)
                    .map_err(|e| anyhow::anyhow!("--shard-count / --listen-split-points: {e}"))?;
                tracing::info!(range = ?config.range, "listening to this shard's key range");
                config.start_read_time = args
                    .start_read_time
                    .as_deref()
                    .map(|s| {
                        mirror_schema::parse_time("--start-read-time", s)
                            .map_err(|e| anyhow::anyhow!("--start-read-time: {e}"))
                    })
                    .transpose()?;
                let deps = publisher::live::LiveDeps {
                    transport: FirestoreTransport::new(db).with_range(config.range.clone()),
                    bus,
                    store,
                    config,
                };
                let report = publisher::run(deps, shutdown_signal()).await?;
                tracing::info!(?report, "live publisher stopped");
                Ok(())
            }
            Command::Backfill(args) => {
                let mut opts = backfill_options(&args, settings.source, settings.shard)?;
                if opts.recovery {
                    let cp = store
                        .load_checkpoint(publisher::live::CHECKPOINT_MODULE, &settings.shard.id())
                        .await
                        .context("loading the live checkpoint")?
                        .and_then(|c| c.last_processed_at)
                        .context("--recover: no live checkpoint for this shard; run a full backfill instead")?;
                    let since = cp
                        - chrono::Duration::seconds(
                            i64::try_from(args.overlap_secs).unwrap_or(i64::MAX),
                        );
                    println!("recovering changes since {since} (checkpoint {cp} minus {}s); deletions in the gap are found only by `mirrorctl check`", args.overlap_secs);
                    opts.since = Some(since);
                }
                let bar = indicatif::ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(200));
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                        .expect("a valid template"),
                );
                let pager = FirestorePager::new(db);
                let report = publisher::backfill::backfill(
                    &opts,
                    &pager,
                    &bus,
                    &store,
                    |p| {
                        bar.set_message(format!(
                            "{}: {} documents{}, {} reads",
                            p.group.collection_id(),
                            p.docs,
                            p.total.map(|t| format!(" of {t}")).unwrap_or_default(),
                            p.reads
                        ))
                    },
                    shutdown_signal(),
                )
                .await?;
                bar.finish_and_clear();
                for (group, g) in &report.groups {
                    if g.since_ignored {
                        println!(
                            "{:<14} has no time field: --since does not apply, read whole",
                            group.collection_id()
                        );
                    }
                    println!(
                        "{:<14} docs {:>10}  reads {:>10}{}  published {}  duplicates {}  other-shard {}  out-of-scope {}  dead-lettered {}{}",
                        group.collection_id(),
                        g.docs,
                        g.reads,
                        g.estimated_reads.map(|e| format!("  (a real run: ~{e} reads)")).unwrap_or_default(),
                        g.tally.published,
                        g.tally.duplicates,
                        g.tally.not_owned,
                        g.tally.out_of_scope,
                        g.tally.dead_lettered,
                        if g.already_done { "  (done earlier; --fresh to redo)" } else { "" },
                    );
                }
                if report.budget_exhausted {
                    println!("read budget reached; run again to continue from the checkpoint");
                }
                if report.interrupted {
                    println!("interrupted; run again to continue from the checkpoint");
                }
                Ok(())
            }
        }
    }
}

#[cfg(not(feature = "firestore"))]
mod adapters {
    use super::*;
    use futures::future::BoxFuture;

    pub fn start(_settings: Settings) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async {
            anyhow::bail!(
                "this build has no `firestore` feature; rebuild with `--features firestore`"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let mut all = vec![
            "publisher",
            "--project",
            "demo",
            "--database-url",
            "postgres://x/y",
        ];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.settings()
    }

    #[test]
    fn validates_flags_naming_them() {
        let s = settings(&["--shard-index", "1", "--shard-count", "3"]).unwrap();
        assert_eq!(s.shard.id(), "1-of-3");
        assert!(matches!(s.command, Command::Run(_)));
        let e = settings(&["--shard-index", "3", "--shard-count", "3"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("--shard-index"), "{e}");
        if std::env::var_os("SERVICEBUS_CONNECTION_STRING").is_none()
            && std::env::var_os("SERVICEBUS_NAMESPACE").is_none()
        {
            let e = settings(&["--bus", "servicebus"]).err().unwrap();
            assert!(
                e.to_string().contains("SERVICEBUS_CONNECTION_STRING"),
                "{e}"
            );
        }
    }

    #[test]
    fn backfill_options_parse_and_reject_bad_values() {
        let s = settings(&[
            "backfill",
            "--since",
            "2025-10-01T00:00:00+02:00",
            "--groups",
            "messages,targets",
            "--budget-reads",
            "10",
        ])
        .unwrap();
        let Command::Backfill(args) = &s.command else {
            panic!()
        };
        let o = backfill_options(args, s.source.clone(), s.shard).unwrap();
        assert_eq!(
            o.groups,
            vec![
                publisher::backfill::Group::Messages,
                publisher::backfill::Group::Targets
            ]
        );
        assert_eq!(o.since.unwrap().to_rfc3339(), "2025-09-30T22:00:00+00:00");
        assert_eq!(o.budget_reads, Some(10));
        let s = settings(&["backfill", "--groups", "users"]).unwrap();
        let Command::Backfill(args) = &s.command else {
            panic!()
        };
        let e = backfill_options(args, s.source.clone(), s.shard).unwrap_err();
        assert!(e.to_string().contains("--groups"), "{e}");
        let s = settings(&[
            "backfill",
            "--recover",
            "--read-time",
            "2025-10-01T00:00:00Z",
        ])
        .unwrap();
        let Command::Backfill(args) = &s.command else {
            panic!()
        };
        let o = backfill_options(args, s.source.clone(), s.shard).unwrap();
        assert!(o.recovery);
        assert_eq!(
            o.read_time.unwrap().to_rfc3339(),
            "2025-10-01T00:00:00+00:00"
        );
        assert_eq!(args.overlap_secs, 300);
        assert!(settings(&["backfill", "--recover", "--since", "2025-10-01T00:00:00Z"]).is_err());
        let s = settings(&["run", "--start-read-time", "2025-10-01T00:00:00Z"]).unwrap();
        assert!(matches!(&s.command, Command::Run(r) if r.start_read_time.is_some()));
        let s = settings(&["backfill", "--since", "yesterday"]).unwrap();
        let Command::Backfill(args) = &s.command else {
            panic!()
        };
        assert!(backfill_options(args, s.source.clone(), s.shard)
            .unwrap_err()
            .to_string()
            .contains("--since"));
    }
}
