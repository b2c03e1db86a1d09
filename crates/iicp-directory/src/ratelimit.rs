//! Sliding-window rate limiter keyed by source IP ([`iicp_proto::limit`]) (PROTOCOL.md §8.2: more than 60
//! REGISTER per rolling 60 s per source → 429 `IICP-E034` with `retry_after`; §8.1
//! limits of `/v1/directory-key` and `/v1/consumer-token`).
//!
//! Memory is bounded: at most `max_keys` sources are tracked; when the table is full,
//! sources whose window has emptied are dropped first, then the stalest source.

use std::net::IpAddr;
use std::time::Duration;

use iicp_proto::limit::SlidingWindow;
use parking_lot::Mutex;

/// A rolling-window limiter: `limit` events per `window_ms` per source address (the
/// workspace's [`SlidingWindow`], on the directory clock's milliseconds).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    window: Mutex<SlidingWindow<IpAddr>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: usize, window_ms: u64, max_keys: usize) -> Self {
        let limit = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
        Self {
            window: Mutex::new(SlidingWindow::new(
                limit,
                Duration::from_millis(window_ms.max(1)),
                max_keys,
            )),
        }
    }

    /// Records an event for `key` at `now_ms`. `Err(retry_after_ms)` when over the limit
    /// (the refused event is not recorded).
    pub(crate) fn check(&self, key: IpAddr, now_ms: u64) -> Result<(), u64> {
        self.window
            .lock()
            .check(&key, Duration::from_millis(now_ms))
            .map_err(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
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
        assert!(rl.window.lock().keys() <= 2);
    }
}
