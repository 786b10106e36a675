//! The store conformance suite on SQL Server, when `MSSQL_URL` (an ADO
//! connection string to a server where the test may create databases) is set.
//! Every case runs on a database of its own, created on that server and
//! dropped afterwards. Unset: prints `skipped: MSSQL_URL not set`;
//! `REQUIRE_MSSQL=1` makes that a failure.

use mirror_store::mssql::{self, MssqlConfig, MssqlStore};
use mirror_tests::{gate, store_conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mssql_store_conforms() {
    let Some(ado) = gate("MSSQL_URL", "REQUIRE_MSSQL") else {
        return;
    };
    mirror_tests::init();
    let base = MssqlConfig::from_ado(&ado).expect("MSSQL_URL is an ADO connection string");
    store_conformance::run_all("mssql", move || fresh_mssql_store(base.clone())).await;
}

/// A database created for one case and dropped when this value is dropped.
struct FreshMssqlDb {
    config: MssqlConfig,
}

impl Drop for FreshMssqlDb {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Drop runs inside or outside a runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(mssql::drop_database(&config)) {
                eprintln!("could not drop test database {:?}: {e}", config.database());
            }
        })
        .join();
    }
}

/// A migrated SQL Server store on a new, empty database.
async fn fresh_mssql_store(base: MssqlConfig) -> (MssqlStore, FreshMssqlDb) {
    let name = format!(
        "rm_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let config = base.for_database(&name);
    mssql::create_database_if_missing(&config)
        .await
        .expect("create the test database");
    let guard = FreshMssqlDb {
        config: config.clone(),
    };
    let store = MssqlStore::connect(&config)
        .await
        .expect("connect to the test database");
    store.migrate().await.expect("migrate");
    (store, guard)
}
