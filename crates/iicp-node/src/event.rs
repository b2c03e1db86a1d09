//! Lifecycle events of a node, for operators' event logs (SEED-SDK.md §2.2
//! `--log-dir`: `register_ok`, `register_fail`, `serve_start`, `deregister_ok`,
//! `deregister_fail`; ours: `directory_unavailable`, `directory_recovered` for the
//! directory circuit breaker, ADR 0009; `node_token_changed` for whoever persists the
//! node token).
//!
//! [`Node::subscribe`](crate::Node::subscribe) hands out a receiver of a bounded
//! broadcast channel ([`EVENT_CAPACITY`] events); a receiver that falls behind loses the
//! oldest events (it sees `RecvError::Lagged`), the node never waits for it. Events carry
//! no secrets: no tokens, keys or request bodies, only ids, URLs, statuses and error
//! messages (which never contain secrets either).

use std::net::SocketAddr;
use std::time::Duration;

/// Events buffered per receiver before the oldest are dropped.
pub const EVENT_CAPACITY: usize = 64;

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeEvent {
    /// When it happened (the node's clock), milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The node id at that moment (assigned by the directory at the first registration
    /// when none was configured).
    pub node_id: Option<String>,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The directory accepted a REGISTER (`register_ok`).
    Registered {
        /// The directory base URL.
        directory_url: Option<String>,
        /// The endpoint registered.
        endpoint: String,
        /// Whether an operator delegation was sent.
        operated: bool,
    },
    /// A REGISTER failed (`register_fail`); the node retries with backoff.
    RegisterFailed {
        /// The directory base URL.
        directory_url: Option<String>,
        /// The HTTP status, when the directory answered.
        status: Option<u16>,
        /// Whether trying again later may succeed.
        retryable: bool,
        /// The error, one line.
        error: String,
        /// The directory's error code (`IICP-E050`), when it answered with one.
        code: Option<String>,
        /// The directory's message (one bounded line, scrubbed of the node's secrets).
        message: Option<String>,
    },
    /// Directory calls failed `failures` times in a row: the circuit breaker opened and
    /// no directory call is made for `retry_in` (`directory_unavailable`, ADR 0009).
    /// Announced when the breaker opens, not at each failed probe.
    DirectoryUnavailable {
        /// The directory base URL.
        directory_url: Option<String>,
        /// Failures in a row.
        failures: u32,
        /// Until the next directory call.
        retry_in: Duration,
        /// The last error, one line.
        error: String,
    },
    /// A directory call succeeded after the breaker had opened (`directory_recovered`).
    DirectoryRecovered {
        /// The directory base URL.
        directory_url: Option<String>,
        /// Failures in a row before this success.
        after_failures: u32,
    },
    /// The node listens and serves (`serve_start`).
    Serving {
        /// The bound address.
        addr: SocketAddr,
        /// The advertised endpoint.
        endpoint: String,
        /// Whether native IICP is served on the same port.
        native: bool,
    },
    /// Reachability was planned again and what the node advertises changed
    /// (`reachability_changed`): a relay that appeared, a mapping that was lost, a route
    /// that went away.
    ReachabilityChanged {
        /// The tier now (`0`, `1a`, `1b`, `1c`, `3`, `4`).
        tier: String,
        /// The endpoint now advertised, if any.
        endpoint: Option<String>,
        /// Whether the node registers it (false: no public route, withdrawn).
        registers: bool,
    },
    /// The node token held changed (`node_token_changed`): issued at registration,
    /// replaced, set by [`Node::set_node_token`](crate::Node::set_node_token), or
    /// cleared at deregistration. It carries no token: whoever persists the token reads
    /// it with [`Node::node_token`](crate::Node::node_token).
    NodeTokenChanged {
        /// Whether a token is held now.
        held: bool,
    },
    /// The node deregistered (`deregister_ok`).
    Deregistered {
        /// The directory base URL.
        directory_url: Option<String>,
    },
    /// Deregistration failed (`deregister_fail`).
    DeregisterFailed {
        /// The directory base URL.
        directory_url: Option<String>,
        /// The HTTP status, when the directory answered.
        status: Option<u16>,
        /// The error, one line.
        error: String,
    },
}

impl NodeEvent {
    /// [`NodeEvent::at_unix_ms`] as ISO-8601 UTC with milliseconds
    /// (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
    pub fn timestamp(&self) -> String {
        iso8601_millis(Duration::from_millis(self.at_unix_ms))
    }
}

pub use iicp_proto::time::iso8601_millis;

impl EventKind {
    /// The event name used in event logs (`register_ok`, …).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Registered { .. } => "register_ok",
            EventKind::RegisterFailed { .. } => "register_fail",
            EventKind::Serving { .. } => "serve_start",
            EventKind::Deregistered { .. } => "deregister_ok",
            EventKind::DeregisterFailed { .. } => "deregister_fail",
            EventKind::DirectoryUnavailable { .. } => "directory_unavailable",
            EventKind::DirectoryRecovered { .. } => "directory_recovered",
            EventKind::ReachabilityChanged { .. } => "reachability_changed",
            EventKind::NodeTokenChanged { .. } => "node_token_changed",
        }
    }
}

/// The status of a failed node operation, when a directory answered.
pub(crate) fn status_of(e: &crate::Error) -> Option<u16> {
    match e {
        crate::Error::Directory(d) => d.status_code(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use iicp_proto::crypto::token::DirectoryPublicKey;
    use iicp_proto::directory::{
        HeartbeatRequest, HeartbeatResponse, RegisterAck, RegisterRequest,
    };
    use iicp_proto::secret::Secret;

    use super::*;
    use crate::directory::{DirectoryApi, DirectoryError};
    use crate::handler::BoxFuture;
    use crate::{EchoModel, Node, ServeOptions};

    /// A directory that fails while `down` is set.
    #[derive(Debug, Default)]
    struct Flaky {
        down: AtomicBool,
    }

    impl Flaky {
        fn check(&self, op: &'static str) -> Result<(), DirectoryError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(DirectoryError::status(op, 503, None));
            }
            Ok(())
        }
    }

    impl DirectoryApi for Flaky {
        fn register(
            &self,
            _: &RegisterRequest,
        ) -> BoxFuture<'static, Result<RegisterAck, DirectoryError>> {
            let r = self.check("register").map(|()| RegisterAck {
                node_id: "node-1".into(),
                node_token: Some(Secret::new("tok-secret")),
                ..RegisterAck::default()
            });
            Box::pin(async move { r })
        }

        fn heartbeat(
            &self,
            _: &Secret,
            _: &HeartbeatRequest,
        ) -> BoxFuture<'static, Result<HeartbeatResponse, DirectoryError>> {
            Box::pin(async { Err(DirectoryError::unsupported("heartbeat")) })
        }

        fn deregister(
            &self,
            _: &Secret,
            _: &str,
        ) -> BoxFuture<'static, Result<(), DirectoryError>> {
            let r = self.check("deregister");
            Box::pin(async move { r })
        }

        fn directory_key(
            &self,
        ) -> BoxFuture<'static, Result<Option<DirectoryPublicKey>, DirectoryError>> {
            Box::pin(async { Ok(None) })
        }
    }

    #[tokio::test]
    async fn registration_serving_and_deregistration_are_announced() {
        let dir = Arc::new(Flaky::default());
        let node = Node::builder()
            .endpoint("http://127.0.0.1:9484")
            .intent("urn:iicp:intent:llm:chat:v1")
            .model("m")
            .directory(dir.clone())
            .build()
            .expect("node");
        let mut rx = node.subscribe();

        dir.down.store(true, Ordering::Relaxed);
        assert!(node.register().await.is_err());
        let ev = rx.try_recv().expect("register_fail");
        assert_eq!(ev.kind.name(), "register_fail");
        assert!(matches!(
            ev.kind,
            EventKind::RegisterFailed {
                status: Some(503),
                retryable: true,
                ..
            }
        ));
        dir.down.store(false, Ordering::Relaxed);
        node.register().await.expect("register");
        // the token issued comes first, then the registration
        let ev = rx.try_recv().expect("node_token_changed");
        assert_eq!(ev.kind, EventKind::NodeTokenChanged { held: true });
        assert_eq!(ev.node_id.as_deref(), Some("node-1"));
        let ev = rx.try_recv().expect("register_ok");
        assert_eq!(ev.node_id.as_deref(), Some("node-1"));
        assert_eq!(ev.kind.name(), "register_ok");
        assert!(ev.timestamp().ends_with('Z'));

        let handle = node
            .bind_and_serve(
                ([127, 0, 0, 1], 0).into(),
                EchoModel::default(),
                ServeOptions::default().with_register(false),
            )
            .await
            .expect("serve");
        let ev = rx.recv().await.expect("serve_start");
        assert!(matches!(ev.kind, EventKind::Serving { addr, .. } if addr == handle.local_addr()));

        dir.down.store(true, Ordering::Relaxed);
        assert!(node.deregister().await.is_err());
        let ev = rx.try_recv().expect("deregister_fail");
        assert!(matches!(
            ev.kind,
            EventKind::DeregisterFailed {
                status: Some(503),
                ..
            }
        ));
        dir.down.store(false, Ordering::Relaxed);
        let stopped = handle.stop().await;
        assert!(stopped.deregistered);
        let ev = rx.try_recv().expect("node_token_changed");
        assert_eq!(ev.kind, EventKind::NodeTokenChanged { held: false });
        let ev = rx.try_recv().expect("deregister_ok");
        assert_eq!(ev.kind.name(), "deregister_ok");
        // a token set by hand is announced once, an unchanged one not again
        node.set_node_token(Secret::new("saved-token"));
        node.set_node_token(Secret::new("saved-token"));
        let ev = rx.try_recv().expect("node_token_changed");
        assert_eq!(ev.kind, EventKind::NodeTokenChanged { held: true });
        assert!(rx.try_recv().is_err());
        node.set_node_token(Secret::new(""));
        let ev = rx.try_recv().expect("node_token_changed");
        assert_eq!(ev.kind, EventKind::NodeTokenChanged { held: false });
        // nothing secret in any event
        assert!(!format!("{ev:?}").contains("tok-secret"));
    }
}
