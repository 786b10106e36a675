//! The adapters' factories, shared by every suite that runs against every
//! adapter (store and bus conformance, the store property, the chaos rig):
//! a fresh bus ([`BusFactory`]) or a fresh, migrated store ([`StoreFactory`])
//! per call. Gated adapters return `None` after printing their `skipped:`
//! line (see [`crate::gate`]).

use std::time::Duration;

use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::servicebus::{ServiceBusBus, ServiceBusConfig};
use mirror_bus::{EventBus, MONITORING_SUBSCRIPTION, SQL_WRITER_SUBSCRIPTION, TOPIC};
use mirror_store::mssql::{self, MssqlConfig, MssqlStore};
use mirror_store::postgres::{PgConfig, PgStore};

use crate::bus_conformance::{BusFactory, Fresh, Options};
use crate::store_conformance::StoreFactory;
use crate::{gate, FreshDb, FreshTopic};

// ---------------------------------------------------------------- JetStream

/// The JetStream config of a fresh topic with `options`.
pub fn jetstream_config(topic: &FreshTopic, options: Options) -> JetStreamConfig {
    JetStreamConfig {
        url: topic.url.clone(),
        topic: topic.topic.clone(),
        ack_wait: options.lock,
        max_deliver: options.max_deliver,
        ..JetStreamConfig::default()
    }
}

/// A JetStream bus on a fresh topic of the local server (`TEST_NATS_URL`).
pub async fn jetstream(options: Options) -> Fresh<JetStreamBus> {
    let topic = FreshTopic::new();
    let bus = JetStreamBus::connect(jetstream_config(&topic, options))
        .await
        .unwrap_or_else(|e| panic!("{e} (is nats-server -js running? see README)"));
    bus.ensure_topology().await.expect("ensure topology");
    Fresh {
        bus,
        lock: options.lock,
        max_deliver: options.max_deliver,
        guard: Box::new(topic),
    }
}

// ---------------------------------------------------------------- Service Bus

/// Cases share the deployed topic, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The connection string, or `None` after printing `skipped: SERVICEBUS_CONNECTION_STRING not set`.
fn connection_string() -> Option<String> {
    gate("SERVICEBUS_CONNECTION_STRING", "REQUIRE_SERVICEBUS")
}

fn servicebus_topic() -> String {
    std::env::var("SERVICEBUS_TOPIC")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| TOPIC.to_owned())
}

/// The subscriptions' lock duration as deployed.
pub fn servicebus_lock() -> Duration {
    let secs = std::env::var("SERVICEBUS_LOCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// The subscriptions' `maxDeliveryCount` as deployed (`SERVICEBUS_MAX_DELIVERY`,
/// default 5: deploy/azure/emulator/Config.json).
pub fn servicebus_max_delivery_count() -> u32 {
    std::env::var("SERVICEBUS_MAX_DELIVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(mirror_bus::DEFAULT_MAX_DELIVERIES)
}

/// Service Bus, when `SERVICEBUS_CONNECTION_STRING` is set: the deployed topic,
/// both subscriptions and their dead-letter queues purged, one user at a
/// time (the guard holds a process-wide lock).
pub fn servicebus() -> Option<impl BusFactory<Bus = ServiceBusBus>> {
    let cs = connection_string()?;
    Some(move |_options: Options| {
        let cs = cs.clone();
        async move {
            let serial = SERIAL.lock().await;
            let mut config = ServiceBusConfig::from_connection_string(&cs, &servicebus_topic())
                .expect("Service Bus config");
            config.max_delivery_count = servicebus_max_delivery_count();
            let bus = ServiceBusBus::connect(config)
                .await
                .unwrap_or_else(|e| panic!("{e} (is the Service Bus emulator running?)"));
            bus.ensure_topology().await.expect("ensure topology");
            let lock = servicebus_lock();
            // Cases settle what they receive; a message a failed case left
            // locked would only reappear after the lock (PT1M on the
            // emulator), longer than a case's budget, so it is not waited for.
            let quiet = Duration::from_secs(1);
            for (subscription, dlq) in [
                (SQL_WRITER_SUBSCRIPTION, false),
                (MONITORING_SUBSCRIPTION, false),
                (SQL_WRITER_SUBSCRIPTION, true),
                (MONITORING_SUBSCRIPTION, true),
            ] {
                bus.purge(subscription, dlq, quiet)
                    .await
                    .unwrap_or_else(|e| panic!("purge {subscription} (dead letters: {dlq}): {e}"));
            }
            Fresh {
                bus,
                lock,
                max_deliver: servicebus_max_delivery_count(),
                guard: Box::new(serial),
            }
        }
    })
}

// ---------------------------------------------------------------- PostgreSQL

/// A migrated PostgreSQL store on a fresh database of the local server.
pub async fn postgres() -> (PgStore, FreshDb) {
    let db = FreshDb::create().await;
    let mut config = PgConfig::from_url(db.url.clone());
    config.pool_size = 8;
    let store = PgStore::connect(&config)
        .await
        .expect("connect to the fresh database");
    let applied = store.migrate().await.expect("migrate");
    assert!(applied >= 3, "every migration applied, got {applied}");
    (store, db)
}

// ---------------------------------------------------------------- SQL Server

/// SQL Server, when `MSSQL_URL` is set: a migrated store on a database of
/// its own per call, dropped with the guard.
pub fn mssql() -> Option<impl StoreFactory<Store = MssqlStore>> {
    let ado = gate("MSSQL_URL", "REQUIRE_MSSQL")?;
    let base = MssqlConfig::from_ado(&ado).expect("MSSQL_URL is an ADO connection string");
    Some(move || fresh_mssql_store(base.clone()))
}

/// A database created for one case and dropped when this value is dropped.
pub struct FreshMssqlDb {
    config: MssqlConfig,
}

impl Drop for FreshMssqlDb {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Drop runs inside or outside a runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(mssql::drop_database(&config)) {
                eprintln!("could not drop test database {:?}: {e}", config.database());
            }
        })
        .join();
    }
}

/// A migrated SQL Server store on a new, empty database. Cases run in
/// parallel; `create_database_if_missing` runs one `CREATE DATABASE` at a
/// time within a process (Babelfish fails concurrent ones).
pub async fn fresh_mssql_store(base: MssqlConfig) -> (MssqlStore, FreshMssqlDb) {
    let name = format!(
        "rm_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let config = base.for_database(&name);
    mssql::create_database_if_missing(&config)
        .await
        .expect("create the test database");
    let guard = FreshMssqlDb {
        config: config.clone(),
    };
    let store = MssqlStore::connect(&config)
        .await
        .expect("connect to the test database");
    store.migrate().await.expect("migrate");
    (store, guard)
}
