//! The live publisher: one listen stream over this instance's key range of
//! every mirrored collection, driven through the pure [`ListenCore`]:
//! upserts are published as they arrive (pipelined), deletions at consistent
//! points (confirmed by a document get where the server did not state them),
//! and resume tokens are checkpointed only after the bus confirmed every event
//! before them.
//!
//! The stream itself is a port, [`ListenTransport`], implemented over gRPC by
//! the `firestore` adapter and by scripted fakes in the tests. Crash safety: a
//! checkpoint is written only after every change of its snapshot (and of all
//! earlier ones) was published and awaited, so a crash re-publishes (harmless:
//! deterministic ids) and never skips.

use crate::PublisherStore;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use mirror_bus::EventBus;
use mirror_runtime::backoff::Backoff;
use mirror_store::{Checkpoint, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::listen::{
    Backoff as ListenBackoff, Change, ListenCore, ListenRequest, ListenResponse, Notice, Output,
    ResumeState, StreamEnd, TargetFailure, TargetId, UpsertOp,
};
use crate::mapping::SourceInfo;
use crate::sink::{Disposition, KeyRange, Shard, Sink, SinkError, Tally};
use crate::value::{Document, Timestamp};

/// The checkpoint module of the live path.
pub const CHECKPOINT_MODULE: &str = "publisher";

/// One listen target: a collection, or a collection group, restricted to
/// documents under `{scope}/{key}` for the keys of this instance's
/// [`KeyRange`] (every key when not sharded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSpec {
    /// Stable across releases: resume tokens are stored under it.
    pub id: TargetId,
    pub collection_id: &'static str,
    pub all_descendants: bool,
    /// The top-level collection whose document ids are the partition keys:
    /// the `__name__` bounds are `{scope}/{lo}` and `{scope}/{hi}`, which
    /// also keep out subcollections of the same name elsewhere.
    pub scope: &'static str,
}

/// Lowest and highest document ids used as open bounds (see
/// `docs/firestore-mapping.md`: ids outside them are not listened to).
pub const MIN_ID: &str = "\u{1}";
pub const MAX_ID: &str = "\u{10FFFF}";

impl TargetSpec {
    /// The `__name__` bounds (relative paths): `lower <= name < upper`.
    pub fn bounds(&self, range: &KeyRange) -> (String, String) {
        (
            format!("{}/{}", self.scope, range.lo.as_deref().unwrap_or(MIN_ID)),
            format!("{}/{}", self.scope, range.hi.as_deref().unwrap_or(MAX_ID)),
        )
    }

    /// A stable hash of the query this target listens to (with its range),
    /// stored with its resume token: a token is only used for the query it
    /// was issued for, so a resharding starts the changed ranges fresh.
    pub fn query_hash(&self, range: &KeyRange) -> String {
        use sha2::{Digest, Sha256};
        let (lo, hi) = self.bounds(range);
        let canonical = format!(
            "v2|from={}|all_descendants={}|name>={lo}|name<{hi}",
            self.collection_id, self.all_descendants
        );
        hex::encode(&Sha256::digest(canonical.as_bytes())[..8])
    }
}

/// The publisher's targets. Collection group `targets` is listened to twice,
/// under `follows/` and under `blocks/` (id 3, the unrestricted group of
/// earlier releases, is retired: its token is not used).
pub const TARGETS: [TargetSpec; 4] = [
    TargetSpec {
        id: 1,
        collection_id: "conversations",
        all_descendants: false,
        scope: "conversations",
    },
    TargetSpec {
        id: 2,
        collection_id: "messages",
        all_descendants: true,
        scope: "conversations",
    },
    TargetSpec {
        id: 4,
        collection_id: "targets",
        all_descendants: true,
        scope: "follows",
    },
    TargetSpec {
        id: 5,
        collection_id: "targets",
        all_descendants: true,
        scope: "blocks",
    },
];

/// How a transport failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// Reconnect after a delay and resume.
    Transient,
    /// `INVALID_ARGUMENT`: a stale resume token; re-listen from scratch once.
    InvalidArgument,
    /// Nothing a retry fixes (permissions, configuration).
    Fatal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("listen stream ({kind:?}): {message}")]
pub struct TransportError {
    pub kind: TransportErrorKind,
    pub message: String,
}

/// A bidirectional listen stream. `open` starts one for [`TARGETS`]; the
/// requests to send arrive on `requests`, in order, for as long as the stream
/// lives; the stream yields the server's messages converted to the core's types.
pub trait ListenTransport: Send + Sync {
    type Stream: Stream<Item = Result<ListenResponse, TransportError>> + Send + Unpin;
    fn open(
        &self,
        requests: mpsc::UnboundedReceiver<ListenRequest>,
    ) -> impl Future<Output = Result<Self::Stream, TransportError>> + Send;

    /// `projects/{p}/databases/{d}/documents/`, which existence filters'
    /// bloom filters hash with each path. Empty: bloom filters are not used.
    fn name_prefix(&self) -> String {
        String::new()
    }

    /// The current version of each document (`None`: it does not exist), in
    /// order; one billed read each. Confirms the deletes the server did not
    /// state ([`crate::listen::DeleteCause::needs_confirmation`]). The default
    /// (for fakes without documents) answers that none exists.
    fn get_documents(
        &self,
        paths: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Document>>, TransportError>> + Send {
        let n = paths.len();
        async move { Ok(vec![None; n]) }
    }
}

/// Settings of the live path.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub source: SourceInfo,
    pub shard: Shard,
    /// Waits before reconnecting: growing while streams end without
    /// progress, from the first delay again after a snapshot, the longest
    /// at once when the server asks to back off.
    pub reconnect: Backoff,
    /// A snapshot without changes still saves its (newer) token at most this often.
    pub idle_checkpoint_interval: Duration,
    /// Upserts published concurrently (awaited before any checkpoint).
    pub publish_window: usize,
    /// With more than [`LARGE_MEMBERSHIP`] documents, checkpoints (which
    /// carry the membership) are saved at most this often.
    pub large_checkpoint_interval: Duration,
    /// Targets holding more documents are not persisted with the checkpoint.
    pub max_persisted_members: usize,
    /// Add targets without a token at this read time (after a backfill
    /// pinned to it, or a recovery backfill) instead of from scratch.
    pub start_read_time: Option<Timestamp>,
    /// This instance's keys: its listen targets are restricted to them and
    /// it publishes everything they deliver (see [`KeyRange::of_shard`]).
    pub range: KeyRange,
}

impl LiveConfig {
    pub fn new(source: SourceInfo, shard: Shard) -> LiveConfig {
        LiveConfig {
            source,
            shard,
            reconnect: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            idle_checkpoint_interval: Duration::from_secs(10),
            publish_window: 64,
            large_checkpoint_interval: Duration::from_secs(30),
            max_persisted_members: crate::listen::DEFAULT_MAX_PERSISTED_MEMBERS,
            start_read_time: None,
            // The shard's default range; a transport listening to more is
            // only costlier, never wrong (the sink publishes just this range).
            range: KeyRange::of_shard(shard, None).unwrap_or(KeyRange::ALL),
        }
    }
}

/// Everything [`run`] needs.
pub struct LiveDeps<T, B, S> {
    pub transport: T,
    pub bus: B,
    pub store: S,
    pub config: LiveConfig,
}

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveReport {
    pub streams: u64,
    pub snapshots: u64,
    pub checkpoints: u64,
    pub tally: Tally,
    /// Document gets that confirmed deletes the server did not state (billed reads).
    pub confirm_reads: u64,
    /// Of those, documents that still existed (published as upserts instead).
    pub deletes_refuted: u64,
    /// How many notices the core raised.
    pub notice_count: u64,
    /// The first [`MAX_KEPT_NOTICES`] of them (all are logged).
    pub notices: Vec<Notice>,
}

/// Notices kept in a [`LiveReport`]; a long run must not grow without bound.
pub const MAX_KEPT_NOTICES: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[source] StoreError),
    #[error(transparent)]
    Transport(TransportError),
    #[error("the listen request was rejected even without resume tokens: {0}")]
    Rejected(TransportError),
    #[error(transparent)]
    Target(TargetFailure),
}

/// How long a resume token keeps a resume cheap: Firestore bills a listen
/// resumed after about 30 minutes as a new query.
pub const TOKEN_LIFE: Duration = Duration::from_secs(30 * 60);

/// Above this many documents held, checkpoints are rate-limited.
pub const LARGE_MEMBERSHIP: usize = 10_000;

/// Checkpoint age above which an operator should be alerted: a resume token
/// older than about 30 minutes is billed as a new query (a full re-read).
pub const CHECKPOINT_AGE_ALERT: Duration = Duration::from_secs(25 * 60);

/// How old the live checkpoint is at `now` (by its `last_processed_at`, the
/// read time of the last consistent point published). `None`: no checkpoint.
pub fn checkpoint_age(checkpoint: &Checkpoint, now: Timestamp) -> Option<Duration> {
    let at = checkpoint.last_processed_at?;
    Some((now - at).to_std().unwrap_or(Duration::ZERO))
}

/// [`checkpoint_age`] of this shard's live checkpoint, read from the store
/// (for a gauge or an alert at [`CHECKPOINT_AGE_ALERT`]).
pub async fn live_checkpoint_age<S: PublisherStore>(
    store: &S,
    shard: &Shard,
    now: Timestamp,
) -> Result<Option<Duration>, StoreError> {
    Ok(store
        .load_checkpoint(CHECKPOINT_MODULE, &shard.id())
        .await?
        .and_then(|cp| checkpoint_age(&cp, now)))
}

/// The live documents the mirror holds, per listen target, as path → source
/// version: conversations (not placeholders), messages (not tombstoned),
/// blocks and follow edges (not deleted).
pub fn mirrored_membership(
    state: &mirror_store::MirrorState,
) -> Vec<(
    TargetId,
    std::collections::HashMap<String, crate::value::Timestamp>,
)> {
    let conversations = state
        .conversations
        .iter()
        .filter_map(|(c, row)| {
            row.source_version
                .map(|v| (format!("conversations/{c}"), v))
        })
        .collect();
    let messages = state
        .messages
        .iter()
        .filter(|(_, row)| !row.tombstone)
        .map(|((c, m), row)| {
            (
                format!("conversations/{c}/messages/{m}"),
                row.source_version,
            )
        })
        .collect();
    let blocks = state
        .blocks
        .iter()
        .filter(|(_, row)| row.deleted_at.is_none())
        .map(|((u, t), row)| (format!("blocks/{u}/targets/{t}"), row.source_version));
    let follows = state
        .follow_edges
        .iter()
        .filter(|(_, row)| row.deleted_at.is_none())
        .map(|((f, t), row)| (format!("follows/{f}/targets/{t}"), row.source_version));
    vec![
        (TARGETS[0].id, conversations),
        (TARGETS[1].id, messages),
        (TARGETS[2].id, follows.collect()),
        (TARGETS[3].id, blocks.collect()),
    ]
}

/// Run the live publisher until `shutdown` resolves (returns the report) or a
/// failure no retry can fix (returns the error; restart from the checkpoint).
pub async fn run<T, B, S>(
    deps: LiveDeps<T, B, S>,
    shutdown: impl Future<Output = ()>,
) -> Result<LiveReport, LiveError>
where
    T: ListenTransport,
    B: EventBus,
    S: PublisherStore,
{
    let LiveDeps {
        transport,
        bus,
        store,
        config,
    } = deps;
    let shard_id = config.shard.id();
    let mut sink = Sink::new(&bus, &store, &config.source, config.shard);
    sink.range = Some(config.range.clone());
    let mut report = LiveReport::default();

    let resume = match store
        .load_checkpoint(CHECKPOINT_MODULE, &shard_id)
        .await
        .map_err(LiveError::Checkpoint)?
    {
        // No checkpoint for this shard: a first start, or a new share after a
        // resharding. Either way the membership is what the mirror holds in
        // this range (seeded below), so a handover loses no deletion.
        None => Some(ResumeState::default()),
        Some(cp) => Some(match cp.cursor_token.as_deref().map(ResumeState::decode) {
            Some(Ok(state)) => state,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "ignoring an unreadable checkpoint; listening from scratch");
                ResumeState::default()
            }
            None => ResumeState::default(),
        }),
    };
    let checkpoint_read_time = resume.as_ref().and_then(|r| r.read_time);
    let specs: Vec<(TargetId, String)> = TARGETS
        .iter()
        .map(|t| (t.id, t.query_hash(&config.range)))
        .collect();
    let (mut core, notices) = ListenCore::for_targets(&specs, resume);
    for notice in notices {
        note(&mut report, notice);
    }
    core.set_name_prefix(transport.name_prefix());
    core.set_max_persisted_members(config.max_persisted_members);
    // A start read time newer than the checkpoint (or without one) replaces
    // the tokens; an older one was already used and is ignored on restarts.
    let start_at = config
        .start_read_time
        .filter(|t| checkpoint_read_time.is_none_or(|cp| cp < *t));
    if let Some(t) = start_at {
        tracing::info!(read_time = %t, "listening from a read time");
        core.start_at(t);
    } else if let Some(age) = checkpoint_read_time
        .and_then(|cp| (chrono::Utc::now() - cp).to_std().ok())
        .filter(|age| *age > TOKEN_LIFE)
    {
        tracing::warn!(
            ?age,
            "the checkpoint is older than a resume token lives: resuming is billed as a full \
             re-read of every target; `publisher backfill --recover --dry-run` shows the cost of a \
             bounded recovery, then `publisher run --start-read-time <T>`"
        );
    }
    if start_at.is_none() {
        // What an earlier run published, as the mirror holds it: a fallback
        // membership for targets the checkpoint did not persist, and the
        // documents published beyond the checkpoint (upserts go out before
        // their consistent point), which the server must confirm.
        match store.snapshot().await {
            Ok(state) => {
                for (target, mut members) in mirrored_membership(&state) {
                    // Only this instance's keys (a resharded range learns its
                    // deletions against what the mirror holds for it).
                    members.retain(|p, _| config.range.contains_path(p));
                    if let Some(since) = checkpoint_read_time {
                        core.add_limbo(
                            members
                                .iter()
                                .filter(|(_, v)| **v > since)
                                .map(|(p, _)| p.clone()),
                        );
                    }
                    core.seed_membership(target, members);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mirror's membership; deletions seen only through a reset will be reported, not emitted")
            }
        }
    }
    let mut shutdown = pin!(shutdown.fuse());
    let mut delays = config.reconnect.delays();
    let mut rejected_in_a_row = 0u32;
    let mut last_save = Instant::now();
    let window = config.publish_window.max(1);

    loop {
        let (tx, rx) = mpsc::unbounded_channel();
        for request in core.start_stream() {
            let _ = tx.send(request);
        }
        let opened = futures::select! {
            _ = shutdown.as_mut() => return Ok(report),
            r = transport.open(rx).fuse() => r,
        };
        let mut backoff = ListenBackoff::Normal;
        let end = match opened {
            Err(e) => classify(e, &mut rejected_in_a_row)?,
            Ok(mut stream) => {
                report.streams += 1;
                let mut inflight = FuturesUnordered::new();
                loop {
                    let item = futures::select_biased! {
                        _ = shutdown.as_mut() => return Ok(report),
                        item = stream.next().fuse() => item,
                    };
                    let response = match item {
                        None => break StreamEnd::Transient,
                        Some(Err(e)) => break classify(e, &mut rejected_in_a_row)?,
                        Some(Ok(r)) => r,
                    };
                    let mut reconnect = false;
                    for output in core.on_response(response) {
                        match output {
                            Output::Send(request) => {
                                let _ = tx.send(request);
                            }
                            Output::Reconnect(b) => {
                                reconnect = true;
                                if b == ListenBackoff::Max {
                                    backoff = ListenBackoff::Max;
                                }
                            }
                            Output::Notice(notice) => note(&mut report, notice),
                            Output::Fail(failure) => {
                                if failure.code == crate::listen::code::FAILED_PRECONDITION {
                                    tracing::error!(%failure, "a read time older than Firestore's version retention (recover with `publisher backfill --recover`) or a missing index (the message links it)");
                                }
                                drain(&mut inflight, &mut report.tally).await?;
                                return Err(LiveError::Target(failure));
                            }
                            Output::Upsert(change) => {
                                if inflight.len() >= window {
                                    if let Some(r) = inflight.next().await {
                                        report.tally.add(r?);
                                    }
                                }
                                inflight.push(publish_owned(&sink, change));
                            }
                            Output::Emit(snapshot) => {
                                report.snapshots += 1;
                                rejected_in_a_row = 0;
                                delays = config.reconnect.delays();
                                let upserts = !inflight.is_empty();
                                drain(&mut inflight, &mut report.tally).await?;
                                let changes =
                                    confirm_deletes(&transport, snapshot.changes, &mut report)
                                        .await?;
                                for change in &changes {
                                    report.tally.add(sink.change(change).await?);
                                }
                                // A large membership makes a checkpoint big: save
                                // it at most every `large_checkpoint_interval`
                                // (skipping one is safe: a restart re-publishes
                                // a little more, with the same ids).
                                let due = if core.member_count() > LARGE_MEMBERSHIP {
                                    last_save.elapsed() >= config.large_checkpoint_interval
                                } else {
                                    upserts || !changes.is_empty()
                                };
                                if due || last_save.elapsed() >= config.idle_checkpoint_interval {
                                    store
                                        .save_checkpoint(&Checkpoint {
                                            module: CHECKPOINT_MODULE.to_owned(),
                                            shard: shard_id.clone(),
                                            last_processed_at: Some(snapshot.read_time),
                                            cursor_token: Some(
                                                core.resume_state_with_members().encode(),
                                            ),
                                        })
                                        .await
                                        .map_err(LiveError::Checkpoint)?;
                                    report.checkpoints += 1;
                                    last_save = Instant::now();
                                }
                            }
                        }
                    }
                    if reconnect {
                        break StreamEnd::Transient;
                    }
                }
            }
        };
        core.on_stream_end(end);
        let delay = if backoff == ListenBackoff::Max {
            config.reconnect.max_delay
        } else {
            delays.next_delay()
        };
        tracing::info!(?end, ?delay, "listen stream ended; reconnecting");
        futures::select! {
            _ = shutdown.as_mut() => return Ok(report),
            _ = tokio::time::sleep(delay).fuse() => {}
        }
    }
}

fn note(report: &mut LiveReport, notice: Notice) {
    tracing::warn!(?notice, "listen stream notice");
    report.notice_count += 1;
    if report.notices.len() < MAX_KEPT_NOTICES {
        report.notices.push(notice);
    }
}

/// One upsert's publication, owning its change (so many can be in flight).
async fn publish_owned<B: EventBus, S: PublisherStore>(
    sink: &Sink<'_, B, S>,
    change: Change,
) -> Result<Disposition, SinkError> {
    sink.change(&change).await
}

/// Await every publication in flight.
async fn drain<F: Future<Output = Result<Disposition, SinkError>>>(
    inflight: &mut FuturesUnordered<F>,
    tally: &mut Tally,
) -> Result<(), SinkError> {
    while let Some(r) = inflight.next().await {
        tally.add(r?);
    }
    Ok(())
}

/// Deletes the server did not state are confirmed with a document get (one
/// read each): a document that still exists is published as an upsert of its
/// current version instead.
async fn confirm_deletes<T: ListenTransport>(
    transport: &T,
    changes: Vec<Change>,
    report: &mut LiveReport,
) -> Result<Vec<Change>, LiveError> {
    let doubtful: Vec<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Delete { path, cause, .. } if cause.needs_confirmation() => Some(path.clone()),
            _ => None,
        })
        .collect();
    if doubtful.is_empty() {
        return Ok(changes);
    }
    let mut found = std::collections::HashMap::new();
    for chunk in doubtful.chunks(100) {
        let docs = transport
            .get_documents(chunk)
            .await
            .map_err(LiveError::Transport)?;
        report.confirm_reads += chunk.len() as u64;
        for doc in docs.into_iter().flatten() {
            found.insert(doc.path.clone(), doc);
        }
    }
    Ok(changes
        .into_iter()
        .map(|c| match c {
            Change::Delete {
                ref path, cause, ..
            } if cause.needs_confirmation() => match found.remove(path) {
                Some(doc) => {
                    report.deletes_refuted += 1;
                    let op = UpsertOp::of(&doc);
                    Change::Upsert { doc, op }
                }
                None => c,
            },
            c => c,
        })
        .collect())
}

fn classify(e: TransportError, rejected_in_a_row: &mut u32) -> Result<StreamEnd, LiveError> {
    match e.kind {
        TransportErrorKind::Transient => {
            tracing::warn!(error = %e, "listen stream failed");
            Ok(StreamEnd::Transient)
        }
        TransportErrorKind::InvalidArgument => {
            *rejected_in_a_row += 1;
            if *rejected_in_a_row > 1 {
                return Err(LiveError::Rejected(e));
            }
            tracing::warn!(error = %e, "listen request rejected; re-listening without resume tokens");
            Ok(StreamEnd::TokenRejected)
        }
        TransportErrorKind::Fatal => Err(LiveError::Transport(e)),
    }
}

#[cfg(test)]
mod tests;
