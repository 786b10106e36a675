//! The SQL Server SQL, checked without a SQL Server (none runs on the
//! development machine) by sqlparser's `MsSqlDialect`, batch by batch.
//!
//! What is parsed and what is not, exactly:
//!
//! - `sql/mssql/V1__tables.sql`: parsed as is, every statement; the tables,
//!   indexes and the FollowTransition rows are read from the syntax tree, and
//!   the rows are compared with `model::follow_transition`.
//! - `sql/mssql/V2..V9` (one `CREATE OR ALTER PROCEDURE` each): parsed as is
//!   with ONE rewrite, because sqlparser 0.59 has no `THROW` statement: every
//!   `THROW <number>, N'<text>', 1;` is first checked to have exactly that
//!   form (5-digit number, literal message, state 1), then replaced by
//!   `RAISERROR(N'<text>', 16, 1);`, which sqlparser does parse, before the
//!   whole procedure is parsed. Nothing else is rewritten. The THROW numbers
//!   are checked against the documented list by the unit tests of
//!   `mssql::errors`.
//! - Parameter defaults (`@x INT = NULL`) and `EXEC @rc = proc` are not
//!   supported by sqlparser 0.59 either; the procedures avoid both (every
//!   parameter is always bound by the store; the applock result is checked
//!   with `APPLOCK_MODE`), so no rewrite is needed for them.
//! - `deploy/sql/deploy_realtime_mirror.sqlcmd`: the sqlcmd directives
//!   (`:on error exit`, `:r`) are not T-SQL and are checked as text (present,
//!   first, the includes equal to the migrations in order); `GO` splits
//!   batches and every remaining T-SQL batch is parsed.
//! - `deploy/sql/deploy_realtime_mirror.ps1` is PowerShell: not parsed, only
//!   checked for the sqlcmd flags it must pass.
//!
//! Also checked by hand: no `GO` inside a migration file, BEGIN/END (and
//! CASE/END) balance in every file, and every procedure of the contract's
//! event -> procedure map is created exactly once, as the first statement of
//! its batch. Parsing says nothing about name resolution, types or semantics:
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
        "FollowEvent",
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

#[test]
fn every_procedure_parses_with_the_throw_rewrite_only() {
    let mut created = BTreeMap::new();
    // Procedure files (`V*__sp_*`); table files are parsed by their own tests.
    for (name, sql) in migration_files()
        .iter()
        .filter(|(n, _)| n.contains("__sp_"))
    {
        assert_no_go(name, sql);
        assert_balanced(name, sql);
        assert!(
            sql.contains("SET XACT_ABORT ON;") && sql.contains("SET NOCOUNT ON;"),
            "{name}: XACT_ABORT/NOCOUNT"
        );
        assert!(!sql.to_uppercase().contains("MERGE "), "{name}: no MERGE");
        let (rewritten, throws) = rewrite_throws(name, sql);
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
            "{name}: CREATE PROCEDURE must be the only statement of its batch"
        );
        let Statement::CreateProcedure {
            name: proc_name,
            or_alter,
            params,
            ..
        } = &stmts[0]
        else {
            panic!("{name}: not a CREATE PROCEDURE")
        };
        assert!(
            *or_alter,
            "{name}: CREATE OR ALTER, so the sqlcmd package can re-deploy"
        );
        let params = params.as_ref().map(|p| p.len()).unwrap_or(0);
        assert!(params > 0, "{name}: parameters");
        if proc_name.to_string() != "dbo.sp_StoreMirror_RefreshDmConversationSummary" {
            assert!(throws >= 4, "{name}: validation THROWs");
            for outcome in [
                "N'applied' AS Outcome",
                "N'duplicate' AS Outcome",
                "N'stale' AS Outcome",
            ] {
                assert!(sql.contains(outcome), "{name}: returns {outcome}");
            }
            assert!(
                sql.contains("WITH (UPDLOCK)")
                    && !sql.contains("HOLDLOCK")
                    && sql.contains("APPLOCK_MODE")
                    && sql.contains("sys.sp_getapplock"),
                "{name}: locking"
            );
        }
        assert!(
            created
                .insert(proc_name.to_string(), name.clone())
                .is_none(),
            "{proc_name} created twice"
        );
    }
    for p in PROCEDURES {
        assert!(
            created.contains_key(*p),
            "contract procedure {p} is not created by any file"
        );
    }
    assert_eq!(
        created.len(),
        PROCEDURES.len() + 1,
        "the procedures plus the summary helper: {created:?}"
    );
}

#[test]
fn conversation_lock_is_taken_before_message_lock() {
    for (name, sql) in migration_files() {
        if let (Some(c), Some(m)) = (
            sql.find("@Resource = @ConversationLock"),
            sql.find("@Resource = @MessageLock"),
        ) {
            assert!(c < m, "{name}: conversation lock first");
        }
        if let Some(lock) = sql.find("sys.sp_getapplock") {
            let ledger = sql.find("FROM dbo.AppliedEvent WITH (UPDLOCK)").unwrap();
            assert!(lock < ledger, "{name}: entity locks before the ledger");
        }
    }
}

#[test]
fn sqlcmd_package_includes_the_migrations_in_order_and_parses() {
    let path = repo().join("deploy/sql/deploy_realtime_mirror.sqlcmd");
    let text = std::fs::read_to_string(&path).unwrap();
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
                let file = file.trim().trim_matches('"');
                includes.push(
                    file.strip_prefix("$(SqlDir)/")
                        .expect("includes are relative to $(SqlDir)")
                        .to_owned(),
                );
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
    // Each include is followed by GO, so each file is its own batch.
    for inc in &want {
        let at = text.find(inc.as_str()).unwrap();
        let after = text[at..].lines().nth(1).unwrap_or("").trim();
        assert!(
            after.eq_ignore_ascii_case("go"),
            "{inc} must be followed by GO"
        );
    }
    let mut parsed = 0;
    for (i, batch) in batches.iter().enumerate() {
        let has_sql = batch
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"));
        if has_sql {
            assert_balanced(&format!("sqlcmd batch {i}"), batch);
            parse(&format!("deploy_realtime_mirror.sqlcmd batch {i}"), batch);
            parsed += 1;
        }
    }
    assert_eq!(parsed, 2, "the prologue and the verification batch");
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
