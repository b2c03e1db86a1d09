//! The workspace's one rate limiter: a sliding window of `limit` events per `window`
//! per key, bounded in memory. The node limits task submission per origin / source
//! (PROTOCOL.md §4.3, §19 T6), the directory REGISTER and token requests per source
//! (§8.2: 60 per rolling 60 s → 429 `IICP-E034`), the relay binds per source (§14.1).
//!
//! Pure: the caller passes the time, as a [`Duration`] since any fixed origin of its
//! choice (a monotonic `Instant` it keeps, or Unix time), and holds the lock.
//!
//! Memory: at most `max_keys` keys are tracked and each keeps at most `limit` times.
//! When a new key arrives at a full table, keys whose window has emptied are dropped
//! first, then the key idle longest.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

/// A sliding-window limiter (see the module docs).
#[derive(Debug)]
pub struct SlidingWindow<K> {
    limit: usize,
    window: Duration,
    max_keys: usize,
    hits: HashMap<K, VecDeque<Duration>>,
}

impl<K: Hash + Eq + Clone> SlidingWindow<K> {
    /// `limit` events per `window` per key (0: unlimited), at most `max_keys` keys.
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            window,
            max_keys: max_keys.max(1),
            hits: HashMap::new(),
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
        if !self.hits.contains_key(key) && self.hits.len() >= self.max_keys {
            self.hits.retain(|_, q| q.back().is_some_and(live));
            if self.hits.len() >= self.max_keys {
                let idlest = self
                    .hits
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(k) = idlest {
                    self.hits.remove(&k);
                }
            }
        }
        let q = self.hits.entry(key.clone()).or_default();
        while q.front().is_some_and(|t| !live(t)) {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let oldest = q.front().copied().unwrap_or(now);
            let retry = (oldest + window).saturating_sub(now);
            return Err(retry.max(Duration::from_millis(1)));
        }
        q.push_back(now);
        Ok(())
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.hits.len()
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
}
