//! The live publisher: one listen stream over every mirrored collection,
//! driven through the pure [`ListenCore`], publishing at consistent points and
//! checkpointing resume tokens only after the bus confirmed every event before
//! them.
//!
//! The stream itself is a port, [`ListenTransport`], implemented over gRPC by
//! the `firestore` adapter and by scripted fakes in the tests. Crash safety: a
//! checkpoint is written only after every change of its snapshot (and of all
//! earlier ones) was published and awaited, so a crash re-publishes (harmless:
//! deterministic ids) and never skips.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use mirror_bus::EventBus;
use mirror_store::{Checkpoint, MirrorStore, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::listen::{
    ListenCore, ListenRequest, ListenResponse, Notice, Output, ResumeState, StreamEnd, TargetId,
};
use crate::mapping::SourceInfo;
use crate::sink::{Shard, Sink, SinkError, Tally};

/// The checkpoint module of the live path.
pub const CHECKPOINT_MODULE: &str = "publisher";

/// One listen target: a collection, or a collection group, under the database root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSpec {
    /// Stable across releases: resume tokens are stored under it.
    pub id: TargetId,
    pub collection_id: &'static str,
    pub all_descendants: bool,
}

/// The publisher's targets. The `targets` group covers both `follows/*/targets`
/// and `blocks/*/targets`; other parents are filtered out by path
/// ([`crate::mapping::route`]), as are `messages` outside `conversations/*`.
pub const TARGETS: [TargetSpec; 3] = [
    TargetSpec {
        id: 1,
        collection_id: "conversations",
        all_descendants: false,
    },
    TargetSpec {
        id: 2,
        collection_id: "messages",
        all_descendants: true,
    },
    TargetSpec {
        id: 3,
        collection_id: "targets",
        all_descendants: true,
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
}

/// Settings of the live path.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub source: SourceInfo,
    pub shard: Shard,
    /// First reconnect delay; doubles up to `max_retry_delay`, reset by progress.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// A snapshot without changes still saves its (newer) token at most this often.
    pub idle_checkpoint_interval: Duration,
}

impl LiveConfig {
    pub fn new(source: SourceInfo, shard: Shard) -> LiveConfig {
        LiveConfig {
            source,
            shard,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            idle_checkpoint_interval: Duration::from_secs(10),
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
        (TARGETS[2].id, blocks.chain(follows).collect()),
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
    S: MirrorStore,
{
    let LiveDeps {
        transport,
        bus,
        store,
        config,
    } = deps;
    let shard_id = config.shard.id();
    let sink = Sink::new(&bus, &store, &config.source, config.shard);
    let mut report = LiveReport::default();

    let resume = match store
        .load_checkpoint(CHECKPOINT_MODULE, &shard_id)
        .await
        .map_err(LiveError::Checkpoint)?
    {
        None => None,
        Some(cp) => Some(match cp.cursor_token.as_deref().map(ResumeState::decode) {
            Some(Ok(state)) => state,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "ignoring an unreadable checkpoint; listening from scratch");
                ResumeState::default()
            }
            None => ResumeState::default(),
        }),
    };
    let restarted = resume.is_some();
    let mut core = ListenCore::new(TARGETS.iter().map(|t| t.id), resume);
    if restarted {
        // What an earlier run published, as the mirror holds it, so that a
        // reset after this restart can still tell which documents went away.
        match store.snapshot().await {
            Ok(state) => {
                for (target, members) in mirrored_membership(&state) {
                    core.seed_membership(target, members);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mirror's membership; deletions seen only through a reset will be reported, not emitted")
            }
        }
    }
    let mut shutdown = pin!(shutdown.fuse());
    let mut delay = config.retry_delay;
    let mut rejected_in_a_row = 0u32;
    let mut last_save = Instant::now();

    loop {
        let (tx, rx) = mpsc::unbounded_channel();
        for request in core.start_stream() {
            let _ = tx.send(request);
        }
        let opened = futures::select! {
            _ = shutdown.as_mut() => return Ok(report),
            r = transport.open(rx).fuse() => r,
        };
        let end = match opened {
            Err(e) => classify(e, &mut rejected_in_a_row)?,
            Ok(mut stream) => {
                report.streams += 1;
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
                            Output::Reconnect => reconnect = true,
                            Output::Notice(notice) => {
                                tracing::warn!(?notice, "listen stream notice");
                                report.notice_count += 1;
                                if report.notices.len() < MAX_KEPT_NOTICES {
                                    report.notices.push(notice);
                                }
                            }
                            Output::Emit(snapshot) => {
                                report.snapshots += 1;
                                rejected_in_a_row = 0;
                                delay = config.retry_delay;
                                for change in &snapshot.changes {
                                    report.tally.add(sink.change(change).await?);
                                }
                                if !snapshot.changes.is_empty()
                                    || last_save.elapsed() >= config.idle_checkpoint_interval
                                {
                                    store
                                        .save_checkpoint(&Checkpoint {
                                            module: CHECKPOINT_MODULE.to_owned(),
                                            shard: shard_id.clone(),
                                            last_processed_at: Some(snapshot.read_time),
                                            cursor_token: Some(snapshot.resume.encode()),
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
        tracing::info!(?end, ?delay, "listen stream ended; reconnecting");
        futures::select! {
            _ = shutdown.as_mut() => return Ok(report),
            _ = tokio::time::sleep(delay).fuse() => {}
        }
        delay = (delay * 2).min(config.max_retry_delay);
    }
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
