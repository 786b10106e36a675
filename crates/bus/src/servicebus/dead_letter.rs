//! The Service Bus dead-letter queue (`{topic}/Subscriptions/{sub}/$deadletterqueue`):
//! list, remove, and the sweep for dead letters the broker made on its own.
//! The sibling of `jetstream/dead_letter.rs`.

use std::time::Duration;

use azservicebus::prelude::*;

use super::{convert, ServiceBusBus, MAX_BATCH};
use crate::{BusError, DeadLetter, DeadLetterHook, DeadLettered};

/// Messages `remove` receives at most while looking for one.
const MAX_DLQ_SCAN: usize = 5_000;
/// How often the sweep looks at the dead-letter queue.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Most dead letters one sweep pass reads.
const SWEEP_PAGE: usize = 256;

/// Read up to `limit` dead letters of `subscription`, oldest first (peek).
pub(super) async fn list(
    bus: &ServiceBusBus,
    subscription: &str,
    limit: usize,
) -> Result<Vec<DeadLettered>, BusError> {
    let mut receiver = bus
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
                .map_err(|e| bus.admin_err("list dead letters", e))?;
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
                    peeked.session_id().map(str::to_owned),
                ));
            }
        }
        Ok::<(), BusError>(())
    }
    .await;
    bus.release(receiver).await;
    result?;
    out.truncate(limit);
    Ok(out)
}

/// Remove dead letter `handle` (a sequence number).
///
/// Peeks first: a sequence number no longer in the queue (already removed)
/// is a no-op. Otherwise receives from the dead-letter queue until that
/// message comes up, completes it and abandons the others it had to lock on
/// the way (the dead-letter queue has no delivery limit, so that is harmless).
pub(super) async fn remove(
    bus: &ServiceBusBus,
    subscription: &str,
    handle: &str,
) -> Result<(), BusError> {
    let sequence_number = convert::parse_handle(handle)?;
    let mut receiver = bus
        .admin_receiver(subscription, true, ServiceBusReceiveMode::PeekLock)
        .await?;
    let result = async {
            let present = receiver
                .peek_messages(1, Some(sequence_number))
                .await
                .map_err(|e| bus.admin_err("remove dead letter", e))?
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
                    .map_err(|e| bus.admin_err("remove dead letter", e))?;
                if batch.is_empty() {
                    break;
                }
                for m in batch {
                    if !found && m.sequence_number() == sequence_number {
                        receiver
                            .complete_message(&m)
                            .await
                            .map_err(|e| bus.admin_err("remove dead letter", e))?;
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
    bus.release(receiver).await;
    result
}

/// The broker-made dead letters among `entries` (no `DeadLetterAttempts`
/// mark), after sequence number `after`, as the hook wants them; and the
/// highest sequence number seen.
pub fn broker_made(
    entries: &[DeadLettered],
    after: i64,
) -> (Vec<(mirror_schema::WireMessage, DeadLetter)>, i64) {
    let mut last = after;
    let mut out = Vec::new();
    for d in entries {
        let Ok(seq) = convert::parse_handle(&d.handle) else {
            continue;
        };
        if seq <= after {
            continue;
        }
        last = last.max(seq);
        if !d.by_broker {
            continue;
        }
        out.push((
            d.message.clone(),
            DeadLetter {
                reason: if d.reason.is_empty() {
                    "dead_lettered_by_broker".to_owned()
                } else {
                    d.reason.clone()
                },
                description: if d.description.is_empty() {
                    "the broker dead-lettered the message on its own".to_owned()
                } else {
                    d.description.clone()
                },
                attempts: d.attempts,
            },
        ));
    }
    (out, last)
}

/// The deployed `maxDeliveryCount` as the dead-letter queue shows it, if it
/// differs from `expected`: the delivery count of the most recent
/// `MaxDeliveryCountExceeded` entry (Service Bus dead-letters a message when
/// its delivery count reaches the limit). The limit itself is management-plane
/// (ARM / ATOM, Manage rights) and not readable over AMQP, so this evidence is
/// the check at start.
pub fn delivery_limit_seen(entries: &[DeadLettered], expected: u32) -> Option<u32> {
    entries
        .iter()
        .rev()
        .find(|d| d.by_broker && d.reason == "MaxDeliveryCountExceeded" && d.attempts > 0)
        .map(|d| d.attempts)
        .filter(|&n| n != expected)
}

/// Start the sweep of `subscription`'s dead-letter queue: every
/// [`SWEEP_EVERY`], peek the entries after the last one seen and hand those
/// the broker dead-lettered itself (`MaxDeliveryCountExceeded` — the writer
/// died during the last delivery, or the subscription's `maxDeliveryCount` is
/// below `--max-attempts` — or `TTLExpiredException`) to `hook`. The first
/// pass reads the whole queue, so after a restart every broker-made dead
/// letter still there is reported again: the writer records its SQL row
/// idempotently by the dead-letter key. Checks once, now, that the queue can
/// be read (Listen rights); later failures are logged and retried.
pub(super) async fn start_sweep(
    bus: &ServiceBusBus,
    subscription: &str,
    hook: DeadLetterHook,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let first = list(bus, subscription, SWEEP_PAGE).await?;
    if let Some(deployed) = delivery_limit_seen(&first, bus.config.max_delivery_count) {
        tracing::error!(
            %subscription,
            deployed,
            expected = bus.config.max_delivery_count,
            "the subscription's maxDeliveryCount looks like {deployed}, not the writer's --max-attempts {}: the broker dead-letters on its own (MaxDeliveryCountExceeded) before the writer's policy decides; deploy maxDeliveryCount = --max-attempts (deploy/azure)",
            bus.config.max_delivery_count
        );
    }
    let (found, mut last) = broker_made(&first, -1);
    for (m, why) in found {
        hook(m, why);
    }
    // The sweep needs its own handle on the bus's connection settings: a
    // second bus (connection) for the task, so the caller's bus can be dropped.
    let bus = ServiceBusBus::connect(bus.config.clone()).await?;
    let subscription = subscription.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            match list_after(&bus, &subscription, last, SWEEP_PAGE).await {
                Ok(entries) => {
                    let (found, seen) = broker_made(&entries, last);
                    last = seen;
                    for (m, why) in found {
                        tracing::info!(%subscription, reason = %why.reason, "dead letter made by the broker; recording it");
                        hook(m, why);
                    }
                }
                Err(e) => {
                    tracing::warn!(%subscription, error = %e, "dead-letter sweep failed; trying again later")
                }
            }
        }
    }))
}

/// Up to `limit` dead letters after sequence number `after` (peek).
async fn list_after(
    bus: &ServiceBusBus,
    subscription: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<DeadLettered>, BusError> {
    let mut receiver = bus
        .admin_receiver(subscription, true, ServiceBusReceiveMode::PeekLock)
        .await?;
    let want = u32::try_from(limit).unwrap_or(MAX_BATCH).min(MAX_BATCH);
    let result = receiver
        .peek_messages(want, Some(after.saturating_add(1)))
        .await
        .map_err(|e| bus.admin_err("sweep dead letters", e));
    bus.release(receiver).await;
    Ok(result?
        .into_iter()
        .map(|peeked| {
            let wire = convert::to_wire(
                peeked.content_type(),
                peeked.application_properties(),
                &peeked.raw_amqp_message().body,
            );
            convert::to_dead_lettered(
                peeked.sequence_number(),
                peeked.message_id().map(|c| c.into_owned()),
                wire,
                peeked.delivery_count(),
                peeked.session_id().map(str::to_owned),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_schema::{WireMessage, WireValue};

    fn entry(seq: i64, by_broker: bool) -> DeadLettered {
        DeadLettered {
            handle: seq.to_string(),
            original_message_id: None,
            message: WireMessage {
                content_type: None,
                properties: vec![("n".into(), WireValue::Int(seq))],
                body: Vec::new(),
            },
            reason: if by_broker {
                "MaxDeliveryCountExceeded".into()
            } else {
                "invalid_field".into()
            },
            description: String::new(),
            attempts: 5,
            dead_lettered_at: None,
            partition_key: None,
            by_broker,
        }
    }

    #[test]
    fn a_delivery_limit_other_than_the_writers_is_noticed() {
        let mut e = entry(3, true);
        assert_eq!(delivery_limit_seen(std::slice::from_ref(&e), 5), None);
        e.attempts = 3;
        assert_eq!(delivery_limit_seen(std::slice::from_ref(&e), 5), Some(3));
        let mut ttl = entry(4, true);
        ttl.reason = "TTLExpiredException".into();
        ttl.attempts = 1;
        assert_eq!(delivery_limit_seen(&[ttl], 5), None);
    }

    #[test]
    fn only_broker_made_dead_letters_after_the_last_seen_are_reported() {
        let entries = [entry(3, true), entry(4, false), entry(7, true)];
        let (found, last) = broker_made(&entries, -1);
        assert_eq!(last, 7);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].1.reason, "MaxDeliveryCountExceeded");
        assert!(!found[0].1.description.is_empty());
        let (again, last) = broker_made(&entries, 4);
        assert_eq!((again.len(), last), (1, 7));
        let (none, last) = broker_made(&entries, 7);
        assert_eq!((none.len(), last), (0, 7));
    }
}
