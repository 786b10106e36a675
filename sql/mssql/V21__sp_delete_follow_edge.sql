-- dbo.sp_StoreMirror_DeleteFollowEdge: follow.edge.delete
-- (model::Model::follow with a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003; 51205 (transient) if the edge lock
-- is not granted. Every parameter defaults to NULL. The row is kept as a
-- tombstone (content NULL, DeletedAt = the event time); the observation has
-- state NULL, so dbo.FollowEvent shows 'remove', or from 'blocked' 'unblock'.
CREATE PROCEDURE dbo.sp_StoreMirror_DeleteFollowEdge (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @FollowerUserId NVARCHAR(400) = NULL,
    @TargetUserId NVARCHAR(400) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    EXEC dbo.sp_StoreMirror_CheckEvent @EventId = @EventId, @SourceVersion = @SourceVersion, @EventType = @EventType,
        @PayloadJson = NULL, @ExpectedType = N'follow.edge.delete', @OtherExpectedType = NULL,
        @FirstId = @FollowerUserId, @SecondId = @TargetUserId, @IdCount = 2;

    EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'follow', @EventId = @EventId, @EventType = @EventType, @SourceVersion = @SourceVersion,
        @SyncSource = @SyncSource, @FollowerUserId = @FollowerUserId, @TargetUserId = @TargetUserId, @Deleted = 1;
END;
