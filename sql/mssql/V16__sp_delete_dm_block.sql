-- dbo.sp_StoreMirror_DeleteDmBlock: dm.block.delete (model::Model::block with
-- a delete payload).
--
-- Returns one row, one column: Outcome = 'applied' | 'duplicate' | 'stale'.
-- THROWs (before any change): 50001, 50002, 50004 (via
-- dbo.sp_StoreMirror_CheckEvent), 50003; 51205 (transient) if the block lock
-- is not granted. Every parameter defaults to NULL. The row is kept as a
-- tombstone: content NULL, DeletedAt = the event time.
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
        @PayloadJson = NULL, @ExpectedType = N'dm.block.delete', @OtherExpectedType = NULL;
    IF dbo.fn_StoreMirror_IsValidId(@UserId) = 0 OR dbo.fn_StoreMirror_IsValidId(@TargetUserId) = 0
        THROW 50003, N'user id or target user id is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;

    DECLARE @UserKey VARBINARY(512) = CAST(@UserId AS VARBINARY(512));
    DECLARE @TargetKey VARBINARY(512) = CAST(@TargetUserId AS VARBINARY(512));
    DECLARE @Subject NVARCHAR(600) = CONCAT(N'blocks/', @UserId, N'/targets/', @TargetUserId);
    DECLARE @SubjectKey VARBINARY(1200) = CAST(@Subject AS VARBINARY(1200));
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
        VALUES (@UserId, @UserKey, @TargetUserId, @TargetKey, NULL, NULL, NULL, @SourceVersion,
                @SourceVersion, @EventId, @SyncSource);
    END
    ELSE IF @Outcome = N'applied'
    BEGIN
        UPDATE dbo.DmBlock
        SET CreatedAt = NULL,
            RevokedAt = NULL,
            Source = NULL,
            DeletedAt = @SourceVersion,
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
