//! OTLP export of the process's metrics (feature `otlp`; used only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is
//! set): a `metrics` recorder that forwards every counter, gauge and histogram
//! to OpenTelemetry instruments, exported by `opentelemetry-otlp` over
//! HTTP/protobuf every 15 s (`OTEL_METRIC_EXPORT_INTERVAL`, in ms, overrides).
//! Plain HTTP only (no TLS client is built in): send to a Collector next to
//! the job (a sidecar, or the node's agent), which forwards with TLS.
//!
//! It runs beside the Prometheus recorder (a fanout), so `/metrics` keeps
//! working. Names, units and histogram buckets are the ones
//! `docs/metrics.md` lists (`telemetry::{names, BUCKETS}`); attribute keys
//! keep their dots (`messaging.system`), as the semantic conventions spell them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::telemetry::{names, BUCKETS};

/// The exporter could not be built (bad endpoint, no HTTP client).
#[derive(Debug, thiserror::Error)]
#[error("OTLP metrics: {0}")]
pub struct OtlpError(String);

/// The meter provider; keep it alive for the process's lifetime (dropping it
/// stops the export). [`shutdown`](OtlpExport::shutdown) flushes.
pub struct OtlpExport {
    provider: SdkMeterProvider,
}

impl OtlpExport {
    /// Flush the last measurements and stop the export.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP metrics: final export failed");
        }
    }

    /// Export what was recorded and stop, saying whether the receiver took
    /// it: the last act of a batch job, which nothing scrapes and which must
    /// know its one push arrived ([`shutdown`](Self::shutdown) only logs).
    pub fn finish(&self) -> Result<(), OtlpError> {
        self.provider
            .shutdown()
            .map_err(|e| OtlpError(format!("final export: {e}")))
    }
}

/// Build the exporter from the standard `OTEL_*` environment variables (the
/// endpoint, headers, timeout) and a recorder feeding it.
pub fn recorder(service: &str) -> Result<(OtlpRecorder, OtlpExport), OtlpError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .build()
        .map_err(|e| OtlpError(format!("cannot set up the exporter: {e}")))?;
    let mut reader = PeriodicReader::builder(exporter);
    if std::env::var_os("OTEL_METRIC_EXPORT_INTERVAL").is_none() {
        reader = reader.with_interval(std::time::Duration::from_secs(15));
    }
    let reader = reader.build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("realtime-mirror");
    Ok((
        OtlpRecorder {
            meter,
            instruments: Mutex::default(),
            gauges: Mutex::default(),
        },
        OtlpExport { provider },
    ))
}

/// A `metrics` recorder writing to OpenTelemetry instruments.
pub struct OtlpRecorder {
    meter: Meter,
    instruments: Mutex<HashMap<String, Instrument>>,
    /// One gauge handle per key: `gauge!` registers on every call, and a
    /// gauge moved by increments must keep its value between calls.
    gauges: Mutex<HashMap<Key, Arc<OtelGauge>>>,
}

#[derive(Clone)]
enum Instrument {
    Counter(opentelemetry::metrics::Counter<u64>),
    Gauge(opentelemetry::metrics::Gauge<f64>),
    Histogram(opentelemetry::metrics::Histogram<f64>),
}

/// The OpenTelemetry unit of a metric (UCUM), from the documented table.
fn unit_of(name: &str) -> Option<&'static str> {
    match name {
        names::MESSAGING_CONSUMED | names::MESSAGING_SENT => Some("{message}"),
        names::MESSAGING_PROCESS_DURATION
        | names::DB_OPERATION_DURATION
        | names::BATCH_SECONDS
        | names::CHECKPOINT_AGE => Some("s"),
        names::SOURCE_TO_COMMIT_MS | names::HOP_LATENCY_MS => Some("ms"),
        _ => None,
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

impl OtlpRecorder {
    fn instrument(&self, name: &str, kind: u8) -> Instrument {
        let mut map = self.instruments.lock().expect("instrument map");
        if let Some(i) = map.get(name) {
            return i.clone();
        }
        let unit = unit_of(name);
        let i = match kind {
            0 => {
                let mut b = self.meter.u64_counter(name.to_owned());
                if let Some(u) = unit {
                    b = b.with_unit(u);
                }
                Instrument::Counter(b.build())
            }
            1 => {
                let mut b = self.meter.f64_gauge(name.to_owned());
                if let Some(u) = unit {
                    b = b.with_unit(u);
                }
                Instrument::Gauge(b.build())
            }
            _ => {
                let mut b = self.meter.f64_histogram(name.to_owned());
                if let Some(u) = unit {
                    b = b.with_unit(u);
                }
                if let Some((_, bounds)) = BUCKETS.iter().find(|(n, _)| *n == name) {
                    b = b.with_boundaries(bounds.to_vec());
                }
                Instrument::Histogram(b.build())
            }
        };
        map.insert(name.to_owned(), i.clone());
        i
    }
}

struct OtelCounter(opentelemetry::metrics::Counter<u64>, Vec<KeyValue>);
impl CounterFn for OtelCounter {
    fn increment(&self, value: u64) {
        self.0.add(value, &self.1);
    }
    fn absolute(&self, _value: u64) {
        // OTLP counters are deltas from the SDK's view; absolute values are not used here.
    }
}

/// A gauge keeps its current value so increments can be reported as values.
struct OtelGauge(opentelemetry::metrics::Gauge<f64>, Vec<KeyValue>, AtomicU64);
impl OtelGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let mut now = self.2.load(Ordering::Acquire);
        loop {
            let next = f(f64::from_bits(now));
            match self
                .2
                .compare_exchange(now, next.to_bits(), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.0.record(next, &self.1);
                    return;
                }
                Err(seen) => now = seen,
            }
        }
    }
}
impl GaugeFn for OtelGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

struct OtelHistogram(opentelemetry::metrics::Histogram<f64>, Vec<KeyValue>);
impl HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.0.record(value, &self.1);
    }
}

impl Recorder for OtlpRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self.instrument(key.name(), 0) {
            Instrument::Counter(c) => Counter::from_arc(Arc::new(OtelCounter(c, attributes(key)))),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if let Some(g) = self.gauges.lock().expect("gauge map").get(key) {
            return Gauge::from_arc(g.clone());
        }
        match self.instrument(key.name(), 1) {
            Instrument::Gauge(g) => {
                let handle = Arc::new(OtelGauge(
                    g,
                    attributes(key),
                    AtomicU64::new(0f64.to_bits()),
                ));
                // Another thread may have registered it meanwhile: keep the first.
                let g = self
                    .gauges
                    .lock()
                    .expect("gauge map")
                    .entry(key.clone())
                    .or_insert(handle)
                    .clone();
                Gauge::from_arc(g)
            }
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self.instrument(key.name(), 2) {
            Instrument::Histogram(h) => {
                Histogram::from_arc(Arc::new(OtelHistogram(h, attributes(key))))
            }
            _ => Histogram::noop(),
        }
    }
}
