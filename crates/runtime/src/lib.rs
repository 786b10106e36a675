//! mirror-runtime: the edge wiring the jobs share.
//!
//! [`config`] holds the bus and store options every job takes (flags with
//! environment fallbacks) and validates them once into settings; [`adapters`]
//! turns settings into connected adapters. sql-writer, publisher and mirrorctl
//! all use these, so an option means the same thing, with the same default and
//! the same error, in every binary. [`telemetry`] sets up logging and the
//! metrics recorder; [`health`] serves `/healthz`, `/readyz` and `/metrics`;
//! [`backoff`] is the one backoff every retry loop of the jobs waits by.
//!
//! **Architecture Invariant:** this is the only crate besides the adapter
//! crates themselves that names concrete adapter types; the cores (the writer
//! loop, the publisher's listen core and backfill) stay generic over the ports.

pub mod adapters;
pub mod backoff;
pub mod config;
pub mod health;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod telemetry;
