//! Helpers for the tests that run the publisher against Google's Firestore
//! emulator (`FIRESTORE_EMULATOR_HOST`): a fresh project per test, writes
//! through `Commit`, a live publisher task, and waiting on its events.

use std::collections::HashMap;
use std::time::Duration;

use publisher::firestore::sdk::gcloud_sdk::google::firestore::v1 as pb;
use publisher::firestore::sdk::gcloud_sdk::prost_types;
use publisher::firestore::FirestoreDb;
use publisher::live::{LiveConfig, LiveDeps};
use publisher::testing::{MemoryBus, MemoryStore};

/// A project id of its own (tests run in parallel against one emulator).
pub async fn fresh_project() -> (String, FirestoreDb) {
    let project = format!(
        "demo-rm-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let db = publisher::firestore::connect(&project, "(default)")
        .await
        .expect("connect to the emulator");
    (project, db)
}

pub fn ts(secs: i64) -> pb::Value {
    pb::Value {
        value_type: Some(pb::value::ValueType::TimestampValue(
            prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            },
        )),
    }
}

pub fn s(v: &str) -> pb::Value {
    pb::Value {
        value_type: Some(pb::value::ValueType::StringValue(v.to_owned())),
    }
}

pub fn map(items: Vec<(&str, pb::Value)>) -> pb::Value {
    pb::Value {
        value_type: Some(pb::value::ValueType::MapValue(pb::MapValue {
            fields: items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        })),
    }
}

pub fn array(items: Vec<pb::Value>) -> pb::Value {
    pb::Value {
        value_type: Some(pb::value::ValueType::ArrayValue(pb::ArrayValue {
            values: items,
        })),
    }
}

/// The fields of a valid message document.
pub fn message(body: &str, updated: i64) -> Vec<(&'static str, pb::Value)> {
    vec![
        ("authorUserId", s("u1")),
        ("bodyText", s(body)),
        ("createdAt", ts(1_700_000_000)),
        ("updatedAt", ts(updated)),
    ]
}

/// One write of a [`commit`]: set a document (path relative to the
/// database's documents) or delete it.
pub enum W<'a> {
    Set(String, Vec<(&'a str, pb::Value)>),
    Delete(String),
}

/// Commits the writes atomically; returns the commit time.
pub async fn commit(db: &FirestoreDb, writes: Vec<W<'_>>) -> chrono::DateTime<chrono::Utc> {
    let docs = db.get_documents_path().clone();
    let writes = writes
        .into_iter()
        .map(|w| pb::Write {
            update_mask: None,
            update_transforms: vec![],
            current_document: None,
            operation: Some(match w {
                W::Set(path, fields) => pb::write::Operation::Update(pb::Document {
                    name: format!("{docs}/{path}"),
                    fields: fields
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<HashMap<_, _>>(),
                    create_time: None,
                    update_time: None,
                }),
                W::Delete(path) => pb::write::Operation::Delete(format!("{docs}/{path}")),
            }),
        })
        .collect();
    let resp = db
        .client()
        .get()
        .commit(pb::CommitRequest {
            database: db.get_database_path().clone(),
            writes,
            transaction: vec![],
            request_options: None,
        })
        .await
        .expect("commit to the emulator")
        .into_inner();
    let t = resp.commit_time.expect("a commit time");
    chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a valid commit time")
}

/// Wait until the bus holds an event matching `pred`.
pub async fn wait_for(
    bus: &MemoryBus,
    what: &str,
    pred: impl Fn(&mirror_schema::MirrorEvent) -> bool,
) -> mirror_schema::MirrorEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = bus.events().into_iter().find(|e| pred(e)) {
            return e;
        }
        if tokio::time::Instant::now() > deadline {
            let seen: Vec<String> = bus
                .events()
                .iter()
                .map(|e| format!("{} {}", e.event_type(), e.subject()))
                .collect();
            panic!("no {what} within 30 s; published: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is(e: &mirror_schema::MirrorEvent, ty: &str, subject: &str) -> bool {
    e.event_type().as_str() == ty && e.subject().to_string() == subject
}

/// A live publisher task with `config`; send on the returned sender (or
/// abort the handle, for a kill) to stop it.
pub fn start(
    db: &FirestoreDb,
    config: LiveConfig,
    bus: &MemoryBus,
    store: &MemoryStore,
) -> (
    tokio::task::JoinHandle<Result<publisher::live::LiveReport, publisher::live::LiveError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let deps = LiveDeps {
        transport: publisher::firestore::FirestoreTransport::new(db.clone()),
        bus: bus.clone(),
        store: store.clone(),
        config,
    };
    let handle = tokio::spawn(async move {
        publisher::run(deps, async {
            let _ = stopped.await;
        })
        .await
    });
    (handle, stop)
}

/// Backfill options for every group of `project`, single shard, not a dry run.
pub fn backfill_options(project: &str, page_size: u32) -> publisher::backfill::BackfillOptions {
    publisher::backfill::BackfillOptions {
        groups: publisher::backfill::Group::ALL.to_vec(),
        since: None,
        budget_reads: None,
        dry_run: false,
        page_size,
        shard: publisher::sink::Shard::SINGLE,
        source: publisher::mapping::SourceInfo::new(project, "(default)"),
        fresh: false,
        families: None,
        read_time: None,
        recovery: false,
    }
}
