//! The store-neutral apply plan of one batch: what every adapter executes.
//!
//! [`Plan::new`] takes a batch of decoded events in arrival order and works
//! out, once and without IO:
//!
//! - **in-batch repeats**: a second copy of an event id is dropped; its answer
//!   is the first copy's (`duplicate` once that one succeeded, the same error
//!   if it failed);
//! - **one entity lock order** ([`lock_key`], [`lock_order`]): all of a
//!   conversation's events (the conversation's own and its messages') under the
//!   conversation's lock, then blocks, then follow edges, each by id. Every
//!   adapter takes its locks in this order, so two batches never wait on each
//!   other in a cycle;
//! - **several versions of one entity**: [`Planned::newest_so_far`] says
//!   whether an event is newer than every earlier event of its entity in the
//!   batch (the outcome then depends only on the stored version), and
//!   [`Planned::winner`] marks the newest version of each entity in the batch,
//!   the only one that can reach the current-state row. Every distinct event
//!   still reaches the history tables;
//! - **results back to input order** ([`Plan::answers`]).
//!
//! The outcomes this gives equal those of applying the batch one event at a
//! time in arrival order ([`crate::model::Model`]): an event is `applied` iff it
//! is newer than the stored version and than every earlier event of its
//! entity in the batch, `stale` otherwise, `duplicate` if its id was seen.

use std::collections::HashMap;

use mirror_schema::{EventFamily, MirrorEvent, Subject};
use uuid::Uuid;

use crate::{ApplyOutcome, StoreError};

/// Which path an adapter with both apply paths takes for a batch: decided
/// here once, so the stores cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Nothing to apply.
    Empty,
    /// One savepoint per event: [`crate::ApplyMode::PerEvent`], and any batch
    /// holding a repair (`sync_source = repair`), whose row is reopened just
    /// before it is applied, in the same transaction — only the per-event
    /// path can do that.
    PerEvent,
    /// The set-based statement for the whole batch.
    SetBased,
}

/// The [`Route`] of `events` applied in `mode`.
pub fn route(events: &[MirrorEvent], mode: crate::ApplyMode) -> Route {
    if events.is_empty() {
        Route::Empty
    } else if mode == crate::ApplyMode::PerEvent || events.iter().any(crate::checksum::is_repair) {
        Route::PerEvent
    } else {
        Route::SetBased
    }
}

/// The lock an event takes, as `(rank, first id, second id)`: sorting by it
/// is the global lock order. Conversations and their messages share their
/// conversation's lock (rank 0), blocks are rank 1, follow edges rank 2.
pub fn lock_key(event: &MirrorEvent) -> (u8, &str, &str) {
    match event.subject() {
        Subject::Conversation { conversation_id }
        | Subject::Message {
            conversation_id, ..
        } => (0, conversation_id, ""),
        Subject::Block {
            user_id,
            target_user_id,
        } => (1, user_id, target_user_id),
        Subject::FollowEdge {
            follower_user_id,
            target_user_id,
        } => (2, follower_user_id, target_user_id),
    }
}

/// The text of an entity lock (`conversation:c1`, `block:u1/u2`,
/// `follow:u1/u2`), as the SQL functions hash it for advisory locks/applocks.
pub fn lock_name(event: &MirrorEvent) -> String {
    match lock_key(event) {
        (0, c, _) => format!("conversation:{c}"),
        (1, u, t) => format!("block:{u}/{t}"),
        (_, f, t) => format!("follow:{f}/{t}"),
    }
}

/// The lane (`0..lanes`) an event is applied in when a writer runs `lanes`
/// batches at once: every event of one lock (a conversation with its
/// messages, a block, a follow edge) goes to the same lane, so concurrent
/// batches take disjoint locks and never wait on each other. Stable for the
/// life of the process (not across builds: do not store it).
pub fn lane(event: &MirrorEvent, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    if lanes <= 1 {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    lock_key(event).hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// Indices of `events` in lock order; stable, so the events of one entity
/// keep their arrival order.
pub fn lock_order(events: &[MirrorEvent]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| lock_key(&events[a]).cmp(&lock_key(&events[b])));
    order
}

/// One distinct event of the batch, as the adapter executes it.
#[derive(Debug, Clone, Copy)]
pub struct Planned<'a> {
    pub event: &'a MirrorEvent,
    /// Its index in the input.
    pub input: usize,
    /// Newer than every earlier event (arrival order) of its entity in the batch.
    pub newest_so_far: bool,
    /// The newest event of its entity in the batch: the only candidate for
    /// the current-state row.
    pub winner: bool,
}

/// Where the answer of an input event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The result of [`Plan::events`]`[i]`.
    Own(usize),
    /// A repeat of the id planned at [`Plan::events`]`[i]`.
    Repeat(usize),
}

/// The plan of one batch (see the module docs).
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The distinct events, in lock order.
    pub events: Vec<Planned<'a>>,
    /// One per input event.
    pub answers: Vec<Answer>,
    /// The distinct lock names in lock order (each taken once).
    pub locks: Vec<String>,
}

/// An entity's identity inside one batch: its subject (which names its
/// family too), borrowed, so planning allocates no key text.
fn entity(event: &MirrorEvent) -> &Subject {
    event.subject()
}

impl<'a> Plan<'a> {
    pub fn new(input: &'a [MirrorEvent]) -> Plan<'a> {
        // Repeats, in arrival order: the first copy of an id is the one planned.
        let mut first_of: HashMap<Uuid, usize> = HashMap::with_capacity(input.len());
        let mut distinct = Vec::with_capacity(input.len());
        for (i, e) in input.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) = first_of.entry(e.id()) {
                slot.insert(i);
                distinct.push(i);
            }
        }
        // Versions per entity, in arrival order.
        let mut newest: HashMap<&'a Subject, (chrono::DateTime<chrono::Utc>, Uuid)> =
            HashMap::with_capacity(distinct.len());
        let mut newest_so_far = vec![false; input.len()];
        for &i in &distinct {
            let e = &input[i];
            let v = (e.time(), e.id());
            let slot = newest.entry(entity(e)).or_insert(v);
            if v >= *slot {
                newest_so_far[i] = true;
                *slot = v;
            }
        }
        let mut order = distinct.clone();
        order.sort_by(|&a, &b| lock_key(&input[a]).cmp(&lock_key(&input[b])));
        let events: Vec<Planned<'a>> = order
            .iter()
            .map(|&i| {
                let e = &input[i];
                Planned {
                    event: e,
                    input: i,
                    newest_so_far: newest_so_far[i],
                    winner: newest[&entity(e)] == (e.time(), e.id()),
                }
            })
            .collect();
        let mut slot_of = vec![usize::MAX; input.len()];
        for (slot, p) in events.iter().enumerate() {
            slot_of[p.input] = slot;
        }
        let answers = input
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let f = first_of[&e.id()];
                if f == i {
                    Answer::Own(slot_of[i])
                } else {
                    Answer::Repeat(slot_of[f])
                }
            })
            .collect();
        let mut locks: Vec<String> = Vec::new();
        let mut last = None;
        for p in &events {
            let key = lock_key(p.event);
            if last != Some(key) {
                locks.push(lock_name(p.event));
                last = Some(key);
            }
        }
        Plan {
            events,
            answers,
            locks,
        }
    }

    /// The planned events of one family, in lock order.
    pub fn family(&self, family: EventFamily) -> impl Iterator<Item = &Planned<'a>> + '_ {
        self.events
            .iter()
            .filter(move |p| p.event.event_type().family() == family)
    }

    /// Results per input event, from one result per planned event.
    pub fn answer(
        &self,
        planned: Vec<Result<ApplyOutcome, StoreError>>,
    ) -> Vec<Result<ApplyOutcome, StoreError>> {
        assert_eq!(
            planned.len(),
            self.events.len(),
            "one result per planned event"
        );
        self.answers
            .iter()
            .map(|a| match *a {
                Answer::Own(i) => planned[i].clone(),
                Answer::Repeat(i) => match &planned[i] {
                    Ok(_) => Ok(ApplyOutcome::Duplicate),
                    Err(e) => Err(e.clone()),
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use chrono::{TimeZone, Utc};
    use mirror_schema::*;

    fn t(s: i64) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 10, 8, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn follow(f: &str, state: Option<FollowState>, s: i64) -> MirrorEvent {
        let subject = Subject::FollowEdge {
            follower_user_id: f.into(),
            target_user_id: "t".into(),
        };
        let (ty, payload) = match state {
            Some(state) => (
                EventType::FollowEdgeUpdate,
                Payload::FollowEdge(FollowEdgePayload {
                    state,
                    source: FollowSource::Web,
                    created_at: t(0),
                }),
            ),
            None => (EventType::FollowEdgeDelete, Payload::FollowEdgeDelete),
        };
        MirrorEvent::new(ty, subject, t(s), "firestore://x", payload).unwrap()
    }

    #[test]
    fn route_is_set_based_unless_per_event_or_a_repair_is_in_the_batch() {
        use crate::ApplyMode::{Batched, PerEvent};
        let a = follow("a", Some(FollowState::Accepted), 1);
        let b = follow("b", None, 2);
        assert_eq!(route(&[], Batched), Route::Empty);
        assert_eq!(route(&[a.clone(), b.clone()], Batched), Route::SetBased);
        assert_eq!(route(&[a.clone(), b.clone()], PerEvent), Route::PerEvent);
        let repair = MirrorEvent::new(
            a.event_type(),
            a.subject().clone(),
            t(3),
            "repair://consistency",
            a.payload().clone(),
        )
        .unwrap();
        assert!(crate::checksum::is_repair(&repair));
        assert_eq!(route(&[a, repair, b], Batched), Route::PerEvent);
    }

    fn message(c: &str, m: &str, s: i64) -> MirrorEvent {
        let subject = Subject::Message {
            conversation_id: c.into(),
            message_id: m.into(),
        };
        MirrorEvent::new(
            EventType::DmMessageUpdate,
            subject,
            t(s),
            "firestore://x",
            Payload::Message(MessagePayload {
                author_user_id: "u".into(),
                body_text: format!("b{s}"),
                attachments: None,
                external_media: None,
                created_at: t(0),
                edited_at: None,
                deleted_at: None,
                client_message_id: None,
            }),
        )
        .unwrap()
    }

    #[test]
    fn repeats_are_answered_by_their_first_copy() {
        let a = follow("u1", Some(FollowState::Pending), 1);
        let b = follow("u2", None, 1);
        let input = vec![a.clone(), b.clone(), a.clone(), a];
        let plan = Plan::new(&input);
        assert_eq!(plan.events.len(), 2);
        let results = plan.answer(vec![
            Ok(ApplyOutcome::Applied),
            Err(StoreError::new(crate::StoreErrorKind::Database, "x")),
        ]);
        assert!(matches!(results[0], Ok(ApplyOutcome::Applied)));
        assert!(results[1].is_err());
        assert!(matches!(results[2], Ok(ApplyOutcome::Duplicate)));
        assert!(matches!(results[3], Ok(ApplyOutcome::Duplicate)));
    }

    #[test]
    fn versions_of_one_entity_reduce_to_the_newest() {
        let input = vec![
            follow("u1", Some(FollowState::Pending), 5),
            follow("u1", Some(FollowState::Accepted), 3),
            follow("u1", None, 7),
            follow("u1", Some(FollowState::Blocked), 6),
        ];
        let plan = Plan::new(&input);
        let by_input: HashMap<usize, &Planned> = plan.events.iter().map(|p| (p.input, p)).collect();
        let flags: Vec<(bool, bool)> = (0..4)
            .map(|i| (by_input[&i].newest_so_far, by_input[&i].winner))
            .collect();
        assert_eq!(
            flags,
            vec![(true, false), (false, false), (true, true), (false, false)]
        );
    }

    #[test]
    fn a_lock_has_one_lane_and_lanes_spread() {
        for lanes in [1, 2, 4, 7] {
            let mut used = vec![0usize; lanes];
            for c in 0..200 {
                let cid = format!("c{c}");
                let lane = super::lane(&message(&cid, "m1", 1), lanes);
                assert!(lane < lanes);
                // The conversation and every message of it: one lock, one lane.
                assert_eq!(super::lane(&message(&cid, "m2", 9), lanes), lane);
                used[lane] += 1;
            }
            assert!(used.iter().all(|&n| n > 0), "{lanes} lanes: {used:?}");
        }
        assert_eq!(super::lane(&follow("u1", None, 1), 0), 0);
    }

    #[test]
    fn lock_order_groups_a_conversation_and_is_stable() {
        let input = vec![
            follow("u1", None, 1),
            message("c2", "m1", 2),
            message("c1", "m9", 3),
            message("c2", "m0", 1),
            message("c1", "m1", 1),
        ];
        let order = lock_order(&input);
        assert_eq!(order, vec![2, 4, 1, 3, 0]);
        let plan = Plan::new(&input);
        assert_eq!(
            plan.locks,
            vec!["conversation:c1", "conversation:c2", "follow:u1/t"]
        );
        assert_eq!(
            plan.events.iter().map(|p| p.input).collect::<Vec<_>>(),
            order
        );
    }

    /// The plan's outcome rule (`applied` iff newest so far and newer than
    /// the stored version) equals the model applying the batch in arrival
    /// order, over random batches of versions of a few entities.
    #[test]
    fn outcome_rule_equals_the_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let mut model = Model::new();
            // A stored state first.
            let make = |rng: &mut rand::rngs::StdRng| {
                let f = ["u1", "u2"][rng.random_range(0..2)];
                let s = rng.random_range(0..8);
                match rng.random_range(0..3) {
                    0 => follow(f, None, s),
                    1 => follow(f, Some(FollowState::Pending), s),
                    _ => message("c1", ["m1", "m2"][rng.random_range(0..2)], s),
                }
            };
            let before: Vec<MirrorEvent> = (0..rng.random_range(0..5))
                .map(|_| make(&mut rng))
                .collect();
            for e in &before {
                model.apply(e);
            }
            let mut stored: HashMap<Subject, (chrono::DateTime<Utc>, Uuid)> = HashMap::new();
            let mut ledger: std::collections::HashSet<Uuid> = Default::default();
            for e in &before {
                ledger.insert(e.id());
                let v = (e.time(), e.id());
                let s = stored.entry(entity(e).clone()).or_insert(v);
                *s = (*s).max(v);
            }
            let mut batch: Vec<MirrorEvent> = (0..rng.random_range(1..9))
                .map(|_| make(&mut rng))
                .collect();
            if rng.random_bool(0.3) && !before.is_empty() {
                batch.push(before[0].clone());
            }
            let expected: Vec<ApplyOutcome> = batch.iter().map(|e| model.apply(e)).collect();
            let plan = Plan::new(&batch);
            let planned = plan
                .events
                .iter()
                .map(|p| {
                    let e = p.event;
                    if ledger.contains(&e.id()) {
                        return Ok(ApplyOutcome::Duplicate);
                    }
                    let newer = stored
                        .get(entity(e))
                        .is_none_or(|&v| (e.time(), e.id()) > v);
                    Ok(if p.newest_so_far && newer {
                        ApplyOutcome::Applied
                    } else {
                        ApplyOutcome::Stale
                    })
                })
                .collect();
            let got: Vec<ApplyOutcome> = plan
                .answer(planned)
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(got, expected, "batch {batch:?}");
        }
    }
}
