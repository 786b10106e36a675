//! [`read`]: every mirrored row of a SQL Server store as a [`MirrorState`]
//! (Firestore ids instead of surrogate keys), plus the row-reading helpers the
//! store's other queries share.

use chrono::{DateTime, Utc};
use tiberius::Row;

use super::error::map_error;
use super::Client;
use crate::state::{
    AuditRow, BlockRow, ConversationRow, FollowEdgeRow, FollowEventRow, MessageRow, MirrorState,
    ParticipantRow,
};
use crate::{StoreError, StoreErrorKind};

pub(crate) async fn read(c: &mut Client) -> Result<MirrorState, StoreError> {
    let mut state = MirrorState::default();
    // One snapshot-consistent read: all the SELECTs in one transaction at REPEATABLE READ
    // would still see concurrent inserts, so the caller quiesces writers first (as the
    // conformance suite does); these are plain reads.
    for r in rows(
        c,
        "SELECT FirestoreId, Type, CreatedAt, UpdatedAt, DocUpdatedAt, LastMessageId, LastMessageAt, ParticipantHash,
                IsPlaceholder, SourceVersion, LastSyncedEventId
         FROM dbo.DmConversation",
    )
    .await?
    {
        state.conversations.insert(
            req_text(&r, "FirestoreId")?,
            ConversationRow {
                kind: text(&r, "Type")?,
                created_at: get(&r, "CreatedAt")?,
                updated_at: get(&r, "UpdatedAt")?,
                doc_updated_at: get(&r, "DocUpdatedAt")?,
                last_message_id: text(&r, "LastMessageId")?,
                last_message_at: get(&r, "LastMessageAt")?,
                participant_hash: text(&r, "ParticipantHash")?.map(|h| h.trim().to_owned()),
                placeholder: req(&r, "IsPlaceholder")?,
                source_version: get(&r, "SourceVersion")?,
                last_event_id: get(&r, "LastSyncedEventId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT c.FirestoreId AS ConversationFirestoreId, p.UserId, p.Role, p.JoinedAt, p.MuteState, p.ReadPointerMessageId
         FROM dbo.DmParticipant AS p JOIN dbo.DmConversation AS c ON c.ConversationId = p.ConversationId",
    )
    .await?
    {
        state.participants.insert(
            (req_text(&r, "ConversationFirestoreId")?, req_text(&r, "UserId")?),
            ParticipantRow {
                role: req_text(&r, "Role")?,
                joined_at: req(&r, "JoinedAt")?,
                mute_state: req_text(&r, "MuteState")?,
                read_pointer_message_id: text(&r, "ReadPointerMessageId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT c.FirestoreId AS ConversationFirestoreId, m.FirestoreId, m.AuthorUserId, m.BodyText, m.AttachmentJson,
                m.ExternalMediaJson, m.CreatedAt, m.EditedAt, m.DeletedAt, m.ClientMessageId, m.Tombstone,
                m.SourceVersion, m.EventId
         FROM dbo.DmMessage AS m JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId",
    )
    .await?
    {
        state.messages.insert(
            (req_text(&r, "ConversationFirestoreId")?, req_text(&r, "FirestoreId")?),
            MessageRow {
                author_user_id: text(&r, "AuthorUserId")?,
                body_text: text(&r, "BodyText")?,
                attachments: json(&r, "AttachmentJson")?,
                external_media: json(&r, "ExternalMediaJson")?,
                created_at: get(&r, "CreatedAt")?,
                edited_at: get(&r, "EditedAt")?,
                deleted_at: get(&r, "DeletedAt")?,
                client_message_id: text(&r, "ClientMessageId")?,
                tombstone: req(&r, "Tombstone")?,
                source_version: req(&r, "SourceVersion")?,
                last_event_id: req(&r, "EventId")?,
            },
        );
    }
    for r in rows(c, "SELECT UserId, TargetUserId, CreatedAt, RevokedAt, Source, DeletedAt, SourceVersion, EventId FROM dbo.DmBlock").await? {
        state.blocks.insert(
            (req_text(&r, "UserId")?, req_text(&r, "TargetUserId")?),
            BlockRow {
                created_at: get(&r, "CreatedAt")?,
                revoked_at: get(&r, "RevokedAt")?,
                source: text(&r, "Source")?,
                deleted_at: get(&r, "DeletedAt")?,
                source_version: req(&r, "SourceVersion")?,
                last_event_id: req(&r, "EventId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT FollowerUserId, TargetUserId, State, Source, CreatedAt, DeletedAt, SourceVersion, EventId FROM dbo.FollowEdge",
    )
    .await?
    {
        state.follow_edges.insert(
            (req_text(&r, "FollowerUserId")?, req_text(&r, "TargetUserId")?),
            FollowEdgeRow {
                state: text(&r, "State")?,
                source: text(&r, "Source")?,
                created_at: get(&r, "CreatedAt")?,
                deleted_at: get(&r, "DeletedAt")?,
                source_version: req(&r, "SourceVersion")?,
                last_event_id: req(&r, "EventId")?,
            },
        );
    }
    for r in rows(
        c,
        "SELECT a.EventId, c.FirestoreId AS ConversationFirestoreId, m.FirestoreId AS MessageFirestoreId, a.Action,
                a.PerformedBy, a.CreatedAt, a.PayloadJson
         FROM dbo.DmMessageAudit AS a
         JOIN dbo.DmMessage AS m ON m.MessageId = a.MessageId
         JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId",
    )
    .await?
    {
        state.audit.push(AuditRow {
            event_id: req(&r, "EventId")?,
            conversation_id: req_text(&r, "ConversationFirestoreId")?,
            message_id: req_text(&r, "MessageFirestoreId")?,
            action: req_text(&r, "Action")?,
            performed_by: text(&r, "PerformedBy")?,
            created_at: req(&r, "CreatedAt")?,
            payload: json(&r, "PayloadJson")?.unwrap_or(serde_json::Value::Null),
        });
    }
    for r in rows(
        c,
        "SELECT EventId, FollowerUserId, TargetUserId, EventType, CreatedAt FROM dbo.FollowEvent",
    )
    .await?
    {
        state.follow_events.push(FollowEventRow {
            event_id: req(&r, "EventId")?,
            follower_user_id: req_text(&r, "FollowerUserId")?,
            target_user_id: req_text(&r, "TargetUserId")?,
            event_type: req_text(&r, "EventType")?,
            created_at: req(&r, "CreatedAt")?,
        });
    }
    Ok(state.normalized())
}

pub(crate) fn get<'a, T: tiberius::FromSql<'a>>(
    row: &'a Row,
    col: &str,
) -> Result<Option<T>, StoreError> {
    row.try_get::<T, _>(col)
        .map_err(|e| StoreError::new(StoreErrorKind::Protocol, format!("column {col}: {e}")))
}

pub(crate) fn req<'a, T: tiberius::FromSql<'a>>(row: &'a Row, col: &str) -> Result<T, StoreError> {
    get::<T>(row, col)?
        .ok_or_else(|| StoreError::new(StoreErrorKind::Protocol, format!("column {col} is NULL")))
}

pub(crate) fn text(row: &Row, col: &str) -> Result<Option<String>, StoreError> {
    Ok(get::<&str>(row, col)?.map(str::to_owned))
}

pub(crate) fn req_text(row: &Row, col: &str) -> Result<String, StoreError> {
    Ok(req::<&str>(row, col)?.to_owned())
}

pub(crate) fn json(row: &Row, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
    get::<&str>(row, col)?
        .map(|s| {
            serde_json::from_str(s).map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Protocol,
                    format!("column {col} is not JSON: {e}"),
                )
            })
        })
        .transpose()
}

pub(crate) fn ts(t: DateTime<Utc>) -> chrono::DateTime<chrono::FixedOffset> {
    t.fixed_offset()
}

pub(crate) async fn rows(client: &mut Client, sql: &str) -> Result<Vec<Row>, StoreError> {
    client
        .simple_query(sql)
        .await
        .map_err(map_error)?
        .into_first_result()
        .await
        .map_err(map_error)
}
