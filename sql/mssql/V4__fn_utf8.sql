-- dbo.fn_StoreMirror_Utf8: the UTF-8 bytes of @Text.
--
-- The model orders and hashes ids by their UTF-8 bytes (Rust's String order);
-- UTF-16 code-unit order differs from it for characters outside the BMP, and
-- the UTF-8 collations that would do this conversion do not exist on Babelfish,
-- so it is done here, by code point: a surrogate pair (non-_SC collation) is
-- combined first; under an _SC collation or on Babelfish UNICODE already
-- returns the code point. Used for ParticipantHash and for the last-message
-- tie-break (dbo.sp_StoreMirror_RefreshDmConversationSummary).
CREATE FUNCTION dbo.fn_StoreMirror_Utf8 (@Text NVARCHAR(400))
RETURNS VARBINARY(1600)
AS
BEGIN
    DECLARE @Bytes VARBINARY(1600) = CAST('' AS VARBINARY(1600));
    DECLARE @Units INT = LEN(ISNULL(@Text, N'') + N'x') - 1;
    DECLARE @Index INT = 1;
    DECLARE @Code INT;
    DECLARE @Low INT;

    WHILE @Index <= @Units
    BEGIN
        SET @Code = UNICODE(SUBSTRING(@Text, @Index, 1));
        IF @Code >= 55296 AND @Code <= 56319 AND @Index < @Units
        BEGIN
            SET @Low = UNICODE(SUBSTRING(@Text, @Index + 1, 1));
            IF @Low >= 56320 AND @Low <= 57343
            BEGIN
                SET @Code = 65536 + (@Code - 55296) * 1024 + (@Low - 56320);
                SET @Index = @Index + 1;
            END;
        END;
        IF @Code < 128
            SET @Bytes = @Bytes + CAST(@Code AS BINARY(1));
        ELSE IF @Code < 2048
            SET @Bytes = @Bytes + CAST(192 + @Code / 64 AS BINARY(1)) + CAST(128 + @Code % 64 AS BINARY(1));
        ELSE IF @Code < 65536
            SET @Bytes = @Bytes + CAST(224 + @Code / 4096 AS BINARY(1)) + CAST(128 + (@Code / 64) % 64 AS BINARY(1))
                       + CAST(128 + @Code % 64 AS BINARY(1));
        ELSE
            SET @Bytes = @Bytes + CAST(240 + @Code / 262144 AS BINARY(1)) + CAST(128 + (@Code / 4096) % 64 AS BINARY(1))
                       + CAST(128 + (@Code / 64) % 64 AS BINARY(1)) + CAST(128 + @Code % 64 AS BINARY(1));
        SET @Index = @Index + 1;
    END;
    RETURN @Bytes;
END;
