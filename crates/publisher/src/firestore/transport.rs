//! [`FirestoreTransport`]: the live path's listen stream over gRPC.

use std::collections::HashMap;

use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::gcloud_sdk::tonic;
use firestore::FirestoreDb;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::convert;
use crate::listen::{ListenRequest, ListenResponse};
use crate::live::{ListenTransport, TargetSpec, TransportError, TARGETS};
use crate::sink::KeyRange;
use crate::value::Document;

/// Opens `Listen` streams on one database for [`TARGETS`].
#[derive(Clone)]
pub struct FirestoreTransport {
    db: FirestoreDb,
    range: KeyRange,
}

impl FirestoreTransport {
    pub fn new(db: FirestoreDb) -> FirestoreTransport {
        FirestoreTransport {
            db,
            range: KeyRange::ALL,
        }
    }

    /// Restrict every target to these partition keys (must equal
    /// [`crate::live::LiveConfig::range`]).
    pub fn with_range(mut self, range: KeyRange) -> FirestoreTransport {
        self.range = range;
        self
    }
}

/// Builds the wire requests for one database.
#[derive(Clone)]
struct Requests {
    database: String,
    documents: String,
    range: KeyRange,
}

impl Requests {
    /// `__name__ >= {docs}/{scope}/{lo} AND __name__ < {docs}/{scope}/{hi}`.
    fn name_range(&self, spec: &TargetSpec) -> pb::structured_query::Filter {
        use pb::structured_query::{
            composite_filter, field_filter, filter, CompositeFilter, FieldFilter, FieldReference,
            Filter,
        };
        let (lo, hi) = spec.bounds(&self.range);
        let bound = |op: field_filter::Operator, path: String| Filter {
            filter_type: Some(filter::FilterType::FieldFilter(FieldFilter {
                field: Some(FieldReference {
                    field_path: "__name__".into(),
                }),
                op: op as i32,
                value: Some(pb::Value {
                    value_type: Some(pb::value::ValueType::ReferenceValue(format!(
                        "{}/{path}",
                        self.documents
                    ))),
                }),
            })),
        };
        Filter {
            filter_type: Some(filter::FilterType::CompositeFilter(CompositeFilter {
                op: composite_filter::Operator::And as i32,
                filters: vec![
                    bound(field_filter::Operator::GreaterThanOrEqual, lo),
                    bound(field_filter::Operator::LessThan, hi),
                ],
            })),
        }
    }
}

impl Requests {
    fn to_proto(&self, request: ListenRequest) -> Option<pb::ListenRequest> {
        use pb::listen_request::TargetChange as TC;
        let target_change = match request {
            ListenRequest::Add {
                target_id,
                resume_token,
                read_time,
                expected_count,
            } => {
                let spec: &TargetSpec = TARGETS.iter().find(|t| t.id == target_id)?;
                let resume_type = match (resume_token, read_time) {
                    (Some(token), _) => Some(pb::target::ResumeType::ResumeToken(token)),
                    (None, Some(t)) => Some(pb::target::ResumeType::ReadTime(
                        convert::to_proto_timestamp(&t),
                    )),
                    (None, None) => None,
                };
                TC::AddTarget(pb::Target {
                    target_id,
                    once: false,
                    expected_count,
                    target_type: Some(pb::target::TargetType::Query(pb::target::QueryTarget {
                        parent: self.documents.clone(),
                        query_type: Some(pb::target::query_target::QueryType::StructuredQuery(
                            pb::StructuredQuery {
                                from: vec![pb::structured_query::CollectionSelector {
                                    collection_id: spec.collection_id.to_owned(),
                                    all_descendants: spec.all_descendants,
                                }],
                                r#where: Some(self.name_range(spec)),
                                ..Default::default()
                            },
                        )),
                    })),
                    resume_type,
                })
            }
            ListenRequest::Remove { target_id } => TC::RemoveTarget(target_id),
        };
        Some(pb::ListenRequest {
            database: self.database.clone(),
            labels: HashMap::new(),
            request_options: None,
            target_change: Some(target_change),
        })
    }
}

impl ListenTransport for FirestoreTransport {
    type Stream = BoxStream<'static, Result<ListenResponse, TransportError>>;

    fn name_prefix(&self) -> String {
        format!("{}/", self.db.get_documents_path())
    }

    /// `BatchGetDocuments`: one billed read per document.
    async fn get_documents(
        &self,
        paths: &[String],
    ) -> Result<Vec<Option<Document>>, TransportError> {
        let documents = self.db.get_documents_path().clone();
        let names: Vec<String> = paths.iter().map(|p| format!("{documents}/{p}")).collect();
        let mut stream = self
            .db
            .client()
            .get()
            .batch_get_documents(pb::BatchGetDocumentsRequest {
                database: self.db.get_database_path().clone(),
                documents: names,
                mask: None,
                request_options: None,
                consistency_selector: None,
            })
            .await
            .map_err(|s| convert::status(&s))?
            .into_inner();
        let mut found = std::collections::HashMap::new();
        while let Some(item) = stream.next().await {
            let item = item.map_err(|s| convert::status(&s))?;
            if let Some(pb::batch_get_documents_response::Result::Found(d)) = item.result {
                let doc = convert::document(&d)?;
                found.insert(doc.path.clone(), doc);
            }
        }
        Ok(paths.iter().map(|p| found.remove(p)).collect())
    }

    async fn open(
        &self,
        requests: mpsc::UnboundedReceiver<ListenRequest>,
    ) -> Result<Self::Stream, TransportError> {
        let builder = Requests {
            database: self.db.get_database_path().clone(),
            documents: self.db.get_documents_path().clone(),
            range: self.range.clone(),
        };
        // The request half stays open for as long as the driver holds its sender.
        let outgoing =
            futures::stream::unfold((requests, builder), |(mut rx, builder)| async move {
                loop {
                    let next = rx.recv().await?;
                    if let Some(proto) = builder.to_proto(next) {
                        return Some((proto, (rx, builder)));
                    }
                }
            });
        let response = self
            .db
            .client()
            .get()
            .listen(tonic::Request::new(outgoing))
            .await
            .map_err(|s| convert::status(&s))?;
        Ok(response
            .into_inner()
            .filter_map(|item| async move {
                match item {
                    Err(s) => Some(Err(convert::status(&s))),
                    Ok(r) => convert::listen_response(r).transpose(),
                }
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_add_and_remove_requests_for_the_stable_targets() {
        let b = Requests {
            database: "projects/p/databases/(default)".into(),
            documents: "projects/p/databases/(default)/documents".into(),
            range: KeyRange {
                lo: Some("A".into()),
                hi: Some("V".into()),
            },
        };
        let req = b
            .to_proto(ListenRequest::Add {
                target_id: 2,
                resume_token: Some(vec![1]),
                read_time: None,
                expected_count: Some(7),
            })
            .unwrap();
        let Some(pb::listen_request::TargetChange::AddTarget(t)) = req.target_change else {
            panic!()
        };
        assert_eq!(t.target_id, 2);
        assert_eq!(t.expected_count, Some(7));
        assert_eq!(
            t.resume_type,
            Some(pb::target::ResumeType::ResumeToken(vec![1]))
        );
        let Some(pb::target::TargetType::Query(q)) = t.target_type else {
            panic!()
        };
        let Some(pb::target::query_target::QueryType::StructuredQuery(sq)) = q.query_type else {
            panic!()
        };
        assert_eq!(sq.from[0].collection_id, "messages");
        assert!(sq.from[0].all_descendants);
        // Restricted to this instance's keys under `conversations/`.
        let Some(pb::structured_query::filter::FilterType::CompositeFilter(and)) =
            sq.r#where.and_then(|w| w.filter_type)
        else {
            panic!()
        };
        let refs: Vec<_> = and
            .filters
            .iter()
            .map(|f| match &f.filter_type {
                Some(pb::structured_query::filter::FilterType::FieldFilter(ff)) => {
                    match &ff.value.as_ref().unwrap().value_type {
                        Some(pb::value::ValueType::ReferenceValue(r)) => r.clone(),
                        _ => panic!(),
                    }
                }
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            refs,
            vec![
                "projects/p/databases/(default)/documents/conversations/A",
                "projects/p/databases/(default)/documents/conversations/V"
            ]
        );
        assert!(b
            .to_proto(ListenRequest::Add {
                target_id: 99,
                resume_token: None,
                read_time: None,
                expected_count: None,
            })
            .is_none());
        let req = b
            .to_proto(ListenRequest::Add {
                target_id: 1,
                resume_token: None,
                read_time: Some(chrono::DateTime::from_timestamp(60, 0).unwrap()),
                expected_count: None,
            })
            .unwrap();
        let Some(pb::listen_request::TargetChange::AddTarget(t)) = req.target_change else {
            panic!()
        };
        assert_eq!(
            t.resume_type,
            Some(pb::target::ResumeType::ReadTime(
                firestore::gcloud_sdk::prost_types::Timestamp {
                    seconds: 60,
                    nanos: 0
                }
            ))
        );
        let req = b.to_proto(ListenRequest::Remove { target_id: 1 }).unwrap();
        assert_eq!(
            req.target_change,
            Some(pb::listen_request::TargetChange::RemoveTarget(1))
        );
    }
}
