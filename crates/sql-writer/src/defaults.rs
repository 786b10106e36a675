//! The default of every writer option, defined once.
//!
//! [`crate::config`]'s flag help (`[default: …]`), its merge of flags, the
//! environment and the TOML file, [`crate::WriterSettings::default`] and
//! [`crate::policy::RetryPolicy::default`] all read these constants (as
//! ripgrep's `flags/` keeps each flag's default beside its definition). Files
//! Rust does not read at run time — the IaC and the docs — are checked
//! against them by `tests/tests/defaults.rs` and `deploy/azure/validate.py`.

use std::time::Duration;

use mirror_store::ApplyMode;

/// `--subscription`.
pub const SUBSCRIPTION: &str = mirror_bus::SQL_WRITER_SUBSCRIPTION;
/// `--batch-size`: most events per batch and per SQL transaction. 512, not
/// 256: `mirrorctl bench --only process`, alternating runs in one session,
/// drained 15,000–19,700 events/s against 13,100–14,700 with ~15 % less
/// database CPU per event (fixed costs per statement and per commit); the
/// writer's peak RSS is 55–56 MiB against 47 (goal 64). Batches form
/// adaptively, so light load still sends small ones.
pub const BATCH_SIZE: usize = 512;
/// `--linger-ms`.
pub const LINGER: Duration = Duration::from_millis(5);
/// `--apply`.
pub const APPLY_MODE: ApplyMode = ApplyMode::Batched;
/// `--concurrency`.
pub const CONCURRENCY: usize = 4;
/// `--max-attempts`: the broker's delivery limit too (one setting).
pub const MAX_ATTEMPTS: u32 = mirror_bus::DEFAULT_MAX_DELIVERIES;
/// `--min-backoff-ms`.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// `--max-backoff-ms`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// `--apply-timeout-secs`.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// `--shutdown-deadline-secs`.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// A flag's help line ending in its default, as clap prints it.
pub fn help(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}
