//! The one table of database errors per database: each code the writer
//! knows, its [`Class`] (retry, dead-letter, stop), whether it means the
//! database itself is unavailable, and why. [`crate::policy`] classifies by
//! these tables and nothing else; `docs/sqlserver.md` and `docs/postgres.md`
//! print them and tests check each agrees; the tests use them too.
//!
//! A code in neither table is transient: a wrong guess then costs a bounded
//! number of retries before the event is dead-lettered as
//! `retries_exhausted`, never a lost or stuck event. Keep the lists narrow.
//!
//! **Duplicate keys are transient on both databases** (PostgreSQL `23505`,
//! SQL Server 2601/2627). Every mirror procedure upserts under its entity's
//! lock, so a duplicate key cannot be the event's own fault: it can only be a
//! concurrent writer that inserted the same key first (PostgreSQL's chaos runs
//! saw exactly that with 4+ workers on a fresh database), and a retry finds
//! the row and applies the event or reports it stale. The one documented
//! permanent duplicate (a participant listed twice) is rejected earlier, by
//! the decoder and by the procedures' own 50013 / `RM` codes. (The SQL Server
//! store used to call 2601/2627 permanent while this policy, the one that
//! runs, called them transient; the store no longer keeps a list.)

use crate::policy::Class;

/// One SQL Server error number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MssqlError {
    pub number: u32,
    pub class: Class,
    /// The database is down, failing over or refusing connections (the
    /// writer pauses instead of spending deliveries), rather than this batch failing.
    pub unavailable: bool,
    pub meaning: &'static str,
}

const fn ms(number: u32, class: Class, unavailable: bool, meaning: &'static str) -> MssqlError {
    MssqlError {
        number,
        class,
        unavailable,
        meaning,
    }
}

use Class::{Fatal, Permanent, Transient};

/// SQL Server error numbers, in the order `docs/sqlserver.md` lists them.
pub const MSSQL: &[MssqlError] = &[
    ms(1205, Transient, false, "deadlock victim"),
    ms(1222, Transient, false, "lock request timeout"),
    ms(
        51205,
        Transient,
        false,
        "the procedures' entity lock (sp_getapplock) was not granted",
    ),
    ms(
        2601,
        Transient,
        false,
        "duplicate key (unique index): a concurrent writer inserted it first",
    ),
    ms(
        2627,
        Transient,
        false,
        "duplicate key (constraint): a concurrent writer inserted it first",
    ),
    ms(
        4060,
        Transient,
        true,
        "cannot open database (failover, restore)",
    ),
    ms(
        4221,
        Transient,
        false,
        "login to a readable secondary failed (replica catching up)",
    ),
    ms(40197, Transient, true, "service error (Azure SQL failover)"),
    ms(
        40501,
        Transient,
        true,
        "service busy (Azure SQL throttling)",
    ),
    ms(40613, Transient, true, "database unavailable (Azure SQL)"),
    ms(
        49918,
        Transient,
        true,
        "not enough resources to process the request",
    ),
    ms(
        49919,
        Transient,
        true,
        "too many create or update operations",
    ),
    ms(49920, Transient, true, "too many operations"),
    ms(10928, Transient, true, "resource limit reached"),
    ms(
        10929,
        Transient,
        true,
        "resource limit reached (minimum guarantee)",
    ),
    ms(233, Transient, true, "connection closed by the server"),
    ms(64, Transient, true, "connection lost"),
    ms(10053, Transient, true, "connection aborted"),
    ms(10054, Transient, true, "connection reset"),
    ms(10060, Transient, true, "connection timed out"),
    ms(
        547,
        Permanent,
        false,
        "constraint (FOREIGN KEY, CHECK) violation",
    ),
    ms(
        8152,
        Permanent,
        false,
        "string or binary data would be truncated",
    ),
    ms(
        2628,
        Permanent,
        false,
        "string or binary data would be truncated (with the column)",
    ),
    ms(245, Permanent, false, "conversion failed"),
    ms(241, Permanent, false, "date/time conversion failed"),
    ms(242, Permanent, false, "date/time value out of range"),
    ms(8114, Permanent, false, "error converting data type"),
    ms(
        13609,
        Permanent,
        false,
        "JSON text is not properly formatted",
    ),
    ms(515, Permanent, false, "NULL into a NOT NULL column"),
    ms(
        208,
        Fatal,
        false,
        "invalid object name: the schema is not deployed",
    ),
    ms(
        2812,
        Fatal,
        false,
        "stored procedure not found: the schema is not deployed",
    ),
    ms(18456, Fatal, false, "login failed: wrong credentials"),
];

/// The procedures' own THROW numbers: permanent rejections of the event,
/// except those [`MSSQL`] lists (51205 sits outside the range on purpose).
pub const MSSQL_PROCEDURE_RANGE: std::ops::RangeInclusive<u32> = 50000..=50999;

/// One PostgreSQL SQLSTATE, or a class of them (`code` of 2 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgError {
    pub code: &'static str,
    pub class: Class,
    pub unavailable: bool,
    pub meaning: &'static str,
}

const fn pg(code: &'static str, class: Class, unavailable: bool, meaning: &'static str) -> PgError {
    PgError {
        code,
        class,
        unavailable,
        meaning,
    }
}

/// PostgreSQL SQLSTATEs: exact codes first, then classes (2-character
/// prefixes); the first match decides.
pub const POSTGRES: &[PgError] = &[
    pg(
        "23505",
        Transient,
        false,
        "unique violation: a concurrent writer inserted it first",
    ),
    pg("40001", Transient, false, "serialization failure"),
    pg("40P01", Transient, false, "deadlock detected"),
    pg("55P03", Transient, false, "lock not available"),
    pg(
        "57014",
        Transient,
        false,
        "query canceled (statement timeout)",
    ),
    pg("57P01", Transient, true, "admin shutdown"),
    pg("57P02", Transient, true, "crash shutdown"),
    pg("57P03", Transient, true, "cannot connect now (starting up)"),
    pg("53300", Transient, true, "too many connections"),
    pg("53400", Transient, false, "configuration limit exceeded"),
    pg("58000", Transient, false, "system error"),
    pg("58030", Transient, false, "I/O error"),
    pg(
        "42P01",
        Fatal,
        false,
        "undefined table: the schema is not migrated",
    ),
    pg(
        "42883",
        Fatal,
        false,
        "undefined function: the schema is not migrated",
    ),
    pg(
        "3F000",
        Fatal,
        false,
        "invalid schema name: the schema is not migrated",
    ),
    pg(
        "3D000",
        Fatal,
        false,
        "invalid catalog name: the database does not exist",
    ),
    pg("28000", Fatal, false, "invalid authorization"),
    pg("28P01", Fatal, false, "invalid password"),
    pg("08", Transient, true, "connection exception"),
    pg("53", Transient, false, "insufficient resources"),
    pg("23", Permanent, false, "integrity constraint violation"),
    pg("22", Permanent, false, "data exception"),
    pg(
        "RM",
        Permanent,
        false,
        "the mirror functions' own rejections",
    ),
];

/// The class of a SQL Server error number.
pub fn mssql_class(number: u32) -> Class {
    match MSSQL.iter().find(|e| e.number == number) {
        Some(e) => e.class,
        None if MSSQL_PROCEDURE_RANGE.contains(&number) => Permanent,
        None => Transient,
    }
}

/// Whether a SQL Server error number means the database is unavailable.
pub fn mssql_unavailable(number: u32) -> bool {
    MSSQL.iter().any(|e| e.number == number && e.unavailable)
}

fn postgres_entry(code: &str) -> Option<&'static PgError> {
    POSTGRES
        .iter()
        .find(|e| e.code.len() == 5 && e.code == code)
        .or_else(|| {
            POSTGRES
                .iter()
                .find(|e| e.code.len() == 2 && code.starts_with(e.code))
        })
}

/// The class of a PostgreSQL SQLSTATE.
pub fn postgres_class(code: &str) -> Class {
    postgres_entry(code).map_or(Transient, |e| e.class)
}

/// Whether a PostgreSQL SQLSTATE means the database is unavailable.
pub fn postgres_unavailable(code: &str) -> bool {
    postgres_entry(code).is_some_and(|e| e.unavailable)
}

/// The SQL Server table as the Markdown rows `docs/sqlserver.md` shows.
pub fn mssql_markdown_rows() -> Vec<String> {
    MSSQL
        .iter()
        .map(|e| markdown_row(e.number, e.class, e.unavailable, e.meaning))
        .collect()
}

/// The PostgreSQL table as the Markdown rows `docs/postgres.md` shows.
pub fn postgres_markdown_rows() -> Vec<String> {
    POSTGRES
        .iter()
        .map(|e| markdown_row(e.code, e.class, e.unavailable, e.meaning))
        .collect()
}

fn markdown_row(
    code: impl std::fmt::Display,
    class: Class,
    unavailable: bool,
    meaning: &str,
) -> String {
    format!(
        "| {code} | {} | {} | {meaning} |",
        class_name(class),
        if unavailable { "yes" } else { "" },
    )
}

fn class_name(class: Class) -> &'static str {
    match class {
        Transient => "transient",
        Permanent => "permanent",
        Fatal => "fatal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn each_code_is_listed_once() {
        let numbers: BTreeSet<u32> = MSSQL.iter().map(|e| e.number).collect();
        assert_eq!(
            numbers.len(),
            MSSQL.len(),
            "a SQL Server number listed twice"
        );
        let codes: BTreeSet<&str> = POSTGRES.iter().map(|e| e.code).collect();
        assert_eq!(codes.len(), POSTGRES.len(), "a SQLSTATE listed twice");
        for e in POSTGRES {
            assert!(e.code.len() == 5 || e.code.len() == 2, "{}", e.code);
        }
        // An unavailable database is always worth a retry.
        assert!(MSSQL
            .iter()
            .chain([])
            .all(|e| !e.unavailable || e.class == Transient));
        assert!(POSTGRES
            .iter()
            .all(|e| !e.unavailable || e.class == Transient));
    }

    #[test]
    fn exact_codes_win_over_their_class() {
        assert_eq!(postgres_class("23505"), Transient);
        assert_eq!(postgres_class("23503"), Permanent);
        assert_eq!(postgres_class("08006"), Transient);
        assert!(postgres_unavailable("08006"));
        assert_eq!(postgres_class("RM004"), Permanent);
        assert_eq!(
            postgres_class("XX000"),
            Transient,
            "unknown: bounded retries"
        );
        assert_eq!(mssql_class(50003), Permanent, "the procedures' range");
        assert_eq!(mssql_class(51205), Transient);
        assert_eq!(mssql_class(99999), Transient, "unknown: bounded retries");
    }

    #[test]
    fn the_procedures_numbers_are_classified_as_their_sql_says() {
        // 51205 is the procedures' only transient number; every other THROW
        // is a permanent rejection of the event.
        for (number, meaning) in mirror_store::mssql::PROCEDURE_ERRORS {
            let want = if meaning.starts_with("TRANSIENT") {
                Transient
            } else {
                Permanent
            };
            assert_eq!(mssql_class(*number), want, "{number}: {meaning}");
        }
    }

    /// The rows of the Markdown table after `marker` in `docs/<doc>`.
    fn docs_table(doc: &str, marker: &str) -> Vec<String> {
        let path = format!("{}/../../docs/{doc}", env!("CARGO_MANIFEST_DIR"));
        let docs = std::fs::read_to_string(&path).unwrap();
        let start = docs
            .find(marker)
            .unwrap_or_else(|| panic!("docs/{doc} marks the error table with {marker}"));
        docs[start..]
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with("| "))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn docs_sqlserver_md_shows_this_table() {
        assert_eq!(
            docs_table("sqlserver.md", "<!-- db_errors::MSSQL -->"),
            mssql_markdown_rows(),
            "docs/sqlserver.md's error table differs from sql_writer::db_errors::MSSQL; print mssql_markdown_rows() and paste"
        );
    }

    #[test]
    fn docs_postgres_md_shows_this_table() {
        assert_eq!(
            docs_table("postgres.md", "<!-- db_errors::POSTGRES -->"),
            postgres_markdown_rows(),
            "docs/postgres.md's error table differs from sql_writer::db_errors::POSTGRES; print postgres_markdown_rows() and paste"
        );
    }
}
