//! The consistency report: per table counts and examples, rendered as a
//! terminal summary, JSON and a self-contained HTML page (inline CSS, no
//! scripts, no links, no external assets).
//!
//! Drift % of a table = findings / keys compared × 100, where keys compared =
//! source documents in scope + SQL rows missing in the source. The run fails
//! (exit 1) when the total drift is above the threshold.

use std::time::Duration;

use mirror_store::checksum::Table;
use serde::Serialize;

use super::source::Unmappable;
use super::Options;

/// What kind of difference a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    MissingInSql,
    MissingInSource,
    VersionMismatch,
    TombstoneMismatch,
    FieldMismatch,
}

impl FindingKind {
    pub fn label(self) -> &'static str {
        match self {
            FindingKind::MissingInSql => "missing in SQL",
            FindingKind::MissingInSource => "missing in source",
            FindingKind::VersionMismatch => "version mismatch",
            FindingKind::TombstoneMismatch => "tombstone mismatch",
            FindingKind::FieldMismatch => "field mismatch",
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub table: Table,
    /// The entity's key (`conversation`, `conversation/message`, `user/target`).
    pub key: String,
    pub kind: FindingKind,
    pub detail: String,
    pub source_version: Option<String>,
    pub sql_version: Option<String>,
    /// `live`, `tombstone` or `placeholder`; none when SQL has no row.
    pub sql_state: Option<String>,
    /// Found by a run limited by `--since`: a document the source did not
    /// return may exist with an older update time, so a `missing_in_source`
    /// finding is not repaired (confirm it with a run without `--since`).
    pub since_scoped: bool,
}

/// One table's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableReport {
    pub table: Option<Table>,
    /// Live source documents in scope.
    pub source_docs: u64,
    /// Live SQL rows in scope (from the checksums).
    pub sql_rows: u64,
    pub missing_in_sql: u64,
    pub missing_in_source: u64,
    pub version_mismatch: u64,
    pub tombstone_mismatch: u64,
    pub field_mismatch: u64,
    /// Differences still newer than the watermark after the grace period (not drift).
    pub in_flight: u64,
    pub drift_pct: f64,
    /// Work done: buckets compared, buckets that differed, queries, rows read.
    pub buckets_compared: u64,
    pub differing_buckets: u64,
    pub checksum_queries: u64,
    pub rows_read: u64,
    pub examples: Vec<Finding>,
}

impl TableReport {
    pub fn new(table: Table) -> TableReport {
        TableReport {
            table: Some(table),
            ..TableReport::default()
        }
    }

    pub fn name(&self) -> &'static str {
        self.table.map(|t| t.name()).unwrap_or("total")
    }

    pub fn drifted(&self) -> u64 {
        self.missing_in_sql
            + self.missing_in_source
            + self.version_mismatch
            + self.tombstone_mismatch
            + self.field_mismatch
    }

    /// Keys compared: source documents plus SQL rows the source lacks.
    pub fn compared(&self) -> u64 {
        self.source_docs + self.missing_in_source
    }

    pub(crate) fn count(&mut self, f: &Finding, examples: usize) {
        match f.kind {
            FindingKind::MissingInSql => self.missing_in_sql += 1,
            FindingKind::MissingInSource => self.missing_in_source += 1,
            FindingKind::VersionMismatch => self.version_mismatch += 1,
            FindingKind::TombstoneMismatch => self.tombstone_mismatch += 1,
            FindingKind::FieldMismatch => self.field_mismatch += 1,
        }
        if self.examples.len() < examples {
            self.examples.push(f.clone());
        }
        self.update_pct();
    }

    fn update_pct(&mut self) {
        self.drift_pct = pct(self.drifted(), self.compared());
    }
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: String,
    pub generated_at: chrono::DateTime<chrono::Utc>,
    pub module: super::Module,
    pub conversation: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub lag_seconds: u64,
    pub grace_seconds: u64,
    pub tables: Vec<TableReport>,
    pub total: TableReport,
    pub drift_pct: f64,
    pub threshold_pct: f64,
    /// True when the drift is above the threshold.
    pub alert: bool,
    /// Differences that were newer than the watermark and were checked again after the grace period.
    pub rechecked: usize,
    /// Source documents the mapping rejected (also dead-lettered by the publisher).
    pub unmappable: Vec<Unmappable>,
    pub seconds: f64,
    /// Every finding (the JSON carries the examples per table only).
    #[serde(skip)]
    pub findings: Vec<Finding>,
}

impl Report {
    pub(crate) fn new(
        source: String,
        opts: &Options,
        mut tables: Vec<TableReport>,
        findings: Vec<Finding>,
        unmappable: Vec<Unmappable>,
        rechecked: usize,
        elapsed: Duration,
    ) -> Report {
        let mut total = TableReport::default();
        for t in &mut tables {
            t.update_pct();
            total.source_docs += t.source_docs;
            total.sql_rows += t.sql_rows;
            total.missing_in_sql += t.missing_in_sql;
            total.missing_in_source += t.missing_in_source;
            total.version_mismatch += t.version_mismatch;
            total.tombstone_mismatch += t.tombstone_mismatch;
            total.field_mismatch += t.field_mismatch;
            total.in_flight += t.in_flight;
            total.buckets_compared += t.buckets_compared;
            total.differing_buckets += t.differing_buckets;
            total.checksum_queries += t.checksum_queries;
            total.rows_read += t.rows_read;
        }
        total.update_pct();
        let drift_pct = total.drift_pct;
        Report {
            source,
            generated_at: chrono::Utc::now(),
            module: opts.module,
            conversation: opts.conversation.clone(),
            since: opts.since,
            lag_seconds: opts.lag.as_secs(),
            grace_seconds: opts.grace.as_secs(),
            tables,
            total,
            drift_pct,
            threshold_pct: opts.threshold_pct,
            alert: drift_pct > opts.threshold_pct,
            rechecked,
            unmappable,
            seconds: elapsed.as_secs_f64(),
            findings,
        }
    }

    /// The summary a person reads in a terminal.
    pub fn to_text(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header([
            "table",
            "source docs",
            "SQL rows",
            "missing in SQL",
            "missing in source",
            "version",
            "tombstone",
            "fields",
            "in flight",
            "drift %",
        ]);
        for r in self.tables.iter().chain(std::iter::once(&self.total)) {
            t.add_row([
                r.name().to_owned(),
                r.source_docs.to_string(),
                r.sql_rows.to_string(),
                r.missing_in_sql.to_string(),
                r.missing_in_source.to_string(),
                r.version_mismatch.to_string(),
                r.tombstone_mismatch.to_string(),
                r.field_mismatch.to_string(),
                r.in_flight.to_string(),
                format!("{:.3}", r.drift_pct),
            ]);
        }
        let mut out = format!("{t}\n");
        for r in &self.tables {
            for f in &r.examples {
                out.push_str(&format!(
                    "  {} {}: {} — {}\n",
                    r.name(),
                    f.key,
                    f.kind.label(),
                    f.detail
                ));
            }
        }
        for u in self.unmappable.iter().take(20) {
            out.push_str(&format!(
                "  unmappable source document {}: {}\n",
                u.path, u.error
            ));
        }
        out.push_str(&format!(
            "{}: {} of {} compared keys differ, drift {:.3} % (threshold {:.2} %); {} in flight; \
             {} bucket(s) compared, {} differed, {} SQL row(s) read in {:.1} s; source {}\n",
            if self.alert { "ALERT" } else { "OK" },
            self.total.drifted(),
            self.total.compared(),
            self.drift_pct,
            self.threshold_pct,
            self.total.in_flight,
            self.total.buckets_compared,
            self.total.differing_buckets,
            self.total.rows_read,
            self.seconds,
            self.source
        ));
        out
    }

    /// A self-contained HTML page: inline CSS, no scripts, no links, no external assets.
    pub fn to_html(&self) -> String {
        let mut summary = String::new();
        for r in self.tables.iter().chain(std::iter::once(&self.total)) {
            let cls = if r.table.is_none() {
                " class=\"total\""
            } else if r.drifted() > 0 {
                " class=\"bad\""
            } else {
                ""
            };
            summary.push_str(&format!(
                "<tr{cls}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>\n",
                esc(r.name()), r.source_docs, r.sql_rows, r.missing_in_sql, r.missing_in_source,
                r.version_mismatch, r.tombstone_mismatch, r.field_mismatch, r.in_flight, r.drift_pct
            ));
        }
        let mut sections = String::new();
        for r in &self.tables {
            sections.push_str(&format!(
                "<section><h2>{name}</h2><p>{drifted} of {compared} compared keys differ ({pct:.3} %). \
                 {buckets} bucket(s) compared, {diff} differed, {rows} SQL row(s) read.</p>\n",
                name = esc(r.name()),
                drifted = r.drifted(),
                compared = r.compared(),
                pct = r.drift_pct,
                buckets = r.buckets_compared,
                diff = r.differing_buckets,
                rows = r.rows_read,
            ));
            if r.examples.is_empty() {
                sections.push_str("<p class=\"ok\">No differences.</p>\n");
            } else {
                sections.push_str(
                    "<table class=\"examples\"><tr><th>key</th><th>finding</th><th>source version</th>\
                     <th>SQL version</th><th>SQL row</th><th>detail</th></tr>\n",
                );
                for f in &r.examples {
                    sections.push_str(&format!(
                        "<tr><td><code>{}</code></td><td><span class=\"kind {}\">{}</span></td><td class=\"v\">{}</td><td class=\"v\">{}</td><td>{}</td><td>{}</td></tr>\n",
                        esc(&f.key),
                        serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                        esc(f.kind.label()),
                        esc(f.source_version.as_deref().unwrap_or("—")),
                        esc(f.sql_version.as_deref().unwrap_or("—")),
                        esc(f.sql_state.as_deref().unwrap_or("none")),
                        esc(&f.detail),
                    ));
                }
                let shown = r.examples.len() as u64;
                if r.drifted() > shown {
                    sections.push_str(&format!(
                        "<tr><td colspan=\"6\">… and {} more</td></tr>\n",
                        r.drifted() - shown
                    ));
                }
                sections.push_str("</table>\n");
            }
            sections.push_str("</section>\n");
        }
        let mut unmappable = String::new();
        if !self.unmappable.is_empty() {
            unmappable
                .push_str("<section><h2>Source documents that could not be mapped</h2><ul>\n");
            for u in self.unmappable.iter().take(50) {
                unmappable.push_str(&format!(
                    "<li><code>{}</code>: {}</li>\n",
                    esc(&u.path),
                    esc(&u.error)
                ));
            }
            unmappable.push_str("</ul></section>\n");
        }
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>realtime-mirror consistency report</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #1f2328; }}
h1 {{ font-size: 1.6em; margin-bottom: .2em; }}
h2 {{ font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }}
.status {{ font-size: 1.25em; font-weight: 600; padding: .5em .8em; border-radius: 6px; display: inline-block; }}
.status.alert {{ background: #ffebe9; color: #a40e26; border: 1px solid #ff8182; }}
.status.ok {{ background: #dafbe1; color: #116329; border: 1px solid #4ac26b; }}
.meta {{ color: #57606a; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
td, th {{ border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; vertical-align: top; }}
th {{ background: #f6f8fa; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.bad td {{ background: #fff8f7; }}
tr.total td {{ font-weight: 600; background: #f6f8fa; }}
table.examples td, table.examples th {{ text-align: left; }}
table.examples td.v {{ white-space: nowrap; font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }}
table.examples td:last-child {{ max-width: 480px; word-break: break-word; }}
code {{ font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }}
.kind {{ padding: 1px 6px; border-radius: 10px; font-size: 12px; white-space: nowrap; background: #eaeef2; }}
.kind.missing_in_sql, .kind.missing_in_source {{ background: #ffebe9; }}
.kind.version_mismatch {{ background: #fff8c5; }}
.kind.tombstone_mismatch {{ background: #fbefff; }}
.kind.field_mismatch {{ background: #ddf4ff; }}
.ok {{ color: #116329; }}
</style></head><body>
<h1>realtime-mirror consistency report</h1>
<p class="status {status_class}">{status}: drift {pct:.3} % (threshold {thr:.2} %)</p>
<p class="meta">Source: {source}<br>Module: {module}{conversation}{since}<br>
Generated: {at} in {secs:.1} s · in-flight lag {lag} s, grace {grace} s · {rechecked} difference(s) rechecked after the grace period</p>
<h2>Summary</h2>
<table><tr><th>table</th><th>source docs</th><th>SQL rows</th><th>missing in SQL</th><th>missing in source</th><th>version mismatch</th><th>tombstone mismatch</th><th>field mismatch</th><th>in flight</th><th>drift %</th></tr>
{summary}</table>
{sections}{unmappable}
</body></html>
"#,
            status_class = if self.alert { "alert" } else { "ok" },
            status = if self.alert { "ALERT" } else { "OK" },
            pct = self.drift_pct,
            thr = self.threshold_pct,
            source = esc(&self.source),
            module = serde_json::to_value(self.module)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            conversation = self
                .conversation
                .as_ref()
                .map(|c| format!(" · conversation {}", esc(c)))
                .unwrap_or_default(),
            since = self
                .since
                .map(|s| format!(" · since {}", s.to_rfc3339()))
                .unwrap_or_default(),
            at = self.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
            secs = self.seconds,
            lag = self.lag_seconds,
            grace = self.grace_seconds,
            rechecked = self.rechecked,
        )
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
