//! The dead-letter stream: publishing to it, listing and removing entries,
//! and the watcher that dead-letters messages JetStream gave up on.
//!
//! A dead-lettered message keeps the original body and headers and gains
//! `Rm-Dead-Letter-Reason`, `Rm-Dead-Letter-Description` (one line, at most
//! 2 KiB), `Rm-Attempts`, `Rm-Original-Id`, `Rm-Original-Stream-Seq`,
//! `Rm-Subscription` and `Rm-Dead-Lettered-At`. Its `Nats-Msg-Id` is
//! `dlq:{subscription}:{original id}` (or the stream sequence when the
//! original had no id), so dead-lettering the same message twice within the
//! duplicate window stores it once. The handle of an entry is its sequence in
//! the dead-letter stream.

use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use super::{is_valid_name, wire, JetStreamBus};
use crate::{BusError, DeadLetter, DeadLetterHook, DeadLettered};

/// The message being dead-lettered, as it was stored in the topic stream.
pub(super) struct Original<'a> {
    pub headers: Option<&'a HeaderMap>,
    pub payload: Bytes,
    pub message_id: Option<&'a str>,
    pub stream_sequence: Option<u64>,
}

/// Store `original` in `subscription`'s dead-letter queue with `why`.
pub(super) async fn publish(
    bus: &JetStreamBus,
    subscription: &str,
    original: Original<'_>,
    why: &DeadLetter,
) -> Result<(), BusError> {
    const OP: &str = "dead letter";
    let mut headers = HeaderMap::new();
    if let Some(h) = original.headers {
        for (name, values) in h.iter() {
            let n: &str = name.as_ref();
            // Nats-* control headers (expected stream/sequence, ...) would fail or
            // misroute the publish; the id is replaced below.
            if n.to_ascii_lowercase().starts_with("nats-") {
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
    }
    let dedupe_key = match (original.message_id, original.stream_sequence) {
        (Some(id), _) if !id.is_empty() => id.to_owned(),
        (_, Some(seq)) => format!("seq-{seq}"),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    wire::set(
        &mut headers,
        OP,
        wire::MSG_ID,
        &format!("dlq:{subscription}:{dedupe_key}"),
    )?;
    wire::set(
        &mut headers,
        OP,
        wire::DL_REASON,
        &wire::single_line(&why.reason, wire::MAX_REASON),
    )?;
    wire::set(
        &mut headers,
        OP,
        wire::DL_DESCRIPTION,
        &wire::single_line(&why.description, wire::MAX_DESCRIPTION),
    )?;
    wire::set(
        &mut headers,
        OP,
        wire::DL_ATTEMPTS,
        &why.attempts.to_string(),
    )?;
    if let Some(id) = original.message_id {
        wire::set(
            &mut headers,
            OP,
            wire::DL_ORIGINAL_ID,
            &wire::single_line(id, 1024),
        )?;
    }
    if let Some(seq) = original.stream_sequence {
        wire::set(&mut headers, OP, wire::DL_STREAM_SEQ, &seq.to_string())?;
    }
    wire::set(&mut headers, OP, wire::DL_SUBSCRIPTION, subscription)?;
    wire::set(
        &mut headers,
        OP,
        wire::DL_AT,
        &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )?;

    let mut payload = original.payload;
    let max_payload = bus.client().server_info().max_payload;
    if max_payload > 0 && payload.len() + wire::headers_len(&headers) + 64 > max_payload {
        // The added headers pushed a message at the size limit over it. Keep the
        // entry (never drop a message) and point at the original, which stays in
        // the topic stream until max_age.
        tracing::warn!(subscription, seq = ?original.stream_sequence, "dead-lettered message too large; storing it without its body");
        payload = Bytes::new();
        wire::set(
            &mut headers,
            OP,
            "Rm-Body-Omitted",
            "the body was too large to dead-letter; read it from the topic stream at Rm-Original-Stream-Seq",
        )?;
    }

    let subject = bus.config().dead_letter_subject(subscription);
    let describe = |e: &dyn std::fmt::Display| {
        BusError::op(
            OP,
            format!(
                "message `{dedupe_key}` of `{subscription}` to `{}`: {e}",
                bus.config().dead_letter_stream()
            ),
        )
    };
    bus.js()
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| describe(&e))?
        .await
        .map_err(|e| describe(&e))?;
    // A duplicate ack means an earlier attempt already stored it: fine either way.
    Ok(())
}

/// Up to `limit` entries of `subscription`'s dead-letter queue, oldest first.
pub(super) async fn list(
    bus: &JetStreamBus,
    subscription: &str,
    limit: usize,
) -> Result<Vec<DeadLettered>, BusError> {
    const OP: &str = "list dead letters";
    if !is_valid_name(subscription) {
        return Err(BusError::Config(format!(
            "`{subscription}` is not a valid subscription name"
        )));
    }
    let name = bus.config().dead_letter_stream();
    let stream = bus
        .js()
        .get_stream_no_info(&name)
        .await
        .map_err(|e| BusError::op(OP, format!("stream `{name}`: {e}")))?;
    let subject = bus.config().dead_letter_subject(subscription);
    let mut out = Vec::new();
    let mut next = 1u64;
    while out.len() < limit {
        match stream
            .get_first_raw_message_by_subject(&subject, next)
            .await
        {
            Ok(m) => {
                next = m.sequence + 1;
                out.push(entry(m));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) =>
            {
                break
            }
            Err(e) => {
                return Err(BusError::op(
                    OP,
                    format!("stream `{name}` subject `{subject}`: {e}"),
                ))
            }
        }
    }
    Ok(out)
}

fn entry(m: async_nats::jetstream::message::StreamMessage) -> DeadLettered {
    let h = Some(&m.headers);
    let (message, _dlq_id) = wire::inbound(h, &m.payload, true);
    let dead_lettered_at = wire::get(h, wire::DL_AT)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| {
            chrono::DateTime::from_timestamp_nanos(
                i64::try_from(m.time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            )
            .into()
        });
    let reason = wire::get(h, wire::DL_REASON)
        .unwrap_or("unknown")
        .to_owned();
    DeadLettered {
        handle: m.sequence.to_string(),
        // JetStream has no sessions: a replay needs no partition key.
        partition_key: None,
        by_broker: reason == MAX_DELIVERIES_REASON,
        original_message_id: wire::get(h, wire::DL_ORIGINAL_ID).map(str::to_owned),
        reason,
        description: wire::get(h, wire::DL_DESCRIPTION)
            .unwrap_or_default()
            .to_owned(),
        attempts: wire::get(h, wire::DL_ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        dead_lettered_at,
        message,
    }
}

/// Delete entry `handle` of `subscription`'s dead-letter queue. Removing an
/// entry that is already gone succeeds; removing another subscription's does not.
pub(super) async fn remove(
    bus: &JetStreamBus,
    subscription: &str,
    handle: &str,
) -> Result<(), BusError> {
    const OP: &str = "remove dead letter";
    let seq: u64 = handle.parse().map_err(|_| {
        BusError::op(
            OP,
            format!("handle `{handle}` is not a dead-letter stream sequence"),
        )
    })?;
    let name = bus.config().dead_letter_stream();
    let stream = bus
        .js()
        .get_stream_no_info(&name)
        .await
        .map_err(|e| BusError::op(OP, format!("stream `{name}`: {e}")))?;
    match stream.get_raw_message(seq).await {
        Ok(m) if m.subject.as_str() != bus.config().dead_letter_subject(subscription) => {
            return Err(BusError::op(
                OP,
                format!(
                    "entry {seq} of `{name}` belongs to `{}`, not `{subscription}`",
                    m.subject
                ),
            ));
        }
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
            ) =>
        {
            return Ok(())
        }
        Err(e) => return Err(BusError::op(OP, format!("entry {seq} of `{name}`: {e}"))),
    }
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) if super::is_not_found(&e) || e.to_string().contains("10057") => Ok(()),
        Err(e) => Err(BusError::op(OP, format!("entry {seq} of `{name}`: {e}"))),
    }
}

/// Dead-letters messages of one subscription that JetStream stopped
/// redelivering after `max_deliver` attempts, with reason `max_deliveries`.
///
/// It listens to `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{topic}.{subscription}`,
/// reads the message by stream sequence and stores it in the dead-letter queue
/// (deduplicated against a dead-letter by the consumer itself). Advisories
/// are core NATS messages: one sent while no watcher runs is not seen.
///
/// ```no_run
/// # async fn example(bus: mirror_bus::jetstream::JetStreamBus, shutdown: tokio::sync::oneshot::Receiver<()>) -> Result<(), mirror_bus::BusError> {
/// let watcher = bus.max_deliveries_watcher("sql-writer").await?;
/// tokio::spawn(watcher.run(async move { let _ = shutdown.await; }));
/// # Ok(()) }
/// ```
pub struct MaxDeliveriesWatcher {
    bus: JetStreamBus,
    subscription: String,
    subscriber: async_nats::Subscriber,
    on_dead_letter: Option<DeadLetterHook>,
}

impl std::fmt::Debug for MaxDeliveriesWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaxDeliveriesWatcher")
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

/// Reason recorded for messages JetStream gave up on.
pub const MAX_DELIVERIES_REASON: &str = "max_deliveries";

impl MaxDeliveriesWatcher {
    pub(super) async fn open(
        bus: JetStreamBus,
        subscription: &str,
    ) -> Result<MaxDeliveriesWatcher, BusError> {
        const OP: &str = "watch max deliveries";
        if !is_valid_name(subscription) {
            return Err(BusError::Config(format!(
                "`{subscription}` is not a valid subscription name"
            )));
        }
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{subscription}",
            bus.config().topic
        );
        let subscriber = bus
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(|e| BusError::op(OP, format!("`{subject}`: {e}")))?;
        // Make sure the server has registered the subscription before returning.
        bus.client()
            .flush()
            .await
            .map_err(|e| BusError::op(OP, format!("`{subject}`: {e}")))?;
        Ok(MaxDeliveriesWatcher {
            bus,
            subscription: subscription.to_owned(),
            subscriber,
            on_dead_letter: None,
        })
    }

    /// Also hand every message this watcher dead-letters to `hook`.
    pub fn on_dead_letter(mut self, hook: DeadLetterHook) -> MaxDeliveriesWatcher {
        self.on_dead_letter = Some(hook);
        self
    }

    /// Handle advisories until `shutdown` resolves. Failures on one message are
    /// logged (after a few attempts) and do not stop the watcher.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), BusError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                advisory = self.subscriber.next() => match advisory {
                    Some(m) => self.handle(&m.payload).await,
                    None => return Err(BusError::op("watch max deliveries", format!(
                        "advisory subscription of `{}` closed", self.subscription))),
                },
            }
        }
    }

    async fn handle(&self, payload: &[u8]) {
        let advisory: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(subscription = %self.subscription, error = %e, "unreadable max-deliveries advisory");
                return;
            }
        };
        let Some(seq) = advisory.get("stream_seq").and_then(|v| v.as_u64()) else {
            tracing::warn!(subscription = %self.subscription, %advisory, "max-deliveries advisory without stream_seq");
            return;
        };
        let deliveries = advisory
            .get("deliveries")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        // 4 tries, 200 ms then ×4 (0.2, 0.8, 3.2 s): a JetStream API hiccup.
        let retries = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_factor(4.0)
            .with_max_times(3);
        let subscription = &self.subscription;
        let outcome = {
            use backon::Retryable;
            (|| self.dead_letter(seq, deliveries))
                .retry(retries)
                .sleep(tokio::time::sleep)
                .notify(|e, _| {
                    tracing::debug!(%subscription, seq, error = %e, "dead-lettering after max deliveries failed; retrying");
                })
                .await
        };
        match outcome {
            Ok(()) => {
                tracing::warn!(%subscription, seq, deliveries, "message dead-lettered after max deliveries");
            }
            Err(e) => {
                tracing::error!(%subscription, seq, error = %e,
                    "could not dead-letter a message JetStream stopped delivering; it stays in the topic stream until max_age");
            }
        }
    }

    async fn dead_letter(&self, seq: u64, deliveries: u64) -> Result<(), BusError> {
        let topic = &self.bus.config().topic;
        let stream = self
            .bus
            .js()
            .get_stream_no_info(topic)
            .await
            .map_err(|e| BusError::op("dead letter", format!("stream `{topic}`: {e}")))?;
        let m = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| BusError::op("dead letter", format!("message {seq} of `{topic}`: {e}")))?;
        let message_id = wire::get(Some(&m.headers), wire::MSG_ID).map(str::to_owned);
        let why = DeadLetter {
            reason: MAX_DELIVERIES_REASON.to_owned(),
            description: format!(
                "JetStream stopped redelivering after {deliveries} deliveries (max_deliver {}) without the message being settled",
                self.bus.config().max_deliver
            ),
            attempts: u32::try_from(deliveries).unwrap_or(u32::MAX),
        };
        publish(
            &self.bus,
            &self.subscription,
            Original {
                headers: Some(&m.headers),
                payload: m.payload.clone(),
                message_id: message_id.as_deref(),
                stream_sequence: Some(seq),
            },
            &why,
        )
        .await?;
        if let Some(hook) = &self.on_dead_letter {
            let (message, _) = wire::inbound(Some(&m.headers), &m.payload, false);
            hook(message, why);
        }
        Ok(())
    }
}
