-- dbo.fn_StoreMirror_Hex: lower-case hex of @Bytes (at most 64 bytes).
--
-- CONVERT(.., @Bytes, 2) would do this on SQL Server, but Babelfish does not
-- support the binary styles of CONVERT. Used for ParticipantHash (SHA-256,
-- equal to state::participant_hash) and for applock names.
CREATE FUNCTION dbo.fn_StoreMirror_Hex (@Bytes VARBINARY(64))
RETURNS VARCHAR(128)
AS
BEGIN
    DECLARE @Digits VARCHAR(16) = '0123456789abcdef';
    DECLARE @Hex VARCHAR(128) = '';
    DECLARE @Length INT = ISNULL(DATALENGTH(@Bytes), 0);
    DECLARE @Index INT = 1;
    DECLARE @Byte INT;

    WHILE @Index <= @Length
    BEGIN
        SET @Byte = CAST(SUBSTRING(@Bytes, @Index, 1) AS INT);
        SET @Hex = @Hex + SUBSTRING(@Digits, @Byte / 16 + 1, 1) + SUBSTRING(@Digits, @Byte % 16 + 1, 1);
        SET @Index = @Index + 1;
    END;
    RETURN @Hex;
END;
