//! Property, for every store: any permutation of any multiset of valid
//! events leaves EVERY table of the mirror — current state and history —
//! exactly as `model::newest_only` predicts (newest event per entity;
//! history of the set of distinct events), whether applied one by one, in
//! per-event batches or in set-based batches; every outcome equals `Model`
//! fed the same sequence.
//!
//! Generic over a [`StoreFactory`]: each case asks it for an empty store three
//! times (one by one, then each batch mode). PostgreSQL's factory empties one
//! database with TRUNCATE (`tests/tests/store_property.rs`); SQL Server's
//! creates a database per store, with fewer cases (`tests/tests/store_mssql.rs`).

use mirror_schema::MirrorEvent;
use mirror_store::model::{newest_only, Model};
use mirror_store::{ApplyEvents, ApplyMode, ApplyOutcome, MirrorState, MirrorStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::events::random_history;
use crate::store_conformance::{canonical, StoreFactory};

/// Run `cases` random cases on stores from `factory`, inside `rt`; panics
/// with the shrunk failing case.
pub fn any_order_of_any_history_converges<F: StoreFactory>(
    rt: &tokio::runtime::Runtime,
    factory: &F,
    cases: u32,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    // Batches up to 24 so that one batch often holds several versions of one entity.
    let strategy = (any::<u64>(), 1usize..60, 0usize..15, 1usize..25);
    let result = runner.run(&strategy, |(seed, events, duplicates, batch)| {
        rt.block_on(check(factory, seed, events, duplicates, batch))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// `STORE_PROPERTY_CASES`, else `default`.
pub fn cases_from_env(default: u32) -> u32 {
    std::env::var("STORE_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
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

/// The store's snapshot equals `expected`; the store (and its guard) is done with.
async fn snapshot_is<S: MirrorStore, G>(
    (store, guard): (S, G),
    expected: &MirrorState,
    what: &str,
) -> Result<(), TestCaseError> {
    let actual = store
        .snapshot()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    drop((store, guard));
    same(expected, &actual, what)
}

/// The outcomes `Model` gives for `events` in this order, and its final state.
fn model_run(events: &[MirrorEvent]) -> (Vec<ApplyOutcome>, MirrorState) {
    let mut model = Model::new();
    let outcomes = events.iter().map(|e| model.apply(e)).collect();
    (outcomes, model.state())
}

async fn check<F: StoreFactory>(
    factory: &F,
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
    let (store, guard) = factory.fresh().await;
    for (i, e) in history.iter().enumerate() {
        let got = store
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
    snapshot_is(
        (store, guard),
        &expected,
        "apply one by one vs newest_only (every table)",
    )
    .await?;

    // In batches, both modes.
    for mode in [ApplyMode::PerEvent, ApplyMode::Batched] {
        let (store, guard) = factory.fresh().await;
        for (n, chunk) in history.chunks(batch).enumerate() {
            let results = store
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
        snapshot_is(
            (store, guard),
            &expected,
            &format!("apply_batch_as {mode:?} vs newest_only (every table)"),
        )
        .await?;
    }
    Ok(())
}
