//! The SQL Server SQL of the consistency check, checked without a SQL Server
//! by sqlparser's `MsSqlDialect`:
//!
//! - `V22__consistency_row_hash.sql`: sqlparser 0.59 has no computed-column
//!   syntax (`name AS expr PERSISTED`), so each `ALTER TABLE … ADD` is
//!   checked as text (its shape) and each column's expression is parsed as
//!   `SELECT <expr>`; the `CREATE INDEX` statements are parsed as they are.
//! - `V23__prepare_repair.sql`: parsed as is (one `CREATE PROCEDURE`).
//!
//! Parsing says nothing about whether SQL Server accepts the computed columns
//! as deterministic (required for PERSISTED) or about name resolution: that
//! needs a server.

use sqlparser::ast::Statement;
use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../sql/mssql/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn parse(label: &str, sql: &str) -> Vec<Statement> {
    Parser::parse_sql(&MsSqlDialect {}, sql)
        .unwrap_or_else(|e| panic!("{label}: sqlparser (MsSqlDialect) rejects it: {e}\n{sql}"))
}

#[test]
fn the_row_hash_columns_and_indexes_parse() {
    let sql = read("V22__consistency_row_hash.sql");
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut columns = 0;
    let mut indexes = 0;
    for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(rest) = statement.strip_prefix("ALTER TABLE dbo.") {
            let (_, adds) = rest.split_once(" ADD\n").expect("ALTER TABLE dbo.X ADD");
            for column in ["MirrorBucketHash AS ", "MirrorRowHash AS "] {
                let at = adds.find(column).expect(column) + column.len();
                let expr = &adds[at..];
                let end = expr.find(" PERSISTED").expect("PERSISTED");
                parse(column, &format!("SELECT {}", &expr[..end]));
                columns += 1;
            }
        } else {
            assert!(statement.starts_with("CREATE INDEX"), "{statement}");
            parse("index", statement);
            indexes += 1;
        }
    }
    assert_eq!((columns, indexes), (6, 3));
}

#[test]
fn the_prepare_repair_procedure_parses() {
    // The parameters' ` = NULL` defaults are removed first, as in
    // mssql_sql_parses.rs (sqlparser 0.59 lacks them).
    let sql = read("V23__prepare_repair.sql")
        .replace(" = NULL\n", "\n")
        .replace(" = NULL,\n", ",\n");
    let statements = parse("V23", &sql);
    assert_eq!(statements.len(), 1);
    assert!(matches!(
        statements[0],
        Statement::CreateProcedure {
            or_alter: false,
            ..
        }
    ));
}
