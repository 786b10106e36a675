-- dbo.sp_StoreMirror_UpsertDmMessage: dm.message.create / .update
-- (model::Model::message with a message payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50003, 50004, 50005, 50020,
-- 50021; 51205 (transient) if an entity lock is not granted.
--
-- A message whose conversation has not arrived creates a placeholder
-- conversation (IsPlaceholder = 1). A newer create/update clears a tombstone.
-- An applied dm.message.update writes DmMessageAudit: 'soft_delete' when the
-- payload has deletedAt, else 'edit'; PerformedBy = the author.
--
-- Locking: conversation key, then message key (sp_getapplock, Exclusive,
-- transaction owned), then the ledger and entity rows read WITH (UPDLOCK);
-- see "Locking" in V1__tables.sql.
CREATE OR ALTER PROCEDURE dbo.sp_StoreMirror_UpsertDmMessage (
    @EventId UNIQUEIDENTIFIER,
    @EventType NVARCHAR(64),
    @SourceVersion DATETIMEOFFSET(6),
    @SyncSource NVARCHAR(64),
    @ConversationFirestoreId NVARCHAR(400),
    @MessageFirestoreId NVARCHAR(400),
    @AuthorUserId NVARCHAR(400),
    @BodyText NVARCHAR(MAX),
    @AttachmentJson NVARCHAR(MAX),
    @ExternalMediaJson NVARCHAR(MAX),
    @CreatedAt DATETIMEOFFSET(6),
    @EditedAt DATETIMEOFFSET(6),
    @DeletedAt DATETIMEOFFSET(6),
    @ClientMessageId NVARCHAR(400),
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
    IF @MessageFirestoreId IS NULL OR DATALENGTH(@MessageFirestoreId) = 0 OR DATALENGTH(@MessageFirestoreId) > 256
        THROW 50003, N'message id is null, empty or longer than 128', 1;
    IF @EventType IS NULL OR @EventType NOT IN (N'dm.message.create', N'dm.message.update')
        THROW 50004, N'event type is not dm.message.create or dm.message.update', 1;
    IF @PayloadJson IS NOT NULL AND ISJSON(@PayloadJson) = 0
        THROW 50005, N'payload is not valid JSON', 1;
    IF @AuthorUserId IS NULL OR DATALENGTH(@AuthorUserId) = 0 OR DATALENGTH(@AuthorUserId) > 256
       OR @BodyText IS NULL OR @CreatedAt IS NULL OR DATALENGTH(@ClientMessageId) > 256
        THROW 50020, N'message authorUserId, bodyText or createdAt is missing, or an id is longer than 128', 1;
    IF (@AttachmentJson IS NOT NULL AND (ISJSON(@AttachmentJson) = 0 OR LEFT(LTRIM(@AttachmentJson), 1) <> N'['))
       OR (@ExternalMediaJson IS NOT NULL AND (ISJSON(@ExternalMediaJson) = 0 OR LEFT(LTRIM(@ExternalMediaJson), 1) <> N'['))
        THROW 50021, N'attachments or externalMedia is not a JSON array', 1;

    DECLARE @Subject NVARCHAR(400) = CONCAT(N'conversations/', @ConversationFirestoreId, N'/messages/', @MessageFirestoreId);
    DECLARE @ConversationLock NVARCHAR(255) = CONCAT(N'realtime-mirror/conversation/', CONVERT(NVARCHAR(64), HASHBYTES('SHA2_256', @ConversationFirestoreId), 2));
    DECLARE @MessageLock NVARCHAR(255) = CONCAT(N'realtime-mirror/message/', CONVERT(NVARCHAR(64), HASHBYTES('SHA2_256', @Subject), 2));
    DECLARE @ConversationId BIGINT;
    DECLARE @MessageId BIGINT;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;

    BEGIN TRANSACTION;

    EXEC sys.sp_getapplock @Resource = @ConversationLock, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = -1;
    IF APPLOCK_MODE(N'public', @ConversationLock, N'Transaction') <> N'Exclusive'
        THROW 51205, N'the conversation lock was not granted (deadlock victim or cancelled); retry', 1;
    EXEC sys.sp_getapplock @Resource = @MessageLock, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = -1;
    IF APPLOCK_MODE(N'public', @MessageLock, N'Transaction') <> N'Exclusive'
        THROW 51205, N'the message lock was not granted (deadlock victim or cancelled); retry', 1;

    IF EXISTS (SELECT 1 FROM dbo.AppliedEvent WITH (UPDLOCK) WHERE EventId = @EventId)
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    -- Parents may come late: a placeholder conversation, completed by its own event.
    SELECT @ConversationId = c.ConversationId
    FROM dbo.DmConversation AS c WITH (UPDLOCK)
    WHERE c.FirestoreId = @ConversationFirestoreId;
    IF @ConversationId IS NULL
    BEGIN
        INSERT INTO dbo.DmConversation (FirestoreId, IsPlaceholder, SyncSource)
        VALUES (@ConversationFirestoreId, 1, @SyncSource);
        SET @ConversationId = CAST(SCOPE_IDENTITY() AS BIGINT);
    END;

    SELECT @MessageId = m.MessageId,
           @StoredVersion = m.SourceVersion,
           @StoredEventId = m.EventId
    FROM dbo.DmMessage AS m WITH (UPDLOCK)
    WHERE m.ConversationId = @ConversationId AND m.FirestoreId = @MessageFirestoreId;

    IF @MessageId IS NOT NULL
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

    IF @MessageId IS NULL
    BEGIN
        INSERT INTO dbo.DmMessage (ConversationId, FirestoreId, AuthorUserId, BodyText, AttachmentJson, ExternalMediaJson,
                                   CreatedAt, EditedAt, DeletedAt, ClientMessageId, Tombstone, SourceVersion, EventId, SyncSource)
        VALUES (@ConversationId, @MessageFirestoreId, @AuthorUserId, @BodyText, @AttachmentJson, @ExternalMediaJson,
                @CreatedAt, @EditedAt, @DeletedAt, @ClientMessageId, 0, @SourceVersion, @EventId, @SyncSource);
        SET @MessageId = CAST(SCOPE_IDENTITY() AS BIGINT);
    END
    ELSE
    BEGIN
        UPDATE dbo.DmMessage
        SET AuthorUserId = @AuthorUserId,
            BodyText = @BodyText,
            AttachmentJson = @AttachmentJson,
            ExternalMediaJson = @ExternalMediaJson,
            CreatedAt = @CreatedAt,
            EditedAt = @EditedAt,
            DeletedAt = @DeletedAt,
            ClientMessageId = @ClientMessageId,
            Tombstone = 0,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE MessageId = @MessageId;
    END;

    IF @EventType = N'dm.message.update'
    BEGIN
        INSERT INTO dbo.DmMessageAudit (EventId, MessageId, Action, PerformedBy, PayloadJson, CreatedAt)
        VALUES (@EventId, @MessageId, CASE WHEN @DeletedAt IS NULL THEN N'edit' ELSE N'soft_delete' END,
                @AuthorUserId, @PayloadJson, @SourceVersion);
    END;

    EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;

    INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
    VALUES (@EventId, @EventType, @Subject, @SourceVersion, N'applied');

    COMMIT TRANSACTION;
    SELECT N'applied' AS Outcome;
END;
