//! OTLP export (feature `otlp`): with an endpoint configured, the process's
//! metrics reach an OTLP/HTTP receiver as protobuf, and `/metrics` keeps
//! serving Prometheus text. Its own test binary: the metrics recorder is
//! process-wide and this one must be installed with the endpoint set.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_reach_an_otlp_receiver_and_prometheus() {
    // A local OTLP/HTTP receiver: keeps what is POSTed.
    let (received, addr) = mirror_tests::http_sink::start().await;

    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://{addr}/v1/metrics"),
        );
        std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "200");
        std::env::set_var("OTEL_SERVICE_NAME", "otlp-test");
    }
    let handle = mirror_runtime::telemetry::install_metrics();
    sql_writer::telemetry::set_destination("nats", "realtime-mirror");
    sql_writer::telemetry::message_processed("sql-writer", Duration::from_millis(12), None);
    let in_flight = sql_writer::telemetry::InFlight::received(3);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = received.lock().unwrap().clone();
        let hit = got.iter().find(|r| {
            let text = String::from_utf8_lossy(&r.body);
            text.contains("messaging.process.duration")
                && text.contains("messaging.destination.subscription.name")
                && text.contains("mirror_events_in_flight")
        });
        if let Some(r) = hit {
            assert_eq!(r.path, "/v1/metrics");
            assert_eq!(r.content_type, "application/x-protobuf");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no OTLP export with the metrics arrived within 20 s ({} requests)",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(in_flight);
    // Prometheus text still has them, with the documented buckets.
    let text = handle.render();
    assert!(
        text.contains("messaging_process_duration_bucket{"),
        "{text}"
    );
    assert!(text.contains("le=\"0.075\""), "{text}");
    mirror_runtime::telemetry::shutdown_metrics();
}
