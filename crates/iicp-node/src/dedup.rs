//! Duplicate task ids (PROTOCOL.md §7.2, §19 T21, DESIGN §4.7): an identical `task_id`
//! and body replays the cached terminal result without running the handler again; the
//! same id with a different body, or while the first is still running, is `conflict`.
//!
//! The store is bounded: finished entries expire after the TTL, and at capacity the
//! oldest finished entries are evicted first. Running entries are bounded by the number
//! of requests in the pipeline; if the store is full of them, the new request simply
//! goes unrecorded.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A finished task's answer, replayed to duplicates (plaintext; re-encrypted per
/// request when the duplicate asks for CX response encryption). The body is kept as
/// its JSON text: a store of 10 000 answers then holds their bytes, not trees of
/// `serde_json::Value` several times larger, and a replay clones a pointer.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) status: u16,
    pub(crate) body: Arc<str>,
    pub(crate) error_code: Option<String>,
    /// A lifecycle task's events (ADR 0013: its duplicates replay them).
    pub(crate) events: Option<Arc<[Arc<iicp_proto::lifecycle::Event>]>>,
}

enum State {
    Running,
    Done { at: Instant, reply: Cached },
}

struct Entry {
    fingerprint: [u8; 32],
    state: State,
    seq: u64,
}

/// What to do with a task id.
pub(crate) enum Begin {
    /// First sighting: run it; the ticket records the outcome.
    New(Ticket),
    /// Identical duplicate of a finished task.
    Replay(Cached),
    /// Same id, other body, or still running.
    Conflict,
    /// Not tracked (store full of running tasks).
    Untracked,
}

struct Inner {
    /// By task id; the id's one allocation is shared with the order and the ticket.
    entries: HashMap<Arc<str>, Entry>,
    /// (seq, task id) in insertion order, for expiry and eviction.
    order: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
    ttl: Duration,
    capacity: usize,
}

/// The bounded TTL store.
#[derive(Clone)]
pub(crate) struct Dedup {
    inner: Arc<Mutex<Inner>>,
}

impl Dedup {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                next_seq: 0,
                ttl,
                capacity,
            })),
        }
    }

    /// Looks up `task_id` with the body's `fingerprint`.
    pub(crate) fn begin(&self, task_id: &str, fingerprint: [u8; 32]) -> Begin {
        let mut g = self.inner.lock();
        if g.capacity == 0 {
            return Begin::Untracked;
        }
        let now = Instant::now();
        g.expire(now);
        let ttl = g.ttl;
        let expired = match g.entries.get(task_id) {
            Some(e) => match &e.state {
                State::Done { at, .. } if now.duration_since(*at) >= ttl => true,
                State::Done { reply, .. } if e.fingerprint == fingerprint => {
                    return Begin::Replay(reply.clone())
                }
                _ => return Begin::Conflict,
            },
            None => false,
        };
        if expired {
            // finished past its TTL but still queued behind a younger entry
            g.entries.remove(task_id);
        }
        if g.entries.len() >= g.capacity && !g.evict_one_done() {
            return Begin::Untracked;
        }
        let seq = g.next_seq;
        g.next_seq += 1;
        let task_id: Arc<str> = Arc::from(task_id);
        g.entries.insert(
            Arc::clone(&task_id),
            Entry {
                fingerprint,
                state: State::Running,
                seq,
            },
        );
        g.order.push_back((seq, Arc::clone(&task_id)));
        Begin::New(Ticket {
            store: self.clone(),
            task_id,
            seq,
            done: false,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

impl Inner {
    /// Drops expired entries from the front of the insertion order, and order records
    /// of entries that are gone. Amortised O(1) per request: the front stops at the
    /// first entry still running or still fresh (an entry finished behind it may outlive
    /// its TTL there; lookups treat it as expired), and the order is compacted when its
    /// records of forgotten entries outnumber the live ones.
    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        while let Some((seq, id)) = self.order.front() {
            match self.entries.get(id) {
                Some(e) if e.seq == *seq => match &e.state {
                    State::Done { at, .. } if now.duration_since(*at) >= ttl => {
                        let id = Arc::clone(id);
                        self.entries.remove(&id);
                        self.order.pop_front();
                    }
                    _ => break,
                },
                _ => {
                    self.order.pop_front();
                }
            }
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(seq, id)| entries.get(id).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Evicts the oldest finished entry (normally the front of the order).
    fn evict_one_done(&mut self) -> bool {
        let pos = self.order.iter().position(|(seq, id)| {
            self.entries
                .get(id)
                .is_some_and(|e| e.seq == *seq && matches!(e.state, State::Done { .. }))
        });
        match pos.and_then(|p| self.order.remove(p)) {
            Some((_, id)) => {
                self.entries.remove(&id);
                true
            }
            None => false,
        }
    }
}

/// A running task's entry. [`Ticket::finish`] caches the answer; dropping the ticket
/// without finishing forgets the id (the task was refused or abandoned, so a retry may
/// run it).
pub(crate) struct Ticket {
    store: Dedup,
    task_id: Arc<str>,
    seq: u64,
    done: bool,
}

impl Ticket {
    /// Records the terminal answer for replay.
    pub(crate) fn finish(mut self, reply: Cached) {
        let mut g = self.store.inner.lock();
        if let Some(e) = g.entries.get_mut(&self.task_id) {
            if e.seq == self.seq {
                e.state = State::Done {
                    at: Instant::now(),
                    reply,
                };
            }
        }
        self.done = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut g = self.store.inner.lock();
        if g.entries
            .get(&self.task_id)
            .is_some_and(|e| e.seq == self.seq)
        {
            g.entries.remove(&self.task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(n: u16) -> Cached {
        Cached {
            status: n,
            body: Arc::from(n.to_string()),
            error_code: None,
            events: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle() {
        let d = Dedup::new(Duration::from_secs(10), 2);
        let Begin::New(t) = d.begin("a", [1; 32]) else {
            panic!("new")
        };
        assert!(matches!(d.begin("a", [1; 32]), Begin::Conflict), "running");
        t.finish(cached(200));
        assert!(matches!(d.begin("a", [1; 32]), Begin::Replay(c) if c.status == 200));
        assert!(
            matches!(d.begin("a", [2; 32]), Begin::Conflict),
            "other body"
        );
        // a refused task is forgotten
        let Begin::New(t) = d.begin("b", [1; 32]) else {
            panic!("new")
        };
        drop(t);
        assert_eq!(d.len(), 1);
        // capacity: evicts the oldest finished entry
        let Begin::New(tb) = d.begin("b", [1; 32]) else {
            panic!("new")
        };
        let Begin::New(tc) = d.begin("c", [1; 32]) else {
            panic!("evicts a")
        };
        assert!(
            matches!(d.begin("d", [1; 32]), Begin::Untracked),
            "all running"
        );
        tb.finish(cached(1));
        tc.finish(cached(2));
        // expiry
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(d.begin("b", [9; 32]), Begin::New(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_behind_a_running_task() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let Begin::New(_running) = d.begin("slow", [1; 32]) else {
            panic!("new")
        };
        let Begin::New(t) = d.begin("fast", [1; 32]) else {
            panic!("new")
        };
        t.finish(cached(200));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(d.begin("fast", [2; 32]), Begin::New(_)));
        // refused tasks leave no unbounded trail in the order
        for i in 0..1000 {
            let Begin::New(t) = d.begin(&format!("r{i}"), [1; 32]) else {
                panic!("new")
            };
            drop(t);
        }
        let live = d.len();
        assert!(d.inner.lock().order.len() <= 2 * live + 65);
    }
}
