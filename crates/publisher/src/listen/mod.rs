//! The pure core of the live path: Firestore's `Listen` protocol as a state
//! machine over abstract messages.
//!
//! [`ListenCore`] is fed [`ListenResponse`]s (already converted from gRPC by the
//! adapter) and answers with [`Output`]s: requests to send on the stream and
//! [`Snapshot`]s of document changes, emitted only at *consistent points*.
//! It does no IO, owns no clock and cannot fail for IO reasons, so every
//! protocol corner is unit-tested with synthetic transcripts (`tests.rs`).
//!
//! # Rules (see also `docs/firestore-mapping.md`)
//!
//! - **Upserts go out at once** ([`Output::Upsert`]): a document version is
//!   real and its event id deterministic, so it need not wait; a version equal
//!   to or older than the last one handed out for the path is not repeated.
//! - **Consistent points.** Deletions are buffered and emitted, with the
//!   resume state, when a target change with *no* target ids and a
//!   `read_time` arrives (any kind, as the Firebase SDKs): the server's
//!   promise that every target is consistent at that read time.
//! - **Tokens.** A target's token becomes *safe* (part of [`ResumeState`]) only
//!   at a consistent point at which the target is `CURRENT`, has no request in
//!   flight and is not being reset. The caller persists a snapshot's resume
//!   state only after publishing every upsert and change before it.
//!   [`ResumeState`] also holds each token's query hash (a token is used only
//!   for the same query) and the membership behind it (up to a cap).
//! - **Target errors.** A REMOVE with a cause (no ids: every target) ends the
//!   run for `PERMISSION_DENIED`, `NOT_FOUND`, `FAILED_PRECONDITION` and
//!   `UNIMPLEMENTED` ([`Output::Fail`]); drops the token for
//!   `INVALID_ARGUMENT`; otherwise reconnects at the maximum backoff keeping
//!   the safe tokens. An unasked REMOVE without a cause drops the target's
//!   uncommitted state and reconnects from its safe token.
//! - **Resets.** `RESET`, an existence-filter mismatch without a usable bloom
//!   filter, a rejected token and a target added without a token start a
//!   *reset*: the server resends the full state and, once the target is
//!   `CURRENT` at a consistent point, every document of the old membership
//!   that was not resent is emitted as a delete at that point's read time.
//! - **Existence filters.** With a known membership, `expected_count` is sent;
//!   on a mismatch a bloom filter removes what it proves gone, else the
//!   target re-syncs (remove + add without a token). With an unknown
//!   membership (a read-time start) the mismatch is only reported.
//! - **Create or update.** `create` iff `create_time == update_time`, for
//!   every producer alike (the contract's id hashes the type).
//! - **Deletes.** `DocumentDelete`, `DocumentRemove` or a change that drops
//!   the document from its last target emit a delete at the message's
//!   `read_time` (or the consistent point's); those the server did not state
//!   ([`DeleteCause::needs_confirmation`]) are confirmed by the driver.
//! - **Limbo.** Upserts handed out in a window that never reached its
//!   consistent point (and, after a restart, the mirror's documents newer
//!   than the checkpoint) must be resent by the next consistent point at
//!   which every target is current, or they are emitted as
//!   [`DeleteCause::Unconfirmed`] deletes.

mod bloom;
mod core;
pub mod model;
mod resume;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use self::bloom::{BloomFilter, BloomFilterError};
pub use self::core::{ListenCore, DEFAULT_MAX_PERSISTED_MEMBERS};
pub use self::resume::{ResumeState, ResumeStateError};

use crate::value::{Document, Timestamp};

/// A listen target id, as on the wire.
pub type TargetId = i32;

/// `TargetChange.target_change_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetChangeKind {
    NoChange,
    Add,
    Remove,
    Current,
    Reset,
}

/// Why the server removed a target (`google.rpc.Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub code: i32,
    pub message: String,
}

/// `ListenResponse.target_change`.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetChange {
    pub kind: TargetChangeKind,
    /// Empty means every target.
    pub target_ids: Vec<TargetId>,
    /// Empty means no token.
    pub resume_token: Vec<u8>,
    pub read_time: Option<Timestamp>,
    pub cause: Option<Cause>,
}

/// One message of the listen stream, SDK-free.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenResponse {
    TargetChange(TargetChange),
    DocumentChange {
        doc: Document,
        target_ids: Vec<TargetId>,
        removed_target_ids: Vec<TargetId>,
    },
    DocumentDelete {
        path: String,
        read_time: Option<Timestamp>,
        removed_target_ids: Vec<TargetId>,
    },
    DocumentRemove {
        path: String,
        removed_target_ids: Vec<TargetId>,
        read_time: Option<Timestamp>,
    },
    Filter {
        target_id: TargetId,
        count: i32,
        /// `ExistenceFilter.unchanged_names`, when the server sent one.
        unchanged_names: Option<BloomFilter>,
    },
}

/// A request the driver must send on the open stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenRequest {
    /// Add the target; with a token it resumes, with a read time it starts
    /// after that time, with neither the server sends the full state.
    Add {
        target_id: TargetId,
        resume_token: Option<Vec<u8>>,
        /// `Target.read_time` (only without a token).
        read_time: Option<Timestamp>,
        /// `Target.expected_count`: the documents the target held at the
        /// token, when known; asks the server for a bloom filter with any
        /// existence filter.
        expected_count: Option<i32>,
    },
    Remove {
        target_id: TargetId,
    },
}

/// How soon to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The driver's current (growing) delay.
    Normal,
    /// Straight to the maximum delay: the server is overloaded or failing.
    Max,
}

/// Why the run cannot go on: the server ended a target with an error no
/// retry fixes (as the official clients treat a target error as final).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Firestore removed listen target {target_id}: {code_name} ({code}): {message}")]
pub struct TargetFailure {
    pub target_id: TargetId,
    pub code: i32,
    pub code_name: &'static str,
    pub message: String,
}

/// gRPC status codes the core distinguishes (`google.rpc.Code`).
pub mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;

    /// The name of a code, for messages.
    pub fn name(code: i32) -> &'static str {
        match code {
            0 => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            INVALID_ARGUMENT => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            NOT_FOUND => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            PERMISSION_DENIED => "PERMISSION_DENIED",
            RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
            FAILED_PRECONDITION => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            UNIMPLEMENTED => "UNIMPLEMENTED",
            INTERNAL => "INTERNAL",
            UNAVAILABLE => "UNAVAILABLE",
            15 => "DATA_LOSS",
            UNAUTHENTICATED => "UNAUTHENTICATED",
            _ => "UNRECOGNISED",
        }
    }
}

/// How the stream ended, as far as the core cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Network trouble, server restart, idle timeout: resume with the safe tokens.
    Transient,
    /// The server rejected the request as invalid (`INVALID_ARGUMENT`), which a
    /// stale or expired resume token causes: every target is re-listened to from
    /// scratch and reconciled against the last consistent membership.
    TokenRejected,
}

/// `create` or `update` of a document version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOp {
    Create,
    Update,
}

impl UpsertOp {
    /// The rule for every producer: `create` iff `create_time == update_time`.
    pub fn of(doc: &Document) -> UpsertOp {
        if doc.create_time == doc.update_time {
            UpsertOp::Create
        } else {
            UpsertOp::Update
        }
    }
}

/// Why a delete was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteCause {
    /// `DocumentDelete`.
    Deleted,
    /// `DocumentRemove`, or a change that took the document out of its last target.
    Removed,
    /// Not resent after a reset (or re-sync) of its target.
    MissingAfterReset,
    /// Not in the bloom filter of an existence filter that disagreed with
    /// the target's count (a document name never leaves an unfiltered target
    /// otherwise).
    NotInExistenceFilter,
    /// Its upsert went out before a consistent point that never came (a
    /// broken stream, a restart) and the server did not send it again.
    Unconfirmed,
}

impl DeleteCause {
    /// Whether the driver should confirm the delete with a document get
    /// before publishing it: the server did not say the document was deleted.
    pub fn needs_confirmation(self) -> bool {
        matches!(self, DeleteCause::Removed | DeleteCause::Unconfirmed)
    }
}

/// One change to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Upsert {
        doc: Document,
        op: UpsertOp,
    },
    Delete {
        path: String,
        time: Timestamp,
        cause: DeleteCause,
    },
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Upsert { doc, .. } => &doc.path,
            Change::Delete { path, .. } => path,
        }
    }

    /// The contract's `time` for this change.
    pub fn time(&self) -> Timestamp {
        match self {
            Change::Upsert { doc, .. } => doc.update_time,
            Change::Delete { time, .. } => *time,
        }
    }
}

/// The changes of one consistent point and the resume state valid once they are published.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub read_time: Timestamp,
    /// Ordered by `(time, path)`.
    pub changes: Vec<Change>,
    pub resume: ResumeState,
}

/// Something the operator should know; never an error of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The target was reset or re-synced while its membership before the last
    /// restart was unknown: deletions from before that reset may be missing.
    DeletionsMayBeIncomplete { target_id: TargetId },
    /// An existence filter disagreed with the target's document count; a re-sync started.
    FilterMismatch {
        target_id: TargetId,
        expected: i32,
        held: usize,
    },
    /// The server removed a target with a retryable cause (resource
    /// exhausted, unavailable, internal, …): the stream reconnects at the
    /// maximum delay, resuming from the safe token. With `INVALID_ARGUMENT`
    /// the token is dropped and the target is listened to from scratch.
    TargetRemoved { target_id: TargetId, cause: Cause },
    /// The server removed a target without a cause and without being asked
    /// to: its uncommitted state is dropped and the stream reconnects,
    /// resuming from the safe token (which never moved past an undelivered change).
    TargetRemovedUnasked { target_id: TargetId },
    /// An existence filter disagreed with a target whose membership is not
    /// known (a start from a read time, a changed query): deletions the
    /// server only reveals that way are not emitted; run the consistency check.
    FilterMismatchUnknownMembership {
        target_id: TargetId,
        expected: i32,
        held: usize,
    },
    /// An existence filter's bloom filter showed which documents left the
    /// target; they are emitted as deletes without re-reading it.
    BloomFilterApplied { target_id: TargetId, removed: usize },
    /// A target's saved token was for another query (the target's definition
    /// or this instance's ranges changed): it starts without it.
    QueryChanged { target_id: TargetId },
    /// The server reset a target; its state is being resent.
    TargetReset { target_id: TargetId },
}

/// What the core asks of its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send(ListenRequest),
    /// Close the stream and open a new one (after a delay) with [`ListenCore::start_stream`].
    Reconnect(Backoff),
    /// Publish this upsert now (it is a real version with a deterministic
    /// id): upserts are not held back for consistent points, so a large
    /// initial load is not buffered whole. The next [`Output::Emit`]'s resume
    /// state is valid only once this was published too.
    Upsert(Change),
    /// A consistent point: its deletions (upserts went out as [`Output::Upsert`]).
    Emit(Snapshot),
    Notice(Notice),
    /// End the run with this error (a target error no retry fixes).
    Fail(TargetFailure),
}
