//! End to end through the real writer, on real PostgreSQL and JetStream: the
//! fixture dataset, invalid input of every kind, broker duplicates, random
//! shuffled histories with duplicates, and graceful shutdown.

use mirror_store::prelude::*;
use std::sync::Arc;
use std::time::Duration;

use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::{EventBus, OutboundMessage, PublishOutcome};
use mirror_schema::{MirrorEvent, WireMessage, STRUCTURED_CONTENT_TYPE};
use mirror_store::model::{newest_only, Model};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::MirrorState;
use mirror_tests::{events, FreshDb, FreshTopic};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use secrecy::SecretString;
use sql_writer::{Deps, RunReport, WriterSettings};

struct Rig {
    _db: FreshDb,
    _topic: FreshTopic,
    bus: Arc<JetStreamBus>,
    store: Arc<PgStore>,
}

async fn rig() -> Rig {
    let db = FreshDb::create().await;
    let topic = FreshTopic::new();
    let store = PgStore::connect(&PgConfig {
        url: SecretString::from(db.url.clone()),
        pool_size: 8,
        statement_timeout: Duration::from_secs(30),
    })
    .await
    .expect("connect store");
    store.migrate().await.expect("migrate");
    let bus = JetStreamBus::connect(JetStreamConfig {
        url: topic.url.clone(),
        topic: topic.topic.clone(),
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect bus");
    bus.ensure_topology().await.expect("topology");
    Rig {
        _db: db,
        _topic: topic,
        bus: Arc::new(bus),
        store: Arc::new(store),
    }
}

fn settings() -> WriterSettings {
    WriterSettings {
        batch_size: 16,
        concurrency: 3,
        exit_when_idle: true,
        receive_wait: Duration::from_millis(300),
        metrics_flush_every: None,
        retry: sql_writer::policy::RetryPolicy {
            backoff: sql_writer::policy::Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(200),
            )
            .with_jitter(),
            ..Default::default()
        },
        ..WriterSettings::default()
    }
}

async fn drain(rig: &Rig) -> RunReport {
    let deps = Deps {
        bus: rig.bus.clone(),
        store: rig.store.clone(),
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        sql_writer::run(deps, settings(), std::future::pending()),
    )
    .await
    .expect("writer drains within 60 s")
    .expect("writer run")
}

async fn publish(rig: &Rig, events: &[MirrorEvent]) {
    for e in events {
        rig.bus
            .publish(&OutboundMessage::from_event(e))
            .await
            .expect("publish");
    }
}

fn assert_state(expected: &MirrorState, actual: &MirrorState) {
    let diff = MirrorState::diff(expected, actual);
    assert!(
        diff.is_empty(),
        "state differs (- expected, + actual):\n{diff}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fixture_dataset_end_to_end() {
    let rig = rig().await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/realtime_mirror_seed.json"
    ))
    .unwrap();
    let events = publisher::seed::load(&text).expect("fixture loads");
    assert!(events.len() > 200, "fixture has a few hundred changes");
    publish(&rig, &events).await;
    let report = drain(&rig).await;
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert_eq!(
        (report.applied + report.stale + report.duplicate) as usize,
        events.len(),
        "{report:?}"
    );
    let actual = rig.store.snapshot().await.unwrap();
    // Every table, history included (contract v1.1: no arrival order changes it).
    assert_state(&newest_only(&events), &actual);
    // Logs: never a second row for one event.
    let mut ids: Vec<_> = actual.audit.iter().map(|a| a.event_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), actual.audit.len());
    assert!(!actual.audit.is_empty() && !actual.follow_events.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_is_dead_lettered_in_both_places_and_never_blocks() {
    let rig = rig().await;
    let good = [
        events::conversation(mirror_schema::Op::Create, "c1", &["u1", "u2"], events::t(1)),
        events::message(mirror_schema::Op::Create, "c1", "m1", "hi", events::t(2)),
    ];
    let valid = String::from_utf8(good[1].to_structured_json()).unwrap();
    let bad: [(&str, Vec<u8>); 5] = [
        ("malformed", b"{not json".to_vec()),
        (
            "unknown_type",
            valid
                .replace("dm.message.create", "dm.message.created")
                .into_bytes(),
        ),
        (
            "wrong_id",
            valid
                .replace(
                    &good[1].id().to_string(),
                    "5f0c3b9e-8e0f-5c8a-9d57-1d7a0c1f2b3c",
                )
                .into_bytes(),
        ),
        (
            "invalid_field",
            valid
                .replace("\"authorUserId\":\"u1\"", "\"authorUserId\":42")
                .into_bytes(),
        ),
        ("too_large", {
            let mut v: serde_json::Value = serde_json::from_str(&valid).unwrap();
            v["data"]["payload"]["bodyText"] = "x".repeat(300 * 1024).into();
            serde_json::to_vec(&v).unwrap()
        }),
    ];
    publish(&rig, &good[..1]).await;
    for (i, (_, body)) in bad.iter().enumerate() {
        let m = OutboundMessage {
            message_id: format!("bad-{i}"),
            partition_key: None,
            message: WireMessage {
                content_type: Some(STRUCTURED_CONTENT_TYPE.into()),
                properties: vec![],
                body: body.clone(),
            },
        };
        rig.bus.publish(&m).await.expect("publish bad");
    }
    publish(&rig, &good[1..]).await;
    let report = drain(&rig).await;
    assert_eq!(report.applied, 2, "{report:?}");
    assert_eq!(report.dead_lettered as usize, bad.len(), "{report:?}");

    let on_bus = rig.bus.list_dead_letters("sql-writer", 100).await.unwrap();
    let in_sql = rig.store.list_dead_letters(100).await.unwrap();
    assert_eq!(on_bus.len(), bad.len());
    assert_eq!(in_sql.len(), bad.len());
    for (reason, _) in &bad {
        assert!(
            on_bus
                .iter()
                .any(|d| d.reason == *reason && d.attempts == 1),
            "bus DLQ lacks {reason}: {on_bus:?}"
        );
        assert!(
            in_sql
                .iter()
                .any(|d| d.record.reason == *reason && !d.record.error.is_empty()),
            "SQL DLQ lacks {reason}"
        );
    }
    let mut model = Model::new();
    good.iter().for_each(|e| {
        model.apply(e);
    });
    assert_state(&model.state(), &rig.store.snapshot().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_suppresses_republished_events() {
    let rig = rig().await;
    let e = events::follow(
        mirror_schema::Op::Create,
        "u1",
        "u2",
        mirror_schema::FollowState::Pending,
        events::t(1),
    );
    assert_eq!(
        rig.bus
            .publish(&OutboundMessage::from_event(&e))
            .await
            .unwrap(),
        PublishOutcome::Published
    );
    assert_eq!(
        rig.bus
            .publish(&OutboundMessage::from_event(&e))
            .await
            .unwrap(),
        PublishOutcome::Duplicate
    );
    let report = drain(&rig).await;
    assert_eq!((report.applied, report.duplicate), (1, 0));
}

/// Random histories with duplicates, shuffled, through the real writer with
/// several workers: the tables equal applying only the newest event per entity.
#[tokio::test(flavor = "multi_thread")]
async fn random_shuffled_histories_converge() {
    for seed in 0..4u64 {
        let rig = rig().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut history =
            mirror_tests::store_conformance::canonical(events::random_history(&mut rng, 120, 40));
        history.shuffle(&mut rng);
        for (k, e) in history.iter().enumerate() {
            // Distinct broker ids so duplicates reach the writer, not just the broker.
            let mut m = OutboundMessage::from_event(e);
            m.message_id = format!("{}.{k}", m.message_id);
            rig.bus.publish(&m).await.unwrap();
        }
        let report = drain(&rig).await;
        assert_eq!(report.dead_lettered, 0, "seed {seed}: {report:?}");
        let actual = rig.store.snapshot().await.unwrap();
        let diff = MirrorState::diff(&newest_only(&history), &actual);
        assert!(diff.is_empty(), "seed {seed}: state differs:\n{diff}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_promptly_and_loses_nothing() {
    let rig = rig().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let history =
        mirror_tests::store_conformance::canonical(events::random_history(&mut rng, 300, 0));
    publish(&rig, &history).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let deps = Deps {
        bus: rig.bus.clone(),
        store: rig.store.clone(),
    };
    let running = tokio::spawn(sql_writer::run(
        deps,
        WriterSettings {
            exit_when_idle: false,
            batch_size: 4,
            concurrency: 1,
            shutdown_deadline: Duration::from_secs(5),
            ..settings()
        },
        async move {
            let _ = rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    tx.send(()).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops within the deadline")
        .unwrap()
        .unwrap();
    // The rest is still in the subscription; a new writer drains it to the exact state.
    let second = drain(&rig).await;
    // Every distinct event settled exactly once across the two runs (the broker
    // already dropped repeated ids at publish).
    let distinct = history
        .iter()
        .map(|e| e.id())
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let settled = |r: &RunReport| r.applied + r.stale + r.duplicate;
    assert_eq!(
        settled(&first) + settled(&second),
        distinct,
        "first {first:?}, second {second:?}"
    );
    assert!(
        settled(&first) < distinct,
        "shutdown came before the end: the second writer had work"
    );
    assert_state(&newest_only(&history), &rig.store.snapshot().await.unwrap());
}

/// A dead-lettered event replays with its event id: selected by the filters,
/// published again, applied by the writer, counted in the SQL row, gone from
/// the queue.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_replay_with_their_event_ids() {
    use mirror_bus::{DeadLetter, Delivery, Receiver};
    use sql_writer::replay::{replay, ReplayFilter};

    let rig = rig().await;
    let event = events::follow(
        mirror_schema::Op::Create,
        "u1",
        "u2",
        mirror_schema::FollowState::Pending,
        events::t(1),
    );
    publish(&rig, std::slice::from_ref(&event)).await;
    {
        // Dead-letter it in both places, as the writer does when retries run out.
        let mut rx = rig.bus.subscribe("sql-writer").await.unwrap();
        let delivery = rx
            .receive(1, Duration::from_secs(5))
            .await
            .unwrap()
            .pop()
            .expect("a delivery");
        rig.store
            .record_dead_letter(&mirror_store::DeadLetterRecord {
                key: event.id().to_string(),
                event_id: Some(event.id()),
                event_type: Some(event.event_type().to_string()),
                subject: Some(event.entity_key()),
                payload: String::from_utf8(event.to_structured_json()).unwrap(),
                reason: "retries_exhausted".into(),
                error: "database unreachable".into(),
                attempts: 5,
                failed_at: chrono::Utc::now(),
                subscription: "sql-writer".into(),
            })
            .await
            .unwrap();
        let why = DeadLetter {
            reason: "retries_exhausted".into(),
            description: "database unreachable".into(),
            attempts: 5,
        };
        delivery.dead_letter(&why).await.unwrap();
    }
    let all = ReplayFilter {
        limit: 100,
        ..ReplayFilter::default()
    };

    let other_reason = ReplayFilter {
        reason: Some("malformed".into()),
        ..all.clone()
    };
    assert!(
        replay(&*rig.bus, &*rig.store, "sql-writer", &other_reason, false)
            .await
            .unwrap()
            .is_empty()
    );
    let other_type = ReplayFilter {
        event_type: Some("dm.message.create".into()),
        ..all.clone()
    };
    assert!(
        replay(&*rig.bus, &*rig.store, "sql-writer", &other_type, false)
            .await
            .unwrap()
            .is_empty()
    );

    let dry = replay(&*rig.bus, &*rig.store, "sql-writer", &all, true)
        .await
        .unwrap();
    assert_eq!(dry.len(), 1);
    assert_eq!(
        (dry[0].key.as_str(), dry[0].replay),
        (event.id().to_string().as_str(), 1)
    );
    assert_eq!(
        rig.bus
            .list_dead_letters("sql-writer", 100)
            .await
            .unwrap()
            .len(),
        1,
        "a dry run changes nothing"
    );

    let done = replay(&*rig.bus, &*rig.store, "sql-writer", &all, false)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert!(rig
        .bus
        .list_dead_letters("sql-writer", 100)
        .await
        .unwrap()
        .is_empty());
    let report = drain(&rig).await;
    assert_eq!((report.applied, report.dead_lettered), (1, 0), "{report:?}");
    let rows = rig.store.list_dead_letters(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].replay_count, 1);
    assert!(rows[0].last_replayed_at.is_some());
    let state = rig.store.snapshot().await.unwrap();
    assert_eq!(state.follow_edges.len(), 1);
}

/// A message the bus adapter dead-letters on its own (JetStream's
/// max-deliveries watcher) gets its SQL dead-letter row through the writer's hook.
#[tokio::test(flavor = "multi_thread")]
async fn adapter_dead_letters_reach_sql_too() {
    let rig = rig().await;
    let event = events::block(mirror_schema::Op::Create, "u1", "u2", events::t(1));
    let (hook, recorder) =
        sql_writer::writer::record_adapter_dead_letters(rig.store.clone(), "sql-writer".into());
    let why = mirror_bus::DeadLetter {
        reason: "max_deliveries".into(),
        description: "JetStream stopped redelivering".into(),
        attempts: 5,
    };
    hook(WireMessage::structured(&event), why);
    drop(hook);
    recorder.await.unwrap();
    let rows = rig.store.list_dead_letters(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.key, event.id().to_string());
    assert_eq!(
        (rows[0].record.reason.as_str(), rows[0].record.attempts),
        ("max_deliveries", 5)
    );
    assert_eq!(
        rows[0].record.event_type.as_deref(),
        Some("dm.block.create")
    );
}

/// Issue 10, end to end on JetStream: a message the broker gives up on (its
/// delivery limit reached with nobody dead-lettering it — a writer that died
/// during the last attempt) reaches the SQL dead-letter table through the port
/// (`EventBus::watch_broker_dead_letters`, as the writer's `main` starts it),
/// not through a downcast to the JetStream type.
#[tokio::test(flavor = "multi_thread")]
async fn broker_dead_letters_reach_sql_through_the_port() {
    use mirror_bus::{Delivery, Receiver};
    let rig = rig().await;
    let topic = FreshTopic::new();
    let bus = JetStreamBus::connect(JetStreamConfig {
        url: topic.url.clone(),
        topic: topic.topic.clone(),
        max_deliver: 2,
        ack_wait: Duration::from_secs(1),
        ..JetStreamConfig::default()
    })
    .await
    .expect("connect bus");
    bus.ensure_topology().await.expect("topology");
    let (hook, _recorder) =
        sql_writer::writer::record_adapter_dead_letters(rig.store.clone(), "sql-writer".into());
    let watch = bus
        .watch_broker_dead_letters("sql-writer", hook)
        .await
        .expect("watch");
    let event = events::block(mirror_schema::Op::Create, "u1", "u9", events::t(1));
    bus.publish(&OutboundMessage::from_event(&event))
        .await
        .expect("publish");
    let mut rx = bus.subscribe("sql-writer").await.expect("subscribe");
    for _ in 0..2 {
        let got = rx
            .receive(1, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        for d in got {
            // the writer "dies" before deciding: the message is released
            d.retry(Duration::ZERO).await.expect("retry");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let _ = rx
            .receive(1, Duration::from_millis(300))
            .await
            .expect("receive");
        let rows = rig.store.list_dead_letters(10).await.unwrap();
        if !rows.is_empty() {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no SQL dead-letter row for the broker's dead letter"
        );
    };
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.key, event.id().to_string());
    assert_eq!(rows[0].record.reason, "max_deliveries");
    assert_eq!(rows[0].record.attempts, 2);
    watch.abort();
}
