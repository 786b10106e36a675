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

use mirror_bus::{EventBus, OutboundMessage};
use mirror_tests::consistency_run::{current_docs, metric, seed, Pipeline};
use mirror_tests::firestore_fake::{value, FakeFirestore};

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
    let live = load_fixtures(&fake);
    assert!(live > 250, "{live} live fixture documents");

    // The pipeline mirrors the fixtures: seed events → JetStream → writer → PostgreSQL.
    let p = Pipeline::new().await;
    for e in seed().events().unwrap() {
        p.bus
            .publish(&OutboundMessage::from_event(&e))
            .await
            .unwrap();
    }
    let first = p.drain().await;
    assert_eq!(first.dead_lettered, 0, "{first:?}");

    // 1. Clean: every live document read over gRPC matches its row.
    let clean = p.consistency("demo", &[]).await;
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

    // 2. Damage behind the pipeline's back, on both sides: in SQL a block row
    // deleted and a message body altered; in "Firestore" a message edited (a
    // newer version the mirror never saw) and a follow deleted.
    let damage = p.damage().await;
    let mut fields = fake
        .fields(&damage.edited)
        .expect("the message is in the fake");
    fields.insert("bodyText".into(), value(&"edited in Firestore".into()));
    fields.insert("editedAt".into(), value(&"2025-12-01T10:00:00Z".into()));
    let at = mirror_schema::parse_time("t", "2025-12-01T10:00:00Z").unwrap();
    fake.update(&damage.edited, fields, at);
    assert!(fake.delete(&damage.unfollowed));

    // 3. Found by kind, reported, exported; repaired through the bus.
    let damaged = p.consistency("demo", &["--repair"]).await;
    assert_eq!(damaged.code, 1, "4 of ~300 is above 0.5 %");
    damage.assert_found(&damaged);
    assert_eq!(
        metric(
            &damaged.metrics,
            "mirror_consistency_findings",
            "module=\"all\",scope=\"full\",table=\"follow_edge\",kind=\"missing_in_source\""
        ),
        1.0
    );

    // 4. The writer applies the repairs; a second run is clean.
    let second = p.drain().await;
    assert_eq!(second.dead_lettered, 0, "{second:?}");
    assert_eq!(second.applied, 4, "{second:?}");
    let after = p.consistency("demo", &[]).await;
    assert_eq!(after.code, 0, "{}", after.report);
    assert_eq!(after.report["drift_pct"], 0.0, "{}", after.report);
    assert_eq!(p.body(&damage.edited).await, "edited in Firestore");
    let repaired: i64 = p
        .sql
        .query_one("SELECT (SELECT count(*) FROM mirror.follow_edge WHERE sync_source = 'repair') + (SELECT count(*) FROM mirror.dm_block WHERE sync_source = 'repair') + (SELECT count(*) FROM mirror.dm_message WHERE sync_source = 'repair')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        repaired, 4,
        "every repaired row records sync_source `repair`"
    );
}
