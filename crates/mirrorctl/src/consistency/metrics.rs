//! The consistency job's metrics, exported the way a batch job must: pushed
//! once at the end of the run, because nothing scrapes a CronJob that exits.
//!
//! The run's result becomes a handful of gauges ([`samples`]), sent by any
//! of three routes, each used only when configured:
//!
//! - **OTLP/HTTP** through the project's exporter (`mirror_runtime::otlp`),
//!   when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`
//!   is set: the gauges are recorded on a recorder local to this call (the
//!   process installs no global one) and flushed before the job exits;
//! - a **Prometheus textfile** (`--metrics-file`, for node-exporter's textfile
//!   collector), written atomically;
//! - a **Pushgateway** (`--pushgateway URL`, plain HTTP): `PUT` replaces the
//!   group `job=realtime-mirror-consistency`, `module=…`, `scope=…`, so a
//!   run of one module never hides another's result.
//!
//! Every series carries `module` (`dm`, `follow`, `all`) and `scope` (`full`,
//! or `since` / `conversation` for a limited run). The alert rules read
//! `scope="full"` only: a check of one conversation says nothing about the
//! mirror's drift. Names, units and meaning: `docs/metrics.md`.

use std::path::{Path, PathBuf};

use super::report::{Report, TableReport};

/// Metric names (Prometheus spelling; the same names over OTLP).
pub mod names {
    /// Gauge `%`: the run's total drift (differing keys ÷ compared keys × 100), the figure the threshold and the alert use.
    pub const DRIFT_PERCENT: &str = "mirror_consistency_drift_percent";
    /// Gauge `%`: drift of one table (`table`).
    pub const TABLE_DRIFT_PERCENT: &str = "mirror_consistency_table_drift_percent";
    /// Gauge: differences found, by `table` and `kind`.
    pub const FINDINGS: &str = "mirror_consistency_findings";
    /// Gauge: keys compared (source documents plus SQL rows the source lacks), by `table`.
    pub const COMPARED_KEYS: &str = "mirror_consistency_compared_keys";
    /// Gauge: differences still newer than the watermark after the grace period (not drift), by `table`.
    pub const IN_FLIGHT: &str = "mirror_consistency_in_flight";
    /// Gauge: source documents the publisher's mapping rejects.
    pub const UNMAPPABLE: &str = "mirror_consistency_unmappable_documents";
    /// Gauge `s`: how long the comparison took.
    pub const DURATION_SECONDS: &str = "mirror_consistency_duration_seconds";
    /// Gauge `s` (Unix time): when the run finished comparing.
    pub const LAST_RUN: &str = "mirror_consistency_last_run_timestamp_seconds";
}

/// The Pushgateway job name (`job` label) of the pushed group.
pub const PUSHGATEWAY_JOB: &str = "realtime-mirror-consistency";

/// The OpenTelemetry `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "mirrorctl-consistency";

/// One gauge value with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn help(name: &str) -> &'static str {
    match name {
        names::DRIFT_PERCENT => {
            "Drift found by the last consistency run: differing keys / compared keys * 100"
        }
        names::TABLE_DRIFT_PERCENT => "Drift of one table in the last consistency run",
        names::FINDINGS => "Differences found by the last consistency run, by table and kind",
        names::COMPARED_KEYS => "Keys compared by the last consistency run, by table",
        names::IN_FLIGHT => {
            "Differences newer than the watermark after the grace period (not drift)"
        }
        names::UNMAPPABLE => "Source documents the publisher's mapping rejects",
        names::DURATION_SECONDS => "Seconds the last consistency run took to compare",
        names::LAST_RUN => "Unix time at which the last consistency run finished comparing",
        _ => "",
    }
}

/// `full`, or what limited the run.
pub fn scope(report: &Report) -> &'static str {
    match (&report.conversation, &report.since) {
        (Some(_), _) => "conversation",
        (None, Some(_)) => "since",
        (None, None) => "full",
    }
}

/// The finding kinds with their count in a table report (label value, count).
fn kinds(t: &TableReport) -> [(&'static str, u64); 5] {
    [
        ("missing_in_sql", t.missing_in_sql),
        ("missing_in_source", t.missing_in_source),
        ("version_mismatch", t.version_mismatch),
        ("tombstone_mismatch", t.tombstone_mismatch),
        ("field_mismatch", t.field_mismatch),
    ]
}

/// The run's gauges.
pub fn samples(report: &Report) -> Vec<Sample> {
    let base = vec![
        ("module", module_label(report)),
        ("scope", scope(report).to_owned()),
    ];
    let with = |extra: &[(&'static str, &str)]| {
        let mut l = base.clone();
        l.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        l
    };
    let mut out = vec![Sample {
        name: names::DRIFT_PERCENT,
        labels: base.clone(),
        value: report.drift_pct,
    }];
    for t in &report.tables {
        let table = t.name();
        out.push(Sample {
            name: names::TABLE_DRIFT_PERCENT,
            labels: with(&[("table", table)]),
            value: t.drift_pct,
        });
        for (kind, n) in kinds(t) {
            out.push(Sample {
                name: names::FINDINGS,
                labels: with(&[("table", table), ("kind", kind)]),
                value: n as f64,
            });
        }
        out.push(Sample {
            name: names::COMPARED_KEYS,
            labels: with(&[("table", table)]),
            value: t.compared() as f64,
        });
        out.push(Sample {
            name: names::IN_FLIGHT,
            labels: with(&[("table", table)]),
            value: t.in_flight as f64,
        });
    }
    out.push(Sample {
        name: names::UNMAPPABLE,
        labels: base.clone(),
        value: report.unmappable.len() as f64,
    });
    out.push(Sample {
        name: names::DURATION_SECONDS,
        labels: base.clone(),
        value: report.seconds,
    });
    out.push(Sample {
        name: names::LAST_RUN,
        labels: base,
        value: report.generated_at.timestamp_millis() as f64 / 1000.0,
    });
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition (format 0.0.4) of `samples`, grouped by name.
pub fn to_prometheus_text(samples: &[Sample]) -> String {
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for s in samples {
        if seen.contains(&s.name) {
            continue;
        }
        seen.push(s.name);
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} gauge\n",
            s.name,
            help(s.name),
            s.name
        ));
        for s in samples.iter().filter(|x| x.name == s.name) {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if labels.is_empty() {
                out.push_str(&format!("{} {}\n", s.name, s.value));
            } else {
                out.push_str(&format!("{}{{{}}} {}\n", s.name, labels.join(","), s.value));
            }
        }
    }
    out
}

/// Where to send the metrics; an empty value sends nowhere.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Prometheus textfile (written to `PATH.tmp`, then renamed).
    pub file: Option<PathBuf>,
    /// Pushgateway base URL (`http://pushgateway:9091`).
    pub pushgateway: Option<String>,
    /// Push over OTLP/HTTP (when the `OTEL_*` endpoint variables are set).
    pub otlp: bool,
}

impl Targets {
    /// The OTLP route is taken when the standard endpoint variables say so.
    pub fn from_env(file: Option<PathBuf>, pushgateway: Option<String>) -> Targets {
        Targets {
            file,
            pushgateway,
            otlp: mirror_runtime::telemetry::otlp_endpoint().is_some(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.file.is_none() && self.pushgateway.is_none() && !self.otlp
    }
}

/// Why the metrics did not reach one of the targets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("cannot write the metrics file {path}: {error}")]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("Pushgateway {url}: {error}")]
    Pushgateway { url: String, error: String },
    #[error("{0}")]
    Otlp(String),
}

/// Send the run's metrics to every configured target. Every target is tried;
/// the errors of those that failed are returned.
pub async fn export(report: &Report, targets: &Targets) -> Vec<ExportError> {
    let samples = samples(report);
    let mut errors = Vec::new();
    if let Some(path) = &targets.file {
        if let Err(e) = write_file(path, &to_prometheus_text(&samples)) {
            errors.push(e);
        }
    }
    if let Some(url) = &targets.pushgateway {
        if let Err(e) = push(url, report, &samples).await {
            errors.push(e);
        }
    }
    if targets.otlp {
        let s = samples.clone();
        match tokio::task::spawn_blocking(move || push_otlp(&s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(ExportError::Otlp(e.to_string())),
            Err(e) => errors.push(ExportError::Otlp(e.to_string())),
        }
    }
    errors
}

fn write_file(path: &Path, text: &str) -> Result<(), ExportError> {
    let err = |error| ExportError::File {
        path: path.to_owned(),
        error,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The Pushgateway URL of this run's group.
pub fn pushgateway_url(base: &str, report: &Report) -> String {
    let module = module_label(report);
    format!(
        "{}/metrics/job/{PUSHGATEWAY_JOB}/module/{module}/scope/{}",
        base.trim_end_matches('/'),
        scope(report)
    )
}

/// `dm`, `follow` or `all`.
fn module_label(report: &Report) -> String {
    serde_json::to_value(report.module)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn push(base: &str, report: &Report, samples: &[Sample]) -> Result<(), ExportError> {
    let url = pushgateway_url(base, report);
    // The grouping labels are in the path; the Pushgateway rejects a body that repeats them.
    let body: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            labels: s
                .labels
                .iter()
                .filter(|(k, _)| *k != "module" && *k != "scope")
                .cloned()
                .collect(),
            ..s.clone()
        })
        .collect();
    let text = to_prometheus_text(&body);
    let target = url.clone();
    let result = tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .and_then(|c| {
                c.put(&target)
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(text)
                    .send()
            })
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", r.status()))
                }
            })
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    result.map_err(|error| ExportError::Pushgateway { url, error })
}

/// Record the gauges on a recorder of their own and flush them over OTLP.
fn push_otlp(samples: &[Sample]) -> Result<(), mirror_runtime::otlp::OtlpError> {
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| SERVICE_NAME.to_owned());
    let (recorder, export) = mirror_runtime::otlp::recorder(&service)?;
    metrics::with_local_recorder(&recorder, || {
        for s in samples {
            let labels: Vec<metrics::Label> = s
                .labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                .collect();
            metrics::gauge!(s.name, labels).set(s.value);
        }
    });
    export.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_exposition_groups_by_name_and_escapes_labels() {
        let samples = vec![
            Sample {
                name: names::FINDINGS,
                labels: vec![
                    ("table", "dm_message".into()),
                    ("kind", "a\"b\\c\nd".into()),
                ],
                value: 3.0,
            },
            Sample {
                name: names::DRIFT_PERCENT,
                labels: vec![("module", "all".into())],
                value: 0.25,
            },
            Sample {
                name: names::FINDINGS,
                labels: vec![("table", "dm_block".into()), ("kind", "x".into())],
                value: 0.0,
            },
        ];
        let text = to_prometheus_text(&samples);
        assert_eq!(
            text,
            "# HELP mirror_consistency_findings Differences found by the last consistency run, by table and kind\n\
             # TYPE mirror_consistency_findings gauge\n\
             mirror_consistency_findings{table=\"dm_message\",kind=\"a\\\"b\\\\c\\nd\"} 3\n\
             mirror_consistency_findings{table=\"dm_block\",kind=\"x\"} 0\n\
             # HELP mirror_consistency_drift_percent Drift found by the last consistency run: differing keys / compared keys * 100\n\
             # TYPE mirror_consistency_drift_percent gauge\n\
             mirror_consistency_drift_percent{module=\"all\"} 0.25\n"
        );
    }

    fn report(opts: &crate::consistency::Options) -> Report {
        use mirror_store::checksum::Table;
        let mut t = TableReport::new(Table::FollowEdge);
        t.source_docs = 3;
        t.missing_in_sql = 1;
        Report::new(
            "memory".into(),
            opts,
            vec![t],
            vec![],
            vec![],
            0,
            std::time::Duration::from_millis(1500),
        )
    }

    #[test]
    fn a_limited_run_is_labelled_so_the_alert_ignores_it() {
        let full = report(&crate::consistency::Options::default());
        let since = report(&crate::consistency::Options {
            since: Some(chrono::Utc::now()),
            module: crate::consistency::Module::Follow,
            ..Default::default()
        });
        let one = report(&crate::consistency::Options {
            conversation: Some("c1".into()),
            since: Some(chrono::Utc::now()),
            ..Default::default()
        });
        assert_eq!(
            (scope(&full), scope(&since), scope(&one)),
            ("full", "since", "conversation")
        );
        let s = samples(&since);
        assert!(s.iter().all(|x| x.labels[..2]
            == [
                ("module", "follow".to_owned()),
                ("scope", "since".to_owned())
            ]));
        let drift = s.iter().find(|x| x.name == names::DRIFT_PERCENT).unwrap();
        assert!((drift.value - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            pushgateway_url("http://pg:9091/", &since),
            "http://pg:9091/metrics/job/realtime-mirror-consistency/module/follow/scope/since"
        );
        let duration = s
            .iter()
            .find(|x| x.name == names::DURATION_SECONDS)
            .unwrap();
        assert_eq!(duration.value, 1.5);
        // Every kind is sent, zeros included, so a fixed kind does not go stale.
        assert_eq!(s.iter().filter(|x| x.name == names::FINDINGS).count(), 5);
    }

    #[test]
    fn every_name_has_help() {
        for n in [
            names::DRIFT_PERCENT,
            names::TABLE_DRIFT_PERCENT,
            names::FINDINGS,
            names::COMPARED_KEYS,
            names::IN_FLIGHT,
            names::UNMAPPABLE,
            names::DURATION_SECONDS,
            names::LAST_RUN,
        ] {
            assert!(!help(n).is_empty(), "{n}");
        }
    }
}
