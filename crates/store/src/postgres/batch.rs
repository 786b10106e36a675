//! A planned batch ([`crate::plan::Plan`]) as the parameters of one call of
//! `mirror.apply_batch` (`sql/postgres/V3__history_v1_1_and_batches.sql`, made
//! faster in `V6__faster_apply_batch.sql` with the same signature and rows):
//! the lock names, the ledger rows as arrays, and one `jsonb` array per
//! family. Rust binds values; the SQL decides.

use chrono::{DateTime, Utc};
use mirror_schema::{format_time, EventFamily, MirrorEvent, Payload, Subject};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::plan::{Plan, Planned};

pub(crate) const APPLY_BATCH: &str = "SELECT o_event_id, o_outcome FROM mirror.apply_batch(\
    p_locks => $1, p_ids => $2, p_types => $3, p_subjects => $4, p_times => $5, \
    p_conversations => $6, p_messages => $7, p_blocks => $8, p_follows => $9)";

/// The parameters of [`APPLY_BATCH`].
pub(crate) struct BatchParams {
    locks: Vec<String>,
    ids: Vec<Uuid>,
    types: Vec<&'static str>,
    subjects: Vec<String>,
    times: Vec<DateTime<Utc>>,
    conversations: Value,
    messages: Value,
    blocks: Value,
    follows: Value,
}

impl BatchParams {
    pub fn refs(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.locks,
            &self.ids,
            &self.types,
            &self.subjects,
            &self.times,
            &self.conversations,
            &self.messages,
            &self.blocks,
            &self.follows,
        ]
    }
}

fn ts(t: &DateTime<Utc>) -> Value {
    Value::String(format_time(t))
}

/// Insert `key` only when `value` is set: an absent key reads as NULL in
/// `jsonb_to_recordset`, and the server parses fewer bytes.
fn put<T: serde::Serialize>(m: &mut serde_json::Map<String, Value>, key: &str, value: &Option<T>) {
    if let Some(v) = value {
        m.insert(key.into(), json!(v));
    }
}

fn put_ts(m: &mut serde_json::Map<String, Value>, key: &str, t: &Option<DateTime<Utc>>) {
    if let Some(t) = t {
        m.insert(key.into(), ts(t));
    }
}

/// The fields every family's row carries.
fn common(p: &Planned<'_>) -> serde_json::Map<String, Value> {
    let e: &MirrorEvent = p.event;
    let mut m = serde_json::Map::with_capacity(20);
    m.insert("id".into(), json!(e.id()));
    m.insert("type".into(), json!(e.event_type().as_str()));
    m.insert("time".into(), ts(&e.time()));
    m.insert("sync".into(), json!(e.sync_source()));
    m.insert("newest".into(), json!(p.newest_so_far));
    m.insert("winner".into(), json!(p.winner));
    m
}

fn row(p: &Planned<'_>) -> Value {
    let mut m = common(p);
    let e = p.event;
    match (e.subject(), e.payload()) {
        (Subject::Conversation { conversation_id }, Payload::Conversation(c)) => {
            m.insert("cid".into(), json!(conversation_id));
            m.insert("kind".into(), json!(c.kind.as_str()));
            m.insert(
                "participants".into(),
                serde_json::to_value(&c.participants).expect("participants serialize"),
            );
            m.insert("created".into(), ts(&c.created_at));
            m.insert("updated".into(), ts(&c.updated_at));
        }
        (
            Subject::Message {
                conversation_id,
                message_id,
            },
            payload,
        ) => {
            m.insert("cid".into(), json!(conversation_id));
            m.insert("mid".into(), json!(message_id));
            // Only an update's or a delete's payload reaches the audit table.
            if e.event_type() != mirror_schema::EventType::DmMessageCreate {
                m.insert("payload".into(), payload.to_json());
            }
            match payload {
                Payload::Message(msg) => {
                    m.insert("del".into(), json!(false));
                    m.insert("author".into(), json!(msg.author_user_id));
                    m.insert("body".into(), json!(msg.body_text));
                    put(&mut m, "attachments", &msg.attachments);
                    put(&mut m, "media", &msg.external_media);
                    m.insert("created".into(), ts(&msg.created_at));
                    put_ts(&mut m, "edited", &msg.edited_at);
                    put_ts(&mut m, "deleted", &msg.deleted_at);
                    put(&mut m, "client", &msg.client_message_id);
                }
                Payload::MessageDelete(d) => {
                    m.insert("del".into(), json!(true));
                    put(&mut m, "performed_by", &d.performed_by);
                }
                _ => unreachable!("MirrorEvent guarantees the payload fits the subject"),
            }
        }
        (
            Subject::Block {
                user_id,
                target_user_id,
            },
            payload,
        ) => {
            m.insert("uid".into(), json!(user_id));
            m.insert("tid".into(), json!(target_user_id));
            if let Payload::Block(b) = payload {
                m.insert("created".into(), ts(&b.created_at));
                put_ts(&mut m, "revoked", &b.revoked_at);
                m.insert("source".into(), json!(b.source.as_str()));
            }
        }
        (
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            },
            payload,
        ) => {
            m.insert("fid".into(), json!(follower_user_id));
            m.insert("tid".into(), json!(target_user_id));
            if let Payload::FollowEdge(f) = payload {
                m.insert("state".into(), json!(f.state.as_str()));
                m.insert("source".into(), json!(f.source.as_str()));
                m.insert("created".into(), ts(&f.created_at));
            }
        }
        _ => unreachable!("MirrorEvent guarantees the payload fits the subject"),
    }
    Value::Object(m)
}

/// The parameters that apply `plan` in one call.
pub(crate) fn params(plan: &Plan<'_>) -> BatchParams {
    let n = plan.events.len();
    let mut out = BatchParams {
        locks: plan.locks.clone(),
        ids: Vec::with_capacity(n),
        types: Vec::with_capacity(n),
        subjects: Vec::with_capacity(n),
        times: Vec::with_capacity(n),
        conversations: Value::Array(Vec::new()),
        messages: Value::Array(Vec::new()),
        blocks: Value::Array(Vec::new()),
        follows: Value::Array(Vec::new()),
    };
    let (mut c, mut m, mut b, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in &plan.events {
        let e = p.event;
        out.ids.push(e.id());
        out.types.push(e.event_type().as_str());
        out.subjects.push(e.entity_key());
        out.times.push(e.time());
        let target = match e.event_type().family() {
            EventFamily::Conversation => &mut c,
            EventFamily::Message => &mut m,
            EventFamily::Block => &mut b,
            EventFamily::FollowEdge => &mut f,
        };
        target.push(row(p));
    }
    out.conversations = Value::Array(c);
    out.messages = Value::Array(m);
    out.blocks = Value::Array(b);
    out.follows = Value::Array(f);
    out
}
