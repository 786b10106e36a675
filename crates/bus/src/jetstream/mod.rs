//! NATS JetStream adapter of the [`EventBus`](crate::EventBus) port.
//!
//! # Topology
//!
//! | port concept | JetStream |
//! | --- | --- |
//! | topic | stream `{topic}` capturing subject `{topic}`, limits retention, duplicate window keyed on `Nats-Msg-Id` |
//! | subscription | durable pull consumer (`sql-writer`, `monitoring`) with explicit ack, `ack_wait` and `max_deliver` |
//! | lock | the consumer's ack wait; [`Delivery::keep_alive`](crate::Delivery::keep_alive) sends `+WPI` |
//! | dead-letter queue | stream `{topic}-deadletter`, one subject `{topic}-deadletter.{subscription}` per subscription |
//!
//! Settlement: `complete` is a plain ack flushed to the socket (not confirmed:
//! a lost ack is a redelivery, which the ledger absorbs; `complete_all`
//! writes a batch's acks and flushes once), `retry(delay)` a
//! confirmed NAK with delay, `dead_letter` a publish
//! to the dead-letter stream followed by a TERM of the original. The
//! dead-letter publish carries `Nats-Msg-Id = dlq:{subscription}:{original id}`,
//! so a crash between the publish and the TERM cannot put the message in the
//! dead-letter queue twice.
//!
//! # Messages that run out of deliveries
//!
//! JetStream stops redelivering a message after `max_deliver` attempts and
//! only says so in an advisory. A process consuming a subscription should run
//! a [`MaxDeliveriesWatcher`] (see [`JetStreamBus::max_deliveries_watcher`]),
//! which dead-letters such messages with reason `max_deliveries`. Advisories
//! are not persisted: one published while no watcher runs is missed, and the
//! message then stays only in the topic stream until `max_age`. The writer's
//! own policy dead-letters before JetStream's limit is reached, so the watcher
//! is a safety net (crash loops, a consumer that never settles).
//!
//! Nothing here leaks an `async_nats` type: the public surface is
//! [`JetStreamConfig`], [`JetStreamBus`], [`JetStreamReceiver`],
//! [`JetStreamDelivery`] and [`MaxDeliveriesWatcher`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::{
    BusError, DeadLettered, EventBus, OutboundMessage, PublishOutcome, MONITORING_SUBSCRIPTION,
    SQL_WRITER_SUBSCRIPTION, TOPIC,
};

mod dead_letter;
mod receiver;
mod wire;

pub use dead_letter::{MaxDeliveriesWatcher, MAX_DELIVERIES_REASON};
pub use receiver::{JetStreamDelivery, JetStreamReceiver};

/// Settings of the JetStream adapter. `Debug` hides passwords and tokens in `url`.
#[derive(Clone, PartialEq)]
pub struct JetStreamConfig {
    /// Server URL(s), comma separated (`nats://127.0.0.1:4222`).
    pub url: String,
    /// Stream name and the subject it captures.
    pub topic: String,
    /// Subscriptions [`ensure_topology`](EventBus::ensure_topology) creates as durable consumers.
    pub subscriptions: Vec<String>,
    /// Duplicate-suppression window of the stream (keyed on `Nats-Msg-Id`).
    pub duplicate_window: Duration,
    /// The lock: how long a delivery stays invisible to other consumers before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries after which JetStream gives up on a message (see [`MaxDeliveriesWatcher`]).
    pub max_deliver: u32,
    /// How long the topic stream keeps messages.
    pub max_age: Duration,
    /// How long the dead-letter stream keeps messages.
    pub dead_letter_max_age: Duration,
    /// Delivered but unsettled messages a subscription may hold before the server stops delivering.
    pub max_ack_pending: u32,
    /// Redelivery delays after a lock expiry (JetStream consumer `backoff`); empty = `ack_wait` each time.
    /// At most `max_deliver` entries.
    pub redelivery_backoff: Vec<Duration>,
    /// Stream replicas (1 for a single server, 3 for a cluster).
    pub replicas: usize,
    /// Timeout of JetStream API calls, publish acks and settlement confirmations.
    pub api_timeout: Duration,
    /// Timeout for establishing the connection.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for JetStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamConfig")
            .field("url", &redact_url(&self.url))
            .field("topic", &self.topic)
            .field("subscriptions", &self.subscriptions)
            .field("duplicate_window", &self.duplicate_window)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("max_age", &self.max_age)
            .field("dead_letter_max_age", &self.dead_letter_max_age)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("redelivery_backoff", &self.redelivery_backoff)
            .field("replicas", &self.replicas)
            .field("api_timeout", &self.api_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// `url` with any user info (user:password, token) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|part| match part.rsplit_once('@') {
            Some((before, host)) => match before.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://***@{host}"),
                None => format!("***@{host}"),
            },
            None => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            topic: TOPIC.to_owned(),
            subscriptions: vec![
                SQL_WRITER_SUBSCRIPTION.to_owned(),
                MONITORING_SUBSCRIPTION.to_owned(),
            ],
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: crate::DEFAULT_MAX_DELIVERIES,
            max_age: Duration::from_secs(7 * 24 * 3600),
            dead_letter_max_age: Duration::from_secs(30 * 24 * 3600),
            max_ack_pending: crate::DEFAULT_MAX_ACK_PENDING,
            redelivery_backoff: Vec::new(),
            replicas: 1,
            api_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl JetStreamConfig {
    /// Name of the dead-letter stream: `{topic}-deadletter`.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}-deadletter", self.topic)
    }

    /// Subject of `subscription`'s dead-letter queue inside the dead-letter stream.
    pub fn dead_letter_subject(&self, subscription: &str) -> String {
        format!("{}.{subscription}", self.dead_letter_stream())
    }

    /// Check the settings; every error names the field.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |m: String| Err(BusError::Config(m));
        if self.url.trim().is_empty() {
            return bad("jetstream url is empty".into());
        }
        if !is_valid_name(&self.topic) {
            return bad(format!(
                "jetstream topic `{}` must be non-empty without whitespace, `.`, `*`, `>`, `/` or `\\`",
                self.topic
            ));
        }
        for s in &self.subscriptions {
            if !is_valid_name(s) {
                return bad(format!(
                    "jetstream subscription `{s}` is not a valid consumer name"
                ));
            }
        }
        if self.ack_wait < Duration::from_millis(100) {
            return bad(format!(
                "jetstream ack_wait {:?} is below 100ms",
                self.ack_wait
            ));
        }
        if self.max_deliver == 0 {
            return bad("jetstream max_deliver must be at least 1".into());
        }
        if self.duplicate_window.is_zero() || self.duplicate_window > self.max_age {
            return bad(format!(
                "jetstream duplicate_window {:?} must be positive and at most max_age {:?}",
                self.duplicate_window, self.max_age
            ));
        }
        if self.dead_letter_max_age < self.duplicate_window {
            return bad("jetstream dead_letter_max_age must be at least duplicate_window".into());
        }
        if self.redelivery_backoff.len() > self.max_deliver as usize {
            return bad(format!(
                "jetstream redelivery_backoff has {} entries, more than max_deliver {}",
                self.redelivery_backoff.len(),
                self.max_deliver
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return bad(format!(
                "jetstream replicas {} must be 1..=5",
                self.replicas
            ));
        }
        if self.max_ack_pending == 0 {
            return bad("jetstream max_ack_pending must be at least 1".into());
        }
        Ok(())
    }
}

/// Stream and consumer names: no whitespace, wildcards, separators.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
}

/// A connection to JetStream. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: JetStreamConfig,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("url", &redact_url(&self.inner.config.url))
            .field("topic", &self.inner.config.topic)
            .finish_non_exhaustive()
    }
}

impl JetStreamBus {
    /// Validate `config` and connect. Does not create anything (see
    /// [`EventBus::ensure_topology`]).
    pub async fn connect(config: JetStreamConfig) -> Result<JetStreamBus, BusError> {
        config.validate()?;
        let options = async_nats::ConnectOptions::new()
            .name(format!("realtime-mirror/{}", config.topic))
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.api_timeout));
        let addrs: Vec<&str> = config
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = options
            .connect(addrs.as_slice())
            .await
            .map_err(|e| BusError::Connect(format!("nats at {}: {e}", redact_url(&config.url))))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.api_timeout)
            .build(client.clone());
        Ok(JetStreamBus {
            inner: Arc::new(Inner { config, client, js }),
        })
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.inner.config
    }

    /// Delete the topic and dead-letter streams (tests, benchmarks). Missing streams are fine.
    pub async fn delete_topology(&self) -> Result<(), BusError> {
        let c = &self.inner.config;
        for name in [c.topic.clone(), c.dead_letter_stream()] {
            match self.inner.js.delete_stream(&name).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(BusError::op("delete stream", format!("`{name}`: {e}"))),
            }
        }
        Ok(())
    }

    fn topic_stream_config(&self) -> stream::Config {
        let c = &self.inner.config;
        stream::Config {
            name: c.topic.clone(),
            description: Some("realtime-mirror contract events".into()),
            subjects: vec![c.topic.clone()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            max_age: c.max_age,
            duplicate_window: c.duplicate_window,
            num_replicas: c.replicas,
            ..Default::default()
        }
    }

    fn dead_letter_stream_config(&self) -> stream::Config {
        let c = &self.inner.config;
        stream::Config {
            name: c.dead_letter_stream(),
            description: Some(format!(
                "dead-lettered messages of `{}`, one subject per subscription",
                c.topic
            )),
            subjects: vec![format!("{}.>", c.dead_letter_stream())],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            max_age: c.dead_letter_max_age,
            duplicate_window: c.duplicate_window,
            num_replicas: c.replicas,
            ..Default::default()
        }
    }

    fn consumer_config(&self, subscription: &str) -> consumer::pull::Config {
        let c = &self.inner.config;
        consumer::pull::Config {
            durable_name: Some(subscription.to_owned()),
            description: Some(format!("realtime-mirror subscription `{subscription}`")),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: c.ack_wait,
            max_deliver: i64::from(c.max_deliver),
            max_ack_pending: i64::from(c.max_ack_pending),
            backoff: c.redelivery_backoff.clone(),
            ..Default::default()
        }
    }

    /// Create `wanted` if missing; if it exists with different limits, try to
    /// update them and leave the stream alone if the server refuses.
    async fn ensure_stream(&self, wanted: stream::Config) -> Result<(), BusError> {
        let js = &self.inner.js;
        let name = wanted.name.clone();
        let existing = match js.get_stream(&name).await {
            Ok(mut s) => Some(
                s.info()
                    .await
                    .map_err(|e| stream_op("stream info", &name, e))?
                    .config
                    .clone(),
            ),
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.code() == 404) => {
                None
            }
            Err(e) => return Err(stream_op("get stream", &name, e)),
        };
        let existing = match existing {
            Some(cfg) => cfg,
            None => match js.create_stream(wanted.clone()).await {
                Ok(_) => return Ok(()),
                // Another process created it first (with defaults filled in
                // differently). Racing creates of one stream can also be told
                // "subjects overlap" (10065, nats-server 2.9): the overlapping
                // stream is then this one if it now exists under our name.
                Err(e) if is_already_exists(&e) || is_subjects_overlap(&e) => {
                    match js.get_stream(&name).await {
                        Ok(s) => s.cached_info().config.clone(),
                        Err(_) => return Err(stream_op("create stream", &name, e)),
                    }
                }
                Err(e) => return Err(stream_op("create stream", &name, e)),
            },
        };
        let same = existing.subjects == wanted.subjects
            && existing.max_age == wanted.max_age
            && existing.duplicate_window == wanted.duplicate_window
            && existing.retention == wanted.retention;
        if same {
            return Ok(());
        }
        let updated = stream::Config {
            subjects: wanted.subjects.clone(),
            max_age: wanted.max_age,
            duplicate_window: wanted.duplicate_window,
            ..existing
        };
        if let Err(e) = js.update_stream(&updated).await {
            tracing::warn!(stream = %name, error = %e, "stream exists with other settings and cannot be updated; leaving it as is");
        }
        Ok(())
    }

    async fn ensure_consumer(&self, subscription: &str) -> Result<(), BusError> {
        let c = &self.inner.config;
        let wanted = self.consumer_config(subscription);
        // CONSUMER.CREATE is create-or-update: identical config is a no-op, and
        // ack_wait / max_deliver / backoff changes are applied in place.
        match self
            .inner
            .js
            .create_consumer_on_stream(wanted, &c.topic)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                // Exists with settings the server will not change in place: keep it.
                let stream = self
                    .inner
                    .js
                    .get_stream_no_info(&c.topic)
                    .await
                    .map_err(|e| stream_op("get stream", &c.topic, e))?;
                match stream.consumer_info(subscription).await {
                    Ok(_) => {
                        tracing::warn!(subscription, error = %e, "consumer exists with other settings; leaving it as is");
                        Ok(())
                    }
                    Err(_) => Err(BusError::op(
                        "create consumer",
                        format!("`{subscription}` on `{}`: {e}", c.topic),
                    )),
                }
            }
        }
    }

    /// Open a watcher that dead-letters messages of `subscription` on which
    /// JetStream gave up after `max_deliver` deliveries. The advisory
    /// subscription is live when this returns; drive it with
    /// [`MaxDeliveriesWatcher::run`] (usually `tokio::spawn`ed next to the
    /// consumer loop).
    pub async fn max_deliveries_watcher(
        &self,
        subscription: &str,
    ) -> Result<MaxDeliveriesWatcher, BusError> {
        MaxDeliveriesWatcher::open(self.clone(), subscription).await
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }
}

impl EventBus for JetStreamBus {
    type Receiver = JetStreamReceiver;

    async fn subscription_backlog(
        &self,
        subscription: &str,
    ) -> Result<Option<crate::Backlog>, BusError> {
        let topic = &self.inner.config.topic;
        let stream = self
            .inner
            .js
            .get_stream_no_info(topic)
            .await
            .map_err(|e| stream_op("get stream", topic, e))?;
        let info = stream
            .consumer_info(subscription)
            .await
            .map_err(|e| BusError::op("backlog", format!("subscription `{subscription}`: {e}")))?;
        Ok(Some(crate::Backlog {
            pending: info.num_pending,
            in_flight: info.num_ack_pending as u64,
        }))
    }

    async fn ensure_topology(&self) -> Result<(), BusError> {
        self.ensure_stream(self.topic_stream_config()).await?;
        self.ensure_stream(self.dead_letter_stream_config()).await?;
        for subscription in &self.inner.config.subscriptions {
            self.ensure_consumer(subscription).await?;
        }
        Ok(())
    }

    async fn publish(&self, message: &OutboundMessage) -> Result<PublishOutcome, BusError> {
        let result = self.publish_untimed(message).await;
        crate::telemetry::sent(crate::telemetry::NATS, &self.inner.config.topic, &result);
        result
    }

    async fn subscribe(&self, subscription: &str) -> Result<JetStreamReceiver, BusError> {
        JetStreamReceiver::open(self.clone(), subscription).await
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

    /// The max-deliveries watcher ([`Self::max_deliveries_watcher`]): JetStream
    /// stops redelivering after `max_deliver` and only says so in an advisory;
    /// the watcher moves such messages to the dead-letter stream (reason
    /// `max_deliveries`) and hands each to `hook`.
    async fn watch_broker_dead_letters(
        &self,
        subscription: &str,
        hook: crate::DeadLetterHook,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let watcher = self
            .max_deliveries_watcher(subscription)
            .await?
            .on_dead_letter(hook);
        Ok(tokio::spawn(async move {
            if let Err(e) = watcher.run(std::future::pending()).await {
                tracing::error!(error = %e, "max-deliveries watcher stopped");
            }
        }))
    }
}

fn publish_error(
    message_id: &str,
    size: usize,
    e: async_nats::jetstream::context::PublishError,
) -> BusError {
    match e.kind() {
        jetstream::context::PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge {
            message_id: message_id.to_owned(),
            size,
        },
        jetstream::context::PublishErrorKind::TimedOut
        | jetstream::context::PublishErrorKind::BrokenPipe => BusError::with_kind(
            crate::BusErrorKind::Connect,
            "publish",
            format!("message `{message_id}`: {e}"),
        ),
        _ => BusError::op("publish", format!("message `{message_id}`: {e}")),
    }
}

fn stream_op(op: &'static str, stream: &str, e: impl std::fmt::Display) -> BusError {
    BusError::op(op, format!("stream `{stream}`: {e}"))
}

fn is_not_found(e: &impl std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("not found") || s.contains("10059")
}

fn is_already_exists(e: &impl std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("already in use") || s.contains("already exists") || s.contains("10058")
}

/// JetStream error 10065: the new stream's subjects overlap an existing
/// stream's (a conflicting stream, or a racing create of the same one).
fn is_subjects_overlap(e: &impl std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("subjects overlap") || s.contains("10065")
}

impl JetStreamBus {
    /// [`EventBus::publish`] without its telemetry.
    async fn publish_untimed(&self, message: &OutboundMessage) -> Result<PublishOutcome, BusError> {
        let headers = wire::outbound_headers(message)?;
        let body = bytes::Bytes::from(message.message.body.clone());
        let size = body.len() + wire::headers_len(&headers);
        let max_payload = self.inner.client.server_info().max_payload;
        if max_payload > 0 && size > max_payload {
            return Err(BusError::TooLarge {
                message_id: message.message_id.clone(),
                size,
            });
        }
        let ack = self
            .inner
            .js
            .publish_with_headers(self.inner.config.topic.clone(), headers, body)
            .await
            .map_err(|e| publish_error(&message.message_id, size, e))?
            .await
            .map_err(|e| publish_error(&message.message_id, size, e))?;
        Ok(if ack.duplicate {
            PublishOutcome::Duplicate
        } else {
            PublishOutcome::Published
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_racing_create_is_recognised_by_either_answer() {
        let exists = "jetstream error: stream name already in use with a different configuration (code 400, error code 10058)";
        let overlap = "jetstream error: subjects overlap with an existing stream (code 400, error code 10065)";
        assert!(is_already_exists(&exists));
        assert!(is_subjects_overlap(&overlap) && !is_already_exists(&overlap));
        assert!(!is_subjects_overlap(
            &"jetstream error: insufficient resources (code 503, error code 10023)"
        ));
    }

    #[test]
    fn defaults_are_the_plans() {
        let c = JetStreamConfig::default();
        assert_eq!(c.topic, "realtime-mirror");
        assert_eq!(c.dead_letter_stream(), "realtime-mirror-deadletter");
        assert_eq!(
            c.dead_letter_subject("sql-writer"),
            "realtime-mirror-deadletter.sql-writer"
        );
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.max_deliver, 5);
        assert_eq!(c.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.subscriptions, ["sql-writer", "monitoring"]);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(JetStreamConfig, &str)> = vec![
            (
                JetStreamConfig {
                    topic: "a.b".into(),
                    ..Default::default()
                },
                "topic",
            ),
            (
                JetStreamConfig {
                    topic: "".into(),
                    ..Default::default()
                },
                "topic",
            ),
            (
                JetStreamConfig {
                    subscriptions: vec!["x y".into()],
                    ..Default::default()
                },
                "subscription",
            ),
            (
                JetStreamConfig {
                    max_deliver: 0,
                    ..Default::default()
                },
                "max_deliver",
            ),
            (
                JetStreamConfig {
                    ack_wait: Duration::ZERO,
                    ..Default::default()
                },
                "ack_wait",
            ),
            (
                JetStreamConfig {
                    duplicate_window: Duration::from_secs(8 * 24 * 3600),
                    ..Default::default()
                },
                "duplicate_window",
            ),
            (
                JetStreamConfig {
                    redelivery_backoff: vec![Duration::from_secs(1); 6],
                    ..Default::default()
                },
                "redelivery_backoff",
            ),
            (
                JetStreamConfig {
                    replicas: 0,
                    ..Default::default()
                },
                "replicas",
            ),
            (
                JetStreamConfig {
                    url: " ".into(),
                    ..Default::default()
                },
                "url",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().expect_err(field);
            assert!(matches!(err, BusError::Config(_)), "{err}");
            assert!(
                err.to_string().contains(field),
                "`{err}` should name `{field}`"
            );
        }
    }

    #[test]
    fn debug_hides_credentials() {
        let c = JetStreamConfig {
            url: "nats://writer:hunter2@nats-1:4222,tls://s3cr3t@nats-2:4222,nats://plain:4222"
                .into(),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(
            shown.contains("nats://***@nats-1:4222,tls://***@nats-2:4222,nats://plain:4222"),
            "{shown}"
        );
    }
}
