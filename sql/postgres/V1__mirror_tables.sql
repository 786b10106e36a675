-- realtime-mirror, PostgreSQL: the mirror tables (schema `mirror`).
--
-- Naming follows shared/event-contract.md ("SQL naming"): the SQL Server
-- plan's names in snake_case. Every timestamp is `timestamptz` (microsecond
-- precision, the contract's). Firestore ids are `varchar(128) COLLATE "C"`:
-- byte order, so that ORDER BY firestore_id agrees with the reference model
-- (Rust `String` order) whatever the database's default collation is.
--
-- Versioning columns on every mirrored entity: `source_version` (the event
-- `time`) and the event id (`last_event_id` / `event_id`); together they are the
-- entity's version `(source_version, event_id)` that the functions in
-- V2__mirror_functions.sql compare. `sync_source` records which producer the
-- stored version came from (the scheme of the CloudEvents `source`).

CREATE SCHEMA IF NOT EXISTS mirror;

CREATE TABLE mirror.dm_conversation (
    conversation_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    firestore_id      varchar(128) COLLATE "C" NOT NULL,
    type              varchar(16),
    created_at        timestamptz,
    -- greatest(doc_updated_at, last_message_at): derived.
    updated_at        timestamptz,
    -- the conversation document's own `updatedAt`.
    doc_updated_at    timestamptz,
    -- newest live message (derived from dm_message, never from the payload);
    -- the foreign key is added below, once dm_message exists.
    last_message_id   bigint,
    last_message_at   timestamptz,
    participant_hash  char(64),
    is_placeholder    boolean NOT NULL DEFAULT false,
    source_version    timestamptz,
    last_event_id     uuid,
    sync_source       varchar(32),
    CONSTRAINT uq_dm_conversation_firestore_id UNIQUE (firestore_id),
    CONSTRAINT ck_dm_conversation_type CHECK (type IN ('direct', 'group')),
    CONSTRAINT ck_dm_conversation_version CHECK ((source_version IS NULL) = (last_event_id IS NULL)),
    -- a placeholder has no version and no content; a real row has both.
    CONSTRAINT ck_dm_conversation_placeholder CHECK (
        (is_placeholder AND source_version IS NULL AND type IS NULL AND created_at IS NULL AND doc_updated_at IS NULL AND participant_hash IS NULL)
        OR (NOT is_placeholder AND source_version IS NOT NULL AND type IS NOT NULL AND created_at IS NOT NULL AND doc_updated_at IS NOT NULL AND participant_hash IS NOT NULL))
);

CREATE TABLE mirror.dm_participant (
    conversation_id          bigint NOT NULL REFERENCES mirror.dm_conversation (conversation_id),
    user_id                  varchar(128) COLLATE "C" NOT NULL,
    role                     varchar(16) NOT NULL,
    joined_at                timestamptz NOT NULL,
    mute_state               varchar(16) NOT NULL,
    -- the read pointer's message, once that message is mirrored (may arrive later).
    read_pointer_message_id  bigint,
    -- the read pointer as Firestore sent it (`readPointerMessageId`): the source of truth.
    firestore_pointer        varchar(128) COLLATE "C",
    PRIMARY KEY (conversation_id, user_id),
    CONSTRAINT ck_dm_participant_role CHECK (role IN ('owner', 'member')),
    CONSTRAINT ck_dm_participant_mute_state CHECK (mute_state IN ('none', 'muted')),
    CONSTRAINT ck_dm_participant_pointer CHECK (read_pointer_message_id IS NULL OR firestore_pointer IS NOT NULL)
);

CREATE TABLE mirror.dm_message (
    message_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id      bigint NOT NULL REFERENCES mirror.dm_conversation (conversation_id),
    firestore_id         varchar(128) COLLATE "C" NOT NULL,
    author_user_id       varchar(128) COLLATE "C",
    body_text            text,
    attachment_json      jsonb,
    external_media_json  jsonb,
    created_at           timestamptz,
    edited_at            timestamptz,
    -- soft delete (payload `deletedAt`) or hard delete (the delete event's time).
    deleted_at           timestamptz,
    client_message_id    varchar(128) COLLATE "C",
    -- true after a hard delete: content nulled, deleted_at = event time.
    tombstone            boolean NOT NULL DEFAULT false,
    source_version       timestamptz NOT NULL,
    event_id             uuid NOT NULL,
    sync_source          varchar(32) NOT NULL,
    CONSTRAINT uq_dm_message_conversation_firestore_id UNIQUE (conversation_id, firestore_id),
    CONSTRAINT ck_dm_message_attachment_json CHECK (attachment_json IS NULL OR jsonb_typeof(attachment_json) = 'array'),
    CONSTRAINT ck_dm_message_external_media_json CHECK (external_media_json IS NULL OR jsonb_typeof(external_media_json) = 'array'),
    CONSTRAINT ck_dm_message_tombstone CHECK (
        (tombstone AND deleted_at IS NOT NULL AND author_user_id IS NULL AND body_text IS NULL AND attachment_json IS NULL
            AND external_media_json IS NULL AND created_at IS NULL AND edited_at IS NULL AND client_message_id IS NULL)
        OR (NOT tombstone AND author_user_id IS NOT NULL AND body_text IS NOT NULL AND created_at IS NOT NULL))
);

CREATE INDEX ix_dm_message_conversation_created ON mirror.dm_message (conversation_id, created_at);

ALTER TABLE mirror.dm_conversation
    ADD CONSTRAINT fk_dm_conversation_last_message
    FOREIGN KEY (last_message_id) REFERENCES mirror.dm_message (message_id)
    DEFERRABLE INITIALLY IMMEDIATE;

ALTER TABLE mirror.dm_participant
    ADD CONSTRAINT fk_dm_participant_read_pointer
    FOREIGN KEY (read_pointer_message_id) REFERENCES mirror.dm_message (message_id);

CREATE TABLE mirror.dm_message_audit (
    audit_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    bigint NOT NULL REFERENCES mirror.dm_message (message_id),
    event_id      uuid NOT NULL,
    action        varchar(16) NOT NULL,
    performed_by  varchar(128) COLLATE "C",
    -- edits and soft deletes: the new payload; hard deletes: the prior row (null if none).
    payload_json  jsonb,
    created_at    timestamptz NOT NULL,
    CONSTRAINT uq_dm_message_audit_event_id UNIQUE (event_id),
    CONSTRAINT ck_dm_message_audit_action CHECK (action IN ('edit', 'soft_delete', 'delete'))
);

CREATE INDEX ix_dm_message_audit_message ON mirror.dm_message_audit (message_id);

CREATE TABLE mirror.dm_block (
    user_id         varchar(128) COLLATE "C" NOT NULL,
    target_user_id  varchar(128) COLLATE "C" NOT NULL,
    created_at      timestamptz,
    revoked_at      timestamptz,
    source          varchar(16),
    deleted_at      timestamptz,
    source_version  timestamptz NOT NULL,
    last_event_id   uuid NOT NULL,
    sync_source     varchar(32) NOT NULL,
    PRIMARY KEY (user_id, target_user_id),
    CONSTRAINT ck_dm_block_source CHECK (source IN ('client', 'admin')),
    CONSTRAINT ck_dm_block_tombstone CHECK (
        (deleted_at IS NOT NULL AND created_at IS NULL AND revoked_at IS NULL AND source IS NULL)
        OR (deleted_at IS NULL AND created_at IS NOT NULL AND source IS NOT NULL))
);

CREATE TABLE mirror.follow_edge (
    follower_user_id  varchar(128) COLLATE "C" NOT NULL,
    target_user_id    varchar(128) COLLATE "C" NOT NULL,
    state             varchar(16),
    source            varchar(16),
    created_at        timestamptz,
    deleted_at        timestamptz,
    source_version    timestamptz NOT NULL,
    event_id          uuid NOT NULL,
    sync_source       varchar(32) NOT NULL,
    -- reserved for producers that retry follow side effects; the mirror never changes it.
    retry_count       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (follower_user_id, target_user_id),
    CONSTRAINT ck_follow_edge_state CHECK (state IN ('pending', 'accepted', 'blocked')),
    CONSTRAINT ck_follow_edge_source CHECK (source IN ('mobile', 'web', 'admin')),
    CONSTRAINT ck_follow_edge_retry_count CHECK (retry_count >= 0),
    CONSTRAINT ck_follow_edge_tombstone CHECK (
        (deleted_at IS NOT NULL AND state IS NULL AND source IS NULL AND created_at IS NULL)
        OR (deleted_at IS NULL AND state IS NOT NULL AND source IS NOT NULL AND created_at IS NOT NULL))
);

-- One row per applied follow-edge change that is a state transition.
CREATE TABLE mirror.follow_event (
    event_id          uuid PRIMARY KEY,
    follower_user_id  varchar(128) COLLATE "C" NOT NULL,
    target_user_id    varchar(128) COLLATE "C" NOT NULL,
    event_type        varchar(16) NOT NULL,
    created_at        timestamptz NOT NULL,
    -- the edge's subject (`follows/{follower}/targets/{target}`), to correlate one edge's events.
    correlation_id    varchar(300) COLLATE "C",
    -- {"from": prior state or null, "to": new state or null, "eventType": ..., "source": ...}
    metadata_json     jsonb,
    CONSTRAINT ck_follow_event_event_type CHECK (event_type IN ('request', 'accept', 'remove', 'block', 'unblock'))
);

CREATE INDEX ix_follow_event_edge ON mirror.follow_event (follower_user_id, target_user_id, created_at);

CREATE TABLE mirror.realtime_mirror_checkpoint (
    module             varchar(64) NOT NULL,
    shard              varchar(128) NOT NULL,
    last_processed_at  timestamptz,
    cursor_token       bytea,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (module, shard)
);

CREATE TABLE mirror.realtime_mirror_dead_letter (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the event id, or `sha256:<hex of the body>` when the body had no usable id.
    dead_letter_key   varchar(200) NOT NULL,
    event_id          uuid,
    event_type        text,
    subject           text,
    payload           text NOT NULL,
    reason            varchar(64) NOT NULL,
    error             text NOT NULL,
    attempts          integer NOT NULL,
    subscription      varchar(128) NOT NULL,
    first_failed_at   timestamptz NOT NULL,
    last_failed_at    timestamptz NOT NULL,
    replay_count      integer NOT NULL DEFAULT 0,
    last_replayed_at  timestamptz,
    -- JSON array of replay timestamps (RFC 3339 strings), oldest first.
    replay_history    jsonb NOT NULL DEFAULT '[]'::jsonb,
    CONSTRAINT uq_realtime_mirror_dead_letter_key UNIQUE (dead_letter_key),
    CONSTRAINT ck_realtime_mirror_dead_letter_attempts CHECK (attempts >= 0),
    CONSTRAINT ck_realtime_mirror_dead_letter_replay_count CHECK (replay_count >= 0),
    CONSTRAINT ck_realtime_mirror_dead_letter_history CHECK (jsonb_typeof(replay_history) = 'array')
);

CREATE INDEX ix_realtime_mirror_dead_letter_last_failed ON mirror.realtime_mirror_dead_letter (last_failed_at DESC);

CREATE TABLE mirror.realtime_mirror_metrics (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at  timestamptz NOT NULL,
    module       varchar(64) NOT NULL,
    metric       varchar(128) NOT NULL,
    value        double precision NOT NULL
);

CREATE INDEX ix_realtime_mirror_metrics_metric ON mirror.realtime_mirror_metrics (module, metric, recorded_at);

-- The applied-event ledger: one row per event id ever seen (applied or stale),
-- so that a repeated id is a no-op even after the entity moved on.
CREATE TABLE mirror.applied_event (
    event_id     uuid PRIMARY KEY,
    event_type   varchar(64) NOT NULL,
    subject      varchar(300) COLLATE "C" NOT NULL,
    source_time  timestamptz NOT NULL,
    outcome      varchar(16) NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_applied_event_event_type CHECK (event_type IN (
        'dm.conversation.create', 'dm.conversation.update',
        'dm.message.create', 'dm.message.update', 'dm.message.delete',
        'dm.block.create', 'dm.block.update', 'dm.block.delete',
        'follow.edge.create', 'follow.edge.update', 'follow.edge.delete')),
    CONSTRAINT ck_applied_event_outcome CHECK (outcome IN ('applied', 'stale'))
);
