//! The `EventBus` conformance suite against NATS JetStream (local server,
//! `TEST_NATS_URL`), one fresh topic per case, plus the JetStream-only
//! behaviour: topology idempotency, the max-deliveries watcher, size limits.

use std::time::Duration;

use mirror_bus::jetstream::{JetStreamBus, JetStreamConfig, MAX_DELIVERIES_REASON};
use mirror_bus::{
    BusError, DeadLetter, Delivery, EventBus, OutboundMessage, PublishOutcome, Receiver,
    SQL_WRITER_SUBSCRIPTION,
};
use mirror_schema::{Op, WireValue};
use mirror_tests::bus_conformance::Options;
use mirror_tests::factories::{jetstream, jetstream_config as config};
use mirror_tests::{events, FreshTopic};

mirror_tests::bus_conformance_tests!(Some(jetstream));

fn sample(n: u32) -> OutboundMessage {
    OutboundMessage::from_event(&events::message(
        Op::Create,
        "c-js",
        &format!("m-{n}"),
        "hello",
        events::t(i64::from(n)),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topology_is_idempotent_and_safe_concurrently() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    let options = Options::default();
    let connect = || async {
        JetStreamBus::connect(config(&topic, options))
            .await
            .expect("connect")
    };
    let (a, b, c) = (connect().await, connect().await, connect().await);
    // Three processes racing to create the same topology, then once more each.
    let (ra, rb, rc) = tokio::join!(
        a.ensure_topology(),
        b.ensure_topology(),
        c.ensure_topology()
    );
    ra.expect("a");
    rb.expect("b");
    rc.expect("c");
    a.ensure_topology().await.expect("again");

    // A later deploy with a different lock updates the consumers in place.
    let changed = JetStreamBus::connect(JetStreamConfig {
        ack_wait: Duration::from_secs(7),
        duplicate_window: Duration::from_secs(60),
        ..config(&topic, options)
    })
    .await
    .expect("connect");
    changed
        .ensure_topology()
        .await
        .expect("ensure with changed settings");
    let js =
        async_nats::jetstream::new(async_nats::connect(&topic.url).await.expect("raw connect"));
    let mut stream = js.get_stream(&topic.topic).await.expect("stream");
    assert_eq!(
        stream
            .info()
            .await
            .expect("stream info")
            .config
            .duplicate_window,
        Duration::from_secs(60)
    );
    let info = stream
        .consumer_info(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("consumer info");
    assert_eq!(
        info.config.ack_wait,
        Duration::from_secs(7),
        "consumer updated in place"
    );

    // Still works as a bus.
    let mut rx = a
        .subscribe(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("subscribe");
    assert_eq!(
        a.publish(&sample(1)).await.expect("publish"),
        PublishOutcome::Published
    );
    let got = rx
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    for d in got {
        d.complete().await.expect("complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_deliveries_watcher_dead_letters_what_jetstream_gave_up_on() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    let options = Options {
        lock: Duration::from_secs(1),
        max_deliver: 2,
    };
    let bus = JetStreamBus::connect(config(&topic, options))
        .await
        .expect("connect");
    bus.ensure_topology().await.expect("topology");
    let handed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook: mirror_bus::DeadLetterHook = {
        let handed = handed.clone();
        std::sync::Arc::new(move |message, why| handed.lock().unwrap().push((message, why)))
    };
    let watcher = bus
        .max_deliveries_watcher(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("watcher")
        .on_dead_letter(hook);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(watcher.run(async move {
        let _ = stopped.await;
    }));

    let mut rx = bus
        .subscribe(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("subscribe");
    let mut sent = sample(1);
    sent.message.properties = vec![("rm-case".into(), WireValue::String("max-deliveries".into()))];
    bus.publish(&sent).await.expect("publish");
    for attempt in 1..=2u32 {
        let got = rx
            .receive(1, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0].delivery_count(), attempt);
        for d in got {
            d.retry(Duration::ZERO).await.expect("retry");
        }
    }

    // JetStream gives up (it notices when it next tries to deliver, so keep
    // pulling); the watcher moves the message to the dead-letter queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let entry = loop {
        let got = rx
            .receive(1, Duration::from_millis(300))
            .await
            .expect("receive");
        assert!(got.is_empty(), "delivered beyond max_deliver: {got:?}");
        let listed = bus
            .list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
            .await
            .expect("list");
        if let Some(e) = listed.into_iter().next() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message never dead-lettered after max deliveries"
        );
    };
    assert_eq!(entry.reason, MAX_DELIVERIES_REASON);
    assert_eq!(entry.attempts, 2);
    assert_eq!(
        entry.original_message_id.as_deref(),
        Some(sent.message_id.as_str())
    );
    assert_eq!(entry.message.body, sent.message.body);
    assert_eq!(entry.message.content_type, sent.message.content_type);
    assert_eq!(entry.message.properties, sent.message.properties);
    // The hook got the same message, so the writer can record its SQL row.
    let handed = handed.lock().unwrap().clone();
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].0.body, sent.message.body);
    assert_eq!(
        (handed[0].1.reason.as_str(), handed[0].1.attempts),
        (MAX_DELIVERIES_REASON, 2)
    );
    assert!(rx
        .receive(1, Duration::from_millis(1500))
        .await
        .expect("receive")
        .is_empty());

    let _ = stop.send(());
    task.await
        .expect("watcher task")
        .expect("watcher ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letter_twice_is_stored_once_and_removal_is_scoped() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    let options = Options {
        lock: Duration::from_secs(1),
        max_deliver: 10,
    };
    let bus = JetStreamBus::connect(config(&topic, options))
        .await
        .expect("connect");
    bus.ensure_topology().await.expect("topology");
    let mut rx = bus
        .subscribe(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("subscribe");
    let sent = sample(1);
    bus.publish(&sent).await.expect("publish");
    // A consumer that stalled past its lock still holds the first delivery
    // while a second consumer holds the redelivery; both dead-letter it.
    let stale = rx
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .remove(0);
    let fresh = rx
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive redelivery")
        .remove(0);
    assert_eq!(fresh.delivery_count(), 2);
    let why = DeadLetter {
        reason: "invalid_field".into(),
        description: format!("first line\n{}", "x".repeat(10_000)),
        attempts: 2,
    };
    stale
        .dead_letter(&why)
        .await
        .expect("dead letter (stale delivery)");
    fresh
        .dead_letter(&why)
        .await
        .expect("dead letter (redelivery)");

    let listed = bus
        .list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
        .await
        .expect("list");
    assert_eq!(
        listed.len(),
        1,
        "one entry per original message: {listed:#?}"
    );
    assert!(
        listed[0].description.len() <= 2048,
        "description kept to {} bytes",
        listed[0].description.len()
    );
    assert!(
        listed[0].description.starts_with("first line x"),
        "{}",
        &listed[0].description[..40]
    );
    assert!(rx
        .receive(1, Duration::from_millis(1500))
        .await
        .expect("receive")
        .is_empty());

    let err = bus
        .remove_dead_letter("monitoring", &listed[0].handle)
        .await
        .expect_err("another subscription's entry");
    assert!(err.to_string().contains("remove dead letter"), "{err}");
    let err = bus
        .remove_dead_letter(SQL_WRITER_SUBSCRIPTION, "not-a-seq")
        .await
        .expect_err("bad handle");
    assert!(err.to_string().contains("not-a-seq"), "{err}");
    bus.remove_dead_letter(SQL_WRITER_SUBSCRIPTION, &listed[0].handle)
        .await
        .expect("remove");
    bus.remove_dead_letter(SQL_WRITER_SUBSCRIPTION, &listed[0].handle)
        .await
        .expect("remove again is a no-op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_name_the_operation_and_never_panic() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    let bus = JetStreamBus::connect(config(&topic, Options::default()))
        .await
        .expect("connect");

    // No topology yet.
    let err = bus
        .subscribe(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect_err("no consumer yet");
    assert!(err.to_string().starts_with("subscribe:"), "{err}");
    let err = bus.publish(&sample(1)).await.expect_err("no stream yet");
    assert!(err.to_string().starts_with("publish:"), "{err}");

    bus.ensure_topology().await.expect("topology");
    let mut too_big = sample(2);
    too_big.message.body = vec![b'x'; 2 * 1024 * 1024];
    assert!(matches!(
        bus.publish(&too_big).await,
        Err(BusError::TooLarge { .. })
    ));
    let mut bad = sample(3);
    bad.message.properties = vec![("bad header".into(), WireValue::String("v".into()))];
    assert!(bus.publish(&bad).await.is_err());

    let err = JetStreamBus::connect(JetStreamConfig {
        topic: "has.dot".into(),
        ..JetStreamConfig::default()
    })
    .await
    .expect_err("invalid topic");
    assert!(matches!(err, BusError::Config(_)), "{err}");
    let err = JetStreamBus::connect(JetStreamConfig {
        url: "nats://127.0.0.1:1".into(),
        connect_timeout: Duration::from_millis(500),
        ..JetStreamConfig::default()
    })
    .await
    .expect_err("nothing listens on port 1");
    assert!(matches!(err, BusError::Connect(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receive_waits_instead_of_failing_when_max_ack_pending_is_reached() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    let bus = JetStreamBus::connect(JetStreamConfig {
        max_ack_pending: 1,
        ..config(&topic, Options::default())
    })
    .await
    .expect("connect");
    bus.ensure_topology().await.expect("topology");
    let mut rx = bus
        .subscribe(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("subscribe");
    for n in 1..=2 {
        bus.publish(&sample(n)).await.expect("publish");
    }
    let held = rx
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(held.len(), 1, "max_ack_pending 1 lets one through");
    let started = tokio::time::Instant::now();
    let none = rx
        .receive(10, Duration::from_millis(600))
        .await
        .expect("receive while full");
    assert!(none.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "returned at once: would spin"
    );
    for d in held {
        d.complete().await.expect("complete");
    }
    let next = rx
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive after settling");
    assert_eq!(next.len(), 1);
    for d in next {
        d.complete().await.expect("complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receive_returns_as_soon_as_a_message_arrives() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    let bus = JetStreamBus::connect(config(&topic, Options::default()))
        .await
        .expect("connect");
    bus.ensure_topology().await.expect("topology");
    let mut rx = bus
        .subscribe(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("subscribe");

    // Nothing there: waits about `wait`, not longer.
    let started = tokio::time::Instant::now();
    assert!(rx
        .receive(10, Duration::from_millis(500))
        .await
        .expect("receive")
        .is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "empty receive took {took:?}"
    );

    // Some there: returns them at once, without waiting to fill the batch.
    for n in 1..=3 {
        bus.publish(&sample(n)).await.expect("publish");
    }
    let started = tokio::time::Instant::now();
    let got = rx
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    for d in got {
        d.complete().await.expect("complete");
    }

    // One arriving during the wait: returned when it arrives.
    let publisher = bus.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publisher.publish(&sample(4)).await.expect("publish");
    });
    let started = tokio::time::Instant::now();
    let got = rx
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    for d in got {
        d.complete().await.expect("complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_reports_duplicates_within_the_window() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    let bus = JetStreamBus::connect(config(&topic, Options::default()))
        .await
        .expect("connect");
    bus.ensure_topology().await.expect("topology");
    let sent = sample(1);
    assert_eq!(
        bus.publish(&sent).await.expect("publish"),
        PublishOutcome::Published
    );
    assert_eq!(
        bus.publish(&sent).await.expect("again"),
        PublishOutcome::Duplicate
    );
    // A different id with the same body is a different message.
    let replay = OutboundMessage {
        message_id: format!("{}.replay.1", sent.message_id),
        ..sent.clone()
    };
    assert_eq!(
        bus.publish(&replay).await.expect("replay"),
        PublishOutcome::Published
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topology_adopts_streams_created_elsewhere() {
    mirror_tests::init();
    let topic = FreshTopic::new();
    // Someone (an operator, an older version) created the streams differently:
    // a shorter retention, and memory storage, which cannot be changed in place.
    let js =
        async_nats::jetstream::new(async_nats::connect(&topic.url).await.expect("raw connect"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: topic.topic.clone(),
        subjects: vec![topic.topic.clone()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .expect("pre-create topic stream");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: topic.dead_letter_stream(),
        subjects: vec![format!("{}.>", topic.dead_letter_stream())],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("pre-create dead-letter stream");

    let bus = JetStreamBus::connect(config(&topic, Options::default()))
        .await
        .expect("connect");
    bus.ensure_topology()
        .await
        .expect("ensure over existing streams");
    let mut stream = js.get_stream(&topic.topic).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(
        info.config.max_age,
        JetStreamConfig::default().max_age,
        "retention updated in place"
    );
    assert_eq!(
        info.config.duplicate_window,
        JetStreamConfig::default().duplicate_window
    );

    // And the adopted topology works end to end, dead letters included.
    let mut rx = bus
        .subscribe(SQL_WRITER_SUBSCRIPTION)
        .await
        .expect("subscribe");
    bus.publish(&sample(1)).await.expect("publish");
    let d = rx
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .remove(0);
    d.dead_letter(&DeadLetter {
        reason: "invalid_field".into(),
        description: "x".into(),
        attempts: 1,
    })
    .await
    .expect("dead letter");
    assert_eq!(
        bus.list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
            .await
            .expect("list")
            .len(),
        1
    );
}
