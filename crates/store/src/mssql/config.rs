//! [`MssqlConfig`]: an ADO.NET connection string plus the options tiberius
//! does not read from it (Entra authentication, pool size, timeouts).
//!
//! The connection string is kept whole in a [`SecretString`] and handed to
//! `tiberius::Config::from_ado_string` on every connect, so tiberius' own
//! parser (quoting, `TrustServerCertificate`, `Encrypt`, `HostNameInCertificate`,
//! `MultiSubnetFailover`, …) is the one that decides. This module reads only
//! the keys tiberius ignores. Nothing here prints the string: `Debug` shows the
//! server, database and options, never a password.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::{StoreError, StoreErrorKind};

/// How to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MssqlAuth {
    /// SQL authentication with `User Id`/`Password` from the connection string.
    SqlPassword,
    /// Entra ID via `DefaultAzureCredential` (environment, workload identity,
    /// managed identity, Azure CLI / azd developer login):
    /// `Authentication=ActiveDirectoryDefault`.
    EntraDefault,
    /// Entra ID via a managed identity (`Authentication=ActiveDirectoryManagedIdentity`
    /// or `ActiveDirectoryMSI`); a `User Id` selects a user-assigned identity by client id.
    EntraManagedIdentity { client_id: Option<String> },
}

impl MssqlAuth {
    /// Whether this mode logs in with an Entra access token.
    pub fn is_entra(&self) -> bool {
        !matches!(self, MssqlAuth::SqlPassword)
    }
}

/// The token scope of Azure SQL / SQL Server for Entra access tokens.
pub const ENTRA_SCOPE: &str = "https://database.windows.net/.default";

/// Defaults (also the documented ones in `docs/sqlserver.md`).
pub const DEFAULT_POOL_SIZE: u32 = 8;
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Azure SQL gateways redirect at most once in practice; more is a loop.
pub const MAX_REDIRECTS: u8 = 3;

/// Validated SQL Server connection settings.
#[derive(Clone)]
pub struct MssqlConfig {
    ado: SecretString,
    /// How to log in (`Authentication=` in the connection string).
    pub auth: MssqlAuth,
    /// Largest number of pooled connections (`Max Pool Size=`).
    pub pool_size: u32,
    /// Bound on each call to the database (`Command Timeout=`, seconds).
    pub command_timeout: Duration,
    /// Bound on TCP connect + TLS + login (`Connect Timeout=`, seconds).
    pub connect_timeout: Duration,
    /// `Server=` as given (for logs; no credentials).
    server: String,
    database: Option<String>,
    trust_server_certificate: bool,
    has_application_name: bool,
    /// Set by [`MssqlConfig::for_database`]; wins over `Database=`.
    database_override: Option<String>,
}

impl fmt::Debug for MssqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MssqlConfig")
            .field("server", &self.server)
            .field("database", &self.database())
            .field("auth", &self.auth)
            .field("trust_server_certificate", &self.trust_server_certificate)
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Config, message)
}

impl MssqlConfig {
    /// Parse an ADO.NET connection string, e.g.
    /// `Server=tcp:db.example.net,1433;Database=mirror;User Id=writer;Password=…;Encrypt=true`
    /// or, with Entra ID, `Server=tcp:x.database.windows.net,1433;Database=mirror;Authentication=ActiveDirectoryDefault`.
    ///
    /// Keys read here in addition to tiberius' own: `Authentication`,
    /// `Max Pool Size`, `Command Timeout`, `Connect Timeout`/`Connection Timeout`.
    /// Errors never contain the connection string or the password.
    pub fn from_ado(ado: &str) -> Result<MssqlConfig, StoreError> {
        let pairs = parse_ado_pairs(ado)
            .map_err(|e| config_error(format!("MSSQL connection string: {e}")))?;
        let get = |keys: &[&str]| -> Option<&str> {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| keys.contains(&k.as_str()))
                .map(|(_, v)| v.as_str())
        };
        let server = get(&[
            "server",
            "data source",
            "address",
            "addr",
            "network address",
        ])
        .ok_or_else(|| config_error("MSSQL connection string: no `Server=`"))?
        .to_owned();
        let user = get(&["uid", "username", "user", "user id"]).map(str::to_owned);
        let has_password = get(&["password", "pwd"]).is_some();

        let auth = match get(&["authentication"]).map(|s| s.to_ascii_lowercase().replace([' ', '-'], "")) {
            None => MssqlAuth::SqlPassword,
            Some(a) if a == "sqlpassword" => MssqlAuth::SqlPassword,
            Some(a) if a == "activedirectorydefault" => MssqlAuth::EntraDefault,
            Some(a) if a == "activedirectorymanagedidentity" || a == "activedirectorymsi" => {
                MssqlAuth::EntraManagedIdentity { client_id: user.clone() }
            }
            Some(_) => {
                return Err(config_error(
                    "MSSQL connection string: `Authentication` must be SqlPassword, ActiveDirectoryDefault or ActiveDirectoryManagedIdentity",
                ))
            }
        };
        if auth.is_entra() && has_password {
            return Err(config_error(
                "MSSQL connection string: a `Password` cannot be combined with Entra (`Authentication=ActiveDirectory…`) login",
            ));
        }
        if auth == MssqlAuth::SqlPassword && user.is_none() {
            return Err(config_error(
                "MSSQL connection string: SQL login needs `User Id=` and `Password=` (or use `Authentication=ActiveDirectoryDefault`)",
            ));
        }

        let seconds = |keys: &[&str], default: Duration| -> Result<Duration, StoreError> {
            match get(keys) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        config_error(format!(
                            "MSSQL connection string: `{}` must be a positive number of seconds",
                            keys[0]
                        ))
                    }),
            }
        };
        let command_timeout = seconds(
            &["command timeout", "commandtimeout"],
            DEFAULT_COMMAND_TIMEOUT,
        )?;
        let connect_timeout = seconds(
            &["connect timeout", "connection timeout", "connecttimeout"],
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let pool_size = match get(&["max pool size", "maxpoolsize"]) {
            None => DEFAULT_POOL_SIZE,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    config_error(
                        "MSSQL connection string: `Max Pool Size` must be a positive integer",
                    )
                })?,
        };
        let trust_server_certificate = matches!(
            get(&["trustservercertificate"])
                .map(|v| v.to_ascii_lowercase())
                .as_deref(),
            Some("true" | "yes")
        );
        let database = get(&["database", "initial catalog", "databasename"]).map(str::to_owned);

        // Let tiberius validate everything it reads; its errors may quote a
        // value, so only the kind of failure is reported, never the text.
        tiberius::Config::from_ado_string(ado).map_err(|e| {
            let text = e.to_string();
            let safe = if has_password {
                "see tiberius' connection string rules"
            } else {
                text.as_str()
            };
            config_error(format!("MSSQL connection string is not valid: {safe}"))
        })?;

        Ok(MssqlConfig {
            ado: SecretString::from(ado.to_owned()),
            auth,
            pool_size,
            command_timeout,
            connect_timeout,
            server,
            database,
            trust_server_certificate,
            has_application_name: get(&["application name", "applicationname"]).is_some(),
            database_override: None,
        })
    }

    /// `Server=` as configured (no credentials), for logs.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn database(&self) -> Option<&str> {
        self.database_override
            .as_deref()
            .or(self.database.as_deref())
    }

    /// The same settings for another database on the same server (`master`
    /// to create databases, a fresh database per test, …).
    pub fn for_database(&self, database: &str) -> MssqlConfig {
        MssqlConfig {
            database_override: Some(database.to_owned()),
            ..self.clone()
        }
    }

    pub fn trust_server_certificate(&self) -> bool {
        self.trust_server_certificate
    }

    /// The tiberius config to log in with: SQL login from the string, or the
    /// Entra `token` when the mode is Entra. The command timeout is enforced by
    /// the store around each call, so tiberius' own one is turned off.
    pub(crate) fn tiberius_config(
        &self,
        token: Option<&str>,
    ) -> Result<tiberius::Config, StoreError> {
        let mut config = tiberius::Config::from_ado_string(self.ado.expose_secret())
            .map_err(|_| config_error("MSSQL connection string is not valid"))?;
        if self.auth.is_entra() {
            let token = token.ok_or_else(|| config_error("Entra login needs an access token"))?;
            config.authentication(tiberius::AuthMethod::aad_token(token));
        }
        if let Some(db) = &self.database_override {
            config.database(db);
        }
        config.handshake_timeout(Some(self.connect_timeout));
        config.command_timeout(None);
        if !self.has_application_name {
            config.application_name("realtime-mirror");
        }
        Ok(config)
    }
}

/// Split an ADO.NET connection string into lower-cased keys and values with
/// the quoting rules tiberius uses: `;` separates pairs, the first `=` splits
/// a pair, a value may be quoted with `'…'`, `"…"` (the quote doubled inside)
/// or `{…}`. Used only to find the keys tiberius ignores.
pub(crate) fn parse_ado_pairs(s: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        // key
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' {
                break;
            }
            key.push(c);
            chars.next();
        }
        let key = key.trim().to_ascii_lowercase();
        match chars.next() {
            None => {
                if !key.is_empty() {
                    return Err("a key has no `=value`");
                }
                return Ok(out);
            }
            Some(';') => {
                if !key.is_empty() {
                    return Err("a key has no `=value`");
                }
                continue;
            }
            Some(_) => {} // '='
        }
        if key.is_empty() {
            return Err("a pair has an empty key");
        }
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        let mut value = String::new();
        match chars.peek().copied() {
            Some(q @ ('\'' | '"')) => {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err("a quoted value is not closed"),
                        Some(c) if c == q => {
                            if chars.peek() == Some(&q) {
                                chars.next();
                                value.push(q);
                            } else {
                                break;
                            }
                        }
                        Some(c) => value.push(c),
                    }
                }
                skip_to_separator(&mut chars)?;
            }
            Some('{') => {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err("a `{` value is not closed"),
                        Some('}') => break,
                        Some(c) => value.push(c),
                    }
                }
                skip_to_separator(&mut chars)?;
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                let trimmed = value.trim_end().len();
                value.truncate(trimmed);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

fn skip_to_separator(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<(), &'static str> {
    for c in chars.by_ref() {
        match c {
            ';' => return Ok(()),
            ' ' => {}
            _ => return Err("text after a quoted value"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "S3cr3t-P@ss";

    #[test]
    fn sql_login_with_password() {
        let c = MssqlConfig::from_ado(&format!(
            "Server=tcp:db.example.net,1433;Database=mirror;User Id=writer;Password={PASSWORD};Encrypt=true"
        ))
        .unwrap();
        assert_eq!(c.auth, MssqlAuth::SqlPassword);
        assert_eq!(c.server(), "tcp:db.example.net,1433");
        assert_eq!(c.database(), Some("mirror"));
        assert!(!c.trust_server_certificate());
        assert_eq!(c.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(c.command_timeout, DEFAULT_COMMAND_TIMEOUT);
        let t = c.tiberius_config(None).unwrap();
        assert_eq!(t.get_addr(), "db.example.net:1433");
    }

    #[test]
    fn debug_never_shows_the_password() {
        for ado in [
            format!("Server=tcp:localhost,1433;User Id=sa;Password={PASSWORD};TrustServerCertificate=true"),
            format!("server=localhost;uid=sa;pwd='{PASSWORD}'"),
            format!("server=localhost;uid=sa;pwd={{{PASSWORD}}}"),
        ] {
            let c = MssqlConfig::from_ado(&ado).unwrap();
            let debug = format!("{c:?} {:#?}", c);
            assert!(!debug.contains(PASSWORD), "{debug}");
            assert!(!debug.contains("P@ss"), "{debug}");
            // tiberius' own config keeps it secret too
            let t = format!("{:?}", c.tiberius_config(None).unwrap());
            assert!(!t.contains(PASSWORD), "{t}");
        }
    }

    #[test]
    fn errors_never_show_the_password() {
        // An invalid `Encrypt` value makes tiberius fail after it has read the password.
        let e = MssqlConfig::from_ado(&format!(
            "Server=localhost;User Id=sa;Password={PASSWORD};Encrypt=maybe"
        ))
        .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Config);
        assert!(!e.to_string().contains(PASSWORD), "{e}");
        let e = MssqlConfig::from_ado(&format!("Server=localhost;User Id=sa;Password='{PASSWORD}"))
            .unwrap_err();
        assert!(!e.to_string().contains(PASSWORD), "{e}");
    }

    #[test]
    fn without_a_password_sql_login_still_parses() {
        // An empty SQL password is legal; the server decides.
        let c = MssqlConfig::from_ado("Server=localhost;User Id=sa").unwrap();
        assert_eq!(c.auth, MssqlAuth::SqlPassword);
        let e = MssqlConfig::from_ado("Server=localhost;Database=mirror").unwrap_err();
        assert!(e.to_string().contains("User Id"), "{e}");
        let e = MssqlConfig::from_ado("Database=mirror;User Id=sa").unwrap_err();
        assert!(e.to_string().contains("Server"), "{e}");
    }

    #[test]
    fn entra_modes() {
        let c = MssqlConfig::from_ado("Server=tcp:x.database.windows.net,1433;Database=mirror;Authentication=ActiveDirectoryDefault").unwrap();
        assert_eq!(c.auth, MssqlAuth::EntraDefault);
        assert!(c.auth.is_entra());
        assert!(c.tiberius_config(None).is_err(), "Entra needs a token");
        let t = c.tiberius_config(Some("token-value")).unwrap();
        assert!(!format!("{t:?}").contains("token-value"));

        let c = MssqlConfig::from_ado(
            "Server=x;Authentication=Active Directory Managed Identity;User Id=1111-client",
        )
        .unwrap();
        assert_eq!(
            c.auth,
            MssqlAuth::EntraManagedIdentity {
                client_id: Some("1111-client".into())
            }
        );
        let c = MssqlConfig::from_ado("Server=x;Authentication=ActiveDirectoryMSI").unwrap();
        assert_eq!(c.auth, MssqlAuth::EntraManagedIdentity { client_id: None });

        let e = MssqlConfig::from_ado(&format!(
            "Server=x;Authentication=ActiveDirectoryDefault;Password={PASSWORD}"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("Entra") && !e.to_string().contains(PASSWORD),
            "{e}"
        );
        let e = MssqlConfig::from_ado("Server=x;Authentication=ActiveDirectoryPassword;User Id=a")
            .unwrap_err();
        assert!(e.to_string().contains("Authentication"), "{e}");
    }

    #[test]
    fn trust_server_certificate_and_options() {
        let c = MssqlConfig::from_ado(
            "Server=tcp:localhost,1433;User Id=sa;Password=x;TrustServerCertificate=True;Max Pool Size=3;Command Timeout=5;Connect Timeout=7",
        )
        .unwrap();
        assert!(c.trust_server_certificate());
        assert_eq!(c.pool_size, 3);
        assert_eq!(c.command_timeout, Duration::from_secs(5));
        assert_eq!(c.connect_timeout, Duration::from_secs(7));
        let t = c.tiberius_config(None).unwrap();
        assert!(
            format!("{t:?}").contains("realtime-mirror"),
            "application name default"
        );

        let c =
            MssqlConfig::from_ado("Server=localhost;User Id=sa;Password=x;Application Name=mine")
                .unwrap();
        let t = format!("{:?}", c.tiberius_config(None).unwrap());
        assert!(t.contains("mine") && !t.contains("realtime-mirror"), "{t}");

        for bad in [
            "Max Pool Size=0",
            "Command Timeout=soon",
            "Connect Timeout=-1",
        ] {
            let e = MssqlConfig::from_ado(&format!("Server=localhost;User Id=sa;Password=x;{bad}"))
                .unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn ado_pairs_follow_the_quoting_rules() {
        let p =
            parse_ado_pairs("A=1; b = two ;C='x;y=z';D=\"q\"\"uote\";E={br;ace};F=a=b;").unwrap();
        let want: Vec<(String, String)> = [
            ("a", "1"),
            ("b", "two"),
            ("c", "x;y=z"),
            ("d", "q\"uote"),
            ("e", "br;ace"),
            ("f", "a=b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(p, want);
        // A quoted `Authentication=` inside a password is not a key.
        let c = MssqlConfig::from_ado(
            "Server=x;User Id=sa;Password='a;Authentication=ActiveDirectoryDefault'",
        )
        .unwrap();
        assert_eq!(c.auth, MssqlAuth::SqlPassword);
        assert!(parse_ado_pairs("a='open").is_err());
        assert!(parse_ado_pairs("novalue").is_err());
    }
}
