-- dbo.sp_StoreMirror_UpsertDmMessage: dm.message.create / .update
-- (model::Model::message with a message payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004, 50005 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003, 50020, 50021; 51205 (transient) if
-- an entity lock is not granted. Every parameter defaults to NULL (bind only
-- the values present; @AttachmentJson, @ExternalMediaJson, @EditedAt,
-- @DeletedAt and @ClientMessageId are optional).
--
-- A message whose conversation has not arrived creates a placeholder
-- conversation (IsPlaceholder = 1). A newer create/update clears a tombstone.
-- Every dm.message.update event id writes one DmMessageAudit row, applied or
-- stale (contract v1.1): 'soft_delete' when its payload has deletedAt, else
-- 'edit'; PerformedBy = its author; PayloadJson = its own payload.
--
-- Locking: conversation key, then message key (dbo.sp_StoreMirror_Lock), then
-- the ledger and entity rows; see "Locking" in V1__tables.sql.
CREATE PROCEDURE dbo.sp_StoreMirror_UpsertDmMessage (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @ConversationFirestoreId NVARCHAR(400) = NULL,
    @MessageFirestoreId NVARCHAR(400) = NULL,
    @AuthorUserId NVARCHAR(400) = NULL,
    @BodyText NVARCHAR(MAX) = NULL,
    @AttachmentJson NVARCHAR(MAX) = NULL,
    @ExternalMediaJson NVARCHAR(MAX) = NULL,
    @CreatedAt DATETIMEOFFSET(6) = NULL,
    @EditedAt DATETIMEOFFSET(6) = NULL,
    @DeletedAt DATETIMEOFFSET(6) = NULL,
    @ClientMessageId NVARCHAR(400) = NULL,
    @PayloadJson NVARCHAR(MAX) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    EXEC dbo.sp_StoreMirror_CheckEvent @EventId = @EventId, @SourceVersion = @SourceVersion, @EventType = @EventType,
        @PayloadJson = @PayloadJson, @ExpectedType = N'dm.message.create', @OtherExpectedType = N'dm.message.update';
    IF dbo.fn_StoreMirror_IsValidId(@ConversationFirestoreId) = 0
        THROW 50003, N'conversation id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;
    IF dbo.fn_StoreMirror_IsValidId(@MessageFirestoreId) = 0
        THROW 50003, N'message id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;
    IF dbo.fn_StoreMirror_IsValidId(@AuthorUserId) = 0 OR @BodyText IS NULL OR @CreatedAt IS NULL
       OR (@ClientMessageId IS NOT NULL AND dbo.fn_StoreMirror_IsValidId(@ClientMessageId) = 0)
        THROW 50020, N'message authorUserId, bodyText or createdAt is missing, or authorUserId/clientMessageId is not a valid id', 1;
    IF (@AttachmentJson IS NOT NULL AND (ISJSON(@AttachmentJson) = 0 OR LEFT(LTRIM(@AttachmentJson), 1) <> N'['))
       OR (@ExternalMediaJson IS NOT NULL AND (ISJSON(@ExternalMediaJson) = 0 OR LEFT(LTRIM(@ExternalMediaJson), 1) <> N'['))
        THROW 50021, N'attachments or externalMedia is not a JSON array', 1;

    DECLARE @ConversationKey VARBINARY(512) = CAST(@ConversationFirestoreId AS VARBINARY(512));
    DECLARE @MessageKey VARBINARY(512) = CAST(@MessageFirestoreId AS VARBINARY(512));
    DECLARE @Subject NVARCHAR(600) = CONCAT(N'conversations/', @ConversationFirestoreId, N'/messages/', @MessageFirestoreId);
    DECLARE @SubjectKey VARBINARY(1200) = CAST(@Subject AS VARBINARY(1200));
    DECLARE @ConversationId BIGINT;
    DECLARE @MessageId BIGINT;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;
    DECLARE @Outcome NVARCHAR(16);

    BEGIN TRANSACTION;

    EXEC dbo.sp_StoreMirror_Lock @Kind = N'conversation', @Key = @ConversationKey;
    EXEC dbo.sp_StoreMirror_Lock @Kind = N'message', @Key = @SubjectKey;

    IF dbo.fn_StoreMirror_IsDuplicate(@EventId) = 1
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    -- Parents may come late: a placeholder conversation, completed by its own event.
    SELECT @ConversationId = c.ConversationId
    FROM dbo.DmConversation AS c WITH (UPDLOCK)
    WHERE c.FirestoreIdKey = @ConversationKey;
    IF @ConversationId IS NULL
    BEGIN
        INSERT INTO dbo.DmConversation (FirestoreId, FirestoreIdKey, IsPlaceholder, SyncSource)
        VALUES (@ConversationFirestoreId, @ConversationKey, 1, @SyncSource);
        SET @ConversationId = CAST(SCOPE_IDENTITY() AS BIGINT);
    END;

    SELECT @MessageId = m.MessageId,
           @StoredVersion = m.SourceVersion,
           @StoredEventId = m.EventId
    FROM dbo.DmMessage AS m WITH (UPDLOCK)
    WHERE m.ConversationId = @ConversationId AND m.FirestoreIdKey = @MessageKey;

    SET @Outcome = CASE WHEN dbo.fn_StoreMirror_IsNewer(@SourceVersion, @EventId, @StoredVersion, @StoredEventId) = 1
                        THEN N'applied' ELSE N'stale' END;

    IF @Outcome = N'applied' AND @MessageId IS NULL
    BEGIN
        INSERT INTO dbo.DmMessage (ConversationId, FirestoreId, FirestoreIdKey, AuthorUserId, BodyText, AttachmentJson, ExternalMediaJson,
                                   CreatedAt, EditedAt, DeletedAt, ClientMessageId, Tombstone, SourceVersion, EventId, SyncSource)
        VALUES (@ConversationId, @MessageFirestoreId, @MessageKey, @AuthorUserId, @BodyText, @AttachmentJson, @ExternalMediaJson,
                @CreatedAt, @EditedAt, @DeletedAt, @ClientMessageId, 0, @SourceVersion, @EventId, @SyncSource);
        SET @MessageId = CAST(SCOPE_IDENTITY() AS BIGINT);
    END
    ELSE IF @Outcome = N'applied'
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

    -- History (v1.1): every update event id, applied or stale, with its own payload.
    IF @EventType = N'dm.message.update'
    BEGIN
        INSERT INTO dbo.DmMessageAudit (EventId, MessageId, Action, PerformedBy, PayloadJson, CreatedAt)
        VALUES (@EventId, @MessageId, CASE WHEN @DeletedAt IS NULL THEN N'edit' ELSE N'soft_delete' END,
                @AuthorUserId, @PayloadJson, @SourceVersion);
    END;

    IF @Outcome = N'applied'
        EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
