//! The clock, once for the workspace: wall time for the Unix times carried in messages
//! (token and ticket expiry, receipts, the directory's liveness windows, event
//! timestamps) and monotonic time for intervals (the client's breaker cool-downs).
//! The node, the directory and the client each take an `Arc<dyn Clock>`; tests pass a
//! [`ManualClock`]. tokio timers (deadlines, heartbeats) are controlled with
//! `tokio::time::pause` instead. The text forms of time are `iicp_proto::time`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall and monotonic time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time since the Unix epoch.
    fn unix_now(&self) -> Duration;

    /// Monotonic time, for intervals (default: [`Instant::now`]).
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.unix_now().as_millis()).unwrap_or(u64::MAX)
    }

    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> u64 {
        self.unix_now().as_secs()
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that moves only when told to (tests). [`ManualClock::advance`] moves wall
/// and monotonic time together; [`ManualClock::set_ms`] steps the wall clock only, as
/// a real clock step would. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    wall_ms: Arc<AtomicU64>,
    elapsed_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `unix_ms` milliseconds since the epoch.
    pub fn at_ms(unix_ms: u64) -> Self {
        Self {
            base: Instant::now(),
            wall_ms: Arc::new(AtomicU64::new(unix_ms)),
            elapsed_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A clock showing `unix_secs` seconds since the epoch.
    pub fn at(unix_secs: u64) -> Self {
        Self::at_ms(unix_secs.saturating_mul(1000))
    }

    /// A clock starting at the current system time.
    pub fn starting_now() -> Self {
        Self::at_ms(SystemClock.now_ms())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.elapsed_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Steps the wall clock to `unix_ms` (monotonic time does not move).
    pub fn set_ms(&self, unix_ms: u64) {
        self.wall_ms.store(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_now(&self) -> Duration {
        Duration::from_millis(self.wall_ms.load(Ordering::SeqCst))
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_wall_and_monotonic_time_together() {
        let c = ManualClock::at(1_000);
        let clone = c.clone();
        let t0 = c.now();
        assert_eq!(c.now_secs(), 1_000);
        clone.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 1_001_500);
        assert_eq!(c.now() - t0, Duration::from_millis(1_500));
        c.set_ms(2_000_000);
        assert_eq!(clone.now_secs(), 2_000);
        assert_eq!(
            c.now() - t0,
            Duration::from_millis(1_500),
            "a wall step is not elapsed time"
        );
        assert!(SystemClock.now_secs() > 1_700_000_000);
    }
}
