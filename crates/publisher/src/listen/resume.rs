//! [`ResumeState`]: the per-target resume tokens (each with a hash of the
//! query it belongs to), the membership behind them, and the read time of the
//! last consistent point whose changes are all published; and its checkpoint
//! encoding (inside the store's opaque `cursor_token`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TargetId;
use crate::value::Timestamp;

/// What a restart resumes from. Encoded into `realtime_mirror_checkpoint.cursor_token`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeState {
    /// Read time of the last consistent point (also `last_processed_at`).
    pub read_time: Option<Timestamp>,
    /// Safe tokens by target; a target without one is listened to from scratch
    /// (or from a read time).
    pub tokens: BTreeMap<TargetId, Vec<u8>>,
    /// Hash of the query each token was issued for ([`crate::live::TargetSpec`]
    /// hashes its query); a token whose hash differs from the target's query
    /// now is not used.
    pub queries: BTreeMap<TargetId, String>,
    /// The core's own membership of each target at `read_time` (path → update
    /// time), for targets whose membership was known and not larger than the
    /// configured cap. Restores exact deletions after a restart and lets the
    /// core send `expected_count`.
    pub members: BTreeMap<TargetId, BTreeMap<String, Timestamp>>,
}

/// A checkpoint that is not a resume state this version wrote.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint is not a listen resume state: {0}")]
pub struct ResumeStateError(String);

#[derive(Serialize, Deserialize)]
struct Encoded {
    v: u32,
    #[serde(rename = "readTime", default, skip_serializing_if = "Option::is_none")]
    read_time: Option<Timestamp>,
    /// target id → hex token
    targets: BTreeMap<String, String>,
    /// target id → query hash (v2)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    queries: BTreeMap<String, String>,
    /// target id → path → update time as Unix nanoseconds (v2)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    members: BTreeMap<String, BTreeMap<String, i64>>,
}

fn id_of(s: &str) -> Result<TargetId, ResumeStateError> {
    s.parse()
        .map_err(|_| ResumeStateError(format!("bad target id `{s}`")))
}

impl ResumeState {
    /// JSON (`{"v":2,"readTime":…,"targets":{"1":"<hex>"},"queries":{"1":"<hash>"},"members":{"1":{"path":nanos}}}`), readable in SQL.
    pub fn encode(&self) -> Vec<u8> {
        let e = Encoded {
            v: 2,
            read_time: self.read_time,
            targets: self
                .tokens
                .iter()
                .map(|(id, t)| (id.to_string(), hex::encode(t)))
                .collect(),
            queries: self
                .queries
                .iter()
                .map(|(id, q)| (id.to_string(), q.clone()))
                .collect(),
            members: self
                .members
                .iter()
                .map(|(id, m)| {
                    (
                        id.to_string(),
                        m.iter()
                            .map(|(p, t)| (p.clone(), t.timestamp_nanos_opt().unwrap_or(i64::MAX)))
                            .collect(),
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&e).expect("plain data serializes")
    }

    /// Reads versions 1 (tokens only) and 2.
    pub fn decode(bytes: &[u8]) -> Result<ResumeState, ResumeStateError> {
        let e: Encoded =
            serde_json::from_slice(bytes).map_err(|e| ResumeStateError(e.to_string()))?;
        if e.v != 1 && e.v != 2 {
            return Err(ResumeStateError(format!("unknown version {}", e.v)));
        }
        let mut tokens = BTreeMap::new();
        for (id, tok) in e.targets {
            let id = id_of(&id)?;
            let tok =
                hex::decode(&tok).map_err(|e| ResumeStateError(format!("target {id}: {e}")))?;
            tokens.insert(id, tok);
        }
        let mut queries = BTreeMap::new();
        for (id, q) in e.queries {
            queries.insert(id_of(&id)?, q);
        }
        let mut members = BTreeMap::new();
        for (id, m) in e.members {
            let m = m
                .into_iter()
                .map(|(p, n)| (p, chrono::DateTime::from_timestamp_nanos(n)))
                .collect();
            members.insert(id_of(&id)?, m);
        }
        Ok(ResumeState {
            read_time: e.read_time,
            tokens,
            queries,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t: Timestamp = "2025-10-08T12:34:56.123456789Z".parse().unwrap();
        let s = ResumeState {
            read_time: Some(t),
            tokens: [(1, vec![0, 1, 255]), (3, vec![7])].into_iter().collect(),
            queries: [(1, "q1".to_owned())].into_iter().collect(),
            members: [(
                1,
                [("conversations/c1".to_owned(), t)].into_iter().collect(),
            )]
            .into_iter()
            .collect(),
        };
        assert_eq!(ResumeState::decode(&s.encode()).unwrap(), s);
        assert!(ResumeState::decode(b"{\"v\":3,\"targets\":{}}").is_err());
        assert!(ResumeState::decode(b"nope").is_err());
        // Version 1 checkpoints (tokens only) still load.
        let v1 = ResumeState::decode(b"{\"v\":1,\"targets\":{\"2\":\"0a\"}}").unwrap();
        assert_eq!(v1.tokens[&2], vec![10]);
        assert!(v1.queries.is_empty() && v1.members.is_empty());
    }
}
