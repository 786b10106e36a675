//! Range checksums for the consistency check: the [`ChecksumStore`] port and
//! the canonical row text both sides of a comparison hash.
//!
//! The consistency check (`mirrorctl consistency`) compares the source with
//! the mirror without reading the mirror row by row. Every mirrored entity
//! has a **key** (its Firestore path without the collection names, e.g.
//! `c1/m1` for a message) and a **canonical row**: its compared fields as
//! text, in a fixed order ([`Table::fields`]). Both are hashed with SHA-256;
//! the first bytes of the key hash place the row in a **bucket** (level 0:
//! 1 byte = 256 buckets, level 1: 2 bytes, level 2: 3 bytes), and a bucket's
//! checksum is `(rows, Σ high 32 bits, Σ low 32 bits)` of the row hashes,
//! sums modulo 2³². The database computes bucket checksums of its rows
//! inside one `GROUP BY` query; the check computes the same sums over the
//! source's documents in Rust ([`canonical_row`], [`RowDigest`]) and descends
//! only into buckets whose checksums differ, reading rows only from the
//! leaves. An unequal checksum only costs a descent: the leaf comparison is
//! made on the rows themselves, so a hash formatting difference can slow a
//! check down but never report false drift.
//!
//! What is compared (and so hashed): the version (the source update time),
//! whether the row is a tombstone, and the document's own fields. Derived
//! columns (a conversation's last message, read pointers linked to message
//! rows, `participant_hash`), the event id (a create and an update at the same
//! time are the same version) and `sync_source` are not.
//!
//! Rows that are consistent with an *absent* source document are left out of
//! the checksums: tombstones (a deleted document) and placeholder
//! conversations (messages whose conversation document does not exist).
//!
//! Repairs: an event whose `source` has the scheme [`REPAIR_SYNC_SOURCE`] is
//! a repair republished by `mirrorctl consistency --repair`. Store adapters
//! prepare it before applying it (see `sql/postgres/V5__consistency_repair.sql`):
//! when the row already holds a version with the same time, or the ledger
//! already holds the event id, the row and history are opened for that one
//! version again so that the repair rewrites them; a row holding a *newer*
//! version is never touched (the repair is then stale, as any older event).

use std::future::Future;

use chrono::{DateTime, Utc};
use mirror_schema::{format_time, MirrorEvent, Payload, Subject};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// The `sync_source` (scheme of the CloudEvents `source`) of repair events.
pub const REPAIR_SYNC_SOURCE: &str = "repair";

/// Whether `event` is a repair (its `source` has the scheme [`REPAIR_SYNC_SOURCE`]).
pub fn is_repair(event: &MirrorEvent) -> bool {
    event.sync_source() == REPAIR_SYNC_SOURCE
}

/// Deepest bucket level (3 bytes of the key hash: 16.7 M buckets).
pub const MAX_LEVEL: u8 = 2;

/// Field separator of the canonical row text (ASCII unit separator).
pub const FIELD_SEPARATOR: char = '\u{1f}';
/// Stands for SQL NULL / an absent field in the canonical row text (ASCII record separator).
pub const NULL_MARK: &str = "\u{1e}";

/// A compared entity table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// `dm_conversation` with its `dm_participant` rows folded in (`participants`).
    DmConversation,
    DmMessage,
    DmBlock,
    FollowEdge,
}

/// How a field is compared at the leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Compared as text.
    Text,
    /// JSON: parsed and compared as values (the databases format JSON differently).
    Json,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::DmConversation,
        Table::DmMessage,
        Table::DmBlock,
        Table::FollowEdge,
    ];

    /// The SQL table name (PostgreSQL spelling).
    pub fn name(self) -> &'static str {
        match self {
            Table::DmConversation => "dm_conversation",
            Table::DmMessage => "dm_message",
            Table::DmBlock => "dm_block",
            Table::FollowEdge => "follow_edge",
        }
    }

    /// The compared fields, in canonical order. The first is always `version`
    /// (the source update time), the second `state` (`live` or `tombstone`;
    /// `placeholder` for a conversation that only exists as a message's parent).
    pub fn fields(self) -> &'static [(&'static str, FieldKind)] {
        use FieldKind::*;
        match self {
            Table::DmConversation => &[
                ("version", Text),
                ("state", Text),
                ("type", Text),
                ("created_at", Text),
                ("updated_at", Text),
                ("participants", Text),
            ],
            Table::DmMessage => &[
                ("version", Text),
                ("state", Text),
                ("author_user_id", Text),
                ("body_text", Text),
                ("attachments", Json),
                ("external_media", Json),
                ("created_at", Text),
                ("edited_at", Text),
                ("deleted_at", Text),
                ("client_message_id", Text),
            ],
            Table::DmBlock => &[
                ("version", Text),
                ("state", Text),
                ("created_at", Text),
                ("revoked_at", Text),
                ("source", Text),
            ],
            Table::FollowEdge => &[
                ("version", Text),
                ("state", Text),
                ("follow_state", Text),
                ("source", Text),
                ("created_at", Text),
            ],
        }
    }

    /// The table an event's subject belongs to.
    pub fn of(subject: &Subject) -> Table {
        match subject {
            Subject::Conversation { .. } => Table::DmConversation,
            Subject::Message { .. } => Table::DmMessage,
            Subject::Block { .. } => Table::DmBlock,
            Subject::FollowEdge { .. } => Table::FollowEdge,
        }
    }
}

/// The key of a subject: its ids joined by `/` (`c1`, `c1/m1`, `u1/u2`).
pub fn key_of(subject: &Subject) -> String {
    match subject {
        Subject::Conversation { conversation_id } => conversation_id.clone(),
        Subject::Message {
            conversation_id,
            message_id,
        } => format!("{conversation_id}/{message_id}"),
        Subject::Block {
            user_id,
            target_user_id,
        } => format!("{user_id}/{target_user_id}"),
        Subject::FollowEdge {
            follower_user_id,
            target_user_id,
        } => format!("{follower_user_id}/{target_user_id}"),
    }
}

/// The subject of a key of `table` (the inverse of [`key_of`]).
pub fn subject_of(table: Table, key: &str) -> Option<Subject> {
    let two = || {
        key.split_once('/')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    };
    Some(match table {
        Table::DmConversation => Subject::Conversation {
            conversation_id: key.to_owned(),
        },
        Table::DmMessage => {
            let (conversation_id, message_id) = two()?;
            Subject::Message {
                conversation_id,
                message_id,
            }
        }
        Table::DmBlock => {
            let (user_id, target_user_id) = two()?;
            Subject::Block {
                user_id,
                target_user_id,
            }
        }
        Table::FollowEdge => {
            let (follower_user_id, target_user_id) = two()?;
            Subject::FollowEdge {
                follower_user_id,
                target_user_id,
            }
        }
    })
}

/// How a store spells JSON and hashes text, so the source side can hash alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `jsonb::text` formatting; SHA-256 over UTF-8.
    Postgres,
    /// JSON as the adapter stored it (compact `serde_json`); SHA-256 over UTF-16LE (`nvarchar`).
    SqlServer,
}

impl Dialect {
    /// JSON text as the database would render the stored value.
    pub fn json_text(self, v: &serde_json::Value) -> String {
        match self {
            Dialect::Postgres => jsonb_text(v),
            Dialect::SqlServer => v.to_string(),
        }
    }

    /// SHA-256 of `text` as the database hashes it.
    pub fn sha256(self, text: &str) -> [u8; 32] {
        match self {
            Dialect::Postgres => Sha256::digest(text.as_bytes()).into(),
            Dialect::SqlServer => {
                let mut h = Sha256::new();
                for unit in text.encode_utf16() {
                    h.update(unit.to_le_bytes());
                }
                h.finalize().into()
            }
        }
    }
}

/// PostgreSQL's `jsonb::text`: object keys ordered by length then bytes,
/// `", "` and `": "` separators, strings escaped as `escape_json` does.
pub fn jsonb_text(v: &serde_json::Value) -> String {
    fn string(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn walk(out: &mut String, v: &serde_json::Value) {
        use serde_json::Value::*;
        match v {
            Null => out.push_str("null"),
            Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Number(n) => out.push_str(&n.to_string()),
            String(s) => string(out, s),
            Array(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    walk(out, x);
                }
                out.push(']');
            }
            Object(map) => {
                let mut keys: Vec<&std::string::String> = map.keys().collect();
                keys.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    string(out, k);
                    out.push_str(": ");
                    walk(out, &map[k]);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    walk(&mut out, v);
    out
}

fn ts(t: &DateTime<Utc>) -> Option<String> {
    Some(format_time(t))
}

/// The canonical fields of the row the source's current version `event`
/// implies (in [`Table::fields`] order), or `None` for a delete (no document).
pub fn canonical_row(event: &MirrorEvent, dialect: Dialect) -> Option<Vec<Option<String>>> {
    let version = ts(&event.time());
    let live = Some("live".to_owned());
    Some(match event.payload() {
        Payload::Conversation(p) => {
            let mut parts: Vec<&mirror_schema::Participant> = p.participants.iter().collect();
            parts.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            let participants = parts
                .iter()
                .map(|x| {
                    format!(
                        "{},{},{},{},{}",
                        x.user_id,
                        x.role.as_str(),
                        format_time(&x.joined_at),
                        x.mute_state.as_str(),
                        x.read_pointer_message_id.as_deref().unwrap_or(NULL_MARK)
                    )
                })
                .collect::<Vec<_>>()
                .join(";");
            vec![
                version,
                live,
                Some(p.kind.as_str().to_owned()),
                ts(&p.created_at),
                ts(&p.updated_at),
                Some(participants),
            ]
        }
        Payload::Message(p) => vec![
            version,
            live,
            Some(p.author_user_id.clone()),
            Some(p.body_text.clone()),
            p.attachments
                .as_ref()
                .map(|a| dialect.json_text(&serde_json::Value::Array(a.clone()))),
            p.external_media
                .as_ref()
                .map(|a| dialect.json_text(&serde_json::Value::Array(a.clone()))),
            ts(&p.created_at),
            p.edited_at.as_ref().and_then(ts),
            p.deleted_at.as_ref().and_then(ts),
            p.client_message_id.clone(),
        ],
        Payload::Block(p) => vec![
            version,
            live,
            ts(&p.created_at),
            p.revoked_at.as_ref().and_then(ts),
            Some(p.source.as_str().to_owned()),
        ],
        Payload::FollowEdge(p) => vec![
            version,
            live,
            Some(p.state.as_str().to_owned()),
            Some(p.source.as_str().to_owned()),
            ts(&p.created_at),
        ],
        Payload::MessageDelete(_) | Payload::BlockDelete | Payload::FollowEdgeDelete => {
            return None
        }
    })
}

/// The canonical row text: fields joined by [`FIELD_SEPARATOR`], NULL as [`NULL_MARK`].
pub fn row_text(fields: &[Option<String>]) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(FIELD_SEPARATOR);
        }
        out.push_str(f.as_deref().unwrap_or(NULL_MARK));
    }
    out
}

/// The hashes of one row: which bucket its key falls in, and its row hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDigest {
    /// The first 4 bytes of the key's SHA-256, big-endian.
    pub key_prefix: u32,
    /// The first 8 bytes of the canonical row's SHA-256, big-endian.
    pub row: u64,
}

/// The text whose hash places a row in a bucket: the key, except for
/// messages, where it is the message id alone (so that SQL Server can keep it
/// in a persisted computed column of `DmMessage`, which has no conversation
/// Firestore id). Buckets only group rows; rows are matched by the full key.
pub fn bucket_key(table: Table, key: &str) -> &str {
    match table {
        Table::DmMessage => key.split_once('/').map(|(_, m)| m).unwrap_or(key),
        _ => key,
    }
}

impl RowDigest {
    /// `key` is the [`bucket_key`].
    pub fn new(dialect: Dialect, key: &str, fields: &[Option<String>]) -> RowDigest {
        let k = dialect.sha256(key);
        let r = dialect.sha256(&row_text(fields));
        RowDigest {
            key_prefix: u32::from_be_bytes([k[0], k[1], k[2], k[3]]),
            row: u64::from_be_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]),
        }
    }

    /// The bucket at `level` (the first `level + 1` bytes of the key hash).
    pub fn bucket(&self, level: u8) -> u32 {
        self.key_prefix >> (8 * (3 - u32::from(level.min(MAX_LEVEL))))
    }
}

/// The checksum of one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BucketSum {
    pub rows: u64,
    /// Σ of the high 32 bits of the row hashes, modulo 2³².
    pub high: u32,
    /// Σ of the low 32 bits, modulo 2³².
    pub low: u32,
}

impl BucketSum {
    pub fn add(&mut self, row: u64) {
        self.rows += 1;
        self.high = self.high.wrapping_add((row >> 32) as u32);
        self.low = self.low.wrapping_add(row as u32);
    }
}

/// Which rows a check covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only rows whose version (source update time) is at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this conversation (and its messages); tables other than
    /// conversations and messages are empty in such a scope.
    pub conversation: Option<String>,
}

/// One mirrored row as the store holds it: key and canonical fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub key: String,
    /// In [`Table::fields`] order; `fields[0]` is the version, `fields[1]` the state.
    pub fields: Vec<Option<String>>,
}

impl StoredRow {
    /// The stored version (source update time) as canonical text.
    pub fn version(&self) -> Option<&str> {
        self.fields.first().and_then(|f| f.as_deref())
    }
    /// `live`, `tombstone` or `placeholder`.
    pub fn state(&self) -> &str {
        self.fields.get(1).and_then(|f| f.as_deref()).unwrap_or("")
    }
}

/// A store that can checksum its rows by key-hash bucket (see the module docs).
///
/// Contract: for the same rows, [`ChecksumStore::bucket_sums`] returns what
/// [`RowDigest`] and [`BucketSum::add`] compute over [`canonical_row`] in the
/// store's [`Dialect`]; only live rows (not tombstones or placeholders) within
/// the scope are summed. Reading rows ignores `since` (so a row outside the
/// window can still be found and classified) but honours `conversation`.
pub trait ChecksumStore: Send + Sync {
    fn dialect(&self) -> Dialect;

    /// Checksums of the buckets at `level` whose parent bucket (at `level - 1`)
    /// is one of `parents`; every bucket of the level when `parents` is `None`.
    /// Buckets without rows are not returned.
    fn bucket_sums(
        &self,
        table: Table,
        scope: &Scope,
        level: u8,
        parents: Option<&[u32]>,
    ) -> impl Future<Output = Result<Vec<(u32, BucketSum)>, StoreError>> + Send;

    /// Every row (live, tombstone or placeholder) in the `buckets` of `level`.
    fn rows_in_buckets(
        &self,
        table: Table,
        scope: &Scope,
        level: u8,
        buckets: &[u32],
    ) -> impl Future<Output = Result<Vec<StoredRow>, StoreError>> + Send;

    /// The rows with these keys (those that exist).
    fn rows_by_key(
        &self,
        table: Table,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<StoredRow>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonb_text_matches_postgres_formatting() {
        let v = json!([{"url": "gs://b/a.png", "a\"b": 1, "mimeType": "image/png", "size": 12.5, "x": [true, null]}]);
        assert_eq!(
            jsonb_text(&v),
            r#"[{"x": [true, null], "a\"b": 1, "url": "gs://b/a.png", "size": 12.5, "mimeType": "image/png"}]"#
        );
        assert_eq!(
            jsonb_text(&json!("tab\tnew\nü\u{1}")),
            "\"tab\\tnew\\nü\\u0001\""
        );
    }

    #[test]
    fn buckets_nest_by_prefix() {
        let d = RowDigest::new(Dialect::Postgres, "c1/m1", &[Some("x".into()), None]);
        assert_eq!(d.bucket(0), d.key_prefix >> 24);
        assert_eq!(d.bucket(1) >> 8, d.bucket(0));
        assert_eq!(d.bucket(2) >> 8, d.bucket(1));
        assert_eq!(row_text(&[Some("a".into()), None]), "a\u{1f}\u{1e}");
    }

    #[test]
    fn keys_round_trip() {
        for s in [
            Subject::Conversation {
                conversation_id: "c".into(),
            },
            Subject::Message {
                conversation_id: "c".into(),
                message_id: "m".into(),
            },
        ] {
            assert_eq!(subject_of(Table::of(&s), &key_of(&s)), Some(s));
        }
    }
}
