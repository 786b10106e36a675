-- dbo.sp_StoreMirror_WriteDmBlock: the decision and the writes of
-- dm.block.create / .update / .delete (model::Model::block), shared by
-- dbo.sp_StoreMirror_UpsertDmBlock and dbo.sp_StoreMirror_DeleteDmBlock, which
-- check their arguments first. Internal.
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- @Deleted = 1: a delete; the row is kept as a tombstone (content NULL,
-- DeletedAt = the event time). Otherwise a newer create/update clears a
-- tombstone (DeletedAt = NULL). THROWs 51205 (transient) if the block lock is
-- not granted.
CREATE PROCEDURE dbo.sp_StoreMirror_WriteDmBlock (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @UserId NVARCHAR(400) = NULL,
    @TargetUserId NVARCHAR(400) = NULL,
    @CreatedAt DATETIMEOFFSET(6) = NULL,
    @RevokedAt DATETIMEOFFSET(6) = NULL,
    @Source NVARCHAR(64) = NULL,
    @Deleted BIT = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    DECLARE @UserKey VARBINARY(512) = CAST(@UserId AS VARBINARY(512));
    DECLARE @TargetKey VARBINARY(512) = CAST(@TargetUserId AS VARBINARY(512));
    DECLARE @Subject NVARCHAR(600) = CONCAT(N'blocks/', @UserId, N'/targets/', @TargetUserId);
    DECLARE @SubjectKey VARBINARY(1200) = CAST(@Subject AS VARBINARY(1200));
    DECLARE @DeletedAt DATETIMEOFFSET(6) = CASE WHEN @Deleted = 1 THEN @SourceVersion END;
    DECLARE @Exists BIT = 0;
    DECLARE @StoredVersion DATETIMEOFFSET(6);
    DECLARE @StoredEventId UNIQUEIDENTIFIER;
    DECLARE @Outcome NVARCHAR(16);

    BEGIN TRANSACTION;

    EXEC dbo.sp_StoreMirror_Lock @Kind = N'block', @Key = @SubjectKey;

    IF dbo.fn_StoreMirror_IsDuplicate(@EventId) = 1
    BEGIN
        COMMIT TRANSACTION;
        SELECT N'duplicate' AS Outcome;
        RETURN;
    END;

    SELECT @Exists = 1,
           @StoredVersion = b.SourceVersion,
           @StoredEventId = b.EventId
    FROM dbo.DmBlock AS b WITH (UPDLOCK)
    WHERE b.UserIdKey = @UserKey AND b.TargetUserIdKey = @TargetKey;

    SET @Outcome = CASE WHEN dbo.fn_StoreMirror_IsNewer(@SourceVersion, @EventId, @StoredVersion, @StoredEventId) = 1
                        THEN N'applied' ELSE N'stale' END;

    IF @Outcome = N'applied' AND @Exists = 0
    BEGIN
        INSERT INTO dbo.DmBlock (UserId, UserIdKey, TargetUserId, TargetUserIdKey, CreatedAt, RevokedAt, Source, DeletedAt,
                                 SourceVersion, EventId, SyncSource)
        VALUES (@UserId, @UserKey, @TargetUserId, @TargetKey, @CreatedAt, @RevokedAt, @Source, @DeletedAt,
                @SourceVersion, @EventId, @SyncSource);
    END
    ELSE IF @Outcome = N'applied'
    BEGIN
        UPDATE dbo.DmBlock
        SET CreatedAt = @CreatedAt,
            RevokedAt = @RevokedAt,
            Source = @Source,
            DeletedAt = @DeletedAt,
            SourceVersion = @SourceVersion,
            EventId = @EventId,
            SyncSource = @SyncSource
        WHERE UserIdKey = @UserKey AND TargetUserIdKey = @TargetKey;
    END;

    EXEC dbo.sp_StoreMirror_RecordEvent @EventId = @EventId, @EventType = @EventType, @Subject = @Subject,
        @SourceVersion = @SourceVersion, @Outcome = @Outcome;

    COMMIT TRANSACTION;
    SELECT @Outcome AS Outcome;
END;
