//! Chaos scenarios: "never lose, never block", proved under faults.
//!
//! Every scenario publishes a random history (creates, updates, soft and hard
//! deletes of every family, repeated ids, tied times) with about 1 % poison
//! mixed in, injects its fault while the writer is working, lets the writer
//! drain, and then checks:
//!
//! - the tables equal `newest_only(all valid events)` (the diff is printed otherwise);
//! - no event is lost: every entity holds the version of its newest event, and
//!   no valid event was dead-lettered;
//! - no applied event wrote a second audit / follow-event row;
//! - every poison message is in BOTH dead-letter places with its reason: the
//!   bus's dead-letter queue (by broker message id) and
//!   `realtime_mirror_dead_letter` (by dead-letter key).
//!
//! Faults that would disturb other tests (restarting PostgreSQL or NATS) are
//! injected into private servers (`mirror_tests::servers`); the rest use the
//! shared local servers with a fresh database and topic.
//!
//! The in-process scenarios that differ only in their workload and writers
//! ((d) poison, (e) ×3 delivery, (f) shuffled, (g) two writers, (i) injected
//! database errors) are one table ([`InProcess`]) run by one function,
//! generic over the bus and store factories of `mirror_tests::factories`:
//! `nats_postgres::*` here, `nats_mssql::*` where `MSSQL_URL` is set (the SQL
//! Server CI job), `servicebus_postgres::*` where `SERVICEBUS_CONNECTION_STRING`
//! is set (the Service Bus CI job). The scenarios that kill or pause servers and processes
//! stay PostgreSQL/NATS-specific.
//!
//! `cargo test -p mirror-tests --test chaos` runs the short form (a few hundred
//! events per scenario); `CHAOS=full` (used by `make chaos`) runs thousands of
//! events and more faults. `CHAOS_SEED=<n>` replays a run. Each scenario prints
//! its row; with `--test-threads 1` the last test (`z_summary`) prints the
//! whole table; rows are also appended to `target/chaos/report.jsonl`.
//!
//! The `sql-writer` binary must be built (`cargo build --bins`, done by `make test`).

use mirror_store::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::{Delivery, EventBus, OutboundMessage, Receiver};
use mirror_schema::{decode_wire, MirrorEvent, Op, WireMessage, STRUCTURED_CONTENT_TYPE};
use mirror_store::model::newest_only;
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::{MirrorState, MirrorStore};
use mirror_tests::bus_conformance::{BusFactory, Options};
use mirror_tests::servers::{NatsServer, PgServer, WriterProcess};
use mirror_tests::store_conformance::StoreFactory;
use mirror_tests::{events, factories, FreshDb, FreshTopic};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde::Serialize;
use sql_writer::policy::{Backoff, RetryPolicy};
use sql_writer::{Deps, RunReport, WriterSettings};

// ---------------------------------------------------------------------------
// Sizes

#[derive(Debug, Clone, Copy)]
struct Size {
    full: bool,
    /// Events of the random history (before copies and poison).
    events: usize,
    /// kill -9 of the writer process in scenario (a).
    kills: usize,
    /// Server restarts in scenarios (b) and (c).
    restarts: usize,
    /// How long publishing a workload takes (so faults land mid-stream).
    publish_span: Duration,
    /// Bound on every drain.
    drain_timeout: Duration,
}

fn size() -> Size {
    if std::env::var("CHAOS").map(|v| v == "full").unwrap_or(false) {
        Size {
            full: true,
            events: 3000,
            kills: 8,
            restarts: 4,
            publish_span: Duration::from_secs(12),
            drain_timeout: Duration::from_secs(300),
        }
    } else {
        Size {
            full: false,
            events: 300,
            kills: 3,
            restarts: 2,
            publish_span: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(150),
        }
    }
}

fn seeded_rng(scenario: &str) -> (StdRng, u64) {
    quiet_logs();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("[{scenario}] seed {seed} (CHAOS_SEED={seed} replays it)");
    (StdRng::seed_from_u64(seed), seed)
}

/// The in-process writers log every poison message and retry; under
/// `--nocapture` that buries the tables. Logs are off unless `RUST_LOG` is set
/// (installed before `mirror_tests::init`, whose own `try_init` then yields).
fn quiet_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------
// Workloads: valid events, poison, copies

/// A poison message and where it must end up.
#[derive(Debug, Clone)]
struct Poison {
    kind: &'static str,
    /// Broker message id: the bus dead-letter queue entry is found by it.
    message_id: String,
    /// `realtime_mirror_dead_letter` key.
    key: String,
    /// Expected dead-letter reason (the same in both places).
    reason: String,
}

#[derive(Clone)]
struct Workload {
    valid: Vec<MirrorEvent>,
    messages: Vec<OutboundMessage>,
    poison: Vec<Poison>,
}

const POISON_KINDS: [&str; 5] = [
    "malformed_json",
    "unknown_type",
    "wrong_id",
    "field_too_long",
    "nul_in_text",
];

impl Workload {
    /// A random history of `n` events (+10 % repeated ids) with 1 % poison
    /// (at least one of each kind) at random positions.
    fn new(rng: &mut StdRng, n: usize) -> Workload {
        let valid = events::random_history(rng, n, n / 10);
        let mut messages: Vec<OutboundMessage> =
            valid.iter().map(OutboundMessage::from_event).collect();
        let n_poison = (n / 100).max(POISON_KINDS.len());
        let mut poison = Vec::new();
        // Distinct source events, so every poison has its own dead-letter key.
        let mut by_id: BTreeMap<uuid::Uuid, &MirrorEvent> = BTreeMap::new();
        for e in &valid {
            by_id.insert(e.id(), e);
        }
        let mut sources: Vec<&MirrorEvent> = by_id.values().copied().collect();
        sources.shuffle(rng);
        let mut used = std::collections::HashSet::new();
        // Take an unused source event, a message create/update if `message` is set.
        let mut take = |message: bool| -> &MirrorEvent {
            let e = sources
                .iter()
                .copied()
                .find(|e| {
                    !used.contains(&e.id())
                        && (!message
                            || matches!(
                                e.event_type().as_str(),
                                "dm.message.create" | "dm.message.update"
                            ))
                })
                .expect("enough distinct source events for the poison");
            used.insert(e.id());
            e
        };
        for i in 0..n_poison {
            let kind = POISON_KINDS[i % POISON_KINDS.len()];
            let body: Vec<u8> = match kind {
                "malformed_json" => {
                    let json = take(false).to_structured_json();
                    let mut b = json[..json.len() / 2].to_vec();
                    b.extend_from_slice(
                        format!("<<poison {i} {}", uuid::Uuid::new_v4()).as_bytes(),
                    );
                    b
                }
                "unknown_type" => mutate(take(false), |v| {
                    v["type"] = "dm.message.archive".into();
                }),
                "wrong_id" => mutate(take(false), |v| {
                    v["id"] = uuid::Uuid::new_v4().to_string().into();
                }),
                "field_too_long" => mutate(take(true), |v| {
                    v["data"]["payload"]["clientMessageId"] = "x".repeat(200).into();
                }),
                "nul_in_text" => {
                    // Valid by the contract, impossible in a PostgreSQL text column.
                    let cid = ["c1", "c2", "c3"][rng.random_range(0..3)];
                    let e = events::message(
                        Op::Create,
                        cid,
                        &format!("mpoison{i}"),
                        "nul \u{0} inside",
                        events::t(rng.random_range(0..40)),
                    );
                    e.to_structured_json()
                }
                _ => unreachable!(),
            };
            let wire = WireMessage {
                content_type: Some(STRUCTURED_CONTENT_TYPE.into()),
                properties: vec![],
                body,
            };
            let reason = match decode_wire(&wire) {
                Err(e) => e.code().to_owned(),
                Ok(_) => "rejected_by_database".to_owned(),
            };
            let message_id = format!(
                "poison-{i}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            poison.push(Poison {
                kind,
                message_id: message_id.clone(),
                key: sql_writer::writer::dead_letter_key(&wire),
                reason,
            });
            let at = rng.random_range(0..=messages.len());
            messages.insert(
                at,
                OutboundMessage {
                    message_id,
                    partition_key: None,
                    message: wire,
                },
            );
        }
        Workload {
            valid,
            messages,
            poison,
        }
    }

    /// Every message `k` times, with distinct broker ids `{id}.copy.{j}` (so
    /// the broker does not drop them), spread over the stream.
    fn copies(mut self, k: usize, rng: &mut StdRng) -> Workload {
        let mut out = Vec::with_capacity(self.messages.len() * k);
        for m in &self.messages {
            for j in 0..k {
                let mut c = m.clone();
                c.message_id = format!("{}.copy.{j}", m.message_id);
                out.push(c);
            }
        }
        // Keep a rough order but move copies apart.
        let window = 40.min(out.len());
        for i in 0..out.len() {
            let j = (i + rng.random_range(0..window)).min(out.len() - 1);
            out.swap(i, j);
        }
        self.messages = out;
        self.poison = self
            .poison
            .iter()
            .flat_map(|p| {
                (0..k).map(move |j| Poison {
                    message_id: format!("{}.copy.{j}", p.message_id),
                    ..p.clone()
                })
            })
            .collect();
        self
    }

    fn shuffled(mut self, rng: &mut StdRng) -> Workload {
        self.messages.shuffle(rng);
        self
    }

    fn describe_poison(&self) -> String {
        let distinct: BTreeSet<&str> = self.poison.iter().map(|p| p.key.as_str()).collect();
        format!("{} poison", distinct.len())
    }
}

fn mutate(e: &MirrorEvent, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&e.to_structured_json()).expect("own json");
    f(&mut v);
    serde_json::to_vec(&v).expect("json")
}

// ---------------------------------------------------------------------------
// Connections and writers

fn bus_config(url: &str, topic: &str, ack_wait: Duration) -> JetStreamConfig {
    JetStreamConfig {
        url: url.to_owned(),
        topic: topic.to_owned(),
        ack_wait,
        connect_timeout: Duration::from_secs(5),
        api_timeout: Duration::from_secs(5),
        ..JetStreamConfig::default()
    }
}

async fn connect_bus(config: JetStreamConfig) -> Arc<JetStreamBus> {
    let bus = JetStreamBus::connect(config).await.expect("connect bus");
    bus.ensure_topology().await.expect("topology");
    Arc::new(bus)
}

async fn connect_store(url: &str) -> Arc<PgStore> {
    let store = PgStore::connect(&PgConfig {
        url: SecretString::from(url.to_owned()),
        pool_size: 8,
        statement_timeout: Duration::from_secs(30),
    })
    .await
    .expect("connect store");
    Arc::new(store)
}

/// The in-process writer's settings: small batches, quick retries, locks
/// extended well within the ack wait.
fn writer_settings(concurrency: usize) -> WriterSettings {
    WriterSettings {
        batch_size: 16,
        concurrency,
        receive_wait: Duration::from_millis(300),
        exit_when_idle: true,
        keep_alive_every: Duration::from_millis(700),
        shutdown_deadline: Duration::from_secs(10),
        apply_timeout: Duration::from_secs(2),
        metrics_flush_every: None,
        retry: RetryPolicy {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).with_jitter(),
            ..RetryPolicy::default()
        },
        ..WriterSettings::default()
    }
}

/// An in-process writer running until [`InProcessWriter::stop`].
struct InProcessWriter {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<RunReport, sql_writer::WriterError>>,
}

impl InProcessWriter {
    fn start<B: EventBus, S: MirrorStore>(
        bus: Arc<B>,
        store: Arc<S>,
        concurrency: usize,
    ) -> InProcessWriter {
        let settings = WriterSettings {
            exit_when_idle: false,
            ..writer_settings(concurrency)
        };
        InProcessWriter::start_with(bus, store, settings)
    }

    fn start_with<B: EventBus, S: MirrorStore>(
        bus: Arc<B>,
        store: Arc<S>,
        settings: WriterSettings,
    ) -> InProcessWriter {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sql_writer::run(Deps { bus, store }, settings, async move {
            let _ = rx.await;
        }));
        InProcessWriter {
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) -> RunReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("writer stops within 30 s of shutdown")
            .expect("writer task")
            .expect("writer run")
    }
}

/// Environment for a `sql-writer` process.
fn writer_env(
    nats_url: &str,
    database_url: &str,
    topic: &str,
    concurrency: usize,
) -> Vec<(&'static str, String)> {
    vec![
        ("MIRROR_BUS", "nats".into()),
        ("MIRROR_STORE", "postgres".into()),
        ("NATS_URL", nats_url.into()),
        ("DATABASE_URL", database_url.into()),
        ("MIRROR_TOPIC", topic.into()),
        ("WRITER_SUBSCRIPTION", "sql-writer".into()),
        ("WRITER_BATCH_SIZE", "16".into()),
        ("WRITER_CONCURRENCY", concurrency.to_string()),
        ("WRITER_MAX_ATTEMPTS", "5".into()),
        ("WRITER_MIN_BACKOFF_MS", "100".into()),
        ("WRITER_MAX_BACKOFF_MS", "2000".into()),
        ("WRITER_SHUTDOWN_DEADLINE_SECS", "10".into()),
        ("WRITER_EXIT_WHEN_IDLE", "false".into()),
        ("LOG_FORMAT", "text".into()),
    ]
}

fn spawn_writer(env: &[(&'static str, String)], exit_when_idle: bool) -> WriterProcess {
    let args: &[&str] = if exit_when_idle {
        &["--exit-when-idle"]
    } else {
        &[]
    };
    WriterProcess::spawn(args, env)
}

/// Run a drain writer process to completion (`--exit-when-idle`), bounded.
async fn drain_with_process(env: &[(&'static str, String)], timeout: Duration) {
    let mut w = spawn_writer(env, true);
    let status = tokio::task::block_in_place(|| w.wait_with_timeout(timeout));
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("drain writer exited with {s}:\n{}", w.log_tail(60)),
        None => panic!(
            "drain writer did not finish within {timeout:?}:\n{}",
            w.log_tail(60)
        ),
    }
}

/// Publish, retrying each message (same id: the broker drops a stored repeat)
/// while the bus is unavailable, for at most a minute per message.
async fn publish_retrying<B: EventBus>(bus: &B, m: &OutboundMessage) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match bus.publish(m).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "publish failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish `{}` kept failing for 60 s: {e}", m.message_id),
        }
    }
}

/// Publish `messages` spread over about `span`, in the background.
fn publish_paced<B: EventBus>(
    bus: Arc<B>,
    messages: Vec<OutboundMessage>,
    span: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let chunks = 30usize;
        let per = messages.len().div_ceil(chunks).max(1);
        let pause = span / chunks as u32;
        for chunk in messages.chunks(per) {
            for m in chunk {
                publish_retrying(&*bus, m).await;
            }
            tokio::time::sleep(pause).await;
        }
    })
}

async fn publish_all<B: EventBus>(bus: &B, messages: &[OutboundMessage]) {
    for m in messages {
        publish_retrying(bus, m).await;
    }
}

/// Wait until the subscription holds nothing (pending or unsettled), bounded.
async fn wait_drained<B: EventBus>(bus: &B, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        let idle = matches!(bus.subscription_backlog("sql-writer").await,
            Ok(Some(b)) if b.pending == 0 && b.in_flight == 0);
        match (idle, idle_since) {
            // Twice in a row, 300 ms apart: a settlement in transit is not idleness.
            (true, Some(t)) if t.elapsed() >= Duration::from_millis(300) => {
                return started.elapsed()
            }
            (true, None) => idle_since = Some(Instant::now()),
            (true, Some(_)) => {}
            (false, _) => idle_since = None,
        }
        assert!(
            started.elapsed() < timeout,
            "subscription not drained within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Verification and the report

#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: String,
    events: usize,
    faults: String,
    lost: usize,
    divergent: usize,
    dead_lettered: String,
    drain_secs: f64,
    seed: u64,
    pass: bool,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

fn count_diff<K: Ord, V: PartialEq>(expected: &BTreeMap<K, V>, actual: &BTreeMap<K, V>) -> usize {
    let keys: BTreeSet<&K> = expected.keys().chain(actual.keys()).collect();
    keys.into_iter()
        .filter(|k| expected.get(k) != actual.get(k))
        .count()
}

/// Entities whose newest event is not what the table holds.
fn count_lost(expected: &MirrorState, actual: &MirrorState) -> usize {
    fn by<K: Ord, V, I: PartialEq>(
        e: &BTreeMap<K, V>,
        a: &BTreeMap<K, V>,
        id: impl Fn(&V) -> I,
    ) -> usize {
        e.iter()
            .filter(|(k, v)| a.get(*k).map(&id) != Some(id(v)))
            .count()
    }
    by(&expected.conversations, &actual.conversations, |c| {
        c.last_event_id
    }) + by(&expected.messages, &actual.messages, |m| m.last_event_id)
        + by(&expected.blocks, &actual.blocks, |b| b.last_event_id)
        + by(&expected.follow_edges, &actual.follow_edges, |f| {
            f.last_event_id
        })
}

struct Outcome {
    row: Row,
    problems: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn verify<B: EventBus, S: MirrorStore>(
    scenario: &str,
    seed: u64,
    bus: &B,
    store: &S,
    w: &Workload,
    faults: String,
    drain: Duration,
) -> Outcome {
    let expected = newest_only(&w.valid);
    let actual = store.snapshot().await.expect("snapshot");
    // Contract v1.1: history too is a function of the set of valid events, so
    // every table is compared, not only the current-state ones.
    let entities = actual.clone().normalized();
    let mut problems = Vec::new();

    let diff = MirrorState::diff(&expected, &entities);
    if !diff.is_empty() {
        let lines: Vec<&str> = diff.lines().collect();
        let shown = lines
            .iter()
            .take(80)
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        problems.push(format!(
            "tables differ from newest_only (- expected, + actual), {} lines:\n{shown}",
            lines.len()
        ));
    }
    let mut divergent = count_diff(&expected.conversations, &entities.conversations)
        + count_diff(&expected.participants, &entities.participants)
        + count_diff(&expected.messages, &entities.messages)
        + count_diff(&expected.blocks, &entities.blocks)
        + count_diff(&expected.follow_edges, &entities.follow_edges);
    let mut lost = count_lost(&expected, &entities);

    // Idempotency of the logs: one row per applied event at most.
    let valid_ids: BTreeSet<uuid::Uuid> = w.valid.iter().map(|e| e.id()).collect();
    let audit_ids: Vec<uuid::Uuid> = actual.audit.iter().map(|a| a.event_id).collect();
    let follow_ids: Vec<uuid::Uuid> = actual.follow_events.iter().map(|f| f.event_id).collect();
    for (name, ids) in [
        ("dm_message_audit", audit_ids),
        ("follow_event", follow_ids),
    ] {
        let distinct: BTreeSet<_> = ids.iter().collect();
        if distinct.len() != ids.len() {
            divergent += ids.len() - distinct.len();
            problems.push(format!(
                "{name}: {} rows for {} events (an event was applied twice)",
                ids.len(),
                distinct.len()
            ));
        }
        let foreign = distinct.iter().filter(|id| !valid_ids.contains(id)).count();
        if foreign > 0 {
            divergent += foreign;
            problems.push(format!(
                "{name}: {foreign} rows from events that are not valid events"
            ));
        }
    }

    // Dead letters, in both places.
    let on_bus = bus
        .list_dead_letters("sql-writer", 1_000_000)
        .await
        .expect("list bus dead letters");
    let in_sql = store
        .list_dead_letters(1_000_000)
        .await
        .expect("list sql dead letters");
    let bus_by_id: HashMap<&str, &mirror_bus::DeadLettered> = on_bus
        .iter()
        .filter_map(|d| d.original_message_id.as_deref().map(|id| (id, d)))
        .collect();
    let sql_by_key: HashMap<&str, &mirror_store::StoredDeadLetter> =
        in_sql.iter().map(|d| (d.record.key.as_str(), d)).collect();
    let mut poison_missing = 0;
    for p in &w.poison {
        match bus_by_id.get(p.message_id.as_str()) {
            None => {
                poison_missing += 1;
                problems.push(format!(
                    "poison {} ({}) is not in the bus dead-letter queue",
                    p.message_id, p.kind
                ));
            }
            Some(d) if d.reason != p.reason => {
                poison_missing += 1;
                problems.push(format!(
                    "poison {} ({}): bus reason `{}`, expected `{}` ({})",
                    p.message_id, p.kind, d.reason, p.reason, d.description
                ));
            }
            Some(_) => {}
        }
        match sql_by_key.get(p.key.as_str()) {
            None => {
                poison_missing += 1;
                problems.push(format!(
                    "poison {} ({}) has no realtime_mirror_dead_letter row (key {})",
                    p.message_id, p.kind, p.key
                ));
            }
            Some(d) if d.record.reason != p.reason => {
                poison_missing += 1;
                problems.push(format!(
                    "poison {} ({}): SQL reason `{}`, expected `{}` ({})",
                    p.message_id, p.kind, d.record.reason, p.reason, d.record.error
                ));
            }
            Some(_) => {}
        }
    }
    let poison_ids: BTreeSet<&str> = w.poison.iter().map(|p| p.message_id.as_str()).collect();
    let poison_keys: BTreeSet<&str> = w.poison.iter().map(|p| p.key.as_str()).collect();
    let wrong_bus: Vec<&mirror_bus::DeadLettered> = on_bus
        .iter()
        .filter(|d| {
            !d.original_message_id
                .as_deref()
                .is_some_and(|id| poison_ids.contains(id))
        })
        .collect();
    let wrong_sql: Vec<&mirror_store::StoredDeadLetter> = in_sql
        .iter()
        .filter(|d| !poison_keys.contains(d.record.key.as_str()))
        .collect();
    for d in wrong_bus.iter().take(10) {
        problems.push(format!(
            "valid message {:?} was dead-lettered on the bus: {} ({})",
            d.original_message_id, d.reason, d.description
        ));
    }
    for d in wrong_sql.iter().take(10) {
        problems.push(format!(
            "valid event {} was dead-lettered in SQL: {} ({})",
            d.record.key, d.record.reason, d.record.error
        ));
    }
    lost += poison_missing + wrong_bus.len().max(wrong_sql.len());

    let row = Row {
        scenario: scenario.to_owned(),
        events: w.messages.len(),
        faults,
        lost,
        divergent,
        dead_lettered: format!(
            "{} bus / {} sql (want {} / {})",
            on_bus.len(),
            in_sql.len(),
            poison_ids.len(),
            poison_keys.len()
        ),
        drain_secs: drain.as_secs_f64(),
        seed,
        pass: problems.is_empty(),
    };
    Outcome { row, problems }
}

fn report_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return std::path::PathBuf::from(dir).join("chaos");
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary>
    exe.ancestors()
        .nth(3)
        .map(|t| t.join("chaos"))
        .unwrap_or_else(|| std::env::temp_dir().join("chaos"))
}

fn table(rows: &[Row]) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, CellAlignment, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "scenario",
        "events",
        "faults injected",
        "lost",
        "divergent rows",
        "dead-lettered",
        "time to drain",
        "result",
    ]);
    for r in rows {
        t.add_row(vec![
            r.scenario.clone(),
            r.events.to_string(),
            r.faults.clone(),
            r.lost.to_string(),
            r.divergent.to_string(),
            r.dead_lettered.clone(),
            format!("{:.1} s", r.drain_secs),
            if r.pass { "pass".into() } else { "FAIL".into() },
        ]);
    }
    for i in [1, 3, 4, 6] {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.to_string()
}

/// Record the row (printed, kept for the summary, appended to the report
/// file), then fail with every problem and `context` if there are any.
fn finish(outcome: Outcome, context: impl FnOnce() -> String) {
    let Outcome { row, problems } = outcome;
    println!("{}", table(std::slice::from_ref(&row)));
    ROWS.lock().unwrap().push(row.clone());
    let dir = report_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("report.jsonl"))
        {
            let _ = writeln!(f, "{}", serde_json::to_string(&row).unwrap_or_default());
        }
    }
    if !problems.is_empty() {
        panic!(
            "[{}] seed {}: {} problem(s):\n{}\n--- context ---\n{}",
            row.scenario,
            row.seed,
            problems.len(),
            problems.join("\n"),
            context()
        );
    }
}

/// Shared-server rig: a fresh database (migrated) and topic on the local servers.
struct SharedRig {
    db: FreshDb,
    topic: FreshTopic,
    bus: Arc<JetStreamBus>,
    store: Arc<PgStore>,
}

async fn shared_rig(ack_wait: Duration) -> SharedRig {
    let db = FreshDb::create().await;
    let topic = FreshTopic::new();
    let store = connect_store(&db.url).await;
    store.migrate().await.expect("migrate");
    let bus = connect_bus(bus_config(&topic.url, &topic.topic, ack_wait)).await;
    SharedRig {
        db,
        topic,
        bus,
        store,
    }
}

/// The ack wait the `sql-writer` binary configures (it re-applies it to the
/// consumer at start-up), so process scenarios use it too.
const BINARY_ACK_WAIT: Duration = Duration::from_secs(30);
/// In-process writers: short, so a lost settlement costs seconds, not half a minute.
const TEST_ACK_WAIT: Duration = Duration::from_secs(3);

/// Run `f` with a bound; a hang is a failure, not a stuck CI job.
async fn bounded<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

// ---------------------------------------------------------------------------
// (a) kill -9 the writer process repeatedly mid-stream

#[tokio::test(flavor = "multi_thread")]
async fn a_kill9_writer_process_repeatedly() {
    let size = size();
    let (mut rng, seed) = seeded_rng("a");
    let rig = shared_rig(BINARY_ACK_WAIT).await;
    let w = Workload::new(&mut rng, size.events);
    let env = writer_env(&rig.topic.url, &rig.db.url, &rig.topic.topic, 4);

    let publisher = publish_paced(rig.bus.clone(), w.messages.clone(), size.publish_span);
    let mut writer = spawn_writer(&env, false);
    let mut logs = Vec::new();
    let mut kills = 0;
    let kill_every = size.publish_span / (size.kills as u32 + 1);
    for _ in 0..size.kills {
        let jitter = rng.random_range(0..=kill_every.as_millis() as u64 / 2);
        tokio::time::sleep(kill_every / 2 + Duration::from_millis(jitter)).await;
        writer.kill9();
        kills += 1;
        logs.push(writer.log_tail(20));
        writer = spawn_writer(&env, false);
    }
    bounded("publishing", Duration::from_secs(120), publisher)
        .await
        .expect("publisher");
    // Last fault: kill the writer that saw the end of the stream too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.kill9();
    kills += 1;
    let fault_end = Instant::now();
    drain_with_process(&env, size.drain_timeout).await;
    let drain = fault_end.elapsed();

    let outcome = verify(
        "a kill -9 writer",
        seed,
        &*rig.bus,
        &*rig.store,
        &w,
        format!("{kills}× kill -9, {}", w.describe_poison()),
        drain,
    )
    .await;
    finish(outcome, || logs.join("\n---\n"));
}

// ---------------------------------------------------------------------------
// (b) restart PostgreSQL mid-stream (private server)

#[tokio::test(flavor = "multi_thread")]
async fn b_restart_postgres_mid_stream() {
    let size = size();
    let (mut rng, seed) = seeded_rng("b");
    let mut pg = tokio::task::block_in_place(PgServer::start);
    pg.create_database("mirror").await;
    let db_url = pg.url("mirror");
    let topic = FreshTopic::new();
    let store = connect_store(&db_url).await;
    store.migrate().await.expect("migrate");
    let bus = connect_bus(bus_config(&topic.url, &topic.topic, TEST_ACK_WAIT)).await;
    let w = Workload::new(&mut rng, size.events);

    let writer_store = connect_store(&db_url).await;
    let writer = InProcessWriter::start(bus.clone(), writer_store, 4);
    let publisher = publish_paced(bus.clone(), w.messages.clone(), size.publish_span);
    let mut faults = Vec::new();
    let gap = size.publish_span / (size.restarts as u32 + 1);
    for i in 0..size.restarts {
        tokio::time::sleep(gap).await;
        match i % 3 {
            0 => {
                tokio::task::block_in_place(|| pg.restart());
                faults.push("restart");
            }
            1 => {
                tokio::task::block_in_place(|| pg.crash_restart());
                faults.push("crash");
            }
            _ => {
                // A longer outage: down for 3 s (a failover).
                tokio::task::block_in_place(|| pg.stop());
                tokio::time::sleep(Duration::from_secs(3)).await;
                tokio::task::block_in_place(|| pg.start_again());
                faults.push("3 s outage");
            }
        }
    }
    let fault_end = Instant::now();
    bounded("publishing", Duration::from_secs(120), publisher)
        .await
        .expect("publisher");
    wait_drained(&*bus, size.drain_timeout).await;
    let drain = fault_end.elapsed();
    let report = writer.stop().await;
    println!("[b] writer report: {report:?}");

    let faults = format!(
        "{}× PostgreSQL ({}), {}",
        faults.len(),
        faults.join(", "),
        w.describe_poison()
    );
    let outcome = verify(
        "b PostgreSQL restart",
        seed,
        &*bus,
        &*store,
        &w,
        faults,
        drain,
    )
    .await;
    finish(outcome, || pg.log_tail(40));
}

// ---------------------------------------------------------------------------
// (c) restart nats-server mid-stream (private server, file storage)

#[tokio::test(flavor = "multi_thread")]
async fn c_restart_nats_mid_stream() {
    let size = size();
    let (mut rng, seed) = seeded_rng("c");
    let mut nats = tokio::task::block_in_place(NatsServer::start);
    let db = FreshDb::create().await;
    let store = connect_store(&db.url).await;
    store.migrate().await.expect("migrate");
    let topic = "chaos-nats";
    let bus = connect_bus(bus_config(&nats.url(), topic, TEST_ACK_WAIT)).await;
    let writer_bus = connect_bus(bus_config(&nats.url(), topic, TEST_ACK_WAIT)).await;
    let w = Workload::new(&mut rng, size.events);

    let writer = InProcessWriter::start(writer_bus, store.clone(), 4);
    let publisher = publish_paced(bus.clone(), w.messages.clone(), size.publish_span);
    let gap = size.publish_span / (size.restarts as u32 + 1);
    let mut faults = Vec::new();
    for i in 0..size.restarts {
        tokio::time::sleep(gap).await;
        // SIGTERM restarts; in the full form every other one is a SIGKILL.
        if size.full && i % 2 == 1 {
            tokio::task::block_in_place(|| nats.kill9_restart());
            faults.push("kill -9");
        } else {
            tokio::task::block_in_place(|| nats.restart());
            faults.push("restart");
        }
    }
    let fault_end = Instant::now();
    bounded("publishing", Duration::from_secs(180), publisher)
        .await
        .expect("publisher");
    wait_drained(&*bus, size.drain_timeout).await;
    let drain = fault_end.elapsed();
    let report = writer.stop().await;
    println!("[c] writer report: {report:?}");

    let faults = format!(
        "{}× nats-server ({}), {}",
        faults.len(),
        faults.join(", "),
        w.describe_poison()
    );
    let outcome = verify(
        "c nats-server restart",
        seed,
        &*bus,
        &*store,
        &w,
        faults,
        drain,
    )
    .await;
    finish(outcome, || nats.log_tail(40));
}

// ---------------------------------------------------------------------------
// (h) graceful shutdown: SIGTERM mid-stream

#[tokio::test(flavor = "multi_thread")]
async fn h_sigterm_mid_stream() {
    let size = size();
    let (mut rng, seed) = seeded_rng("h");
    let rig = shared_rig(BINARY_ACK_WAIT).await;
    let w = Workload::new(&mut rng, size.events);
    let env = writer_env(&rig.topic.url, &rig.db.url, &rig.topic.topic, 4);
    let deadline = Duration::from_secs(10); // WRITER_SHUTDOWN_DEADLINE_SECS

    let publisher = publish_paced(rig.bus.clone(), w.messages.clone(), size.publish_span);
    let mut writer = spawn_writer(&env, false);
    // SIGTERM once the writer is demonstrably working (a loaded CI machine
    // may take a while to start it), while events are still arriving.
    tokio::time::sleep(size.publish_span / 3).await;
    let waiting = Instant::now();
    let before = loop {
        let counts = rig.store.table_counts().await.expect("counts");
        if counts.iter().any(|(t, n)| t == "dm_conversation" && *n > 0)
            || waiting.elapsed() > Duration::from_secs(30)
        {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    writer.sigterm();
    let term_at = Instant::now();
    let status =
        tokio::task::block_in_place(|| writer.wait_with_timeout(deadline + Duration::from_secs(5)));
    let exit_took = term_at.elapsed();
    let mut problems = Vec::new();
    match status {
        Some(s) if s.success() => {}
        Some(s) => problems.push(format!("writer exited with {s} after SIGTERM")),
        None => {
            problems.push(format!(
                "writer still running {:?} after SIGTERM (deadline {deadline:?})",
                exit_took
            ));
            writer.kill9();
        }
    }
    let log = writer.log();
    if !log.contains("shutdown requested") {
        problems.push("writer log has no `shutdown requested` line".into());
    }
    bounded("publishing", Duration::from_secs(120), publisher)
        .await
        .expect("publisher");
    let fault_end = Instant::now();
    drain_with_process(&env, size.drain_timeout).await;
    let drain = fault_end.elapsed();
    let mid_stream = before.iter().map(|(_, n)| *n).sum::<i64>() > 0;
    println!("[h] SIGTERM → exit in {exit_took:?}; rows before SIGTERM: {before:?}");

    let mut outcome = verify(
        "h SIGTERM",
        seed,
        &*rig.bus,
        &*rig.store,
        &w,
        format!(
            "SIGTERM (exit {:.1} s), {}",
            exit_took.as_secs_f64(),
            w.describe_poison()
        ),
        drain,
    )
    .await;
    if !mid_stream {
        problems.push("the writer had applied nothing before SIGTERM: not mid-stream".into());
    }
    outcome.row.pass &= problems.is_empty();
    outcome.problems.extend(problems);
    finish(outcome, || {
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    });
}

// ---------------------------------------------------------------------------
// (i) injected database errors: deadlocks before commit, errors after commit

/// A store that fails like a real database under load: a batch aborted by a
/// deadlock/serialization failure before anything commits, a connection
/// reset *after* the commit (the writer cannot tell it committed), and one
/// event of a committed batch reported as failed. Each event is hit at most
/// twice, so every event must still be applied, never dead-lettered.
struct FlakyStore<S> {
    inner: Arc<S>,
    rng: Mutex<StdRng>,
    hits: Mutex<HashMap<uuid::Uuid, u32>>,
    injected: std::sync::atomic::AtomicUsize,
}

#[derive(Clone, Copy)]
enum Flake {
    None,
    AbortBefore,
    ResetAfterCommit,
    OneEventAfterCommit(usize),
}

impl<S: MirrorStore> FlakyStore<S> {
    const MAX_HITS_PER_EVENT: u32 = 2;

    fn roll(&self, events: &[MirrorEvent]) -> Flake {
        let r: f64 = self.rng.lock().unwrap().random();
        let flake = match r {
            r if r < 0.10 => Flake::AbortBefore,
            r if r < 0.17 => Flake::ResetAfterCommit,
            r if r < 0.25 && !events.is_empty() => {
                Flake::OneEventAfterCommit(self.rng.lock().unwrap().random_range(0..events.len()))
            }
            _ => Flake::None,
        };
        let ids: Vec<uuid::Uuid> = match flake {
            Flake::None => return Flake::None,
            Flake::OneEventAfterCommit(i) => vec![events[i].id()],
            _ => events.iter().map(|e| e.id()).collect(),
        };
        let mut hits = self.hits.lock().unwrap();
        if ids
            .iter()
            .any(|id| hits.get(id).copied().unwrap_or(0) >= Self::MAX_HITS_PER_EVENT)
        {
            return Flake::None;
        }
        for id in ids {
            *hits.entry(id).or_default() += 1;
        }
        self.injected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        flake
    }
}

fn pg_error(code: &str, message: &str) -> mirror_store::StoreError {
    mirror_store::StoreError::database(mirror_store::DbCode::Sqlstate(code.into()), message)
}

impl<S: MirrorStore> mirror_store::ApplyEvents for FlakyStore<S> {
    async fn apply(
        &self,
        event: &MirrorEvent,
    ) -> Result<mirror_store::ApplyOutcome, mirror_store::StoreError> {
        self.inner.apply(event).await
    }

    async fn apply_batch(
        &self,
        events: &[MirrorEvent],
    ) -> Result<
        Vec<Result<mirror_store::ApplyOutcome, mirror_store::StoreError>>,
        mirror_store::StoreError,
    > {
        let flake = self.roll(events);
        if let Flake::AbortBefore = flake {
            return Err(pg_error("40P01", "injected: deadlock detected"));
        }
        let mut results = self.inner.apply_batch(events).await?;
        match flake {
            Flake::ResetAfterCommit => Err(mirror_store::StoreError::new(
                mirror_store::StoreErrorKind::Connect,
                "injected: connection reset after COMMIT",
            )),
            Flake::OneEventAfterCommit(i) => {
                results[i] = Err(pg_error("40001", "injected: could not serialize access"));
                Ok(results)
            }
            _ => Ok(results),
        }
    }

    async fn lock_capacity(&self) -> Result<Option<u64>, mirror_store::StoreError> {
        self.inner.lock_capacity().await
    }
}

mirror_store::delegate_store!(impl[S: MirrorStore] FlakyStore<S> => inner:
    DeadLetterStore, CheckpointStore, MetricsStore, InspectStore);

// ---------------------------------------------------------------------------
// In-process scenarios on any bus and any store: (d) poison, (e) ×3
// delivery, (f) shuffled order, (g) two writers racing, (i) injected
// database errors. They differ only in their workload and writers, so they
// are one table, run by one function on every pair of adapters the
// environment has (`in_process_scenarios!` below).

/// One in-process scenario: its workload and its writers.
struct InProcess {
    /// The scenario's letter and name in the report.
    name: &'static str,
    /// The random history (`Workload::new`) made into this scenario's.
    workload: fn(Workload, &mut StdRng) -> Workload,
    /// Publish everything before the writers start (else while they run).
    publish_first: bool,
    writers: usize,
    /// Workers per writer.
    concurrency: usize,
    /// Wrap the store in a [`FlakyStore`] injecting database errors.
    flaky: bool,
    /// The "faults injected" cell, given the number of injected errors.
    faults: fn(&Workload, usize) -> String,
}

/// What the rows below do unless they say otherwise: one writer of 4
/// workers, the workload as drawn, published while the writer runs.
const PLAIN: InProcess = InProcess {
    name: "",
    workload: |w, _| w,
    publish_first: false,
    writers: 1,
    concurrency: 4,
    flaky: false,
    faults: |w, _| w.describe_poison(),
};
const D_POISON: InProcess = InProcess {
    name: "d poison",
    publish_first: true,
    faults: |w, _| {
        let kinds: BTreeSet<&str> = w.poison.iter().map(|p| p.kind).collect();
        format!("{} ({} kinds)", w.describe_poison(), kinds.len())
    },
    ..PLAIN
};
const E_THREE_DELIVERIES: InProcess = InProcess {
    name: "e ×3 delivery",
    workload: |w, rng| w.copies(3, rng),
    faults: |w, _| format!("each ×3, {}", w.describe_poison()),
    ..PLAIN
};
const F_SHUFFLED: InProcess = InProcess {
    name: "f shuffled",
    workload: |w, rng| w.shuffled(rng),
    publish_first: true,
    // One worker: the shuffled order is the apply order.
    concurrency: 1,
    faults: |w, _| format!("shuffled, {}", w.describe_poison()),
    ..PLAIN
};
const G_TWO_WRITERS: InProcess = InProcess {
    name: "g two writers",
    // Copies make the same event race in both writers at once.
    workload: |w, rng| w.copies(2, rng),
    writers: 2,
    faults: |w, _| format!("2 writers × 4 workers, each ×2, {}", w.describe_poison()),
    ..PLAIN
};
const I_DATABASE_ERRORS: InProcess = InProcess {
    name: "i injected DB errors",
    flaky: true,
    faults: |w, injected| {
        format!(
            "{injected} injected DB errors (deadlock, reset after commit, 1 of batch), {}",
            w.describe_poison()
        )
    },
    ..PLAIN
};

/// Run `scenario` on a fresh bus and store from the factories (`None`: the
/// adapter is gated off and has printed its `skipped:` line).
async fn in_process<BF: BusFactory, SF: StoreFactory>(
    scenario: &InProcess,
    adapters: &str,
    buses: Option<BF>,
    stores: Option<SF>,
) {
    let (Some(buses), Some(stores)) = (buses, stores) else {
        return;
    };
    let size = size();
    let name = format!("{} [{adapters}]", scenario.name);
    let (mut rng, seed) = seeded_rng(&name);
    let settings = writer_settings(scenario.concurrency);
    let fresh = buses
        .fresh(Options {
            lock: TEST_ACK_WAIT,
            max_deliver: settings.retry.max_attempts,
        })
        .await;
    // The writer's attempt limit is the broker's (one setting).
    let settings = WriterSettings {
        exit_when_idle: false,
        retry: RetryPolicy {
            max_attempts: fresh.max_deliver,
            ..settings.retry
        },
        ..settings
    };
    let bus = Arc::new(fresh.bus);
    let (store, _store_guard) = stores.fresh().await;
    let store = Arc::new(store);
    let flaky = Arc::new(FlakyStore {
        inner: store.clone(),
        rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
        hits: Mutex::new(HashMap::new()),
        injected: std::sync::atomic::AtomicUsize::new(0),
    });
    let w = (scenario.workload)(Workload::new(&mut rng, size.events), &mut rng);
    if scenario.publish_first {
        publish_all(&*bus, &w.messages).await;
    }
    let started = Instant::now();
    let writers: Vec<InProcessWriter> = (0..scenario.writers)
        .map(|_| match scenario.flaky {
            true => InProcessWriter::start_with(bus.clone(), flaky.clone(), settings.clone()),
            false => InProcessWriter::start_with(bus.clone(), store.clone(), settings.clone()),
        })
        .collect();
    if !scenario.publish_first {
        publish_all(&*bus, &w.messages).await;
    }
    wait_drained(&*bus, size.drain_timeout).await;
    let drain = started.elapsed();
    let mut reports = Vec::new();
    for writer in writers {
        reports.push(writer.stop().await);
    }
    println!("[{name}] writer reports: {reports:?}");
    let injected = flaky.injected.load(std::sync::atomic::Ordering::Relaxed);
    let faults = (scenario.faults)(&w, injected);
    let outcome = verify(&name, seed, &*bus, &*store, &w, faults, drain).await;
    drop(fresh.guard);
    finish(outcome, || format!("{reports:?}"));
}

/// The in-process scenarios on one pair of adapters, as a module of tests.
macro_rules! in_process_scenarios {
    ($adapters:ident: $buses:expr, $stores:expr) => {
        mod $adapters {
            use super::*;

            async fn run(scenario: &InProcess) {
                in_process(scenario, stringify!($adapters), $buses, $stores).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn d_poison_events_mixed_in() {
                run(&D_POISON).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn e_every_event_delivered_three_times() {
                run(&E_THREE_DELIVERIES).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn f_fully_shuffled_order() {
                run(&F_SHUFFLED).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn g_two_writers_racing() {
                run(&G_TWO_WRITERS).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn i_injected_database_errors() {
                run(&I_DATABASE_ERRORS).await
            }
        }
    };
}

in_process_scenarios!(nats_postgres: Some(factories::jetstream), Some(factories::postgres));
// The SQL Server CI job (MSSQL_URL, REQUIRE_MSSQL=1) runs these against SQL Server.
in_process_scenarios!(nats_mssql: Some(factories::jetstream), factories::mssql());
// The Service Bus CI job (SERVICEBUS_CONNECTION_STRING, REQUIRE_SERVICEBUS=1)
// runs these against the emulator; the drain is watched through
// `EventBus::subscription_backlog`, which opens no receiver.
in_process_scenarios!(servicebus_postgres: factories::servicebus(), Some(factories::postgres));

// ---------------------------------------------------------------------------
// (j) PostgreSQL hangs (SIGSTOP) mid-stream: nothing answers, nothing fails

#[tokio::test(flavor = "multi_thread")]
async fn j_postgres_hangs_mid_stream() {
    let size = size();
    let (mut rng, seed) = seeded_rng("j");
    let mut pg = tokio::task::block_in_place(PgServer::start);
    pg.create_database("mirror").await;
    let db_url = pg.url("mirror");
    let topic = FreshTopic::new();
    let store = connect_store(&db_url).await;
    store.migrate().await.expect("migrate");
    let bus = connect_bus(bus_config(&topic.url, &topic.topic, TEST_ACK_WAIT)).await;
    let w = Workload::new(&mut rng, size.events);
    let hang = if size.full {
        Duration::from_secs(12)
    } else {
        Duration::from_secs(6)
    };

    // Counters are written at exit: against the frozen database that write
    // must be bounded too.
    let settings = WriterSettings {
        exit_when_idle: false,
        metrics_flush_every: Some(Duration::from_secs(3600)),
        ..writer_settings(4)
    };
    let writer = InProcessWriter::start_with(bus.clone(), connect_store(&db_url).await, settings);
    let publisher = publish_paced(bus.clone(), w.messages.clone(), size.publish_span);
    tokio::time::sleep(size.publish_span / 3).await;
    pg.pause();
    // While the database hangs the writer must give its batches back (after
    // apply_timeout, 2 s here) and stop taking more: nothing stays locked.
    // Messages published during the hang are received (the bus is fine) and
    // their batch hangs. A competing consumer ("thief") on the same
    // subscription can only get such a message (delivery count >= 2) if the
    // writer gave it back; a writer blocked on the database keeps extending
    // its lock. The thief releases what it takes with a delay that outlasts
    // the hang, so each message is taken at most once.
    let thief_bus = connect_bus(bus_config(&topic.url, &topic.topic, TEST_ACK_WAIT)).await;
    let mut thief = thief_bus.subscribe("sql-writer").await.expect("thief");
    let hung_at = Instant::now();
    let mut released: Option<Duration> = None;
    let mut samples = Vec::new();
    while hung_at.elapsed() < hang {
        if released.is_none() {
            let got = thief
                .receive(16, Duration::from_millis(300))
                .await
                .unwrap_or_default();
            for d in got {
                samples.push(format!(
                    "{:.1}s thief got {:?} delivery {}",
                    hung_at.elapsed().as_secs_f64(),
                    d.message_id(),
                    d.delivery_count()
                ));
                if d.delivery_count() >= 2 && released.is_none() {
                    released = Some(hung_at.elapsed());
                }
                let _ = d.retry(hang + Duration::from_secs(1)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Shut down while the database is still frozen: the exit must not wait
    // for it (the batch was released; probes and last writes are bounded).
    let stopping = Instant::now();
    let first = writer.stop().await;
    let stop_took = stopping.elapsed();
    pg.resume();
    let fault_end = Instant::now();
    bounded("publishing", Duration::from_secs(120), publisher)
        .await
        .expect("publisher");
    let writer = InProcessWriter::start(bus.clone(), connect_store(&db_url).await, 4);
    wait_drained(&*bus, size.drain_timeout).await;
    let drain = fault_end.elapsed();
    let report = writer.stop().await;
    println!(
        "[j] writer reports: {first:?} / {report:?}; a batch held in the hang was released after {released:?}; shutdown in the hang took {stop_took:?}"
    );

    let faults = format!(
        "PostgreSQL frozen {} s, shutdown in it ({:.1} s), {}",
        hang.as_secs(),
        stop_took.as_secs_f64(),
        w.describe_poison()
    );
    let mut outcome = verify(
        "j PostgreSQL hangs",
        seed,
        &*bus,
        &*store,
        &w,
        faults,
        drain,
    )
    .await;
    if released.is_none() {
        outcome.row.pass = false;
        outcome.problems.push(format!(
            "the writer kept messages locked for the whole {hang:?} hang:\n{}",
            samples.join("\n")
        ));
    }
    let deadline = writer_settings(4).shutdown_deadline;
    if stop_took > deadline + Duration::from_secs(2) {
        outcome.row.pass = false;
        outcome.problems.push(format!(
            "shutdown while the database hung took {stop_took:?} (deadline {deadline:?})"
        ));
    }
    finish(outcome, || samples.join("\n"));
}

// ---------------------------------------------------------------------------

/// Last by name: with `--test-threads 1` (as `make chaos` runs it) every
/// scenario has finished and recorded its row.
#[test]
fn z_summary() {
    let rows = ROWS.lock().unwrap().clone();
    if rows.is_empty() {
        return;
    }
    println!(
        "\nchaos summary ({}):\n{}",
        if size().full {
            "CHAOS=full"
        } else {
            "short form"
        },
        table(&rows)
    );
    println!(
        "rows also appended to {}",
        report_dir().join("report.jsonl").display()
    );
}
