//! PostgreSQL side of [`ChecksumStore`]: bucket checksums computed by one
//! `GROUP BY` query inside the database (SHA-256 of the key and of the
//! canonical row text, see [`crate::checksum`]), leaf reads, and the
//! preparation of repair events (`mirror.prepare_repair`,
//! `sql/postgres/V5__consistency_repair.sql`).

use chrono::{DateTime, Utc};
use mirror_schema::MirrorEvent;

use super::{error, PgStore};
use crate::checksum::{BucketSum, ChecksumStore, Dialect, Scope, StoredRow, Table, MAX_LEVEL};
use crate::StoreError;

/// Per table: a query of `key`, `bkey` (the bucket key), the canonical fields `f0..fN`, `live`,
/// `version` and `conv` (the conversation id, for `--conversation`).
fn rows_sql(table: Table) -> &'static str {
    match table {
        Table::DmConversation => {
            "SELECT c.firestore_id::text AS key,
                    c.firestore_id::text AS bkey,
                    mirror.fmt_ts(c.source_version) AS f0,
                    CASE WHEN c.is_placeholder THEN 'placeholder' ELSE 'live' END AS f1,
                    c.type::text AS f2,
                    mirror.fmt_ts(c.created_at) AS f3,
                    mirror.fmt_ts(c.doc_updated_at) AS f4,
                    CASE WHEN c.is_placeholder THEN NULL ELSE coalesce((
                        SELECT string_agg(p.user_id || ',' || p.role || ',' || mirror.fmt_ts(p.joined_at) || ','
                                          || p.mute_state || ',' || coalesce(p.firestore_pointer, chr(30)),
                                          ';' ORDER BY p.user_id)
                          FROM mirror.dm_participant AS p
                         WHERE p.conversation_id = c.conversation_id), '') END AS f5,
                    NOT c.is_placeholder AS live,
                    c.source_version AS version,
                    c.firestore_id::text AS conv
               FROM mirror.dm_conversation AS c"
        }
        Table::DmMessage => {
            "SELECT (c.firestore_id || '/' || m.firestore_id)::text AS key,
                    m.firestore_id::text AS bkey,
                    mirror.fmt_ts(m.source_version) AS f0,
                    CASE WHEN m.tombstone THEN 'tombstone' ELSE 'live' END AS f1,
                    m.author_user_id::text AS f2,
                    m.body_text AS f3,
                    m.attachment_json::text AS f4,
                    m.external_media_json::text AS f5,
                    mirror.fmt_ts(m.created_at) AS f6,
                    mirror.fmt_ts(m.edited_at) AS f7,
                    mirror.fmt_ts(m.deleted_at) AS f8,
                    m.client_message_id::text AS f9,
                    NOT m.tombstone AS live,
                    m.source_version AS version,
                    c.firestore_id::text AS conv
               FROM mirror.dm_message AS m
               JOIN mirror.dm_conversation AS c ON c.conversation_id = m.conversation_id"
        }
        Table::DmBlock => {
            "SELECT (b.user_id || '/' || b.target_user_id)::text AS key,
                    (b.user_id || '/' || b.target_user_id)::text AS bkey,
                    mirror.fmt_ts(b.source_version) AS f0,
                    CASE WHEN b.deleted_at IS NULL THEN 'live' ELSE 'tombstone' END AS f1,
                    mirror.fmt_ts(b.created_at) AS f2,
                    mirror.fmt_ts(b.revoked_at) AS f3,
                    b.source::text AS f4,
                    b.deleted_at IS NULL AS live,
                    b.source_version AS version,
                    NULL::text AS conv
               FROM mirror.dm_block AS b"
        }
        Table::FollowEdge => {
            "SELECT (f.follower_user_id || '/' || f.target_user_id)::text AS key,
                    (f.follower_user_id || '/' || f.target_user_id)::text AS bkey,
                    mirror.fmt_ts(f.source_version) AS f0,
                    CASE WHEN f.deleted_at IS NULL THEN 'live' ELSE 'tombstone' END AS f1,
                    f.state::text AS f2,
                    f.source::text AS f3,
                    mirror.fmt_ts(f.created_at) AS f4,
                    f.deleted_at IS NULL AS live,
                    f.source_version AS version,
                    NULL::text AS conv
               FROM mirror.follow_edge AS f"
        }
    }
}

/// `concat_ws` of the fields with NULL spelled as the null mark.
fn row_text_sql(table: Table) -> String {
    let fields: Vec<String> = (0..table.fields().len())
        .map(|i| format!("coalesce(r.f{i}, chr(30))"))
        .collect();
    format!("concat_ws(chr(31), {})", fields.join(", "))
}

/// The bucket of a key hash `kh` (bytea) at `level`: its first `level + 1` bytes as an int.
fn bucket_sql(level: u8) -> String {
    let n = usize::from(level.min(MAX_LEVEL)) + 1;
    format!(
        "('x' || encode(substring(kh FROM 1 FOR {n}), 'hex'))::bit({})::int",
        8 * n
    )
}

fn half_sql(from: usize) -> String {
    format!("('x00000000' || encode(substring(rh FROM {from} FOR 4), 'hex'))::bit(64)::bigint")
}

fn bucket_sums_sql(table: Table, level: u8, with_parents: bool) -> String {
    let parent = if with_parents && level > 0 {
        format!("WHERE {} = ANY($3::int[])", bucket_sql(level - 1))
    } else {
        String::new()
    };
    format!(
        "WITH r AS ({rows}),
         h AS (SELECT sha256(convert_to(r.bkey, 'UTF8')) AS kh,
                      sha256(convert_to({text}, 'UTF8')) AS rh
                 FROM r
                WHERE r.live
                  AND ($1::timestamptz IS NULL OR r.version >= $1)
                  AND ($2::text IS NULL OR r.conv = $2))
         SELECT {bucket} AS b, count(*)::bigint,
                (sum({high}) % 4294967296)::bigint, (sum({low}) % 4294967296)::bigint
           FROM h {parent}
          GROUP BY 1",
        rows = rows_sql(table),
        text = row_text_sql(table),
        bucket = bucket_sql(level),
        high = half_sql(1),
        low = half_sql(5),
    )
}

fn select_fields(table: Table) -> String {
    (0..table.fields().len())
        .map(|i| format!("r.f{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rows_in_buckets_sql(table: Table, level: u8) -> String {
    format!(
        "WITH r AS ({rows})
         SELECT r.key, {fields}
           FROM r, LATERAL (SELECT sha256(convert_to(r.bkey, 'UTF8')) AS kh) AS k
          WHERE ($1::text IS NULL OR r.conv = $1)
            AND {bucket} = ANY($2::int[])",
        rows = rows_sql(table),
        fields = select_fields(table),
        bucket = bucket_sql(level).replace("kh", "k.kh"),
    )
}

fn rows_by_key_sql(table: Table) -> String {
    format!(
        "WITH r AS ({rows}) SELECT r.key, {fields} FROM r WHERE r.key = ANY($1::text[])",
        rows = rows_sql(table),
        fields = select_fields(table),
    )
}

fn stored_rows(table: Table, rows: Vec<tokio_postgres::Row>) -> Result<Vec<StoredRow>, StoreError> {
    let n = table.fields().len();
    rows.into_iter()
        .map(|row| {
            let key: String = row.try_get(0).map_err(error::pg)?;
            let fields = (1..=n)
                .map(|i| row.try_get::<_, Option<String>>(i).map_err(error::pg))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(StoredRow { key, fields })
        })
        .collect()
}

fn buckets_param(buckets: &[u32]) -> Vec<i32> {
    buckets.iter().map(|&b| b as i32).collect()
}

impl ChecksumStore for PgStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn bucket_sums(
        &self,
        table: Table,
        scope: &Scope,
        level: u8,
        parents: Option<&[u32]>,
    ) -> Result<Vec<(u32, BucketSum)>, StoreError> {
        let client = self.client().await?;
        let sql = bucket_sums_sql(table, level, parents.is_some());
        let since: Option<DateTime<Utc>> = scope.since;
        let conv = scope.conversation.clone();
        let rows = match parents {
            Some(p) => {
                client
                    .query(&sql, &[&since, &conv, &buckets_param(p)])
                    .await
            }
            None => client.query(&sql, &[&since, &conv]).await,
        }
        .map_err(error::pg)?;
        rows.into_iter()
            .map(|row| {
                let bucket: i32 = row.try_get(0).map_err(error::pg)?;
                let rows: i64 = row.try_get(1).map_err(error::pg)?;
                let high: i64 = row.try_get(2).map_err(error::pg)?;
                let low: i64 = row.try_get(3).map_err(error::pg)?;
                Ok((
                    bucket as u32,
                    BucketSum {
                        rows: rows as u64,
                        high: high as u32,
                        low: low as u32,
                    },
                ))
            })
            .collect()
    }

    async fn rows_in_buckets(
        &self,
        table: Table,
        scope: &Scope,
        level: u8,
        buckets: &[u32],
    ) -> Result<Vec<StoredRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &rows_in_buckets_sql(table, level),
                &[&scope.conversation, &buckets_param(buckets)],
            )
            .await
            .map_err(error::pg)?;
        stored_rows(table, rows)
    }

    async fn rows_by_key(
        &self,
        table: Table,
        keys: &[String],
    ) -> Result<Vec<StoredRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(&rows_by_key_sql(table), &[&keys])
            .await
            .map_err(error::pg)?;
        stored_rows(table, rows)
    }
}

/// Open the entity and the ledger for a repair event (see
/// `mirror.prepare_repair`); runs in the caller's transaction, right before
/// the event's own function.
pub(crate) async fn prepare_repair(
    tx: &tokio_postgres::Transaction<'_>,
    event: &MirrorEvent,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT mirror.prepare_repair($1, $2, $3, $4)",
        &[
            &event.id(),
            &event.event_type().as_str(),
            &event.subject().to_string(),
            &event.time(),
        ],
    )
    .await
    .map(|_| ())
}
