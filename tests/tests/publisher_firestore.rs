//! The publisher against the Firestore emulator: live listen → events,
//! kill and restart from the checkpoint, deletes, then a backfill that
//! publishes the same ids.
//!
//! Gated: without `FIRESTORE_EMULATOR_HOST` it prints `skipped:
//! FIRESTORE_EMULATOR_HOST not set`; `REQUIRE_FIRESTORE=1` makes that a
//! failure (CI: `.github/workflows/integration-firestore.yml`). The bus and
//! the store are the publisher's in-memory fakes, so this test needs only the
//! emulator; the JetStream and PostgreSQL adapters have their own suites.

use std::time::Duration;

use mirror_tests::firestore_emu::{self, array, commit, is, map, s, ts, wait_for, W};
use publisher::firestore::FirestoreDb;
use publisher::live::{LiveConfig, CHECKPOINT_MODULE};
use publisher::mapping::SourceInfo;
use publisher::sink::Shard;
use publisher::testing::{MemoryBus, MemoryStore};

fn start(
    db: &FirestoreDb,
    project: &str,
    bus: &MemoryBus,
    store: &MemoryStore,
) -> (
    tokio::task::JoinHandle<Result<publisher::live::LiveReport, publisher::live::LiveError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let config = LiveConfig::new(SourceInfo::new(project, "(default)"), Shard::SINGLE);
    firestore_emu::start(db, config, bus, store)
}

#[tokio::test]
async fn live_restart_delete_and_backfill_against_the_emulator() {
    if mirror_tests::gate("FIRESTORE_EMULATOR_HOST", "REQUIRE_FIRESTORE").is_none() {
        return;
    }
    mirror_tests::init();
    let (project, db) = firestore_emu::fresh_project().await;

    let participant = |u: &str, role: &str| {
        map(vec![
            ("userId", s(u)),
            ("role", s(role)),
            ("joinedAt", ts(1_700_000_000)),
        ])
    };
    commit(
        &db,
        vec![
            W::Set(
                "conversations/c1".into(),
                vec![
                    ("type", s("direct")),
                    (
                        "participants",
                        array(vec![
                            participant("u1", "owner"),
                            participant("u2", "member"),
                        ]),
                    ),
                    ("createdAt", ts(1_700_000_000)),
                    ("updatedAt", ts(1_700_000_000)),
                ],
            ),
            W::Set(
                "conversations/c1/messages/m1".into(),
                vec![
                    ("authorUserId", s("u1")),
                    ("bodyText", s("hi")),
                    ("createdAt", ts(1_700_000_001)),
                    ("updatedAt", ts(1_700_000_001)),
                ],
            ),
            W::Set(
                "follows/u1/targets/u2".into(),
                vec![
                    ("state", s("pending")),
                    ("source", s("web")),
                    ("createdAt", ts(1_700_000_002)),
                    ("updatedAt", ts(1_700_000_002)),
                ],
            ),
            W::Set(
                "blocks/u3/targets/u4".into(),
                vec![
                    ("createdAt", ts(1_700_000_003)),
                    ("source", s("client")),
                    ("updatedAt", ts(1_700_000_003)),
                ],
            ),
            W::Set(
                "users/u1/messages/x".into(),
                vec![("updatedAt", ts(1_700_000_004))],
            ),
            W::Set(
                "follows/u5/targets/u6".into(),
                vec![
                    ("state", s("friends")),
                    ("source", s("web")),
                    ("createdAt", ts(1)),
                    ("updatedAt", ts(1)),
                ],
            ),
        ],
    )
    .await;

    // 1. Live: the initial state arrives as creates.
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let (handle, _stop) = start(&db, &project, &bus, &store);
    wait_for(&bus, "conversation create", |e| {
        is(e, "dm.conversation.create", "conversations/c1")
    })
    .await;
    let m1 = wait_for(&bus, "message create", |e| {
        is(e, "dm.message.create", "conversations/c1/messages/m1")
    })
    .await;
    wait_for(&bus, "follow create", |e| {
        is(e, "follow.edge.create", "follows/u1/targets/u2")
    })
    .await;
    wait_for(&bus, "block create", |e| {
        is(e, "dm.block.create", "blocks/u3/targets/u4")
    })
    .await;
    assert!(bus
        .events()
        .iter()
        .all(|e| !e.subject().to_string().starts_with("users/")));
    // The malformed follow edge is dead-lettered, naming its path and field.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.dead_letters().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dl = store.dead_letters();
    assert!(
        dl.iter()
            .any(|d| d.subject.as_deref() == Some("follows/u5/targets/u6")
                && d.error.contains("state")),
        "{dl:#?}"
    );
    assert!(
        store.checkpoint(CHECKPOINT_MODULE, "0-of-1").is_some(),
        "a checkpoint after the published snapshot"
    );

    // 2. Kill (no graceful shutdown), change things while it is down, restart from the checkpoint.
    handle.abort();
    let _ = handle.await;
    commit(
        &db,
        vec![W::Set(
            "conversations/c1/messages/m1".into(),
            vec![
                ("authorUserId", s("u1")),
                ("bodyText", s("hi, edited")),
                ("createdAt", ts(1_700_000_001)),
                ("editedAt", ts(1_700_000_010)),
                ("updatedAt", ts(1_700_000_010)),
            ],
        )],
    )
    .await;
    let (handle, stop) = start(&db, &project, &bus, &store);
    let edit = wait_for(&bus, "message update after restart", |e| {
        is(e, "dm.message.update", "conversations/c1/messages/m1")
    })
    .await;
    assert!(edit.time() > m1.time());

    // 3. A delete while running: the delete event at the observed read time.
    commit(
        &db,
        vec![
            W::Delete("conversations/c1/messages/m1".into()),
            W::Delete("follows/u1/targets/u2".into()),
        ],
    )
    .await;
    let del = wait_for(&bus, "message delete", |e| {
        is(e, "dm.message.delete", "conversations/c1/messages/m1")
    })
    .await;
    assert!(del.time() >= edit.time());
    wait_for(&bus, "follow delete", |e| {
        is(e, "follow.edge.delete", "follows/u1/targets/u2")
    })
    .await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("stops on shutdown")
        .unwrap()
        .expect("the live publisher runs until stopped");

    // 4. Backfill: what still exists, with the ids the live path used for the same versions.
    let backfill_bus = MemoryBus::new();
    let opts = firestore_emu::backfill_options(&project, 2);
    let pager = publisher::firestore::FirestorePager::new(db.clone());
    let report = publisher::backfill::backfill(
        &opts,
        &pager,
        &backfill_bus,
        &store,
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("backfill");
    let live_ids: Vec<uuid::Uuid> = bus.events().iter().map(|e| e.id()).collect();
    let backfilled = backfill_bus.events();
    let subjects: Vec<String> = backfilled.iter().map(|e| e.subject().to_string()).collect();
    assert!(
        subjects.contains(&"conversations/c1".to_owned()),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"blocks/u3/targets/u4".to_owned()),
        "{subjects:?}"
    );
    assert!(
        !subjects.iter().any(|p| p.contains("messages/m1")),
        "deleted documents are not backfilled"
    );
    for e in &backfilled {
        assert!(
            live_ids.contains(&e.id()),
            "backfill published {} with an id the live path did not",
            e.subject()
        );
    }
    assert!(report.groups.iter().all(|(_, g)| g.done));

    // A dry run counts without publishing.
    let dry = publisher::backfill::BackfillOptions {
        dry_run: true,
        fresh: true,
        families: None,
        read_time: None,
        recovery: false,
        ..opts
    };
    let report = publisher::backfill::backfill(
        &dry,
        &pager,
        &MemoryBus::new(),
        &store,
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("dry run");
    let conversations = report
        .groups
        .iter()
        .find(|(g, _)| *g == publisher::backfill::Group::Conversations)
        .unwrap();
    assert_eq!(conversations.1.docs, 1);
}
