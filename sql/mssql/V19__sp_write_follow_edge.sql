-- dbo.sp_StoreMirror_WriteFollowEdge: the decision and the writes of
-- follow.edge.create / .update / .delete (model::Model::follow), shared by
-- dbo.sp_StoreMirror_UpsertFollowEdge and dbo.sp_StoreMirror_DeleteFollowEdge,
-- which check their arguments first. Internal.
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- @Deleted = 1: a delete; the row is kept as a tombstone (content NULL,
-- DeletedAt = the event time). Otherwise a newer create/update clears a
-- tombstone. Every event id, applied or stale, writes one
-- dbo.FollowEdgeObservation row (its state, NULL for a delete);
-- dbo.FollowEvent derives the transitions from them (contract v1.1). THROWs
-- 51205 (transient) if the edge lock is not granted.
CREATE PROCEDURE dbo.sp_StoreMirror_WriteFollowEdge (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @FollowerUserId NVARCHAR(400) = NULL,
    @TargetUserId NVARCHAR(400) = NULL,
    @State NVARCHAR(64) = NULL,
    @Source NVARCHAR(64) = NULL,
    @CreatedAt DATETIMEOFFSET(6) = NULL,
    @Deleted BIT = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    DECLARE @FollowerKey VARBINARY(512) = CAST(@FollowerUserId AS VARBINARY(512));
    DECLARE @TargetKey VARBINARY(512) = CAST(@TargetUserId AS VARBINARY(512));
    DECLARE @Subject NVARCHAR(600) = CONCAT(N'follows/', @FollowerUserId, N'/targets/', @TargetUserId);
    DECLARE @SubjectKey VARBINARY(1200) = CAST(@Subject AS VARBINARY(1200));
    DECLARE @DeletedAt DATETIMEOFFSET(6) = CASE WHEN @Deleted = 1 THEN @SourceVersion END;
    DECLARE @Exists BIT = 0;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;
    DECLARE @Outcome NVARCHAR(16);

    BEGIN TRANSACTION;

    EXEC dbo.sp_StoreMirror_Lock @Kind = N'follow-edge', @Key = @SubjectKey;

    IF dbo.fn_StoreMirror_IsDuplicate(@EventId) = 1
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    SELECT @Exists = 1,
           @StoredVersion = e.SourceVersion,
           @StoredEventId = e.EventId
    FROM dbo.FollowEdge AS e WITH (UPDLOCK)
    WHERE e.FollowerUserIdKey = @FollowerKey AND e.TargetUserIdKey = @TargetKey;

    SET @Outcome = CASE WHEN dbo.fn_StoreMirror_IsNewer(@SourceVersion, @EventId, @StoredVersion, @StoredEventId) = 1
                        THEN N'applied' ELSE N'stale' END;

    IF @Outcome = N'applied' AND @Exists = 0
    BEGIN
        INSERT INTO dbo.FollowEdge (FollowerUserId, FollowerUserIdKey, TargetUserId, TargetUserIdKey, CreatedAt, State, Source, DeletedAt,
                                    SourceVersion, EventId, SyncSource)
        VALUES (@FollowerUserId, @FollowerKey, @TargetUserId, @TargetKey, @CreatedAt, @State, @Source, @DeletedAt,
                @SourceVersion, @EventId, @SyncSource);
    END
    ELSE IF @Outcome = N'applied'
    BEGIN
        UPDATE dbo.FollowEdge
        SET CreatedAt = @CreatedAt,
            State = @State,
            Source = @Source,
            DeletedAt = @DeletedAt,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE FollowerUserIdKey = @FollowerKey AND TargetUserIdKey = @TargetKey;
    END;

    -- History (v1.1): every event id is an observation, applied or stale
    -- (a redelivery after its ledger row was pruned finds it already there).
    IF NOT EXISTS (SELECT 1 FROM dbo.FollowEdgeObservation WHERE EventId = @EventId)
    INSERT INTO dbo.FollowEdgeObservation (EventId, FollowerUserId, FollowerUserIdKey, TargetUserId, TargetUserIdKey,
                                           SourceVersion, State, Source, SyncSource)
    VALUES (@EventId, @FollowerUserId, @FollowerKey, @TargetUserId, @TargetKey, @SourceVersion, @State, @Source, @SyncSource);

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
