//! The `EventBus` conformance suite against Azure Service Bus. Gated: runs only
//! when `SERVICEBUS_CONNECTION_STRING` is set (`REQUIRE_SERVICEBUS=1` makes a
//! missing connection string a failure). CI runs it against the Service Bus
//! emulator (`.github/workflows/integration-servicebus.yml`).
//!
//! Service Bus entities come from IaC (one topic, `sql-writer` and
//! `monitoring` subscriptions), so cases cannot get a fresh topic each: the
//! factory serialises them (a process-wide lock held in `Fresh::guard`) and
//! purges both subscriptions and their dead-letter queues first. Run with
//! `--test-threads 1`, or cases queue for the lock inside their time budget.
//!
//! The lock is the subscriptions' configured lock duration, not the requested
//! one: `SERVICEBUS_LOCK_SECS` (default 5, the emulator config of CI). Against
//! the production IaC (PT1M) the lock-expiry cases exceed the suite's per-case
//! timeout; use a namespace with a short lock duration for this suite.
//!
//! Duplicates: Service Bus acknowledges a duplicate publish without saying so;
//! the adapter reports `PublishOutcome::Duplicate` for ids the same bus
//! published within the configured window, which is what
//! `duplicate_suppression` exercises.

use std::time::Duration;

use mirror_bus::servicebus::{ServiceBusBus, ServiceBusConfig};
use mirror_bus::{
    Delivery, EventBus, OutboundMessage, Receiver, MONITORING_SUBSCRIPTION,
    SQL_WRITER_SUBSCRIPTION, TOPIC,
};
use mirror_schema::Op;
use mirror_tests::bus_conformance::{BusFactory, Fresh, Options};
use mirror_tests::{events, gate};

/// Cases share the deployed topic, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The connection string, or `None` after printing `skipped: SERVICEBUS_CONNECTION_STRING not set`.
fn connection_string() -> Option<String> {
    gate("SERVICEBUS_CONNECTION_STRING", "REQUIRE_SERVICEBUS")
}

fn topic() -> String {
    std::env::var("SERVICEBUS_TOPIC")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| TOPIC.to_owned())
}

/// The subscriptions' lock duration as deployed.
fn lock() -> Duration {
    let secs = std::env::var("SERVICEBUS_LOCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// The subscriptions' `maxDeliveryCount` as deployed (`SERVICEBUS_MAX_DELIVERY`,
/// default 5: deploy/azure/emulator/Config.json).
fn max_delivery_count() -> u32 {
    std::env::var("SERVICEBUS_MAX_DELIVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn servicebus() -> Option<impl BusFactory<Bus = ServiceBusBus>> {
    let cs = connection_string()?;
    Some(move |_options: Options| {
        let cs = cs.clone();
        async move {
            let serial = SERIAL.lock().await;
            let mut config = ServiceBusConfig::from_connection_string(&cs, &topic())
                .expect("Service Bus config");
            config.max_delivery_count = max_delivery_count();
            let bus = ServiceBusBus::connect(config)
                .await
                .unwrap_or_else(|e| panic!("{e} (is the Service Bus emulator running?)"));
            bus.ensure_topology().await.expect("ensure topology");
            let lock = lock();
            // Cases settle what they receive; a message a failed case left
            // locked would only reappear after the lock (PT1M on the
            // emulator), longer than a case's budget, so it is not waited for.
            let quiet = Duration::from_secs(1);
            for (subscription, dlq) in [
                (SQL_WRITER_SUBSCRIPTION, false),
                (MONITORING_SUBSCRIPTION, false),
                (SQL_WRITER_SUBSCRIPTION, true),
                (MONITORING_SUBSCRIPTION, true),
            ] {
                bus.purge(subscription, dlq, quiet)
                    .await
                    .unwrap_or_else(|e| panic!("purge {subscription} (dead letters: {dlq}): {e}"));
            }
            Fresh {
                bus,
                lock,
                max_deliver: max_delivery_count(),
                guard: Box::new(serial),
            }
        }
    })
}

mirror_tests::bus_conformance_tests!(servicebus());

/// Service Bus only: an event in the CloudEvents AMQP binary mode (attributes
/// as `cloudEvents_` application properties) survives the broker and decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_mode_round_trip() {
    mirror_tests::init();
    let Some(factory) = servicebus() else {
        return;
    };
    let body = async {
        let fresh = factory.fresh(Options::default()).await;
        let event = events::message(Op::Create, "c-sb-binary", "m-1", "hello", events::t(1));
        let out = OutboundMessage {
            message: mirror_schema::amqp::encode_binary(&event),
            ..OutboundMessage::from_event(&event)
        };
        let mut rx = fresh
            .bus
            .subscribe(SQL_WRITER_SUBSCRIPTION)
            .await
            .expect("subscribe");
        fresh.bus.publish(&out).await.expect("publish");
        let mut got = Vec::new();
        for _ in 0..10 {
            got = rx
                .receive(1, Duration::from_secs(1))
                .await
                .expect("receive");
            if !got.is_empty() {
                break;
            }
        }
        let d = got.pop().expect("the binary-mode message arrives");
        assert!(d.message().is_binary_mode(), "{:?}", d.message());
        assert_eq!(
            mirror_schema::decode_wire(d.message()).expect("decodes"),
            event
        );
        d.complete().await.expect("complete");
    };
    mirror_tests::bus_conformance::run("binary_mode_round_trip", body).await;
}
