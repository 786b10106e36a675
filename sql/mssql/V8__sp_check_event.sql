-- dbo.sp_StoreMirror_CheckEvent: the argument checks every event procedure
-- starts with. THROWs 50001 (no event id), 50002 (no source version), 50004
-- (@EventType is neither @ExpectedType nor @OtherExpectedType), 50005 (the
-- payload is not JSON), 50003 (a subject id: @FirstId, and @SecondId when
-- @IdCount = 2, is not a valid id). Internal: called before any change.
CREATE PROCEDURE dbo.sp_StoreMirror_CheckEvent (
    @EventId UNIQUEIDENTIFIER = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @EventType NVARCHAR(64) = NULL,
    @PayloadJson NVARCHAR(MAX) = NULL,
    @ExpectedType NVARCHAR(64) = NULL,
    @OtherExpectedType NVARCHAR(64) = NULL,
    @FirstId NVARCHAR(400) = NULL,
    @SecondId NVARCHAR(400) = NULL,
    @IdCount INT = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    IF @EventId IS NULL
        THROW 50001, N'event id is null', 1;
    IF @SourceVersion IS NULL
        THROW 50002, N'source version is null', 1;
    IF @EventType IS NULL
       OR CAST(@EventType AS VARBINARY(128)) NOT IN (CAST(@ExpectedType AS VARBINARY(128)), CAST(ISNULL(@OtherExpectedType, @ExpectedType) AS VARBINARY(128)))
        THROW 50004, N'the event type does not belong to this procedure', 1;
    IF @PayloadJson IS NOT NULL AND ISJSON(@PayloadJson) = 0
        THROW 50005, N'payload is not valid JSON', 1;
    IF dbo.fn_StoreMirror_IsValidId(@FirstId) = 0 OR (@IdCount = 2 AND dbo.fn_StoreMirror_IsValidId(@SecondId) = 0)
        THROW 50003, N'a subject id (conversation, message, user, follower or target) is not a valid id (null, empty, longer than 128 characters, . or .., or with / or a control character)', 1;
END;
