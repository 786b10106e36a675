//! Bus and store options shared by every job: raw flags/env in, validated
//! settings out.
//!
//! Precedence per option: command-line flag, then environment variable, then
//! (for jobs that take one) a config file, then the default. Secrets (database
//! URLs, connection strings) are kept in [`SecretString`] and never appear in
//! `Debug` output or logs.

use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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
    Nats {
        url: String,
        topic: String,
        max_deliver: u32,
    },
    /// `max_delivery_count` is the subscription's `maxDeliveryCount` the
    /// adapter expects (deployed by IaC); the writer sets it to its attempt
    /// limit, the one setting both follow.
    ServiceBus {
        auth: ServiceBusAuth,
        topic: String,
        sessions: bool,
        max_delivery_count: u32,
        /// Messages each receive link locks ahead; at most the batch a
        /// consumer takes (the writer lowers it to its batch size).
        prefetch: u32,
    },
}

/// How to authenticate to Service Bus.
#[derive(Debug, Clone)]
pub enum ServiceBusAuth {
    ConnectionString(SecretString),
    /// Entra ID (managed identity, workload identity, developer login) to this namespace.
    Entra {
        namespace: String,
    },
}

/// Validated store connection settings.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    Postgres {
        url: SecretString,
        pool_size: usize,
        command_timeout: Duration,
    },
    Mssql {
        ado: SecretString,
        pool_size: usize,
        command_timeout: Duration,
    },
}

/// A configuration error naming the option at fault.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {reason}")]
pub struct ConfigError {
    pub option: &'static str,
    pub reason: String,
}

/// A [`ConfigError`] for `option`.
pub fn bad(option: &'static str, reason: impl Into<String>) -> ConfigError {
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
            servicebus_connection_string: self
                .servicebus_connection_string
                .or(file.servicebus_connection_string),
            servicebus_namespace: self.servicebus_namespace.or(file.servicebus_namespace),
            servicebus_sessions: self.servicebus_sessions.or(file.servicebus_sessions),
        }
    }

    pub fn settings(self) -> Result<BusSettings, ConfigError> {
        let topic = self.topic.unwrap_or_else(|| mirror_bus::TOPIC.to_owned());
        if topic.is_empty()
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "--topic / MIRROR_TOPIC",
                format!("`{topic}` must be letters, digits, `-` or `_`"),
            ));
        }
        match self.bus.unwrap_or(BusKind::Nats) {
            BusKind::Nats => {
                let url = self.nats_url.unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());
                for part in url.split(',') {
                    let parsed = url::Url::parse(part.trim()).map_err(|e| {
                        bad(
                            "--nats-url / NATS_URL",
                            format!("`{part}` is not a URL: {e}"),
                        )
                    })?;
                    if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") {
                        return Err(bad(
                            "--nats-url / NATS_URL",
                            format!("scheme `{}` is not nats, tls, ws or wss", parsed.scheme()),
                        ));
                    }
                }
                Ok(BusSettings::Nats {
                    url,
                    topic,
                    max_deliver: mirror_bus::DEFAULT_MAX_DELIVERIES,
                })
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
                    max_delivery_count: mirror_bus::DEFAULT_MAX_DELIVERIES,
                    prefetch: mirror_bus::servicebus::DEFAULT_PREFETCH,
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
            return Err(bad(
                "--pool-size / MIRROR_POOL_SIZE",
                "must be between 1 and 256",
            ));
        }
        let command_timeout = Duration::from_secs(self.command_timeout_secs.unwrap_or(30));
        if command_timeout.is_zero() {
            return Err(bad(
                "--command-timeout-secs / MIRROR_COMMAND_TIMEOUT_SECS",
                "must be at least 1",
            ));
        }
        match self.store.unwrap_or(StoreKind::Postgres) {
            StoreKind::Postgres => {
                let url = self
                    .database_url
                    .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
                let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
                if !is_url && !url.contains('=') {
                    return Err(bad(
                        "--database-url / DATABASE_URL",
                        "is neither a postgres:// URL nor a key=value connection string",
                    ));
                }
                Ok(StoreSettings::Postgres {
                    url: SecretString::from(url),
                    pool_size,
                    command_timeout,
                })
            }
            StoreKind::Mssql => {
                let ado = self.mssql_url.filter(|s| !s.is_empty()).ok_or_else(|| {
                    bad(
                        "--store mssql",
                        "needs --mssql-url / MSSQL_URL (an ADO connection string)",
                    )
                })?;
                if !ado.to_ascii_lowercase().contains("server=") {
                    return Err(bad(
                        "--mssql-url / MSSQL_URL",
                        "is not an ADO connection string (no `server=`)",
                    ));
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
                Ok(u) => format!(
                    "postgres {}:{}{}",
                    u.host_str().unwrap_or("?"),
                    u.port().unwrap_or(5432),
                    u.path()
                ),
                Err(_) => "postgres (key=value connection string)".to_owned(),
            },
            StoreSettings::Mssql { ado, .. } => {
                let server = ado
                    .expose_secret()
                    .split(';')
                    .find_map(|kv| {
                        kv.split_once('=')
                            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("server"))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                    .unwrap_or_else(|| "?".into());
                format!("mssql {server}")
            }
        }
    }
}

impl BusSettings {
    /// `messaging.system` and `messaging.destination.name` for telemetry.
    pub fn messaging_destination(&self) -> (&'static str, &str) {
        match self {
            BusSettings::Nats { topic, .. } => ("nats", topic),
            BusSettings::ServiceBus { topic, .. } => ("servicebus", topic),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            BusSettings::Nats { url, topic, .. } => format!("nats {url} topic {topic}"),
            BusSettings::ServiceBus { auth, topic, .. } => match auth {
                ServiceBusAuth::Entra { namespace } => {
                    format!("servicebus {namespace} (Entra ID) topic {topic}")
                }
                ServiceBusAuth::ConnectionString(_) => {
                    format!("servicebus (connection string) topic {topic}")
                }
            },
        }
    }
}
