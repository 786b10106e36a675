//! Backfill against the in-memory pager, bus and store.

use std::collections::BTreeMap;

use super::*;
use crate::testing::{MemoryBus, MemoryPager, MemoryStore};
use crate::value::Value;

fn t(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_760_000_000 + secs, 0).unwrap()
}

fn follow(path: &str, updated: i64) -> Document {
    let fields: BTreeMap<String, Value> = [
        ("state", Value::String("accepted".into())),
        ("source", Value::String("web".into())),
        ("createdAt", Value::Timestamp(t(0))),
        ("updatedAt", Value::Timestamp(t(updated))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Document {
        path: path.into(),
        fields,
        create_time: t(0),
        update_time: t(updated),
    }
}

fn message(path: &str, updated: i64) -> Document {
    let fields: BTreeMap<String, Value> = [
        ("authorUserId", Value::String("u1".into())),
        ("bodyText", Value::String("hi".into())),
        ("createdAt", Value::Timestamp(t(updated))),
        ("updatedAt", Value::Timestamp(t(updated))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Document {
        path: path.into(),
        fields,
        create_time: t(updated),
        update_time: t(updated),
    }
}

fn corpus() -> Vec<Document> {
    let mut docs = Vec::new();
    for i in 0..7 {
        docs.push(message(
            &format!("conversations/c{}/messages/m{i}", i % 3),
            10 + i / 2,
        )); // ties on updatedAt
    }
    docs.push(message("users/u1/messages/x", 5)); // outside the mirror
    docs.push(follow("follows/u1/targets/u2", 3));
    docs.push(follow("blocks/u1/targets/u2", 4)); // a block with follow fields: dead-lettered
    let mut no_order = follow("follows/u9/targets/u2", 3);
    no_order.fields.remove("updatedAt"); // invisible to ordered queries
    docs.push(no_order);
    docs
}

fn opts() -> BackfillOptions {
    BackfillOptions {
        groups: Group::ALL.to_vec(),
        since: None,
        budget_reads: None,
        dry_run: false,
        page_size: 3,
        shard: Shard::SINGLE,
        source: SourceInfo::new("demo", "(default)"),
        fresh: false,
        families: None,
        read_time: None,
        recovery: false,
    }
}

async fn run(
    o: &BackfillOptions,
    pager: &MemoryPager,
    bus: &MemoryBus,
    store: &MemoryStore,
) -> Result<BackfillReport, BackfillError> {
    backfill(o, pager, bus, store, |_| {}, std::future::pending()).await
}

#[tokio::test]
async fn pages_every_group_with_cursors_and_publishes_what_the_live_path_would() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    let mut seen = Vec::new();
    let report = backfill(
        &opts(),
        &pager,
        &bus,
        &store,
        |p| seen.push(p.clone()),
        std::future::pending(),
    )
    .await
    .unwrap();
    let by: BTreeMap<Group, GroupReport> = report.groups.iter().cloned().collect();
    assert_eq!(by[&Group::Messages].docs, 8);
    assert_eq!(by[&Group::Messages].tally.published, 7);
    assert_eq!(by[&Group::Messages].tally.out_of_scope, 1);
    // follows/u9 has no updatedAt: an ordered query would skip it; `__name__` order does not.
    assert_eq!(by[&Group::Targets].tally.published, 2);
    assert_eq!(by[&Group::Targets].tally.dead_lettered, 1);
    assert!(by.values().all(|g| g.done));
    // Messages: pages of 3, 3, 2; conversations: one empty page and the
    // unfiltered count that shows the group is empty; targets: 3 then an empty page.
    assert_eq!(report.reads, 3 + 3 + 2 + 1 + 1 + 3 + 1);
    assert_eq!(bus.events().len(), 9);
    // Never offsets: every request after the first of a group carries the previous page's last doc.
    let reqs = pager.requests.lock().unwrap().clone();
    let msgs: Vec<_> = reqs.iter().filter(|r| r.group == Group::Messages).collect();
    assert_eq!(msgs[0].after, None);
    assert_eq!(
        msgs[1].after.as_ref().unwrap().path,
        "conversations/c0/messages/m6",
        "__name__ order: c0/m0, c0/m3, c0/m6"
    );
    // The dead letter names the path and the field.
    let dl = store.dead_letters();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].subject.as_deref(), Some("blocks/u1/targets/u2"));
    assert!(
        dl[0].error.contains("`blocks/u1/targets/u2`") && dl[0].error.contains("source"),
        "{}",
        dl[0].error
    );
    assert!(!seen.is_empty());

    // A second run finds every group done and reads nothing.
    let again = run(&opts(), &pager, &bus, &store).await.unwrap();
    assert!(again.groups.iter().all(|(_, g)| g.already_done));
    assert_eq!(again.reads, 0);
}

#[tokio::test]
async fn the_same_documents_publish_the_same_ids_as_the_live_path() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    run(&opts(), &pager, &bus, &store).await.unwrap();
    let doc = message("conversations/c0/messages/m0", 10);
    let live = crate::mapping::change_event(
        &crate::listen::Change::Upsert {
            op: crate::listen::UpsertOp::of(&doc),
            doc,
        },
        &SourceInfo::new("demo", "(default)"),
    )
    .unwrap()
    .unwrap();
    assert!(bus.events().iter().any(|e| e.id() == live.id()));
}

#[tokio::test]
async fn budget_stops_cleanly_and_a_restart_continues_from_the_checkpoint() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    let o = BackfillOptions {
        groups: vec![Group::Messages],
        budget_reads: Some(4),
        ..opts()
    };
    let report = run(&o, &pager, &bus, &store).await.unwrap();
    assert!(report.budget_exhausted);
    assert_eq!(report.reads, 4, "3 then a page limited to the 1 read left");
    assert_eq!(
        bus.events().len(),
        4,
        "one of the first page is outside the mirror"
    );
    let cp = store.checkpoint("backfill-messages", "0-of-1").unwrap();
    assert!(cp.cursor_token.is_some());

    let o = BackfillOptions {
        budget_reads: None,
        ..o
    };
    let report = run(&o, &pager, &bus, &store).await.unwrap();
    assert!(!report.budget_exhausted);
    assert_eq!(report.groups[0].1.docs, 4, "only the rest is read again");
    assert_eq!(bus.events().len(), 7);
}

#[tokio::test]
async fn a_crash_mid_run_republishes_at_most_one_page_and_skips_nothing() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    pager.fail_after(2);
    let o = BackfillOptions {
        groups: vec![Group::Messages],
        ..opts()
    };
    assert!(matches!(
        run(&o, &pager, &bus, &store).await,
        Err(BackfillError::Pager(_))
    ));
    assert_eq!(bus.events().len(), 6);
    let pager2 = MemoryPager::new(corpus());
    let report = run(&o, &pager2, &bus, &store).await.unwrap();
    assert_eq!(report.groups[0].1.docs, 2);
    assert_eq!(bus.events().len(), 7);
}

#[tokio::test]
async fn since_filters_conversations_and_is_ignored_by_name_ordered_groups() {
    let conv = |id: &str, updated: i64| {
        let mut d = message(&format!("conversations/{id}"), updated);
        d.fields
            .insert("type".into(), Value::String("group".into()));
        d
    };
    let mut docs = corpus();
    docs.extend([conv("a", 5), conv("b", 12), conv("c", 13)]);
    let (pager, bus, store) = (MemoryPager::new(docs), MemoryBus::new(), MemoryStore::new());
    let o = BackfillOptions {
        groups: vec![Group::Conversations, Group::Messages],
        since: Some(t(12)),
        ..opts()
    };
    let report = run(&o, &pager, &bus, &store).await.unwrap();
    assert_eq!(report.groups[0].1.docs, 2, "updatedAt 12, 13");
    assert!(!report.groups[0].1.since_ignored);
    assert_eq!(
        report.groups[1].1.docs, 8,
        "messages have no field to filter by: read whole"
    );
    assert!(report.groups[1].1.since_ignored);
    let o = BackfillOptions {
        since: Some(t(1)),
        ..o
    };
    let report = run(&o, &pager, &bus, &store).await.unwrap();
    assert!(
        !report.groups[0].1.already_done,
        "another --since starts over"
    );
    assert_eq!(report.groups[0].1.docs, 3);
}

#[tokio::test]
async fn a_filter_that_matches_nothing_in_a_non_empty_group_fails_loudly() {
    let mut bare = message("conversations/x", 5);
    bare.fields.remove("updatedAt");
    let (pager, bus, store) = (
        MemoryPager::new(vec![bare]),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    for dry_run in [true, false] {
        let o = BackfillOptions {
            groups: vec![Group::Conversations],
            dry_run,
            ..opts()
        };
        let e = run(&o, &pager, &bus, &store).await.unwrap_err();
        assert!(
            matches!(e, BackfillError::FilterMatchesNothing { unfiltered: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("updatedAt"), "{e}");
    }
    assert!(
        store
            .checkpoint("backfill-conversations", "0-of-1")
            .is_none(),
        "not saved as done"
    );
}

#[tokio::test]
async fn dry_run_counts_without_publishing_or_checkpointing() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    let o = BackfillOptions {
        dry_run: true,
        ..opts()
    };
    let report = run(&o, &pager, &bus, &store).await.unwrap();
    let by: BTreeMap<Group, GroupReport> = report.groups.iter().cloned().collect();
    assert_eq!(by[&Group::Messages].docs, 8);
    assert_eq!(by[&Group::Messages].estimated_reads, Some(8));
    assert_eq!(
        by[&Group::Conversations].estimated_reads,
        Some(1),
        "an empty query still costs a read"
    );
    assert_eq!(by[&Group::Targets].docs, 3);
    assert!(bus.published().is_empty());
    assert_eq!(store.saves(), 0);
    assert!(
        pager.requests.lock().unwrap().is_empty(),
        "no documents read"
    );
}

#[tokio::test]
async fn shutdown_stops_between_pages_after_a_checkpoint() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    let report = backfill(&opts(), &pager, &bus, &store, |_| {}, async {})
        .await
        .unwrap();
    assert!(report.interrupted);
    assert!(bus.published().is_empty());
}

#[tokio::test]
async fn shards_split_documents_by_partition_key() {
    let mut total = 0;
    for i in 0..3 {
        let (pager, bus, store) = (
            MemoryPager::new(corpus()),
            MemoryBus::new(),
            MemoryStore::new(),
        );
        let o = BackfillOptions {
            shard: Shard::new(i, 3).unwrap(),
            ..opts()
        };
        run(&o, &pager, &bus, &store).await.unwrap();
        total += bus.events().len();
        assert!(store
            .checkpoint("backfill-messages", &format!("{i}-of-3"))
            .is_some());
    }
    assert_eq!(total, 9);
}

#[tokio::test]
async fn publish_failures_surface_and_nothing_is_checkpointed_past_them() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    bus.fail_next(100);
    let o = BackfillOptions {
        groups: vec![Group::Messages],
        ..opts()
    };
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run(&o, &pager, &bus, &store),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(e, BackfillError::Sink(_)), "{e}");
    assert!(store.checkpoint("backfill-messages", "0-of-1").is_none());
}

#[tokio::test]
async fn a_module_publishes_only_its_own_families() {
    let (pager, bus, store) = (
        MemoryPager::new(corpus()),
        MemoryBus::new(),
        MemoryStore::new(),
    );
    let follow_only = BackfillOptions {
        groups: Module::Follow.groups(),
        families: Some(Module::Follow.families()),
        ..opts()
    };
    let report = run(&follow_only, &pager, &bus, &store).await.unwrap();
    let events = bus.events();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.event_type().family() == mirror_schema::EventFamily::FollowEdge),
        "{events:?}"
    );
    // The block in the same `targets` group was read but not published or dead-lettered.
    assert!(
        report
            .groups
            .iter()
            .all(|(_, g)| g.tally.dead_lettered == 0),
        "{report:?}"
    );
    assert_eq!(Module::parse("dm"), Some(Module::Dm));
    assert_eq!(Module::parse("chat"), None);
}

#[tokio::test]
async fn a_recovery_walks_each_time_field_from_since_and_reads_groups_without_one_whole() {
    let mut docs = Vec::new();
    let mut m = |id: &str, created: i64, edited: Option<i64>, deleted: Option<i64>| {
        let mut d = message(&format!("conversations/c1/messages/{id}"), created);
        d.fields.remove("updatedAt");
        if let Some(e) = edited {
            d.fields.insert("editedAt".into(), Value::Timestamp(t(e)));
        }
        if let Some(x) = deleted {
            d.fields.insert("deletedAt".into(), Value::Timestamp(t(x)));
        }
        docs.push(d);
    };
    m("old", 1, None, None); // untouched since: not read
    m("new", 50, None, None); // created in the gap
    m("edited", 1, Some(50), None); // edited in the gap
    m("soft", 1, None, Some(50)); // soft-deleted in the gap
    docs.push(follow("follows/u1/targets/u2", 1));
    let (pager, bus, store) = (MemoryPager::new(docs), MemoryBus::new(), MemoryStore::new());
    let o = BackfillOptions {
        groups: vec![Group::Messages, Group::Targets],
        since: Some(t(40)),
        recovery: true,
        ..opts()
    };
    let report = run(&o, &pager, &bus, &store).await.unwrap();
    let walks: Vec<(Option<&str>, u64)> = report
        .groups
        .iter()
        .map(|(_, g)| (g.field, g.docs))
        .collect();
    assert_eq!(
        walks,
        vec![
            (Some("createdAt"), 1),
            (Some("editedAt"), 1),
            (Some("deletedAt"), 1),
            (None, 1)
        ]
    );
    assert_eq!(bus.events().len(), 4, "old is not re-read");
    assert!(store
        .checkpoint("recover-messages-editedAt", "0-of-1")
        .is_some());
    assert!(store.checkpoint("recover-targets-all", "0-of-1").is_some());
}
