-- dbo.sp_StoreMirror_PrepareRepair: prepares a repair event of
-- `mirrorctl consistency --repair` (see sql/postgres/V5__consistency_repair.sql
-- for the semantics, which this mirrors). NOT RUN against a SQL Server yet.
-- The SQL Server adapter calls it in the event's transaction and savepoint,
-- right before the event's procedure (crates/store/src/mssql/checksum.rs
-- prepare_repair), as the PostgreSQL adapter does with mirror.prepare_repair.
-- @A/@B are the subject's two ids
-- (conversation, message / user, target; @B NULL for a conversation); keys
-- compare exact bytes, like every other procedure.
CREATE PROCEDURE dbo.sp_StoreMirror_PrepareRepair (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @A NVARCHAR(256) = NULL,
    @B NVARCHAR(256) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL
)
AS
BEGIN
    -- A row holding a version with the same time gets the nil event id (so
    -- the repair is newer and rewrites it), and a ledger entry for the id is
    -- removed with the history rows it wrote (so applying it writes them
    -- again). A newer row is never touched.
    SET XACT_ABORT ON;
    SET NOCOUNT ON;
    DECLARE @Nil UNIQUEIDENTIFIER = CAST(0x0 AS UNIQUEIDENTIFIER);
    DECLARE @AKey VARBINARY(512) = CAST(@A AS VARBINARY(512));
    DECLARE @BKey VARBINARY(512) = CAST(@B AS VARBINARY(512));

    IF @EventType LIKE N'dm.conversation.%'
        UPDATE dbo.DmConversation SET LastSyncedEventId = @Nil
         WHERE FirestoreIdKey = @AKey AND SourceVersion = @SourceVersion;
    ELSE IF @EventType LIKE N'dm.message.%'
        UPDATE m SET EventId = @Nil
          FROM dbo.DmMessage AS m JOIN dbo.DmConversation AS c ON c.ConversationId = m.ConversationId
         WHERE c.FirestoreIdKey = @AKey AND m.FirestoreIdKey = @BKey AND m.SourceVersion = @SourceVersion;
    ELSE IF @EventType LIKE N'dm.block.%'
        UPDATE dbo.DmBlock SET EventId = @Nil
         WHERE UserIdKey = @AKey AND TargetUserIdKey = @BKey AND SourceVersion = @SourceVersion;
    ELSE IF @EventType LIKE N'follow.edge.%'
        UPDATE dbo.FollowEdge SET EventId = @Nil
         WHERE FollowerUserIdKey = @AKey AND TargetUserIdKey = @BKey AND SourceVersion = @SourceVersion;

    IF EXISTS (SELECT 1 FROM dbo.AppliedEvent WHERE EventId = @EventId)
    BEGIN
        DELETE FROM dbo.AppliedEvent WHERE EventId = @EventId;
        DELETE FROM dbo.DmMessageAudit WHERE EventId = @EventId;
        DELETE FROM dbo.FollowEdgeObservation WHERE EventId = @EventId;
    END;
END;
