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
    let mut early = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/1", 1, 1), A),
            change(doc("c/2", 1, 5), A),
            current(&[A], "a1"),
        ],
    );
    assert!(
        snapshots(&early).is_empty(),
        "per-target CURRENT must not emit"
    );
    // A NO_CHANGE for one target with a read time is not global either.
    let out = feed(
        &mut core,
        [tc(TargetChangeKind::NoChange, &[A], "a2", Some(3))],
    );
    assert!(snapshots(&out).is_empty());
    early.extend(out);
    let mut out = early;
    out.extend(feed(
        &mut core,
        [
            change(doc("m/1", 2, 2), B),
            current(&[B], "b1"),
            global("g1", 6),
        ],
    ));
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
    let mut restarted = ListenCore::new([A, B], Some(core.resume_state_with_members()));
    assert_eq!(
        restarted.start_stream(),
        vec![
            ListenRequest::Add {
                target_id: A,
                resume_token: Some(b"g1".to_vec()),
                read_time: None,
                expected_count: Some(1),
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
fn upserts_go_out_eagerly_and_duplicates_or_older_versions_do_not() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    let mut out = feed(
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
    out.extend(feed(&mut core, [global("g14", 14)]));
    assert_eq!(
        summary(&out),
        vec![
            s("update", "c/1", 11),
            s("create", "c/2", 12),
            s("update", "c/1", 13)
        ]
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
    // The upsert went out when it arrived (a real version); the delete at
    // the consistent point is newer and wins in the mirror.
    assert_eq!(
        summary(&out),
        vec![s("update", "c/1", 14), s("delete", "c/1", 15)]
    );
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
            expected_count: Some(2),
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
            expected_count: Some(0),
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
    let out = feed(&mut core, [change(doc("c/2", 11, 11), A)]);
    assert_eq!(
        summary(&out),
        vec![s("create", "c/2", 11)],
        "upserts go out eagerly"
    );
    core.on_stream_end(StreamEnd::Transient);
    core.start_stream();
    // The server resends what is newer than the token: c/2 is confirmed.
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/2", 11, 11), A),
            current(&[A, B], "x"),
            global("g12", 12),
        ],
    );
    assert_eq!(summary(&out), vec![s("create", "c/2", 11)]);
    assert_eq!(snapshots(&out)[0].changes, vec![]);
}

#[test]
fn an_eager_upsert_the_resumed_stream_does_not_confirm_becomes_a_delete_to_confirm() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    feed(&mut core, [change(doc("c/2", 11, 11), A)]);
    core.on_stream_end(StreamEnd::Transient);
    core.start_stream();
    // c/2 was created and deleted while the stream was down: the server
    // knows the client never had it (the token predates it) and says nothing.
    let out = feed(
        &mut core,
        [add(&[A, B]), current(&[A], "x"), global("g12", 12)],
    );
    assert_eq!(summary(&out), vec![], "B is not current yet: keep waiting");
    let out = feed(&mut core, [current(&[B], "y"), global("g13", 13)]);
    let snap = snapshots(&out)[0];
    assert_eq!(
        snap.changes,
        vec![Change::Delete {
            path: "c/2".into(),
            time: ts(13),
            cause: DeleteCause::Unconfirmed
        }]
    );
    assert!(DeleteCause::Unconfirmed.needs_confirmation());
    // The same after a process restart, from the mirror's newer documents.
    let state = snap.resume.clone();
    let mut core = ListenCore::new([A, B], Some(state));
    core.add_limbo(["c/9".to_owned()]);
    core.start_stream();
    let out = feed(
        &mut core,
        [add(&[A, B]), current(&[A, B], "z"), global("g14", 14)],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/9", 14)]);
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
    // The server cannot enumerate what it lost: it sends a filter. With no
    // membership to reconcile against, a re-sync would re-read the whole
    // target and still not know what went away: report it instead.
    let out = feed(
        &mut core,
        [ListenResponse::Filter {
            target_id: A,
            count: 3,
            unchanged_names: None,
        }],
    );
    assert_eq!(
        out,
        vec![Output::Notice(Notice::FilterMismatchUnknownMembership {
            target_id: A,
            expected: 3,
            held: 1
        })]
    );
    // A server RESET still teaches it the membership.
    let out = feed(
        &mut core,
        [
            reset(&[A]),
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

fn removed_with(ids: &[TargetId], code: i32) -> ListenResponse {
    ListenResponse::TargetChange(TargetChange {
        kind: TargetChangeKind::Remove,
        target_ids: ids.to_vec(),
        resume_token: vec![],
        read_time: None,
        cause: Some(Cause {
            code,
            message: "m".into(),
        }),
    })
}

#[test]
fn target_errors_no_retry_fixes_end_the_run() {
    for c in [
        code::PERMISSION_DENIED,
        code::NOT_FOUND,
        code::FAILED_PRECONDITION,
        code::UNIMPLEMENTED,
    ] {
        let mut core = running(&[doc("c/1", 1, 1)], &[]);
        let out = feed(&mut core, [removed_with(&[B], c)]);
        let [Output::Fail(f)] = out.as_slice() else {
            panic!("{c}: {out:?}")
        };
        assert_eq!((f.target_id, f.code), (B, c));
        assert!(f.to_string().contains(code::name(c)), "{f}");
    }
}

#[test]
fn retryable_target_errors_reconnect_at_max_backoff_keeping_the_safe_token() {
    for c in [code::RESOURCE_EXHAUSTED, code::UNAVAILABLE, code::INTERNAL] {
        let mut core = running(&[doc("c/1", 1, 1)], &[]);
        // Uncommitted work is dropped, not published.
        feed(&mut core, [change(doc("c/1", 1, 11), A)]);
        let out = feed(&mut core, [removed_with(&[A], c)]);
        assert!(
            out.contains(&Output::Reconnect(Backoff::Max)),
            "{c}: {out:?}"
        );
        core.on_stream_end(StreamEnd::Transient);
        let reqs = core.start_stream();
        assert!(reqs.iter().all(|r| matches!(
            r,
            ListenRequest::Add { resume_token: Some(t), .. } if t == b"g10"
        )));
    }
}

#[test]
fn only_invalid_argument_drops_the_token_and_no_ids_means_every_target() {
    let mut core = running(&[doc("c/1", 1, 1)], &[doc("m/1", 1, 1)]);
    let out = feed(&mut core, [removed_with(&[], code::INVALID_ARGUMENT)]);
    assert!(out.contains(&Output::Reconnect(Backoff::Normal)));
    let reqs = core.start_stream();
    assert!(
        reqs.iter().all(|r| matches!(
            r,
            ListenRequest::Add {
                resume_token: None,
                ..
            }
        )),
        "{reqs:?}"
    );
    // A cause without ids that no retry fixes also ends the run.
    let mut core = running(&[], &[]);
    let out = feed(&mut core, [removed_with(&[], code::PERMISSION_DENIED)]);
    assert!(matches!(out.as_slice(), [Output::Fail(_)]));
}

#[test]
fn an_unasked_remove_drops_the_target_state_and_resumes_from_the_safe_token() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    // A change the dead target will never confirm, then the server drops it.
    let out = feed(
        &mut core,
        [
            ListenResponse::DocumentDelete {
                path: "c/1".into(),
                read_time: Some(ts(11)),
                removed_target_ids: vec![A],
            },
            tc(TargetChangeKind::Remove, &[A], "", None),
        ],
    );
    assert!(out.contains(&Output::Notice(Notice::TargetRemovedUnasked {
        target_id: A
    })));
    assert!(out.contains(&Output::Reconnect(Backoff::Normal)));
    // Had the stream gone on, A's token must not have advanced past the delete.
    assert_eq!(tok(&core.resume_state(), A), Some("g10"));
    core.on_stream_end(StreamEnd::Transient);
    let reqs = core.start_stream();
    assert!(
        matches!(&reqs[0], ListenRequest::Add { target_id: A, resume_token: Some(t), .. } if t == b"g10")
    );
    // The resumed stream states the delete again; it is emitted.
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            ListenResponse::DocumentDelete {
                path: "c/1".into(),
                read_time: Some(ts(11)),
                removed_target_ids: vec![A],
            },
            current(&[A, B], "x"),
            global("g12", 12),
        ],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/1", 11)]);
}

#[test]
fn any_target_change_without_ids_and_with_a_read_time_is_a_consistent_point() {
    let mut core = running(&[doc("c/1", 1, 1)], &[]);
    let out = feed(
        &mut core,
        [
            ListenResponse::DocumentDelete {
                path: "c/1".into(),
                read_time: Some(ts(11)),
                removed_target_ids: vec![A],
            },
            tc(TargetChangeKind::Current, &[], "g12", Some(12)),
        ],
    );
    assert_eq!(summary(&out), vec![s("delete", "c/1", 11)]);
    assert_eq!(tok(&snapshots(&out)[0].resume, A), Some("g12"));
}

#[test]
fn membership_and_query_hashes_are_persisted_and_a_changed_query_starts_fresh() {
    let specs = [(A, "qa".to_owned()), (B, "qb".to_owned())];
    let (mut core, notices) = ListenCore::for_targets(&specs, None);
    assert!(notices.is_empty());
    core.start_stream();
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/1", 1, 1), A),
            change(doc("c/2", 1, 2), A),
            current(&[A, B], "g3"),
            global("g3", 3),
        ],
    );
    assert!(
        snapshots(&out)[0].resume.members.is_empty(),
        "not copied per point"
    );
    let state = core.resume_state_with_members();
    assert_eq!(state.tokens, snapshots(&out)[0].resume.tokens);
    assert_eq!(state.queries[&A], "qa");
    assert_eq!(state.members[&A].len(), 2);
    let state = ResumeState::decode(&state.encode()).unwrap();

    // Same queries: exact membership, expected_count sent, deletions exact.
    let (mut core, _) = ListenCore::for_targets(&specs, Some(state.clone()));
    assert!(core.membership_known(A));
    let reqs = core.start_stream();
    assert_eq!(
        reqs[0],
        ListenRequest::Add {
            target_id: A,
            resume_token: Some(b"g3".to_vec()),
            read_time: None,
            expected_count: Some(2)
        }
    );
    // The server compacted a delete into a filter with a bloom filter of the
    // names that still match: c/2 is gone, no re-read.
    core.set_name_prefix("projects/p/databases/(default)/documents/");
    let bloom = BloomFilter::of(["projects/p/databases/(default)/documents/c/1"], 64, 3);
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            ListenResponse::Filter {
                target_id: A,
                count: 1,
                unchanged_names: Some(bloom),
            },
            current(&[A, B], "g5"),
            global("g5", 5),
        ],
    );
    assert!(out.contains(&Output::Notice(Notice::BloomFilterApplied {
        target_id: A,
        removed: 1
    })));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Send(_))),
        "no re-sync"
    );
    assert_eq!(summary(&out), vec![s("delete", "c/2", 5)]);

    // A changed query: the token and membership are not used.
    let changed = [(A, "qa-ranges".to_owned()), (B, "qb".to_owned())];
    let (mut core, notices) = ListenCore::for_targets(&changed, Some(state));
    assert_eq!(notices, vec![Notice::QueryChanged { target_id: A }]);
    assert!(!core.membership_known(A));
    // A resharded target is seeded with what the mirror holds in its new
    // range (the caller filters), so its first full read yields deletions.
    core.seed_membership(A, [("c/1".to_owned(), ts(1))].into_iter().collect());
    assert_eq!(core.committed_len(A), 1);
    let reqs = core.start_stream();
    assert!(matches!(
        &reqs[0],
        ListenRequest::Add {
            resume_token: None,
            ..
        }
    ));
    assert!(matches!(
        &reqs[1],
        ListenRequest::Add {
            resume_token: Some(_),
            ..
        }
    ));
}

#[test]
fn a_start_from_a_read_time_resumes_after_it_and_then_uses_tokens() {
    let mut core = ListenCore::new([A, B], None);
    core.start_at(ts(100));
    let reqs = core.start_stream();
    assert!(reqs.iter().all(|r| matches!(
        r,
        ListenRequest::Add { resume_token: None, read_time: Some(t), expected_count: None, .. } if *t == ts(100)
    )));
    let out = feed(
        &mut core,
        [
            add(&[A, B]),
            change(doc("c/1", 1, 101), A),
            current(&[A, B], "g102"),
            global("g102", 102),
        ],
    );
    assert_eq!(summary(&out), vec![s("update", "c/1", 101)]);
    // A filter cannot be reconciled (the backfill's membership is not kept).
    let out = feed(
        &mut core,
        [ListenResponse::Filter {
            target_id: A,
            count: 50,
            unchanged_names: None,
        }],
    );
    assert!(matches!(
        out.as_slice(),
        [Output::Notice(
            Notice::FilterMismatchUnknownMembership { .. }
        )]
    ));
    core.on_stream_end(StreamEnd::Transient);
    let reqs = core.start_stream();
    assert!(reqs.iter().all(|r| matches!(
        r,
        ListenRequest::Add {
            resume_token: Some(_),
            read_time: None,
            ..
        }
    )));
}
