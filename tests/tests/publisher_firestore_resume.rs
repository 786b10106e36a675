//! The publisher's listen path against Google's Firestore emulator, beyond
//! the happy path of `publisher_firestore.rs`: resuming from the checkpoint
//! after changes made while it was down, starting at a read time, a
//! rejected resume token, key-range shards, and a backfill of 2,000
//! documents with its read count.
//!
//! Gated: without `FIRESTORE_EMULATOR_HOST` each test prints `skipped:
//! FIRESTORE_EMULATOR_HOST not set`; `REQUIRE_FIRESTORE=1` makes that a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mirror_tests::firestore_emu::{self, commit, fresh_project, is, message, start, W};
use publisher::listen::Notice;
use publisher::live::{LiveConfig, CHECKPOINT_MODULE};
use publisher::mapping::SourceInfo;
use publisher::sink::{KeyRange, Shard};
use publisher::testing::{MemoryBus, MemoryStore};

fn gate() -> bool {
    if mirror_tests::gate("FIRESTORE_EMULATOR_HOST", "REQUIRE_FIRESTORE").is_none() {
        return false;
    }
    mirror_tests::init();
    true
}

fn msg(c: usize, m: usize) -> String {
    format!("conversations/c{c}/messages/m{m}")
}

/// Which subjects exist after the bus's events are applied in order.
fn folded(events: &[mirror_schema::MirrorEvent]) -> BTreeSet<String> {
    let mut state = BTreeMap::new();
    for e in events {
        let present = !e.event_type().as_str().ends_with(".delete");
        state.insert(e.subject().to_string(), present);
    }
    state
        .into_iter()
        .filter_map(|(s, present)| present.then_some(s))
        .collect()
}

/// Waits until the publisher saved a checkpoint at or after `t`.
async fn checkpointed_after(store: &MemoryStore, shard: &str, t: chrono::DateTime<chrono::Utc>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(cp) = store.checkpoint(CHECKPOINT_MODULE, shard) {
            if cp.last_processed_at.is_some_and(|r| r >= t) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint at or after {t} within 30 s: {:?}",
            store.checkpoint(CHECKPOINT_MODULE, shard)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn resumes_from_the_checkpoint_with_creates_updates_and_deletes_made_while_down() {
    if !gate() {
        return;
    }
    let (project, db) = fresh_project().await;
    let seeded = commit(
        &db,
        (0..10)
            .map(|m| W::Set(msg(m % 3, m), message("v1", 1_700_000_001)))
            .collect(),
    )
    .await;
    let config = || LiveConfig::new(SourceInfo::new(&project, "(default)"), Shard::SINGLE);
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let (handle, stop) = start(&db, config(), &bus, &store);
    checkpointed_after(&store, "0-of-1", seeded).await;
    let _ = stop.send(());
    handle.await.unwrap().expect("stops cleanly");
    let before = bus.events();
    assert_eq!(before.len(), 10, "one create per document");

    // While it is down: 3 updates, 3 deletes, 3 creates.
    let mut writes = vec![];
    for m in 0..3 {
        writes.push(W::Set(msg(m % 3, m), message("v2", 1_700_000_100)));
    }
    for m in 3..6 {
        writes.push(W::Delete(msg(m % 3, m)));
    }
    for m in 10..13 {
        writes.push(W::Set(msg(m % 3, m), message("new", 1_700_000_100)));
    }
    let changed = commit(&db, writes).await;

    let (handle, stop) = start(&db, config(), &bus, &store);
    checkpointed_after(&store, "0-of-1", changed).await;
    let _ = stop.send(());
    let report = handle.await.unwrap().expect("stops cleanly");
    let after: Vec<_> = bus.events()[before.len()..].to_vec();
    let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &after {
        kinds
            .entry(e.subject().to_string())
            .or_default()
            .push(e.event_type().as_str().to_owned());
    }
    // Exactly the 9 changed documents, once each, as the right kind: the
    // unchanged ones are not re-sent (the resume token covered them).
    let expected: BTreeMap<String, Vec<String>> = (0..3)
        .map(|m| (msg(m % 3, m), "dm.message.update"))
        .chain((3..6).map(|m| (msg(m % 3, m), "dm.message.delete")))
        .chain((10..13).map(|m| (msg(m % 3, m), "dm.message.create")))
        .map(|(s, k)| (s, vec![k.to_owned()]))
        .collect();
    assert_eq!(kinds, expected, "report: {report:?}");
    let now: BTreeSet<String> = (0..13)
        .filter(|m| !(3..6).contains(m))
        .map(|m| msg(m % 3, m))
        .collect();
    assert_eq!(folded(&bus.events()), now);
}

#[tokio::test]
async fn a_garbage_resume_token_resets_the_targets_and_the_membership_keeps_it_exact() {
    if !gate() {
        return;
    }
    let (project, db) = fresh_project().await;
    let seeded = commit(
        &db,
        (0..4)
            .map(|m| W::Set(msg(0, m), message("v1", 1_700_000_001)))
            .collect(),
    )
    .await;
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let config = LiveConfig::new(SourceInfo::new(&project, "(default)"), Shard::SINGLE);
    let (handle, stop) = start(&db, config.clone(), &bus, &store);
    checkpointed_after(&store, "0-of-1", seeded).await;
    let _ = stop.send(());
    handle.await.unwrap().expect("stops cleanly");

    // Corrupt every saved token (as an expired one would be refused).
    let mut cp = store.checkpoint(CHECKPOINT_MODULE, "0-of-1").unwrap();
    let mut state =
        publisher::listen::ResumeState::decode(cp.cursor_token.as_deref().unwrap()).unwrap();
    for t in state.tokens.values_mut() {
        *t = b"not a token".to_vec();
    }
    cp.cursor_token = Some(state.encode());
    mirror_store::CheckpointStore::save_checkpoint(&store, &cp)
        .await
        .unwrap();
    let changed = commit(
        &db,
        vec![
            W::Delete(msg(0, 0)),
            W::Set(msg(0, 1), message("v2", 1_700_000_100)),
        ],
    )
    .await;
    let (handle, stop) = start(&db, config, &bus, &store);
    checkpointed_after(&store, "0-of-1", changed).await;
    let _ = stop.send(());
    let report = handle
        .await
        .unwrap()
        .expect("recovers from the rejected token");
    // Observed on the emulator: it does not reject the garbage token
    // (production answers INVALID_ARGUMENT, which the core handles by
    // re-listening without tokens: see the scripted-transport tests); it
    // resets the targets and resends their documents. The persisted
    // membership makes that exact: only the two changes are published.
    assert_eq!(report.streams, 1, "{report:?}");
    assert!(
        report
            .notices
            .iter()
            .any(|n| matches!(n, Notice::TargetReset { target_id: 2 })),
        "{report:?}"
    );
    assert_eq!(bus.events().len(), 4 + 2, "{report:?}");
    let expected: BTreeSet<String> = (1..4).map(|m| msg(0, m)).collect();
    assert_eq!(folded(&bus.events()), expected);
    assert!(bus
        .events()
        .iter()
        .any(|e| is(e, "dm.message.update", &msg(0, 1))));
}

#[tokio::test]
async fn starts_at_a_read_time() {
    if !gate() {
        return;
    }
    let (project, db) = fresh_project().await;
    commit(
        &db,
        (0..3)
            .map(|m| W::Set(msg(0, m), message("v1", 1_700_000_001)))
            .collect(),
    )
    .await;
    let pinned = commit(&db, vec![W::Set(msg(1, 9), message("v1", 1_700_000_001))]).await;
    let later = commit(
        &db,
        vec![
            W::Set(msg(0, 0), message("v2", 1_700_000_100)),
            W::Delete(msg(0, 1)),
        ],
    )
    .await;
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let mut config = LiveConfig::new(SourceInfo::new(&project, "(default)"), Shard::SINGLE);
    config.start_read_time = Some(pinned);
    let (handle, stop) = start(&db, config, &bus, &store);
    checkpointed_after(&store, "0-of-1", later).await;
    let _ = stop.send(());
    let report = handle.await.unwrap().expect("stops cleanly");
    let seen: Vec<String> = bus
        .events()
        .iter()
        .map(|e| format!("{} {}", e.event_type(), e.subject()))
        .collect();
    eprintln!("from read time {pinned}: {seen:#?} {report:?}");
    // Whatever the emulator sends for the unchanged documents, what is
    // mirrored in the end is what exists.
    // Observed on the emulator: the listen at a read time sends the current
    // state of every document (m2, unchanged since `pinned`, too) and no
    // delete for m1, deleted after `pinned`; so the core says deletions may
    // be incomplete for each target, which is what a recovery backfill is for.
    assert_eq!(
        folded(&bus.events()),
        [msg(0, 0), msg(0, 2), msg(1, 9)].into(),
        "{seen:#?}"
    );
    assert!(!seen.iter().any(|x| x.ends_with(&msg(0, 1))), "{seen:#?}");
    assert!(
        report
            .notices
            .iter()
            .any(|n| matches!(n, Notice::DeletionsMayBeIncomplete { target_id: 2 })),
        "{report:?}"
    );
}

#[tokio::test]
async fn two_key_range_shards_cover_the_collection_groups_once() {
    if !gate() {
        return;
    }
    let (project, db) = fresh_project().await;
    // Conversation ids starting across the id alphabet, so both shards own some.
    let alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let convs: Vec<String> = alphabet
        .chars()
        .step_by(3)
        .map(|c| format!("conversations/{c}x"))
        .collect();
    let last = commit(
        &db,
        convs
            .iter()
            .map(|c| W::Set(format!("{c}/messages/m"), message("v1", 1_700_000_001)))
            .collect(),
    )
    .await;
    let store = MemoryStore::new();
    let mut runs = vec![];
    for i in 0..2 {
        let shard = Shard::new(i, 2).unwrap();
        let mut config = LiveConfig::new(SourceInfo::new(&project, "(default)"), shard);
        config.range = KeyRange::of_shard(shard, None).unwrap();
        let bus = MemoryBus::new();
        let (handle, stop) = start(&db, config, &bus, &store);
        runs.push((shard, bus, handle, stop));
    }
    let mut all = BTreeMap::new();
    for (shard, bus, handle, stop) in runs {
        checkpointed_after(&store, &shard.id(), last).await;
        let _ = stop.send(());
        handle.await.unwrap().expect("stops cleanly");
        let got = bus.events();
        assert!(!got.is_empty(), "shard {} got nothing", shard.id());
        for e in got {
            if let Some(other) = all.insert(e.subject().to_string(), shard.id()) {
                panic!("{} published by {other} and {}", e.subject(), shard.id());
            }
        }
    }
    let expected: BTreeSet<String> = convs.iter().map(|c| format!("{c}/messages/m")).collect();
    assert_eq!(all.keys().cloned().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test]
async fn backfills_two_thousand_documents_with_about_one_read_each() {
    if !gate() {
        return;
    }
    let (project, db) = fresh_project().await;
    // 2,000 messages under 40 conversations, in commits of 500 (the limit).
    for batch in 0..4 {
        commit(
            &db,
            (batch * 500..(batch + 1) * 500)
                .map(|m| W::Set(msg(m % 40, m), message("v1", 1_700_000_001)))
                .collect(),
        )
        .await;
    }
    let opts = firestore_emu::backfill_options(&project, 300);
    let pager = publisher::firestore::FirestorePager::new(db.clone());
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let progress = std::sync::Mutex::new(0u32);
    let started = std::time::Instant::now();
    let report = publisher::backfill::backfill(
        &opts,
        &pager,
        &bus,
        &store,
        |_| *progress.lock().unwrap() += 1,
        std::future::pending(),
    )
    .await
    .expect("backfill");
    let elapsed = started.elapsed();
    let messages = &report
        .groups
        .iter()
        .find(|(g, _)| *g == publisher::backfill::Group::Messages)
        .unwrap()
        .1;
    let docs: u64 = report.groups.iter().map(|(_, g)| g.docs).sum();
    eprintln!(
        "backfill of {docs} documents: {} reads ({:.3}/document), {} progress reports, {elapsed:?}",
        report.reads,
        report.reads as f64 / docs as f64,
        progress.lock().unwrap()
    );
    assert_eq!(messages.docs, 2_000);
    assert_eq!(messages.tally.published, 2_000);
    assert_eq!(folded(&bus.events()).len(), 2_000);
    assert!(
        *progress.lock().unwrap() >= 2_000 / 300,
        "progress per page"
    );
    // One read per document, plus one per empty group/page.
    assert!(
        report.reads >= 2_000 && report.reads <= 2_000 + 10,
        "{report:?}"
    );
}
