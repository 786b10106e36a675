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
/// an empty store, and cases run concurrently).
async fn fresh_mssql_store(ado: String) -> (MssqlStore, ()) {
    let config = MssqlConfig::from_ado(&ado).expect("MSSQL_URL is an ADO connection string");
    // TODO(mssql-runner): create a uniquely named database on the server of
    // `config` here and drop it with a guard after the case, as `FreshDb` does
    // for PostgreSQL (a `mirror_store::mssql` helper shaped like
    // `postgres::create_database_if_missing` / `drop_database` would do). Until
    // then the cases cannot get an empty store of their own, so the runner
    // refuses rather than report failures caused by leftovers of other cases.
    let _ = &config;
    panic!("TODO(mssql-runner): no fresh-database helper for SQL Server yet; cannot give each case an empty store");
    #[allow(unreachable_code)]
    {
        let store = MssqlStore::connect(&config).await.expect("connect to SQL Server");
        store.migrate().await.expect("migrate");
        (store, ())
    }
}
