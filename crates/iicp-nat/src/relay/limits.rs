//! Pure bookkeeping of the relay's admission rules (PROTOCOL.md §14.1): the per-source
//! bind rate limit (default 30 binds per 60 s) and the one-use `jti` cache of bind
//! tickets. Both take the time as an argument and are bounded in size.

use std::collections::HashMap;

use iicp_proto::limit::SlidingWindow;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sliding-window limit of new binds per source address (the workspace's
/// [`SlidingWindow`], timed from the first bind it sees).
#[derive(Debug)]
pub(crate) struct BindRateLimiter {
    origin: Option<Instant>,
    window: SlidingWindow<IpAddr>,
}

impl BindRateLimiter {
    /// `limit` binds per `window` per source; 0 disables. At most `max_sources` sources
    /// are tracked (the idlest is dropped first when full).
    pub(crate) fn new(limit: u32, window: Duration, max_sources: usize) -> Self {
        Self {
            origin: None,
            window: SlidingWindow::new(limit, window, max_sources),
        }
    }

    /// Records a bind from `source` at `now`; `false` when over the limit.
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let origin = *self.origin.get_or_insert(now);
        let at = now.saturating_duration_since(origin);
        self.window.check(&source, at).is_ok()
    }
}

/// Consumed ticket ids until their expiry.
#[derive(Debug)]
pub(crate) struct JtiCache {
    cap: usize,
    seen: HashMap<String, u64>,
}

impl JtiCache {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            seen: HashMap::new(),
        }
    }

    /// Consumes `jti` (valid until `exp`, Unix seconds); `false` if it was already used.
    /// When the cache is full of unexpired ids, the one expiring first is dropped.
    pub(crate) fn consume(&mut self, jti: &str, exp: u64, now_unix: u64) -> bool {
        if self.seen.get(jti).is_some_and(|e| *e > now_unix) {
            return false;
        }
        if self.seen.len() >= self.cap {
            self.seen.retain(|_, e| *e > now_unix);
            if self.seen.len() >= self.cap {
                let first = self
                    .seen
                    .iter()
                    .min_by_key(|(_, e)| **e)
                    .map(|(k, _)| k.clone());
                if let Some(k) = first {
                    self.seen.remove(&k);
                }
            }
        }
        self.seen.insert(jti.to_owned(), exp);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_window() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut rl = BindRateLimiter::new(2, Duration::from_secs(60), 8);
        assert!(rl.allow(a, t0));
        assert!(rl.allow(a, t0 + Duration::from_secs(1)));
        assert!(!rl.allow(a, t0 + Duration::from_secs(2)));
        assert!(rl.allow(b, t0 + Duration::from_secs(2)));
        assert!(rl.allow(a, t0 + Duration::from_secs(60)));
        let mut off = BindRateLimiter::new(0, Duration::from_secs(60), 8);
        assert!((0..100).all(|_| off.allow(a, t0)));
        let mut small = BindRateLimiter::new(1, Duration::from_secs(60), 1);
        assert!(small.allow(a, t0));
        assert!(small.allow(b, t0));
        assert_eq!(small.window.keys(), 1);
    }

    #[test]
    fn jti_is_one_use_until_expiry() {
        let mut c = JtiCache::new(2);
        assert!(c.consume("a", 100, 10));
        assert!(!c.consume("a", 100, 50));
        assert!(c.consume("a", 200, 100)); // expired entry may be reused
        assert!(c.consume("b", 150, 100));
        assert!(c.consume("c", 300, 100)); // full: "b" (earliest expiry) dropped
        assert_eq!(c.seen.len(), 2);
        assert!(!c.consume("c", 300, 101));
    }
}
