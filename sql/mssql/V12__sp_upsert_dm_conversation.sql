-- dbo.sp_StoreMirror_UpsertDmConversation: dm.conversation.create / .update
-- (model::Model::conversation).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004, 50005 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003, 50010, 50011, 50012, 50013; 51205
-- (transient) if the conversation lock is not granted.
--
-- Every parameter defaults to NULL, so a caller binds only the values it has
-- (tiberius sends a bound None as an untyped NULL, which Babelfish rejects);
-- a missing required value is rejected by the checks below.
--
-- @ParticipantsJson: JSON array of {userId, role, joinedAt, muteState,
-- readPointerMessageId?} (the contract's participants, times in RFC 3339 UTC).
-- The payload's lastMessageId is not used: the summary is derived from messages.
-- User ids are distinct by their exact bytes: `u1` and `u1 ` are two people.
--
-- ParticipantHash: lower-case hex SHA-256 over the user ids sorted by their
-- UTF-8 bytes and joined by ',', hashed as UTF-8 (state::participant_hash).
--
-- The checks are this procedure's; the locking, the ledger, the decision and
-- the writes are the set-based batch's, applied to this one event
-- (dbo.sp_StoreMirror_ApplyOne), so both apply modes share them.
CREATE PROCEDURE dbo.sp_StoreMirror_UpsertDmConversation (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @ConversationFirestoreId NVARCHAR(400) = NULL,
    @Type NVARCHAR(64) = NULL,
    @CreatedAt DATETIMEOFFSET(6) = NULL,
    @UpdatedAt DATETIMEOFFSET(6) = NULL,
    @ParticipantsJson NVARCHAR(MAX) = NULL,
    @PayloadJson NVARCHAR(MAX) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    EXEC dbo.sp_StoreMirror_CheckEvent @EventId = @EventId, @SourceVersion = @SourceVersion, @EventType = @EventType,
        @PayloadJson = @PayloadJson, @ExpectedType = N'dm.conversation.create', @OtherExpectedType = N'dm.conversation.update',
        @FirstId = @ConversationFirestoreId, @IdCount = 1;
    IF @Type IS NULL OR @Type NOT IN (N'direct', N'group') OR @CreatedAt IS NULL OR @UpdatedAt IS NULL
        THROW 50010, N'conversation type is not direct or group, or createdAt/updatedAt is missing', 1;
    IF @ParticipantsJson IS NULL OR ISJSON(@ParticipantsJson) = 0 OR LEFT(LTRIM(@ParticipantsJson), 1) <> N'['
        THROW 50011, N'participants is not a JSON array', 1;

    DECLARE @Participants TABLE (
        UserId NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NULL,
        UserIdKey VARBINARY(800) NULL,
        Role NVARCHAR(64) NULL,
        JoinedAt DATETIMEOFFSET(6) NULL,
        MuteState NVARCHAR(64) NULL,
        ReadPointerMessageId NVARCHAR(400) NULL
    );

    INSERT INTO @Participants (UserId, UserIdKey, Role, JoinedAt, MuteState, ReadPointerMessageId)
    SELECT p.UserId, CAST(p.UserId AS VARBINARY(800)), p.Role, p.JoinedAt, p.MuteState, p.ReadPointerMessageId
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
        WHERE dbo.fn_StoreMirror_IsValidId(UserId) = 0
           OR Role IS NULL OR Role NOT IN (N'owner', N'member')
           OR JoinedAt IS NULL
           OR MuteState IS NULL OR MuteState NOT IN (N'none', N'muted')
           OR (ReadPointerMessageId IS NOT NULL AND dbo.fn_StoreMirror_IsValidId(ReadPointerMessageId) = 0)
    )
        THROW 50012, N'a participant lacks userId, role, joinedAt or muteState, or has a bad value', 1;
    IF EXISTS (SELECT p.UserIdKey FROM @Participants AS p GROUP BY p.UserIdKey HAVING COUNT(*) > 1)
        THROW 50013, N'a participant is listed twice', 1;

    -- The hash input: UTF-8 user ids in byte order, joined by ','.
    DECLARE @Sorted TABLE (Position BIGINT NOT NULL PRIMARY KEY, UserIdUtf8 VARBINARY(1600) NOT NULL);
    DECLARE @Joined VARBINARY(MAX) = CAST('' AS VARBINARY(MAX));
    DECLARE @Position BIGINT = 1;
    DECLARE @Count BIGINT = 0;
    DECLARE @Hash CHAR(64);

    INSERT INTO @Sorted (Position, UserIdUtf8)
    SELECT ROW_NUMBER() OVER (ORDER BY u.UserIdUtf8), u.UserIdUtf8
    FROM (SELECT dbo.fn_StoreMirror_Utf8(p.UserId) AS UserIdUtf8 FROM @Participants AS p) AS u;
    SELECT @Count = COUNT(*) FROM @Sorted;
    WHILE @Position <= @Count
    BEGIN
        SELECT @Joined = @Joined + CASE WHEN @Position > 1 THEN CAST(',' AS VARBINARY(1)) ELSE CAST('' AS VARBINARY(1)) END + s.UserIdUtf8
        FROM @Sorted AS s
        WHERE s.Position = @Position;
        SET @Position = @Position + 1;
    END;
    SET @Hash = dbo.fn_StoreMirror_Hex(HASHBYTES('SHA2_256', @Joined));

    EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'conversation', @Deleted = 0, @EventId = @EventId,
        @EventType = @EventType, @SourceVersion = @SourceVersion, @SyncSource = @SyncSource,
        @ConversationFirestoreId = @ConversationFirestoreId, @Type = @Type, @CreatedAt = @CreatedAt,
        @UpdatedAt = @UpdatedAt, @ParticipantsJson = @ParticipantsJson, @ParticipantHash = @Hash,
        @PayloadJson = @PayloadJson;
END;
