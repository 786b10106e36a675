//! `mirrorctl consistency --source firestore` end to end, as the operator
//! runs it (the command line, parsed by clap, through `cli::run`): the
//! source is read over gRPC by the publisher's `FirestorePager` and the
//! `firestore` crate's real client, from an in-process fake Firestore
//! (`mirror_tests::firestore_fake`, reached through `FIRESTORE_EMULATOR_HOST`
//! like the emulator) holding the fixtures' current documents; the mirror is
//! real PostgreSQL fed by the real writer from JetStream.
//!
//! What it shows: a clean mirror compares clean; damage on both sides
//! (Firestore documents changed or deleted behind the pipeline's back, SQL
//! rows deleted or altered) is found by kind; `--repair` republishes through
//! JetStream, the writer drains, and a second run reports 0 drift. The
//! metrics textfile carries the run's drift.
//!
//! What it does not show: the fake is not Firestore. It answers `RunQuery`
//! for the query shapes the pager sends, with no indexes, quotas, auth or
//! read-time consistency. A run against the emulator or a real project is
//! not part of this test (none runs here).
//!
//! Its own test binary: `FIRESTORE_EMULATOR_HOST` is process-wide.

use std::sync::Arc;
use std::time::Duration;

use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::{EventBus, OutboundMessage};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_tests::consistency_run::{consistency, current_docs, examples, metric, seed};
use mirror_tests::firestore_fake::FakeFirestore;
use mirror_tests::{FreshDb, FreshTopic};
use secrecy::SecretString;

/// Put the fixtures' current documents into the fake; returns how many.
fn load_fixtures(fake: &FakeFirestore) -> usize {
    let docs = current_docs(&seed());
    for d in &docs {
        fake.put(&d.path, &d.fields, d.create_time, d.update_time);
    }
    docs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_source_over_grpc_finds_damage_and_repair_through_jetstream_converges() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (fake, addr) = FakeFirestore::start().await;
    // The only test in this binary; set before any client reads it.
    std::env::set_var("FIRESTORE_EMULATOR_HOST", addr.to_string());

    let seed = seed();
    let live = load_fixtures(&fake);
    assert!(live > 250, "{live} live fixture documents");

    // The pipeline mirrors the fixtures: seed events → JetStream → writer → PostgreSQL.
    let db = FreshDb::create().await;
    let topic = FreshTopic::new();
    let store = Arc::new(
        PgStore::connect(&PgConfig {
            url: SecretString::from(db.url.clone()),
            pool_size: 4,
            statement_timeout: Duration::from_secs(30),
        })
        .await
        .expect("connect store"),
    );
    store.migrate().await.expect("migrate");
    let bus = Arc::new(
        JetStreamBus::connect(JetStreamConfig {
            url: topic.url.clone(),
            topic: topic.topic.clone(),
            ..JetStreamConfig::default()
        })
        .await
        .expect("connect bus"),
    );
    bus.ensure_topology().await.expect("topology");
    for e in seed.events().unwrap() {
        bus.publish(&OutboundMessage::from_event(&e)).await.unwrap();
    }
    let first = mirror_tests::drain_writer(bus.clone(), store.clone()).await;
    assert_eq!(first.dead_lettered, 0, "{first:?}");
    let (sql, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);

    // 1. Clean: every live document read over gRPC matches its row.
    let clean = consistency("demo", &db, &topic, &[]).await;
    let total = &clean.report["total"];
    assert_eq!(clean.code, 0, "{}", clean.report);
    assert_eq!(clean.report["drift_pct"], 0.0, "{}", clean.report);
    assert_eq!(total["source_docs"], live as u64, "{}", clean.report);
    assert_eq!(total["sql_rows"], total["source_docs"], "{}", clean.report);
    assert_eq!(clean.report["unmappable"].as_array().unwrap().len(), 0);
    assert!(clean.report["source"]
        .as_str()
        .unwrap()
        .starts_with("firestore:projects/demo"));
    let (queries, returned) = fake.reads();
    assert_eq!(returned, live as u64, "each document read once");
    assert_eq!(queries, 3, "one page per collection group at 500 per page");
    assert_eq!(
        metric(
            &clean.metrics,
            "mirror_consistency_drift_percent",
            "module=\"all\",scope=\"full\""
        ),
        0.0
    );

    // 2. Damage behind the pipeline's back, on both sides.
    let one = |q: &'static str| {
        let sql = &sql;
        async move { sql.query_one(q, &[]).await.expect(q).get::<_, String>(0) }
    };
    // Firestore: a message edited (a newer version the mirror never saw) ...
    let edited = one("SELECT 'conversations/' || c.firestore_id || '/messages/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE NOT m.tombstone ORDER BY 1 LIMIT 1").await;
    let mut fields = fake.fields(&edited).expect("the message is in the fake");
    fields.insert(
        "bodyText".into(),
        mirror_tests::firestore_fake::value(&"edited in Firestore".into()),
    );
    fields.insert(
        "editedAt".into(),
        mirror_tests::firestore_fake::value(&"2025-12-01T10:00:00Z".into()),
    );
    let at = mirror_schema::parse_time("t", "2025-12-01T10:00:00Z").unwrap();
    fake.update(&edited, fields, at);
    // ... and a follow deleted (a delete the mirror never saw).
    let unfollowed = one("SELECT 'follows/' || follower_user_id || '/targets/' || target_user_id FROM mirror.follow_edge WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
    assert!(fake.delete(&unfollowed));
    // SQL: a block row gone, a message body altered.
    let block_gone = one("SELECT user_id || '/' || target_user_id FROM mirror.dm_block WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
    sql.execute(
        "DELETE FROM mirror.dm_block WHERE user_id || '/' || target_user_id = $1",
        &[&block_gone],
    )
    .await
    .unwrap();
    let tampered = one("SELECT c.firestore_id || '/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE NOT m.tombstone ORDER BY 1 DESC LIMIT 1").await;
    sql.execute("UPDATE mirror.dm_message m SET body_text = 'tampered' FROM mirror.dm_conversation c WHERE c.conversation_id = m.conversation_id AND c.firestore_id || '/' || m.firestore_id = $1", &[&tampered]).await.unwrap();

    // 3. Found by kind, reported, exported; repaired through the bus.
    let damaged = consistency("demo", &db, &topic, &["--repair"]).await;
    let total = &damaged.report["total"];
    assert_eq!(damaged.code, 1, "4 of ~300 is above 0.5 %");
    assert_eq!(total["version_mismatch"], 1, "{}", damaged.report);
    assert_eq!(total["missing_in_source"], 1, "{}", damaged.report);
    assert_eq!(total["missing_in_sql"], 1, "{}", damaged.report);
    assert_eq!(total["field_mismatch"], 1, "{}", damaged.report);
    let examples = examples(&damaged.report);
    let edited_key = edited
        .trim_start_matches("conversations/")
        .replace("/messages/", "/");
    let unfollowed_key = unfollowed
        .trim_start_matches("follows/")
        .replace("/targets/", "/");
    for want in [
        format!("\"version_mismatch\" \"{edited_key}\""),
        format!("\"missing_in_source\" \"{unfollowed_key}\""),
        format!("\"missing_in_sql\" \"{block_gone}\""),
        format!("\"field_mismatch\" \"{tampered}\""),
    ] {
        assert!(examples.contains(&want), "{want} not in {examples:?}");
    }
    let drift = damaged.report["drift_pct"].as_f64().unwrap();
    assert!(
        (metric(
            &damaged.metrics,
            "mirror_consistency_drift_percent",
            "module=\"all\",scope=\"full\""
        ) - drift)
            .abs()
            < 1e-9
    );
    assert_eq!(
        metric(
            &damaged.metrics,
            "mirror_consistency_findings",
            "module=\"all\",scope=\"full\",table=\"follow_edge\",kind=\"missing_in_source\""
        ),
        1.0
    );

    // 4. The writer applies the repairs; a second run is clean.
    let second = mirror_tests::drain_writer(bus.clone(), store.clone()).await;
    assert_eq!(second.dead_lettered, 0, "{second:?}");
    assert_eq!(second.applied, 4, "{second:?}");
    let after = consistency("demo", &db, &topic, &[]).await;
    assert_eq!(after.code, 0, "{}", after.report);
    assert_eq!(after.report["drift_pct"], 0.0, "{}", after.report);
    let body: String = sql
        .query_one("SELECT m.body_text FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE 'conversations/' || c.firestore_id || '/messages/' || m.firestore_id = $1", &[&edited])
        .await
        .unwrap()
        .get(0);
    assert_eq!(body, "edited in Firestore");
    let repaired: i64 = sql
        .query_one("SELECT (SELECT count(*) FROM mirror.follow_edge WHERE sync_source = 'repair') + (SELECT count(*) FROM mirror.dm_block WHERE sync_source = 'repair') + (SELECT count(*) FROM mirror.dm_message WHERE sync_source = 'repair')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        repaired, 4,
        "every repaired row records sync_source `repair`"
    );
}
