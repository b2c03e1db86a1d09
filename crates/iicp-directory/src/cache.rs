//! The discover result cache: the ranked, rendered node list of a DISCOVER query, kept
//! for a short time so that a busy directory scores its nodes once per query and
//! interval instead of once per request (PROTOCOL.md §8.4; the response already tells
//! clients and proxies they may cache it for 5 s, `Cache-Control: max-age=5`).
//!
//! An entry is used while both hold:
//! * it is younger than [`MAX_AGE_MS`] by the directory clock — load, capacity and
//!   reputation, which heartbeats change all the time, are at most that stale; up to
//!   [`STALE_MS`] old it is still served while one request recomputes it (so a busy
//!   query never waits for its refresh);
//! * no change of the node set since it was computed: registration, deregistration,
//!   removal, rename, and any state update that changes whether a node can be
//!   returned at all (availability, probe verdict, probation, freshness) bump a
//!   generation counter that invalidates every entry at once.
//!
//! Computing a missing entry is single-flight per query (sharded locks): concurrent
//! requests for it wait for the one computation instead of repeating it.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::store::NodeState;

/// Age up to which a cached result is served as is.
pub(crate) const MAX_AGE_MS: u64 = 1_000;
/// Age up to which a cached result is served while it is being refreshed.
pub(crate) const STALE_MS: u64 = 2_000;
/// Locks for single-flight computation, by hash of the query.
const LOCK_SHARDS: usize = 16;
/// Most distinct queries kept; when full, the cache starts over.
const MAX_ENTRIES: usize = 512;

/// One cached result: the whole response body, rendered once with `query_ms` 0 (a
/// cache hit takes well under a millisecond, so it is served as is, shared, without a
/// copy); for any other value the digits replace the `0` at `body[split]`.
#[derive(Debug)]
pub(crate) struct Cached {
    generation: u64,
    at_ms: u64,
    /// The body, with `"query_ms":0`.
    pub(crate) body: Bytes,
    /// Where the `0` of `query_ms` is; `None`: the body is always served as is.
    pub(crate) split: Option<usize>,
    /// The `view=public` rendering.
    pub(crate) public: bool,
}

impl Cached {
    /// The body with `query_ms` spliced in.
    pub(crate) fn body_with(&self, query_ms: u64) -> Bytes {
        let Some(at) = self
            .split
            .filter(|at| *at < self.body.len() && query_ms != 0)
        else {
            return self.body.clone();
        };
        let ms = query_ms.to_string();
        let mut out = Vec::with_capacity(self.body.len() + ms.len());
        out.extend_from_slice(&self.body[..at]);
        out.extend_from_slice(ms.as_bytes());
        out.extend_from_slice(&self.body[at + 1..]);
        out.into()
    }
}

/// What the cache has for a query.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Serve it.
    Fresh(Arc<Cached>),
    /// Serve it, and refresh it.
    Stale(Arc<Cached>),
    /// Compute it.
    Miss,
}

/// Cached discover results by query.
#[derive(Debug)]
pub(crate) struct DiscoverCache {
    generation: AtomicU64,
    entries: Mutex<HashMap<String, Arc<Cached>>>,
    locks: Vec<Arc<tokio::sync::Mutex<()>>>,
}

impl Default for DiscoverCache {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
            locks: (0..LOCK_SHARDS)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        }
    }
}

impl DiscoverCache {
    /// The node set changed: nothing cached so far may be served again.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The current generation, read before computing a result to be stored.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// What is cached for `query` at `now_ms`.
    pub(crate) fn lookup(&self, query: &str, now_ms: u64) -> Lookup {
        let generation = self.generation();
        let entries = self.entries.lock();
        let Some(hit) = entries
            .get(query)
            .filter(|h| h.generation == generation && now_ms >= h.at_ms)
        else {
            return Lookup::Miss;
        };
        match now_ms - hit.at_ms {
            age if age < MAX_AGE_MS => Lookup::Fresh(Arc::clone(hit)),
            age if age < STALE_MS => Lookup::Stale(Arc::clone(hit)),
            _ => Lookup::Miss,
        }
    }

    /// The lock that makes computing `query` single-flight.
    pub(crate) fn compute_lock(&self, query: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        query.hash(&mut h);
        let shard = usize::try_from(h.finish() % LOCK_SHARDS as u64).unwrap_or(0);
        Arc::clone(&self.locks[shard])
    }

    /// Stores a result computed at `now_ms` from the node set of `generation` (read
    /// before the computation started) and returns it. A result computed across an
    /// invalidation is stored but never served.
    pub(crate) fn put(
        &self,
        query: String,
        generation: u64,
        now_ms: u64,
        body: Vec<u8>,
        split: Option<usize>,
        public: bool,
    ) -> Arc<Cached> {
        let entry = Arc::new(Cached {
            generation,
            at_ms: now_ms,
            body: body.into(),
            split,
            public,
        });
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&query) {
            entries.clear();
        }
        entries.insert(query, Arc::clone(&entry));
        entry
    }
}

/// Whether replacing `old` by `new` can change which queries return the node (as
/// opposed to its rank or the figures shown for it).
pub(crate) fn changes_eligibility(
    old: &NodeState,
    new: &NodeState,
    liveness_window_ms: u64,
    probation_tasks: u64,
) -> bool {
    let done = |s: &NodeState| s.tasks_success.max(s.receipts) >= probation_tasks;
    let fresh_gap = new.last_seen_ms.saturating_sub(old.last_seen_ms) > liveness_window_ms;
    old.available != new.available
        || old.probe.verified != new.probe.verified
        || done(old) != done(new)
        || old.operator_pub != new.operator_pub
        || fresh_gap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &DiscoverCache, q: &str, now: u64) {
        c.put(q.into(), c.generation(), now, b"{}".to_vec(), None, false);
    }

    fn fresh(c: &DiscoverCache, q: &str, now: u64) -> bool {
        matches!(c.lookup(q, now), Lookup::Fresh(_))
    }

    fn miss(c: &DiscoverCache, q: &str, now: u64) -> bool {
        matches!(c.lookup(q, now), Lookup::Miss)
    }

    #[test]
    fn an_entry_turns_stale_then_expires() {
        let c = DiscoverCache::default();
        put(&c, "intent=a", 10_000);
        assert!(fresh(&c, "intent=a", 10_000));
        assert!(fresh(&c, "intent=a", 10_000 + MAX_AGE_MS - 1));
        for age in [MAX_AGE_MS, STALE_MS - 1] {
            assert!(matches!(
                c.lookup("intent=a", 10_000 + age),
                Lookup::Stale(_)
            ));
        }
        assert!(miss(&c, "intent=a", 10_000 + STALE_MS));
        // a clock that went backwards does not serve from the future
        assert!(miss(&c, "intent=a", 9_999));
        assert!(miss(&c, "intent=b", 10_000));
    }

    #[test]
    fn invalidation_drops_every_entry() {
        let c = DiscoverCache::default();
        put(&c, "intent=a", 1);
        put(&c, "intent=b", 1);
        c.invalidate();
        // not even stale: the node set changed
        assert!(miss(&c, "intent=a", 1));
        assert!(miss(&c, "intent=b", MAX_AGE_MS + 1));
        put(&c, "intent=a", 1);
        assert!(fresh(&c, "intent=a", 1));
    }

    #[test]
    fn a_result_computed_before_an_invalidation_is_not_served() {
        let c = DiscoverCache::default();
        let generation = c.generation();
        c.invalidate(); // a registration lands while the result is computed
        c.put(
            "intent=a".into(),
            generation,
            1,
            b"{}".to_vec(),
            None,
            false,
        );
        assert!(miss(&c, "intent=a", 1));
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = DiscoverCache::default();
        for i in 0..(MAX_ENTRIES + 10) {
            put(&c, &format!("q{i}"), 1);
        }
        let len = c.entries.lock().len();
        assert!(len <= MAX_ENTRIES, "{len}");
        assert!(fresh(&c, &format!("q{}", MAX_ENTRIES + 9), 1));
        // one lock per query, whatever its shard
        assert!(Arc::ptr_eq(&c.compute_lock("q1"), &c.compute_lock("q1")));
    }

    #[test]
    fn query_ms_is_spliced_into_the_cached_body() {
        let c = DiscoverCache::default();
        let body = br#"{"nodes":[],"query_ms":0,"x":1}"#.to_vec();
        let hit = c.put("q".into(), c.generation(), 1, body, Some(23), false);
        assert_eq!(
            hit.body_with(17),
            &br#"{"nodes":[],"query_ms":17,"x":1}"#[..]
        );
        assert_eq!(hit.body_with(0), &br#"{"nodes":[],"query_ms":0,"x":1}"#[..]);
        let whole = c.put("r".into(), c.generation(), 1, b"{}".to_vec(), None, false);
        assert_eq!(whole.body_with(17), &b"{}"[..]);
    }

    #[test]
    fn only_eligibility_changes_count() {
        let old = NodeState::new(1_000);
        let mut new = NodeState {
            last_seen_ms: 31_000,
            load: Some(0.9),
            active_jobs: 3,
            reputation: 0.2,
            ..old.clone()
        };
        assert!(!changes_eligibility(&old, &new, 90_000, 10));
        new.available = false;
        assert!(changes_eligibility(&old, &new, 90_000, 10));
        new.available = true;
        new.tasks_success = 10;
        assert!(changes_eligibility(&old, &new, 90_000, 10));
        new.tasks_success = 0;
        new.probe.verified = true;
        assert!(changes_eligibility(&old, &new, 90_000, 10));
        new.probe.verified = false;
        new.last_seen_ms = 200_000; // back after being stale
        assert!(changes_eligibility(&old, &new, 90_000, 10));
    }
}
