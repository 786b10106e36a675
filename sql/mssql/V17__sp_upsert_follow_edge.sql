-- dbo.sp_StoreMirror_UpsertFollowEdge: follow.edge.create / .update
-- (model::Model::follow with an edge payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003, 50040, 50041; 51205 (transient) if
-- the edge lock is not granted. Every parameter defaults to NULL.
--
-- Every event id, applied or stale, writes one dbo.FollowEdgeObservation row
-- (its state); dbo.FollowEvent derives the transitions from them (contract
-- v1.1). A newer create/update clears a tombstone (DeletedAt = NULL).
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
        @PayloadJson = NULL, @ExpectedType = N'follow.edge.create', @OtherExpectedType = N'follow.edge.update';
    IF dbo.fn_StoreMirror_IsValidId(@FollowerUserId) = 0 OR dbo.fn_StoreMirror_IsValidId(@TargetUserId) = 0
        THROW 50003, N'follower or target user id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;
    IF @State IS NULL OR @State NOT IN (N'pending', N'accepted', N'blocked')
        THROW 50040, N'follow state is not pending, accepted or blocked', 1;
    IF @Source IS NULL OR @Source NOT IN (N'mobile', N'web', N'admin') OR @CreatedAt IS NULL
        THROW 50041, N'follow source is not mobile, web or admin, or createdAt is missing', 1;

    DECLARE @FollowerKey VARBINARY(512) = CAST(@FollowerUserId AS VARBINARY(512));
    DECLARE @TargetKey VARBINARY(512) = CAST(@TargetUserId AS VARBINARY(512));
    DECLARE @Subject NVARCHAR(600) = CONCAT(N'follows/', @FollowerUserId, N'/targets/', @TargetUserId);
    DECLARE @SubjectKey VARBINARY(1200) = CAST(@Subject AS VARBINARY(1200));
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
        VALUES (@FollowerUserId, @FollowerKey, @TargetUserId, @TargetKey, @CreatedAt, @State, @Source, NULL,
                @SourceVersion, @EventId, @SyncSource);
    END
    ELSE IF @Outcome = N'applied'
    BEGIN
        UPDATE dbo.FollowEdge
        SET CreatedAt = @CreatedAt,
            State = @State,
            Source = @Source,
            DeletedAt = NULL,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE FollowerUserIdKey = @FollowerKey AND TargetUserIdKey = @TargetKey;
    END;

    -- History (v1.1): every event id is an observation, applied or stale.
    INSERT INTO dbo.FollowEdgeObservation (EventId, FollowerUserId, FollowerUserIdKey, TargetUserId, TargetUserIdKey,
                                           SourceVersion, State, Source, SyncSource)
    VALUES (@EventId, @FollowerUserId, @FollowerKey, @TargetUserId, @TargetKey, @SourceVersion, @State, @Source, @SyncSource);

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
