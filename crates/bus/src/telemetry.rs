//! Typed events of the bus adapters: each emits its log line and its metric
//! together (the writer's `telemetry` pattern).
//!
//! OpenTelemetry messaging semantic conventions:
//! - `messaging.client.consumed.messages` (counter, `{message}`): messages a
//!   receive delivered to the application;
//! - `messaging.client.sent.messages` (counter, `{message}`): publishes
//!   attempted, with `error.type` on failure;
//!
//! both with `messaging.system`, `messaging.operation.name`,
//! `messaging.destination.name` and, for consumers,
//! `messaging.destination.subscription.name`.

use metrics::counter;

use crate::{BusError, PublishOutcome};

/// `messaging.system` values (`servicebus` is in the OpenTelemetry registry;
/// NATS is not, `nats` is the name its own instrumentations use).
pub const NATS: &str = "nats";
pub const SERVICE_BUS: &str = "servicebus";

/// A receive delivered `n` messages.
pub fn received(system: &'static str, topic: &str, subscription: &str, n: usize) {
    if n == 0 {
        return;
    }
    counter!(
        "messaging.client.consumed.messages",
        "messaging.system" => system,
        "messaging.operation.name" => "receive",
        "messaging.destination.name" => topic.to_owned(),
        "messaging.destination.subscription.name" => subscription.to_owned(),
    )
    .increment(n as u64);
    tracing::trace!(subscription, n, "received");
}

/// A publish finished.
pub fn sent(system: &'static str, topic: &str, result: &Result<PublishOutcome, BusError>) {
    let error_type = match result {
        Ok(_) => None,
        Err(BusError::Config(_)) => Some("config"),
        Err(BusError::Connect(_)) => Some("connect"),
        Err(BusError::TooLarge { .. }) => Some("too_large"),
        Err(_) => Some("operation"),
    };
    match error_type {
        None => counter!(
            "messaging.client.sent.messages",
            "messaging.system" => system,
            "messaging.operation.name" => "send",
            "messaging.destination.name" => topic.to_owned(),
        )
        .increment(1),
        Some(error_type) => counter!(
            "messaging.client.sent.messages",
            "messaging.system" => system,
            "messaging.operation.name" => "send",
            "messaging.destination.name" => topic.to_owned(),
            "error.type" => error_type,
        )
        .increment(1),
    }
    if let Ok(PublishOutcome::Duplicate) = result {
        tracing::debug!(topic, "publish dropped by the broker's duplicate detection");
    }
}
