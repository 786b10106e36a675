//! The store conformance suite on SQL Server, when `MSSQL_URL` (an ADO
//! connection string to a server where the test may create databases) is set.
//! Every case runs on a database of its own, created on that server and
//! dropped afterwards; the store property test runs there too. Unset: prints
//! `skipped: MSSQL_URL not set`;
//! `REQUIRE_MSSQL=1` makes that a failure.
//!
//! The connection-error tests need no SQL Server and always run: a port
//! nothing listens on, and a local TCP listener that answers nonsense. The
//! writer and `mirrorctl` open their store through
//! `mirror_runtime::adapters::mssql`, which is `MssqlStore::connect`.

use std::time::{Duration, Instant};

use mirror_store::mssql::{MssqlConfig, MssqlStore};
use mirror_store::StoreErrorKind;
use mirror_tests::factories::mssql;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "Not-the-Pa55word";

/// A connection string to 127.0.0.1:`port` with a password that must never
/// show up in an error.
fn local(port: u16) -> MssqlConfig {
    MssqlConfig::from_ado(&format!(
        "Server=tcp:127.0.0.1,{port};Database=mirror;User Id=writer;Password={PASSWORD};\
         TrustServerCertificate=true;Connect Timeout=5;Command Timeout=30"
    ))
    .unwrap()
}

/// Connect, failing the test if the error only comes with the pool's
/// checkout timeout (connect + command timeout = 35 s) as it used to.
async fn connect_error(config: &MssqlConfig) -> (mirror_store::StoreError, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), MssqlStore::connect(config))
        .await
        .expect("the first connection's own error, not the pool timeout");
    (
        result.expect_err("nothing to connect to"),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_refused_connection_is_reported_at_once_naming_server_and_cause() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (err, took) = connect_error(&local(port)).await;
    let text = err.to_string();
    println!("after {took:?}: {text}");
    assert_eq!(err.kind, StoreErrorKind::Connect, "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "names the server: {text}"
    );
    assert!(
        text.to_lowercase().contains("refused"),
        "names the cause: {text}"
    );
    assert!(!text.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD));
}

#[tokio::test]
async fn a_peer_that_is_not_sql_server_is_reported_at_once_naming_server_and_cause() {
    // Answers every connection with an HTTP error and closes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = socket.shutdown().await;
            });
        }
    });
    let (err, took) = connect_error(&local(port)).await;
    server.abort();
    let text = err.to_string();
    println!("after {took:?}: {text}");
    assert_eq!(err.kind, StoreErrorKind::Connect, "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "names the server: {text}"
    );
    assert!(text.contains("could not connect to SQL Server"), "{text}");
    assert!(
        text.contains("did not answer like a SQL Server"),
        "names the likely cause: {text}"
    );
    assert!(!text.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD));
}

#[tokio::test]
async fn a_silent_peer_is_reported_after_the_connect_timeout() {
    // Accepts and never answers: the connect timeout (5 s here; tiberius'
    // handshake timeout or ours, whichever fires first), not the pool's 35 s,
    // bounds the wait, and the message says so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (err, took) = connect_error(&local(port)).await;
    server.abort();
    let text = err.to_string();
    println!("after {took:?}: {text}");
    assert_eq!(err.kind, StoreErrorKind::Connect, "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "names the server: {text}"
    );
    assert!(
        text.contains("in time") || text.contains("within"),
        "says it timed out: {text}"
    );
}

mirror_tests::store_conformance_tests!(mssql());

/// The store property test, a database per store: fewer cases than on
/// PostgreSQL by default (`STORE_PROPERTY_CASES` overrides).
#[test]
fn any_order_of_any_history_converges_to_newest_only() {
    let Some(factory) = mssql() else {
        return;
    };
    mirror_tests::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    mirror_tests::store_property::any_order_of_any_history_converges(
        &rt,
        &factory,
        mirror_tests::store_property::cases_from_env(8),
    );
}
