//! `mirrorctl consistency` end to end on real PostgreSQL and JetStream: the
//! fixtures mirrored by the real writer compare clean against the fixtures
//! export; rows damaged in SQL are found by kind (missing in SQL / source,
//! version, tombstone, field mismatch); `--repair` republishes through the
//! bus, the writer drains, and a second check reports 0 drift. Also: the
//! in-flight watermark, scopes, the document-export format, the Firestore
//! path through the publisher's pager port, and the HTML report in a real
//! headless browser.

use mirror_store::prelude::*;
use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;
use mirror_bus::{EventBus, OutboundMessage};
use mirror_schema::{MirrorEvent, Op};
use mirror_store::checksum::Table;
use mirror_store::postgres::PgStore;
use mirror_tests::consistency_run::{Pipeline, FIXTURES};
use mirror_tests::events;
use mirrorctl::consistency::report::FindingKind;
use mirrorctl::consistency::source::MemorySource;
use mirrorctl::consistency::{
    check, repair, ExportSource, Module, Options, PagerSource, Report, SourceReader,
};

/// A fresh database and topic, migrated, with a plain SQL connection.
type Rig = Pipeline;

async fn rig() -> Rig {
    Pipeline::new().await
}

async fn drain(rig: &Rig) -> sql_writer::RunReport {
    rig.drain().await
}

fn opts() -> Options {
    Options {
        lag: Duration::from_secs(60),
        grace: Duration::from_millis(0),
        ..Options::default()
    }
}

async fn run_check<R: mirrorctl::consistency::SourceReader>(
    store: &PgStore,
    source: &R,
    opts: &Options,
) -> (
    Report,
    std::collections::HashMap<(Table, String), MirrorEvent>,
) {
    check(store, source, opts, &ProgressBar::hidden())
        .await
        .expect("check runs")
}

fn count(report: &Report, kind: FindingKind) -> usize {
    report.findings.iter().filter(|f| f.kind == kind).count()
}

async fn one_key(sql: &tokio_postgres::Client, query: &str) -> String {
    sql.query_one(query, &[]).await.expect(query).get(0)
}

#[tokio::test]
async fn damage_is_found_by_kind_and_repair_through_the_bus_converges_to_zero_drift() {
    let rig = rig().await;
    let text = std::fs::read_to_string(FIXTURES).unwrap();
    let seed = publisher::seed::load(&text).unwrap();
    for e in &seed {
        rig.bus
            .publish(&OutboundMessage::from_event(e))
            .await
            .unwrap();
    }
    drain(&rig).await;
    let export = ExportSource::load(Path::new(FIXTURES)).unwrap();

    // 1. The mirrored fixtures agree with the fixtures' current state.
    let (clean, _) = run_check(&rig.store, &export, &opts()).await;
    assert_eq!(clean.total.drifted(), 0, "{}", clean.to_text());
    assert!(!clean.alert);
    assert_eq!(
        clean.total.source_docs,
        clean.total.sql_rows,
        "{}",
        clean.to_text()
    );
    assert!(clean.total.source_docs > 250);
    assert_eq!(
        clean.total.rows_read, 0,
        "a clean mirror is not read row by row"
    );

    // 2. Damage SQL behind the pipeline's back, one kind at a time.
    let sql = &rig.sql;
    let edge_gone = one_key(sql, "SELECT follower_user_id || '/' || target_user_id FROM mirror.follow_edge WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
    sql.execute(
        "DELETE FROM mirror.follow_edge WHERE follower_user_id || '/' || target_user_id = $1",
        &[&edge_gone],
    )
    .await
    .unwrap();
    let block_gone = one_key(sql, "SELECT user_id || '/' || target_user_id FROM mirror.dm_block WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
    sql.execute(
        "DELETE FROM mirror.dm_block WHERE user_id || '/' || target_user_id = $1",
        &[&block_gone],
    )
    .await
    .unwrap();
    let body = one_key(sql, "SELECT c.firestore_id || '/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE NOT m.tombstone ORDER BY 1 LIMIT 1").await;
    sql.execute("UPDATE mirror.dm_message m SET body_text = 'tampered' FROM mirror.dm_conversation c WHERE c.conversation_id = m.conversation_id AND c.firestore_id || '/' || m.firestore_id = $1", &[&body]).await.unwrap();
    let attach = one_key(sql, "SELECT c.firestore_id || '/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE m.attachment_json IS NOT NULL AND jsonb_array_length(m.attachment_json) > 0 AND NOT m.tombstone ORDER BY 1 LIMIT 1").await;
    sql.execute("UPDATE mirror.dm_message m SET attachment_json = '[]' FROM mirror.dm_conversation c WHERE c.conversation_id = m.conversation_id AND c.firestore_id || '/' || m.firestore_id = $1", &[&attach]).await.unwrap();
    let behind = one_key(sql, "SELECT follower_user_id || '/' || target_user_id FROM mirror.follow_edge WHERE deleted_at IS NULL ORDER BY 1 DESC LIMIT 1").await;
    sql.execute("UPDATE mirror.follow_edge SET source_version = source_version - interval '1 hour', state = 'pending' WHERE follower_user_id || '/' || target_user_id = $1", &[&behind]).await.unwrap();
    let tomb = one_key(sql, "SELECT user_id || '/' || target_user_id FROM mirror.dm_block WHERE deleted_at IS NULL ORDER BY 1 DESC LIMIT 1").await;
    sql.execute("UPDATE mirror.dm_block SET deleted_at = source_version, created_at = NULL, revoked_at = NULL, source = NULL WHERE user_id || '/' || target_user_id = $1", &[&tomb]).await.unwrap();
    let muted = one_key(sql, "SELECT c.firestore_id FROM mirror.dm_participant p JOIN mirror.dm_conversation c USING (conversation_id) WHERE p.mute_state = 'none' ORDER BY 1 LIMIT 1").await;
    sql.execute("UPDATE mirror.dm_participant p SET mute_state = 'muted' FROM mirror.dm_conversation c WHERE c.conversation_id = p.conversation_id AND c.firestore_id = $1 AND p.mute_state = 'none' AND p.user_id = (SELECT min(user_id) FROM mirror.dm_participant q WHERE q.conversation_id = c.conversation_id AND q.mute_state = 'none')", &[&muted]).await.unwrap();
    sql.execute("INSERT INTO mirror.follow_edge (follower_user_id, target_user_id, state, source, created_at, source_version, event_id, sync_source) VALUES ('u_ghost', 'u_ana', 'accepted', 'web', '2025-10-02T00:00:00Z', '2025-10-02T00:00:00Z', gen_random_uuid(), 'firestore')", &[]).await.unwrap();

    // 3. The check finds each of them, by kind.
    let html_dir = tempfile::tempdir().unwrap();
    let (damaged, sources) = run_check(&rig.store, &export, &opts()).await;
    let text = damaged.to_text();
    assert_eq!(count(&damaged, FindingKind::MissingInSql), 2, "{text}");
    assert_eq!(count(&damaged, FindingKind::MissingInSource), 1, "{text}");
    assert_eq!(count(&damaged, FindingKind::VersionMismatch), 1, "{text}");
    assert_eq!(count(&damaged, FindingKind::TombstoneMismatch), 1, "{text}");
    assert_eq!(count(&damaged, FindingKind::FieldMismatch), 3, "{text}");
    assert_eq!(damaged.total.drifted(), 8);
    assert!(damaged.alert, "8 of ~300 is above 0.5 %");
    assert!(
        damaged.total.rows_read < damaged.total.sql_rows,
        "only differing buckets are read: {text}"
    );
    let find = |key: &str| {
        damaged
            .findings
            .iter()
            .find(|f| f.key == key)
            .unwrap_or_else(|| panic!("{key} not reported: {text}"))
    };
    assert!(find(&body).detail.contains("body_text"), "{text}");
    assert!(find(&attach).detail.contains("attachments"), "{text}");
    assert!(find(&muted).detail.contains("participants"), "{text}");
    assert_eq!(find(&edge_gone).kind, FindingKind::MissingInSql);
    assert_eq!(find(&block_gone).kind, FindingKind::MissingInSql);
    assert_eq!(find(&behind).kind, FindingKind::VersionMismatch);
    assert_eq!(find(&tomb).kind, FindingKind::TombstoneMismatch);
    assert_eq!(find("u_ghost/u_ana").kind, FindingKind::MissingInSource);
    let json: serde_json::Value = serde_json::to_value(&damaged).unwrap();
    assert_eq!(json["total"]["field_mismatch"], 3);
    assert_eq!(json["tables"].as_array().unwrap().len(), 4);
    let html = damaged.to_html();
    assert!(
        !html.contains("http://")
            && !html.contains("https://")
            && !html.contains("<script")
            && !html.contains("<link")
    );
    assert!(
        html.contains("tampered"),
        "the field example is in the page"
    );
    std::fs::write(html_dir.path().join("report.html"), &html).unwrap();

    // 4. Repair through the bus; the writer drains; the check is clean.
    let (repairs, not_repairable) = repair::plan(export.project(), &damaged.findings, &sources);
    assert!(not_repairable.is_empty(), "{not_repairable:?}");
    assert_eq!(repairs.len(), 8);
    assert!(repairs.iter().all(mirror_store::checksum::is_repair));
    let (published, dropped) = repair::publish(rig.bus.as_ref(), &repairs).await.unwrap();
    assert_eq!((published, dropped), (8, 0));
    let writer = drain(&rig).await;
    assert_eq!(writer.dead_lettered, 0, "{writer:?}");
    let (after, _) = run_check(&rig.store, &export, &opts()).await;
    assert_eq!(after.total.drifted(), 0, "{}", after.to_text());
    assert!(!after.alert);
    let repaired: i64 = sql
        .query_one("SELECT (SELECT count(*) FROM mirror.follow_edge WHERE sync_source = 'repair') + (SELECT count(*) FROM mirror.dm_block WHERE sync_source = 'repair') + (SELECT count(*) FROM mirror.dm_message WHERE sync_source = 'repair') + (SELECT count(*) FROM mirror.dm_conversation WHERE sync_source = 'repair')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        repaired, 8,
        "every repaired row records sync_source `repair`"
    );
    // The ghost edge is now a tombstone (the delete observed by the repair).
    let ghost: Option<chrono::DateTime<chrono::Utc>> = sql
        .query_one(
            "SELECT deleted_at FROM mirror.follow_edge WHERE follower_user_id = 'u_ghost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ghost.is_some());
    // A second repair run has nothing to do.
    let (again, _) = run_check(&rig.store, &export, &opts()).await;
    assert!(again.findings.is_empty());
    drop(rig.db);
}

#[tokio::test]
async fn a_repair_never_moves_a_row_backwards() {
    let rig = rig().await;
    let old = events::follow(
        Op::Create,
        "a",
        "b",
        mirror_schema::FollowState::Pending,
        events::t(10),
    );
    let new = events::follow(
        Op::Update,
        "a",
        "b",
        mirror_schema::FollowState::Accepted,
        events::t(20),
    );
    rig.store.apply(&new).await.unwrap();
    // The source (stale here) still says `old`: SQL is ahead of it.
    let source = MemorySource {
        project: "demo".into(),
        events: vec![old.clone()],
    };
    let (report, sources) = run_check(&rig.store, &source, &opts()).await;
    assert_eq!(
        count(&report, FindingKind::VersionMismatch),
        1,
        "{}",
        report.to_text()
    );
    let (repairs, skipped) = repair::plan("demo", &report.findings, &sources);
    assert!(repairs.is_empty());
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].1.contains("newer version"), "{skipped:?}");
    // Even if one were sent, the store keeps the newer version.
    let forced = MirrorEvent::new(
        old.event_type(),
        old.subject().clone(),
        old.time(),
        repair::repair_source("demo", old.subject()),
        old.payload().clone(),
    )
    .unwrap();
    assert_eq!(
        rig.store.apply(&forced).await.unwrap(),
        mirror_store::ApplyOutcome::Stale
    );
    let state = rig.store.snapshot().await.unwrap();
    assert_eq!(
        state.follow_edges.values().next().unwrap().state.as_deref(),
        Some("accepted")
    );
}

#[tokio::test]
async fn a_repair_at_the_same_version_rewrites_the_row_once() {
    let rig = rig().await;
    let e = events::message(Op::Create, "c1", "m1", "hello", events::t(5));
    assert_eq!(
        rig.store.apply(&e).await.unwrap(),
        mirror_store::ApplyOutcome::Applied
    );
    rig.sql
        .execute("UPDATE mirror.dm_message SET body_text = 'tampered'", &[])
        .await
        .unwrap();
    // The same event again: a duplicate, nothing changes.
    assert_eq!(
        rig.store.apply(&e).await.unwrap(),
        mirror_store::ApplyOutcome::Duplicate
    );
    let repair = MirrorEvent::new(
        e.event_type(),
        e.subject().clone(),
        e.time(),
        repair::repair_source("demo", e.subject()),
        e.payload().clone(),
    )
    .unwrap();
    assert_eq!(
        repair.id(),
        e.id(),
        "a repair keeps the contract's deterministic id"
    );
    assert_eq!(
        rig.store.apply(&repair).await.unwrap(),
        mirror_store::ApplyOutcome::Applied
    );
    let state = rig.store.snapshot().await.unwrap();
    let m = state.messages.values().next().unwrap();
    assert_eq!(m.body_text.as_deref(), Some("hello"));
    assert_eq!(m.last_event_id, e.id());
    // Through apply_batch too, and the ledger still holds the id once.
    assert_eq!(
        rig.store
            .apply_batch(std::slice::from_ref(&repair))
            .await
            .unwrap()[0]
            .as_ref()
            .unwrap(),
        &mirror_store::ApplyOutcome::Applied
    );
    let n: i64 = rig
        .sql
        .query_one(
            "SELECT count(*) FROM mirror.applied_event WHERE event_id = $1",
            &[&e.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        rig.store.apply(&e).await.unwrap(),
        mirror_store::ApplyOutcome::Duplicate
    );
}

#[tokio::test]
async fn differences_newer_than_the_watermark_are_rechecked_not_reported() {
    let rig = rig().await;
    let now = chrono::Utc::now();
    let fresh = events::follow(
        Op::Create,
        "a",
        "b",
        mirror_schema::FollowState::Accepted,
        now,
    );
    let source = MemorySource {
        project: "demo".into(),
        events: vec![fresh.clone()],
    };
    // Still missing after the grace period and still newer than the watermark: in flight.
    let o = Options {
        grace: Duration::from_millis(200),
        ..opts()
    };
    let (report, _) = run_check(&rig.store, &source, &o).await;
    assert_eq!(report.total.drifted(), 0, "{}", report.to_text());
    assert_eq!((report.rechecked, report.total.in_flight), (1, 1));
    // The writer applies it during the grace period: nothing to report.
    let store = rig.store.clone();
    let late = fresh.clone();
    let applier = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.apply(&late).await.unwrap();
    });
    let o = Options {
        grace: Duration::from_secs(2),
        ..opts()
    };
    let (report, _) = run_check(
        &rig.store,
        &MemorySource {
            project: "demo".into(),
            events: vec![
                fresh.clone(),
                events::follow(
                    Op::Create,
                    "x",
                    "y",
                    mirror_schema::FollowState::Pending,
                    now,
                ),
            ],
        },
        &o,
    )
    .await;
    applier.await.unwrap();
    assert_eq!(report.rechecked, 2);
    assert_eq!(report.total.in_flight, 1, "{}", report.to_text());
    assert_eq!(report.total.drifted(), 0);
    // Without a lag the same difference is drift.
    let o = Options {
        lag: Duration::ZERO,
        ..opts()
    };
    let (report, _) = run_check(
        &rig.store,
        &MemorySource {
            project: "demo".into(),
            events: vec![events::follow(
                Op::Create,
                "x",
                "y",
                mirror_schema::FollowState::Pending,
                now,
            )],
        },
        &o,
    )
    .await;
    assert_eq!(count(&report, FindingKind::MissingInSql), 1);
    assert!(report.alert);
}

#[tokio::test]
async fn scopes_limit_both_sides() {
    let rig = rig().await;
    let a = events::conversation(Op::Create, "ca", &["u1", "u2"], events::t(1));
    let b = events::conversation(Op::Create, "cb", &["u1", "u3"], events::t(100));
    let ma = events::message(Op::Create, "ca", "m1", "hi", events::t(2));
    let mb = events::message(Op::Create, "cb", "m1", "yo", events::t(101));
    let f = events::follow(
        Op::Create,
        "u1",
        "u2",
        mirror_schema::FollowState::Accepted,
        events::t(3),
    );
    for e in [&a, &b, &ma, &mb, &f] {
        rig.store.apply(e).await.unwrap();
    }
    rig.sql
        .execute("UPDATE mirror.dm_message SET body_text = 'x'", &[])
        .await
        .unwrap();
    let source = MemorySource {
        project: "demo".into(),
        events: vec![a, b, ma, mb, f],
    };
    let (all, _) = run_check(&rig.store, &source, &opts()).await;
    assert_eq!(all.total.field_mismatch, 2, "{}", all.to_text());
    let (one, _) = run_check(
        &rig.store,
        &source,
        &Options {
            conversation: Some("ca".into()),
            ..opts()
        },
    )
    .await;
    assert_eq!(
        (one.total.source_docs, one.total.field_mismatch),
        (2, 1),
        "{}",
        one.to_text()
    );
    assert_eq!(one.tables.len(), 2);
    let (late, _) = run_check(
        &rig.store,
        &source,
        &Options {
            since: Some(events::t(50)),
            ..opts()
        },
    )
    .await;
    assert_eq!(
        (late.total.source_docs, late.total.field_mismatch),
        (2, 1),
        "{}",
        late.to_text()
    );
    let (follow, _) = run_check(
        &rig.store,
        &source,
        &Options {
            module: Module::Follow,
            ..opts()
        },
    )
    .await;
    assert_eq!(
        (follow.total.source_docs, follow.total.drifted()),
        (1, 0),
        "{}",
        follow.to_text()
    );
}

#[tokio::test]
async fn firestore_documents_through_the_publishers_pager_and_a_document_export() {
    use publisher::value::{Document, Value};
    let rig = rig().await;
    let t = |s: i64| events::t(s);
    let conv = Document {
        path: "conversations/c1".into(),
        fields: [
            ("type".to_owned(), Value::String("direct".into())),
            (
                "participants".to_owned(),
                Value::Array(vec![Value::Map(
                    [
                        ("userId".to_owned(), Value::String("u1".into())),
                        ("role".to_owned(), Value::String("owner".into())),
                        ("joinedAt".to_owned(), Value::Timestamp(t(1))),
                        ("muteState".to_owned(), Value::String("none".into())),
                    ]
                    .into(),
                )]),
            ),
            ("createdAt".to_owned(), Value::Timestamp(t(1))),
            ("updatedAt".to_owned(), Value::Timestamp(t(1))),
        ]
        .into(),
        create_time: t(1),
        update_time: t(1),
    };
    let msg = Document {
        path: "conversations/c1/messages/m1".into(),
        fields: [
            ("authorUserId".to_owned(), Value::String("u1".into())),
            ("bodyText".to_owned(), Value::String("hi".into())),
            ("createdAt".to_owned(), Value::Timestamp(t(2))),
            ("updatedAt".to_owned(), Value::Timestamp(t(3))),
            (
                "attachments".to_owned(),
                Value::Array(vec![Value::Map(
                    [
                        ("url".to_owned(), Value::String("gs://b/x.png".into())),
                        ("size".to_owned(), Value::Integer(12)),
                    ]
                    .into(),
                )]),
            ),
        ]
        .into(),
        create_time: t(2),
        update_time: t(3),
    };
    let broken = Document {
        path: "conversations/c1/messages/m2".into(),
        fields: [
            ("bodyText".to_owned(), Value::Integer(4)),
            ("updatedAt".to_owned(), Value::Timestamp(t(4))),
        ]
        .into(),
        create_time: t(4),
        update_time: t(4),
    };
    let pager = publisher::testing::MemoryPager::new(vec![conv, msg, broken]);
    let source = PagerSource::new(
        pager,
        publisher::mapping::SourceInfo::new("demo", "(default)"),
    );
    let (report, sources) = run_check(&rig.store, &source, &opts()).await;
    assert_eq!(report.total.missing_in_sql, 2, "{}", report.to_text());
    assert_eq!(
        report.unmappable.len(),
        1,
        "the broken document is reported, not skipped"
    );
    // Apply the publisher's events (as the pipeline would): clean.
    for e in sources.values() {
        rig.store.apply(e).await.unwrap();
    }
    let (report, _) = run_check(&rig.store, &source, &opts()).await;
    assert_eq!(report.total.drifted(), 0, "{}", report.to_text());
    assert_eq!(report.total.source_docs, 2);

    // The same documents as a document export file.
    let export = serde_json::json!({
        "project": "demo",
        "documents": [
            {"__name__": "projects/demo/databases/(default)/documents/conversations/c1", "createTime": mirror_schema::format_time(&t(1)), "updateTime": mirror_schema::format_time(&t(1)),
             "fields": {"type": "direct", "participants": [{"userId": "u1", "role": "owner", "joinedAt": mirror_schema::format_time(&t(1)), "muteState": "none"}], "createdAt": mirror_schema::format_time(&t(1)), "updatedAt": mirror_schema::format_time(&t(1))}},
            {"__name__": "conversations/c1/messages/m1", "createTime": mirror_schema::format_time(&t(2)), "updateTime": mirror_schema::format_time(&t(3)),
             "fields": {"authorUserId": "u1", "bodyText": "hi", "createdAt": mirror_schema::format_time(&t(2)), "attachments": [{"url": "gs://b/x.png", "size": 12}]}}
        ]
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), export.to_string()).unwrap();
    let export = ExportSource::load(file.path()).unwrap();
    let (report, _) = run_check(&rig.store, &export, &opts()).await;
    assert_eq!(report.total.drifted(), 0, "{}", report.to_text());
    assert_eq!(report.total.source_docs, 2);
}

/// The HTML report in a real browser: headless Chromium renders it, its DOM
/// holds the summary and the examples, and a screenshot is written
/// (`CONSISTENCY_SCREENSHOT=path` keeps it for a person to look at).
#[tokio::test]
async fn the_html_report_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        if std::env::var("REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!("chromium is not installed but REQUIRE_CHROMIUM=1 (deploy/local/setup.sh installs it)");
        }
        println!("skipped: chromium not installed");
        return;
    };
    let rig = rig().await;
    let a = events::conversation(Op::Create, "c<1>", &["u1", "u2"], events::t(1));
    let m = events::message(Op::Create, "c<1>", "m1", "hello <b>world</b>", events::t(2));
    let f = events::follow(
        Op::Create,
        "u1",
        "u2",
        mirror_schema::FollowState::Accepted,
        events::t(3),
    );
    for e in [&a, &m] {
        rig.store.apply(e).await.unwrap();
    }
    rig.sql
        .execute(
            "UPDATE mirror.dm_message SET body_text = 'tampered & <i>changed</i>'",
            &[],
        )
        .await
        .unwrap();
    let source = MemorySource {
        project: "demo".into(),
        events: vec![a, m, f],
    };
    let (report, _) = run_check(&rig.store, &source, &opts()).await;
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    std::fs::write(&html, report.to_html()).unwrap();
    let png = std::env::var("CONSISTENCY_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("report.png"));
    let profile = dir.path().join("profile");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ];
    let url = format!("file://{}", html.display());
    let dom = std::process::Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("realtime-mirror consistency report"), "{dom}");
    assert!(dom.contains("ALERT"));
    assert!(dom.contains("field mismatch") && dom.contains("missing in SQL"));
    assert!(
        dom.contains("tampered &amp; &lt;i&gt;changed&lt;/i&gt;"),
        "text is escaped, not markup"
    );
    let shot = std::process::Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .args(["--window-size=1280,900", &url])
        .output()
        .expect("run chromium");
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "a real PNG: {} bytes",
        bytes.len()
    );
}

#[tokio::test]
async fn a_since_scoped_run_does_not_repair_a_document_it_did_not_read() {
    let rig = rig().await;
    // SQL holds a newer version than the source's (older) document.
    let old = events::follow(
        Op::Create,
        "a",
        "b",
        mirror_schema::FollowState::Pending,
        events::t(10),
    );
    let newer = events::follow(
        Op::Update,
        "a",
        "b",
        mirror_schema::FollowState::Accepted,
        events::t(200),
    );
    rig.store.apply(&newer).await.unwrap();
    let source = MemorySource {
        project: "demo".into(),
        events: vec![old],
    };
    // Since t(100): the source returns nothing, SQL's row is in scope.
    let o = Options {
        since: Some(events::t(100)),
        ..opts()
    };
    let (report, sources) = run_check(&rig.store, &source, &o).await;
    assert_eq!(
        count(&report, FindingKind::MissingInSource),
        1,
        "{}",
        report.to_text()
    );
    assert!(report.findings[0].since_scoped);
    let (repairs, skipped) = repair::plan("demo", &report.findings, &sources);
    assert!(
        repairs.is_empty(),
        "no delete is published for a document the run did not read"
    );
    assert!(skipped[0].1.contains("--since"), "{skipped:?}");
    // Without --since the same row is a version mismatch (SQL ahead), also not repaired.
    let (report, sources) = run_check(&rig.store, &source, &opts()).await;
    assert_eq!(
        count(&report, FindingKind::VersionMismatch),
        1,
        "{}",
        report.to_text()
    );
    assert!(repair::plan("demo", &report.findings, &sources)
        .0
        .is_empty());
}
