-- dbo.sp_StoreMirror_DeleteDmMessage: dm.message.delete (a hard delete of the
-- Firestore document; model::Model::message with a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50003, 50004, 50005; 51205
-- (transient) if an entity lock is not granted.
--
-- The row is kept as a tombstone: every content column NULL, DeletedAt = the
-- event time, Tombstone = 1, so an older create/update arriving later is stale.
-- A delete of a message never seen still writes the tombstone (and a
-- placeholder conversation). Always writes DmMessageAudit 'delete' with
-- PerformedBy = the payload's performedBy.
CREATE OR ALTER PROCEDURE dbo.sp_StoreMirror_DeleteDmMessage (
    @EventId UNIQUEIDENTIFIER,
    @EventType NVARCHAR(64),
    @SourceVersion DATETIMEOFFSET(6),
    @SyncSource NVARCHAR(64),
    @ConversationFirestoreId NVARCHAR(400),
    @MessageFirestoreId NVARCHAR(400),
    @PerformedBy NVARCHAR(400),
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
    IF DATALENGTH(@PerformedBy) > 256
        THROW 50003, N'performedBy is longer than 128', 1;
    IF @EventType IS NULL OR @EventType <> N'dm.message.delete'
        THROW 50004, N'event type is not dm.message.delete', 1;
    IF @PayloadJson IS NOT NULL AND ISJSON(@PayloadJson) = 0
        THROW 50005, N'payload is not valid JSON', 1;

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
        INSERT INTO dbo.DmMessage (ConversationId, FirestoreId, DeletedAt, Tombstone, SourceVersion, EventId, SyncSource)
        VALUES (@ConversationId, @MessageFirestoreId, @SourceVersion, 1, @SourceVersion, @EventId, @SyncSource);
        SET @MessageId = CAST(SCOPE_IDENTITY() AS BIGINT);
    END
    ELSE
    BEGIN
        UPDATE dbo.DmMessage
        SET AuthorUserId = NULL,
            BodyText = NULL,
            AttachmentJson = NULL,
            ExternalMediaJson = NULL,
            CreatedAt = NULL,
            EditedAt = NULL,
            DeletedAt = @SourceVersion,
            ClientMessageId = NULL,
            Tombstone = 1,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE MessageId = @MessageId;
    END;

    INSERT INTO dbo.DmMessageAudit (EventId, MessageId, Action, PerformedBy, PayloadJson, CreatedAt)
    VALUES (@EventId, @MessageId, N'delete', @PerformedBy, @PayloadJson, @SourceVersion);

    EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;

    INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
    VALUES (@EventId, @EventType, @Subject, @SourceVersion, N'applied');

    COMMIT TRANSACTION;
    SELECT N'applied' AS Outcome;
END;
