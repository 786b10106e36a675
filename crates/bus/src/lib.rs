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
//!   redelivers after about the delay), [`Delivery::dead_letter`]
//!   for a permanent one (the message moves to the dead-letter queue with its
//!   reason and is removed from the subscription).
//! - **A settlement's `Ok` is not proof.** An adapter may not learn what the
//!   broker did with a settlement (Service Bus over fe2o3-amqp queues the
//!   disposition and returns; a lost lock is silent). `Ok` means "sent, as far
//!   as the adapter can tell"; an adapter that *knows* the lock is gone (past
//!   its expiry) returns [`BusErrorKind::LockLost`] without settling. Either
//!   way the broker delivers the message again, so everything a consumer does
//!   before settling must be idempotent — the writer's SQL effects by event id,
//!   its dead-letter row by the dead-letter key.
//! - **Dead letters the broker makes on its own** (delivery limit reached while
//!   no consumer was there to dead-letter, message expiry) are reported through
//!   [`EventBus::watch_broker_dead_letters`], so they reach the SQL dead-letter
//!   table too; a message may be reported more than once.
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

/// Deliveries of a message before it is dead-lettered, by default: the
/// broker's limit (JetStream `max_deliver`, Service Bus `maxDeliveryCount`)
/// and the writer's `--max-attempts` are one setting with this default. The
/// IaC states it too (Bicep, Terraform, the emulator config):
/// `deploy/azure/validate.py` and `tests/tests/defaults.rs` check them
/// against this line.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// Delivered but unsettled messages a JetStream subscription may hold
/// (`max_ack_pending`). Each writer lane holds up to three batches unsettled
/// (one applying, one waiting, one being received), so 3 × `--batch-size` ×
/// `--concurrency` must fit (the writer checks at start): past it the server
/// stops delivering and the lanes starve. 8,192 fits the writer's defaults
/// (3 × 512 × 4 = 6,144) with room to spare; the
/// subscription is created or updated to it (`CONSUMER.CREATE` is
/// create-or-update), so an existing one is raised when a writer starts.
pub const DEFAULT_MAX_ACK_PENDING: u32 = 8192;

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

/// Called with each message the broker (or the adapter, for it) dead-lettered
/// on its own — see [`EventBus::watch_broker_dead_letters`] — so the caller can
/// record it elsewhere too: the writer's SQL dead-letter row. May be called
/// again for the same message (after a restart); record it idempotently.
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
    /// The partition key it was published with (Service Bus `SessionId`), so a
    /// replay lands in the same session.
    pub partition_key: Option<String>,
    /// Whether the broker dead-lettered it on its own (delivery limit,
    /// expiry) rather than a consumer through [`Delivery::dead_letter`].
    pub by_broker: bool,
}

/// How much work a subscription still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Messages not yet delivered (includes those waiting for a delayed redelivery).
    pub pending: u64,
    /// Messages delivered and not yet settled.
    pub in_flight: u64,
}

/// What kind of failure a [`BusError`] is: what the writer's policy and the
/// publisher decide on (never the message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// The settings are wrong; retrying will not help.
    Config,
    /// The broker cannot be reached (or the connection broke).
    Connect,
    /// The broker refused for now: throttled (Service Bus `server-busy`), a
    /// full entity, JetStream 409 (max ack pending / max waiting). Retry later.
    Busy,
    /// The message is over the broker's size limit; retrying will not help.
    TooLarge,
    /// The delivery's lock is gone (expired, or its link/session closed): the
    /// broker will deliver the message again; settling it here did nothing.
    LockLost,
    /// The topic, subscription or queue does not exist.
    NotFound,
    /// This identity may not do that.
    Unauthorized,
    /// Anything else; treated as transient.
    Other,
}

/// A failure talking to the broker. The writer's policy decides on
/// [`BusError::kind`]: `Config` is fatal, `TooLarge` permanent, the rest transient.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("bus configuration: {0}")]
    Config(String),
    #[error("cannot connect to the bus: {0}")]
    Connect(String),
    #[error("{op}: {message}")]
    Operation {
        op: &'static str,
        kind: BusErrorKind,
        message: String,
    },
    #[error("message `{message_id}` is {size} bytes, over the broker's limit")]
    TooLarge { message_id: String, size: usize },
}

impl BusError {
    /// An operation failure of kind [`BusErrorKind::Other`].
    pub fn op(op: &'static str, e: impl std::fmt::Display) -> BusError {
        BusError::with_kind(BusErrorKind::Other, op, e)
    }

    /// An operation failure of `kind`.
    pub fn with_kind(kind: BusErrorKind, op: &'static str, e: impl std::fmt::Display) -> BusError {
        BusError::Operation {
            op,
            kind,
            message: e.to_string(),
        }
    }

    pub fn kind(&self) -> BusErrorKind {
        match self {
            BusError::Config(_) => BusErrorKind::Config,
            BusError::Connect(_) => BusErrorKind::Connect,
            BusError::Operation { kind, .. } => *kind,
            BusError::TooLarge { .. } => BusErrorKind::TooLarge,
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

    /// What `subscription` holds, seen from outside any consumer: no
    /// receiver is opened that could prefetch or lock messages, so health
    /// probes, metrics and tests may call it beside the writers. `None` when
    /// the broker cannot tell (the default, for test fakes).
    ///
    /// JetStream: the consumer's `num_pending` and `num_ack_pending`, exact.
    /// Service Bus: a peek from sequence 0 (Listen rights), `pending` counts
    /// locked and scheduled messages too, capped at the peek's size, and
    /// `in_flight` is 0 (which messages are locked is not visible to a peek);
    /// `None` with sessions ([`servicebus::ServiceBusBus::peek_backlog`]).
    fn subscription_backlog(
        &self,
        subscription: &str,
    ) -> impl Future<Output = Result<Option<Backlog>, BusError>> + Send {
        let _ = subscription;
        async { Ok(None) }
    }

    /// Remove one dead-lettered message (after it was replayed).
    fn remove_dead_letter(
        &self,
        subscription: &str,
        handle: &str,
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Start watching for messages of `subscription` the broker dead-letters
    /// on its own (not through [`Delivery::dead_letter`]) and hand each to
    /// `hook`, until the returned task is aborted or the bus is gone. Errors
    /// here are set-up failures; later ones are logged and retried.
    ///
    /// JetStream: the max-deliveries advisories (the adapter moves the message
    /// to the dead-letter stream itself). Service Bus: a sweep of the
    /// subscription's `$deadletterqueue` for messages without the adapter's
    /// `DeadLetterAttempts` mark (`MaxDeliveryCountExceeded`, `TTLExpiredException`).
    ///
    /// The default is for buses whose broker never dead-letters by itself
    /// (test fakes): nothing to watch.
    fn watch_broker_dead_letters(
        &self,
        subscription: &str,
        hook: DeadLetterHook,
    ) -> impl Future<Output = Result<tokio::task::JoinHandle<()>, BusError>> + Send {
        let _ = (subscription, hook);
        async { Ok(tokio::spawn(async {})) }
    }
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
    /// Extend the locks of all `deliveries` in one pass taking at most about
    /// `budget` (adapters batch what the broker allows: one request per link
    /// or session); returns how many could not be extended. The default keeps
    /// each alive in turn and stops when the budget is spent.
    fn keep_alive_all(deliveries: &[Self], budget: Duration) -> impl Future<Output = usize> + Send
    where
        Self: Sized,
    {
        async move {
            let deadline = tokio::time::Instant::now() + budget;
            let mut failed = 0;
            for (i, d) in deliveries.iter().enumerate() {
                match tokio::time::timeout_at(deadline, d.keep_alive()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not extend a message lock");
                        failed += 1;
                    }
                    Err(_) => {
                        tracing::warn!(
                            left = deliveries.len() - i,
                            "keep-alive pass over its time budget"
                        );
                        return failed + deliveries.len() - i;
                    }
                }
            }
            failed
        }
    }
    /// The effect is committed: remove the message from the subscription.
    fn complete(self) -> impl Future<Output = Result<(), BusError>> + Send;
    /// [`Delivery::complete`] for each of `deliveries`, in one pass where the
    /// adapter can share the work (JetStream: every ack written, then one
    /// flush); one result per delivery, in order, with the same meaning as
    /// `complete`'s. The default completes them all concurrently.
    fn complete_all(deliveries: Vec<Self>) -> impl Future<Output = Vec<Result<(), BusError>>> + Send
    where
        Self: Sized,
    {
        futures::future::join_all(deliveries.into_iter().map(Delivery::complete))
    }
    /// Transient failure: release the message for redelivery after about `delay`
    /// (adapters that cannot delay release it at once).
    fn retry(self, delay: Duration) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Permanent failure: move the message to the dead-letter queue with `why`.
    fn dead_letter(self, why: &DeadLetter) -> impl Future<Output = Result<(), BusError>> + Send;
}
