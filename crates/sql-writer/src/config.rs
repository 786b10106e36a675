//! Configuration: raw flags/env/file in, validated [`Settings`] out.
//!
//! Precedence per option: command-line flag, then environment variable, then
//! the optional TOML file (`--config`), then the default. Everything is
//! validated once, here; a bad value fails at start with a message naming the
//! flag and the variable. Secrets (database URLs, connection strings) are kept
//! in [`SecretString`] and never appear in `Debug` output or logs.
//!
//! [`BusArgs`] and [`StoreArgs`] are shared with `mirrorctl` (`#[command(flatten)]`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::policy::RetryPolicy;
use crate::writer::WriterSettings;

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/mirror";

/// Which bus adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// NATS JetStream (runs locally).
    Nats,
    /// Azure Service Bus (AMQP).
    Servicebus,
}

/// Which store adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// PostgreSQL (schema `mirror`).
    Postgres,
    /// SQL Server / Azure SQL (schema `dbo`).
    Mssql,
}

/// Bus selection and connection.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct BusArgs {
    /// Bus adapter [default: nats]
    #[arg(long, env = "MIRROR_BUS", value_enum)]
    pub bus: Option<BusKind>,
    /// NATS server URL [default: nats://127.0.0.1:4222]
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Topic: the JetStream stream / Service Bus topic [default: realtime-mirror]
    #[arg(long, env = "MIRROR_TOPIC")]
    pub topic: Option<String>,
    /// Service Bus connection string (SAS). Secret: never logged
    #[arg(long, env = "SERVICEBUS_CONNECTION_STRING", hide_env_values = true)]
    #[serde(skip)]
    pub servicebus_connection_string: Option<String>,
    /// Service Bus fully qualified namespace, for Entra ID auth (DefaultAzureCredential)
    #[arg(long, env = "SERVICEBUS_NAMESPACE")]
    pub servicebus_namespace: Option<String>,
    /// Use Service Bus sessions (SessionId = partition key, per-entity FIFO)
    #[arg(long, env = "SERVICEBUS_SESSIONS", num_args = 0..=1, default_missing_value = "true")]
    pub servicebus_sessions: Option<bool>,
}

/// Store selection and connection.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct StoreArgs {
    /// Store adapter [default: postgres]
    #[arg(long, env = "MIRROR_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// PostgreSQL URL. Secret: never logged [default: postgres://postgres:postgres@127.0.0.1:5432/mirror]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    #[serde(skip)]
    pub database_url: Option<String>,
    /// SQL Server ADO connection string (`server=tcp:host,1433;database=…;user id=…;password=…`). Secret: never logged
    #[arg(long, env = "MSSQL_URL", hide_env_values = true)]
    #[serde(skip)]
    pub mssql_url: Option<String>,
    /// Database connection pool size [default: 8]
    #[arg(long, env = "MIRROR_POOL_SIZE")]
    pub pool_size: Option<usize>,
    /// Per-statement timeout in seconds [default: 30]
    #[arg(long, env = "MIRROR_COMMAND_TIMEOUT_SECS")]
    pub command_timeout_secs: Option<u64>,
}

/// Validated bus connection settings.
#[derive(Debug, Clone)]
pub enum BusSettings {
    /// `max_deliver` is the consumer's delivery limit; the writer sets it to its
    /// attempt limit so JetStream never gives up before the writer's own rule.
    Nats { url: String, topic: String, max_deliver: u32 },
    ServiceBus { auth: ServiceBusAuth, topic: String, sessions: bool },
}

/// How to authenticate to Service Bus.
#[derive(Debug, Clone)]
pub enum ServiceBusAuth {
    ConnectionString(SecretString),
    /// Entra ID (managed identity, workload identity, developer login) to this namespace.
    Entra { namespace: String },
}

/// Validated store connection settings.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    Postgres { url: SecretString, pool_size: usize, command_timeout: Duration },
    Mssql { ado: SecretString, pool_size: usize, command_timeout: Duration },
}

/// A configuration error naming the option at fault.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {reason}")]
pub struct ConfigError {
    pub option: &'static str,
    pub reason: String,
}

fn bad(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        option,
        reason: reason.into(),
    }
}

impl BusArgs {
    /// Fill unset values from `file`.
    pub fn or(self, file: BusArgs) -> BusArgs {
        BusArgs {
            bus: self.bus.or(file.bus),
            nats_url: self.nats_url.or(file.nats_url),
            topic: self.topic.or(file.topic),
            servicebus_connection_string: self.servicebus_connection_string.or(file.servicebus_connection_string),
            servicebus_namespace: self.servicebus_namespace.or(file.servicebus_namespace),
            servicebus_sessions: self.servicebus_sessions.or(file.servicebus_sessions),
        }
    }

    pub fn settings(self) -> Result<BusSettings, ConfigError> {
        let topic = self.topic.unwrap_or_else(|| mirror_bus::TOPIC.to_owned());
        if topic.is_empty() || !topic.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad("--topic / MIRROR_TOPIC", format!("`{topic}` must be letters, digits, `-` or `_`")));
        }
        match self.bus.unwrap_or(BusKind::Nats) {
            BusKind::Nats => {
                let url = self.nats_url.unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());
                for part in url.split(',') {
                    let parsed = url::Url::parse(part.trim()).map_err(|e| bad("--nats-url / NATS_URL", format!("`{part}` is not a URL: {e}")))?;
                    if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") {
                        return Err(bad("--nats-url / NATS_URL", format!("scheme `{}` is not nats, tls, ws or wss", parsed.scheme())));
                    }
                }
                Ok(BusSettings::Nats { url, topic, max_deliver: 5 })
            }
            BusKind::Servicebus => {
                let auth = match (self.servicebus_connection_string, self.servicebus_namespace) {
                    (Some(cs), _) if !cs.is_empty() => {
                        if !cs.contains("Endpoint=") {
                            return Err(bad(
                                "--servicebus-connection-string / SERVICEBUS_CONNECTION_STRING",
                                "is not a Service Bus connection string (no `Endpoint=`)",
                            ));
                        }
                        ServiceBusAuth::ConnectionString(SecretString::from(cs))
                    }
                    (_, Some(ns)) if !ns.is_empty() => ServiceBusAuth::Entra { namespace: ns },
                    _ => {
                        return Err(bad(
                            "--bus servicebus",
                            "needs SERVICEBUS_CONNECTION_STRING (SAS) or SERVICEBUS_NAMESPACE (Entra ID)",
                        ))
                    }
                };
                Ok(BusSettings::ServiceBus {
                    auth,
                    topic,
                    sessions: self.servicebus_sessions.unwrap_or(false),
                })
            }
        }
    }
}

impl StoreArgs {
    pub fn or(self, file: StoreArgs) -> StoreArgs {
        StoreArgs {
            store: self.store.or(file.store),
            database_url: self.database_url.or(file.database_url),
            mssql_url: self.mssql_url.or(file.mssql_url),
            pool_size: self.pool_size.or(file.pool_size),
            command_timeout_secs: self.command_timeout_secs.or(file.command_timeout_secs),
        }
    }

    pub fn settings(self) -> Result<StoreSettings, ConfigError> {
        let pool_size = self.pool_size.unwrap_or(8);
        if !(1..=256).contains(&pool_size) {
            return Err(bad("--pool-size / MIRROR_POOL_SIZE", "must be between 1 and 256"));
        }
        let command_timeout = Duration::from_secs(self.command_timeout_secs.unwrap_or(30));
        if command_timeout.is_zero() {
            return Err(bad("--command-timeout-secs / MIRROR_COMMAND_TIMEOUT_SECS", "must be at least 1"));
        }
        match self.store.unwrap_or(StoreKind::Postgres) {
            StoreKind::Postgres => {
                let url = self.database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
                let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
                if !is_url && !url.contains('=') {
                    return Err(bad("--database-url / DATABASE_URL", "is neither a postgres:// URL nor a key=value connection string"));
                }
                Ok(StoreSettings::Postgres {
                    url: SecretString::from(url),
                    pool_size,
                    command_timeout,
                })
            }
            StoreKind::Mssql => {
                let ado = self
                    .mssql_url
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| bad("--store mssql", "needs --mssql-url / MSSQL_URL (an ADO connection string)"))?;
                if !ado.to_ascii_lowercase().contains("server=") {
                    return Err(bad("--mssql-url / MSSQL_URL", "is not an ADO connection string (no `server=`)"));
                }
                Ok(StoreSettings::Mssql {
                    ado: SecretString::from(ado),
                    pool_size,
                    command_timeout,
                })
            }
        }
    }
}

impl StoreSettings {
    /// Where the store is, without credentials, for logs.
    pub fn describe(&self) -> String {
        match self {
            StoreSettings::Postgres { url, .. } => match url::Url::parse(url.expose_secret()) {
                Ok(u) => format!("postgres {}:{}{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(5432), u.path()),
                Err(_) => "postgres (key=value connection string)".to_owned(),
            },
            StoreSettings::Mssql { ado, .. } => {
                let server = ado
                    .expose_secret()
                    .split(';')
                    .find_map(|kv| kv.split_once('=').filter(|(k, _)| k.trim().eq_ignore_ascii_case("server")).map(|(_, v)| v.trim().to_owned()))
                    .unwrap_or_else(|| "?".into());
                format!("mssql {server}")
            }
        }
    }
}

impl BusSettings {
    pub fn describe(&self) -> String {
        match self {
            BusSettings::Nats { url, topic, .. } => format!("nats {url} topic {topic}"),
            BusSettings::ServiceBus { auth, topic, .. } => match auth {
                ServiceBusAuth::Entra { namespace } => format!("servicebus {namespace} (Entra ID) topic {topic}"),
                ServiceBusAuth::ConnectionString(_) => format!("servicebus (connection string) topic {topic}"),
            },
        }
    }
}

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
    /// Subscription (durable consumer) to read [default: sql-writer]
    #[arg(long, env = "WRITER_SUBSCRIPTION")]
    pub subscription: Option<String>,
    /// Events per receive and per SQL transaction [default: 64]
    #[arg(long, env = "WRITER_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Concurrent workers (each with its own receiver and transaction) [default: 4]
    #[arg(long, env = "WRITER_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Deliveries before a transiently failing event is dead-lettered [default: 5]
    #[arg(long, env = "WRITER_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// First retry delay in milliseconds (doubles per attempt, with jitter) [default: 500]
    #[arg(long, env = "WRITER_MIN_BACKOFF_MS")]
    pub min_backoff_ms: Option<u64>,
    /// Longest retry delay in milliseconds [default: 60000]
    #[arg(long, env = "WRITER_MAX_BACKOFF_MS")]
    pub max_backoff_ms: Option<u64>,
    /// Drain the subscription, then exit 0 (for tests and batch jobs)
    #[arg(long, env = "WRITER_EXIT_WHEN_IDLE", num_args = 0..=1, default_missing_value = "true")]
    pub exit_when_idle: Option<bool>,
    /// Seconds the batch in flight may take after SIGTERM/SIGINT [default: 20]
    #[arg(long, env = "WRITER_SHUTDOWN_DEADLINE_SECS")]
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
                let text = std::fs::read_to_string(path).map_err(|e| bad("--config / SQL_WRITER_CONFIG", format!("cannot read {}: {e}", path.display())))?;
                check_file_keys(&text, path)?;
                toml::from_str(&text).map_err(|e| bad("--config / SQL_WRITER_CONFIG", format!("{}: {e}", path.display())))?
            }
        };
        let w = self.writer;
        let f = file.writer;
        let batch_size = w.batch_size.or(f.batch_size).unwrap_or(64);
        if !(1..=1000).contains(&batch_size) {
            return Err(bad("--batch-size / WRITER_BATCH_SIZE", "must be between 1 and 1000"));
        }
        let concurrency = w.concurrency.or(f.concurrency).unwrap_or(4);
        if !(1..=64).contains(&concurrency) {
            return Err(bad("--concurrency / WRITER_CONCURRENCY", "must be between 1 and 64"));
        }
        let max_attempts = w.max_attempts.or(f.max_attempts).unwrap_or(5);
        if !(1..=100).contains(&max_attempts) {
            return Err(bad("--max-attempts / WRITER_MAX_ATTEMPTS", "must be between 1 and 100"));
        }
        let min_delay = Duration::from_millis(w.min_backoff_ms.or(f.min_backoff_ms).unwrap_or(500));
        let max_delay = Duration::from_millis(w.max_backoff_ms.or(f.max_backoff_ms).unwrap_or(60_000));
        if min_delay > max_delay {
            return Err(bad("--min-backoff-ms", "must not exceed --max-backoff-ms"));
        }
        let subscription = w.subscription.or(f.subscription).unwrap_or_else(|| mirror_bus::SQL_WRITER_SUBSCRIPTION.to_owned());
        let mut bus = self.bus.or(file.bus).settings()?;
        if let BusSettings::Nats { max_deliver, .. } = &mut bus {
            *max_deliver = max_attempts;
        }
        Ok(Settings {
            bus,
            store: self.store.or(file.store).settings()?,
            writer: WriterSettings {
                subscription,
                batch_size,
                concurrency,
                exit_when_idle: w.exit_when_idle.or(f.exit_when_idle).unwrap_or(false),
                retry: RetryPolicy {
                    max_attempts,
                    min_delay,
                    max_delay,
                    jitter: true,
                },
                shutdown_deadline: Duration::from_secs(w.shutdown_deadline_secs.or(f.shutdown_deadline_secs).unwrap_or(20)),
                ..WriterSettings::default()
            },
            metrics_addr: w.metrics_addr.or(f.metrics_addr),
            log_format: w.log_format.or(f.log_format).unwrap_or(LogFormat::Text),
            migrate: w.migrate.or(f.migrate).unwrap_or(false),
        })
    }
}

/// Reject keys that are not options (typos would otherwise be ignored), and
/// secrets, which belong in flags or the environment, not in a file.
fn check_file_keys(text: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    use clap::CommandFactory;
    let table: toml::Table = toml::from_str(text).map_err(|e| bad("--config / SQL_WRITER_CONFIG", format!("{}: {e}", path.display())))?;
    let known: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| l.replace('-', "_"))
        .collect();
    for key in table.keys() {
        if ["database_url", "mssql_url", "servicebus_connection_string"].contains(&key.as_str()) {
            return Err(bad("--config / SQL_WRITER_CONFIG", format!("{}: `{key}` is a secret; set it in the environment instead", path.display())));
        }
        if key == "config" || !known.contains(key) {
            return Err(bad("--config / SQL_WRITER_CONFIG", format!("{}: unknown option `{key}`", path.display())));
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
        let s = parse(&["--bus", "nats", "--nats-url", DEFAULT_NATS_URL, "--store", "postgres", "--database-url", DEFAULT_DATABASE_URL]).unwrap();
        assert!(matches!(s.bus, BusSettings::Nats { ref url, ref topic, max_deliver: 5 } if url == DEFAULT_NATS_URL && topic == "realtime-mirror"));
        assert_eq!(s.writer.batch_size, 64);
        assert_eq!(s.writer.retry.max_attempts, 5);
        assert_eq!(s.store.describe(), "postgres 127.0.0.1:5432/mirror");
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = parse(&["--batch-size", "0"]).unwrap_err();
        assert!(e.to_string().starts_with("--batch-size / WRITER_BATCH_SIZE"), "{e}");
        let e = parse(&["--bus", "nats", "--nats-url", "http://x"]).unwrap_err();
        assert!(e.to_string().contains("NATS_URL"), "{e}");
        let e = parse(&["--store", "mssql", "--mssql-url", "nonsense"]).unwrap_err();
        assert!(e.to_string().contains("MSSQL_URL"), "{e}");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = parse(&["--store", "postgres", "--database-url", "postgres://u:hunter2@db/mirror", "--bus", "servicebus", "--servicebus-connection-string", "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=topsecret"]).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("topsecret"), "{dbg}");
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
        assert!(parse(&["--config", path.to_str().unwrap()]).unwrap_err().to_string().contains("secret"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
