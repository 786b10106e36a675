//! The live loop over a scripted transport, the in-memory bus and store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use tokio::sync::Notify;

use super::*;
use crate::listen::{TargetChange, TargetChangeKind};
use crate::testing::{MemoryBus, MemoryStore};
use crate::value::{Document, Timestamp, Value};
use mirror_store::CheckpointStore;

#[derive(Debug, Clone)]
enum Step {
    Msg(ListenResponse),
    Fail(TransportErrorKind),
    /// Signal the test, then wait forever (until shutdown).
    Hang,
}

type SharedRequests = Arc<Mutex<mpsc::UnboundedReceiver<ListenRequest>>>;

/// A transport that plays one script per opened stream and records the requests it was sent.
#[derive(Clone, Default)]
struct Scripted {
    scripts: Arc<Mutex<VecDeque<Vec<Step>>>>,
    requests: Arc<Mutex<Vec<SharedRequests>>>,
    hung: Arc<Notify>,
    /// What a document get finds (everything else does not exist).
    existing: Arc<Mutex<Vec<Document>>>,
}

impl Scripted {
    fn new(scripts: Vec<Vec<Step>>) -> Scripted {
        Scripted {
            scripts: Arc::new(Mutex::new(scripts.into())),
            ..Scripted::default()
        }
    }
    /// The requests sent on stream `i` so far.
    fn sent(&self, i: usize) -> Vec<ListenRequest> {
        let rx = self.requests.lock().unwrap()[i].clone();
        let mut rx = rx.lock().unwrap();
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }
}

impl ListenTransport for Scripted {
    type Stream = BoxStream<'static, Result<ListenResponse, TransportError>>;

    async fn get_documents(
        &self,
        paths: &[String],
    ) -> Result<Vec<Option<Document>>, TransportError> {
        let existing = self.existing.lock().unwrap();
        Ok(paths
            .iter()
            .map(|p| existing.iter().find(|d| &d.path == p).cloned())
            .collect())
    }

    async fn open(
        &self,
        requests: mpsc::UnboundedReceiver<ListenRequest>,
    ) -> Result<Self::Stream, TransportError> {
        self.requests
            .lock()
            .unwrap()
            .push(Arc::new(Mutex::new(requests)));
        let script = self
            .scripts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| vec![Step::Hang]);
        let hung = self.hung.clone();
        Ok(futures::stream::iter(script)
            .then(move |step| {
                let hung = hung.clone();
                async move {
                    match step {
                        Step::Msg(m) => Some(Ok(m)),
                        Step::Fail(kind) => Some(Err(TransportError {
                            kind,
                            message: "scripted".into(),
                        })),
                        Step::Hang => {
                            hung.notify_one();
                            futures::future::pending::<()>().await;
                            None
                        }
                    }
                }
            })
            .take_while(|x| std::future::ready(x.is_some()))
            .map(|x| x.unwrap())
            .boxed())
    }
}

fn t(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_760_000_000 + secs, 0).unwrap()
}

fn conv(id: &str, created: i64, updated: i64) -> Document {
    let fields: BTreeMap<String, Value> = [
        ("type", Value::String("direct".into())),
        ("participants", Value::Array(vec![])),
        ("createdAt", Value::Timestamp(t(created))),
        ("updatedAt", Value::Timestamp(t(updated))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Document {
        path: format!("conversations/{id}"),
        fields,
        create_time: t(created),
        update_time: t(updated),
    }
}

fn msg(d: Document, target: TargetId) -> Step {
    Step::Msg(ListenResponse::DocumentChange {
        doc: d,
        target_ids: vec![target],
        removed_target_ids: vec![],
    })
}
fn tc(kind: TargetChangeKind, ids: &[TargetId], token: &str, at: Option<i64>) -> Step {
    Step::Msg(ListenResponse::TargetChange(TargetChange {
        kind,
        target_ids: ids.to_vec(),
        resume_token: token.as_bytes().to_vec(),
        read_time: at.map(t),
        cause: None,
    }))
}
fn initial(docs: Vec<Document>, token: &str, at: i64) -> Vec<Step> {
    let mut s = vec![tc(TargetChangeKind::Add, &[1, 2, 4, 5], "", None)];
    s.extend(docs.into_iter().map(|d| msg(d, 1)));
    s.push(tc(TargetChangeKind::Current, &[1, 2, 4, 5], token, None));
    s.push(tc(TargetChangeKind::NoChange, &[], token, Some(at)));
    s
}

fn config() -> LiveConfig {
    LiveConfig {
        reconnect: mirror_runtime::backoff::Backoff::new(
            Duration::from_millis(1),
            Duration::from_secs(60),
        ),
        ..LiveConfig::new(SourceInfo::new("demo", "(default)"), Shard::SINGLE)
    }
}

async fn run_until_hung(
    transport: &Scripted,
    bus: &MemoryBus,
    store: &MemoryStore,
) -> Result<LiveReport, LiveError> {
    let hung = transport.hung.clone();
    let deps = LiveDeps {
        transport: transport.clone(),
        bus: bus.clone(),
        store: store.clone(),
        config: config(),
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        run(deps, async move { hung.notified().await }),
    )
    .await
    .expect("run stops at the hang")
}

fn saved_state(store: &MemoryStore) -> ResumeState {
    ResumeState::decode(
        &store
            .checkpoint(CHECKPOINT_MODULE, "0-of-1")
            .unwrap()
            .cursor_token
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn publishes_at_consistent_points_resumes_after_errors_and_restarts_from_the_checkpoint() {
    let mut bad = conv("c3", 1, 1);
    bad.fields.remove("type");
    let mut first = initial(vec![conv("c1", 1, 1), bad], "g10", 10);
    first.push(msg(conv("c2", 11, 11), 1)); // not committed before the error
    first.push(Step::Fail(TransportErrorKind::Transient));
    let second = vec![
        tc(TargetChangeKind::Add, &[1, 2, 4, 5], "", None),
        msg(conv("c2", 11, 11), 1),
        tc(TargetChangeKind::Current, &[1, 2, 4, 5], "g12", None),
        tc(TargetChangeKind::NoChange, &[], "g12", Some(12)),
        Step::Hang,
    ];
    let transport = Scripted::new(vec![first, second]);
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let report = run_until_hung(&transport, &bus, &store).await.unwrap();

    assert_eq!(
        transport.sent(0),
        TARGETS
            .iter()
            .map(|t| ListenRequest::Add {
                target_id: t.id,
                resume_token: None,
                read_time: None,
                expected_count: None,
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        transport.sent(1),
        TARGETS
            .iter()
            .map(|t| ListenRequest::Add {
                target_id: t.id,
                resume_token: Some(b"g10".to_vec()),
                read_time: None,
                // c1 and c2 in the conversations target, nothing elsewhere.
                expected_count: Some(if t.id == 1 { 2 } else { 0 }),
            })
            .collect::<Vec<_>>(),
        "the second stream resumes from the first consistent point"
    );
    let subjects: Vec<String> = bus
        .events()
        .iter()
        .map(|e| format!("{} {}", e.event_type(), e.subject()))
        .collect();
    assert_eq!(
        subjects,
        vec![
            "dm.conversation.create conversations/c1",
            "dm.conversation.create conversations/c2"
        ]
    );
    assert_eq!(report.tally.dead_lettered, 1);
    let dl = store.dead_letters();
    assert!(
        dl[0].error.contains("`conversations/c3`") && dl[0].error.contains("`type`"),
        "{}",
        dl[0].error
    );
    let state = saved_state(&store);
    assert_eq!(state.read_time, Some(t(12)));
    assert_eq!(state.tokens.get(&1).map(Vec::as_slice), Some(&b"g12"[..]));

    // Restart: resumes from the checkpoint, sees a delete, publishes it at its read time.
    let third = vec![
        tc(TargetChangeKind::Add, &[1, 2, 4, 5], "", None),
        Step::Msg(ListenResponse::DocumentDelete {
            path: "conversations/c2".into(),
            read_time: Some(t(13)),
            removed_target_ids: vec![1],
        }),
        Step::Msg(ListenResponse::DocumentDelete {
            path: "follows/u1/targets/u2".into(),
            read_time: Some(t(13)),
            removed_target_ids: vec![4],
        }),
        tc(TargetChangeKind::Current, &[1, 2, 4, 5], "g14", None),
        tc(TargetChangeKind::NoChange, &[], "g14", Some(14)),
        Step::Hang,
    ];
    let transport = Scripted::new(vec![third]);
    let report = run_until_hung(&transport, &bus, &store).await.unwrap();
    assert_eq!(
        transport.sent(0)[0],
        ListenRequest::Add {
            target_id: 1,
            resume_token: Some(b"g12".to_vec()),
            read_time: None,
            // The restarted core's own membership, persisted with the token.
            expected_count: Some(3),
        }
    );
    // A conversation delete has no contract type: dead-lettered, not dropped.
    assert_eq!(report.tally.dead_lettered, 1);
    assert!(store
        .dead_letters()
        .iter()
        .any(|d| d.reason == "no_event_type"));
    let last = bus.events().pop().unwrap();
    assert_eq!(last.event_type().as_str(), "follow.edge.delete");
    assert_eq!(last.time(), t(13));
}

#[tokio::test]
async fn no_checkpoint_moves_past_an_unpublished_event() {
    let transport = Scripted::new(vec![initial(vec![conv("c1", 1, 1)], "g10", 10)]);
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    bus.fail_next(1000);
    let e = run_until_hung(&transport, &bus, &store).await.unwrap_err();
    assert!(matches!(e, LiveError::Sink(_)), "{e}");
    assert!(store.checkpoint(CHECKPOINT_MODULE, "0-of-1").is_none());
}

#[tokio::test]
async fn a_rejected_token_relistens_from_scratch_once_then_fails() {
    let state = ResumeState {
        read_time: Some(t(5)),
        tokens: [(1, b"old".to_vec())].into(),
        queries: [(1, TARGETS[0].query_hash(&KeyRange::ALL))].into(),
        ..ResumeState::default()
    };
    let store = MemoryStore::new();
    store
        .save_checkpoint(&Checkpoint {
            module: CHECKPOINT_MODULE.into(),
            shard: "0-of-1".into(),
            last_processed_at: None,
            cursor_token: Some(state.encode()),
        })
        .await
        .unwrap();
    let transport = Scripted::new(vec![
        vec![Step::Fail(TransportErrorKind::InvalidArgument)],
        initial(vec![conv("c1", 1, 1)], "g10", 10),
        vec![Step::Fail(TransportErrorKind::InvalidArgument)],
        vec![Step::Fail(TransportErrorKind::InvalidArgument)],
    ]);
    let bus = MemoryBus::new();
    let e = run_until_hung(&transport, &bus, &store).await.unwrap_err();
    assert!(matches!(e, LiveError::Rejected(_)), "{e}");
    assert_eq!(
        transport.sent(0)[0],
        ListenRequest::Add {
            target_id: 1,
            resume_token: Some(b"old".to_vec()),
            read_time: None,
            expected_count: None,
        }
    );
    assert_eq!(
        transport.sent(1)[0],
        ListenRequest::Add {
            target_id: 1,
            resume_token: None,
            read_time: None,
            expected_count: None,
        }
    );
    assert_eq!(
        bus.events().len(),
        1,
        "the full re-listen published the current state"
    );
}

#[tokio::test]
async fn filter_mismatch_sends_remove_and_add_on_the_open_stream() {
    let mut script = initial(vec![conv("c1", 1, 1), conv("c2", 1, 1)], "g10", 10);
    script.push(Step::Msg(ListenResponse::Filter {
        target_id: 1,
        count: 1,
        unchanged_names: None,
    }));
    script.push(Step::Hang);
    let transport = Scripted::new(vec![script]);
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let report = run_until_hung(&transport, &bus, &store).await.unwrap();
    let sent = transport.sent(0);
    assert_eq!(
        &sent[4..],
        &[
            ListenRequest::Remove { target_id: 1 },
            ListenRequest::Add {
                target_id: 1,
                resume_token: None,
                read_time: None,
                expected_count: None,
            }
        ]
    );
    assert!(matches!(report.notices[0], Notice::FilterMismatch { .. }));
}

/// The membership seeded after a restart: what the mirror holds live, per target.
#[test]
fn mirrored_membership_lists_live_documents_per_target() {
    use mirror_schema::{
        EventType, FollowEdgePayload, FollowSource, FollowState, MessageDeletePayload, MirrorEvent,
        Payload, Subject,
    };
    let time = |s: i64| chrono::DateTime::from_timestamp(1_760_000_000 + s, 0).unwrap();
    let event = |ty, subject: Subject, t, payload| {
        let source = MirrorEvent::firestore_source("demo", &subject);
        MirrorEvent::new(ty, subject, time(t), source, payload).unwrap()
    };
    let mut model = mirror_store::model::Model::new();
    // A hard-deleted message leaves a placeholder conversation and a tombstone.
    model.apply(&event(
        EventType::DmMessageDelete,
        Subject::Message {
            conversation_id: "c1".into(),
            message_id: "m1".into(),
        },
        1,
        Payload::MessageDelete(MessageDeletePayload::default()),
    ));
    model.apply(&event(
        EventType::FollowEdgeCreate,
        Subject::FollowEdge {
            follower_user_id: "u1".into(),
            target_user_id: "u2".into(),
        },
        2,
        Payload::FollowEdge(FollowEdgePayload {
            state: FollowState::Accepted,
            source: FollowSource::Web,
            created_at: time(2),
        }),
    ));
    let members = crate::live::mirrored_membership(&model.state());
    let by_target: std::collections::HashMap<_, _> = members.into_iter().collect();
    assert!(
        by_target[&1].is_empty(),
        "a placeholder is not a Firestore document"
    );
    assert!(
        by_target[&2].is_empty(),
        "a tombstone is not a live document"
    );
    assert_eq!(by_target[&4].get("follows/u1/targets/u2"), Some(&time(2)));
}

fn follow_edge(path: &str, created: i64, updated: i64) -> Document {
    let fields: BTreeMap<String, Value> = [
        ("state", Value::String("accepted".into())),
        ("source", Value::String("web".into())),
        ("createdAt", Value::Timestamp(t(created))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Document {
        path: path.into(),
        fields,
        create_time: t(created),
        update_time: t(updated),
    }
}

#[tokio::test]
async fn a_target_error_no_retry_fixes_ends_the_run_with_a_clear_error() {
    let mut script = initial(vec![conv("c1", 1, 1)], "g10", 10);
    script.push(Step::Msg(ListenResponse::TargetChange(TargetChange {
        kind: TargetChangeKind::Remove,
        target_ids: vec![2],
        resume_token: vec![],
        read_time: None,
        cause: Some(crate::listen::Cause {
            code: crate::listen::code::PERMISSION_DENIED,
            message: "Missing or insufficient permissions.".into(),
        }),
    })));
    let transport = Scripted::new(vec![script]);
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let e = run_until_hung(&transport, &bus, &store).await.unwrap_err();
    assert!(matches!(e, LiveError::Target(_)), "{e}");
    assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");
    assert_eq!(
        transport.requests.lock().unwrap().len(),
        1,
        "no reconnect loop"
    );
}

#[tokio::test]
async fn upserts_go_out_before_the_consistent_point_but_the_checkpoint_waits_for_it() {
    let mut script = vec![tc(TargetChangeKind::Add, &[1, 2, 4, 5], "", None)];
    script.extend((0..200).map(|i| msg(conv(&format!("c{i:03}"), 1, 1), 1)));
    script.push(Step::Hang);
    let transport = Scripted::new(vec![script]);
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let report = run_until_hung(&transport, &bus, &store).await.unwrap();
    // At the hang at most one publish window may still be in flight.
    assert!(
        bus.events().len() >= 200 - config().publish_window,
        "{}",
        bus.events().len()
    );
    assert_eq!(report.snapshots, 0);
    assert!(store.checkpoint(CHECKPOINT_MODULE, "0-of-1").is_none());
}

#[tokio::test]
async fn removes_are_confirmed_with_a_get_before_a_delete_is_published() {
    let gone = follow_edge("follows/u1/targets/u2", 1, 1);
    let still = follow_edge("follows/u1/targets/u3", 1, 1);
    let mut script = vec![tc(TargetChangeKind::Add, &[1, 2, 4, 5], "", None)];
    script.push(msg(gone.clone(), 4));
    script.push(msg(still.clone(), 4));
    script.push(tc(TargetChangeKind::Current, &[1, 2, 4, 5], "g10", None));
    script.push(tc(TargetChangeKind::NoChange, &[], "g10", Some(10)));
    for d in [&gone, &still] {
        script.push(Step::Msg(ListenResponse::DocumentRemove {
            path: d.path.clone(),
            removed_target_ids: vec![4],
            read_time: Some(t(11)),
        }));
    }
    script.push(tc(TargetChangeKind::NoChange, &[], "g12", Some(12)));
    script.push(Step::Hang);
    let transport = Scripted::new(vec![script]);
    // u3 still exists (the server could not send its new value): a newer version.
    transport
        .existing
        .lock()
        .unwrap()
        .push(follow_edge("follows/u1/targets/u3", 1, 11));
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let report = run_until_hung(&transport, &bus, &store).await.unwrap();
    assert_eq!(report.confirm_reads, 2);
    assert_eq!(report.deletes_refuted, 1);
    let events: Vec<String> = bus
        .events()
        .iter()
        .map(|e| format!("{} {}", e.event_type(), e.subject()))
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        events[2].contains("delete") && events[2].ends_with("u2"),
        "{events:?}"
    );
    assert!(
        events[3].contains("update") && events[3].ends_with("u3"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_start_read_time_newer_than_the_checkpoint_replaces_its_tokens_once() {
    let store = MemoryStore::new();
    let old = ResumeState {
        read_time: Some(t(5)),
        tokens: [(1, b"old".to_vec())].into(),
        queries: [(1, TARGETS[0].query_hash(&KeyRange::ALL))].into(),
        ..ResumeState::default()
    };
    store
        .save_checkpoint(&Checkpoint {
            module: CHECKPOINT_MODULE.into(),
            shard: "0-of-1".into(),
            last_processed_at: Some(t(5)),
            cursor_token: Some(old.encode()),
        })
        .await
        .unwrap();
    let bus = MemoryBus::new();
    let first = vec![
        tc(TargetChangeKind::Add, &[1, 2, 4, 5], "", None),
        msg(conv("c1", 1, 150), 1),
        tc(TargetChangeKind::Current, &[1, 2, 4, 5], "g200", None),
        tc(TargetChangeKind::NoChange, &[], "g200", Some(200)),
        Step::Hang,
    ];
    let transport = Scripted::new(vec![first]);
    let run_with = |transport: &Scripted| {
        let hung = transport.hung.clone();
        let deps = LiveDeps {
            transport: transport.clone(),
            bus: bus.clone(),
            store: store.clone(),
            config: LiveConfig {
                start_read_time: Some(t(100)),
                ..config()
            },
        };
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                run(deps, async move { hung.notified().await }),
            )
            .await
            .unwrap()
        }
    };
    run_with(&transport).await.unwrap();
    assert!(transport.sent(0).iter().all(|r| matches!(
        r,
        ListenRequest::Add { resume_token: None, read_time: Some(at), .. } if *at == t(100)
    )));
    assert_eq!(bus.events().len(), 1);
    // Restarted with the same setting: the checkpoint (200) is newer, so its tokens are used.
    let transport = Scripted::new(vec![vec![Step::Hang]]);
    run_with(&transport).await.unwrap();
    assert!(transport.sent(0).iter().all(|r| matches!(
        r,
        ListenRequest::Add { resume_token: Some(tok), read_time: None, .. } if tok == b"g200"
    )));
}

#[test]
fn checkpoint_age_is_measured_from_the_last_consistent_point() {
    let cp = Checkpoint {
        module: CHECKPOINT_MODULE.into(),
        shard: "0-of-1".into(),
        last_processed_at: Some(t(0)),
        cursor_token: None,
    };
    assert_eq!(
        checkpoint_age(&cp, t(26 * 60)),
        Some(Duration::from_secs(26 * 60))
    );
    assert!(checkpoint_age(&cp, t(26 * 60)).unwrap() > CHECKPOINT_AGE_ALERT);
    assert_eq!(checkpoint_age(&cp, t(-5)), Some(Duration::ZERO));
}

#[tokio::test]
async fn a_sharded_instance_publishes_exactly_its_key_range() {
    let docs = vec![
        conv("A1", 1, 1),
        conv("a1", 1, 1),
        conv("z9", 1, 1),
        conv("01", 1, 1),
    ];
    let mut published = Vec::new();
    for i in 0..2 {
        let shard = Shard::new(i, 2).unwrap();
        let transport = Scripted::new(vec![initial(docs.clone(), "g10", 10)]);
        let (bus, store) = (MemoryBus::new(), MemoryStore::new());
        let hung = transport.hung.clone();
        let deps = LiveDeps {
            transport: transport.clone(),
            bus: bus.clone(),
            store: store.clone(),
            config: LiveConfig {
                reconnect: mirror_runtime::backoff::Backoff::new(
                    Duration::from_millis(1),
                    Duration::from_secs(60),
                ),
                ..LiveConfig::new(SourceInfo::new("demo", "(default)"), shard)
            },
        };
        let report = tokio::time::timeout(
            Duration::from_secs(10),
            run(deps, async move { hung.notified().await }),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(report.tally.published + report.tally.not_owned, 4);
        assert!(store.checkpoint(CHECKPOINT_MODULE, &shard.id()).is_some());
        published.extend(bus.events().iter().map(|e| e.subject().to_string()));
    }
    published.sort();
    assert_eq!(
        published,
        vec![
            "conversations/01",
            "conversations/A1",
            "conversations/a1",
            "conversations/z9"
        ],
        "every document exactly once across the shards"
    );
}
