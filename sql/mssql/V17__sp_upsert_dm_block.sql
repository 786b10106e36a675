-- dbo.sp_StoreMirror_UpsertDmBlock: dm.block.create / .update
-- (model::Model::block with a block payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003, 50030; 51205 (transient) if the block
-- lock is not granted. Every parameter defaults to NULL (@RevokedAt is
-- optional). A newer create/update clears a tombstone (DeletedAt = NULL); the
-- decision and the writes are dbo.sp_StoreMirror_ApplyOne's (the set-based batch applied to this one event).
CREATE PROCEDURE dbo.sp_StoreMirror_UpsertDmBlock (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @UserId NVARCHAR(400) = NULL,
    @TargetUserId NVARCHAR(400) = NULL,
    @CreatedAt DATETIMEOFFSET(6) = NULL,
    @RevokedAt DATETIMEOFFSET(6) = NULL,
    @Source NVARCHAR(64) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    EXEC dbo.sp_StoreMirror_CheckEvent @EventId = @EventId, @SourceVersion = @SourceVersion, @EventType = @EventType,
        @PayloadJson = NULL, @ExpectedType = N'dm.block.create', @OtherExpectedType = N'dm.block.update',
        @FirstId = @UserId, @SecondId = @TargetUserId, @IdCount = 2;
    IF @Source IS NULL OR @Source NOT IN (N'client', N'admin') OR @CreatedAt IS NULL
        THROW 50030, N'block source is not client or admin, or createdAt is missing', 1;

    EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'block', @EventId = @EventId, @EventType = @EventType, @SourceVersion = @SourceVersion,
        @SyncSource = @SyncSource, @UserId = @UserId, @TargetUserId = @TargetUserId, @CreatedAt = @CreatedAt,
        @RevokedAt = @RevokedAt, @Source = @Source, @Deleted = 0;
END;
