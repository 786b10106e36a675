//! A cost model of the live path against a model Firestore, for the
//! convergence property test and for `mirrorctl bench` (reads per document).
//!
//! The model server keeps documents under `conversations/{random key}`,
//! answers `Add` with a token or read time (changes since then, billed one
//! read per changed document) or without (the full state of the target's key
//! range, billed one read per document), and treats a token or read time
//! older than [`TOKEN_LIFE_SECS`] as a new query (billed as a full read, as
//! Firestore does). Instances run [`ListenCore`] over range targets, persist
//! [`ResumeState`] at consistent points, and on a restart beyond token life
//! run a bounded recovery (documents updated since the checkpoint minus an
//! overlap, then [`ListenCore::start_at`]); deletions inside such a gap are
//! left to the consistency check, which the model then applies and counts.
//! It does not model existence filters, resets or stream breaks inside a
//! window (`sim.rs` covers those) nor the bus (publishes apply at once).

use std::collections::{BTreeMap, HashMap};

use super::{Change, DeleteCause, ListenCore, ListenRequest, ListenResponse, Output, ResumeState};
use super::{TargetChange, TargetChangeKind};
use crate::sink::{KeyRange, Shard};
use crate::value::{Document, Timestamp};

/// A resume beyond this many seconds is billed as a new query.
pub const TOKEN_LIFE_SECS: i64 = 30 * 60;
/// Versions older than this cannot be read (no point-in-time recovery).
pub const RETENTION_SECS: i64 = 60 * 60;
/// Overlap subtracted from the checkpoint for a recovery backfill.
pub const RECOVERY_OVERLAP_SECS: i64 = 5 * 60;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub initial_docs: usize,
    /// Rounds of writes (each 1–3 writes or deletes, 1–120 s apart).
    pub rounds: usize,
    pub shards: u32,
    /// Percent chance per round of an outage of every instance.
    pub outage_percent: u64,
    /// Longest outage, seconds.
    pub max_outage_secs: i64,
    /// Percent chance per round of a resharding to a random count 1..=4.
    pub reshard_percent: u64,
}

/// What it cost and whether the mirror converged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostReport {
    /// Document versions written to the source (initial documents included).
    pub versions_written: u64,
    /// Reads billed to listen streams.
    pub listen_reads: u64,
    /// Reads billed to recovery backfills and full backfills.
    pub backfill_reads: u64,
    /// Document gets confirming deletes the server did not state.
    pub confirm_reads: u64,
    /// Deletions only the consistency check closed (inside recovery gaps).
    pub deletions_left_to_check: u64,
    pub outages: u64,
    pub reshards: u64,
    /// The mirror equals the source at the end.
    pub converged: bool,
}

impl CostReport {
    pub fn reads(&self) -> u64 {
        self.listen_reads + self.backfill_reads + self.confirm_reads
    }
    /// Billed reads per document version written.
    pub fn reads_per_document(&self) -> f64 {
        self.reads() as f64 / self.versions_written.max(1) as f64
    }
}

/// The scenarios `mirrorctl bench` reports (name, cost): steady state on one
/// and on four shards, short outages (resumed from tokens), outages beyond
/// token life (bounded recoveries), and reshardings.
pub fn bench_scenarios() -> Vec<(&'static str, CostReport)> {
    let base = Scenario {
        seed: 7,
        initial_docs: 2_000,
        rounds: 400,
        shards: 1,
        outage_percent: 0,
        max_outage_secs: 0,
        reshard_percent: 0,
    };
    let runs = [
        ("steady, 1 shard", base.clone()),
        (
            "steady, 4 shards",
            Scenario {
                shards: 4,
                ..base.clone()
            },
        ),
        (
            "outages < token life",
            Scenario {
                outage_percent: 3,
                max_outage_secs: 1_500,
                ..base.clone()
            },
        ),
        (
            "outages > token life",
            Scenario {
                outage_percent: 3,
                max_outage_secs: 3_500,
                ..base.clone()
            },
        ),
        (
            "reshardings",
            Scenario {
                reshard_percent: 2,
                ..base
            },
        ),
    ];
    runs.into_iter()
        .map(|(n, s)| (n, run_scenario(&s)))
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn key(&mut self) -> String {
        const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        (0..8)
            .map(|_| A[self.below(A.len() as u64) as usize] as char)
            .collect()
    }
}

fn ts(t: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_000_000_000 + t, 0).expect("in range")
}
fn secs(t: Timestamp) -> i64 {
    t.timestamp() - 1_000_000_000
}

const TARGET: i32 = 1;

#[derive(Default)]
struct Source {
    clock: i64,
    /// path → (create, update)
    docs: BTreeMap<String, (i64, i64)>,
    /// path → latest delete time
    deletes: BTreeMap<String, i64>,
}

impl Source {
    fn doc(path: &str, (c, u): (i64, i64)) -> Document {
        Document {
            path: path.to_owned(),
            fields: BTreeMap::new(),
            create_time: ts(c),
            update_time: ts(u),
        }
    }
    fn in_range<'a>(
        &'a self,
        r: &'a KeyRange,
    ) -> impl Iterator<Item = (&'a String, &'a (i64, i64))> {
        self.docs.iter().filter(move |(p, _)| r.contains_path(p))
    }
}

/// The mirror: newest time wins; a delete is a tombstone.
#[derive(Default)]
struct Mirror(HashMap<String, (i64, Option<(i64, i64)>)>);
impl Mirror {
    fn put(&mut self, path: &str, time: i64, v: Option<(i64, i64)>) {
        match self.0.get(path) {
            Some((t, _)) if *t > time => {}
            _ => {
                self.0.insert(path.to_owned(), (time, v));
            }
        }
    }
    fn live(&self) -> impl Iterator<Item = (&String, (i64, i64))> {
        self.0.iter().filter_map(|(p, (_, v))| v.map(|v| (p, v)))
    }
}

struct Instance {
    shard: Shard,
    range: KeyRange,
    core: ListenCore,
}

fn hash(range: &KeyRange) -> String {
    format!("{:?}-{:?}", range.lo, range.hi)
}

/// Run one scenario (deterministic per seed).
pub fn run_scenario(s: &Scenario) -> CostReport {
    let mut rng = Rng(s.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut src = Source::default();
    let mut mirror = Mirror::default();
    let mut report = CostReport::default();
    let mut checkpoints: HashMap<String, ResumeState> = HashMap::new();
    for _ in 0..s.initial_docs {
        let p = format!("conversations/{}", rng.key());
        src.docs.insert(p, (0, 0));
        report.versions_written += 1;
    }
    src.clock = 1;
    let mut instances = start_all(
        s.shards,
        &mut src,
        &mut mirror,
        &mut checkpoints,
        &mut report,
    );
    for _ in 0..s.rounds {
        let since = src.clock;
        src.clock += 1 + rng.below(120) as i64;
        writes(&mut src, &mut rng, &mut report);
        // Live delivery: each instance sees the round's changes in its range.
        for inst in &mut instances {
            deliver_changes(
                inst,
                &src,
                since,
                &mut mirror,
                &mut checkpoints,
                &mut report,
            );
        }
        if rng.chance(s.outage_percent) {
            report.outages += 1;
            // The source keeps changing while nothing listens.
            let end = src.clock + 1 + rng.below(s.max_outage_secs.max(1) as u64) as i64;
            while src.clock < end {
                src.clock = end.min(src.clock + 1 + rng.below(120) as i64);
                writes(&mut src, &mut rng, &mut report);
            }
            instances = start_all(
                instances[0].shard.count,
                &mut src,
                &mut mirror,
                &mut checkpoints,
                &mut report,
            );
        }
        if rng.chance(s.reshard_percent) {
            report.reshards += 1;
            let n = 1 + rng.below(4) as u32;
            instances = start_all(n, &mut src, &mut mirror, &mut checkpoints, &mut report);
        }
    }
    report.converged = src.docs.len() == mirror.live().count()
        && mirror.live().all(|(p, v)| src.docs.get(p) == Some(&v));
    report
}

/// One to three writes or deletes at the current clock.
fn writes(src: &mut Source, rng: &mut Rng, report: &mut CostReport) {
    for _ in 0..=rng.below(3) {
        let now = src.clock;
        let existing: Vec<String> = src.docs.keys().cloned().collect();
        if !existing.is_empty() && rng.chance(30) {
            let p = existing[rng.below(existing.len() as u64) as usize].clone();
            src.docs.remove(&p);
            src.deletes.insert(p, now);
        } else {
            let p = if !existing.is_empty() && rng.chance(50) {
                existing[rng.below(existing.len() as u64) as usize].clone()
            } else {
                format!("conversations/{}", rng.key())
            };
            let c = src.docs.get(&p).map_or(now, |v| v.0);
            src.docs.insert(p, (c, now));
            report.versions_written += 1;
        }
    }
}

/// (Re)start every instance of an `n`-way sharding from its checkpoint.
fn start_all(
    n: u32,
    src: &mut Source,
    mirror: &mut Mirror,
    checkpoints: &mut HashMap<String, ResumeState>,
    report: &mut CostReport,
) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            let shard = Shard::new(i, n).expect("i < n");
            let range = KeyRange::of_shard(shard, None).expect("n <= 62");
            let saved = checkpoints.get(&shard.id()).cloned();
            let age = saved
                .as_ref()
                .and_then(|r| r.read_time)
                .map(|t| src.clock - secs(t));
            let (mut core, _) = ListenCore::for_targets(
                &[(TARGET, hash(&range))],
                Some(saved.clone().unwrap_or_default()),
            );
            let seed: HashMap<String, Timestamp> = mirror
                .live()
                .filter(|(p, _)| range.contains_path(p))
                .map(|(p, (_, u))| (p.clone(), ts(u)))
                .collect();
            match age {
                Some(age) if age > TOKEN_LIFE_SECS => {
                    // Bounded recovery, then listen from now.
                    let cp = src.clock - age;
                    let from = if age <= RETENTION_SECS {
                        cp - RECOVERY_OVERLAP_SECS
                    } else {
                        i64::MIN
                    };
                    let mut read = 0u64;
                    for (p, v) in src.in_range(&range) {
                        if v.1 >= from {
                            mirror.put(p, v.1, Some(*v));
                            read += 1;
                        }
                    }
                    report.backfill_reads += read.max(1);
                    // What only the consistency check can close.
                    let gone: Vec<String> = seed
                        .keys()
                        .filter(|p| !src.docs.contains_key(*p))
                        .cloned()
                        .collect();
                    report.deletions_left_to_check += gone.len() as u64;
                    for p in gone {
                        mirror.put(&p, src.clock, None);
                    }
                    core.start_at(ts(src.clock));
                }
                _ => core.seed_membership(TARGET, seed), // no effect when known
            }
            let mut inst = Instance { shard, range, core };
            let reqs = inst.core.start_stream();
            let mut q = Vec::new();
            for r in reqs {
                answer(&r, &inst.range, src, &mut q, report);
            }
            q.push(global(src.clock));
            feed(&mut inst, q, src, mirror, checkpoints, report);
            inst
        })
        .collect()
}

fn global(at: i64) -> ListenResponse {
    ListenResponse::TargetChange(TargetChange {
        kind: TargetChangeKind::NoChange,
        target_ids: vec![],
        resume_token: at.to_string().into_bytes(),
        read_time: Some(ts(at)),
        cause: None,
    })
}

fn change(path: &str, v: (i64, i64)) -> ListenResponse {
    ListenResponse::DocumentChange {
        doc: Source::doc(path, v),
        target_ids: vec![TARGET],
        removed_target_ids: vec![],
    }
}

/// The server's answer to one request, appended to `q`.
fn answer(
    r: &ListenRequest,
    range: &KeyRange,
    src: &Source,
    q: &mut Vec<ListenResponse>,
    report: &mut CostReport,
) {
    let ListenRequest::Add {
        resume_token,
        read_time,
        ..
    } = r
    else {
        return;
    };
    let tc = |kind, token: Option<i64>| {
        ListenResponse::TargetChange(TargetChange {
            kind,
            target_ids: vec![TARGET],
            resume_token: token
                .map(|t| t.to_string().into_bytes())
                .unwrap_or_default(),
            read_time: None,
            cause: None,
        })
    };
    q.push(tc(TargetChangeKind::Add, None));
    let since = match (resume_token, read_time) {
        (Some(t), _) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.parse::<i64>().ok()),
        (None, Some(t)) => Some(secs(*t)),
        (None, None) => None,
    };
    match since {
        Some(t) if src.clock - t <= TOKEN_LIFE_SECS => {
            for (p, v) in src.in_range(range) {
                if v.1 > t {
                    q.push(change(p, *v));
                    report.listen_reads += 1;
                }
            }
            for (p, d) in &src.deletes {
                if *d > t && range.contains_path(p) && !src.docs.contains_key(p) {
                    q.push(ListenResponse::DocumentDelete {
                        path: p.clone(),
                        read_time: Some(ts(*d)),
                        removed_target_ids: vec![TARGET],
                    });
                }
            }
        }
        stale => {
            // No token, or one too old: the full state, billed as a new query.
            if stale.is_some() {
                q.push(tc(TargetChangeKind::Reset, None));
            }
            let mut n = 0;
            for (p, v) in src.in_range(range) {
                q.push(change(p, *v));
                n += 1;
            }
            report.listen_reads += n.max(1);
        }
    }
    q.push(tc(TargetChangeKind::Current, Some(src.clock)));
}

fn deliver_changes(
    inst: &mut Instance,
    src: &Source,
    since: i64,
    mirror: &mut Mirror,
    checkpoints: &mut HashMap<String, ResumeState>,
    report: &mut CostReport,
) {
    let mut q = Vec::new();
    for (p, v) in src.in_range(&inst.range) {
        if v.1 > since {
            q.push(change(p, *v));
            report.listen_reads += 1;
        }
    }
    for (p, d) in &src.deletes {
        if *d > since && inst.range.contains_path(p) && !src.docs.contains_key(p) {
            q.push(ListenResponse::DocumentDelete {
                path: p.clone(),
                read_time: Some(ts(*d)),
                removed_target_ids: vec![TARGET],
            });
        }
    }
    q.push(global(src.clock));
    feed(inst, q, src, mirror, checkpoints, report);
}

fn feed(
    inst: &mut Instance,
    q: Vec<ListenResponse>,
    src: &Source,
    mirror: &mut Mirror,
    checkpoints: &mut HashMap<String, ResumeState>,
    report: &mut CostReport,
) {
    for m in q {
        for out in inst.core.on_response(m) {
            match out {
                Output::Upsert(Change::Upsert { doc, .. }) => mirror.put(
                    &doc.path,
                    secs(doc.update_time),
                    Some((secs(doc.create_time), secs(doc.update_time))),
                ),
                Output::Emit(snap) => {
                    for c in &snap.changes {
                        if let Change::Delete { path, time, cause } = c {
                            if cause.needs_confirmation() {
                                report.confirm_reads += 1;
                                if let Some(v) = src.docs.get(path) {
                                    mirror.put(path, v.1, Some(*v));
                                    continue;
                                }
                            }
                            let _ = DeleteCause::Deleted;
                            mirror.put(path, secs(*time), None);
                        }
                    }
                    checkpoints.insert(inst.shard.id(), inst.core.resume_state_with_members());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(seed: u64) -> Scenario {
        let mut r = Rng(seed | 1);
        Scenario {
            seed,
            initial_docs: r.below(60) as usize,
            rounds: 20 + r.below(60) as usize,
            shards: 1 + r.below(4) as u32,
            outage_percent: r.below(15),
            max_outage_secs: [60, 1_200, 2_400, 5_000][r.below(4) as usize],
            reshard_percent: r.below(10),
        }
    }

    /// Random writes, deletes, restarts after outages of random length
    /// (inside and beyond token life and retention) and reshardings: the
    /// mirror converges to the source every time.
    #[test]
    fn the_mirror_converges_through_outages_restarts_and_reshardings() {
        let mut totals = CostReport::default();
        for seed in 0..300 {
            let s = scenario(seed);
            let r = run_scenario(&s);
            assert!(r.converged, "seed {seed}: {s:?} {r:?}");
            totals.outages += r.outages;
            totals.reshards += r.reshards;
            totals.deletions_left_to_check += r.deletions_left_to_check;
        }
        eprintln!("{totals:?}");
        assert!(totals.outages > 50 && totals.reshards > 20, "{totals:?}");
    }

    /// Without outages a shard reads each document version about once; the
    /// shards together read no more than one instance would.
    #[test]
    fn bench_scenarios_converge() {
        for (name, r) in bench_scenarios() {
            eprintln!("{name}: {:.3} reads/document {r:?}", r.reads_per_document());
            assert!(r.converged, "{name}");
        }
    }

    #[test]
    fn reads_per_document_stay_near_one_and_sharding_does_not_multiply_them() {
        let base = Scenario {
            seed: 7,
            initial_docs: 500,
            rounds: 200,
            shards: 1,
            outage_percent: 0,
            max_outage_secs: 0,
            reshard_percent: 0,
        };
        let one = run_scenario(&base);
        let four = run_scenario(&Scenario {
            shards: 4,
            ..base.clone()
        });
        assert!(one.converged && four.converged);
        assert!(one.reads_per_document() < 1.1, "{one:?}");
        assert!(four.reads() <= one.reads() + 4, "{one:?} vs {four:?}");
        // Short outages resume from tokens; long ones cost a bounded recovery
        // rather than a full re-read of the whole database each time.
        let short = run_scenario(&Scenario {
            outage_percent: 5,
            max_outage_secs: 600,
            ..base.clone()
        });
        let long = run_scenario(&Scenario {
            outage_percent: 5,
            max_outage_secs: 3_000,
            ..base.clone()
        });
        assert!(short.converged && long.converged);
        for (name, r) in [
            ("1 shard", &one),
            ("4 shards", &four),
            ("short outages", &short),
            ("long outages", &long),
        ] {
            eprintln!("{name}: {:.3} reads/document {r:?}", r.reads_per_document());
        }
        assert!(short.reads_per_document() < 1.2, "{short:?}");
        assert!(
            long.backfill_reads > 0 && long.reads_per_document() < 2.0,
            "{long:?}"
        );
    }
}
