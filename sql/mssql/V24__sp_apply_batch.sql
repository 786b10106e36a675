-- dbo.sp_StoreMirror_ApplyBatch: a whole planned batch, set-based, in one
-- transaction (issue 9). NOT RUN against a SQL Server or Babelfish yet (none
-- runs on the development machine); parsed by crates/store/tests/mssql_sql_parses.rs.
--
-- @BatchJson is built by the adapter (crates/store/src/mssql/batch.rs) from
-- mirror_store::plan::Plan, the plan the PostgreSQL batch executes too:
--   {"Locks":  [{"Ord": 1, "Kind": "conversation", "Key": "c1"}, ...],
--    "Events": [{"Ord": 1, "Family": "message", "EventId": "...", ...}, ...]}
-- Locks: the entity applocks in the plan's global lock order, each once, with
-- the kind and key text the per-event procedures lock (conversation: the
-- conversation id; block / follow-edge: the subject), so a batch and a
-- per-event call of the same entity serialize on the same applock.
-- Events: every distinct event of the batch, in lock order, with the named
-- parameters of its per-event procedure (crates/store/src/mssql/call.rs
-- procedure_call, names without `@`; an absent value is NULL), plus Family
-- (conversation | message | block | follow), Subject, Deleted (a delete),
-- ParticipantHash (conversations: state::participant_hash, the function the
-- per-event procedure's hash is tested against), Newest (newer than every
-- earlier event of its entity in the batch) and Winner (the newest event of
-- its entity in the batch).
--
-- An event is a duplicate if its id is in the ledger; otherwise applied iff
-- Newest and strictly newer (dbo.fn_StoreMirror_IsNewer) than the stored row,
-- else stale. Only a Winner that is applied writes the current row. Every new
-- dm.message.update / .delete event writes its DmMessageAudit row and every
-- new follow-edge event its FollowEdgeObservation (contract v1.1), applied or
-- stale, exactly as the per-event procedures do; a message of a conversation
-- that has not arrived creates the placeholder (with the sync source of the
-- first such message in the batch, as applying them one by one would). The
-- conversation summary is refreshed once per touched conversation.
--
-- Every event was decoded by mirror-schema, whose rules are the ones the
-- per-event procedures reject events by, so this procedure does not check them
-- again; a row a constraint rejects fails the whole call (XACT_ABORT rolls
-- the transaction back), and the adapter then applies the batch event by
-- event, which isolates the event at fault.
--
-- Returns one row per event of @BatchJson, in its order: EventId, Outcome =
-- 'applied' | 'duplicate' | 'stale'. The per-event procedures apply their
-- event as a batch of one through this procedure (dbo.sp_StoreMirror_ApplyOne),
-- so both apply modes share one implementation.
CREATE PROCEDURE dbo.sp_StoreMirror_ApplyBatch (
    @BatchJson NVARCHAR(MAX) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    IF @BatchJson IS NULL OR ISJSON(@BatchJson) = 0
        THROW 50005, N'the batch is not valid JSON', 1;

    DECLARE @Locks TABLE (
        Ord INT NOT NULL PRIMARY KEY,
        Kind NVARCHAR(32) NOT NULL,
        LockKey VARBINARY(1600) NOT NULL
    );
    DECLARE @Events TABLE (
        Ord INT NOT NULL PRIMARY KEY,
        Family NVARCHAR(16) NOT NULL,
        EventId UNIQUEIDENTIFIER NOT NULL,
        EventType NVARCHAR(64) NOT NULL,
        SourceVersion DATETIMEOFFSET(6) NOT NULL,
        SyncSource NVARCHAR(64) NOT NULL,
        Subject NVARCHAR(600) NOT NULL,
        Deleted BIT NOT NULL,
        Newest BIT NOT NULL,
        Winner BIT NOT NULL,
        ConversationFirestoreId NVARCHAR(400) NULL,
        ConversationKey VARBINARY(512) NULL,
        Type NVARCHAR(64) NULL,
        CreatedAt DATETIMEOFFSET(6) NULL,
        UpdatedAt DATETIMEOFFSET(6) NULL,
        ParticipantsJson NVARCHAR(MAX) NULL,
        ParticipantHash CHAR(64) NULL,
        PayloadJson NVARCHAR(MAX) NULL,
        MessageFirestoreId NVARCHAR(400) NULL,
        MessageKey VARBINARY(512) NULL,
        AuthorUserId NVARCHAR(400) NULL,
        BodyText NVARCHAR(MAX) NULL,
        AttachmentJson NVARCHAR(MAX) NULL,
        ExternalMediaJson NVARCHAR(MAX) NULL,
        EditedAt DATETIMEOFFSET(6) NULL,
        DeletedAt DATETIMEOFFSET(6) NULL,
        ClientMessageId NVARCHAR(400) NULL,
        PerformedBy NVARCHAR(400) NULL,
        UserId NVARCHAR(400) NULL,
        UserKey VARBINARY(512) NULL,
        FollowerUserId NVARCHAR(400) NULL,
        FollowerKey VARBINARY(512) NULL,
        TargetUserId NVARCHAR(400) NULL,
        TargetKey VARBINARY(512) NULL,
        RevokedAt DATETIMEOFFSET(6) NULL,
        Source NVARCHAR(64) NULL,
        State NVARCHAR(64) NULL
    );
    -- The new events (not in the ledger) and their decision.
    DECLARE @Judged TABLE (
        Ord INT NOT NULL PRIMARY KEY,
        Applied BIT NOT NULL,
        RowExists BIT NOT NULL
    );
    DECLARE @Touched TABLE (Position BIGINT NOT NULL PRIMARY KEY, ConversationId BIGINT NOT NULL);
    DECLARE @Position BIGINT = 1;
    DECLARE @Count BIGINT = 0;
    DECLARE @Kind NVARCHAR(32);
    DECLARE @Key VARBINARY(1600);
    DECLARE @ConversationId BIGINT;

    INSERT INTO @Locks (Ord, Kind, LockKey)
    SELECT l.Ord, l.Kind, CAST(l.LockKey AS VARBINARY(1600))
    FROM OPENJSON(@BatchJson, N'$.Locks') WITH (
        Ord INT '$.Ord',
        Kind NVARCHAR(32) '$.Kind',
        LockKey NVARCHAR(800) '$.Key'
    ) AS l;

    INSERT INTO @Events (Ord, Family, EventId, EventType, SourceVersion, SyncSource, Subject, Deleted, Newest, Winner,
                         ConversationFirestoreId, ConversationKey, Type, CreatedAt, UpdatedAt, ParticipantsJson,
                         ParticipantHash, PayloadJson, MessageFirestoreId, MessageKey, AuthorUserId, BodyText,
                         AttachmentJson, ExternalMediaJson, EditedAt, DeletedAt, ClientMessageId, PerformedBy,
                         UserId, UserKey, FollowerUserId, FollowerKey, TargetUserId, TargetKey, RevokedAt, Source, State)
    SELECT j.Ord, j.Family, j.EventId, j.EventType, j.SourceVersion, j.SyncSource, j.Subject, j.Deleted, j.Newest, j.Winner,
           j.ConversationFirestoreId, CAST(j.ConversationFirestoreId AS VARBINARY(512)), j.Type, j.CreatedAt, j.UpdatedAt,
           j.ParticipantsJson, j.ParticipantHash, j.PayloadJson, j.MessageFirestoreId,
           CAST(j.MessageFirestoreId AS VARBINARY(512)), j.AuthorUserId, j.BodyText, j.AttachmentJson, j.ExternalMediaJson,
           j.EditedAt, j.DeletedAt, j.ClientMessageId, j.PerformedBy, j.UserId, CAST(j.UserId AS VARBINARY(512)),
           j.FollowerUserId, CAST(j.FollowerUserId AS VARBINARY(512)), j.TargetUserId,
           CAST(j.TargetUserId AS VARBINARY(512)), j.RevokedAt, j.Source, j.State
    FROM OPENJSON(@BatchJson, N'$.Events') WITH (
        Ord INT '$.Ord',
        Family NVARCHAR(16) '$.Family',
        EventId UNIQUEIDENTIFIER '$.EventId',
        EventType NVARCHAR(64) '$.EventType',
        SourceVersion DATETIMEOFFSET(6) '$.SourceVersion',
        SyncSource NVARCHAR(64) '$.SyncSource',
        Subject NVARCHAR(600) '$.Subject',
        Deleted BIT '$.Deleted',
        Newest BIT '$.Newest',
        Winner BIT '$.Winner',
        ConversationFirestoreId NVARCHAR(400) '$.ConversationFirestoreId',
        Type NVARCHAR(64) '$.Type',
        CreatedAt DATETIMEOFFSET(6) '$.CreatedAt',
        UpdatedAt DATETIMEOFFSET(6) '$.UpdatedAt',
        ParticipantsJson NVARCHAR(MAX) '$.ParticipantsJson',
        ParticipantHash CHAR(64) '$.ParticipantHash',
        PayloadJson NVARCHAR(MAX) '$.PayloadJson',
        MessageFirestoreId NVARCHAR(400) '$.MessageFirestoreId',
        AuthorUserId NVARCHAR(400) '$.AuthorUserId',
        BodyText NVARCHAR(MAX) '$.BodyText',
        AttachmentJson NVARCHAR(MAX) '$.AttachmentJson',
        ExternalMediaJson NVARCHAR(MAX) '$.ExternalMediaJson',
        EditedAt DATETIMEOFFSET(6) '$.EditedAt',
        DeletedAt DATETIMEOFFSET(6) '$.DeletedAt',
        ClientMessageId NVARCHAR(400) '$.ClientMessageId',
        PerformedBy NVARCHAR(400) '$.PerformedBy',
        UserId NVARCHAR(400) '$.UserId',
        FollowerUserId NVARCHAR(400) '$.FollowerUserId',
        TargetUserId NVARCHAR(400) '$.TargetUserId',
        RevokedAt DATETIMEOFFSET(6) '$.RevokedAt',
        Source NVARCHAR(64) '$.Source',
        State NVARCHAR(64) '$.State'
    ) AS j;

    BEGIN TRANSACTION;

    -- 1. Entity locks, in the one global order every writer uses.
    SELECT @Count = COUNT(*) FROM @Locks;
    WHILE @Position <= @Count
    BEGIN
        SELECT @Kind = l.Kind, @Key = l.LockKey FROM @Locks AS l WHERE l.Ord = @Position;
        EXEC dbo.sp_StoreMirror_Lock @Kind = @Kind, @Key = @Key;
        SET @Position = @Position + 1;
    END;

    -- 2. The decision of every new event, against the rows as they were before
    --    the batch (the plan's Newest covers the versions inside the batch).
    INSERT INTO @Judged (Ord, Applied, RowExists)
    SELECT e.Ord,
           CASE WHEN e.Newest = 1 AND dbo.fn_StoreMirror_IsNewer(e.SourceVersion, e.EventId, s.SourceVersion, s.EventId) = 1
                THEN 1 ELSE 0 END,
           CASE WHEN s.Found IS NULL THEN 0 ELSE 1 END
    FROM @Events AS e
    OUTER APPLY (
        SELECT c.SourceVersion, c.LastSyncedEventId AS EventId, 1 AS Found
        FROM dbo.DmConversation AS c WITH (UPDLOCK)
        WHERE e.Family = N'conversation' AND c.FirestoreIdKey = e.ConversationKey
        UNION ALL
        SELECT m.SourceVersion, m.EventId, 1
        FROM dbo.DmMessage AS m WITH (UPDLOCK)
        JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId
        WHERE e.Family = N'message' AND c.FirestoreIdKey = e.ConversationKey AND m.FirestoreIdKey = e.MessageKey
        UNION ALL
        SELECT b.SourceVersion, b.EventId, 1
        FROM dbo.DmBlock AS b WITH (UPDLOCK)
        WHERE e.Family = N'block' AND b.UserIdKey = e.UserKey AND b.TargetUserIdKey = e.TargetKey
        UNION ALL
        SELECT f.SourceVersion, f.EventId, 1
        FROM dbo.FollowEdge AS f WITH (UPDLOCK)
        WHERE e.Family = N'follow' AND f.FollowerUserIdKey = e.FollowerKey AND f.TargetUserIdKey = e.TargetKey
    ) AS s
    WHERE dbo.fn_StoreMirror_IsDuplicate(e.EventId) = 0;

    -- 3. Conversations: the winner's row and participants.
    UPDATE c
    SET Type = e.Type,
        CreatedAt = e.CreatedAt,
        DocUpdatedAt = e.UpdatedAt,
        ParticipantHash = e.ParticipantHash,
        IsPlaceholder = 0,
        SourceVersion = e.SourceVersion,
        LastSyncedEventId = e.EventId,
        SyncSource = e.SyncSource
    FROM dbo.DmConversation AS c
    JOIN @Events AS e ON c.FirestoreIdKey = e.ConversationKey
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'conversation' AND e.Winner = 1 AND j.Applied = 1;

    INSERT INTO dbo.DmConversation (FirestoreId, FirestoreIdKey, Type, CreatedAt, DocUpdatedAt, ParticipantHash, IsPlaceholder,
                                    SourceVersion, LastSyncedEventId, SyncSource)
    SELECT e.ConversationFirestoreId, e.ConversationKey, e.Type, e.CreatedAt, e.UpdatedAt, e.ParticipantHash, 0,
           e.SourceVersion, e.EventId, e.SyncSource
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'conversation' AND e.Winner = 1 AND j.Applied = 1 AND j.RowExists = 0;

    -- The participant list is the document's: replaced.
    DELETE FROM dbo.DmParticipant
    WHERE ConversationId IN (
        SELECT c.ConversationId
        FROM dbo.DmConversation AS c
        JOIN @Events AS e ON c.FirestoreIdKey = e.ConversationKey
        JOIN @Judged AS j ON j.Ord = e.Ord
        WHERE e.Family = N'conversation' AND e.Winner = 1 AND j.Applied = 1
    );
    INSERT INTO dbo.DmParticipant (ConversationId, UserId, UserIdKey, Role, JoinedAt, MuteState, ReadPointerMessageId, FirestorePointer)
    SELECT c.ConversationId, p.UserId, CAST(p.UserId AS VARBINARY(512)), p.Role, p.JoinedAt, p.MuteState,
           p.ReadPointerMessageId, e.Subject
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    JOIN dbo.DmConversation AS c ON c.FirestoreIdKey = e.ConversationKey
    CROSS APPLY OPENJSON(e.ParticipantsJson) WITH (
        UserId NVARCHAR(400) '$.userId',
        Role NVARCHAR(64) '$.role',
        JoinedAt DATETIMEOFFSET(6) '$.joinedAt',
        MuteState NVARCHAR(64) '$.muteState',
        ReadPointerMessageId NVARCHAR(400) '$.readPointerMessageId'
    ) AS p
    WHERE e.Family = N'conversation' AND e.Winner = 1 AND j.Applied = 1;

    -- 4. Messages: placeholder parents (the first new message of each missing
    --    conversation, in lock order = arrival order), rows, history.
    INSERT INTO dbo.DmConversation (FirestoreId, FirestoreIdKey, IsPlaceholder, SyncSource)
    SELECT e.ConversationFirestoreId, e.ConversationKey, 1, e.SyncSource
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'message'
      AND NOT EXISTS (SELECT 1 FROM dbo.DmConversation AS c WHERE c.FirestoreIdKey = e.ConversationKey)
      AND NOT EXISTS (
          SELECT 1
          FROM @Events AS f
          JOIN @Judged AS k ON k.Ord = f.Ord
          WHERE f.Family = N'message' AND f.ConversationKey = e.ConversationKey AND f.Ord < e.Ord
      );

    -- A newer create/update clears a tombstone; a delete leaves one.
    UPDATE m
    SET AuthorUserId = e.AuthorUserId,
        BodyText = e.BodyText,
        AttachmentJson = e.AttachmentJson,
        ExternalMediaJson = e.ExternalMediaJson,
        CreatedAt = e.CreatedAt,
        EditedAt = e.EditedAt,
        DeletedAt = CASE WHEN e.Deleted = 1 THEN e.SourceVersion ELSE e.DeletedAt END,
        ClientMessageId = e.ClientMessageId,
        Tombstone = e.Deleted,
        SourceVersion = e.SourceVersion,
        EventId = e.EventId,
        SyncSource = e.SyncSource
    FROM dbo.DmMessage AS m
    JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId
    JOIN @Events AS e ON c.FirestoreIdKey = e.ConversationKey AND m.FirestoreIdKey = e.MessageKey
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'message' AND e.Winner = 1 AND j.Applied = 1;

    INSERT INTO dbo.DmMessage (ConversationId, FirestoreId, FirestoreIdKey, AuthorUserId, BodyText, AttachmentJson, ExternalMediaJson,
                               CreatedAt, EditedAt, DeletedAt, ClientMessageId, Tombstone, SourceVersion, EventId, SyncSource)
    SELECT c.ConversationId, e.MessageFirestoreId, e.MessageKey, e.AuthorUserId, e.BodyText, e.AttachmentJson,
           e.ExternalMediaJson, e.CreatedAt, e.EditedAt, CASE WHEN e.Deleted = 1 THEN e.SourceVersion ELSE e.DeletedAt END,
           e.ClientMessageId, e.Deleted, e.SourceVersion, e.EventId, e.SyncSource
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    JOIN dbo.DmConversation AS c ON c.FirestoreIdKey = e.ConversationKey
    WHERE e.Family = N'message' AND e.Winner = 1 AND j.Applied = 1 AND j.RowExists = 0;

    -- History (v1.1): every new update and delete event id, applied or stale,
    -- with its own payload (one already there after a ledger prune is kept).
    INSERT INTO dbo.DmMessageAudit (EventId, MessageId, Action, PerformedBy, PayloadJson, CreatedAt)
    SELECT e.EventId, m.MessageId,
           CASE WHEN e.Deleted = 1 THEN N'delete' WHEN e.DeletedAt IS NULL THEN N'edit' ELSE N'soft_delete' END,
           CASE WHEN e.Deleted = 1 THEN e.PerformedBy ELSE e.AuthorUserId END,
           e.PayloadJson, e.SourceVersion
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    JOIN dbo.DmConversation AS c ON c.FirestoreIdKey = e.ConversationKey
    JOIN dbo.DmMessage AS m ON m.ConversationId = c.ConversationId AND m.FirestoreIdKey = e.MessageKey
    WHERE e.Family = N'message'
      AND (e.Deleted = 1 OR e.EventType = N'dm.message.update')
      AND NOT EXISTS (SELECT 1 FROM dbo.DmMessageAudit AS a WHERE a.EventId = e.EventId);

    -- 5. The summary of every conversation an applied event touched, once each.
    INSERT INTO @Touched (Position, ConversationId)
    SELECT ROW_NUMBER() OVER (ORDER BY t.ConversationId), t.ConversationId
    FROM (
        SELECT DISTINCT c.ConversationId
        FROM @Events AS e
        JOIN @Judged AS j ON j.Ord = e.Ord
        JOIN dbo.DmConversation AS c ON c.FirestoreIdKey = e.ConversationKey
        WHERE e.Family IN (N'conversation', N'message') AND j.Applied = 1
    ) AS t;
    SELECT @Count = COUNT(*) FROM @Touched;
    SET @Position = 1;
    WHILE @Position <= @Count
    BEGIN
        SELECT @ConversationId = t.ConversationId FROM @Touched AS t WHERE t.Position = @Position;
        EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;
        SET @Position = @Position + 1;
    END;

    -- 6. Blocks (a delete keeps a tombstone: content NULL, DeletedAt = its time).
    UPDATE b
    SET CreatedAt = e.CreatedAt,
        RevokedAt = e.RevokedAt,
        Source = e.Source,
        DeletedAt = CASE WHEN e.Deleted = 1 THEN e.SourceVersion END,
        SourceVersion = e.SourceVersion,
        EventId = e.EventId,
        SyncSource = e.SyncSource
    FROM dbo.DmBlock AS b
    JOIN @Events AS e ON b.UserIdKey = e.UserKey AND b.TargetUserIdKey = e.TargetKey
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'block' AND e.Winner = 1 AND j.Applied = 1;

    INSERT INTO dbo.DmBlock (UserId, UserIdKey, TargetUserId, TargetUserIdKey, CreatedAt, RevokedAt, Source, DeletedAt,
                             SourceVersion, EventId, SyncSource)
    SELECT e.UserId, e.UserKey, e.TargetUserId, e.TargetKey, e.CreatedAt, e.RevokedAt, e.Source,
           CASE WHEN e.Deleted = 1 THEN e.SourceVersion END, e.SourceVersion, e.EventId, e.SyncSource
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'block' AND e.Winner = 1 AND j.Applied = 1 AND j.RowExists = 0;

    -- 7. Follow edges (the same tombstones) and one observation per new event.
    UPDATE f
    SET CreatedAt = e.CreatedAt,
        State = e.State,
        Source = e.Source,
        DeletedAt = CASE WHEN e.Deleted = 1 THEN e.SourceVersion END,
        SourceVersion = e.SourceVersion,
        EventId = e.EventId,
        SyncSource = e.SyncSource
    FROM dbo.FollowEdge AS f
    JOIN @Events AS e ON f.FollowerUserIdKey = e.FollowerKey AND f.TargetUserIdKey = e.TargetKey
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'follow' AND e.Winner = 1 AND j.Applied = 1;

    INSERT INTO dbo.FollowEdge (FollowerUserId, FollowerUserIdKey, TargetUserId, TargetUserIdKey, CreatedAt, State, Source,
                                DeletedAt, SourceVersion, EventId, SyncSource)
    SELECT e.FollowerUserId, e.FollowerKey, e.TargetUserId, e.TargetKey, e.CreatedAt, e.State, e.Source,
           CASE WHEN e.Deleted = 1 THEN e.SourceVersion END, e.SourceVersion, e.EventId, e.SyncSource
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'follow' AND e.Winner = 1 AND j.Applied = 1 AND j.RowExists = 0;

    INSERT INTO dbo.FollowEdgeObservation (EventId, FollowerUserId, FollowerUserIdKey, TargetUserId, TargetUserIdKey,
                                           SourceVersion, State, Source, SyncSource)
    SELECT e.EventId, e.FollowerUserId, e.FollowerKey, e.TargetUserId, e.TargetKey, e.SourceVersion, e.State, e.Source,
           e.SyncSource
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord
    WHERE e.Family = N'follow'
      AND NOT EXISTS (SELECT 1 FROM dbo.FollowEdgeObservation AS o WHERE o.EventId = e.EventId);

    -- 8. The ledger: every decided event, applied or stale.
    INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
    SELECT e.EventId, e.EventType, e.Subject, e.SourceVersion, CASE WHEN j.Applied = 1 THEN N'applied' ELSE N'stale' END
    FROM @Events AS e
    JOIN @Judged AS j ON j.Ord = e.Ord;

    COMMIT TRANSACTION;

    SELECT e.EventId,
           CASE WHEN j.Ord IS NULL THEN N'duplicate' WHEN j.Applied = 1 THEN N'applied' ELSE N'stale' END AS Outcome
    FROM @Events AS e
    LEFT JOIN @Judged AS j ON j.Ord = e.Ord
    ORDER BY e.Ord;
END;
