//! The [`Node`]: configuration, credentials and the runtime state shared by the task
//! pipeline, the routes and the directory agent. Registration and deregistration per
//! PROTOCOL.md §8.2 (with §8.2.3 implementation metadata, §8.2.4 `current_node_token`)
//! and §8.6.

use std::sync::Arc;
use std::time::Duration;

use iicp_proto::directory::{Capability, RegisterRequest};
use iicp_proto::intent::Intent;
use iicp_proto::secret::Secret;
use iicp_transport::listener::Services;
use tokio::sync::broadcast;

use crate::config::{NodeBuilder, NodeConfig};
use crate::directory::DirectoryStatus;
use crate::error::Error;
use crate::handler::TaskHandler;
use crate::state::Shared;

impl NodeBuilder {
    /// Validates and builds the node.
    ///
    /// # Errors
    /// A [`ConfigError`](crate::ConfigError) naming the first problem.
    pub fn build(self) -> Result<Node, crate::config::ConfigError> {
        self.into_config().map(Node::from_config)
    }
}

/// An IICP provider node. Cheap to clone (shared state); build with [`Node::builder`].
#[derive(Clone)]
pub struct Node {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.shared.cfg)
            .field("node_id", &self.shared.node_id())
            .field("registered", &self.shared.token().is_some())
            .finish()
    }
}

impl Node {
    /// A builder with the seed defaults.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    pub(crate) fn from_config(cfg: NodeConfig) -> Self {
        Self {
            shared: Arc::new(Shared::new(cfg)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.shared.cfg
    }

    /// The node id (configured, or assigned by the directory at registration).
    pub fn node_id(&self) -> Option<String> {
        self.shared.node_id()
    }

    /// The node token held (persist it securely; never log it).
    pub fn node_token(&self) -> Option<Secret> {
        self.shared.token()
    }

    /// Adopts a node token from an earlier registration (e.g. a saved node profile):
    /// the one way to give a node its token before it serves or registers (an empty
    /// token clears it). Every change of the token held, this one, an issue at
    /// registration or the clearing at deregistration, is announced with
    /// [`EventKind::NodeTokenChanged`](crate::event::EventKind::NodeTokenChanged).
    pub fn set_node_token(&self, token: Secret) {
        self.shared
            .replace_token(|_| (!token.is_empty()).then_some(token));
    }

    /// What the node knows of its directory now: registered or not, the failures in a
    /// row, whether the circuit breaker is open, and the last failure with the
    /// directory's own code and message.
    pub fn directory_status(&self) -> DirectoryStatus {
        self.shared.directory_status()
    }

    /// The supervised-recovery verdict now ([`crate::recovery`]): state, action, reason
    /// and since when.
    pub fn recovery(&self) -> crate::recovery::Recovery {
        self.shared.recovery_now()
    }

    /// The models advertised now: the configured ones until the backend's model list
    /// drifts (then the node registers again with the new list).
    pub fn models(&self) -> Vec<String> {
        self.shared.models()
    }

    /// Lifecycle events from now on (registration, serving, deregistration), for event
    /// logs. Bounded: a receiver that falls behind loses the oldest events.
    pub fn subscribe(&self) -> broadcast::Receiver<crate::event::NodeEvent> {
        self.shared.events.subscribe()
    }

    /// The advertised capabilities (with the service-lifecycle profile once the node
    /// serves a streaming handler).
    pub fn capabilities(&self) -> Vec<Capability> {
        self.shared.capabilities()
    }

    /// The intents accepted by `POST /v1/task`.
    pub fn served_intents(&self) -> &[Intent] {
        &self.shared.served
    }

    /// Tasks executing now.
    pub fn active_jobs(&self) -> u32 {
        self.shared.active_jobs()
    }

    /// The REGISTER body this node sends (PROTOCOL.md §8.2), with the token held as
    /// `current_node_token`.
    pub fn registration_request(&self) -> RegisterRequest {
        crate::registration::request(&self.shared)
    }

    /// Registers once (no retry: [`Node::serve`] retries in the background) and returns
    /// the node token. The directory's node id and HMAC key are kept inside; a 403
    /// leaves the old token in place (§8.2.4).
    ///
    /// # Errors
    /// [`Error::NoDirectory`], [`Error::PrivateEndpoint`], [`Error::Directory`].
    pub async fn register(&self) -> Result<Secret, Error> {
        crate::registration::register(&self.shared).await
    }

    /// Deregisters (`DELETE /v1/register`) and forgets the token. 404 counts as done.
    ///
    /// # Errors
    /// [`Error::NoDirectory`], [`Error::NotRegistered`], [`Error::Directory`].
    pub async fn deregister(&self) -> Result<(), Error> {
        crate::registration::deregister(&self.shared).await
    }

    /// The HTTP router and native handler for `handler`, to mount on a listener of your
    /// own ([`Node::serve`] does this for you).
    pub fn services(&self, handler: impl TaskHandler) -> Services {
        let handler: Arc<dyn TaskHandler> = Arc::new(handler);
        self.services_arc(handler)
    }

    pub(crate) fn services_arc(&self, handler: Arc<dyn TaskHandler>) -> Services {
        self.services_with(handler, None)
    }

    /// Services with the relay's HTTP routes mounted (relay-capable nodes, §14.4).
    pub(crate) fn services_with(
        &self,
        handler: Arc<dyn TaskHandler>,
        relay: Option<&iicp_nat::RelayHandle>,
    ) -> Services {
        self.shared
            .streaming
            .store(handler.streams(), std::sync::atomic::Ordering::Relaxed);
        let native: Option<Arc<dyn iicp_transport::native::CallHandler>> = if self.shared.cfg.native
        {
            Some(Arc::new(crate::native::NativeTasks::new(
                Arc::clone(&self.shared),
                Arc::clone(&handler),
            )))
        } else {
            None
        };
        let mut router = crate::routes::router(Arc::clone(&self.shared), handler);
        if let Some(relay) = relay {
            router = relay.routes(router);
        }
        router = crate::mesh::routes(&self.shared, router);
        Services {
            http: Some(Arc::new(router)),
            native,
        }
    }

    /// Runs one peer-exchange round now (a serving mesh or relay node also does this
    /// every 30 s): signed exchanges with up to three peers; returns how many
    /// succeeded. 0 when the node does not gossip or is not registered.
    pub async fn exchange_peers(&self) -> usize {
        match &self.shared.mesh {
            Some(state) => crate::mesh::round(&self.shared, state).await,
            None => 0,
        }
    }

    /// The node ids of the fresh peers known from gossip.
    pub fn mesh_peers(&self) -> Vec<String> {
        self.shared.mesh.as_ref().map_or_else(Vec::new, |m| {
            m.mesh
                .lock()
                .peers(self.shared.unix_ms())
                .into_iter()
                .map(|p| p.node_id)
                .collect()
        })
    }

    /// Time until the directory considers a silent node dormant (§8.3), for callers
    /// scheduling their own heartbeats.
    pub const DORMANT_AFTER: Duration = Duration::from_secs(90);
}
