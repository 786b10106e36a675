//! `mirrorctl consistency`: compare the source (Firestore, or a local export)
//! with the SQL mirror, report drift per table, and optionally repair it
//! through the pipeline.
//!
//! How it compares without reading the mirror row by row: see
//! [`mirror_store::checksum`]. Per table, the database returns the checksums
//! of 256 key-hash buckets (one `GROUP BY` query); the source's documents are
//! hashed alike in memory; buckets that agree are done. A differing bucket
//! with more than `leaf_rows` rows on either side is split 256 ways (one
//! query per level for all such buckets); at the leaves the rows of the
//! differing buckets are read and compared field by field.
//!
//! Classification of one key (a live source document `S`, a SQL row `R`):
//!
//! | S | R | finding |
//! | --- | --- | --- |
//! | live | none, or a placeholder conversation | `missing_in_sql` |
//! | none | live | `missing_in_source` (a delete that never reached SQL) |
//! | live | tombstone | `tombstone_mismatch` |
//! | live | live, other update time | `version_mismatch` (SQL behind or ahead) |
//! | live | live, same update time | `field_mismatch` naming the fields, if any differ |
//!
//! In flight: a difference where the source document's update time or the
//! SQL row's version is after the watermark (`now − lag`) is not reported at
//! once. After the first pass the check waits `grace`, reads those documents
//! and rows again and reports what still differs; a difference that is again
//! newer than the (new) watermark is counted as `in_flight`, not as drift.

pub mod bench;
pub mod cli;
pub mod metrics;
pub mod repair;
pub mod report;
pub mod source;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use mirror_schema::{format_time, MirrorEvent};
use mirror_store::checksum::{
    bucket_key, canonical_row, key_of, BucketSum, ChecksumStore, FieldKind, RowDigest, Scope,
    StoredRow, Table, MAX_LEVEL,
};
use mirror_store::StoreError;

pub use report::{Finding, FindingKind, Report, TableReport};
pub use source::{ExportSource, PagerSource, SourceDocs, SourceError, SourceReader};

/// Which collections a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Module {
    /// Conversations (with participants), messages and blocks.
    Dm,
    /// Follow edges.
    Follow,
    /// Both.
    All,
}

impl Module {
    pub fn tables(self, conversation: bool) -> Vec<Table> {
        match self {
            _ if conversation => vec![Table::DmConversation, Table::DmMessage],
            Module::Dm => vec![Table::DmConversation, Table::DmMessage, Table::DmBlock],
            Module::Follow => vec![Table::FollowEdge],
            Module::All => Table::ALL.to_vec(),
        }
    }
}

/// Default lag behind now under which differences count as in flight.
pub const DEFAULT_LAG: Duration = Duration::from_secs(60);
/// Default wait before in-flight differences are checked again.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default largest bucket that is read row by row instead of split further.
pub const DEFAULT_LEAF_ROWS: u64 = 256;
/// Default drift percentage above which the check fails.
pub const DEFAULT_THRESHOLD_PCT: f64 = 0.5;

/// What to check and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub module: Module,
    pub conversation: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub threshold_pct: f64,
    pub lag: Duration,
    pub grace: Duration,
    pub leaf_rows: u64,
    /// Examples kept per table.
    pub examples: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            module: Module::All,
            conversation: None,
            since: None,
            threshold_pct: DEFAULT_THRESHOLD_PCT,
            lag: DEFAULT_LAG,
            grace: DEFAULT_GRACE,
            leaf_rows: DEFAULT_LEAF_ROWS,
            examples: 20,
        }
    }
}

/// Why a check failed to run (as opposed to finding drift).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("reading the mirror: {0}")]
    Store(#[from] StoreError),
}

/// One source document prepared for comparison.
struct SourceDoc {
    event: MirrorEvent,
    digest: RowDigest,
}

/// The source documents of one table, by key.
type SourceTable = BTreeMap<String, SourceDoc>;

fn source_tables(
    docs: &SourceDocs,
    tables: &[Table],
    scope: &Scope,
    dialect: mirror_store::checksum::Dialect,
) -> HashMap<Table, SourceTable> {
    let mut out: HashMap<Table, SourceTable> =
        tables.iter().map(|&t| (t, BTreeMap::new())).collect();
    for e in &docs.events {
        let table = Table::of(e.subject());
        let Some(t) = out.get_mut(&table) else {
            continue;
        };
        if let Some(c) = &scope.conversation {
            if e.subject().conversation_id() != Some(c.as_str()) {
                continue;
            }
        }
        if scope.since.is_some_and(|s| e.time() < s) {
            continue;
        }
        let Some(fields) = canonical_row(e, dialect) else {
            continue;
        };
        let key = key_of(e.subject());
        let digest = RowDigest::new(dialect, bucket_key(table, &key), &fields);
        // A reader returns each document once; if not, the newest wins.
        let newer = t
            .get(&key)
            .is_none_or(|old| (old.event.time(), old.event.id()) < (e.time(), e.id()));
        if newer {
            t.insert(
                key,
                SourceDoc {
                    event: e.clone(),
                    digest,
                },
            );
        }
    }
    out
}

/// Compare one key; `None` when consistent.
fn classify(
    table: Table,
    key: &str,
    source: Option<&SourceDoc>,
    sql: Option<&StoredRow>,
    dialect: mirror_store::checksum::Dialect,
    since_scoped: bool,
) -> Option<Finding> {
    let finding = |kind: FindingKind, detail: String| Finding {
        table,
        key: key.to_owned(),
        kind,
        detail,
        source_version: source.map(|s| format_time(&s.event.time())),
        sql_version: sql.and_then(|r| r.version().map(str::to_owned)),
        sql_state: sql.map(|r| r.state().to_owned()),
        since_scoped,
    };
    match (source, sql) {
        (None, None) => None,
        (Some(_), None) => Some(finding(FindingKind::MissingInSql, "no row in SQL".into())),
        (Some(_), Some(r)) if r.state() == "placeholder" => Some(finding(
            FindingKind::MissingInSql,
            "only a placeholder row in SQL (its messages arrived, the conversation did not)".into(),
        )),
        (None, Some(r)) if r.state() == "live" => Some(finding(
            FindingKind::MissingInSource,
            if since_scoped {
                "live in SQL, no document updated since --since in the source (deleted, or SQL ahead of an older document)".into()
            } else {
                "live in SQL, no document in the source (a delete that never reached SQL)".into()
            },
        )),
        (None, Some(_)) => None,
        (Some(s), Some(r)) => {
            let expected = canonical_row(&s.event, dialect).unwrap_or_default();
            if r.state() == "tombstone" {
                return Some(finding(
                    FindingKind::TombstoneMismatch,
                    format!(
                        "deleted in SQL at {}, live in the source",
                        r.version().unwrap_or("?")
                    ),
                ));
            }
            let source_version = expected.first().cloned().flatten();
            if source_version.as_deref() != r.version() {
                let ahead = r.version() > source_version.as_deref();
                return Some(finding(
                    FindingKind::VersionMismatch,
                    if ahead {
                        "SQL holds a newer version than the source".into()
                    } else {
                        "SQL holds an older version (an update never reached SQL)".into()
                    },
                ));
            }
            let differing: Vec<String> = table
                .fields()
                .iter()
                .zip(expected.iter().zip(r.fields.iter()))
                .filter(|((_, kind), (e, a))| !field_equal(*kind, e.as_deref(), a.as_deref()))
                .map(|((name, _), (e, a))| {
                    format!("{name}: {} → {}", short(e.as_deref()), short(a.as_deref()))
                })
                .collect();
            if differing.is_empty() {
                None
            } else {
                Some(finding(
                    FindingKind::FieldMismatch,
                    format!("source → SQL: {}", differing.join("; ")),
                ))
            }
        }
    }
}

fn field_equal(kind: FieldKind, expected: Option<&str>, actual: Option<&str>) -> bool {
    match (kind, expected, actual) {
        (FieldKind::Json, Some(e), Some(a)) => {
            match (
                serde_json::from_str::<serde_json::Value>(e),
                serde_json::from_str::<serde_json::Value>(a),
            ) {
                (Ok(e), Ok(a)) => e == a,
                _ => e == a,
            }
        }
        _ => expected == actual,
    }
}

fn short(s: Option<&str>) -> String {
    match s {
        None => "null".into(),
        Some(s) if s.chars().count() > 60 => {
            format!("{:?}…", s.chars().take(60).collect::<String>())
        }
        Some(s) => format!("{s:?}"),
    }
}

fn sums_of(
    source: &SourceTable,
    level: u8,
    parents: Option<&BTreeSet<u32>>,
) -> BTreeMap<u32, BucketSum> {
    let mut out: BTreeMap<u32, BucketSum> = BTreeMap::new();
    for doc in source.values() {
        if let Some(p) = parents {
            if level == 0 || !p.contains(&doc.digest.bucket(level - 1)) {
                continue;
            }
        }
        out.entry(doc.digest.bucket(level))
            .or_default()
            .add(doc.digest.row);
    }
    out
}

/// What one table's comparison found before rechecks.
struct TablePass {
    report: TableReport,
    findings: Vec<Finding>,
    /// Keys whose difference may still be in flight.
    pending: Vec<String>,
}

fn is_after(version: Option<&str>, watermark: &str) -> bool {
    version.is_some_and(|v| v > watermark)
}

async fn check_table<S: ChecksumStore>(
    store: &S,
    table: Table,
    source: &SourceTable,
    scope: &Scope,
    opts: &Options,
    watermark: &str,
    progress: &ProgressBar,
) -> Result<TablePass, StoreError> {
    let dialect = store.dialect();
    let mut report = TableReport::new(table);
    report.source_docs = source.len() as u64;
    let mut leaves: Vec<(u8, Vec<u32>)> = Vec::new();
    let mut parents: Option<BTreeSet<u32>> = None;
    for level in 0..=MAX_LEVEL {
        progress.set_message(format!("{}: checksums, level {level}", table.name()));
        let parent_list: Option<Vec<u32>> = parents.as_ref().map(|p| p.iter().copied().collect());
        let sql: BTreeMap<u32, BucketSum> = store
            .bucket_sums(table, scope, level, parent_list.as_deref())
            .await?
            .into_iter()
            .collect();
        let src = sums_of(source, level, parents.as_ref());
        if level == 0 {
            report.sql_rows = sql.values().map(|s| s.rows).sum();
        }
        report.buckets_compared +=
            sql.keys().chain(src.keys()).collect::<BTreeSet<_>>().len() as u64;
        report.checksum_queries += 1;
        let mut leaf = Vec::new();
        let mut descend = BTreeSet::new();
        for b in sql.keys().chain(src.keys()).collect::<BTreeSet<_>>() {
            let (s, q) = (
                src.get(b).copied().unwrap_or_default(),
                sql.get(b).copied().unwrap_or_default(),
            );
            if s == q {
                continue;
            }
            if level == MAX_LEVEL || s.rows.max(q.rows) <= opts.leaf_rows {
                leaf.push(*b);
            } else {
                descend.insert(*b);
            }
        }
        report.differing_buckets += (leaf.len() + descend.len()) as u64;
        if !leaf.is_empty() {
            leaves.push((level, leaf));
        }
        if descend.is_empty() {
            break;
        }
        parents = Some(descend);
    }

    let mut findings = Vec::new();
    let mut pending = Vec::new();
    for (level, buckets) in leaves {
        for chunk in buckets.chunks(65_536) {
            progress.set_message(format!(
                "{}: reading {} differing bucket(s) at level {level}",
                table.name(),
                chunk.len()
            ));
            let rows = store.rows_in_buckets(table, scope, level, chunk).await?;
            report.rows_read += rows.len() as u64;
            let wanted: BTreeSet<u32> = chunk.iter().copied().collect();
            let sql: BTreeMap<&str, &StoredRow> =
                rows.iter().map(|r| (r.key.as_str(), r)).collect();
            let mut keys: BTreeSet<&str> = sql.keys().copied().collect();
            keys.extend(
                source
                    .iter()
                    .filter(|(_, d)| wanted.contains(&d.digest.bucket(level)))
                    .map(|(k, _)| k.as_str()),
            );
            for key in keys {
                let s = source.get(key);
                let r = sql.get(key).copied();
                // A SQL row outside `--since` with no source document in scope is not ours to judge.
                if s.is_none() {
                    if let (Some(since), Some(r)) = (&scope.since, r) {
                        if r.version().is_some_and(|v| v < format_time(since).as_str()) {
                            continue;
                        }
                    }
                }
                let Some(f) = classify(table, key, s, r, dialect, scope.since.is_some()) else {
                    continue;
                };
                let newest_source = s.map(|d| format_time(&d.event.time()));
                if is_after(newest_source.as_deref(), watermark)
                    || is_after(r.and_then(|r| r.version()), watermark)
                {
                    pending.push(key.to_owned());
                } else {
                    findings.push(f);
                }
            }
        }
    }
    progress.inc(1);
    Ok(TablePass {
        report,
        findings,
        pending,
    })
}

/// Run the check. `now` is the reference time of the watermark (`Utc::now()` in production).
pub async fn check<S: ChecksumStore, R: SourceReader>(
    store: &S,
    reader: &R,
    opts: &Options,
    progress: &ProgressBar,
) -> Result<(Report, HashMap<(Table, String), MirrorEvent>), CheckError> {
    let started = std::time::Instant::now();
    let tables = opts.module.tables(opts.conversation.is_some());
    let scope = Scope {
        since: opts.since,
        conversation: opts.conversation.clone(),
    };
    progress.set_length(tables.len() as u64);
    progress.set_message("reading the source");
    let docs = reader.documents(opts.module, opts.since).await?;
    let dialect = store.dialect();
    let mut source = source_tables(&docs, &tables, &scope, dialect);
    let lag = chrono::Duration::from_std(opts.lag).unwrap_or(chrono::Duration::zero());
    let first_watermark = Utc::now() - lag;
    let watermark = format_time(&first_watermark);

    let mut reports = Vec::new();
    let mut findings = Vec::new();
    let mut pending: Vec<(Table, String)> = Vec::new();
    for &table in &tables {
        let pass = check_table(
            store,
            table,
            &source[&table],
            &scope,
            opts,
            &watermark,
            progress,
        )
        .await?;
        reports.push(pass.report);
        findings.extend(pass.findings);
        pending.extend(pass.pending.into_iter().map(|k| (table, k)));
    }

    // Differences that may still be in flight: look again after the grace period.
    let mut in_flight: BTreeMap<Table, u64> = BTreeMap::new();
    let rechecked = pending.len();
    if !pending.is_empty() {
        progress.set_message(format!(
            "{} difference(s) may be in flight: checking again in {:?}",
            pending.len(),
            opts.grace
        ));
        tokio::time::sleep(opts.grace).await;
        // Only documents changed since the first pass's watermark can have
        // moved on (for Firestore: a small read, not the whole collection).
        let recent_since = opts.since.max(Some(first_watermark));
        let fresh = reader.documents(opts.module, recent_since).await?;
        for (table, docs) in source_tables(&fresh, &tables, &scope, dialect) {
            source.entry(table).or_default().extend(docs);
        }
        let watermark = format_time(&(Utc::now() - lag));
        let mut by_table: BTreeMap<Table, Vec<String>> = BTreeMap::new();
        for (t, k) in pending {
            by_table.entry(t).or_default().push(k);
        }
        for (table, keys) in by_table {
            let rows = store.rows_by_key(table, &keys).await?;
            let sql: BTreeMap<&str, &StoredRow> =
                rows.iter().map(|r| (r.key.as_str(), r)).collect();
            for key in &keys {
                let s = source[&table].get(key);
                let r = sql.get(key.as_str()).copied();
                let Some(f) = classify(table, key, s, r, dialect, scope.since.is_some()) else {
                    continue;
                };
                let newest_source = s.map(|d| format_time(&d.event.time()));
                if is_after(newest_source.as_deref(), &watermark)
                    || is_after(r.and_then(|r| r.version()), &watermark)
                {
                    *in_flight.entry(table).or_default() += 1;
                } else {
                    findings.push(f);
                }
            }
        }
    }

    for r in &mut reports {
        let Some(table) = r.table else { continue };
        r.in_flight = in_flight.get(&table).copied().unwrap_or(0);
        for f in findings.iter().filter(|f| f.table == table) {
            r.count(f, opts.examples);
        }
    }
    let mut sources: HashMap<(Table, String), MirrorEvent> = HashMap::new();
    for f in &findings {
        if let Some(d) = source.get(&f.table).and_then(|t| t.get(&f.key)) {
            sources.insert((f.table, f.key.clone()), d.event.clone());
        }
    }
    let report = Report::new(
        reader.describe(),
        opts,
        reports,
        findings,
        docs.unmappable,
        rechecked,
        started.elapsed(),
    );
    progress.finish_and_clear();
    Ok((report, sources))
}
