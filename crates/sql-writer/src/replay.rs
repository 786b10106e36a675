//! Dead-letter replay: publish dead-lettered messages again, unchanged, and
//! take them off the dead-letter queue.
//!
//! A replay keeps the event (and so its id): the broker gets a new message id
//! (`{original}.replay.{n}.{handle}`: the handle is the dead-letter entry's
//! sequence number, so two replays of the same event within the broker's
//! duplicate-detection window — dead-lettered, replayed, dead-lettered again —
//! never collide) so its duplicate detection does not drop it, and the
//! partition key it was published with (the Service Bus session), while
//! the SQL ledger still deduplicates by event id. Each replay bumps the SQL
//! row's replay count and history. Order per message: publish, record, remove —
//! a crash in between replays twice at worst, which the ledger absorbs.

use chrono::{DateTime, Utc};
use mirror_bus::{BusError, EventBus, OutboundMessage};
use mirror_schema::{decode_wire, ClaimedAttributes};
use mirror_store::{MirrorStore, StoreError};

use crate::writer::dead_letter_key;

/// Longest broker message id (Service Bus `MessageId`).
const MAX_MESSAGE_ID: usize = 128;

/// The message id of replay `n` of the dead letter at `handle`, first
/// published as `original`: unique per dead-letter entry (see the module
/// docs), clipped to [`MAX_MESSAGE_ID`] by shortening `original`.
pub fn replay_message_id(original: &str, n: u32, handle: &str) -> String {
    let suffix = format!(".replay.{n}.{handle}");
    let keep = MAX_MESSAGE_ID.saturating_sub(suffix.len());
    let mut head = String::new();
    for c in original.chars() {
        if head.len() + c.len_utf8() > keep {
            break;
        }
        head.push(c);
    }
    format!("{head}{suffix}")
}

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
        let ClaimedAttributes {
            event_type,
            subject,
            ..
        } = ClaimedAttributes::of(&d.message);
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
                message_id: replay_message_id(&original, replay, &d.handle),
                partition_key: d.partition_key.clone().or_else(|| {
                    decode_wire(&d.message)
                        .ok()
                        .map(|e| e.partition_key().to_owned())
                }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_ids_are_unique_per_dead_letter_entry_and_fit() {
        assert_eq!(replay_message_id("e1", 1, "17"), "e1.replay.1.17");
        assert_ne!(
            replay_message_id("e1", 1, "17"),
            replay_message_id("e1", 1, "42")
        );
        let id = replay_message_id(&"é".repeat(100), 3, "9223372036854775807");
        assert!(id.len() <= MAX_MESSAGE_ID, "{}", id.len());
        assert!(id.ends_with(".replay.3.9223372036854775807"));
    }
}
