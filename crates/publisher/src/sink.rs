//! Publishing documents and changes as contract events, shared by the live
//! path and the backfill so both publish exactly the same events.
//!
//! One place decides what happens to a document: not this shard's (skip),
//! outside the mirror (skip, counted), mappable (publish, awaiting the
//! broker's confirmation) or not (dead-letter to `realtime_mirror_dead_letter`
//! with the mapping error, never a crash and never a silent drop).

use crate::PublisherStore;
use std::time::Duration;

use chrono::Utc;
use mirror_bus::{BusError, BusErrorKind, EventBus, OutboundMessage, PublishOutcome};
use mirror_runtime::backoff::Backoff;
use mirror_store::{DeadLetterRecord, StoreError};
use sha2::{Digest, Sha256};

use crate::listen::{Change, UpsertOp};
use crate::mapping::{self, MappingError, SourceInfo};
use crate::value::{Document, Timestamp};

/// The `subscription` column of dead letters the publisher records.
pub const DEAD_LETTER_SUBSCRIPTION: &str = "publisher";

/// Publish attempts before a document's event is given up on (each waits
/// for the broker's confirmation).
pub const PUBLISH_ATTEMPTS: u32 = 5;

/// The waits between publish attempts.
const PUBLISH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// This instance's share of the documents: partition key hash mod `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const SINGLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "shard index {index} is not below shard count {count}"
            ));
        }
        Ok(Shard { index, count })
    }

    /// The checkpoint `shard` column: `{index}-of-{count}`.
    pub fn id(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// Whether this shard publishes documents with this partition key.
    pub fn owns_key(&self, key: &str) -> bool {
        self.count <= 1 || fnv1a(key.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether this shard publishes the document at `path`: its partition key
    /// (the contract's: conversation id, follower, blocking user) is the second
    /// path segment for every mirrored collection.
    pub fn owns_path(&self, path: &str) -> bool {
        self.owns_key(path.split('/').nth(1).unwrap_or(path))
    }
}

/// A contiguous range of partition keys (the second path segment):
/// `lo <= key < hi`, unbounded where `None`. The live path shards by ranges
/// rather than by hash, because a range is what a listen target can select
/// (`__name__` bounds), so each instance reads only its share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRange {
    pub lo: Option<String>,
    pub hi: Option<String>,
}

/// Default split alphabet: the characters of Firestore auto-ids and Firebase
/// Auth uids, in byte order (keys of other shapes need explicit split points).
const ID_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl KeyRange {
    /// Every key.
    pub const ALL: KeyRange = KeyRange { lo: None, hi: None };

    /// Shard `index` of `count` ranges split at `split_points` (`count - 1`
    /// ascending keys) or, without them, evenly over [`ID_ALPHABET`]'s first
    /// character. The ranges of one `count` cover every key exactly once.
    pub fn of_shard(shard: Shard, split_points: Option<&[String]>) -> Result<KeyRange, String> {
        let n = shard.count as usize;
        let points: Vec<String> = match split_points {
            Some(p) => {
                if p.len() + 1 != n {
                    return Err(format!(
                        "{} split points for {n} shards (need {})",
                        p.len(),
                        n - 1
                    ));
                }
                if p.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("split points must be strictly ascending".into());
                }
                p.to_vec()
            }
            None => {
                if n > ID_ALPHABET.len() {
                    return Err(format!(
                        "at most {} shards without explicit split points",
                        ID_ALPHABET.len()
                    ));
                }
                (1..n)
                    .map(|k| (ID_ALPHABET[k * ID_ALPHABET.len() / n] as char).to_string())
                    .collect()
            }
        };
        let i = shard.index as usize;
        Ok(KeyRange {
            lo: (i > 0).then(|| points[i - 1].clone()),
            hi: (i + 1 < n).then(|| points[i].clone()),
        })
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lo.as_deref().is_none_or(|lo| key >= lo)
            && self.hi.as_deref().is_none_or(|hi| key < hi)
    }

    /// Whether the document at `path` is in range (by its partition key).
    pub fn contains_path(&self, path: &str) -> bool {
        self.contains(path.split('/').nth(1).unwrap_or(path))
    }
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What became of one document or change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Published,
    /// The broker already had this id (published before; harmless).
    Duplicate,
    /// Another shard publishes it.
    NotOwned,
    /// Its path is not a mirrored collection.
    OutOfScope,
    DeadLettered,
    /// Dry run: it would have been published.
    WouldPublish,
}

/// A failure the caller cannot route around: the bus or the store is down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("publishing `{subject}`: {source}")]
    Bus {
        subject: String,
        #[source]
        source: BusError,
    },
    #[error("recording a dead letter for `{path}`: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
}

/// Counters by [`Disposition`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub published: u64,
    pub duplicates: u64,
    pub not_owned: u64,
    pub out_of_scope: u64,
    pub dead_lettered: u64,
    pub would_publish: u64,
}

impl Tally {
    pub fn add(&mut self, d: Disposition) {
        match d {
            Disposition::Published => self.published += 1,
            Disposition::Duplicate => self.duplicates += 1,
            Disposition::NotOwned => self.not_owned += 1,
            Disposition::OutOfScope => self.out_of_scope += 1,
            Disposition::DeadLettered => self.dead_lettered += 1,
            Disposition::WouldPublish => self.would_publish += 1,
        }
    }
}

/// Publishes documents and changes through a bus, dead-letters to a store.
#[derive(Debug, Clone)]
pub struct Sink<'a, B, S> {
    pub bus: &'a B,
    pub store: &'a S,
    pub source: &'a SourceInfo,
    pub shard: Shard,
    pub dry_run: bool,
    /// Publish attempts before giving up (default [`PUBLISH_ATTEMPTS`]).
    pub attempts: u32,
    /// Only these event families (a backfill `--module`); `None`: all.
    pub families: Option<Vec<mirror_schema::EventFamily>>,
    /// Own documents by key range instead of by hash (the live path's
    /// listen sharding: it publishes everything its range targets deliver).
    pub range: Option<KeyRange>,
}

impl<'a, B: EventBus, S: PublisherStore> Sink<'a, B, S> {
    pub fn new(bus: &'a B, store: &'a S, source: &'a SourceInfo, shard: Shard) -> Self {
        Sink {
            bus,
            store,
            source,
            shard,
            dry_run: false,
            attempts: PUBLISH_ATTEMPTS,
            families: None,
            range: None,
        }
    }

    /// A document version read by the backfill (or a trigger).
    pub async fn document(&self, doc: &Document) -> Result<Disposition, SinkError> {
        let op = UpsertOp::of(doc);
        let mapped = mapping::upsert_event(doc, op, self.source);
        self.handle(&doc.path, mapped, || mapping::document_json(doc))
            .await
    }

    /// A change emitted by the listen core.
    pub async fn change(&self, change: &Change) -> Result<Disposition, SinkError> {
        let mapped = mapping::change_event(change, self.source);
        self.handle(change.path(), mapped, || match change {
            Change::Upsert { doc, .. } => mapping::document_json(doc),
            Change::Delete { path, time, .. } => {
                serde_json::json!({"path": path, "deletedAt": time_text(time)})
            }
        })
        .await
    }

    async fn handle(
        &self,
        path: &str,
        mapped: Result<Option<mirror_schema::MirrorEvent>, MappingError>,
        body: impl FnOnce() -> serde_json::Value,
    ) -> Result<Disposition, SinkError> {
        match mapping::route(path) {
            None => return Ok(Disposition::OutOfScope),
            Some(f)
                if self
                    .families
                    .as_ref()
                    .is_some_and(|only| !only.contains(&f)) =>
            {
                return Ok(Disposition::OutOfScope)
            }
            Some(_) => {}
        }
        let owned = match &self.range {
            Some(r) => r.contains_path(path),
            None => self.shard.owns_path(path),
        };
        if !owned {
            return Ok(Disposition::NotOwned);
        }
        match mapped {
            Ok(None) => Ok(Disposition::OutOfScope),
            Ok(Some(event)) => {
                if self.dry_run {
                    return Ok(Disposition::WouldPublish);
                }
                self.publish(&event).await
            }
            Err(e) => {
                if self.dry_run {
                    return Ok(Disposition::DeadLettered);
                }
                self.dead_letter(path, &e, body()).await?;
                Ok(Disposition::DeadLettered)
            }
        }
    }

    async fn publish(&self, event: &mirror_schema::MirrorEvent) -> Result<Disposition, SinkError> {
        // Stamped once: retries of this publish keep the first attempt's time.
        let msg = OutboundMessage::from_event_published_at(event, chrono::Utc::now());
        let published = PUBLISH_BACKOFF
            .retry(
                self.attempts,
                || self.bus.publish(&msg),
                // A misconfigured bus fails every attempt alike.
                |e: &BusError| e.kind() != BusErrorKind::Config,
                |e, delay| tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, subject = %event.subject(), "publish failed; retrying"),
            )
            .await;
        match published {
            Ok(PublishOutcome::Published) => Ok(Disposition::Published),
            Ok(PublishOutcome::Duplicate) => Ok(Disposition::Duplicate),
            Err(source) => Err(SinkError::Bus {
                subject: event.subject().to_string(),
                source,
            }),
        }
    }

    async fn dead_letter(
        &self,
        path: &str,
        error: &MappingError,
        body: serde_json::Value,
    ) -> Result<(), SinkError> {
        let payload = body.to_string();
        let record = DeadLetterRecord {
            key: format!("sha256:{}", hex::encode(Sha256::digest(payload.as_bytes()))),
            event_id: None,
            event_type: None,
            subject: Some(path.to_owned()),
            payload,
            reason: error.code().to_owned(),
            error: error.to_string(),
            attempts: 1,
            failed_at: Utc::now(),
            subscription: DEAD_LETTER_SUBSCRIPTION.to_owned(),
        };
        tracing::warn!(path, reason = error.code(), error = %error, "document cannot be mirrored; dead-lettered");
        self.store
            .record_dead_letter(&record)
            .await
            .map_err(|source| SinkError::Store {
                path: path.to_owned(),
                source,
            })
    }
}

fn time_text(t: &Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_keys_stably_and_completely() {
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        for key in ["c1", "c2", "u-7", "ünïcode", ""] {
            assert_eq!(
                shards.iter().filter(|s| s.owns_key(key)).count(),
                1,
                "{key}"
            );
        }
        // Pinned: changing the hash would move every key between instances.
        assert_eq!(fnv1a(b"c1"), 0x08a2_7f07_b54a_6859);
        // A message follows its conversation.
        let s = shards
            .iter()
            .find(|s| s.owns_path("conversations/c9"))
            .unwrap();
        assert!(s.owns_path("conversations/c9/messages/m1"));
        assert!(Shard::new(2, 2).is_err());
        assert!(Shard::SINGLE.owns_key("anything"));
        assert_eq!(Shard::new(1, 3).unwrap().id(), "1-of-3");
    }

    #[test]
    fn key_ranges_cover_every_key_once_for_any_count() {
        let keys = [
            "", "-x", "0", "9zz", "A", "Zq", "_u", "a", "u_caio", "zzz", "é", "~",
        ];
        for n in [1u32, 2, 3, 7, 62] {
            let ranges: Vec<KeyRange> = (0..n)
                .map(|i| KeyRange::of_shard(Shard::new(i, n).unwrap(), None).unwrap())
                .collect();
            for k in keys {
                assert_eq!(
                    ranges.iter().filter(|r| r.contains(k)).count(),
                    1,
                    "{n} {k}"
                );
            }
        }
        assert!(KeyRange::of_shard(Shard::new(0, 63).unwrap(), None).is_err());
        let points = ["m".to_owned()];
        let r = KeyRange::of_shard(Shard::new(1, 2).unwrap(), Some(&points)).unwrap();
        assert!(r.contains_path("conversations/u_caio/messages/m1") && !r.contains("dm_x"));
        assert!(KeyRange::of_shard(Shard::new(0, 3).unwrap(), Some(&points)).is_err());
        assert_eq!(
            KeyRange::of_shard(Shard::SINGLE, None).unwrap(),
            KeyRange::ALL
        );
    }
}
