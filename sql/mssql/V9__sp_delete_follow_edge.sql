-- dbo.sp_StoreMirror_DeleteFollowEdge: follow.edge.delete
-- (model::Model::follow with a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50003, 50004; 51205 (transient)
-- if the edge lock is not granted. The row is kept as a tombstone (content
-- NULL, DeletedAt = the event time); the FollowEvent is 'remove' or, from
-- 'blocked', 'unblock' (dbo.FollowTransition with ToState N'').
CREATE OR ALTER PROCEDURE dbo.sp_StoreMirror_DeleteFollowEdge (
    @EventId UNIQUEIDENTIFIER,
    @EventType NVARCHAR(64),
    @SourceVersion DATETIMEOFFSET(6),
    @SyncSource NVARCHAR(64),
    @FollowerUserId NVARCHAR(400),
    @TargetUserId NVARCHAR(400)
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    IF @EventId IS NULL
        THROW 50001, N'event id is null', 1;
    IF @SourceVersion IS NULL
        THROW 50002, N'source version is null', 1;
    IF @FollowerUserId IS NULL OR DATALENGTH(@FollowerUserId) = 0 OR DATALENGTH(@FollowerUserId) > 256
       OR @TargetUserId IS NULL OR DATALENGTH(@TargetUserId) = 0 OR DATALENGTH(@TargetUserId) > 256
        THROW 50003, N'follower or target user id is null, empty or longer than 128', 1;
    IF @EventType IS NULL OR @EventType <> N'follow.edge.delete'
        THROW 50004, N'event type is not follow.edge.delete', 1;

    DECLARE @Subject NVARCHAR(400) = CONCAT(N'follows/', @FollowerUserId, N'/targets/', @TargetUserId);
    DECLARE @EdgeLock NVARCHAR(255) = CONCAT(N'realtime-mirror/follow-edge/', CONVERT(NVARCHAR(64), HASHBYTES('SHA2_256', @Subject), 2));
    DECLARE @Exists BIT = 0;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;
    DECLARE @PrevState NVARCHAR(16);
    DECLARE @Transition NVARCHAR(16);

    BEGIN TRANSACTION;

    EXEC sys.sp_getapplock @Resource = @EdgeLock, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = -1;
    IF APPLOCK_MODE(N'public', @EdgeLock, N'Transaction') <> N'Exclusive'
        THROW 51205, N'the follow edge lock was not granted (deadlock victim or cancelled); retry', 1;

    IF EXISTS (SELECT 1 FROM dbo.AppliedEvent WITH (UPDLOCK) WHERE EventId = @EventId)
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    SELECT @Exists = 1,
           @StoredVersion = e.SourceVersion,
           @StoredEventId = e.EventId,
           @PrevState = e.State
    FROM dbo.FollowEdge AS e WITH (UPDLOCK)
    WHERE e.FollowerUserId = @FollowerUserId AND e.TargetUserId = @TargetUserId;

    IF @Exists = 1
       AND NOT (@SourceVersion > @StoredVersion
                OR (@SourceVersion = @StoredVersion
                    AND CONVERT(CHAR(36), @EventId) COLLATE Latin1_General_100_BIN2 > CONVERT(CHAR(36), @StoredEventId) COLLATE Latin1_General_100_BIN2))
    BEGIN
        INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
        VALUES (@EventId, @EventType, @Subject, @SourceVersion, N'stale');
        COMMIT TRANSACTION;
        SELECT N'stale' AS Outcome;
        RETURN;
    END;

    SELECT @Transition = t.EventType
    FROM dbo.FollowTransition AS t
    WHERE t.FromState = ISNULL(@PrevState, N'') AND t.ToState = N'';

    IF @Exists = 0
    BEGIN
        INSERT INTO dbo.FollowEdge (FollowerUserId, TargetUserId, CreatedAt, State, Source, DeletedAt, SourceVersion, EventId, SyncSource)
        VALUES (@FollowerUserId, @TargetUserId, NULL, NULL, NULL, @SourceVersion, @SourceVersion, @EventId, @SyncSource);
    END
    ELSE
    BEGIN
        UPDATE dbo.FollowEdge
        SET CreatedAt = NULL,
            State = NULL,
            Source = NULL,
            DeletedAt = @SourceVersion,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE FollowerUserId = @FollowerUserId AND TargetUserId = @TargetUserId;
    END;

    IF @Transition IS NOT NULL
    BEGIN
        INSERT INTO dbo.FollowEvent (EventId, FollowerUserId, TargetUserId, EventType, CreatedAt, CorrelationId, MetadataJson)
        VALUES (@EventId, @FollowerUserId, @TargetUserId, @Transition, @SourceVersion, @Subject,
                CONCAT(N'{"fromState":"', @PrevState, N'","toState":null,"syncSource":"', STRING_ESCAPE(@SyncSource, 'json'), N'"}'));
    END;

    INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
    VALUES (@EventId, @EventType, @Subject, @SourceVersion, N'applied');

    COMMIT TRANSACTION;
    SELECT N'applied' AS Outcome;
END;
