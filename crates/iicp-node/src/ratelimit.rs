//! Per-origin / per-IP fixed-window rate limit on task submission (PROTOCOL.md §4.3
//! "per-origin rate limit", §19 T6, DESIGN §4.5). Bounded: at most `MAX_KEYS` keys are
//! tracked; beyond that, new keys share one overflow bucket.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

/// Most distinct keys tracked at once.
const MAX_KEYS: usize = 10_000;
const OVERFLOW: &str = "\u{0}overflow";

/// The limiter.
pub(crate) struct RateLimiter {
    limit: RateLimit,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request for `key`; `Err(wait)` when over the limit.
    pub(crate) fn check(&self, key: &str) -> Result<(), Duration> {
        if self.limit.max_requests == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let window = self.limit.window;
        let mut map = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(key) && map.len() >= MAX_KEYS {
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let key = if !map.contains_key(key) && map.len() >= MAX_KEYS {
            OVERFLOW
        } else {
            key
        };
        let slot = map.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(slot.0) >= window {
            *slot = (now, 0);
        }
        if slot.1 >= self.limit.max_requests {
            return Err(window.saturating_sub(now.duration_since(slot.0)));
        }
        slot.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn window() {
        let rl = RateLimiter::new(RateLimit {
            max_requests: 2,
            window: Duration::from_secs(60),
        });
        assert!(rl.check("a").is_ok());
        assert!(rl.check("a").is_ok());
        assert!(rl.check("b").is_ok());
        let wait = rl.check("a").expect_err("limited");
        assert_eq!(wait, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(rl.check("a").is_ok());
        let off = RateLimiter::new(RateLimit {
            max_requests: 0,
            window: Duration::from_secs(1),
        });
        for _ in 0..1000 {
            assert!(off.check("x").is_ok());
        }
    }
}
