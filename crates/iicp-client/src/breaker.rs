//! Per-node circuit breaker (PROTOCOL.md §9.5, DESIGN §4.9): 5 consecutive failures
//! open it; 30 s later it is half-open and lets one probe through; the probe's success
//! closes it, its failure reopens it. Time is injected ([`Clock`]). The table is bounded.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::time::Clock;

/// Consecutive failures that open a node's breaker.
pub const FAILURE_THRESHOLD: u32 = 5;
/// How long an open breaker stays open before a probe is allowed.
pub const OPEN_FOR: Duration = Duration::from_secs(30);
/// Most nodes tracked; beyond it, the least recently failed closed entries are dropped.
const MAX_TRACKED: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct State {
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
    last_failure: Instant,
}

/// The breaker table of one client.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    nodes: Mutex<HashMap<String, State>>,
}

impl Breakers {
    /// Whether a request to `node` may go out now. In the half-open state this admits
    /// exactly one probe until its outcome is recorded.
    pub(crate) fn allow(&self, node: &str, clock: &dyn Clock) -> bool {
        let now = clock.now();
        let mut nodes = self.nodes.lock();
        let Some(state) = nodes.get_mut(node) else {
            return true;
        };
        match state.opened_at {
            None => true,
            Some(at) if now.saturating_duration_since(at) >= OPEN_FOR => {
                if state.probing {
                    false
                } else {
                    state.probing = true;
                    true
                }
            }
            Some(_) => false,
        }
    }

    /// Whether `node`'s breaker is open (not admitting requests) without claiming the
    /// half-open probe.
    pub(crate) fn is_open(&self, node: &str, clock: &dyn Clock) -> bool {
        let now = clock.now();
        let nodes = self.nodes.lock();
        match nodes
            .get(node)
            .and_then(|s| s.opened_at.map(|at| (at, s.probing)))
        {
            None => false,
            Some((at, probing)) => now.saturating_duration_since(at) < OPEN_FOR || probing,
        }
    }

    pub(crate) fn record_success(&self, node: &str) {
        self.nodes.lock().remove(node);
    }

    pub(crate) fn record_failure(&self, node: &str, clock: &dyn Clock) {
        let now = clock.now();
        let mut nodes = self.nodes.lock();
        if !nodes.contains_key(node) && nodes.len() >= MAX_TRACKED {
            evict(&mut nodes);
        }
        let state = nodes.entry(node.to_owned()).or_insert(State {
            failures: 0,
            opened_at: None,
            probing: false,
            last_failure: now,
        });
        state.failures = state.failures.saturating_add(1);
        state.last_failure = now;
        if state.probing {
            state.probing = false;
            state.opened_at = Some(now);
        } else if state.opened_at.is_none() && state.failures >= FAILURE_THRESHOLD {
            state.opened_at = Some(now);
            tracing::debug!(node = %crate::error::short_id(node), "circuit breaker opened");
        }
    }

    /// Releases a half-open probe whose outcome says nothing about the node's health.
    pub(crate) fn release_probe(&self, node: &str) {
        if let Some(state) = self.nodes.lock().get_mut(node) {
            state.probing = false;
        }
    }
}

fn evict(nodes: &mut HashMap<String, State>) {
    let victim = nodes
        .iter()
        .filter(|(_, s)| s.opened_at.is_none())
        .min_by_key(|(_, s)| s.last_failure)
        .or_else(|| nodes.iter().min_by_key(|(_, s)| s.last_failure))
        .map(|(k, _)| k.clone());
    if let Some(k) = victim {
        nodes.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iicp_transport::clock::ManualClock;

    #[test]
    fn opens_after_five_and_half_opens_after_thirty_seconds() {
        let clock = ManualClock::starting_now();
        let b = Breakers::default();
        for _ in 0..4 {
            b.record_failure("n", &clock);
        }
        assert!(b.allow("n", &clock));
        b.record_failure("n", &clock);
        assert!(!b.allow("n", &clock));
        assert!(b.is_open("n", &clock));
        clock.advance(Duration::from_secs(29));
        assert!(!b.allow("n", &clock));
        clock.advance(Duration::from_secs(1));
        assert!(b.allow("n", &clock), "one probe");
        assert!(!b.allow("n", &clock), "only one probe");
        b.record_failure("n", &clock);
        assert!(!b.allow("n", &clock), "reopened");
        clock.advance(OPEN_FOR);
        assert!(b.allow("n", &clock));
        b.record_success("n");
        assert!(b.allow("n", &clock));
        assert!(!b.is_open("n", &clock));
    }

    #[test]
    fn success_resets_the_count() {
        let clock = ManualClock::starting_now();
        let b = Breakers::default();
        for _ in 0..4 {
            b.record_failure("n", &clock);
        }
        b.record_success("n");
        for _ in 0..4 {
            b.record_failure("n", &clock);
        }
        assert!(b.allow("n", &clock));
    }

    #[test]
    fn bounded() {
        let clock = ManualClock::starting_now();
        let b = Breakers::default();
        for i in 0..(MAX_TRACKED + 10) {
            b.record_failure(&format!("n{i}"), &clock);
        }
        assert!(b.nodes.lock().len() <= MAX_TRACKED);
    }
}
