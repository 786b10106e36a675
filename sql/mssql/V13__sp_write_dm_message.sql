-- dbo.sp_StoreMirror_WriteDmMessage: the decision and the writes of
-- dm.message.create / .update / .delete (model::Model::message), shared by
-- dbo.sp_StoreMirror_UpsertDmMessage and dbo.sp_StoreMirror_DeleteDmMessage,
-- which check their arguments first. Internal.
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- A message whose conversation has not arrived creates a placeholder
-- conversation (IsPlaceholder = 1). @Deleted = 1 (a hard delete): the row is
-- kept as a tombstone, every content column NULL, DeletedAt = the event time,
-- Tombstone = 1, so an older create/update arriving later is stale; a delete
-- of a message never seen still writes the tombstone. Otherwise a newer
-- create/update clears a tombstone.
--
-- History (contract v1.1): every dm.message.update and dm.message.delete
-- event id writes one DmMessageAudit row, applied or stale: 'delete' with
-- PerformedBy = the payload's performedBy, or for an update 'soft_delete' when
-- its payload has deletedAt, else 'edit', with PerformedBy = its author;
-- PayloadJson = the event's own payload.
--
-- Locking: conversation key, then message key (dbo.sp_StoreMirror_Lock), then
-- the ledger and entity rows; see "Locking" in V1__tables.sql. THROWs 51205
-- (transient) if an entity lock is not granted.
CREATE PROCEDURE dbo.sp_StoreMirror_WriteDmMessage (
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
    @PerformedBy NVARCHAR(400) = NULL,
    @PayloadJson NVARCHAR(MAX) = NULL,
    @Deleted BIT = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    DECLARE @ConversationKey VARBINARY(512) = CAST(@ConversationFirestoreId AS VARBINARY(512));
    DECLARE @MessageKey VARBINARY(512) = CAST(@MessageFirestoreId AS VARBINARY(512));
    DECLARE @Subject NVARCHAR(600) = CONCAT(N'conversations/', @ConversationFirestoreId, N'/messages/', @MessageFirestoreId);
    DECLARE @SubjectKey VARBINARY(1200) = CAST(@Subject AS VARBINARY(1200));
    DECLARE @RowDeletedAt DATETIMEOFFSET(6) = CASE WHEN @Deleted = 1 THEN @SourceVersion ELSE @DeletedAt END;
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
                @CreatedAt, @EditedAt, @RowDeletedAt, @ClientMessageId, @Deleted, @SourceVersion, @EventId, @SyncSource);
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
            DeletedAt = @RowDeletedAt,
            ClientMessageId = @ClientMessageId,
            Tombstone = @Deleted,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE MessageId = @MessageId;
    END;

    -- History (v1.1): every update and delete event id, applied or stale, with its own payload.
    -- (A redelivery after its ledger row was pruned finds its row already there.)
    IF (@Deleted = 1 OR @EventType = N'dm.message.update')
       AND NOT EXISTS (SELECT 1 FROM dbo.DmMessageAudit WHERE EventId = @EventId)
    BEGIN
        INSERT INTO dbo.DmMessageAudit (EventId, MessageId, Action, PerformedBy, PayloadJson, CreatedAt)
        VALUES (@EventId, @MessageId,
                CASE WHEN @Deleted = 1 THEN N'delete' WHEN @DeletedAt IS NULL THEN N'edit' ELSE N'soft_delete' END,
                CASE WHEN @Deleted = 1 THEN @PerformedBy ELSE @AuthorUserId END,
                @PayloadJson, @SourceVersion);
    END;

    IF @Outcome = N'applied'
        EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
