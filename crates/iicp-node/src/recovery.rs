//! Supervised recovery (SEED-SDK.md §7 `classifyRecovery`; PROTOCOL.md §13.4): what a
//! node that runs unattended observes about itself, condensed into one state and the
//! action that would help, with the reason and since when it holds.
//!
//! The rules live in [`classify`], a pure function of [`Observations`]; the first rule
//! that matches wins:
//!
//! | state | when | action |
//! |---|---|---|
//! | `restart_recommended` | the listener stopped, or a background task of the node (directory agent, model check) ended, while the node was not stopping | `restart_self` |
//! | `backend_attention` | the backend's model list could not be read at the last check, or [`BACKEND_FAILURES`] tasks in a row failed in the backend | `backend_attention` |
//! | `directory_absent` | the node registers, but holds no registration, or the directory breaker is open, or [`DIRECTORY_FAILURES`] directory calls in a row failed | `reregister` |
//! | `limited_reach` | reachability found only a relay or the local network | `none` behind a relay (it works), `operator_endpoint_needed` when local only |
//! | `healthy` | otherwise | `none` |
//!
//! The node remembers since when the state holds; `Shared::recovery_now` gathers
//! the observations. The node reports it in
//! `/iicp/health`, the runtime-health snapshot and its heartbeats (`recovery_state`,
//! `recovery_action`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use iicp_proto::error::ErrorCode;
use parking_lot::Mutex;

/// Tasks failing in the backend in a row that need the operator's attention.
pub const BACKEND_FAILURES: u32 = 3;
/// Failed directory calls in a row after which the directory counts as absent.
pub const DIRECTORY_FAILURES: u32 = 3;

/// The recovery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryState {
    /// Nothing to do.
    Healthy,
    /// The backend (model server) is unreachable or failing tasks.
    BackendAttention,
    /// The directory does not hold the node (registration or heartbeats failing).
    DirectoryAbsent,
    /// Reachable only through a relay or on the local network.
    LimitedReach,
    /// The process cannot recover by itself: restart it.
    RestartRecommended,
}

impl RecoveryState {
    /// The wire and snapshot name (`healthy`, `backend_attention`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryState::Healthy => "healthy",
            RecoveryState::BackendAttention => "backend_attention",
            RecoveryState::DirectoryAbsent => "directory_absent",
            RecoveryState::LimitedReach => "limited_reach",
            RecoveryState::RestartRecommended => "restart_recommended",
        }
    }
}

/// What would help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryAction {
    /// Nothing.
    None,
    /// The operator should look at the model server.
    BackendAttention,
    /// Register again (the node retries by itself).
    Reregister,
    /// The operator should give the node a public endpoint (port forward, tunnel).
    OperatorEndpointNeeded,
    /// Restart the process (a supervisor does: systemd `Restart=on-failure`).
    RestartSelf,
}

impl RecoveryAction {
    /// The wire name (`none`, `reregister`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryAction::None => "none",
            RecoveryAction::BackendAttention => "backend_attention",
            RecoveryAction::Reregister => "reregister",
            RecoveryAction::OperatorEndpointNeeded => "operator_endpoint_needed",
            RecoveryAction::RestartSelf => "restart_self",
        }
    }
}

/// How the node is reached, as far as recovery cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reach {
    /// Directly, or reachability was not planned (the endpoint as configured).
    #[default]
    Direct,
    /// Through a relay only.
    Relay,
    /// On the local network only.
    LocalOnly,
}

/// What the node observes about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observations {
    /// The listener task ended while the node was not stopping.
    pub listener_dead: bool,
    /// Background tasks (directory agent, model check) that ended while the node was
    /// not stopping (a panic).
    pub tasks_died: u32,
    /// The last read of the backend's model list: `Some(false)` when it failed,
    /// `None` when never read.
    pub backend_reachable: Option<bool>,
    /// Tasks in a row that failed in the backend (a success resets it).
    pub backend_failures: u32,
    /// Whether the node is meant to register with a directory.
    pub registers: bool,
    /// Whether it holds a registration (a node token).
    pub registered: bool,
    /// Directory calls in a row that failed.
    pub directory_failures: u32,
    /// Whether the directory circuit breaker is open.
    pub breaker_open: bool,
    /// How the node is reached.
    pub reach: Reach,
}

/// The state, the action and why.
pub fn classify(o: &Observations) -> (RecoveryState, RecoveryAction, String) {
    use RecoveryAction as A;
    use RecoveryState as S;
    if o.listener_dead {
        return (
            S::RestartRecommended,
            A::RestartSelf,
            "the listener stopped: no task can reach the node".into(),
        );
    }
    if o.tasks_died > 0 {
        return (
            S::RestartRecommended,
            A::RestartSelf,
            format!("{} background task(s) of the node stopped", o.tasks_died),
        );
    }
    if o.backend_reachable == Some(false) {
        return (
            S::BackendAttention,
            A::BackendAttention,
            "the backend's model list cannot be read".into(),
        );
    }
    if o.backend_failures >= BACKEND_FAILURES {
        return (
            S::BackendAttention,
            A::BackendAttention,
            format!(
                "{} tasks in a row failed in the backend",
                o.backend_failures
            ),
        );
    }
    if o.registers {
        let reason = if o.breaker_open {
            Some("the directory is unreachable (circuit breaker open)".to_owned())
        } else if o.directory_failures >= DIRECTORY_FAILURES {
            Some(format!(
                "{} directory calls in a row failed",
                o.directory_failures
            ))
        } else if !o.registered {
            Some("not registered with the directory".to_owned())
        } else {
            None
        };
        if let Some(reason) = reason {
            return (S::DirectoryAbsent, A::Reregister, reason);
        }
    }
    match o.reach {
        Reach::Relay => (
            S::LimitedReach,
            A::None,
            "reachable through a relay only".into(),
        ),
        Reach::LocalOnly => (
            S::LimitedReach,
            A::OperatorEndpointNeeded,
            "reachable on the local network only".into(),
        ),
        Reach::Direct => (S::Healthy, A::None, String::new()),
    }
}

/// A recovery verdict with the time its state began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The state.
    pub state: RecoveryState,
    /// The action that would help.
    pub action: RecoveryAction,
    /// Why (empty when healthy).
    pub reason: String,
    /// Since when the state holds (Unix milliseconds).
    pub since_unix_ms: u64,
}

impl Recovery {
    /// `{state, action, reason, since}` (`since` ISO-8601 UTC).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state.as_str(),
            "action": self.action.as_str(),
            "reason": self.reason,
            "since": crate::event::iso8601_millis(std::time::Duration::from_millis(self.since_unix_ms)),
        })
    }
}

/// What the node's parts report for recovery (held in the shared state).
#[derive(Debug, Default)]
pub(crate) struct Signals {
    pub(crate) tracker: Tracker,
    /// The directory agent runs (the node means to be registered).
    pub(crate) registering: AtomicBool,
    pub(crate) listener_dead: AtomicBool,
    pub(crate) tasks_died: AtomicU32,
    pub(crate) backend_failures: AtomicU32,
    /// The last model-list read: 0 never, 1 ok, 2 failed.
    backend_read: AtomicU8,
}

impl Signals {
    /// A task succeeded: the backend answers.
    pub(crate) fn task_succeeded(&self) {
        self.backend_failures.store(0, Ordering::Relaxed);
    }

    /// A task failed with `code`: counted when the backend failed (502, 503, 504), not
    /// for the caller's mistakes or cancellations.
    pub(crate) fn task_failed(&self, code: &ErrorCode) {
        if matches!(
            code,
            ErrorCode::BackendError | ErrorCode::TemporarilyUnavailable | ErrorCode::TaskTimeout
        ) {
            self.backend_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The backend's model list was read (or not).
    pub(crate) fn backend_read(&self, ok: bool) {
        self.backend_read
            .store(if ok { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// The last model-list read: `None` never read.
    pub(crate) fn backend_reachable(&self) -> Option<bool> {
        match self.backend_read.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// Remembers the last state and since when it holds.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    last: Mutex<Option<(RecoveryState, u64)>>,
}

impl Tracker {
    /// Classifies `o` at `now_unix_ms`; `since` moves only when the state changes.
    pub(crate) fn observe(&self, o: &Observations, now_unix_ms: u64) -> Recovery {
        let (state, action, reason) = classify(o);
        let mut last = self.last.lock();
        let since = match *last {
            Some((s, since)) if s == state => since,
            _ => {
                *last = Some((state, now_unix_ms));
                now_unix_ms
            }
        };
        Recovery {
            state,
            action,
            reason,
            since_unix_ms: since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Observations {
        Observations {
            backend_reachable: Some(true),
            registers: true,
            registered: true,
            ..Observations::default()
        }
    }

    fn state(o: Observations) -> (&'static str, &'static str) {
        let (s, a, _) = classify(&o);
        (s.as_str(), a.as_str())
    }

    #[test]
    fn each_rule_and_its_action() {
        assert_eq!(state(healthy()), ("healthy", "none"));
        // a node without a directory is not absent from one
        assert_eq!(
            state(Observations {
                registers: false,
                registered: false,
                ..healthy()
            }),
            ("healthy", "none")
        );
        assert_eq!(
            state(Observations {
                listener_dead: true,
                ..healthy()
            }),
            ("restart_recommended", "restart_self")
        );
        assert_eq!(
            state(Observations {
                tasks_died: 1,
                ..healthy()
            }),
            ("restart_recommended", "restart_self")
        );
        assert_eq!(
            state(Observations {
                backend_reachable: Some(false),
                ..healthy()
            }),
            ("backend_attention", "backend_attention")
        );
        assert_eq!(
            state(Observations {
                backend_failures: BACKEND_FAILURES,
                ..healthy()
            }),
            ("backend_attention", "backend_attention")
        );
        assert_eq!(
            state(Observations {
                backend_failures: BACKEND_FAILURES - 1,
                ..healthy()
            }),
            ("healthy", "none")
        );
        for o in [
            Observations {
                registered: false,
                ..healthy()
            },
            Observations {
                breaker_open: true,
                ..healthy()
            },
            Observations {
                directory_failures: DIRECTORY_FAILURES,
                ..healthy()
            },
        ] {
            assert_eq!(state(o), ("directory_absent", "reregister"), "{o:?}");
        }
        assert_eq!(
            state(Observations {
                reach: Reach::Relay,
                ..healthy()
            }),
            ("limited_reach", "none")
        );
        assert_eq!(
            state(Observations {
                reach: Reach::LocalOnly,
                ..healthy()
            }),
            ("limited_reach", "operator_endpoint_needed")
        );
    }

    #[test]
    fn the_most_serious_state_wins() {
        let everything = Observations {
            listener_dead: true,
            backend_reachable: Some(false),
            registered: false,
            reach: Reach::LocalOnly,
            ..healthy()
        };
        assert_eq!(state(everything).0, "restart_recommended");
        let o = Observations {
            listener_dead: false,
            ..everything
        };
        assert_eq!(state(o).0, "backend_attention");
        let o = Observations {
            backend_reachable: None, // never read: no evidence against the backend
            ..o
        };
        assert_eq!(state(o).0, "directory_absent");
        let o = Observations {
            registered: true,
            ..o
        };
        assert_eq!(state(o).0, "limited_reach");
    }

    #[test]
    fn only_backend_faults_count_and_a_success_resets_them() {
        let s = Signals::default();
        s.task_failed(&ErrorCode::ValidationError);
        s.task_failed(&ErrorCode::Unauthorized);
        assert_eq!(s.backend_failures.load(Ordering::Relaxed), 0);
        s.task_failed(&ErrorCode::BackendError);
        s.task_failed(&ErrorCode::TaskTimeout);
        s.task_failed(&ErrorCode::TemporarilyUnavailable);
        assert_eq!(s.backend_failures.load(Ordering::Relaxed), 3);
        s.task_succeeded();
        assert_eq!(s.backend_failures.load(Ordering::Relaxed), 0);
        assert_eq!(s.backend_reachable(), None);
        s.backend_read(false);
        assert_eq!(s.backend_reachable(), Some(false));
        s.backend_read(true);
        assert_eq!(s.backend_reachable(), Some(true));
    }

    #[test]
    fn since_moves_only_when_the_state_changes() {
        let t = Tracker::default();
        let bad = Observations {
            backend_failures: 5,
            ..healthy()
        };
        assert_eq!(t.observe(&healthy(), 1_000).since_unix_ms, 1_000);
        assert_eq!(t.observe(&healthy(), 2_000).since_unix_ms, 1_000);
        let r = t.observe(&bad, 3_000);
        assert_eq!(
            (r.state, r.since_unix_ms),
            (RecoveryState::BackendAttention, 3_000)
        );
        assert_eq!(r.reason, "5 tasks in a row failed in the backend");
        assert_eq!(t.observe(&bad, 4_000).since_unix_ms, 3_000);
        assert_eq!(t.observe(&healthy(), 5_000).since_unix_ms, 5_000);
        let j = t.observe(&healthy(), 6_000).to_json();
        assert_eq!(j["state"], "healthy");
        assert_eq!(j["since"], "1970-01-01T00:00:05.000Z");
    }
}
