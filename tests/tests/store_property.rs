//! Property: any permutation of any multiset of valid events leaves EVERY
//! table of the PostgreSQL mirror — current state and history — exactly as
//! `model::newest_only` predicts (newest event per entity; history of the set
//! of distinct events), whether applied one by one, in per-event batches or in
//! set-based batches; every outcome equals `Model` fed the same sequence.
//!
//! One database for the whole run, emptied with TRUNCATE between cases
//! (creating a database per case would dominate the run time).

use mirror_schema::MirrorEvent;
use mirror_store::model::{newest_only, Model};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::{ApplyMode, ApplyOutcome, MirrorState, MirrorStore};
use mirror_tests::events::random_history;
use mirror_tests::store_conformance::canonical;
use mirror_tests::FreshDb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::seq::SliceRandom;
use rand::SeedableRng;

const TRUNCATE: &str = "TRUNCATE mirror.dm_message_audit, mirror.dm_participant, mirror.dm_message, \
    mirror.dm_conversation, mirror.dm_block, mirror.follow_edge, mirror.follow_edge_observation, mirror.applied_event \
    RESTART IDENTITY";

struct Fixture {
    store: PgStore,
    admin: tokio_postgres::Client,
    _db: FreshDb,
}

fn same(expected: &MirrorState, actual: &MirrorState, what: &str) -> Result<(), TestCaseError> {
    if expected != actual {
        return Err(TestCaseError::fail(format!(
            "{what} (- expected, + actual):\n{}",
            MirrorState::diff(expected, actual)
        )));
    }
    Ok(())
}

/// The outcomes `Model` gives for `events` in this order, and its final state.
fn model_run(events: &[MirrorEvent]) -> (Vec<ApplyOutcome>, MirrorState) {
    let mut model = Model::new();
    let outcomes = events.iter().map(|e| model.apply(e)).collect();
    (outcomes, model.state())
}

async fn check(
    f: &Fixture,
    seed: u64,
    events: usize,
    duplicates: usize,
    batch: usize,
) -> Result<(), TestCaseError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut history = canonical(random_history(&mut rng, events, duplicates));
    history.shuffle(&mut rng);
    let expected = newest_only(&history);

    // Sanity of the reference itself: the model is order-independent too.
    let (outcomes, model_state) = model_run(&history);
    same(
        &expected,
        &model_state,
        "model fed the shuffled history vs newest_only",
    )?;
    let mut reversed = history.clone();
    reversed.reverse();
    same(
        &expected,
        &model_run(&reversed).1,
        "model fed the reversed history vs newest_only",
    )?;

    // One by one.
    f.admin
        .batch_execute(TRUNCATE)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (i, e) in history.iter().enumerate() {
        let got = f
            .store
            .apply(e)
            .await
            .map_err(|err| TestCaseError::fail(format!("apply #{i}: {err}")))?;
        prop_assert_eq!(
            got,
            outcomes[i],
            "outcome of event #{} ({} {})",
            i,
            e.event_type(),
            e.subject()
        );
    }
    let actual = f
        .store
        .snapshot()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    same(
        &expected,
        &actual,
        "apply one by one vs newest_only (every table)",
    )?;

    // In batches, both modes.
    for mode in [ApplyMode::PerEvent, ApplyMode::Batched] {
        f.admin
            .batch_execute(TRUNCATE)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (n, chunk) in history.chunks(batch).enumerate() {
            let results = f
                .store
                .apply_batch_as(chunk, mode)
                .await
                .map_err(|e| TestCaseError::fail(format!("{mode:?} batch {n}: {e}")))?;
            prop_assert_eq!(results.len(), chunk.len());
            for (i, r) in results.into_iter().enumerate() {
                let got = r.map_err(|err| {
                    TestCaseError::fail(format!("{mode:?} batch {n} event {i}: {err}"))
                })?;
                prop_assert_eq!(
                    got,
                    outcomes[n * batch + i],
                    "{:?}: outcome of batch {} event {}",
                    mode,
                    n,
                    i
                );
            }
        }
        let actual = f
            .store
            .snapshot()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        same(
            &expected,
            &actual,
            &format!("apply_batch_as {mode:?} vs newest_only (every table)"),
        )?;
    }
    Ok(())
}

#[test]
fn any_order_of_any_history_converges_to_newest_only() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fixture = rt.block_on(async {
        let db = FreshDb::create().await;
        let store = PgStore::connect(&PgConfig::from_url(db.url.clone()))
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let (admin, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .expect("admin connection");
        tokio::spawn(conn);
        Fixture {
            store,
            admin,
            _db: db,
        }
    });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    // Batches up to 24 so that one batch often holds several versions of one entity.
    let strategy = (any::<u64>(), 1usize..60, 0usize..15, 1usize..25);
    let result = runner.run(&strategy, |(seed, events, duplicates, batch)| {
        rt.block_on(check(&fixture, seed, events, duplicates, batch))
    });
    drop(fixture);
    if let Err(e) = result {
        panic!("{e}");
    }
}
