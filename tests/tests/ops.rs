//! Operating the mirror, on real PostgreSQL and JetStream: the health and
//! metrics endpoints of a writer started with `run(deps, shutdown)` (real HTTP
//! requests), per-hop latency from the publish stamp and the broker's enqueue
//! time, and ledger pruning that leaves redeliveries harmless.

use mirror_store::prelude::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::{EventBus, OutboundMessage};
use mirror_runtime::health::{self, Health, WatchOptions};
use mirror_schema::MirrorEvent;
use mirror_store::ledger::{self, PruneOptions};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::ApplyOutcome;
use mirror_tests::{FreshDb, FreshTopic};
use secrecy::SecretString;
use sql_writer::{Deps, WriterSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn store(db: &FreshDb) -> PgStore {
    let store = PgStore::connect(&PgConfig {
        url: SecretString::from(db.url.clone()),
        pool_size: 4,
        statement_timeout: Duration::from_secs(30),
    })
    .await
    .expect("connect store");
    store.migrate().await.expect("migrate");
    store
}

async fn bus(topic: &FreshTopic) -> JetStreamBus {
    let bus = JetStreamBus::connect(JetStreamConfig {
        url: topic.url.clone(),
        topic: topic.topic.clone(),
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect bus");
    bus.ensure_topology().await.expect("topology");
    bus
}

fn fixture_events() -> Vec<MirrorEvent> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/realtime_mirror_seed.json"
    ))
    .unwrap();
    publisher::seed::load(&text).expect("fixture loads")
}

/// One HTTP/1.1 GET over a fresh TCP connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Poll `path` until it answers `want` (or fail after `limit`).
async fn until_status(addr: SocketAddr, path: &str, want: u16, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, body) = get(addr, path).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still answers {status} after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_writer_serves_health_readiness_and_metrics() {
    let db = FreshDb::create().await;
    let topic = FreshTopic::new();
    let store = Arc::new(store(&db).await);
    let bus = Arc::new(bus(&topic).await);
    let metrics = mirror_runtime::telemetry::install_metrics();
    sql_writer::telemetry::set_destination("nats", &topic.topic);
    let health = Health::global();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = health::serve(
        "127.0.0.1:0".parse().unwrap(),
        health.clone(),
        metrics,
        stopped(),
    )
    .await
    .expect("serve");
    let addr = server.addr;

    // Alive at once; not ready until the first probe answered.
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    let subscription = mirror_bus::SQL_WRITER_SUBSCRIPTION.to_owned();
    tokio::spawn(health::watch(
        bus.clone(),
        store.clone(),
        health.clone(),
        WatchOptions {
            subscription: Some(subscription.clone()),
            checkpoint: None,
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        },
        stopped(),
    ));
    until_status(addr, "/readyz", 200, Duration::from_secs(20)).await;

    // Publish the fixtures the way the publisher does (stamped), then run the writer.
    let events = fixture_events();
    for e in &events {
        bus.publish(&OutboundMessage::from_event_published_at(e, Utc::now()))
            .await
            .expect("publish");
    }
    let deps = Deps {
        bus: bus.clone(),
        store: store.clone(),
    };
    let settings = WriterSettings {
        batch_size: 32,
        concurrency: 2,
        receive_wait: Duration::from_millis(200),
        metrics_flush_every: None,
        ..WriterSettings::default()
    };
    let writer = tokio::spawn(sql_writer::run(deps, settings, stopped()));

    // Wait until every event was settled, as /metrics counts them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let settled: f64 = text
            .lines()
            .filter(|l| l.starts_with("mirror_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if settled as usize >= events.len() {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {settled} of {} events settled:\n{text}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // OpenTelemetry semantic-convention metrics and their attributes.
    for needle in [
        "messaging_client_consumed_messages{",
        "messaging_destination_subscription_name=\"sql-writer\"",
        "messaging_system=\"nats\"",
        "messaging_process_duration_bucket{",
        "messaging_client_sent_messages{",
        "db_client_operation_duration_bucket{",
        "db_system_name=\"postgresql\"",
        // the default apply mode is batched: one set-based call per batch
        "db_stored_procedure_name=\"mirror.apply_batch\"",
        // per-hop latency
        "sql_mirror_latency_ms_bucket{",
        "hop=\"source_to_publish\"",
        "hop=\"publish_to_enqueue\"",
        "hop=\"enqueue_to_commit\"",
        "mirror_events_in_flight",
        "mirror_subscription_backlog{",
        "mirror_probe_up{component=\"store\"} 1",
    ] {
        assert!(text.contains(needle), "/metrics lacks `{needle}`:\n{text}");
    }
    // The latency buckets are the documented ones (dense around 200/250 ms).
    assert!(text.contains("le=\"250\""), "{text}");

    // Paused for an outage: not ready, still alive; resumed: ready again.
    sql_writer::telemetry::intake_paused(true);
    let why = until_status(addr, "/readyz", 503, Duration::from_secs(5)).await;
    assert!(why.contains("paused"), "{why}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    sql_writer::telemetry::intake_paused(false);
    until_status(addr, "/readyz", 200, Duration::from_secs(5)).await;

    // Stop everything with the one shutdown signal.
    stop_tx.send(true).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer stops")
        .unwrap()
        .expect("writer ok");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("server stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_store() {
    let db = FreshDb::create().await;
    let topic = FreshTopic::new();
    let bus = Arc::new(bus(&topic).await);
    let store = Arc::new(store(&db).await);
    let health = Health::new();
    let metrics = mirror_runtime::telemetry::install_metrics();
    let server = health::serve(
        "127.0.0.1:0".parse().unwrap(),
        health.clone(),
        metrics,
        std::future::pending(),
    )
    .await
    .unwrap();
    tokio::spawn(health::watch(
        bus,
        store,
        health.clone(),
        WatchOptions {
            subscription: None,
            checkpoint: None,
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(3),
        },
        std::future::pending(),
    ));
    until_status(server.addr, "/readyz", 200, Duration::from_secs(20)).await;
    // The database goes away under the job: not ready, still alive.
    let (admin, conn) =
        tokio_postgres::connect(&mirror_tests::pg_server_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .await
        .unwrap();
    let why = until_status(server.addr, "/readyz", 503, Duration::from_secs(20)).await;
    assert!(why.contains("store does not answer"), "{why}");
    assert_eq!(get(server.addr, "/healthz").await.0, 200);
}

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM mirror.applied_event", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_the_ledger_keeps_redeliveries_harmless() {
    let db = FreshDb::create().await;
    let store = store(&db).await;
    let events = fixture_events();
    for e in &events {
        store.apply(e).await.expect("apply");
    }
    let before = store.snapshot().await.unwrap();
    let client = db.client().await;
    let total = count(&client).await;
    assert!(total > 100, "{total}");
    // Age all but 10 rows by 40 days.
    client
        .execute(
            "UPDATE mirror.applied_event SET applied_at = now() - interval '40 days'
              WHERE event_id NOT IN (SELECT event_id FROM mirror.applied_event ORDER BY event_id LIMIT 10)",
            &[],
        )
        .await
        .unwrap();

    // Bounded by max_rows, in batches of 7.
    let cutoff = Utc::now() - chrono::Duration::days(30);
    let options = PruneOptions {
        batch: 7,
        pause: Duration::ZERO,
        max_rows: Some(20),
    };
    assert_eq!(ledger::prune(&store, cutoff, options).await.unwrap(), 20);
    assert_eq!(count(&client).await, total - 20);
    // Then everything older than the window; the 10 recent rows stay.
    let options = PruneOptions {
        max_rows: None,
        ..options
    };
    let rest = ledger::prune(&store, cutoff, options).await.unwrap();
    assert_eq!(rest as i64, total - 30);
    assert_eq!(count(&client).await, 10);
    assert_eq!(ledger::prune(&store, cutoff, options).await.unwrap(), 0);

    // Every event redelivered after its ledger row is gone: none is applied
    // again (the version guard makes it stale), and no table changes —
    // history rows included.
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for e in &events {
        let o = store.apply(e).await.expect("re-apply");
        assert_ne!(o, ApplyOutcome::Applied, "{} applied twice", e.id());
        *outcomes.entry(o.as_str()).or_default() += 1;
    }
    eprintln!("redelivered after pruning: {outcomes:?}");
    let after = store.snapshot().await.unwrap();
    let diff = mirror_store::MirrorState::diff(&before, &after);
    assert!(diff.is_empty(), "redeliveries changed the mirror:\n{diff}");
}
