//! Injected time and randomness, so retry back-off, the circuit breaker and the
//! selection profiles are deterministic under test (DESIGN §3 "injected time").
//!
//! Production uses [`SystemClock`], [`TokioSleeper`] and [`OsRandom`]; tests pass their
//! own implementations to [`ClientBuilder`](crate::ClientBuilder).

use std::fmt;
use std::time::Duration;

use rand_core::{OsRng, RngCore};

/// A boxed, sendable future returned by [`Sleeper::sleep`].
pub type SleepFuture = futures_util::future::BoxFuture<'static, ()>;

/// The clock (its monotonic [`Clock::now`] times the circuit breaker, the discovery
/// cache and the consumer-token cache): the workspace's one, from [`iicp_transport::clock`].
pub use iicp_transport::clock::{Clock, ManualClock, SystemClock};

/// Waits between retries (PROTOCOL.md §7.1 back-off).
pub trait Sleeper: Send + Sync + 'static {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> SleepFuture;
}

/// Uniform random numbers in `[0, 1)` for selection profiles and back-off jitter.
/// (Task ids, trace ids and CX keys always come from the operating system's CSPRNG.)
pub trait Random: Send + Sync + 'static {
    /// A uniform number in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

/// [`tokio::time::sleep`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> SleepFuture {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The operating system's random source.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn next_f64(&self) -> f64 {
        unit_f64(OsRng.next_u64())
    }
}

/// Maps 64 random bits to `[0, 1)` (53-bit precision).
pub(crate) fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Shared handles to the injected sources.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    pub(crate) sleeper: std::sync::Arc<dyn Sleeper>,
    pub(crate) random: std::sync::Arc<dyn Random>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Env")
    }
}

impl Default for Env {
    fn default() -> Self {
        Self {
            clock: std::sync::Arc::new(SystemClock),
            sleeper: std::sync::Arc::new(TokioSleeper),
            random: std::sync::Arc::new(OsRandom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_range() {
        assert_eq!(unit_f64(0), 0.0);
        assert!(unit_f64(u64::MAX) < 1.0);
        let r = OsRandom.next_f64();
        assert!((0.0..1.0).contains(&r));
    }
}
