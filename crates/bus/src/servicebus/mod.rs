//! Azure Service Bus adapter (AMQP 1.0, via the `azservicebus` crate).
//!
//! The topic (`realtime-mirror`), its subscriptions (`sql-writer`,
//! `monitoring`) and their dead-letter queues are created by IaC
//! (`deploy/azure/`); [`ServiceBusBus::ensure_topology`] verifies them. Why
//! `azservicebus` and not crates.io `azure_messaging_servicebus`, and what is
//! left to move to Microsoft's AMQP crate, is in `docs/servicebus.md`.
//!
//! How the port's delivery contract maps onto Service Bus:
//!
//! | port | Service Bus |
//! | --- | --- |
//! | [`OutboundMessage::message_id`] | `MessageId` (duplicate detection on the topic) |
//! | [`OutboundMessage::partition_key`] | `SessionId`, when [`ServiceBusConfig::sessions`] is on |
//! | [`WireMessage`] | content-type, application properties (native AMQP types), one `data` body section |
//! | peek-lock, [`Delivery::keep_alive`] | PeekLock receive with prefetch; `renew-lock` (session lock with sessions) |
//! | [`Delivery::complete`] | complete |
//! | [`Delivery::retry`] | abandon — **immediately**: Service Bus has no delayed abandon, so `delay` is ignored and the broker's `maxDeliveryCount` bounds the retries |
//! | [`Delivery::dead_letter`] | dead-letter with `DeadLetterReason`, `DeadLetterErrorDescription`, and `DeadLetterAttempts`/`DeadLetteredAt` properties |
//! | [`EventBus::list_dead_letters`] | peek `{topic}/Subscriptions/{sub}/$deadletterqueue`; handle = sequence number |
//! | [`EventBus::remove_dead_letter`] | receive from that queue until the sequence number comes up, complete it, abandon the rest |
//! | [`PublishOutcome::Duplicate`] | only for a message id this bus published within [`ServiceBusConfig::duplicate_detection_window`]: Service Bus drops a duplicate silently and acknowledges the send, so duplicates from other processes are reported as published (and still dropped) |
//! | [`Receiver::backlog`] | `None`: message counts are management-plane (ARM), not AMQP |
//!
//! Locks: the lock duration is the subscription's (`lockDuration`, PT1M in
//! the IaC). A delivery's lock is extended by [`Delivery::keep_alive`], which
//! the writer calls every 10 s while it applies a batch; that suffices, and it
//! keeps the port's promise that a delivery nobody keeps alive comes back once
//! its lock expires (a hung worker releases its messages). For consumers that
//! cannot call `keep_alive`, [`ServiceBusConfig::lock_renewal`] starts a task
//! per delivery that renews at half the remaining lock time until the delivery
//! is settled or dropped, for at most that long. Prefetched messages are locked
//! from the moment they reach the client, so keep
//! [`ServiceBusConfig::prefetch`] to what is handled within one lock duration.
//!
//! Concurrency: azservicebus receivers take `&mut self` for receive and for
//! settlement, and a message must be settled on the link that received it. A
//! [`ServiceBusConsumer`] therefore shares its link behind an async mutex with
//! its deliveries and receives in short slices (at most [`POLL_SLICE`]), so a
//! settlement never waits long behind a receive. Each consumer has its own AMQP
//! connection; publishing and dead-letter administration share the bus's.

mod config;
pub mod convert;
mod credential;
mod recent;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use azservicebus::core::BasicRetryPolicy;
use azservicebus::prelude::*;
use azservicebus::receiver::service_bus_session_receiver::ServiceBusSessionReceiverOptions;
use azure_core::credentials::TokenCredential;
use mirror_schema::WireMessage;
use secrecy::ExposeSecret;
use tokio::sync::{watch, Mutex};

pub use config::{EntraCredential, ServiceBusAuth, ServiceBusConfig};
use convert::AttachFailure;

use crate::{
    Backlog, BusError, DeadLetter, DeadLettered, Delivery, EventBus, OutboundMessage,
    PublishOutcome, Receiver,
};

/// Longest a receive holds its link before letting settlements through.
pub const POLL_SLICE: Duration = Duration::from_millis(250);
/// After the first message arrived, how long to wait for more of a batch
/// (prefetched messages are already local, so this is short).
const GATHER: Duration = Duration::from_millis(20);
/// Largest batch asked of the link at once.
const MAX_BATCH: u32 = 256;
/// Messages `remove_dead_letter` receives at most while looking for one.
const MAX_DLQ_SCAN: usize = 5_000;
/// Message ids remembered for duplicate reporting.
const RECENT_IDS: usize = 100_000;

type Client = ServiceBusClient<BasicRetryPolicy>;

/// The Service Bus [`EventBus`].
pub struct ServiceBusBus {
    config: ServiceBusConfig,
    credential: Option<Arc<dyn TokenCredential>>,
    client: Mutex<Client>,
    sender: Mutex<Option<ServiceBusSender>>,
    recent: std::sync::Mutex<recent::RecentIds>,
}

impl std::fmt::Debug for ServiceBusBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusBus")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServiceBusBus {
    /// Validate `config` and open an AMQP connection to the namespace
    /// (authenticating, so bad credentials fail here).
    ///
    /// TLS goes through rustls with the process's default crypto provider;
    /// if the process has not installed one, `ring` is installed here (a
    /// provider the process installed first is kept).
    pub async fn connect(config: ServiceBusConfig) -> Result<ServiceBusBus, BusError> {
        config.validate()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credential = match &config.auth {
            ServiceBusAuth::Entra { credential, .. } => Some(credential::build(credential)?),
            ServiceBusAuth::ConnectionString(_) => None,
        };
        let client = open_client(&config, credential.as_ref()).await?;
        tracing::info!(
            namespace = %config.namespace(),
            topic = %config.topic,
            sessions = config.sessions,
            emulator = config.is_emulator(),
            "connected to Service Bus"
        );
        let recent = recent::RecentIds::new(config.duplicate_detection_window, RECENT_IDS);
        Ok(ServiceBusBus {
            config,
            credential,
            client: Mutex::new(client),
            sender: Mutex::new(None),
            recent: std::sync::Mutex::new(recent),
        })
    }

    pub fn config(&self) -> &ServiceBusConfig {
        &self.config
    }

    fn err(&self, op: &'static str, e: impl std::fmt::Display) -> BusError {
        BusError::op(op, self.config.scrub(&e.to_string()))
    }

    /// A receiver (prefetch 0, so nothing is locked until asked) on
    /// `subscription` or its dead-letter queue, on the bus's connection.
    async fn admin_receiver(
        &self,
        subscription: &str,
        dead_letter_queue: bool,
        receive_mode: ServiceBusReceiveMode,
    ) -> Result<ServiceBusReceiver, BusError> {
        let options = ServiceBusReceiverOptions {
            prefetch_count: 0,
            receive_mode,
            identifier: self.config.identifier.clone(),
            sub_queue: if dead_letter_queue {
                SubQueue::DeadLetter
            } else {
                SubQueue::None
            },
        };
        self.client
            .lock()
            .await
            .create_receiver_for_subscription(&self.config.topic, subscription, options)
            .await
            .map_err(|e| self.err("open receiver", e))
    }

    /// Delete every message of `subscription` (or of its dead-letter queue),
    /// stopping once nothing has arrived for `quiet`; returns how many were
    /// deleted. Destructive, for tests and for operators clearing a queue.
    /// Messages locked by a consumer are invisible until their lock expires, so
    /// a `quiet` longer than the lock duration catches those too.
    pub async fn purge(
        &self,
        subscription: &str,
        dead_letter_queue: bool,
        quiet: Duration,
    ) -> Result<usize, BusError> {
        let mut receiver = self
            .admin_receiver(
                subscription,
                dead_letter_queue,
                ServiceBusReceiveMode::ReceiveAndDelete,
            )
            .await?;
        let mut deleted = 0;
        let mut last = Instant::now();
        let result = loop {
            match receiver
                .receive_messages_with_max_wait_time(64, POLL_SLICE * 2)
                .await
            {
                Ok(batch) if batch.is_empty() => {
                    if last.elapsed() >= quiet {
                        break Ok(deleted);
                    }
                }
                Ok(batch) => {
                    deleted += batch.len();
                    last = Instant::now();
                }
                Err(e) => break Err(self.err("purge", e)),
            }
        };
        let _ = receiver.dispose().await;
        result
    }

    fn verify_error(&self, entity: String, e: azure_core::Error) -> Result<(), BusError> {
        let text = self.config.scrub(&e.to_string());
        match convert::classify_attach_error(&text) {
            AttachFailure::NotFound => Err(BusError::Config(format!(
                "{entity} does not exist in namespace `{}`; Service Bus entities are created by deploy/azure (Bicep or Terraform): {text}",
                self.config.namespace()
            ))),
            AttachFailure::Unauthorized => {
                tracing::info!(%entity, "cannot verify {entity}: this identity has no right to it (expected for a role-scoped identity); assuming it was created by IaC");
                Ok(())
            }
            AttachFailure::RequiresSession if !self.config.sessions => Err(BusError::Config(format!(
                "{entity} requires sessions; set sessions on (SERVICEBUS_SESSIONS=true): {text}"
            ))),
            AttachFailure::RequiresSession => Ok(()),
            AttachFailure::Other => Err(BusError::op("ensure topology", format!("{entity}: {text}"))),
        }
    }
}

async fn open_client(
    config: &ServiceBusConfig,
    credential: Option<&Arc<dyn TokenCredential>>,
) -> Result<Client, BusError> {
    let options = ServiceBusClientOptions {
        identifier: config.identifier.clone(),
        ..ServiceBusClientOptions::default()
    };
    let result = match &config.auth {
        ServiceBusAuth::ConnectionString(cs) if config.is_emulator() => {
            ServiceBusClient::unsecured()
                .new_from_connection_string(cs.expose_secret(), options)
                .await
        }
        ServiceBusAuth::ConnectionString(cs) => {
            ServiceBusClient::new_from_connection_string(cs.expose_secret(), options).await
        }
        ServiceBusAuth::Entra { namespace, .. } => {
            let namespace = config::fully_qualified_namespace(namespace)?;
            let credential = credential
                .cloned()
                .ok_or_else(|| BusError::Config("Entra ID auth without a credential".into()))?;
            ServiceBusClient::new_from_token_credential(namespace, credential, options).await
        }
    };
    result.map_err(|e| {
        BusError::Connect(format!(
            "{}: {}",
            config.namespace(),
            config.scrub(&e.to_string())
        ))
    })
}

impl EventBus for ServiceBusBus {
    type Receiver = ServiceBusConsumer;

    /// Service Bus entities are not created here: the namespace, topic,
    /// subscriptions and their settings (duplicate detection, max delivery
    /// count, lock duration, sessions) are IaC's (`deploy/azure/`), and
    /// azservicebus has no management-plane API to create them. This verifies
    /// instead, by attaching a sender to the topic and a receiver (prefetch 0,
    /// so nothing is locked) to each of [`ServiceBusConfig::verify_subscriptions`]:
    /// a missing entity fails with [`BusError::Config`] naming it; an entity
    /// this identity may not use (a publisher with only the Data Sender role
    /// cannot attach a receiver) is logged and skipped.
    async fn ensure_topology(&self) -> Result<(), BusError> {
        let topic = self.config.topic.clone();
        let attempt = {
            let mut client = self.client.lock().await;
            client
                .create_sender(&topic, ServiceBusSenderOptions::default())
                .await
        };
        match attempt {
            Ok(sender) => {
                let _ = sender.dispose().await;
            }
            Err(e) => self.verify_error(format!("topic `{topic}`"), e)?,
        }
        for subscription in &self.config.verify_subscriptions {
            let options = ServiceBusReceiverOptions {
                prefetch_count: 0,
                receive_mode: ServiceBusReceiveMode::PeekLock,
                identifier: self.config.identifier.clone(),
                sub_queue: SubQueue::None,
            };
            let attempt = {
                let mut client = self.client.lock().await;
                client
                    .create_receiver_for_subscription(&topic, subscription, options)
                    .await
            };
            match attempt {
                Ok(mut receiver) => {
                    // The attach is what proves the entity exists; a peek goes
                    // through the management link and surfaces a session mismatch.
                    let peek = receiver.peek_messages(1, None).await;
                    let _ = receiver.dispose().await;
                    if let Err(e) = peek {
                        self.verify_error(format!("subscription `{topic}/{subscription}`"), e)?;
                    }
                }
                Err(e) => self.verify_error(format!("subscription `{topic}/{subscription}`"), e)?,
            }
        }
        Ok(())
    }

    /// Service Bus duplicate detection accepts a duplicate send and drops it
    /// without telling the sender, so the message is always sent and the
    /// outcome is [`PublishOutcome::Duplicate`] only when this bus itself had
    /// published the same id within the duplicate-detection window (see
    /// [`ServiceBusConfig::duplicate_detection_window`]).
    async fn publish(&self, message: &OutboundMessage) -> Result<PublishOutcome, BusError> {
        let sb_message = convert::to_service_bus_message(message, self.config.sessions)?;
        let mut sender = self.sender.lock().await;
        if sender.is_none() {
            let created = self
                .client
                .lock()
                .await
                .create_sender(&self.config.topic, ServiceBusSenderOptions::default())
                .await
                .map_err(|e| self.err("open sender", e))?;
            *sender = Some(created);
        }
        let Some(s) = sender.as_mut() else {
            return Err(BusError::op("publish", "no sender"));
        };
        match s.send_message(sb_message).await {
            Ok(()) => {
                let now = Instant::now();
                let mut recent = self
                    .recent
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if recent.contains(&message.message_id, now) {
                    Ok(PublishOutcome::Duplicate)
                } else {
                    recent.record(&message.message_id, now);
                    Ok(PublishOutcome::Published)
                }
            }
            Err(e) => {
                let text = self.config.scrub(&e.to_string());
                // A sender whose link failed is reopened on the next publish.
                if let Some(old) = sender.take() {
                    let _ = old.dispose().await;
                }
                if text.contains("MessageSizeExceeded") || text.contains("message-size-exceeded") {
                    return Err(BusError::TooLarge {
                        message_id: message.message_id.clone(),
                        size: message.message.size(),
                    });
                }
                Err(BusError::op("publish", text))
            }
        }
    }

    /// A consumer on its own AMQP connection. Without sessions the receive
    /// link is attached now (so a missing subscription fails here); with
    /// sessions, each receive accepts the next available session as needed.
    async fn subscribe(&self, subscription: &str) -> Result<ServiceBusConsumer, BusError> {
        let mut client = open_client(&self.config, self.credential.as_ref()).await?;
        let link = if self.config.sessions {
            None
        } else {
            let options = ServiceBusReceiverOptions {
                prefetch_count: self.config.prefetch,
                receive_mode: ServiceBusReceiveMode::PeekLock,
                identifier: self.config.identifier.clone(),
                sub_queue: SubQueue::None,
            };
            let receiver = client
                .create_receiver_for_subscription(&self.config.topic, subscription, options)
                .await
                .map_err(|e| self.err("subscribe", e))?;
            Some(Arc::new(Mutex::new(Link::Plain(receiver))))
        };
        Ok(ServiceBusConsumer {
            config: self.config.clone(),
            client,
            subscription: subscription.to_owned(),
            link,
        })
    }

    async fn list_dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLettered>, BusError> {
        let mut receiver = self
            .admin_receiver(subscription, true, ServiceBusReceiveMode::PeekLock)
            .await?;
        let mut out = Vec::new();
        let mut from = None;
        let result = async {
            while out.len() < limit {
                let want = u32::try_from(limit - out.len())
                    .unwrap_or(MAX_BATCH)
                    .min(MAX_BATCH);
                let batch = receiver
                    .peek_messages(want, from)
                    .await
                    .map_err(|e| self.err("list dead letters", e))?;
                if batch.is_empty() {
                    break;
                }
                for peeked in batch {
                    from = Some(peeked.sequence_number() + 1);
                    let wire = convert::to_wire(
                        peeked.content_type(),
                        peeked.application_properties(),
                        &peeked.raw_amqp_message().body,
                    );
                    out.push(convert::to_dead_lettered(
                        peeked.sequence_number(),
                        peeked.message_id().map(|c| c.into_owned()),
                        wire,
                        peeked.delivery_count(),
                    ));
                }
            }
            Ok::<(), BusError>(())
        }
        .await;
        let _ = receiver.dispose().await;
        result?;
        out.truncate(limit);
        Ok(out)
    }

    /// Peeks first: a sequence number no longer in the queue (already removed)
    /// is a no-op. Otherwise receives from the dead-letter queue until that
    /// message comes up, completes it and abandons the others it had to lock on
    /// the way (the dead-letter queue has no delivery limit, so that is harmless).
    async fn remove_dead_letter(&self, subscription: &str, handle: &str) -> Result<(), BusError> {
        let sequence_number = convert::parse_handle(handle)?;
        let mut receiver = self
            .admin_receiver(subscription, true, ServiceBusReceiveMode::PeekLock)
            .await?;
        let result = async {
            let present = receiver
                .peek_messages(1, Some(sequence_number))
                .await
                .map_err(|e| self.err("remove dead letter", e))?
                .first()
                .map(|p| p.sequence_number() == sequence_number)
                .unwrap_or(false);
            if !present {
                tracing::debug!(%subscription, sequence_number, "dead letter already gone");
                return Ok(());
            }
            let mut held = Vec::new();
            let mut found = false;
            while !found && held.len() < MAX_DLQ_SCAN {
                let batch = receiver
                    .receive_messages_with_max_wait_time(32, Duration::from_secs(2))
                    .await
                    .map_err(|e| self.err("remove dead letter", e))?;
                if batch.is_empty() {
                    break;
                }
                for m in batch {
                    if !found && m.sequence_number() == sequence_number {
                        receiver
                            .complete_message(&m)
                            .await
                            .map_err(|e| self.err("remove dead letter", e))?;
                        found = true;
                    } else {
                        held.push(m);
                    }
                }
            }
            for m in &held {
                let _ = receiver.abandon_message(m, None).await;
            }
            if found {
                Ok(())
            } else {
                Err(BusError::op(
                    "remove dead letter",
                    format!("sequence number {sequence_number} was peeked but not received within {} messages (locked by another consumer?)", held.len()),
                ))
            }
        }
        .await;
        let _ = receiver.dispose().await;
        result
    }
}

/// A receive link: plain, or one accepted session.
enum Link {
    Plain(ServiceBusReceiver),
    Session(ServiceBusSessionReceiver),
}

impl Link {
    async fn receive(
        &mut self,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<ServiceBusReceivedMessage>, azure_core::Error> {
        match self {
            Link::Plain(r) => r.receive_messages_with_max_wait_time(max, wait).await,
            Link::Session(r) => r.receive_messages_with_max_wait_time(max, wait).await,
        }
    }

    async fn complete(&mut self, m: &ServiceBusReceivedMessage) -> Result<(), azure_core::Error> {
        match self {
            Link::Plain(r) => r.complete_message(m).await,
            Link::Session(r) => r.complete_message(m).await,
        }
    }

    async fn abandon(&mut self, m: &ServiceBusReceivedMessage) -> Result<(), azure_core::Error> {
        match self {
            Link::Plain(r) => r.abandon_message(m, None).await,
            Link::Session(r) => r.abandon_message(m, None).await,
        }
    }

    async fn dead_letter(
        &mut self,
        m: &ServiceBusReceivedMessage,
        options: azservicebus::receiver::DeadLetterOptions,
    ) -> Result<(), azure_core::Error> {
        match self {
            Link::Plain(r) => r.dead_letter_message(m, options).await,
            Link::Session(r) => r.dead_letter_message(m, options).await,
        }
    }

    /// Renew what holds `m`: its own lock, or with sessions the session's.
    async fn renew(&mut self, m: &mut ServiceBusReceivedMessage) -> Result<(), azure_core::Error> {
        match self {
            Link::Plain(r) => r.renew_message_lock(m).await,
            Link::Session(r) => r.renew_session_lock().await,
        }
    }

    /// When the lock holding `m` expires, Unix nanoseconds.
    fn locked_until(&self, m: &ServiceBusReceivedMessage) -> Option<i128> {
        match self {
            Link::Plain(_) => m.locked_until().map(|t| t.unix_timestamp_nanos()),
            Link::Session(r) => Some(r.session_locked_until().unix_timestamp_nanos()),
        }
    }

    async fn dispose(self) {
        let _ = match self {
            Link::Plain(r) => r.dispose().await,
            Link::Session(r) => r.dispose().await,
        };
    }
}

type SharedLink = Arc<Mutex<Link>>;

/// A competing consumer on one subscription (see the module docs).
pub struct ServiceBusConsumer {
    config: ServiceBusConfig,
    client: Client,
    subscription: String,
    /// The current link; with sessions, `None` until a session is accepted.
    link: Option<SharedLink>,
}

impl std::fmt::Debug for ServiceBusConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusConsumer")
            .field("topic", &self.config.topic)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

impl ServiceBusConsumer {
    /// The link to receive from, accepting the next session (waiting at most
    /// `wait`) when sessions are on and none is held. `None`: no session came.
    async fn current_link(&mut self, wait: Duration) -> Result<Option<SharedLink>, BusError> {
        if let Some(link) = &self.link {
            return Ok(Some(link.clone()));
        }
        if !self.config.sessions {
            return Err(BusError::op("receive", "the receive link is closed"));
        }
        let options = ServiceBusSessionReceiverOptions {
            prefetch_count: self.config.prefetch,
            receive_mode: ServiceBusReceiveMode::PeekLock,
            identifier: self.config.identifier.clone(),
        };
        // Service Bus holds an accept-next-session open until a session is
        // available or its own timeout; bound it by the caller's wait.
        let accept = self.client.accept_next_session_for_subscription(
            &self.config.topic,
            &self.subscription,
            options,
        );
        match tokio::time::timeout(wait.max(Duration::from_millis(100)), accept).await {
            Err(_elapsed) => Ok(None),
            Ok(Ok(session)) => {
                tracing::debug!(subscription = %self.subscription, session = %session.session_id(), "accepted session");
                let link = Arc::new(Mutex::new(Link::Session(session)));
                self.link = Some(link.clone());
                Ok(Some(link))
            }
            Ok(Err(e)) => {
                let text = self.config.scrub(&e.to_string());
                // "no session available" surfaces as a timeout error from the broker
                if text.to_ascii_lowercase().contains("timeout")
                    || text.to_ascii_lowercase().contains("timed out")
                {
                    Ok(None)
                } else {
                    Err(BusError::op("accept session", text))
                }
            }
        }
    }

    /// Give up the current session (it had nothing more for us); it is
    /// closed once its in-flight deliveries are settled.
    async fn release_session(&mut self) {
        if !self.config.sessions {
            return;
        }
        if let Some(link) = self.link.take() {
            if let Ok(mutex) = Arc::try_unwrap(link) {
                mutex.into_inner().dispose().await;
            }
        }
    }

    fn delivery(
        &self,
        message: ServiceBusReceivedMessage,
        link: &SharedLink,
    ) -> ServiceBusDelivery {
        let wire = convert::to_wire(
            message.content_type(),
            message.application_properties(),
            &message.raw_amqp_message().body,
        );
        let message_id = message.message_id().map(|c| c.into_owned());
        let delivery_count = message.delivery_count().unwrap_or(1);
        let sequence_number = message.sequence_number();
        let enqueued_at = i64::try_from(message.enqueued_time().unix_timestamp_nanos())
            .ok()
            .map(chrono::DateTime::from_timestamp_nanos);
        let inner = Arc::new(Mutex::new(message));
        let renewal = self.config.lock_renewal.map(|max| {
            Renewal::spawn(
                Arc::downgrade(&inner),
                Arc::downgrade(link),
                max,
                sequence_number,
            )
        });
        ServiceBusDelivery {
            wire,
            message_id,
            delivery_count,
            sequence_number,
            enqueued_at,
            max_delivery_count: self.config.max_delivery_count,
            inner,
            link: link.clone(),
            _renewal: renewal,
        }
    }
}

impl Receiver for ServiceBusConsumer {
    type Delivery = ServiceBusDelivery;

    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ServiceBusDelivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = u32::try_from(max).unwrap_or(MAX_BATCH).min(MAX_BATCH);
        let deadline = Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Some(link) = self.current_link(remaining).await? else {
                return Ok(Vec::new());
            };
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(POLL_SLICE)
                .max(Duration::from_millis(10));
            let received = {
                let mut guard = link.lock().await;
                let mut first = guard.receive(1, slice).await;
                if let Ok(batch) = &mut first {
                    if !batch.is_empty() && max > 1 {
                        match guard.receive(max - 1, GATHER).await {
                            Ok(more) => batch.extend(more),
                            // what already arrived is handed out; the error shows up on the next receive
                            Err(e) => {
                                tracing::debug!(error = %self.config.scrub(&e.to_string()), "receive: gathering a batch")
                            }
                        }
                    }
                }
                first
            };
            match received {
                Ok(batch) if !batch.is_empty() => {
                    crate::telemetry::received(
                        crate::telemetry::SERVICE_BUS,
                        &self.config.topic,
                        &self.subscription,
                        batch.len(),
                    );
                    return Ok(batch.into_iter().map(|m| self.delivery(m, &link)).collect());
                }
                Ok(_) => {}
                Err(e) => {
                    let text = self.config.scrub(&e.to_string());
                    self.release_session().await;
                    return Err(BusError::op("receive", text));
                }
            }
            if Instant::now() >= deadline {
                self.release_session().await;
                return Ok(Vec::new());
            }
        }
    }

    /// `None`: Service Bus reports message counts through the management plane
    /// (ARM / the ATOM API), which this AMQP adapter does not use.
    async fn backlog(&mut self) -> Result<Option<Backlog>, BusError> {
        Ok(None)
    }
}

/// Stops a delivery's lock-renewal task when dropped (settled or abandoned by the caller).
struct Renewal {
    stop: watch::Sender<bool>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Renewal {
    /// Renew the lock of `message` on `link` at half the remaining lock time,
    /// until stopped, either side is gone, a renewal fails, or `max` has passed.
    /// A renewal in progress is never cancelled half-way (the stop signal is
    /// only looked at between renewals), so the link is never left with an
    /// unanswered management request.
    fn spawn(
        message: Weak<Mutex<ServiceBusReceivedMessage>>,
        link: Weak<Mutex<Link>>,
        max: Duration,
        sequence_number: i64,
    ) -> Renewal {
        let (stop, mut stopped) = watch::channel(false);
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                let remaining = {
                    let (Some(m), Some(l)) = (message.upgrade(), link.upgrade()) else {
                        return;
                    };
                    let m = m.lock().await;
                    let l = l.lock().await;
                    l.locked_until(&m)
                        .map(|t| convert::until(t, chrono::Utc::now()))
                        .unwrap_or(Duration::from_secs(30))
                };
                if !convert::renew_now(remaining) {
                    let delay = convert::renewal_delay(remaining);
                    if started.elapsed() + delay > max {
                        tracing::debug!(
                            sequence_number,
                            "lock renewal: reached its maximum, letting the lock expire"
                        );
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped.changed() => return,
                    }
                }
                if *stopped.borrow() {
                    return;
                }
                let (Some(m), Some(l)) = (message.upgrade(), link.upgrade()) else {
                    return;
                };
                let mut m = m.lock().await;
                let mut l = l.lock().await;
                if *stopped.borrow() {
                    return;
                }
                if let Err(e) = l.renew(&mut m).await {
                    tracing::warn!(sequence_number, error = %e, "lock renewal failed; the message will be redelivered when its lock expires");
                    return;
                }
            }
        });
        Renewal { stop }
    }
}

/// One Service Bus message, locked to this consumer until settled.
pub struct ServiceBusDelivery {
    wire: WireMessage,
    message_id: Option<String>,
    delivery_count: u32,
    sequence_number: i64,
    /// `EnqueuedTimeUtc`.
    enqueued_at: Option<chrono::DateTime<chrono::Utc>>,
    max_delivery_count: u32,
    inner: Arc<Mutex<ServiceBusReceivedMessage>>,
    link: SharedLink,
    _renewal: Option<Renewal>,
}

impl std::fmt::Debug for ServiceBusDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusDelivery")
            .field("message_id", &self.message_id)
            .field("sequence_number", &self.sequence_number)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

impl ServiceBusDelivery {
    /// The broker's sequence number of this message.
    pub fn sequence_number(&self) -> i64 {
        self.sequence_number
    }
}

impl Delivery for ServiceBusDelivery {
    fn message(&self) -> &WireMessage {
        &self.wire
    }

    fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    fn enqueued_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.enqueued_at
    }

    async fn keep_alive(&self) -> Result<(), BusError> {
        let mut m = self.inner.lock().await;
        let mut l = self.link.lock().await;
        l.renew(&mut m)
            .await
            .map_err(|e| BusError::op("renew lock", e))
    }

    async fn complete(self) -> Result<(), BusError> {
        drop(self._renewal);
        let m = self.inner.lock().await;
        let mut l = self.link.lock().await;
        l.complete(&m)
            .await
            .map_err(|e| BusError::op("complete", e))
    }

    /// Abandons at once: Service Bus cannot delay a redelivery, so `delay` is
    /// not honoured; the broker's `maxDeliveryCount` bounds how often it comes back.
    async fn retry(self, _delay: Duration) -> Result<(), BusError> {
        drop(self._renewal);
        if convert::abandon_dead_letters(self.delivery_count, self.max_delivery_count) {
            tracing::warn!(
                sequence_number = self.sequence_number,
                delivery_count = self.delivery_count,
                "abandoning after the subscription's max delivery count: the broker will dead-letter it (MaxDeliveryCountExceeded)"
            );
        }
        let m = self.inner.lock().await;
        let mut l = self.link.lock().await;
        l.abandon(&m).await.map_err(|e| BusError::op("abandon", e))
    }

    async fn dead_letter(self, why: &DeadLetter) -> Result<(), BusError> {
        drop(self._renewal);
        let options = convert::dead_letter_options(why, chrono::Utc::now());
        let m = self.inner.lock().await;
        let mut l = self.link.lock().await;
        l.dead_letter(&m, options)
            .await
            .map_err(|e| BusError::op("dead-letter", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "bm90LWEtcmVhbC1rZXktZG8tbm90LWxvZw";

    /// No Service Bus here: what can be checked is that a connection failure is
    /// a `Connect` error, arrives in bounded time and does not carry the key.
    #[tokio::test]
    async fn connection_failures_are_reported_without_the_key() {
        // the emulator's connection string shape, to a loopback address nothing listens on
        let cs = format!(
            "Endpoint=sb://127.0.0.2;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY};UseDevelopmentEmulator=true;"
        );
        let config = ServiceBusConfig::from_connection_string(&cs, "realtime-mirror").unwrap();
        assert!(config.is_emulator());
        let result =
            tokio::time::timeout(Duration::from_secs(120), ServiceBusBus::connect(config)).await;
        match result {
            Err(_) => panic!("connect did not give up within 120 s"),
            Ok(Ok(_)) => panic!("connected to a port nothing listens on"),
            Ok(Err(e)) => {
                let text = e.to_string();
                eprintln!("connect error: {text}");
                assert!(matches!(e, BusError::Connect(_)), "{e:?}");
                assert!(!text.contains(KEY), "{text}");
            }
        }
    }

    /// The TLS path (a real namespace's connection string) fails the same way, without panicking for want of a crypto provider.
    #[tokio::test]
    async fn tls_connection_failures_are_reported_without_the_key() {
        // Something on the AMQPS port that accepts and hangs up, so the client
        // gets as far as building its TLS configuration and handshaking.
        let host = match tokio::net::TcpListener::bind("127.0.0.3:5671").await {
            Ok(listener) => {
                tokio::spawn(async move {
                    while let Ok((socket, _)) = listener.accept().await {
                        drop(socket);
                    }
                });
                "127.0.0.3"
            }
            Err(e) => {
                eprintln!("cannot listen on 127.0.0.3:5671 ({e}); checking the refused case only");
                "127.0.0.2"
            }
        };
        let cs = format!("Endpoint=sb://{host}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY}");
        let config = ServiceBusConfig::from_connection_string(&cs, "realtime-mirror").unwrap();
        assert!(!config.is_emulator());
        match tokio::time::timeout(Duration::from_secs(120), ServiceBusBus::connect(config)).await {
            Ok(Err(e)) => {
                eprintln!("connect error: {e}");
                assert!(matches!(e, BusError::Connect(_)), "{e:?}");
                assert!(!e.to_string().contains(KEY), "{e}");
            }
            Ok(Ok(_)) => panic!("connected to an address nothing listens on"),
            Err(_) => panic!("connect did not give up within 120 s"),
        }
    }

    #[tokio::test]
    async fn bad_configuration_fails_before_any_io() {
        let config = ServiceBusConfig::entra("not-qualified", "realtime-mirror");
        let e = ServiceBusBus::connect(config).await.unwrap_err();
        assert!(matches!(e, BusError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("fully qualified"), "{e}");
    }
}
