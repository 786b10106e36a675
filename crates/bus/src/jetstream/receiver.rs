//! Pull-consumer receiver and the settlement of one delivery.
//!
//! `receive(max, wait)` is one pull request, no-wait with `expires = wait`:
//! the server answers as soon as it has delivered what is available (up to
//! `max`) or, when nothing is, waits up to `wait` for the first message. So a
//! call returns as soon as something arrives instead of waiting for a full
//! batch. If the caller drops the future while the request is open, a message
//! the server sends meanwhile is lost in flight and redelivered after
//! `ack_wait` (at-least-once holds).
//!
//! `complete` is a plain ack, written to the socket before the call returns
//! (`complete_all`: every ack, then one flush) but not confirmed: a lost ack
//! only means a redelivery, which the writer's ledger makes harmless, and
//! confirming cost nats-server about a fifth of its CPU per message at the
//! writer's rates (`mirrorctl bench`). Every other settlement (`retry`,
//! `dead_letter`, `keep_alive`) is rare and confirmed (a double ack): the
//! call returns once the server has stored it.

use std::collections::hash_map::{Entry, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use mirror_schema::WireMessage;

use super::{dead_letter, is_valid_name, wire, JetStreamBus};
use crate::{Backlog, BusError, BusErrorKind, DeadLetter, Delivery, Receiver};

/// A competing consumer on one subscription (a durable pull consumer).
pub struct JetStreamReceiver {
    bus: JetStreamBus,
    subscription: String,
    consumer: PullConsumer,
}

impl std::fmt::Debug for JetStreamReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamReceiver")
            .field("topic", &self.bus.config().topic)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

/// Outcome of reading one pull request.
enum Pulled {
    Messages(Vec<JetStreamDelivery>),
    /// The server refused the pull for now (409: max ack pending, max waiting).
    Busy(String),
}

impl JetStreamReceiver {
    pub(super) async fn open(
        bus: JetStreamBus,
        subscription: &str,
    ) -> Result<JetStreamReceiver, BusError> {
        if !is_valid_name(subscription) {
            return Err(BusError::Config(format!(
                "`{subscription}` is not a valid subscription name"
            )));
        }
        let topic = bus.config().topic.clone();
        let stream = bus
            .js()
            .get_stream_no_info(&topic)
            .await
            .map_err(|e| BusError::op("subscribe", format!("stream `{topic}`: {e}")))?;
        let consumer: PullConsumer = stream.get_consumer(subscription).await.map_err(|e| {
            BusError::op(
                "subscribe",
                format!(
                    "subscription `{subscription}` on `{topic}`: {e} (has ensure_topology run?)"
                ),
            )
        })?;
        Ok(JetStreamReceiver {
            bus,
            subscription: subscription.to_owned(),
            consumer,
        })
    }

    /// One pull request: no-wait (the server answers at once when nothing is
    /// pending) with `expires` = `wait` (otherwise it holds the request open
    /// until it can deliver, and returns as soon as it has delivered any).
    async fn pull(&self, max: usize, wait: Duration) -> Result<Pulled, BusError> {
        let op = "receive";
        let mut fetch = self.consumer.fetch().max_messages(max);
        if wait >= Duration::from_millis(10) {
            fetch = fetch.expires(wait);
        }
        let batch = fetch
            .messages()
            .await
            .map_err(|e| BusError::op(op, format!("subscription `{}`: {e}", self.subscription)))?;
        // The server ends the request itself; this only bounds a lost terminator.
        let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(2);
        let mut batch = std::pin::pin!(batch);
        let mut out: Vec<JetStreamDelivery> = Vec::new();
        // Where each stream sequence already in `out` is.
        let mut at: HashMap<u64, usize> = HashMap::new();
        loop {
            match tokio::time::timeout_at(deadline, batch.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Ok(message))) => {
                    let d = JetStreamDelivery::new(self.bus.clone(), &self.subscription, message);
                    // A lock that expired while the request was open brings the
                    // same message again: keep only its latest delivery.
                    match d.stream_sequence {
                        Some(seq) => match at.entry(seq) {
                            Entry::Occupied(i) => out[*i.get()] = d,
                            Entry::Vacant(v) => {
                                v.insert(out.len());
                                out.push(d);
                            }
                        },
                        None => out.push(d),
                    }
                }
                Ok(Some(Err(e))) => {
                    let text = e.to_string();
                    if !out.is_empty() {
                        tracing::debug!(subscription = %self.subscription, error = %text, "pull ended early");
                        break;
                    }
                    return match pull_error_kind(&text) {
                        BusErrorKind::Busy => Ok(Pulled::Busy(text)),
                        kind => Err(BusError::with_kind(
                            kind,
                            op,
                            format!("subscription `{}`: {text}", self.subscription),
                        )),
                    };
                }
            }
        }
        Ok(Pulled::Messages(out))
    }
}

impl Receiver for JetStreamReceiver {
    type Delivery = JetStreamDelivery;

    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<JetStreamDelivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let asked = tokio::time::Instant::now();
            match self.pull(max, remaining).await? {
                Pulled::Messages(m) if !m.is_empty() => {
                    crate::telemetry::received(
                        crate::telemetry::NATS,
                        &self.bus.config().topic,
                        &self.subscription,
                        m.len(),
                    );
                    return Ok(m);
                }
                Pulled::Messages(_) => {}
                // Nothing can be delivered until something is settled.
                Pulled::Busy(why) => {
                    tracing::debug!(subscription = %self.subscription, why, "pull refused")
                }
            }
            // The server may end a request early (408 "Requests Pending" while
            // other pulls wait, 409 at max ack pending): keep waiting for the
            // first message until `wait` is up, without spinning.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_millis(10) {
                return Ok(Vec::new());
            }
            if asked.elapsed() < Duration::from_millis(50) {
                tokio::time::sleep(left.min(Duration::from_millis(50))).await;
            }
        }
    }

    /// `pending` = not yet delivered; `in_flight` = delivered and unsettled,
    /// which on JetStream also counts messages waiting out a `retry` delay.
    async fn backlog(&mut self) -> Result<Option<Backlog>, BusError> {
        let info = self.consumer.get_info().await.map_err(|e| {
            BusError::op(
                "backlog",
                format!("subscription `{}`: {e}", self.subscription),
            )
        })?;
        Ok(Some(Backlog {
            pending: info.num_pending,
            in_flight: info.num_ack_pending as u64,
        }))
    }
}

/// One delivered message, locked to this consumer for `ack_wait`.
pub struct JetStreamDelivery {
    bus: JetStreamBus,
    subscription: String,
    message: jetstream::Message,
    wire: WireMessage,
    message_id: Option<String>,
    delivery_count: u32,
    stream_sequence: Option<u64>,
    enqueued_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl std::fmt::Debug for JetStreamDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamDelivery")
            .field("subscription", &self.subscription)
            .field("message_id", &self.message_id)
            .field("delivery_count", &self.delivery_count)
            .field("stream_sequence", &self.stream_sequence)
            .finish_non_exhaustive()
    }
}

impl JetStreamDelivery {
    fn new(
        bus: JetStreamBus,
        subscription: &str,
        mut message: jetstream::Message,
    ) -> JetStreamDelivery {
        let (delivery_count, stream_sequence, enqueued_at) = match message.info() {
            Ok(info) => (
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                Some(info.stream_sequence),
                // the time the stream stored the message
                i64::try_from(info.published.unix_timestamp_nanos())
                    .ok()
                    .map(chrono::DateTime::from_timestamp_nanos),
            ),
            Err(_) => (1, None, None),
        };
        let (wire, message_id) = wire::inbound(
            message.message.headers.as_ref(),
            &message.message.payload,
            false,
        );
        // The body lives on in `wire` (a copy): keep one, not two, per
        // delivery in flight (a writer holds thousands).
        message.message.payload = bytes::Bytes::new();
        JetStreamDelivery {
            bus,
            subscription: subscription.to_owned(),
            message,
            wire,
            message_id,
            delivery_count,
            stream_sequence,
            enqueued_at,
        }
    }

    /// The message's sequence in the topic stream.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.stream_sequence
    }

    /// A plain ack (`+ACK`, no reply asked for), handed to the client's
    /// connection but not yet flushed.
    async fn ack_unflushed(&self) -> Result<(), BusError> {
        let sent = match &self.message.message.reply {
            Some(reply) => self
                .bus
                .client()
                .publish(reply.clone(), AckKind::Ack.into())
                .await
                .map_err(|e| e.to_string()),
            None => Err("no reply subject: not a JetStream message".to_owned()),
        };
        sent.map_err(|e| self.settle_error("complete", e))
    }

    fn settle_error(&self, op: &'static str, e: String) -> BusError {
        BusError::op(
            op,
            format!(
                "message `{}` (stream seq {}) on `{}`: {e}",
                self.message_id.as_deref().unwrap_or("?"),
                self.stream_sequence
                    .map_or_else(|| "?".to_owned(), |s| s.to_string()),
                self.subscription
            ),
        )
    }

    /// Settle and wait for the server's confirmation. Like async-nats'
    /// `double_ack_with`, but through the client's shared reply inbox: that
    /// method subscribes to a fresh inbox for every message (SUB, PUB, UNSUB:
    /// a subscription made and dropped on the server per ack), which was a
    /// large part of nats-server's CPU at 25,000 acks/s.
    async fn settle(&self, op: &'static str, kind: AckKind) -> Result<(), BusError> {
        let confirmed = match &self.message.message.reply {
            Some(reply) => self
                .bus
                .client()
                .request(reply.clone(), kind.into())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Err("no reply subject: not a JetStream message".to_owned()),
        };
        confirmed.map_err(|e| self.settle_error(op, e))
    }
}

impl Delivery for JetStreamDelivery {
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
        self.settle("keep alive", AckKind::Progress).await
    }

    async fn complete(self) -> Result<(), BusError> {
        Self::complete_all(vec![self])
            .await
            .pop()
            .expect("one result per delivery")
    }

    /// Every ack written in turn, then one flush for all of them: a flush
    /// per ack was a channel round trip to the connection task for each
    /// message of a batch.
    async fn complete_all(deliveries: Vec<Self>) -> Vec<Result<(), BusError>> {
        let Some(first) = deliveries.first() else {
            return Vec::new();
        };
        let client = first.bus.client().clone();
        let mut results = Vec::with_capacity(deliveries.len());
        for d in &deliveries {
            results.push(d.ack_unflushed().await);
        }
        if let Err(e) = client.flush().await {
            let e = e.to_string();
            for (d, r) in deliveries.iter().zip(results.iter_mut()) {
                if r.is_ok() {
                    *r = Err(d.settle_error("complete", e.clone()));
                }
            }
        }
        results
    }

    async fn retry(self, delay: Duration) -> Result<(), BusError> {
        let kind = if delay.is_zero() {
            AckKind::Nak(None)
        } else {
            AckKind::Nak(Some(delay))
        };
        self.settle("retry", kind).await
    }

    async fn dead_letter(self, why: &DeadLetter) -> Result<(), BusError> {
        dead_letter::publish(
            &self.bus,
            &self.subscription,
            dead_letter::Original {
                headers: self.message.message.headers.as_ref(),
                payload: bytes::Bytes::copy_from_slice(&self.wire.body),
                message_id: self.message_id.as_deref(),
                stream_sequence: self.stream_sequence,
            },
            why,
        )
        .await?;
        // Stored in the dead-letter stream: stop redelivery of the original.
        self.settle("dead letter", AckKind::Term).await
    }
}

/// The kind of a failed pull. async-nats's `fetch()` batch reports a
/// status message only as an opaque `io::Error` text (`…: 409, Some("Exceeded
/// MaxAckPending")`), so its status code is read from the text here, once.
fn pull_error_kind(text: &str) -> BusErrorKind {
    if text.contains("409") || text.contains("Exceeded") {
        BusErrorKind::Busy
    } else {
        BusErrorKind::Other
    }
}

#[cfg(test)]
mod pull_error_tests {
    use super::*;

    #[test]
    fn a_refused_pull_is_busy() {
        let text =
            "eror while processing messages from the stream: 409, Some(\"Exceeded MaxAckPending\")";
        assert_eq!(pull_error_kind(text), BusErrorKind::Busy);
        assert_eq!(pull_error_kind("connection closed"), BusErrorKind::Other);
    }
}
