-- realtime-mirror, PostgreSQL: contract v1.1 history, and the set-based batch.
--
-- History no longer depends on arrival order:
--   * dm_message_audit: one row per distinct dm.message.update / .delete event
--     id that reached the store, applied or stale, whose payload_json is the
--     event's own data.payload (the version it carries);
--   * follow_edge_observation: one row per distinct follow-edge event id
--     (create, update, delete: state NULL), applied or stale;
--   * follow_event becomes a VIEW over the observations: per edge, in
--     (time, event id) order, the transition from the previous observation's
--     state (NULL if none) to this one's, wherever mirror.follow_transition
--     names one. A late event between two recorded ones thus re-derives its
--     neighbours' transitions. The column names are those of the old table.
--
-- mirror.apply_batch applies a whole planned batch (see
-- `mirror_store::plan`) set-based: one statement per family, one transaction.
-- It produces exactly the rows and outcomes of calling the per-event
-- functions for the batch one event at a time in arrival order.

-- ---------------------------------------------------------------------------
-- Follow-edge observations and the follow_event view.

CREATE TABLE mirror.follow_edge_observation (
    event_id          uuid PRIMARY KEY,
    follower_user_id  varchar(128) COLLATE "C" NOT NULL,
    target_user_id    varchar(128) COLLATE "C" NOT NULL,
    -- the event `time`
    source_time       timestamptz NOT NULL,
    -- the state the event carries; NULL for follow.edge.delete
    state             varchar(16),
    event_type        varchar(64) NOT NULL,
    source            varchar(16),
    sync_source       varchar(32) NOT NULL,
    CONSTRAINT ck_follow_edge_observation_state CHECK (state IN ('pending', 'accepted', 'blocked'))
);

CREATE INDEX ix_follow_edge_observation_edge
    ON mirror.follow_edge_observation (follower_user_id, target_user_id, source_time, event_id);

-- Existing databases: what v1.0 kept is what we know. Every recorded
-- transition was an observation of its `to` state, and every current edge
-- row is the observation of its own event.
INSERT INTO mirror.follow_edge_observation (event_id, follower_user_id, target_user_id, source_time, state,
                                            event_type, source, sync_source)
SELECT fe.event_id, fe.follower_user_id, fe.target_user_id, fe.created_at, fe.metadata_json ->> 'to',
       coalesce(fe.metadata_json ->> 'eventType', 'follow.edge.update'), fe.metadata_json ->> 'source',
       left(coalesce(fe.metadata_json ->> 'syncSource', 'unknown'), 32)
  FROM mirror.follow_event AS fe
ON CONFLICT (event_id) DO NOTHING;

INSERT INTO mirror.follow_edge_observation (event_id, follower_user_id, target_user_id, source_time, state,
                                            event_type, source, sync_source)
SELECT f.event_id, f.follower_user_id, f.target_user_id, f.source_version, f.state,
       CASE WHEN f.deleted_at IS NULL THEN 'follow.edge.update' ELSE 'follow.edge.delete' END,
       f.source, f.sync_source
  FROM mirror.follow_edge AS f
ON CONFLICT (event_id) DO NOTHING;

DROP TABLE mirror.follow_event;

CREATE VIEW mirror.follow_event AS
SELECT o.event_id, o.follower_user_id, o.target_user_id, o.event_type, o.created_at, o.correlation_id,
       o.metadata_json
  FROM (SELECT e.event_id,
               e.follower_user_id,
               e.target_user_id,
               mirror.follow_transition(lag(e.state) OVER edge, e.state)::varchar(16) AS event_type,
               e.source_time AS created_at,
               ('follows/' || e.follower_user_id || '/targets/' || e.target_user_id)::varchar(300) AS correlation_id,
               jsonb_build_object('from', lag(e.state) OVER edge, 'to', e.state, 'eventType', e.event_type,
                                  'source', e.source, 'syncSource', e.sync_source) AS metadata_json
          FROM mirror.follow_edge_observation AS e
        WINDOW edge AS (PARTITION BY e.follower_user_id, e.target_user_id ORDER BY e.source_time, e.event_id)
       ) AS o
 WHERE o.event_type IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Per-event functions: history for stale events too.

-- The audit row of a message event, if it is an update or a delete.
CREATE FUNCTION mirror.write_message_audit(
    p_message_id bigint, p_event_id uuid, p_event_type text, p_source_time timestamptz,
    p_soft_deleted boolean, p_performed_by text, p_payload jsonb
) RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO mirror.dm_message_audit (message_id, event_id, action, performed_by, payload_json, created_at)
    SELECT p_message_id, p_event_id,
           CASE WHEN p_event_type = 'dm.message.delete' THEN 'delete'
                WHEN p_soft_deleted THEN 'soft_delete'
                ELSE 'edit' END,
           p_performed_by, p_payload, p_source_time
     WHERE p_event_type IN ('dm.message.update', 'dm.message.delete')
    -- A redelivery after its ledger row was pruned: the history row is already there.
    ON CONFLICT (event_id) DO NOTHING
$$;

DROP FUNCTION mirror.sp_store_mirror_upsert_dm_message(
    uuid, text, timestamptz, text, text, text, text, jsonb, jsonb, timestamptz, timestamptz, timestamptz, text, text);

CREATE FUNCTION mirror.sp_store_mirror_upsert_dm_message(
    p_event_id          uuid,
    p_event_type        text,
    p_source_time       timestamptz,
    p_conversation_id   text,         -- Firestore id of the conversation
    p_message_id        text,         -- Firestore id of the message
    p_author_user_id    text,
    p_body_text         text,
    p_attachments       jsonb,        -- JSON array or null
    p_external_media    jsonb,        -- JSON array or null
    p_created_at        timestamptz,
    p_edited_at         timestamptz,
    p_deleted_at        timestamptz,  -- soft delete
    p_client_message_id text,
    p_sync_source       text,
    p_payload           jsonb DEFAULT NULL  -- the event's data.payload, for the audit row
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_upsert_dm_message';
    v_conversation bigint;
    v_message bigint;
    v_version timestamptz;
    v_event uuid;
BEGIN
    PERFORM mirror.check_event(c_fn, p_event_id, p_event_type, p_source_time, p_sync_source,
                               ARRAY['dm.message.create', 'dm.message.update']);
    PERFORM mirror.check_id(c_fn, 'conversation id', p_conversation_id);
    PERFORM mirror.check_id(c_fn, 'message id', p_message_id);
    PERFORM mirror.check_required(c_fn, 'authorUserId', p_author_user_id IS NULL);
    PERFORM mirror.check_required(c_fn, 'bodyText', p_body_text IS NULL);
    PERFORM mirror.check_required(c_fn, 'createdAt', p_created_at IS NULL);
    PERFORM mirror.check_array(c_fn, 'attachments', p_attachments);
    PERFORM mirror.check_array(c_fn, 'externalMedia', p_external_media);

    PERFORM mirror.lock_entity('conversation:' || p_conversation_id);
    PERFORM mirror.lock_entity('message:' || p_conversation_id || '/' || p_message_id);

    IF NOT mirror.ledger_insert(p_event_id, p_event_type,
                                'conversations/' || p_conversation_id || '/messages/' || p_message_id,
                                p_source_time) THEN
        RETURN 'duplicate';
    END IF;

    v_conversation := mirror.ensure_conversation(p_conversation_id);

    SELECT message_id, source_version, event_id INTO v_message, v_version, v_event
      FROM mirror.dm_message
     WHERE conversation_id = v_conversation AND firestore_id = p_message_id
       FOR UPDATE;
    IF v_message IS NOT NULL AND (p_source_time, p_event_id) <= (v_version, v_event) THEN
        -- Stale for the row, still part of the history.
        PERFORM mirror.write_message_audit(v_message, p_event_id, p_event_type, p_source_time,
                                           p_deleted_at IS NOT NULL, p_author_user_id, p_payload);
        RETURN mirror.ledger_stale(p_event_id);
    END IF;

    IF v_message IS NULL THEN
        INSERT INTO mirror.dm_message (conversation_id, firestore_id, author_user_id, body_text, attachment_json,
                                       external_media_json, created_at, edited_at, deleted_at, client_message_id,
                                       tombstone, source_version, event_id, sync_source)
        VALUES (v_conversation, p_message_id, p_author_user_id, p_body_text, p_attachments,
                p_external_media, p_created_at, p_edited_at, p_deleted_at, p_client_message_id,
                false, p_source_time, p_event_id, p_sync_source)
        RETURNING message_id INTO v_message;
        PERFORM mirror.link_read_pointers(v_conversation, p_message_id, v_message);
    ELSE
        -- Also clears a tombstone: a newer create/update after a delete revives the message.
        UPDATE mirror.dm_message
           SET author_user_id = p_author_user_id,
               body_text = p_body_text,
               attachment_json = p_attachments,
               external_media_json = p_external_media,
               created_at = p_created_at,
               edited_at = p_edited_at,
               deleted_at = p_deleted_at,
               client_message_id = p_client_message_id,
               tombstone = false,
               source_version = p_source_time,
               event_id = p_event_id,
               sync_source = p_sync_source
         WHERE message_id = v_message;
    END IF;

    PERFORM mirror.write_message_audit(v_message, p_event_id, p_event_type, p_source_time,
                                       p_deleted_at IS NOT NULL, p_author_user_id, p_payload);
    PERFORM mirror.refresh_conversation_summary(v_conversation);
    RETURN 'applied';
END
$$;

DROP FUNCTION mirror.sp_store_mirror_delete_dm_message(uuid, text, timestamptz, text, text, text, text);

CREATE FUNCTION mirror.sp_store_mirror_delete_dm_message(
    p_event_id        uuid,
    p_event_type      text,
    p_source_time     timestamptz,
    p_conversation_id text,
    p_message_id      text,
    p_performed_by    text,   -- optional
    p_sync_source     text,
    p_payload         jsonb DEFAULT NULL  -- the event's data.payload, for the audit row
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_delete_dm_message';
    v_conversation bigint;
    v_message bigint;
    v_version timestamptz;
    v_event uuid;
BEGIN
    PERFORM mirror.check_event(c_fn, p_event_id, p_event_type, p_source_time, p_sync_source,
                               ARRAY['dm.message.delete']);
    PERFORM mirror.check_id(c_fn, 'conversation id', p_conversation_id);
    PERFORM mirror.check_id(c_fn, 'message id', p_message_id);

    PERFORM mirror.lock_entity('conversation:' || p_conversation_id);
    PERFORM mirror.lock_entity('message:' || p_conversation_id || '/' || p_message_id);

    IF NOT mirror.ledger_insert(p_event_id, p_event_type,
                                'conversations/' || p_conversation_id || '/messages/' || p_message_id,
                                p_source_time) THEN
        RETURN 'duplicate';
    END IF;

    v_conversation := mirror.ensure_conversation(p_conversation_id);

    SELECT message_id, source_version, event_id INTO v_message, v_version, v_event
      FROM mirror.dm_message
     WHERE conversation_id = v_conversation AND firestore_id = p_message_id
       FOR UPDATE;
    IF v_message IS NOT NULL AND (p_source_time, p_event_id) <= (v_version, v_event) THEN
        PERFORM mirror.write_message_audit(v_message, p_event_id, p_event_type, p_source_time,
                                           false, p_performed_by, coalesce(p_payload, '{}'::jsonb));
        RETURN mirror.ledger_stale(p_event_id);
    END IF;

    IF v_message IS NULL THEN
        INSERT INTO mirror.dm_message (conversation_id, firestore_id, deleted_at, tombstone,
                                       source_version, event_id, sync_source)
        VALUES (v_conversation, p_message_id, p_source_time, true, p_source_time, p_event_id, p_sync_source)
        RETURNING message_id INTO v_message;
        PERFORM mirror.link_read_pointers(v_conversation, p_message_id, v_message);
    ELSE
        UPDATE mirror.dm_message
           SET author_user_id = NULL,
               body_text = NULL,
               attachment_json = NULL,
               external_media_json = NULL,
               created_at = NULL,
               edited_at = NULL,
               deleted_at = p_source_time,
               client_message_id = NULL,
               tombstone = true,
               source_version = p_source_time,
               event_id = p_event_id,
               sync_source = p_sync_source
         WHERE message_id = v_message;
    END IF;

    PERFORM mirror.write_message_audit(v_message, p_event_id, p_event_type, p_source_time,
                                       false, p_performed_by, coalesce(p_payload, '{}'::jsonb));
    PERFORM mirror.refresh_conversation_summary(v_conversation);
    RETURN 'applied';
END
$$;

-- Same signature as V2's: every new follow-edge event is observed, stale or not.
CREATE OR REPLACE FUNCTION mirror.write_follow_edge(
    p_event_id uuid, p_event_type text, p_source_time timestamptz, p_follower_user_id text,
    p_target_user_id text, p_state text, p_source text, p_created_at timestamptz, p_sync_source text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_subject text := 'follows/' || p_follower_user_id || '/targets/' || p_target_user_id;
    v_found boolean;
    v_version timestamptz;
    v_event uuid;
    v_deleted boolean := p_state IS NULL;
BEGIN
    PERFORM mirror.lock_entity('follow:' || p_follower_user_id || '/' || p_target_user_id);

    IF NOT mirror.ledger_insert(p_event_id, p_event_type, v_subject, p_source_time) THEN
        RETURN 'duplicate';
    END IF;

    INSERT INTO mirror.follow_edge_observation (event_id, follower_user_id, target_user_id, source_time, state,
                                                event_type, source, sync_source)
    VALUES (p_event_id, p_follower_user_id, p_target_user_id, p_source_time, p_state,
            p_event_type, p_source, p_sync_source)
    -- A redelivery after its ledger row was pruned: the observation is already there.
    ON CONFLICT (event_id) DO NOTHING;

    SELECT true, source_version, event_id INTO v_found, v_version, v_event
      FROM mirror.follow_edge
     WHERE follower_user_id = p_follower_user_id AND target_user_id = p_target_user_id
       FOR UPDATE;
    IF v_found AND (p_source_time, p_event_id) <= (v_version, v_event) THEN
        RETURN mirror.ledger_stale(p_event_id);
    END IF;

    INSERT INTO mirror.follow_edge AS f (follower_user_id, target_user_id, state, source, created_at, deleted_at,
                                         source_version, event_id, sync_source)
    VALUES (p_follower_user_id, p_target_user_id, p_state,
            CASE WHEN v_deleted THEN NULL ELSE p_source END,
            CASE WHEN v_deleted THEN NULL ELSE p_created_at END,
            CASE WHEN v_deleted THEN p_source_time END,
            p_source_time, p_event_id, p_sync_source)
    ON CONFLICT (follower_user_id, target_user_id) DO UPDATE
       SET state = EXCLUDED.state,
           source = EXCLUDED.source,
           created_at = EXCLUDED.created_at,
           deleted_at = EXCLUDED.deleted_at,
           source_version = EXCLUDED.source_version,
           event_id = EXCLUDED.event_id,
           sync_source = EXCLUDED.sync_source;
    RETURN 'applied';
END
$$;

-- ---------------------------------------------------------------------------
-- The set-based batch.
--
-- Arguments (built by the Rust adapter from `mirror_store::plan::Plan`):
--   p_locks             entity lock names in the plan's global lock order
--                       (`conversation:c`, `block:u/t`, `follow:f/t`), each once;
--   p_ids, p_types, p_subjects, p_times
--                       the ledger rows of every distinct event of the batch;
--   p_conversations, p_messages, p_blocks, p_follows
--                       jsonb arrays, one object per distinct event of the
--                       family, each with `newest` (newer than every earlier
--                       event of its entity in the batch) and `winner` (the
--                       newest event of its entity in the batch).
-- An event is applied iff it is new (not in the ledger), `newest`, and newer
-- than the stored row; only a `winner` can write the current-state row. Every
-- new update/delete message event writes its audit row, every new follow-edge
-- event its observation. The conversation summary is computed once per
-- touched conversation.
--
-- Returns (event id, applied | stale) for every new event; an id not
-- returned was a duplicate. The caller passes contract-validated events (the
-- adapter decodes them with mirror-schema); a row that breaks a table
-- constraint fails the whole call, and the adapter then applies the batch
-- event by event to isolate it.

CREATE FUNCTION mirror.apply_batch(
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
AS $$
DECLARE
    v_lock text;
    v_new uuid[];
    v_conv_written bigint[];
    v_msg_touched bigint[];
BEGIN
    -- 1. Entity locks, in the one global order every writer uses.
    FOREACH v_lock IN ARRAY p_locks LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('realtime-mirror:' || v_lock, 0));
    END LOOP;

    -- 2. The ledger: which events are new.
    WITH ins AS (
        INSERT INTO mirror.applied_event (event_id, event_type, subject, source_time, outcome)
        SELECT l.id, l.type, l.subject, l.t, 'applied'
          FROM unnest(p_ids, p_types, p_subjects, p_times) AS l(id, type, subject, t)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id)
    SELECT coalesce(array_agg(ins.event_id), '{}') INTO v_new FROM ins;
    IF cardinality(v_new) = 0 THEN
        RETURN;
    END IF;

    -- 3. Conversations.
    WITH e AS (
        SELECT x.*
          FROM jsonb_to_recordset(p_conversations) AS x(
               id uuid, "time" timestamptz, cid text, kind text, participants jsonb,
               created timestamptz, updated timestamptz, sync text, newest boolean, winner boolean)
         WHERE x.id = ANY (v_new)),
    judged AS (
        SELECT e.*, (e.newest AND (c.source_version IS NULL
                                   OR (e."time", e.id) > (c.source_version, c.last_event_id))) AS applied
          FROM e LEFT JOIN mirror.dm_conversation AS c ON c.firestore_id = e.cid),
    stale AS (
        UPDATE mirror.applied_event AS a SET outcome = 'stale'
          FROM judged AS j WHERE NOT j.applied AND a.event_id = j.id),
    written AS (
        INSERT INTO mirror.dm_conversation AS c (firestore_id, type, created_at, doc_updated_at, participant_hash,
                                                 is_placeholder, source_version, last_event_id, sync_source)
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
    SELECT coalesce(array_agg(w.conversation_id), '{}') INTO v_conv_written FROM written AS w;

    IF cardinality(v_conv_written) > 0 THEN
        -- The participant list is the document's: replace it.
        DELETE FROM mirror.dm_participant AS p WHERE p.conversation_id = ANY (v_conv_written);
        INSERT INTO mirror.dm_participant (conversation_id, user_id, role, joined_at, mute_state,
                                           read_pointer_message_id, firestore_pointer)
        SELECT c.conversation_id, p."userId", p.role, p."joinedAt", p."muteState", m.message_id,
               p."readPointerMessageId"
          FROM jsonb_to_recordset(p_conversations) AS x(id uuid, cid text, participants jsonb)
          JOIN mirror.dm_conversation AS c
            ON c.firestore_id = x.cid AND c.last_event_id = x.id AND c.conversation_id = ANY (v_conv_written)
         CROSS JOIN LATERAL jsonb_to_recordset(x.participants)
               AS p("userId" text, role text, "joinedAt" timestamptz, "muteState" text, "readPointerMessageId" text)
          LEFT JOIN mirror.dm_message AS m
                 ON m.conversation_id = c.conversation_id AND m.firestore_id = p."readPointerMessageId";
    END IF;

    -- 4. Messages: placeholder parents, rows, audit, read pointers.
    INSERT INTO mirror.dm_conversation (firestore_id, is_placeholder)
    SELECT DISTINCT x.cid, true
      FROM jsonb_to_recordset(p_messages) AS x(id uuid, cid text)
     WHERE x.id = ANY (v_new)
    ON CONFLICT (firestore_id) DO NOTHING;

    WITH e AS (
        SELECT x.*, c.conversation_id AS conv
          FROM jsonb_to_recordset(p_messages) AS x(
               id uuid, type text, "time" timestamptz, cid text, mid text, del boolean,
               author text, body text, attachments jsonb, media jsonb, created timestamptz,
               edited timestamptz, deleted timestamptz, client text, performed_by text, payload jsonb,
               sync text, newest boolean, winner boolean)
          JOIN mirror.dm_conversation AS c ON c.firestore_id = x.cid
         WHERE x.id = ANY (v_new)),
    judged AS (
        SELECT e.*, m.message_id AS existing,
               (e.newest AND (m.message_id IS NULL
                              OR (e."time", e.id) > (m.source_version, m.event_id))) AS applied
          FROM e LEFT JOIN mirror.dm_message AS m ON m.conversation_id = e.conv AND m.firestore_id = e.mid),
    stale AS (
        UPDATE mirror.applied_event AS a SET outcome = 'stale'
          FROM judged AS j WHERE NOT j.applied AND a.event_id = j.id),
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
        INSERT INTO mirror.dm_message (conversation_id, firestore_id, author_user_id, body_text, attachment_json,
                                       external_media_json, created_at, edited_at, deleted_at, client_message_id,
                                       tombstone, source_version, event_id, sync_source)
        SELECT j.conv, j.mid, j.author, j.body, j.attachments, j.media, j.created, j.edited,
               CASE WHEN j.del THEN j."time" ELSE j.deleted END, j.client, j.del, j."time", j.id, j.sync
          FROM judged AS j
         WHERE j.winner AND j.applied AND j.existing IS NULL
        RETURNING message_id, conversation_id, firestore_id),
    pointers AS (
        UPDATE mirror.dm_participant AS p
           SET read_pointer_message_id = i.message_id
          FROM inserted AS i
         WHERE p.conversation_id = i.conversation_id
           AND p.firestore_pointer = i.firestore_id
           AND p.read_pointer_message_id IS DISTINCT FROM i.message_id),
    audit AS (
        INSERT INTO mirror.dm_message_audit (message_id, event_id, action, performed_by, payload_json, created_at)
        SELECT coalesce(j.existing, i.message_id), j.id,
               CASE WHEN j.del THEN 'delete' WHEN j.deleted IS NOT NULL THEN 'soft_delete' ELSE 'edit' END,
               CASE WHEN j.del THEN j.performed_by ELSE j.author END,
               j.payload, j."time"
          FROM judged AS j
          LEFT JOIN inserted AS i ON i.conversation_id = j.conv AND i.firestore_id = j.mid
         WHERE j.type IN ('dm.message.update', 'dm.message.delete')
        ON CONFLICT (event_id) DO NOTHING)
    SELECT coalesce(array_agg(t.conversation_id), '{}') INTO v_msg_touched
      FROM (SELECT u.conversation_id FROM updated AS u
            UNION SELECT i.conversation_id FROM inserted AS i) AS t;

    -- 5. The summary of every conversation this batch changed, once each.
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

    -- 6. Blocks (source NULL = delete: a tombstone).
    WITH e AS (
        SELECT x.*
          FROM jsonb_to_recordset(p_blocks) AS x(
               id uuid, "time" timestamptz, uid text, tid text, created timestamptz, revoked timestamptz,
               source text, sync text, newest boolean, winner boolean)
         WHERE x.id = ANY (v_new)),
    judged AS (
        SELECT e.*, (e.newest AND (b.source_version IS NULL
                                   OR (e."time", e.id) > (b.source_version, b.last_event_id))) AS applied
          FROM e LEFT JOIN mirror.dm_block AS b ON b.user_id = e.uid AND b.target_user_id = e.tid),
    stale AS (
        UPDATE mirror.applied_event AS a SET outcome = 'stale'
          FROM judged AS j WHERE NOT j.applied AND a.event_id = j.id)
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
           sync_source = EXCLUDED.sync_source;

    -- 7. Follow edges (state NULL = delete: a tombstone) and their observations.
    WITH e AS (
        SELECT x.*
          FROM jsonb_to_recordset(p_follows) AS x(
               id uuid, type text, "time" timestamptz, fid text, tid text, state text, source text,
               created timestamptz, sync text, newest boolean, winner boolean)
         WHERE x.id = ANY (v_new)),
    judged AS (
        SELECT e.*, (e.newest AND (f.source_version IS NULL
                                   OR (e."time", e.id) > (f.source_version, f.event_id))) AS applied
          FROM e LEFT JOIN mirror.follow_edge AS f ON f.follower_user_id = e.fid AND f.target_user_id = e.tid),
    stale AS (
        UPDATE mirror.applied_event AS a SET outcome = 'stale'
          FROM judged AS j WHERE NOT j.applied AND a.event_id = j.id),
    observed AS (
        INSERT INTO mirror.follow_edge_observation (event_id, follower_user_id, target_user_id, source_time, state,
                                                    event_type, source, sync_source)
        SELECT j.id, j.fid, j.tid, j."time", j.state, j.type, j.source, j.sync FROM judged AS j
        ON CONFLICT (event_id) DO NOTHING)
    INSERT INTO mirror.follow_edge AS f (follower_user_id, target_user_id, state, source, created_at, deleted_at,
                                         source_version, event_id, sync_source)
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
           sync_source = EXCLUDED.sync_source;

    -- 8. The outcome of every new event, as the ledger now records it.
    RETURN QUERY
    SELECT a.event_id, a.outcome::text FROM mirror.applied_event AS a WHERE a.event_id = ANY (v_new);
END
$$;
