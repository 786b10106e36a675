//! `mirrorctl bench`: throughput, latency and memory of the writer on the local
//! NATS and PostgreSQL, measured in one run and printed as figures and ratios.
//!
//! Each scenario gets a fresh database and a fresh topic. Throughput is the
//! drain rate of a pre-filled subscription; latency is source version (the
//! event's `time`, set at publish) to commit, measured by a timing decorator
//! around the store port while events are published at a steady rate. Memory
//! is the process's peak resident set (`VmHWM`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Args;
use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig};
use mirror_bus::{EventBus, OutboundMessage};
use mirror_schema::*;
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::{
    ApplyOutcome, Checkpoint, DeadLetterRecord, MetricSample, MirrorState, MirrorStore, StoreError,
    StoredDeadLetter,
};
use secrecy::SecretString;
use serde::Serialize;
use sql_writer::{Deps, WriterSettings};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Events per throughput scenario
    #[arg(long, default_value_t = 4000)]
    pub events: usize,
    /// Events per second in the latency scenario
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds of the latency scenario
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// PostgreSQL server (a scratch database is created and dropped on it)
    #[arg(
        long,
        env = "BENCH_PG_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_url: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub scenario: String,
    pub events: usize,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A store decorator recording source-version-to-commit latency of applied events.
struct Timed<S> {
    inner: S,
    latencies_ms: Arc<Mutex<Vec<f64>>>,
}

impl<S: MirrorStore> MirrorStore for Timed<S> {
    async fn apply(&self, event: &MirrorEvent) -> Result<ApplyOutcome, StoreError> {
        let r = self.inner.apply(event).await;
        self.note(
            std::slice::from_ref(event),
            r.iter().cloned().map(Ok).collect(),
        );
        r
    }
    async fn apply_batch(
        &self,
        events: &[MirrorEvent],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let r = self.inner.apply_batch(events).await?;
        self.note(events, r.clone());
        Ok(r)
    }
    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<(), StoreError> {
        self.inner.record_dead_letter(record).await
    }
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.inner.list_dead_letters(limit).await
    }
    async fn record_replay(&self, key: &str, at: chrono::DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.record_replay(key, at).await
    }
    async fn load_checkpoint(
        &self,
        module: &str,
        shard: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.load_checkpoint(module, shard).await
    }
    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.inner.save_checkpoint(checkpoint).await
    }
    async fn record_metrics(&self, samples: &[MetricSample]) -> Result<(), StoreError> {
        self.inner.record_metrics(samples).await
    }
    async fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.inner.table_counts().await
    }
    async fn snapshot(&self) -> Result<MirrorState, StoreError> {
        self.inner.snapshot().await
    }
}

impl<S> Timed<S> {
    fn note(&self, events: &[MirrorEvent], results: Vec<Result<ApplyOutcome, StoreError>>) {
        let now = Utc::now();
        let mut l = self.latencies_ms.lock().expect("latency lock");
        for (e, r) in events.iter().zip(results) {
            if matches!(r, Ok(ApplyOutcome::Applied)) {
                l.push((now - e.time()).num_microseconds().unwrap_or(0) as f64 / 1000.0);
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

/// A message event at `time` in one of 200 conversations; every 4th is an edit.
fn synthetic(i: usize, time: chrono::DateTime<Utc>) -> MirrorEvent {
    let conversation = format!("bench-c{}", i % 200);
    let message = format!("m{}", i / 4);
    let op = if i % 4 == 3 { Op::Update } else { Op::Create };
    let subject = Subject::Message {
        conversation_id: conversation,
        message_id: message,
    };
    let source = MirrorEvent::firestore_source("bench", &subject);
    MirrorEvent::new(
        EventType::of(EventFamily::Message, op).expect("message type"),
        subject,
        time,
        source,
        Payload::Message(MessagePayload {
            author_user_id: format!("u{}", i % 50),
            body_text: "benchmark message body, about the size of a chat line".into(),
            attachments: None,
            external_media: None,
            created_at: time,
            edited_at: (op == Op::Update).then_some(time),
            deleted_at: None,
            client_message_id: None,
        }),
    )
    .expect("synthetic event is valid")
}

struct Scratch {
    server: SecretString,
    db_url: SecretString,
    topic: String,
    nats_url: String,
}

impl Scratch {
    async fn new(args: &BenchArgs, label: &str) -> Result<Scratch> {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let name = format!("rm_bench_{label}_{suffix}");
        let base = args
            .pg_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .context("--pg-url must end in /<database>")?;
        let db_url = SecretString::from(format!("{base}/{name}"));
        mirror_store::postgres::create_database_if_missing(&db_url).await?;
        Ok(Scratch {
            server: SecretString::from(args.pg_url.clone()),
            db_url,
            topic: format!("rmb-{label}-{suffix}"),
            nats_url: args.nats_url.clone(),
        })
    }

    async fn connect(&self) -> Result<(JetStreamBus, PgStore)> {
        let bus = JetStreamBus::connect(JetStreamConfig {
            url: self.nats_url.clone(),
            topic: self.topic.clone(),
            ..JetStreamConfig::default()
        })
        .await?;
        bus.ensure_topology().await?;
        let store = PgStore::connect(&PgConfig {
            url: self.db_url.clone(),
            pool_size: 8,
            statement_timeout: Duration::from_secs(30),
        })
        .await?;
        store.migrate().await?;
        Ok((bus, store))
    }

    async fn drop(self, bus: &JetStreamBus) {
        let _ = bus.delete_topology().await;
        let _ = mirror_store::postgres::drop_database(&self.server, &self.db_url).await;
    }
}

async fn throughput(
    args: &BenchArgs,
    label: &str,
    batch_size: usize,
    concurrency: usize,
) -> Result<Figures> {
    let scratch = Scratch::new(args, label).await?;
    let (bus, store) = scratch.connect().await?;
    let base = Utc::now();
    for i in 0..args.events {
        bus.publish(&OutboundMessage::from_event(&synthetic(
            i,
            base + chrono::Duration::microseconds(i as i64),
        )))
        .await?;
    }
    let bus = Arc::new(bus);
    let settings = WriterSettings {
        batch_size,
        concurrency,
        exit_when_idle: true,
        receive_wait: Duration::from_millis(300),
        metrics_flush_every: None,
        ..WriterSettings::default()
    };
    let started = Instant::now();
    let report = sql_writer::run(
        Deps {
            bus: bus.clone(),
            store: Arc::new(store),
        },
        settings,
        std::future::pending(),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    scratch.drop(&bus).await;
    let done = (report.applied + report.duplicate + report.stale) as usize;
    Ok(Figures {
        scenario: format!("drain, batch {batch_size} × {concurrency} workers"),
        events: done,
        seconds: secs,
        events_per_sec: done as f64 / secs,
        p50_ms: None,
        p95_ms: None,
        p99_ms: None,
    })
}

async fn latency(args: &BenchArgs) -> Result<Figures> {
    let scratch = Scratch::new(args, "lat").await?;
    let (bus, store) = scratch.connect().await?;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let store = Timed {
        inner: store,
        latencies_ms: latencies.clone(),
    };
    let bus = Arc::new(bus);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let settings = WriterSettings {
        batch_size: 64,
        concurrency: 2,
        receive_wait: Duration::from_millis(100),
        metrics_flush_every: None,
        ..WriterSettings::default()
    };
    let writer = tokio::spawn(sql_writer::run(
        Deps {
            bus: bus.clone(),
            store: Arc::new(store),
        },
        settings,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let total = (args.rate * args.seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut tick = tokio::time::interval(interval);
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        bus.publish(&OutboundMessage::from_event(&synthetic(i, Utc::now())))
            .await?;
    }
    // Let the tail drain.
    let deadline = Instant::now() + Duration::from_secs(10);
    while latencies.lock().expect("latency lock").len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    writer.await??;
    scratch.drop(&bus).await;
    let mut l = latencies.lock().expect("latency lock").clone();
    l.sort_by(|a, b| a.total_cmp(b));
    Ok(Figures {
        scenario: format!("steady {} ev/s, end to end", args.rate),
        events: l.len(),
        seconds: secs,
        events_per_sec: l.len() as f64 / secs,
        p50_ms: percentile(&l, 50.0),
        p95_ms: percentile(&l, 95.0),
        p99_ms: percentile(&l, 99.0),
    })
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub async fn run(args: BenchArgs, json: bool) -> Result<u8> {
    eprintln!(
        "bench: {} events per drain scenario, latency at {} ev/s for {} s",
        args.events, args.rate, args.seconds
    );
    eprintln!("bench: [1/3] drain, one event per transaction, one worker");
    let single = throughput(&args, "single", 1, 1).await?;
    eprintln!("bench: [2/3] drain, batched transactions, four workers");
    let batched = throughput(&args, "batched", 64, 4).await?;
    eprintln!("bench: [3/3] steady-rate latency");
    let lat = latency(&args).await?;
    let ratio = batched.events_per_sec / single.events_per_sec;
    let rss = peak_rss_mib();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "scenarios": [single, batched, lat],
                "batched_over_single_throughput": ratio,
                "p95_over_200ms_target": lat.p95_ms.map(|p| p / 200.0),
                "peak_rss_mib": rss,
            })
        );
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "scenario", "events", "seconds", "events/s", "p50 ms", "p95 ms", "p99 ms",
    ]);
    let f = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    for s in [&single, &batched, &lat] {
        t.add_row([
            s.scenario.clone(),
            s.events.to_string(),
            format!("{:.2}", s.seconds),
            format!("{:.0}", s.events_per_sec),
            f(s.p50_ms),
            f(s.p95_ms),
            f(s.p99_ms),
        ]);
    }
    println!("{t}");
    println!("batched / single throughput: {ratio:.1}×");
    if let Some(p95) = lat.p95_ms {
        println!(
            "p95 latency / 200 ms target: {:.2} ({})",
            p95 / 200.0,
            if p95 < 200.0 {
                "within target"
            } else {
                "over target"
            }
        );
    }
    if let Some(rss) = rss {
        println!("peak resident memory of this process (publisher + writer + bench): {rss:.1} MiB");
    }
    Ok(0)
}
