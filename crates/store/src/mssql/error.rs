//! The mapping of tiberius errors to [`StoreError`], and the numbers the
//! procedures THROW ([`PROCEDURE_ERRORS`]).
//!
//! The store does not decide retry versus dead-letter: it reports the kind
//! and the server's number. Which numbers are transient, permanent or fatal is
//! the writer's one table, `sql_writer::db_errors::MSSQL`.

use crate::{DbCode, StoreError, StoreErrorKind};

/// Every number the procedures THROW, with its meaning (also in the header of
/// `sql/mssql/V1__tables.sql` and in `docs/sqlserver.md`).
pub const PROCEDURE_ERRORS: &[(u32, &str)] = &[
    (50001, "event id is null"),
    (50002, "source version (event time) is null"),
    (
        50003,
        "an id (conversation, message, user) is not a valid id: null, empty, longer than 128 characters, . or .., or containing / or a control character",
    ),
    (50004, "the event type does not belong to this procedure"),
    (50005, "payload JSON is not valid JSON"),
    (
        50010,
        "conversation type is not direct|group, or createdAt/updatedAt missing",
    ),
    (50011, "participants is not a JSON array"),
    (
        50012,
        "a participant lacks userId/role/joinedAt/muteState or has a bad value",
    ),
    (50013, "a participant is listed twice"),
    (50020, "message authorUserId/bodyText/createdAt missing"),
    (50021, "attachments/externalMedia is not a JSON array"),
    (
        50030,
        "block source is not client|admin, or createdAt missing",
    ),
    (50040, "follow state is not pending|accepted|blocked"),
    (
        50041,
        "follow source is not mobile|web|admin, or createdAt missing",
    ),
    (
        51205,
        "TRANSIENT: an entity lock (sp_getapplock) was not granted; retry like 1205",
    ),
];

/// Map a tiberius error: server errors keep their number (`Database`), broken
/// IO/TLS/redirects are `Connect`, an IO timeout (the server sent nothing)
/// is `NoAnswer`, anything the
/// driver could not make sense of is `Protocol`.
pub fn map_error(e: tiberius::error::Error) -> StoreError {
    use tiberius::error::Error;
    match e {
        Error::Server(t) => StoreError::database(DbCode::Mssql(t.code()), t.message().to_owned()),
        Error::Io {
            kind: std::io::ErrorKind::TimedOut,
            message,
        } => StoreError::new(
            StoreErrorKind::NoAnswer,
            format!("SQL Server did not answer in time: {message}"),
        ),
        Error::Io { message, .. } => StoreError::new(
            StoreErrorKind::Connect,
            format!("SQL Server connection: {message}"),
        ),
        Error::Tls(m) => StoreError::new(StoreErrorKind::Connect, format!("SQL Server TLS: {m}")),
        Error::Routing { host, port } => StoreError::new(
            StoreErrorKind::Connect,
            format!("SQL Server redirected to {host}:{port} too many times"),
        ),
        other => StoreError::new(
            StoreErrorKind::Protocol,
            format!("SQL Server driver: {other}"),
        ),
    }
}

/// Whether a connection that produced `e` can no longer be trusted (the pool
/// drops it): anything but an error the server answered cleanly.
pub(crate) fn breaks_connection(e: &StoreError) -> bool {
    !matches!(e.kind, StoreErrorKind::Database)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn procedure_numbers_match_the_sql() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sql/mssql");
        let mut thrown = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for part in text.split("THROW ").skip(1) {
                let n: u32 = part.split(',').next().unwrap().trim().parse().unwrap();
                thrown.insert(n);
            }
        }
        let documented: BTreeSet<u32> = PROCEDURE_ERRORS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            thrown, documented,
            "THROW numbers in sql/mssql vs PROCEDURE_ERRORS"
        );
        let header = std::fs::read_to_string(format!("{dir}/V1__tables.sql")).unwrap();
        for n in &documented {
            assert!(
                header.contains(&format!("--   {n}  ")),
                "{n} not listed in the V1 header"
            );
        }
    }

    #[test]
    fn maps_driver_errors_to_kinds() {
        use tiberius::error::Error;
        let io = |kind| Error::Io {
            kind,
            message: "x".into(),
        };
        assert_eq!(
            map_error(io(std::io::ErrorKind::TimedOut)).kind,
            StoreErrorKind::NoAnswer
        );
        assert_eq!(
            map_error(io(std::io::ErrorKind::ConnectionReset)).kind,
            StoreErrorKind::Connect
        );
        assert_eq!(
            map_error(Error::Tls("bad cert".into())).kind,
            StoreErrorKind::Connect
        );
        assert_eq!(
            map_error(Error::Routing {
                host: "h".into(),
                port: 1
            })
            .kind,
            StoreErrorKind::Connect
        );
        assert_eq!(
            map_error(Error::Protocol("?".into())).kind,
            StoreErrorKind::Protocol
        );
        assert!(breaks_connection(&map_error(io(
            std::io::ErrorKind::TimedOut
        ))));
        assert!(!breaks_connection(&StoreError::database(
            DbCode::Mssql(2627),
            "dup"
        )));
    }
}
