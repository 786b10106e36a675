//! `mirrorctl consistency --source firestore` against the **Firestore
//! emulator**, with the mirror fed the way production feeds it: the fixtures'
//! current documents are written to the emulator, `publisher`'s backfill
//! pages them over gRPC and publishes to JetStream, the real writer applies
//! them to PostgreSQL; then the command line as an operator types it compares,
//! finds damage on both sides, repairs through JetStream, and a second run
//! reports 0 drift.
//!
//! Gated: without `FIRESTORE_EMULATOR_HOST` it prints `skipped:
//! FIRESTORE_EMULATOR_HOST not set` (`REQUIRE_FIRESTORE=1` makes that a
//! failure). Start one with
//! `gcloud emulators firestore start --host-port=127.0.0.1:8086` (package
//! `google-cloud-cli-firestore-emulator`). Each run uses its own project id,
//! so runs never see each other's documents.
//!
//! The emulator sets update times itself (now), so `--lag 0`: nothing written
//! before the check is in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::EventBus;
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_tests::consistency_run::{consistency, current_docs, examples, metric, seed};
use mirror_tests::firestore_fake::value;
use mirror_tests::{FreshDb, FreshTopic};
use publisher::backfill::{backfill, BackfillOptions, Group};
use publisher::firestore::sdk::gcloud_sdk::google::firestore::v1 as pb;
use publisher::firestore::{FirestoreDb, FirestorePager};
use publisher::mapping::SourceInfo;
use publisher::sink::Shard;
use secrecy::SecretString;

/// Write (set) or delete documents in one commit per 400.
async fn commit(db: &FirestoreDb, sets: Vec<(String, serde_json::Value)>, deletes: Vec<String>) {
    let docs = db.get_documents_path().clone();
    let mut writes: Vec<pb::Write> = sets
        .into_iter()
        .map(|(path, fields)| pb::Write {
            update_mask: None,
            update_transforms: vec![],
            current_document: None,
            operation: Some(pb::write::Operation::Update(pb::Document {
                name: format!("{docs}/{path}"),
                fields: fields
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), value(v)))
                            .collect::<HashMap<_, _>>()
                    })
                    .unwrap_or_default(),
                create_time: None,
                update_time: None,
            })),
        })
        .collect();
    writes.extend(deletes.into_iter().map(|path| pb::Write {
        update_mask: None,
        update_transforms: vec![],
        current_document: None,
        operation: Some(pb::write::Operation::Delete(format!("{docs}/{path}"))),
    }));
    for chunk in writes.chunks(400) {
        db.client()
            .get()
            .commit(pb::CommitRequest {
                database: db.get_database_path().clone(),
                writes: chunk.to_vec(),
                transaction: vec![],
                request_options: None,
            })
            .await
            .expect("commit to the emulator");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_source_backfilled_mirror_damage_repair_converges() {
    if mirror_tests::gate("FIRESTORE_EMULATOR_HOST", "REQUIRE_FIRESTORE").is_none() {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let project = format!(
        "ops-consistency-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let fs = publisher::firestore::connect(&project, "(default)")
        .await
        .expect("connect to the emulator");
    let docs = current_docs(&seed());
    let live = docs.len();
    commit(
        &fs,
        docs.iter()
            .map(|d| (d.path.clone(), d.fields.clone()))
            .collect(),
        vec![],
    )
    .await;

    // The pipeline: backfill from the emulator → JetStream → writer → PostgreSQL.
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
    let opts = BackfillOptions {
        groups: Group::ALL.to_vec(),
        since: None,
        budget_reads: None,
        dry_run: false,
        page_size: 100,
        shard: Shard::SINGLE,
        source: SourceInfo::new(project.clone(), "(default)"),
        fresh: true,
        families: None,
        read_time: None,
        recovery: false,
    };
    let report = backfill(
        &opts,
        &FirestorePager::new(fs.clone()),
        bus.as_ref(),
        store.as_ref(),
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("backfill from the emulator");
    println!("backfill: {report:?}");
    let first = mirror_tests::drain_writer(bus.clone(), store.clone()).await;
    assert_eq!(first.dead_lettered, 0, "{first:?}");
    assert_eq!(first.applied, live as u64, "{first:?}");
    let (sql, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);

    // 1. Clean.
    let lag0 = ["--lag", "0"];
    let clean = consistency(&project, &db, &topic, &lag0).await;
    assert_eq!(clean.code, 0, "{}", clean.report);
    assert_eq!(clean.report["drift_pct"], 0.0, "{}", clean.report);
    assert_eq!(
        clean.report["total"]["source_docs"], live as u64,
        "{}",
        clean.report
    );

    // 2. Damage on both sides.
    let one = |q: &'static str| {
        let sql = &sql;
        async move { sql.query_one(q, &[]).await.expect(q).get::<_, String>(0) }
    };
    let edited = one("SELECT 'conversations/' || c.firestore_id || '/messages/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE NOT m.tombstone ORDER BY 1 LIMIT 1").await;
    let mut fields = docs
        .iter()
        .find(|d| d.path == edited)
        .expect("the message is a fixture document")
        .fields
        .clone();
    fields["bodyText"] = "edited in the emulator".into();
    let unfollowed = one("SELECT 'follows/' || follower_user_id || '/targets/' || target_user_id FROM mirror.follow_edge WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
    commit(
        &fs,
        vec![(edited.clone(), fields)],
        vec![unfollowed.clone()],
    )
    .await;
    let block_gone = one("SELECT user_id || '/' || target_user_id FROM mirror.dm_block WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
    sql.execute(
        "DELETE FROM mirror.dm_block WHERE user_id || '/' || target_user_id = $1",
        &[&block_gone],
    )
    .await
    .unwrap();
    let tampered = one("SELECT c.firestore_id || '/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE NOT m.tombstone ORDER BY 1 DESC LIMIT 1").await;
    sql.execute("UPDATE mirror.dm_message m SET body_text = 'tampered' FROM mirror.dm_conversation c WHERE c.conversation_id = m.conversation_id AND c.firestore_id || '/' || m.firestore_id = $1", &[&tampered]).await.unwrap();

    // 3. Found by kind; repaired through JetStream.
    let damaged = consistency(&project, &db, &topic, &["--lag", "0", "--repair"]).await;
    assert_eq!(damaged.code, 1, "{}", damaged.report);
    let total = &damaged.report["total"];
    for (kind, n) in [
        ("version_mismatch", 1),
        ("missing_in_source", 1),
        ("missing_in_sql", 1),
        ("field_mismatch", 1),
    ] {
        assert_eq!(total[kind], n, "{kind}: {}", damaged.report);
    }
    let examples = examples(&damaged.report);
    let edited_key = edited
        .trim_start_matches("conversations/")
        .replace("/messages/", "/");
    assert!(
        examples.contains(&format!("\"version_mismatch\" \"{edited_key}\"")),
        "{examples:?}"
    );
    assert!(
        (metric(
            &damaged.metrics,
            "mirror_consistency_drift_percent",
            "module=\"all\",scope=\"full\""
        ) - damaged.report["drift_pct"].as_f64().unwrap())
        .abs()
            < 1e-9
    );

    // 4. Drained: clean again.
    let second = mirror_tests::drain_writer(bus.clone(), store.clone()).await;
    assert_eq!(second.dead_lettered, 0, "{second:?}");
    let after = consistency(&project, &db, &topic, &lag0).await;
    assert_eq!(after.code, 0, "{}", after.report);
    assert_eq!(after.report["drift_pct"], 0.0, "{}", after.report);
    let body: String = sql
        .query_one("SELECT m.body_text FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE 'conversations/' || c.firestore_id || '/messages/' || m.firestore_id = $1", &[&edited])
        .await
        .unwrap()
        .get(0);
    assert_eq!(body, "edited in the emulator");
}
