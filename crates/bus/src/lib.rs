//! The `EventBus` port: a topic of contract events with competing-consumer
//! subscriptions and a dead-letter queue, and its adapters.
//!
//! Adapters: [`jetstream`] (NATS JetStream, feature `nats`) and [`servicebus`]
//! (Azure Service Bus over AMQP 1.0, feature `servicebus`). Nothing outside an
//! adapter sees a transport type: messages cross the port as
//! [`mirror_schema::WireMessage`], and the writer decodes them with the one
//! decoder in `mirror-schema`.
//!
//! # Delivery contract (every adapter)
//!
//! - **At-least-once.** A message is redelivered until it is completed or
//!   dead-lettered; consumers must tolerate duplicates (the mirror's stored
//!   procedures are idempotent by event id).
//! - **Duplicate suppression on publish** within the broker's window, keyed on
//!   [`OutboundMessage::message_id`] (JetStream `Nats-Msg-Id`, Service Bus `MessageId`).
//! - **Peek-lock.** A received [`Delivery`] is invisible to other consumers of
//!   the same subscription until it is settled or its lock (JetStream ack wait)
//!   expires; [`Delivery::keep_alive`] extends the lock.
//! - **Settlement** is explicit and final: [`Delivery::complete`] after the
//!   effect is committed, [`Delivery::retry`] for a transient failure (the broker
//!   redelivers later; no lock is held while waiting), [`Delivery::dead_letter`]
//!   for a permanent one (the message moves to the dead-letter queue with its
//!   reason and is removed from the subscription).
//! - **No ordering** is promised across messages; the mirror does not need it.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mirror_schema::{MirrorEvent, WireMessage};

#[cfg(feature = "nats")]
pub mod jetstream;
#[cfg(feature = "servicebus")]
pub mod servicebus;
pub mod telemetry;

/// The topic and subscription names of the plan.
pub const TOPIC: &str = "realtime-mirror";
pub const SQL_WRITER_SUBSCRIPTION: &str = "sql-writer";
pub const MONITORING_SUBSCRIPTION: &str = "monitoring";

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// The broker's duplicate-detection key; the event id for a first publish.
    pub message_id: String,
    /// Per-entity ordering key (Service Bus `SessionId` when sessions are enabled).
    pub partition_key: Option<String>,
    pub message: WireMessage,
}

impl OutboundMessage {
    /// Structured-mode message for `event`, keyed by its id and partition key.
    pub fn from_event(event: &MirrorEvent) -> OutboundMessage {
        OutboundMessage {
            message_id: event.id().to_string(),
            partition_key: Some(event.partition_key().to_owned()),
            message: WireMessage::structured(event),
        }
    }

    /// [`OutboundMessage::from_event`] with the publish time stamped in the
    /// [`mirror_schema::PUBLISH_TIME_ATTRIBUTE`] extension, for per-hop
    /// latency. The message id stays the event id, so duplicate detection
    /// still drops a re-publish.
    pub fn from_event_published_at(event: &MirrorEvent, at: DateTime<Utc>) -> OutboundMessage {
        OutboundMessage::from_event(&event.clone().with_published_at(at))
    }
}

/// What the broker did with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Published,
    /// The broker's duplicate detection dropped it (same message id within the window).
    Duplicate,
}

/// Why a message is being dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Short, stable reason (`DeadLetterReason`): `invalid_field`, `retries_exhausted`, …
    pub reason: String,
    /// The full error text (`DeadLetterErrorDescription`).
    pub description: String,
    /// How many times delivery was attempted.
    pub attempts: u32,
}

/// Called with each message an adapter dead-letters on its own (JetStream's
/// max-deliveries watcher), so the caller can record it elsewhere too — the
/// writer's SQL dead-letter row.
pub type DeadLetterHook = std::sync::Arc<dyn Fn(WireMessage, DeadLetter) + Send + Sync>;

/// A message in a subscription's dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLettered {
    /// Adapter-specific handle used to remove it ([`EventBus::remove_dead_letter`]).
    pub handle: String,
    /// The message id it was first published with, if known.
    pub original_message_id: Option<String>,
    pub message: WireMessage,
    pub reason: String,
    pub description: String,
    pub attempts: u32,
    pub dead_lettered_at: Option<DateTime<Utc>>,
}

/// How much work a subscription still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Messages not yet delivered (includes those waiting for a delayed redelivery).
    pub pending: u64,
    /// Messages delivered and not yet settled.
    pub in_flight: u64,
}

/// A failure talking to the broker. All are treated as transient by the
/// writer's policy except [`BusError::Config`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("bus configuration: {0}")]
    Config(String),
    #[error("cannot connect to the bus: {0}")]
    Connect(String),
    #[error("{op}: {message}")]
    Operation { op: &'static str, message: String },
    #[error("message `{message_id}` is {size} bytes, over the broker's limit")]
    TooLarge { message_id: String, size: usize },
}

impl BusError {
    pub fn op(op: &'static str, e: impl std::fmt::Display) -> BusError {
        BusError::Operation {
            op,
            message: e.to_string(),
        }
    }
}

/// A topic of contract events (see the module docs for the delivery contract).
pub trait EventBus: Send + Sync + 'static {
    type Receiver: Receiver;

    /// Create the topic, the subscriptions and the dead-letter queue if they do
    /// not exist; leave them alone if they do. Safe to call from every process.
    fn ensure_topology(&self) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Publish one message; resolves once the broker has stored it.
    fn publish(
        &self,
        message: &OutboundMessage,
    ) -> impl Future<Output = Result<PublishOutcome, BusError>> + Send;

    /// Open a competing consumer on `subscription`.
    fn subscribe(
        &self,
        subscription: &str,
    ) -> impl Future<Output = Result<Self::Receiver, BusError>> + Send;

    /// Read up to `limit` messages of `subscription`'s dead-letter queue, oldest
    /// first, without removing them.
    fn list_dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLettered>, BusError>> + Send;

    /// Remove one dead-lettered message (after it was replayed).
    fn remove_dead_letter(
        &self,
        subscription: &str,
        handle: &str,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// A competing consumer on one subscription.
pub trait Receiver: Send + 'static {
    type Delivery: Delivery;

    /// Up to `max` messages, waiting at most `wait` for the first; an empty
    /// vector means nothing arrived in time.
    fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Self::Delivery>, BusError>> + Send;

    /// What the subscription still holds, if the broker can tell.
    fn backlog(&mut self) -> impl Future<Output = Result<Option<Backlog>, BusError>> + Send;
}

/// One delivered message, locked to this consumer until settled.
pub trait Delivery: Send + Sync + 'static {
    fn message(&self) -> &WireMessage;
    /// The broker's message id (the event id, unless the publisher chose otherwise).
    fn message_id(&self) -> Option<&str>;
    /// How many times this message has been delivered, this one included (1 = first).
    fn delivery_count(&self) -> u32;
    /// When the broker stored the message (JetStream: the stream message's
    /// timestamp; Service Bus: `EnqueuedTimeUtc`), if the adapter can tell.
    /// Used for per-hop latency only.
    fn enqueued_at(&self) -> Option<DateTime<Utc>> {
        None
    }
    /// Extend the lock while the message is still being worked on.
    fn keep_alive(&self) -> impl Future<Output = Result<(), BusError>> + Send;
    /// The effect is committed: remove the message from the subscription.
    fn complete(self) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Transient failure: release the message for redelivery after about `delay`
    /// (adapters that cannot delay release it at once).
    fn retry(self, delay: Duration) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Permanent failure: move the message to the dead-letter queue with `why`.
    fn dead_letter(self, why: &DeadLetter) -> impl Future<Output = Result<(), BusError>> + Send;
}
