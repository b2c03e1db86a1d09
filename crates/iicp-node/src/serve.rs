//! Serving: run the caller's bound listener (HTTP and native IICP on one port) and the
//! directory agent, and stop gracefully (SEED-SDK.md §1.11; PROTOCOL.md §1.2, §10.6; DESIGN §4.2, §4.15).
//!
//! [`ServeHandle::stop`] stops accepting connections, lets in-flight tasks finish up to
//! the drain deadline (native sessions answer their in-flight CALLs, then send CLOSE
//! `graceful`), stops the heartbeat loop and deregisters.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown::{self, Trigger};
use tokio::task::JoinHandle;

use iicp_nat::relay::{check_ports, RelayError};
use iicp_nat::{RelayConfig, RelayServer};

use crate::error::Error;
use crate::event::EventKind;
use crate::handler::TaskHandler;
use crate::node::Node;
use crate::reach::{ReachConfig, Reachability};

/// How to serve.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// With a directory and no token held: register in the background, with backoff,
    /// until it succeeds (default on).
    pub register: bool,
    /// Reachability (NAT detection, UPnP, relay; [`crate::reach`]). `None` (default):
    /// the configured endpoint is registered as given.
    pub reach: Option<ReachConfig>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            register: true,
            reach: None,
        }
    }
}

impl ServeOptions {
    /// Whether to register in the background when no token is held.
    pub fn with_register(mut self, register: bool) -> Self {
        self.register = register;
        self
    }

    /// Finds the public route at start ([`crate::reach`]).
    pub fn with_reach(mut self, reach: ReachConfig) -> Self {
        self.reach = Some(reach);
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
    agent: Option<(Trigger, JoinHandle<()>)>,
    reachability: Option<Reachability>,
    reach: Option<crate::reach::Running>,
    relay: Option<(SocketAddr, JoinHandle<()>)>,
    gossip: Option<(Trigger, JoinHandle<()>)>,
    models: Option<(Trigger, JoinHandle<()>)>,
}

impl Node {
    /// Serves HTTP and native IICP on `listener`, a port the caller bound (the CLI binds
    /// the first free port of a range, [`Listener::bind_first_free`]; tests bind port 0).
    /// The node sets the listener's drain deadline, body ceiling and native ACK node id
    /// from its configuration. With a directory configured, registers in the background
    /// if no token is held (and `options.register`), then heartbeats until stopped.
    ///
    /// # Errors
    /// [`Error::Listener`]; [`Error::Bind`] when the relay accept port of a
    /// relay-capable node cannot be bound.
    pub async fn serve(
        &self,
        listener: Listener,
        handler: impl TaskHandler,
        options: ServeOptions,
    ) -> Result<ServeHandle, Error> {
        let handle = start(self.clone(), listener, Arc::new(handler), options).await?;
        self.shared.emit(EventKind::Serving {
            addr: handle.local_addr(),
            endpoint: self.shared.cfg.endpoint.clone(),
            native: self.shared.cfg.native,
        });
        Ok(handle)
    }

    /// Binds `addr` exactly (never another port) with the default listener settings and
    /// serves there ([`Node::serve`]).
    ///
    /// # Errors
    /// [`Error::Bind`] when `addr` cannot be bound, else as [`Node::serve`].
    pub async fn bind_and_serve(
        &self,
        addr: SocketAddr,
        handler: impl TaskHandler,
        options: ServeOptions,
    ) -> Result<ServeHandle, Error> {
        let listener = Listener::bind(addr, ListenerConfig::default())
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        self.serve(listener, handler, options).await
    }
}

pub(crate) async fn start(
    node: Node,
    mut listener: Listener,
    handler: Arc<dyn TaskHandler>,
    options: ServeOptions,
) -> Result<ServeHandle, Error> {
    let shared = Arc::clone(&node.shared);
    shared.draining.store(false, Ordering::Relaxed);
    let cfg = &shared.cfg;
    let lc = listener.config_mut();
    lc.drain_timeout = cfg.drain_timeout;
    lc.http.drain_timeout = cfg.drain_timeout;
    lc.http.max_body_bytes = lc.http.max_body_bytes.max(cfg.max_body_bytes);
    lc.native.session.drain_timeout = cfg.drain_timeout;
    lc.native.session.node_id = shared.node_id();
    let local = listener.local_addr().map_err(Error::Listener)?;
    if cfg.native && !cfg.endpoint.starts_with("https://") {
        tracing::warn!(
            "serving plaintext native IICP (iicp://); prefer TLS (iicpsec://) in production"
        );
    }
    let (trigger, stop) = shutdown::channel();
    // relay-capable: the relay accept server and its HTTP routes (§14.2, §19 T31)
    let relay = if cfg.relay_capable {
        let server = start_relay(&node, local.ip(), local.port()).await?;
        let addr = server.local_addr().map_err(Error::Listener)?;
        shared.advert.lock().relay_accept_port = Some(addr.port());
        let handle = server.handle();
        let task = tokio::spawn(server.serve(stop.clone()));
        tracing::info!(addr = %addr, "relay accept server listening");
        Some((addr, handle, task))
    } else {
        None
    };
    let services = node.services_with(Arc::clone(&handler), relay.as_ref().map(|r| &r.1));
    let relay = relay.map(|(a, _, t)| (a, t));
    let server = {
        // a listener that ends while the node is not stopping serves nobody: recovery
        // recommends a restart
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let result = listener.serve(services, stop).await;
            if !shared.draining.load(Ordering::Relaxed) {
                match &result {
                    Ok(()) => tracing::error!("the listener stopped; a restart is recommended"),
                    Err(e) => {
                        tracing::error!(error = %e, "the listener failed; a restart is recommended")
                    }
                }
                shared.recovery.listener_dead.store(true, Ordering::Relaxed);
            }
            result
        })
    };
    let models = (!cfg.model_check_interval.is_zero()).then(|| {
        let (tx, rx) = shutdown::channel();
        let alive = Alive::new(Arc::clone(&shared), "model check");
        let task = crate::models::run(Arc::clone(&shared), Arc::clone(&handler), rx);
        let task = tokio::spawn(async move {
            task.await;
            alive.done();
        });
        (tx, task)
    });
    let (reachability, reach) = match options.reach.clone() {
        Some(rc) => {
            let (r, running) =
                crate::reach::start(Arc::clone(&shared), handler, rc, local.port()).await;
            (Some(r), Some(running))
        }
        None => (None, None),
    };
    // without a public route yet the agent waits (`Advert::withheld`) until a re-plan
    // finds one, then registers
    let agent = if cfg.directory.is_some() && (shared.token().is_some() || options.register) {
        let (tx, rx) = shutdown::channel();
        let alive = Alive::new(Arc::clone(&shared), "directory agent");
        let agent = crate::agent::run(Arc::clone(&shared), rx);
        let task = tokio::spawn(async move {
            agent.await;
            alive.done();
        });
        Some((tx, task))
    } else {
        None
    };
    shared
        .recovery
        .registering
        .store(agent.is_some(), Ordering::Relaxed);
    let gossip = (agent.is_some() && shared.mesh.is_some()).then(|| {
        let (tx, rx) = shutdown::channel();
        (tx, tokio::spawn(crate::mesh::run(Arc::clone(&shared), rx)))
    });
    tracing::info!(addr = %local, native = cfg.native, auth = cfg.auth.as_str(), "node serving");
    Ok(ServeHandle {
        node,
        addr: local,
        trigger,
        server,
        agent,
        reachability,
        reach,
        relay,
        gossip,
        models,
    })
}

async fn start_relay(node: &Node, host: IpAddr, port: u16) -> Result<RelayServer, Error> {
    let cfg = &node.shared.cfg;
    let addr = SocketAddr::new(host, cfg.relay_accept_port);
    let refused = |e: RelayError| -> Error {
        let kind = match &e {
            RelayError::PortCollision { .. } | RelayError::PortInUse { .. } => {
                std::io::ErrorKind::AddrInUse
            }
            _ => std::io::ErrorKind::Other,
        };
        Error::Bind {
            addr,
            source: std::io::Error::new(kind, e.to_string()),
        }
    };
    check_ports(port, cfg.relay_accept_port).map_err(refused)?;
    let config = RelayConfig {
        listen: addr,
        relay_node_id: node.shared.node_id(),
        ticket_key: node.shared.directory_key(),
        http_port: port,
        ..RelayConfig::default()
    };
    RelayServer::bind(config).await.map_err(refused)
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

    /// What reachability planning achieved (with [`ServeOptions::reach`]).
    pub fn reachability(&self) -> Option<&Reachability> {
        self.reachability.as_ref()
    }

    /// The relay accept address of a relay-capable node.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay.as_ref().map(|r| r.0)
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
            tx.fire();
            let _ = task.await;
        }
        if let Some((tx, task)) = self.gossip {
            tx.fire();
            let _ = task.await;
        }
        if let Some((tx, task)) = self.models {
            tx.fire();
            let _ = task.await;
        }
        // the relay worker and UPnP mappings go before the registration (§13, §14)
        if let Some(reach) = self.reach {
            reach.stop().await;
        }
        if let Some((_, task)) = self.relay {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
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

/// Marks a background task of the node as ended unexpectedly when dropped (by a panic
/// or an early return) unless [`Alive::done`] was called or the node is stopping.
pub(crate) struct Alive {
    shared: Arc<crate::state::Shared>,
    what: &'static str,
    done: bool,
}

impl Alive {
    pub(crate) fn new(shared: Arc<crate::state::Shared>, what: &'static str) -> Self {
        Self {
            shared,
            what,
            done: false,
        }
    }

    /// The task ended as it should.
    pub(crate) fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if self.done || self.shared.draining.load(Ordering::Relaxed) {
            return;
        }
        tracing::error!(
            task = self.what,
            "a background task of the node stopped; a restart is recommended"
        );
        self.shared
            .recovery
            .tasks_died
            .fetch_add(1, Ordering::Relaxed);
    }
}
