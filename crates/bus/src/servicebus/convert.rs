//! Pure translations between Service Bus / AMQP messages and the port's types.
//!
//! No IO here, so everything is unit-tested without a broker: application
//! properties ↔ [`WireValue`] (native AMQP types both ways), bodies, the
//! outbound message (MessageId, SessionId, content type), dead-letter fields,
//! lock-renewal timing and how attach errors are classified.

use std::time::Duration;

use azservicebus::receiver::DeadLetterOptions;
use azservicebus::ServiceBusMessage;
use chrono::{DateTime, Utc};
use fe2o3_amqp_types::messaging::{ApplicationProperties, Body};
use fe2o3_amqp_types::primitives::{
    Binary, OrderedMap, SimpleValue, Timestamp, Uuid as AmqpUuid, Value,
};
use mirror_schema::{WireMessage, WireValue, MAX_EVENT_BYTES};

use crate::{BusError, DeadLetter, DeadLettered, OutboundMessage};

/// Application property the adapter adds when it dead-letters: how many times
/// delivery was attempted (the port's [`DeadLetter::attempts`]).
pub const DEAD_LETTER_ATTEMPTS: &str = "DeadLetterAttempts";
/// Application property the adapter adds when it dead-letters: when (AMQP timestamp).
pub const DEAD_LETTERED_AT: &str = "DeadLetteredAt";
/// Set by the broker on dead-lettered messages.
pub const DEAD_LETTER_REASON: &str = "DeadLetterReason";
pub const DEAD_LETTER_ERROR_DESCRIPTION: &str = "DeadLetterErrorDescription";

/// Longest `DeadLetterReason` / `DeadLetterErrorDescription` Service Bus keeps.
pub const MAX_DEAD_LETTER_TEXT: usize = 4096;

/// Longest `MessageId` / `SessionId` Service Bus accepts.
pub const MAX_ID_LEN: usize = 128;

/// A port value as an AMQP application-property value.
pub fn to_amqp_value(value: &WireValue) -> SimpleValue {
    match value {
        WireValue::String(s) => SimpleValue::String(s.clone()),
        WireValue::Bool(b) => SimpleValue::Bool(*b),
        WireValue::Int(i) => SimpleValue::Long(*i),
        WireValue::Timestamp(t) => {
            SimpleValue::Timestamp(Timestamp::from_milliseconds(t.timestamp_millis()))
        }
        WireValue::Uuid(u) => SimpleValue::Uuid(AmqpUuid::from(*u.as_bytes())),
        WireValue::Binary(b) => SimpleValue::Binary(Binary::from(b.clone())),
    }
}

/// An AMQP application-property value as a port value; `None` for AMQP null
/// (the port has no null: the property is left out).
///
/// Integers of every width become [`WireValue::Int`] (a `ulong` over `i64::MAX`
/// becomes its decimal string); floats, decimals and chars their text; symbols
/// strings; timestamps out of chrono's range their millisecond count as text.
pub fn from_amqp_value(value: &SimpleValue) -> Option<WireValue> {
    Some(match value {
        SimpleValue::Null => return None,
        SimpleValue::Bool(b) => WireValue::Bool(*b),
        SimpleValue::Ubyte(v) => WireValue::Int(i64::from(*v)),
        SimpleValue::Ushort(v) => WireValue::Int(i64::from(*v)),
        SimpleValue::Uint(v) => WireValue::Int(i64::from(*v)),
        SimpleValue::Ulong(v) => match i64::try_from(*v) {
            Ok(i) => WireValue::Int(i),
            Err(_) => WireValue::String(v.to_string()),
        },
        SimpleValue::Byte(v) => WireValue::Int(i64::from(*v)),
        SimpleValue::Short(v) => WireValue::Int(i64::from(*v)),
        SimpleValue::Int(v) => WireValue::Int(i64::from(*v)),
        SimpleValue::Long(v) => WireValue::Int(*v),
        SimpleValue::Float(v) => WireValue::String(v.to_string()),
        SimpleValue::Double(v) => WireValue::String(v.to_string()),
        SimpleValue::Decimal32(v) => WireValue::String(format!("{v:?}")),
        SimpleValue::Decimal64(v) => WireValue::String(format!("{v:?}")),
        SimpleValue::Decimal128(v) => WireValue::String(format!("{v:?}")),
        SimpleValue::Char(c) => WireValue::String(c.to_string()),
        SimpleValue::Timestamp(t) => match DateTime::<Utc>::from_timestamp_millis(t.milliseconds())
        {
            Some(dt) => WireValue::Timestamp(dt),
            None => WireValue::String(t.milliseconds().to_string()),
        },
        SimpleValue::Uuid(u) => WireValue::Uuid(uuid::Uuid::from_bytes(*u.as_inner())),
        SimpleValue::Binary(b) => WireValue::Binary(b.to_vec()),
        SimpleValue::String(s) => WireValue::String(s.clone()),
        SimpleValue::Symbol(s) => WireValue::String(s.0.clone()),
        // .NET producers send Uri, DateTimeOffset and TimeSpan as described
        // types (`com.microsoft:uri` over a string, the others over ticks).
        SimpleValue::Described(d) => match &d.value {
            Value::String(s) => WireValue::String(s.clone()),
            Value::Long(ticks) => WireValue::Int(*ticks),
            other => WireValue::String(format!("{other:?}")),
        },
    })
}

/// Port properties as AMQP application properties (order kept).
pub fn to_application_properties(
    properties: &[(String, WireValue)],
) -> Option<ApplicationProperties> {
    if properties.is_empty() {
        return None;
    }
    Some(ApplicationProperties(
        properties
            .iter()
            .map(|(k, v)| (k.clone(), to_amqp_value(v)))
            .collect::<OrderedMap<_, _>>(),
    ))
}

/// AMQP application properties as port properties (order kept, nulls left out).
pub fn from_application_properties(
    properties: Option<&ApplicationProperties>,
) -> Vec<(String, WireValue)> {
    properties
        .map(|p| {
            p.0.iter()
                .filter_map(|(k, v)| from_amqp_value(v).map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The bytes of a received body. Service Bus messages from this system carry
/// one `data` section; other producers may send several (concatenated, as the
/// .NET SDK does) or an `amqp-value` string or binary. Anything else is given
/// as an empty body, which the decoder rejects (`missing data`) so the message
/// is dead-lettered with a reason rather than lost.
pub fn body_bytes(body: &Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(sections) => sections.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.clone().into_bytes(),
            Value::Binary(b) => b.to_vec(),
            _ => Vec::new(),
        },
        Body::Sequence(_) | Body::Empty => Vec::new(),
    }
}

/// A received message as the port's [`WireMessage`].
pub fn to_wire(
    content_type: Option<&str>,
    properties: Option<&ApplicationProperties>,
    body: &Body<Value>,
) -> WireMessage {
    WireMessage {
        content_type: content_type.map(str::to_owned),
        properties: from_application_properties(properties),
        body: body_bytes(body),
    }
}

/// The Service Bus message for `outbound`: body and content type as given,
/// application properties with native types, `MessageId` for duplicate
/// detection and, with sessions on, `SessionId` = the partition key.
pub fn to_service_bus_message(
    outbound: &OutboundMessage,
    sessions: bool,
) -> Result<ServiceBusMessage, BusError> {
    let size = outbound.message.size();
    if size > MAX_EVENT_BYTES {
        return Err(BusError::TooLarge {
            message_id: outbound.message_id.clone(),
            size,
        });
    }
    if outbound.message_id.is_empty() || outbound.message_id.len() > MAX_ID_LEN {
        return Err(BusError::op(
            "publish",
            format!(
                "message id `{}` must be 1 to {MAX_ID_LEN} characters",
                outbound.message_id
            ),
        ));
    }
    let mut m = ServiceBusMessage::new(outbound.message.body.clone());
    m.set_message_id(outbound.message_id.clone()).map_err(|e| {
        BusError::op(
            "publish",
            format!("message id `{}`: {e}", outbound.message_id),
        )
    })?;
    if sessions {
        let key = outbound
            .partition_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                BusError::op(
                    "publish",
                    format!(
                        "message `{}` has no partition key, but the topic requires sessions",
                        outbound.message_id
                    ),
                )
            })?;
        m.set_session_id(key.to_owned())
            .map_err(|e| BusError::op("publish", format!("session id `{key}`: {e}")))?;
    }
    m.set_content_type(outbound.message.content_type.clone());
    *m.application_properties_mut() = to_application_properties(&outbound.message.properties);
    Ok(m)
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// The dead-letter disposition for `why`: reason and description as Service Bus
/// keeps them, plus the attempt count and time as application properties.
pub fn dead_letter_options(why: &DeadLetter, now: DateTime<Utc>) -> DeadLetterOptions {
    let mut properties = OrderedMap::new();
    properties.insert(
        DEAD_LETTER_ATTEMPTS.to_owned(),
        Value::Long(i64::from(why.attempts)),
    );
    properties.insert(
        DEAD_LETTERED_AT.to_owned(),
        Value::Timestamp(Timestamp::from_milliseconds(now.timestamp_millis())),
    );
    DeadLetterOptions {
        dead_letter_reason: Some(truncate(&why.reason, MAX_DEAD_LETTER_TEXT)),
        dead_letter_error_description: Some(truncate(&why.description, MAX_DEAD_LETTER_TEXT)),
        properties_to_modify: Some(properties),
    }
}

/// A message peeked from a dead-letter queue, as the port's [`DeadLettered`].
///
/// The dead-letter bookkeeping properties are taken out of `message` (so a
/// replay republishes the original), and read into the fields: reason and
/// description as the broker set them, attempts from our `DeadLetterAttempts`
/// (else the broker's delivery count), the time from our `DeadLetteredAt`
/// (`None` when the broker dead-lettered the message itself, e.g.
/// `MaxDeliveryCountExceeded`, or `TTLExpiredException`).
pub fn to_dead_lettered(
    sequence_number: i64,
    message_id: Option<String>,
    mut message: WireMessage,
    delivery_count: Option<u32>,
    session_id: Option<String>,
) -> DeadLettered {
    let mut take = |name: &str| {
        let pos = message.properties.iter().position(|(k, _)| k == name)?;
        Some(message.properties.remove(pos).1)
    };
    let text = |v: Option<WireValue>| match v {
        Some(WireValue::String(s)) => s,
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let reason = text(take(DEAD_LETTER_REASON));
    let description = text(take(DEAD_LETTER_ERROR_DESCRIPTION));
    let marked = take(DEAD_LETTER_ATTEMPTS);
    // Only this adapter sets `DeadLetterAttempts`: without it, the broker
    // dead-lettered the message on its own.
    let by_broker = marked.is_none();
    let attempts = match marked {
        Some(WireValue::Int(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(WireValue::String(s)) => s.parse().unwrap_or(0),
        _ => delivery_count.unwrap_or(0),
    };
    let dead_lettered_at = match take(DEAD_LETTERED_AT) {
        Some(WireValue::Timestamp(t)) => Some(t),
        Some(WireValue::String(s)) => DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        _ => None,
    };
    DeadLettered {
        handle: sequence_number.to_string(),
        original_message_id: message_id,
        message,
        reason,
        description,
        attempts,
        dead_lettered_at,
        partition_key: session_id.filter(|s| !s.is_empty()),
        by_broker,
    }
}

/// The dead-letter handle (a sequence number) back as a number.
pub fn parse_handle(handle: &str) -> Result<i64, BusError> {
    handle
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            BusError::Config(format!(
                "dead-letter handle `{handle}` is not a Service Bus sequence number"
            ))
        })
}

/// How long to wait before renewing a lock that expires in `remaining`:
/// half of it, so a renewal that is slow or retried still lands in time, but
/// at least a second (a lock already expired or about to is renewed at once
/// by the caller, see [`renew_now`]).
pub fn renewal_delay(remaining: Duration) -> Duration {
    (remaining / 2).max(Duration::from_secs(1))
}

/// Whether a lock expiring in `remaining` must be renewed without waiting.
pub fn renew_now(remaining: Duration) -> bool {
    remaining < Duration::from_secs(2)
}

/// Time until `locked_until_nanos` (Unix nanoseconds), zero if past.
pub fn until(locked_until_nanos: i128, now: DateTime<Utc>) -> Duration {
    let now = i128::from(now.timestamp_nanos_opt().unwrap_or(i64::MAX));
    let left = (locked_until_nanos - now).max(0);
    Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
}

/// Whether abandoning a delivery seen `delivery_count` times makes the broker
/// dead-letter it (`MaxDeliveryCountExceeded`) instead of redelivering.
pub fn abandon_dead_letters(delivery_count: u32, max_delivery_count: u32) -> bool {
    delivery_count >= max_delivery_count
}

/// What an attach (or management) failure means for topology verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachFailure {
    /// The entity does not exist (`amqp:not-found`).
    NotFound,
    /// This identity may not use the entity this way (`amqp:unauthorized-access`):
    /// e.g. a publisher with only the Data Sender role attaching a receiver.
    Unauthorized,
    /// The entity requires sessions and a non-session receiver was attached.
    RequiresSession,
    Other,
}

/// Classify an error text from azservicebus/fe2o3-amqp. Service Bus puts the
/// AMQP condition and a .NET-style exception name in the text.
pub fn classify_attach_error(text: &str) -> AttachFailure {
    let t = text.to_ascii_lowercase();
    if t.contains("not-found")
        || t.contains("notfound")
        || t.contains("could not be found")
        || t.contains("does not exist")
    {
        AttachFailure::NotFound
    } else if t.contains("unauthorized") || t.contains("claim") && t.contains("required") {
        AttachFailure::Unauthorized
    } else if t.contains("session")
        && (t.contains("requires") || t.contains("sessionful") || t.contains("session-enabled"))
    {
        AttachFailure::RequiresSession
    } else {
        AttachFailure::Other
    }
}

/// What a failed send (or settlement, or renewal) means, read from the error
/// text azservicebus gives. Its error types are crate-private (`AmqpSendError`
/// wraps the broker's `Rejected` outcome and is only reachable as text through
/// `azure_core::Error`), so the AMQP condition is matched here, once, in both
/// spellings fe2o3 produces: the symbol (`com.microsoft:server-busy`,
/// `amqp:link:message-size-exceeded`) and the `Debug` of its enum
/// (`LinkError(MessageSizeExceeded)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// `com.microsoft:server-busy`: throttled. Service Bus asks for at least
    /// [`SERVER_BUSY_WAIT`] before the next try.
    ServerBusy,
    /// `amqp:resource-limit-exceeded` / quota exceeded: the topic is full.
    EntityFull,
    /// `message-size-exceeded`: will never fit.
    TooLarge,
    /// `amqp:not-found`: the topic does not exist.
    NotFound,
    /// `amqp:unauthorized-access`: this identity may not send.
    Unauthorized,
    /// The link, session or connection is gone: rebuild before trying again.
    Connection,
    /// `amqp:message-lock-lost`/`session-lock-lost` (settlements and renewals).
    LockLost,
    /// Anything else: retried within the budget.
    Other,
}

/// Whether a failed `accept_next_session` only means that no session was
/// available before the broker's timeout (not worth rebuilding anything).
pub fn no_session_available(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("timeout") || t.contains("timed out") || t.contains("elapsed")
}

/// The least wait after `com.microsoft:server-busy` (Service Bus's own SDKs wait 10 s).
pub const SERVER_BUSY_WAIT: Duration = Duration::from_secs(10);

/// Classify an error text from azservicebus / fe2o3-amqp (see [`SendFailure`]).
pub fn classify_send_error(text: &str) -> SendFailure {
    let t: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let has = |needle: &str| t.contains(needle);
    if has("serverbusy") {
        SendFailure::ServerBusy
    } else if has("messagesizeexceeded") || has("messagetoolarge") {
        SendFailure::TooLarge
    } else if has("resourcelimitexceeded") || has("quotaexceeded") {
        SendFailure::EntityFull
    } else if has("messagelocklost")
        || has("sessionlocklost")
        || has("locklost")
        // a management answer's status 410 Gone (fe2o3-amqp-management's
        // `StatusError`: azservicebus drops the `errorCondition` beside it) —
        // what Service Bus answers a renew-lock on a lock that is gone
        || has("statuscode410")
    {
        SendFailure::LockLost
    } else if has("notfound") || has("couldnotbefound") {
        SendFailure::NotFound
    } else if has("unauthorized") {
        SendFailure::Unauthorized
    } else if has("disposed")
        || has("illegalsessionstate")
        || has("illegalstate")
        || has("detached")
        || has("closed")
        || has("brokenpipe")
        || has("connectionreset")
        || has("ioerror")
        || has("notattached")
    {
        SendFailure::Connection
    } else {
        SendFailure::Other
    }
}

impl SendFailure {
    /// The port's kind for this failure.
    pub fn kind(self) -> crate::BusErrorKind {
        use crate::BusErrorKind as K;
        match self {
            SendFailure::ServerBusy | SendFailure::EntityFull => K::Busy,
            SendFailure::TooLarge => K::TooLarge,
            SendFailure::NotFound => K::NotFound,
            SendFailure::Unauthorized => K::Unauthorized,
            SendFailure::Connection => K::Connect,
            SendFailure::LockLost => K::LockLost,
            SendFailure::Other => K::Other,
        }
    }

    /// Whether trying again can help.
    pub fn retryable(self) -> bool {
        !matches!(
            self,
            SendFailure::TooLarge | SendFailure::NotFound | SendFailure::Unauthorized
        )
    }

    /// Whether the sender (and after repeated failures the client) must be
    /// rebuilt before the next try.
    pub fn rebuild_sender(self) -> bool {
        matches!(self, SendFailure::Connection | SendFailure::Other)
    }

    /// The wait before the next try, given the backoff's proposal: at least
    /// [`SERVER_BUSY_WAIT`] when throttled or full.
    pub fn adjust_delay(self, proposed: Duration) -> Duration {
        match self {
            SendFailure::ServerBusy | SendFailure::EntityFull => proposed.max(SERVER_BUSY_WAIT),
            _ => proposed,
        }
    }
}

/// How long a publish keeps trying (per message) before it reports the
/// failure to the caller: long enough to ride out a throttling episode (three
/// server-busy waits) and a reconnect, short enough that the publisher's own
/// backoff and health reporting see an outage.
pub const PUBLISH_BUDGET: Duration = Duration::from_secs(60);

/// The backoff of a publish: 250 ms doubling to 8 s, with jitter, for at most
/// [`PUBLISH_BUDGET`] of waiting (server-busy waits are raised to 10 s by
/// [`SendFailure::adjust_delay`]).
pub fn publish_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(8))
        .with_factor(2.0)
        .with_jitter()
        .with_total_delay(Some(PUBLISH_BUDGET))
        .without_max_times()
}

/// Publish-size headroom for what the broker counts and the adapter cannot
/// see: the AMQP header, message annotations the broker stamps (sequence
/// number, enqueued time, lock token), and framing. The batch measure
/// ([`super::ServiceBusBus::publish`] uses `try_add_message` against the
/// link's max message size) covers the properties and body as encoded.
pub const SIZE_MARGIN: u64 = 2 * 1024;

/// Service Bus's message size limit when the link does not say (Standard tier).
pub const STANDARD_MAX_MESSAGE: u64 = 256 * 1024;

/// The size a publish may use on a link that allows `link_max` bytes.
pub fn publish_size_limit(link_max: Option<u64>) -> u64 {
    let max = match link_max {
        Some(0) | None => STANDARD_MAX_MESSAGE,
        Some(n) => n,
    };
    max.saturating_sub(SIZE_MARGIN)
}

/// Whether a delivery whose lock expires in `remaining` is worth handing out
/// (or settling): not if it is gone or nearly gone — the broker is about to
/// (or did) give it to another consumer, and whatever we do with it is lost.
pub fn lock_usable(remaining: Duration) -> bool {
    remaining >= LOCK_MARGIN
}

/// The backlog from a peek that saw `peeked` messages (locked ones included)
/// while this consumer holds `in_flight` of them unsettled.
pub fn backlog_from_peek(peeked: u64, in_flight: u64) -> crate::Backlog {
    crate::Backlog {
        pending: peeked.saturating_sub(in_flight),
        in_flight,
    }
}

/// How far past `locked_until` (on this machine's clock) a lock must be
/// before the adapter treats it as lost and refuses to settle: the broker
/// stamps `locked_until` with its own clock, so a few seconds of clock skew
/// must not make every settlement fail.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5);

/// Whether a lock that expires at `locked_until_nanos` (Unix nanoseconds) is
/// lost at `now` (see [`CLOCK_SKEW_ALLOWANCE`]).
pub fn lock_lost(locked_until_nanos: i128, now: DateTime<Utc>) -> bool {
    let now = i128::from(now.timestamp_nanos_opt().unwrap_or(i64::MAX));
    now > locked_until_nanos + CLOCK_SKEW_ALLOWANCE.as_nanos() as i128
}

/// Below this much lock left, a delivery counts as lost (see [`lock_usable`]).
pub const LOCK_MARGIN: Duration = Duration::from_secs(2);

/// The expiry to report for an Entra ID token that really expires at
/// `expires_on` (Unix seconds), so azservicebus's CBS refresher — which
/// refreshes exactly at the reported expiry — renews it ahead of time:
/// [`TOKEN_REFRESH_AHEAD`] early, but never less than 30 s (or half the time
/// left, if that is less) from `now`, so a token the identity keeps handing
/// back unchanged is asked for again soon rather than never.
pub fn token_refresh_at(expires_on: i64, now: i64) -> i64 {
    let ahead = i64::try_from(TOKEN_REFRESH_AHEAD.as_secs()).unwrap_or(i64::MAX);
    let left = (expires_on - now).max(0);
    let floor = now + left.min(60) / 2;
    (expires_on - ahead).max(floor).min(expires_on)
}

/// How far ahead of its expiry an Entra ID token is refreshed.
pub const TOKEN_REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);

/// How long azservicebus's SAS signatures (from a connection string with a
/// `SharedAccessKey`) are valid: it signs one when the client connects and,
/// asked for a token within 10 minutes of that signature's expiry, signs a new
/// one for another 30 minutes.
pub const SAS_SIGNATURE_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// A connection authenticated by SAS is replaced at its next use after this
/// age when nothing received on it is unsettled (so nothing is cut off).
pub const SAS_RENEW_WHEN_IDLE: Duration = Duration::from_secs(15 * 60);

/// ... and after this age in any case. Every link attached before this age
/// got the connection's first signature (it is only re-signed within 10
/// minutes of its expiry), so every token of the connection expires
/// [`SAS_SIGNATURE_LIFETIME`] after it connected — the moment azservicebus's
/// CBS link would `put-token` again, racing the broker detaching the links —
/// and replacing the connection by now keeps [`SAS_SIGNATURE_LIFETIME`] less
/// this (10 minutes) for deliveries already received on it to be settled.
pub const SAS_RENEW_BY: Duration = Duration::from_secs(20 * 60);

/// Whether a connection that authenticates with a SAS connection string
/// (`by_sas`; Entra ID tokens are refreshed ahead by the credential, see
/// [`token_refresh_at`]) and is `age` old must be replaced before its next
/// use: from [`SAS_RENEW_WHEN_IDLE`] when `idle` (nothing received on it is
/// unsettled), from [`SAS_RENEW_BY`] regardless.
///
/// azservicebus gives no hook to refresh a SAS token early: its CBS link
/// schedules the next `put-token` exactly at the token's expiry, and the
/// signing type is crate-private, so a fresh connection (with a fresh
/// signature) is the only way to stay ahead of it.
pub fn renew_connection(by_sas: bool, age: Duration, idle: bool) -> bool {
    by_sas && (age >= SAS_RENEW_BY || (idle && age >= SAS_RENEW_WHEN_IDLE))
}

#[cfg(test)]
mod logic_tests {
    use super::*;
    use azservicebus::amqp::error::NotAcceptedError;
    use azservicebus::primitives::error::RetryError;
    use fe2o3_amqp_types::definitions::{AmqpError, Error as AmqpErr, ErrorCondition, LinkError};
    use fe2o3_amqp_types::messaging::Rejected;
    use fe2o3_amqp_types::primitives::Symbol;

    /// The text azservicebus gives for a send the broker rejected with
    /// `condition`: `RetryError::Operation(AmqpSendError::NotAccepted(..))`,
    /// both transparent, inside an `azure_core::Error` (the crate-private
    /// middle layer is transparent, so this is the same text).
    fn rejected(condition: ErrorCondition) -> String {
        let e = NotAcceptedError::Rejected(Rejected {
            error: Some(AmqpErr::new(
                condition,
                Some("the broker said no".to_owned()),
                None,
            )),
        });
        azure_core::Error::new(
            azure_core::error::ErrorKind::Other,
            RetryError::Operation(e),
        )
        .to_string()
    }

    #[test]
    fn rejected_sends_are_classified_from_the_real_error_text() {
        let busy = rejected(ErrorCondition::Custom(Symbol::from(
            "com.microsoft:server-busy",
        )));
        assert_eq!(
            classify_send_error(&busy),
            SendFailure::ServerBusy,
            "{busy}"
        );
        let size = rejected(ErrorCondition::LinkError(LinkError::MessageSizeExceeded));
        assert_eq!(classify_send_error(&size), SendFailure::TooLarge, "{size}");
        let full = rejected(ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded));
        assert_eq!(
            classify_send_error(&full),
            SendFailure::EntityFull,
            "{full}"
        );
        let nf = rejected(ErrorCondition::AmqpError(AmqpError::NotFound));
        assert_eq!(classify_send_error(&nf), SendFailure::NotFound, "{nf}");
        let ua = rejected(ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess));
        assert_eq!(classify_send_error(&ua), SendFailure::Unauthorized, "{ua}");
        let lock = rejected(ErrorCondition::Custom(Symbol::from(
            "com.microsoft:message-lock-lost",
        )));
        assert_eq!(classify_send_error(&lock), SendFailure::LockLost, "{lock}");
        // fe2o3-amqp-management's `StatusError` text for a 410 answer
        let gone = "Management error: StatusError {code: StatusCode(410), description: Some(\"The lock supplied is invalid.\") }";
        assert_eq!(classify_send_error(gone), SendFailure::LockLost, "{gone}");
        // the symbol spelling, as Service Bus puts it in detach errors
        assert_eq!(
            classify_send_error(
                "amqp:link:message-size-exceeded: The received message exceeds 262144 bytes"
            ),
            SendFailure::TooLarge
        );
        assert_eq!(
            classify_send_error("Client is disposed"),
            SendFailure::Connection
        );
        assert_eq!(
            classify_send_error("IllegalSessionState"),
            SendFailure::Connection
        );
        assert_eq!(classify_send_error("something odd"), SendFailure::Other);
    }

    #[test]
    fn what_each_failure_means() {
        assert!(SendFailure::ServerBusy.retryable());
        assert!(!SendFailure::TooLarge.retryable());
        assert!(!SendFailure::NotFound.retryable());
        assert_eq!(SendFailure::TooLarge.kind(), crate::BusErrorKind::TooLarge);
        assert_eq!(SendFailure::ServerBusy.kind(), crate::BusErrorKind::Busy);
        assert_eq!(
            SendFailure::ServerBusy.adjust_delay(Duration::from_millis(250)),
            SERVER_BUSY_WAIT
        );
        assert_eq!(
            SendFailure::Other.adjust_delay(Duration::from_millis(250)),
            Duration::from_millis(250)
        );
        assert!(SendFailure::Connection.rebuild_sender());
        assert!(!SendFailure::ServerBusy.rebuild_sender());
    }

    #[test]
    fn size_limit_keeps_a_margin() {
        assert_eq!(publish_size_limit(None), 256 * 1024 - SIZE_MARGIN);
        assert_eq!(publish_size_limit(Some(0)), 256 * 1024 - SIZE_MARGIN);
        assert_eq!(
            publish_size_limit(Some(1024 * 1024)),
            1024 * 1024 - SIZE_MARGIN
        );
    }

    #[test]
    fn backlog_from_a_peek() {
        let b = backlog_from_peek(3, 1);
        assert_eq!((b.pending, b.in_flight), (2, 1));
        let b = backlog_from_peek(0, 2);
        assert_eq!((b.pending, b.in_flight), (0, 2));
    }

    #[test]
    fn a_lock_is_lost_only_past_the_skew_allowance() {
        let now = chrono::Utc::now();
        let nanos = |d: chrono::Duration| i128::from((now + d).timestamp_nanos_opt().unwrap());
        assert!(!lock_lost(nanos(chrono::Duration::seconds(10)), now));
        assert!(!lock_lost(nanos(chrono::Duration::seconds(-4)), now));
        assert!(lock_lost(nanos(chrono::Duration::seconds(-6)), now));
    }

    #[test]
    fn nearly_expired_locks_are_lost() {
        assert!(!lock_usable(Duration::ZERO));
        assert!(!lock_usable(Duration::from_millis(1999)));
        assert!(lock_usable(Duration::from_secs(2)));
    }

    /// SAS connections are replaced before azservicebus's CBS refresher would
    /// put a new token at the old one's expiry: when idle from 15 minutes, in
    /// any case from 20 — always with time left before the signature lapses.
    #[test]
    fn sas_connections_are_replaced_ahead_of_their_token_expiry() {
        let min = |m: u64| Duration::from_secs(m * 60);
        assert!(!renew_connection(true, min(14), true));
        assert!(renew_connection(true, min(15), true));
        assert!(!renew_connection(true, min(15), false), "busy: wait");
        assert!(!renew_connection(true, min(19), false));
        assert!(
            renew_connection(true, min(20), false),
            "busy or not, by 20 minutes"
        );
        assert!(
            renew_connection(true, min(45), false),
            "a connection nobody used for long"
        );
        assert!(
            !renew_connection(false, min(45), false),
            "Entra ID refreshes its tokens"
        );
        // the deadline leaves time to settle what was received before it
        assert!(SAS_RENEW_WHEN_IDLE < SAS_RENEW_BY);
        assert!(SAS_SIGNATURE_LIFETIME - SAS_RENEW_BY >= min(5));
        // no link attached before the deadline gets a re-signed token (the
        // library re-signs within 10 minutes of the signature's expiry)
        assert!(SAS_RENEW_BY <= SAS_SIGNATURE_LIFETIME - min(10));
    }

    #[test]
    fn tokens_are_refreshed_ahead_of_expiry() {
        let now = 1_000_000;
        // an hour-long token: refreshed five minutes early
        assert_eq!(token_refresh_at(now + 3600, now), now + 3600 - 300);
        // a token with four minutes left: soon, not in the past
        assert_eq!(token_refresh_at(now + 240, now), now + 30);
        // ten seconds left: half of it
        assert_eq!(token_refresh_at(now + 10, now), now + 5);
        // already expired: now
        assert_eq!(token_refresh_at(now - 5, now), now - 5);
        for left in [0, 1, 59, 61, 299, 301, 86_400] {
            let at = token_refresh_at(now + left, now);
            assert!(at <= now + left && at >= now, "{left}: {at}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use fe2o3_amqp_types::messaging::{AmqpValue, Data};
    use fe2o3_amqp_types::primitives::Symbol;
    use mirror_schema::MirrorEvent;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 10, 8, 12, 34, 56).unwrap() + chrono::Duration::milliseconds(123)
    }

    #[test]
    fn property_values_round_trip_with_native_types() {
        let u = uuid::Uuid::parse_str("5f0c3b9e-8e0f-5c8a-9d57-1d7a0c1f2b3c").unwrap();
        let cases = vec![
            (
                WireValue::String("c1".into()),
                SimpleValue::String("c1".into()),
            ),
            (WireValue::Bool(true), SimpleValue::Bool(true)),
            (WireValue::Int(-5), SimpleValue::Long(-5)),
            (
                WireValue::Timestamp(t()),
                SimpleValue::Timestamp(Timestamp::from_milliseconds(t().timestamp_millis())),
            ),
            (
                WireValue::Uuid(u),
                SimpleValue::Uuid(AmqpUuid::from(*u.as_bytes())),
            ),
            (
                WireValue::Binary(vec![0, 1, 255]),
                SimpleValue::Binary(Binary::from(vec![0u8, 1, 255])),
            ),
        ];
        for (wire, amqp) in cases {
            assert_eq!(to_amqp_value(&wire), amqp, "{wire:?} → AMQP");
            assert_eq!(
                from_amqp_value(&amqp),
                Some(wire.clone()),
                "{amqp:?} → wire"
            );
        }
    }

    #[test]
    fn other_amqp_types_map_to_the_nearest_port_value() {
        let cases = vec![
            (SimpleValue::Null, None),
            (SimpleValue::Ubyte(7), Some(WireValue::Int(7))),
            (SimpleValue::Ushort(7), Some(WireValue::Int(7))),
            (SimpleValue::Uint(7), Some(WireValue::Int(7))),
            (SimpleValue::Ulong(7), Some(WireValue::Int(7))),
            (
                SimpleValue::Ulong(u64::MAX),
                Some(WireValue::String(u64::MAX.to_string())),
            ),
            (SimpleValue::Byte(-7), Some(WireValue::Int(-7))),
            (SimpleValue::Short(-7), Some(WireValue::Int(-7))),
            (SimpleValue::Int(-7), Some(WireValue::Int(-7))),
            (
                SimpleValue::Double(1.5.into()),
                Some(WireValue::String("1.5".into())),
            ),
            (SimpleValue::Char('x'), Some(WireValue::String("x".into()))),
            (
                SimpleValue::Symbol(Symbol::from("sym")),
                Some(WireValue::String("sym".into())),
            ),
        ];
        for (amqp, wire) in cases {
            assert_eq!(from_amqp_value(&amqp), wire, "{amqp:?}");
        }
        // microseconds do not survive an AMQP timestamp (why the binding writes `time` as a string)
        let micros = t() + chrono::Duration::microseconds(456);
        assert_eq!(
            from_amqp_value(&to_amqp_value(&WireValue::Timestamp(micros))),
            Some(WireValue::Timestamp(t()))
        );
    }

    #[test]
    fn application_properties_keep_order_and_drop_nulls() {
        let props = vec![
            (
                "cloudEvents_specversion".to_owned(),
                WireValue::String("1.0".into()),
            ),
            ("cloudEvents_time".to_owned(), WireValue::Timestamp(t())),
            ("n".to_owned(), WireValue::Int(1)),
        ];
        let amqp = to_application_properties(&props).unwrap();
        assert_eq!(from_application_properties(Some(&amqp)), props);
        assert!(to_application_properties(&[]).is_none());
        let mut with_null = amqp.clone();
        with_null.0.insert("gone".into(), SimpleValue::Null);
        assert_eq!(from_application_properties(Some(&with_null)), props);
        assert!(from_application_properties(None).is_empty());
    }

    #[test]
    fn bodies() {
        let one: Body<Value> = Body::Data(vec![Data(Binary::from(b"{\"a\":1}".to_vec()))].into());
        let two: Body<Value> = Body::Data(
            vec![
                Data(Binary::from(b"ab".to_vec())),
                Data(Binary::from(b"cd".to_vec())),
            ]
            .into(),
        );
        let string: Body<Value> = Body::Value(AmqpValue(Value::String("{}".into())));
        let binary: Body<Value> =
            Body::Value(AmqpValue(Value::Binary(Binary::from(b"xy".to_vec()))));
        let number: Body<Value> = Body::Value(AmqpValue(Value::Long(3)));
        let cases: Vec<(&str, Body<Value>, &[u8])> = vec![
            ("one data section", one, b"{\"a\":1}"),
            ("two data sections", two, b"abcd"),
            ("amqp-value string", string, b"{}"),
            ("amqp-value binary", binary, b"xy"),
            ("amqp-value long", number, b""),
            ("no body", Body::Empty, b""),
        ];
        for (name, body, expected) in cases {
            assert_eq!(body_bytes(&body), expected, "{name}");
        }
    }

    fn event() -> MirrorEvent {
        let subject = mirror_schema::Subject::parse(
            "conversations/c1/messages/m1",
            mirror_schema::EventFamily::Message,
        )
        .unwrap();
        let payload = mirror_schema::Payload::from_json(
            mirror_schema::EventType::DmMessageCreate,
            &serde_json::json!({ "authorUserId": "u1", "bodyText": "hi", "createdAt": "2025-10-08T12:34:56.123456Z" }),
        )
        .unwrap();
        let source = MirrorEvent::firestore_source("demo", &subject);
        MirrorEvent::new(
            mirror_schema::EventType::DmMessageCreate,
            subject,
            t(),
            source,
            payload,
        )
        .unwrap()
    }

    #[test]
    fn outbound_structured_and_binary_messages() {
        let ev = event();
        let structured = OutboundMessage::from_event(&ev);
        let m = to_service_bus_message(&structured, false).unwrap();
        assert_eq!(
            m.message_id().as_deref(),
            Some(ev.id().to_string().as_str())
        );
        assert_eq!(m.session_id(), None);
        assert_eq!(m.content_type(), Some("application/cloudevents+json"));
        assert!(m.application_properties().is_none());
        assert_eq!(m.body(), ev.to_structured_json().as_slice());

        let m = to_service_bus_message(&structured, true).unwrap();
        assert_eq!(m.session_id(), Some("c1"));

        let binary = OutboundMessage {
            message: mirror_schema::amqp::encode_binary(&ev),
            ..structured.clone()
        };
        let m = to_service_bus_message(&binary, false).unwrap();
        assert_eq!(m.content_type(), Some("application/json"));
        let props = from_application_properties(m.application_properties());
        assert_eq!(props, binary.message.properties);
        // and what a receiver rebuilds decodes to the same event
        let body: Body<Value> = Body::Data(vec![Data(Binary::from(m.body().to_vec()))].into());
        let wire = to_wire(m.content_type(), m.application_properties(), &body);
        assert_eq!(mirror_schema::decode_wire(&wire).unwrap(), ev);
    }

    #[test]
    fn outbound_rejections() {
        let ev = event();
        let mut no_key = OutboundMessage::from_event(&ev);
        no_key.partition_key = None;
        assert!(to_service_bus_message(&no_key, false).is_ok());
        let e = to_service_bus_message(&no_key, true).unwrap_err();
        assert!(e.to_string().contains("requires sessions"), "{e}");

        let mut long_id = OutboundMessage::from_event(&ev);
        long_id.message_id = "x".repeat(129);
        assert!(to_service_bus_message(&long_id, false)
            .unwrap_err()
            .to_string()
            .contains("128"));

        let mut big = OutboundMessage::from_event(&ev);
        big.message.body = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            to_service_bus_message(&big, false),
            Err(BusError::TooLarge { .. })
        ));
    }

    #[test]
    fn dead_letter_fields_round_trip() {
        let why = DeadLetter {
            reason: "invalid_field".into(),
            description: "invalid `time`: ".to_owned() + &"x".repeat(5000),
            attempts: 3,
        };
        let opts = dead_letter_options(&why, t());
        assert_eq!(opts.dead_letter_reason.as_deref(), Some("invalid_field"));
        assert_eq!(
            opts.dead_letter_error_description
                .as_ref()
                .unwrap()
                .chars()
                .count(),
            MAX_DEAD_LETTER_TEXT
        );
        let props = opts.properties_to_modify.unwrap();
        assert_eq!(props.get(DEAD_LETTER_ATTEMPTS), Some(&Value::Long(3)));

        // what the broker hands back from the dead-letter queue
        let original = mirror_schema::WireMessage::structured(&event());
        let mut dlq = original.clone();
        dlq.properties.push((
            DEAD_LETTER_REASON.into(),
            WireValue::String("invalid_field".into()),
        ));
        dlq.properties.push((
            DEAD_LETTER_ERROR_DESCRIPTION.into(),
            WireValue::String("invalid `time`".into()),
        ));
        dlq.properties
            .push((DEAD_LETTER_ATTEMPTS.into(), WireValue::Int(3)));
        dlq.properties
            .push((DEAD_LETTERED_AT.into(), WireValue::Timestamp(t())));
        let d = to_dead_lettered(42, Some("id-1".into()), dlq, Some(4), None);
        assert_eq!(d.handle, "42");
        assert!(!d.by_broker, "the adapter marked it");
        assert_eq!(d.partition_key, None);
        assert_eq!(d.original_message_id.as_deref(), Some("id-1"));
        assert_eq!(d.reason, "invalid_field");
        assert_eq!(d.description, "invalid `time`");
        assert_eq!(d.attempts, 3);
        assert_eq!(d.dead_lettered_at, Some(t()));
        assert_eq!(
            d.message, original,
            "bookkeeping properties are stripped for replay"
        );

        // dead-lettered by the broker itself
        let mut dlq = original.clone();
        dlq.properties.push((
            DEAD_LETTER_REASON.into(),
            WireValue::String("MaxDeliveryCountExceeded".into()),
        ));
        let d = to_dead_lettered(7, None, dlq, Some(5), Some("c1".into()));
        assert!(d.by_broker);
        assert_eq!(
            d.partition_key.as_deref(),
            Some("c1"),
            "replays keep the session"
        );
        assert_eq!(
            (d.reason.as_str(), d.attempts, d.dead_lettered_at),
            ("MaxDeliveryCountExceeded", 5, None)
        );
        assert_eq!(parse_handle(&d.handle).unwrap(), 7);
    }

    #[test]
    fn handles() {
        assert_eq!(parse_handle("123").unwrap(), 123);
        for bad in ["", "-1", "abc", "1.5"] {
            assert!(
                parse_handle(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("sequence number"),
                "{bad}"
            );
        }
    }

    #[test]
    fn lock_timing() {
        assert_eq!(
            renewal_delay(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            renewal_delay(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert!(renew_now(Duration::from_millis(1500)));
        assert!(!renew_now(Duration::from_secs(30)));
        let now = t();
        let in_a_minute = i128::from(
            (now + chrono::Duration::seconds(60))
                .timestamp_nanos_opt()
                .unwrap(),
        );
        assert_eq!(until(in_a_minute, now), Duration::from_secs(60));
        assert_eq!(until(0, now), Duration::ZERO);
        assert!(!abandon_dead_letters(4, 5));
        assert!(abandon_dead_letters(5, 5));
    }

    #[test]
    fn attach_errors() {
        let cases = [
            (
                "amqp:not-found: The messaging entity 'sb://x/realtime-mirror' could not be found.",
                AttachFailure::NotFound,
            ),
            ("MessagingEntityNotFound", AttachFailure::NotFound),
            (
                "amqp:unauthorized-access: Unauthorized access. 'Listen' claim(s) are required",
                AttachFailure::Unauthorized,
            ),
            (
                "It is not possible for an entity that requires sessions to create a non-sessionful message receiver.",
                AttachFailure::RequiresSession,
            ),
            ("connection reset by peer", AttachFailure::Other),
        ];
        for (text, expected) in cases {
            assert_eq!(classify_attach_error(text), expected, "{text}");
        }
    }
}
