//! The `EventBus` conformance suite, defined once and run against every
//! adapter (`tests/tests/bus_jetstream.rs`, `tests/tests/bus_servicebus.rs`).
//!
//! Each case takes a [`BusFactory`] and asks it for a [`Fresh`] bus: a topic
//! whose topology exists and whose subscriptions and dead-letter queues are
//! empty. Cases only use the port ([`EventBus`], [`Receiver`], [`Delivery`]),
//! so what passes here is what the writer may rely on.
//!
//! [`bus_conformance_tests!`](crate::bus_conformance_tests) expands to one
//! `#[tokio::test]` per case, so adapters with a fresh topic per test run the
//! cases in parallel. Waits are short and every case is bounded by
//! [`CASE_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use mirror_bus::{
    Backlog, BusErrorKind, DeadLetter, DeadLetterHook, Delivery, EventBus, OutboundMessage,
    PublishOutcome, Receiver, MONITORING_SUBSCRIPTION, SQL_WRITER_SUBSCRIPTION,
};
use mirror_schema::{Op, WireMessage, WireValue, STRUCTURED_CONTENT_TYPE};
use tokio::time::Instant;

use crate::events;

/// No case may take longer than this by default.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(45);

/// The per-case limit: [`CASE_TIMEOUT`], or `BUS_CASE_TIMEOUT_SECS` for brokers
/// whose shortest lock is long (Service Bus: 1 minute, and the lock cases wait
/// for several locks).
pub fn case_timeout() -> Duration {
    std::env::var("BUS_CASE_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(CASE_TIMEOUT)
}

/// What a case asks of the factory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Requested lock duration (JetStream ack wait, Service Bus lock duration).
    pub lock: Duration,
    /// Requested deliveries before the broker gives up on a message.
    pub max_deliver: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lock: Duration::from_secs(2),
            max_deliver: 10,
        }
    }
}

/// A bus ready for one case.
pub struct Fresh<B> {
    pub bus: B,
    /// The lock duration actually in force (a broker may not honour the request).
    pub lock: Duration,
    /// The delivery limit actually in force (Service Bus: the deployed
    /// `maxDeliveryCount`, whatever was asked).
    pub max_deliver: u32,
    /// Kept alive for the case (e.g. a [`FreshTopic`](crate::FreshTopic) that deletes its streams on drop).
    pub guard: Box<dyn Send + Sync>,
}

/// Makes a [`Fresh`] bus per case. Any `Fn(Options) -> impl Future<Output = Fresh<B>>` is one.
pub trait BusFactory: Send + Sync {
    type Bus: EventBus;
    fn fresh(&self, options: Options) -> impl Future<Output = Fresh<Self::Bus>> + Send;
}

impl<F, Fut, B> BusFactory for F
where
    F: Fn(Options) -> Fut + Send + Sync,
    Fut: Future<Output = Fresh<B>> + Send,
    B: EventBus,
{
    type Bus = B;
    fn fresh(&self, options: Options) -> impl Future<Output = Fresh<B>> + Send {
        self(options)
    }
}

/// One `#[tokio::test]` per conformance case. `$factory` is an expression of
/// type `Option<impl BusFactory>`; `None` means the adapter is gated off (the
/// gate has already printed its `skipped:` line) and the test passes.
#[macro_export]
macro_rules! bus_conformance_tests {
    ($factory:expr) => {
        $crate::bus_conformance_tests!(@cases $factory;
            publish_then_receive,
            duplicate_suppression,
            complete_removes,
            complete_all_removes_every_delivery,
            retry_redelivers,
            delivery_count_increments_across_retries,
            dead_letter_with_reason,
            replay_from_dead_letter,
            lock_expiry_redelivers,
            keep_alive_extends_lock,
            backlog_counts,
            subscription_backlog_seen_from_outside,
            competing_consumers_and_independent_subscriptions,
            oversized_publish_is_refused,
            settling_after_the_lock_expired_loses_nothing,
            retry_waits_for_its_delay,
            consumer_resumes_after_idle,
            dead_letters_keep_the_partition_key,
            broker_dead_letters_are_reported,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::init();
                if let Some(factory) = $factory {
                    $crate::bus_conformance::run(stringify!($case), $crate::bus_conformance::$case(&factory)).await;
                }
            }
        )*
    };
}

/// Run one case under [`case_timeout`].
pub async fn run(name: &str, case: impl Future<Output = ()>) {
    let limit = case_timeout();
    if tokio::time::timeout(limit, case).await.is_err() {
        panic!("conformance case `{name}` did not finish within {limit:?}");
    }
}

// ---------------------------------------------------------------- helpers

/// A message for this case: a real contract event, plus string properties
/// (every transport carries those unchanged).
fn message(tag: &str, n: u32) -> OutboundMessage {
    let event = events::message(
        Op::Create,
        &format!("c-{tag}"),
        &format!("m-{n}"),
        &format!("hello {n}"),
        events::t(i64::from(n)),
    );
    let mut out = OutboundMessage::from_event(&event);
    out.message.properties = vec![
        ("rm-case".to_owned(), WireValue::String(tag.to_owned())),
        ("rm-seq".to_owned(), WireValue::String(n.to_string())),
    ];
    out
}

fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

async fn publish<B: EventBus>(bus: &B, m: &OutboundMessage) {
    let outcome = bus
        .publish(m)
        .await
        .unwrap_or_else(|e| panic!("publish `{}`: {e}", m.message_id));
    assert_eq!(
        outcome,
        PublishOutcome::Published,
        "first publish of `{}`",
        m.message_id
    );
}

async fn subscribe<B: EventBus>(bus: &B, subscription: &str) -> B::Receiver {
    bus.subscribe(subscription)
        .await
        .unwrap_or_else(|e| panic!("subscribe `{subscription}`: {e}"))
}

/// Receive until `n` deliveries arrived or `within` elapsed.
async fn receive_n<R: Receiver>(rx: &mut R, n: usize, within: Duration) -> Vec<R::Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let got = rx
            .receive(n - out.len(), left.min(Duration::from_millis(500)))
            .await
            .unwrap_or_else(|e| panic!("receive: {e}"));
        out.extend(got);
    }
    out
}

async fn receive_one<R: Receiver>(rx: &mut R, within: Duration, what: &str) -> R::Delivery {
    let mut got = receive_n(rx, 1, within).await;
    assert_eq!(
        got.len(),
        1,
        "expected one delivery ({what}) within {within:?}, got {}",
        got.len()
    );
    got.remove(0)
}

/// Assert nothing is delivered during `during`.
async fn expect_nothing<R: Receiver>(rx: &mut R, during: Duration, why: &str) {
    let got = receive_n(rx, 1, during).await;
    let ids: Vec<_> = got
        .iter()
        .map(|d| d.message_id().map(str::to_owned))
        .collect();
    assert!(got.is_empty(), "expected no delivery ({why}), got {ids:?}");
}

fn sorted_properties(m: &WireMessage) -> BTreeMap<String, String> {
    m.properties
        .iter()
        .filter(|(k, _)| k.starts_with("rm-"))
        .map(|(k, v)| {
            let v = match v {
                WireValue::String(s) => s.clone(),
                other => panic!("property `{k}` came back as {other:?}, expected a string"),
            };
            (k.clone(), v)
        })
        .collect()
}

fn assert_same_message(got: &WireMessage, sent: &WireMessage) {
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        String::from_utf8_lossy(&sent.body),
        "body differs"
    );
    assert_eq!(got.content_type, sent.content_type, "content type differs");
    assert_eq!(
        sorted_properties(got),
        sorted_properties(sent),
        "properties differ"
    );
}

/// Poll the backlog until `ok` holds (brokers report counts with a delay).
async fn backlog_until<R: Receiver>(
    rx: &mut R,
    what: &str,
    ok: impl Fn(Backlog) -> bool,
) -> Option<Backlog> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = rx
            .backlog()
            .await
            .unwrap_or_else(|e| panic!("backlog: {e}"))?;
        if ok(b) {
            return Some(b);
        }
        assert!(
            Instant::now() < deadline,
            "backlog never reached {what}: last {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------ cases

/// Body, content type, properties and id survive the trip; first delivery counts 1.
pub async fn publish_then_receive<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    assert_eq!(
        sent.message.content_type.as_deref(),
        Some(STRUCTURED_CONTENT_TYPE)
    );
    publish(&fresh.bus, &sent).await;

    let d = receive_one(&mut rx, Duration::from_secs(5), "the published message").await;
    assert_same_message(d.message(), &sent.message);
    assert_eq!(d.message_id(), Some(sent.message_id.as_str()));
    assert_eq!(d.delivery_count(), 1);
    let event = mirror_schema::decode_wire(d.message()).expect("delivered message decodes");
    assert_eq!(event.id().to_string(), sent.message_id);
    d.complete().await.expect("complete");
}

/// The same message id twice within the window: one stored, one delivery.
/// The second publish reports `Duplicate` where the broker says so (JetStream;
/// its runner asserts that); Service Bus drops it silently and acknowledges
/// it, so `Published` is accepted here.
pub async fn duplicate_suppression<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let again = fresh.bus.publish(&sent).await.expect("second publish");
    assert!(
        matches!(again, PublishOutcome::Duplicate | PublishOutcome::Published),
        "{again:?}"
    );

    let d = receive_one(&mut rx, Duration::from_secs(5), "the first copy").await;
    d.complete().await.expect("complete");
    expect_nothing(
        &mut rx,
        Duration::from_secs(1),
        "the duplicate must have been dropped",
    )
    .await;
}

/// A completed message is gone: nothing comes back after the lock expires.
pub async fn complete_removes<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    publish(&fresh.bus, &message(&tag(), 1)).await;
    let d = receive_one(&mut rx, Duration::from_secs(5), "the message").await;
    d.complete().await.expect("complete");
    expect_nothing(
        &mut rx,
        fresh.lock + Duration::from_millis(1500),
        "completed message redelivered",
    )
    .await;
    backlog_until(&mut rx, "empty", |b| b == Backlog::default()).await;
}

/// [`Delivery::complete_all`] (the writer's bulk settlement) completes every
/// delivery it is given, one `Ok` per delivery in order: none comes back and
/// the subscription is empty. An empty list is a no-op.
pub async fn complete_all_removes_every_delivery<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let t = tag();
    for n in 1..=5 {
        publish(&fresh.bus, &message(&t, n)).await;
    }
    let got = receive_n(&mut rx, 5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5, "all five delivered");
    let results = <<F::Bus as EventBus>::Receiver as Receiver>::Delivery::complete_all(got).await;
    assert_eq!(results.len(), 5, "one result per delivery");
    for r in results {
        r.expect("complete_all");
    }
    let none =
        <<F::Bus as EventBus>::Receiver as Receiver>::Delivery::complete_all(Vec::new()).await;
    assert!(none.is_empty());
    expect_nothing(
        &mut rx,
        fresh.lock + Duration::from_millis(1500),
        "a message completed in bulk was redelivered",
    )
    .await;
    backlog_until(&mut rx, "empty", |b| b == Backlog::default()).await;
}

/// `retry` releases the message: it comes back, counted as delivery 2.
pub async fn retry_redelivers<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let d = receive_one(&mut rx, Duration::from_secs(5), "first delivery").await;
    d.retry(Duration::ZERO).await.expect("retry");

    let d = receive_one(&mut rx, Duration::from_secs(5), "redelivery after retry").await;
    assert_eq!(d.message_id(), Some(sent.message_id.as_str()));
    assert_eq!(d.delivery_count(), 2);
    assert_same_message(d.message(), &sent.message);
    d.complete().await.expect("complete");
}

/// Each retry adds one to the delivery count; a short retry delay is honoured
/// as "later", and a completed message stays gone.
pub async fn delivery_count_increments_across_retries<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    for expected in 1..=3u32 {
        let d = receive_one(&mut rx, Duration::from_secs(8), "next delivery").await;
        assert_eq!(
            d.delivery_count(),
            expected,
            "delivery count of attempt {expected}"
        );
        if expected < 3 {
            d.retry(Duration::from_millis(300))
                .await
                .expect("retry with delay");
        } else {
            d.complete().await.expect("complete");
        }
    }
    expect_nothing(
        &mut rx,
        fresh.lock + Duration::from_millis(500),
        "completed after retries",
    )
    .await;
}

/// A dead-lettered message is listed with its reason, description, attempts
/// and original id, only under its own subscription, and never redelivered.
pub async fn dead_letter_with_reason<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let d = receive_one(&mut rx, Duration::from_secs(5), "the message").await;
    let why = DeadLetter {
        reason: "invalid_field".to_owned(),
        description: "data.payload.bodyText: expected a string\nat line 1".to_owned(),
        attempts: d.delivery_count(),
    };
    d.dead_letter(&why).await.expect("dead letter");

    let listed = fresh
        .bus
        .list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
        .await
        .expect("list dead letters");
    assert_eq!(listed.len(), 1, "dead letters: {listed:#?}");
    let entry = &listed[0];
    assert_eq!(entry.reason, "invalid_field");
    assert!(
        entry
            .description
            .contains("data.payload.bodyText: expected a string"),
        "description: {:?}",
        entry.description
    );
    assert_eq!(entry.attempts, 1);
    assert_eq!(
        entry.original_message_id.as_deref(),
        Some(sent.message_id.as_str())
    );
    assert_same_message(&entry.message, &sent.message);
    if let Some(at) = entry.dead_lettered_at {
        let age = chrono::Utc::now() - at;
        assert!(
            age < chrono::Duration::minutes(5),
            "dead_lettered_at {at} is not recent"
        );
    }

    let monitoring = fresh
        .bus
        .list_dead_letters(MONITORING_SUBSCRIPTION, 10)
        .await
        .expect("list monitoring dead letters");
    assert!(
        monitoring.is_empty(),
        "monitoring's dead-letter queue: {monitoring:#?}"
    );
    expect_nothing(
        &mut rx,
        fresh.lock + Duration::from_millis(1500),
        "dead-lettered message redelivered",
    )
    .await;
}

/// The replay path of `mirrorctl`: list, republish under `{id}.replay.1`,
/// receive it again, remove the dead letter.
pub async fn replay_from_dead_letter<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let d = receive_one(&mut rx, Duration::from_secs(5), "the message").await;
    d.dead_letter(&DeadLetter {
        reason: "store_unavailable".to_owned(),
        description: "retries exhausted".to_owned(),
        attempts: 5,
    })
    .await
    .expect("dead letter");

    let listed = fresh
        .bus
        .list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    let entry = listed.into_iter().next().unwrap();
    assert_eq!(entry.attempts, 5);
    let original_id = entry.original_message_id.clone().expect("original id");
    let replay = OutboundMessage {
        message_id: format!("{original_id}.replay.1"),
        partition_key: sent.partition_key.clone(),
        message: entry.message.clone(),
    };
    publish(&fresh.bus, &replay).await;

    let d = receive_one(&mut rx, Duration::from_secs(5), "the replayed message").await;
    assert_eq!(d.message_id(), Some(replay.message_id.as_str()));
    assert_eq!(d.delivery_count(), 1);
    assert_same_message(d.message(), &sent.message);
    d.complete().await.expect("complete replay");

    fresh
        .bus
        .remove_dead_letter(SQL_WRITER_SUBSCRIPTION, &entry.handle)
        .await
        .expect("remove dead letter");
    let left = fresh
        .bus
        .list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
        .await
        .expect("list");
    assert!(left.is_empty(), "dead letters after removal: {left:#?}");
}

/// An unsettled delivery comes back once its lock expires.
pub async fn lock_expiry_redelivers<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let held = receive_one(&mut rx, Duration::from_secs(5), "first delivery").await;
    assert_eq!(held.delivery_count(), 1);
    // Locked: not visible to the subscription right away.
    expect_nothing(&mut rx, fresh.lock / 4, "message visible while locked").await;

    let again = receive_one(
        &mut rx,
        fresh.lock * 3 + Duration::from_secs(2),
        "redelivery after lock expiry",
    )
    .await;
    assert_eq!(again.message_id(), Some(sent.message_id.as_str()));
    assert_eq!(again.delivery_count(), 2);
    again.complete().await.expect("complete");
    drop(held);
}

/// `keep_alive` extends the lock: another consumer does not see the message
/// for well past one lock duration, and it completes fine afterwards.
pub async fn keep_alive_extends_lock<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let mut other = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    publish(&fresh.bus, &message(&tag(), 1)).await;
    let d = receive_one(&mut rx, Duration::from_secs(5), "the message").await;

    let lock = fresh.lock;
    let holder = async {
        // Renew at 40% of the lock, for 2.4 locks in total.
        for _ in 0..6 {
            tokio::time::sleep(lock * 2 / 5).await;
            d.keep_alive().await.expect("keep alive");
        }
    };
    let watcher = expect_nothing(
        &mut other,
        lock * 12 / 5,
        "message redelivered while kept alive",
    );
    tokio::join!(holder, watcher);
    d.complete().await.expect("complete after keep-alive");
    expect_nothing(
        &mut rx,
        lock + Duration::from_millis(500),
        "completed message redelivered",
    )
    .await;
}

/// Backlog counts what is waiting and what is in flight.
pub async fn backlog_counts<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let t = tag();
    for n in 1..=3 {
        publish(&fresh.bus, &message(&t, n)).await;
    }
    let Some(b) = backlog_until(&mut rx, "3 pending", |b| b.pending == 3).await else {
        println!("backlog not reported by this adapter; case skipped");
        return;
    };
    assert_eq!(b.in_flight, 0, "{b:?}");

    let d = receive_one(&mut rx, Duration::from_secs(5), "one of three").await;
    backlog_until(&mut rx, "2 pending + 1 in flight", |b| {
        b.pending == 2 && b.in_flight == 1
    })
    .await;
    d.complete().await.expect("complete");
    backlog_until(&mut rx, "2 pending, none in flight", |b| {
        b.pending == 2 && b.in_flight == 0
    })
    .await;

    let rest = receive_n(&mut rx, 2, Duration::from_secs(5)).await;
    assert_eq!(rest.len(), 2);
    for d in rest {
        d.complete().await.expect("complete");
    }
    backlog_until(&mut rx, "empty", |b| b == Backlog::default()).await;
}

/// [`EventBus::subscription_backlog`] counts what is not yet settled without
/// a receiver of its own: `pending + in_flight` is 3 after three publishes,
/// still 3 while one is held by a consumer (JetStream counts it in flight, a
/// Service Bus peek still sees it), and 0 once all are completed. Asking
/// locks nothing: the consumer still receives all three.
pub async fn subscription_backlog_seen_from_outside<F: BusFactory>(factory: &F) {
    async fn until<B: EventBus>(bus: &B, what: &str, ok: impl Fn(u64) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let b = bus
                .subscription_backlog(SQL_WRITER_SUBSCRIPTION)
                .await
                .unwrap_or_else(|e| panic!("subscription_backlog: {e}"));
            let Some(b) = b else { return false };
            if ok(b.pending + b.in_flight) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "backlog never reached {what}: last {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let fresh = factory.fresh(Options::default()).await;
    let t = tag();
    for n in 1..=3 {
        publish(&fresh.bus, &message(&t, n)).await;
    }
    if !until(&fresh.bus, "3 unsettled", |n| n == 3).await {
        println!("backlog not reported by this adapter; case skipped");
        return;
    }
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let first = receive_one(&mut rx, Duration::from_secs(5), "one of three").await;
    until(&fresh.bus, "3 unsettled with one held", |n| n == 3).await;
    first.complete().await.expect("complete");
    let rest = receive_n(&mut rx, 2, Duration::from_secs(5)).await;
    assert_eq!(
        rest.len(),
        2,
        "asking for the backlog must not lock messages"
    );
    for d in rest {
        d.complete().await.expect("complete");
    }
    until(&fresh.bus, "0 unsettled", |n| n == 0).await;
}

/// Two consumers of `sql-writer` split the messages without duplicates, and
/// `monitoring` independently gets every one.
pub async fn competing_consumers_and_independent_subscriptions<F: BusFactory>(factory: &F) {
    const N: u32 = 30;
    let fresh = factory.fresh(Options::default()).await;
    let mut a = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let mut b = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let mut monitoring = subscribe(&fresh.bus, MONITORING_SUBSCRIPTION).await;
    let t = tag();
    let mut expected = BTreeSet::new();
    for n in 1..=N {
        let m = message(&t, n);
        expected.insert(m.message_id.clone());
        publish(&fresh.bus, &m).await;
    }

    async fn drain<R: Receiver>(
        rx: &mut R,
        stop: &std::sync::atomic::AtomicUsize,
        total: usize,
    ) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ids = Vec::new();
        while stop.load(std::sync::atomic::Ordering::SeqCst) < total && Instant::now() < deadline {
            // Small batches so both consumers get a share.
            for d in rx
                .receive(3, Duration::from_millis(300))
                .await
                .expect("receive")
            {
                ids.push(d.message_id().expect("message id").to_owned());
                stop.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                d.complete().await.expect("complete");
            }
        }
        ids
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (got_a, got_b) = tokio::join!(
        drain(&mut a, &done, N as usize),
        drain(&mut b, &done, N as usize)
    );

    let mut all: Vec<String> = got_a.iter().chain(&got_b).cloned().collect();
    all.sort();
    let unique: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "a message went to both competing consumers"
    );
    assert_eq!(unique, expected, "competing consumers missed messages");
    println!(
        "competing consumers split {N} messages {} / {}",
        got_a.len(),
        got_b.len()
    );

    let seen = receive_n(&mut monitoring, N as usize, Duration::from_secs(10)).await;
    let seen_ids: BTreeSet<String> = seen
        .iter()
        .map(|d| d.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), N as usize, "monitoring deliveries");
    assert_eq!(seen_ids, expected, "monitoring must get every message");
    for d in seen {
        d.complete().await.expect("complete monitoring");
    }
    expect_nothing(
        &mut a,
        Duration::from_millis(500),
        "sql-writer after all completed",
    )
    .await;
}

/// A publish the broker cannot take is an error — never `Published` — and a
/// publish reported `Published` is delivered. The size is the one refusal
/// every broker can be made to give (throttling and a full topic cannot be
/// provoked on demand; the Service Bus adapter's handling of `server-busy` is
/// unit-tested against the library's real error text):
/// - 2 MiB is over every broker's limit: `TooLarge`.
/// - Just under the contract's 256 KiB passes the contract's check; on
///   Service Bus (256 KiB including headers) the adapter's measure against
///   the link's limit (`try_add_message`, less a margin) or the broker itself
///   refuses it — `TooLarge`; JetStream (1 MiB) stores it — then it must arrive.
pub async fn oversized_publish_is_refused<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let t = tag();
    let mut huge = message(&t, 1);
    huge.message.body = vec![b'x'; 2 * 1024 * 1024];
    match fresh.bus.publish(&huge).await {
        Err(e) => assert_eq!(e.kind(), BusErrorKind::TooLarge, "{e}"),
        Ok(outcome) => panic!("a 2 MiB publish was reported as {outcome:?}"),
    }
    let mut edge = message(&t, 2);
    edge.message.body = vec![b'x'; mirror_schema::MAX_EVENT_BYTES - 512];
    match fresh.bus.publish(&edge).await {
        Err(e) => {
            assert_eq!(e.kind(), BusErrorKind::TooLarge, "{e}");
            expect_nothing(&mut rx, Duration::from_secs(1), "refused messages").await;
        }
        Ok(outcome) => {
            assert_eq!(outcome, PublishOutcome::Published);
            let d = receive_one(
                &mut rx,
                Duration::from_secs(5),
                "a message reported published",
            )
            .await;
            assert_eq!(d.message_id(), Some(edge.message_id.as_str()));
            d.complete().await.expect("complete");
        }
    }
}

/// A delivery whose lock expired was (or will be) delivered again; settling
/// the stale one must not lose the message. Adapters that know the lock is
/// gone (Service Bus, past `locked_until`) refuse with `LockLost`; JetStream
/// acks by stream sequence, so its stale ack is accepted and removes the
/// message — then the redelivery (already in hand) is the one that counts,
/// and completing it is still fine. Either way: no error other than
/// `LockLost`, and the fresh delivery settles.
pub async fn settling_after_the_lock_expired_loses_nothing<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let stale = receive_one(&mut rx, Duration::from_secs(5), "first delivery").await;
    let again = receive_one(
        &mut rx,
        fresh.lock * 3 + Duration::from_secs(2),
        "redelivery after lock expiry",
    )
    .await;
    assert_eq!(again.delivery_count(), 2);
    if let Err(e) = stale.complete().await {
        assert_eq!(e.kind(), BusErrorKind::LockLost, "{e}");
    }
    if let Err(e) = again.complete().await {
        assert_eq!(e.kind(), BusErrorKind::LockLost, "{e}");
    }
}

/// `retry(delay)` is honoured: the message is not redelivered before about
/// the delay (Service Bus holds the lock for it, JetStream naks with delay).
pub async fn retry_waits_for_its_delay<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let d = receive_one(&mut rx, Duration::from_secs(5), "first delivery").await;
    let delay = Duration::from_secs(3);
    let retried_at = Instant::now();
    d.retry(delay).await.expect("retry");
    let d = receive_one(
        &mut rx,
        delay * 4 + fresh.lock,
        "redelivery after the delay",
    )
    .await;
    let waited = retried_at.elapsed();
    assert!(
        waited >= delay / 2,
        "redelivered after {waited:?}, before half the {delay:?} delay"
    );
    assert_eq!(d.delivery_count(), 2);
    d.complete().await.expect("complete");
}

/// A consumer left idle keeps working: after `BUS_IDLE_SECS` (default 3; the
/// emulator job uses 70, past Service Bus's one-minute accept-session
/// timeout, which is where a cancelled session accept used to wedge the
/// consumer for good) a new message is received as usual. With sessions on,
/// the two messages use different partition keys, so the second needs a new
/// session.
pub async fn consumer_resumes_after_idle<F: BusFactory>(factory: &F) {
    let idle = std::env::var("BUS_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(3));
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let t = tag();
    let first = message(&t, 1);
    publish(&fresh.bus, &first).await;
    receive_one(&mut rx, Duration::from_secs(10), "before idling")
        .await
        .complete()
        .await
        .expect("complete");
    // idle the way the writer does: empty receives
    let until = Instant::now() + idle;
    while Instant::now() < until {
        let got = rx
            .receive(8, Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| panic!("receive while idle: {e}"));
        assert!(got.is_empty(), "nothing was published");
    }
    let mut second = message(&t, 2);
    second.partition_key = Some(format!("other-{t}"));
    publish(&fresh.bus, &second).await;
    let d = receive_one(&mut rx, Duration::from_secs(20), "after idling").await;
    assert_eq!(d.message_id(), Some(second.message_id.as_str()));
    d.complete().await.expect("complete");
}

/// A dead letter keeps the partition key it was published with, so a replay
/// lands in the same session: Service Bus reports the `SessionId` (set only
/// with sessions on); JetStream has no sessions and reports none.
pub async fn dead_letters_keep_the_partition_key<F: BusFactory>(factory: &F) {
    let fresh = factory.fresh(Options::default()).await;
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    let d = receive_one(&mut rx, Duration::from_secs(5), "the message").await;
    d.dead_letter(&DeadLetter {
        reason: "invalid_field".into(),
        description: "test".into(),
        attempts: 1,
    })
    .await
    .expect("dead-letter");
    let listed = wait_dead_letters(&fresh.bus, 1).await;
    let entry = &listed[0];
    assert!(!entry.by_broker, "dead-lettered by the consumer");
    if let Some(key) = &entry.partition_key {
        assert_eq!(Some(key), sent.partition_key.as_ref());
    }
    // a replay with that key is accepted and delivered
    let replay = OutboundMessage {
        message_id: format!("{}.replay.1.{}", sent.message_id, entry.handle),
        partition_key: entry.partition_key.clone().or(sent.partition_key.clone()),
        message: entry.message.clone(),
    };
    publish(&fresh.bus, &replay).await;
    fresh
        .bus
        .remove_dead_letter(SQL_WRITER_SUBSCRIPTION, &entry.handle)
        .await
        .expect("remove");
    let d = receive_one(&mut rx, Duration::from_secs(10), "the replay").await;
    assert_eq!(d.message_id(), Some(replay.message_id.as_str()));
    d.complete().await.expect("complete");
}

async fn wait_dead_letters<B: EventBus>(bus: &B, n: usize) -> Vec<mirror_bus::DeadLettered> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = bus
            .list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
            .await
            .expect("list dead letters");
        if listed.len() >= n {
            return listed;
        }
        assert!(Instant::now() < deadline, "{n} dead letters never listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A message the broker dead-letters on its own — the delivery limit reached
/// with nobody dead-lettering it — is reported by
/// [`EventBus::watch_broker_dead_letters`] (JetStream: the max-deliveries
/// advisory, watched from before; Service Bus: the `$deadletterqueue` sweep,
/// whose first pass on a second watch, started after, finds it).
pub async fn broker_dead_letters_are_reported<F: BusFactory>(factory: &F) {
    let fresh = factory
        .fresh(Options {
            max_deliver: 2,
            ..Options::default()
        })
        .await;
    let handed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook: DeadLetterHook = {
        let handed = handed.clone();
        std::sync::Arc::new(move |message: WireMessage, why: DeadLetter| {
            handed.lock().unwrap().push((message, why))
        })
    };
    let before = fresh
        .bus
        .watch_broker_dead_letters(SQL_WRITER_SUBSCRIPTION, hook.clone())
        .await
        .expect("watch");
    let mut rx = subscribe(&fresh.bus, SQL_WRITER_SUBSCRIPTION).await;
    let sent = message(&tag(), 1);
    publish(&fresh.bus, &sent).await;
    for attempt in 1..=fresh.max_deliver {
        let d = receive_one(&mut rx, Duration::from_secs(10), "a delivery").await;
        assert_eq!(d.delivery_count(), attempt);
        d.retry(Duration::ZERO).await.expect("retry");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = None;
    loop {
        // keep pulling: JetStream notices the limit when it next tries
        let got = rx
            .receive(1, Duration::from_millis(300))
            .await
            .expect("receive");
        assert!(got.is_empty(), "delivered beyond the delivery limit");
        if !handed.lock().unwrap().is_empty() {
            break;
        }
        if after.is_none() && !wait_dead_letters_now(&fresh.bus).await.is_empty() {
            after = Some(
                fresh
                    .bus
                    .watch_broker_dead_letters(SQL_WRITER_SUBSCRIPTION, hook.clone())
                    .await
                    .expect("second watch"),
            );
        }
        assert!(
            Instant::now() < deadline,
            "the broker's dead letter was never reported"
        );
    }
    let (message, why) = handed.lock().unwrap()[0].clone();
    assert_eq!(message.body, sent.message.body);
    assert!(!why.reason.is_empty());
    before.abort();
    if let Some(t) = after {
        t.abort();
    }
}

async fn wait_dead_letters_now<B: EventBus>(bus: &B) -> Vec<mirror_bus::DeadLettered> {
    bus.list_dead_letters(SQL_WRITER_SUBSCRIPTION, 10)
        .await
        .unwrap_or_default()
}
