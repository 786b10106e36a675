-- dbo.sp_StoreMirror_RefreshDmConversationSummary: the derived conversation
-- summary (model::refresh_summary). Internal: called by the conversation and
-- message procedures inside their transaction, while they hold the
-- conversation's lock. Not part of the event -> procedure map.
--
-- LastMessageId/LastMessageAt = the live message (DeletedAt IS NULL) with the
-- greatest (CreatedAt, FirestoreId); FirestoreId ties are broken by its UTF-8
-- bytes (dbo.fn_StoreMirror_Utf8), the order the Rust model uses for String.
-- UpdatedAt = greatest(DocUpdatedAt, LastMessageAt), NULLs ignored.
CREATE PROCEDURE dbo.sp_StoreMirror_RefreshDmConversationSummary (
    @ConversationId BIGINT = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    DECLARE @LastMessageId NVARCHAR(256);
    DECLARE @LastMessageAt DATETIMEOFFSET(6);

    SELECT @LastMessageAt = MAX(m.CreatedAt)
    FROM dbo.DmMessage AS m
    WHERE m.ConversationId = @ConversationId
      AND m.DeletedAt IS NULL
      AND m.CreatedAt IS NOT NULL;

    -- Only the messages created at that instant compete on the id.
    SELECT TOP (1) @LastMessageId = t.FirestoreId
    FROM (
        SELECT m.FirestoreId, dbo.fn_StoreMirror_Utf8(m.FirestoreId) AS FirestoreIdUtf8
        FROM dbo.DmMessage AS m
        WHERE m.ConversationId = @ConversationId
          AND m.DeletedAt IS NULL
          AND m.CreatedAt = @LastMessageAt
    ) AS t
    ORDER BY t.FirestoreIdUtf8 DESC;

    UPDATE dbo.DmConversation
    SET LastMessageId = @LastMessageId,
        LastMessageAt = @LastMessageAt,
        UpdatedAt = CASE
            WHEN DocUpdatedAt IS NULL THEN @LastMessageAt
            WHEN @LastMessageAt IS NULL THEN DocUpdatedAt
            WHEN DocUpdatedAt >= @LastMessageAt THEN DocUpdatedAt
            ELSE @LastMessageAt
        END
    WHERE ConversationId = @ConversationId;
END;
