//! Dead-letter records: the `realtime_mirror_dead_letter` row of a message
//! (a message that does not decode is named by the attributes it claims,
//! [`ClaimedAttributes`]), its key, the rows
//! that wait in memory while the database is down, and the task that records
//! the messages a bus adapter dead-letters on its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use mirror_schema::{decode_wire, ClaimedAttributes, MirrorEvent, WireMessage};
use mirror_store::{answer, DeadLetterRecord, MirrorStore, StoreErrorKind};

use crate::policy::ADAPTER_DEAD_LETTER_ROW;
use crate::telemetry;

/// Dead-letter rows waiting for the database to come back.
pub(crate) type PendingDeadLetters = Mutex<Vec<DeadLetterRecord>>;

/// How long the writes after the last batch (pending dead-letter rows,
/// counters) may take at most, so a hung database cannot hold up the exit.
pub(crate) const LAST_WRITES_LIMIT: Duration = Duration::from_secs(5);

/// Write dead-letter rows that waited for the database; each write may take
/// `limit`, and after one gets no answer the rest wait for the next flush.
pub(crate) async fn flush_dead_letters<S: MirrorStore>(
    store: &S,
    pending: &PendingDeadLetters,
    limit: Duration,
) {
    let waiting: Vec<DeadLetterRecord> =
        std::mem::take(&mut *pending.lock().expect("pending lock"));
    if waiting.is_empty() {
        return;
    }
    let mut still = Vec::new();
    let mut hung = false;
    for record in waiting {
        if hung {
            still.push(record);
            continue;
        }
        match answer(limit, store.record_dead_letter(&record)).await {
            Ok(()) => telemetry::dead_letter_row_written(&record.key, &record.reason),
            Err(e) => {
                hung = e.kind == StoreErrorKind::NoAnswer;
                still.push(record);
            }
        }
    }
    let mut guard = pending.lock().expect("pending lock");
    guard.extend(still);
    telemetry::dead_letter_rows_pending(guard.len());
}

/// A hook for messages the bus adapter dead-letters on its own, and the task
/// that writes their SQL dead-letter rows, retrying until the database takes
/// each one (nothing else holds these messages for us). The task ends when
/// the hook is dropped.
pub fn record_adapter_dead_letters<S: MirrorStore>(
    store: Arc<S>,
    subscription: String,
) -> (mirror_bus::DeadLetterHook, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(WireMessage, mirror_bus::DeadLetter)>();
    let hook: mirror_bus::DeadLetterHook = Arc::new(move |message, why| {
        let _ = tx.send((message, why));
    });
    let task = tokio::spawn(async move {
        while let Some((message, why)) = rx.recv().await {
            let event = decode_wire(&message).ok();
            let record = dead_letter_record(&message, event.as_ref(), &why, &subscription);
            // Only written rows end the loop: the policy's backoff, no limit.
            let written = ADAPTER_DEAD_LETTER_ROW
                .retry(
                    u32::MAX,
                    || store.record_dead_letter(&record),
                    |_| true,
                    |e, delay| tracing::warn!(key = %record.key, error = %e, delay_ms = delay.as_millis() as u64, "dead-letter row not written yet; retrying"),
                )
                .await;
            debug_assert!(written.is_ok(), "retried without a limit");
            telemetry::dead_letter_row_written(&record.key, &record.reason);
            telemetry::event_dead_lettered(None, event.map(|e| e.event_type()), &why);
        }
    });
    (hook, task)
}

/// The SQL dead-letter row for a delivery; for an event that did not decode,
/// the attributes are read best-effort from the raw message.
pub fn dead_letter_record(
    message: &WireMessage,
    event: Option<&MirrorEvent>,
    why: &mirror_bus::DeadLetter,
    subscription: &str,
) -> DeadLetterRecord {
    let (event_id, event_type, subject) = match event {
        Some(e) => (
            Some(e.id()),
            Some(e.event_type().as_str().to_owned()),
            Some(e.entity_key()),
        ),
        None => {
            let claimed = ClaimedAttributes::of(message);
            (claimed.id, claimed.event_type, claimed.subject)
        }
    };
    // Keyed by the id of the event as decoded once by the caller; an
    // undecodable message by the hash of its body (see `dead_letter_key`).
    let key = match event {
        Some(e) => e.id().to_string(),
        None => body_key(message),
    };
    DeadLetterRecord {
        key,
        event_id,
        event_type,
        subject,
        payload: String::from_utf8_lossy(&message.body).into_owned(),
        reason: why.reason.clone(),
        error: why.description.clone(),
        attempts: why.attempts,
        failed_at: Utc::now(),
        subscription: subscription.to_owned(),
    }
}

/// The key of a message's `realtime_mirror_dead_letter` row: its event id when
/// the message decodes (the id is then verified: deterministic for its type,
/// subject and time), else `sha256:<hex>` of the body. The writer and the
/// replay tool both use this, so a replayed event's row is found.
///
/// An id merely *read* from a message that does not decode is not trusted as
/// a key: it may be any string a producer put there (the contract's example
/// id, an id reused for every bad message, the id of a valid event whose type
/// was mistyped), and keying by it made different poison messages — or a
/// poison message and a real event — share one row, each overwriting the
/// other's payload and reason.
pub fn dead_letter_key(message: &WireMessage) -> String {
    match decode_wire(message) {
        Ok(event) => event.id().to_string(),
        Err(_) => body_key(message),
    }
}

/// `sha256:<hex of the body>`: the key of a message that does not decode.
fn body_key(message: &WireMessage) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(&message.body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keys_trust_only_verified_ids() {
        let subject = mirror_schema::Subject::FollowEdge {
            follower_user_id: "u1".into(),
            target_user_id: "u2".into(),
        };
        let time = chrono::TimeZone::with_ymd_and_hms(&Utc, 2025, 10, 8, 12, 0, 0).unwrap();
        let event = MirrorEvent::new(
            "follow.edge.delete".parse().unwrap(),
            subject,
            time,
            "test",
            mirror_schema::Payload::FollowEdgeDelete,
        )
        .unwrap();
        let good = WireMessage::structured(&event);
        assert_eq!(dead_letter_key(&good), event.id().to_string());
        // Two different undecodable messages claiming the same id get two rows.
        let bad = |ty: &str| {
            let mut v: serde_json::Value = serde_json::from_slice(&good.body).unwrap();
            v["type"] = ty.into();
            WireMessage {
                body: serde_json::to_vec(&v).unwrap(),
                ..good.clone()
            }
        };
        let (a, b) = (bad("x.one"), bad("x.two"));
        let (ka, kb) = (dead_letter_key(&a), dead_letter_key(&b));
        // The record keys by the decoded event without decoding again, and agrees.
        let why = mirror_bus::DeadLetter {
            reason: "x".into(),
            description: "y".into(),
            attempts: 1,
        };
        assert_eq!(
            dead_letter_record(&good, Some(&event), &why, "s").key,
            dead_letter_key(&good)
        );
        assert_eq!(dead_letter_record(&a, None, &why, "s").key, ka);
        assert!(
            ka.starts_with("sha256:") && kb.starts_with("sha256:"),
            "{ka} {kb}"
        );
        assert_ne!(ka, kb);
        assert_ne!(ka, event.id().to_string());
    }
}
