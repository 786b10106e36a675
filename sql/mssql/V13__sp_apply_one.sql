-- dbo.sp_StoreMirror_ApplyOne: one checked event, applied as a batch of one
-- by dbo.sp_StoreMirror_ApplyBatch (V24__sp_apply_batch.sql), so the
-- per-event procedures and the set-based batch share ONE implementation of
-- the locking, the ledger, the (time, id) decision, the writes, the v1.1
-- history rows and the conversation summary (issues 9 and 10). Internal:
-- called by every sp_StoreMirror_Upsert* / _Delete* procedure after its
-- argument checks, with its own parameters plus @Family (conversation |
-- message | block | follow), @Deleted (1 for a delete) and, for a
-- conversation, @ParticipantHash. NOT RUN against a SQL Server yet.
--
-- Returns what the batch returns for the event: one row, EventId and
-- Outcome = 'applied' | 'duplicate' | 'stale'.
--
-- The one-event batch is built with FOR JSON PATH, which leaves NULL values
-- out: an absent key is NULL to OPENJSON .. WITH, as in the adapter's
-- batches. The applock is the one the adapter sends for the event: the
-- conversation for conversations and their messages, else the subject.
-- (dbo.sp_StoreMirror_ApplyBatch is created by a later migration; EXEC
-- resolves it when this runs, not when it is created.)
CREATE PROCEDURE dbo.sp_StoreMirror_ApplyOne (
    @EventId UNIQUEIDENTIFIER = NULL,
    @EventType NVARCHAR(64) = NULL,
    @SourceVersion DATETIMEOFFSET(6) = NULL,
    @SyncSource NVARCHAR(64) = NULL,
    @Family NVARCHAR(16) = NULL,
    @Deleted BIT = NULL,
    @ConversationFirestoreId NVARCHAR(400) = NULL,
    @Type NVARCHAR(64) = NULL,
    @CreatedAt DATETIMEOFFSET(6) = NULL,
    @UpdatedAt DATETIMEOFFSET(6) = NULL,
    @ParticipantsJson NVARCHAR(MAX) = NULL,
    @ParticipantHash CHAR(64) = NULL,
    @PayloadJson NVARCHAR(MAX) = NULL,
    @MessageFirestoreId NVARCHAR(400) = NULL,
    @AuthorUserId NVARCHAR(400) = NULL,
    @BodyText NVARCHAR(MAX) = NULL,
    @AttachmentJson NVARCHAR(MAX) = NULL,
    @ExternalMediaJson NVARCHAR(MAX) = NULL,
    @EditedAt DATETIMEOFFSET(6) = NULL,
    @DeletedAt DATETIMEOFFSET(6) = NULL,
    @ClientMessageId NVARCHAR(400) = NULL,
    @PerformedBy NVARCHAR(400) = NULL,
    @UserId NVARCHAR(400) = NULL,
    @FollowerUserId NVARCHAR(400) = NULL,
    @TargetUserId NVARCHAR(400) = NULL,
    @RevokedAt DATETIMEOFFSET(6) = NULL,
    @Source NVARCHAR(64) = NULL,
    @State NVARCHAR(64) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    DECLARE @Subject NVARCHAR(600) = CASE @Family
        WHEN N'conversation' THEN CONCAT(N'conversations/', @ConversationFirestoreId)
        WHEN N'message' THEN CONCAT(N'conversations/', @ConversationFirestoreId, N'/messages/', @MessageFirestoreId)
        WHEN N'block' THEN CONCAT(N'blocks/', @UserId, N'/targets/', @TargetUserId)
        ELSE CONCAT(N'follows/', @FollowerUserId, N'/targets/', @TargetUserId)
    END;
    DECLARE @LockKind NVARCHAR(32) = CASE @Family
        WHEN N'block' THEN N'block'
        WHEN N'follow' THEN N'follow-edge'
        ELSE N'conversation'
    END;
    DECLARE @LockKey NVARCHAR(600) = CASE WHEN @Family IN (N'block', N'follow') THEN @Subject ELSE @ConversationFirestoreId END;
    DECLARE @BatchJson NVARCHAR(MAX) = CONCAT(
        N'{"Locks":',
        (SELECT 1 AS Ord, @LockKind AS Kind, @LockKey AS [Key] FOR JSON PATH),
        N',"Events":',
        (SELECT 1 AS Ord, @Family AS Family, @EventId AS EventId, @EventType AS EventType,
                @SourceVersion AS SourceVersion, @SyncSource AS SyncSource, @Subject AS Subject,
                @Deleted AS Deleted, CAST(1 AS BIT) AS Newest, CAST(1 AS BIT) AS Winner,
                @ConversationFirestoreId AS ConversationFirestoreId, @Type AS Type, @CreatedAt AS CreatedAt,
                @UpdatedAt AS UpdatedAt, @ParticipantsJson AS ParticipantsJson, @ParticipantHash AS ParticipantHash,
                @PayloadJson AS PayloadJson, @MessageFirestoreId AS MessageFirestoreId,
                @AuthorUserId AS AuthorUserId, @BodyText AS BodyText, @AttachmentJson AS AttachmentJson,
                @ExternalMediaJson AS ExternalMediaJson, @EditedAt AS EditedAt, @DeletedAt AS DeletedAt,
                @ClientMessageId AS ClientMessageId, @PerformedBy AS PerformedBy, @UserId AS UserId,
                @FollowerUserId AS FollowerUserId, @TargetUserId AS TargetUserId, @RevokedAt AS RevokedAt,
                @Source AS Source, @State AS State
         FOR JSON PATH),
        N'}'
    );

    EXEC dbo.sp_StoreMirror_ApplyBatch @BatchJson = @BatchJson;
END;
