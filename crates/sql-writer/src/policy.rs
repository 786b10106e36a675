//! The one place that decides what happens to a message: complete, retry
//! later, dead-letter, or stop the writer.
//!
//! Every outcome from every source — event validation, PostgreSQL SQLSTATEs,
//! SQL Server error numbers, bus errors — is classified here by [`classify`],
//! and [`decide`] turns the class and the delivery count into a
//! [`Disposition`]. The worker loop only executes dispositions. Keep the
//! transient lists narrow: an unknown database error is retried a bounded
//! number of times and then dead-lettered, so a wrong guess costs a few
//! retries, never a lost or stuck event.

use std::time::Duration;

use mirror_bus::{BusError, BusErrorKind, DeadLetter};
pub use mirror_runtime::backoff::Backoff;
use mirror_schema::DecodeError;
use mirror_store::{ApplyOutcome, DbCode, StoreError, StoreErrorKind};

/// How a failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// May succeed if tried again later (deadlock, connection lost, timeout).
    Transient,
    /// Will never succeed as sent (invalid event, constraint violation): dead-letter now.
    Permanent,
    /// The writer itself is misconfigured (schema not migrated, bad credentials
    /// format): stop without settling, so nothing is dead-lettered for our fault.
    Fatal,
}

/// Anything that can go wrong with one message.
#[derive(Debug)]
pub enum Failure<'a> {
    Decode(&'a DecodeError),
    Store(&'a StoreError),
    Bus(&'a BusError),
}

impl std::fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Decode(e) => write!(f, "invalid event: {e}"),
            Failure::Store(e) => write!(f, "database: {e}"),
            Failure::Bus(e) => write!(f, "bus: {e}"),
        }
    }
}

/// Classify one failure. The single source of truth for retry vs dead-letter.
pub fn classify(failure: &Failure<'_>) -> Class {
    match failure {
        Failure::Decode(_) => Class::Permanent,
        Failure::Bus(e) => match e.kind() {
            BusErrorKind::Config => Class::Fatal,
            BusErrorKind::TooLarge => Class::Permanent,
            _ => Class::Transient,
        },
        Failure::Store(e) => classify_store(e),
    }
}

fn classify_store(e: &StoreError) -> Class {
    match e.kind {
        StoreErrorKind::Config | StoreErrorKind::Migration => return Class::Fatal,
        StoreErrorKind::Connect
        | StoreErrorKind::PoolTimeout
        | StoreErrorKind::Timeout
        | StoreErrorKind::NoAnswer => return Class::Transient,
        _ => {}
    }
    match &e.code {
        Some(DbCode::Sqlstate(s)) => classify_sqlstate(s),
        Some(DbCode::Mssql(n)) => classify_mssql(*n),
        None => Class::Transient,
    }
}

/// PostgreSQL: the class [`crate::db_errors::POSTGRES`] gives the SQLSTATE
/// (exact code, else its class, else transient). `23505` is transient there,
/// with the reason.
pub fn classify_sqlstate(code: &str) -> Class {
    crate::db_errors::postgres_class(code)
}

/// Whether `e` says the database is unavailable (down, restarting, failing
/// over, refusing connections, hung: [`StoreErrorKind::NoAnswer`]) rather than that this batch failed: the
/// writer then stops taking messages until the database answers again,
/// instead of spending every message's delivery attempts on an outage and
/// dead-lettering valid events with `retries_exhausted`.
pub fn store_unavailable(e: &StoreError) -> bool {
    match e.kind {
        StoreErrorKind::Connect | StoreErrorKind::PoolTimeout | StoreErrorKind::NoAnswer => true,
        _ => match &e.code {
            Some(DbCode::Sqlstate(s)) => crate::db_errors::postgres_unavailable(s),
            Some(DbCode::Mssql(n)) => crate::db_errors::mssql_unavailable(*n),
            None => false,
        },
    }
}

/// SQL Server: the class [`crate::db_errors::MSSQL`] gives the number (the
/// procedures' 50000–50999 are permanent, unknown numbers transient).
pub fn classify_mssql(number: u32) -> Class {
    crate::db_errors::mssql_class(number)
}

/// Retry settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Deliveries before a transiently failing event is dead-lettered
    /// (default [`crate::defaults::MAX_ATTEMPTS`]).
    pub max_attempts: u32,
    /// The broker-side delay before the next delivery.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        use crate::defaults;
        RetryPolicy {
            max_attempts: defaults::MAX_ATTEMPTS,
            backoff: Backoff::new(defaults::MIN_BACKOFF, defaults::MAX_BACKOFF).with_jitter(),
        }
    }
}

impl RetryPolicy {
    /// The broker-side delay before attempt `delivery_count + 1` (see [`Backoff`]).
    pub fn delay_after(&self, delivery_count: u32) -> Duration {
        self.backoff.delay_after(delivery_count)
    }
}

/// The waits of the task that writes the SQL rows of messages a bus adapter
/// dead-lettered on its own: nothing else holds those messages for us, so
/// it tries until the database takes each row.
pub const ADAPTER_DEAD_LETTER_ROW: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// What to do with a message the policy dead-lettered when its
/// `realtime_mirror_dead_letter` row could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowNotWritten {
    /// Attempts remain: release the message for redelivery after `delay`, so
    /// it stays safe in the subscription until SQL can take the row.
    Release { delay: Duration },
    /// Its last attempt: dead-letter it on the bus anyway and keep the row in
    /// memory until the database is back.
    Park,
}

/// Decide [`RowNotWritten`] for a delivery (1 = first).
pub fn dead_letter_row_failed(delivery_count: u32, policy: &RetryPolicy) -> RowNotWritten {
    if delivery_count >= policy.max_attempts {
        RowNotWritten::Park
    } else {
        RowNotWritten::Release {
            delay: policy.delay_after(delivery_count),
        }
    }
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Settled for good: the effect is committed (or was already).
    Complete(ApplyOutcome),
    /// Release for redelivery after `delay`.
    Retry { delay: Duration, reason: String },
    /// Move to both dead-letter places.
    DeadLetter(DeadLetter),
    /// Stop the writer; leave the message unsettled.
    Fatal(String),
}

/// Decide what to do with a delivery, given what happened and how many times
/// it has been delivered (1 = first).
pub fn decide(
    result: Result<ApplyOutcome, Failure<'_>>,
    delivery_count: u32,
    policy: &RetryPolicy,
) -> Disposition {
    let failure = match result {
        Ok(outcome) => return Disposition::Complete(outcome),
        Err(f) => f,
    };
    let description = failure.to_string();
    match classify(&failure) {
        Class::Fatal => Disposition::Fatal(description),
        Class::Permanent => Disposition::DeadLetter(DeadLetter {
            reason: reason_code(&failure).to_owned(),
            description,
            attempts: delivery_count,
        }),
        Class::Transient if delivery_count >= policy.max_attempts => {
            Disposition::DeadLetter(DeadLetter {
                reason: "retries_exhausted".to_owned(),
                description: format!("gave up after {delivery_count} attempts: {description}"),
                attempts: delivery_count,
            })
        }
        Class::Transient => Disposition::Retry {
            delay: policy.delay_after(delivery_count),
            reason: description,
        },
    }
}

/// The short `DeadLetterReason` for a permanent failure.
fn reason_code(failure: &Failure<'_>) -> &'static str {
    match failure {
        Failure::Decode(e) => e.code(),
        Failure::Store(_) => "rejected_by_database",
        Failure::Bus(_) => "rejected_by_bus",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(code: &str) -> StoreError {
        StoreError::database(DbCode::Sqlstate(code.into()), "x")
    }
    fn ms(n: u32) -> StoreError {
        StoreError::database(DbCode::Mssql(n), "x")
    }

    #[test]
    fn classification_table() {
        let cases: &[(StoreError, Class)] = &[
            (pg("40001"), Class::Transient),
            (pg("40P01"), Class::Transient),
            (pg("08006"), Class::Transient),
            (pg("57P01"), Class::Transient),
            (pg("53300"), Class::Transient),
            (pg("23505"), Class::Transient),
            (pg("23503"), Class::Permanent),
            (pg("22001"), Class::Permanent),
            (pg("RM001"), Class::Permanent),
            (pg("42883"), Class::Fatal),
            (ms(1205), Class::Transient),
            (ms(40613), Class::Transient),
            (ms(49919), Class::Transient),
            (ms(2627), Class::Transient),
            (ms(515), Class::Permanent),
            (ms(547), Class::Permanent),
            (ms(50001), Class::Permanent),
            (ms(2812), Class::Fatal),
            (
                StoreError::new(StoreErrorKind::Connect, "refused"),
                Class::Transient,
            ),
            (
                StoreError::new(StoreErrorKind::Timeout, "slow"),
                Class::Transient,
            ),
            (
                StoreError::new(StoreErrorKind::Config, "bad url"),
                Class::Fatal,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(classify(&Failure::Store(err)), *want, "{err}");
        }
        let decode = DecodeError::UnknownType("x".into());
        assert_eq!(classify(&Failure::Decode(&decode)), Class::Permanent);
        assert_eq!(
            classify(&Failure::Bus(&BusError::Connect("down".into()))),
            Class::Transient
        );
        // bus failures are decided on their kind, never their text
        let bus = [
            (BusErrorKind::Busy, Class::Transient),
            (BusErrorKind::LockLost, Class::Transient),
            (BusErrorKind::Other, Class::Transient),
            (BusErrorKind::TooLarge, Class::Permanent),
            (BusErrorKind::Config, Class::Fatal),
        ];
        for (kind, want) in bus {
            let e = BusError::with_kind(kind, "publish", "409 too large config");
            assert_eq!(classify(&Failure::Bus(&e)), want, "{kind:?}");
        }
    }

    #[test]
    fn outages_are_told_apart_from_failing_events() {
        assert!(store_unavailable(&StoreError::new(
            StoreErrorKind::Connect,
            "refused"
        )));
        assert!(store_unavailable(&StoreError::new(
            StoreErrorKind::PoolTimeout,
            "pool"
        )));
        // A hung database is told by the kind the store gave, never by text.
        let hung = StoreError::no_answer(Duration::from_secs(60));
        assert!(store_unavailable(&hung));
        assert_eq!(classify(&Failure::Store(&hung)), Class::Transient);
        assert!(!store_unavailable(&StoreError::new(
            StoreErrorKind::Database,
            "no answer from the database"
        )));
        assert!(store_unavailable(&pg("57P03")));
        assert!(store_unavailable(&pg("08006")));
        assert!(store_unavailable(&ms(40613)));
        assert!(
            !store_unavailable(&pg("40P01")),
            "a deadlock is about this batch"
        );
        assert!(!store_unavailable(&pg("23505")));
        assert!(!store_unavailable(&StoreError::new(
            StoreErrorKind::Timeout,
            "slow statement"
        )));
    }

    #[test]
    fn poison_is_dead_lettered_on_the_first_attempt() {
        let decode = DecodeError::Missing("data.payload");
        match decide(Err(Failure::Decode(&decode)), 1, &RetryPolicy::default()) {
            Disposition::DeadLetter(d) => {
                assert_eq!(d.reason, "missing_field");
                assert_eq!(d.attempts, 1);
                assert!(d.description.contains("data.payload"), "{}", d.description);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transient_retries_then_dead_letters_at_the_limit() {
        let policy = RetryPolicy::default();
        let err = pg("40P01");
        for n in 1..policy.max_attempts {
            assert!(matches!(
                decide(Err(Failure::Store(&err)), n, &policy),
                Disposition::Retry { .. }
            ));
        }
        match decide(Err(Failure::Store(&err)), policy.max_attempts, &policy) {
            Disposition::DeadLetter(d) => assert_eq!(d.reason, "retries_exhausted"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dead_letter_row_not_written_releases_until_the_last_attempt() {
        let policy = RetryPolicy::default();
        for n in 1..policy.max_attempts {
            assert!(matches!(
                dead_letter_row_failed(n, &policy),
                RowNotWritten::Release { .. }
            ));
        }
        assert_eq!(
            dead_letter_row_failed(policy.max_attempts, &policy),
            RowNotWritten::Park
        );
        assert_eq!(
            dead_letter_row_failed(policy.max_attempts + 3, &policy),
            RowNotWritten::Park,
            "a broker that redelivers past the limit"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            backoff: Backoff {
                jitter: false,
                ..RetryPolicy::default().backoff
            },
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay_after(1), Duration::from_millis(500));
        assert_eq!(policy.delay_after(2), Duration::from_secs(1));
        assert_eq!(policy.delay_after(3), Duration::from_secs(2));
        assert_eq!(policy.delay_after(30), Duration::from_secs(60));
        let jittered = RetryPolicy::default();
        for n in 1..8 {
            let d = jittered.delay_after(n);
            assert!(
                d >= policy.delay_after(n)
                    && d <= policy.delay_after(n) * 2 + Duration::from_millis(1),
                "{n}: {d:?}"
            );
        }
    }
}
