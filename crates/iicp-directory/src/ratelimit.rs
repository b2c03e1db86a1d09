//! Sliding-window rate limiter keyed by source IP (PROTOCOL.md §8.2: more than 60
//! REGISTER per rolling 60 s per source → 429 `IICP-E034` with `retry_after`; §8.1
//! limits of `/v1/directory-key` and `/v1/consumer-token`).
//!
//! Memory is bounded: at most `max_keys` sources are tracked; when the table is full,
//! sources whose window has emptied are dropped first, then the stalest source.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// A rolling-window limiter: `limit` events per `window_ms` per key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: usize,
    window_ms: u64,
    max_keys: usize,
    hits: Mutex<HashMap<IpAddr, VecDeque<u64>>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: usize, window_ms: u64, max_keys: usize) -> Self {
        Self {
            limit: limit.max(1),
            window_ms: window_ms.max(1),
            max_keys: max_keys.max(1),
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event for `key` at `now_ms`. `Err(retry_after_ms)` when over the limit
    /// (the refused event is not recorded).
    pub(crate) fn check(&self, key: IpAddr, now_ms: u64) -> Result<(), u64> {
        let mut hits = self.hits.lock();
        // Events at or before `cutoff` are outside the window (none early in the epoch).
        let cutoff = now_ms.checked_sub(self.window_ms);
        let expired = |t: u64| cutoff.is_some_and(|c| t <= c);
        if !hits.contains_key(&key) && hits.len() >= self.max_keys {
            hits.retain(|_, q| q.back().is_some_and(|t| !expired(*t)));
            if hits.len() >= self.max_keys {
                let stalest = hits
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied().unwrap_or(0))
                    .map(|(k, _)| *k);
                if let Some(k) = stalest {
                    hits.remove(&k);
                }
            }
        }
        let q = hits.entry(key).or_default();
        while q.front().is_some_and(|t| expired(*t)) {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let oldest = q.front().copied().unwrap_or(now_ms);
            return Err(oldest
                .saturating_add(self.window_ms)
                .saturating_sub(now_ms)
                .max(1));
        }
        q.push_back(now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rolls() {
        let rl = RateLimiter::new(3, 1000, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for t in [0, 10, 20] {
            assert!(rl.check(ip, t).is_ok());
        }
        assert_eq!(rl.check(ip, 30), Err(970));
        assert!(rl.check(ip, 1001).is_ok());
        // bounded key table
        for i in 0..10u8 {
            let other = IpAddr::from([10, 0, 0, i]);
            assert!(rl.check(other, 2000).is_ok());
        }
        assert!(rl.hits.lock().len() <= 2);
    }
}
