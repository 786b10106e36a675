-- realtime-mirror, PostgreSQL: `mirror.apply_batch` with typed array
-- parameters instead of one `jsonb` array per family (same rows, same
-- outcomes, same statements as V6's function).
--
-- Why: the profile of V6's function (auto_explain, `mirrorctl bench`'s
-- batches of 256 events) spent 20–25 % of its time parsing the families'
-- JSON (`jsonb_to_recordset`) and converting its text to timestamptz, uuid
-- and boolean. Here every field is its own array, sent in binary by the
-- client, and each family's rows are the arrays zipped by a multi-argument
-- `unnest(...)`: nothing is parsed but the optional JSON content that is
-- stored as jsonb anyway (attachments, external media, the audit payload).
--
-- What changed besides the decoding:
--
--   * a conversation's participants are flattened into parallel arrays
--     (`p_part_*`), each element carrying its conversation event's id and
--     conversation id, and only for the batch's winners (the only events
--     whose participants can be written: the participant rows are replaced
--     only for the conversations this batch wrote, whose `last_event_id` is
--     their winner's id);
--   * the participant hash (`mirror.participant_hash`) comes with each
--     conversation row (`p_conv_hashes`), computed by the client exactly as
--     `mirror_store::state::participant_hash` (SHA-256 of the user ids sorted
--     bytewise, joined by ','), as the SQL Server batch already does;
--   * nullable fields are arrays with NULL elements.
--
-- The old overload is dropped: one function, one signature.

DROP FUNCTION mirror.apply_batch(text[], uuid[], text[], text[], timestamptz[], jsonb, jsonb, jsonb, jsonb);

CREATE FUNCTION mirror.apply_batch(
    -- Locks (in order) and the ledger rows of every planned event.
    p_locks             text[],
    p_ids               uuid[],
    p_types             text[],
    p_subjects          text[],
    p_times             timestamptz[],
    -- Conversations: one element per conversation event.
    p_conv_ids          uuid[],
    p_conv_times        timestamptz[],
    p_conv_cids         text[],
    p_conv_kinds        text[],
    p_conv_hashes       text[],
    p_conv_created      timestamptz[],
    p_conv_updated      timestamptz[],
    p_conv_syncs        text[],
    p_conv_newest       boolean[],
    p_conv_winners      boolean[],
    -- Participants of the winning conversation events, flattened.
    p_part_ids          uuid[],
    p_part_cids         text[],
    p_part_users        text[],
    p_part_roles        text[],
    p_part_joined       timestamptz[],
    p_part_mutes        text[],
    p_part_pointers     text[],
    -- Messages: one element per message event.
    p_msg_ids           uuid[],
    p_msg_types         text[],
    p_msg_times         timestamptz[],
    p_msg_cids          text[],
    p_msg_mids          text[],
    p_msg_dels          boolean[],
    p_msg_authors       text[],
    p_msg_bodies        text[],
    p_msg_attachments   jsonb[],
    p_msg_media         jsonb[],
    p_msg_created       timestamptz[],
    p_msg_edited        timestamptz[],
    p_msg_deleted       timestamptz[],
    p_msg_clients       text[],
    p_msg_performed_by  text[],
    p_msg_payloads      jsonb[],
    p_msg_syncs         text[],
    p_msg_newest        boolean[],
    p_msg_winners       boolean[],
    -- Blocks: one element per block event (source NULL = delete).
    p_blk_ids           uuid[],
    p_blk_times         timestamptz[],
    p_blk_uids          text[],
    p_blk_tids          text[],
    p_blk_created       timestamptz[],
    p_blk_revoked       timestamptz[],
    p_blk_sources       text[],
    p_blk_syncs         text[],
    p_blk_newest        boolean[],
    p_blk_winners       boolean[],
    -- Follow edges: one element per follow event (state NULL = delete).
    p_fol_ids           uuid[],
    p_fol_types         text[],
    p_fol_times         timestamptz[],
    p_fol_fids          text[],
    p_fol_tids          text[],
    p_fol_states        text[],
    p_fol_sources       text[],
    p_fol_created       timestamptz[],
    p_fol_syncs         text[],
    p_fol_newest        boolean[],
    p_fol_winners       boolean[]
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
    IF cardinality(p_conv_ids) > 0 THEN
        WITH e AS (
            SELECT x.*
              FROM unnest(p_conv_ids, p_conv_times, p_conv_cids, p_conv_kinds, p_conv_hashes,
                          p_conv_created, p_conv_updated, p_conv_syncs, p_conv_newest, p_conv_winners)
                   AS x(id, "time", cid, kind, hash, created, updated, sync, newest, winner)
             WHERE NOT EXISTS (SELECT 1 FROM mirror.applied_event AS a WHERE a.event_id = x.id)),
        judged AS (
            SELECT e.*, (e.newest AND (c.source_version IS NULL
                                       OR (e."time", e.id) > (c.source_version, c.last_event_id))) AS applied
              FROM e LEFT JOIN mirror.dm_conversation AS c ON c.firestore_id = e.cid),
        written AS (
            INSERT INTO mirror.dm_conversation AS c (firestore_id, type, created_at, doc_updated_at,
                                                     participant_hash, is_placeholder, source_version,
                                                     last_event_id, sync_source)
            SELECT j.cid, j.kind, j.created, j.updated, j.hash, false, j."time", j.id, j.sync
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
            SELECT c.conversation_id, p.uid, p.role, p.joined, p.mute, m.message_id, p.pointer
              FROM unnest(p_part_ids, p_part_cids, p_part_users, p_part_roles, p_part_joined, p_part_mutes,
                          p_part_pointers) AS p(id, cid, uid, role, joined, mute, pointer)
              JOIN mirror.dm_conversation AS c ON c.firestore_id = p.cid AND c.last_event_id = p.id
              LEFT JOIN mirror.dm_message AS m
                     ON m.conversation_id = c.conversation_id AND m.firestore_id = p.pointer
             WHERE c.conversation_id IN (SELECT unnest(v_conv_written));
        END IF;
    END IF;

    -- 3. Messages: placeholder parents, rows, audit, read pointers.
    IF cardinality(p_msg_ids) > 0 THEN
        WITH x AS (
            SELECT x.*
              FROM unnest(p_msg_ids, p_msg_types, p_msg_times, p_msg_cids, p_msg_mids, p_msg_dels,
                          p_msg_authors, p_msg_bodies, p_msg_attachments, p_msg_media, p_msg_created,
                          p_msg_edited, p_msg_deleted, p_msg_clients, p_msg_performed_by, p_msg_payloads,
                          p_msg_syncs, p_msg_newest, p_msg_winners)
                   AS x(id, type, "time", cid, mid, del, author, body, attachments, media, created,
                        edited, deleted, client, performed_by, payload, sync, newest, winner)
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
    IF cardinality(p_blk_ids) > 0 THEN
        WITH e AS (
            SELECT x.*
              FROM unnest(p_blk_ids, p_blk_times, p_blk_uids, p_blk_tids, p_blk_created, p_blk_revoked,
                          p_blk_sources, p_blk_syncs, p_blk_newest, p_blk_winners)
                   AS x(id, "time", uid, tid, created, revoked, source, sync, newest, winner)
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
    IF cardinality(p_fol_ids) > 0 THEN
        WITH e AS (
            SELECT x.*
              FROM unnest(p_fol_ids, p_fol_types, p_fol_times, p_fol_fids, p_fol_tids, p_fol_states,
                          p_fol_sources, p_fol_created, p_fol_syncs, p_fol_newest, p_fol_winners)
                   AS x(id, type, "time", fid, tid, state, source, created, sync, newest, winner)
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
