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

/// A fresh database and topic with the store migrated and the bus's topology in place.
pub struct Pipeline {
    pub db: FreshDb,
    pub topic: FreshTopic,
    pub bus: std::sync::Arc<mirror_bus::jetstream::JetStreamBus>,
    pub store: std::sync::Arc<mirror_store::postgres::PgStore>,
    /// A plain SQL connection, for damaging the mirror behind the pipeline's back.
    pub sql: tokio_postgres::Client,
}

impl Pipeline {
    pub async fn new() -> Pipeline {
        use mirror_bus::EventBus;
        let db = FreshDb::create().await;
        let topic = FreshTopic::new();
        let store = mirror_store::postgres::PgStore::connect(&mirror_store::postgres::PgConfig {
            url: secrecy::SecretString::from(db.url.clone()),
            pool_size: 4,
            statement_timeout: std::time::Duration::from_secs(30),
        })
        .await
        .expect("connect store");
        store.migrate().await.expect("migrate");
        let bus =
            mirror_bus::jetstream::JetStreamBus::connect(mirror_bus::jetstream::JetStreamConfig {
                url: topic.url.clone(),
                topic: topic.topic.clone(),
                ..Default::default()
            })
            .await
            .expect("connect bus");
        bus.ensure_topology().await.expect("topology");
        let sql = db.client().await;
        Pipeline {
            db,
            topic,
            bus: std::sync::Arc::new(bus),
            store: std::sync::Arc::new(store),
            sql,
        }
    }

    /// Run the writer until the subscription is idle.
    pub async fn drain(&self) -> sql_writer::RunReport {
        crate::drain_writer(self.bus.clone(), self.store.clone()).await
    }

    /// `mirrorctl consistency --source firestore …` on this pipeline (see [`consistency`]).
    pub async fn consistency(&self, project: &str, extra: &[&str]) -> Run {
        consistency(project, &self.db, &self.topic, extra).await
    }

    async fn one(&self, query: &str) -> String {
        self.sql.query_one(query, &[]).await.expect(query).get(0)
    }

    /// Pick the documents to damage and damage the SQL side: a block row
    /// deleted, a message body altered. The source side (`edited`: a message
    /// to change, `unfollowed`: a follow to delete) is the caller's to damage.
    pub async fn damage(&self) -> Damage {
        let edited = self.one("SELECT 'conversations/' || c.firestore_id || '/messages/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE NOT m.tombstone ORDER BY 1 LIMIT 1").await;
        let unfollowed = self.one("SELECT 'follows/' || follower_user_id || '/targets/' || target_user_id FROM mirror.follow_edge WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
        let block_gone = self.one("SELECT user_id || '/' || target_user_id FROM mirror.dm_block WHERE deleted_at IS NULL ORDER BY 1 LIMIT 1").await;
        self.sql
            .execute(
                "DELETE FROM mirror.dm_block WHERE user_id || '/' || target_user_id = $1",
                &[&block_gone],
            )
            .await
            .unwrap();
        let tampered = self.one("SELECT c.firestore_id || '/' || m.firestore_id FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE NOT m.tombstone ORDER BY 1 DESC LIMIT 1").await;
        self.sql.execute("UPDATE mirror.dm_message m SET body_text = 'tampered' FROM mirror.dm_conversation c WHERE c.conversation_id = m.conversation_id AND c.firestore_id || '/' || m.firestore_id = $1", &[&tampered]).await.unwrap();
        Damage {
            edited,
            unfollowed,
            block_gone,
            tampered,
        }
    }

    /// The body of the message at `path` in SQL.
    pub async fn body(&self, path: &str) -> String {
        self.sql
            .query_one("SELECT m.body_text FROM mirror.dm_message m JOIN mirror.dm_conversation c USING (conversation_id) WHERE 'conversations/' || c.firestore_id || '/messages/' || m.firestore_id = $1", &[&path])
            .await
            .unwrap()
            .get(0)
    }
}

/// What [`Pipeline::damage`] picked (document paths for the source side, keys for SQL).
pub struct Damage {
    pub edited: String,
    pub unfollowed: String,
    pub block_gone: String,
    pub tampered: String,
}

impl Damage {
    /// The run found exactly the four differences, each by its kind and key.
    pub fn assert_found(&self, run: &Run) {
        let total = &run.report["total"];
        for kind in [
            "version_mismatch",
            "missing_in_source",
            "missing_in_sql",
            "field_mismatch",
        ] {
            assert_eq!(total[kind], 1, "{kind}: {}", run.report);
        }
        let found = examples(&run.report);
        let edited = self
            .edited
            .trim_start_matches("conversations/")
            .replace("/messages/", "/");
        let unfollowed = self
            .unfollowed
            .trim_start_matches("follows/")
            .replace("/targets/", "/");
        for want in [
            format!("\"version_mismatch\" \"{edited}\""),
            format!("\"missing_in_source\" \"{unfollowed}\""),
            format!("\"missing_in_sql\" \"{}\"", self.block_gone),
            format!("\"field_mismatch\" \"{}\"", self.tampered),
        ] {
            assert!(found.contains(&want), "{want} not in {found:?}");
        }
        let drift = run.report["drift_pct"].as_f64().unwrap();
        let pushed = metric(
            &run.metrics,
            "mirror_consistency_drift_percent",
            "module=\"all\",scope=\"full\"",
        );
        assert!((pushed - drift).abs() < 1e-9, "{pushed} vs {drift}");
    }
}
