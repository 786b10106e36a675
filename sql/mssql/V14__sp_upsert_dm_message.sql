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
-- The decision, the writes, the audit row and the locking are
-- dbo.sp_StoreMirror_ApplyOne's (the set-based batch applied to this one event).
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
        @PayloadJson = @PayloadJson, @ExpectedType = N'dm.message.create', @OtherExpectedType = N'dm.message.update',
        @FirstId = @ConversationFirestoreId, @SecondId = @MessageFirestoreId, @IdCount = 2;
    IF dbo.fn_StoreMirror_IsValidId(@AuthorUserId) = 0 OR @BodyText IS NULL OR @CreatedAt IS NULL
       OR (@ClientMessageId IS NOT NULL AND dbo.fn_StoreMirror_IsValidId(@ClientMessageId) = 0)
        THROW 50020, N'message authorUserId, bodyText or createdAt is missing, or authorUserId/clientMessageId is not a valid id', 1;
    IF (@AttachmentJson IS NOT NULL AND (ISJSON(@AttachmentJson) = 0 OR LEFT(LTRIM(@AttachmentJson), 1) <> N'['))
       OR (@ExternalMediaJson IS NOT NULL AND (ISJSON(@ExternalMediaJson) = 0 OR LEFT(LTRIM(@ExternalMediaJson), 1) <> N'['))
        THROW 50021, N'attachments or externalMedia is not a JSON array', 1;

    EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'message', @EventId = @EventId, @EventType = @EventType, @SourceVersion = @SourceVersion,
        @SyncSource = @SyncSource, @ConversationFirestoreId = @ConversationFirestoreId,
        @MessageFirestoreId = @MessageFirestoreId, @AuthorUserId = @AuthorUserId, @BodyText = @BodyText,
        @AttachmentJson = @AttachmentJson, @ExternalMediaJson = @ExternalMediaJson, @CreatedAt = @CreatedAt,
        @EditedAt = @EditedAt, @DeletedAt = @DeletedAt, @ClientMessageId = @ClientMessageId,
        @PayloadJson = @PayloadJson, @Deleted = 0;
END;
