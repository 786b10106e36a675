-- realtime-mirror, SQL Server: the tables (schema dbo, the plan's PascalCase names).
--
-- One refinery migration = one T-SQL batch (refinery's tiberius driver sends the
-- whole file with a single simple_query), so this file has no `GO` and every
-- function, view and procedure lives in its own file (CREATE PROCEDURE,
-- FUNCTION and VIEW must start their batch). The same files are included, in
-- the same order, by deploy/sql/deploy_realtime_mirror.sqlcmd.
--
-- Runs unchanged on SQL Server 2019+ / Azure SQL and on Babelfish for
-- PostgreSQL 4.3+ (Aurora's SQL Server engine). crates/store/tests/
-- mssql_sql_parses.rs rejects the constructs Babelfish lacks (CREATE OR ALTER,
-- MERGE, UTF-8 collations, CONVERT(.., 2) hex styles, JSON_MODIFY append, ...).
--
-- Conventions
-- * Every time is UTC in DATETIMEOFFSET(6): the contract's precision is whole
--   microseconds, so (time, id) versions compare exactly.
-- * Ids (Firestore ids, user ids) are NVARCHAR(256) COLLATE
--   Latin1_General_100_BIN2 (case-sensitive, like Firestore). The contract
--   allows 128 characters; one outside the Basic Multilingual Plane (an emoji)
--   takes two UTF-16 code units, so 128 characters need up to 256 units. The
--   procedures check characters, not units: dbo.fn_StoreMirror_IsValidId.
-- * Keys are exact. SQL Server's `=`, UNIQUE and PRIMARY KEY ignore trailing
--   spaces in NVARCHAR, even under a _BIN2 collation, while Firestore ids may
--   end in spaces and `c1` and `c1 ` are different documents. So every id that
--   is part of a key has a twin column <Name>Key = CAST(<Name> AS
--   VARBINARY(512)), tied to it by a CHECK; unique keys, primary keys, lookups
--   and grouping use the binary twin, which compares byte for byte. (Not a
--   computed column: Babelfish only accepts IMMUTABLE expressions in persisted
--   computed columns, and its nvarchar -> varbinary cast is not declared so.)
--   Applocks hash the same bytes (dbo.sp_StoreMirror_Lock).
-- * ParticipantHash = lower-case hex SHA-256 of the participants' user ids,
--   sorted by their UTF-8 bytes and joined by `,`, hashed as UTF-8 (equal to
--   state::participant_hash). UTF-8 bytes come from dbo.fn_StoreMirror_Utf8 and
--   hex from dbo.fn_StoreMirror_Hex, not from a UTF-8 collation or CONVERT
--   style 2, which Babelfish does not have.
--
-- Locking (no MERGE anywhere): dbo.sp_StoreMirror_ApplyBatch (every event,
-- per-event ones as a batch of one) first takes sp_getapplock (Exclusive,
-- owned by the transaction) on each entity key, through
-- dbo.sp_StoreMirror_Lock: the conversation key for a conversation and its
-- messages; the block key; the follow edge key. Every write to an entity's
-- rows, its ledger entries (an event id is derived from its subject, so a
-- duplicate always targets the same entity), the conversation's participants
-- and its derived summary happens under that lock, so concurrent writers of
-- one entity are serialized and the check-then-insert/update cannot race.
-- Rows are then read WITH (UPDLOCK) (Babelfish accepts and ignores table hints;
-- the applock is what serializes). HOLDLOCK is deliberately not used: its
-- key-range locks would add nothing under the applock, and inside a
-- multi-event batch transaction they make unrelated events whose keys share an
-- index gap block and deadlock. Lock order is always: entity applocks (in
-- the plan's global order), then rows; a deadlock still surfaces as 1205
-- or 51205, both transient.
--
-- History (contract v1.1): DmMessageAudit gets one row per dm.message.update /
-- .delete event id, applied or stale, with the event's own payload;
-- FollowEdgeObservation keeps one row per follow-edge event id (its state, NULL
-- for a delete), and dbo.FollowEvent is a view deriving each transition from
-- the previous observation in (time, event id) order, so a late event
-- re-derives its neighbours' transitions.
--
-- Error numbers THROWn by the procedures (permanent rejections unless noted;
-- also listed in crates/store/src/mssql/errors.rs and docs/sqlserver.md):
--   50001  event id is null
--   50002  source version (event time) is null
--   50003  an id (conversation, message, user) is not a valid id: null, empty, longer than 128 characters, . or .., or containing / or a control character
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
    -- conversations/{256 units}/messages/{256 units} fits in 600
    Subject NVARCHAR(600) NOT NULL,
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    Outcome NVARCHAR(16) NOT NULL CONSTRAINT CK_AppliedEvent_Outcome CHECK (Outcome IN (N'applied', N'stale')),
    AppliedAt DATETIMEOFFSET(6) NOT NULL CONSTRAINT DF_AppliedEvent_AppliedAt DEFAULT (TODATETIMEOFFSET(SYSUTCDATETIME(), 0))
);

CREATE TABLE dbo.DmConversation (
    ConversationId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_DmConversation PRIMARY KEY,
    FirestoreId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    -- the exact id, byte for byte: the unique key (see "Keys are exact")
    FirestoreIdKey VARBINARY(512) NOT NULL CONSTRAINT UQ_DmConversation_FirestoreIdKey UNIQUE,
    Type NVARCHAR(16) NULL CONSTRAINT CK_DmConversation_Type CHECK (Type IN (N'direct', N'group')),
    CreatedAt DATETIMEOFFSET(6) NULL,
    -- greatest(DocUpdatedAt, LastMessageAt)
    UpdatedAt DATETIMEOFFSET(6) NULL,
    -- the conversation document's own updatedAt
    DocUpdatedAt DATETIMEOFFSET(6) NULL,
    -- Firestore id of the newest live message (derived, never taken from the payload)
    LastMessageId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NULL,
    LastMessageAt DATETIMEOFFSET(6) NULL,
    ParticipantHash CHAR(64) NULL,
    -- 1 while only messages have arrived (the conversation event is late)
    IsPlaceholder BIT NOT NULL,
    SourceVersion DATETIMEOFFSET(6) NULL,
    LastSyncedEventId UNIQUEIDENTIFIER NULL,
    SyncSource NVARCHAR(32) NULL,
    CONSTRAINT CK_DmConversation_FirestoreIdKey CHECK (FirestoreIdKey = CAST(FirestoreId AS VARBINARY(512)))
);

CREATE TABLE dbo.DmParticipant (
    ConversationId BIGINT NOT NULL CONSTRAINT FK_DmParticipant_DmConversation REFERENCES dbo.DmConversation (ConversationId),
    UserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    UserIdKey VARBINARY(512) NOT NULL,
    Role NVARCHAR(16) NOT NULL CONSTRAINT CK_DmParticipant_Role CHECK (Role IN (N'owner', N'member')),
    JoinedAt DATETIMEOFFSET(6) NOT NULL,
    MuteState NVARCHAR(16) NOT NULL CONSTRAINT CK_DmParticipant_MuteState CHECK (MuteState IN (N'none', N'muted')),
    ReadPointerMessageId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NULL,
    -- the Firestore document the participant entry came from (conversations/{id})
    FirestorePointer NVARCHAR(400) NULL,
    CONSTRAINT PK_DmParticipant PRIMARY KEY (ConversationId, UserIdKey),
    CONSTRAINT CK_DmParticipant_UserIdKey CHECK (UserIdKey = CAST(UserId AS VARBINARY(512)))
);

CREATE TABLE dbo.DmMessage (
    MessageId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_DmMessage PRIMARY KEY,
    ConversationId BIGINT NOT NULL CONSTRAINT FK_DmMessage_DmConversation REFERENCES dbo.DmConversation (ConversationId),
    FirestoreId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    FirestoreIdKey VARBINARY(512) NOT NULL,
    AuthorUserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NULL,
    BodyText NVARCHAR(MAX) NULL,
    AttachmentJson NVARCHAR(MAX) NULL CONSTRAINT CK_DmMessage_AttachmentJson CHECK (AttachmentJson IS NULL OR ISJSON(AttachmentJson) = 1),
    ExternalMediaJson NVARCHAR(MAX) NULL CONSTRAINT CK_DmMessage_ExternalMediaJson CHECK (ExternalMediaJson IS NULL OR ISJSON(ExternalMediaJson) = 1),
    CreatedAt DATETIMEOFFSET(6) NULL,
    EditedAt DATETIMEOFFSET(6) NULL,
    -- soft delete (payload deletedAt) or, with Tombstone = 1, the hard delete's event time
    DeletedAt DATETIMEOFFSET(6) NULL,
    ClientMessageId NVARCHAR(256) NULL,
    Tombstone BIT NOT NULL CONSTRAINT DF_DmMessage_Tombstone DEFAULT (0),
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    EventId UNIQUEIDENTIFIER NOT NULL,
    SyncSource NVARCHAR(32) NOT NULL,
    CONSTRAINT UQ_DmMessage_Conversation_FirestoreIdKey UNIQUE (ConversationId, FirestoreIdKey),
    CONSTRAINT CK_DmMessage_FirestoreIdKey CHECK (FirestoreIdKey = CAST(FirestoreId AS VARBINARY(512)))
);

CREATE INDEX IX_DmMessage_ConversationId_CreatedAt ON dbo.DmMessage (ConversationId, CreatedAt);

-- One row per dm.message.update / .delete event id, applied or stale (v1.1).
CREATE TABLE dbo.DmMessageAudit (
    AuditId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_DmMessageAudit PRIMARY KEY,
    EventId UNIQUEIDENTIFIER NOT NULL CONSTRAINT UQ_DmMessageAudit_EventId UNIQUE,
    MessageId BIGINT NOT NULL CONSTRAINT FK_DmMessageAudit_DmMessage REFERENCES dbo.DmMessage (MessageId),
    Action NVARCHAR(16) NOT NULL CONSTRAINT CK_DmMessageAudit_Action CHECK (Action IN (N'edit', N'soft_delete', N'delete')),
    PerformedBy NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NULL,
    -- the event's own data.payload (the version it carries)
    PayloadJson NVARCHAR(MAX) NULL CONSTRAINT CK_DmMessageAudit_PayloadJson CHECK (PayloadJson IS NULL OR ISJSON(PayloadJson) = 1),
    -- the event time
    CreatedAt DATETIMEOFFSET(6) NOT NULL
);

CREATE TABLE dbo.DmBlock (
    UserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    UserIdKey VARBINARY(512) NOT NULL,
    TargetUserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    TargetUserIdKey VARBINARY(512) NOT NULL,
    CreatedAt DATETIMEOFFSET(6) NULL,
    RevokedAt DATETIMEOFFSET(6) NULL,
    Source NVARCHAR(16) NULL CONSTRAINT CK_DmBlock_Source CHECK (Source IN (N'client', N'admin')),
    DeletedAt DATETIMEOFFSET(6) NULL,
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    EventId UNIQUEIDENTIFIER NOT NULL,
    SyncSource NVARCHAR(32) NOT NULL,
    -- NONCLUSTERED: two 512-byte keys exceed the 900-byte limit of a clustered key (1,700 here).
    CONSTRAINT PK_DmBlock PRIMARY KEY NONCLUSTERED (UserIdKey, TargetUserIdKey),
    CONSTRAINT CK_DmBlock_UserIdKey CHECK (UserIdKey = CAST(UserId AS VARBINARY(512))),
    CONSTRAINT CK_DmBlock_TargetUserIdKey CHECK (TargetUserIdKey = CAST(TargetUserId AS VARBINARY(512)))
);

CREATE TABLE dbo.FollowEdge (
    FollowerUserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    FollowerUserIdKey VARBINARY(512) NOT NULL,
    TargetUserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    TargetUserIdKey VARBINARY(512) NOT NULL,
    CreatedAt DATETIMEOFFSET(6) NULL,
    State NVARCHAR(16) NULL CONSTRAINT CK_FollowEdge_State CHECK (State IN (N'pending', N'accepted', N'blocked')),
    Source NVARCHAR(16) NULL CONSTRAINT CK_FollowEdge_Source CHECK (Source IN (N'mobile', N'web', N'admin')),
    DeletedAt DATETIMEOFFSET(6) NULL,
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    EventId UNIQUEIDENTIFIER NOT NULL,
    SyncSource NVARCHAR(32) NOT NULL,
    -- reserved for replay tooling; the procedures never change it
    RetryCount INT NOT NULL CONSTRAINT DF_FollowEdge_RetryCount DEFAULT (0),
    -- NONCLUSTERED: see PK_DmBlock.
    CONSTRAINT PK_FollowEdge PRIMARY KEY NONCLUSTERED (FollowerUserIdKey, TargetUserIdKey),
    CONSTRAINT CK_FollowEdge_FollowerUserIdKey CHECK (FollowerUserIdKey = CAST(FollowerUserId AS VARBINARY(512))),
    CONSTRAINT CK_FollowEdge_TargetUserIdKey CHECK (TargetUserIdKey = CAST(TargetUserId AS VARBINARY(512)))
);

-- One row per distinct follow-edge event id (create, update, delete), applied
-- or stale (contract v1.1): the state the event carries, NULL for a delete.
-- dbo.FollowEvent (a view) derives the transitions from these.
CREATE TABLE dbo.FollowEdgeObservation (
    ObservationId BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_FollowEdgeObservation PRIMARY KEY,
    EventId UNIQUEIDENTIFIER NOT NULL CONSTRAINT UQ_FollowEdgeObservation_EventId UNIQUE,
    FollowerUserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    FollowerUserIdKey VARBINARY(512) NOT NULL,
    TargetUserId NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    TargetUserIdKey VARBINARY(512) NOT NULL,
    -- the event time
    SourceVersion DATETIMEOFFSET(6) NOT NULL,
    -- NULL: the edge was deleted
    State NVARCHAR(16) NULL CONSTRAINT CK_FollowEdgeObservation_State CHECK (State IN (N'pending', N'accepted', N'blocked')),
    Source NVARCHAR(16) NULL,
    SyncSource NVARCHAR(32) NOT NULL,
    CONSTRAINT CK_FollowEdgeObservation_FollowerUserIdKey CHECK (FollowerUserIdKey = CAST(FollowerUserId AS VARBINARY(512))),
    CONSTRAINT CK_FollowEdgeObservation_TargetUserIdKey CHECK (TargetUserIdKey = CAST(TargetUserId AS VARBINARY(512)))
);

CREATE INDEX IX_FollowEdgeObservation_Edge ON dbo.FollowEdgeObservation (FollowerUserIdKey, TargetUserIdKey, SourceVersion);

-- The follow_event transition table, the same as model::follow_transition
-- (N'' = no edge / deleted). A pair that is not listed records no FollowEvent.
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
    DeadLetterKey NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL,
    -- the exact key, byte for byte: the unique key (see "Keys are exact")
    DeadLetterKeyBytes VARBINARY(400) NOT NULL CONSTRAINT UQ_RealtimeMirrorDeadLetter_KeyBytes UNIQUE,
    EventId UNIQUEIDENTIFIER NULL,
    EventType NVARCHAR(64) NULL,
    Subject NVARCHAR(600) NULL,
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
    ReplayHistoryJson NVARCHAR(MAX) NULL,
    CONSTRAINT CK_RealtimeMirrorDeadLetter_KeyBytes CHECK (DeadLetterKeyBytes = CAST(DeadLetterKey AS VARBINARY(400)))
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
