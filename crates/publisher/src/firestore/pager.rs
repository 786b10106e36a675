//! [`FirestorePager`]: the backfill's ordered, cursor-paged reads.
//!
//! Query: `from <group>` (collection group for `messages`/`targets`),
//! `where updatedAt >= since` (the Unix epoch when no `--since` is given, which
//! also restricts results to documents whose `updatedAt` is a timestamp),
//! `order by updatedAt, __name__`, `start after (updatedAt, name)` of the last
//! page, `limit n`. The collection group queries need Firestore's automatic
//! single-field index exemptions to be on for `updatedAt` at collection group
//! scope (or a composite index `updatedAt ASC, __name__ ASC`).

use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::FirestoreDb;
use futures::StreamExt;

use super::convert;
use crate::backfill::{
    Count, Cursor, DocumentPager, Group, Page, PageRequest, PagerError, ORDER_FIELD,
};
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
    since: Option<Timestamp>,
    after: Option<&Cursor>,
    limit: Option<u32>,
) -> pb::StructuredQuery {
    use pb::structured_query::{
        field_filter, filter, CollectionSelector, Direction, FieldFilter, Filter, Order,
    };
    let since = since.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    pb::StructuredQuery {
        from: vec![CollectionSelector {
            collection_id: group.collection_id().to_owned(),
            all_descendants: group.all_descendants(),
        }],
        r#where: Some(Filter {
            filter_type: Some(filter::FilterType::FieldFilter(FieldFilter {
                field: field(ORDER_FIELD),
                op: field_filter::Operator::GreaterThanOrEqual as i32,
                value: Some(ts_value(&since)),
            })),
        }),
        order_by: vec![
            Order {
                field: field(ORDER_FIELD),
                direction: Direction::Ascending as i32,
            },
            Order {
                field: field("__name__"),
                direction: Direction::Ascending as i32,
            },
        ],
        start_at: after.map(|c| pb::Cursor {
            values: vec![
                ts_value(&c.updated_at),
                pb::Value {
                    value_type: Some(pb::value::ValueType::ReferenceValue(format!(
                        "{documents}/{}",
                        c.path
                    ))),
                },
            ],
            // `before: false` starts *after* the cursor document.
            before: false,
        }),
        limit: limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX)),
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
                consistency_selector: None,
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
                let Some(Value::Timestamp(at)) = doc.fields.get(ORDER_FIELD) else {
                    return Err(err(format!(
                        "`{}` has no timestamp `{ORDER_FIELD}` but matched the query",
                        doc.path
                    )));
                };
                next = Some(Cursor {
                    updated_at: *at,
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
        since: Option<Timestamp>,
        after: Option<Cursor>,
    ) -> Result<Count, PagerError> {
        use pb::structured_aggregation_query::{aggregation, Aggregation};
        let err = |message: String| PagerError { group, message };
        let documents = self.db.get_documents_path().clone();
        let q = query(&documents, group, since, after.as_ref(), None);
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
            updated_at: chrono::DateTime::from_timestamp(5, 0).unwrap(),
            path: "conversations/c1/messages/m1".into(),
        };
        let q = query(
            "projects/p/databases/(default)/documents",
            Group::Messages,
            None,
            Some(&c),
            Some(50),
        );
        assert_eq!(q.limit, Some(50));
        assert_eq!(q.offset, 0, "never offsets");
        assert!(q.from[0].all_descendants);
        assert_eq!(q.order_by.len(), 2);
        assert_eq!(q.order_by[1].field.as_ref().unwrap().field_path, "__name__");
        let start = q.start_at.unwrap();
        assert!(!start.before);
        assert_eq!(
            start.values[1].value_type,
            Some(pb::value::ValueType::ReferenceValue(
                "projects/p/databases/(default)/documents/conversations/c1/messages/m1".into()
            ))
        );
        let q = query("d", Group::Conversations, None, None, None);
        assert!(!q.from[0].all_descendants);
        assert!(q.start_at.is_none() && q.limit.is_none());
    }
}
