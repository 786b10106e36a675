-- dbo.sp_StoreMirror_DeleteDmMessage: dm.message.delete (a hard delete of the
-- Firestore document; model::Model::message with a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004, 50005 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003; 51205 (transient) if an entity lock
-- is not granted. Every parameter defaults to NULL (@PerformedBy is optional).
--
-- The row is kept as a tombstone: every content column NULL, DeletedAt = the
-- event time, Tombstone = 1, so an older create/update arriving later is stale.
-- A delete of a message never seen still writes the tombstone (and a
-- placeholder conversation). Every delete event id writes one DmMessageAudit
-- row 'delete', applied or stale (contract v1.1), with PerformedBy = the
-- payload's performedBy and PayloadJson = its own payload.
CREATE PROCEDURE dbo.sp_StoreMirror_DeleteDmMessage (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @ConversationFirestoreId NVARCHAR(400) = NULL,
    @MessageFirestoreId NVARCHAR(400) = NULL,
    @PerformedBy NVARCHAR(400) = NULL,
    @PayloadJson NVARCHAR(MAX) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    EXEC dbo.sp_StoreMirror_CheckEvent @EventId = @EventId, @SourceVersion = @SourceVersion, @EventType = @EventType,
        @PayloadJson = @PayloadJson, @ExpectedType = N'dm.message.delete', @OtherExpectedType = NULL;
    IF dbo.fn_StoreMirror_IsValidId(@ConversationFirestoreId) = 0
        THROW 50003, N'conversation id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;
    IF dbo.fn_StoreMirror_IsValidId(@MessageFirestoreId) = 0
        THROW 50003, N'message id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;
    IF @PerformedBy IS NOT NULL AND dbo.fn_StoreMirror_IsValidId(@PerformedBy) = 0
        THROW 50003, N'performedBy is not a valid id', 1;

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
        INSERT INTO dbo.DmMessage (ConversationId, FirestoreId, FirestoreIdKey, DeletedAt, Tombstone, SourceVersion, EventId, SyncSource)
        VALUES (@ConversationId, @MessageFirestoreId, @MessageKey, @SourceVersion, 1, @SourceVersion, @EventId, @SyncSource);
        SET @MessageId = CAST(SCOPE_IDENTITY() AS BIGINT);
    END
    ELSE IF @Outcome = N'applied'
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

    -- History (v1.1): every delete event id, applied or stale, with its own payload.
    INSERT INTO dbo.DmMessageAudit (EventId, MessageId, Action, PerformedBy, PayloadJson, CreatedAt)
    VALUES (@EventId, @MessageId, N'delete', @PerformedBy, @PayloadJson, @SourceVersion);

    IF @Outcome = N'applied'
        EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary @ConversationId = @ConversationId;

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
