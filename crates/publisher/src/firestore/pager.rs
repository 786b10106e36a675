//! [`FirestorePager`]: the backfill's ordered, cursor-paged reads.
//!
//! `conversations`: `where updatedAt >= since` (the Unix epoch when no
//! `--since` is given, which also restricts results to documents whose
//! `updatedAt` is a timestamp), `order by updatedAt, __name__`, `start after
//! (updatedAt, name)`, `limit n` (served by the automatic single-field index).
//! `messages` and `targets` (collection groups, no update-time field in the
//! contract): `order by __name__`, `start after name`, `limit n`, no filter
//! (served by the built-in `__name__` index at collection group scope).
//! Every page and count may be pinned to one `read_time`.

use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::FirestoreDb;
use futures::StreamExt;

use super::convert;
use crate::backfill::{Count, Cursor, DocumentPager, Group, Page, PageRequest, PagerError};
use crate::value::{Timestamp, Value};

/// Reads a database's documents for the backfill.
#[derive(Clone)]
pub struct FirestorePager {
    db: FirestoreDb,
}

impl FirestorePager {
    pub fn new(db: FirestoreDb) -> FirestorePager {
        FirestorePager { db }
    }
}

fn field(path: &str) -> Option<pb::structured_query::FieldReference> {
    Some(pb::structured_query::FieldReference {
        field_path: path.to_owned(),
    })
}

fn ts_value(t: &Timestamp) -> pb::Value {
    pb::Value {
        value_type: Some(pb::value::ValueType::TimestampValue(
            convert::to_proto_timestamp(t),
        )),
    }
}

/// The structured query of a page walk (without a limit for counts).
pub(crate) fn query(
    documents: &str,
    group: Group,
    order: Option<&'static str>,
    since: Option<Timestamp>,
    after: Option<&Cursor>,
    limit: Option<u32>,
) -> pb::StructuredQuery {
    use pb::structured_query::{
        field_filter, filter, CollectionSelector, Direction, FieldFilter, Filter, Order,
    };
    let from = vec![CollectionSelector {
        collection_id: group.collection_id().to_owned(),
        all_descendants: group.all_descendants(),
    }];
    let reference = |path: &str| pb::Value {
        value_type: Some(pb::value::ValueType::ReferenceValue(format!(
            "{documents}/{path}"
        ))),
    };
    let limit = limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX));
    let Some(order) = order else {
        return pb::StructuredQuery {
            from,
            order_by: vec![Order {
                field: field("__name__"),
                direction: Direction::Ascending as i32,
            }],
            start_at: after.map(|c| pb::Cursor {
                values: vec![reference(&c.path)],
                before: false,
            }),
            limit,
            ..Default::default()
        };
    };
    let since = since.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    pb::StructuredQuery {
        from,
        r#where: Some(Filter {
            filter_type: Some(filter::FilterType::FieldFilter(FieldFilter {
                field: field(order),
                op: field_filter::Operator::GreaterThanOrEqual as i32,
                value: Some(ts_value(&since)),
            })),
        }),
        order_by: vec![
            Order {
                field: field(order),
                direction: Direction::Ascending as i32,
            },
            Order {
                field: field("__name__"),
                direction: Direction::Ascending as i32,
            },
        ],
        start_at: after.map(|c| pb::Cursor {
            values: vec![
                ts_value(&c.updated_at.unwrap_or(chrono::DateTime::UNIX_EPOCH)),
                reference(&c.path),
            ],
            // `before: false` starts *after* the cursor document.
            before: false,
        }),
        limit,
        ..Default::default()
    }
}

/// `from <group>` with no filter and no order: the unfiltered count.
pub(crate) fn all_query(group: Group) -> pb::StructuredQuery {
    pb::StructuredQuery {
        from: vec![pb::structured_query::CollectionSelector {
            collection_id: group.collection_id().to_owned(),
            all_descendants: group.all_descendants(),
        }],
        ..Default::default()
    }
}

impl DocumentPager for FirestorePager {
    async fn page(&self, request: PageRequest) -> Result<Page, PagerError> {
        let err = |message: String| PagerError {
            group: request.group,
            message,
        };
        let documents = self.db.get_documents_path().clone();
        let q = query(
            &documents,
            request.group,
            request.field,
            request.since,
            request.after.as_ref(),
            Some(request.limit),
        );
        let mut stream = self
            .db
            .client()
            .get()
            .run_query(pb::RunQueryRequest {
                parent: documents,
                explain_options: None,
                request_options: None,
                query_type: Some(pb::run_query_request::QueryType::StructuredQuery(q)),
                consistency_selector: request.read_time.map(|t| {
                    pb::run_query_request::ConsistencySelector::ReadTime(
                        convert::to_proto_timestamp(&t),
                    )
                }),
            })
            .await
            .map_err(|s| err(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        let mut docs = Vec::new();
        let mut next = None;
        while let Some(item) = stream.next().await {
            let item = item.map_err(|s| err(format!("{:?}: {}", s.code(), s.message())))?;
            if let Some(d) = item.document {
                let doc = convert::document(&d).map_err(|e| err(e.message))?;
                let updated_at = match request.field {
                    None => None,
                    Some(f) => match doc.fields.get(f) {
                        Some(Value::Timestamp(at)) => Some(*at),
                        _ => {
                            return Err(err(format!(
                                "`{}` has no timestamp `{f}` but matched the query",
                                doc.path
                            )))
                        }
                    },
                };
                next = Some(Cursor {
                    updated_at,
                    path: doc.path.clone(),
                });
                docs.push(doc);
            }
        }
        Ok(Page {
            reads: (docs.len() as u64).max(1),
            docs,
            next,
        })
    }

    async fn count(
        &self,
        group: Group,
        field: Option<&'static str>,
        since: Option<Timestamp>,
        after: Option<Cursor>,
    ) -> Result<Count, PagerError> {
        let documents = self.db.get_documents_path().clone();
        let q = query(&documents, group, field, since, after.as_ref(), None);
        self.aggregate(group, q).await
    }

    async fn count_all(&self, group: Group) -> Result<Count, PagerError> {
        self.aggregate(group, all_query(group)).await
    }
}

impl FirestorePager {
    async fn aggregate(&self, group: Group, q: pb::StructuredQuery) -> Result<Count, PagerError> {
        use pb::structured_aggregation_query::{aggregation, Aggregation};
        let err = |message: String| PagerError { group, message };
        let documents = self.db.get_documents_path().clone();
        let mut stream = self
            .db
            .client()
            .get()
            .run_aggregation_query(pb::RunAggregationQueryRequest {
                parent: documents,
                explain_options: None,
                request_options: None,
                query_type: Some(
                    pb::run_aggregation_query_request::QueryType::StructuredAggregationQuery(
                        pb::StructuredAggregationQuery {
                            aggregations: vec![Aggregation {
                                alias: "n".into(),
                                operator: Some(aggregation::Operator::Count(aggregation::Count {
                                    up_to: None,
                                })),
                            }],
                            query_type: Some(
                                pb::structured_aggregation_query::QueryType::StructuredQuery(q),
                            ),
                        },
                    ),
                ),
                consistency_selector: None,
            })
            .await
            .map_err(|s| err(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        let mut docs = 0u64;
        while let Some(item) = stream.next().await {
            let item = item.map_err(|s| err(format!("{:?}: {}", s.code(), s.message())))?;
            if let Some(result) = item.result {
                if let Some(pb::Value {
                    value_type: Some(pb::value::ValueType::IntegerValue(n)),
                }) = result.aggregate_fields.get("n")
                {
                    docs = u64::try_from(*n).unwrap_or(0);
                }
            }
        }
        // Billed: one read per batch of up to 1000 index entries, at least one.
        Ok(Count {
            docs,
            reads: docs.div_ceil(1000).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_after_the_cursor_in_updated_at_then_name_order() {
        let c = Cursor {
            updated_at: Some(chrono::DateTime::from_timestamp(5, 0).unwrap()),
            path: "conversations/c1".into(),
        };
        let q = query(
            "projects/p/databases/(default)/documents",
            Group::Conversations,
            Group::Conversations.order_field(),
            None,
            Some(&c),
            Some(50),
        );
        assert_eq!(q.limit, Some(50));
        assert_eq!(q.offset, 0, "never offsets");
        assert_eq!(q.order_by.len(), 2);
        assert_eq!(q.order_by[1].field.as_ref().unwrap().field_path, "__name__");
        assert!(q.r#where.is_some());
        let start = q.start_at.unwrap();
        assert!(!start.before);
        assert_eq!(
            start.values[1].value_type,
            Some(pb::value::ValueType::ReferenceValue(
                "projects/p/databases/(default)/documents/conversations/c1".into()
            ))
        );
        // Groups without an update-time field: `__name__` order, no filter.
        let c = Cursor {
            updated_at: None,
            path: "conversations/c1/messages/m1".into(),
        };
        let q = query(
            "d",
            Group::Messages,
            None,
            Some(c.updated_at.unwrap_or_default()),
            Some(&c),
            Some(50),
        );
        assert!(q.from[0].all_descendants);
        assert!(
            q.r#where.is_none(),
            "no filter drops documents without a field"
        );
        assert_eq!(q.order_by.len(), 1);
        assert_eq!(q.order_by[0].field.as_ref().unwrap().field_path, "__name__");
        assert_eq!(
            q.start_at.unwrap().values[0].value_type,
            Some(pb::value::ValueType::ReferenceValue(
                "d/conversations/c1/messages/m1".into()
            ))
        );
        assert!(all_query(Group::Targets).order_by.is_empty());
        let q = query(
            "d",
            Group::Conversations,
            Some("updatedAt"),
            None,
            None,
            None,
        );
        assert!(!q.from[0].all_descendants);
        assert!(q.start_at.is_none() && q.limit.is_none());
    }
}
