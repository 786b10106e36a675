//! Connections to SQL Server: one logged-in tiberius client ([`open`]: TCP,
//! TLS, SQL or Entra login, Azure SQL gateway redirects), the bb8 pool
//! [`Manager`], the command timeout around every call ([`timed`]), and
//! creating or dropping a database (tests, first-time setup).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Future;
use tiberius::SqlBrowser;
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

use super::config::{self, MssqlAuth, MssqlConfig};
use super::error::map_error;
use super::snapshot::get;
use super::Client;
use crate::{StoreError, StoreErrorKind};

/// Where a redirect (`ENVCHANGE` routing, Azure SQL's gateway → worker) sends
/// the next login: the new host and port. The certificate is still checked
/// against the name the client asked for (the worker presents the server's
/// certificate), unless the connection string set `HostNameInCertificate`.
pub fn redirected(
    config: &tiberius::Config,
    original_host: &str,
    host: &str,
    port: u16,
) -> tiberius::Config {
    let mut next = config.clone();
    // A routing host may carry an instance name (`host\instance`); the port is explicit.
    let host = host.split('\\').next().unwrap_or(host);
    next.host(host);
    next.port(port);
    next.hostname_in_certificate(original_host);
    next
}

/// The host part of `config.get_addr()`.
pub(crate) fn host_of(config: &tiberius::Config) -> String {
    let addr = config.get_addr();
    addr.rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .unwrap_or(addr)
}

pub(crate) type Credential = Arc<dyn azure_core::credentials::TokenCredential>;

pub(crate) fn credential(auth: &MssqlAuth) -> Result<Option<Credential>, StoreError> {
    let cred: Credential = match auth {
        MssqlAuth::SqlPassword => return Ok(None),
        MssqlAuth::EntraDefault => azure_identity::DefaultAzureCredential::new().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Config,
                format!("Entra DefaultAzureCredential: {e}"),
            )
        })?,
        MssqlAuth::EntraManagedIdentity { client_id } => {
            azure_identity::ManagedIdentityCredential::new(Some(
                azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                },
            ))
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Config,
                    format!("Entra managed identity: {e}"),
                )
            })?
        }
    };
    Ok(Some(cred))
}

/// Open one logged-in connection, following redirects. Every error names the
/// server (never the password) and what failed: TCP (refused, unreachable),
/// TLS, the login (the server's own error number, e.g. 18456), or a peer that
/// does not speak TDS. A server error keeps its number; anything else before
/// the login completed is [`StoreErrorKind::Connect`].
pub(crate) async fn open(
    config: &MssqlConfig,
    credential: Option<&Credential>,
) -> Result<Client, StoreError> {
    let token = match credential {
        None => None,
        Some(c) => {
            let t = c
                .get_token(&[config::ENTRA_SCOPE], None)
                .await
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Connect,
                        format!(
                            "no Entra access token for SQL Server {}: {e}",
                            config.server()
                        ),
                    )
                })?;
            Some(t.token.secret().to_owned())
        }
    };
    let mut cfg = config.tiberius_config(token.as_deref())?;
    let original_host = host_of(&cfg);
    for _ in 0..=config::MAX_REDIRECTS {
        let addr = cfg.get_addr();
        let attempt = async {
            let tcp = TcpStream::connect_named(&cfg).await?;
            tcp.set_nodelay(true)?;
            tiberius::Client::connect(cfg.clone(), tcp.compat_write()).await
        };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Err(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Connect,
                    format!(
                        "could not connect to SQL Server at {addr} within {:?} (connect timeout): no answer",
                        config.connect_timeout
                    ),
                ))
            }
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(tiberius::error::Error::Routing { host, port })) => {
                tracing::debug!(%host, port, "SQL Server redirected the connection");
                cfg = redirected(&cfg, &original_host, &host, port);
            }
            Ok(Err(e)) => return Err(connect_error(&addr, config.database(), e)),
        }
    }
    Err(StoreError::new(
        StoreErrorKind::Connect,
        format!(
            "SQL Server {} redirected the login more than {} times",
            config.server(),
            config::MAX_REDIRECTS
        ),
    ))
}

/// A failure while connecting or logging in to `addr`, as a [`StoreError`]
/// that names the server and the cause.
fn connect_error(addr: &str, database: Option<&str>, e: tiberius::error::Error) -> StoreError {
    use std::io::ErrorKind;
    use tiberius::error::Error;
    let database = database.unwrap_or("(default)");
    // What the socket says itself (refused, unreachable, timed out) or TLS
    // needs no hint; anything else before the login means the peer did not
    // speak TDS, which a wrong host or port explains more often than a bug.
    let hint = match &e {
        Error::Server(_) | Error::Tls(_) | Error::Routing { .. } => "",
        Error::Io {
            kind:
                ErrorKind::ConnectionRefused
                | ErrorKind::TimedOut
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable,
            ..
        } => "",
        _ => " (the peer did not answer like a SQL Server: check the host and port)",
    };
    let mut err = map_error(e);
    match err.kind {
        // The server answered: login failed (18456), database not there (4060), ...
        StoreErrorKind::Database => {
            err.message = format!(
                "login to SQL Server at {addr} (database {database}) failed: {}",
                err.message
            );
        }
        _ => {
            err.kind = StoreErrorKind::Connect;
            err.message = format!(
                "could not connect to SQL Server at {addr} (database {database}): {}{hint}",
                err.message
            );
        }
    }
    err
}

/// A pooled connection; `broken` once a call timed out or the stream failed.
pub struct Conn {
    pub(crate) client: Client,
    pub(crate) broken: bool,
}

/// The bb8 manager (tiberius' own pool crates pin tiberius 0.12). It keeps the
/// last connect error it saw, because bb8 retries failed connects silently
/// until its checkout timeout and then reports only "timed out": the store
/// names that error in its pool-timeout message.
pub struct Manager {
    config: Arc<MssqlConfig>,
    credential: Option<Credential>,
    last_connect_error: Arc<Mutex<Option<StoreError>>>,
}

impl Manager {
    pub(crate) fn new(config: Arc<MssqlConfig>) -> Result<Manager, StoreError> {
        Ok(Manager {
            credential: credential(&config.auth)?,
            config,
            last_connect_error: Arc::default(),
        })
    }

    /// Shared with the store, which reads it when the pool times out.
    pub(crate) fn last_connect_error(&self) -> Arc<Mutex<Option<StoreError>>> {
        self.last_connect_error.clone()
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = StoreError;

    async fn connect(&self) -> Result<Conn, StoreError> {
        let result = open(&self.config, self.credential.as_ref()).await;
        let mut last = self
            .last_connect_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(client) => {
                *last = None;
                Ok(Conn {
                    client,
                    broken: false,
                })
            }
            Err(e) => {
                *last = Some(e.clone());
                Err(e)
            }
        }
    }

    fn is_valid(&self, conn: &mut Conn) -> impl Future<Output = Result<(), StoreError>> + Send {
        let timeout = self.config.command_timeout;
        async move { timed(timeout, super::call::exec_sql(&mut conn.client, "SELECT 1")).await }
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// Run `fut` within `limit`, else [`StoreErrorKind::Timeout`].
pub(crate) async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::new(
            StoreErrorKind::Timeout,
            format!("SQL Server call exceeded the command timeout ({limit:?})"),
        )),
    }
}

/// Create the database `config` names (connecting to `master`) unless it
/// exists; true if it was created. For tests and first-time setup; in Azure
/// SQL, creating databases usually belongs to infrastructure as code.
///
/// Calls in one process run one at a time: Babelfish fails concurrent
/// `CREATE DATABASE` statements (the conformance suite prepares several
/// databases at once).
pub async fn create_database_if_missing(config: &MssqlConfig) -> Result<bool, StoreError> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let name = database_name(config)?;
    let _serialized = ONE_AT_A_TIME.lock().await;
    let mut client = open(
        &config.for_database("master"),
        credential(&config.auth)?.as_ref(),
    )
    .await?;
    let sql = "IF DB_ID(@P1) IS NULL
               BEGIN
                   DECLARE @sql NVARCHAR(400) = N'CREATE DATABASE ' + QUOTENAME(@P1);
                   EXEC (@sql);
                   SELECT CAST(1 AS BIT) AS Created;
               END
               ELSE SELECT CAST(0 AS BIT) AS Created;";
    let row = timed(config.command_timeout * 4, async {
        client
            .query(sql, &[&name])
            .await
            .map_err(map_error)?
            .into_row()
            .await
            .map_err(map_error)
    })
    .await?;
    Ok(row
        .map(|r| get::<bool>(&r, "Created"))
        .transpose()?
        .flatten()
        .unwrap_or(false))
}

/// Drop the database `config` names (connecting to `master`). For tests
/// against a disposable server. `ALTER DATABASE .. SET SINGLE_USER` would end
/// other sessions at once but does not exist on Babelfish, so a drop refused
/// because the database is still in use (3702: the pool of the store that used
/// it is still closing its connections) is tried again for a few seconds.
pub async fn drop_database(config: &MssqlConfig) -> Result<(), StoreError> {
    /// "Cannot drop database because it is currently in use."
    const DATABASE_IN_USE: u32 = 3702;
    let name = database_name(config)?;
    let mut client = open(
        &config.for_database("master"),
        credential(&config.auth)?.as_ref(),
    )
    .await?;
    let sql = "IF DB_ID(@P1) IS NOT NULL
               BEGIN
                   DECLARE @sql NVARCHAR(600) = N'DROP DATABASE ' + QUOTENAME(@P1);
                   EXEC (@sql);
               END;";
    let mut attempt = 0;
    loop {
        let result = timed(config.command_timeout * 4, async {
            client.execute(sql, &[&name]).await.map_err(map_error)?;
            Ok(())
        })
        .await;
        match result {
            Err(e) if e.code == Some(crate::DbCode::Mssql(DATABASE_IN_USE)) && attempt < 40 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

fn database_name(config: &MssqlConfig) -> Result<String, StoreError> {
    match config.database() {
        Some(db)
            if !db.is_empty()
                && db.chars().count() <= 128
                && !db.eq_ignore_ascii_case("master") =>
        {
            Ok(db.to_owned())
        }
        _ => Err(StoreError::new(
            StoreErrorKind::Config,
            "MSSQL connection string names no database (`Database=`) to create or drop",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_the_certificate_name() {
        let base = tiberius::Config::from_ado_string(
            "Server=tcp:myserver.database.windows.net,1433;User Id=a;Password=b",
        )
        .unwrap();
        let original = host_of(&base);
        assert_eq!(original, "myserver.database.windows.net");
        let next = redirected(
            &base,
            &original,
            "abc.tr5.westeurope1-a.worker.database.windows.net",
            11002,
        );
        assert_eq!(
            next.get_addr(),
            "abc.tr5.westeurope1-a.worker.database.windows.net:11002"
        );
        assert!(
            format!("{next:?}").contains("myserver.database.windows.net"),
            "certificate name kept"
        );
        let next = redirected(&base, &original, "host\\instance", 1500);
        assert_eq!(next.get_addr(), "host:1500");
    }
}
