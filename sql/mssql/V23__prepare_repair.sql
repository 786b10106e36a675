-- dbo.sp_StoreMirror_PrepareRepair: prepares a repair event of
-- `mirrorctl consistency --repair` (see sql/postgres/V5__consistency_repair.sql
-- for the semantics, which this mirrors). NOT RUN against a SQL Server yet,
-- and not yet called by the SQL Server adapter (crates/store/src/mssql.rs must
-- EXEC it in the event's transaction before the event's procedure, as the
-- PostgreSQL adapter does with mirror.prepare_repair).
CREATE OR ALTER PROCEDURE dbo.sp_StoreMirror_PrepareRepair (
    @EventId UNIQUEIDENTIFIER,
    @EventType NVARCHAR(64),
    @Subject NVARCHAR(400),
    @SourceVersion DATETIMEOFFSET(6)
)
AS
BEGIN
    -- A repair event (sync_source repair) of mirrorctl consistency --repair, run in
    -- the caller transaction right before the event procedure: a row holding a
    -- version with the same time gets the nil event id (so the repair is newer and
    -- rewrites it), and a ledger entry for the id is removed with the history rows
    -- it wrote (so applying it writes them again). A newer row is never touched.
    SET XACT_ABORT ON;
    SET NOCOUNT ON;
    DECLARE @Nil UNIQUEIDENTIFIER = CAST(0x0 AS UNIQUEIDENTIFIER);
    DECLARE @A NVARCHAR(400) = PARSENAME(REPLACE(REPLACE(@Subject, N'.', NCHAR(1)), N'/', N'.'), 3);
    DECLARE @B NVARCHAR(400) = PARSENAME(REPLACE(REPLACE(@Subject, N'.', NCHAR(1)), N'/', N'.'), 1);
    SET @A = REPLACE(@A, NCHAR(1), N'.');
    SET @B = REPLACE(@B, NCHAR(1), N'.');

    IF @EventType LIKE N'dm.conversation.%'
        UPDATE dbo.DmConversation SET LastSyncedEventId = @Nil
         WHERE FirestoreId = SUBSTRING(@Subject, 15, 400) AND SourceVersion = @SourceVersion;
    ELSE IF @EventType LIKE N'dm.message.%'
        UPDATE m SET EventId = @Nil
          FROM dbo.DmMessage AS m JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId
         WHERE c.FirestoreId = @A AND m.FirestoreId = @B AND m.SourceVersion = @SourceVersion;
    ELSE IF @EventType LIKE N'dm.block.%'
        UPDATE dbo.DmBlock SET EventId = @Nil
         WHERE UserId = @A AND TargetUserId = @B AND SourceVersion = @SourceVersion;
    ELSE IF @EventType LIKE N'follow.edge.%'
        UPDATE dbo.FollowEdge SET EventId = @Nil
         WHERE FollowerUserId = @A AND TargetUserId = @B AND SourceVersion = @SourceVersion;

    IF EXISTS (SELECT 1 FROM dbo.AppliedEvent WHERE EventId = @EventId)
    BEGIN
        DELETE FROM dbo.AppliedEvent WHERE EventId = @EventId;
        DELETE FROM dbo.DmMessageAudit WHERE EventId = @EventId;
        DELETE FROM dbo.FollowEvent WHERE EventId = @EventId;
    END;
END;
