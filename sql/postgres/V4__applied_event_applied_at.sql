-- Ledger pruning (`mirrorctl prune-ledger`, the writer's --ledger-retention-days)
-- deletes the oldest-recorded rows in small batches; without this index every
-- batch would scan the whole ledger.
CREATE INDEX IF NOT EXISTS ix_applied_event_applied_at ON mirror.applied_event (applied_at);
