-- realtime-mirror, PostgreSQL: one function per event family.
--
-- These functions ARE the mirror's semantics; `mirror_store::model::Model` is
-- the same thing in plain Rust and the conformance suite and property tests
-- check that the two agree. Each public function:
--
--   1. validates its arguments (see the RM codes below);
--   2. takes transaction-level advisory locks on the entity, always in the
--      order conversation key -> message key, so two writers of one entity
--      serialize and never lose the newer version (a lock-order cycle between
--      two multi-event transactions surfaces as 40P01 for the caller to retry);
--   3. inserts the event id into the ledger `mirror.applied_event`
--      (ON CONFLICT DO NOTHING): an id seen before returns 'duplicate' and
--      writes nothing else;
--   4. compares the event's version `(source_time, event_id)` with the stored
--      `(source_version, event id)`: only a strictly greater version is applied,
--      otherwise it returns 'stale' (the ledger row keeps outcome 'stale');
--   5. writes the row (deletes are tombstones: content nulled, deleted_at = the
--      event time), the audit / follow-event row, the placeholder parent and
--      the conversation summary, and returns 'applied'.
--
-- Everything a function does happens in the caller's transaction: called on
-- its own it is atomic; inside a savepoint, rolling back the savepoint undoes
-- it (and releases its locks).
--
-- Own SQLSTATEs (class RM, all permanent: the same call can never succeed):
--   RM001  the event type is not one this function handles
--   RM002  a required argument is null (event id, event type, time, ids,
--          required payload fields, sync source)
--   RM003  a JSON argument has the wrong shape (participants / attachments /
--          external media not an array, a participant not an object)
--   RM004  an id is not a valid Firestore id (empty, longer than 128
--          characters, `.`/`..`, contains `/` or a control character)
-- Other rejections come from the tables' own constraints (23514 for a value
-- outside an enum, 23505 for a participant listed twice) or from PostgreSQL
-- itself (22021 / 22P05 for text or JSON containing U+0000, which PostgreSQL
-- cannot store).

-- ---------------------------------------------------------------------------
-- Helpers (internal: not part of the contract, may change between versions).

-- The contract's canonical timestamp text: UTC, 6 fractional digits, `Z`.
CREATE FUNCTION mirror.fmt_ts(p_value timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT to_char(p_value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

-- Hex SHA-256 of the user ids sorted bytewise and joined by ',' (the empty
-- string for no participants), as `mirror_store::state::participant_hash`.
CREATE FUNCTION mirror.participant_hash(p_participants jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT encode(sha256(convert_to(coalesce(
        (SELECT string_agg(x ->> 'userId', ',' ORDER BY (x ->> 'userId') COLLATE "C")
           FROM jsonb_array_elements(p_participants) AS x),
        ''), 'UTF8')), 'hex')
$$;

-- The follow_event type of a state transition (null state = no edge / deleted),
-- exactly `mirror_store::model::follow_transition`.
CREATE FUNCTION mirror.follow_transition(p_prev text, p_next text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p_prev IS NOT DISTINCT FROM p_next THEN NULL
        WHEN p_next IS NULL THEN CASE WHEN p_prev = 'blocked' THEN 'unblock' ELSE 'remove' END
        WHEN p_next = 'blocked' THEN 'block'
        WHEN p_prev = 'blocked' THEN 'unblock'
        WHEN p_next = 'pending' THEN 'request'
        WHEN p_next = 'accepted' THEN 'accept'
    END
$$;

-- RM001 / RM002 checks common to every function.
CREATE FUNCTION mirror.check_event(
    p_function text, p_event_id uuid, p_event_type text, p_source_time timestamptz,
    p_sync_source text, p_allowed text[]
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_event_id IS NULL OR p_event_type IS NULL OR p_source_time IS NULL OR p_sync_source IS NULL THEN
        RAISE EXCEPTION '%: event id, event type, source time and sync source are required', p_function
            USING ERRCODE = 'RM002';
    END IF;
    IF NOT (p_event_type = ANY (p_allowed)) THEN
        RAISE EXCEPTION '%: event type `%` is not one of %', p_function, left(p_event_type, 64), p_allowed
            USING ERRCODE = 'RM001';
    END IF;
END
$$;

-- RM002 / RM004: a Firestore document or user id.
CREATE FUNCTION mirror.check_id(p_function text, p_field text, p_value text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION '%: % is required', p_function, p_field USING ERRCODE = 'RM002';
    END IF;
    IF p_value = '' OR char_length(p_value) > 128 OR p_value IN ('.', '..') OR p_value ~ '[/[:cntrl:]]' THEN
        RAISE EXCEPTION '%: % `%` is not a valid Firestore id', p_function, p_field, left(p_value, 40)
            USING ERRCODE = 'RM004';
    END IF;
END
$$;

-- RM002: a required payload field.
CREATE FUNCTION mirror.check_required(p_function text, p_field text, p_is_null boolean) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_is_null THEN
        RAISE EXCEPTION '%: % is required', p_function, p_field USING ERRCODE = 'RM002';
    END IF;
END
$$;

-- RM003: an optional JSON array argument.
CREATE FUNCTION mirror.check_array(p_function text, p_field text, p_value jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_value IS NOT NULL AND jsonb_typeof(p_value) <> 'array' THEN
        RAISE EXCEPTION '%: % must be a JSON array, not %', p_function, p_field, jsonb_typeof(p_value)
            USING ERRCODE = 'RM003';
    END IF;
END
$$;

-- A transaction-level advisory lock on one entity key (64-bit hash; a
-- collision only serializes two unrelated entities).
CREATE FUNCTION mirror.lock_entity(p_key text) RETURNS void
LANGUAGE sql
AS $$ SELECT pg_advisory_xact_lock(hashtextextended('realtime-mirror:' || p_key, 0)) $$;

-- Record the event id in the ledger; false if it was there already.
CREATE FUNCTION mirror.ledger_insert(
    p_event_id uuid, p_event_type text, p_subject text, p_source_time timestamptz
) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_inserted uuid;
BEGIN
    INSERT INTO mirror.applied_event (event_id, event_type, subject, source_time, outcome)
    VALUES (p_event_id, p_event_type, p_subject, p_source_time, 'applied')
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id INTO v_inserted;
    RETURN v_inserted IS NOT NULL;
END
$$;

-- Mark a ledger row stale and return 'stale'.
CREATE FUNCTION mirror.ledger_stale(p_event_id uuid) RETURNS text
LANGUAGE sql
AS $$
    UPDATE mirror.applied_event SET outcome = 'stale' WHERE event_id = p_event_id;
    SELECT 'stale'::text
$$;

-- The conversation's surrogate key, creating a placeholder row if the
-- conversation has not arrived yet. Caller holds the conversation lock.
CREATE FUNCTION mirror.ensure_conversation(p_firestore_id text) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT conversation_id INTO v_id FROM mirror.dm_conversation WHERE firestore_id = p_firestore_id;
    IF v_id IS NULL THEN
        INSERT INTO mirror.dm_conversation (firestore_id, is_placeholder)
        VALUES (p_firestore_id, true)
        ON CONFLICT (firestore_id) DO NOTHING
        RETURNING conversation_id INTO v_id;
        IF v_id IS NULL THEN
            SELECT conversation_id INTO v_id FROM mirror.dm_conversation WHERE firestore_id = p_firestore_id;
        END IF;
    END IF;
    RETURN v_id;
END
$$;

-- last_message_id / last_message_at from the newest live message (deleted_at
-- null), ordered by (created_at, firestore_id); updated_at =
-- greatest(doc_updated_at, last_message_at) (greatest ignores nulls).
CREATE FUNCTION mirror.refresh_conversation_summary(p_conversation_id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_message_id bigint;
    v_message_at timestamptz;
BEGIN
    SELECT m.message_id, m.created_at INTO v_message_id, v_message_at
      FROM mirror.dm_message AS m
     WHERE m.conversation_id = p_conversation_id
       AND m.deleted_at IS NULL
       AND m.created_at IS NOT NULL
     ORDER BY m.created_at DESC, m.firestore_id DESC
     LIMIT 1;
    UPDATE mirror.dm_conversation AS c
       SET last_message_id = v_message_id,
           last_message_at = v_message_at,
           updated_at = greatest(c.doc_updated_at, v_message_at)
     WHERE c.conversation_id = p_conversation_id
       AND (c.last_message_id, c.last_message_at, c.updated_at)
           IS DISTINCT FROM (v_message_id, v_message_at, greatest(c.doc_updated_at, v_message_at));
END
$$;

-- A new message row may be the target of participants' read pointers that
-- arrived first: link them.
CREATE FUNCTION mirror.link_read_pointers(p_conversation_id bigint, p_firestore_id text, p_message_id bigint)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE mirror.dm_participant
       SET read_pointer_message_id = p_message_id
     WHERE conversation_id = p_conversation_id
       AND firestore_pointer = p_firestore_id
       AND read_pointer_message_id IS DISTINCT FROM p_message_id
$$;

-- ---------------------------------------------------------------------------
-- dm.conversation.create / .update

CREATE FUNCTION mirror.sp_store_mirror_upsert_dm_conversation(
    p_event_id        uuid,
    p_event_type      text,
    p_source_time     timestamptz,
    p_conversation_id text,         -- Firestore id
    p_type            text,         -- direct | group
    p_participants    jsonb,        -- [{userId, role, joinedAt, muteState, readPointerMessageId?}]
    p_created_at      timestamptz,
    p_updated_at      timestamptz,  -- the document's updatedAt (doc_updated_at)
    p_sync_source     text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_upsert_dm_conversation';
    v_id bigint;
    v_version timestamptz;
    v_event uuid;
    v_hash text;
    v_bad text;
BEGIN
    PERFORM mirror.check_event(c_fn, p_event_id, p_event_type, p_source_time, p_sync_source,
                               ARRAY['dm.conversation.create', 'dm.conversation.update']);
    PERFORM mirror.check_id(c_fn, 'conversation id', p_conversation_id);
    PERFORM mirror.check_required(c_fn, 'type', p_type IS NULL);
    PERFORM mirror.check_required(c_fn, 'participants', p_participants IS NULL);
    PERFORM mirror.check_required(c_fn, 'createdAt', p_created_at IS NULL);
    PERFORM mirror.check_required(c_fn, 'updatedAt', p_updated_at IS NULL);
    PERFORM mirror.check_array(c_fn, 'participants', p_participants);
    SELECT jsonb_typeof(x) INTO v_bad FROM jsonb_array_elements(p_participants) AS x
     WHERE jsonb_typeof(x) <> 'object' LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION '%: every participant must be a JSON object, not %', c_fn, v_bad USING ERRCODE = 'RM003';
    END IF;

    PERFORM mirror.lock_entity('conversation:' || p_conversation_id);

    IF NOT mirror.ledger_insert(p_event_id, p_event_type, 'conversations/' || p_conversation_id, p_source_time) THEN
        RETURN 'duplicate';
    END IF;

    SELECT conversation_id, source_version, last_event_id INTO v_id, v_version, v_event
      FROM mirror.dm_conversation WHERE firestore_id = p_conversation_id FOR UPDATE;
    -- A placeholder has no version: any event completes it.
    IF v_version IS NOT NULL AND (p_source_time, p_event_id) <= (v_version, v_event) THEN
        RETURN mirror.ledger_stale(p_event_id);
    END IF;

    v_hash := mirror.participant_hash(p_participants);
    IF v_id IS NULL THEN
        INSERT INTO mirror.dm_conversation (firestore_id, type, created_at, doc_updated_at, participant_hash,
                                            is_placeholder, source_version, last_event_id, sync_source)
        VALUES (p_conversation_id, p_type, p_created_at, p_updated_at, v_hash,
                false, p_source_time, p_event_id, p_sync_source)
        RETURNING conversation_id INTO v_id;
    ELSE
        UPDATE mirror.dm_conversation
           SET type = p_type,
               created_at = p_created_at,
               doc_updated_at = p_updated_at,
               participant_hash = v_hash,
               is_placeholder = false,
               source_version = p_source_time,
               last_event_id = p_event_id,
               sync_source = p_sync_source
         WHERE conversation_id = v_id;
    END IF;

    -- The participant list is the document's: replace it.
    DELETE FROM mirror.dm_participant WHERE conversation_id = v_id;
    INSERT INTO mirror.dm_participant (conversation_id, user_id, role, joined_at, mute_state,
                                       read_pointer_message_id, firestore_pointer)
    SELECT v_id, p."userId", p.role, p."joinedAt", p."muteState", m.message_id, p."readPointerMessageId"
      FROM jsonb_to_recordset(p_participants)
           AS p("userId" text, role text, "joinedAt" timestamptz, "muteState" text, "readPointerMessageId" text)
      LEFT JOIN mirror.dm_message AS m
             ON m.conversation_id = v_id AND m.firestore_id = p."readPointerMessageId";

    PERFORM mirror.refresh_conversation_summary(v_id);
    RETURN 'applied';
END
$$;

-- ---------------------------------------------------------------------------
-- dm.message.create / .update

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
    p_sync_source       text
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

    -- Audit: an applied update is an edit, or a soft delete if it sets deletedAt.
    IF p_event_type = 'dm.message.update' THEN
        INSERT INTO mirror.dm_message_audit (message_id, event_id, action, performed_by, payload_json, created_at)
        VALUES (v_message, p_event_id,
                CASE WHEN p_deleted_at IS NOT NULL THEN 'soft_delete' ELSE 'edit' END,
                p_author_user_id,
                jsonb_build_object(
                    'authorUserId', p_author_user_id,
                    'bodyText', p_body_text,
                    'attachments', p_attachments,
                    'externalMedia', p_external_media,
                    'createdAt', mirror.fmt_ts(p_created_at),
                    'editedAt', mirror.fmt_ts(p_edited_at),
                    'deletedAt', mirror.fmt_ts(p_deleted_at),
                    'clientMessageId', p_client_message_id),
                p_source_time);
    END IF;

    PERFORM mirror.refresh_conversation_summary(v_conversation);
    RETURN 'applied';
END
$$;

-- ---------------------------------------------------------------------------
-- dm.message.delete (a hard delete of the document: a tombstone here)

CREATE FUNCTION mirror.sp_store_mirror_delete_dm_message(
    p_event_id        uuid,
    p_event_type      text,
    p_source_time     timestamptz,
    p_conversation_id text,
    p_message_id      text,
    p_performed_by    text,   -- optional
    p_sync_source     text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_delete_dm_message';
    v_conversation bigint;
    v_prior mirror.dm_message%ROWTYPE;
    v_message bigint;
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

    SELECT * INTO v_prior
      FROM mirror.dm_message
     WHERE conversation_id = v_conversation AND firestore_id = p_message_id
       FOR UPDATE;
    v_message := v_prior.message_id;
    IF v_message IS NOT NULL AND (p_source_time, p_event_id) <= (v_prior.source_version, v_prior.event_id) THEN
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

    INSERT INTO mirror.dm_message_audit (message_id, event_id, action, performed_by, payload_json, created_at)
    VALUES (v_message, p_event_id, 'delete', p_performed_by,
            CASE WHEN v_prior.message_id IS NULL THEN NULL ELSE to_jsonb(v_prior) END,
            p_source_time);

    PERFORM mirror.refresh_conversation_summary(v_conversation);
    RETURN 'applied';
END
$$;

-- ---------------------------------------------------------------------------
-- dm.block.*

-- Shared body of the block functions; p_source null = delete (tombstone).
CREATE FUNCTION mirror.write_dm_block(
    p_event_id uuid, p_event_type text, p_source_time timestamptz, p_user_id text, p_target_user_id text,
    p_created_at timestamptz, p_revoked_at timestamptz, p_source text, p_sync_source text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_version timestamptz;
    v_event uuid;
    v_deleted boolean := p_source IS NULL;
BEGIN
    PERFORM mirror.lock_entity('block:' || p_user_id || '/' || p_target_user_id);

    IF NOT mirror.ledger_insert(p_event_id, p_event_type,
                                'blocks/' || p_user_id || '/targets/' || p_target_user_id, p_source_time) THEN
        RETURN 'duplicate';
    END IF;

    SELECT source_version, last_event_id INTO v_version, v_event
      FROM mirror.dm_block
     WHERE user_id = p_user_id AND target_user_id = p_target_user_id
       FOR UPDATE;
    IF v_version IS NOT NULL AND (p_source_time, p_event_id) <= (v_version, v_event) THEN
        RETURN mirror.ledger_stale(p_event_id);
    END IF;

    INSERT INTO mirror.dm_block AS b (user_id, target_user_id, created_at, revoked_at, source, deleted_at,
                                      source_version, last_event_id, sync_source)
    VALUES (p_user_id, p_target_user_id,
            CASE WHEN v_deleted THEN NULL ELSE p_created_at END,
            CASE WHEN v_deleted THEN NULL ELSE p_revoked_at END,
            p_source,
            CASE WHEN v_deleted THEN p_source_time END,
            p_source_time, p_event_id, p_sync_source)
    ON CONFLICT (user_id, target_user_id) DO UPDATE
       SET created_at = EXCLUDED.created_at,
           revoked_at = EXCLUDED.revoked_at,
           source = EXCLUDED.source,
           deleted_at = EXCLUDED.deleted_at,
           source_version = EXCLUDED.source_version,
           last_event_id = EXCLUDED.last_event_id,
           sync_source = EXCLUDED.sync_source;
    RETURN 'applied';
END
$$;

CREATE FUNCTION mirror.sp_store_mirror_upsert_dm_block(
    p_event_id       uuid,
    p_event_type     text,
    p_source_time    timestamptz,
    p_user_id        text,         -- the blocking user
    p_target_user_id text,
    p_created_at     timestamptz,
    p_revoked_at     timestamptz,  -- optional
    p_source         text,         -- client | admin
    p_sync_source    text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_upsert_dm_block';
BEGIN
    PERFORM mirror.check_event(c_fn, p_event_id, p_event_type, p_source_time, p_sync_source,
                               ARRAY['dm.block.create', 'dm.block.update']);
    PERFORM mirror.check_id(c_fn, 'user id', p_user_id);
    PERFORM mirror.check_id(c_fn, 'target user id', p_target_user_id);
    PERFORM mirror.check_required(c_fn, 'createdAt', p_created_at IS NULL);
    PERFORM mirror.check_required(c_fn, 'source', p_source IS NULL);
    RETURN mirror.write_dm_block(p_event_id, p_event_type, p_source_time, p_user_id, p_target_user_id,
                                 p_created_at, p_revoked_at, p_source, p_sync_source);
END
$$;

CREATE FUNCTION mirror.sp_store_mirror_delete_dm_block(
    p_event_id       uuid,
    p_event_type     text,
    p_source_time    timestamptz,
    p_user_id        text,
    p_target_user_id text,
    p_sync_source    text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_delete_dm_block';
BEGIN
    PERFORM mirror.check_event(c_fn, p_event_id, p_event_type, p_source_time, p_sync_source,
                               ARRAY['dm.block.delete']);
    PERFORM mirror.check_id(c_fn, 'user id', p_user_id);
    PERFORM mirror.check_id(c_fn, 'target user id', p_target_user_id);
    RETURN mirror.write_dm_block(p_event_id, p_event_type, p_source_time, p_user_id, p_target_user_id,
                                 NULL, NULL, NULL, p_sync_source);
END
$$;

-- ---------------------------------------------------------------------------
-- follow.edge.*

-- Shared body of the follow-edge functions; p_state null = delete (tombstone).
-- Every applied change that is a state transition writes one follow_event.
CREATE FUNCTION mirror.write_follow_edge(
    p_event_id uuid, p_event_type text, p_source_time timestamptz, p_follower_user_id text,
    p_target_user_id text, p_state text, p_source text, p_created_at timestamptz, p_sync_source text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_subject text := 'follows/' || p_follower_user_id || '/targets/' || p_target_user_id;
    v_found boolean;
    v_prev_state text;
    v_version timestamptz;
    v_event uuid;
    v_transition text;
    v_deleted boolean := p_state IS NULL;
BEGIN
    PERFORM mirror.lock_entity('follow:' || p_follower_user_id || '/' || p_target_user_id);

    IF NOT mirror.ledger_insert(p_event_id, p_event_type, v_subject, p_source_time) THEN
        RETURN 'duplicate';
    END IF;

    SELECT true, state, source_version, event_id INTO v_found, v_prev_state, v_version, v_event
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

    v_transition := mirror.follow_transition(v_prev_state, p_state);
    IF v_transition IS NOT NULL THEN
        INSERT INTO mirror.follow_event (event_id, follower_user_id, target_user_id, event_type, created_at,
                                         correlation_id, metadata_json)
        VALUES (p_event_id, p_follower_user_id, p_target_user_id, v_transition, p_source_time, v_subject,
                jsonb_build_object('from', v_prev_state, 'to', p_state, 'eventType', p_event_type,
                                   'source', p_source, 'syncSource', p_sync_source));
    END IF;
    RETURN 'applied';
END
$$;

CREATE FUNCTION mirror.sp_store_mirror_upsert_follow_edge(
    p_event_id         uuid,
    p_event_type       text,
    p_source_time      timestamptz,
    p_follower_user_id text,
    p_target_user_id   text,
    p_state            text,         -- pending | accepted | blocked
    p_source           text,         -- mobile | web | admin
    p_created_at       timestamptz,
    p_sync_source      text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_upsert_follow_edge';
BEGIN
    PERFORM mirror.check_event(c_fn, p_event_id, p_event_type, p_source_time, p_sync_source,
                               ARRAY['follow.edge.create', 'follow.edge.update']);
    PERFORM mirror.check_id(c_fn, 'follower user id', p_follower_user_id);
    PERFORM mirror.check_id(c_fn, 'target user id', p_target_user_id);
    PERFORM mirror.check_required(c_fn, 'state', p_state IS NULL);
    PERFORM mirror.check_required(c_fn, 'source', p_source IS NULL);
    PERFORM mirror.check_required(c_fn, 'createdAt', p_created_at IS NULL);
    RETURN mirror.write_follow_edge(p_event_id, p_event_type, p_source_time, p_follower_user_id, p_target_user_id,
                                    p_state, p_source, p_created_at, p_sync_source);
END
$$;

CREATE FUNCTION mirror.sp_store_mirror_delete_follow_edge(
    p_event_id         uuid,
    p_event_type       text,
    p_source_time      timestamptz,
    p_follower_user_id text,
    p_target_user_id   text,
    p_sync_source      text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    c_fn constant text := 'sp_store_mirror_delete_follow_edge';
BEGIN
    PERFORM mirror.check_event(c_fn, p_event_id, p_event_type, p_source_time, p_sync_source,
                               ARRAY['follow.edge.delete']);
    PERFORM mirror.check_id(c_fn, 'follower user id', p_follower_user_id);
    PERFORM mirror.check_id(c_fn, 'target user id', p_target_user_id);
    RETURN mirror.write_follow_edge(p_event_id, p_event_type, p_source_time, p_follower_user_id, p_target_user_id,
                                    NULL, NULL, NULL, p_sync_source);
END
$$;
