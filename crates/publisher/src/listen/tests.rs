//! Synthetic listen transcripts for every protocol corner.

use std::collections::BTreeMap;

use super::*;
use crate::value::{Document, Timestamp};

const A: TargetId = 1;
const B: TargetId = 2;

fn ts(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_760_000_000 + secs, 0).unwrap()
}

fn doc(path: &str, created: i64, updated: i64) -> Document {
    Document {
        path: path.to_owned(),
        fields: BTreeMap::new(),
        create_time: ts(created),
        update_time: ts(updated),
    }
}

fn change(d: Document, target: TargetId) -> ListenResponse {
    ListenResponse::DocumentChange {
        doc: d,
        target_ids: vec![target],
        removed_target_ids: vec![],
    }
}

fn tc(
    kind: TargetChangeKind,
    ids: &[TargetId],
    token: &str,
    read_time: Option<i64>,
) -> ListenResponse {
    ListenResponse::TargetChange(TargetChange {
        kind,
        target_ids: ids.to_vec(),
        resume_token: token.as_bytes().to_vec(),
        read_time: read_time.map(ts),
        cause: None,
    })
}

fn add(ids: &[TargetId]) -> ListenResponse {
    tc(TargetChangeKind::Add, ids, "", None)
}
fn current(ids: &[TargetId], token: &str) -> ListenResponse {
    tc(TargetChangeKind::Current, ids, token, None)
}
fn global(token: &str, at: i64) -> ListenResponse {
    tc(TargetChangeKind::NoChange, &[], token, Some(at))
}
fn reset(ids: &[TargetId]) -> ListenResponse {
    tc(TargetChangeKind::Reset, ids, "", None)
}

/// Feed a transcript; return every output.
fn feed(core: &mut ListenCore, msgs: impl IntoIterator<Item = ListenResponse>) -> Vec<Output> {
    msgs.into_iter().flat_map(|m| core.on_response(m)).collect()
}

fn snapshots(out: &[Output]) -> Vec<&Snapshot> {
    out.iter()
        .filter_map(|o| match o {
            Output::Emit(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// `(op, path, time-offset)` of every change emitted: the eager upserts and
/// the deletes of each consistent point, sorted by `(time, path)` per point
/// (the order within a point does not matter to the mirror).
fn summary(out: &[Output]) -> Vec<(String, String, i64)> {
    let key = |c: &Change| {
        let op = match c {
            Change::Upsert {
                op: UpsertOp::Create,
                ..
            } => "create",
            Change::Upsert {
                op: UpsertOp::Update,
                ..
            } => "update",
            Change::Delete { .. } => "delete",
        };
        (
            op.to_owned(),
            c.path().to_owned(),
            c.time().timestamp() - 1_760_000_000,
        )
    };
    let mut all = Vec::new();
    let mut window: Vec<&Change> = Vec::new();
    for o in out {
        match o {
            Output::Upsert(c) => window.push(c),
            Output::Emit(snap) => {
                window.extend(snap.changes.iter());
                window.sort_by(|a, b| (a.time(), a.path()).cmp(&(b.time(), b.path())));
                all.extend(window.drain(..).map(key));
            }
            _ => {}
        }
    }
    all.extend(window.drain(..).map(key));
    all
}

fn s(op: &str, path: &str, t: i64) -> (String, String, i64) {
    (op.to_owned(), path.to_owned(), t)
}

fn tok(state: &ResumeState, id: TargetId) -> Option<&str> {
    state
        .tokens
        .get(&id)
        .map(|t| std::str::from_utf8(t).unwrap())
}

/// A core with targets A and B, both through their initial state at t=10.
fn running(initial_a: &[Document], initial_b: &[Document]) -> ListenCore {
    let mut core = ListenCore::new([A, B], None);
    let reqs = core.start_stream();
    assert_eq!(
        reqs,
        vec![
            ListenRequest::Add {
                target_id: A,
                resume_token: None,
                read_time: None,
                expected_count: None,
            },
            ListenRequest::Add {
                target_id: B,
                resume_token: None,
                read_time: None,
                expected_count: None,
            },
        ]
    );
    let mut msgs = vec![add(&[A, B])];
    msgs.extend(initial_a.iter().cloned().map(|d| change(d, A)));
    msgs.extend(initial_b.iter().cloned().map(|d| change(d, B)));
    msgs.extend([
        current(&[A], "a10"),
        current(&[B], "b10"),
        global("g10", 10),
    ]);
    let out = feed(&mut core, msgs);
    assert_eq!(snapshots(&out).len(), 1);
    core
}

#[test]
fn initial_state_is_emitted_only_at_the_global_consistent_point() {
    let mut core = ListenCore::new([A, B], None);
    core.start_stream();
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/1", 1, 1), A),
            change(doc("c/2", 1, 5), A),
            current(&[A], "a1"),
        ],
    );
    assert!(
        snapshots(&out).is_empty(),
        "per-target CURRENT must not emit"
    );
    // A NO_CHANGE for one target with a read time is not global either.
    let out = feed(
        &mut core,
        [tc(TargetChangeKind::NoChange, &[A], "a2", Some(3))],
    );
    assert!(snapshots(&out).is_empty());
    let out = feed(
        &mut core,
        [
            change(doc("m/1", 2, 2), B),
            current(&[B], "b1"),
            global("g1", 6),
        ],
    );
    assert_eq!(
        summary(&out),
        vec![
            s("create", "c/1", 1),
            s("create", "m/1", 2),
            s("update", "c/2", 5)
        ]
    );
    let snap = snapshots(&out)[0];
    assert_eq!(snap.read_time, ts(6));
    // The global token applies to every current target.
    assert_eq!(tok(&snap.resume, A), Some("g1"));
    assert_eq!(tok(&snap.resume, B), Some("g1"));
    assert_eq!(snap.resume.read_time, Some(ts(6)));
}

#[test]
fn a_target_that_is_not_current_gets_no_safe_token() {
    let mut core = ListenCore::new([A, B], None);
    core.start_stream();
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/1", 1, 1), A),
            current(&[A], "a1"),
            change(doc("m/1", 1, 1), B),
            global("g1", 2),
        ],
    );
    let snap = snapshots(&out)[0];
    assert_eq!(
        summary(&out).len(),
        2,
        "upserts of a target still loading are real versions"
    );
    assert_eq!(tok(&snap.resume, A), Some("g1"));
    assert_eq!(
        tok(&snap.resume, B),
        None,
        "B's initial state is incomplete"
    );
    // A restart now resumes A and re-lists B from scratch.
    let mut restarted = ListenCore::new([A, B], Some(snap.resume.clone()));
    assert_eq!(
        restarted.start_stream(),
        vec![
            ListenRequest::Add {
                target_id: A,
                resume_token: Some(b"g1".to_vec()),
                read_time: None,
                expected_count: None,
            },
            ListenRequest::Add {
                target_id: B,
                resume_token: None,
                read_time: None,
                expected_count: None,
            },
        ]
    );
}

#[test]
fn later_changes_are_batched_per_consistent_point_and_duplicates_collapse() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    let out = feed(
        &mut core,
        [
            change(doc("c/1", 1, 11), A),
            change(doc("c/1", 1, 11), A), // duplicate
            change(doc("c/2", 12, 12), A),
            change(doc("c/1", 1, 13), A), // newer version of c/1 in the same window
            change(doc("c/1", 1, 12), A), // older version arriving late
        ],
    );
    assert!(snapshots(&out).is_empty());
    let out = feed(&mut core, [global("g14", 14)]);
    assert_eq!(
        summary(&out),
        vec![s("create", "c/2", 12), s("update", "c/1", 13)]
    );
    // The same version again (e.g. after a resume) is not emitted twice.
    let out = feed(&mut core, [change(doc("c/1", 1, 13), A), global("g15", 15)]);
    assert_eq!(summary(&out), vec![]);
    assert_eq!(tok(&snapshots(&out)[0].resume, A), Some("g15"));
}

#[test]
fn deletes_and_removals_use_their_read_time() {
    let mut core = running(&[doc("c/1", 1, 1), doc("c/2", 1, 1)], &[doc("m/1", 1, 1)]);
    let out = feed(
        &mut core,
        [
            ListenResponse::DocumentDelete {
                path: "c/1".into(),
                read_time: Some(ts(12)),
                removed_target_ids: vec![A],
            },
            ListenResponse::DocumentRemove {
                path: "m/1".into(),
                removed_target_ids: vec![B],
                read_time: None,
            },
            global("g13", 13),
        ],
    );
    assert_eq!(
        summary(&out),
        vec![s("delete", "c/1", 12), s("delete", "m/1", 13)]
    );
    assert_eq!(core.committed_len(A), 1);
    assert_eq!(core.committed_len(B), 0);
    // A change that only removes the document from its target is a removal too.
    let out = feed(
        &mut core,
        [
            ListenResponse::DocumentChange {
                doc: doc("c/2", 1, 14),
                target_ids: vec![],
                removed_target_ids: vec![A],
            },
            global("g15", 15),
        ],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/2", 15)]);
}

#[test]
fn delete_then_recreate_in_one_window_is_a_create() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    let out = feed(
        &mut core,
        [
            ListenResponse::DocumentDelete {
                path: "c/1".into(),
                read_time: Some(ts(11)),
                removed_target_ids: vec![A],
            },
            change(doc("c/1", 12, 12), A),
            global("g13", 13),
        ],
    );
    assert_eq!(summary(&out), vec![s("create", "c/1", 12)]);
    // and the other way round: the delete wins
    let out = feed(
        &mut core,
        [
            change(doc("c/1", 12, 14), A),
            ListenResponse::DocumentDelete {
                path: "c/1".into(),
                read_time: Some(ts(15)),
                removed_target_ids: vec![A],
            },
            global("g16", 16),
        ],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/1", 15)]);
}

#[test]
fn reset_mid_stream_deletes_what_was_not_resent() {
    let mut core = running(
        &[doc("c/1", 1, 1), doc("c/2", 1, 1), doc("c/3", 1, 1)],
        &[doc("m/1", 1, 1)],
    );
    let out = feed(
        &mut core,
        [
            reset(&[A]),
            change(doc("c/1", 1, 1), A),   // unchanged: not emitted again
            change(doc("c/3", 1, 11), A),  // changed while we were not told
            change(doc("m/2", 12, 12), B), // unrelated target keeps flowing
            global("g12", 12),             // A not yet current: no deletions, no new token for A
        ],
    );
    assert_eq!(
        summary(&out),
        vec![s("update", "c/3", 11), s("create", "m/2", 12)]
    );
    assert!(out.contains(&Output::Notice(Notice::TargetReset { target_id: A })));
    let snap = snapshots(&out)[0];
    assert_eq!(
        tok(&snap.resume, A),
        None,
        "A's old token was invalidated by the reset"
    );
    assert_eq!(tok(&snap.resume, B), Some("g12"));

    let out = feed(
        &mut core,
        [
            change(doc("c/4", 13, 13), A),
            current(&[A], "a14"),
            global("g14", 14),
        ],
    );
    assert_eq!(
        summary(&out),
        vec![s("create", "c/4", 13), s("delete", "c/2", 14)]
    );
    assert_eq!(tok(&snapshots(&out)[0].resume, A), Some("g14"));
    assert_eq!(core.committed_len(A), 3);
    // no notice: the membership was known
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Notice(Notice::DeletionsMayBeIncomplete { .. }))));
}

#[test]
fn reset_of_all_targets_via_empty_ids() {
    let mut core = running(&[doc("c/1", 1, 1)], &[doc("m/1", 1, 1)]);
    let out = feed(
        &mut core,
        [
            reset(&[]),
            change(doc("m/1", 1, 1), B),
            current(&[], "x"),
            global("g12", 12),
        ],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/1", 12)]);
}

#[test]
fn existence_filter_mismatch_resyncs_the_target_without_a_token() {
    let mut core = running(&[doc("c/1", 1, 1), doc("c/2", 1, 1)], &[doc("m/1", 1, 1)]);
    // Matching count: nothing happens.
    assert!(feed(
        &mut core,
        [ListenResponse::Filter {
            target_id: A,
            count: 2,
            unchanged_names: None,
        }]
    )
    .is_empty());
    let out = feed(
        &mut core,
        [ListenResponse::Filter {
            target_id: A,
            count: 1,
            unchanged_names: None,
        }],
    );
    assert_eq!(
        out,
        vec![
            Output::Notice(Notice::FilterMismatch {
                target_id: A,
                expected: 1,
                held: 2
            }),
            Output::Send(ListenRequest::Remove { target_id: A }),
            Output::Send(ListenRequest::Add {
                target_id: A,
                resume_token: None,
                read_time: None,
                expected_count: None,
            }),
        ]
    );
    // Messages for the old registration are ignored until the server acknowledges both requests.
    let out = feed(
        &mut core,
        [
            change(doc("c/9", 11, 11), A),
            ListenResponse::Filter {
                target_id: A,
                count: 7,
                unchanged_names: None,
            },
            tc(TargetChangeKind::Remove, &[A], "", None),
            change(doc("c/8", 11, 11), A),
            add(&[A]),
            change(doc("c/1", 1, 1), A),
            current(&[A], "a12"),
            global("g12", 12),
        ],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/2", 12)]);
    assert_eq!(tok(&snapshots(&out)[0].resume, A), Some("g12"));
}

#[test]
fn stale_token_rejected_resyncs_everything_without_losing_changes() {
    let mut core = running(&[doc("c/1", 1, 1), doc("c/2", 1, 1)], &[doc("m/1", 1, 1)]);
    // Some changes arrive but the stream dies before the next consistent point.
    feed(&mut core, [change(doc("c/1", 1, 11), A)]);
    core.on_stream_end(StreamEnd::Transient);
    let reqs = core.start_stream();
    assert_eq!(
        reqs[0],
        ListenRequest::Add {
            target_id: A,
            resume_token: Some(b"g10".to_vec()),
            read_time: None,
            expected_count: None,
        }
    );
    // The server rejects the tokens.
    core.on_stream_end(StreamEnd::TokenRejected);
    assert!(core.resume_state().tokens.is_empty());
    let reqs = core.start_stream();
    assert_eq!(
        reqs,
        vec![
            ListenRequest::Add {
                target_id: A,
                resume_token: None,
                read_time: None,
                expected_count: None,
            },
            ListenRequest::Add {
                target_id: B,
                resume_token: None,
                read_time: None,
                expected_count: None,
            },
        ]
    );
    // Full state again: c/1 changed, c/2 gone, m/1 unchanged, m/2 new.
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/1", 1, 11), A),
            change(doc("m/1", 1, 1), B),
            change(doc("m/2", 15, 15), B),
            current(&[A, B], "ab"),
            global("g20", 20),
        ],
    );
    assert_eq!(
        summary(&out),
        vec![
            s("update", "c/1", 11),
            s("create", "m/2", 15),
            s("delete", "c/2", 20)
        ]
    );
    let snap = snapshots(&out)[0];
    assert_eq!(tok(&snap.resume, A), Some("g20"));
    assert_eq!(tok(&snap.resume, B), Some("g20"));
}

#[test]
fn server_removing_a_target_with_a_cause_reconnects_it_from_scratch() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    let out = feed(
        &mut core,
        [ListenResponse::TargetChange(TargetChange {
            kind: TargetChangeKind::Remove,
            target_ids: vec![A],
            resume_token: vec![],
            read_time: None,
            cause: Some(Cause {
                code: 3,
                message: "resume token expired".into(),
            }),
        })],
    );
    assert!(out.iter().any(|o| matches!(o, Output::Reconnect(_))));
    core.on_stream_end(StreamEnd::Transient);
    let reqs = core.start_stream();
    assert_eq!(
        reqs[0],
        ListenRequest::Add {
            target_id: A,
            resume_token: None,
            read_time: None,
            expected_count: None,
        }
    );
    assert_eq!(
        reqs[1],
        ListenRequest::Add {
            target_id: B,
            resume_token: Some(b"g10".to_vec()),
            read_time: None,
            expected_count: None,
        }
    );
    let out = feed(
        &mut core,
        [add(&[A, B]), current(&[A, B], "x"), global("g11", 11)],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/1", 11)]);
}

#[test]
fn reconnect_discards_uncommitted_changes_which_the_server_resends() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    feed(&mut core, [change(doc("c/2", 11, 11), A)]);
    core.on_stream_end(StreamEnd::Transient);
    core.start_stream();
    let out = feed(
        &mut core,
        [add(&[A, B]), current(&[A, B], "x"), global("g12", 12)],
    );
    assert_eq!(
        summary(&out),
        vec![],
        "nothing from the dead stream is emitted"
    );
    let out = feed(
        &mut core,
        [change(doc("c/2", 11, 11), A), global("g13", 13)],
    );
    assert_eq!(summary(&out), vec![s("create", "c/2", 11)]);
}

#[test]
fn restart_from_a_checkpoint_has_unknown_membership_and_says_so() {
    let state = ResumeState {
        read_time: Some(ts(10)),
        tokens: [(A, b"g10".to_vec()), (B, b"g10".to_vec())].into(),
        ..ResumeState::default()
    };
    let mut core = ListenCore::new([A, B], Some(state));
    core.start_stream();
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/5", 11, 11), A),
            current(&[A, B], "x"),
            global("g12", 12),
        ],
    );
    assert_eq!(summary(&out), vec![s("create", "c/5", 11)]);
    assert!(!core.membership_known(A));
    // The server cannot enumerate what it lost: it sends a filter; we re-sync.
    let out = feed(
        &mut core,
        [ListenResponse::Filter {
            target_id: A,
            count: 3,
            unchanged_names: None,
        }],
    );
    assert!(out.contains(&Output::Send(ListenRequest::Add {
        target_id: A,
        resume_token: None,
        read_time: None,
        expected_count: None,
    })));
    let out = feed(
        &mut core,
        [
            tc(TargetChangeKind::Remove, &[A], "", None),
            add(&[A]),
            change(doc("c/6", 1, 1), A),
            change(doc("c/7", 1, 1), A),
            current(&[A], "y"),
            global("g13", 13),
        ],
    );
    assert!(
        out.contains(&Output::Notice(Notice::DeletionsMayBeIncomplete {
            target_id: A
        }))
    );
    assert_eq!(
        summary(&out),
        vec![
            s("create", "c/6", 1),
            s("create", "c/7", 1),
            s("delete", "c/5", 13)
        ]
    );
    assert!(core.membership_known(A));
}

#[test]
fn multiple_targets_share_a_document_and_delete_only_when_it_leaves_all() {
    let mut core = running(&[doc("x/1", 1, 1)], &[doc("x/1", 1, 1)]);
    let out = feed(
        &mut core,
        [
            ListenResponse::DocumentRemove {
                path: "x/1".into(),
                removed_target_ids: vec![A],
                read_time: None,
            },
            global("g11", 11),
        ],
    );
    assert_eq!(summary(&out), vec![]);
    let out = feed(
        &mut core,
        [
            ListenResponse::DocumentRemove {
                path: "x/1".into(),
                removed_target_ids: vec![B],
                read_time: None,
            },
            global("g12", 12),
        ],
    );
    assert_eq!(summary(&out), vec![s("delete", "x/1", 12)]);
}

#[test]
fn tokens_only_advance_for_current_targets_and_resume_state_is_monotonic() {
    let mut core = running(&[], &[]);
    let out = feed(
        &mut core,
        [
            tc(TargetChangeKind::NoChange, &[A], "a11", None),
            global("", 12),
        ],
    );
    let snap = snapshots(&out)[0];
    assert_eq!(tok(&snap.resume, A), Some("a11"));
    assert_eq!(tok(&snap.resume, B), Some("g10"), "no new token for B");
    assert_eq!(snap.resume.read_time, Some(ts(12)));
    assert_eq!(core.resume_state(), snap.resume);
}

/// After a restart, membership seeded from the mirror turns a re-sync's
/// missing documents into real deletions (instead of only a notice).
#[test]
fn restart_seeded_from_the_mirror_emits_deletions_a_reset_reveals() {
    let state = ResumeState {
        read_time: Some(ts(10)),
        tokens: [(A, b"g10".to_vec()), (B, b"g10".to_vec())].into(),
        ..ResumeState::default()
    };
    let mut core = ListenCore::new([A, B], Some(state));
    core.seed_membership(
        A,
        [("c/5".to_owned(), ts(5)), ("c/6".to_owned(), ts(6))].into(),
    );
    core.start_stream();
    feed(
        &mut core,
        [add(&[A, B]), current(&[A, B], "x"), global("g12", 12)],
    );
    // The token was too old to enumerate what changed: a filter forces a re-sync.
    feed(
        &mut core,
        [ListenResponse::Filter {
            target_id: A,
            count: 1,
            unchanged_names: None,
        }],
    );
    let out = feed(
        &mut core,
        [
            tc(TargetChangeKind::Remove, &[A], "", None),
            add(&[A]),
            change(doc("c/6", 1, 6), A),
            current(&[A], "y"),
            global("g13", 13),
        ],
    );
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Notice(Notice::DeletionsMayBeIncomplete { .. }))),
        "a seeded membership is not reported as unknown: {out:?}"
    );
    assert!(
        summary(&out).contains(&s("delete", "c/5", 13)),
        "{:?}",
        summary(&out)
    );
    assert!(core.membership_known(A));
    // Seeding has no effect once the membership is known.
    core.seed_membership(A, [("c/9".to_owned(), ts(9))].into());
    let out = feed(&mut core, [global("g14", 14)]);
    assert!(summary(&out).is_empty());
}
