-- dbo.sp_StoreMirror_DeleteDmBlock: dm.block.delete (model::Model::block with
-- a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003; 51205 (transient) if the block lock
-- is not granted. Every parameter defaults to NULL. The row is kept as a
-- tombstone: content NULL, DeletedAt = the event time (the decision and the
-- writes are dbo.sp_StoreMirror_ApplyOne's (the set-based batch applied to this one event)).
CREATE PROCEDURE dbo.sp_StoreMirror_DeleteDmBlock (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @UserId NVARCHAR(400) = NULL,
    @TargetUserId NVARCHAR(400) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    EXEC dbo.sp_StoreMirror_CheckEvent @EventId = @EventId, @SourceVersion = @SourceVersion, @EventType = @EventType,
        @PayloadJson = NULL, @ExpectedType = N'dm.block.delete', @OtherExpectedType = NULL,
        @FirstId = @UserId, @SecondId = @TargetUserId, @IdCount = 2;

    EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'block', @EventId = @EventId, @EventType = @EventType, @SourceVersion = @SourceVersion,
        @SyncSource = @SyncSource, @UserId = @UserId, @TargetUserId = @TargetUserId, @Deleted = 1;
END;
