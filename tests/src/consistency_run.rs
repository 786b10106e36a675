//! Running `mirrorctl consistency --source firestore` as an operator types it
//! (the flags parsed by clap, then `cli::run`), for the tests against the
//! fake Firestore and the emulator; and the fixtures' current documents.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clap::Parser;
use mirrorctl::consistency::cli::ConsistencyArgs;
use publisher::seed::SeedFile;

use crate::{FreshDb, FreshTopic};

/// The fixtures' seed file.
pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/realtime_mirror_seed.json"
);

/// One live document of the fixtures' current state.
pub struct CurrentDoc {
    pub path: String,
    pub fields: serde_json::Value,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// The fixtures' current state: the last change of every path (a delete
/// removes it), created at the path's first change since it last came into
/// existence.
pub fn current_docs(seed: &SeedFile) -> Vec<CurrentDoc> {
    let mut created: BTreeMap<&str, &str> = BTreeMap::new();
    let mut last: BTreeMap<&str, &publisher::seed::SeedChange> = BTreeMap::new();
    for c in &seed.changes {
        if c.op == "delete" {
            last.remove(c.path.as_str());
            created.remove(c.path.as_str());
        } else {
            created.entry(&c.path).or_insert(&c.update_time);
            last.insert(&c.path, c);
        }
    }
    let t = |s: &str| mirror_schema::parse_time("updateTime", s).expect("fixture times parse");
    last.into_iter()
        .map(|(path, c)| CurrentDoc {
            path: path.to_owned(),
            fields: c.fields.clone(),
            create_time: t(created[path]),
            update_time: t(&c.update_time),
        })
        .collect()
}

pub fn seed() -> SeedFile {
    serde_json::from_str(&std::fs::read_to_string(FIXTURES).expect("fixtures")).expect("seed file")
}

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: ConsistencyArgs,
}

/// One run: its exit code, its JSON report and its metrics textfile.
pub struct Run {
    pub code: u8,
    pub report: serde_json::Value,
    pub metrics: String,
}

/// `mirrorctl consistency --source firestore --firestore-project P --grace 0
/// --json-file … --metrics-file …` on this database and topic, plus `extra`.
pub async fn consistency(project: &str, db: &FreshDb, topic: &FreshTopic, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let prom = dir.path().join("consistency.prom");
    let mut argv: Vec<String> = [
        "consistency",
        "--source",
        "firestore",
        "--firestore-project",
        project,
        "--grace",
        "0",
        "--json-file",
        &json.display().to_string(),
        "--metrics-file",
        &prom.display().to_string(),
        "--store",
        "postgres",
        "--database-url",
        &db.url,
        "--bus",
        "nats",
        "--nats-url",
        &topic.url,
        "--topic",
        &topic.topic,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    let cmd = Cmd::try_parse_from(&argv).expect("the flags an operator types parse");
    let code = mirrorctl::consistency::cli::run(cmd.args, false)
        .await
        .expect("the check runs");
    Run {
        code,
        report: serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap(),
        metrics: std::fs::read_to_string(&prom).unwrap(),
    }
}

/// The value of one series in a Prometheus text (`labels` as written, in order).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

/// `kind key` of every example in a report, e.g. `"missing_in_sql" "u1/u2"`.
pub fn examples(report: &serde_json::Value) -> Vec<String> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["examples"].as_array().unwrap().clone())
        .map(|f| format!("{} {}", f["kind"], f["key"]))
        .collect()
}
