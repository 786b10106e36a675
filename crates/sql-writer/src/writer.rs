//! The writer: intakes (one receiver each) receive messages and decode each
//! once, then hand it to the lane of its entity ([`mirror_store::plan::lane`]);
//! each lane forms batches (by size and a short linger), applies a batch in one
//! transaction and settles its messages concurrently as
//! [`crate::policy::decide`] says.
//! Dead-letter records live in [`crate::dead_letters`], the database's
//! reachability in [`crate::health`].
//!
//! Why lanes: every event of one entity lock (a conversation with its
//! messages, a block, a follow edge) goes to one lane, so the lanes' concurrent
//! transactions take disjoint locks and never wait on each other. Batches that
//! each took a few hundred conversation locks used to serialize behind one
//! another (the raw SQL ran 28,000 events/s that way and 45,000 in lanes).
//!
//! Invariants:
//! - a message is completed only after the transaction holding its effect
//!   committed (or the store said it was a duplicate/stale, which is committed
//!   state too);
//! - a dead-lettered message has its `realtime_mirror_dead_letter` row written
//!   first; if the database is down and attempts remain, the message is released
//!   for a later attempt instead (it stays safe in the subscription); on the last
//!   attempt it goes to the bus's dead-letter queue and the row waits in memory
//!   until the database is back;
//! - the loop never sleeps while holding a message (but see the outage rule
//!   below): transient failures go back to the broker with a delay;
//! - when the database is unavailable (connection refused, restarting, failing
//!   over) the batch goes back to the broker and the intakes stop taking
//!   messages until a probe reaches the database again, so an outage costs a
//!   message one delivery attempt, not all of them (otherwise every valid event
//!   received during an outage longer than the retry budget would be
//!   dead-lettered with `retries_exhausted`); a database that hangs instead
//!   of failing counts as unavailable once a batch gets no answer within
//!   `apply_timeout`;
//! - on shutdown no new receive starts; what was received is applied (at most
//!   a batch in flight and one waiting per lane) or, past the deadline,
//!   released for redelivery. Nothing is released at once while receivers of
//!   this process may still take it back: each such round trip would cost a
//!   delivery attempt;
//! - a message waits in its lane for at most the batch ahead of it: a lane
//!   holds at most `batch_size` waiting messages, so an intake stops receiving
//!   while a lane is full (a hot entity slows intake rather than piling up
//!   unsettled messages), and [`WriterSettings::max_unsettled`] bounds what the
//!   writer holds;
//! - while the database is unavailable the intakes take nothing; each lane
//!   keeps what it was already handed (at most a batch and its queue), locks
//!   extended, and applies it once the database answers — handing it back
//!   would cost each message an attempt per outage. This is the one wait
//!   that holds messages, and it is bounded by the same amount.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use mirror_bus::{BusError, Delivery, EventBus, Receiver};
use mirror_schema::{decode_wire, DecodeError, MirrorEvent};
use mirror_store::{answer, plan, ApplyMode, ApplyOutcome, MetricSample, MirrorStore, StoreError};
use tokio::sync::{mpsc, watch};

pub use crate::dead_letters::{dead_letter_key, dead_letter_record, record_adapter_dead_letters};
use crate::dead_letters::{flush_dead_letters, PendingDeadLetters, LAST_WRITES_LIMIT};
use crate::defaults;
use crate::health::StoreHealth;
use crate::policy::{
    classify, dead_letter_row_failed, decide, store_unavailable, Class, Disposition, Failure,
    RetryPolicy, RowNotWritten,
};
use crate::telemetry;

/// Tuning of the worker loop.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub subscription: String,
    /// Most messages per batch (one receive plus what arrives while lingering)
    /// and per transaction.
    pub batch_size: usize,
    /// After a receive that did not fill the batch, how long to wait for more
    /// before applying it. Batches thus adapt to the load: under light load a
    /// message waits at most this long; under heavy load batches fill at once
    /// and nothing waits. Lingering stops early when a look finds nothing new.
    pub linger: Duration,
    /// How the store applies a batch (per-event or set-based).
    pub apply_mode: ApplyMode,
    /// Lanes: concurrent batches, each its own transaction, each entity in
    /// one lane.
    pub concurrency: usize,
    /// How long one receive waits for the first message.
    pub receive_wait: Duration,
    /// Exit when the subscription has nothing left (for tests and batch jobs).
    pub exit_when_idle: bool,
    pub retry: RetryPolicy,
    /// How often to extend the locks of messages being applied.
    pub keep_alive_every: Duration,
    /// After shutdown is requested, how long the batch in flight may take.
    pub shutdown_deadline: Duration,
    /// Longest wait for the database to answer one batch (or a probe). A
    /// database that hangs instead of failing (stopped, partitioned, a
    /// failover that leaves connections silently dead) would otherwise keep
    /// the batch, and its locks extended, for as long as TCP takes to notice.
    /// Past it the batch is released and intake pauses as for an outage.
    /// Keep it above the store's statement timeout.
    pub apply_timeout: Duration,
    /// How often to write counters to `realtime_mirror_metrics` (None: never).
    pub metrics_flush_every: Option<Duration>,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            subscription: defaults::SUBSCRIPTION.to_owned(),
            batch_size: defaults::BATCH_SIZE,
            linger: defaults::LINGER,
            apply_mode: defaults::APPLY_MODE,
            concurrency: defaults::CONCURRENCY,
            receive_wait: Duration::from_secs(1),
            exit_when_idle: false,
            retry: RetryPolicy::default(),
            keep_alive_every: Duration::from_secs(10),
            shutdown_deadline: defaults::SHUTDOWN_DEADLINE,
            apply_timeout: defaults::APPLY_TIMEOUT,
            metrics_flush_every: Some(Duration::from_secs(30)),
        }
    }
}

impl WriterSettings {
    /// The most messages the writer holds delivered but unsettled: per lane,
    /// a batch being applied, a batch waiting in its queue, and an intake's
    /// receive waiting for a full lane.
    pub fn max_unsettled(&self) -> usize {
        self.batch_size.max(1) * 3 * self.concurrency.max(1)
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    pub applied: u64,
    pub duplicate: u64,
    pub stale: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub batches: u64,
}

impl RunReport {
    fn add(&mut self, other: &RunReport) {
        self.applied += other.applied;
        self.duplicate += other.duplicate;
        self.stale += other.stale;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.batches += other.batches;
    }
}

/// Why the writer stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriterError {
    #[error("cannot subscribe to `{subscription}`: {source}")]
    Subscribe {
        subscription: String,
        #[source]
        source: mirror_bus::BusError,
    },
    #[error("fatal: {0}")]
    Fatal(String),
    #[error("worker task failed: {0}")]
    Join(String),
}

/// What the writer needs: a bus and a store.
pub struct Deps<B, S> {
    pub bus: Arc<B>,
    pub store: Arc<S>,
}

impl<B, S> Clone for Deps<B, S> {
    fn clone(&self) -> Self {
        Deps {
            bus: self.bus.clone(),
            store: self.store.clone(),
        }
    }
}

struct Shared {
    report: Mutex<RunReport>,
    pending_dead_letters: PendingDeadLetters,
    /// Down when a batch found the database unavailable; workers take no
    /// messages until a probe succeeds.
    health: StoreHealth,
}

/// How long a lane's linger waits for the next message before it applies
/// what it has.
const LOOK: Duration = Duration::from_millis(2);

/// One settlement of one message with the bus, run concurrently with the
/// batch's others: `(message id, result)`.
type Settle<'a> = Pin<Box<dyn Future<Output = (Option<String>, Result<(), BusError>)> + Send + 'a>>;

/// Run the writer until `shutdown` resolves (or, with `exit_when_idle`, until
/// the subscription is drained).
pub async fn run<B: EventBus, S: MirrorStore>(
    deps: Deps<B, S>,
    settings: WriterSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunReport, WriterError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let deadline = settings.shutdown_deadline;
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested: finishing the messages in flight");
            let _ = stop_tx.send(true);
            tokio::time::sleep(deadline).await;
            let _ = abort_tx.send(true);
        });
    }
    let shared = Arc::new(Shared {
        report: Mutex::new(RunReport::default()),
        pending_dead_letters: Mutex::new(Vec::new()),
        health: StoreHealth::default(),
    });

    crate::lock_table::check(
        &*deps.store,
        settings.concurrency,
        settings.batch_size,
        settings.apply_timeout,
    )
    .await;
    // As many receivers as lanes (on Service Bus with sessions, each holds
    // one session at a time).
    let mut receivers = Vec::new();
    for _ in 0..settings.concurrency.max(1) {
        receivers.push(
            deps.bus
                .subscribe(&settings.subscription)
                .await
                .map_err(|source| WriterError::Subscribe {
                    subscription: settings.subscription.clone(),
                    source,
                })?,
        );
    }
    let mut lanes = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..settings.concurrency.max(1) {
        let (tx, rx) = mpsc::channel(settings.batch_size.max(1));
        lanes.push(tx);
        let worker = Worker {
            n,
            deps: deps.clone(),
            settings: settings.clone(),
            stop: stop_rx.clone(),
            stop_tx: stop_tx.clone(),
            abort: abort_rx.clone(),
            shared: shared.clone(),
        };
        tasks.push(tokio::spawn(worker.run(rx)));
    }
    for (n, receiver) in receivers.into_iter().enumerate() {
        let intake = Intake {
            n,
            deps: deps.clone(),
            settings: settings.clone(),
            stop: stop_rx.clone(),
            shared: shared.clone(),
            lanes: lanes.clone(),
        };
        tasks.push(tokio::spawn(intake.run(receiver)));
    }
    // The lanes stop once every intake has dropped its senders.
    drop(lanes);

    let mut result = Ok(());
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = stop_tx.send(true);
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => {
                let _ = stop_tx.send(true);
                result = Err(WriterError::Join(e.to_string()));
            }
        }
    }
    // Last writes: bounded, so a hung database cannot hold up the exit.
    let last_writes = settings.apply_timeout.min(LAST_WRITES_LIMIT);
    flush_dead_letters(&*deps.store, &shared.pending_dead_letters, last_writes).await;
    let report = *shared.report.lock().expect("report lock");
    if let Some(_every) = settings.metrics_flush_every {
        let _ = answer(
            last_writes,
            deps.store.record_metrics(&report_samples(&report)),
        )
        .await;
    }
    let pending = shared
        .pending_dead_letters
        .lock()
        .expect("pending lock")
        .len();
    if pending > 0 {
        tracing::error!(
            pending,
            "dead-letter rows could not be written to SQL; they are in the bus's dead-letter queue"
        );
    }
    result.map(|()| report)
}

fn report_samples(r: &RunReport) -> Vec<MetricSample> {
    let now = Utc::now();
    [
        ("events_applied", r.applied),
        ("events_duplicate", r.duplicate),
        ("events_stale", r.stale),
        ("events_retried", r.retried),
        ("events_dead_lettered", r.dead_lettered),
        ("batches", r.batches),
    ]
    .into_iter()
    .map(|(metric, v)| MetricSample {
        module: "sql-writer".into(),
        metric: metric.into(),
        value: v as f64,
        recorded_at: now,
    })
    .collect()
}

struct Worker<B, S> {
    n: usize,
    deps: Deps<B, S>,
    settings: WriterSettings,
    stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
    abort: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// One received message, its event decoded once (or why it could not be).
struct Item<D> {
    delivery: D,
    event: Result<MirrorEvent, DecodeError>,
}

/// Receives for every lane: decodes each message once and hands it to its
/// entity's lane; also the writer's periodic duties (dead-letter rows that
/// waited for the database, metrics), which must run even when lanes idle.
struct Intake<B: EventBus, S> {
    n: usize,
    deps: Deps<B, S>,
    settings: WriterSettings,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    lanes: Vec<mpsc::Sender<Item<<B::Receiver as Receiver>::Delivery>>>,
}

impl<B: EventBus, S: MirrorStore> Intake<B, S> {
    /// Until shutdown, a fatal bus error, or (with `exit_when_idle`) a drained
    /// subscription. Returning drops the lanes' senders: each lane then
    /// finishes what it holds and stops.
    async fn run(mut self, mut receiver: B::Receiver) -> Result<(), WriterError> {
        let mut bus_failures = 0u32;
        let mut last_flush = Instant::now();
        let mut undecodable = 0usize;
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if self.shared.health.is_down() {
                self.shared
                    .health
                    .wait_until_reachable(
                        &*self.deps.store,
                        &self.settings.retry,
                        self.settings.apply_timeout,
                        &mut self.stop,
                    )
                    .await;
                continue;
            }
            // Dead-letter rows that waited for the database, written before
            // taking messages (none is held while this waits) and on every
            // turn, idle ones included (a crash would lose them from SQL).
            flush_dead_letters(
                &*self.deps.store,
                &self.shared.pending_dead_letters,
                self.settings.apply_timeout,
            )
            .await;
            self.record_metrics_when_due(&mut last_flush).await;
            // Not cancelled on shutdown: a receive dropped mid-way can leave
            // messages delivered to nobody until their lock expires. It is
            // bounded by `receive_wait`.
            let deliveries = receiver
                .receive(self.settings.batch_size.max(1), self.settings.receive_wait)
                .await;
            let deliveries = match deliveries {
                Ok(d) => {
                    bus_failures = 0;
                    d
                }
                Err(e) => {
                    if classify(&Failure::Bus(&e)) == Class::Fatal {
                        return Err(WriterError::Fatal(e.to_string()));
                    }
                    bus_failures += 1;
                    let delay = self.settings.retry.delay_after(bus_failures);
                    tracing::warn!(intake = self.n, error = %e, delay_ms = delay.as_millis() as u64, "receive failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => {}
                    }
                    continue;
                }
            };
            if deliveries.is_empty() {
                if self.settings.exit_when_idle && is_drained(&mut receiver).await {
                    tracing::info!(intake = self.n, "subscription drained");
                    return Ok(());
                }
                continue;
            }
            let lanes = self.lanes.len();
            for delivery in deliveries {
                let event = decode_wire(delivery.message());
                let lane = match &event {
                    Ok(e) => plan::lane(e, lanes),
                    // No entity: spread over the lanes.
                    Err(_) => {
                        undecodable = undecodable.wrapping_add(1);
                        undecodable % lanes
                    }
                };
                // Waits while the lane is full. A lane that stopped (shutdown,
                // or a fatal error) hands the message back to the broker.
                if let Err(mpsc::error::SendError(item)) =
                    self.lanes[lane].send(Item { delivery, event }).await
                {
                    release([item.delivery], |_| Duration::ZERO).await;
                }
            }
        }
    }

    async fn record_metrics_when_due(&self, last_flush: &mut Instant) {
        let Some(every) = self.settings.metrics_flush_every.filter(|_| self.n == 0) else {
            return;
        };
        if last_flush.elapsed() < every {
            return;
        }
        *last_flush = Instant::now();
        let report = *self.shared.report.lock().expect("report lock");
        let samples = report_samples(&report);
        let write = self.deps.store.record_metrics(&samples);
        if let Err(e) = answer(self.settings.apply_timeout, write).await {
            tracing::warn!(error = %e, "could not record metrics");
        }
    }
}

async fn is_drained<R: Receiver>(receiver: &mut R) -> bool {
    match receiver.backlog().await {
        Ok(Some(b)) => b.pending == 0 && b.in_flight == 0,
        // A broker that cannot tell: one empty receive means idle.
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Hand deliveries back to the broker, each redelivered after `delay(it)`.
async fn release<D: Delivery>(
    deliveries: impl IntoIterator<Item = D>,
    delay: impl Fn(&D) -> Duration,
) {
    let releases = deliveries.into_iter().map(|d| {
        let after = delay(&d);
        d.retry(after)
    });
    for r in futures::future::join_all(releases).await {
        if let Err(e) = r {
            telemetry::settle_failed(None, &e);
        }
    }
}

/// What a lane applies at once: the deliveries and, at the same index, each
/// one's decoded event (or why it could not be decoded).
struct Batch<D> {
    deliveries: Vec<D>,
    events: Vec<Result<MirrorEvent, DecodeError>>,
}

impl<D> Batch<D> {
    fn push(&mut self, item: Item<D>) {
        self.deliveries.push(item.delivery);
        self.events.push(item.event);
    }
    fn len(&self) -> usize {
        self.deliveries.len()
    }
}

impl<B: EventBus, S: MirrorStore> Worker<B, S> {
    /// One lane: batches from its queue until every intake is done (on
    /// shutdown they stop receiving, so a lane applies what it was already
    /// handed — at most a batch — and stops; past the shutdown deadline an
    /// apply is abandoned and its messages released).
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Item<<B::Receiver as Receiver>::Delivery>>,
    ) -> Result<(), WriterError> {
        while let Some(batch) = self.next_batch(&mut queue).await {
            if self.shared.health.is_down() && !self.hold_until_reachable(&batch.deliveries).await {
                // Shutdown during an outage: hand them back, delayed as a
                // failed attempt would be.
                let retry = self.settings.retry;
                release(batch.deliveries, |d| retry.delay_after(d.delivery_count())).await;
                continue;
            }
            self.process(batch).await?;
        }
        Ok(())
    }

    /// While the database is unavailable (the intakes have paused), keep the
    /// messages this lane was already handed — at most a batch and its
    /// queue — with their locks extended, until it is reachable again (true)
    /// or shutdown is requested (false). Releasing them instead would cost
    /// each one a delivery attempt per outage, and a few short outages in a
    /// row would dead-letter valid events as `retries_exhausted`.
    async fn hold_until_reachable(
        &self,
        deliveries: &[<B::Receiver as Receiver>::Delivery],
    ) -> bool {
        // This lane probes too: every intake may be blocked handing a
        // message to a full lane that holds, and someone must find the
        // database again.
        let every = self.settings.keep_alive_every;
        let mut stop = self.stop.clone();
        let health = &self.shared.health;
        let back = health.wait_until_reachable(
            &*self.deps.store,
            &self.settings.retry,
            self.settings.apply_timeout,
            &mut stop,
        );
        tokio::pin!(back);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut back => break,
                _ = tick.tick() => {
                    let failed = <<B::Receiver as Receiver>::Delivery as Delivery>::keep_alive_all(
                        deliveries,
                        every / 2,
                    )
                    .await;
                    if failed > 0 {
                        tracing::warn!(lane = self.n, failed, "could not extend every held message lock");
                    }
                }
            }
        }
        !health.is_down()
    }

    /// The next batch: the first message to arrive (`None` once every intake
    /// is done and the queue empty), whatever else is already waiting, then
    /// more while they keep coming (a gap of [`LOOK`] ends it) until
    /// `batch_size` or `linger` is reached. Under light load a message thus
    /// waits at most `linger`, usually `LOOK`; under heavy load batches are
    /// full at once and nothing waits.
    async fn next_batch(
        &mut self,
        queue: &mut mpsc::Receiver<Item<<B::Receiver as Receiver>::Delivery>>,
    ) -> Option<Batch<<B::Receiver as Receiver>::Delivery>> {
        let max = self.settings.batch_size.max(1);
        let first = queue.recv().await?;
        let mut batch = Batch {
            deliveries: Vec::with_capacity(max),
            events: Vec::with_capacity(max),
        };
        batch.push(first);
        let until = tokio::time::Instant::now() + self.settings.linger;
        while batch.len() < max {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = tokio::time::Instant::now();
                    if now >= until {
                        break;
                    }
                    match tokio::time::timeout_at(until.min(now + LOOK), queue.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        Some(batch)
    }

    /// A store call bounded by `apply_timeout` and by the shutdown deadline.
    async fn store_call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut abort = self.abort.clone();
        let aborted = async move {
            while !*abort.borrow_and_update() {
                if abort.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            r = answer(self.settings.apply_timeout, call) => r,
            () = aborted => Err(StoreError::no_answer(self.settings.shutdown_deadline)),
        }
    }

    fn note_store_failure(&self, e: &StoreError) {
        self.shared.health.note_failure(self.n, e);
    }

    async fn process(
        &mut self,
        batch: Batch<<B::Receiver as Receiver>::Delivery>,
    ) -> Result<(), WriterError> {
        let started = Instant::now();
        let _in_flight = telemetry::InFlight::received(batch.len());

        // The events go to the store; the index of each delivery's event (or
        // its decode error) stays for settling.
        let Batch {
            deliveries,
            events: decoded_events,
        } = batch;
        let mut events: Vec<MirrorEvent> = Vec::with_capacity(deliveries.len());
        let decoded: Vec<Result<usize, DecodeError>> = decoded_events
            .into_iter()
            .map(|r| {
                r.map(|e| {
                    events.push(e);
                    events.len() - 1
                })
            })
            .collect();

        let applied = if events.is_empty() {
            Some(Ok(Vec::new()))
        } else {
            self.apply_keeping_locks(&events, &deliveries).await
        };
        let Some(applied) = applied else {
            // Past the shutdown deadline: release everything for redelivery.
            release(deliveries, |_| Duration::ZERO).await;
            return Ok(());
        };
        let committed_at = Utc::now();
        match &applied {
            Err(whole) => self.note_store_failure(whole),
            Ok(results) => {
                if let Some(e) = results
                    .iter()
                    .find_map(|r| r.as_ref().err().filter(|e| store_unavailable(e)))
                {
                    self.note_store_failure(e);
                }
            }
        }

        let mut report = RunReport {
            batches: 1,
            ..RunReport::default()
        };
        let mut results = match &applied {
            Ok(results) => results
                .iter()
                .map(|r| r.as_ref().map(|o| *o))
                .collect::<Vec<_>>()
                .into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let mut fatal = None;
        // Settlements go out together once every disposition is known: one
        // round trip for the batch, not one after another.
        let mut settles: Vec<Settle<'static>> = Vec::new();
        let mut completes = Vec::with_capacity(deliveries.len());
        let mut complete_ids = Vec::with_capacity(deliveries.len());
        for (delivery, decoded) in deliveries.into_iter().zip(decoded.iter()) {
            let outcome: Result<ApplyOutcome, Failure<'_>> = match (decoded, &applied) {
                (Err(e), _) => Err(Failure::Decode(e)),
                (Ok(_), Err(whole)) => Err(Failure::Store(whole)),
                (Ok(_), Ok(_)) => match results.next() {
                    Some(Ok(o)) => Ok(o),
                    Some(Err(e)) => Err(Failure::Store(e)),
                    None => unreachable!("apply_batch returns one result per event"),
                },
            };
            let event = decoded.as_ref().ok().map(|&i| &events[i]);
            let disposition = decide(outcome, delivery.delivery_count(), &self.settings.retry);
            let span = telemetry::event_span(delivery.message_id(), event);
            let error_type = match &disposition {
                Disposition::Complete(_) => None,
                Disposition::Retry { .. } => Some("transient"),
                Disposition::DeadLetter(why) => Some(why.reason.as_str()),
                Disposition::Fatal(_) => Some("fatal"),
            };
            telemetry::message_processed(
                &self.settings.subscription,
                started.elapsed(),
                error_type,
            );
            match disposition {
                Disposition::Complete(outcome) => {
                    match outcome {
                        ApplyOutcome::Applied => report.applied += 1,
                        ApplyOutcome::Duplicate => report.duplicate += 1,
                        ApplyOutcome::Stale => report.stale += 1,
                    }
                    if let Some(ev) = event {
                        let path = telemetry::Path {
                            source: ev.time(),
                            published: ev.published_at(),
                            enqueued: delivery.enqueued_at(),
                            committed: committed_at,
                        };
                        span.in_scope(|| {
                            telemetry::event_completed(ev.event_type(), outcome, path)
                        });
                    }
                    complete_ids.push(delivery.message_id().map(str::to_owned));
                    completes.push(delivery);
                }
                Disposition::Retry { delay, reason } => {
                    report.retried += 1;
                    span.in_scope(|| {
                        telemetry::event_retried(
                            delivery.message_id(),
                            event.map(|e| e.event_type()),
                            delivery.delivery_count(),
                            delay,
                            &reason,
                        )
                    });
                    let id = delivery.message_id().map(str::to_owned);
                    settles.push(Box::pin(async move { (id, delivery.retry(delay).await) }));
                }
                Disposition::DeadLetter(why) => {
                    let record = dead_letter_record(
                        delivery.message(),
                        event,
                        &why,
                        &self.settings.subscription,
                    );
                    let written = self
                        .store_call(self.deps.store.record_dead_letter(&record))
                        .await;
                    if let Err(e) = written {
                        self.note_store_failure(&e);
                        match dead_letter_row_failed(
                            delivery.delivery_count(),
                            &self.settings.retry,
                        ) {
                            RowNotWritten::Release { delay } => {
                                // Kept in the subscription until SQL can take the row.
                                report.retried += 1;
                                telemetry::event_retried(
                                    delivery.message_id(),
                                    event.map(|e| e.event_type()),
                                    delivery.delivery_count(),
                                    delay,
                                    &format!("dead-letter row not written: {e}"),
                                );
                                let id = delivery.message_id().map(str::to_owned);
                                settles.push(Box::pin(
                                    async move { (id, delivery.retry(delay).await) },
                                ));
                                continue;
                            }
                            RowNotWritten::Park => {
                                let mut pending = self
                                    .shared
                                    .pending_dead_letters
                                    .lock()
                                    .expect("pending lock");
                                pending.push(record);
                                telemetry::dead_letter_rows_pending(pending.len());
                            }
                        }
                    } else {
                        telemetry::dead_letter_row_written(&record.key, &record.reason);
                    }
                    report.dead_lettered += 1;
                    span.in_scope(|| {
                        telemetry::event_dead_lettered(
                            delivery.message_id(),
                            event.map(|e| e.event_type()),
                            &why,
                        )
                    });
                    let id = delivery.message_id().map(str::to_owned);
                    settles.push(Box::pin(
                        async move { (id, delivery.dead_letter(&why).await) },
                    ));
                }
                Disposition::Fatal(reason) => {
                    // Leave the message unsettled; it is redelivered once the writer is fixed.
                    fatal.get_or_insert(reason);
                }
            }
        }
        let (completed, settled) = tokio::join!(
            <<B::Receiver as Receiver>::Delivery as Delivery>::complete_all(completes),
            futures::future::join_all(settles)
        );
        for (id, settled) in complete_ids.into_iter().zip(completed).chain(settled) {
            if let Err(e) = settled {
                telemetry::settle_failed(id.as_deref(), &e);
            }
        }
        self.shared.report.lock().expect("report lock").add(&report);
        telemetry::batch_finished(events.len(), started.elapsed());
        match fatal {
            Some(reason) => {
                let _ = self.stop_tx.send(true);
                Err(WriterError::Fatal(reason))
            }
            None => Ok(()),
        }
    }

    /// Apply the batch while extending the messages' locks; `None` if the
    /// shutdown deadline passed first (the transaction is rolled back).
    async fn apply_keeping_locks(
        &mut self,
        events: &[MirrorEvent],
        deliveries: &[<B::Receiver as Receiver>::Delivery],
    ) -> Option<Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError>> {
        let apply = self
            .deps
            .store
            .apply_batch_as(events, self.settings.apply_mode);
        tokio::pin!(apply);
        // Lock extension runs beside the apply (not in a select arm, where the
        // apply would wait for it), one bounded pass per tick.
        let every = self.settings.keep_alive_every;
        let keeper = async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let failed = <<B::Receiver as Receiver>::Delivery as Delivery>::keep_alive_all(
                    deliveries,
                    every / 2,
                )
                .await;
                if failed > 0 {
                    tracing::warn!(failed, "could not extend every message lock");
                }
            }
        };
        tokio::pin!(keeper);
        let mut abort = self.abort.clone();
        let no_answer_by = tokio::time::sleep(self.settings.apply_timeout);
        tokio::pin!(no_answer_by);
        loop {
            tokio::select! {
                r = &mut apply => return Some(r),
                () = &mut no_answer_by => {
                    // Dropping the future abandons the transaction (rolled back,
                    // or if COMMIT was already on its way, committed: then the
                    // redelivery is a duplicate). Either way nothing is lost.
                    tracing::warn!(timeout_s = self.settings.apply_timeout.as_secs_f64(), "database gave no answer for the batch; releasing it");
                    return Some(Err(StoreError::no_answer(self.settings.apply_timeout)));
                }
                _ = &mut keeper => {}
                Ok(()) = abort.changed() => {
                    if *abort.borrow() {
                        tracing::warn!("shutdown deadline passed with a batch in flight; releasing it");
                        return None;
                    }
                }
            }
        }
    }
}
