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
-- Locking: the conversation key (dbo.sp_StoreMirror_Lock), then the ledger and
-- the conversation row; see "Locking" in V1__tables.sql.
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
        @PayloadJson = @PayloadJson, @ExpectedType = N'dm.conversation.create', @OtherExpectedType = N'dm.conversation.update';
    IF dbo.fn_StoreMirror_IsValidId(@ConversationFirestoreId) = 0
        THROW 50003, N'conversation id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;
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

    DECLARE @ConversationKey VARBINARY(512) = CAST(@ConversationFirestoreId AS VARBINARY(512));
    DECLARE @Subject NVARCHAR(600) = CONCAT(N'conversations/', @ConversationFirestoreId);
    DECLARE @ConversationId BIGINT;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;
    DECLARE @Outcome NVARCHAR(16);
    DECLARE @Hash CHAR(64);

    BEGIN TRANSACTION;

    EXEC dbo.sp_StoreMirror_Lock @Kind = N'conversation', @Key = @ConversationKey;

    IF dbo.fn_StoreMirror_IsDuplicate(@EventId) = 1
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    SELECT @ConversationId = c.ConversationId,
           @StoredVersion = c.SourceVersion,
           @StoredEventId = c.LastSyncedEventId
    FROM dbo.DmConversation AS c WITH (UPDLOCK)
    WHERE c.FirestoreIdKey = @ConversationKey;

    -- (time, id) must be strictly newer; a placeholder has no version.
    SET @Outcome = CASE WHEN dbo.fn_StoreMirror_IsNewer(@SourceVersion, @EventId, @StoredVersion, @StoredEventId) = 1
                        THEN N'applied' ELSE N'stale' END;

    IF @Outcome = N'applied'
    BEGIN
        -- The hash input: UTF-8 user ids in byte order, joined by ','.
        DECLARE @Sorted TABLE (Position BIGINT NOT NULL PRIMARY KEY, UserIdUtf8 VARBINARY(1600) NOT NULL);
        DECLARE @Joined VARBINARY(MAX) = CAST('' AS VARBINARY(MAX));
        DECLARE @Position BIGINT = 1;
        DECLARE @Count BIGINT = 0;

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

        IF @ConversationId IS NULL
        BEGIN
            INSERT INTO dbo.DmConversation (FirestoreId, FirestoreIdKey, Type, CreatedAt, DocUpdatedAt, ParticipantHash, IsPlaceholder,
                                            SourceVersion, LastSyncedEventId, SyncSource)
            VALUES (@ConversationFirestoreId, @ConversationKey, @Type, @CreatedAt, @UpdatedAt, @Hash, 0,
                    @SourceVersion, @EventId, @SyncSource);
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
        INSERT INTO dbo.DmParticipant (ConversationId, UserId, UserIdKey, Role, JoinedAt, MuteState, ReadPointerMessageId, FirestorePointer)
        SELECT @ConversationId, p.UserId, CAST(p.UserId AS VARBINARY(512)), p.Role, p.JoinedAt, p.MuteState, p.ReadPointerMessageId, @Subject
        FROM @Participants AS p;

        EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;
    END;

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
