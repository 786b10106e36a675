//! Azure Service Bus adapter (AMQP 1.0, via the `azservicebus` crate).
//!
//! Laid out like its sibling `jetstream/`: this file holds the bus (connect,
//! topology, publish), [`receiver`] the competing consumer and its deliveries
//! (locks, settlement, sessions), [`dead_letter`] the dead-letter queue (list,
//! remove, the sweep for dead letters the broker made itself), [`convert`] the
//! pure translations and decisions (the sibling's `wire.rs`), plus `config`,
//! `credential` and `recent`.
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
//! | [`WireMessage`](mirror_schema::WireMessage) | content-type, application properties (native AMQP types), one `data` body section |
//! | [`EventBus::publish`] | send with the library's retries **off**; the adapter retries (backon, [`convert::PUBLISH_BUDGET`]), ≥ 10 s after `server-busy`; a rejected send is an error, never `Published`; `message-size-exceeded` (or over the link's size less [`convert::SIZE_MARGIN`], measured by `try_add_message`) is [`BusError::TooLarge`] |
//! | peek-lock, [`Delivery::keep_alive`] | PeekLock receive; `renew-lock` (session lock with sessions) |
//! | [`Delivery::keep_alive_all`] | one `renew-session-lock` per session; without sessions one `renew-lock` per message (azservicebus 0.25 sends a one-token request; its multi-token call, request types and management link are crate-private); the caller waits at most the budget; locks past `locked_until` or answered 410 (lost) are skipped and never settled |
//! | [`Delivery::complete`] / [`Delivery::dead_letter`] | complete / dead-letter with `DeadLetterReason`, `DeadLetterErrorDescription`, `DeadLetterAttempts`, `DeadLetteredAt` — **outcome unknown** (fe2o3-amqp queues the disposition and returns); a delivery more than [`convert::CLOCK_SKEW_ALLOWANCE`] past its `locked_until` is refused with [`crate::BusErrorKind::LockLost`] instead |
//! | [`Delivery::complete_all`] | the port's default: each delivery completed as above, concurrently (the link's lock takes them in turn; each disposition is queued, not awaited) |
//! | [`Delivery::retry`] | keep renewing the lock for `delay` (at most [`receiver::MAX_RETRY_HOLD`]), then abandon; under a second: abandon at once |
//! | [`EventBus::list_dead_letters`] | peek `{topic}/Subscriptions/{sub}/$deadletterqueue`; handle = sequence number; partition key = `SessionId` |
//! | [`EventBus::remove_dead_letter`] | receive from that queue until the sequence number comes up, complete it, abandon the rest |
//! | [`EventBus::watch_broker_dead_letters`] | sweep the `$deadletterqueue` every [`dead_letter::SWEEP_EVERY`] for messages without `DeadLetterAttempts` |
//! | [`PublishOutcome::Duplicate`] | only for a message id this bus published within [`ServiceBusConfig::duplicate_detection_window`]: Service Bus drops a duplicate silently and acknowledges the send, so duplicates from other processes are reported as published (and still dropped) |
//! | [`Receiver::backlog`] | peek (Listen rights): `pending` = messages still in the subscription, locked and scheduled ones included, up to [`receiver::BACKLOG_PEEK`] (a lower bound); exact counts need the management API and Manage rights, which this adapter does not ask for |
//!
//! Retries: the library's own retry policy retries every error (3 times,
//! 0.8/3.2/7.2 s) and, for sends, reports a send the broker *rejected* as
//! sent (`amqp_sender.rs`: the batch is marked settled before the outcome is
//! checked, the retry finds it settled and returns `Ok`). So publishing runs
//! with the library's retries off and retries here; consumers run with one
//! library retry (it reattaches a link the broker detached, e.g. an idle
//! management link) and a short delay, so a lost lock fails in well under a
//! second instead of ~11 s.
//!
//! Tokens: azservicebus's CBS link puts a new token exactly at the old one's
//! expiry, and Service Bus detaches links whose token expired. Entra ID
//! tokens are reported 5 minutes early by the credential wrapper; SAS
//! connections (30-minute signatures, no hook) are replaced at their next use
//! after 15 minutes when nothing received on them is unsettled, after 20 in
//! any case ([`convert::renew_connection`]).
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
pub mod dead_letter;
pub mod receiver;
mod recent;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azservicebus::core::BasicRetryPolicy;
use azservicebus::prelude::*;
use azure_core::credentials::TokenCredential;
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

pub use config::{EntraCredential, ServiceBusAuth, ServiceBusConfig, DEFAULT_PREFETCH};
use convert::{AttachFailure, SendFailure};
pub use receiver::{ServiceBusConsumer, ServiceBusDelivery};

use crate::{
    Backlog, BusError, DeadLetterHook, DeadLettered, EventBus, OutboundMessage, PublishOutcome,
};

/// Longest a receive holds its link before letting settlements through.
pub const POLL_SLICE: Duration = Duration::from_millis(250);
/// Largest batch asked of the link at once.
const MAX_BATCH: u32 = 256;
/// Message ids remembered for duplicate reporting.
const RECENT_IDS: usize = 100_000;
/// Failed publishes in a row after which the client (the AMQP connection) is
/// rebuilt too, not only the sender: the library's own recovery gives up for
/// good after an outage longer than its retries, and never rebuilds the client.
const REBUILD_CLIENT_AFTER: u32 = 3;
/// Longest one send (or sender attach) may take before the adapter gives up
/// on it and sends again (same `MessageId`; duplicate detection drops a
/// repeat). fe2o3-amqp 0.14 registers a sent delivery in its link's unsettled
/// map only *after* handing the transfer to the session
/// (`link/sender_link.rs`, `send_payload_with_transfer`); a broker that
/// settles it before then (`link/mod.rs`, `on_incoming_disposition` finds
/// nothing to settle) leaves the send waiting for an outcome that has already
/// come and gone, until this timeout. Not observed here (0 stalls in 20
/// publishes to a scripted peer that settles at once), but nothing in the
/// library prevents it, so the stall it would cause is bounded. The library's
/// default (and Service Bus's SDKs') is 60 s.
const PUBLISH_TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a dispose (detach/close handshake) may take before it is dropped.
const DISPOSE_LIMIT: Duration = Duration::from_secs(5);

type Client = ServiceBusClient<BasicRetryPolicy>;

/// Which library retry policy a client gets (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Sends: no library retries; the adapter retries.
    Publisher,
    /// Receives, settles, renews, accepts sessions, peeks: one quick retry.
    Consumer,
}

impl Role {
    fn retry_options(self) -> ServiceBusRetryOptions {
        match self {
            Role::Publisher => ServiceBusRetryOptions {
                max_retries: 0,
                try_timeout: PUBLISH_TRY_TIMEOUT,
                ..ServiceBusRetryOptions::default()
            },
            Role::Consumer => ServiceBusRetryOptions {
                mode: ServiceBusRetryMode::Fixed,
                max_retries: 1,
                delay: Duration::from_millis(200),
                max_delay: Duration::from_millis(500),
                try_timeout: Duration::from_secs(30),
            },
        }
    }
}

/// The Service Bus [`EventBus`].
pub struct ServiceBusBus {
    config: ServiceBusConfig,
    credential: Option<Arc<dyn TokenCredential>>,
    /// Publishing (library retries off).
    client: Mutex<Client>,
    sender: Mutex<Option<ServiceBusSender>>,
    /// Dead-letter administration and topology checks (one library retry).
    admin: Mutex<Client>,
    /// When `client` / `admin` connected (see [`convert::renew_connection`]).
    client_since: std::sync::Mutex<Instant>,
    admin_since: std::sync::Mutex<Instant>,
    /// An administration call failed in a way that may have broken the
    /// connection's AMQP session (a connection error, a dispose that did not
    /// finish): replace it before the next use.
    admin_broken: std::sync::atomic::AtomicBool,
    failures_in_a_row: AtomicU32,
    recent: std::sync::Mutex<recent::RecentIds>,
}

impl std::fmt::Debug for ServiceBusBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusBus")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One failed send: what it means, and the (scrubbed) text.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub(crate) failure: SendFailure,
    pub(crate) text: String,
}

/// Run `attempt` until it succeeds, fails for good, or the publish budget is
/// spent (see [`convert::publish_backoff`]); a rejected attempt is never turned
/// into a success.
pub(crate) async fn send_with_retries<F, Fut>(attempt: F) -> Result<(), Failed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Failed>>,
{
    use backon::Retryable;
    attempt
        .retry(convert::publish_backoff())
        .when(|f: &Failed| f.failure.retryable())
        .adjust(|f: &Failed, proposed| proposed.map(|d| f.failure.adjust_delay(d)))
        .notify(|f: &Failed, wait| {
            tracing::warn!(failure = ?f.failure, error = %f.text, wait_s = wait.as_secs_f64(), "publish failed; retrying")
        })
        .await
}

/// How long ago `since` was set.
pub(crate) fn age(since: &std::sync::Mutex<Instant>) -> Duration {
    since
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .elapsed()
}

/// Set `since` to now.
pub(crate) fn reset(since: &std::sync::Mutex<Instant>) {
    *since
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
}

async fn dispose_sender(sender: ServiceBusSender) {
    let _ = tokio::time::timeout(DISPOSE_LIMIT, sender.dispose()).await;
}

async fn dispose_client(client: Client) {
    let _ = tokio::time::timeout(DISPOSE_LIMIT, client.dispose()).await;
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
        let client = open_client(&config, credential.as_ref(), Role::Publisher).await?;
        let admin = open_client(&config, credential.as_ref(), Role::Consumer).await?;
        tracing::info!(
            namespace = %config.namespace(),
            topic = %config.topic,
            sessions = config.sessions,
            prefetch = config.prefetch,
            emulator = config.is_emulator(),
            "connected to Service Bus"
        );
        let recent = recent::RecentIds::new(config.duplicate_detection_window, RECENT_IDS);
        Ok(ServiceBusBus {
            config,
            credential,
            client: Mutex::new(client),
            sender: Mutex::new(None),
            admin: Mutex::new(admin),
            client_since: std::sync::Mutex::new(Instant::now()),
            admin_since: std::sync::Mutex::new(Instant::now()),
            admin_broken: std::sync::atomic::AtomicBool::new(false),
            failures_in_a_row: AtomicU32::new(0),
            recent: std::sync::Mutex::new(recent),
        })
    }

    pub fn config(&self) -> &ServiceBusConfig {
        &self.config
    }

    fn err(&self, op: &'static str, e: impl std::fmt::Display) -> BusError {
        let text = self.config.scrub(&e.to_string());
        BusError::with_kind(convert::classify_send_error(&text).kind(), op, text)
    }

    fn failed(&self, e: impl std::fmt::Display) -> Failed {
        let text = self.config.scrub(&e.to_string());
        Failed {
            failure: convert::classify_send_error(&text),
            text,
        }
    }

    /// One send of `message` (no library retries): open the sender if needed,
    /// measure the message against the link's size limit, send, and on a
    /// failure that may be the link's or the connection's, throw the sender
    /// (and after [`REBUILD_CLIENT_AFTER`] failures in a row, the client) away
    /// so the next attempt starts fresh.
    async fn send_once(&self, message: &ServiceBusMessage) -> Result<(), Failed> {
        let mut sender = self.sender.lock().await;
        // Nothing is in flight between sends: a SAS connection is replaced as
        // soon as it is old enough (see `convert::renew_connection`).
        if convert::renew_connection(self.config.signs_sas(), age(&self.client_since), true) {
            tracing::info!(
                "Service Bus: replacing the publishing connection before its SAS token expires"
            );
            if let Some(old) = sender.take() {
                dispose_sender(old).await;
            }
            self.rebuild_publisher_client().await;
        }
        let result = async {
            if sender.is_none() {
                let created = self
                    .client
                    .lock()
                    .await
                    .create_sender(&self.config.topic, ServiceBusSenderOptions::default())
                    .await
                    .map_err(|e| self.failed(format!("open sender: {e}")))?;
                *sender = Some(created);
            }
            let Some(s) = sender.as_mut() else {
                return Err(self.failed("no sender"));
            };
            let mut batch = s
                .create_message_batch(CreateMessageBatchOptions::default())
                .map_err(|e| self.failed(format!("create batch: {e:?}")))?;
            let too_large = |size: u64, limit: u64| Failed {
                failure: SendFailure::TooLarge,
                text: format!(
                    "{size} bytes encoded; this link takes at most {limit} (less a {} byte margin)",
                    convert::SIZE_MARGIN
                ),
            };
            let limit = convert::publish_size_limit(Some(batch.max_size_in_bytes()));
            if batch.try_add_message(message.clone()).is_err() {
                return Err(too_large(
                    batch.max_size_in_bytes(),
                    batch.max_size_in_bytes(),
                ));
            }
            if batch.size_in_bytes() > limit {
                return Err(too_large(batch.size_in_bytes(), batch.max_size_in_bytes()));
            }
            s.send_message_batch(batch)
                .await
                .map_err(|e| self.failed(e))
        }
        .await;
        match &result {
            Ok(()) => self.failures_in_a_row.store(0, Ordering::Relaxed),
            Err(f) if f.failure.rebuild_sender() => {
                if let Some(old) = sender.take() {
                    dispose_sender(old).await;
                }
                let n = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if f.failure == SendFailure::Connection || n >= REBUILD_CLIENT_AFTER {
                    self.rebuild_publisher_client().await;
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Replace the publishing client with a new connection (the old one is
    /// disposed, bounded); a failure is logged and the old client kept, so
    /// the next attempt tries again.
    async fn rebuild_publisher_client(&self) {
        match open_client(&self.config, self.credential.as_ref(), Role::Publisher).await {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *self.client.lock().await, fresh);
                reset(&self.client_since);
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                tracing::info!("Service Bus: publishing connection rebuilt");
                dispose_client(old).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Service Bus: could not rebuild the publishing connection")
            }
        }
    }

    /// The administration client, replaced first when an earlier call may
    /// have broken it or it is a SAS connection old enough (see
    /// [`convert::renew_connection`]). The old one is dropped, not disposed:
    /// receivers opened on it that are still at work keep its connection until
    /// they are done.
    async fn admin(&self) -> tokio::sync::MutexGuard<'_, Client> {
        let mut admin = self.admin.lock().await;
        let broken = self.admin_broken.swap(false, Ordering::Relaxed);
        if broken
            || convert::renew_connection(self.config.signs_sas(), age(&self.admin_since), true)
        {
            match open_client(&self.config, self.credential.as_ref(), Role::Consumer).await {
                Ok(fresh) => {
                    drop(std::mem::replace(&mut *admin, fresh));
                    reset(&self.admin_since);
                    tracing::info!(broken, "Service Bus: administration connection replaced");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Service Bus: could not replace the administration connection")
                }
            }
        }
        admin
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
        let opened = self
            .admin()
            .await
            .create_receiver_for_subscription(&self.config.topic, subscription, options)
            .await;
        opened.map_err(|e| self.admin_err("open receiver", e))
    }

    /// An administration error; one that may have broken the connection
    /// marks it for replacement.
    pub(crate) fn admin_err(&self, op: &'static str, e: impl std::fmt::Display) -> BusError {
        let e = self.err(op, e);
        if e.kind() == crate::BusErrorKind::Connect {
            self.admin_broken.store(true, Ordering::Relaxed);
        }
        e
    }

    /// Detach an administration receiver, bounded; one that does not detach
    /// cleanly may leave the AMQP session in a state where the next attach
    /// fails (`IllegalSessionState`), so the connection is replaced.
    pub(crate) async fn release(&self, receiver: ServiceBusReceiver) {
        if !matches!(
            tokio::time::timeout(DISPOSE_LIMIT, receiver.dispose()).await,
            Ok(Ok(()))
        ) {
            tracing::debug!("Service Bus: an administration receiver did not detach cleanly; replacing the connection");
            self.admin_broken.store(true, Ordering::Relaxed);
        }
    }

    /// What `subscription` holds, seen from outside any consumer (for metrics):
    /// a peek from sequence number 0 (Listen rights) on the administration
    /// connection — a receiver with prefetch 0, so nothing is locked — of up
    /// to [`receiver::BACKLOG_PEEK`] messages, locked and scheduled ones
    /// included. `pending` is that count (a lower bound once it reaches the
    /// peek size), `in_flight` 0: which of them are locked is not visible to a
    /// peek. `None` with sessions (a session-less receiver cannot attach to a
    /// session subscription, and a session one would take a session from the
    /// writers). Exact counts (active, dead-lettered, scheduled) need the
    /// management plane instead: ARM (`countDetails`, an Azure RBAC read role
    /// such as Reader on the namespace) or the entity's ATOM feed (the `Manage`
    /// claim), neither of which this adapter asks for.
    pub async fn peek_backlog(&self, subscription: &str) -> Result<Option<Backlog>, BusError> {
        if self.config.sessions {
            return Ok(None);
        }
        let mut receiver = self
            .admin_receiver(subscription, false, ServiceBusReceiveMode::PeekLock)
            .await?;
        let peeked = receiver
            .peek_messages(receiver::BACKLOG_PEEK, Some(0))
            .await;
        self.release(receiver).await;
        let peeked = peeked.map_err(|e| self.admin_err("backlog", e))?;
        Ok(Some(convert::backlog_from_peek(peeked.len() as u64, 0)))
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
                Err(e) => break Err(self.admin_err("purge", e)),
            }
        };
        self.release(receiver).await;
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

pub(crate) async fn open_client(
    config: &ServiceBusConfig,
    credential: Option<&Arc<dyn TokenCredential>>,
    role: Role,
) -> Result<Client, BusError> {
    let options = ServiceBusClientOptions {
        identifier: config.identifier.clone(),
        retry_options: role.retry_options(),
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

    async fn subscription_backlog(&self, subscription: &str) -> Result<Option<Backlog>, BusError> {
        self.peek_backlog(subscription).await
    }

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
            let mut client = self.admin().await;
            client
                .create_sender(&topic, ServiceBusSenderOptions::default())
                .await
        };
        match attempt {
            Ok(sender) => {
                if !matches!(
                    tokio::time::timeout(DISPOSE_LIMIT, sender.dispose()).await,
                    Ok(Ok(()))
                ) {
                    self.admin_broken.store(true, Ordering::Relaxed);
                }
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
                let mut client = self.admin().await;
                client
                    .create_receiver_for_subscription(&topic, subscription, options)
                    .await
            };
            match attempt {
                Ok(mut receiver) => {
                    // The attach is what proves the entity exists; a peek goes
                    // through the management link and surfaces a session mismatch.
                    let peek = receiver.peek_messages(1, None).await;
                    self.release(receiver).await;
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
    ///
    /// Retried here (see the module docs); `Published` only after the broker
    /// accepted the message. A failure carries its [`crate::BusErrorKind`]
    /// (`Busy` when throttled or full to the end of the budget).
    async fn publish(&self, message: &OutboundMessage) -> Result<PublishOutcome, BusError> {
        let sb_message = convert::to_service_bus_message(message, self.config.sessions)?;
        match send_with_retries(|| self.send_once(&sb_message)).await {
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
            Err(f) if f.failure == SendFailure::TooLarge => Err(BusError::TooLarge {
                message_id: message.message_id.clone(),
                size: message.message.size(),
            }),
            Err(f) => Err(BusError::with_kind(
                f.failure.kind(),
                "publish",
                format!("message `{}`: {}", message.message_id, f.text),
            )),
        }
    }

    /// A consumer on its own AMQP connection. Without sessions the receive
    /// link is attached now (so a missing subscription fails here); with
    /// sessions, receives accept the next available session as needed.
    async fn subscribe(&self, subscription: &str) -> Result<ServiceBusConsumer, BusError> {
        ServiceBusConsumer::open(&self.config, self.credential.clone(), subscription).await
    }

    async fn list_dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLettered>, BusError> {
        dead_letter::list(self, subscription, limit).await
    }

    async fn remove_dead_letter(&self, subscription: &str, handle: &str) -> Result<(), BusError> {
        dead_letter::remove(self, subscription, handle).await
    }

    /// A sweep of the subscription's `$deadletterqueue` (see [`dead_letter::sweep`]).
    async fn watch_broker_dead_letters(
        &self,
        subscription: &str,
        hook: DeadLetterHook,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        dead_letter::start_sweep(self, subscription, hook).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convert::SendFailure;

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

    fn fail(failure: SendFailure) -> Failed {
        Failed {
            failure,
            text: format!("{failure:?}"),
        }
    }

    /// A throttled publish is retried after at least 10 s and succeeds;
    /// nothing is reported as sent before the broker accepted it.
    #[tokio::test(start_paused = true)]
    async fn server_busy_is_retried_after_ten_seconds() {
        let script = std::sync::Mutex::new(vec![Ok(()), Err(fail(SendFailure::ServerBusy))]);
        let started = tokio::time::Instant::now();
        let tries = AtomicU32::new(0);
        let result = send_with_retries(|| {
            tries.fetch_add(1, Ordering::Relaxed);
            let next = script.lock().unwrap().pop().unwrap();
            async move { next }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(tries.load(Ordering::Relaxed), 2);
        assert!(
            started.elapsed() >= convert::SERVER_BUSY_WAIT,
            "{:?}",
            started.elapsed()
        );
    }

    /// Too large is final at once; it is not retried.
    #[tokio::test(start_paused = true)]
    async fn too_large_is_not_retried() {
        let tries = AtomicU32::new(0);
        let result = send_with_retries(|| {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err(fail(SendFailure::TooLarge)) }
        })
        .await;
        assert_eq!(result.unwrap_err().failure, SendFailure::TooLarge);
        assert_eq!(tries.load(Ordering::Relaxed), 1);
    }

    /// A broker that keeps rejecting: the publish fails (never `Ok`) once the
    /// budget is spent, after several tries, within a bounded time.
    #[tokio::test(start_paused = true)]
    async fn a_rejecting_broker_exhausts_the_budget_and_fails() {
        let started = tokio::time::Instant::now();
        let tries = AtomicU32::new(0);
        let result = send_with_retries(|| {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err(fail(SendFailure::ServerBusy)) }
        })
        .await;
        assert_eq!(result.unwrap_err().failure, SendFailure::ServerBusy);
        let n = tries.load(Ordering::Relaxed);
        assert!(n >= 3, "{n} tries");
        let took = started.elapsed();
        assert!(
            took >= convert::SERVER_BUSY_WAIT * (n - 1),
            "{took:?} for {n} tries"
        );
        assert!(took <= convert::PUBLISH_BUDGET * 4, "{took:?}");
    }

    #[test]
    fn publishers_send_without_library_retries() {
        assert_eq!(Role::Publisher.retry_options().max_retries, 0);
        let c = Role::Consumer.retry_options();
        assert!(c.max_retries <= 1);
        assert!(c.max_delay <= Duration::from_secs(1));
    }
}
