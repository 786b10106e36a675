//! The SQL Server SQL, checked without a SQL Server (none runs on the
//! development machine) by sqlparser's `MsSqlDialect`, batch by batch.
//!
//! What is parsed and what is not, exactly:
//!
//! - `sql/mssql/V1__tables.sql`: parsed as is, every statement; the tables,
//!   indexes and the FollowTransition rows are read from the syntax tree, and
//!   the rows are compared with `model::follow_transition`.
//! - `sql/mssql/V2..` (one `CREATE VIEW`, `CREATE FUNCTION` or `CREATE
//!   PROCEDURE` each): parsed with TWO rewrites, because sqlparser 0.59 lacks
//!   two T-SQL forms:
//!   1. it has no `THROW` statement: every `THROW <number>, N'<text>', 1;` is
//!      first checked to have exactly that form (5-digit number, literal
//!      message, state 1), then replaced by `RAISERROR(N'<text>', 16, 1);`;
//!   2. it has no procedure parameter defaults: every parameter line of a
//!      `CREATE PROCEDURE` header must end in ` = NULL` (checked), and that
//!      suffix is removed.
//!
//!   Nothing else is rewritten. The THROW numbers are checked against the
//!   documented list by the unit tests of `mssql::error`.
//! - `EXEC @rc = proc` is not supported by sqlparser 0.59; the procedures
//!   avoid it (the applock result is checked with `APPLOCK_MODE`).
//! - `deploy/sql/deploy_realtime_mirror.sqlcmd`: the sqlcmd directives
//!   (`:on error exit`, `:r`) are not T-SQL and are checked as text (present,
//!   first, the includes equal to the migrations in order); every `:r` is
//!   replaced by the file it names, as sqlcmd does, `GO` splits batches, and
//!   every batch is parsed (with the two rewrites above).
//! - Every `.sql` under `sql/mssql` and `deploy/sql` (and the sqlcmd package)
//!   is scanned for the constructs Babelfish for PostgreSQL does not support
//!   (see [`BABELFISH_BANNED`]); comments are ignored by the scan.
//! - `deploy/sql/deploy_realtime_mirror.ps1` is PowerShell: not parsed, only
//!   checked for the sqlcmd flags it must pass.
//!
//! Also checked by hand: no `GO` inside a migration file, BEGIN/END (and
//! CASE/END) balance in every file, and every procedure of the contract's
//! event -> procedure map is created exactly once, as the first statement of
//! its batch, and the sqlcmd package drops each object (`DROP .. IF EXISTS`)
//! in the batch before it creates it. Parsing says nothing about name resolution, types or semantics:
//! those need a server (`.github/workflows/integration-mssql.yml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mirror_schema::FollowState;
use mirror_store::model::follow_transition;
use mirror_store::mssql::{MIGRATIONS, PROCEDURES};
use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::MsSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn migration_files() -> Vec<(String, String)> {
    let dir = repo().join("sql/mssql");
    let mut files: Vec<(u32, String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let version: u32 = name[1..name.find("__").unwrap()].parse().unwrap();
            (version, name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, n, t)| (n, t)).collect()
}

fn parse(label: &str, sql: &str) -> Vec<Statement> {
    Parser::parse_sql(&MsSqlDialect {}, sql)
        .unwrap_or_else(|e| panic!("{label}: sqlparser (MsSqlDialect) rejects it: {e}"))
}

/// The one documented rewrite: `THROW n, N'msg', 1;` -> `RAISERROR(N'msg', 16, 1);`.
fn rewrite_throws(label: &str, sql: &str) -> (String, usize) {
    let mut out = String::new();
    let mut count = 0;
    let mut rest = sql;
    while let Some(at) = rest.find("THROW ") {
        out.push_str(&rest[..at]);
        // THROW <number>, N'<message without quotes>', <state>;
        let msg_start = rest[at..]
            .find("N'")
            .unwrap_or_else(|| panic!("{label}: THROW without an N'...' message"))
            + at;
        let msg_end = rest[msg_start + 2..].find('\'').unwrap() + msg_start + 2;
        let stmt_end = rest[msg_end..]
            .find(';')
            .unwrap_or_else(|| panic!("{label}: THROW without `;`"))
            + msg_end;
        let stmt = &rest[at..stmt_end];
        let number = rest[at + "THROW ".len()..msg_start]
            .trim()
            .trim_end_matches(',')
            .trim();
        assert!(
            number.len() == 5 && number.chars().all(|c| c.is_ascii_digit()),
            "{label}: `{stmt}`: number"
        );
        let message = &rest[msg_start..=msg_end];
        let state = rest[msg_end + 1..stmt_end]
            .trim()
            .trim_start_matches(',')
            .trim();
        assert_eq!(state, "1", "{label}: `{stmt}`: state");
        out.push_str(&format!("RAISERROR({message}, 16, {state})"));
        count += 1;
        rest = &rest[stmt_end..];
    }
    out.push_str(rest);
    (out, count)
}

/// BEGIN (a block, not BEGIN TRANSACTION) + CASE must equal END.
fn assert_balanced(label: &str, sql: &str) {
    let tokens: Vec<Token> = Tokenizer::new(&MsSqlDialect {}, sql)
        .tokenize()
        .unwrap_or_else(|e| panic!("{label}: tokenizer: {e}"))
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let kw = |t: &Token| match t {
        Token::Word(w) => Some(w.keyword),
        _ => None,
    };
    let (mut opens, mut ends) = (0usize, 0usize);
    for (i, t) in tokens.iter().enumerate() {
        match kw(t) {
            Some(Keyword::BEGIN) => {
                let is_tran = match tokens.get(i + 1) {
                    Some(Token::Word(w)) => {
                        w.keyword == Keyword::TRANSACTION || w.value.eq_ignore_ascii_case("tran")
                    }
                    _ => false,
                };
                if !is_tran {
                    opens += 1;
                }
            }
            Some(Keyword::CASE) => opens += 1,
            Some(Keyword::END) => ends += 1,
            _ => {}
        }
    }
    assert_eq!(opens, ends, "{label}: BEGIN/CASE vs END");
}

fn assert_no_go(label: &str, sql: &str) {
    for (n, line) in sql.lines().enumerate() {
        assert!(
            !line.trim().eq_ignore_ascii_case("go"),
            "{label}:{}: `GO` is a sqlcmd separator, not T-SQL; refinery sends a file as one batch",
            n + 1
        );
    }
}

#[test]
fn tables_parse_and_match_the_plan() {
    let (name, sql) = &migration_files()[0];
    assert_eq!(name, "V1__tables.sql");
    assert_no_go(name, sql);
    assert_balanced(name, sql);
    let stmts = parse(name, sql);

    let mut tables = BTreeSet::new();
    let mut indexes = 0;
    let mut transitions = BTreeMap::new();
    for s in &stmts {
        match s {
            Statement::CreateTable(t) => {
                tables.insert(t.name.to_string());
            }
            Statement::CreateIndex(_) => indexes += 1,
            Statement::Insert(insert) => {
                assert_eq!(insert.table.to_string(), "dbo.FollowTransition");
                let SetExpr::Values(values) = insert.source.as_ref().unwrap().body.as_ref() else {
                    panic!("FollowTransition rows are VALUES")
                };
                for row in &values.rows {
                    let cell = |i: usize| {
                        row[i]
                            .to_string()
                            .trim_start_matches("N'")
                            .trim_end_matches('\'')
                            .to_owned()
                    };
                    assert!(
                        transitions.insert((cell(0), cell(1)), cell(2)).is_none(),
                        "duplicate transition row"
                    );
                }
            }
            other => panic!("unexpected statement in V1: {other}"),
        }
    }
    let want: BTreeSet<String> = [
        "AppliedEvent",
        "DmConversation",
        "DmParticipant",
        "DmMessage",
        "DmMessageAudit",
        "DmBlock",
        "FollowEdge",
        "FollowEdgeObservation",
        "FollowTransition",
        "RealtimeMirrorCheckpoint",
        "RealtimeMirrorDeadLetter",
        "RealtimeMirrorMetrics",
    ]
    .iter()
    .map(|t| format!("dbo.{t}"))
    .collect();
    assert_eq!(tables, want);
    assert!(
        indexes >= 4,
        "IX_DmMessage_ConversationId_CreatedAt and friends"
    );
    assert!(sql.contains("CREATE INDEX IX_DmMessage_ConversationId_CreatedAt ON dbo.DmMessage (ConversationId, CreatedAt)"));

    // The transition table is the model's follow_transition, pair for pair.
    let states = [
        None,
        Some(FollowState::Pending),
        Some(FollowState::Accepted),
        Some(FollowState::Blocked),
    ];
    let text = |s: Option<FollowState>| s.map(|s| s.as_str().to_owned()).unwrap_or_default();
    let mut expected = BTreeMap::new();
    for a in states {
        for b in states {
            if let Some(kind) = follow_transition(a, b) {
                expected.insert((text(a), text(b)), kind.to_owned());
            }
        }
    }
    assert_eq!(
        transitions, expected,
        "dbo.FollowTransition vs model::follow_transition"
    );

    // Every time is DATETIMEOFFSET; no DATETIME/DATETIME2 column sneaks in.
    for bad in ["DATETIME2", "DATETIME ", "DATETIME,", "SMALLDATETIME"] {
        assert!(!sql.to_uppercase().contains(bad), "V1 uses {bad}");
    }
}

/// The second documented rewrite: ` = NULL` removed from every parameter line
/// of a `CREATE PROCEDURE` header (each must have it: the store binds only the
/// values present, tiberius' untyped NULL being rejected by Babelfish).
fn rewrite_param_defaults(label: &str, sql: &str) -> String {
    let Some(start) = sql.find("\nCREATE PROCEDURE ").map(|at| at + 1) else {
        return sql.to_owned();
    };
    let end = sql[start..]
        .find("\nAS\n")
        .unwrap_or_else(|| panic!("{label}: no `AS` line after CREATE PROCEDURE"))
        + start;
    let header: Vec<String> = sql[start..end]
        .lines()
        .map(|line| {
            if !line.trim_start().starts_with('@') {
                return line.to_owned();
            }
            let comma = line.ends_with(',');
            let bare = line.trim_end_matches(',');
            let bare = bare
                .strip_suffix(" = NULL")
                .unwrap_or_else(|| panic!("{label}: parameter `{line}` has no `= NULL` default"));
            format!("{bare}{}", if comma { "," } else { "" })
        })
        .collect();
    format!("{}{}{}", &sql[..start], header.join("\n"), &sql[end..])
}

/// Both documented rewrites; the number of THROWs rewritten.
fn rewrite(label: &str, sql: &str) -> (String, usize) {
    let (sql, throws) = rewrite_throws(label, sql);
    (rewrite_param_defaults(label, &sql), throws)
}

/// What Babelfish for PostgreSQL 4.3 does not support (issue 12, checked
/// against its public "unsupported functionality" list), as upper-case text
/// outside comments, with the reason.
const BABELFISH_BANNED: &[(&str, &str)] = &[
    (
        "CREATE OR ALTER",
        "CREATE OR ALTER: use DROP .. IF EXISTS (sqlcmd) + CREATE",
    ),
    (
        "MERGE ",
        "MERGE: use applock + UPDLOCK read + INSERT/UPDATE",
    ),
    (
        "CONVERT(VARCHAR(64), HASHBYTES",
        "CONVERT binary styles: use dbo.fn_StoreMirror_Hex",
    ),
    (
        "'APPEND $'",
        "JSON_MODIFY(.., 'append $', ..) on a root array",
    ),
    ("SINGLE_USER", "ALTER DATABASE .. SET SINGLE_USER"),
    ("EXECUTE AS", "EXECUTE AS clauses"),
    ("SEQUENCE", "not needed; keep IDENTITY"),
];

/// `CONVERT(<type>, <expr>, <style>)` with a binary style (1, 2) in `code`.
fn has_convert_binary_style(code: &str) -> Option<String> {
    let upper = code.to_uppercase();
    let mut rest = upper.as_str();
    while let Some(at) = rest.find("CONVERT(") {
        let call = &rest[at + "CONVERT(".len()..];
        // The call's arguments, up to the matching parenthesis.
        let mut depth = 1;
        let mut end = call.len();
        for (i, c) in call.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args = &call[..end];
        let mut depth = 0;
        let mut commas = Vec::new();
        for (i, c) in args.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => commas.push(i),
                _ => {}
            }
        }
        if commas.len() == 2 {
            let style = args[commas[1] + 1..].trim();
            if style == "1" || style == "2" {
                return Some(format!("CONVERT({args})"));
            }
        }
        rest = &call[end.min(call.len())..];
    }
    None
}

/// The code of a T-SQL text without `--` comments.
fn code_only(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn babelfish_violations(label: &str, sql: &str) -> Vec<String> {
    let code = code_only(sql);
    let upper = code.to_uppercase();
    let mut found: Vec<String> = BABELFISH_BANNED
        .iter()
        .filter(|(needle, _)| upper.contains(needle))
        .map(|(needle, why)| format!("{label}: `{needle}` ({why})"))
        .collect();
    if let Some(call) = has_convert_binary_style(&code) {
        found.push(format!("{label}: `{call}` (CONVERT binary style)"));
    }
    for collation in upper.split("COLLATE ").skip(1) {
        let name: String = collation
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.ends_with("_UTF8") {
            found.push(format!(
                "{label}: `COLLATE {name}` (UTF-8 collations: use dbo.fn_StoreMirror_Utf8)"
            ));
        }
    }
    found
}

#[test]
fn no_construct_babelfish_lacks_in_any_sql_file() {
    let mut scanned = 0;
    let mut violations = Vec::new();
    for dir in ["sql/mssql", "deploy/sql"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "sql" || ext == "sqlcmd" {
                let text = std::fs::read_to_string(&path).unwrap();
                violations.extend(babelfish_violations(&path.display().to_string(), &text));
                scanned += 1;
            }
        }
    }
    // The statements the Rust side sends (bookkeeping, database setup).
    for file in [
        "crates/store/src/mssql.rs",
        "crates/store/src/mssql/connection.rs",
        "crates/store/src/mssql/call.rs",
        "crates/store/src/mssql/snapshot.rs",
        "crates/store/src/mssql/batch.rs",
        "crates/store/src/mssql/checksum.rs",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        violations.extend(babelfish_violations(file, &code));
        scanned += 1;
    }
    assert!(scanned >= MIGRATIONS.len() + 5, "scanned {scanned} files");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_babelfish_scan_finds_what_it_looks_for() {
    for bad in [
        "CREATE OR ALTER PROCEDURE dbo.x AS SELECT 1;",
        "MERGE dbo.t AS t USING s ON 1 = 1 WHEN MATCHED THEN DELETE;",
        "SELECT x COLLATE Latin1_General_100_BIN2_UTF8 FROM t;",
        "SELECT CONVERT(NVARCHAR(64), HASHBYTES('SHA2_256', @x), 2);",
        "SELECT CONVERT(CHAR(64), @h, 1);",
        "UPDATE t SET j = JSON_MODIFY(j, 'append $', @v);",
        "ALTER DATABASE x SET SINGLE_USER WITH ROLLBACK IMMEDIATE;",
    ] {
        assert!(!babelfish_violations("example", bad).is_empty(), "{bad}");
    }
    for fine in [
        "SELECT CONVERT(CHAR(36), @EventId);",
        "-- CREATE OR ALTER is mentioned in a comment only\nSELECT 1;",
        "SELECT CONVERT(DATETIMEOFFSET(6), @t, 127);",
    ] {
        assert!(babelfish_violations("example", fine).is_empty(), "{fine}");
    }
}

#[test]
fn every_object_parses_with_the_two_rewrites_only() {
    let mut created = BTreeMap::new();
    // Every object file; the table files (V1, and V22's row-hash columns) are
    // parsed by their own tests.
    for (name, sql) in migration_files()
        .iter()
        .skip(1)
        .filter(|(n, _)| !n.starts_with("V22__"))
    {
        assert_no_go(name, sql);
        assert_balanced(name, sql);
        let (rewritten, throws) = rewrite(name, sql);
        let mut code_lines = rewritten
            .lines()
            .map(|l| l.split("--").next().unwrap_or(""));
        assert!(
            code_lines.all(|l| !l.to_uppercase().contains("THROW")),
            "{name}: a THROW of another form is left"
        );
        let stmts = parse(name, &rewritten);
        assert_eq!(
            stmts.len(),
            1,
            "{name}: CREATE PROCEDURE/FUNCTION/VIEW must be the only statement of its batch"
        );
        let object = match &stmts[0] {
            Statement::CreateProcedure {
                name: proc_name,
                or_alter,
                params,
                ..
            } => {
                assert!(
                    !*or_alter,
                    "{name}: CREATE OR ALTER does not exist on Babelfish"
                );
                assert!(
                    sql.contains("SET XACT_ABORT ON;") && sql.contains("SET NOCOUNT ON;"),
                    "{name}: XACT_ABORT/NOCOUNT"
                );
                let params = params.as_ref().map(|p| p.len()).unwrap_or(0);
                assert!(params > 0, "{name}: parameters");
                let proc_name = proc_name.to_string();
                if PROCEDURES.contains(&proc_name.as_str()) {
                    // The common checks (event, type, payload, subject ids)
                    // are the helper's; a delete has no checks of its own.
                    let _ = throws;
                    assert!(
                        sql.contains("@IdCount = "),
                        "{name}: the subject ids go through the shared checks"
                    );
                    assert!(
                        sql.contains("EXEC dbo.sp_StoreMirror_CheckEvent"),
                        "{name}: the shared argument checks"
                    );
                }
                if proc_name == "dbo.sp_StoreMirror_ApplyBatch" {
                    // The set-based batch (issue 9): the same helpers, set-based ledger.
                    for needle in [
                        "OPENJSON(@BatchJson, N'$.Locks')",
                        "OPENJSON(@BatchJson, N'$.Events')",
                        "EXEC dbo.sp_StoreMirror_Lock",
                        "dbo.fn_StoreMirror_IsNewer(",
                        "EXEC dbo.sp_StoreMirror_RefreshDmConversationSummary",
                        "dbo.fn_StoreMirror_IsDuplicate(e.EventId) = 0",
                        "BEGIN TRANSACTION",
                        "COMMIT TRANSACTION",
                        "INSERT INTO dbo.AppliedEvent",
                        "INSERT INTO dbo.DmMessageAudit",
                        "INSERT INTO dbo.FollowEdgeObservation",
                        "N'duplicate'",
                        "N'applied'",
                        "N'stale'",
                        "WITH (UPDLOCK)",
                    ] {
                        assert!(sql.contains(needle), "{name}: lacks {needle}");
                    }
                    assert!(!sql.contains("HOLDLOCK"), "{name}: HOLDLOCK");
                } else {
                    // Every other procedure leaves locking, the ledger and the
                    // writes to the batch: one implementation for both modes.
                    assert!(
                        !sql.contains("BEGIN TRANSACTION"),
                        "{name}: only dbo.sp_StoreMirror_ApplyBatch opens a transaction"
                    );
                }
                assert!(
                    !sql.contains("sys.sp_getapplock") || proc_name == "dbo.sp_StoreMirror_Lock",
                    "{name}: only dbo.sp_StoreMirror_Lock takes applocks"
                );
                proc_name
            }
            Statement::CreateFunction(f) => {
                assert!(
                    !f.or_alter,
                    "{name}: CREATE OR ALTER does not exist on Babelfish"
                );
                f.name.to_string()
            }
            Statement::CreateView {
                name: view,
                or_alter,
                ..
            } => {
                assert!(
                    !*or_alter,
                    "{name}: CREATE OR ALTER does not exist on Babelfish"
                );
                view.to_string()
            }
            other => panic!("{name}: not a CREATE PROCEDURE/FUNCTION/VIEW: {other}"),
        };
        assert!(
            created.insert(object.clone(), name.clone()).is_none(),
            "{object} created twice"
        );
    }
    for p in PROCEDURES {
        assert!(
            created.contains_key(*p),
            "contract procedure {p} is not created by any file"
        );
    }
    for helper in [
        "dbo.FollowEvent",
        "dbo.fn_StoreMirror_IsValidId",
        "dbo.fn_StoreMirror_Utf8",
        "dbo.fn_StoreMirror_Hex",
        "dbo.fn_StoreMirror_IsNewer",
        "dbo.fn_StoreMirror_IsDuplicate",
        "dbo.sp_StoreMirror_CheckEvent",
        "dbo.sp_StoreMirror_Lock",
        "dbo.sp_StoreMirror_RefreshDmConversationSummary",
        "dbo.sp_StoreMirror_ApplyOne",
        "dbo.sp_StoreMirror_PrepareRepair",
        "dbo.sp_StoreMirror_ApplyBatch",
    ] {
        assert!(
            created.contains_key(helper),
            "{helper} is not created: {created:?}"
        );
    }
    assert_eq!(created.len(), PROCEDURES.len() + 12, "{created:?}");
    // Every contract procedure either writes itself or hands its checked
    // arguments to its family's writer.
    for (name, sql) in migration_files().iter().skip(1) {
        if sql.contains("CREATE PROCEDURE dbo.sp_StoreMirror_Upsert")
            || sql.contains("CREATE PROCEDURE dbo.sp_StoreMirror_Delete")
        {
            assert!(
                sql.contains("EXEC dbo.sp_StoreMirror_ApplyOne @Family = N'"),
                "{name}: does not hand its checked arguments to dbo.sp_StoreMirror_ApplyOne"
            );
        }
    }
    // The only applock is the helper's, the only ledger write the batch's,
    // and every procedure of the event map goes through the batch.
    let all: String = migration_files().into_iter().map(|(_, t)| t).collect();
    assert_eq!(all.matches("EXEC sys.sp_getapplock").count(), 1);
    assert_eq!(all.matches("INSERT INTO dbo.AppliedEvent").count(), 1);
    assert_eq!(
        all.matches("EXEC dbo.sp_StoreMirror_ApplyBatch").count(),
        1,
        "ApplyOne is the only per-event caller of the batch"
    );
}

#[test]
fn entity_locks_come_first_inside_the_transaction() {
    // Only the batch locks (a batch of one for the per-event procedures):
    // every applock in the plan's order, before the ledger is read.
    let mut locking = 0;
    for (name, sql) in migration_files() {
        if let Some(lock) = sql.find("EXEC dbo.sp_StoreMirror_Lock") {
            locking += 1;
            let ledger = sql
                .find("dbo.fn_StoreMirror_IsDuplicate(")
                .unwrap_or_else(|| panic!("{name}: no ledger read"));
            assert!(lock < ledger, "{name}: entity locks before the ledger");
            let begin = sql.find("BEGIN TRANSACTION").unwrap();
            assert!(
                begin < lock,
                "{name}: the applock is owned by the transaction"
            );
        }
    }
    assert_eq!(locking, 1, "only dbo.sp_StoreMirror_ApplyBatch locks");
}

#[test]
fn keys_are_compared_as_exact_bytes() {
    // Bug 1 of issue 12: `=`, UNIQUE and PRIMARY KEY on NVARCHAR ignore
    // trailing spaces on SQL Server. Every key is a VARBINARY twin.
    let (_, tables) = &migration_files()[0];
    for constraint in [
        "UQ_DmConversation_FirestoreIdKey UNIQUE",
        "PRIMARY KEY (ConversationId, UserIdKey)",
        "UNIQUE (ConversationId, FirestoreIdKey)",
        "PRIMARY KEY NONCLUSTERED (UserIdKey, TargetUserIdKey)",
        "PRIMARY KEY NONCLUSTERED (FollowerUserIdKey, TargetUserIdKey)",
        "UQ_RealtimeMirrorDeadLetter_KeyBytes UNIQUE",
    ] {
        assert!(tables.contains(constraint), "V1 lacks {constraint}");
    }
    // Every key twin is tied to its text by a CHECK.
    for twin in tables
        .lines()
        .filter(|l| l.contains("Key VARBINARY(") || l.contains("KeyBytes VARBINARY("))
    {
        let column = twin.split_whitespace().next().unwrap();
        assert!(
            tables.contains(&format!("CHECK ({column} = CAST(")),
            "{column} has no CHECK tying it to its text"
        );
    }
    // No procedure looks an id up by its text.
    for (name, sql) in migration_files().iter().skip(1) {
        let code = code_only(sql);
        for text_lookup in [
            ".FirestoreId = @",
            ".UserId = @",
            ".TargetUserId = @",
            ".FollowerUserId = @",
            "WHERE FirestoreId = @",
            "WHERE UserId = @",
            "WHERE FollowerUserId = @",
            "GROUP BY p.UserId ",
        ] {
            assert!(
                !code.contains(text_lookup),
                "{name}: `{text_lookup}` compares text"
            );
        }
    }
}

/// The most bytes a value of a V1 column type takes in an index key (None:
/// not a type this check knows, or `MAX`).
fn key_bytes(sql_type: &str) -> Option<usize> {
    let t = sql_type.to_uppercase();
    let n = || -> Option<usize> { t[t.find('(')? + 1..t.find(')')?].trim().parse().ok() };
    match t.split('(').next()? {
        "VARBINARY" | "CHAR" | "VARCHAR" => n(),
        "NVARCHAR" | "NCHAR" => n().map(|n| 2 * n),
        "BIGINT" => Some(8),
        "INT" => Some(4),
        "BIT" => Some(1),
        "UNIQUEIDENTIFIER" => Some(16),
        "DATETIMEOFFSET" => Some(10),
        _ => None,
    }
}

#[test]
fn every_index_key_fits_sql_servers_limit() {
    // A clustered key may take 900 bytes, a nonclustered one 1,700. Two
    // VARBINARY(512) ids (128 emoji each) are 1,024 bytes, so the two-user
    // primary keys are NONCLUSTERED; otherwise a valid event would fail.
    let (_, sql) = &migration_files()[0];
    let mut columns: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut table = String::new();
    let mut keys: Vec<(String, Vec<String>, bool)> = Vec::new();
    for line in sql.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("CREATE TABLE dbo.") {
            table = rest.split_whitespace().next().unwrap().to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("CREATE INDEX ") {
            let on = rest.split(" ON dbo.").nth(1).unwrap();
            let (t, cols) = on.split_once(' ').unwrap();
            let cols = cols.trim_matches(|c| c == '(' || c == ')' || c == ';');
            keys.push((
                t.to_owned(),
                cols.split(", ").map(str::to_owned).collect(),
                false,
            ));
            continue;
        }
        if line.starts_with("--") || line.is_empty() || line.starts_with(')') {
            continue;
        }
        if line.starts_with("CONSTRAINT ") {
            for (kind, clustered) in [
                ("PRIMARY KEY NONCLUSTERED (", false),
                ("PRIMARY KEY (", true),
                ("UNIQUE (", false),
            ] {
                if let Some(at) = line.find(kind) {
                    let cols = &line[at + kind.len()..line[at..].find(')').unwrap() + at];
                    keys.push((
                        table.clone(),
                        cols.split(", ").map(str::to_owned).collect(),
                        clustered,
                    ));
                }
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(ty)) = (words.next(), words.next()) else {
            continue;
        };
        if ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && !table.is_empty()
            && name != "INSERT"
        {
            if let Some(width) = key_bytes(ty.trim_end_matches(',')) {
                columns.insert((table.clone(), name.to_owned()), width);
            }
            if line.contains(" PRIMARY KEY") {
                keys.push((
                    table.clone(),
                    vec![name.to_owned()],
                    !line.contains("NONCLUSTERED"),
                ));
            } else if line.contains(" UNIQUE") {
                keys.push((table.clone(), vec![name.to_owned()], false));
            }
        }
    }
    assert!(keys.len() >= 20, "{keys:?}");
    for (table, cols, clustered) in keys {
        let bytes: usize = cols
            .iter()
            .map(|c| {
                columns
                    .get(&(table.clone(), c.clone()))
                    .unwrap_or_else(|| panic!("{table}.{c}: no width"))
            })
            .sum();
        let limit = if clustered { 900 } else { 1700 };
        assert!(
            bytes <= limit,
            "{table} ({}) is {bytes} bytes, over {limit}",
            cols.join(", ")
        );
    }
}

#[test]
fn sqlcmd_package_includes_the_migrations_in_order_and_parses() {
    let path = repo().join("deploy/sql/deploy_realtime_mirror.sqlcmd");
    let text = std::fs::read_to_string(&path).unwrap();
    let files: BTreeMap<String, String> = migration_files().into_iter().collect();
    let mut includes = Vec::new();
    let mut first_directive_seen = false;
    let mut batches = vec![String::new()];
    for line in text.lines() {
        let t = line.trim();
        if let Some(directive) = t.strip_prefix(':') {
            if !first_directive_seen {
                assert_eq!(
                    directive.to_ascii_lowercase(),
                    "on error exit",
                    "`:on error exit` must come first"
                );
                first_directive_seen = true;
            }
            if let Some(file) = directive.strip_prefix("r ") {
                let file = file
                    .trim()
                    .trim_matches('"')
                    .strip_prefix("$(SqlDir)/")
                    .expect("includes are relative to $(SqlDir)")
                    .to_owned();
                // sqlcmd pastes the file in place.
                batches.last_mut().unwrap().push_str(&files[&file]);
                batches.last_mut().unwrap().push('\n');
                includes.push(file);
            }
            continue;
        }
        if t.eq_ignore_ascii_case("go") {
            batches.push(String::new());
            continue;
        }
        batches.last_mut().unwrap().push_str(line);
        batches.last_mut().unwrap().push('\n');
    }
    let want: Vec<String> = MIGRATIONS.iter().map(|(n, _)| format!("{n}.sql")).collect();
    assert_eq!(includes, want);
    // Each object is dropped in the batch before its file, and each file is its own batch.
    for inc in &want[1..] {
        let sql = &files[inc];
        // The row-hash columns are added once, like the tables (guarded below).
        if inc == "V22__consistency_row_hash.sql" {
            continue;
        }
        let created = sql
            .lines()
            .find_map(|l| {
                ["CREATE PROCEDURE ", "CREATE FUNCTION ", "CREATE VIEW "]
                    .iter()
                    .find_map(|p| {
                        l.strip_prefix(p)
                            .map(|rest| (p.trim_start_matches("CREATE ").trim(), rest))
                    })
            })
            .unwrap_or_else(|| panic!("{inc} creates nothing"));
        let name = created.1.split([' ', '(']).next().unwrap();
        let drop = format!(
            "DROP {} IF EXISTS {name};\nGO\n:r \"$(SqlDir)/{inc}\"\nGO\n",
            created.0
        );
        assert!(text.contains(&drop), "the package must run `{drop}`");
    }
    assert!(
        text.contains("IF OBJECT_ID(N'dbo.AppliedEvent', N'U') IS NULL\nBEGIN\n:r \"$(SqlDir)/V1__tables.sql\"\nEND;\nGO\n"),
        "the tables are created only on an empty database, so the package can run again"
    );
    assert!(
        text.contains("IF COL_LENGTH(N'dbo.DmMessage', N'MirrorRowHash') IS NULL\nBEGIN\n:r \"$(SqlDir)/V22__consistency_row_hash.sql\"\nEND;\nGO\n"),
        "the row-hash columns are added only once, so the package can run again"
    );
    let mut parsed = 0;
    for (i, batch) in batches.iter().enumerate() {
        let has_sql = code_only(batch).lines().any(|l| !l.trim().is_empty());
        if has_sql {
            let label = format!("deploy_realtime_mirror.sqlcmd batch {i}");
            assert_balanced(&label, batch);
            // V22's computed columns: sqlparser 0.59 has no syntax for them
            // (mssql_consistency_sql_parses.rs parses that file its own way).
            if batch.contains("MirrorRowHash AS ") {
                parsed += 1;
                continue;
            }
            let (rewritten, _) = rewrite(&label, batch);
            parse(&label, &rewritten);
            parsed += 1;
        }
    }
    assert_eq!(
        parsed,
        3 + 2 * (MIGRATIONS.len() - 1) - 1,
        "prologue, tables, a drop and a create per object (V22's columns: no drop), verification"
    );
    for p in PROCEDURES {
        assert!(
            text.contains(&format!("OBJECT_ID(N'{p}', N'P')")),
            "verification of {p}"
        );
    }
}

#[test]
fn powershell_wrapper_passes_the_right_flags() {
    // PowerShell is not parsed here; this checks the flags it must pass to sqlcmd.
    let text =
        std::fs::read_to_string(repo().join("deploy/sql/deploy_realtime_mirror.ps1")).unwrap();
    for needle in [
        "[string] $Server",
        "[string] $Database",
        "[switch] $G",
        "[string] $Username",
        "'-b'",
        "'-I'",
        "\"SqlDir=$sqlDir\"",
        "$arguments += '-G'",
        "Split-Path -Parent $MyInvocation.MyCommand.Path",
        "deploy_realtime_mirror.sqlcmd",
        "$LASTEXITCODE",
    ] {
        assert!(
            text.contains(needle),
            "deploy_realtime_mirror.ps1 lacks {needle}"
        );
    }
    assert!(
        !text.contains("-P "),
        "never pass a password on the command line"
    );
}

/// The parameters a `CREATE PROCEDURE` header declares.
fn declared_params(sql: &str) -> Vec<String> {
    let start = sql.find("\nCREATE PROCEDURE ").expect("a procedure");
    let end = start + sql[start..].find("\nAS\n").expect("AS");
    sql[start..end]
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('@'))
        .map(|l| format!("@{}", l.split_whitespace().next().unwrap()))
        .collect()
}

#[test]
fn every_named_argument_of_an_internal_call_is_declared_by_the_callee() {
    // Named EXEC arguments are resolved only when the call runs; a typo would
    // first show on a server. Check them against the callee's header here.
    let files = migration_files();
    let header = |proc_name: &str| {
        let (_, sql) = files
            .iter()
            .find(|(_, t)| t.contains(&format!("CREATE PROCEDURE {proc_name} (")))
            .unwrap_or_else(|| panic!("no file creates {proc_name}"));
        declared_params(sql)
    };
    let mut calls = 0;
    for callee in [
        "dbo.sp_StoreMirror_ApplyOne",
        "dbo.sp_StoreMirror_CheckEvent",
        "dbo.sp_StoreMirror_ApplyBatch",
        "dbo.sp_StoreMirror_Lock",
        "dbo.sp_StoreMirror_RefreshDmConversationSummary",
    ] {
        let declared = header(callee);
        for (name, sql) in &files {
            let code = code_only(sql);
            for call in code.split(&format!("EXEC {callee} ")).skip(1) {
                let args = &call[..call.find(';').expect("EXEC ends with ;")];
                for arg in args.split(',') {
                    let param = arg.split('=').next().unwrap().trim();
                    assert!(
                        declared.iter().any(|d| d == param),
                        "{name}: {callee} declares no {param} ({declared:?})"
                    );
                }
                calls += 1;
            }
        }
    }
    // 7 event procedures call ApplyOne and CheckEvent; one call each of the rest.
    assert!(calls >= 17, "{calls} calls checked");
}
