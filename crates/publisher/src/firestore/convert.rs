//! gRPC ↔ neutral conversions, in one place.

use std::collections::BTreeMap;

use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::gcloud_sdk::prost_types;
use firestore::gcloud_sdk::tonic;

use crate::listen::{Cause, ListenResponse, TargetChange, TargetChangeKind};
use crate::live::{TransportError, TransportErrorKind};
use crate::value::{relative_path, Document, Timestamp, Value};

pub(crate) fn timestamp(t: &prost_types::Timestamp) -> Option<Timestamp> {
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

pub(crate) fn to_proto_timestamp(t: &Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn value(v: &pb::Value) -> Value {
    use pb::value::ValueType as V;
    match &v.value_type {
        None | Some(V::NullValue(_)) => Value::Null,
        Some(V::BooleanValue(b)) => Value::Bool(*b),
        Some(V::IntegerValue(i)) => Value::Integer(*i),
        Some(V::DoubleValue(d)) => Value::Double(*d),
        Some(V::TimestampValue(t)) => timestamp(t).map(Value::Timestamp).unwrap_or(Value::Null),
        Some(V::StringValue(s)) => Value::String(s.clone()),
        Some(V::BytesValue(b)) => Value::Bytes(b.clone()),
        Some(V::ReferenceValue(r)) => Value::Reference(relative_path(r).to_owned()),
        Some(V::GeoPointValue(g)) => Value::GeoPoint {
            latitude: g.latitude,
            longitude: g.longitude,
        },
        Some(V::ArrayValue(a)) => Value::Array(a.values.iter().map(value).collect()),
        Some(V::MapValue(m)) => Value::Map(
            m.fields
                .iter()
                .map(|(k, v)| (k.clone(), value(v)))
                .collect(),
        ),
        // Only pipeline queries return these (field/variable references,
        // functions, pipelines); a stored document never holds one.
        Some(_) => Value::Null,
    }
}

fn protocol(what: &str) -> TransportError {
    TransportError {
        kind: TransportErrorKind::Fatal,
        message: format!("protocol: {what}"),
    }
}

pub(crate) fn document(d: &pb::Document) -> Result<Document, TransportError> {
    let create_time = d
        .create_time
        .as_ref()
        .and_then(timestamp)
        .ok_or_else(|| protocol("document without create_time"))?;
    let update_time = d
        .update_time
        .as_ref()
        .and_then(timestamp)
        .ok_or_else(|| protocol("document without update_time"))?;
    Ok(Document {
        path: relative_path(&d.name).to_owned(),
        fields: d
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect::<BTreeMap<_, _>>(),
        create_time,
        update_time,
    })
}

/// `None` for an empty response (no response type).
pub(crate) fn listen_response(
    r: pb::ListenResponse,
) -> Result<Option<ListenResponse>, TransportError> {
    use pb::listen_response::ResponseType as R;
    use pb::target_change::TargetChangeType as K;
    Ok(Some(match r.response_type {
        None => return Ok(None),
        Some(R::TargetChange(tc)) => ListenResponse::TargetChange(TargetChange {
            kind: match K::try_from(tc.target_change_type) {
                Ok(K::NoChange) => TargetChangeKind::NoChange,
                Ok(K::Add) => TargetChangeKind::Add,
                Ok(K::Remove) => TargetChangeKind::Remove,
                Ok(K::Current) => TargetChangeKind::Current,
                Ok(K::Reset) => TargetChangeKind::Reset,
                Err(_) => {
                    return Err(protocol(&format!(
                        "unknown target change type {}",
                        tc.target_change_type
                    )))
                }
            },
            target_ids: tc.target_ids,
            resume_token: tc.resume_token,
            read_time: tc.read_time.as_ref().and_then(timestamp),
            cause: tc.cause.map(|s| Cause {
                code: s.code,
                message: s.message,
            }),
        }),
        Some(R::DocumentChange(dc)) => ListenResponse::DocumentChange {
            doc: document(
                dc.document
                    .as_ref()
                    .ok_or_else(|| protocol("document change without document"))?,
            )?,
            target_ids: dc.target_ids,
            removed_target_ids: dc.removed_target_ids,
        },
        Some(R::DocumentDelete(dd)) => ListenResponse::DocumentDelete {
            path: relative_path(&dd.document).to_owned(),
            read_time: dd.read_time.as_ref().and_then(timestamp),
            removed_target_ids: dd.removed_target_ids,
        },
        Some(R::DocumentRemove(dr)) => ListenResponse::DocumentRemove {
            path: relative_path(&dr.document).to_owned(),
            removed_target_ids: dr.removed_target_ids,
            read_time: dr.read_time.as_ref().and_then(timestamp),
        },
        Some(R::Filter(f)) => ListenResponse::Filter {
            target_id: f.target_id,
            count: f.count,
            // An unusable bloom filter is treated as absent (the SDKs do the same).
            unchanged_names: f.unchanged_names.and_then(|b| {
                let bits = b.bits?;
                crate::listen::BloomFilter::new(bits.bitmap, bits.padding, b.hash_count).ok()
            }),
        },
    }))
}

/// How the live loop should treat a gRPC status.
pub(crate) fn status(s: &tonic::Status) -> TransportError {
    use tonic::Code as C;
    let kind = match s.code() {
        C::InvalidArgument => TransportErrorKind::InvalidArgument,
        // An access token expiring around a reconnect is normal: the client
        // fetches a new one on the next call (every official client retries).
        C::Unauthenticated => TransportErrorKind::Transient,
        C::PermissionDenied | C::NotFound | C::Unimplemented | C::FailedPrecondition => {
            TransportErrorKind::Fatal
        }
        _ => TransportErrorKind::Transient,
    };
    TransportError {
        kind,
        message: format!("{:?}: {}", s.code(), s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_documents_values_and_listen_messages() {
        use pb::value::ValueType as V;
        let v = |t| pb::Value {
            value_type: Some(t),
        };
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "r".to_owned(),
            v(V::ReferenceValue(
                "projects/p/databases/(default)/documents/users/u1".into(),
            )),
        );
        fields.insert(
            "t".to_owned(),
            v(V::TimestampValue(prost_types::Timestamp {
                seconds: 1,
                nanos: 5,
            })),
        );
        fields.insert(
            "a".to_owned(),
            v(V::ArrayValue(pb::ArrayValue {
                values: vec![v(V::NullValue(0)), v(V::IntegerValue(3))],
            })),
        );
        let d = pb::Document {
            name: "projects/p/databases/(default)/documents/conversations/c1".into(),
            fields,
            create_time: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            update_time: Some(prost_types::Timestamp {
                seconds: 11,
                nanos: 0,
            }),
        };
        let doc = document(&d).unwrap();
        assert_eq!(doc.path, "conversations/c1");
        assert_eq!(doc.fields["r"], Value::Reference("users/u1".into()));
        assert_eq!(
            doc.fields["a"],
            Value::Array(vec![Value::Null, Value::Integer(3)])
        );
        assert_eq!(
            to_proto_timestamp(&doc.update_time),
            prost_types::Timestamp {
                seconds: 11,
                nanos: 0
            }
        );

        let r = pb::ListenResponse {
            response_type: Some(pb::listen_response::ResponseType::TargetChange(
                pb::TargetChange {
                    target_change_type: 3,
                    target_ids: vec![2],
                    cause: None,
                    resume_token: b"x".to_vec(),
                    read_time: None,
                },
            )),
        };
        let ListenResponse::TargetChange(tc) = listen_response(r).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(tc.kind, TargetChangeKind::Current);
        assert_eq!(
            listen_response(pb::ListenResponse {
                response_type: None
            })
            .unwrap(),
            None
        );
        assert_eq!(
            status(&tonic::Status::invalid_argument("stale")).kind,
            TransportErrorKind::InvalidArgument
        );
        assert_eq!(
            status(&tonic::Status::unavailable("x")).kind,
            TransportErrorKind::Transient
        );
        assert_eq!(
            status(&tonic::Status::permission_denied("x")).kind,
            TransportErrorKind::Fatal
        );
        assert_eq!(
            status(&tonic::Status::unauthenticated("token expired")).kind,
            TransportErrorKind::Transient
        );
    }
}
