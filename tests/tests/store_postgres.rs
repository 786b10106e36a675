//! The store conformance suite on PostgreSQL: every case a test of its own
//! on its own fresh database, plus the PostgreSQL-only checks (migrations, rejections with
//! their SQLSTATEs, the ledger).

use mirror_schema::{FollowState, Op};
use mirror_store::postgres::{PgConfig, PgStore};
use mirror_store::prelude::*;
use mirror_store::{ApplyMode, ApplyOutcome, DbCode, StoreErrorKind};
use mirror_tests::events::{follow, message, t};
use mirror_tests::factories::postgres as fresh_store;
use mirror_tests::FreshDb;

mirror_tests::store_conformance_tests!(Some(fresh_store));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_concurrent_safe() {
    let db = FreshDb::create().await;
    let store = PgStore::connect(&PgConfig::from_url(db.url.clone()))
        .await
        .unwrap();
    let (a, b) = tokio::join!(store.migrate(), store.migrate());
    let (a, b) = (a.unwrap(), b.unwrap());
    // Every migration file of sql/postgres, applied once in total.
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/postgres"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        })
        .count();
    assert_eq!(
        a + b,
        files,
        "{files} migrations applied once in total, got {a} + {b}"
    );
    assert_eq!(store.migrate().await.unwrap(), 0);
    assert!(!format!("{store:?}").contains("password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_carry_their_sqlstate_and_leave_no_trace() {
    let (store, db) = fresh_store().await;
    let nul = message(Op::Create, "c1", "m1", "a\u{0}b", t(1));
    let err = store.apply(&nul).await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Database);
    assert_eq!(err.code, Some(DbCode::Sqlstate("22021".into())), "{err}");
    let counts = store.table_counts().await.unwrap();
    assert!(
        counts.iter().all(|(_, n)| *n == 0),
        "nothing written: {counts:?}"
    );

    // The functions' own RM codes, called directly with bad arguments.
    let client = db.client().await;
    let cases = [
        ("SELECT mirror.sp_store_mirror_delete_dm_block(gen_random_uuid(), 'dm.block.create', now(), 'u1', 'u2', 'test')", "RM001"),
        ("SELECT mirror.sp_store_mirror_delete_dm_block(gen_random_uuid(), 'dm.block.delete', NULL, 'u1', 'u2', 'test')", "RM002"),
        ("SELECT mirror.sp_store_mirror_upsert_dm_message(gen_random_uuid(), 'dm.message.create', now(), 'c1', 'm1', 'u1', 'x', '{}'::jsonb, NULL, now(), NULL, NULL, NULL, 'test')", "RM003"),
        ("SELECT mirror.sp_store_mirror_delete_follow_edge(gen_random_uuid(), 'follow.edge.delete', now(), 'u/1', 'u2', 'test')", "RM004"),
        ("SELECT mirror.sp_store_mirror_upsert_follow_edge(gen_random_uuid(), 'follow.edge.create', now(), 'u1', 'u2', 'friends', 'web', now(), 'test')", "23514"),
    ];
    for (sql, code) in cases {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(code), "{sql}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_records_applied_and_stale_events() {
    let (store, db) = fresh_store().await;
    let newer = follow(Op::Update, "u1", "u2", FollowState::Accepted, t(2));
    let older = follow(Op::Create, "u1", "u2", FollowState::Pending, t(1));
    assert_eq!(store.apply(&newer).await.unwrap(), ApplyOutcome::Applied);
    assert_eq!(store.apply(&older).await.unwrap(), ApplyOutcome::Stale);
    assert_eq!(store.apply(&older).await.unwrap(), ApplyOutcome::Duplicate);
    let client = db.client().await;
    let rows = client
        .query("SELECT event_id, outcome, subject, sync_source FROM mirror.applied_event JOIN mirror.follow_edge USING (event_id) UNION ALL SELECT event_id, outcome, subject, NULL FROM mirror.applied_event WHERE outcome = 'stale'", &[])
        .await
        .unwrap();
    let got: Vec<(uuid::Uuid, String, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                newer.id(),
                "applied".into(),
                "follows/u1/targets/u2".into(),
                Some("firestore".into())
            ),
            (
                older.id(),
                "stale".into(),
                "follows/u1/targets/u2".into(),
                None
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_text_with_nul_is_still_recorded() {
    let (store, _db) = fresh_store().await;
    let record = mirror_store::DeadLetterRecord {
        key: "sha256:abc".into(),
        event_id: None,
        event_type: Some("dm.message.create".into()),
        subject: None,
        payload: "{\"bodyText\": \"a\u{0}b\"}".into(),
        reason: "rejected_by_database".into(),
        error: "SQLSTATE 22021".into(),
        attempts: 1,
        failed_at: t(0),
        subscription: "sql-writer".into(),
    };
    store.record_dead_letter(&record).await.unwrap();
    let rows = store.list_dead_letters(5).await.unwrap();
    assert_eq!(rows[0].record.payload, "{\"bodyText\": \"a\u{FFFD}b\"}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_connect_error() {
    let mut config = PgConfig::from_url("postgres://postgres:secret-pw@127.0.0.1:1/none");
    config.statement_timeout = std::time::Duration::from_secs(2);
    let err = PgStore::connect(&config).await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Connect, "{err:?}");
    assert!(!err.to_string().contains("secret-pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_blocked_past_the_statement_timeout_gets_a_timeout() {
    let (_migrated, db) = fresh_store().await;
    let mut config = PgConfig::from_url(db.url.clone());
    config.statement_timeout = std::time::Duration::from_millis(300);
    let store = PgStore::connect(&config).await.unwrap();
    // Another session holds conversation c1's entity lock.
    let admin = db.client().await;
    admin
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('realtime-mirror:conversation:c1', 0))")
        .await
        .unwrap();
    let blocked = message(Op::Create, "c1", "m1", "waits", t(1));
    let err = store.apply(&blocked).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.clone()),
        (
            StoreErrorKind::Timeout,
            Some(DbCode::Sqlstate("57014".into()))
        ),
        "{err}"
    );

    // In a batch only the blocked event fails; the others commit.
    let free = follow(Op::Create, "u1", "u2", FollowState::Pending, t(1));
    let results = store
        .apply_batch(&[free.clone(), blocked.clone()])
        .await
        .unwrap();
    assert!(
        matches!(results[0], Ok(ApplyOutcome::Applied)),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], Err(e) if e.kind == StoreErrorKind::Timeout),
        "{results:?}"
    );

    admin.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(store.apply(&blocked).await.unwrap(), ApplyOutcome::Applied);
    assert_eq!(store.apply(&free).await.unwrap(), ApplyOutcome::Duplicate);
}

/// `sslmode=require` gets TLS with a verified certificate: refused against an
/// unknown issuer, accepted once the server's CA is in `PGSSLROOTCERT`. Uses
/// the self-signed certificate Debian's PostgreSQL package serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_verifies_the_server_certificate() {
    let ca = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    if !std::path::Path::new(ca).exists() {
        println!("skipped: {ca} not present (the server may not offer TLS)");
        return;
    }
    let db = FreshDb::create().await;
    // The certificate is issued to `localhost`.
    let url = format!(
        "{}?sslmode=require",
        db.url.replace("127.0.0.1", "localhost")
    );
    std::env::remove_var("PGSSLROOTCERT");
    let refused = PgStore::connect(&PgConfig::from_url(url.clone()))
        .await
        .expect_err("an unknown issuer is refused");
    assert_eq!(
        refused.kind,
        mirror_store::StoreErrorKind::Connect,
        "{refused}"
    );
    assert!(refused.to_string().contains("certificate"), "{refused}");
    std::env::set_var("PGSSLROOTCERT", ca);
    let store = PgStore::connect(&PgConfig::from_url(url))
        .await
        .expect("TLS with the server's CA");
    store.migrate().await.expect("migrate over TLS");
    std::env::remove_var("PGSSLROOTCERT");
}

/// PostgreSQL's hint travels with the error, in both apply modes: for a full
/// lock table (`53200`) it is what names `max_locks_per_transaction`
/// (raised here by a trigger, since filling the real table would break every
/// other test on the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_errors_hint_reaches_the_writer() {
    let (store, db) = fresh_store().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION mirror.full_lock_table() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE EXCEPTION 'out of shared memory' USING ERRCODE = '53200',
                     HINT = 'You might need to increase max_locks_per_transaction.';
             END $$;
             CREATE TRIGGER full_lock_table BEFORE INSERT ON mirror.follow_edge
                 FOR EACH ROW EXECUTE FUNCTION mirror.full_lock_table();",
        )
        .await
        .unwrap();
    let event = follow(Op::Create, "u1", "u2", FollowState::Accepted, t(1));
    for mode in [ApplyMode::PerEvent, ApplyMode::Batched] {
        let results = store
            .apply_batch_as(std::slice::from_ref(&event), mode)
            .await
            .unwrap();
        let err = results[0].as_ref().unwrap_err();
        assert_eq!(
            err.code,
            Some(DbCode::Sqlstate("53200".into())),
            "{mode:?}: {err}"
        );
        assert!(
            err.message
                .contains("hint: You might need to increase max_locks_per_transaction"),
            "{mode:?}: {err}"
        );
    }
}

/// The lock capacity the writer checks at start is PostgreSQL's shared lock
/// table, read from the server's own settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_capacity_is_the_servers_shared_lock_table() {
    let (store, db) = fresh_store().await;
    let client = db.client().await;
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT setting::bigint FROM pg_settings WHERE name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            u64::try_from(row.get::<_, i64>(0)).unwrap()
        }
    };
    let want = setting("max_locks_per_transaction").await
        * (setting("max_connections").await + setting("max_prepared_transactions").await);
    assert!(want > 0);
    assert_eq!(store.lock_capacity().await.unwrap(), Some(want));
}
