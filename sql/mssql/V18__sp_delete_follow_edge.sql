-- dbo.sp_StoreMirror_DeleteFollowEdge: follow.edge.delete
-- (model::Model::follow with a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003; 51205 (transient) if the edge lock
-- is not granted. Every parameter defaults to NULL.
--
-- Every event id, applied or stale, writes one dbo.FollowEdgeObservation row
-- (state NULL); dbo.FollowEvent derives the transitions from them (contract
-- v1.1): 'remove', or from 'blocked' 'unblock'. The row is kept as a
-- tombstone (content NULL, DeletedAt = the event time).
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
        @PayloadJson = NULL, @ExpectedType = N'follow.edge.delete', @OtherExpectedType = NULL;
    IF dbo.fn_StoreMirror_IsValidId(@FollowerUserId) = 0 OR dbo.fn_StoreMirror_IsValidId(@TargetUserId) = 0
        THROW 50003, N'follower or target user id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;

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
        VALUES (@FollowerUserId, @FollowerKey, @TargetUserId, @TargetKey, NULL, NULL, NULL, @SourceVersion,
                @SourceVersion, @EventId, @SyncSource);
    END
    ELSE IF @Outcome = N'applied'
    BEGIN
        UPDATE dbo.FollowEdge
        SET CreatedAt = NULL,
            State = NULL,
            Source = NULL,
            DeletedAt = @SourceVersion,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE FollowerUserIdKey = @FollowerKey AND TargetUserIdKey = @TargetKey;
    END;

    -- History (v1.1): every event id is an observation, applied or stale.
    INSERT INTO dbo.FollowEdgeObservation (EventId, FollowerUserId, FollowerUserIdKey, TargetUserId, TargetUserIdKey,
                                           SourceVersion, State, Source, SyncSource)
    VALUES (@EventId, @FollowerUserId, @FollowerKey, @TargetUserId, @TargetKey, @SourceVersion, NULL, NULL, @SyncSource);

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
