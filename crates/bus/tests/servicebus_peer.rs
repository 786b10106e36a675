//! The Service Bus adapter against a scripted AMQP 1.0 peer (fe2o3-amqp's
//! acceptor side), not against Service Bus: the peer speaks just enough of
//! what azservicebus needs (SASL ANONYMOUS as for the emulator, CBS
//! `put-token` answered 202, the `$management` links attached, the topic's
//! sender link) and settles each publish as scripted. It proves what the
//! adapter does with a broker's *outcome* — the library's real code path, the
//! real AMQP frames — not what Service Bus itself sends.
#![cfg(feature = "servicebus")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAnonymousMechanism,
    SessionAcceptor,
};
use fe2o3_amqp::link::{Receiver as AmqpReceiver, Sender as AmqpSender};
use fe2o3_amqp_types::definitions::{Error as AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp_types::messaging::{ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp_types::primitives::{SimpleValue, Symbol, Value};
use mirror_bus::servicebus::{ServiceBusBus, ServiceBusConfig};
use mirror_bus::{BusError, BusErrorKind, EventBus, OutboundMessage, PublishOutcome};
use mirror_schema::{WireMessage, WireValue};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// How the peer settles the publishes on the topic, in order; after the
/// script, it accepts.
#[derive(Clone, Default)]
struct Script {
    rejections: Vec<ErrorCondition>,
    transfers: Arc<AtomicUsize>,
    /// Messages delivered on a subscription's receive link: (sequence number,
    /// `x-opt-locked-until` as Unix milliseconds).
    deliveries: Vec<(i64, i64)>,
    /// What the client did with each delivered message, by sequence number.
    outcomes: Arc<std::sync::Mutex<HashMap<i64, &'static str>>>,
    /// `com.microsoft:renew-lock` requests answered.
    renewals: Arc<AtomicUsize>,
}

type Replies = Arc<Mutex<HashMap<String, AmqpSender>>>;

fn address_of_target(r: &AmqpReceiver) -> String {
    r.target()
        .as_ref()
        .and_then(|t| t.address.clone())
        .unwrap_or_default()
}

async fn serve_session(mut session: ListenerSessionHandle, script: Script) {
    let links = LinkAcceptor::new();
    let replies: Replies = Arc::new(Mutex::new(HashMap::new()));
    while let Ok(link) = links.accept(&mut session).await {
        match link {
            LinkEndpoint::Sender(s) => {
                let address = s
                    .source()
                    .as_ref()
                    .and_then(|t| t.address.clone())
                    .unwrap_or_default();
                if address.contains("/Subscriptions/") && !address.ends_with("$management") {
                    tokio::spawn(deliver(s, script.clone()));
                } else {
                    replies.lock().await.insert(address, s);
                }
            }
            LinkEndpoint::Receiver(r) => {
                let address = address_of_target(&r);
                let replies = replies.clone();
                let script = script.clone();
                if address.ends_with("$cbs") || address.ends_with("$management") {
                    tokio::spawn(answer_requests(
                        r,
                        address,
                        replies,
                        script.renewals.clone(),
                    ));
                } else {
                    tokio::spawn(settle_publishes(r, script));
                }
            }
        }
    }
    // keep the session (and its links) up until the client goes
    let _ = session;
}

/// Answer every request on a `$cbs` / `$management` link, on the reply link
/// of the same address: `com.microsoft:renew-lock` with 200 and a lock one
/// minute from now; anything else (CBS `put-token`) with 202.
async fn answer_requests(
    mut requests: AmqpReceiver,
    address: String,
    replies: Replies,
    renewals: Arc<AtomicUsize>,
) {
    use fe2o3_amqp_types::primitives::{Array, OrderedMap, Timestamp};
    while let Ok(delivery) = requests.recv::<Body<Value>>().await {
        let _ = requests.accept(&delivery).await;
        let message_id = delivery
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let operation = delivery
            .message()
            .application_properties
            .as_ref()
            .and_then(|ap| ap.get("operation"))
            .and_then(|v| match v {
                SimpleValue::String(s) => Some(s.clone()),
                SimpleValue::Symbol(s) => Some(s.0.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let renew = operation == "com.microsoft:renew-lock";
        if renew {
            renewals.fetch_add(1, Ordering::SeqCst);
        }
        let mut body = OrderedMap::new();
        if renew {
            let until = chrono::Utc::now().timestamp_millis() + 60_000;
            body.insert(
                "expirations".to_owned(),
                Array(vec![Timestamp::from_milliseconds(until)]),
            );
        }
        let reply = Message::builder()
            .properties(Properties {
                correlation_id: message_id,
                ..Default::default()
            })
            .application_properties(ApplicationProperties(
                [(
                    "status-code".to_owned(),
                    SimpleValue::Int(if renew { 200 } else { 202 }),
                )]
                .into_iter()
                .collect(),
            ))
            .value(body)
            .build();
        for _ in 0..100 {
            if let Some(sender) = replies.lock().await.get_mut(&address) {
                let _ = sender.send(reply).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Deliver the scripted messages (peek-lock: unsettled, lock token in the
/// delivery annotations, lock expiry and sequence number in the message
/// annotations, as Service Bus does) and record what the client did.
async fn deliver(mut link: AmqpSender, script: Script) {
    use fe2o3_amqp_types::messaging::{Data, DeliveryAnnotations, MessageAnnotations, Outcome};
    use fe2o3_amqp_types::primitives::{Binary, Timestamp, Uuid};
    for (seq, locked_until_ms) in script.deliveries.clone() {
        let lock_token = Uuid::from(*uuid::Uuid::new_v4().as_bytes());
        let message = Message::builder()
            .delivery_annotations(DeliveryAnnotations(
                [(
                    Symbol::from("x-opt-lock-token").into(),
                    Value::Uuid(lock_token),
                )]
                .into_iter()
                .collect(),
            ))
            .message_annotations(MessageAnnotations(
                [
                    (
                        Symbol::from("x-opt-locked-until").into(),
                        Value::Timestamp(Timestamp::from_milliseconds(locked_until_ms)),
                    ),
                    (
                        Symbol::from("x-opt-sequence-number").into(),
                        Value::Long(seq),
                    ),
                ]
                .into_iter()
                .collect(),
            ))
            .data(Data(Binary::from(format!("message {seq}").into_bytes())))
            .build();
        let Ok(outcome) = link.send_batchable(message).await else {
            return;
        };
        let outcomes = script.outcomes.clone();
        tokio::spawn(async move {
            let what = match outcome.await {
                Ok(Outcome::Accepted(_)) => "accepted",
                Ok(Outcome::Modified(_)) => "modified",
                Ok(Outcome::Released(_)) => "released",
                Ok(Outcome::Rejected(_)) => "rejected",
                _ => "lost",
            };
            outcomes.lock().unwrap().insert(seq, what);
        });
    }
    // keep the link open
    std::future::pending::<()>().await;
}

async fn settle_publishes(mut topic: AmqpReceiver, script: Script) {
    while let Ok(delivery) = topic.recv::<Body<Value>>().await {
        let n = script.transfers.fetch_add(1, Ordering::SeqCst);
        match script.rejections.get(n) {
            Some(condition) => {
                let error = AmqpError::new(condition.clone(), Some("scripted".to_owned()), None);
                let _ = topic.reject(&delivery, error).await;
            }
            None => {
                let _ = topic.accept(&delivery).await;
            }
        }
    }
}

/// A peer on `ip`:5672 (azservicebus ignores the endpoint's port), serving
/// every connection with `script`; `None` if the address cannot be bound.
async fn start_peer(ip: &str, script: Script) -> Option<()> {
    let listener = match TcpListener::bind((ip, 5672)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: cannot listen on {ip}:5672 ({e})");
            return None;
        }
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let acceptor = ConnectionAcceptor::builder()
                    .container_id("scripted-peer")
                    .sasl_acceptor(SaslAnonymousMechanism::new())
                    .build();
                let Ok(mut connection) = acceptor.accept(stream).await else {
                    return;
                };
                let sessions = SessionAcceptor::new();
                while let Ok(session) = sessions.accept(&mut connection).await {
                    tokio::spawn(serve_session(session, script.clone()));
                }
            });
        }
    });
    Some(())
}

fn outbound(id: &str) -> OutboundMessage {
    OutboundMessage {
        message_id: id.to_owned(),
        partition_key: None,
        message: WireMessage {
            content_type: Some("application/cloudevents+json".to_owned()),
            properties: vec![("rm-case".to_owned(), WireValue::String("peer".into()))],
            body: br#"{"specversion":"1.0"}"#.to_vec(),
        },
    }
}

async fn bus(ip: &str) -> ServiceBusBus {
    let cs = format!(
        "Endpoint=sb://{ip};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=not-a-secret;UseDevelopmentEmulator=true;"
    );
    let config = ServiceBusConfig::from_connection_string(&cs, "realtime-mirror").unwrap();
    tokio::time::timeout(Duration::from_secs(30), ServiceBusBus::connect(config))
        .await
        .expect("connect within 30 s")
        .expect("connect to the scripted peer")
}

/// The broker throttles the first publish (`com.microsoft:server-busy`): the
/// adapter waits at least 10 s, sends again, and reports `Published` only
/// after the second transfer was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_publish_is_retried_not_reported_sent() {
    let ip = "127.0.0.41";
    let script = Script {
        rejections: vec![ErrorCondition::Custom(Symbol::from(
            "com.microsoft:server-busy",
        ))],
        ..Script::default()
    };
    if start_peer(ip, script.clone()).await.is_none() {
        return;
    }
    let bus = bus(ip).await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(90), bus.publish(&outbound("e-1")))
        .await
        .expect("publish within 90 s")
        .expect("published after the retry");
    assert_eq!(outcome, PublishOutcome::Published);
    // One rejected, then accepted. In about half the runs here there is a
    // third transfer ~30 s later: the client did not see the second
    // transfer's Accepted within the library's 30 s try timeout and sent again
    // (same MessageId, which Service Bus's duplicate detection drops). Not
    // root-caused (this peer or fe2o3); it never turns a rejection into
    // `Published`, which is what this test is for.
    let transfers = script.transfers.load(Ordering::SeqCst);
    eprintln!("transfers: {transfers}");
    assert!(
        transfers >= 2,
        "{transfers} transfers: the rejected one was not sent again"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "retried after {:?}, before the 10 s server-busy wait",
        started.elapsed()
    );
}

/// The broker refuses the size: `TooLarge` at once, one transfer, never `Published`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_for_size_is_too_large() {
    let ip = "127.0.0.42";
    let script = Script {
        rejections: vec![ErrorCondition::LinkError(LinkError::MessageSizeExceeded); 3],
        ..Script::default()
    };
    if start_peer(ip, script.clone()).await.is_none() {
        return;
    }
    let bus = bus(ip).await;
    let result = tokio::time::timeout(Duration::from_secs(30), bus.publish(&outbound("e-2")))
        .await
        .expect("publish within 30 s");
    match result {
        Err(e @ BusError::TooLarge { .. }) => assert_eq!(e.kind(), BusErrorKind::TooLarge),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(script.transfers.load(Ordering::SeqCst), 1, "not retried");
}

/// Locks the client cannot trust: a message whose lock is already gone when
/// it arrives (a prefetched message that waited) is abandoned, not handed out;
/// a delivery whose lock expired while it was held is refused as `LockLost`
/// rather than "completed" into the void (fe2o3 would report `Ok` without
/// learning the outcome); a live one is completed and the broker sees Accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_expiry_is_checked_before_handing_out_and_settling() {
    use mirror_bus::{Delivery, Receiver};
    let ip = "127.0.0.43";
    let now_ms = chrono::Utc::now().timestamp_millis();
    let script = Script {
        deliveries: vec![
            (1, now_ms - 10_000),
            (2, now_ms + 60_000),
            (3, now_ms + 3_000),
        ],
        ..Script::default()
    };
    if start_peer(ip, script.clone()).await.is_none() {
        return;
    }
    let bus = bus(ip).await;
    let mut rx = tokio::time::timeout(Duration::from_secs(30), bus.subscribe("sql-writer"))
        .await
        .expect("subscribe within 30 s")
        .expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < deadline {
        got.extend(
            rx.receive(3, Duration::from_millis(500))
                .await
                .expect("receive"),
        );
    }
    let mut seqs: Vec<i64> = got.iter().map(|d| d.sequence_number()).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        [2, 3],
        "the message that arrived with its lock gone is not handed out"
    );
    let outcome = |seq: i64| script.outcomes.lock().unwrap().get(&seq).copied();
    let wait_for = |seq: i64| async move {
        for _ in 0..50 {
            if let Some(o) = outcome(seq) {
                return Some(o);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    };
    assert_eq!(wait_for(1).await, Some("modified"), "abandoned");

    let (mut live, mut short): (Vec<_>, Vec<_>) =
        got.into_iter().partition(|d| d.sequence_number() == 2);
    live.pop()
        .unwrap()
        .complete()
        .await
        .expect("complete a live lock");
    assert_eq!(wait_for(2).await, Some("accepted"));

    // past its lock by more than the clock-skew allowance
    tokio::time::sleep(Duration::from_secs(9)).await;
    let e = short.pop().unwrap().complete().await.unwrap_err();
    assert_eq!(e.kind(), BusErrorKind::LockLost, "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outcome(3), None, "nothing was sent for a lost lock");
}

/// `retry(delay)` is honoured: the lock is kept for the delay and the message
/// abandoned after it, not at once (Service Bus has no delayed abandon).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_abandons_after_its_delay() {
    use mirror_bus::{Delivery, Receiver};
    let ip = "127.0.0.44";
    let now_ms = chrono::Utc::now().timestamp_millis();
    let script = Script {
        deliveries: vec![(7, now_ms + 60_000)],
        ..Script::default()
    };
    if start_peer(ip, script.clone()).await.is_none() {
        return;
    }
    let bus = bus(ip).await;
    let mut rx = tokio::time::timeout(Duration::from_secs(30), bus.subscribe("sql-writer"))
        .await
        .expect("subscribe within 30 s")
        .expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.is_empty() && Instant::now() < deadline {
        got = rx
            .receive(1, Duration::from_millis(500))
            .await
            .expect("receive");
    }
    let d = got.pop().expect("the message");
    let retried = Instant::now();
    d.retry(Duration::from_secs(3)).await.expect("retry");
    let outcome = || script.outcomes.lock().unwrap().get(&7).copied();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outcome(), None, "abandoned before the delay");
    let deadline = Instant::now() + Duration::from_secs(10);
    while outcome().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcome(), Some("modified"), "abandoned after the delay");
    assert!(
        retried.elapsed() >= Duration::from_secs(3),
        "{:?}",
        retried.elapsed()
    );
    drop(rx);
}

/// The writer's keep-alive pass over the real management link: one
/// `renew-lock` request per delivery (azservicebus sends one token per
/// request), every answer applied. (Skipping locks already lost is the same
/// check as settlement's, proven by
/// `lock_expiry_is_checked_before_handing_out_and_settling`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pass_renews_each_lock() {
    use mirror_bus::servicebus::ServiceBusDelivery;
    use mirror_bus::{Delivery, Receiver};
    let ip = "127.0.0.45";
    let now_ms = chrono::Utc::now().timestamp_millis();
    let script = Script {
        deliveries: vec![
            (1, now_ms + 60_000),
            (2, now_ms + 60_000),
            (3, now_ms + 60_000),
        ],
        ..Script::default()
    };
    if start_peer(ip, script.clone()).await.is_none() {
        return;
    }
    let bus = bus(ip).await;
    let mut rx = tokio::time::timeout(Duration::from_secs(30), bus.subscribe("sql-writer"))
        .await
        .expect("subscribe within 30 s")
        .expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(
            rx.receive(3, Duration::from_millis(500))
                .await
                .expect("receive"),
        );
    }
    assert_eq!(got.len(), 3);
    let failed = ServiceBusDelivery::keep_alive_all(&got, Duration::from_secs(5)).await;
    assert_eq!(failed, 0);
    assert_eq!(
        script.renewals.load(Ordering::SeqCst),
        3,
        "one request per live lock"
    );

    // The peer renewed every lock to a minute: a second pass renews all three again.
    let failed = ServiceBusDelivery::keep_alive_all(&got, Duration::from_secs(5)).await;
    assert_eq!(failed, 0);
    assert_eq!(script.renewals.load(Ordering::SeqCst), 6);
    for d in got {
        d.complete().await.expect("complete");
    }
}
