//! `--repair`: republish the source's current version of every differing
//! document through the bus, marked as a repair, and never write SQL.
//!
//! A repair event is the publisher's event for the document's current
//! version with `source` = `repair://projects/{project}/databases/(default)/documents/{path}`,
//! so `sync_source` = `repair`; its id is the contract's deterministic id, so
//! it is usually the id of the event that first carried that version. The
//! store prepares repair events (`mirror.prepare_repair`): a row at the same
//! update time and a ledger entry for the id are opened again, so the repair
//! rewrites the row instead of being a duplicate or stale. Per finding:
//!
//! | finding | repair |
//! | --- | --- |
//! | missing in SQL, SQL behind, field mismatch, tombstone older than the document | the document's current version |
//! | missing in source (message, block, follow edge) | a delete observed now (`time` = now, after the SQL version) |
//! | missing in source (conversation) | none: the contract has no conversation delete |
//! | missing in source found by a `--since` run | none: the document may exist with an older update time; confirm without `--since` |
//! | SQL ahead of the source, tombstone newer than the document | none: a repair never moves a row backwards; touch the document in Firestore so the publisher emits a newer version |

use anyhow::Result;
use chrono::Utc;
use mirror_bus::{EventBus, OutboundMessage, PublishOutcome};
use mirror_schema::{EventType, MessageDeletePayload, MirrorEvent, Op, Payload};
use mirror_store::checksum::{subject_of, Table, REPAIR_SYNC_SOURCE};
use serde::Serialize;
use std::collections::HashMap;

use super::report::{Finding, FindingKind};

/// The `source` of a repair event for a document of `project`.
pub fn repair_source(project: &str, subject: &mirror_schema::Subject) -> String {
    format!("{REPAIR_SYNC_SOURCE}://projects/{project}/databases/(default)/documents/{subject}")
}

/// What `--repair` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairSummary {
    pub published: usize,
    /// Already on the bus (the broker's duplicate window).
    pub broker_duplicates: usize,
    /// Findings a repair cannot fix, with the reason.
    pub not_repairable: Vec<(String, String)>,
}

/// The repair events for `findings` (`sources`: the source event of each finding's key).
pub fn plan(
    project: &str,
    findings: &[Finding],
    sources: &HashMap<(Table, String), MirrorEvent>,
) -> (Vec<MirrorEvent>, Vec<(String, String)>) {
    let mut events = Vec::new();
    let mut skipped = Vec::new();
    for f in findings {
        let label = format!("{} {}", f.table.name(), f.key);
        let ahead = f.sql_version.is_some()
            && f.source_version.is_some()
            && f.sql_version > f.source_version
            && matches!(
                f.kind,
                FindingKind::VersionMismatch | FindingKind::TombstoneMismatch
            );
        if ahead {
            skipped.push((
                label,
                "SQL holds a newer version than the source; touch the document in Firestore".into(),
            ));
            continue;
        }
        match (f.kind, sources.get(&(f.table, f.key.clone()))) {
            (FindingKind::MissingInSource, _) if f.since_scoped => skipped.push((
                label,
                "found by a --since run: confirm without --since before a delete is published"
                    .into(),
            )),
            (FindingKind::MissingInSource, _) => {
                let Some(subject) = subject_of(f.table, &f.key) else {
                    skipped.push((label, "key is not a valid subject".into()));
                    continue;
                };
                let (ty, payload) = match f.table {
                    Table::DmConversation => {
                        skipped.push((label, "the contract has no conversation delete".into()));
                        continue;
                    }
                    Table::DmMessage => (
                        EventType::DmMessageDelete,
                        Payload::MessageDelete(MessageDeletePayload::default()),
                    ),
                    Table::DmBlock => (EventType::DmBlockDelete, Payload::BlockDelete),
                    Table::FollowEdge => (EventType::FollowEdgeDelete, Payload::FollowEdgeDelete),
                };
                // Observed now; strictly after the version SQL holds.
                let mut time = Utc::now();
                if let Some(v) = f
                    .sql_version
                    .as_deref()
                    .and_then(|v| mirror_schema::parse_time("version", v).ok())
                {
                    if time <= v {
                        time = v + chrono::Duration::microseconds(1);
                    }
                }
                let source = repair_source(project, &subject);
                match MirrorEvent::new(ty, subject, time, source, payload) {
                    Ok(e) => events.push(e),
                    Err(e) => skipped.push((label, e.to_string())),
                }
            }
            (_, Some(current)) => {
                let source = repair_source(project, current.subject());
                debug_assert_ne!(current.event_type().op(), Op::Delete);
                match MirrorEvent::new(
                    current.event_type(),
                    current.subject().clone(),
                    current.time(),
                    source,
                    current.payload().clone(),
                ) {
                    Ok(e) => events.push(e),
                    Err(e) => skipped.push((label, e.to_string())),
                }
            }
            (_, None) => skipped.push((label, "the source document is gone".into())),
        }
    }
    (events, skipped)
}

/// Publish the repair events.
pub async fn publish<B: EventBus>(bus: &B, events: &[MirrorEvent]) -> Result<(usize, usize)> {
    let mut published = 0;
    let mut duplicates = 0;
    // The broker keys duplicate detection on the message id: a repair of a
    // version published a moment ago must not be dropped as that publish's
    // duplicate, so each repair run has its own message ids.
    let run = Utc::now().timestamp_micros();
    for e in events {
        let mut message = OutboundMessage::from_event(e);
        message.message_id = format!("repair:{run}:{}", e.id());
        match bus.publish(&message).await? {
            PublishOutcome::Duplicate => duplicates += 1,
            _ => published += 1,
        }
    }
    Ok((published, duplicates))
}
