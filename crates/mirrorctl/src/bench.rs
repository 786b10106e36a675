//! `mirrorctl bench`: throughput, latency and memory of the writer on the local
//! NATS and PostgreSQL, measured in one run and printed as one table.
//!
//! Every scenario gets its own scratch database and stream (dropped after).
//!
//! - **drain** (per apply mode): `--events` events are published first, then
//!   the writer drains the subscription; events/s = events settled ÷ drain
//!   time. Peak RSS is the process's `VmHWM`, reset (`/proc/self/clear_refs`)
//!   after publishing, so it is the writer's peak plus this process's small
//!   idle baseline (runtime, one NATS and one PostgreSQL client).
//! - **raw**: the same events through the same set-based SQL
//!   (`MirrorStore::apply_batch_as(.., Batched)`), with the writer's batch size
//!   and concurrency and its lanes (`mirror_store::plan::lane`), no bus and
//!   no writer: the database's own limit on this
//!   machine. The ratio writer ÷ raw says what the bus and the loop cost.
//! - **steady** (per apply mode at `--rate`, and the batched writer at each of
//!   `--rates`): events published at a fixed offered rate for `--seconds`
//!   while the writer runs; latency is enqueue (the event `time`, set just
//!   before publishing) to the return of the committed batch, for every
//!   event settled. The curve gives the highest offered rate whose p95 stays
//!   within 200 ms.
//!
//! With `MSSQL_URL` (an ADO connection string) the drains, the writer
//! process, the raw limit and the steady rows run on SQL Server too (scratch
//! databases created and dropped there); the latency curve and the goals are
//! PostgreSQL's. Without it the table says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Args;
use futures::StreamExt;
use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::{EventBus, OutboundMessage};
use mirror_schema::*;
use mirror_store::mssql::{MssqlConfig, MssqlStore};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::{ApplyEvents, ApplyMode, ApplyOutcome, MirrorStore, StoreError};
use secrecy::SecretString;
use serde::Serialize;
use sql_writer::{Deps, WriterSettings};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Events per drain scenario (the per-event drain: at most 20,000) and
    /// for the raw database limit; enough for a batched drain to last seconds
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Offered rate (events/s) of the per-mode steady scenario
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Offered rates (events/s) of the latency curve, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,5000,10000,15000,20000,25000,30000"
    )]
    pub rates: Vec<u32>,
    /// Seconds each steady scenario offers events
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Share of DM events (the rest are follow-edge events), 0..=1
    #[arg(long, default_value_t = 0.8)]
    pub dm_share: f64,
    /// Participants per conversation (2 = direct, more = group)
    #[arg(long, default_value_t = 2)]
    pub group_size: usize,
    /// Share of events published a second time (under a new broker message id,
    /// so the store, not the broker, sees the duplicate), 0..=1
    #[arg(long, default_value_t = 0.02)]
    pub duplicate_rate: f64,
    /// Share of update events whose version is older than one already sent
    /// (late arrivals: stale for the row, history all the same), 0..=1
    #[arg(long, default_value_t = 0.05)]
    pub reorder_rate: f64,
    /// Writer batch size and workers (the writer's own defaults)
    #[arg(long, default_value_t = sql_writer::defaults::BATCH_SIZE)]
    pub batch_size: usize,
    #[arg(long, default_value_t = sql_writer::defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// Skip the per-event mode (it is slow on purpose: the baseline)
    #[arg(long)]
    pub skip_per_event: bool,
    /// Run one scenario only and print its figure (for tuning)
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// PostgreSQL server (a scratch database is created and dropped on it)
    #[arg(
        long,
        env = "BENCH_PG_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_url: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The `sql-writer` binary whose memory the writer-process row measures
    /// [default: `sql-writer` next to this executable, i.e. built by
    /// `cargo build --release -p sql-writer`]
    #[arg(long)]
    pub writer_bin: Option<std::path::PathBuf>,
}

/// The scenarios `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The raw database limit
    Raw,
    /// The batched writer draining a backlog (in this process)
    Drain,
    /// The same, by a separate `sql-writer` process (with its peak RSS)
    Process,
}

/// The figures of one row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub store: String,
    pub mode: String,
    pub offered_per_sec: Option<u32>,
    pub events: usize,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// CPU time of the local PostgreSQL server processes per event, µs (the
    /// raw and writer-process drains; None where the database is not local).
    pub db_cpu_us_per_event: Option<f64>,
    /// CPU time of the `sql-writer` process per event, µs (its own row only).
    pub writer_cpu_us_per_event: Option<f64>,
}

/// A store decorator recording enqueue-to-commit latency of every settled event.
struct Timed<S> {
    inner: S,
    latencies_ms: Arc<Mutex<Vec<f64>>>,
}

impl<S: MirrorStore> ApplyEvents for Timed<S> {
    async fn apply(&self, event: &MirrorEvent) -> Result<ApplyOutcome, StoreError> {
        let r = self.inner.apply(event).await;
        self.note(std::slice::from_ref(event), std::slice::from_ref(&r));
        r
    }
    async fn apply_batch(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let r = self.inner.apply_batch(events).await?;
        self.note(events, &r);
        Ok(r)
    }
    async fn apply_batch_as(
        &self,
        events: &[MirrorEvent],
        mode: ApplyMode,
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let r = self.inner.apply_batch_as(events, mode).await?;
        self.note(events, &r);
        Ok(r)
    }
    async fn lock_capacity(&self) -> Result<Option<u64>, StoreError> {
        self.inner.lock_capacity().await
    }
}

mirror_store::delegate_store!(impl[S: MirrorStore] Timed<S> => inner:
    DeadLetterStore, CheckpointStore, MetricsStore, InspectStore);

impl<S> Timed<S> {
    /// Enqueue → commit: from the publish time the bench stamps on every
    /// event (not the event `time`, which is its version: a reordered event
    /// carries an older one on purpose, and measuring from it added up to
    /// 500 ms to 5 % of the events, which was the "p99 ≈ 400 ms at light
    /// load" of earlier runs).
    fn note<E>(&self, events: &[MirrorEvent], results: &[Result<ApplyOutcome, E>]) {
        let now = Utc::now();
        let mut l = self.latencies_ms.lock().expect("latency lock");
        for (e, r) in events.iter().zip(results) {
            if r.is_ok() {
                let enqueued = e.published_at().unwrap_or_else(|| e.time());
                l.push((now - enqueued).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

/// The workload: events with the `--dm-share`, `--group-size` and
/// `--reorder-rate` mix. Conversations: 500; users: 2,000. DM events are
/// 5 % conversation updates, 70 % new messages, 25 % edits/deletes of recent
/// messages; follow events move random edges between states.
struct Workload {
    rng: Rng,
    mix: BenchArgs,
    messages: Vec<(usize, usize)>,
    next_message: usize,
}

const CONVERSATIONS: usize = 500;
const USERS: usize = 2000;

impl Workload {
    fn new(mix: &BenchArgs) -> Workload {
        Workload {
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            mix: mix.clone(),
            messages: Vec::new(),
            next_message: 0,
        }
    }

    /// The next event, with version `time` (or a little older when reordered).
    fn next(&mut self, time: chrono::DateTime<Utc>) -> MirrorEvent {
        let late = self.rng.chance(self.mix.reorder_rate);
        let time = if late {
            time - chrono::Duration::milliseconds(1 + self.rng.below(500) as i64)
        } else {
            time
        };
        if self.rng.chance(self.mix.dm_share) {
            let roll = self.rng.below(100);
            if roll < 5 {
                let c = self.rng.below(CONVERSATIONS);
                let users: Vec<String> = (0..self.mix.group_size.max(2))
                    .map(|k| format!("u{}", (c * 7 + k * 13) % USERS))
                    .collect();
                let subject = Subject::Conversation {
                    conversation_id: format!("bench-c{c}"),
                };
                let payload = Payload::Conversation(ConversationPayload {
                    kind: if users.len() == 2 {
                        ConversationKind::Direct
                    } else {
                        ConversationKind::Group
                    },
                    participants: users
                        .iter()
                        .enumerate()
                        .map(|(i, u)| Participant {
                            user_id: u.clone(),
                            role: if i == 0 {
                                ParticipantRole::Owner
                            } else {
                                ParticipantRole::Member
                            },
                            joined_at: time,
                            mute_state: MuteState::None,
                            read_pointer_message_id: None,
                        })
                        .collect(),
                    created_at: time,
                    updated_at: time,
                    last_message_id: None,
                });
                return event(EventType::DmConversationUpdate, subject, time, payload);
            }
            let (op, c, m) = if roll < 75 || self.messages.is_empty() {
                let c = self.rng.below(CONVERSATIONS);
                let m = self.next_message;
                self.next_message += 1;
                self.messages.push((c, m));
                if self.messages.len() > 4096 {
                    self.messages.remove(0);
                }
                (Op::Create, c, m)
            } else {
                let (c, m) = self.messages[self.rng.below(self.messages.len())];
                let op = if roll < 97 { Op::Update } else { Op::Delete };
                (op, c, m)
            };
            let subject = Subject::Message {
                conversation_id: format!("bench-c{c}"),
                message_id: format!("m{m}"),
            };
            let payload = if op == Op::Delete {
                Payload::MessageDelete(MessageDeletePayload {
                    performed_by: Some("moderator".into()),
                })
            } else {
                Payload::Message(MessagePayload {
                    author_user_id: format!("u{}", m % USERS),
                    body_text: "benchmark message body, about the size of a chat line".into(),
                    attachments: None,
                    external_media: None,
                    created_at: time,
                    edited_at: (op == Op::Update).then_some(time),
                    deleted_at: None,
                    client_message_id: None,
                })
            };
            let ty = EventType::of(EventFamily::Message, op).expect("message type");
            return event(ty, subject, time, payload);
        }
        let f = self.rng.below(USERS);
        let t = (f + 1 + self.rng.below(50)) % USERS;
        let subject = Subject::FollowEdge {
            follower_user_id: format!("u{f}"),
            target_user_id: format!("u{t}"),
        };
        let state = match self.rng.below(10) {
            0 => None,
            1 => Some(FollowState::Blocked),
            2..=4 => Some(FollowState::Pending),
            _ => Some(FollowState::Accepted),
        };
        match state {
            None => event(
                EventType::FollowEdgeDelete,
                subject,
                time,
                Payload::FollowEdgeDelete,
            ),
            Some(state) => event(
                EventType::FollowEdgeUpdate,
                subject,
                time,
                Payload::FollowEdge(FollowEdgePayload {
                    state,
                    source: FollowSource::Mobile,
                    created_at: time,
                }),
            ),
        }
    }

    /// The messages to publish for `event`: itself, and with `--duplicate-rate`
    /// a second copy under another broker message id.
    fn messages(&mut self, event: &MirrorEvent) -> Vec<OutboundMessage> {
        let first = OutboundMessage::from_event(event);
        if self.rng.chance(self.mix.duplicate_rate) {
            let mut again = first.clone();
            again.message_id.push_str("-again");
            vec![first, again]
        } else {
            vec![first]
        }
    }
}

fn event(
    ty: EventType,
    subject: Subject,
    time: chrono::DateTime<Utc>,
    payload: Payload,
) -> MirrorEvent {
    let source = MirrorEvent::firestore_source("bench", &subject);
    MirrorEvent::new(ty, subject, time, source, payload).expect("bench event is valid")
}

/// A database server the bench makes scratch databases on: PostgreSQL
/// always, SQL Server when `MSSQL_URL` is set. Every scenario is generic over
/// it, so both stores run the same code.
trait Db: Sync {
    type Store: MirrorStore + 'static;
    /// The `store` column.
    const NAME: &'static str;
    /// Create database `name` (empty).
    async fn create(&self, name: &str) -> Result<()>;
    /// Connect to database `name` and migrate it.
    async fn store(&self, name: &str, pool: usize) -> Result<Self::Store>;
    /// Drop database `name` (best effort).
    async fn drop_database(&self, name: &str);
    /// The environment of a `sql-writer` process writing to database `name`.
    fn writer_env(&self, name: &str, pool: usize) -> Vec<(&'static str, String)>;
    /// A PostgreSQL server on this machine, whose processes' CPU time the
    /// bench can read.
    fn local_postgres(&self) -> bool {
        false
    }
}

/// PostgreSQL at `--pg-url`.
struct Postgres {
    server: SecretString,
    /// `--pg-url` without its database.
    base: String,
}

impl Postgres {
    fn new(args: &BenchArgs) -> Result<Postgres> {
        let base = args
            .pg_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .context("--pg-url must end in /<database>")?;
        Ok(Postgres {
            server: SecretString::from(args.pg_url.clone()),
            base,
        })
    }
    fn url(&self, name: &str) -> SecretString {
        SecretString::from(format!("{}/{name}", self.base))
    }
}

impl Db for Postgres {
    type Store = PgStore;
    const NAME: &'static str = "postgres";
    fn local_postgres(&self) -> bool {
        let rest = self.base.split_once("://").map_or(&*self.base, |(_, r)| r);
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        host.is_empty()
            || host.starts_with("127.")
            || host.starts_with("localhost")
            || host.starts_with("[::1]")
    }
    async fn create(&self, name: &str) -> Result<()> {
        mirror_store::postgres::create_database_if_missing(&self.url(name)).await?;
        Ok(())
    }
    async fn store(&self, name: &str, pool: usize) -> Result<PgStore> {
        let store = PgStore::connect(&PgConfig {
            url: self.url(name),
            pool_size: pool,
            statement_timeout: Duration::from_secs(30),
        })
        .await?;
        store.migrate().await?;
        Ok(store)
    }
    async fn drop_database(&self, name: &str) {
        let _ = mirror_store::postgres::drop_database(&self.server, &self.url(name)).await;
    }
    fn writer_env(&self, name: &str, pool: usize) -> Vec<(&'static str, String)> {
        use secrecy::ExposeSecret;
        vec![
            ("MIRROR_STORE", "postgres".into()),
            ("DATABASE_URL", self.url(name).expose_secret().to_owned()),
            ("MIRROR_POOL_SIZE", pool.to_string()),
        ]
    }
}

/// SQL Server at `MSSQL_URL` (an ADO connection string). Not run on the
/// development machine (no SQL Server there).
struct SqlServer {
    ado: SecretString,
    base: MssqlConfig,
}

impl SqlServer {
    /// `None` without `MSSQL_URL`.
    fn from_env() -> Result<Option<SqlServer>> {
        let Some(ado) = std::env::var("MSSQL_URL").ok().filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let base = MssqlConfig::from_ado(&ado).context("MSSQL_URL")?;
        Ok(Some(SqlServer {
            ado: SecretString::from(ado),
            base,
        }))
    }
    fn config(&self, name: &str, pool: usize) -> MssqlConfig {
        let mut config = self.base.for_database(name);
        config.pool_size = u32::try_from(pool).unwrap_or(u32::MAX);
        config
    }
}

impl Db for SqlServer {
    type Store = MssqlStore;
    const NAME: &'static str = "sqlserver";
    async fn create(&self, name: &str) -> Result<()> {
        mirror_store::mssql::create_database_if_missing(&self.base.for_database(name)).await?;
        Ok(())
    }
    async fn store(&self, name: &str, pool: usize) -> Result<MssqlStore> {
        let store = MssqlStore::connect(&self.config(name, pool)).await?;
        store.migrate().await?;
        Ok(store)
    }
    async fn drop_database(&self, name: &str) {
        let _ = mirror_store::mssql::drop_database(&self.base.for_database(name)).await;
    }
    fn writer_env(&self, name: &str, pool: usize) -> Vec<(&'static str, String)> {
        use secrecy::ExposeSecret;
        // A later key wins in an ADO string.
        vec![
            ("MIRROR_STORE", "mssql".into()),
            (
                "MSSQL_URL",
                format!(
                    "{};Database={name};Max Pool Size={pool}",
                    self.ado.expose_secret()
                ),
            ),
        ]
    }
}

/// One scenario's database and stream, dropped by [`Scratch::drop`].
struct Scratch<'d, D: Db> {
    db: &'d D,
    name: String,
    topic: String,
    nats_url: String,
}

impl<'d, D: Db> Scratch<'d, D> {
    async fn new(args: &BenchArgs, db: &'d D, label: &str) -> Result<Scratch<'d, D>> {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let name = format!("rm_bench_{label}_{suffix}");
        db.create(&name).await?;
        Ok(Scratch {
            db,
            name,
            topic: format!("rmb-{}-{suffix}", label.replace('_', "-")),
            nats_url: args.nats_url.clone(),
        })
    }

    async fn store(&self, pool: usize) -> Result<D::Store> {
        self.db.store(&self.name, pool).await
    }

    async fn bus(&self) -> Result<JetStreamBus> {
        let bus = JetStreamBus::connect(JetStreamConfig {
            url: self.nats_url.clone(),
            topic: self.topic.clone(),
            ..JetStreamConfig::default()
        })
        .await?;
        bus.ensure_topology().await?;
        Ok(bus)
    }

    async fn drop(self, bus: Option<&JetStreamBus>) {
        if let Some(bus) = bus {
            let _ = bus.delete_topology().await;
        }
        self.db.drop_database(&self.name).await;
    }
}

/// Publish concurrently (the broker confirms each; 256 in flight).
async fn publish_all(bus: &JetStreamBus, messages: Vec<OutboundMessage>) -> Result<()> {
    let mut results =
        futures::stream::iter(messages.iter().map(|m| bus.publish(m))).buffer_unordered(256);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

fn writer_settings(args: &BenchArgs, mode: ApplyMode, exit_when_idle: bool) -> WriterSettings {
    WriterSettings {
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        apply_mode: mode,
        exit_when_idle,
        receive_wait: Duration::from_millis(200),
        metrics_flush_every: None,
        ..WriterSettings::default()
    }
}

/// `VmHWM` of this process, MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Reset `VmHWM` to the current RSS (Linux ≥ 4.0); false if not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mode_name(mode: ApplyMode) -> String {
    mode.as_str().to_owned()
}

/// Events of a per-event drain: at ~2,000 events/s, `--events` of them would
/// take most of the bench's time to say the same thing.
const PER_EVENT_DRAIN_EVENTS: usize = 20_000;

/// The messages a drain publishes before the writer starts: `--events`
/// events (at most [`PER_EVENT_DRAIN_EVENTS`] per event).
fn drain_messages(args: &BenchArgs, mode: ApplyMode) -> Vec<OutboundMessage> {
    let events = match mode {
        ApplyMode::PerEvent => args.events.min(PER_EVENT_DRAIN_EVENTS),
        ApplyMode::Batched => args.events,
    };
    let mut workload = Workload::new(args);
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut messages = Vec::with_capacity(events + events / 10);
    for i in 0..events {
        let e = workload.next(base + chrono::Duration::microseconds(i as i64 * 10));
        messages.extend(workload.messages(&e));
    }
    messages
}

async fn drain<D: Db>(
    args: &BenchArgs,
    db: &D,
    mode: ApplyMode,
    progress: &Progress,
) -> Result<Row> {
    let scratch = Scratch::new(
        args,
        db,
        &format!("drain_{}", mode.as_str().replace('-', "")),
    )
    .await?;
    let bus = scratch.bus().await?;
    let store = scratch.store(args.concurrency + 1).await?;
    let messages = drain_messages(args, mode);
    let published = messages.len();
    progress.note(&format!(
        "drain {}: publishing {published} messages",
        mode.as_str()
    ));
    publish_all(&bus, messages).await?;
    let bus = Arc::new(bus);
    let reset = reset_peak_rss();
    progress.note(&format!("drain {}: writer draining", mode.as_str()));
    let started = Instant::now();
    let report = sql_writer::run(
        Deps {
            bus: bus.clone(),
            store: Arc::new(store),
        },
        writer_settings(args, mode, true),
        std::future::pending(),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let rss = if reset { peak_rss_mib() } else { None };
    scratch.drop(Some(&bus)).await;
    let done = (report.applied + report.duplicate + report.stale) as usize;
    Ok(Row {
        scenario: "drain".into(),
        store: D::NAME.into(),
        mode: mode_name(mode),
        offered_per_sec: None,
        events: done,
        seconds: secs,
        events_per_sec: done as f64 / secs,
        p50_ms: None,
        p95_ms: None,
        p99_ms: None,
        peak_rss_mib: rss,
        db_cpu_us_per_event: None,
        writer_cpu_us_per_event: None,
    })
}

/// The `sql-writer` binary for [`drain_process`], if there is one.
fn writer_binary(args: &BenchArgs) -> Option<std::path::PathBuf> {
    args.writer_bin
        .clone()
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|p| p.with_file_name("sql-writer"))
        })
        .filter(|p| p.is_file())
}

/// CPU time read from `/proc/<pid>/stat` (user + system), in clock ticks of
/// 10 ms (`USER_HZ`, 100 on every Linux ABI this runs on).
mod cpu {
    use std::collections::HashMap;

    const TICK_US: f64 = 10_000.0;

    /// (user + system ticks, command name) of `pid`.
    fn stat(pid: u32) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = text.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state is field 3 of the file; utime 14, stime 15.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime, comm))
    }

    /// Ticks of one process.
    pub fn of(pid: u32) -> Option<u64> {
        stat(pid).map(|(t, _)| t)
    }

    /// Ticks of every process named `postgres` (the local server), by pid.
    pub fn postgres() -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((ticks, comm)) = stat(pid) {
                if comm == "postgres" {
                    out.insert(pid, ticks);
                }
            }
        }
        out
    }

    /// µs per event between two [`postgres`] samples (processes gone by the
    /// second are not counted); None when there is no local server.
    pub fn postgres_us_per_event(
        before: &HashMap<u32, u64>,
        after: &HashMap<u32, u64>,
        events: usize,
    ) -> Option<f64> {
        if after.is_empty() {
            return None;
        }
        let ticks: u64 = after
            .iter()
            .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
            .sum();
        us_per_event(ticks, events)
    }

    /// µs per event of `ticks`.
    pub fn us_per_event(ticks: u64, events: usize) -> Option<f64> {
        (events > 0).then(|| ticks as f64 * TICK_US / events as f64)
    }
}

/// `VmHWM` of process `pid`, MiB (None once it has exited).
fn process_peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The batched drain by a separately spawned `sql-writer` process, as
/// deployed: events/s from its start to an empty subscription (nothing
/// pending, nothing unacknowledged), and its own peak RSS (`VmHWM`, read
/// until it exits).
async fn drain_process<D: Db>(
    args: &BenchArgs,
    db: &D,
    bin: &std::path::Path,
    progress: &Progress,
) -> Result<Row> {
    let scratch = Scratch::new(args, db, "drain_process").await?;
    let bus = scratch.bus().await?;
    drop(scratch.store(1).await?);
    let messages = drain_messages(args, ApplyMode::Batched);
    let published = messages.len();
    progress.note(&format!(
        "drain, sql-writer process: publishing {published} messages"
    ));
    publish_all(&bus, messages).await?;
    let mut receiver = bus.subscribe(mirror_bus::SQL_WRITER_SUBSCRIPTION).await?;
    progress.note(&format!("drain, sql-writer process: {}", bin.display()));
    let db_before = db.local_postgres().then(cpu::postgres).unwrap_or_default();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .env("MIRROR_BUS", "nats")
        .env("NATS_URL", &scratch.nats_url)
        .env("MIRROR_TOPIC", &scratch.topic)
        .envs(db.writer_env(&scratch.name, args.concurrency + 1))
        .env("WRITER_BATCH_SIZE", args.batch_size.to_string())
        .env("WRITER_CONCURRENCY", args.concurrency.to_string())
        .env("WRITER_APPLY", "batched")
        .env("WRITER_EXIT_WHEN_IDLE", "true")
        .env("RUST_LOG", "warn")
        .env_remove("METRICS_ADDR")
        .env_remove("SQL_WRITER_CONFIG")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id().context("sql-writer exited at once")?;
    let mut rss = None;
    let mut writer_ticks = None;
    let mut db_after = Default::default();
    let mut drained_after = None;
    let mut last_look = Instant::now() - Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        rss = process_peak_rss_mib(pid).or(rss);
        if drained_after.is_none() {
            writer_ticks = cpu::of(pid).or(writer_ticks);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "sql-writer exited with {status}");
            break;
        }
        if drained_after.is_none() && last_look.elapsed() >= Duration::from_millis(50) {
            use mirror_bus::Receiver;
            last_look = Instant::now();
            if matches!(receiver.backlog().await, Ok(Some(b)) if b.pending == 0 && b.in_flight == 0)
            {
                drained_after = Some(started.elapsed());
                writer_ticks = cpu::of(pid).or(writer_ticks);
                if db.local_postgres() {
                    db_after = cpu::postgres();
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sql-writer did not drain in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = drained_after
        .unwrap_or_else(|| started.elapsed())
        .as_secs_f64();
    drop(receiver);
    scratch.drop(Some(&bus)).await;
    Ok(Row {
        scenario: "drain, sql-writer process".into(),
        store: D::NAME.into(),
        mode: "batched".into(),
        offered_per_sec: None,
        events: published,
        seconds: secs,
        events_per_sec: published as f64 / secs,
        p50_ms: None,
        p95_ms: None,
        p99_ms: None,
        peak_rss_mib: rss,
        db_cpu_us_per_event: cpu::postgres_us_per_event(&db_before, &db_after, published),
        writer_cpu_us_per_event: writer_ticks.and_then(|t| cpu::us_per_event(t, published)),
    })
}

async fn raw<D: Db>(args: &BenchArgs, db: &D, progress: &Progress) -> Result<Row> {
    let scratch = Scratch::new(args, db, "raw").await?;
    let store = Arc::new(scratch.store(args.concurrency + 1).await?);
    let mut workload = Workload::new(args);
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut events = Vec::with_capacity(args.events);
    for i in 0..args.events {
        let e = workload.next(base + chrono::Duration::microseconds(i as i64 * 10));
        for _ in workload.messages(&e) {
            events.push(e.clone());
        }
    }
    progress.note(&format!(
        "raw: {} events straight into the set-based SQL",
        events.len()
    ));
    // The writer's shape: one lane per worker, each entity in one lane, each
    // lane's batches one after another.
    let n = args.concurrency.max(1);
    let mut lanes: Vec<Vec<MirrorEvent>> = vec![Vec::new(); n];
    for e in events {
        lanes[mirror_store::plan::lane(&e, n)].push(e);
    }
    let db_before = db.local_postgres().then(cpu::postgres).unwrap_or_default();
    let started = Instant::now();
    let runs = lanes.into_iter().map(|lane| {
        let store = store.clone();
        let bs = args.batch_size.max(1);
        async move {
            let mut done = 0;
            for chunk in lane.chunks(bs) {
                done += store.apply_batch_as(chunk, ApplyMode::Batched).await?.len();
            }
            Ok::<usize, StoreError>(done)
        }
    });
    let mut done = 0;
    for r in futures::future::join_all(runs).await {
        done += r?;
    }
    let secs = started.elapsed().as_secs_f64();
    let db_after = db.local_postgres().then(cpu::postgres).unwrap_or_default();
    drop(store);
    scratch.drop(None).await;
    Ok(Row {
        scenario: "raw set-based SQL (no bus, no writer)".into(),
        store: D::NAME.into(),
        mode: "batched".into(),
        offered_per_sec: None,
        events: done,
        seconds: secs,
        events_per_sec: done as f64 / secs,
        p50_ms: None,
        p95_ms: None,
        p99_ms: None,
        peak_rss_mib: None,
        db_cpu_us_per_event: cpu::postgres_us_per_event(&db_before, &db_after, done),
        writer_cpu_us_per_event: None,
    })
}

async fn steady<D: Db>(
    args: &BenchArgs,
    db: &D,
    mode: ApplyMode,
    rate: u32,
    progress: &Progress,
) -> Result<Row> {
    let scratch = Scratch::new(args, db, &format!("steady_{rate}")).await?;
    let bus = Arc::new(scratch.bus().await?);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let store = Timed {
        inner: scratch.store(args.concurrency + 1).await?,
        latencies_ms: latencies.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(sql_writer::run(
        Deps {
            bus: bus.clone(),
            store: Arc::new(store),
        },
        writer_settings(args, mode, false),
        async move {
            let _ = stop_rx.await;
        },
    ));
    progress.note(&format!(
        "steady {} at {rate} events/s for {} s",
        mode.as_str(),
        args.seconds
    ));
    let total = (rate as usize) * (args.seconds as usize);
    // Offer in 10 ms slices: rate/100 events each, published concurrently.
    let per_tick = (rate as f64 / 100.0).max(1.0);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut workload = Workload::new(args);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut owed = 0.0f64;
    let mut publishing = futures::stream::FuturesUnordered::new();
    while sent < total {
        // Drive the publishes in flight between slices too (polling them only
        // at each tick would pace the sends by the ticker, not by the broker).
        tokio::select! {
            _ = tick.tick() => {
                owed += per_tick;
                while owed >= 1.0 && sent < total {
                    owed -= 1.0;
                    sent += 1;
                    let e = workload.next(Utc::now()).with_published_at(Utc::now());
                    for m in workload.messages(&e) {
                        let bus = bus.clone();
                        publishing.push(async move { bus.publish(&m).await });
                    }
                }
            }
            Some(r) = publishing.next(), if !publishing.is_empty() => { r?; }
        }
    }
    while let Some(r) = publishing.next().await {
        r?;
    }
    let offered_secs = started.elapsed().as_secs_f64();
    // Let the tail drain: until everything published was settled (or 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut receiver = bus.subscribe(mirror_bus::SQL_WRITER_SUBSCRIPTION).await?;
    loop {
        use mirror_bus::Receiver;
        let idle =
            matches!(receiver.backlog().await, Ok(Some(b)) if b.pending == 0 && b.in_flight == 0);
        if idle || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    writer.await??;
    scratch.drop(Some(&bus)).await;
    let mut l = latencies.lock().expect("latency lock").clone();
    l.sort_by(|a, b| a.total_cmp(b));
    Ok(Row {
        scenario: "steady".into(),
        store: D::NAME.into(),
        mode: mode_name(mode),
        offered_per_sec: Some(rate),
        events: l.len(),
        seconds: offered_secs,
        events_per_sec: total as f64 / offered_secs,
        p50_ms: percentile(&l, 50.0),
        p95_ms: percentile(&l, 95.0),
        p99_ms: percentile(&l, 99.0),
        peak_rss_mib: None,
        db_cpu_us_per_event: None,
        writer_cpu_us_per_event: None,
    })
}

/// Progress on stderr: step n of N and what it does.
struct Progress {
    steps: usize,
    step: std::sync::atomic::AtomicUsize,
    started: Instant,
}

impl Progress {
    fn begin(&self, what: &str) {
        let n = self.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        eprintln!(
            "bench [{n}/{}] {:>5.1}s {what}",
            self.steps,
            self.started.elapsed().as_secs_f64()
        );
    }
    fn note(&self, what: &str) {
        eprintln!(
            "bench        {:>5.1}s   {what}",
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// A fixed single-core workload, in ms: 2 Mi inserts into a hash map, as
/// many lookups, a sort of its keys (memory- and cache-bound, like a
/// database). How fast a core of this machine is at the moment, to read the
/// figures against: on the shared development machine the same binaries
/// drained anywhere from 9,000 to 21,000 events/s within one day while a pure
/// ALU loop ran at the same speed, so it measures memory, not arithmetic.
fn calibration_ms() -> f64 {
    let started = Instant::now();
    let n = 1usize << 21;
    let mut map = std::collections::HashMap::with_capacity(n);
    // xorshift64: the lookups replay the inserts' sequence from the same seed.
    let xorshift = |x: &mut u64| {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    };
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut x = SEED;
    for i in 0..n as u64 {
        map.insert(xorshift(&mut x), i);
    }
    let mut y = SEED;
    let mut found = 0u64;
    for _ in 0..n {
        found += map.get(&xorshift(&mut y)).copied().unwrap_or(0) & 1;
    }
    let mut keys: Vec<u64> = map.into_keys().collect();
    keys.sort_unstable();
    std::hint::black_box((found, keys));
    started.elapsed().as_secs_f64() * 1000.0
}

/// The 1-minute load average, to read the figures against (the machine is shared).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One store's rows: a drain per mode, the separate writer process (when
/// its binary is there), the raw limit, and steady `--rate` per mode.
async fn store_rows<D: Db>(
    args: &BenchArgs,
    db: &D,
    modes: &[ApplyMode],
    writer_bin: Option<&std::path::Path>,
    progress: &Progress,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &mode in modes {
        progress.begin(&format!("{}: drain, {}", D::NAME, mode.as_str()));
        rows.push(drain(args, db, mode, progress).await?);
    }
    if let Some(bin) = writer_bin {
        progress.begin(&format!(
            "{}: drain, batched, by a separate sql-writer process",
            D::NAME
        ));
        rows.push(drain_process(args, db, bin, progress).await?);
    }
    progress.begin(&format!("{}: raw database limit", D::NAME));
    rows.push(raw(args, db, progress).await?);
    for &mode in modes {
        progress.begin(&format!(
            "{}: steady {} events/s, {}",
            D::NAME,
            args.rate,
            mode.as_str()
        ));
        rows.push(steady(args, db, mode, args.rate, progress).await?);
    }
    Ok(rows)
}

/// Batched drain ÷ raw among `rows` (one store's).
fn ratio_of(rows: &[Row]) -> Option<f64> {
    let drain = rows
        .iter()
        .find(|r| r.scenario == "drain" && r.mode == "batched")?;
    let raw = rows.iter().find(|r| r.scenario.starts_with("raw"))?;
    Some(drain.events_per_sec / raw.events_per_sec)
}

pub async fn run(args: BenchArgs, json: bool) -> Result<u8> {
    let load_before = load_average();
    let calibration_before = calibration_ms();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let modes: Vec<ApplyMode> = if args.skip_per_event {
        vec![ApplyMode::Batched]
    } else {
        vec![ApplyMode::PerEvent, ApplyMode::Batched]
    };
    let writer_bin = writer_binary(&args);
    let postgres = Postgres::new(&args)?;
    let sqlserver = SqlServer::from_env()?;
    let per_store = modes.len() * 2 + 1 + usize::from(writer_bin.is_some());
    let progress = Progress {
        steps: per_store * (1 + usize::from(sqlserver.is_some())) + args.rates.len(),
        step: Default::default(),
        started: Instant::now(),
    };
    eprintln!(
        "bench: {} events per drain, mix dm={} group={} duplicates={} reordered={}, batch {} × {} lanes",
        args.events, args.dm_share, args.group_size, args.duplicate_rate, args.reorder_rate, args.batch_size, args.concurrency
    );
    if let Some(only) = args.only {
        // One figure, for tuning: no table, no goals.
        eprintln!(
            "bench: single-core calibration (hash map + sort) {:.0} ms (lower is faster)",
            calibration_ms()
        );
        let row = match only {
            Only::Raw => raw(&args, &postgres, &progress).await?,
            Only::Drain => drain(&args, &postgres, ApplyMode::Batched, &progress).await?,
            Only::Process => {
                let bin = writer_bin
                    .as_ref()
                    .context("no sql-writer binary next to this one")?;
                drain_process(&args, &postgres, bin, &progress).await?
            }
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&row)?);
        } else {
            println!(
                "{}: {:.0} events/s{}",
                row.scenario,
                row.events_per_sec,
                row.peak_rss_mib
                    .map(|m| format!(", peak RSS {m:.1} MiB"))
                    .unwrap_or_default()
                    + &row
                        .db_cpu_us_per_event
                        .map(|c| format!(", DB CPU {c:.1} µs/event"))
                        .unwrap_or_default()
                    + &row
                        .writer_cpu_us_per_event
                        .map(|c| format!(", writer CPU {c:.1} µs/event"))
                        .unwrap_or_default()
            );
        }
        return Ok(0);
    }
    if writer_bin.is_none() {
        eprintln!(
            "bench: no sql-writer binary next to this one (cargo build --release -p sql-writer), \
             so no writer-process row"
        );
    }
    let mut rows = store_rows(&args, &postgres, &modes, writer_bin.as_deref(), &progress).await?;
    // The goals are PostgreSQL's: read them off its rows before anything else joins them.
    let ratio = ratio_of(&rows);
    let find = |scenario: &str, mode: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.mode == mode)
            .cloned()
    };
    let batched_drain = find("drain", "batched");
    let process_drain = find("drain, sql-writer process", "batched");
    let at_goal_rate = find("steady", "batched").and_then(|r| r.p95_ms);
    let mut curve = Vec::new();
    for &rate in &args.rates {
        progress.begin(&format!("latency curve: {rate} events/s, batched"));
        let row = steady(&args, &postgres, ApplyMode::Batched, rate, &progress).await?;
        curve.push(row.clone());
        rows.push(Row {
            scenario: "curve".into(),
            ..row
        });
    }
    let mssql_rows = match &sqlserver {
        Some(db) => store_rows(&args, db, &modes, writer_bin.as_deref(), &progress).await?,
        None => Vec::new(),
    };
    let mssql_ratio = ratio_of(&mssql_rows);
    rows.extend(mssql_rows);
    let load_after = load_average();
    let calibration_after = calibration_ms();

    let best_rate = curve
        .iter()
        .filter(|r| r.p95_ms.is_some_and(|p| p <= 200.0))
        .filter_map(|r| r.offered_per_sec)
        .max();

    let goals = [
        (
            "≥ 25,000 events/s (batched drain)",
            batched_drain.as_ref().map(|d| d.events_per_sec >= 25_000.0),
        ),
        ("≥ 0.45 × raw", ratio.map(|r| r >= 0.45)),
        (
            "p95 ≤ 50 ms at the --rate (batched)",
            at_goal_rate.map(|p| p <= 50.0),
        ),
        (
            "peak RSS ≤ 64 MiB (the sql-writer process)",
            process_drain
                .as_ref()
                .and_then(|d| d.peak_rss_mib)
                .map(|m| m <= 64.0),
        ),
    ];
    if json {
        println!(
            "{}",
            serde_json::json!({
                "rows": rows,
                "writer_over_raw": ratio,
                "highest_rate_with_p95_within_200ms": best_rate,
                "cores": cores,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "calibration_ms_before": calibration_before,
                "calibration_ms_after": calibration_after,
                "goals": goals.iter().map(|(g, ok)| serde_json::json!({"goal": g, "met": ok})).collect::<Vec<_>>(),
                "sqlserver": if sqlserver.is_some() { serde_json::json!({"writer_over_raw": mssql_ratio}) } else { serde_json::json!("skipped: MSSQL_URL not set") },
            })
        );
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "scenario",
        "store",
        "mode",
        "offered/s",
        "events",
        "seconds",
        "events/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "peak RSS MiB",
        "DB CPU µs/event",
        "writer CPU µs/event",
    ]);
    let f = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    for r in &rows {
        t.add_row([
            r.scenario.clone(),
            r.store.clone(),
            r.mode.clone(),
            r.offered_per_sec
                .map(|x| x.to_string())
                .unwrap_or_else(|| "–".into()),
            r.events.to_string(),
            format!("{:.2}", r.seconds),
            format!("{:.0}", r.events_per_sec),
            f(r.p50_ms),
            f(r.p95_ms),
            f(r.p99_ms),
            f(r.peak_rss_mib),
            f(r.db_cpu_us_per_event),
            f(r.writer_cpu_us_per_event),
        ]);
    }
    println!("{t}");
    match ratio {
        Some(r) => println!("writer (batched drain) ÷ raw set-based SQL: {r:.2}"),
        None => println!("writer ÷ raw: –"),
    }
    match best_rate {
        Some(r) => println!("highest offered rate with p95 ≤ 200 ms: {r} events/s"),
        None => println!(
            "highest offered rate with p95 ≤ 200 ms: none of {:?}",
            args.rates
        ),
    }
    for (goal, met) in goals {
        println!(
            "goal {goal}: {}",
            match met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            }
        );
    }
    match (&sqlserver, mssql_ratio) {
        (None, _) => println!("SQL Server: skipped: MSSQL_URL not set"),
        (Some(_), Some(r)) => println!(
            "SQL Server (rows above, no latency curve; the goals are PostgreSQL's): writer ÷ raw {r:.2}"
        ),
        (Some(_), None) => println!("SQL Server: rows above; writer ÷ raw: –"),
    }
    println!(
        "peak RSS: the sql-writer process row is that process's own VmHWM; the in-process drain rows are this \
         process's VmHWM reset after publishing (the writer's peak plus what the bench itself still holds)"
    );
    let f1 = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "?".into());
    println!(
        "machine: {cores} cores, 1-minute load average {} before, {} after (NATS, PostgreSQL and anything else share them); \
         single-core calibration (hash map + sort) {calibration_before:.0} ms before, {calibration_after:.0} ms after (lower is faster)",
        f1(load_before),
        f1(load_after)
    );
    println!(
        "CPU µs/event: the local PostgreSQL server's processes (DB) and the sql-writer process (writer), \
         from /proc, over the drain: cost per event, steadier than events/s on shared cores"
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQL Server rows cannot run here; what can be checked is that the
    /// writer process would be pointed at the scratch database.
    #[test]
    fn a_sql_server_writer_process_gets_the_scratch_database() {
        let ado = "Server=tcp:db.example.net,1433;Database=mirror;User Id=w;Password=p;TrustServerCertificate=true";
        let db = SqlServer {
            ado: SecretString::from(ado.to_owned()),
            base: MssqlConfig::from_ado(ado).unwrap(),
        };
        let env = db.writer_env("rm_bench_raw_x", 5);
        assert_eq!(env[0], ("MIRROR_STORE", "mssql".to_owned()));
        let config = MssqlConfig::from_ado(&env[1].1).unwrap();
        assert_eq!(config.database(), Some("rm_bench_raw_x"));
        assert_eq!(config.pool_size, 5);
        assert_eq!(
            db.config("rm_bench_raw_x", 5).database(),
            Some("rm_bench_raw_x")
        );
    }
}
