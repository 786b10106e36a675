//! The Firestore side of `mirrorctl bench`: billed reads per document version,
//! from the publisher's cost model of its live path
//! (`publisher::listen::model::bench_scenarios`: a model Firestore billed as
//! Firestore bills listens, resumes, recoveries and gets, driven by the real
//! `ListenCore`). A model, not a measurement against Firestore: no server
//! is involved (five scenarios of 2,000 documents and 400 write rounds:
//! about 12 s in a debug build, a small fraction of the writer's bench).

use serde::Serialize;

/// One scenario's cost.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub versions_written: u64,
    pub listen_reads: u64,
    pub backfill_reads: u64,
    pub confirm_reads: u64,
    pub reads_per_document: f64,
    /// Deletions inside a recovery gap that only the consistency check closes.
    pub deletions_left_to_check: u64,
    pub outages: u64,
    pub reshards: u64,
    pub converged: bool,
}

/// Run the model's scenarios.
pub fn rows() -> Vec<Row> {
    publisher::listen::model::bench_scenarios()
        .into_iter()
        .map(|(scenario, r)| Row {
            scenario,
            versions_written: r.versions_written,
            listen_reads: r.listen_reads,
            backfill_reads: r.backfill_reads,
            confirm_reads: r.confirm_reads,
            reads_per_document: r.reads_per_document(),
            deletions_left_to_check: r.deletions_left_to_check,
            outages: r.outages,
            reshards: r.reshards,
            converged: r.converged,
        })
        .collect()
}

/// The rows as a table a person reads.
pub fn table(rows: &[Row]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "Firestore model scenario",
        "versions written",
        "listen reads",
        "backfill reads",
        "confirm gets",
        "reads / document",
        "deletes left to check",
        "outages",
        "reshards",
        "converged",
    ]);
    for r in rows {
        t.add_row([
            r.scenario.to_owned(),
            r.versions_written.to_string(),
            r.listen_reads.to_string(),
            r.backfill_reads.to_string(),
            r.confirm_reads.to_string(),
            format!("{:.3}", r.reads_per_document),
            r.deletions_left_to_check.to_string(),
            r.outages.to_string(),
            r.reshards.to_string(),
            if r.converged { "yes" } else { "NO" }.to_owned(),
        ]);
    }
    t
}

/// Print after the writer's figures: a table, or with `--json` one more JSON
/// line `{"firestore_reads": [...]}` after the writer's.
pub fn print(json: bool) {
    let started = std::time::Instant::now();
    let rows = rows();
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({ "firestore_reads": rows, "model_seconds": seconds })
        );
    } else {
        println!(
            "{}\nFirestore reads per document version: the publisher's cost model (publisher::listen::model, {seconds:.1} s), not a measurement against Firestore",
            table(&rows)
        );
    }
}

#[cfg(test)]
mod tests {
    // The model's own convergence and cost are tested in the publisher
    // (`listen::model::tests`); here only the rendering.
    #[test]
    fn the_table_shows_every_column_of_a_row() {
        let row = super::Row {
            scenario: "steady, 1 shard",
            versions_written: 2_800,
            listen_reads: 2_900,
            backfill_reads: 0,
            confirm_reads: 3,
            reads_per_document: 2_903.0 / 2_800.0,
            deletions_left_to_check: 0,
            outages: 0,
            reshards: 0,
            converged: true,
        };
        let text = super::table(&[row]).to_string();
        for want in ["steady, 1 shard", "2800", "2900", "1.037", "yes"] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
