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

use mirror_bus::{Delivery, EventBus, OutboundMessage, Receiver, SQL_WRITER_SUBSCRIPTION};
use mirror_schema::Op;
use mirror_tests::bus_conformance::{BusFactory, Options};
use mirror_tests::events;
use mirror_tests::factories::servicebus;

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
