//! The Firestore adapters (feature `firestore`, crate `firestore` 0.61): a
//! [`ListenTransport`](crate::live::ListenTransport) over the raw gRPC
//! `Listen` call and a [`DocumentPager`](crate::backfill::DocumentPager) over
//! `RunQuery`/`RunAggregationQuery`.
//!
//! Why the raw `Listen` call rather than the crate's `FirestoreListener`: the
//! listener stores resume tokens itself on per-target `CURRENT`s and after
//! reconnects it hides, re-adds targets on its own and drops tokens on errors
//! without telling the callback. The mirror must persist a token only after
//! every event before it is published, and must know when a target is listened
//! to from scratch to compute deletions, so the pure core drives the protocol
//! and this adapter only moves messages. It uses `FirestoreDb::client()` (the
//! crate's documented escape hatch to the `gcloud-sdk` client) for that, and
//! `FirestoreDb` for connection, credentials and `FIRESTORE_EMULATOR_HOST`.
//!
//! Nothing outside this module sees an SDK type.

mod convert;
#[cfg(test)]
mod fake_server;
mod pager;
mod transport;

pub use pager::FirestorePager;
pub use transport::FirestoreTransport;

pub use firestore::FirestoreDb;

/// Connect to `project`'s `database` (`(default)` for the default one).
/// Honours `FIRESTORE_EMULATOR_HOST` (no credentials are looked up then);
/// otherwise uses Application Default Credentials.
pub async fn connect(
    project: &str,
    database: &str,
) -> Result<FirestoreDb, firestore::errors::FirestoreError> {
    let options = firestore::FirestoreDbOptions::new(project.to_owned())
        .with_database_id(database.to_owned());
    FirestoreDb::with_options(options).await
}

/// The SDK itself, for integration tests and tools that write documents.
pub use ::firestore as sdk;
