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

/// How far ahead [`anchor_timers`] keeps its timer.
pub const TIMER_ANCHOR_PERIOD: Duration = Duration::from_secs(1);

/// Keeps one timer of the runtime at most [`TIMER_ANCHOR_PERIOD`] away, until `stop`.
///
/// tokio's time driver wakes its own thread — a write to its `eventfd`, so a system
/// call, and an `epoll_wait` that returns at once — for every timer registered earlier
/// than the earliest one it saw when it last parked, and, when it parked with no timer
/// at all, for every timer registered until it parks again. A server that finishes a
/// burst of requests, parks, then takes the next burst paid that for each request's
/// deadline timers: 1.9 extra system calls per task for a node at 64 concurrent tasks on
/// one native connection (`docs/PERFORMANCE.md`, issue 22). With this timer pending, a
/// deadline further away than [`TIMER_ANCHOR_PERIOD`] is never the earliest, and the
/// driver stays asleep; the price is one timer firing a second. [`Listener::serve`]
/// runs it.
///
/// [`Listener::serve`]: crate::listener::Listener::serve
pub async fn anchor_timers(stop: crate::shutdown::Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TIMER_ANCHOR_PERIOD) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_timer_anchor_runs_until_stopped() {
        let (trigger, stop) = crate::shutdown::channel();
        let anchor = tokio::spawn(anchor_timers(stop));
        tokio::time::sleep(TIMER_ANCHOR_PERIOD * 5 + Duration::from_millis(1)).await;
        assert!(!anchor.is_finished());
        trigger.fire();
        anchor.await.unwrap();
    }

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
