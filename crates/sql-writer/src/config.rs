//! Configuration: raw flags/env/file in, validated [`Settings`] out.
//!
//! Precedence per option: command-line flag, then environment variable, then
//! the optional TOML file (`--config`), then the default. Everything is
//! validated once, here; a bad value fails at start with a message naming the
//! flag and the variable. Secrets (database URLs, connection strings) are kept
//! in [`SecretString`] and never appear in `Debug` output or logs.
//!
//! [`BusArgs`] and [`StoreArgs`] come from `mirror-runtime`, shared with the
//! publisher and `mirrorctl` (`#[command(flatten)]`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use serde::Deserialize;

pub use mirror_runtime::config::{
    bad, BusArgs, BusKind, BusSettings, ConfigError, ServiceBusAuth, StoreArgs, StoreKind,
    StoreSettings, DEFAULT_DATABASE_URL, DEFAULT_NATS_URL,
};

use mirror_store::ApplyMode;

use crate::defaults;
use crate::policy::{Backoff, RetryPolicy};
use crate::writer::WriterSettings;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `sql-writer`: consume the `sql-writer` subscription and apply every event to SQL.
///
/// Runs with no flags against local NATS (nats://127.0.0.1:4222) and the local
/// PostgreSQL database `mirror`. Every option can also be set in the
/// environment (shown in brackets) or in a TOML file given with --config whose
/// keys are the long option names with `_` for `-` (secrets only from flags or env).
#[derive(Debug, Clone, Parser)]
#[command(name = "sql-writer", version, about, long_about = None)]
pub struct Cli {
    /// Optional TOML config file
    #[arg(long, env = "SQL_WRITER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub bus: BusArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub writer: WriterArgs,
}

/// Worker-loop options.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct WriterArgs {
    /// Subscription (durable consumer) to read
    #[arg(long, env = "WRITER_SUBSCRIPTION",
          help = defaults::help("Subscription (durable consumer) to read", defaults::SUBSCRIPTION))]
    pub subscription: Option<String>,
    /// Most events per batch and per SQL transaction
    #[arg(long, env = "WRITER_BATCH_SIZE",
          help = defaults::help("Most events per batch and per SQL transaction", defaults::BATCH_SIZE))]
    pub batch_size: Option<usize>,
    /// Milliseconds a batch that is not full waits for more events (0: never)
    #[arg(long, env = "WRITER_LINGER_MS",
          help = defaults::help("Milliseconds a batch that is not full waits for more events (0: never)", defaults::LINGER.as_millis()))]
    pub linger_ms: Option<u64>,
    /// How the store applies a batch: `batched` (set-based) or `per-event`
    #[arg(long = "apply", env = "WRITER_APPLY", value_parser = parse_apply_mode,
          help = defaults::help("How the store applies a batch: `batched` (set-based) or `per-event`", defaults::APPLY_MODE.as_str()))]
    #[serde(default, deserialize_with = "de_apply_mode")]
    pub apply: Option<ApplyMode>,
    /// Lanes: concurrent batches, each its own receiver and transaction; every event of one entity goes to one lane
    #[arg(long, env = "WRITER_CONCURRENCY",
          help = defaults::help("Lanes: concurrent batches, each its own receiver and transaction; every event of one entity goes to one lane", defaults::CONCURRENCY))]
    pub concurrency: Option<usize>,
    /// Deliveries before a transiently failing event is dead-lettered (also the broker's delivery limit)
    #[arg(long, env = "WRITER_MAX_ATTEMPTS",
          help = defaults::help("Deliveries before a transiently failing event is dead-lettered (also the broker's delivery limit)", defaults::MAX_ATTEMPTS))]
    pub max_attempts: Option<u32>,
    /// First retry delay in milliseconds (doubles per attempt, with jitter)
    #[arg(long, env = "WRITER_MIN_BACKOFF_MS",
          help = defaults::help("First retry delay in milliseconds (doubles per attempt, with jitter)", defaults::MIN_BACKOFF.as_millis()))]
    pub min_backoff_ms: Option<u64>,
    /// Longest retry delay in milliseconds
    #[arg(long, env = "WRITER_MAX_BACKOFF_MS",
          help = defaults::help("Longest retry delay in milliseconds", defaults::MAX_BACKOFF.as_millis()))]
    pub max_backoff_ms: Option<u64>,
    /// Drain the subscription, then exit 0 (for tests and batch jobs)
    #[arg(long, env = "WRITER_EXIT_WHEN_IDLE", num_args = 0..=1, default_missing_value = "true")]
    pub exit_when_idle: Option<bool>,
    /// Seconds a batch (or any database call) may take before its messages are
    /// released and the database is treated as unavailable
    #[arg(long, env = "WRITER_APPLY_TIMEOUT_SECS",
          help = defaults::help("Seconds a batch (or any database call) may take before its messages are released and the database is treated as unavailable", defaults::APPLY_TIMEOUT.as_secs()))]
    pub apply_timeout_secs: Option<u64>,
    /// Seconds the batch in flight may take after SIGTERM/SIGINT
    #[arg(long, env = "WRITER_SHUTDOWN_DEADLINE_SECS",
          help = defaults::help("Seconds the batch in flight may take after SIGTERM/SIGINT", defaults::SHUTDOWN_DEADLINE.as_secs()))]
    pub shutdown_deadline_secs: Option<u64>,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9464) [default: off]
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log format [default: text]
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Apply pending migrations before consuming
    #[arg(long, env = "WRITER_MIGRATE", num_args = 0..=1, default_missing_value = "true")]
    pub migrate: Option<bool>,
    /// Prune applied-event ledger rows older than this many days, hourly, in
    /// small batches (see docs/runbook.md) [default: off]
    #[arg(long, env = "WRITER_LEDGER_RETENTION_DAYS")]
    pub ledger_retention_days: Option<u32>,
}

/// Everything the writer needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bus: BusSettings,
    pub store: StoreSettings,
    pub writer: WriterSettings,
    pub metrics_addr: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub migrate: bool,
    /// Prune the ledger hourly, keeping this window (None: never).
    pub ledger_retention: Option<Duration>,
}

/// The optional TOML file's shape: the same options, flat.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileConfig {
    #[serde(flatten)]
    bus: BusArgs,
    #[serde(flatten)]
    store: StoreArgs,
    #[serde(flatten)]
    writer: WriterArgs,
}

impl Cli {
    /// Merge with the config file and validate.
    pub fn settings(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    bad(
                        "--config / SQL_WRITER_CONFIG",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                check_file_keys(&text, path)?;
                toml::from_str(&text).map_err(|e| {
                    bad(
                        "--config / SQL_WRITER_CONFIG",
                        format!("{}: {e}", path.display()),
                    )
                })?
            }
        };
        let w = self.writer;
        let f = file.writer;
        let batch_size = w
            .batch_size
            .or(f.batch_size)
            .unwrap_or(defaults::BATCH_SIZE);
        if !(1..=1000).contains(&batch_size) {
            return Err(bad(
                "--batch-size / WRITER_BATCH_SIZE",
                "must be between 1 and 1000",
            ));
        }
        let concurrency = w
            .concurrency
            .or(f.concurrency)
            .unwrap_or(defaults::CONCURRENCY);
        if !(1..=64).contains(&concurrency) {
            return Err(bad(
                "--concurrency / WRITER_CONCURRENCY",
                "must be between 1 and 64",
            ));
        }
        let max_attempts = w
            .max_attempts
            .or(f.max_attempts)
            .unwrap_or(defaults::MAX_ATTEMPTS);
        if !(1..=100).contains(&max_attempts) {
            return Err(bad(
                "--max-attempts / WRITER_MAX_ATTEMPTS",
                "must be between 1 and 100",
            ));
        }
        let min_delay = w
            .min_backoff_ms
            .or(f.min_backoff_ms)
            .map_or(defaults::MIN_BACKOFF, Duration::from_millis);
        let max_delay = w
            .max_backoff_ms
            .or(f.max_backoff_ms)
            .map_or(defaults::MAX_BACKOFF, Duration::from_millis);
        if min_delay > max_delay {
            return Err(bad("--min-backoff-ms", "must not exceed --max-backoff-ms"));
        }
        let linger = w
            .linger_ms
            .or(f.linger_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults::LINGER);
        if linger > Duration::from_secs(1) {
            return Err(bad(
                "--linger-ms / WRITER_LINGER_MS",
                "must be at most 1000",
            ));
        }
        let apply_mode = w.apply.or(f.apply).unwrap_or(defaults::APPLY_MODE);
        let apply_timeout = w
            .apply_timeout_secs
            .or(f.apply_timeout_secs)
            .map_or(defaults::APPLY_TIMEOUT, Duration::from_secs);
        if apply_timeout.is_zero() {
            return Err(bad(
                "--apply-timeout-secs / WRITER_APPLY_TIMEOUT_SECS",
                "must be at least 1",
            ));
        }
        let subscription = w
            .subscription
            .or(f.subscription)
            .unwrap_or_else(|| defaults::SUBSCRIPTION.to_owned());
        let mut bus = self.bus.or(file.bus).settings()?;
        // One setting: the broker's delivery limit is the writer's attempt
        // limit (JetStream's consumer is configured with it; Service Bus's
        // `maxDeliveryCount` comes from IaC and must match — the adapter
        // checks the dead-letter queue for evidence that it does not).
        // Service Bus locks prefetched messages as they arrive: never more
        // than one batch waits locked (the adapter logs the lowered figure).
        match &mut bus {
            BusSettings::Nats { max_deliver, .. } => {
                *max_deliver = max_attempts;
                // The writer holds up to `max_unsettled` messages delivered
                // but unsettled; JetStream stops delivering past the
                // subscription's max_ack_pending and the lanes would starve.
                let in_flight = WriterSettings {
                    batch_size,
                    concurrency,
                    ..WriterSettings::default()
                }
                .max_unsettled();
                let limit = mirror_bus::DEFAULT_MAX_ACK_PENDING as usize;
                if in_flight > limit {
                    return Err(bad(
                        "--batch-size / --concurrency",
                        format!(
                            "3 × {batch_size} × {concurrency} = {in_flight} unsettled messages \
                             (per lane a batch applying, one waiting and one being received) exceed \
                             the JetStream subscription's max_ack_pending of {limit}; lower one"
                        ),
                    ));
                }
            }
            BusSettings::ServiceBus {
                max_delivery_count,
                prefetch,
                ..
            } => {
                *max_delivery_count = max_attempts;
                *prefetch = (*prefetch).min(u32::try_from(batch_size).unwrap_or(u32::MAX));
            }
        }
        Ok(Settings {
            bus,
            store: self.store.or(file.store).settings()?,
            writer: WriterSettings {
                subscription,
                batch_size,
                linger,
                apply_mode,
                concurrency,
                exit_when_idle: w.exit_when_idle.or(f.exit_when_idle).unwrap_or(false),
                retry: RetryPolicy {
                    max_attempts,
                    backoff: Backoff::new(min_delay, max_delay).with_jitter(),
                },
                shutdown_deadline: w
                    .shutdown_deadline_secs
                    .or(f.shutdown_deadline_secs)
                    .map_or(defaults::SHUTDOWN_DEADLINE, Duration::from_secs),
                apply_timeout,
                ..WriterSettings::default()
            },
            metrics_addr: w.metrics_addr.or(f.metrics_addr),
            log_format: w.log_format.or(f.log_format).unwrap_or(LogFormat::Text),
            migrate: w.migrate.or(f.migrate).unwrap_or(false),
            ledger_retention: match w.ledger_retention_days.or(f.ledger_retention_days) {
                None => None,
                Some(0) => return Err(bad("--ledger-retention-days", "must be at least 1")),
                Some(days) => Some(Duration::from_secs(u64::from(days) * 24 * 3600)),
            },
        })
    }
}

fn parse_apply_mode(s: &str) -> Result<ApplyMode, String> {
    s.parse()
}

fn de_apply_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ApplyMode>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// Reject keys that are not options (typos would otherwise be ignored), and
/// secrets, which belong in flags or the environment, not in a file.
fn check_file_keys(text: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    use clap::CommandFactory;
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        bad(
            "--config / SQL_WRITER_CONFIG",
            format!("{}: {e}", path.display()),
        )
    })?;
    let known: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| l.replace('-', "_"))
        .collect();
    for key in table.keys() {
        if ["database_url", "mssql_url", "servicebus_connection_string"].contains(&key.as_str()) {
            return Err(bad(
                "--config / SQL_WRITER_CONFIG",
                format!(
                    "{}: `{key}` is a secret; set it in the environment instead",
                    path.display()
                ),
            ));
        }
        if key == "config" || !known.contains(key) {
            return Err(bad(
                "--config / SQL_WRITER_CONFIG",
                format!("{}: unknown option `{key}`", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut full = vec!["sql-writer"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).unwrap().settings()
    }

    #[test]
    fn defaults_are_local() {
        // Not reading the environment in this test would need env isolation;
        // the flags below override anything a developer has set.
        let s = parse(&[
            "--bus",
            "nats",
            "--nats-url",
            DEFAULT_NATS_URL,
            "--store",
            "postgres",
            "--database-url",
            DEFAULT_DATABASE_URL,
        ])
        .unwrap();
        assert!(
            matches!(s.bus, BusSettings::Nats { ref url, ref topic, max_deliver: 5 } if url == DEFAULT_NATS_URL && topic == "realtime-mirror")
        );
        assert_eq!(s.writer.batch_size, 512);
        assert_eq!(s.writer.apply_mode, ApplyMode::Batched);
        assert_eq!(s.writer.linger, Duration::from_millis(5));
        assert_eq!(s.writer.retry.max_attempts, 5);
        assert_eq!(s.store.describe(), "postgres 127.0.0.1:5432/mirror");
    }

    #[test]
    fn help_shows_the_defaults_the_settings_use() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        let d = WriterSettings::default();
        for (flag, shown) in [
            ("--subscription", d.subscription.clone()),
            ("--batch-size", d.batch_size.to_string()),
            ("--linger-ms", d.linger.as_millis().to_string()),
            ("--apply", d.apply_mode.as_str().to_owned()),
            ("--concurrency", d.concurrency.to_string()),
            ("--max-attempts", d.retry.max_attempts.to_string()),
            (
                "--min-backoff-ms",
                d.retry.backoff.min_delay.as_millis().to_string(),
            ),
            (
                "--max-backoff-ms",
                d.retry.backoff.max_delay.as_millis().to_string(),
            ),
            (
                "--apply-timeout-secs",
                d.apply_timeout.as_secs().to_string(),
            ),
            (
                "--shutdown-deadline-secs",
                d.shutdown_deadline.as_secs().to_string(),
            ),
        ] {
            let line = help
                .split("\n  -")
                .find(|opt| opt.contains(&format!("{flag} <")))
                .unwrap_or_else(|| panic!("{flag} not in the help:\n{help}"));
            assert!(
                line.contains(&format!("[default: {shown}]")),
                "{flag} shows another default than the settings use ({shown}):\n{line}"
            );
        }
        // With no flags, no environment and no file, the settings are the defaults.
        if std::env::vars().all(|(k, _)| !k.starts_with("WRITER_")) {
            let w = parse(&["--bus", "nats", "--store", "postgres"])
                .unwrap()
                .writer;
            assert_eq!(
                (
                    w.batch_size,
                    w.concurrency,
                    w.linger,
                    w.apply_timeout,
                    w.retry
                ),
                (
                    d.batch_size,
                    d.concurrency,
                    d.linger,
                    d.apply_timeout,
                    d.retry
                )
            );
        }
    }

    #[test]
    fn the_attempt_limit_is_the_brokers_delivery_limit() {
        let s = parse(&[
            "--bus",
            "servicebus",
            "--servicebus-connection-string",
            "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;",
            "--max-attempts",
            "8",
        ])
        .unwrap();
        assert!(
            matches!(
                s.bus,
                BusSettings::ServiceBus {
                    max_delivery_count: 8,
                    ..
                }
            ),
            "{:?}",
            s.bus
        );
        let s = parse(&["--bus", "nats", "--max-attempts", "7"]).unwrap();
        assert!(matches!(s.bus, BusSettings::Nats { max_deliver: 7, .. }));
    }

    /// Service Bus prefetch is at most one batch (prefetched messages wait locked).
    #[test]
    fn every_workers_batch_fits_in_jetstreams_unsettled_window() {
        let d = WriterSettings::default();
        assert!(
            d.max_unsettled() <= mirror_bus::DEFAULT_MAX_ACK_PENDING as usize,
            "the defaults must fit"
        );
        let err = parse(&[
            "--bus",
            "nats",
            "--batch-size",
            "1000",
            "--concurrency",
            "8",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--batch-size / --concurrency") && err.contains("max_ack_pending"),
            "{err}"
        );
        // Service Bus has no such window (prefetch is capped at a batch instead).
        parse(&[
            "--bus",
            "servicebus",
            "--servicebus-connection-string",
            "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;",
            "--batch-size",
            "1000",
            "--concurrency",
            "8",
        ])
        .unwrap();
    }

    #[test]
    fn service_bus_prefetch_is_at_most_a_batch() {
        let cs = "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;";
        let prefetch = |batch: &str| {
            let s = parse(&[
                "--bus",
                "servicebus",
                "--servicebus-connection-string",
                cs,
                "--batch-size",
                batch,
            ])
            .unwrap();
            match s.bus {
                BusSettings::ServiceBus { prefetch, .. } => prefetch,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(prefetch("7"), 7);
        assert_eq!(prefetch("64"), mirror_bus::servicebus::DEFAULT_PREFETCH);
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = parse(&["--batch-size", "0"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--batch-size / WRITER_BATCH_SIZE"),
            "{e}"
        );
        let e = Cli::try_parse_from(["sql-writer", "--apply", "sometimes"]).unwrap_err();
        assert!(e.to_string().contains("per-event or batched"), "{e}");
        let s = parse(&["--apply", "per-event", "--linger-ms", "0"]).unwrap();
        assert_eq!(s.writer.apply_mode, ApplyMode::PerEvent);
        assert!(s.writer.linger.is_zero());
        let e = parse(&["--bus", "nats", "--nats-url", "http://x"]).unwrap_err();
        assert!(e.to_string().contains("NATS_URL"), "{e}");
        let e = parse(&["--store", "mssql", "--mssql-url", "nonsense"]).unwrap_err();
        assert!(e.to_string().contains("MSSQL_URL"), "{e}");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = parse(&[
            "--store",
            "postgres",
            "--database-url",
            "postgres://u:hunter2@db/mirror",
            "--bus",
            "servicebus",
            "--servicebus-connection-string",
            "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=topsecret",
        ])
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("topsecret"),
            "{dbg}"
        );
        assert!(!s.store.describe().contains("hunter2"));
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = std::env::temp_dir().join(format!("sqlw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.toml");
        std::fs::write(&path, "batch_size = 7\nconcurrency = 3\ntopic = \"t1\"\n").unwrap();
        let s = parse(&["--config", path.to_str().unwrap(), "--concurrency", "2"]).unwrap();
        assert_eq!(s.writer.batch_size, 7);
        assert_eq!(s.writer.concurrency, 2);
        std::fs::write(&path, "batch_sise = 7\n").unwrap();
        let e = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown option `batch_sise`"), "{e}");
        std::fs::write(&path, "database_url = \"postgres://x\"\n").unwrap();
        assert!(parse(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string()
            .contains("secret"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
