//! An in-process fake of Firestore's gRPC `RunQuery`, reached through
//! `FIRESTORE_EMULATOR_HOST` like the real emulator, for the consistency
//! check's `--source firestore` path (the publisher's `FirestorePager` over
//! the `firestore` crate's real client and wire format).
//!
//! Not a Firestore: it holds documents in memory and answers the query
//! shapes the pager sends — one collection (or collection group), an
//! optional `field >= timestamp` filter, `order by` the listed fields then
//! `__name__`, a `start after` cursor and a `limit` — and records every query
//! (so a test can count billed reads). Anything else is `UNIMPLEMENTED`. The
//! same pattern as the publisher's own fake (`publisher/src/firestore/fake_server.rs`),
//! which scripts the `Listen` stream instead.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use publisher::firestore::sdk::gcloud_sdk::google::firestore::v1 as pb;
use publisher::firestore::sdk::gcloud_sdk::prost_types;
use tonic::codegen::{http, Service};

/// The documents root of the fake's project (`demo`, the fixtures' project).
pub const DOCUMENTS: &str = "projects/demo/databases/(default)/documents";

#[derive(Default)]
struct State {
    /// By path relative to `documents/`.
    docs: BTreeMap<String, pb::Document>,
    queries: Vec<pb::StructuredQuery>,
    /// Documents returned over all queries (Firestore bills one read each, at least one per query).
    returned: u64,
}

/// The fake server's handle: put and delete documents, read what was asked.
#[derive(Clone, Default)]
pub struct FakeFirestore(Arc<Mutex<State>>);

impl tonic::server::NamedService for FakeFirestore {
    const NAME: &'static str = "google.firestore.v1.Firestore";
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A JSON field value as Firestore holds it: strings that are RFC 3339
/// times become timestamps (the fixtures write times that way), integers
/// stay integers.
pub fn value(v: &serde_json::Value) -> pb::Value {
    use pb::value::ValueType as V;
    let vt = match v {
        serde_json::Value::Null => V::NullValue(0),
        serde_json::Value::Bool(b) => V::BooleanValue(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => V::IntegerValue(i),
            None => V::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => V::TimestampValue(ts(t.with_timezone(&Utc))),
            Err(_) => V::StringValue(s.clone()),
        },
        serde_json::Value::Array(a) => V::ArrayValue(pb::ArrayValue {
            values: a.iter().map(value).collect(),
        }),
        serde_json::Value::Object(m) => V::MapValue(pb::MapValue {
            fields: m.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
        }),
    };
    pb::Value {
        value_type: Some(vt),
    }
}

impl FakeFirestore {
    /// Serve on a free local port; returns the handle and the address for `FIRESTORE_EMULATOR_HOST`.
    pub async fn start() -> (FakeFirestore, SocketAddr) {
        let fake = FakeFirestore::default();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(fake.clone())
                .serve_with_incoming(incoming),
        );
        (fake, addr)
    }

    /// Create or replace the document at `path` (relative to `documents/`).
    pub fn put(
        &self,
        path: &str,
        fields: &serde_json::Value,
        create_time: DateTime<Utc>,
        update_time: DateTime<Utc>,
    ) {
        let fields = fields
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), value(v))).collect())
            .unwrap_or_default();
        let doc = pb::Document {
            name: format!("{DOCUMENTS}/{path}"),
            fields,
            create_time: Some(ts(create_time)),
            update_time: Some(ts(update_time)),
        };
        self.0.lock().unwrap().docs.insert(path.to_owned(), doc);
    }

    /// Delete the document at `path`; whether it existed.
    pub fn delete(&self, path: &str) -> bool {
        self.0.lock().unwrap().docs.remove(path).is_some()
    }

    /// A document's fields as stored (for a test to change one and put it back).
    pub fn fields(&self, path: &str) -> Option<BTreeMap<String, pb::Value>> {
        self.0
            .lock()
            .unwrap()
            .docs
            .get(path)
            .map(|d| d.fields.clone().into_iter().collect())
    }

    /// Replace a document's fields and update time, keeping its create time.
    pub fn update(
        &self,
        path: &str,
        fields: BTreeMap<String, pb::Value>,
        update_time: DateTime<Utc>,
    ) {
        let mut state = self.0.lock().unwrap();
        let doc = state.docs.get_mut(path).expect("document exists");
        doc.fields = fields.into_iter().collect();
        doc.update_time = Some(ts(update_time));
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (queries served, documents returned) so far.
    pub fn reads(&self) -> (usize, u64) {
        let s = self.0.lock().unwrap();
        (s.queries.len(), s.returned)
    }

    /// The queries served so far.
    pub fn queries(&self) -> Vec<pb::StructuredQuery> {
        self.0.lock().unwrap().queries.clone()
    }

    fn run(&self, q: &pb::StructuredQuery) -> Result<Vec<pb::Document>, tonic::Status> {
        let mut state = self.0.lock().unwrap();
        state.queries.push(q.clone());
        let [from] = q.from.as_slice() else {
            return Err(tonic::Status::unimplemented("one collection selector"));
        };
        let order: Vec<String> = q
            .order_by
            .iter()
            .map(|o| {
                o.field
                    .as_ref()
                    .map(|f| f.field_path.clone())
                    .unwrap_or_default()
            })
            .collect();
        if order.last().map(String::as_str) != Some("__name__") && !order.is_empty() {
            return Err(tonic::Status::unimplemented("order must end with __name__"));
        }
        let filter = match q.r#where.as_ref().and_then(|w| w.filter_type.as_ref()) {
            None => None,
            Some(pb::structured_query::filter::FilterType::FieldFilter(f))
                if f.op
                    == pb::structured_query::field_filter::Operator::GreaterThanOrEqual as i32 =>
            {
                Some((
                    f.field
                        .as_ref()
                        .map(|r| r.field_path.clone())
                        .unwrap_or_default(),
                    f.value.clone().unwrap_or_default(),
                ))
            }
            Some(_) => return Err(tonic::Status::unimplemented("only `field >= value`")),
        };
        let in_scope = |path: &str| {
            let parts: Vec<&str> = path.split('/').collect();
            if from.all_descendants {
                parts.len() >= 2 && parts[parts.len() - 2] == from.collection_id
            } else {
                parts.len() == 2 && parts[0] == from.collection_id
            }
        };
        let key = |d: &pb::Document| -> Vec<pb::Value> {
            order
                .iter()
                .map(|f| {
                    if f == "__name__" {
                        pb::Value {
                            value_type: Some(pb::value::ValueType::ReferenceValue(d.name.clone())),
                        }
                    } else {
                        d.fields.get(f).cloned().unwrap_or_default()
                    }
                })
                .collect()
        };
        let mut hits: Vec<&pb::Document> = state
            .docs
            .iter()
            .filter(|(p, _)| in_scope(p))
            .map(|(_, d)| d)
            .filter(|d| match &filter {
                None => true,
                // Firestore: a document without the field (or of another type) does not match.
                Some((f, v)) => d
                    .fields
                    .get(f)
                    .is_some_and(|x| same_type(x, v) && compare(x, v) != Ordering::Less),
            })
            .collect();
        hits.sort_by(|a, b| compare_keys(&key(a), &key(b)));
        if let Some(cursor) = &q.start_at {
            hits.retain(|d| {
                let c = compare_keys(&key(d), &cursor.values);
                if cursor.before {
                    c != Ordering::Less
                } else {
                    c == Ordering::Greater
                }
            });
        }
        if let Some(limit) = q.limit {
            hits.truncate(usize::try_from(limit.max(0)).unwrap_or(usize::MAX));
        }
        let out: Vec<pb::Document> = hits.into_iter().cloned().collect();
        state.returned += out.len() as u64;
        Ok(out)
    }
}

fn same_type(a: &pb::Value, b: &pb::Value) -> bool {
    a.value_type.as_ref().map(std::mem::discriminant)
        == b.value_type.as_ref().map(std::mem::discriminant)
}

/// The orders the pager uses: timestamps, and references by path.
fn compare(a: &pb::Value, b: &pb::Value) -> Ordering {
    use pb::value::ValueType as V;
    match (&a.value_type, &b.value_type) {
        (Some(V::TimestampValue(x)), Some(V::TimestampValue(y))) => {
            (x.seconds, x.nanos).cmp(&(y.seconds, y.nanos))
        }
        (Some(V::ReferenceValue(x)), Some(V::ReferenceValue(y))) => x.split('/').cmp(y.split('/')),
        (Some(V::StringValue(x)), Some(V::StringValue(y))) => x.cmp(y),
        (Some(V::IntegerValue(x)), Some(V::IntegerValue(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

fn compare_keys(a: &[pb::Value], b: &[pb::Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| compare(x, y))
        .find(|o| *o != Ordering::Equal)
        .unwrap_or(Ordering::Equal)
}

struct RunQuery(FakeFirestore);

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
            let docs = fake.run(&q)?;
            let read_time = Some(ts(Utc::now()));
            let responses: Vec<Result<pb::RunQueryResponse, tonic::Status>> = if docs.is_empty() {
                vec![Ok(pb::RunQueryResponse {
                    read_time,
                    ..Default::default()
                })]
            } else {
                docs.into_iter()
                    .map(|d| {
                        Ok(pb::RunQueryResponse {
                            document: Some(d),
                            read_time,
                            ..Default::default()
                        })
                    })
                    .collect()
            };
            Ok(tonic::Response::new(
                futures::stream::iter(responses).boxed(),
            ))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for FakeFirestore {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fake = self.clone();
        match req.uri().path() {
            "/google.firestore.v1.Firestore/RunQuery" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(RunQuery(fake), req).await)
            }),
            _ => Box::pin(async { Ok(tonic::Status::unimplemented("not faked").into_http()) }),
        }
    }
}
