-- dbo.sp_StoreMirror_Lock: take the entity applock (Exclusive, owned by the
-- caller's transaction, no timeout) on realtime-mirror/<@Kind>/<hex SHA-256 of
-- @Key>. @Key is the entity's exact key as bytes (the same bytes its unique key
-- compares), so two ids that differ only in trailing spaces lock differently,
-- as they are stored differently. THROWs 51205 (transient) if the lock was not
-- granted (deadlock victim, cancelled). Internal: called inside a transaction.
CREATE PROCEDURE dbo.sp_StoreMirror_Lock (
    @Kind NVARCHAR(32) = NULL,
    @Key VARBINARY(1600) = NULL
)
AS
BEGIN
    SET XACT_ABORT ON;
    SET NOCOUNT ON;

    DECLARE @Resource NVARCHAR(255) = CONCAT(N'realtime-mirror/', @Kind, N'/', dbo.fn_StoreMirror_Hex(HASHBYTES('SHA2_256', @Key)));

    EXEC sys.sp_getapplock @Resource = @Resource, @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = -1;
    IF APPLOCK_MODE(N'public', @Resource, N'Transaction') <> N'Exclusive'
        THROW 51205, N'an entity lock was not granted (deadlock victim or cancelled); retry', 1;
END;
