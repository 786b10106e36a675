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
-- payload's performedBy and PayloadJson = its own payload. The decision, the
-- writes, the audit row and the locking are dbo.sp_StoreMirror_ApplyOne's (the set-based batch applied to this one event).
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
        @PayloadJson = @PayloadJson, @ExpectedType = N'dm.message.delete', @OtherExpectedType = NULL,
        @FirstId = @ConversationFirestoreId, @SecondId = @MessageFirestoreId, @IdCount = 2;
    IF @PerformedBy IS NOT NULL AND dbo.fn_StoreMirror_IsValidId(@PerformedBy) = 0
        THROW 50003, N'performedBy is not a valid id', 1;

    EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'message', @EventId = @EventId, @EventType = @EventType, @SourceVersion = @SourceVersion,
        @SyncSource = @SyncSource, @ConversationFirestoreId = @ConversationFirestoreId,
        @MessageFirestoreId = @MessageFirestoreId, @PerformedBy = @PerformedBy, @PayloadJson = @PayloadJson,
        @Deleted = 1;
END;
