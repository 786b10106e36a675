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
#[derive(Clone)]
struct Script {
    rejections: Vec<ErrorCondition>,
    transfers: Arc<AtomicUsize>,
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
                replies.lock().await.insert(address, s);
            }
            LinkEndpoint::Receiver(r) => {
                let address = address_of_target(&r);
                let replies = replies.clone();
                let script = script.clone();
                if address.ends_with("$cbs") || address.ends_with("$management") {
                    tokio::spawn(answer_requests(r, address, replies));
                } else {
                    tokio::spawn(settle_publishes(r, script));
                }
            }
        }
    }
    // keep the session (and its links) up until the client goes
    let _ = session;
}

/// Answer every request on a `$cbs` / `$management` link with the status
/// `put-token` expects (202), on the reply link of the same address.
async fn answer_requests(mut requests: AmqpReceiver, address: String, replies: Replies) {
    while let Ok(delivery) = requests.recv::<Body<Value>>().await {
        let _ = requests.accept(&delivery).await;
        let message_id = delivery
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let reply = Message::builder()
            .properties(Properties {
                correlation_id: message_id,
                ..Default::default()
            })
            .application_properties(ApplicationProperties(
                [("status-code".to_owned(), SimpleValue::Int(202))]
                    .into_iter()
                    .collect(),
            ))
            .value(Value::Null)
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
        transfers: Arc::new(AtomicUsize::new(0)),
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
    assert_eq!(script.transfers.load(Ordering::SeqCst), 2, "one rejected, one accepted");
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
        transfers: Arc::new(AtomicUsize::new(0)),
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
