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

use mirror_tests::consistency_run::{current_docs, seed, Pipeline};
use mirror_tests::firestore_fake::value;
use publisher::backfill::{backfill, BackfillOptions, Group};
use publisher::firestore::sdk::gcloud_sdk::google::firestore::v1 as pb;
use publisher::firestore::{FirestoreDb, FirestorePager};
use publisher::mapping::SourceInfo;
use publisher::sink::Shard;

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
    let p = Pipeline::new().await;
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
        p.bus.as_ref(),
        p.store.as_ref(),
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("backfill from the emulator");
    println!("backfill: {report:?}");
    let first = p.drain().await;
    assert_eq!(first.dead_lettered, 0, "{first:?}");
    assert_eq!(first.applied, live as u64, "{first:?}");

    // 1. Clean.
    let lag0 = ["--lag", "0"];
    let clean = p.consistency(&project, &lag0).await;
    assert_eq!(clean.code, 0, "{}", clean.report);
    assert_eq!(clean.report["drift_pct"], 0.0, "{}", clean.report);
    assert_eq!(
        clean.report["total"]["source_docs"], live as u64,
        "{}",
        clean.report
    );

    // 2. Damage on both sides (the emulator's side: an edit and a delete).
    let damage = p.damage().await;
    let mut fields = docs
        .iter()
        .find(|d| d.path == damage.edited)
        .expect("the message is a fixture document")
        .fields
        .clone();
    fields["bodyText"] = "edited in the emulator".into();
    commit(
        &fs,
        vec![(damage.edited.clone(), fields)],
        vec![damage.unfollowed.clone()],
    )
    .await;

    // 3. Found by kind; repaired through JetStream.
    let damaged = p.consistency(&project, &["--lag", "0", "--repair"]).await;
    assert_eq!(damaged.code, 1, "{}", damaged.report);
    damage.assert_found(&damaged);

    // 4. Drained: clean again.
    let second = p.drain().await;
    assert_eq!(second.dead_lettered, 0, "{second:?}");
    let after = p.consistency(&project, &lag0).await;
    assert_eq!(after.code, 0, "{}", after.report);
    assert_eq!(after.report["drift_pct"], 0.0, "{}", after.report);
    assert_eq!(p.body(&damage.edited).await, "edited in the emulator");
}
