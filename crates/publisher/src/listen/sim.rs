//! Randomised simulation: a model Firestore server with a change log drives the
//! core through reconnects, rejected tokens, resets, filter mismatches (with
//! the server "forgetting" deletes) and process restarts; a last-writer-wins
//! mirror of the emitted changes must end equal to the server.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::*;
use crate::value::{Document, Timestamp};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn ts(t: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_000_000 + t, 0).unwrap()
}

fn target_of(path: &str) -> TargetId {
    if path.starts_with("a/") {
        1
    } else {
        2
    }
}

#[derive(Default)]
struct Server {
    clock: i64,
    /// path → (create, update)
    docs: BTreeMap<String, (i64, i64)>,
    /// path → delete time (latest)
    deletes: BTreeMap<String, i64>,
}

impl Server {
    /// The live loop's confirmation of a delete the server did not state.
    fn confirm(&self, c: &Change) -> Change {
        match c {
            Change::Delete { path, cause, .. } if cause.needs_confirmation() => {
                match self.docs.get(path) {
                    Some(v) => {
                        let doc = Server::doc(path, *v);
                        Change::Upsert {
                            op: UpsertOp::of(&doc),
                            doc,
                        }
                    }
                    None => c.clone(),
                }
            }
            _ => c.clone(),
        }
    }
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }
    fn doc(path: &str, (c, u): (i64, i64)) -> Document {
        Document {
            path: path.to_owned(),
            fields: BTreeMap::new(),
            create_time: ts(c),
            update_time: ts(u),
        }
    }
    fn change(path: &str, v: (i64, i64)) -> ListenResponse {
        ListenResponse::DocumentChange {
            doc: Server::doc(path, v),
            target_ids: vec![target_of(path)],
            removed_target_ids: vec![],
        }
    }
    fn tc(
        kind: TargetChangeKind,
        ids: Vec<TargetId>,
        token: Option<i64>,
        read_time: Option<i64>,
    ) -> ListenResponse {
        ListenResponse::TargetChange(TargetChange {
            kind,
            target_ids: ids,
            resume_token: token
                .map(|t| t.to_string().into_bytes())
                .unwrap_or_default(),
            read_time: read_time.map(ts),
            cause: None,
        })
    }
    /// The target's documents then CURRENT; with `split`, a global consistent
    /// point after that many documents (large targets load over several).
    fn full_state(&self, t: TargetId, q: &mut VecDeque<ListenResponse>, split: Option<usize>) {
        for (i, (p, v)) in self
            .docs
            .iter()
            .filter(|(p, _)| target_of(p) == t)
            .enumerate()
        {
            if split == Some(i) {
                self.global(q);
            }
            q.push_back(Server::change(p, *v));
        }
        q.push_back(Server::tc(
            TargetChangeKind::Current,
            vec![t],
            Some(self.clock),
            None,
        ));
    }
    fn global(&self, q: &mut VecDeque<ListenResponse>) {
        q.push_back(Server::tc(
            TargetChangeKind::NoChange,
            vec![],
            Some(self.clock),
            Some(self.clock),
        ));
    }

    /// Answer one request. `resume_mode`: 0 faithful, 1 reset, 2 forgets deletes and sends a filter.
    fn handle(
        &self,
        req: &ListenRequest,
        resume_mode: u64,
        split: Option<usize>,
        q: &mut VecDeque<ListenResponse>,
    ) {
        match req {
            ListenRequest::Remove { target_id } => q.push_back(Server::tc(
                TargetChangeKind::Remove,
                vec![*target_id],
                None,
                None,
            )),
            ListenRequest::Add {
                target_id,
                resume_token,
                ..
            } => {
                let t = *target_id;
                q.push_back(Server::tc(TargetChangeKind::Add, vec![t], None, None));
                match resume_token {
                    None => self.full_state(t, q, split),
                    Some(tok) => {
                        let since: i64 = std::str::from_utf8(tok).unwrap().parse().unwrap();
                        match resume_mode {
                            1 => {
                                q.push_back(Server::tc(
                                    TargetChangeKind::Reset,
                                    vec![t],
                                    None,
                                    None,
                                ));
                                self.full_state(t, q, split);
                            }
                            _ => {
                                for (p, v) in &self.docs {
                                    if target_of(p) == t && v.1 > since {
                                        q.push_back(Server::change(p, *v));
                                    }
                                }
                                if resume_mode == 0 {
                                    for (p, d) in &self.deletes {
                                        if target_of(p) == t
                                            && *d > since
                                            && !self.docs.contains_key(p)
                                        {
                                            q.push_back(ListenResponse::DocumentDelete {
                                                path: p.clone(),
                                                read_time: Some(ts(*d)),
                                                removed_target_ids: vec![t],
                                            });
                                        }
                                    }
                                } else {
                                    let count =
                                        self.docs.keys().filter(|p| target_of(p) == t).count();
                                    q.push_back(ListenResponse::Filter {
                                        target_id: t,
                                        count: count as i32,
                                        unchanged_names: None,
                                    });
                                }
                                q.push_back(Server::tc(
                                    TargetChangeKind::Current,
                                    vec![t],
                                    Some(self.clock),
                                    None,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The mirror: last writer wins by event time; deletes are tombstones.
#[derive(Default)]
struct Mirror(HashMap<String, (Timestamp, Option<(Timestamp, Timestamp)>)>);

impl Mirror {
    fn apply(&mut self, c: &Change) {
        let (path, time, value) = match c {
            Change::Upsert { doc, op } => {
                assert_eq!(*op == UpsertOp::Create, doc.create_time == doc.update_time);
                (
                    doc.path.clone(),
                    doc.update_time,
                    Some((doc.create_time, doc.update_time)),
                )
            }
            Change::Delete { path, time, .. } => (path.clone(), *time, None),
        };
        match self.0.get(&path) {
            Some((stored, _)) if *stored > time => {}
            _ => {
                self.0.insert(path, (time, value));
            }
        }
    }
}

fn simulate(seed: u64, allow_restarts: bool) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut server = Server::default();
    let mut mirror = Mirror::default();
    let mut core = ListenCore::new([1, 2], None);
    let mut persisted: Option<ResumeState> = None;
    let mut restarted = false;

    let feed = |core: &mut ListenCore,
                server: &Server,
                q: &mut VecDeque<ListenResponse>,
                mirror: &mut Mirror,
                persisted: &mut Option<ResumeState>,
                rng: &mut Rng,
                broken_at: Option<usize>|
     -> bool {
        let mut n = 0;
        while let Some(m) = q.pop_front() {
            if broken_at == Some(n) {
                return false;
            }
            n += 1;
            for out in core.on_response(m) {
                match out {
                    Output::Send(req) => {
                        server.handle(&req, 0, Some(1), q);
                        if matches!(req, ListenRequest::Add { .. }) {
                            server.global(q);
                        }
                    }
                    Output::Upsert(c) => mirror.apply(&c),
                    Output::Emit(snap) => {
                        for c in &snap.changes {
                            mirror.apply(&server.confirm(c));
                        }
                        *persisted = Some(core.resume_state_with_members());
                    }
                    Output::Reconnect(_) => return false,
                    Output::Notice(_) => {}
                    Output::Fail(f) => panic!("{f}"),
                }
            }
            let _ = rng;
        }
        true
    };

    for _step in 0..30 {
        // Open a stream.
        let reqs = core.start_stream();
        if reqs.iter().any(|r| {
            matches!(
                r,
                ListenRequest::Add {
                    resume_token: Some(_),
                    ..
                }
            )
        }) && rng.chance(10)
            && !restarted
        {
            core.on_stream_end(StreamEnd::TokenRejected);
            continue;
        }
        let mode = if restarted { 0 } else { rng.below(3) };
        let mut q = VecDeque::new();
        for r in &reqs {
            let split = rng.chance(40).then(|| rng.below(4) as usize);
            server.handle(r, mode, split, &mut q);
        }
        server.global(&mut q);
        if !feed(
            &mut core,
            &server,
            &mut q,
            &mut mirror,
            &mut persisted,
            &mut rng,
            None,
        ) {
            core.on_stream_end(StreamEnd::Transient);
            continue;
        }
        // Some rounds of changes on the open stream.
        let mut alive = true;
        for _round in 0..rng.below(4) {
            for _ in 0..rng.below(4) + 1 {
                let path = format!(
                    "{}/{}",
                    if rng.chance(50) { "a" } else { "b" },
                    rng.below(6)
                );
                let now = server.tick();
                if server.docs.contains_key(&path) && rng.chance(35) {
                    server.docs.remove(&path);
                    server.deletes.insert(path.clone(), now);
                    q.push_back(ListenResponse::DocumentDelete {
                        path: path.clone(),
                        read_time: Some(ts(now)),
                        removed_target_ids: vec![target_of(&path)],
                    });
                } else {
                    let create = server.docs.get(&path).map_or(now, |v| v.0);
                    server.docs.insert(path.clone(), (create, now));
                    q.push_back(Server::change(&path, (create, now)));
                    if rng.chance(20) {
                        q.push_back(Server::change(&path, (create, now))); // duplicate
                    }
                }
            }
            if !restarted && rng.chance(10) {
                let t = if rng.chance(50) { 1 } else { 2 };
                q.push_back(Server::tc(TargetChangeKind::Reset, vec![t], None, None));
                let split = rng.chance(40).then(|| rng.below(4) as usize);
                server.full_state(t, &mut q, split);
            }
            if rng.chance(5) {
                // The server drops a target: unasked without a cause, or
                // with a retryable cause. Either way the stream is abandoned
                // and resumed from the safe tokens.
                let t = if rng.chance(50) { 1 } else { 2 };
                let cause = rng.chance(50).then(|| Cause {
                    code: [code::UNAVAILABLE, code::RESOURCE_EXHAUSTED, code::INTERNAL]
                        [rng.below(3) as usize],
                    message: "sim".into(),
                });
                q.push_back(ListenResponse::TargetChange(TargetChange {
                    kind: TargetChangeKind::Remove,
                    target_ids: vec![t],
                    resume_token: vec![],
                    read_time: None,
                    cause,
                }));
            }
            server.global(&mut q);
            let broken_at = rng
                .chance(15)
                .then(|| rng.below(q.len() as u64 + 1) as usize);
            if !feed(
                &mut core,
                &server,
                &mut q,
                &mut mirror,
                &mut persisted,
                &mut rng,
                broken_at,
            ) {
                alive = false;
                break;
            }
        }
        core.on_stream_end(StreamEnd::Transient);
        if !alive {
            continue;
        }
        if allow_restarts && rng.chance(15) {
            core = ListenCore::new([1, 2], persisted.clone());
            restarted = true;
        }
    }

    // A clean final stream: everything converges.
    for _attempt in 0..3 {
        let reqs = core.start_stream();
        let mut q = VecDeque::new();
        for r in &reqs {
            server.handle(r, 0, None, &mut q);
        }
        server.global(&mut q);
        server.global(&mut q);
        if feed(
            &mut core,
            &server,
            &mut q,
            &mut mirror,
            &mut persisted,
            &mut rng,
            None,
        ) {
            break;
        }
        core.on_stream_end(StreamEnd::Transient);
    }

    for (path, (c, u)) in &server.docs {
        let got = mirror.0.get(path).and_then(|(_, v)| *v);
        assert_eq!(
            got,
            Some((ts(*c), ts(*u))),
            "seed {seed}: {path} should be at version {u}"
        );
    }
    for (path, (_, v)) in &mirror.0 {
        if v.is_some() {
            assert!(
                server.docs.contains_key(path),
                "seed {seed}: {path} was deleted but the mirror still has it"
            );
        }
    }
}

#[test]
fn converges_through_reconnects_resets_filters_and_rejected_tokens() {
    for seed in 0..400 {
        simulate(seed, false);
    }
}

#[test]
fn converges_across_restarts_when_the_server_resumes_faithfully() {
    for seed in 1000..1400 {
        simulate(seed, true);
    }
}
