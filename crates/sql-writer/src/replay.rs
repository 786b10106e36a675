//! Dead-letter replay: publish dead-lettered messages again, unchanged, and
//! take them off the dead-letter queue.
//!
//! A replay keeps the event (and so its id): the broker gets a new message id
//! (`{original}.replay.{n}`) so its duplicate detection does not drop it, while
//! the SQL ledger still deduplicates by event id. Each replay bumps the SQL
//! row's replay count and history. Order per message: publish, record, remove —
//! a crash in between replays twice at worst, which the ledger absorbs.

use chrono::{DateTime, Utc};
use mirror_bus::{BusError, EventBus, OutboundMessage};
use mirror_store::{MirrorStore, StoreError};

use crate::writer::{dead_letter_key, peek_attributes};

/// Which dead letters to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only this `DeadLetterReason` (e.g. `retries_exhausted`).
    pub reason: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only messages dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Look at no more than this many dead letters.
    pub limit: usize,
}

/// One replayed (or, in a dry run, selected) message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Replayed {
    pub handle: String,
    /// The dead-letter key: the event id, or `sha256:…` of an undecodable body.
    pub key: String,
    pub event_type: Option<String>,
    pub subject: Option<String>,
    pub reason: String,
    /// Which replay of this message this is (1 = first).
    pub replay: u32,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// Replay the dead letters of `subscription` that match `filter`; with
/// `dry_run`, only report what would be replayed.
pub async fn replay<B: EventBus, S: MirrorStore>(
    bus: &B,
    store: &S,
    subscription: &str,
    filter: &ReplayFilter,
    dry_run: bool,
) -> Result<Vec<Replayed>, ReplayError> {
    let rows = bus.list_dead_letters(subscription, filter.limit).await?;
    let counts: std::collections::HashMap<String, u32> = store
        .list_dead_letters(100_000)
        .await?
        .into_iter()
        .map(|r| (r.record.key, r.replay_count))
        .collect();
    let mut out = Vec::new();
    for d in rows {
        let (_, event_type, subject) = peek_attributes(&d.message);
        let reason_differs = filter.reason.as_deref().is_some_and(|r| r != d.reason);
        let type_differs = filter
            .event_type
            .as_deref()
            .is_some_and(|t| Some(t) != event_type.as_deref());
        let too_old =
            matches!((filter.since, d.dead_lettered_at), (Some(since), Some(at)) if at < since);
        if reason_differs || type_differs || too_old {
            continue;
        }
        let key = dead_letter_key(&d.message);
        let replay = counts.get(&key).copied().unwrap_or(0) + 1;
        if !dry_run {
            let original = d.original_message_id.clone().unwrap_or_else(|| key.clone());
            bus.publish(&OutboundMessage {
                message_id: format!("{original}.replay.{replay}"),
                partition_key: None,
                message: d.message.clone(),
            })
            .await?;
            if let Err(e) = store.record_replay(&key, Utc::now()).await {
                tracing::warn!(key, error = %e, "replayed, but could not record the replay in SQL");
            }
            bus.remove_dead_letter(subscription, &d.handle).await?;
        }
        out.push(Replayed {
            handle: d.handle,
            key,
            event_type,
            subject,
            reason: d.reason,
            replay,
        });
    }
    Ok(out)
}
