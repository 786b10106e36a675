//! [`ListenCore`]: the listen state machine (rules in the module docs of `listen`).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{
    code, Backoff, BloomFilter, Change, DeleteCause, ListenRequest, ListenResponse, Notice, Output,
    ResumeState, Snapshot, StreamEnd, TargetChange, TargetChangeKind, TargetFailure, TargetId,
    UpsertOp,
};
use crate::value::Timestamp;

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
    /// Hash of the target's query (see [`ResumeState::queries`]).
    query: String,
    /// Without a token, add the target at this read time (a start after a
    /// backfill up to it, or after a recovery); cleared once it has a token.
    start_read_time: Option<Timestamp>,
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
    /// This version was handed out as an [`Output::Upsert`] (or was a duplicate).
    Upsert(Timestamp),
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
    /// Paths whose upsert went out eagerly but whose window never reached a
    /// consistent point (the stream broke, or the process restarted): if the
    /// server does not send them again by the next consistent point at which
    /// every target is current, they are gone and are emitted as deletes
    /// ([`DeleteCause::Unconfirmed`], for the driver to confirm).
    limbo: HashSet<String>,
    /// Paths handed out as upserts since the last consistent point.
    window_upserts: HashSet<String>,
    read_time: Option<Timestamp>,
    /// `projects/{p}/databases/{d}/documents/`: bloom filters hold full names.
    name_prefix: String,
    /// Membership larger than this is not put into [`ResumeState::members`].
    max_persisted_members: usize,
}

/// Default of [`ListenCore::set_max_persisted_members`].
pub const DEFAULT_MAX_PERSISTED_MEMBERS: usize = 200_000;

impl ListenCore {
    /// `resume` is the persisted state of an earlier run, if any. Without one
    /// (first run) the membership of every target is known to be empty; with
    /// one it is what the checkpoint persisted, or unknown. Every target's
    /// query hash is the empty string (see [`ListenCore::for_targets`]).
    pub fn new(
        target_ids: impl IntoIterator<Item = TargetId>,
        resume: Option<ResumeState>,
    ) -> ListenCore {
        let targets: Vec<(TargetId, String)> = target_ids
            .into_iter()
            .map(|id| (id, String::new()))
            .collect();
        ListenCore::for_targets(&targets, resume).0
    }

    /// Like [`ListenCore::new`], with each target's query hash: a saved token
    /// (and membership) for another query is not used. Also returns the
    /// notices of that decision.
    pub fn for_targets(
        targets: &[(TargetId, String)],
        resume: Option<ResumeState>,
    ) -> (ListenCore, Vec<Notice>) {
        let first_run = resume.is_none();
        let mut resume = resume.unwrap_or_default();
        let mut notices = Vec::new();
        let targets = targets
            .iter()
            .map(|(id, query)| {
                let saved_query = resume.queries.get(id).cloned().unwrap_or_default();
                let had_token = resume.tokens.contains_key(id);
                let same = saved_query == *query;
                if !same && had_token {
                    notices.push(Notice::QueryChanged { target_id: *id });
                }
                let members = if same {
                    resume.members.remove(id)
                } else {
                    None
                };
                let state = TargetState {
                    known: first_run || members.is_some(),
                    committed: members.map(|m| m.into_iter().collect()).unwrap_or_default(),
                    safe_token: if same {
                        resume.tokens.get(id).cloned()
                    } else {
                        None
                    },
                    query: query.clone(),
                    ..TargetState::default()
                };
                (*id, state)
            })
            .collect();
        (
            ListenCore {
                targets,
                dirty: HashMap::new(),
                limbo: HashSet::new(),
                window_upserts: HashSet::new(),
                read_time: resume.read_time,
                name_prefix: String::new(),
                max_persisted_members: DEFAULT_MAX_PERSISTED_MEMBERS,
            },
            notices,
        )
    }

    /// The full resource name prefix of documents,
    /// `projects/{project}/databases/{database}/documents/`, which the bloom
    /// filters of existence filters hash. Without it no bloom filter matches
    /// and a mismatch re-syncs the target as before.
    pub fn set_name_prefix(&mut self, prefix: impl Into<String>) {
        self.name_prefix = prefix.into();
    }

    /// Targets with more documents than this are not persisted with the
    /// checkpoint (their membership is unknown after a restart).
    pub fn set_max_persisted_members(&mut self, n: usize) {
        self.max_persisted_members = n;
    }

    /// Every target is added at `read_time` (`Target.read_time`) instead of
    /// from its saved token or from scratch: the caller already published the
    /// state at that time (a backfill pinned to it, or a recovery backfill up
    /// to it). Membership becomes unknown. Once a target has a token again,
    /// later streams resume from it.
    pub fn start_at(&mut self, read_time: Timestamp) {
        for t in self.targets.values_mut() {
            t.safe_token = None;
            t.start_read_time = Some(read_time);
            t.known = false;
            t.seeded = false;
            t.committed.clear();
        }
    }

    /// Paths an earlier run may have published beyond its checkpoint (the
    /// mirror's documents with a version newer than the checkpoint's read
    /// time): unless the server sends them again by the first consistent point
    /// at which every target is current, they are emitted as
    /// [`DeleteCause::Unconfirmed`] deletes for the driver to confirm.
    pub fn add_limbo(&mut self, paths: impl IntoIterator<Item = String>) {
        self.limbo.extend(paths);
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
            if !t.known && t.start_read_time.is_none() {
                t.committed = members;
                t.seeded = true;
            }
        }
    }

    /// The resume state safe to persist once every emitted snapshot is
    /// published: tokens, their query hashes and the read time, without the
    /// membership (see [`ListenCore::resume_state_with_members`]), so that a
    /// consistent point does not copy every path.
    pub fn resume_state(&self) -> ResumeState {
        let with_token = || {
            self.targets
                .iter()
                .filter_map(|(id, t)| t.safe_token.as_ref().map(|tok| (*id, t, tok)))
        };
        ResumeState {
            read_time: self.read_time,
            tokens: with_token().map(|(id, _, tok)| (id, tok.clone())).collect(),
            queries: with_token()
                .map(|(id, t, _)| (id, t.query.clone()))
                .collect(),
            members: BTreeMap::new(),
        }
    }

    /// [`ListenCore::resume_state`] with the membership of every target that
    /// has a token, a known membership and at most the configured number of
    /// documents. Call it right after the [`Output::Emit`] it belongs to (before
    /// feeding the next message).
    pub fn resume_state_with_members(&self) -> ResumeState {
        let mut state = self.resume_state();
        state.members = self
            .targets
            .iter()
            .filter(|(_, t)| {
                t.safe_token.is_some()
                    && t.known
                    && !t.resetting
                    && t.committed.len() <= self.max_persisted_members
            })
            .map(|(id, t)| {
                (
                    *id,
                    t.committed.iter().map(|(p, v)| (p.clone(), *v)).collect(),
                )
            })
            .collect();
        state
    }

    /// Documents held by all targets at the last consistent point.
    pub fn member_count(&self) -> usize {
        self.targets.values().map(|t| t.committed.len()).sum()
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
        // Upserts handed out since the last consistent point are unconfirmed.
        self.dirty.clear();
        self.limbo.extend(self.window_upserts.drain());
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
            let read_time = if token.is_none() {
                t.start_read_time
            } else {
                None
            };
            if token.is_none() && read_time.is_none() {
                t.begin_reset();
            }
            let expected_count = (token.is_some() && t.known)
                .then(|| i32::try_from(t.committed.len()).ok())
                .flatten();
            requests.push(ListenRequest::Add {
                target_id: *id,
                resume_token: token,
                read_time,
                expected_count,
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
                    // This version, or a newer one, already went out.
                    let seen = match self.dirty.get(&doc.path) {
                        Some(Dirty::Upsert(v)) => *v >= doc.update_time,
                        _ => self
                            .committed_version(&doc.path)
                            .is_some_and(|v| v >= doc.update_time),
                    };
                    if !seen {
                        self.dirty
                            .insert(doc.path.clone(), Dirty::Upsert(doc.update_time));
                    }
                    if !seen {
                        self.window_upserts.insert(doc.path.clone());
                        let op = UpsertOp::of(&doc);
                        out.push(Output::Upsert(Change::Upsert { doc, op }));
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
            ListenResponse::Filter {
                target_id,
                count,
                unchanged_names,
            } => {
                let prefix = self.name_prefix.clone();
                let Some(t) = self.targets.get_mut(&target_id) else {
                    return out;
                };
                if !t.accepts() || t.resetting {
                    return out;
                }
                let held = t.len();
                let expected = usize::try_from(count).unwrap_or(0);
                if held != expected {
                    if !t.known && !t.seeded {
                        // Nothing to reconcile against: a re-sync would re-read
                        // the whole target and still not know what went away.
                        out.push(Output::Notice(Notice::FilterMismatchUnknownMembership {
                            target_id,
                            expected: count,
                            held,
                        }));
                        return out;
                    }
                    if let Some(bloom) = &unchanged_names {
                        if let Some(gone) = bloom_removals(t, bloom, &prefix, expected) {
                            for p in &gone {
                                t.remove(p);
                            }
                            out.push(Output::Notice(Notice::BloomFilterApplied {
                                target_id,
                                removed: gone.len(),
                            }));
                            for p in gone {
                                if !self.in_any_target(&p) {
                                    self.dirty.insert(
                                        p,
                                        Dirty::Delete {
                                            read_time: None,
                                            cause: DeleteCause::NotInExistenceFilter,
                                        },
                                    );
                                }
                            }
                            return out;
                        }
                    }
                    let t = self.target(target_id);
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
                        read_time: None,
                        expected_count: None,
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
                match &change.cause {
                    // A REMOVE with a cause and no ids concerns every target.
                    Some(cause) => {
                        self.on_target_error(&ids, cause, out);
                        return;
                    }
                    None if all => return,
                    None => {
                        let mut unasked = false;
                        for id in ids {
                            let t = self.target(id);
                            if t.pending > 0 {
                                t.pending -= 1;
                            } else {
                                // Not ours: the target is dead on this stream.
                                // Drop what it received since the last
                                // consistent point (its token never moved past
                                // it) and resume from the safe token.
                                t.discard_uncommitted();
                                out.push(Output::Notice(Notice::TargetRemovedUnasked {
                                    target_id: id,
                                }));
                                unasked = true;
                            }
                        }
                        if unasked {
                            out.push(Output::Reconnect(Backoff::Normal));
                            return;
                        }
                    }
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
            }
        }
        // As the Firebase SDKs: any target change without target ids and with
        // a read time is a global consistent point, whatever its kind.
        if all {
            if let Some(read_time) = change.read_time {
                self.consistent_point(read_time, out);
            }
        }
    }

    /// A target REMOVE with a cause (`ids` are every target when it named none).
    fn on_target_error(&mut self, ids: &[TargetId], cause: &super::Cause, out: &mut Vec<Output>) {
        match cause.code {
            code::PERMISSION_DENIED
            | code::NOT_FOUND
            | code::FAILED_PRECONDITION
            | code::UNIMPLEMENTED => {
                out.push(Output::Fail(TargetFailure {
                    target_id: ids.first().copied().unwrap_or_default(),
                    code: cause.code,
                    code_name: code::name(cause.code),
                    message: cause.message.clone(),
                }));
            }
            c => {
                let drop_token = c == code::INVALID_ARGUMENT;
                for id in ids {
                    let t = self.target(*id);
                    t.pending = 0;
                    t.current = false;
                    if drop_token {
                        // The only cause a token can be: listen from scratch.
                        t.safe_token = None;
                        t.start_read_time = None;
                        t.force_fresh = true;
                    }
                    out.push(Output::Notice(Notice::TargetRemoved {
                        target_id: *id,
                        cause: cause.clone(),
                    }));
                }
                out.push(Output::Reconnect(if drop_token {
                    Backoff::Normal
                } else {
                    Backoff::Max
                }));
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
                // Handed out as an `Output::Upsert` when it arrived.
                Dirty::Upsert(_) => {}
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
        // Unconfirmed upserts of a broken window: confirmed by being held
        // (or deleted) now; once every target is current here the server has
        // resent everything newer than the tokens, so the rest are gone.
        self.window_upserts.clear();
        if !self.limbo.is_empty() {
            let all_current = self
                .targets
                .values()
                .all(|t| t.current && t.accepts() && !t.resetting);
            let mut limbo: Vec<String> = self.limbo.drain().collect();
            limbo.sort();
            for path in limbo {
                if self.committed_anywhere(&path)
                    || changes.iter().any(|c: &Change| c.path() == path)
                {
                    continue;
                }
                if all_current {
                    changes.push(Change::Delete {
                        path,
                        time: read_time,
                        cause: DeleteCause::Unconfirmed,
                    });
                } else {
                    self.limbo.insert(path);
                }
            }
        }
        for t in self.targets.values_mut() {
            if t.safe_token.is_some() {
                t.start_read_time = None;
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

/// The documents a bloom filter shows to have left the target, if removing
/// them makes its count agree with the server's (else a false positive hides
/// one and the caller re-syncs, as the Firebase SDKs do).
fn bloom_removals(
    t: &TargetState,
    bloom: &BloomFilter,
    prefix: &str,
    expected: usize,
) -> Option<Vec<String>> {
    let members = t
        .committed
        .keys()
        .filter(|p| !t.removed.contains(*p))
        .chain(t.added.keys().filter(|p| !t.committed.contains_key(*p)));
    let mut gone: Vec<String> = members
        .filter(|p| !bloom.might_contain(&format!("{prefix}{p}")))
        .cloned()
        .collect();
    gone.sort();
    (t.len().checked_sub(gone.len()) == Some(expected)).then_some(gone)
}
