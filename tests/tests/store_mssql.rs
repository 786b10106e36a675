//! The store conformance suite on SQL Server, when `MSSQL_URL` (an ADO
//! connection string to a server where the test may create databases) is set.
//! Unset: prints `skipped: MSSQL_URL not set`; `REQUIRE_MSSQL=1` makes that a failure.

use mirror_store::mssql::{MssqlConfig, MssqlStore};
use mirror_tests::{gate, store_conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mssql_store_conforms() {
    let Some(ado) = gate("MSSQL_URL", "REQUIRE_MSSQL") else {
        return;
    };
    mirror_tests::init();
    store_conformance::run_all("mssql", move || fresh_mssql_store(ado.clone())).await;
}

/// A migrated SQL Server store on a database of its own (every case expects
/// an empty store, and cases run concurrently); the guard drops the database.
async fn fresh_mssql_store(ado: String) -> (MssqlStore, DropDatabase) {
    let base = MssqlConfig::from_ado(&ado).expect("MSSQL_URL is an ADO connection string");
    let name = format!(
        "rm_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let config = base.for_database(&name);
    mirror_store::mssql::create_database_if_missing(&config)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let store = MssqlStore::connect(&config)
        .await
        .expect("connect to SQL Server");
    store.migrate().await.expect("migrate");
    (store, DropDatabase(config))
}

/// Drops the test database when the case is done.
struct DropDatabase(MssqlConfig);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let config = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = mirror_store::mssql::drop_database(&config).await;
            })
        })
        .join();
    }
}
