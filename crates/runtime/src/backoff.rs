//! The one backoff: how long every loop of the jobs waits before trying
//! again, built on `backon`.
//!
//! A [`Backoff`] is exponential (factor 2) from `min_delay`, capped at
//! `max_delay`, optionally with jitter (up to the delay again). The writer's
//! retry policy (broker-side redelivery delays), the writer's probes of a
//! database that is down, the task that writes the rows of messages a bus
//! adapter dead-lettered, the publisher's publish retries and its listen
//! stream reconnects all use it, so "how long to wait" is written once.
//!
//! It decides only *how long*; *whether* to try again is the caller's policy
//! (for the writer, `sql_writer::policy`).

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};

/// Exponential delays, doubling from `min_delay` up to `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min_delay: Duration,
    /// No delay is longer (jitter included).
    pub max_delay: Duration,
    /// Add a random part (up to the delay again, within `max_delay`), so
    /// many waiters that failed together do not retry together.
    pub jitter: bool,
}

impl Backoff {
    /// Doubling from `min_delay` to `max_delay`, without jitter.
    pub const fn new(min_delay: Duration, max_delay: Duration) -> Backoff {
        Backoff {
            min_delay,
            max_delay,
            jitter: false,
        }
    }

    /// The same delays with jitter.
    pub const fn with_jitter(self) -> Backoff {
        Backoff {
            jitter: true,
            ..self
        }
    }

    /// The same, but never longer than `max_delay`.
    pub fn capped(self, max_delay: Duration) -> Backoff {
        Backoff {
            min_delay: self.min_delay.min(max_delay),
            max_delay: self.max_delay.min(max_delay),
            ..self
        }
    }

    /// The `backon` builder of these delays, at most `max_times` of them
    /// (for `backon::Retryable`).
    pub fn builder(&self, max_times: usize) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(max_times);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// The delays one after another, without end: the state of a loop that
    /// waits after each failure (start again from the first delay by taking
    /// a new iterator once it made progress).
    pub fn delays(&self) -> Delays {
        Delays {
            inner: self.builder(usize::MAX).build(),
            max_delay: self.max_delay,
        }
    }

    /// The delay after the `failures`-th failure in a row (1 = the first):
    /// for callers that know the count (a delivery count) rather than
    /// keep a [`Delays`].
    pub fn delay_after(&self, failures: u32) -> Duration {
        self.builder(failures.max(1) as usize)
            .build()
            .last()
            .unwrap_or(self.min_delay)
            .min(self.max_delay)
    }

    /// Run `call` until it succeeds, `retry_when` says no to its error, or
    /// it failed `attempts` times in all; waits these delays in between and
    /// tells `notify` about each failure that is tried again.
    pub async fn retry<T, E, Fut>(
        &self,
        attempts: u32,
        call: impl FnMut() -> Fut,
        retry_when: impl FnMut(&E) -> bool,
        notify: impl FnMut(&E, Duration),
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        call.retry(self.builder(attempts.saturating_sub(1) as usize))
            .sleep(tokio::time::sleep)
            .when(retry_when)
            .notify(notify)
            .await
    }
}

/// [`Backoff::delays`]: the next delay each time a loop fails again.
#[derive(Debug)]
pub struct Delays {
    inner: ExponentialBackoff,
    max_delay: Duration,
}

impl Delays {
    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.inner
            .next()
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const B: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        assert_eq!(B.delay_after(0), Duration::from_millis(500));
        assert_eq!(B.delay_after(1), Duration::from_millis(500));
        assert_eq!(B.delay_after(2), Duration::from_secs(1));
        assert_eq!(B.delay_after(3), Duration::from_secs(2));
        assert_eq!(B.delay_after(30), Duration::from_secs(60));
        let mut delays = B.delays();
        for n in 1..40 {
            assert_eq!(delays.next_delay(), B.delay_after(n), "{n}");
        }
        assert_eq!(
            B.capped(Duration::from_secs(5)).delay_after(30),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn jitter_stays_between_the_delay_and_the_cap() {
        let jittered = B.with_jitter();
        for n in 1..12 {
            let d = jittered.delay_after(n);
            let plain = B.delay_after(n);
            assert!(
                d >= plain && d <= (plain * 2).min(B.max_delay) + Duration::from_millis(1),
                "{n}: {d:?}"
            );
        }
    }

    #[tokio::test]
    async fn retry_stops_at_the_attempt_limit_or_when_told() {
        const B: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(10));
        let calls = AtomicU32::new(0);
        let waited = std::sync::Mutex::new(Vec::new());
        let r: Result<(), &str> = B
            .retry(
                3,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("down")
                },
                |_| true,
                |_, d| waited.lock().unwrap().push(d),
            )
            .await;
        assert_eq!(r, Err("down"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            *waited.lock().unwrap(),
            [Duration::from_millis(1), Duration::from_millis(2)]
        );
        calls.store(0, Ordering::SeqCst);
        let r: Result<(), &str> = B
            .retry(
                5,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("config")
                },
                |e| *e != "config",
                |_, _| {},
            )
            .await;
        assert_eq!(r, Err("config"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a final error is not retried"
        );
    }
}
