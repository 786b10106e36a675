//! The Service Bus competing consumer ([`ServiceBusConsumer`]) and its
//! deliveries ([`ServiceBusDelivery`]): receive links and sessions, locks,
//! settlement. The sibling of `jetstream/receiver.rs`.
//!
//! Sessions: `accept_next_session` is never cancelled once started. fe2o3
//! registers the link before the broker answers; a cancelled attach leaves it
//! registered, the broker's late Attach then hits an unknown handle and that
//! ends the whole AMQP session (CBS, receiver and management links), after
//! which every accept fails. So the accept runs in a task that owns the
//! consumer's client and is awaited across receives; when it fails for any
//! reason other than "no session available", the client is rebuilt.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use azservicebus::prelude::*;
use azservicebus::receiver::service_bus_session_receiver::ServiceBusSessionReceiverOptions;
use azure_core::credentials::TokenCredential;
use mirror_schema::WireMessage;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::convert::{self, SendFailure};
use super::{open_client, Client, Role, ServiceBusConfig, DISPOSE_LIMIT, MAX_BATCH, POLL_SLICE};
use crate::{Backlog, BusError, BusErrorKind, DeadLetter, Delivery, Receiver};

/// After the first message arrived, how long to wait for more of a batch
/// (prefetched messages are already local, so this is short).
const GATHER: Duration = Duration::from_millis(20);
/// Most messages [`Receiver::backlog`] peeks to count what is left.
pub const BACKLOG_PEEK: u32 = 64;
/// Longest [`Delivery::retry`] holds a message locked before abandoning it.
pub const MAX_RETRY_HOLD: Duration = Duration::from_secs(5 * 60);
/// Shorter retry delays abandon at once.
const HOLD_AT_LEAST: Duration = Duration::from_secs(1);

/// A receive link: plain, or one accepted session.
pub(crate) enum Link {
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

    /// Lock time left for `m` (30 s if the broker did not say).
    fn lock_left(&self, m: &ServiceBusReceivedMessage) -> Duration {
        self.locked_until(m)
            .map(|t| convert::until(t, chrono::Utc::now()))
            .unwrap_or(Duration::from_secs(30))
    }

    /// Whether the lock holding `m` is past its expiry by more than
    /// [`convert::CLOCK_SKEW_ALLOWANCE`] on this machine's clock.
    fn lock_lost(&self, m: &ServiceBusReceivedMessage) -> bool {
        self.locked_until(m)
            .is_some_and(|t| convert::lock_lost(t, chrono::Utc::now()))
    }

    fn is_session(&self) -> bool {
        matches!(self, Link::Session(_))
    }

    async fn peek(&mut self, max: u32) -> Result<usize, azure_core::Error> {
        let peeked = match self {
            Link::Plain(r) => r.peek_messages(max, Some(0)).await?,
            Link::Session(r) => r.peek_messages(max, Some(0)).await?,
        };
        Ok(peeked.len())
    }

    async fn dispose(self) {
        let _ = tokio::time::timeout(DISPOSE_LIMIT, async {
            match self {
                Link::Plain(r) => r.dispose().await,
                Link::Session(r) => r.dispose().await,
            }
        })
        .await;
    }
}

pub(crate) type SharedLink = Arc<Mutex<Link>>;

type Accepting = JoinHandle<(Client, Result<ServiceBusSessionReceiver, azure_core::Error>)>;

/// A competing consumer on one subscription (see the module docs).
pub struct ServiceBusConsumer {
    config: ServiceBusConfig,
    credential: Option<Arc<dyn TokenCredential>>,
    /// `None` while an accept task holds it.
    client: Option<Client>,
    /// When `client` connected (see [`convert::renew_connection`]).
    connected_at: Instant,
    accepting: Option<Accepting>,
    subscription: String,
    /// The current link; with sessions, `None` until a session is accepted.
    link: Option<SharedLink>,
    /// Deliveries handed out and not yet settled (or dropped).
    in_flight: Arc<AtomicU64>,
}

/// Counts a delivery in its consumer's in-flight figure until dropped.
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(count: &Arc<AtomicU64>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for ServiceBusConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusConsumer")
            .field("topic", &self.config.topic)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

impl Drop for ServiceBusConsumer {
    fn drop(&mut self) {
        // The client (and its connection) goes with the task; an attach cut
        // short here can only break a session nobody will use again.
        if let Some(task) = self.accepting.take() {
            task.abort();
        }
    }
}

impl ServiceBusConsumer {
    pub(crate) async fn open(
        config: &ServiceBusConfig,
        credential: Option<Arc<dyn TokenCredential>>,
        subscription: &str,
    ) -> Result<ServiceBusConsumer, BusError> {
        let client = open_client(config, credential.as_ref(), Role::Consumer).await?;
        let mut consumer = ServiceBusConsumer {
            config: config.clone(),
            credential,
            client: Some(client),
            connected_at: Instant::now(),
            accepting: None,
            subscription: subscription.to_owned(),
            link: None,
            in_flight: Arc::new(AtomicU64::new(0)),
        };
        if !config.sessions {
            consumer.attach_plain().await?;
        }
        Ok(consumer)
    }

    fn err(&self, op: &'static str, e: impl std::fmt::Display) -> BusError {
        let text = self.config.scrub(&e.to_string());
        BusError::with_kind(convert::classify_send_error(&text).kind(), op, text)
    }

    async fn attach_plain(&mut self) -> Result<SharedLink, BusError> {
        let options = ServiceBusReceiverOptions {
            prefetch_count: self.config.prefetch,
            receive_mode: ServiceBusReceiveMode::PeekLock,
            identifier: self.config.identifier.clone(),
            sub_queue: SubQueue::None,
        };
        let client = match self.client.as_mut() {
            Some(c) => c,
            None => return Err(BusError::op("subscribe", "no client")),
        };
        let receiver = client
            .create_receiver_for_subscription(&self.config.topic, &self.subscription, options)
            .await
            .map_err(|e| self.err("subscribe", e))?;
        let link = Arc::new(Mutex::new(Link::Plain(receiver)));
        self.link = Some(link.clone());
        Ok(link)
    }

    /// Throw the client away and open a new connection (after a failed
    /// accept or a broken link: the library never rebuilds a client itself;
    /// or ahead of a SAS token's expiry). With deliveries in flight the old
    /// client is dropped rather than disposed: their links hold its connection
    /// open until they are settled.
    async fn rebuild_client(&mut self) -> Result<(), BusError> {
        if let Some(task) = self.accepting.take() {
            task.abort();
        }
        if let Some(old) = self.client.take() {
            if self.in_flight.load(Ordering::Relaxed) == 0 {
                let _ = tokio::time::timeout(DISPOSE_LIMIT, old.dispose()).await;
            }
        }
        let fresh = open_client(&self.config, self.credential.as_ref(), Role::Consumer).await?;
        self.client = Some(fresh);
        self.connected_at = Instant::now();
        tracing::info!(subscription = %self.subscription, "Service Bus: consumer connection rebuilt");
        Ok(())
    }

    /// Replace a SAS connection old enough (see [`convert::renew_connection`])
    /// before receiving on it: the link (or session) is given up and a new
    /// connection opened. Not while a session accept owns the client (it is
    /// never cut short); the next receive looks again.
    async fn renew_connection_if_due(&mut self) -> Result<(), BusError> {
        let idle = self.in_flight.load(Ordering::Relaxed) == 0;
        if self.accepting.is_some()
            || !convert::renew_connection(
                self.config.signs_sas(),
                self.connected_at.elapsed(),
                idle,
            )
        {
            return Ok(());
        }
        tracing::info!(subscription = %self.subscription, idle, "Service Bus: replacing the consumer connection before its SAS token expires");
        self.release_link().await;
        self.rebuild_client().await
    }

    /// The link to receive from; with sessions, the accepted session, waiting
    /// at most `wait` for the accept task (which keeps running if the wait
    /// ends first). `None`: no session came within `wait`.
    async fn current_link(&mut self, wait: Duration) -> Result<Option<SharedLink>, BusError> {
        if let Some(link) = &self.link {
            return Ok(Some(link.clone()));
        }
        if !self.config.sessions {
            if self.client.is_none() {
                self.rebuild_client().await?;
            }
            return match self.attach_plain().await {
                Ok(link) => Ok(Some(link)),
                Err(e) => {
                    self.rebuild_client().await?;
                    Err(e)
                }
            };
        }
        if self.accepting.is_none() {
            if self.client.is_none() {
                self.rebuild_client().await?;
            }
            let Some(mut client) = self.client.take() else {
                return Err(BusError::op("accept session", "no client"));
            };
            let options = ServiceBusSessionReceiverOptions {
                prefetch_count: self.config.prefetch,
                receive_mode: ServiceBusReceiveMode::PeekLock,
                identifier: self.config.identifier.clone(),
            };
            let topic = self.config.topic.clone();
            let subscription = self.subscription.clone();
            self.accepting = Some(tokio::spawn(async move {
                let result = client
                    .accept_next_session_for_subscription(&topic, &subscription, options)
                    .await;
                (client, result)
            }));
        }
        let Some(task) = self.accepting.as_mut() else {
            return Ok(None);
        };
        // Waiting on `&mut task` leaves the task running when the wait ends.
        let joined = match tokio::time::timeout(wait.max(Duration::from_millis(10)), task).await {
            Err(_still_accepting) => return Ok(None),
            Ok(joined) => joined,
        };
        self.accepting = None;
        match joined {
            Ok((client, Ok(session))) => {
                self.client = Some(client);
                tracing::debug!(subscription = %self.subscription, session = %session.session_id(), "accepted session");
                let link = Arc::new(Mutex::new(Link::Session(session)));
                self.link = Some(link.clone());
                Ok(Some(link))
            }
            Ok((client, Err(e))) => {
                self.client = Some(client);
                let text = self.config.scrub(&e.to_string());
                if convert::no_session_available(&text) {
                    Ok(None)
                } else {
                    tracing::warn!(subscription = %self.subscription, error = %text, "accepting a session failed; rebuilding the connection");
                    self.rebuild_client().await?;
                    Err(BusError::with_kind(
                        convert::classify_send_error(&text).kind(),
                        "accept session",
                        text,
                    ))
                }
            }
            Err(join) => {
                tracing::warn!(subscription = %self.subscription, error = %join, "session accept task failed; rebuilding the connection");
                self.rebuild_client().await?;
                Err(BusError::op("accept session", join))
            }
        }
    }

    /// Give up the current link: with sessions, the session had nothing more
    /// (it is closed once its in-flight deliveries are settled); without, the
    /// link failed and is attached again on the next receive.
    async fn release_link(&mut self) {
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
            renewal,
            lost: Arc::new(AtomicBool::new(false)),
            _in_flight: InFlight::new(&self.in_flight),
        }
    }
}

impl Receiver for ServiceBusConsumer {
    type Delivery = ServiceBusDelivery;

    /// Deliveries whose lock is already (nearly) gone — prefetched messages
    /// that waited in the client while a slow batch was applied — are not
    /// handed out: they are abandoned, so the broker hands them out again
    /// at once instead of after the lock expires.
    ///
    /// With sessions, a session that yields nothing within one slice is
    /// released at once and the next one accepted within the same `wait`.
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
            self.renew_connection_if_due().await?;
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
                match first {
                    Ok(batch) => {
                        let (usable, stale): (Vec<_>, Vec<_>) = batch
                            .into_iter()
                            .partition(|m| convert::lock_usable(guard.lock_left(m)));
                        for m in &stale {
                            tracing::debug!(
                                sequence_number = m.sequence_number(),
                                "dropping a delivery whose lock is nearly gone"
                            );
                            let _ = guard.abandon(m).await;
                        }
                        Ok((usable, !stale.is_empty()))
                    }
                    Err(e) => Err(e),
                }
            };
            match received {
                Ok((batch, _)) if !batch.is_empty() => {
                    crate::telemetry::received(
                        crate::telemetry::SERVICE_BUS,
                        &self.config.topic,
                        &self.subscription,
                        batch.len(),
                    );
                    return Ok(batch.into_iter().map(|m| self.delivery(m, &link)).collect());
                }
                Ok((_, had_stale)) => {
                    let session = link.lock().await.is_session();
                    if session && !had_stale {
                        // this session is drained for now: let another consumer have it
                        drop(link);
                        self.release_link().await;
                    }
                }
                Err(e) => {
                    let text = self.config.scrub(&e.to_string());
                    drop(link);
                    self.release_link().await;
                    return Err(BusError::with_kind(
                        convert::classify_send_error(&text).kind(),
                        "receive",
                        text,
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Peeks (Listen rights) up to [`BACKLOG_PEEK`] messages still in the
    /// subscription (locked and scheduled ones included). `in_flight` is this
    /// consumer's unsettled deliveries, `pending` the rest of what the peek
    /// saw — so messages other consumers hold locked count as pending. Exact
    /// counts need the management API and Manage rights (not asked for).
    /// With sessions it peeks the session held; holding none after an empty
    /// receive means no session was available, so `pending` is 0 for this
    /// consumer (sessions locked by others are their work).
    async fn backlog(&mut self) -> Result<Option<Backlog>, BusError> {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let Some(link) = self.link.clone() else {
            if self.config.sessions {
                return Ok(Some(Backlog {
                    pending: 0,
                    in_flight,
                }));
            }
            return Ok(None);
        };
        let peeked = link.lock().await.peek(BACKLOG_PEEK).await;
        match peeked {
            Ok(n) => Ok(Some(convert::backlog_from_peek(n as u64, in_flight))),
            Err(e) => Err(self.err("backlog", e)),
        }
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
                    l.lock_left(&m)
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
    renewal: Option<Renewal>,
    /// The broker answered a renewal with "lock lost" (410): no later renewal
    /// or settlement is sent for it.
    lost: Arc<AtomicBool>,
    _in_flight: InFlight,
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

/// The error for a settlement or renewal on a lock that is already gone.
fn lock_lost(op: &'static str, sequence_number: i64) -> BusError {
    BusError::with_kind(
        BusErrorKind::LockLost,
        op,
        format!(
            "message {sequence_number}: its lock has expired; the broker will deliver it again"
        ),
    )
}

fn settle_error(op: &'static str, e: azure_core::Error) -> BusError {
    let text = e.to_string();
    let failure = convert::classify_send_error(&text);
    let kind = if failure == SendFailure::Other {
        BusErrorKind::Other
    } else {
        failure.kind()
    };
    BusError::with_kind(kind, op, text)
}

impl ServiceBusDelivery {
    /// The broker's sequence number of this message.
    pub fn sequence_number(&self) -> i64 {
        self.sequence_number
    }

    /// Lock time left, under both locks.
    async fn lock_left(&self) -> Duration {
        let m = self.inner.lock().await;
        let l = self.link.lock().await;
        l.lock_left(&m)
    }

    /// Settle with `op`, unless the lock is already past its expiry: then the
    /// broker has (or will have) given the message to someone else, and a
    /// disposition — whose outcome fe2o3 does not report — would only look
    /// like success.
    async fn settle<F>(mut self, op: &'static str, f: F) -> Result<(), BusError>
    where
        F: for<'a> FnOnce(
            &'a mut Link,
            &'a ServiceBusReceivedMessage,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), azure_core::Error>> + Send + 'a>,
        >,
    {
        self.renewal.take();
        let m = self.inner.lock().await;
        let mut l = self.link.lock().await;
        if self.lost.load(Ordering::Relaxed) || l.lock_lost(&m) {
            return Err(lock_lost(op, self.sequence_number));
        }
        f(&mut l, &m).await.map_err(|e| settle_error(op, e))
    }

    /// Keep the lock for `hold`, then abandon (see [`Delivery::retry`]).
    async fn hold_then_abandon(self, hold: Duration) {
        let until = Instant::now() + hold;
        loop {
            let left = self.lock_left().await;
            let now = Instant::now();
            if now + left.saturating_sub(convert::LOCK_MARGIN) >= until {
                tokio::time::sleep_until(until.into()).await;
                break;
            }
            if !convert::renew_now(left) {
                tokio::time::sleep(convert::renewal_delay(left)).await;
            }
            let renewed = {
                let mut m = self.inner.lock().await;
                let mut l = self.link.lock().await;
                l.renew(&mut m).await
            };
            if let Err(e) = renewed {
                tracing::debug!(sequence_number = self.sequence_number, error = %e, "retry: could not keep the lock; the message comes back when it expires");
                return;
            }
        }
        let sequence_number = self.sequence_number;
        if let Err(e) = self.settle("abandon", |l, m| Box::pin(l.abandon(m))).await {
            tracing::debug!(sequence_number, error = %e, "retry: abandon after the delay failed; the message comes back when its lock expires");
        }
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

    /// Runs in its own task, so a caller that stops waiting (a timeout, a
    /// `select!`) never cuts a renew-lock request off half-way: fe2o3's
    /// management client does not correlate answers, and would hand the late
    /// answer to the link's next request.
    async fn keep_alive(&self) -> Result<(), BusError> {
        let (inner, link, lost, sequence_number) = (
            self.inner.clone(),
            self.link.clone(),
            self.lost.clone(),
            self.sequence_number,
        );
        let task = tokio::spawn(async move {
            let mut m = inner.lock().await;
            let mut l = link.lock().await;
            if lost.load(Ordering::Relaxed) || l.lock_lost(&m) {
                return Err(lock_lost("renew lock", sequence_number));
            }
            let renewed = l
                .renew(&mut m)
                .await
                .map_err(|e| settle_error("renew lock", e));
            if matches!(&renewed, Err(e) if e.kind() == BusErrorKind::LockLost) {
                lost.store(true, Ordering::Relaxed);
            }
            renewed
        });
        task.await
            .unwrap_or_else(|e| Err(BusError::op("renew lock", e)))
    }

    /// One `renew-session-lock` per session; without sessions one request per
    /// message (see the module docs). Locks already gone — past `locked_until`,
    /// or answered "lock lost" by an earlier renewal — are counted as failed
    /// without a request, and the budget is checked between requests.
    ///
    /// The requests run in their own task, for the reason given at
    /// [`Self::keep_alive`]; the caller waits for it at most `budget`, so one
    /// request the broker is slow to answer (the library waits up to its try
    /// timeout, 30 s) does not hold the caller past the budget. What the task
    /// had not got to by then counts as failed; it stops at its next check.
    async fn keep_alive_all(deliveries: &[Self], budget: Duration) -> usize {
        let work: Vec<_> = deliveries
            .iter()
            .map(|d| {
                (
                    d.inner.clone(),
                    d.link.clone(),
                    d.lost.clone(),
                    d.sequence_number,
                )
            })
            .collect();
        let total = work.len();
        // deliveries the task has decided (renewed or failed), and failures
        let decided = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (done, bad) = (decided.clone(), failed.clone());
        let deadline = Instant::now() + budget;
        let task = tokio::spawn(async move {
            let fail = || {
                bad.fetch_add(1, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            };
            let mut renewed_sessions: Vec<SharedLink> = Vec::new();
            let mut lost_sessions: Vec<SharedLink> = Vec::new();
            for (i, (inner, link, lost, sequence_number)) in work.into_iter().enumerate() {
                if Instant::now() >= deadline {
                    tracing::warn!(left = total - i, "keep-alive pass over its time budget");
                    return;
                }
                let mut m = inner.lock().await;
                let mut l = link.lock().await;
                let session = l.is_session();
                if session && renewed_sessions.iter().any(|s| Arc::ptr_eq(s, &link)) {
                    done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if lost.load(Ordering::Relaxed)
                    || l.lock_lost(&m)
                    || (session && lost_sessions.iter().any(|s| Arc::ptr_eq(s, &link)))
                {
                    lost.store(true, Ordering::Relaxed);
                    fail();
                    continue;
                }
                match l.renew(&mut m).await {
                    Ok(()) if session => {
                        drop(l);
                        renewed_sessions.push(link.clone());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let e = settle_error("renew lock", e);
                        tracing::warn!(sequence_number, error = %e, "could not extend a message lock");
                        if e.kind() == BusErrorKind::LockLost {
                            lost.store(true, Ordering::Relaxed);
                            if session {
                                drop(l);
                                lost_sessions.push(link.clone());
                            }
                        }
                        fail();
                    }
                }
            }
        });
        if tokio::time::timeout_at(deadline.into(), task)
            .await
            .is_err()
        {
            tracing::warn!(
                left = total - decided.load(Ordering::Relaxed).min(total),
                "keep-alive pass: the broker did not answer within the budget"
            );
        }
        failed.load(Ordering::Relaxed) + total - decided.load(Ordering::Relaxed).min(total)
    }

    async fn complete(self) -> Result<(), BusError> {
        self.settle("complete", |l, m| Box::pin(l.complete(m)))
            .await
    }

    /// Keeps the message locked (renewing as needed) for `delay`, at most
    /// [`MAX_RETRY_HOLD`], then abandons it, in a background task; returns
    /// at once. Service Bus has no delayed abandon; holding the lock is what
    /// makes the delay real without a copy. A delay under a second abandons
    /// at once. If the lock cannot be kept, the message comes back when it
    /// expires (also a redelivery, a little later).
    async fn retry(self, delay: Duration) -> Result<(), BusError> {
        if convert::abandon_dead_letters(self.delivery_count, self.max_delivery_count) {
            tracing::warn!(
                sequence_number = self.sequence_number,
                delivery_count = self.delivery_count,
                "abandoning after the subscription's max delivery count: the broker will dead-letter it (MaxDeliveryCountExceeded)"
            );
        }
        let lost = {
            let m = self.inner.lock().await;
            let l = self.link.lock().await;
            l.lock_lost(&m)
        };
        if lost {
            return Err(lock_lost("abandon", self.sequence_number));
        }
        if delay < HOLD_AT_LEAST {
            return self.settle("abandon", |l, m| Box::pin(l.abandon(m))).await;
        }
        let hold = delay.min(MAX_RETRY_HOLD);
        tokio::spawn(self.hold_then_abandon(hold));
        Ok(())
    }

    async fn dead_letter(self, why: &DeadLetter) -> Result<(), BusError> {
        let options = convert::dead_letter_options(why, chrono::Utc::now());
        self.settle("dead-letter", move |l, m| {
            Box::pin(l.dead_letter(m, options))
        })
        .await
    }
}
