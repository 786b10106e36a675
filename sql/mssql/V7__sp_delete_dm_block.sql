-- dbo.sp_StoreMirror_DeleteDmBlock: dm.block.delete (model::Model::block with
-- a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50003, 50004; 51205 (transient)
-- if the block lock is not granted. The row is kept as a tombstone: content
-- NULL, DeletedAt = the event time.
CREATE OR ALTER PROCEDURE dbo.sp_StoreMirror_DeleteDmBlock (
    @EventId UNIQUEIDENTIFIER,
    @EventType NVARCHAR(64),
    @SourceVersion DATETIMEOFFSET(6),
    @SyncSource NVARCHAR(64),
    @UserId NVARCHAR(400),
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
    IF @UserId IS NULL OR DATALENGTH(@UserId) = 0 OR DATALENGTH(@UserId) > 256
       OR @TargetUserId IS NULL OR DATALENGTH(@TargetUserId) = 0 OR DATALENGTH(@TargetUserId) > 256
        THROW 50003, N'user id or target user id is null, empty or longer than 128', 1;
    IF @EventType IS NULL OR @EventType <> N'dm.block.delete'
        THROW 50004, N'event type is not dm.block.delete', 1;

    DECLARE @Subject NVARCHAR(400) = CONCAT(N'blocks/', @UserId, N'/targets/', @TargetUserId);
    DECLARE @BlockLock NVARCHAR(255) = CONCAT(N'realtime-mirror/block/', CONVERT(NVARCHAR(64), HASHBYTES('SHA2_256', @Subject), 2));
    DECLARE @Exists BIT = 0;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;

    BEGIN TRANSACTION;

    EXEC sys.sp_getapplock @Resource = @BlockLock, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = -1;
    IF APPLOCK_MODE(N'public', @BlockLock, N'Transaction') <> N'Exclusive'
        THROW 51205, N'the block lock was not granted (deadlock victim or cancelled); retry', 1;

    IF EXISTS (SELECT 1 FROM dbo.AppliedEvent WITH (UPDLOCK) WHERE EventId = @EventId)
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    SELECT @Exists = 1,
           @StoredVersion = b.SourceVersion,
           @StoredEventId = b.EventId
    FROM dbo.DmBlock AS b WITH (UPDLOCK)
    WHERE b.UserId = @UserId AND b.TargetUserId = @TargetUserId;

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

    IF @Exists = 0
    BEGIN
        INSERT INTO dbo.DmBlock (UserId, TargetUserId, CreatedAt, RevokedAt, Source, DeletedAt, SourceVersion, EventId, SyncSource)
        VALUES (@UserId, @TargetUserId, NULL, NULL, NULL, @SourceVersion, @SourceVersion, @EventId, @SyncSource);
    END
    ELSE
    BEGIN
        UPDATE dbo.DmBlock
        SET CreatedAt = NULL,
            RevokedAt = NULL,
            Source = NULL,
            DeletedAt = @SourceVersion,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE UserId = @UserId AND TargetUserId = @TargetUserId;
    END;

    INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
    VALUES (@EventId, @EventType, @Subject, @SourceVersion, N'applied');

    COMMIT TRANSACTION;
    SELECT N'applied' AS Outcome;
END;
