//! The adapters against an in-process fake of Firestore's gRPC service
//! (reached through `FIRESTORE_EMULATOR_HOST`, like the real emulator): the
//! listen request stream, the wire conversions, resuming from the saved
//! token, and the backfill's query shape. Not a Firestore: it replays a
//! fixed script and records what it was sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::gcloud_sdk::prost_types;
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::codegen::{http, Service};

use crate::backfill::{DocumentPager, Group, PageRequest};
use crate::live::{LiveConfig, LiveDeps, CHECKPOINT_MODULE};
use crate::mapping::SourceInfo;
use crate::sink::Shard;
use crate::testing::{MemoryBus, MemoryStore};

/// (target id, collection id, resume token) of one AddTarget.
type Added = (i32, String, Option<Vec<u8>>);

#[derive(Default)]
struct Recorded {
    /// Per listen stream, its AddTargets.
    adds: Vec<Vec<Added>>,
    queries: Vec<pb::StructuredQuery>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Recorded>>);

impl tonic::server::NamedService for Fake {
    const NAME: &'static str = "google.firestore.v1.Firestore";
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn conversation(name: &str) -> pb::Document {
    let s = |v: &str| pb::Value {
        value_type: Some(pb::value::ValueType::StringValue(v.into())),
    };
    let t = |v: i64| pb::Value {
        value_type: Some(pb::value::ValueType::TimestampValue(ts(v).unwrap())),
    };
    pb::Document {
        name: name.into(),
        fields: [
            ("type".to_owned(), s("group")),
            (
                "participants".to_owned(),
                pb::Value {
                    value_type: Some(pb::value::ValueType::ArrayValue(pb::ArrayValue {
                        values: vec![],
                    })),
                },
            ),
            ("createdAt".to_owned(), t(100)),
            ("updatedAt".to_owned(), t(200)),
        ]
        .into(),
        create_time: ts(100),
        update_time: ts(200),
    }
}

const DOCS: &str = "projects/demo/databases/(default)/documents";

fn target_change(
    kind: i32,
    ids: Vec<i32>,
    token: &[u8],
    read_time: Option<i64>,
) -> pb::ListenResponse {
    pb::ListenResponse {
        response_type: Some(pb::listen_response::ResponseType::TargetChange(
            pb::TargetChange {
                target_change_type: kind,
                target_ids: ids,
                cause: None,
                resume_token: token.to_vec(),
                read_time: read_time.and_then(ts),
            },
        )),
    }
}

struct Listen(Fake);

impl tonic::server::StreamingService<pb::ListenRequest> for Listen {
    type Response = pb::ListenResponse;
    type ResponseStream = BoxStream<'static, Result<pb::ListenResponse, tonic::Status>>;
    type Future = BoxFut<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<pb::ListenRequest>>,
    ) -> Self::Future {
        let fake = self.0.clone();
        Box::pin(async move {
            let mut incoming = request.into_inner();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let stream_no = {
                    let mut r = fake.0.lock().unwrap();
                    r.adds.push(Vec::new());
                    r.adds.len() - 1
                };
                let mut added = Vec::new();
                while let Some(Ok(req)) = incoming.next().await {
                    if let Some(pb::listen_request::TargetChange::AddTarget(t)) = req.target_change
                    {
                        let collection = match &t.target_type {
                            Some(pb::target::TargetType::Query(q)) => match &q.query_type {
                                Some(pb::target::query_target::QueryType::StructuredQuery(sq)) => {
                                    sq.from[0].collection_id.clone()
                                }
                                None => String::new(),
                            },
                            _ => String::new(),
                        };
                        let token = match t.resume_type {
                            Some(pb::target::ResumeType::ResumeToken(tok)) => Some(tok),
                            _ => None,
                        };
                        fake.0.lock().unwrap().adds[stream_no].push((
                            t.target_id,
                            collection,
                            token.clone(),
                        ));
                        added.push(t.target_id);
                        if added.len() == 4 {
                            let resumed = token.is_some();
                            let _ = tx.send(target_change(1, added.clone(), b"", None));
                            if !resumed {
                                let _ = tx.send(pb::ListenResponse {
                                    response_type: Some(
                                        pb::listen_response::ResponseType::DocumentChange(
                                            pb::DocumentChange {
                                                document: Some(conversation(&format!(
                                                    "{DOCS}/conversations/c1"
                                                ))),
                                                target_ids: vec![1],
                                                removed_target_ids: vec![],
                                            },
                                        ),
                                    ),
                                });
                            } else {
                                let _ = tx.send(pb::ListenResponse {
                                    response_type: Some(
                                        pb::listen_response::ResponseType::DocumentDelete(
                                            pb::DocumentDelete {
                                                document: format!("{DOCS}/blocks/u1/targets/u2"),
                                                removed_target_ids: vec![5],
                                                read_time: ts(300),
                                            },
                                        ),
                                    ),
                                });
                            }
                            let token: &[u8] = if resumed { b"t2" } else { b"t1" };
                            let _ = tx.send(target_change(3, vec![1, 2, 4, 5], token, None));
                            let _ = tx.send(target_change(
                                0,
                                vec![],
                                token,
                                Some(if resumed { 301 } else { 201 }),
                            ));
                        }
                    }
                }
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (Ok(m), rx))
            });
            Ok(tonic::Response::new(stream.boxed()))
        })
    }
}

struct RunQuery(Fake);

impl tonic::server::ServerStreamingService<pb::RunQueryRequest> for RunQuery {
    type Response = pb::RunQueryResponse;
    type ResponseStream = BoxStream<'static, Result<pb::RunQueryResponse, tonic::Status>>;
    type Future = BoxFut<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<pb::RunQueryRequest>) -> Self::Future {
        let fake = self.0.clone();
        Box::pin(async move {
            let Some(pb::run_query_request::QueryType::StructuredQuery(q)) =
                request.into_inner().query_type
            else {
                return Err(tonic::Status::invalid_argument("no query"));
            };
            fake.0.lock().unwrap().queries.push(q);
            let response = pb::RunQueryResponse {
                document: Some(conversation(&format!("{DOCS}/conversations/c1"))),
                read_time: ts(400),
                ..Default::default()
            };
            Ok(tonic::Response::new(
                futures::stream::iter([Ok(response)]).boxed(),
            ))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Fake {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fake = self.clone();
        match req.uri().path() {
            "/google.firestore.v1.Firestore/Listen" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.streaming(Listen(fake), req).await)
            }),
            "/google.firestore.v1.Firestore/RunQuery" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(RunQuery(fake), req).await)
            }),
            _ => Box::pin(async { Ok(tonic::Status::unimplemented("not faked").into_http()) }),
        }
    }
}

async fn run_until(
    bus: &MemoryBus,
    store: &MemoryStore,
    db: &super::FirestoreDb,
    done: impl Fn() -> bool + Send + 'static,
) {
    let deps = LiveDeps {
        transport: super::FirestoreTransport::new(db.clone()),
        bus: bus.clone(),
        store: store.clone(),
        config: LiveConfig::new(SourceInfo::new("demo", "(default)"), Shard::SINGLE),
    };
    let stop = async move {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), crate::live::run(deps, stop))
        .await
        .expect("the run reaches its goal")
        .expect("the run succeeds");
}

#[tokio::test]
async fn live_and_backfill_over_grpc_against_a_fake_firestore() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = Fake::default();
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(fake.clone())
            .serve_with_incoming(incoming),
    );
    // The only test in this crate that connects; no other test reads the variable.
    std::env::set_var("FIRESTORE_EMULATOR_HOST", addr.to_string());
    let db = super::connect("demo", "(default)")
        .await
        .expect("connect to the fake");

    // First run: full listen, one conversation, a checkpoint with the token.
    let (bus, store) = (MemoryBus::new(), MemoryStore::new());
    let (b, s) = (bus.clone(), store.clone());
    run_until(&bus, &store, &db, move || {
        !b.published().is_empty() && s.checkpoint(CHECKPOINT_MODULE, "0-of-1").is_some()
    })
    .await;
    let events = bus.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type().as_str(), "dm.conversation.update");
    assert_eq!(
        events[0].source(),
        "firestore://projects/demo/databases/(default)/documents/conversations/c1"
    );
    let adds = fake.0.lock().unwrap().adds[0].clone();
    assert_eq!(
        adds,
        vec![
            (1, "conversations".into(), None),
            (2, "messages".into(), None),
            (4, "targets".into(), None),
            (5, "targets".into(), None)
        ]
    );

    // Second run: resumes with the saved token and publishes a delete at its read time.
    let b = bus.clone();
    run_until(&bus, &store, &db, move || b.published().len() == 2).await;
    let adds = fake.0.lock().unwrap().adds.last().unwrap().clone();
    assert!(
        adds.iter()
            .all(|(_, _, tok)| tok.as_deref() == Some(&b"t1"[..])),
        "{adds:?}"
    );
    let delete = bus.events().pop().unwrap();
    assert_eq!(delete.event_type().as_str(), "dm.block.delete");
    assert_eq!(
        delete.time(),
        chrono::DateTime::from_timestamp(300, 0).unwrap()
    );

    // The pager's query shape on the wire.
    let page = super::FirestorePager::new(db.clone())
        .page(PageRequest {
            group: Group::Messages,
            field: None,
            since: None,
            read_time: None,
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.docs.len(), 1);
    assert_eq!(page.next.unwrap().path, "conversations/c1");
    let q = fake.0.lock().unwrap().queries[0].clone();
    assert!(q.from[0].all_descendants);
    assert_eq!(q.limit, Some(10));
    assert!(
        q.r#where.is_none(),
        "messages are paged by __name__, unfiltered"
    );
}
