//! Drift: compare the state the source says the mirror should hold with what
//! SQL holds, per table, and render the result for people (table, HTML) and
//! machines (JSON).
//!
//! Counted per table: rows checked, `missing_in_sql` (the source has it, SQL
//! does not), `missing_in_source` (SQL has it, the source does not — the
//! plan's `missingFirestore`), and `mismatched` (both have it, fields differ).
//! Drift % = (missing_in_sql + missing_in_source + mismatched) / checked.
//! The phase-2 plan alerts above 0.5 % or when `missing_in_source` > 100.

use std::collections::BTreeMap;

use mirror_store::MirrorState;
use serde::Serialize;

/// Drift of one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableDrift {
    pub table: String,
    pub checked: usize,
    pub missing_in_sql: usize,
    pub missing_in_source: usize,
    pub mismatched: usize,
    /// Up to 20 examples: `key: what differs`.
    pub examples: Vec<String>,
}

impl TableDrift {
    pub fn drifted(&self) -> usize {
        self.missing_in_sql + self.missing_in_source + self.mismatched
    }
    pub fn drift_pct(&self) -> f64 {
        if self.checked == 0 {
            0.0
        } else {
            100.0 * self.drifted() as f64 / self.checked as f64
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub source: String,
    pub generated_at: chrono::DateTime<chrono::Utc>,
    pub tables: Vec<TableDrift>,
    pub checked: usize,
    pub drifted: usize,
    pub drift_pct: f64,
    pub threshold_pct: f64,
    pub missing_in_source_limit: usize,
    /// True when the drift is above the threshold or too many rows are missing in the source.
    pub alert: bool,
}

fn compare_map<K: Ord + std::fmt::Debug, V: PartialEq + Serialize>(
    table: &str,
    expected: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> TableDrift {
    let mut d = TableDrift {
        table: table.to_owned(),
        ..TableDrift::default()
    };
    let note = |d: &mut TableDrift, s: String| {
        if d.examples.len() < 20 {
            d.examples.push(s);
        }
    };
    for (k, v) in expected {
        d.checked += 1;
        match actual.get(k) {
            None => {
                d.missing_in_sql += 1;
                note(&mut d, format!("{k:?}: missing in SQL"));
            }
            Some(a) if a != v => {
                d.mismatched += 1;
                note(&mut d, format!("{k:?}: {}", field_diff(v, a)));
            }
            Some(_) => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            d.checked += 1;
            d.missing_in_source += 1;
            note(&mut d, format!("{k:?}: in SQL but not in the source"));
        }
    }
    d
}

/// `field: expected → actual` for each differing field.
fn field_diff<V: Serialize>(expected: &V, actual: &V) -> String {
    let (e, a) = (
        serde_json::to_value(expected).unwrap_or_default(),
        serde_json::to_value(actual).unwrap_or_default(),
    );
    match (e.as_object(), a.as_object()) {
        (Some(e), Some(a)) => e
            .iter()
            .filter(|(k, v)| a.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {} → {}", v, a.get(k).cloned().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        _ => format!("{e} → {a}"),
    }
}

/// Compare the entity tables of `expected` (from the source) and `actual` (SQL).
pub fn compare(
    source: &str,
    expected: &MirrorState,
    actual: &MirrorState,
    threshold_pct: f64,
    missing_in_source_limit: usize,
) -> DriftReport {
    let tables = vec![
        compare_map(
            "dm_conversation",
            &expected.conversations,
            &actual.conversations,
        ),
        compare_map(
            "dm_participant",
            &expected.participants,
            &actual.participants,
        ),
        compare_map("dm_message", &expected.messages, &actual.messages),
        compare_map("dm_block", &expected.blocks, &actual.blocks),
        compare_map("follow_edge", &expected.follow_edges, &actual.follow_edges),
    ];
    let checked = tables.iter().map(|t| t.checked).sum();
    let drifted = tables.iter().map(|t| t.drifted()).sum();
    let missing_in_source: usize = tables.iter().map(|t| t.missing_in_source).sum();
    let drift_pct = if checked == 0 {
        0.0
    } else {
        100.0 * drifted as f64 / checked as f64
    };
    DriftReport {
        source: source.to_owned(),
        generated_at: chrono::Utc::now(),
        tables,
        checked,
        drifted,
        drift_pct,
        threshold_pct,
        missing_in_source_limit,
        alert: drift_pct > threshold_pct || missing_in_source > missing_in_source_limit,
    }
}

impl DriftReport {
    /// A terminal table.
    pub fn to_table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header([
            "table",
            "checked",
            "missing in SQL",
            "missing in source",
            "mismatched",
            "drift %",
        ]);
        for d in &self.tables {
            t.add_row([
                d.table.clone(),
                d.checked.to_string(),
                d.missing_in_sql.to_string(),
                d.missing_in_source.to_string(),
                d.mismatched.to_string(),
                format!("{:.3}", d.drift_pct()),
            ]);
        }
        t.add_row([
            "total".into(),
            self.checked.to_string(),
            String::new(),
            String::new(),
            String::new(),
            format!("{:.3}", self.drift_pct),
        ]);
        let mut out = format!("{t}\n");
        for d in &self.tables {
            for e in &d.examples {
                out.push_str(&format!("  {}: {e}\n", d.table));
            }
        }
        out.push_str(&format!(
            "{}: drift {:.3} % (threshold {:.2} %), source {}\n",
            if self.alert { "ALERT" } else { "OK" },
            self.drift_pct,
            self.threshold_pct,
            self.source
        ));
        out
    }

    /// A self-contained HTML page.
    pub fn to_html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut rows = String::new();
        for d in &self.tables {
            let cls = if d.drifted() > 0 {
                " class=\"bad\""
            } else {
                ""
            };
            rows.push_str(&format!(
                "<tr{cls}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>\n",
                esc(&d.table),
                d.checked,
                d.missing_in_sql,
                d.missing_in_source,
                d.mismatched,
                d.drift_pct()
            ));
        }
        let mut examples = String::new();
        for d in &self.tables {
            for e in &d.examples {
                examples.push_str(&format!(
                    "<li><code>{}</code> {}</li>\n",
                    esc(&d.table),
                    esc(e)
                ));
            }
        }
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>realtime-mirror drift report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr.bad td {{ background: #fde8e8; }}
.status {{ font-size: 1.3em; font-weight: 600; color: {color}; }}
</style></head><body>
<h1>realtime-mirror drift report</h1>
<p class="status">{status}: drift {pct:.3} % (threshold {thr:.2} %)</p>
<p>Source: {source}<br>Generated: {at}<br>Rows checked: {checked}, drifted: {drifted}</p>
<table><tr><th>table</th><th>checked</th><th>missing in SQL</th><th>missing in source</th><th>mismatched</th><th>drift %</th></tr>
{rows}</table>
<h2>Examples</h2><ul>{examples}</ul>
</body></html>
"#,
            color = if self.alert { "#b00" } else { "#070" },
            status = if self.alert { "ALERT" } else { "OK" },
            pct = self.drift_pct,
            thr = self.threshold_pct,
            source = esc(&self.source),
            at = self.generated_at.to_rfc3339(),
            checked = self.checked,
            drifted = self.drifted,
            rows = rows,
            examples = if examples.is_empty() {
                "<li>none</li>".to_owned()
            } else {
                examples
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_schema::*;
    use mirror_store::model::Model;

    fn follow(follower: &str, state: FollowState, secs: i64) -> MirrorEvent {
        let subject = Subject::FollowEdge {
            follower_user_id: follower.into(),
            target_user_id: "t".into(),
        };
        let time = chrono::DateTime::from_timestamp(1_760_000_000 + secs, 0).unwrap();
        let source = MirrorEvent::firestore_source("demo", &subject);
        MirrorEvent::new(
            EventType::FollowEdgeCreate,
            subject,
            time,
            source,
            Payload::FollowEdge(FollowEdgePayload {
                state,
                source: FollowSource::Web,
                created_at: time,
            }),
        )
        .unwrap()
    }

    #[test]
    fn counts_missing_extra_and_mismatched() {
        let mut expected = Model::new();
        let mut actual = Model::new();
        for i in 0..10 {
            expected.apply(&follow(&format!("u{i}"), FollowState::Accepted, i));
        }
        for i in 1..10 {
            let state = if i == 5 {
                FollowState::Pending
            } else {
                FollowState::Accepted
            };
            actual.apply(&follow(&format!("u{i}"), state, i));
        }
        actual.apply(&follow("extra", FollowState::Accepted, 99));
        let r = compare("test", &expected.state(), &actual.state(), 0.5, 100);
        let f = r.tables.iter().find(|t| t.table == "follow_edge").unwrap();
        assert_eq!(
            (f.checked, f.missing_in_sql, f.missing_in_source),
            (11, 1, 1)
        );
        assert!(f.mismatched >= 1);
        assert!(r.alert);
        assert!(
            f.examples.iter().any(|e| e.contains("state")),
            "{:?}",
            f.examples
        );
        assert!(r.to_table().contains("ALERT"));
        assert!(r.to_html().contains("<table>"));
        let same = compare("test", &expected.state(), &expected.state(), 0.5, 100);
        assert!(!same.alert && same.drifted == 0);
    }
}
