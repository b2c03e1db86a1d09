//! The workspace's one rate limiter: a sliding window of `limit` events per `window`
//! per key, bounded in memory. The node limits task submission per origin / source
//! (PROTOCOL.md §4.3, §19 T6), the directory REGISTER and token requests per source
//! (§8.2: 60 per rolling 60 s → 429 `IICP-E034`), the relay binds per source (§14.1).
//!
//! Pure: the caller passes the time, as a [`Duration`] since any fixed origin of its
//! choice (a monotonic `Instant` it keeps, or Unix time), and holds the lock.
//!
//! Memory: at most `max_keys` keys are tracked. A key keeps the times of its events in
//! the window, except that an event within `window / 256` of the key's newest one is
//! counted with it (stamped with the newer time): so a key holds at most 257 entries
//! whatever the limit, and the limiter is at most `window / 256` stricter than an exact
//! log (it never admits more). When a new key arrives at a full table, keys whose
//! window has emptied are dropped first, then the key idle longest.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

/// Entries a key keeps per window at most (besides the newest).
const SLOTS: u32 = 256;

/// One key's events in the window: `(newest time, count)` groups, oldest first.
#[derive(Debug, Default)]
struct Log {
    groups: VecDeque<(Duration, u32)>,
    total: u64,
}

/// A sliding-window limiter (see the module docs).
#[derive(Debug)]
pub struct SlidingWindow<K> {
    limit: u64,
    window: Duration,
    merge_within: Duration,
    max_keys: usize,
    logs: HashMap<K, Log>,
}

impl<K: Hash + Eq + Clone> SlidingWindow<K> {
    /// `limit` events per `window` per key (0: unlimited), at most `max_keys` keys.
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit: u64::from(limit),
            window,
            merge_within: window / SLOTS,
            max_keys: max_keys.max(1),
            logs: HashMap::new(),
        }
    }

    /// Counts an event of `key` at `now`; `Err(retry_after)` when the key is over the
    /// limit (a refused event is not counted). `retry_after` is at least 1 ms.
    pub fn check(&mut self, key: &K, now: Duration) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let window = self.window;
        let live = |t: &Duration| now.saturating_sub(*t) < window;
        if !self.logs.contains_key(key) && self.logs.len() >= self.max_keys {
            self.logs
                .retain(|_, log| log.groups.back().is_some_and(|(t, _)| live(t)));
            if self.logs.len() >= self.max_keys {
                let idlest = self
                    .logs
                    .iter()
                    .min_by_key(|(_, log)| log.groups.back().map(|(t, _)| *t))
                    .map(|(k, _)| k.clone());
                if let Some(k) = idlest {
                    self.logs.remove(&k);
                }
            }
        }
        let log = self.logs.entry(key.clone()).or_default();
        while let Some((t, n)) = log.groups.front().copied() {
            if live(&t) {
                break;
            }
            log.groups.pop_front();
            log.total -= u64::from(n);
        }
        if log.total >= self.limit {
            // the event may pass once enough of the oldest ones have left the window
            let mut leaving = log.total + 1 - self.limit;
            let mut until = now;
            for (t, n) in &log.groups {
                until = *t + window;
                leaving = leaving.saturating_sub(u64::from(*n));
                if leaving == 0 {
                    break;
                }
            }
            return Err(until.saturating_sub(now).max(Duration::from_millis(1)));
        }
        match log.groups.back_mut() {
            Some((t, n)) if now.saturating_sub(*t) < self.merge_within && now >= *t => {
                *t = now;
                *n += 1;
            }
            _ => log.groups.push_back((now, 1)),
        }
        log.total += 1;
        Ok(())
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.logs.len()
    }

    /// Entries kept for `key` (at most 257 whatever the limit).
    pub fn entries(&self, key: &K) -> usize {
        self.logs.get(key).map_or(0, |l| l.groups.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_window_slides() {
        let mut w = SlidingWindow::new(3, ms(1000), 8);
        for t in [0, 10, 20] {
            assert_eq!(w.check(&"a", ms(t)), Ok(()));
        }
        assert_eq!(w.check(&"a", ms(30)), Err(ms(970)));
        assert_eq!(w.check(&"b", ms(30)), Ok(()), "keys are independent");
        assert_eq!(w.check(&"a", ms(999)), Err(ms(1)));
        assert_eq!(
            w.check(&"a", ms(1000)),
            Ok(()),
            "the event at 0 left the window"
        );
        assert_eq!(w.check(&"a", ms(1001)), Err(ms(9)));
    }

    #[test]
    fn refused_events_do_not_count_and_zero_is_unlimited() {
        let mut w = SlidingWindow::new(1, ms(100), 8);
        assert!(w.check(&1, ms(0)).is_ok());
        for t in 1..50 {
            assert!(w.check(&1, ms(t)).is_err());
        }
        assert!(w.check(&1, ms(100)).is_ok());
        let mut free = SlidingWindow::new(0, ms(100), 1);
        for t in 0..1000 {
            assert!(free.check(&t, ms(0)).is_ok());
        }
        assert_eq!(free.keys(), 0);
    }

    #[test]
    fn memory_is_bounded_and_the_idlest_key_goes_first() {
        let mut w = SlidingWindow::new(2, ms(1000), 2);
        assert!(w.check(&"old", ms(0)).is_ok());
        assert!(w.check(&"new", ms(10)).is_ok());
        assert!(w.check(&"new", ms(11)).is_ok());
        // table full of live keys: "old" (idle since 0) is evicted for "third"
        assert!(w.check(&"third", ms(20)).is_ok());
        assert_eq!(w.keys(), 2);
        assert!(
            w.check(&"new", ms(21)).is_err(),
            "the busy key kept its window"
        );
        assert!(
            w.check(&"old", ms(22)).is_ok(),
            "the evicted key starts over"
        );
        // expired keys are dropped before live ones
        assert!(w.check(&"later", ms(5000)).is_ok());
        assert_eq!(w.keys(), 1);
        for k in 0..10_000 {
            let _ = w.check(&"spray", ms(6000 + k));
            assert!(w.keys() <= 2);
        }
    }

    #[test]
    fn a_large_limit_keeps_few_entries_and_never_admits_more() {
        let window = ms(60_000);
        let mut w = SlidingWindow::new(1_000_000, window, 4);
        let mut admitted = 0u64;
        // a million events spread over one window: one every 60 µs
        for i in 0..1_000_000u64 {
            if w.check(&"k", Duration::from_micros(i * 60)).is_ok() {
                admitted += 1;
            }
            assert!(w.entries(&"k") <= 257);
        }
        assert_eq!(admitted, 1_000_000);
        assert!(w.check(&"k", ms(59_999)).is_err(), "the window is full");
        // exact for events further apart than window / 256
        let mut small = SlidingWindow::new(2, ms(256_000), 1);
        assert!(small.check(&1, ms(0)).is_ok());
        assert!(small.check(&1, ms(1_000)).is_ok());
        assert_eq!(small.check(&1, ms(2_000)), Err(ms(254_000)));
        assert!(small.check(&1, ms(256_000)).is_ok());
    }
}
