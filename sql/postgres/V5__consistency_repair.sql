-- realtime-mirror, PostgreSQL: preparing repair events of the consistency check.
--
-- `mirrorctl consistency --repair` republishes the source's current version of
-- every document that differs, through the bus, with `source` scheme `repair`
-- (sync_source 'repair'). Such an event usually has the same deterministic id
-- as the event that first carried that version, so on its own it would be a
-- no-op: the ledger already holds the id ('duplicate'), and a row already at
-- that version would make it 'stale'. The store adapters therefore call this
-- function for a repair event, in the same transaction and right before the
-- event's own function:
--
--   * the entity row, if it holds a version with exactly the event's time,
--     gets the nil event id, so the repair (same time, greater id) is newer
--     and rewrites every column of it;
--   * if the ledger holds the event id, the id and the history rows it wrote
--     (its dm_message_audit row, its follow-edge observation / follow_event
--     row) are removed, so that applying it writes them again.
--
-- A row holding a NEWER version than the repair is not touched: the repair
-- is then 'stale' like any older event and the row keeps its newer version
-- (a repair never moves a row backwards). Everything else, locks included,
-- is the family function's business.

CREATE FUNCTION mirror.prepare_repair(
    p_event_id uuid, p_event_type text, p_subject text, p_source_time timestamptz
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    c_nil constant uuid := '00000000-0000-0000-0000-000000000000';
    v_part text[] := string_to_array(p_subject, '/');
BEGIN
    IF p_event_type LIKE 'dm.conversation.%' THEN
        PERFORM mirror.lock_entity('conversation:' || v_part[2]);
        UPDATE mirror.dm_conversation SET last_event_id = c_nil
         WHERE firestore_id = v_part[2] AND source_version = p_source_time;
    ELSIF p_event_type LIKE 'dm.message.%' THEN
        PERFORM mirror.lock_entity('conversation:' || v_part[2]);
        PERFORM mirror.lock_entity('message:' || v_part[2] || '/' || v_part[4]);
        UPDATE mirror.dm_message AS m SET event_id = c_nil
          FROM mirror.dm_conversation AS c
         WHERE c.conversation_id = m.conversation_id AND c.firestore_id = v_part[2]
           AND m.firestore_id = v_part[4] AND m.source_version = p_source_time;
    ELSIF p_event_type LIKE 'dm.block.%' THEN
        PERFORM mirror.lock_entity('block:' || v_part[2] || '/' || v_part[4]);
        UPDATE mirror.dm_block SET last_event_id = c_nil
         WHERE user_id = v_part[2] AND target_user_id = v_part[4] AND source_version = p_source_time;
    ELSIF p_event_type LIKE 'follow.edge.%' THEN
        PERFORM mirror.lock_entity('follow:' || v_part[2] || '/' || v_part[4]);
        UPDATE mirror.follow_edge SET event_id = c_nil
         WHERE follower_user_id = v_part[2] AND target_user_id = v_part[4] AND source_version = p_source_time;
    END IF;

    DELETE FROM mirror.applied_event WHERE event_id = p_event_id;
    IF FOUND THEN
        DELETE FROM mirror.dm_message_audit WHERE event_id = p_event_id;
        -- Follow history: the v1.1 observation table, or the older follow_event table.
        IF to_regclass('mirror.follow_edge_observation') IS NOT NULL THEN
            EXECUTE 'DELETE FROM mirror.follow_edge_observation WHERE event_id = $1' USING p_event_id;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('mirror.follow_event') AND relkind = 'r') THEN
            EXECUTE 'DELETE FROM mirror.follow_event WHERE event_id = $1' USING p_event_id;
        END IF;
    END IF;
END
$$;
