-- dbo.sp_StoreMirror_UpsertFollowEdge: follow.edge.create / .update
-- (model::Model::follow with an edge payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003, 50040, 50041; 51205 (transient) if
-- the edge lock is not granted. Every parameter defaults to NULL. The
-- decision, the writes and the observation (contract v1.1) are
-- dbo.sp_StoreMirror_ApplyOne's (the set-based batch applied to this one event).
CREATE PROCEDURE dbo.sp_StoreMirror_UpsertFollowEdge (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @FollowerUserId NVARCHAR(400) = NULL,
    @TargetUserId NVARCHAR(400) = NULL,
    @State NVARCHAR(64) = NULL,
    @Source NVARCHAR(64) = NULL,
    @CreatedAt DATETIMEOFFSET(6) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    EXEC dbo.sp_StoreMirror_CheckEvent @EventId = @EventId, @SourceVersion = @SourceVersion, @EventType = @EventType,
        @PayloadJson = NULL, @ExpectedType = N'follow.edge.create', @OtherExpectedType = N'follow.edge.update',
        @FirstId = @FollowerUserId, @SecondId = @TargetUserId, @IdCount = 2;
    IF @State IS NULL OR @State NOT IN (N'pending', N'accepted', N'blocked')
        THROW 50040, N'follow state is not pending, accepted or blocked', 1;
    IF @Source IS NULL OR @Source NOT IN (N'mobile', N'web', N'admin') OR @CreatedAt IS NULL
        THROW 50041, N'follow source is not mobile, web or admin, or createdAt is missing', 1;

    EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'follow', @EventId = @EventId, @EventType = @EventType, @SourceVersion = @SourceVersion,
        @SyncSource = @SyncSource, @FollowerUserId = @FollowerUserId, @TargetUserId = @TargetUserId, @State = @State,
        @Source = @Source, @CreatedAt = @CreatedAt, @Deleted = 0;
END;
