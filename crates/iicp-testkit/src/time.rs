//! Injected time and randomness for `iicp_client` under test: a sleeper that records
//! the back-off it was asked for and returns at once, and a random source that always
//! gives the same number (no jitter).

use std::time::Duration;

use iicp_client::time::{Random, SleepFuture, Sleeper};
use parking_lot::Mutex;

/// Records requested back-off sleeps and returns at once (injected into our client).
#[derive(Debug, Default)]
pub struct RecordingSleeper(Mutex<Vec<Duration>>);

impl RecordingSleeper {
    /// The sleeps requested so far, oldest first.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.0.lock().clone()
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> SleepFuture {
        self.0.lock().push(d);
        Box::pin(async {})
    }
}

/// A random source that always returns the same number (0.5 = no jitter).
#[derive(Debug, Clone, Copy)]
pub struct FixedRandom(pub f64);

impl Random for FixedRandom {
    fn next_f64(&self) -> f64 {
        self.0
    }
}
