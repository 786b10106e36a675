//! [`ResumeState`]: the per-target resume tokens and read time of the last
//! consistent point whose changes are all published, and its checkpoint encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TargetId;
use crate::value::Timestamp;

/// What a restart resumes from. Encoded into `realtime_mirror_checkpoint.cursor_token`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeState {
    /// Read time of the last consistent point (also `last_processed_at`).
    pub read_time: Option<Timestamp>,
    /// Safe tokens by target; a target without one is listened to from scratch.
    pub tokens: BTreeMap<TargetId, Vec<u8>>,
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
}

impl ResumeState {
    /// JSON (`{"v":1,"readTime":…,"targets":{"1":"<hex>"}}`), readable in SQL.
    pub fn encode(&self) -> Vec<u8> {
        let e = Encoded {
            v: 1,
            read_time: self.read_time,
            targets: self
                .tokens
                .iter()
                .map(|(id, t)| (id.to_string(), hex::encode(t)))
                .collect(),
        };
        serde_json::to_vec(&e).expect("plain data serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<ResumeState, ResumeStateError> {
        let e: Encoded =
            serde_json::from_slice(bytes).map_err(|e| ResumeStateError(e.to_string()))?;
        if e.v != 1 {
            return Err(ResumeStateError(format!("unknown version {}", e.v)));
        }
        let mut tokens = BTreeMap::new();
        for (id, tok) in e.targets {
            let id: TargetId = id
                .parse()
                .map_err(|_| ResumeStateError(format!("bad target id `{id}`")))?;
            let tok =
                hex::decode(&tok).map_err(|e| ResumeStateError(format!("target {id}: {e}")))?;
            tokens.insert(id, tok);
        }
        Ok(ResumeState {
            read_time: e.read_time,
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let s = ResumeState {
            read_time: Some("2025-10-08T12:34:56.123456789Z".parse().unwrap()),
            tokens: [(1, vec![0, 1, 255]), (3, vec![7])].into_iter().collect(),
        };
        assert_eq!(ResumeState::decode(&s.encode()).unwrap(), s);
        assert!(ResumeState::decode(b"{\"v\":2,\"targets\":{}}").is_err());
        assert!(ResumeState::decode(b"nope").is_err());
    }
}
