-- dbo.fn_StoreMirror_IsValidId: 1 if @Id is a valid Firestore/user id by the
-- contract (mirror_schema::subject::check_id, mirror.fn_check_id in
-- PostgreSQL), else 0: not NULL, not empty, at most 128 characters, not `.`
-- or `..`, no `/` and no control character (U+0000-U+001F, U+007F-U+009F).
--
-- Characters, not UTF-16 code units: a character outside the Basic
-- Multilingual Plane is a surrogate pair in NVARCHAR, so the loop counts every
-- unit except low surrogates (U+DC00-U+DFFF). Under a supplementary-character
-- (_SC) collation, or on Babelfish, SUBSTRING already yields whole code points
-- and no surrogate is seen, so the count is the same. Lengths are taken of
-- @Id + N'x' because LEN ignores trailing spaces, which are part of an id.
-- `.` and `..` are compared as bytes, so `. ` is (correctly) valid.
CREATE FUNCTION dbo.fn_StoreMirror_IsValidId (@Id NVARCHAR(400))
RETURNS BIT
AS
BEGIN
    DECLARE @Valid BIT = 1;
    DECLARE @Units INT = LEN(ISNULL(@Id, N'') + N'x') - 1;
    DECLARE @Index INT = 1;
    DECLARE @Characters INT = 0;
    DECLARE @Code INT;

    IF @Id IS NULL OR @Units = 0 OR @Units > 256
        SET @Valid = 0;
    IF @Valid = 1 AND CAST(@Id AS VARBINARY(800)) IN (CAST(N'.' AS VARBINARY(800)), CAST(N'..' AS VARBINARY(800)))
        SET @Valid = 0;
    WHILE @Valid = 1 AND @Index <= @Units
    BEGIN
        SET @Code = UNICODE(SUBSTRING(@Id, @Index, 1));
        IF @Code < 32 OR (@Code >= 127 AND @Code <= 159) OR @Code = 47
            SET @Valid = 0;
        IF @Code < 56320 OR @Code > 57343
            SET @Characters = @Characters + 1;
        SET @Index = @Index + 1;
    END;
    IF @Characters > 128
        SET @Valid = 0;
    RETURN @Valid;
END;
