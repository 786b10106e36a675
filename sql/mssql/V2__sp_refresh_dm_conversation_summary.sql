-- dbo.sp_StoreMirror_RefreshDmConversationSummary: the derived conversation
-- summary (model::refresh_summary). Internal: called by the conversation and
-- message procedures inside their transaction, while they hold the
-- conversation's lock. Not part of the event -> procedure map.
--
-- LastMessageId/LastMessageAt = the live message (DeletedAt IS NULL) with the
-- greatest (CreatedAt, FirestoreId); FirestoreId ties are broken by its UTF-8
-- bytes, the order the Rust model uses for String. UpdatedAt =
-- greatest(DocUpdatedAt, LastMessageAt), NULLs ignored.
CREATE OR ALTER PROCEDURE dbo.sp_StoreMirror_RefreshDmConversationSummary (
    @ConversationId BIGINT
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    DECLARE @LastMessageId NVARCHAR(128);
    DECLARE @LastMessageAt DATETIMEOFFSET(6);

    SELECT TOP (1)
        @LastMessageId = m.FirestoreId,
        @LastMessageAt = m.CreatedAt
    FROM dbo.DmMessage AS m
    WHERE m.ConversationId = @ConversationId
      AND m.DeletedAt IS NULL
      AND m.CreatedAt IS NOT NULL
    ORDER BY m.CreatedAt DESC,
             CONVERT(VARBINARY(512), CONVERT(VARCHAR(512), m.FirestoreId COLLATE Latin1_General_100_BIN2_UTF8)) DESC;

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
