//! Serving: bind the one port, run the listener and the directory agent, and stop
//! gracefully (SEED-SDK.md §1.11; PROTOCOL.md §1.2, §10.6; DESIGN §4.2, §4.15).
//!
//! [`ServeHandle::stop`] stops accepting connections, lets in-flight tasks finish up to
//! the drain deadline (native sessions answer their in-flight CALLs, then send CLOSE
//! `graceful`), stops the heartbeat loop and deregisters.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::secret::Secret;
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown::{self, Trigger};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::DEFAULT_PORT;
use crate::error::Error;
use crate::handler::TaskHandler;
use crate::node::Node;

/// How to serve.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Address to bind (default `0.0.0.0`).
    pub host: IpAddr,
    /// Port to bind (default 9484; 0 = ephemeral). Never changed by the library.
    pub port: u16,
    /// A node token from an earlier registration; heartbeats start with it.
    pub node_token: Option<Secret>,
    /// With a directory and no token held: register in the background, with backoff,
    /// until it succeeds (default on).
    pub register: bool,
    /// Listener settings (connection limits, timeouts, TLS); the node sets the native
    /// ACK node id, drain deadlines and the body ceiling from its own configuration.
    pub listener: ListenerConfig,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            node_token: None,
            register: true,
            listener: ListenerConfig::default(),
        }
    }
}

impl ServeOptions {
    /// `host:port` with the other defaults.
    pub fn new(host: IpAddr, port: u16) -> Self {
        Self {
            host,
            port,
            ..Self::default()
        }
    }

    /// Adopts a node token from an earlier registration.
    pub fn with_node_token(mut self, token: impl Into<Secret>) -> Self {
        self.node_token = Some(token.into());
        self
    }

    /// Whether to register in the background when no token is held.
    pub fn with_register(mut self, register: bool) -> Self {
        self.register = register;
        self
    }
}

/// What [`ServeHandle::stop`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// In-flight connections finished before the drain deadline.
    pub drained: bool,
    /// The node was deregistered (false without a directory or token, or on failure).
    pub deregistered: bool,
}

/// A serving node. Dropping it without [`ServeHandle::stop`] stops serving abruptly
/// (no drain, no deregistration).
#[derive(Debug)]
pub struct ServeHandle {
    node: Node,
    addr: SocketAddr,
    trigger: Trigger,
    server: JoinHandle<std::io::Result<()>>,
    agent: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

pub(crate) async fn start(
    node: Node,
    handler: Arc<dyn TaskHandler>,
    options: ServeOptions,
) -> Result<ServeHandle, Error> {
    let shared = Arc::clone(&node.shared);
    if let Some(token) = options.node_token.clone() {
        node.set_node_token(token);
    }
    shared.draining.store(false, Ordering::Relaxed);
    let cfg = &shared.cfg;
    let mut lc = options.listener.clone();
    lc.drain_timeout = cfg.drain_timeout;
    lc.http.drain_timeout = cfg.drain_timeout;
    lc.http.max_body_bytes = lc.http.max_body_bytes.max(cfg.max_body_bytes);
    lc.native.session.drain_timeout = cfg.drain_timeout;
    lc.native.session.node_id = shared.node_id();
    let addr = SocketAddr::new(options.host, options.port);
    let listener = Listener::bind(addr, lc)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    if cfg.native && !cfg.endpoint.starts_with("https://") {
        tracing::warn!(
            "serving plaintext native IICP (iicp://); prefer TLS (iicpsec://) in production"
        );
    }
    let services = node.services_arc(handler);
    let (trigger, stop) = shutdown::channel();
    let server = tokio::spawn(listener.serve(services, stop));
    let agent = if cfg.directory.is_some() && (shared.token().is_some() || options.register) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(crate::agent::run(node.clone(), rx));
        Some((tx, task))
    } else {
        None
    };
    tracing::info!(addr = %local, native = cfg.native, auth = cfg.auth.as_str(), "node serving");
    Ok(ServeHandle {
        node,
        addr: local,
        trigger,
        server,
        agent,
    })
}

impl ServeHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node being served.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Stops gracefully: no new connections or tasks, in-flight work finishes up to the
    /// drain deadline, native sessions get CLOSE, the heartbeat loop ends, and the node
    /// deregisters.
    pub async fn stop(self) -> Stopped {
        let shared = Arc::clone(&self.node.shared);
        shared.draining.store(true, Ordering::Relaxed);
        self.trigger.fire();
        let grace = shared.cfg.drain_timeout + Duration::from_secs(1);
        let mut server = self.server;
        let drained = match tokio::time::timeout(grace, &mut server).await {
            Ok(Ok(Ok(()))) => shared.active_jobs() == 0,
            Ok(_) => false,
            Err(_) => {
                server.abort();
                false
            }
        };
        if let Some((tx, task)) = self.agent {
            let _ = tx.send(true);
            let _ = task.await;
        }
        let deregistered = if shared.cfg.directory.is_some() && shared.token().is_some() {
            match self.node.deregister().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "deregistration failed");
                    false
                }
            }
        } else {
            false
        };
        tracing::info!(drained, deregistered, "node stopped");
        Stopped {
            drained,
            deregistered,
        }
    }
}
