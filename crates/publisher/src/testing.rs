//! In-memory fakes of the bus and the store, for this crate's tests and for
//! integration tests that only need to observe what the publisher did.
//!
//! [`MemoryBus`] keeps every published message and reports a re-published
//! message id as [`PublishOutcome::Duplicate`], like the brokers' duplicate
//! windows; it can be told to fail. [`MemoryStore`] keeps checkpoints and dead
//! letters; its apply methods are not used by the publisher and do nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mirror_bus::{
    Backlog, BusError, DeadLetter, DeadLettered, Delivery, EventBus, OutboundMessage,
    PublishOutcome, Receiver,
};
use mirror_schema::{MirrorEvent, WireMessage};
use mirror_store::{
    Checkpoint, CheckpointStore, DeadLetterRecord, DeadLetterStore, InspectStore, MirrorState,
    StoreError, StoredDeadLetter,
};

/// A bus that records what is published.
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Mutex<Vec<OutboundMessage>>>,
    fail_next: Arc<AtomicU32>,
}

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }
    /// Every message stored, in publish order (duplicates not repeated).
    pub fn published(&self) -> Vec<OutboundMessage> {
        self.inner.lock().unwrap().clone()
    }
    /// The events published, decoded.
    pub fn events(&self) -> Vec<MirrorEvent> {
        self.published()
            .iter()
            .map(|m| {
                mirror_schema::decode_wire(&m.message)
                    .expect("the publisher only publishes valid events")
            })
            .collect()
    }
    /// Make the next `n` publishes fail with a transient error.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
}

impl EventBus for MemoryBus {
    type Receiver = NoReceiver;

    async fn ensure_topology(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn publish(&self, message: &OutboundMessage) -> Result<PublishOutcome, BusError> {
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(BusError::op("publish", "injected failure"));
        }
        let mut all = self.inner.lock().unwrap();
        if all.iter().any(|m| m.message_id == message.message_id) {
            return Ok(PublishOutcome::Duplicate);
        }
        all.push(message.clone());
        Ok(PublishOutcome::Published)
    }

    async fn subscribe(&self, _subscription: &str) -> Result<NoReceiver, BusError> {
        Err(BusError::Config(
            "the memory bus has no subscriptions".into(),
        ))
    }

    async fn list_dead_letters(
        &self,
        _subscription: &str,
        _limit: usize,
    ) -> Result<Vec<DeadLettered>, BusError> {
        Ok(Vec::new())
    }

    async fn remove_dead_letter(&self, _subscription: &str, _handle: &str) -> Result<(), BusError> {
        Ok(())
    }
}

/// The receiver type of [`MemoryBus`]; never constructed.
#[derive(Debug)]
pub enum NoReceiver {}

impl Receiver for NoReceiver {
    type Delivery = NoDelivery;
    async fn receive(&mut self, _max: usize, _wait: Duration) -> Result<Vec<NoDelivery>, BusError> {
        match *self {}
    }
    async fn backlog(&mut self) -> Result<Option<Backlog>, BusError> {
        match *self {}
    }
}

/// The delivery type of [`MemoryBus`]; never constructed.
#[derive(Debug)]
pub enum NoDelivery {}

impl Delivery for NoDelivery {
    fn message(&self) -> &WireMessage {
        match *self {}
    }
    fn message_id(&self) -> Option<&str> {
        match *self {}
    }
    fn delivery_count(&self) -> u32 {
        match *self {}
    }
    async fn keep_alive(&self) -> Result<(), BusError> {
        match *self {}
    }
    async fn complete(self) -> Result<(), BusError> {
        match self {}
    }
    async fn retry(self, _delay: Duration) -> Result<(), BusError> {
        match self {}
    }
    async fn dead_letter(self, _why: &DeadLetter) -> Result<(), BusError> {
        match self {}
    }
}

/// A store that keeps checkpoints and dead letters.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    checkpoints: Arc<Mutex<HashMap<(String, String), Checkpoint>>>,
    dead_letters: Arc<Mutex<Vec<DeadLetterRecord>>>,
    saves: Arc<AtomicU32>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
    pub fn checkpoint(&self, module: &str, shard: &str) -> Option<Checkpoint> {
        self.checkpoints
            .lock()
            .unwrap()
            .get(&(module.to_owned(), shard.to_owned()))
            .cloned()
    }
    pub fn dead_letters(&self) -> Vec<DeadLetterRecord> {
        self.dead_letters.lock().unwrap().clone()
    }
    /// How many checkpoint saves happened.
    pub fn saves(&self) -> u32 {
        self.saves.load(Ordering::SeqCst)
    }
}

impl DeadLetterStore for MemoryStore {
    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<(), StoreError> {
        let mut all = self.dead_letters.lock().unwrap();
        all.retain(|r| r.key != record.key);
        all.push(record.clone());
        Ok(())
    }

    async fn list_dead_letters(&self, _limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        Ok(Vec::new())
    }

    async fn record_replay(&self, _key: &str, _at: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(())
    }
}

impl CheckpointStore for MemoryStore {
    async fn load_checkpoint(
        &self,
        module: &str,
        shard: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.checkpoint(module, shard))
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.checkpoints.lock().unwrap().insert(
            (checkpoint.module.clone(), checkpoint.shard.clone()),
            checkpoint.clone(),
        );
        Ok(())
    }
}

/// An in-memory [`crate::backfill::DocumentPager`] over a fixed set of
/// documents, billing like Firestore (one read per document, one per empty page).
#[derive(Debug, Clone, Default)]
pub struct MemoryPager {
    docs: Arc<Mutex<Vec<crate::value::Document>>>,
    /// Every request served, for assertions.
    pub requests: Arc<Mutex<Vec<crate::backfill::PageRequest>>>,
    fail_after: Arc<Mutex<Option<usize>>>,
}

impl MemoryPager {
    pub fn new(docs: Vec<crate::value::Document>) -> MemoryPager {
        MemoryPager {
            docs: Arc::new(Mutex::new(docs)),
            ..MemoryPager::default()
        }
    }

    /// Fail every page request after the first `n`.
    pub fn fail_after(&self, n: usize) {
        *self.fail_after.lock().unwrap() = Some(n);
    }

    fn in_group(group: crate::backfill::Group, d: &crate::value::Document) -> bool {
        use crate::backfill::Group;
        let segs: Vec<&str> = d.path.split('/').collect();
        let collection = segs.len().checked_sub(2).map(|i| segs[i]);
        match group {
            Group::Conversations => segs.len() == 2 && segs[0] == "conversations",
            _ => collection == Some(group.collection_id()),
        }
    }

    /// Like Firestore: a group with an order field returns only documents
    /// that have it (as a timestamp), in `(field, __name__)` order; the
    /// others every document in `__name__` order.
    fn matching(
        &self,
        group: crate::backfill::Group,
        field: Option<&'static str>,
        since: Option<DateTime<Utc>>,
        after: Option<&crate::backfill::Cursor>,
    ) -> Vec<(crate::backfill::Cursor, crate::value::Document)> {
        use crate::backfill::Cursor;
        use crate::value::Value;
        let mut out: Vec<(Cursor, crate::value::Document)> = self
            .docs
            .lock()
            .unwrap()
            .iter()
            .filter(|d| Self::in_group(group, d))
            .filter_map(|d| {
                let updated_at = match field {
                    None => None,
                    Some(f) => match d.fields.get(f) {
                        Some(Value::Timestamp(t)) => Some(*t),
                        _ => return None,
                    },
                };
                Some((
                    Cursor {
                        updated_at,
                        path: d.path.clone(),
                    },
                    d.clone(),
                ))
            })
            .filter(|(c, _)| field.is_none() || since.is_none_or(|s| c.updated_at >= Some(s)))
            .filter(|(c, _)| {
                after.is_none_or(|a| {
                    (&c.updated_at, segments(&c.path)) > (&a.updated_at, segments(&a.path))
                })
            })
            .collect();
        out.sort_by(|(a, _), (b, _)| {
            (&a.updated_at, segments(&a.path)).cmp(&(&b.updated_at, segments(&b.path)))
        });
        out
    }
}

/// Firestore orders `__name__` segment by segment.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').collect()
}

impl crate::backfill::DocumentPager for MemoryPager {
    async fn page(
        &self,
        request: crate::backfill::PageRequest,
    ) -> Result<crate::backfill::Page, crate::backfill::PagerError> {
        {
            let mut reqs = self.requests.lock().unwrap();
            if let Some(n) = *self.fail_after.lock().unwrap() {
                if reqs.len() >= n {
                    return Err(crate::backfill::PagerError {
                        group: request.group,
                        message: "injected failure".into(),
                    });
                }
            }
            reqs.push(request.clone());
        }
        let rows: Vec<_> = self
            .matching(
                request.group,
                request.field,
                request.since,
                request.after.as_ref(),
            )
            .into_iter()
            .take(request.limit as usize)
            .collect();
        let next = rows.last().map(|(c, _)| c.clone());
        let docs: Vec<_> = rows.into_iter().map(|(_, d)| d).collect();
        Ok(crate::backfill::Page {
            reads: (docs.len() as u64).max(1),
            docs,
            next,
        })
    }

    async fn count(
        &self,
        group: crate::backfill::Group,
        field: Option<&'static str>,
        since: Option<DateTime<Utc>>,
        after: Option<crate::backfill::Cursor>,
    ) -> Result<crate::backfill::Count, crate::backfill::PagerError> {
        let n = self.matching(group, field, since, after.as_ref()).len() as u64;
        Ok(crate::backfill::Count {
            docs: n,
            reads: n.div_ceil(1000).max(1),
        })
    }

    async fn count_all(
        &self,
        group: crate::backfill::Group,
    ) -> Result<crate::backfill::Count, crate::backfill::PagerError> {
        let n = self
            .docs
            .lock()
            .unwrap()
            .iter()
            .filter(|d| Self::in_group(group, d))
            .count() as u64;
        Ok(crate::backfill::Count {
            docs: n,
            reads: n.div_ceil(1000).max(1),
        })
    }
}

/// Holds no mirror rows: a restart finds nothing published before.
impl InspectStore for MemoryStore {
    async fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(Vec::new())
    }

    async fn snapshot(&self) -> Result<MirrorState, StoreError> {
        Ok(MirrorState::default())
    }
}
