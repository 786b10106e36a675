//! Edge wiring: turns validated settings into connected adapters.
//!
//! The only module of the jobs that names concrete adapter types. The ports use `impl Future` methods and
//! associated types, so they are not object-safe; instead of boxing every call
//! on the hot path, [`with_bus!`](crate::with_bus) and
//! [`with_store!`](crate::with_store) expand a block once per adapter,
//! monomorphised.

use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::servicebus::{ServiceBusBus, ServiceBusConfig};
use mirror_bus::BusError;
use mirror_store::mssql::{MssqlConfig, MssqlStore};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::StoreError;
use secrecy::ExposeSecret;

use crate::config::{BusSettings, ServiceBusAuth, StoreSettings};

/// Connect to JetStream and create the topology if it is missing.
pub async fn jetstream(url: &str, topic: &str, max_deliver: u32) -> Result<JetStreamBus, BusError> {
    let config = JetStreamConfig {
        url: url.to_owned(),
        topic: topic.to_owned(),
        max_deliver,
        ..JetStreamConfig::default()
    };
    let bus = JetStreamBus::connect(config).await?;
    mirror_bus::EventBus::ensure_topology(&bus).await?;
    Ok(bus)
}

/// Connect to Service Bus (its entities are created by IaC, see deploy/azure).
pub async fn servicebus(
    auth: &ServiceBusAuth,
    topic: &str,
    sessions: bool,
    max_delivery_count: u32,
    prefetch: u32,
) -> Result<ServiceBusBus, BusError> {
    let mut config = match auth {
        ServiceBusAuth::ConnectionString(cs) => {
            ServiceBusConfig::from_connection_string(cs.expose_secret(), topic)?
        }
        ServiceBusAuth::Entra { namespace } => ServiceBusConfig::entra(namespace, topic),
    };
    config.sessions = sessions;
    config.max_delivery_count = max_delivery_count;
    if prefetch < config.prefetch {
        tracing::info!(
            prefetch,
            default = config.prefetch,
            "Service Bus prefetch lowered to the batch size: prefetched messages are locked while they wait"
        );
    }
    config.prefetch = prefetch;
    let bus = ServiceBusBus::connect(config).await?;
    mirror_bus::EventBus::ensure_topology(&bus).await?;
    Ok(bus)
}

/// Connect to PostgreSQL.
pub async fn postgres(settings: &StoreSettings) -> Result<PgStore, StoreError> {
    let StoreSettings::Postgres {
        url,
        pool_size,
        command_timeout,
    } = settings
    else {
        unreachable!("called for the postgres settings only")
    };
    PgStore::connect(&PgConfig {
        url: url.clone(),
        pool_size: *pool_size,
        statement_timeout: *command_timeout,
    })
    .await
}

/// Connect to SQL Server.
pub async fn mssql(settings: &StoreSettings) -> Result<MssqlStore, StoreError> {
    let StoreSettings::Mssql {
        ado,
        pool_size,
        command_timeout,
    } = settings
    else {
        unreachable!("called for the mssql settings only")
    };
    let mut config = MssqlConfig::from_ado(ado.expose_secret())?;
    config.pool_size = *pool_size as u32;
    config.command_timeout = *command_timeout;
    MssqlStore::connect(&config).await
}

/// Bind `$bus` to the configured, connected bus adapter and evaluate `$body`
/// (an `async` context; `?` converts `BusError`).
#[macro_export]
macro_rules! with_bus {
    ($settings:expr, |$bus:ident| $body:expr) => {{
        match $settings {
            $crate::config::BusSettings::Nats {
                url,
                topic,
                max_deliver,
            } => {
                let $bus = $crate::adapters::jetstream(url, topic, *max_deliver).await?;
                $body
            }
            $crate::config::BusSettings::ServiceBus {
                auth,
                topic,
                sessions,
                max_delivery_count,
                prefetch,
            } => {
                let $bus = $crate::adapters::servicebus(
                    auth,
                    topic,
                    *sessions,
                    *max_delivery_count,
                    *prefetch,
                )
                .await?;
                $body
            }
        }
    }};
}

/// Bind `$store` to the configured, connected store adapter and evaluate `$body`.
#[macro_export]
macro_rules! with_store {
    ($settings:expr, |$store:ident| $body:expr) => {{
        let settings: &$crate::config::StoreSettings = $settings;
        match settings {
            $crate::config::StoreSettings::Postgres { .. } => {
                let $store = $crate::adapters::postgres(settings).await?;
                $body
            }
            $crate::config::StoreSettings::Mssql { .. } => {
                let $store = $crate::adapters::mssql(settings).await?;
                $body
            }
        }
    }};
}

/// Start the bus's watch for dead letters the broker makes on its own
/// ([`mirror_bus::EventBus::watch_broker_dead_letters`]: JetStream's
/// max-deliveries advisories, Service Bus's `$deadletterqueue` sweep) and hand
/// each to `on_dead_letter` (the writer records its SQL row there).
pub async fn start_background<B: mirror_bus::EventBus>(
    bus: &B,
    subscription: &str,
    on_dead_letter: mirror_bus::DeadLetterHook,
) -> Result<(), BusError> {
    // The task runs for the life of the process.
    let _task = bus
        .watch_broker_dead_letters(subscription, on_dead_letter)
        .await?;
    Ok(())
}

/// Describe the settings for the start-up log line (no secrets).
pub fn describe(bus: &BusSettings, store: &StoreSettings) -> String {
    format!("{} → {}", bus.describe(), store.describe())
}
