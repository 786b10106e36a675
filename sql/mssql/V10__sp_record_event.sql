-- dbo.sp_StoreMirror_RecordEvent: write the ledger row of a decided event
-- (@Outcome = applied | stale), so a second delivery is a duplicate. Internal:
-- called last, inside the transaction, under the entity's applock.
CREATE PROCEDURE dbo.sp_StoreMirror_RecordEvent (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @Subject NVARCHAR(600) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @Outcome NVARCHAR(16) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    INSERT INTO dbo.AppliedEvent (EventId, EventType, Subject, SourceVersion, Outcome)
    VALUES (@EventId, @EventType, @Subject, @SourceVersion, @Outcome);
END;
