//! The `MirrorStore` conformance suite, defined once and run against every
//! adapter (`tests/tests/store_postgres.rs`, `tests/tests/store_mssql.rs`).
//!
//! Each case gets a fresh, migrated, empty store, feeds it events and checks
//! [`MirrorStore::snapshot`] against [`Model`] fed the same events (printing
//! [`MirrorState::diff`] on a mismatch), plus the outcome of every call. The
//! bookkeeping methods (dead letters, checkpoints, metrics, table counts) are
//! checked directly.
//!
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to one
//! `#[tokio::test]` per case (as the bus suite does), each on a fresh store
//! from a [`StoreFactory`], so the test runner runs, filters and reports the
//! cases one by one (`cargo nextest run -p mirror-tests --test store_postgres
//! conformance::checkpoints`). Every case is bounded by [`CASE_TIMEOUT`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mirror_schema::*;
use mirror_store::model::{newest_only, Model};
use mirror_store::{
    ApplyMode, ApplyOutcome, Checkpoint, DbCode, DeadLetterRecord, MetricSample, MirrorState,
    MirrorStore, StoreError,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::events::{block, conversation, follow, message, message_with, t};

/// No case may take longer than this.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Makes a fresh, migrated, empty store per case, with a guard dropped after
/// the case (e.g. a [`crate::FreshDb`] that drops its database). Any
/// `Fn() -> impl Future<Output = (store, guard)>` is one.
pub trait StoreFactory: Send + Sync {
    type Store: MirrorStore;
    type Guard: Send + 'static;
    fn fresh(&self) -> impl Future<Output = (Self::Store, Self::Guard)> + Send;
}

impl<F, Fut, S, G> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = (S, G)> + Send,
    S: MirrorStore,
    G: Send + 'static,
{
    type Store = S;
    type Guard = G;
    fn fresh(&self) -> impl Future<Output = (S, G)> + Send {
        self()
    }
}

/// Every case of the suite, once: calls `$callback!` with the list (module
/// and function of each case), so the test macro and anything else that
/// needs the cases read the same list.
#[macro_export]
macro_rules! store_conformance_cases {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback!($($args)*;
            store_conformance::empty_store_snapshot_is_empty,
            store_conformance::every_event_type_applies,
            store_conformance::duplicate_event_is_a_noop,
            store_conformance::older_version_is_stale,
            store_conformance::equal_time_is_ordered_by_event_id,
            store_conformance::delete_then_late_create_stays_deleted,
            store_conformance::newer_update_after_delete_clears_the_tombstone,
            store_conformance::placeholder_conversation_is_completed_by_its_event,
            store_conformance::conversation_participants_are_replaced,
            store_conformance::conversation_summary_follows_live_messages,
            store_conformance::follow_transitions_write_follow_events,
            store_conformance::message_edits_and_deletes_are_audited,
            store_conformance::apply_batch_equals_applying_one_by_one,
            store_conformance::per_event_batches_equal_applying_one_by_one,
            store_conformance::set_based_batches_equal_applying_one_by_one,
            store_conformance::one_batch_with_many_versions_of_each_entity,
            store_conformance::apply_batch_isolates_a_rejected_event,
            store_conformance::per_event_batch_isolates_a_rejected_event,
            store_conformance::set_based_batch_isolates_a_rejected_event,
            store_conformance::late_message_events_are_audited_with_their_own_payload,
            store_conformance::late_follow_event_re_derives_its_neighbours,
            store_conformance::late_history_is_the_same_in_batches,
            store_conformance::apply_batch_of_nothing_is_empty,
            store_conformance::concurrent_writers_converge,
            store_conformance::dead_letter_same_key_keeps_first_failure,
            store_conformance::dead_letter_replays_are_counted,
            store_conformance::checkpoints_round_trip,
            store_conformance::metrics_are_recorded,
            store_conformance::table_counts_cover_every_table_in_schema_order,
            conformance_ids::ids_differing_only_in_spaces_are_distinct,
            conformance_ids::longest_ids_with_characters_outside_the_bmp_are_stored,
        );
    };
}

/// One `#[tokio::test]` per conformance case, in a module `conformance`.
/// `$factory` is an expression of type `Option<impl StoreFactory>`; `None`
/// means the adapter is gated off (the gate has already printed its
/// `skipped:` line) and the test passes.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::store_conformance_cases!(store_conformance_tests!(@cases $factory));
        }
    };
    (@cases $factory:expr; $($module:ident::$case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::init();
                if let Some(factory) = $factory {
                    $crate::store_conformance::run(
                        stringify!($case),
                        &factory,
                        $crate::$module::$case,
                    )
                    .await;
                }
            }
        )*
    };
}

/// Run one case on a fresh store from `factory`, bounded by [`CASE_TIMEOUT`].
pub async fn run<F: StoreFactory, Fut: Future<Output = ()>>(
    name: &str,
    factory: &F,
    case: impl FnOnce(F::Store) -> Fut,
) {
    let (store, guard) = factory.fresh().await;
    if tokio::time::timeout(CASE_TIMEOUT, case(store))
        .await
        .is_err()
    {
        panic!("store conformance case `{name}` did not finish within {CASE_TIMEOUT:?}");
    }
    drop(guard);
}

// ---------------------------------------------------------------------------
// Helpers

/// `events::random_history` may draw two *different* events with the same id
/// (same type, subject and time, another body or state). No producer can do
/// that — one source version is one document — and no store could converge on
/// it, since whichever copy arrives first wins and the other is a duplicate.
/// Replace every event by the first one drawn with its id (duplicates stay).
pub fn canonical(history: Vec<MirrorEvent>) -> Vec<MirrorEvent> {
    let mut first: std::collections::HashMap<uuid::Uuid, MirrorEvent> =
        std::collections::HashMap::new();
    history
        .into_iter()
        .map(|e| first.entry(e.id()).or_insert(e).clone())
        .collect()
}

fn describe(e: &MirrorEvent) -> String {
    format!(
        "{} {} @ {}",
        e.event_type(),
        e.subject(),
        format_time(&e.time())
    )
}

/// Apply `events` one by one to the store and the model; outcomes must agree.
pub(crate) async fn apply_all<S: MirrorStore>(
    store: &S,
    model: &mut Model,
    events: &[MirrorEvent],
) -> Vec<ApplyOutcome> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let want = model.apply(e);
        let got = store
            .apply(e)
            .await
            .unwrap_or_else(|err| panic!("apply {} failed: {err}", describe(e)));
        assert_eq!(got, want, "outcome of {}", describe(e));
        out.push(got);
    }
    out
}

/// The store's snapshot must equal the model's state.
pub(crate) async fn assert_matches_model<S: MirrorStore>(
    store: &S,
    model: &Model,
    context: &str,
) -> MirrorState {
    let actual = store.snapshot().await.expect("snapshot");
    let expected = model.state();
    if actual != expected {
        panic!(
            "{context}: the store differs from the model (- model, + store):\n{}",
            MirrorState::diff(&expected, &actual)
        );
    }
    actual
}

fn entities_equal(expected: &MirrorState, actual: &MirrorState, context: &str) {
    let (e, a) = (expected.entities(), actual.entities());
    if e != a {
        panic!(
            "{context}: entities differ (- expected, + store):\n{}",
            MirrorState::diff(&e, &a)
        );
    }
}

fn source(subject: &Subject) -> String {
    MirrorEvent::firestore_source("demo", subject)
}

/// A message event with its own `createdAt` (the shared builder fixes it).
fn message_at(
    op: Op,
    cid: &str,
    mid: &str,
    created_at: DateTime<Utc>,
    time: DateTime<Utc>,
    soft_deleted: bool,
) -> MirrorEvent {
    let subject = Subject::Message {
        conversation_id: cid.into(),
        message_id: mid.into(),
    };
    let payload = if op == Op::Delete {
        Payload::MessageDelete(MessageDeletePayload {
            performed_by: Some("moderator".into()),
        })
    } else {
        Payload::Message(MessagePayload {
            author_user_id: "u2".into(),
            body_text: format!("{mid} at {}", format_time(&time)),
            attachments: None,
            external_media: Some(vec![serde_json::json!({"provider": "giphy", "id": "x"})]),
            created_at,
            edited_at: (op == Op::Update).then_some(time),
            deleted_at: soft_deleted.then_some(time),
            client_message_id: None,
        })
    };
    let ty = EventType::of(EventFamily::Message, op).unwrap();
    MirrorEvent::new(ty, subject.clone(), time, source(&subject), payload)
        .expect("valid message event")
}

/// A conversation event with explicit participants.
fn conversation_with(
    op: Op,
    cid: &str,
    participants: Vec<Participant>,
    time: DateTime<Utc>,
) -> MirrorEvent {
    let subject = Subject::Conversation {
        conversation_id: cid.into(),
    };
    let payload = Payload::Conversation(ConversationPayload {
        kind: ConversationKind::Group,
        participants,
        created_at: t(0),
        updated_at: time,
        last_message_id: Some("ignored-by-the-mirror".into()),
    });
    let ty = EventType::of(EventFamily::Conversation, op).unwrap();
    MirrorEvent::new(ty, subject.clone(), time, source(&subject), payload)
        .expect("valid conversation event")
}

fn block_with(
    op: Op,
    user: &str,
    target: &str,
    revoked: Option<DateTime<Utc>>,
    time: DateTime<Utc>,
) -> MirrorEvent {
    let subject = Subject::Block {
        user_id: user.into(),
        target_user_id: target.into(),
    };
    let payload = Payload::Block(BlockPayload {
        created_at: t(0),
        revoked_at: revoked,
        source: BlockSource::Admin,
    });
    let ty = EventType::of(EventFamily::Block, op).unwrap();
    MirrorEvent::new(ty, subject.clone(), time, source(&subject), payload)
        .expect("valid block event")
}

/// Errors a concurrent writer is expected to retry: database errors the
/// writer's one table of errors (`sql_writer::db_errors`) calls transient
/// (deadlock, serialization, lock timeout, a concurrent first insert).
fn is_retryable(e: &StoreError) -> bool {
    use sql_writer::policy::Class;
    match &e.code {
        Some(DbCode::Sqlstate(s)) => sql_writer::db_errors::postgres_class(s) == Class::Transient,
        Some(DbCode::Mssql(n)) => sql_writer::db_errors::mssql_class(*n) == Class::Transient,
        None => false,
    }
}

async fn apply_retrying<S: MirrorStore>(store: &S, e: &MirrorEvent) -> ApplyOutcome {
    for attempt in 0.. {
        match store.apply(e).await {
            Ok(o) => return o,
            Err(err) if is_retryable(&err) && attempt < 50 => {
                tokio::time::sleep(std::time::Duration::from_millis(5 + attempt * 3)).await;
            }
            Err(err) => panic!("apply {} failed: {err}", describe(e)),
        }
    }
    unreachable!()
}

fn dead_letter(key: &str, attempts: u32, failed_at: DateTime<Utc>) -> DeadLetterRecord {
    DeadLetterRecord {
        key: key.to_owned(),
        event_id: Some(uuid::Uuid::new_v5(&ID_NAMESPACE, key.as_bytes())),
        event_type: Some("dm.message.create".into()),
        subject: Some("conversations/c1/messages/m1".into()),
        payload: format!("{{\"id\": \"{key}\", \"note\": \"ünïcødé ✓\"}}"),
        reason: "rejected_by_database".into(),
        error: format!("database: SQLSTATE 23514: attempt {attempts}"),
        attempts,
        failed_at,
        subscription: "sql-writer".into(),
    }
}

// ---------------------------------------------------------------------------
// Cases

pub async fn empty_store_snapshot_is_empty<S: MirrorStore>(store: S) {
    assert_matches_model(&store, &Model::new(), "fresh store").await;
    assert!(store.list_dead_letters(10).await.unwrap().is_empty());
    assert_eq!(store.load_checkpoint("publisher", "0").await.unwrap(), None);
}

pub async fn every_event_type_applies<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let events = vec![
        conversation(Op::Create, "c1", &["u1", "u2"], t(10)),
        conversation(Op::Update, "c1", &["u1", "u2", "u3"], t(20)),
        message(Op::Create, "c1", "m1", "hello", t(11)),
        message(Op::Update, "c1", "m1", "hello, edited", t(12)),
        message(Op::Create, "c1", "m2", "second", t(13)),
        message(Op::Delete, "c1", "m2", "", t(14)),
        block(Op::Create, "u1", "u9", t(10)),
        block(Op::Update, "u1", "u9", t(11)),
        block(Op::Create, "u2", "u9", t(10)),
        block(Op::Delete, "u2", "u9", t(12)),
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(10)),
        follow(Op::Update, "u1", "u2", FollowState::Accepted, t(11)),
        follow(Op::Create, "u3", "u2", FollowState::Accepted, t(10)),
        follow(Op::Delete, "u3", "u2", FollowState::Accepted, t(11)),
    ];
    let covered: std::collections::BTreeSet<EventType> =
        events.iter().map(|e| e.event_type()).collect();
    assert_eq!(
        covered.len(),
        EventType::ALL.len(),
        "the case covers every event type"
    );
    let outcomes = apply_all(&store, &mut model, &events).await;
    assert!(
        outcomes.iter().all(|o| *o == ApplyOutcome::Applied),
        "{outcomes:?}"
    );
    let state = assert_matches_model(&store, &model, "one event of every type").await;
    assert_eq!(state.participants.len(), 3);
    assert_eq!(
        state.conversations["c1"].participant_hash.as_deref(),
        Some(mirror_store::state::participant_hash(["u3", "u1", "u2"]).as_str())
    );
    assert!(state.messages[&("c1".into(), "m2".into())].tombstone);
    assert_eq!(
        state.blocks[&("u2".into(), "u9".into())].deleted_at,
        Some(t(12))
    );
    assert_eq!(state.follow_edges[&("u3".into(), "u2".into())].state, None);
}

pub async fn duplicate_event_is_a_noop<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let events = vec![
        conversation(Op::Create, "c1", &["u1", "u2"], t(1)),
        message(Op::Create, "c1", "m1", "hi", t(2)),
        message(Op::Update, "c1", "m1", "hi!", t(3)),
        message(Op::Delete, "c1", "m1", "", t(4)),
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(1)),
        block(Op::Create, "u1", "u2", t(1)),
        // stale the first time, duplicate the second
        message(
            Op::Update,
            "c1",
            "m1",
            "late",
            t(3) - chrono::Duration::milliseconds(1),
        ),
    ];
    apply_all(&store, &mut model, &events).await;
    let before = assert_matches_model(&store, &model, "first delivery").await;
    for e in &events {
        assert_eq!(
            store.apply(e).await.unwrap(),
            ApplyOutcome::Duplicate,
            "redelivery of {}",
            describe(e)
        );
        assert_eq!(model.apply(e), ApplyOutcome::Duplicate);
    }
    let batch = store.apply_batch(&events).await.unwrap();
    assert!(
        batch
            .iter()
            .all(|r| matches!(r, Ok(ApplyOutcome::Duplicate))),
        "{batch:?}"
    );
    let after = assert_matches_model(&store, &model, "after redelivery").await;
    assert_eq!(before, after);
    assert_eq!(
        after.audit.len(),
        3,
        "one row per distinct update/delete id (the stale edit too), no second copies"
    );
    assert_eq!(
        after.follow_events.len(),
        1,
        "one follow event, no second copy"
    );
}

pub async fn older_version_is_stale<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let newer = vec![
        conversation(Op::Update, "c1", &["u1", "u2"], t(20)),
        message(Op::Update, "c1", "m1", "new", t(20)),
        block(Op::Update, "u1", "u2", t(20)),
        follow(Op::Update, "u1", "u2", FollowState::Accepted, t(20)),
    ];
    let older = vec![
        conversation(Op::Create, "c1", &["u1", "u2", "u3"], t(10)),
        message(Op::Create, "c1", "m1", "old", t(10)),
        block(Op::Create, "u1", "u2", t(10)),
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(10)),
        message(Op::Delete, "c1", "m1", "", t(15)),
        block(Op::Delete, "u1", "u2", t(15)),
        follow(Op::Delete, "u1", "u2", FollowState::Pending, t(15)),
    ];
    apply_all(&store, &mut model, &newer).await;
    let outcomes = apply_all(&store, &mut model, &older).await;
    assert!(
        outcomes.iter().all(|o| *o == ApplyOutcome::Stale),
        "{outcomes:?}"
    );
    let state = assert_matches_model(&store, &model, "older events after newer").await;
    assert_eq!(
        state.messages[&("c1".into(), "m1".into())]
            .body_text
            .as_deref(),
        Some("new")
    );
    assert_eq!(state.participants.len(), 2);
}

pub async fn equal_time_is_ordered_by_event_id<S: MirrorStore>(store: S) {
    // Same time, different types: the event id decides, whatever the arrival order.
    let a = message(Op::Update, "c1", "m1", "update", t(5));
    let b = message(Op::Delete, "c1", "m1", "", t(5));
    let c = follow(Op::Update, "u1", "u2", FollowState::Blocked, t(5));
    let d = follow(Op::Delete, "u1", "u2", FollowState::Blocked, t(5));
    let mut model = Model::new();
    apply_all(
        &store,
        &mut model,
        &[b.clone(), a.clone(), c.clone(), d.clone()],
    )
    .await;
    let state = assert_matches_model(&store, &model, "ties on time").await;
    entities_equal(&newest_only(&[a, b, c, d]), &state, "ties on time");
}

pub async fn delete_then_late_create_stays_deleted<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let events = vec![
        message(Op::Delete, "c1", "m1", "", t(10)),
        message(Op::Create, "c1", "m1", "zombie", t(5)),
        message(Op::Update, "c1", "m1", "zombie edit", t(9)),
        block(Op::Delete, "u1", "u2", t(10)),
        block(Op::Create, "u1", "u2", t(5)),
        follow(Op::Delete, "u1", "u2", FollowState::Accepted, t(10)),
        follow(Op::Create, "u1", "u2", FollowState::Accepted, t(5)),
    ];
    let outcomes = apply_all(&store, &mut model, &events).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::Stale)
            .count(),
        4,
        "{outcomes:?}"
    );
    let state = assert_matches_model(&store, &model, "late creates after deletes").await;
    let m = &state.messages[&("c1".into(), "m1".into())];
    assert!(
        m.tombstone && m.deleted_at == Some(t(10)) && m.body_text.is_none(),
        "{m:?}"
    );
    assert!(
        state.conversations["c1"].placeholder,
        "a delete alone leaves a placeholder parent"
    );
    assert_eq!(
        state.blocks[&("u1".into(), "u2".into())].deleted_at,
        Some(t(10))
    );
    assert_eq!(
        state.follow_edges[&("u1".into(), "u2".into())].deleted_at,
        Some(t(10))
    );
    let mut log: Vec<(DateTime<Utc>, &str)> = state
        .follow_events
        .iter()
        .map(|f| (f.created_at, f.event_type.as_str()))
        .collect();
    log.sort();
    assert_eq!(
        log,
        [(t(5), "accept"), (t(10), "remove")],
        "the late create is history: observed before the delete (contract v1.1)"
    );
}

pub async fn newer_update_after_delete_clears_the_tombstone<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let events = vec![
        message(Op::Create, "c1", "m1", "v1", t(1)),
        message(Op::Delete, "c1", "m1", "", t(2)),
        message(Op::Update, "c1", "m1", "v3", t(3)),
        block(Op::Create, "u1", "u2", t(1)),
        block(Op::Delete, "u1", "u2", t(2)),
        block_with(Op::Update, "u1", "u2", Some(t(3)), t(3)),
        follow(Op::Create, "u1", "u2", FollowState::Accepted, t(1)),
        follow(Op::Delete, "u1", "u2", FollowState::Accepted, t(2)),
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(3)),
    ];
    let outcomes = apply_all(&store, &mut model, &events).await;
    assert!(
        outcomes.iter().all(|o| *o == ApplyOutcome::Applied),
        "{outcomes:?}"
    );
    let state = assert_matches_model(&store, &model, "revived after delete").await;
    let m = &state.messages[&("c1".into(), "m1".into())];
    assert!(
        !m.tombstone && m.deleted_at.is_none() && m.body_text.as_deref() == Some("v3"),
        "{m:?}"
    );
    assert_eq!(
        state.conversations["c1"].last_message_id.as_deref(),
        Some("m1")
    );
    let b = &state.blocks[&("u1".into(), "u2".into())];
    assert!(
        b.deleted_at.is_none() && b.revoked_at == Some(t(3)),
        "{b:?}"
    );
    assert_eq!(
        state.follow_edges[&("u1".into(), "u2".into())]
            .state
            .as_deref(),
        Some("pending")
    );
}

pub async fn placeholder_conversation_is_completed_by_its_event<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    apply_all(
        &store,
        &mut model,
        &[message(Op::Create, "c1", "m1", "early", t(5))],
    )
    .await;
    let state = assert_matches_model(&store, &model, "message before its conversation").await;
    let c = &state.conversations["c1"];
    assert!(
        c.placeholder && c.kind.is_none() && c.source_version.is_none(),
        "{c:?}"
    );
    assert_eq!(c.last_message_id.as_deref(), Some("m1"));
    assert_eq!(
        c.updated_at,
        Some(t(1)),
        "updated_at = last message's created_at"
    );

    apply_all(
        &store,
        &mut model,
        &[conversation(Op::Create, "c1", &["u1", "u2"], t(3))],
    )
    .await;
    let state = assert_matches_model(&store, &model, "conversation arrives").await;
    let c = &state.conversations["c1"];
    assert!(
        !c.placeholder && c.kind.as_deref() == Some("direct") && c.source_version == Some(t(3)),
        "{c:?}"
    );
    assert_eq!(
        c.last_message_id.as_deref(),
        Some("m1"),
        "the summary survives completion"
    );
    assert_eq!(c.updated_at, Some(t(3)));

    // A placeholder for a conversation that never arrives is still consistent.
    apply_all(
        &store,
        &mut model,
        &[message(Op::Delete, "c2", "m9", "", t(5))],
    )
    .await;
    assert_matches_model(&store, &model, "orphan delete").await;
}

pub async fn conversation_participants_are_replaced<S: MirrorStore>(store: S) {
    let p = |u: &str, role: ParticipantRole, mute: MuteState, pointer: Option<&str>| Participant {
        user_id: u.into(),
        role,
        joined_at: t(1),
        mute_state: mute,
        read_pointer_message_id: pointer.map(Into::into),
    };
    let mut model = Model::new();
    apply_all(
        &store,
        &mut model,
        &[conversation_with(
            Op::Create,
            "c1",
            vec![
                p("u1", ParticipantRole::Owner, MuteState::None, Some("m1")),
                p("u2", ParticipantRole::Member, MuteState::Muted, None),
                p(
                    "U3",
                    ParticipantRole::Member,
                    MuteState::None,
                    Some("m-not-yet"),
                ),
            ],
            t(1),
        )],
    )
    .await;
    assert_matches_model(&store, &model, "three participants").await;
    apply_all(
        &store,
        &mut model,
        &[
            message(Op::Create, "c1", "m1", "pointer target", t(2)),
            conversation_with(
                Op::Update,
                "c1",
                vec![
                    p("u2", ParticipantRole::Owner, MuteState::None, Some("m1")),
                    p("u4", ParticipantRole::Member, MuteState::Muted, None),
                ],
                t(3),
            ),
        ],
    )
    .await;
    let state = assert_matches_model(&store, &model, "participants replaced").await;
    assert_eq!(
        state
            .participants
            .keys()
            .map(|(_, u)| u.as_str())
            .collect::<Vec<_>>(),
        vec!["u2", "u4"]
    );
    assert_eq!(
        state.conversations["c1"].participant_hash.as_deref(),
        Some(mirror_store::state::participant_hash(["u4", "u2"]).as_str())
    );
    // An empty participant list is allowed and hashes the empty string.
    apply_all(
        &store,
        &mut model,
        &[conversation_with(Op::Update, "c1", vec![], t(4))],
    )
    .await;
    assert_matches_model(&store, &model, "no participants").await;
}

/// Apply `events`, check against the model, return conversation c1's row.
async fn summary_step<S: MirrorStore>(
    store: &S,
    model: &mut Model,
    events: Vec<MirrorEvent>,
) -> mirror_store::state::ConversationRow {
    apply_all(store, model, &events).await;
    let state = assert_matches_model(
        store,
        model,
        &format!("after {}", describe(events.last().unwrap())),
    )
    .await;
    state.conversations["c1"].clone()
}

pub async fn conversation_summary_follows_live_messages<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let c = summary_step(
        &store,
        &mut model,
        vec![conversation(Op::Create, "c1", &["u1", "u2"], t(10))],
    )
    .await;
    assert_eq!(
        (c.last_message_id.clone(), c.updated_at),
        (None, Some(t(10)))
    );

    let c = summary_step(
        &store,
        &mut model,
        vec![message_at(Op::Create, "c1", "m1", t(20), t(20), false)],
    )
    .await;
    assert_eq!(
        (c.last_message_id.clone(), c.last_message_at, c.updated_at),
        (Some("m1".into()), Some(t(20)), Some(t(20)))
    );

    // Same created_at: the greater Firestore id wins (bytewise: "m2" > "M9").
    let c = summary_step(
        &store,
        &mut model,
        vec![
            message_at(Op::Create, "c1", "m2", t(30), t(30), false),
            message_at(Op::Create, "c1", "M9", t(30), t(31), false),
        ],
    )
    .await;
    assert_eq!(c.last_message_id.as_deref(), Some("m2"));

    // An older message arriving late does not move the summary.
    let c = summary_step(
        &store,
        &mut model,
        vec![message_at(Op::Create, "c1", "m0", t(5), t(32), false)],
    )
    .await;
    assert_eq!(c.last_message_id.as_deref(), Some("m2"));

    // Soft delete of the newest: the next live one takes over.
    let c = summary_step(
        &store,
        &mut model,
        vec![message_at(Op::Update, "c1", "m2", t(30), t(40), true)],
    )
    .await;
    assert_eq!(
        (c.last_message_id.as_deref(), c.updated_at),
        (Some("M9"), Some(t(30)))
    );

    // Hard deletes.
    let c = summary_step(
        &store,
        &mut model,
        vec![message_at(Op::Delete, "c1", "M9", t(0), t(41), false)],
    )
    .await;
    assert_eq!(c.last_message_id.as_deref(), Some("m1"));
    let c = summary_step(
        &store,
        &mut model,
        vec![
            message_at(Op::Delete, "c1", "m1", t(0), t(42), false),
            message_at(Op::Delete, "c1", "m0", t(0), t(43), false),
        ],
    )
    .await;
    assert_eq!(
        (c.last_message_id.clone(), c.last_message_at, c.updated_at),
        (None, None, Some(t(10)))
    );

    // A newer conversation document moves updated_at past the messages.
    let c = summary_step(
        &store,
        &mut model,
        vec![
            message_at(Op::Create, "c1", "m5", t(50), t(50), false),
            conversation(Op::Update, "c1", &["u1", "u2"], t(60)),
        ],
    )
    .await;
    assert_eq!(
        (c.last_message_id.as_deref(), c.updated_at, c.doc_updated_at),
        (Some("m5"), Some(t(60)), Some(t(60)))
    );
}

pub async fn follow_transitions_write_follow_events<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let events = vec![
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(1)), // request
        follow(Op::Update, "u1", "u2", FollowState::Pending, t(2)), // no transition
        follow(Op::Update, "u1", "u2", FollowState::Accepted, t(3)), // accept
        follow(Op::Update, "u1", "u2", FollowState::Blocked, t(4)), // block
        follow(Op::Update, "u1", "u2", FollowState::Accepted, t(5)), // unblock
        follow(Op::Delete, "u1", "u2", FollowState::Accepted, t(6)), // remove
        follow(Op::Create, "u1", "u2", FollowState::Blocked, t(7)), // block
        follow(Op::Delete, "u1", "u2", FollowState::Blocked, t(8)), // unblock
        follow(Op::Create, "u3", "u2", FollowState::Accepted, t(1)), // accept (no request first)
        follow(Op::Delete, "u4", "u2", FollowState::Accepted, t(1)), // delete of nothing: none
        // Stale for the row, but history: observed between pending@1 and
        // accepted@3 with the same state as its neighbour, so no transition.
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(2)),
    ];
    apply_all(&store, &mut model, &events).await;
    let state = assert_matches_model(&store, &model, "follow transitions").await;
    let mut log: Vec<_> = state
        .follow_events
        .iter()
        .map(|f| {
            (
                f.follower_user_id.as_str(),
                f.created_at,
                f.event_type.as_str(),
            )
        })
        .collect();
    log.sort();
    assert_eq!(
        log,
        vec![
            ("u1", t(1), "request"),
            ("u1", t(3), "accept"),
            ("u1", t(4), "block"),
            ("u1", t(5), "unblock"),
            ("u1", t(6), "remove"),
            ("u1", t(7), "block"),
            ("u1", t(8), "unblock"),
            ("u3", t(1), "accept"),
        ]
    );
}

pub async fn message_edits_and_deletes_are_audited<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let create = message(Op::Create, "c1", "m1", "v1", t(1));
    let edit = message(Op::Update, "c1", "m1", "v2", t(2));
    let soft = message_with(Op::Update, "c1", "m1", "v2", t(3), Some(t(3)));
    let hard = message(Op::Delete, "c1", "m1", "", t(4));
    let stale_edit = message(
        Op::Update,
        "c1",
        "m1",
        "late",
        t(2) + chrono::Duration::microseconds(1),
    );
    let orphan_delete = message(Op::Delete, "c1", "m2", "", t(5));
    apply_all(
        &store,
        &mut model,
        &[
            create,
            edit.clone(),
            soft.clone(),
            hard.clone(),
            stale_edit.clone(),
            orphan_delete.clone(),
        ],
    )
    .await;
    let state = assert_matches_model(&store, &model, "audit").await;
    let mut rows: Vec<_> = state
        .audit
        .iter()
        .map(|a| {
            (
                a.created_at,
                a.message_id.as_str(),
                a.action.as_str(),
                a.performed_by.as_deref(),
                a.event_id,
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (t(2), "m1", "edit", Some("u1"), edit.id()),
            (
                t(2) + chrono::Duration::microseconds(1),
                "m1",
                "edit",
                Some("u1"),
                stale_edit.id()
            ),
            (t(3), "m1", "soft_delete", Some("u1"), soft.id()),
            (t(4), "m1", "delete", Some("u1"), hard.id()),
            (t(5), "m2", "delete", Some("u1"), orphan_delete.id()),
        ],
        "create writes no audit row; a stale edit writes one (contract v1.1)"
    );
    for a in &state.audit {
        let event = [&edit, &soft, &hard, &stale_edit, &orphan_delete]
            .into_iter()
            .find(|e| e.id() == a.event_id)
            .expect("an audit row of a known event");
        assert_eq!(
            a.payload,
            event.payload().to_json(),
            "audit payload is the event's own"
        );
    }
}

pub async fn apply_batch_equals_applying_one_by_one<S: MirrorStore>(store: S) {
    batches_equal_one_by_one(&store, None, 9).await;
}

pub async fn per_event_batches_equal_applying_one_by_one<S: MirrorStore>(store: S) {
    batches_equal_one_by_one(&store, Some(ApplyMode::PerEvent), 9).await;
}

pub async fn set_based_batches_equal_applying_one_by_one<S: MirrorStore>(store: S) {
    batches_equal_one_by_one(&store, Some(ApplyMode::Batched), 9).await;
}

/// Batches of 40 over a history of a handful of entities: every batch holds
/// several versions of most entities, repeats of one id, late parents.
pub async fn one_batch_with_many_versions_of_each_entity<S: MirrorStore>(store: S) {
    batches_equal_one_by_one(&store, Some(ApplyMode::Batched), 40).await;
}

/// `apply_batch` (`mode` None) or `apply_batch_as(mode)` over a shuffled
/// random history in chunks of `chunk`: every outcome as the model's, every
/// table as `newest_only`'s.
async fn batches_equal_one_by_one<S: MirrorStore>(
    store: &S,
    mode: Option<ApplyMode>,
    chunk: usize,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0001);
    let mut history = canonical(crate::events::random_history(&mut rng, 120, 30));
    history.shuffle(&mut rng);
    let mut model = Model::new();
    for (n, chunk) in history.chunks(chunk).enumerate() {
        let want: Vec<ApplyOutcome> = chunk.iter().map(|e| model.apply(e)).collect();
        let got = match mode {
            None => store.apply_batch(chunk).await,
            Some(mode) => store.apply_batch_as(chunk, mode).await,
        }
        .expect("batch commits");
        assert_eq!(got.len(), chunk.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            match g {
                Ok(o) => assert_eq!(
                    o,
                    w,
                    "{mode:?} batch {n} event {i} ({})",
                    describe(&chunk[i])
                ),
                Err(e) => panic!(
                    "{mode:?} batch {n} event {i} ({}) failed: {e}",
                    describe(&chunk[i])
                ),
            }
        }
    }
    let state = assert_matches_model(store, &model, "history applied in batches").await;
    let expected = newest_only(&history);
    if state != expected {
        panic!(
            "{mode:?}: every table vs newest_only (- expected, + store):\n{}",
            MirrorState::diff(&expected, &state)
        );
    }
}

pub async fn apply_batch_isolates_a_rejected_event<S: MirrorStore>(store: S) {
    batch_isolates_a_rejected_event(&store, None).await;
}

pub async fn per_event_batch_isolates_a_rejected_event<S: MirrorStore>(store: S) {
    batch_isolates_a_rejected_event(&store, Some(ApplyMode::PerEvent)).await;
}

pub async fn set_based_batch_isolates_a_rejected_event<S: MirrorStore>(store: S) {
    batch_isolates_a_rejected_event(&store, Some(ApplyMode::Batched)).await;
}

async fn batch_isolates_a_rejected_event<S: MirrorStore>(store: &S, mode: Option<ApplyMode>) {
    // A contract-valid event that a database may refuse: U+0000 in the body
    // (PostgreSQL text cannot hold it). Whether or not this store takes it,
    // the results must line up with the input and the other events must commit.
    let events = vec![
        conversation(Op::Create, "c1", &["u1", "u2"], t(1)),
        message(Op::Create, "c1", "m1", "fine", t(2)),
        message(Op::Create, "c1", "m2", "nul \u{0} inside", t(3)),
        message(Op::Update, "c1", "m1", "fine, edited", t(4)),
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(5)),
    ];
    let results = match mode {
        None => store.apply_batch(&events).await,
        Some(mode) => store.apply_batch_as(&events, mode).await,
    }
    .expect("batch commits");
    assert_eq!(results.len(), events.len());
    let mut model = Model::new();
    for (i, (e, r)) in events.iter().zip(&results).enumerate() {
        match r {
            Ok(o) => assert_eq!(*o, model.apply(e), "event {i} ({})", describe(e)),
            Err(err) => {
                assert_eq!(
                    i,
                    2,
                    "only the NUL event may be rejected, got {err} for {}",
                    describe(e)
                );
                assert!(
                    err.code.is_some(),
                    "a rejection carries the database's code: {err:?}"
                );
            }
        }
    }
    assert_matches_model(store, &model, "batch with a rejected event").await;
    // The rejected event left nothing behind: not even its ledger entry.
    if results[2].is_err() {
        assert!(
            store.apply(&events[2]).await.is_err(),
            "still rejected, not a duplicate"
        );
    }
}

pub async fn late_message_events_are_audited_with_their_own_payload<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let create = message(Op::Create, "c1", "m1", "v1", t(1));
    let v3 = message(Op::Update, "c1", "m1", "v3", t(3));
    let v2 = message(Op::Update, "c1", "m1", "v2", t(2));
    let delete = message(Op::Delete, "c1", "m1", "", t(4));
    let late_soft = message_with(
        Op::Update,
        "c1",
        "m1",
        "soft",
        t(3) + chrono::Duration::microseconds(5),
        Some(t(3)),
    );
    // Newest first: everything after the delete is stale, all of it is history.
    let outcomes = apply_all(
        &store,
        &mut model,
        &[
            delete.clone(),
            v3.clone(),
            create,
            v2.clone(),
            late_soft.clone(),
            v2.clone(),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        [
            ApplyOutcome::Applied,
            ApplyOutcome::Stale,
            ApplyOutcome::Stale,
            ApplyOutcome::Stale,
            ApplyOutcome::Stale,
            ApplyOutcome::Duplicate
        ]
    );
    let state = assert_matches_model(&store, &model, "late message events").await;
    let mut audit: Vec<_> = state
        .audit
        .iter()
        .map(|a| (a.created_at, a.action.as_str(), a.payload.clone()))
        .collect();
    audit.sort_by_key(|a| a.0);
    assert_eq!(
        audit,
        vec![
            (t(2), "edit", v2.payload().to_json()),
            (t(3), "edit", v3.payload().to_json()),
            (
                t(3) + chrono::Duration::microseconds(5),
                "soft_delete",
                late_soft.payload().to_json()
            ),
            (t(4), "delete", delete.payload().to_json()),
        ]
    );
    let m = &state.messages[&("c1".to_owned(), "m1".to_owned())];
    assert!(
        m.tombstone && m.body_text.is_none(),
        "the delete stays current: {m:?}"
    );
}

pub async fn late_follow_event_re_derives_its_neighbours<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let pending = follow(Op::Create, "u1", "u2", FollowState::Pending, t(1));
    let accepted = follow(Op::Update, "u1", "u2", FollowState::Accepted, t(3));
    let blocked = follow(Op::Update, "u1", "u2", FollowState::Blocked, t(2));
    let gone = follow(Op::Delete, "u1", "u2", FollowState::Pending, t(4));
    apply_all(&store, &mut model, &[pending, accepted]).await;
    let log = |s: &MirrorState| {
        let mut v: Vec<(DateTime<Utc>, String)> = s
            .follow_events
            .iter()
            .map(|f| (f.created_at, f.event_type.clone()))
            .collect();
        v.sort();
        v
    };
    let before = assert_matches_model(&store, &model, "in order").await;
    assert_eq!(
        log(&before),
        [(t(1), "request".into()), (t(3), "accept".into())]
    );
    // A late block between them: request, block, then accepted-after-blocked is an unblock.
    apply_all(&store, &mut model, &[blocked, gone.clone()]).await;
    let after = assert_matches_model(&store, &model, "after the late event").await;
    assert_eq!(
        log(&after),
        [
            (t(1), "request".into()),
            (t(2), "block".into()),
            (t(3), "unblock".into()),
            (t(4), "remove".into())
        ]
    );
    let edge = &after.follow_edges[&("u1".to_owned(), "u2".to_owned())];
    assert_eq!(edge.last_event_id, gone.id());
}

/// The same late-arriving history through batches of both modes gives the
/// same tables as the model fed it one by one.
pub async fn late_history_is_the_same_in_batches<S: MirrorStore>(store: S) {
    let events = vec![
        follow(Op::Update, "u1", "u2", FollowState::Accepted, t(3)),
        message(Op::Update, "c1", "m1", "v3", t(3)),
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(1)),
        message(Op::Create, "c1", "m1", "v1", t(1)),
        message(Op::Update, "c1", "m1", "v2", t(2)),
        follow(Op::Update, "u1", "u2", FollowState::Blocked, t(2)),
        conversation(Op::Create, "c1", &["u1", "u2"], t(1)),
        message(Op::Update, "c1", "m1", "v3", t(3)),
    ];
    let mut model = Model::new();
    let want: Vec<ApplyOutcome> = events.iter().map(|e| model.apply(e)).collect();
    let (first, second) = events.split_at(3);
    let mut got = Vec::new();
    for (chunk, mode) in [(first, ApplyMode::PerEvent), (second, ApplyMode::Batched)] {
        for r in store
            .apply_batch_as(chunk, mode)
            .await
            .expect("batch commits")
        {
            got.push(r.expect("valid events apply"));
        }
    }
    assert_eq!(got, want);
    assert_matches_model(&store, &model, "late history in batches").await;
    assert_eq!(model.state(), newest_only(&events));
}

pub async fn apply_batch_of_nothing_is_empty<S: MirrorStore>(store: S) {
    assert!(store.apply_batch(&[]).await.unwrap().is_empty());
}

pub async fn concurrent_writers_converge<S: MirrorStore>(store: S) {
    let store = Arc::new(store);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0002);
    let history = canonical(crate::events::random_history(&mut rng, 150, 40));
    let mut tasks = Vec::new();
    for writer in 0..2u64 {
        let store = store.clone();
        let mut copy = history.clone();
        copy.shuffle(&mut rand::rngs::StdRng::seed_from_u64(writer));
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + writer);
            let mut rest: &[MirrorEvent] = &copy;
            while !rest.is_empty() {
                let n = rand::Rng::random_range(&mut rng, 1..=6).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                if n == 1 {
                    apply_retrying(&*store, &chunk[0]).await;
                    continue;
                }
                let results = loop {
                    match store.apply_batch(chunk).await {
                        Ok(r) => break r,
                        Err(e) if is_retryable(&e) => continue,
                        Err(e) => panic!("batch failed: {e}"),
                    }
                };
                for (e, r) in chunk.iter().zip(results) {
                    match r {
                        Ok(_) => {}
                        Err(err) if is_retryable(&err) => {
                            apply_retrying(&*store, e).await;
                        }
                        Err(err) => panic!("{} failed: {err}", describe(e)),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let state = store.snapshot().await.unwrap();
    let expected = newest_only(&history);
    if state != expected {
        panic!(
            "two concurrent writers: every table vs newest_only (- expected, + store):\n{}",
            MirrorState::diff(&expected, &state)
        );
    }
    let audit_ids: std::collections::HashSet<_> = state.audit.iter().map(|a| a.event_id).collect();
    assert_eq!(
        audit_ids.len(),
        state.audit.len(),
        "no audit row written twice"
    );
    let follow_ids: std::collections::HashSet<_> =
        state.follow_events.iter().map(|f| f.event_id).collect();
    assert_eq!(
        follow_ids.len(),
        state.follow_events.len(),
        "no follow event written twice"
    );
    // Every event is now a duplicate.
    for e in &history {
        assert_eq!(
            apply_retrying(&*store, e).await,
            ApplyOutcome::Duplicate,
            "{}",
            describe(e)
        );
    }
}

pub async fn dead_letter_same_key_keeps_first_failure<S: MirrorStore>(store: S) {
    let first = dead_letter("5f0c3b9e-8e0f-5c8a-9d57-1d7a0c1f2b3c", 2, t(100));
    store.record_dead_letter(&first).await.unwrap();
    let mut second = dead_letter("5f0c3b9e-8e0f-5c8a-9d57-1d7a0c1f2b3c", 3, t(200));
    second.error = "database: SQLSTATE 23514: second failure".into();
    store.record_dead_letter(&second).await.unwrap();
    let other = DeadLetterRecord {
        key: "sha256:00ff".into(),
        event_id: None,
        event_type: None,
        subject: None,
        payload: "not json".into(),
        reason: "malformed".into(),
        error: "invalid event: not JSON".into(),
        attempts: 1,
        failed_at: t(150),
        subscription: "sql-writer".into(),
    };
    store.record_dead_letter(&other).await.unwrap();

    let rows = store.list_dead_letters(10).await.unwrap();
    assert_eq!(rows.len(), 2, "one row per key: {rows:#?}");
    let row = &rows[0];
    assert_eq!(row.record.key, first.key, "newest failure first");
    assert_eq!(row.first_failed_at, t(100), "first failure kept");
    assert_eq!(row.last_failed_at, t(200));
    assert!(
        row.record.attempts >= 3,
        "attempts bumped: {}",
        row.record.attempts
    );
    assert_eq!(row.record.error, second.error);
    assert_eq!(row.record.payload, first.payload);
    assert_eq!(
        (row.record.event_id, row.record.event_type.as_deref()),
        (first.event_id, Some("dm.message.create"))
    );
    assert_eq!((row.replay_count, row.last_replayed_at), (0, None));
    assert_eq!(rows[1].record, other, "a record round-trips");
    assert_eq!(rows[1].first_failed_at, t(150));
    assert_eq!(
        store.list_dead_letters(1).await.unwrap().len(),
        1,
        "limit is honoured"
    );
}

pub async fn dead_letter_replays_are_counted<S: MirrorStore>(store: S) {
    let record = dead_letter("replayed-key", 5, t(100));
    store.record_dead_letter(&record).await.unwrap();
    store.record_replay("replayed-key", t(300)).await.unwrap();
    store.record_replay("replayed-key", t(400)).await.unwrap();
    let rows = store.list_dead_letters(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].replay_count, rows[0].last_replayed_at),
        (2, Some(t(400)))
    );
    assert_eq!(rows[0].first_failed_at, t(100));
}

pub async fn checkpoints_round_trip<S: MirrorStore>(store: S) {
    assert_eq!(
        store
            .load_checkpoint("listen", "conversations")
            .await
            .unwrap(),
        None
    );
    let mut cp = Checkpoint {
        module: "listen".into(),
        shard: "conversations".into(),
        last_processed_at: Some(t(5) + chrono::Duration::microseconds(123_456)),
        cursor_token: Some(vec![0, 1, 2, 255, 0]),
    };
    store.save_checkpoint(&cp).await.unwrap();
    assert_eq!(
        store
            .load_checkpoint("listen", "conversations")
            .await
            .unwrap()
            .as_ref(),
        Some(&cp)
    );
    cp.last_processed_at = Some(t(6));
    cp.cursor_token = None;
    store.save_checkpoint(&cp).await.unwrap();
    let other = Checkpoint {
        module: "backfill".into(),
        shard: "conversations".into(),
        last_processed_at: None,
        cursor_token: Some(b"cursor".to_vec()),
    };
    store.save_checkpoint(&other).await.unwrap();
    assert_eq!(
        store
            .load_checkpoint("listen", "conversations")
            .await
            .unwrap(),
        Some(cp)
    );
    assert_eq!(
        store
            .load_checkpoint("backfill", "conversations")
            .await
            .unwrap(),
        Some(other)
    );
    assert_eq!(
        store.load_checkpoint("listen", "messages").await.unwrap(),
        None
    );
}

fn normalized_table_name(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

async fn count_of<S: MirrorStore>(store: &S, table: &str) -> i64 {
    let counts = store.table_counts().await.unwrap();
    counts
        .iter()
        .find(|(name, _)| normalized_table_name(name) == normalized_table_name(table))
        .unwrap_or_else(|| panic!("no table {table} in {counts:?}"))
        .1
}

pub async fn metrics_are_recorded<S: MirrorStore>(store: S) {
    store.record_metrics(&[]).await.unwrap();
    let samples: Vec<MetricSample> = (0..5)
        .map(|i| MetricSample {
            module: "sql-writer".into(),
            metric: format!("mirror_events_total_{i}"),
            value: i as f64 * 1.5,
            recorded_at: t(i),
        })
        .collect();
    store.record_metrics(&samples).await.unwrap();
    store.record_metrics(&samples[..2]).await.unwrap();
    assert_eq!(count_of(&store, "realtime_mirror_metrics").await, 7);
}

pub async fn table_counts_cover_every_table_in_schema_order<S: MirrorStore>(store: S) {
    let mut model = Model::new();
    let events = vec![
        conversation(Op::Create, "c1", &["u1", "u2", "u3"], t(1)),
        message(Op::Create, "c1", "m1", "a", t(2)),
        message(Op::Update, "c1", "m1", "b", t(3)),
        message(Op::Create, "c2", "m1", "c", t(2)),
        block(Op::Create, "u1", "u2", t(1)),
        follow(Op::Create, "u1", "u2", FollowState::Pending, t(1)),
        follow(Op::Update, "u1", "u2", FollowState::Accepted, t(2)),
        follow(Op::Update, "u1", "u2", FollowState::Accepted, t(1)),
    ];
    apply_all(&store, &mut model, &events).await;
    let counts = store.table_counts().await.unwrap();
    let names: Vec<String> = counts
        .iter()
        .map(|(n, _)| normalized_table_name(n))
        .collect();
    assert_eq!(
        names,
        [
            "dmconversation",
            "dmparticipant",
            "dmmessage",
            "dmmessageaudit",
            "dmblock",
            "followedge",
            "followevent",
            "realtimemirrorcheckpoint",
            "realtimemirrordeadletter",
            "realtimemirrormetrics",
            "appliedevent",
        ]
    );
    let values: Vec<i64> = counts.iter().map(|(_, n)| *n).collect();
    let history = model.state();
    assert_eq!(
        values,
        vec![
            2,
            3,
            2,
            history.audit.len() as i64,
            1,
            1,
            history.follow_events.len() as i64,
            0,
            0,
            0,
            8
        ],
        "{counts:?}"
    );
}
