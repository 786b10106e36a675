//! Test support shared by the integration tests: a fresh PostgreSQL database
//! and a fresh JetStream topic per test (so tests run in parallel and leave
//! nothing behind), gates for servers this machine cannot run, and event
//! builders.

use std::time::Duration;

pub mod bus_conformance;
pub mod conformance_ids;
pub mod consistency_run;
pub mod events;
pub mod factories;
pub mod firestore_emu;
pub mod firestore_fake;
pub mod http_sink;
pub mod servers;
pub mod store_conformance;
pub mod store_property;

/// PostgreSQL server used by the tests (`TEST_PG_URL`, default local trust auth).
pub fn pg_server_url() -> String {
    std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// NATS server used by the tests (`TEST_NATS_URL`, default local).
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Install the rustls crypto provider once (async-nats and azservicebus need one).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())[..prefix.len() + 13].to_owned()
}

/// A database created for one test and dropped when this value is dropped.
pub struct FreshDb {
    pub name: String,
    pub url: String,
    server: String,
}

impl FreshDb {
    pub async fn create() -> FreshDb {
        init();
        let server = pg_server_url();
        let name = unique("rm_test");
        let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach PostgreSQL at {server}: {e} (is it running? see README)")
            });
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TEST_PG_URL must end in /<database>"),
        };
        FreshDb { name, url, server }
    }

    /// A plain client on this database, for what a test checks or sets up
    /// behind the store's back.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {}: {e}", self.name));
        tokio::spawn(conn);
        client
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside or outside a runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&server, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

/// A JetStream topic (stream + dead-letter stream) for one test, deleted on drop.
pub struct FreshTopic {
    pub topic: String,
    pub url: String,
}

impl FreshTopic {
    pub fn new() -> FreshTopic {
        init();
        FreshTopic {
            topic: unique("rmt").replace('_', "-"),
            url: nats_url(),
        }
    }

    /// The dead-letter stream's name for this topic.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}-deadletter", self.topic)
    }
}

impl Default for FreshTopic {
    fn default() -> Self {
        FreshTopic::new()
    }
}

impl Drop for FreshTopic {
    fn drop(&mut self) {
        let (url, streams) = (
            self.url.clone(),
            [self.topic.clone(), self.dead_letter_stream()],
        );
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(&url)).await
                {
                    let js = async_nats::jetstream::new(client);
                    for s in streams {
                        let _ = js.delete_stream(&s).await;
                    }
                }
            })
        })
        .join();
    }
}

/// Run the writer over `bus` into `store` until the subscription is idle
/// (batches of 32, 2 workers), failing the test after 120 s.
pub async fn drain_writer<B, S>(
    bus: std::sync::Arc<B>,
    store: std::sync::Arc<S>,
) -> sql_writer::RunReport
where
    B: mirror_bus::EventBus,
    S: mirror_store::MirrorStore,
{
    let settings = sql_writer::WriterSettings {
        batch_size: 32,
        concurrency: 2,
        exit_when_idle: true,
        receive_wait: Duration::from_millis(300),
        metrics_flush_every: None,
        ..sql_writer::WriterSettings::default()
    };
    let deps = sql_writer::Deps { bus, store };
    tokio::time::timeout(
        Duration::from_secs(120),
        sql_writer::run(deps, settings, std::future::pending()),
    )
    .await
    .expect("writer drains within 120 s")
    .expect("writer runs")
}

/// Gate for a server this machine cannot run. Returns the value of `var` if set.
/// If unset, prints one `skipped: VAR not set` line and returns `None`, unless
/// `REQUIRE_<NAME>=1` is set, in which case it panics.
pub fn gate(var: &str, require_var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var(require_var)
                .map(|v| v == "1")
                .unwrap_or(false)
            {
                panic!("{var} is not set but {require_var}=1");
            }
            println!("skipped: {var} not set");
            None
        }
    }
}
