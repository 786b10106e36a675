//! sql-writer: consumes contract events from a subscription and applies them to
//! SQL through the store's stored procedures, idempotently.
//!
//! The crate is generic over the two ports ([`mirror_bus::EventBus`],
//! [`mirror_store::MirrorStore`]) and never sees a driver or transport type:
//! `main.rs` picks the adapters from [`config::Settings`] and calls
//! [`writer::run`]. Connecting the configured adapters is `mirror-runtime`'s
//! job, re-exported here as [`adapters`], [`with_bus!`] and [`with_store!`].

pub mod config;
pub mod db_errors;
pub mod dead_letters;
pub mod defaults;
pub mod health;
pub mod lock_table;
pub mod policy;
pub mod replay;
pub mod telemetry;
pub mod writer;

pub use mirror_runtime::{adapters, with_bus, with_store};
pub use writer::{run, Deps, RunReport, WriterError, WriterSettings};
