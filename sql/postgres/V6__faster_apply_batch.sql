-- realtime-mirror, PostgreSQL: a faster set-based batch (same signature,
-- same rows, same outcomes as V3's `mirror.apply_batch`).
--
-- What the profile of V3's function showed (auto_explain with nested
-- statements, batches of 256 events from `mirrorctl bench`'s workload):
--
--   * its plans were made while the tables were small and stayed cached for
--     the session, so the ledger lookups became sequential scans whose cost
--     grew with the ledger (`applied_event ... = ANY (v_new)`: 20 ms of a
--     128 ms batch at only 5,000 ledger rows), as did the stale-outcome
--     UPDATEs and the joins against dm_conversation / follow_edge;
--   * `x.id = ANY (v_new)` in every family statement is a linear search per
--     row (quadratic in the batch size);
--   * every stale event cost an UPDATE of the ledger row just inserted;
--   * the messages' jsonb array was decoded twice (placeholder parents, then
--     the rows);
--   * the existing-message lookup could pick ix_dm_message_conversation_created
--     and walk every message of the conversation.
--
-- This version therefore:
--
--   * plans every statement for index lookups driven by the batch whatever the
--     table statistics say (function-level `enable_seqscan/hashjoin/mergejoin
--     = off`: a batch touches a few hundred rows of tables that only grow),
--     and with `jit = off` (a disabled plan's cost would otherwise trigger JIT
--     compilation);
--   * takes all entity locks in one statement, in array order;
--   * finds new events by probing the ledger per event, decides each
--     outcome in its family's statement and writes the ledger rows once, at
--     the end, with their final outcome (`ON CONFLICT DO NOTHING` all the
--     same), returning them;
--   * creates placeholder parents inside the messages' statement;
--   * replaces ix_dm_message_conversation_created with a partial index that
--     is exactly the conversation summary's "newest live message" order, so
--     the summary is one index probe and the per-message lookup can only use
--     the (conversation_id, firestore_id) unique index.
--
-- Entity locks make all this safe: an event id is inserted into the ledger
-- only under its entity's lock (every function takes it first), so the ledger
-- probe at the start and the insert at the end see the same thing.

DROP INDEX mirror.ix_dm_message_conversation_created;

CREATE INDEX ix_dm_message_conversation_live
    ON mirror.dm_message (conversation_id, created_at DESC, firestore_id DESC)
    WHERE deleted_at IS NULL AND created_at IS NOT NULL;

CREATE OR REPLACE FUNCTION mirror.apply_batch(
    p_locks         text[],
    p_ids           uuid[],
    p_types         text[],
    p_subjects      text[],
    p_times         timestamptz[],
    p_conversations jsonb,
    p_messages      jsonb,
    p_blocks        jsonb,
    p_follows       jsonb
) RETURNS TABLE (o_event_id uuid, o_outcome text)
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET jit = off
AS $$
DECLARE
    v_conv_written bigint[] := '{}';
    v_msg_touched bigint[] := '{}';
    v_stale uuid[] := '{}';
    v_more uuid[];
BEGIN
    -- 1. Entity locks, in the one global order every writer uses.
    PERFORM pg_advisory_xact_lock(hashtextextended('realtime-mirror:' || l.name, 0))
       FROM unnest(p_locks) AS l(name);

    -- 2. Conversations.
    IF jsonb_array_length(p_conversations) > 0 THEN
        WITH e AS (
            SELECT x.*
              FROM jsonb_to_recordset(p_conversations) AS x(
                   id uuid, "time" timestamptz, cid text, kind text, participants jsonb,
                   created timestamptz, updated timestamptz, sync text, newest boolean, winner boolean)
             WHERE NOT EXISTS (SELECT 1 FROM mirror.applied_event AS a WHERE a.event_id = x.id)),
        judged AS (
            SELECT e.*, (e.newest AND (c.source_version IS NULL
                                       OR (e."time", e.id) > (c.source_version, c.last_event_id))) AS applied
              FROM e LEFT JOIN mirror.dm_conversation AS c ON c.firestore_id = e.cid),
        written AS (
            INSERT INTO mirror.dm_conversation AS c (firestore_id, type, created_at, doc_updated_at,
                                                     participant_hash, is_placeholder, source_version,
                                                     last_event_id, sync_source)
            SELECT j.cid, j.kind, j.created, j.updated, mirror.participant_hash(j.participants),
                   false, j."time", j.id, j.sync
              FROM judged AS j WHERE j.winner AND j.applied
            ON CONFLICT (firestore_id) DO UPDATE
               SET type = EXCLUDED.type,
                   created_at = EXCLUDED.created_at,
                   doc_updated_at = EXCLUDED.doc_updated_at,
                   participant_hash = EXCLUDED.participant_hash,
                   is_placeholder = false,
                   source_version = EXCLUDED.source_version,
                   last_event_id = EXCLUDED.last_event_id,
                   sync_source = EXCLUDED.sync_source
            RETURNING c.conversation_id)
        SELECT coalesce((SELECT array_agg(w.conversation_id) FROM written AS w), '{}'),
               coalesce((SELECT array_agg(j.id) FROM judged AS j WHERE NOT j.applied), '{}')
          INTO v_conv_written, v_more;
        v_stale := v_stale || v_more;

        IF cardinality(v_conv_written) > 0 THEN
            -- The participant list is the document's: replace it.
            DELETE FROM mirror.dm_participant AS p
             WHERE p.conversation_id IN (SELECT unnest(v_conv_written));
            INSERT INTO mirror.dm_participant (conversation_id, user_id, role, joined_at, mute_state,
                                               read_pointer_message_id, firestore_pointer)
            SELECT c.conversation_id, p."userId", p.role, p."joinedAt", p."muteState", m.message_id,
                   p."readPointerMessageId"
              FROM jsonb_to_recordset(p_conversations) AS x(id uuid, cid text, participants jsonb)
              JOIN mirror.dm_conversation AS c ON c.firestore_id = x.cid AND c.last_event_id = x.id
             CROSS JOIN LATERAL jsonb_to_recordset(x.participants)
                   AS p("userId" text, role text, "joinedAt" timestamptz, "muteState" text,
                        "readPointerMessageId" text)
              LEFT JOIN mirror.dm_message AS m
                     ON m.conversation_id = c.conversation_id AND m.firestore_id = p."readPointerMessageId"
             WHERE c.conversation_id IN (SELECT unnest(v_conv_written));
        END IF;
    END IF;

    -- 3. Messages: placeholder parents, rows, audit, read pointers.
    IF jsonb_array_length(p_messages) > 0 THEN
        WITH x AS (
            SELECT x.*
              FROM jsonb_to_recordset(p_messages) AS x(
                   id uuid, type text, "time" timestamptz, cid text, mid text, del boolean,
                   author text, body text, attachments jsonb, media jsonb, created timestamptz,
                   edited timestamptz, deleted timestamptz, client text, performed_by text, payload jsonb,
                   sync text, newest boolean, winner boolean)
             WHERE NOT EXISTS (SELECT 1 FROM mirror.applied_event AS a WHERE a.event_id = x.id)),
        missing AS (
            SELECT DISTINCT x.cid
              FROM x
             WHERE NOT EXISTS (SELECT 1 FROM mirror.dm_conversation AS c WHERE c.firestore_id = x.cid)),
        placeholder AS (
            -- No ON CONFLICT: the conversation lock is held, so no one else can
            -- create it meanwhile; if that ever broke, the batch fails and is
            -- applied event by event instead of losing a message.
            INSERT INTO mirror.dm_conversation (firestore_id, is_placeholder)
            SELECT k.cid, true FROM missing AS k
            RETURNING firestore_id, conversation_id),
        parented AS (
            -- A placeholder is rare: only then is the (unindexed) CTE searched.
            SELECT x.*, coalesce(c.conversation_id,
                                 (SELECT h.conversation_id FROM placeholder AS h WHERE h.firestore_id = x.cid)) AS conv
              FROM x LEFT JOIN mirror.dm_conversation AS c ON c.firestore_id = x.cid),
        judged AS (
            SELECT x.*, m.message_id AS existing,
                   (x.newest AND (m.message_id IS NULL
                                  OR (x."time", x.id) > (m.source_version, m.event_id))) AS applied
              FROM parented AS x
              LEFT JOIN mirror.dm_message AS m ON m.conversation_id = x.conv AND m.firestore_id = x.mid),
        updated AS (
            -- Also clears a tombstone: a newer create/update after a delete revives the message.
            UPDATE mirror.dm_message AS m
               SET author_user_id = j.author,
                   body_text = j.body,
                   attachment_json = j.attachments,
                   external_media_json = j.media,
                   created_at = j.created,
                   edited_at = j.edited,
                   deleted_at = CASE WHEN j.del THEN j."time" ELSE j.deleted END,
                   client_message_id = j.client,
                   tombstone = j.del,
                   source_version = j."time",
                   event_id = j.id,
                   sync_source = j.sync
              FROM judged AS j
             WHERE j.winner AND j.applied AND j.existing IS NOT NULL AND m.message_id = j.existing
            RETURNING m.conversation_id),
        inserted AS (
            INSERT INTO mirror.dm_message (conversation_id, firestore_id, author_user_id, body_text,
                                           attachment_json, external_media_json, created_at, edited_at,
                                           deleted_at, client_message_id, tombstone, source_version,
                                           event_id, sync_source)
            SELECT j.conv, j.mid, j.author, j.body, j.attachments, j.media, j.created, j.edited,
                   CASE WHEN j.del THEN j."time" ELSE j.deleted END, j.client, j.del, j."time", j.id, j.sync
              FROM judged AS j
             WHERE j.winner AND j.applied AND j.existing IS NULL
            RETURNING message_id, conversation_id, firestore_id, event_id),
        pointers AS (
            UPDATE mirror.dm_participant AS p
               SET read_pointer_message_id = i.message_id
              FROM inserted AS i
             WHERE p.conversation_id = i.conversation_id
               AND p.firestore_pointer = i.firestore_id
               AND p.read_pointer_message_id IS DISTINCT FROM i.message_id),
        audit AS (
            -- The message row of a history event that created it is the one
            -- its entity's winner inserted (same conversation and message id).
            INSERT INTO mirror.dm_message_audit (message_id, event_id, action, performed_by, payload_json,
                                                 created_at)
            SELECT coalesce(j.existing,
                            (SELECT i.message_id FROM inserted AS i
                              WHERE i.conversation_id = j.conv AND i.firestore_id = j.mid)),
                   j.id,
                   CASE WHEN j.del THEN 'delete' WHEN j.deleted IS NOT NULL THEN 'soft_delete' ELSE 'edit' END,
                   CASE WHEN j.del THEN j.performed_by ELSE j.author END,
                   j.payload, j."time"
              FROM judged AS j
             WHERE j.type IN ('dm.message.update', 'dm.message.delete')
            ON CONFLICT (event_id) DO NOTHING)
        SELECT coalesce((SELECT array_agg(DISTINCT t.conversation_id)
                           FROM (SELECT u.conversation_id FROM updated AS u
                                 UNION ALL SELECT i.conversation_id FROM inserted AS i) AS t), '{}'),
               coalesce((SELECT array_agg(j.id) FROM judged AS j WHERE NOT j.applied), '{}')
          INTO v_msg_touched, v_more;
        v_stale := v_stale || v_more;
    END IF;

    -- 4. The summary of every conversation this batch changed, once each.
    IF cardinality(v_conv_written) + cardinality(v_msg_touched) > 0 THEN
        UPDATE mirror.dm_conversation AS c
           SET last_message_id = s.message_id,
               last_message_at = s.created_at,
               updated_at = greatest(c.doc_updated_at, s.created_at)
          FROM (SELECT k.id, lm.message_id, lm.created_at
                  FROM (SELECT DISTINCT unnest(v_conv_written || v_msg_touched) AS id) AS k
                  LEFT JOIN LATERAL (
                       SELECT m.message_id, m.created_at
                         FROM mirror.dm_message AS m
                        WHERE m.conversation_id = k.id AND m.deleted_at IS NULL AND m.created_at IS NOT NULL
                        ORDER BY m.created_at DESC, m.firestore_id DESC
                        LIMIT 1) AS lm ON true) AS s
         WHERE c.conversation_id = s.id
           AND (c.last_message_id, c.last_message_at, c.updated_at)
               IS DISTINCT FROM (s.message_id, s.created_at, greatest(c.doc_updated_at, s.created_at));
    END IF;

    -- 5. Blocks (source NULL = delete: a tombstone).
    IF jsonb_array_length(p_blocks) > 0 THEN
        WITH e AS (
            SELECT x.*
              FROM jsonb_to_recordset(p_blocks) AS x(
                   id uuid, "time" timestamptz, uid text, tid text, created timestamptz, revoked timestamptz,
                   source text, sync text, newest boolean, winner boolean)
             WHERE NOT EXISTS (SELECT 1 FROM mirror.applied_event AS a WHERE a.event_id = x.id)),
        judged AS (
            SELECT e.*, (e.newest AND (b.source_version IS NULL
                                       OR (e."time", e.id) > (b.source_version, b.last_event_id))) AS applied
              FROM e LEFT JOIN mirror.dm_block AS b ON b.user_id = e.uid AND b.target_user_id = e.tid),
        written AS (
            INSERT INTO mirror.dm_block AS b (user_id, target_user_id, created_at, revoked_at, source, deleted_at,
                                              source_version, last_event_id, sync_source)
            SELECT j.uid, j.tid, j.created, j.revoked, j.source, CASE WHEN j.source IS NULL THEN j."time" END,
                   j."time", j.id, j.sync
              FROM judged AS j WHERE j.winner AND j.applied
            ON CONFLICT (user_id, target_user_id) DO UPDATE
               SET created_at = EXCLUDED.created_at,
                   revoked_at = EXCLUDED.revoked_at,
                   source = EXCLUDED.source,
                   deleted_at = EXCLUDED.deleted_at,
                   source_version = EXCLUDED.source_version,
                   last_event_id = EXCLUDED.last_event_id,
                   sync_source = EXCLUDED.sync_source)
        SELECT coalesce((SELECT array_agg(j.id) FROM judged AS j WHERE NOT j.applied), '{}') INTO v_more;
        v_stale := v_stale || v_more;
    END IF;

    -- 6. Follow edges (state NULL = delete: a tombstone) and their observations.
    IF jsonb_array_length(p_follows) > 0 THEN
        WITH e AS (
            SELECT x.*
              FROM jsonb_to_recordset(p_follows) AS x(
                   id uuid, type text, "time" timestamptz, fid text, tid text, state text, source text,
                   created timestamptz, sync text, newest boolean, winner boolean)
             WHERE NOT EXISTS (SELECT 1 FROM mirror.applied_event AS a WHERE a.event_id = x.id)),
        judged AS (
            SELECT e.*, (e.newest AND (f.source_version IS NULL
                                       OR (e."time", e.id) > (f.source_version, f.event_id))) AS applied
              FROM e LEFT JOIN mirror.follow_edge AS f ON f.follower_user_id = e.fid AND f.target_user_id = e.tid),
        observed AS (
            INSERT INTO mirror.follow_edge_observation (event_id, follower_user_id, target_user_id, source_time,
                                                        state, event_type, source, sync_source)
            SELECT j.id, j.fid, j.tid, j."time", j.state, j.type, j.source, j.sync FROM judged AS j
            ON CONFLICT (event_id) DO NOTHING),
        written AS (
            INSERT INTO mirror.follow_edge AS f (follower_user_id, target_user_id, state, source, created_at,
                                                 deleted_at, source_version, event_id, sync_source)
            SELECT j.fid, j.tid, j.state, j.source, j.created, CASE WHEN j.state IS NULL THEN j."time" END,
                   j."time", j.id, j.sync
              FROM judged AS j WHERE j.winner AND j.applied
            ON CONFLICT (follower_user_id, target_user_id) DO UPDATE
               SET state = EXCLUDED.state,
                   source = EXCLUDED.source,
                   created_at = EXCLUDED.created_at,
                   deleted_at = EXCLUDED.deleted_at,
                   source_version = EXCLUDED.source_version,
                   event_id = EXCLUDED.event_id,
                   sync_source = EXCLUDED.sync_source)
        SELECT coalesce((SELECT array_agg(j.id) FROM judged AS j WHERE NOT j.applied), '{}') INTO v_more;
        v_stale := v_stale || v_more;
    END IF;

    -- 7. The ledger, with each new event's outcome; an id already there
    --    (a duplicate) is not returned.
    RETURN QUERY
    INSERT INTO mirror.applied_event AS a (event_id, event_type, subject, source_time, outcome)
    SELECT l.id, l.type, l.subject, l.t, CASE WHEN l.id = ANY (v_stale) THEN 'stale' ELSE 'applied' END
      FROM unnest(p_ids, p_types, p_subjects, p_times) AS l(id, type, subject, t)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING a.event_id, a.outcome::text;
END
$$;
