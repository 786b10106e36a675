-- dbo.sp_StoreMirror_UpsertDmConversation: dm.conversation.create / .update
-- (model::Model::conversation).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50003, 50004, 50005, 50010,
-- 50011, 50012, 50013; 51205 (transient) if the conversation lock is not granted.
--
-- @ParticipantsJson: JSON array of {userId, role, joinedAt, muteState,
-- readPointerMessageId?} (the contract's participants, times in RFC 3339 UTC).
-- The payload's lastMessageId is not used: the summary is derived from messages.
--
-- ParticipantHash: lower-case hex SHA-256 over the user ids sorted by their
-- UTF-8 bytes and joined by ',', hashed as UTF-8. The ids are converted with
-- COLLATE Latin1_General_100_BIN2_UTF8 to VARCHAR inside the expression (never
-- through a variable, which would take the database's default code page), so
-- the bytes hashed are the UTF-8 bytes whatever the database collation is.
--
-- Locking: sp_getapplock on the conversation key (Exclusive, transaction
-- owned), then the ledger and the conversation row read WITH (UPDLOCK); see
-- "Locking" in V1__tables.sql.
CREATE OR ALTER PROCEDURE dbo.sp_StoreMirror_UpsertDmConversation (
    @EventId UNIQUEIDENTIFIER,
    @EventType NVARCHAR(64),
    @SourceVersion DATETIMEOFFSET(6),
    @SyncSource NVARCHAR(64),
    @ConversationFirestoreId NVARCHAR(400),
    @Type NVARCHAR(64),
    @CreatedAt DATETIMEOFFSET(6),
    @UpdatedAt DATETIMEOFFSET(6),
    @ParticipantsJson NVARCHAR(MAX),
    @PayloadJson NVARCHAR(MAX)
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    IF @EventId IS NULL
        THROW 50001, N'event id is null', 1;
    IF @SourceVersion IS NULL
        THROW 50002, N'source version is null', 1;
    IF @ConversationFirestoreId IS NULL OR DATALENGTH(@ConversationFirestoreId) = 0 OR DATALENGTH(@ConversationFirestoreId) > 256
        THROW 50003, N'conversation id is null, empty or longer than 128', 1;
    IF @EventType IS NULL OR @EventType NOT IN (N'dm.conversation.create', N'dm.conversation.update')
        THROW 50004, N'event type is not dm.conversation.create or dm.conversation.update', 1;
    IF @PayloadJson IS NOT NULL AND ISJSON(@PayloadJson) = 0
        THROW 50005, N'payload is not valid JSON', 1;
    IF @Type IS NULL OR @Type NOT IN (N'direct', N'group') OR @CreatedAt IS NULL OR @UpdatedAt IS NULL
        THROW 50010, N'conversation type is not direct or group, or createdAt/updatedAt is missing', 1;
    IF @ParticipantsJson IS NULL OR ISJSON(@ParticipantsJson) = 0 OR LEFT(LTRIM(@ParticipantsJson), 1) <> N'['
        THROW 50011, N'participants is not a JSON array', 1;

    DECLARE @Participants TABLE (
        UserId NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NULL,
        Role NVARCHAR(64) NULL,
        JoinedAt DATETIMEOFFSET(6) NULL,
        MuteState NVARCHAR(64) NULL,
        ReadPointerMessageId NVARCHAR(400) NULL
    );

    INSERT INTO @Participants (UserId, Role, JoinedAt, MuteState, ReadPointerMessageId)
    SELECT p.UserId, p.Role, p.JoinedAt, p.MuteState, p.ReadPointerMessageId
    FROM OPENJSON(@ParticipantsJson) WITH (
        UserId NVARCHAR(400) '$.userId',
        Role NVARCHAR(64) '$.role',
        JoinedAt DATETIMEOFFSET(6) '$.joinedAt',
        MuteState NVARCHAR(64) '$.muteState',
        ReadPointerMessageId NVARCHAR(400) '$.readPointerMessageId'
    ) AS p;

    IF EXISTS (
        SELECT 1
        FROM @Participants
        WHERE UserId IS NULL OR DATALENGTH(UserId) = 0 OR DATALENGTH(UserId) > 256
           OR Role IS NULL OR Role NOT IN (N'owner', N'member')
           OR JoinedAt IS NULL
           OR MuteState IS NULL OR MuteState NOT IN (N'none', N'muted')
           OR DATALENGTH(ReadPointerMessageId) > 256
    )
        THROW 50012, N'a participant lacks userId, role, joinedAt or muteState, or has a bad value', 1;
    IF EXISTS (SELECT p.UserId FROM @Participants AS p GROUP BY p.UserId HAVING COUNT(*) > 1)
        THROW 50013, N'a participant is listed twice', 1;

    DECLARE @Subject NVARCHAR(400) = CONCAT(N'conversations/', @ConversationFirestoreId);
    DECLARE @ConversationLock NVARCHAR(255) = CONCAT(N'realtime-mirror/conversation/', CONVERT(NVARCHAR(64), HASHBYTES('SHA2_256', @ConversationFirestoreId), 2));
    DECLARE @ConversationId BIGINT;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;
    DECLARE @Hash CHAR(64);

    BEGIN TRANSACTION;

    EXEC sys.sp_getapplock @Resource = @ConversationLock, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = -1;
    IF APPLOCK_MODE(N'public', @ConversationLock, N'Transaction') <> N'Exclusive'
        THROW 51205, N'the conversation lock was not granted (deadlock victim or cancelled); retry', 1;

    IF EXISTS (SELECT 1 FROM dbo.AppliedEvent WITH (UPDLOCK) WHERE EventId = @EventId)
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    SELECT @ConversationId = c.ConversationId,
           @StoredVersion = c.SourceVersion,
           @StoredEventId = c.LastSyncedEventId
    FROM dbo.DmConversation AS c WITH (UPDLOCK)
    WHERE c.FirestoreId = @ConversationFirestoreId;

    -- (time, id) must be strictly newer; a placeholder has no version.
    IF @StoredVersion IS NOT NULL
       AND NOT (@SourceVersion > @StoredVersion
                OR (@SourceVersion = @StoredVersion
                    AND CONVERT(CHAR(36), @EventId) COLLATE Latin1_General_100_BIN2 > CONVERT(CHAR(36), @StoredEventId) COLLATE Latin1_General_100_BIN2))
    BEGIN
        INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
        VALUES (@EventId, @EventType, @Subject, @SourceVersion, N'stale');
        COMMIT TRANSACTION;
        SELECT N'stale' AS Outcome;
        RETURN;
    END;

    SELECT @Hash = LOWER(CONVERT(CHAR(64), HASHBYTES('SHA2_256',
        ISNULL(STRING_AGG(CONVERT(VARCHAR(MAX), p.UserId COLLATE Latin1_General_100_BIN2_UTF8), ',')
                   WITHIN GROUP (ORDER BY CONVERT(VARBINARY(512), CONVERT(VARCHAR(512), p.UserId COLLATE Latin1_General_100_BIN2_UTF8))), '')), 2))
    FROM @Participants AS p;

    IF @ConversationId IS NULL
    BEGIN
        INSERT INTO dbo.DmConversation (FirestoreId, Type, CreatedAt, DocUpdatedAt, ParticipantHash, IsPlaceholder, SourceVersion, LastSyncedEventId, SyncSource)
        VALUES (@ConversationFirestoreId, @Type, @CreatedAt, @UpdatedAt, @Hash, 0, @SourceVersion, @EventId, @SyncSource);
        SET @ConversationId = CAST(SCOPE_IDENTITY() AS BIGINT);
    END
    ELSE
    BEGIN
        UPDATE dbo.DmConversation
        SET Type = @Type,
            CreatedAt = @CreatedAt,
            DocUpdatedAt = @UpdatedAt,
            ParticipantHash = @Hash,
            IsPlaceholder = 0,
            SourceVersion = @SourceVersion,
            LastSyncedEventId = @EventId,
            SyncSource = @SyncSource
        WHERE ConversationId = @ConversationId;
    END;

    DELETE FROM dbo.DmParticipant WHERE ConversationId = @ConversationId;
    INSERT INTO dbo.DmParticipant (ConversationId, UserId, Role, JoinedAt, MuteState, ReadPointerMessageId, FirestorePointer)
    SELECT @ConversationId, p.UserId, p.Role, p.JoinedAt, p.MuteState, p.ReadPointerMessageId, @Subject
    FROM @Participants AS p;

    EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;

    INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
    VALUES (@EventId, @EventType, @Subject, @SourceVersion, N'applied');

    COMMIT TRANSACTION;
    SELECT N'applied' AS Outcome;
END;
