-- dbo.fn_StoreMirror_IsDuplicate: 1 if @EventId is in the ledger (it was
-- decided before: applied or stale), else 0. Called under the entity's applock,
-- which every write of that event id's ledger row holds too.
CREATE FUNCTION dbo.fn_StoreMirror_IsDuplicate (@EventId UNIQUEIDENTIFIER)
RETURNS BIT
AS
BEGIN
    DECLARE @Duplicate BIT = 0;
    IF EXISTS (SELECT 1 FROM dbo.AppliedEvent WHERE EventId = @EventId)
        SET @Duplicate = 1;
    RETURN @Duplicate;
END;
