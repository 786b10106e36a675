//! `mirrorctl bench-consistency`: rows compared per second by the consistency
//! check at a given mirror size, with no differences and with a given share of
//! differing rows, on the local PostgreSQL.
//!
//! Setup (not measured): a scratch database with `rows` follow edges
//! inserted by one `INSERT … SELECT generate_series` (the writer's path is
//! measured by `mirrorctl bench`; here only the check is), and the same
//! documents held in memory as the source. Then: one check with no
//! differences; then `diff_pct` % of the rows get another `state` and the
//! check runs again. Rows compared per second = mirrored rows / wall time of
//! the check (source hashing, checksum queries, leaf reads, comparison).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use chrono::TimeZone;
use clap::Args;
use indicatif::ProgressBar;
use mirror_schema::{
    EventType, FollowEdgePayload, FollowSource, FollowState, MirrorEvent, Payload, Subject,
};
use mirror_store::postgres::{PgConfig, PgStore};
use secrecy::SecretString;
use serde::Serialize;

use super::source::MemorySource;
use super::{check, Module, Options};

#[derive(Debug, Clone, Args)]
pub struct BenchConsistencyArgs {
    /// Mirrored rows
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Share of rows made to differ in the second run, in percent
    #[arg(long, default_value_t = 1.0)]
    pub diff_pct: f64,
    /// PostgreSQL server (a scratch database is created and dropped on it)
    #[arg(
        long,
        env = "BENCH_PG_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_url: String,
}

/// One measured check.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyFigures {
    pub scenario: String,
    pub rows: u64,
    pub differing_rows: u64,
    pub found: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub checksum_queries: u64,
    pub differing_buckets: u64,
    pub sql_rows_read: u64,
}

const TARGETS: u64 = 1000;

fn edge(i: u64) -> Result<MirrorEvent> {
    let base = chrono::Utc.with_ymd_and_hms(2025, 10, 1, 0, 0, 0).unwrap();
    let time = base + chrono::Duration::milliseconds(i as i64);
    let subject = Subject::FollowEdge {
        follower_user_id: format!("u{}", i / TARGETS),
        target_user_id: format!("t{}", i % TARGETS),
    };
    let source = MirrorEvent::firestore_source("bench", &subject);
    Ok(MirrorEvent::new(
        EventType::FollowEdgeCreate,
        subject,
        time,
        source,
        Payload::FollowEdge(FollowEdgePayload {
            state: FollowState::Accepted,
            source: FollowSource::Web,
            created_at: time,
        }),
    )?)
}

async fn measure(
    store: &PgStore,
    source: &MemorySource,
    scenario: &str,
    rows: u64,
    differing: u64,
) -> Result<ConsistencyFigures> {
    let opts = Options {
        module: Module::Follow,
        lag: Duration::ZERO,
        grace: Duration::ZERO,
        ..Options::default()
    };
    let started = Instant::now();
    let (report, _) = check(store, source, &opts, &ProgressBar::hidden()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let found = report.total.drifted();
    ensure!(
        found == differing,
        "{scenario}: the check found {found} differences, {differing} were made"
    );
    Ok(ConsistencyFigures {
        scenario: scenario.to_owned(),
        rows,
        differing_rows: differing,
        found,
        seconds,
        rows_per_sec: rows as f64 / seconds,
        checksum_queries: report.total.checksum_queries,
        differing_buckets: report.total.differing_buckets,
        sql_rows_read: report.total.rows_read,
    })
}

/// Run both scenarios on a scratch database.
pub async fn run(args: &BenchConsistencyArgs) -> Result<Vec<ConsistencyFigures>> {
    let name = format!("rm_bench_consistency_{}", std::process::id());
    let server = SecretString::from(args.pg_url.clone());
    let url = match args.pg_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => anyhow::bail!("--pg-url must end in /<database>"),
    };
    let db = SecretString::from(url.clone());
    mirror_store::postgres::create_database_if_missing(&db).await?;
    let result = async {
        let store = PgStore::connect(&PgConfig {
            url: db.clone(),
            pool_size: 4,
            statement_timeout: Duration::from_secs(600),
        })
        .await?;
        store.migrate().await?;
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .context("connect for setup")?;
        tokio::spawn(conn);
        eprintln!("bench-consistency: inserting {} follow edges", args.rows);
        client
            .execute(
                "INSERT INTO mirror.follow_edge (follower_user_id, target_user_id, state, source, created_at,
                                                 source_version, event_id, sync_source)
                 SELECT 'u' || (i / 1000), 't' || (i % 1000), 'accepted', 'web', t, t, gen_random_uuid(), 'bench'
                   FROM generate_series(0::bigint, $1::bigint - 1) AS i,
                        LATERAL (SELECT timestamptz '2025-10-01 00:00:00+00' + i * interval '1 millisecond' AS t) AS x",
                &[&(args.rows as i64)],
            )
            .await?;
        client.batch_execute("ANALYZE mirror.follow_edge").await?;
        let events = (0..args.rows).map(edge).collect::<Result<Vec<_>>>()?;
        let source = MemorySource {
            project: "bench".into(),
            events,
        };
        let mut figures = vec![measure(&store, &source, "no differences", args.rows, 0).await?];
        // Every (100 / diff_pct)-th target gets another state.
        let every = (100.0 / args.diff_pct).round().max(1.0) as i32;
        let changed = client
            .execute(
                "UPDATE mirror.follow_edge SET state = 'pending'
                  WHERE substr(target_user_id, 2)::int % $1 = 0",
                &[&every],
            )
            .await?;
        figures.push(
            measure(
                &store,
                &source,
                &format!("{} % differences", args.diff_pct),
                args.rows,
                changed,
            )
            .await?,
        );
        Ok::<_, anyhow::Error>(figures)
    }
    .await;
    let _ = mirror_store::postgres::drop_database(&server, &db).await;
    result
}

/// The figures as a table.
pub fn to_table(figures: &[ConsistencyFigures]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "scenario",
        "rows",
        "differing",
        "found",
        "seconds",
        "rows compared / s",
        "checksum queries",
        "differing buckets",
        "SQL rows read",
    ]);
    for f in figures {
        t.add_row([
            f.scenario.clone(),
            f.rows.to_string(),
            f.differing_rows.to_string(),
            f.found.to_string(),
            format!("{:.2}", f.seconds),
            format!("{:.0}", f.rows_per_sec),
            f.checksum_queries.to_string(),
            f.differing_buckets.to_string(),
            f.sql_rows_read.to_string(),
        ]);
    }
    t.to_string()
}
