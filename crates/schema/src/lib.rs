//! The realtime-mirror event contract (`shared/event-contract.md`, v1) as Rust types.
//!
//! This crate is the product's public API in code: the publisher builds events
//! with it, the sql-writer decodes them with it, and every other producer is
//! judged by it. It does no IO and cannot fail for IO reasons; every decoding
//! failure is a [`DecodeError`] that names the attribute or field that was
//! wrong, and decoding never panics on any input (see the fuzz target).
//!
//! The entry points:
//! - [`MirrorEvent::new`] builds a valid event (deterministic id, partition key).
//! - [`decode_structured`] / [`decode_wire`] turn bytes off a bus into a validated
//!   [`MirrorEvent`].
//! - [`MirrorEvent::to_structured_json`] / [`MirrorEvent::to_cloudevent`] encode.

pub mod amqp;
mod direct;
mod error;
mod event;
mod payload;
mod subject;
mod time;
mod types;
pub mod wire;

pub use error::DecodeError;
pub use event::{
    decode_cloudevent, decode_structured, decode_structured_reference, deterministic_id,
    MirrorEvent, ID_NAMESPACE, PUBLISH_TIME_ATTRIBUTE,
};
pub use payload::{
    BlockPayload, BlockSource, ConversationKind, ConversationPayload, FollowEdgePayload,
    FollowSource, FollowState, MessageDeletePayload, MessagePayload, MuteState, Participant,
    ParticipantRole, Payload,
};
pub use subject::{Subject, MAX_ID_LEN};
pub use time::{format_time, parse_time, SourceTime};
pub use types::{EventFamily, EventType, Op};
pub use wire::{decode_wire, ClaimedAttributes, WireMessage, WireValue};

/// Largest encoded event the mirror accepts (256 KiB, the Service Bus Standard limit).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The content type of a structured-mode CloudEvent in JSON.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
