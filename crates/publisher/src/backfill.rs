//! Backfill: page every mirrored collection (group) with cursors — never
//! offsets — and publish the same deterministic events as the live path, so
//! overlapping with it is harmless.
//!
//! - Order. Firestore leaves documents *without* the ordered field out of an
//!   ordered query, and the contract gives `updatedAt` only to conversations:
//!   `conversations` is paged in `(updatedAt, __name__)` order, the groups
//!   without such a field (`messages`, `targets` = blocks and follows) in
//!   `__name__` order, which every document has ([`Group::order_field`]).
//! - `--since T`: for `conversations`, only documents with `updatedAt >= T`;
//!   for the `__name__`-ordered groups it cannot filter (there is no field to
//!   filter on): they are read whole, and the report says so
//!   ([`GroupReport::since_ignored`]).
//! - A filter that matches nothing while the group is not empty is an error
//!   ([`BackfillError::FilterMatchesNothing`]), not a successful run of 0
//!   documents: without `--since` the only filter is the order field's
//!   presence, so 0 means the documents lack it.
//! - `read_time` pins every page (and count) to one snapshot of the database
//!   (`RunQuery.read_time`): a walk sees each document once, in one version.
//!   Firestore serves reads up to 1 hour old (7 days at whole minutes with
//!   point-in-time recovery); a longer walk must not pin.
//! - A read budget stops the run cleanly (after a checkpoint) once spent.
//!   Firestore bills one read per document returned and one per query that
//!   returns none.
//! - After every page the cursor is saved as checkpoint
//!   `(module = "backfill-<group>", shard)`, so a restart continues after the
//!   last published page; a finished group is marked done and skipped.
//! - `--dry-run` asks the pager for aggregation counts instead of reading:
//!   it reports how many documents and reads a real run would take, publishes
//!   nothing and saves no checkpoint.
//! - Deletions cannot be backfilled (the documents are gone); the live path
//!   and the drift check cover them.

use crate::PublisherStore;
use std::future::Future;
use std::pin::pin;

use futures::FutureExt;
use mirror_bus::EventBus;
use mirror_store::{Checkpoint, StoreError};
use serde::{Deserialize, Serialize};

use crate::mapping::SourceInfo;
use crate::sink::{Shard, Sink, SinkError, Tally};
use crate::value::{Document, Timestamp};

/// A collection (group) the backfill pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// The top-level `conversations` collection.
    Conversations,
    /// Collection group `messages` (mirrored under `conversations/{id}`).
    Messages,
    /// Collection group `targets` (mirrored under `follows/{uid}` and `blocks/{uid}`).
    Targets,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Conversations, Group::Messages, Group::Targets];

    /// The collection id.
    pub fn collection_id(self) -> &'static str {
        match self {
            Group::Conversations => "conversations",
            Group::Messages => "messages",
            Group::Targets => "targets",
        }
    }

    /// Whether it is a collection group query (all descendants) or the top-level collection.
    pub fn all_descendants(self) -> bool {
        !matches!(self, Group::Conversations)
    }

    /// The checkpoint module name.
    pub fn module(self) -> String {
        format!("backfill-{}", self.collection_id())
    }

    pub fn parse(s: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.collection_id() == s)
    }
}

/// The field `conversations` is ordered and filtered by.
pub const ORDER_FIELD: &str = "updatedAt";

impl Group {
    /// The field the group is ordered and `--since`-filtered by; `None`:
    /// ordered by `__name__` only and read whole (its documents have no
    /// update-time field in the contract).
    pub fn order_field(self) -> Option<&'static str> {
        match self {
            Group::Conversations => Some(ORDER_FIELD),
            Group::Messages | Group::Targets => None,
        }
    }

    /// The time fields a recovery walks (one walk each, `field >= since`):
    /// every change of the group's documents sets one of them. Empty: no
    /// field bounds the group's changes (a follow's `state` change sets no
    /// time, a block's revocation only `revokedAt` on some), so a recovery
    /// reads it whole by `__name__`.
    pub fn recovery_fields(self) -> &'static [&'static str] {
        match self {
            Group::Conversations => &[ORDER_FIELD],
            Group::Messages => &["createdAt", "editedAt", "deletedAt"],
            Group::Targets => &[],
        }
    }
}

/// A position in the group's order: the last document of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The order field's value (`None` for `__name__`-ordered groups).
    #[serde(rename = "updatedAt", default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    /// Document path relative to `documents/`.
    pub path: String,
}

/// One page request.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    pub group: Group,
    /// The field to order and `since`-filter by (`None`: `__name__` only, no filter).
    pub field: Option<&'static str>,
    /// Ignored by groups without an [`Group::order_field`].
    pub since: Option<Timestamp>,
    /// Read at this time (one snapshot for the whole walk), or now.
    pub read_time: Option<Timestamp>,
    /// Start strictly after this document.
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// One page of documents in `(updatedAt, __name__)` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub docs: Vec<Document>,
    /// The cursor after the last document (`None` when the page is empty).
    pub next: Option<Cursor>,
    /// Billed reads for this page.
    pub reads: u64,
}

/// An aggregation count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub docs: u64,
    /// Billed reads for the count itself.
    pub reads: u64,
}

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {group:?}: {message}")]
pub struct PagerError {
    pub group: Group,
    pub message: String,
}

/// The port the backfill reads through: ordered, cursor-paged reads of a
/// collection group. Implementations must return documents in ascending
/// `(field, __name__)` order (`__name__` alone without a field), with a field
/// only those that have it as a timestamp `>= since`, and only those strictly
/// after `after`; a page shorter than `limit` means the end.
pub trait DocumentPager: Send + Sync {
    fn page(&self, request: PageRequest) -> impl Future<Output = Result<Page, PagerError>> + Send;
    /// How many documents a page walk from `after` would return.
    fn count(
        &self,
        group: Group,
        field: Option<&'static str>,
        since: Option<Timestamp>,
        after: Option<Cursor>,
    ) -> impl Future<Output = Result<Count, PagerError>> + Send;
    /// How many documents the group holds, with no filter and no order.
    fn count_all(&self, group: Group) -> impl Future<Output = Result<Count, PagerError>> + Send;
}

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub groups: Vec<Group>,
    pub since: Option<Timestamp>,
    /// Stop after this many billed reads (`None`: no limit).
    pub budget_reads: Option<u64>,
    pub dry_run: bool,
    pub page_size: u32,
    pub shard: Shard,
    pub source: SourceInfo,
    /// Ignore saved checkpoints and start from the beginning.
    pub fresh: bool,
    /// Only documents of these families (see [`Module`]); `None`: all.
    pub families: Option<Vec<mirror_schema::EventFamily>>,
    /// Pin every page to this read time (see the module docs).
    pub read_time: Option<Timestamp>,
    /// A recovery after an outage longer than a resume token lives: walk each
    /// group's [`Group::recovery_fields`] from `since` (the checkpoint minus
    /// an overlap) instead of its order field; checkpoints `recover-<group>-<field>`.
    pub recovery: bool,
}

/// The plan's modules: what `mirrorctl backfill --module` selects.
///
/// Firestore collection groups are named by collection id, so the `targets`
/// group holds both `blocks/*/targets/*` (dm) and `follows/*/targets/*`
/// (follow): either module reads the whole group and publishes only its own
/// family (the other documents count as out of scope, and cost reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// Conversations, messages and blocks.
    Dm,
    /// Follow edges.
    Follow,
}

impl Module {
    pub fn parse(s: &str) -> Option<Module> {
        match s {
            "dm" => Some(Module::Dm),
            "follow" => Some(Module::Follow),
            _ => None,
        }
    }

    /// The collection groups to page.
    pub fn groups(self) -> Vec<Group> {
        match self {
            Module::Dm => vec![Group::Conversations, Group::Messages, Group::Targets],
            Module::Follow => vec![Group::Targets],
        }
    }

    /// The event families to publish.
    pub fn families(self) -> Vec<mirror_schema::EventFamily> {
        use mirror_schema::EventFamily::*;
        match self {
            Module::Dm => vec![Conversation, Message, Block],
            Module::Follow => vec![FollowEdge],
        }
    }
}

/// Progress after a page (or a dry-run count).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub group: Group,
    pub docs: u64,
    pub reads: u64,
    /// For a dry run, or when known: documents in the group to go.
    pub total: Option<u64>,
    pub cursor: Option<Cursor>,
}

/// How one group went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupReport {
    /// Documents read (or, in a dry run, counted).
    pub docs: u64,
    /// Reads billed during this run.
    pub reads: u64,
    /// Dry run: reads a real run would cost.
    pub estimated_reads: Option<u64>,
    pub tally: Tally,
    /// The group was finished by an earlier run.
    pub already_done: bool,
    pub done: bool,
    /// `--since` was given but the group has no field to filter by: read whole.
    pub since_ignored: bool,
    /// The field this walk ordered and filtered by (`None`: `__name__`).
    pub field: Option<&'static str>,
    /// Dry run: the documents the group holds with no filter (and the reads
    /// that count cost are in `reads`).
    pub unfiltered: Option<u64>,
}

/// The outcome of [`backfill`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub groups: Vec<(Group, GroupReport)>,
    pub reads: u64,
    pub budget_exhausted: bool,
    /// Stopped by the shutdown signal (after the last checkpoint).
    pub interrupted: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    #[error(transparent)]
    Pager(#[from] PagerError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("checkpoint of {module}: {source}")]
    Checkpoint {
        module: String,
        #[source]
        source: StoreError,
    },
    #[error("invalid options: {0}")]
    Options(String),
    #[error(
        "{group:?}: the backfill query matches no document but the group holds {unfiltered}: \
         its documents lack the `{field}` field it orders by; nothing was published"
    )]
    FilterMatchesNothing {
        group: Group,
        field: &'static str,
        unfiltered: u64,
    },
}

/// The saved cursor of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    v: u32,
    #[serde(default)]
    since: Option<Timestamp>,
    #[serde(default)]
    after: Option<Cursor>,
    done: bool,
}

/// Run a backfill (see the module docs). `shutdown` is checked between pages;
/// when it resolves the run stops after the current page's checkpoint.
pub async fn backfill<S: PublisherStore, B: EventBus, P: DocumentPager>(
    opts: &BackfillOptions,
    pager: &P,
    bus: &B,
    store: &S,
    mut progress: impl FnMut(&Progress),
    shutdown: impl Future<Output = ()>,
) -> Result<BackfillReport, BackfillError> {
    if opts.page_size == 0 {
        return Err(BackfillError::Options(
            "page size must be at least 1".into(),
        ));
    }
    let mut shutdown = pin!(shutdown.fuse());
    let mut sink = Sink::new(bus, store, &opts.source, opts.shard);
    sink.dry_run = opts.dry_run;
    sink.families = opts.families.clone();
    let shard = opts.shard.id();
    let mut report = BackfillReport::default();

    let walks: Vec<(Group, Option<&'static str>)> = opts
        .groups
        .iter()
        .flat_map(|&group| {
            if opts.recovery {
                let fields = group.recovery_fields();
                if fields.is_empty() {
                    vec![(group, None)]
                } else {
                    fields.iter().map(|f| (group, Some(*f))).collect()
                }
            } else {
                vec![(group, group.order_field())]
            }
        })
        .collect();
    'groups: for (group, field) in walks {
        let module = if opts.recovery {
            format!(
                "recover-{}-{}",
                group.collection_id(),
                field.unwrap_or("all")
            )
        } else {
            group.module()
        };
        let mut g = GroupReport {
            field,
            ..GroupReport::default()
        };
        let saved = if opts.fresh {
            None
        } else {
            store
                .load_checkpoint(&module, &shard)
                .await
                .map_err(|source| BackfillError::Checkpoint { module: module.clone(), source })?
                .and_then(|c| c.cursor_token)
                .and_then(|b| serde_json::from_slice::<Saved>(&b).ok())
                .filter(|s| {
                    let same = s.since == opts.since;
                    if !same {
                        tracing::info!(%module, "checkpoint was for another --since; starting over");
                    }
                    same
                })
        };
        if saved.as_ref().is_some_and(|s| s.done) {
            g.already_done = true;
            g.done = true;
            report.groups.push((group, g));
            continue;
        }
        let mut after = saved.and_then(|s| s.after);

        g.since_ignored = opts.since.is_some() && field.is_none();
        if opts.dry_run {
            let count = pager.count(group, field, opts.since, after.clone()).await?;
            g.docs = count.docs;
            g.reads = count.reads;
            // One read per document, and one for the last (short or empty) page.
            let page = u64::from(opts.page_size);
            g.estimated_reads = Some(count.docs + u64::from(count.docs % page == 0));
            report.reads += count.reads;
            if count.docs == 0 && after.is_none() {
                let all = pager.count_all(group).await?;
                g.unfiltered = Some(all.docs);
                g.reads += all.reads;
                report.reads += all.reads;
                check_filter(group, field, opts.since, 0, all.docs)?;
            }
            progress(&Progress {
                group,
                docs: count.docs,
                reads: count.reads,
                total: Some(count.docs),
                cursor: after,
            });
            report.groups.push((group, g));
            continue;
        }

        loop {
            if (&mut shutdown).now_or_never().is_some() {
                report.interrupted = true;
                report.groups.push((group, g));
                break 'groups;
            }
            let limit = match opts.budget_reads {
                Some(budget) => {
                    let left = budget.saturating_sub(report.reads);
                    if left == 0 {
                        report.budget_exhausted = true;
                        report.groups.push((group, g));
                        break 'groups;
                    }
                    u32::try_from(left).unwrap_or(u32::MAX).min(opts.page_size)
                }
                None => opts.page_size,
            };
            let page = pager
                .page(PageRequest {
                    group,
                    field,
                    since: opts.since,
                    read_time: opts.read_time,
                    after: after.clone(),
                    limit,
                })
                .await?;
            if page.docs.is_empty() && after.is_none() {
                // Before saving `done` over an empty walk: is the group empty?
                let all = pager.count_all(group).await?;
                g.reads += all.reads;
                report.reads += all.reads;
                check_filter(group, field, opts.since, 0, all.docs)?;
            }
            for doc in &page.docs {
                g.tally.add(sink.document(doc).await?);
            }
            g.docs += page.docs.len() as u64;
            g.reads += page.reads;
            report.reads += page.reads;
            let done = page.docs.len() < limit as usize;
            if page.next.is_some() {
                after = page.next.clone();
            }
            let saved = Saved {
                v: 1,
                since: opts.since,
                after: after.clone(),
                done,
            };
            store
                .save_checkpoint(&Checkpoint {
                    module: module.clone(),
                    shard: shard.clone(),
                    last_processed_at: after.as_ref().and_then(|c| c.updated_at),
                    cursor_token: Some(serde_json::to_vec(&saved).expect("plain data serializes")),
                })
                .await
                .map_err(|source| BackfillError::Checkpoint {
                    module: module.clone(),
                    source,
                })?;
            progress(&Progress {
                group,
                docs: g.docs,
                reads: report.reads,
                total: None,
                cursor: after.clone(),
            });
            if done {
                g.done = true;
                break;
            }
        }
        report.groups.push((group, g));
    }
    Ok(report)
}

/// A walk found nothing: an error when the group is not empty and only the
/// order field's presence filtered (no `--since`); with `--since`, an empty
/// result can be right (nothing changed), so it is only logged.
fn check_filter(
    group: Group,
    field: Option<&'static str>,
    since: Option<Timestamp>,
    filtered: u64,
    unfiltered: u64,
) -> Result<(), BackfillError> {
    let Some(field) = field else {
        return Ok(());
    };
    if filtered == 0 && unfiltered > 0 {
        if since.is_none() {
            return Err(BackfillError::FilterMatchesNothing {
                group,
                field,
                unfiltered,
            });
        }
        tracing::warn!(?group, unfiltered, "no document changed since --since");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
