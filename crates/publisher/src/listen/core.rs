//! [`ListenCore`]: the listen state machine (rules in the module docs of `listen`).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{
    Change, DeleteCause, ListenRequest, ListenResponse, Notice, Output, ResumeState, Snapshot,
    StreamEnd, TargetChange, TargetChangeKind, TargetId, UpsertOp,
};
use crate::value::{Document, Timestamp};

/// Per-target protocol state.
#[derive(Debug, Default)]
struct TargetState {
    /// ADD/REMOVE acknowledgements still expected for requests we sent; while
    /// non-zero, messages for the target belong to an old registration and are ignored.
    pending: u32,
    current: bool,
    /// The server is (re)sending the full state; `added` holds what it resent so far.
    resetting: bool,
    /// Whether `committed` is known to be the target's complete membership.
    known: bool,
    /// `committed` was seeded from the mirror after a restart: a reset's
    /// deletions are computed against it, though it may be incomplete.
    seeded: bool,
    /// Membership at the last consistent point: path → update time.
    committed: HashMap<String, Timestamp>,
    /// Working membership since then, as a delta over `committed` (or, while
    /// resetting, the whole resent membership).
    added: HashMap<String, Timestamp>,
    removed: HashSet<String>,
    safe_token: Option<Vec<u8>>,
    candidate: Option<Vec<u8>>,
    /// Listen without a token at the next stream start.
    force_fresh: bool,
}

impl TargetState {
    fn contains(&self, path: &str) -> bool {
        self.added.contains_key(path)
            || (!self.resetting
                && self.committed.contains_key(path)
                && !self.removed.contains(path))
    }

    fn insert(&mut self, path: &str, t: Timestamp) {
        self.removed.remove(path);
        let slot = self.added.entry(path.to_owned()).or_insert(t);
        if *slot < t {
            *slot = t;
        }
    }

    fn remove(&mut self, path: &str) {
        self.added.remove(path);
        if !self.resetting && self.committed.contains_key(path) {
            self.removed.insert(path.to_owned());
        }
    }

    /// Number of documents the target holds now.
    fn len(&self) -> usize {
        if self.resetting {
            return self.added.len();
        }
        let removed = self
            .removed
            .iter()
            .filter(|p| self.committed.contains_key(*p))
            .count();
        let new = self
            .added
            .keys()
            .filter(|p| !self.committed.contains_key(*p))
            .count();
        self.committed.len() - removed + new
    }

    fn begin_reset(&mut self) {
        self.resetting = true;
        self.current = false;
        self.candidate = None;
        self.safe_token = None;
        self.added.clear();
        self.removed.clear();
    }

    /// Forget what arrived since the last consistent point (a new stream resends it).
    fn discard_uncommitted(&mut self) {
        self.current = false;
        self.candidate = None;
        self.resetting = false;
        self.added.clear();
        self.removed.clear();
    }

    fn accepts(&self) -> bool {
        self.pending == 0
    }
}

/// The latest uncommitted effect on one document path.
#[derive(Debug, Clone)]
enum Dirty {
    Upsert(Document),
    Delete {
        read_time: Option<Timestamp>,
        cause: DeleteCause,
    },
}

/// The listen state machine. Create it with the target ids and the resume
/// state loaded from the checkpoint, call [`ListenCore::start_stream`] for
/// every new stream and [`ListenCore::on_response`] for every message.
#[derive(Debug)]
pub struct ListenCore {
    targets: BTreeMap<TargetId, TargetState>,
    dirty: HashMap<String, Dirty>,
    read_time: Option<Timestamp>,
}

impl ListenCore {
    /// `resume` is the persisted state of an earlier run, if any. Without one
    /// (first run) the membership of every target is known to be empty; with
    /// one it is unknown until the target's next reset completes.
    pub fn new(
        target_ids: impl IntoIterator<Item = TargetId>,
        resume: Option<ResumeState>,
    ) -> ListenCore {
        let first_run = resume.is_none();
        let resume = resume.unwrap_or_default();
        let targets = target_ids
            .into_iter()
            .map(|id| {
                let state = TargetState {
                    known: first_run,
                    safe_token: resume.tokens.get(&id).cloned(),
                    ..TargetState::default()
                };
                (id, state)
            })
            .collect();
        ListenCore {
            targets,
            dirty: HashMap::new(),
            read_time: resume.read_time,
        }
    }

    /// Give a target whose membership is unknown (a restart with a resume
    /// token) the membership an earlier run published, as the mirror holds it:
    /// path → update time. A later reset then yields real deletions for the
    /// documents Firestore no longer sends, instead of only a
    /// [`Notice::DeletionsMayBeIncomplete`]. Has no effect on a target whose
    /// membership is already known. Extra paths are harmless (a delete of a
    /// deleted document is stale in the mirror); a missing path can still hide
    /// a deletion, which the notice keeps reporting as before.
    pub fn seed_membership(&mut self, target_id: TargetId, members: HashMap<String, Timestamp>) {
        if let Some(t) = self.targets.get_mut(&target_id) {
            if !t.known {
                t.committed = members;
                t.seeded = true;
            }
        }
    }

    /// The resume state safe to persist once every emitted snapshot is published.
    pub fn resume_state(&self) -> ResumeState {
        ResumeState {
            read_time: self.read_time,
            tokens: self
                .targets
                .iter()
                .filter_map(|(id, t)| t.safe_token.clone().map(|tok| (*id, tok)))
                .collect(),
        }
    }

    /// Whether the target's membership is known exactly (test and metrics aid).
    pub fn membership_known(&self, target_id: TargetId) -> bool {
        self.targets.get(&target_id).is_some_and(|t| t.known)
    }

    /// Number of documents a target holds at its last consistent point.
    pub fn committed_len(&self, target_id: TargetId) -> usize {
        self.targets
            .get(&target_id)
            .map_or(0, |t| t.committed.len())
    }

    /// A new stream is open: the requests that add every target, resuming
    /// where a safe token exists. Anything received since the last consistent
    /// point is discarded; the server sends it again.
    pub fn start_stream(&mut self) -> Vec<ListenRequest> {
        self.dirty.clear();
        let mut requests = Vec::new();
        for (id, t) in &mut self.targets {
            t.discard_uncommitted();
            t.pending = 1;
            let token = if t.force_fresh {
                None
            } else {
                t.safe_token.clone()
            };
            t.force_fresh = false;
            if token.is_none() {
                t.begin_reset();
            }
            requests.push(ListenRequest::Add {
                target_id: *id,
                resume_token: token,
            });
        }
        requests
    }

    /// The stream ended; call [`ListenCore::start_stream`] for the next one.
    pub fn on_stream_end(&mut self, end: StreamEnd) {
        if end == StreamEnd::TokenRejected {
            for t in self.targets.values_mut() {
                t.safe_token = None;
                t.force_fresh = true;
            }
        }
    }

    /// Feed one message of the stream.
    pub fn on_response(&mut self, response: ListenResponse) -> Vec<Output> {
        let mut out = Vec::new();
        match response {
            ListenResponse::TargetChange(change) => self.on_target_change(change, &mut out),
            ListenResponse::DocumentChange {
                doc,
                target_ids,
                removed_target_ids,
            } => {
                let added: Vec<TargetId> = self.accepting(&target_ids);
                let removed: Vec<TargetId> = self.accepting(&removed_target_ids);
                if added.is_empty() && removed.is_empty() {
                    return out;
                }
                for id in &added {
                    self.target(*id).insert(&doc.path, doc.update_time);
                }
                for id in &removed {
                    self.target(*id).remove(&doc.path);
                }
                if !added.is_empty() {
                    let newer = match self.dirty.get(&doc.path) {
                        Some(Dirty::Upsert(existing)) => existing.update_time <= doc.update_time,
                        _ => true,
                    };
                    if newer {
                        self.dirty.insert(doc.path.clone(), Dirty::Upsert(doc));
                    }
                } else if !self.in_any_target(&doc.path) {
                    self.dirty.insert(
                        doc.path.clone(),
                        Dirty::Delete {
                            read_time: None,
                            cause: DeleteCause::Removed,
                        },
                    );
                }
            }
            ListenResponse::DocumentDelete {
                path,
                read_time,
                removed_target_ids,
            } => self.on_gone(path, read_time, &removed_target_ids, DeleteCause::Deleted),
            ListenResponse::DocumentRemove {
                path,
                removed_target_ids,
                read_time,
            } => self.on_gone(path, read_time, &removed_target_ids, DeleteCause::Removed),
            ListenResponse::Filter { target_id, count } => {
                let Some(t) = self.targets.get_mut(&target_id) else {
                    return out;
                };
                if !t.accepts() || t.resetting {
                    return out;
                }
                let held = t.len();
                let expected = usize::try_from(count).unwrap_or(0);
                if held != expected {
                    out.push(Output::Notice(Notice::FilterMismatch {
                        target_id,
                        expected: count,
                        held,
                    }));
                    // Re-sync: remove and add again without a token.
                    t.begin_reset();
                    t.pending += 2;
                    out.push(Output::Send(ListenRequest::Remove { target_id }));
                    out.push(Output::Send(ListenRequest::Add {
                        target_id,
                        resume_token: None,
                    }));
                }
            }
        }
        out
    }

    fn on_gone(
        &mut self,
        path: String,
        read_time: Option<Timestamp>,
        removed: &[TargetId],
        cause: DeleteCause,
    ) {
        let ids: Vec<TargetId> = if removed.is_empty() {
            self.targets
                .iter()
                .filter(|(_, t)| t.accepts())
                .map(|(id, _)| *id)
                .collect()
        } else {
            self.accepting(removed)
        };
        if ids.is_empty() {
            return;
        }
        for id in ids {
            self.target(id).remove(&path);
        }
        if cause == DeleteCause::Deleted || !self.in_any_target(&path) {
            self.dirty.insert(path, Dirty::Delete { read_time, cause });
        }
    }

    fn on_target_change(&mut self, change: TargetChange, out: &mut Vec<Output>) {
        let all = change.target_ids.is_empty();
        let ids: Vec<TargetId> = if all {
            self.targets.keys().copied().collect()
        } else {
            change
                .target_ids
                .iter()
                .copied()
                .filter(|id| self.targets.contains_key(id))
                .collect()
        };
        let token = (!change.resume_token.is_empty()).then(|| change.resume_token.clone());
        match change.kind {
            TargetChangeKind::Add => {
                if !all {
                    for id in ids {
                        let t = self.target(id);
                        t.pending = t.pending.saturating_sub(1);
                    }
                }
            }
            TargetChangeKind::Remove => {
                if all {
                    return;
                }
                for id in ids {
                    let t = self.target(id);
                    match &change.cause {
                        None => t.pending = t.pending.saturating_sub(1),
                        Some(cause) => {
                            // The server ended the target: its token may be the reason.
                            t.pending = 0;
                            t.safe_token = None;
                            t.force_fresh = true;
                            t.current = false;
                            out.push(Output::Notice(Notice::TargetRemoved {
                                target_id: id,
                                cause: cause.clone(),
                            }));
                        }
                    }
                }
                if change.cause.is_some() {
                    out.push(Output::Reconnect);
                }
            }
            TargetChangeKind::Current => {
                for id in ids {
                    let t = self.target(id);
                    if t.accepts() {
                        t.current = true;
                        if token.is_some() {
                            t.candidate = token.clone();
                        }
                    }
                }
            }
            TargetChangeKind::Reset => {
                for id in ids {
                    let t = self.target(id);
                    if t.accepts() {
                        t.begin_reset();
                        out.push(Output::Notice(Notice::TargetReset { target_id: id }));
                    }
                }
            }
            TargetChangeKind::NoChange => {
                for id in &ids {
                    let t = self.target(*id);
                    if t.accepts() && t.current && token.is_some() {
                        t.candidate = token.clone();
                    }
                }
                if all {
                    if let Some(read_time) = change.read_time {
                        self.consistent_point(read_time, out);
                    }
                }
            }
        }
    }

    /// Commit the working state at `read_time` and emit its changes.
    fn consistent_point(&mut self, read_time: Timestamp, out: &mut Vec<Output>) {
        // Versions emitted so far, for duplicate suppression.
        let mut changes = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        let mut deleted_paths: Vec<String> = Vec::new();
        for (path, d) in dirty {
            match d {
                Dirty::Upsert(doc) => {
                    if self.committed_version(&path) != Some(doc.update_time)
                        && self.in_any_target(&path)
                    {
                        let op = UpsertOp::of(&doc);
                        changes.push(Change::Upsert { doc, op });
                    }
                }
                Dirty::Delete {
                    read_time: rt,
                    cause,
                } => {
                    if !self.in_any_target(&path) {
                        changes.push(Change::Delete {
                            path: path.clone(),
                            time: rt.unwrap_or(read_time),
                            cause,
                        });
                        deleted_paths.push(path);
                    }
                }
            }
        }

        // Commit each target; completed resets yield deletions.
        let mut missing: Vec<(TargetId, String)> = Vec::new();
        for (id, t) in &mut self.targets {
            for p in &deleted_paths {
                t.committed.remove(p);
            }
            if t.resetting {
                if t.current && t.accepts() {
                    for p in t.committed.keys() {
                        if !t.added.contains_key(p) {
                            missing.push((*id, p.clone()));
                        }
                    }
                    if !t.known && !t.seeded {
                        out.push(Output::Notice(Notice::DeletionsMayBeIncomplete {
                            target_id: *id,
                        }));
                    }
                    t.committed = std::mem::take(&mut t.added);
                    t.resetting = false;
                    t.known = true;
                } else {
                    for (p, v) in &t.added {
                        t.committed.insert(p.clone(), *v);
                    }
                }
            } else {
                for p in t.removed.drain() {
                    t.committed.remove(&p);
                }
                t.committed.extend(t.added.drain());
            }
            if t.current && t.accepts() && !t.resetting {
                if let Some(tok) = t.candidate.take() {
                    t.safe_token = Some(tok);
                }
            }
        }
        for (_, path) in missing {
            if !self.in_any_target(&path) && !self.committed_anywhere(&path) {
                changes.push(Change::Delete {
                    path,
                    time: read_time,
                    cause: DeleteCause::MissingAfterReset,
                });
            }
        }

        changes.sort_by(|a, b| (a.time(), a.path()).cmp(&(b.time(), b.path())));
        changes.dedup_by(|a, b| a.path() == b.path() && a.time() == b.time());
        self.read_time = Some(read_time);
        out.push(Output::Emit(Snapshot {
            read_time,
            changes,
            resume: self.resume_state(),
        }));
    }

    fn committed_version(&self, path: &str) -> Option<Timestamp> {
        self.targets
            .values()
            .find_map(|t| t.committed.get(path).copied())
    }

    fn committed_anywhere(&self, path: &str) -> bool {
        self.targets
            .values()
            .any(|t| t.committed.contains_key(path))
    }

    fn in_any_target(&self, path: &str) -> bool {
        self.targets.values().any(|t| t.contains(path))
    }

    fn accepting(&self, ids: &[TargetId]) -> Vec<TargetId> {
        ids.iter()
            .copied()
            .filter(|id| self.targets.get(id).is_some_and(TargetState::accepts))
            .collect()
    }

    fn target(&mut self, id: TargetId) -> &mut TargetState {
        self.targets
            .get_mut(&id)
            .expect("only known target ids are looked up")
    }
}
