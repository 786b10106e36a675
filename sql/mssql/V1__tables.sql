-- realtime-mirror, SQL Server: the tables (schema dbo, the plan's PascalCase names).
--
-- One refinery migration = one T-SQL batch (refinery's tiberius driver sends the
-- whole file with a single simple_query), so this file has no `GO` and every
-- procedure lives in its own file (CREATE PROCEDURE must start its batch).
-- The same files are included, in the same order, by
-- deploy/sql/deploy_realtime_mirror.sqlcmd.
--
-- Requires SQL Server 2019+ or Azure SQL (UTF-8 collations, STRING_AGG ...
-- WITHIN GROUP, CREATE OR ALTER, THROW, OPENJSON).
--
-- Conventions
-- * Every time is UTC in DATETIMEOFFSET(6): the contract's precision is whole
--   microseconds, so (time, id) versions compare exactly.
-- * Firestore ids and user ids are NVARCHAR(128) COLLATE Latin1_General_100_BIN2:
--   Firestore ids are case-sensitive, so a case-insensitive default collation
--   would merge `AbC` and `abc` into one key. Where the model orders or hashes
--   ids (last message tie-break, ParticipantHash) the procedures convert them to
--   UTF-8 (Latin1_General_100_BIN2_UTF8) and use the UTF-8 bytes, which is the
--   byte order and the encoding the Rust model uses.
-- * ParticipantHash = lower-case hex SHA-256 of the participants' user ids,
--   sorted by their UTF-8 bytes and joined by `,`, hashed as UTF-8 (see
--   sp_StoreMirror_UpsertDmConversation).
--
-- Locking (no MERGE anywhere): every procedure first takes sp_getapplock
-- (Exclusive, owned by the transaction) on its entity key: the conversation
-- key, then the message key for messages; the block key; the follow edge key.
-- Every write to an entity's rows, its ledger entries (an event id is derived
-- from its subject, so a duplicate always targets the same entity), the
-- conversation's participants and its derived summary happens under that
-- lock, so concurrent writers of one entity are serialized and the
-- check-then-insert/update cannot race. Rows are then read WITH (UPDLOCK).
-- HOLDLOCK is deliberately not used: its key-range locks would add nothing
-- under the applock, and inside a multi-event batch transaction they make
-- unrelated events whose keys share an index gap block and deadlock.
-- Lock order is always: entity applocks (conversation before message), then
-- rows; a deadlock still surfaces as 1205 or 51205, both transient.
--
-- Error numbers THROWn by the procedures (permanent rejections unless noted;
-- also listed in crates/store/src/mssql.rs and docs/sqlserver.md):
--   50001  event id is null
--   50002  source version (event time) is null
--   50003  an id (conversation, message, user) is null, empty or longer than 128
--   50004  the event type does not belong to this procedure
--   50005  payload JSON is not valid JSON
--   50010  conversation type is not direct|group, or createdAt/updatedAt missing
--   50011  participants is not a JSON array
--   50012  a participant lacks userId/role/joinedAt/muteState or has a bad value
--   50013  a participant is listed twice
--   50020  message authorUserId/bodyText/createdAt missing
--   50021  attachments/externalMedia is not a JSON array
--   50030  block source is not client|admin, or createdAt missing
--   50040  follow state is not pending|accepted|blocked
--   50041  follow source is not mobile|web|admin, or createdAt missing
--   51205  TRANSIENT: an entity lock (sp_getapplock) was not granted (deadlock
--          victim or cancelled); retry like 1205

-- The ledger of applied event ids: idempotency by event id. Every event that
-- reaches an entity decision is recorded, stale ones too (as the model does),
-- so a second delivery of any id is a `duplicate`.
CREATE TABLE dbo.AppliedEvent (
    EventId UNIQUEIDENTIFIER NOT NULL CONSTRAINT PK_AppliedEvent PRIMARY KEY,
    EventType NVARCHAR(64) NOT NULL,
    Subject NVARCHAR(400) NOT NULL,
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    Outcome NVARCHAR(16) NOT NULL CONSTRAINT CK_AppliedEvent_Outcome CHECK (Outcome IN (N'applied', N'stale')),
    AppliedAt DATETIMEOFFSET(6) NOT NULL CONSTRAINT DF_AppliedEvent_AppliedAt DEFAULT (TODATETIMEOFFSET(SYSUTCDATETIME(), 0))
);

CREATE TABLE dbo.DmConversation (
    ConversationId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_DmConversation PRIMARY KEY,
    FirestoreId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT UQ_DmConversation_FirestoreId UNIQUE,
    Type NVARCHAR(16) NULL CONSTRAINT CK_DmConversation_Type CHECK (Type IN (N'direct', N'group')),
    CreatedAt DATETIMEOFFSET(6) NULL,
    -- greatest(DocUpdatedAt, LastMessageAt)
    UpdatedAt DATETIMEOFFSET(6) NULL,
    -- the conversation document's own updatedAt
    DocUpdatedAt DATETIMEOFFSET(6) NULL,
    -- Firestore id of the newest live message (derived, never taken from the payload)
    LastMessageId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NULL,
    LastMessageAt DATETIMEOFFSET(6) NULL,
    ParticipantHash CHAR(64) NULL,
    -- 1 while only messages have arrived (the conversation event is late)
    IsPlaceholder BIT NOT NULL,
    SourceVersion DATETIMEOFFSET(6) NULL,
    LastSyncedEventId UNIQUEIDENTIFIER NULL,
    SyncSource NVARCHAR(32) NULL
);

CREATE TABLE dbo.DmParticipant (
    ConversationId BIGINT NOT NULL CONSTRAINT FK_DmParticipant_DmConversation REFERENCES dbo.DmConversation (ConversationId),
    UserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    Role NVARCHAR(16) NOT NULL CONSTRAINT CK_DmParticipant_Role CHECK (Role IN (N'owner', N'member')),
    JoinedAt DATETIMEOFFSET(6) NOT NULL,
    MuteState NVARCHAR(16) NOT NULL CONSTRAINT CK_DmParticipant_MuteState CHECK (MuteState IN (N'none', N'muted')),
    ReadPointerMessageId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NULL,
    -- the Firestore document the participant entry came from (conversations/{id})
    FirestorePointer NVARCHAR(400) NULL,
    CONSTRAINT PK_DmParticipant PRIMARY KEY (ConversationId, UserId)
);

CREATE TABLE dbo.DmMessage (
    MessageId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_DmMessage PRIMARY KEY,
    ConversationId BIGINT NOT NULL CONSTRAINT FK_DmMessage_DmConversation REFERENCES dbo.DmConversation (ConversationId),
    FirestoreId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    AuthorUserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NULL,
    BodyText NVARCHAR(MAX) NULL,
    AttachmentJson NVARCHAR(MAX) NULL CONSTRAINT CK_DmMessage_AttachmentJson CHECK (AttachmentJson IS NULL OR ISJSON(AttachmentJson) = 1),
    ExternalMediaJson NVARCHAR(MAX) NULL CONSTRAINT CK_DmMessage_ExternalMediaJson CHECK (ExternalMediaJson IS NULL OR ISJSON(ExternalMediaJson) = 1),
    CreatedAt DATETIMEOFFSET(6) NULL,
    EditedAt DATETIMEOFFSET(6) NULL,
    -- soft delete (payload deletedAt) or, with Tombstone = 1, the hard delete's event time
    DeletedAt DATETIMEOFFSET(6) NULL,
    ClientMessageId NVARCHAR(128) NULL,
    Tombstone BIT NOT NULL CONSTRAINT DF_DmMessage_Tombstone DEFAULT (0),
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    EventId UNIQUEIDENTIFIER NOT NULL,
    SyncSource NVARCHAR(32) NOT NULL,
    CONSTRAINT UQ_DmMessage_Conversation_FirestoreId UNIQUE (ConversationId, FirestoreId)
);

CREATE INDEX IX_DmMessage_ConversationId_CreatedAt ON dbo.DmMessage (ConversationId, CreatedAt);

CREATE TABLE dbo.DmMessageAudit (
    AuditId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_DmMessageAudit PRIMARY KEY,
    EventId UNIQUEIDENTIFIER NOT NULL CONSTRAINT UQ_DmMessageAudit_EventId UNIQUE,
    MessageId BIGINT NOT NULL CONSTRAINT FK_DmMessageAudit_DmMessage REFERENCES dbo.DmMessage (MessageId),
    Action NVARCHAR(16) NOT NULL CONSTRAINT CK_DmMessageAudit_Action CHECK (Action IN (N'edit', N'soft_delete', N'delete')),
    PerformedBy NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NULL,
    -- the event's data.payload as received
    PayloadJson NVARCHAR(MAX) NULL,
    -- the event time
    CreatedAt DATETIMEOFFSET(6) NOT NULL
);

CREATE TABLE dbo.DmBlock (
    UserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    TargetUserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    CreatedAt DATETIMEOFFSET(6) NULL,
    RevokedAt DATETIMEOFFSET(6) NULL,
    Source NVARCHAR(16) NULL CONSTRAINT CK_DmBlock_Source CHECK (Source IN (N'client', N'admin')),
    DeletedAt DATETIMEOFFSET(6) NULL,
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    EventId UNIQUEIDENTIFIER NOT NULL,
    SyncSource NVARCHAR(32) NOT NULL,
    CONSTRAINT PK_DmBlock PRIMARY KEY (UserId, TargetUserId)
);

CREATE TABLE dbo.FollowEdge (
    FollowerUserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    TargetUserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    CreatedAt DATETIMEOFFSET(6) NULL,
    State NVARCHAR(16) NULL CONSTRAINT CK_FollowEdge_State CHECK (State IN (N'pending', N'accepted', N'blocked')),
    Source NVARCHAR(16) NULL CONSTRAINT CK_FollowEdge_Source CHECK (Source IN (N'mobile', N'web', N'admin')),
    DeletedAt DATETIMEOFFSET(6) NULL,
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    EventId UNIQUEIDENTIFIER NOT NULL,
    SyncSource NVARCHAR(32) NOT NULL,
    -- reserved for replay tooling; the procedures never change it
    RetryCount INT NOT NULL CONSTRAINT DF_FollowEdge_RetryCount DEFAULT (0),
    CONSTRAINT PK_FollowEdge PRIMARY KEY (FollowerUserId, TargetUserId)
);

CREATE TABLE dbo.FollowEvent (
    FollowEventId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_FollowEvent PRIMARY KEY,
    EventId UNIQUEIDENTIFIER NOT NULL CONSTRAINT UQ_FollowEvent_EventId UNIQUE,
    FollowerUserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    TargetUserId NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    EventType NVARCHAR(16) NOT NULL CONSTRAINT CK_FollowEvent_EventType CHECK (EventType IN (N'request', N'accept', N'remove', N'block', N'unblock')),
    -- the event time
    CreatedAt DATETIMEOFFSET(6) NOT NULL,
    -- the edge's subject (follows/{follower}/targets/{target}): ties an edge's events together
    CorrelationId NVARCHAR(400) NOT NULL,
    -- {"fromState":…, "toState":…, "source":…, "syncSource":…}
    MetadataJson NVARCHAR(MAX) NULL CONSTRAINT CK_FollowEvent_MetadataJson CHECK (MetadataJson IS NULL OR ISJSON(MetadataJson) = 1)
);

CREATE INDEX IX_FollowEvent_Edge ON dbo.FollowEvent (FollowerUserId, TargetUserId, CreatedAt);

-- The follow_event transition table, the same as model::follow_transition
-- (N'' = no edge / deleted). A pair that is not listed writes no FollowEvent.
CREATE TABLE dbo.FollowTransition (
    FromState NVARCHAR(16) NOT NULL,
    ToState NVARCHAR(16) NOT NULL,
    EventType NVARCHAR(16) NOT NULL,
    CONSTRAINT PK_FollowTransition PRIMARY KEY (FromState, ToState)
);

INSERT INTO dbo.FollowTransition (FromState, ToState, EventType) VALUES
    (N'', N'pending', N'request'),
    (N'', N'accepted', N'accept'),
    (N'', N'blocked', N'block'),
    (N'pending', N'', N'remove'),
    (N'pending', N'accepted', N'accept'),
    (N'pending', N'blocked', N'block'),
    (N'accepted', N'', N'remove'),
    (N'accepted', N'pending', N'request'),
    (N'accepted', N'blocked', N'block'),
    (N'blocked', N'', N'unblock'),
    (N'blocked', N'pending', N'unblock'),
    (N'blocked', N'accepted', N'unblock');

CREATE TABLE dbo.RealtimeMirrorCheckpoint (
    Module NVARCHAR(64) NOT NULL,
    Shard NVARCHAR(128) NOT NULL,
    LastProcessedAt DATETIMEOFFSET(6) NULL,
    CursorToken VARBINARY(MAX) NULL,
    CreatedAt DATETIMEOFFSET(6) NOT NULL CONSTRAINT DF_RealtimeMirrorCheckpoint_CreatedAt DEFAULT (TODATETIMEOFFSET(SYSUTCDATETIME(), 0)),
    UpdatedAt DATETIMEOFFSET(6) NOT NULL CONSTRAINT DF_RealtimeMirrorCheckpoint_UpdatedAt DEFAULT (TODATETIMEOFFSET(SYSUTCDATETIME(), 0)),
    CONSTRAINT PK_RealtimeMirrorCheckpoint PRIMARY KEY (Module, Shard)
);

CREATE TABLE dbo.RealtimeMirrorDeadLetter (
    DeadLetterId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_RealtimeMirrorDeadLetter PRIMARY KEY,
    -- the event id, or sha256:<hex of the body>
    DeadLetterKey NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT UQ_RealtimeMirrorDeadLetter_Key UNIQUE,
    EventId UNIQUEIDENTIFIER NULL,
    EventType NVARCHAR(64) NULL,
    Subject NVARCHAR(400) NULL,
    Payload NVARCHAR(MAX) NOT NULL,
    Reason NVARCHAR(64) NOT NULL,
    Error NVARCHAR(MAX) NOT NULL,
    Attempts INT NOT NULL,
    Subscription NVARCHAR(128) NOT NULL,
    FirstFailedAt DATETIMEOFFSET(6) NOT NULL,
    LastFailedAt DATETIMEOFFSET(6) NOT NULL,
    ReplayCount INT NOT NULL CONSTRAINT DF_RealtimeMirrorDeadLetter_ReplayCount DEFAULT (0),
    LastReplayedAt DATETIMEOFFSET(6) NULL,
    -- JSON array of replay times
    ReplayHistoryJson NVARCHAR(MAX) NULL
);

CREATE INDEX IX_RealtimeMirrorDeadLetter_LastFailedAt ON dbo.RealtimeMirrorDeadLetter (LastFailedAt);

CREATE TABLE dbo.RealtimeMirrorMetrics (
    MetricId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_RealtimeMirrorMetrics PRIMARY KEY,
    Module NVARCHAR(64) NOT NULL,
    Metric NVARCHAR(128) NOT NULL,
    Value FLOAT NOT NULL,
    RecordedAt DATETIMEOFFSET(6) NOT NULL
);

CREATE INDEX IX_RealtimeMirrorMetrics_Module_Metric ON dbo.RealtimeMirrorMetrics (Module, Metric, RecordedAt);
