//! The store property test (`mirror_tests::store_property`) on PostgreSQL:
//! one database for the whole run, emptied with TRUNCATE before each store
//! the property asks for (creating a database per case would dominate the
//! run time).

use std::sync::Arc;

use mirror_store::postgres::{PgConfig, PgStore};
use mirror_tests::store_property::{any_order_of_any_history_converges, cases_from_env};
use mirror_tests::FreshDb;

const TRUNCATE: &str = "TRUNCATE mirror.dm_message_audit, mirror.dm_participant, mirror.dm_message, \
    mirror.dm_conversation, mirror.dm_block, mirror.follow_edge, mirror.follow_edge_observation, mirror.applied_event \
    RESTART IDENTITY";

#[test]
fn any_order_of_any_history_converges_to_newest_only() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, admin) = rt.block_on(async {
        let db = FreshDb::create().await;
        let store = PgStore::connect(&PgConfig::from_url(db.url.clone()))
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let admin = db.client().await;
        (db, Arc::new(admin))
    });
    let url = db.url.clone();
    let emptied = move || {
        let (admin, url) = (admin.clone(), url.clone());
        async move {
            admin.batch_execute(TRUNCATE).await.expect("truncate");
            let store = PgStore::connect(&PgConfig::from_url(url))
                .await
                .expect("connect");
            (store, ())
        }
    };
    any_order_of_any_history_converges(&rt, &emptied, cases_from_env(64));
    drop(db);
}
