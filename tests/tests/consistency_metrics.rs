//! The consistency job's metrics leave the short-lived process by push: a
//! real check on PostgreSQL finds drift, and its gauges reach a local
//! OTLP/HTTP receiver (decoded with the exporter's own protobuf types: the
//! drift value, the per-table findings, the last-run time) and a local
//! stand-in for the Prometheus Pushgateway (`PUT` of the text format to the
//! run's group); a receiver that refuses is reported, not ignored.
//!
//! Its own test binary: the OTLP endpoint is read from the process's
//! environment, as the job reads it.

use mirror_store::prelude::*;
use std::time::Duration;

use axum::http::Method;
use indicatif::ProgressBar;
use mirror_schema::{FollowState, Op};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_tests::{events, FreshDb};
use mirrorctl::consistency::metrics::{self, names, Targets};
use mirrorctl::consistency::source::MemorySource;
use mirrorctl::consistency::{check, Options};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
use prost::Message;
use secrecy::SecretString;

/// One gauge point: (name, attributes, value).
type Point = (String, Vec<(String, String)>, f64);

/// Every gauge point in an OTLP export.
fn gauge_points(body: &[u8]) -> Vec<Point> {
    let req = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let Some(Data::Gauge(g)) = m.data else {
                    continue;
                };
                for p in g.data_points {
                    let attrs = p
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(AnyValue::StringValue(s)) => s,
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    let v = match p.value {
                        Some(Value::AsDouble(d)) => d,
                        Some(Value::AsInt(i)) => i as f64,
                        None => f64::NAN,
                    };
                    out.push((m.name.clone(), attrs, v));
                }
            }
        }
    }
    out
}

fn has(attrs: &[(String, String)], key: &str, value: &str) -> bool {
    attrs.iter().any(|(k, v)| k == key && v == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_reaches_otlp_and_the_pushgateway_and_a_refusal_is_reported() {
    let (received, addr) = mirror_tests::http_sink::start().await;
    // Set before anything reads the environment; the default 15 s export
    // interval is left alone: the job's final flush must carry the push.
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        format!("http://{addr}/v1/metrics"),
    );

    // A real check: 3 follow edges in the source, 2 in SQL → 33.3 % drift.
    let db = FreshDb::create().await;
    let store = PgStore::connect(&PgConfig {
        url: SecretString::from(db.url.clone()),
        pool_size: 2,
        statement_timeout: Duration::from_secs(30),
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let edges: Vec<_> = ["b", "c", "d"]
        .iter()
        .map(|t| events::follow(Op::Create, "a", t, FollowState::Accepted, events::t(1)))
        .collect();
    for e in &edges[..2] {
        store.apply(e).await.unwrap();
    }
    let source = MemorySource {
        project: "demo".into(),
        events: edges.clone(),
    };
    let opts = Options {
        grace: Duration::ZERO,
        ..Options::default()
    };
    let (report, _) = check(&store, &source, &opts, &ProgressBar::hidden())
        .await
        .unwrap();
    assert_eq!(report.total.missing_in_sql, 1);
    let drift = report.drift_pct;
    assert!((drift - 100.0 / 3.0).abs() < 1e-9, "{drift}");

    let targets = Targets::from_env(None, Some(format!("http://{addr}/")));
    assert!(targets.otlp, "the endpoint variable turns the OTLP push on");
    let started = std::time::Instant::now();
    let errors = metrics::export(&report, &targets).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "pushed at once, not after an export interval"
    );

    let got = received.lock().unwrap().clone();
    // OTLP: protobuf, with the drift gauge and its attributes.
    let otlp: Vec<_> = got.iter().filter(|r| r.path == "/v1/metrics").collect();
    assert!(!otlp.is_empty(), "no OTLP request: {got:?}");
    assert_eq!(otlp[0].content_type, "application/x-protobuf");
    let points: Vec<_> = otlp.iter().flat_map(|r| gauge_points(&r.body)).collect();
    let find = |name: &str, extra: &[(&str, &str)]| {
        points
            .iter()
            .find(|(n, a, _)| n == name && extra.iter().all(|(k, v)| has(a, k, v)))
            .unwrap_or_else(|| panic!("no {name} {extra:?} in {points:?}"))
            .2
    };
    assert!(
        (find(
            names::DRIFT_PERCENT,
            &[("module", "all"), ("scope", "full")]
        ) - drift)
            .abs()
            < 1e-9
    );
    assert_eq!(
        find(
            names::FINDINGS,
            &[("table", "follow_edge"), ("kind", "missing_in_sql")]
        ),
        1.0
    );
    assert_eq!(find(names::COMPARED_KEYS, &[("table", "follow_edge")]), 3.0);
    let last_run = find(names::LAST_RUN, &[]);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last_run).abs() < 120.0, "{last_run} vs {now}");

    // Pushgateway: PUT of the text format to the run's group, grouping labels in the path only.
    let push = got
        .iter()
        .find(|r| r.method == Method::PUT)
        .unwrap_or_else(|| panic!("no PUT: {got:?}"));
    assert_eq!(
        push.path,
        "/metrics/job/realtime-mirror-consistency/module/all/scope/full"
    );
    assert!(
        push.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        push.content_type
    );
    let text = String::from_utf8(push.body.clone()).unwrap();
    assert!(
        text.contains(
            "# TYPE mirror_consistency_drift_percent gauge\nmirror_consistency_drift_percent 33.33"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "mirror_consistency_findings{table=\"follow_edge\",kind=\"missing_in_sql\"} 1\n"
        ),
        "{text}"
    );
    assert!(!text.contains("module="), "{text}");

    // A refusing Pushgateway is an error the command reports (exit code 3 when the check passed).
    let refused = Targets {
        file: None,
        pushgateway: Some(format!("http://{addr}/refuse")),
        otlp: false,
    };
    let errors = metrics::export(&report, &refused).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("500"), "{}", errors[0]);
}
