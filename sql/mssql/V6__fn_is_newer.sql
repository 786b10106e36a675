-- dbo.fn_StoreMirror_IsNewer: 1 if the version (@SourceVersion, @EventId) is
-- strictly newer than the stored one, else 0 (model::newer). No stored version
-- (no row yet, or a placeholder conversation) means newer. Equal times are
-- ordered by the event id as canonical lower-case text, compared as bytes: the
-- order the model uses, whatever the database collation.
CREATE FUNCTION dbo.fn_StoreMirror_IsNewer (
    @SourceVersion DATETIMEOFFSET(6),
    @EventId UNIQUEIDENTIFIER,
    @StoredVersion DATETIMEOFFSET(6),
    @StoredEventId UNIQUEIDENTIFIER
)
RETURNS BIT
AS
BEGIN
    DECLARE @Newer BIT = 0;
    IF @StoredVersion IS NULL OR @SourceVersion > @StoredVersion
        SET @Newer = 1;
    ELSE IF @SourceVersion = @StoredVersion
        AND CAST(LOWER(CONVERT(CHAR(36), @EventId)) AS VARBINARY(36)) > CAST(LOWER(CONVERT(CHAR(36), @StoredEventId)) AS VARBINARY(36))
        SET @Newer = 1;
    RETURN @Newer;
END;
