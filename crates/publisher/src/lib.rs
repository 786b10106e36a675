//! The Firestore publisher: tails Firestore with a resumable listen stream
//! (and backfills with cursor paging) and publishes contract events.
//!
//! Code map:
//! - [`value`]: SDK-free documents and values.
//! - [`listen`]: the pure Listen-protocol state machine.
//! - [`mapping`]: document → [`mirror_schema::MirrorEvent`], or a typed error.
//! - [`sink`]: publishing mapped events (shard filter, dead letters).
//! - [`live`]: the live loop over a [`live::ListenTransport`] port.
//! - [`seed`]: the fixture seed format (a recorded change history) → events.
//! - [`backfill`]: paging collection groups through a [`backfill::DocumentPager`] port.
//! - `firestore` (feature `firestore`): the adapters for both ports.
//! - [`testing`]: in-memory bus, store and pager for tests.
//!
//! Architecture invariant: only `firestore` knows the SDK; everything else is
//! tested with in-memory fakes.

pub mod backfill;
pub mod listen;
pub mod live;
pub mod mapping;
pub mod seed;
pub mod sink;
pub mod testing;
pub mod value;

#[cfg(feature = "firestore")]
pub mod firestore;

pub use live::run;

/// What the publisher needs of a store: its resume positions, the SQL rows of
/// documents it could not turn into events, and the mirror's rows (what an
/// earlier run published, when a restart resumes). Any
/// [`mirror_store::MirrorStore`] has them; test fakes implement only these.
pub trait PublisherStore:
    mirror_store::CheckpointStore + mirror_store::DeadLetterStore + mirror_store::InspectStore
{
}

impl<T> PublisherStore for T where
    T: mirror_store::CheckpointStore + mirror_store::DeadLetterStore + mirror_store::InspectStore
{
}
