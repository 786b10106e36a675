//! The worker loop: receive a batch, decode, apply in one transaction, settle
//! each message as [`crate::policy::decide`] says.
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
//! - the loop never sleeps while holding a message: transient failures go back
//!   to the broker with a delay;
//! - when the database is unavailable (connection refused, restarting, failing
//!   over) the batch goes back to the broker and every worker stops taking
//!   messages until a probe reaches the database again, so an outage costs a
//!   message one delivery attempt, not all of them (otherwise every valid event
//!   received during an outage longer than the retry budget would be
//!   dead-lettered with `retries_exhausted`); a database that hangs instead
//!   of failing counts as unavailable once a batch gets no answer within
//!   `apply_timeout`;
//! - on shutdown no new batch starts; the batch in flight finishes, or, past the
//!   deadline, its messages are released for redelivery.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use mirror_bus::{Delivery, EventBus, Receiver};
use mirror_schema::{decode_wire, DecodeError, EventType, MirrorEvent, WireMessage, WireValue};
use mirror_store::{ApplyOutcome, DeadLetterRecord, MetricSample, MirrorStore, StoreError};
use tokio::sync::watch;

use crate::policy::{
    classify, decide, store_unavailable, Class, Disposition, Failure, RetryPolicy,
};
use crate::telemetry;

/// Tuning of the worker loop.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub subscription: String,
    /// Messages per receive and per transaction.
    pub batch_size: usize,
    /// Concurrent workers (each its own receiver and transaction).
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
            subscription: mirror_bus::SQL_WRITER_SUBSCRIPTION.to_owned(),
            batch_size: 64,
            concurrency: 4,
            receive_wait: Duration::from_secs(1),
            exit_when_idle: false,
            retry: RetryPolicy::default(),
            keep_alive_every: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(20),
            apply_timeout: Duration::from_secs(60),
            metrics_flush_every: Some(Duration::from_secs(30)),
        }
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
    pending_dead_letters: Mutex<Vec<DeadLetterRecord>>,
    /// Set when a batch found the database unavailable; workers take no
    /// messages until a probe succeeds.
    store_down: AtomicBool,
}

/// The checkpoint row read to probe the database (any answer, even "no row", means it is up).
const PROBE_MODULE: &str = "sql-writer";
const PROBE_SHARD: &str = "health-probe";
const MAX_PROBE_DELAY: Duration = Duration::from_secs(5);

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
        store_down: AtomicBool::new(false),
    });

    let mut workers = Vec::new();
    for n in 0..settings.concurrency.max(1) {
        let receiver = deps
            .bus
            .subscribe(&settings.subscription)
            .await
            .map_err(|source| WriterError::Subscribe {
                subscription: settings.subscription.clone(),
                source,
            })?;
        let worker = Worker {
            n,
            deps: deps.clone(),
            settings: settings.clone(),
            stop: stop_rx.clone(),
            stop_tx: stop_tx.clone(),
            abort: abort_rx.clone(),
            shared: shared.clone(),
        };
        workers.push(tokio::spawn(worker.run(receiver)));
    }

    let mut result = Ok(());
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = stop_tx.send(true);
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => result = Err(WriterError::Join(e.to_string())),
        }
    }
    // Last writes: bounded, so a hung database cannot hold up the exit.
    let last_writes = settings.apply_timeout.min(LAST_WRITES_LIMIT);
    flush_dead_letters(&*deps.store, &shared, last_writes).await;
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

impl<B: EventBus, S: MirrorStore> Worker<B, S> {
    async fn run(mut self, mut receiver: B::Receiver) -> Result<(), WriterError> {
        let mut bus_failures = 0u32;
        let mut last_flush = Instant::now();
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if self.shared.store_down.load(Ordering::Acquire) {
                self.wait_for_store().await;
                continue;
            }
            // Dead-letter rows that waited for the database, written before
            // taking messages (none is held while this waits) and on every
            // turn, idle ones included (a crash would lose them from SQL).
            flush_dead_letters(&*self.deps.store, &self.shared, self.settings.apply_timeout).await;
            let deliveries = match receiver
                .receive(self.settings.batch_size, self.settings.receive_wait)
                .await
            {
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
                    tracing::warn!(worker = self.n, error = %e, delay_ms = delay.as_millis() as u64, "receive failed");
                    self.sleep_unless_stopped(delay).await;
                    continue;
                }
            };
            if deliveries.is_empty() {
                if self.settings.exit_when_idle && self.is_drained(&mut receiver).await {
                    tracing::info!(worker = self.n, "subscription drained");
                    return Ok(());
                }
                continue;
            }
            self.process(deliveries).await?;
            if self.n == 0 {
                if let Some(every) = self.settings.metrics_flush_every {
                    if last_flush.elapsed() >= every {
                        last_flush = Instant::now();
                        let report = *self.shared.report.lock().expect("report lock");
                        let samples = report_samples(&report);
                        let write = self.deps.store.record_metrics(&samples);
                        if let Err(e) = answer(self.settings.apply_timeout, write).await {
                            tracing::warn!(error = %e, "could not record metrics");
                        }
                    }
                }
            }
        }
    }

    async fn sleep_unless_stopped(&mut self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// Hold no messages while the database is unavailable: probe it with
    /// growing delays until it answers (or shutdown is requested).
    async fn wait_for_store(&mut self) {
        let mut probes = 0u32;
        while self.shared.store_down.load(Ordering::Acquire) && !*self.stop.borrow() {
            probes += 1;
            // Capped low: once the database is back, resume within seconds.
            let delay = self.settings.retry.delay_after(probes).min(MAX_PROBE_DELAY);
            self.sleep_unless_stopped(delay).await;
            if !self.shared.store_down.load(Ordering::Acquire) || *self.stop.borrow() {
                return;
            }
            let probe = answer(
                self.settings.apply_timeout,
                self.deps.store.load_checkpoint(PROBE_MODULE, PROBE_SHARD),
            );
            // A probe of a hung database must not hold up shutdown either.
            let answer = tokio::select! {
                r = probe => r.map(|_| ()),
                _ = self.stop.changed() => return,
            };
            match answer {
                Err(e) if store_unavailable(&e) => {
                    tracing::warn!(worker = self.n, probes, error = %e, "database still unavailable; taking no messages");
                }
                // Reachable (an error of another kind is the batch's to classify).
                _ => {
                    if self.shared.store_down.swap(false, Ordering::AcqRel) {
                        telemetry::intake_paused(false);
                        tracing::info!(
                            worker = self.n,
                            probes,
                            "database reachable again; resuming"
                        );
                    }
                    return;
                }
            }
        }
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
            () = aborted => Err(no_answer(self.settings.shutdown_deadline)),
        }
    }

    fn note_store_failure(&self, e: &StoreError) {
        if store_unavailable(e) && !self.shared.store_down.swap(true, Ordering::AcqRel) {
            tracing::warn!(worker = self.n, error = %e, "database unavailable: releasing messages and pausing intake until it answers");
            telemetry::intake_paused(true);
        }
    }

    async fn is_drained(&self, receiver: &mut B::Receiver) -> bool {
        match receiver.backlog().await {
            Ok(Some(b)) => b.pending == 0 && b.in_flight == 0,
            // A broker that cannot tell: one empty receive means idle.
            Ok(None) => true,
            Err(_) => false,
        }
    }

    async fn process(
        &mut self,
        deliveries: Vec<<B::Receiver as Receiver>::Delivery>,
    ) -> Result<(), WriterError> {
        let started = Instant::now();
        let _in_flight = telemetry::InFlight::received(deliveries.len());

        let decoded: Vec<Result<MirrorEvent, DecodeError>> = deliveries
            .iter()
            .map(|d| decode_wire(d.message()))
            .collect();
        let events: Vec<MirrorEvent> = decoded
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();

        let applied = if events.is_empty() {
            Some(Ok(Vec::new()))
        } else {
            self.apply_keeping_locks(&events, &deliveries).await
        };
        let Some(applied) = applied else {
            // Past the shutdown deadline: release everything for redelivery.
            for d in deliveries {
                if let Err(e) = d.retry(Duration::ZERO).await {
                    telemetry::settle_failed(None, &e);
                }
            }
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
            let event = decoded.as_ref().ok();
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
                    let id = delivery.message_id().map(str::to_owned);
                    if let Err(e) = delivery.complete().await {
                        telemetry::settle_failed(id.as_deref(), &e);
                    }
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
                    if let Err(e) = delivery.retry(delay).await {
                        telemetry::settle_failed(id.as_deref(), &e);
                    }
                }
                Disposition::DeadLetter(why) => {
                    let record = dead_letter_record(
                        delivery.message(),
                        event,
                        &why,
                        &self.settings.subscription,
                    );
                    let last_attempt =
                        delivery.delivery_count() >= self.settings.retry.max_attempts;
                    match self
                        .store_call(self.deps.store.record_dead_letter(&record))
                        .await
                    {
                        Ok(()) => telemetry::dead_letter_row_written(&record.key, &record.reason),
                        Err(e) if !last_attempt => {
                            self.note_store_failure(&e);
                            // Keep the message in the subscription until SQL can take the row.
                            report.retried += 1;
                            let delay = self.settings.retry.delay_after(delivery.delivery_count());
                            telemetry::event_retried(
                                delivery.message_id(),
                                event.map(|e| e.event_type()),
                                delivery.delivery_count(),
                                delay,
                                &format!("dead-letter row not written: {e}"),
                            );
                            if let Err(e) = delivery.retry(delay).await {
                                telemetry::settle_failed(None, &e);
                            }
                            continue;
                        }
                        Err(e) => {
                            self.note_store_failure(&e);
                            let mut pending = self
                                .shared
                                .pending_dead_letters
                                .lock()
                                .expect("pending lock");
                            pending.push(record);
                            telemetry::dead_letter_rows_pending(pending.len());
                        }
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
                    if let Err(e) = delivery.dead_letter(&why).await {
                        telemetry::settle_failed(id.as_deref(), &e);
                    }
                }
                Disposition::Fatal(reason) => {
                    // Leave the message unsettled; it is redelivered once the writer is fixed.
                    fatal.get_or_insert(reason);
                }
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
        let apply = self.deps.store.apply_batch(events);
        tokio::pin!(apply);
        let mut tick = tokio::time::interval(self.settings.keep_alive_every);
        tick.tick().await;
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
                    return Some(Err(no_answer(self.settings.apply_timeout)));
                }
                _ = tick.tick() => {
                    for d in deliveries {
                        if let Err(e) = d.keep_alive().await {
                            tracing::warn!(error = %e, "could not extend a message lock");
                        }
                    }
                }
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

/// The database did not answer within `timeout`: treated like a broken
/// connection (the database is unavailable), not like a failing event.
fn no_answer(timeout: Duration) -> StoreError {
    StoreError::new(
        mirror_store::StoreErrorKind::Connect,
        format!(
            "no answer from the database within {:.1} s",
            timeout.as_secs_f64()
        ),
    )
}

/// `call`'s result, or a "no answer" connection failure after `limit`.
async fn answer<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(no_answer(limit)))
}

/// How long the writes after the last batch (pending dead-letter rows,
/// counters) may take at most, so a hung database cannot hold up the exit.
const LAST_WRITES_LIMIT: Duration = Duration::from_secs(5);

/// Write dead-letter rows that waited for the database; each write may take
/// `limit`, and after one gets no answer the rest wait for the next flush.
async fn flush_dead_letters<S: MirrorStore>(store: &S, shared: &Shared, limit: Duration) {
    let pending: Vec<DeadLetterRecord> =
        std::mem::take(&mut *shared.pending_dead_letters.lock().expect("pending lock"));
    if pending.is_empty() {
        return;
    }
    let mut still = Vec::new();
    let mut hung = false;
    for record in pending {
        if hung {
            still.push(record);
            continue;
        }
        match answer(limit, store.record_dead_letter(&record)).await {
            Ok(()) => telemetry::dead_letter_row_written(&record.key, &record.reason),
            Err(e) => {
                hung = e.message.starts_with("no answer");
                still.push(record);
            }
        }
    }
    let mut guard = shared.pending_dead_letters.lock().expect("pending lock");
    guard.extend(still);
    telemetry::dead_letter_rows_pending(guard.len());
}

/// A hook for messages the bus adapter dead-letters on its own, and the task
/// that writes their SQL dead-letter rows, retrying until the database takes
/// each one (nothing else holds these messages for us). The task ends when
/// the hook is dropped.
pub fn record_adapter_dead_letters<S: MirrorStore>(
    store: Arc<S>,
    subscription: String,
) -> (mirror_bus::DeadLetterHook, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(WireMessage, mirror_bus::DeadLetter)>();
    let hook: mirror_bus::DeadLetterHook = Arc::new(move |message, why| {
        let _ = tx.send((message, why));
    });
    let task = tokio::spawn(async move {
        while let Some((message, why)) = rx.recv().await {
            let event = decode_wire(&message).ok();
            let record = dead_letter_record(&message, event.as_ref(), &why, &subscription);
            let mut delay = Duration::from_secs(1);
            while let Err(e) = store.record_dead_letter(&record).await {
                tracing::warn!(key = %record.key, error = %e, "dead-letter row not written yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
            telemetry::dead_letter_row_written(&record.key, &record.reason);
            telemetry::event_dead_lettered(None, event.map(|e| e.event_type()), &why);
        }
    });
    (hook, task)
}

/// The SQL dead-letter row for a delivery; for an event that did not decode,
/// the attributes are read best-effort from the raw message.
pub fn dead_letter_record(
    message: &WireMessage,
    event: Option<&MirrorEvent>,
    why: &mirror_bus::DeadLetter,
    subscription: &str,
) -> DeadLetterRecord {
    let (event_id, event_type, subject) = match event {
        Some(e) => (
            Some(e.id()),
            Some(e.event_type().as_str().to_owned()),
            Some(e.entity_key()),
        ),
        None => peek_attributes(message),
    };
    let key = dead_letter_key(message);
    DeadLetterRecord {
        key,
        event_id,
        event_type,
        subject,
        payload: String::from_utf8_lossy(&message.body).into_owned(),
        reason: why.reason.clone(),
        error: why.description.clone(),
        attempts: why.attempts,
        failed_at: Utc::now(),
        subscription: subscription.to_owned(),
    }
}

/// `id`, `type`, `subject` of a message that failed validation, if readable.
pub fn peek_attributes(
    message: &WireMessage,
) -> (Option<uuid::Uuid>, Option<String>, Option<String>) {
    let clip = |s: &str| s.chars().take(128).collect::<String>();
    if message.is_binary_mode() {
        let get = |name: &str| {
            mirror_schema::amqp::PREFIXES.iter().find_map(|p| {
                match message.property(&format!("{p}{name}")) {
                    Some(WireValue::String(s)) => Some(clip(s)),
                    Some(WireValue::Uuid(u)) => Some(u.to_string()),
                    _ => None,
                }
            })
        };
        return (
            get("id").and_then(|s| s.parse().ok()),
            get("type"),
            get("subject"),
        );
    }
    let Ok(serde_json::Value::Object(obj)) =
        serde_json::from_slice::<serde_json::Value>(&message.body)
    else {
        return (None, None, None);
    };
    let s = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(clip);
    let event_type = s("type")
        .filter(|t| t.parse::<EventType>().is_ok())
        .or(s("type"));
    (
        s("id").and_then(|i| i.parse().ok()),
        event_type,
        s("subject"),
    )
}

/// The key of a message's `realtime_mirror_dead_letter` row: its event id when
/// the message decodes (the id is then verified: deterministic for its type,
/// subject and time), else `sha256:<hex>` of the body. The writer and the
/// replay tool both use this, so a replayed event's row is found.
///
/// An id merely *read* from a message that does not decode is not trusted as
/// a key: it may be any string a producer put there (the contract's example
/// id, an id reused for every bad message, the id of a valid event whose type
/// was mistyped), and keying by it made different poison messages — or a
/// poison message and a real event — share one row, each overwriting the
/// other's payload and reason.
pub fn dead_letter_key(message: &WireMessage) -> String {
    use sha2::{Digest, Sha256};
    match decode_wire(message) {
        Ok(event) => event.id().to_string(),
        Err(_) => format!("sha256:{}", hex::encode(Sha256::digest(&message.body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keys_trust_only_verified_ids() {
        let subject = mirror_schema::Subject::FollowEdge {
            follower_user_id: "u1".into(),
            target_user_id: "u2".into(),
        };
        let time = chrono::TimeZone::with_ymd_and_hms(&Utc, 2025, 10, 8, 12, 0, 0).unwrap();
        let event = MirrorEvent::new(
            "follow.edge.delete".parse().unwrap(),
            subject,
            time,
            "test",
            mirror_schema::Payload::FollowEdgeDelete,
        )
        .unwrap();
        let good = WireMessage::structured(&event);
        assert_eq!(dead_letter_key(&good), event.id().to_string());
        // Two different undecodable messages claiming the same id get two rows.
        let bad = |ty: &str| {
            let mut v: serde_json::Value = serde_json::from_slice(&good.body).unwrap();
            v["type"] = ty.into();
            WireMessage {
                body: serde_json::to_vec(&v).unwrap(),
                ..good.clone()
            }
        };
        let (a, b) = (bad("x.one"), bad("x.two"));
        let (ka, kb) = (dead_letter_key(&a), dead_letter_key(&b));
        assert!(
            ka.starts_with("sha256:") && kb.starts_with("sha256:"),
            "{ka} {kb}"
        );
        assert_ne!(ka, kb);
        assert_ne!(ka, event.id().to_string());
    }
}
