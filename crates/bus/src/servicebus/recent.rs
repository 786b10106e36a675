//! Message ids this process published recently, to report duplicates.
//!
//! Service Bus duplicate detection drops a send whose `MessageId` the topic
//! has seen within its window, but acknowledges it like any other send, so
//! the broker never says "duplicate". What the adapter can say for certain is
//! narrower: if *this* bus published the same id (and the broker acknowledged
//! it) less than the window ago, the broker drops the repeat. [`RecentIds`]
//! remembers acknowledged ids for the configured window (less a safety
//! margin, since the broker's clock starts at enqueue, a little before our
//! acknowledgement) and a bounded number of them; anything it does not
//! remember is reported as published, which stays true for duplicates from
//! other processes (the broker still drops those).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Subtracted from the window before trusting a remembered id.
pub const MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct RecentIds {
    window: Duration,
    capacity: usize,
    order: VecDeque<(Instant, String)>,
    seen: HashMap<String, Instant>,
}

impl RecentIds {
    /// Remember ids for `window` (the topic's duplicate-detection window), at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> RecentIds {
        RecentIds {
            window: window.saturating_sub(MARGIN),
            capacity,
            order: VecDeque::new(),
            seen: HashMap::new(),
        }
    }

    /// Whether `id` was recorded less than the window ago.
    pub fn contains(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        self.seen.contains_key(id)
    }

    /// Record that the broker acknowledged `id` at `now`.
    pub fn record(&mut self, id: &str, now: Instant) {
        if self.window.is_zero() || self.capacity == 0 {
            return;
        }
        self.expire(now);
        if self.seen.contains_key(id) {
            return; // the first acknowledgement is what the broker's window counts from
        }
        while self.order.len() >= self.capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_less_the_margin() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(Duration::from_secs(60), 10);
        assert!(!r.contains("a", t0));
        r.record("a", t0);
        assert!(r.contains("a", t0 + Duration::from_secs(1)));
        assert!(r.contains("a", t0 + Duration::from_secs(54)));
        assert!(
            !r.contains("a", t0 + Duration::from_secs(55)),
            "expired at window - margin"
        );
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_repeat_does_not_restart_the_window() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(Duration::from_secs(60), 10);
        r.record("a", t0);
        r.record("a", t0 + Duration::from_secs(50));
        assert!(!r.contains("a", t0 + Duration::from_secs(56)));
    }

    #[test]
    fn bounded_oldest_first() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(Duration::from_secs(600), 3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            r.record(id, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(r.len(), 3);
        assert!(
            !r.contains("a", t0),
            "evicted: reported as published, which is still true"
        );
        assert!(r.contains("d", t0));
    }

    #[test]
    fn disabled_with_no_window() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(Duration::ZERO, 10);
        r.record("a", t0);
        assert!(!r.contains("a", t0));
        let mut r = RecentIds::new(Duration::from_secs(3), 10);
        r.record("a", t0);
        assert!(
            !r.contains("a", t0),
            "a window shorter than the margin remembers nothing"
        );
    }
}
