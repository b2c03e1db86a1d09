//! The [`Node`]: configuration, credentials and the runtime state shared by the task
//! pipeline, the routes and the directory agent. Registration and deregistration per
//! PROTOCOL.md §8.2 (with §8.2.3 implementation metadata, §8.2.4 `current_node_token`)
//! and §8.6.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use iicp_proto::crypto::token::DirectoryPublicKey;
use iicp_proto::directory::{Capability, Limits, RegisterRequest};
use iicp_proto::intent::Intent;
use iicp_proto::secret::Secret;
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::NativeEndpoint;
use tokio::sync::{broadcast, Semaphore};

use crate::capability::build_capabilities_for;
use crate::clock::iso8601;
use crate::config::{
    is_private_endpoint, may_register, NodeBuilder, NodeConfig, IMPLEMENTATION_NAME,
    IMPLEMENTATION_VERSION, NATIVE_CX_V1,
};
use crate::dedup::Dedup;
use crate::directory::{DirectoryError, DirectoryFailure, DirectoryStatus};
use crate::error::Error;
use crate::event::EventKind;
use crate::handler::TaskHandler;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::serve::{ServeHandle, ServeOptions};

/// Most credit receipts posted at once; more are dropped (they are best effort).
const MAX_RECEIPTS_IN_FLIGHT: usize = 16;

/// What the directory issued.
#[derive(Default)]
pub(crate) struct Credentials {
    pub(crate) node_id: Option<String>,
    pub(crate) token: Option<Secret>,
    pub(crate) hmac_key: Option<Secret>,
}

/// Heartbeat counters since the last drained batch (§8.3 `metrics`).
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) success: u64,
    pub(crate) failed: u64,
    pub(crate) latency_sum_ms: u64,
}

/// State shared by every part of a running node.
pub(crate) struct Shared {
    pub(crate) cfg: NodeConfig,
    pub(crate) capabilities: Vec<Capability>,
    pub(crate) served: Vec<Intent>,
    pub(crate) creds: Mutex<Credentials>,
    pub(crate) dir_key: RwLock<Option<DirectoryPublicKey>>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) active: AtomicU32,
    pub(crate) draining: AtomicBool,
    pub(crate) dedup: Dedup,
    pub(crate) limiter: RateLimiter,
    pub(crate) metrics: Metrics,
    pub(crate) counters: Mutex<Counters>,
    pub(crate) receipts: Arc<Semaphore>,
    /// `not_after` of the operator delegation last accepted at REGISTER (0: none).
    pub(crate) delegation_not_after: AtomicU64,
    /// Lifecycle events ([`Node::subscribe`]).
    pub(crate) events: broadcast::Sender<crate::event::NodeEvent>,
    /// What reachability decided to advertise ([`crate::reach`]).
    pub(crate) advert: Mutex<crate::reach::Advert>,
    /// Gossip state of mesh / relay nodes ([`crate::mesh`]).
    pub(crate) mesh: Option<Arc<crate::mesh::MeshState>>,
    /// What the node knows of its directory ([`Node::directory_status`]).
    pub(crate) dir_status: Mutex<DirectoryStatus>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn node_id(&self) -> Option<String> {
        lock(&self.creds).node_id.clone()
    }

    pub(crate) fn token(&self) -> Option<Secret> {
        lock(&self.creds).token.clone()
    }

    /// Replaces the node token with what `f` returns, called under the credentials lock
    /// (it may update the other credentials, not the token), and announces a change
    /// ([`EventKind::NodeTokenChanged`]) once the lock is released.
    pub(crate) fn replace_token(&self, f: impl FnOnce(&mut Credentials) -> Option<Secret>) {
        let held = {
            let mut c = lock(&self.creds);
            let token = f(&mut c);
            if c.token == token {
                return;
            }
            c.token = token;
            c.token.is_some()
        };
        crate::event::emit(self, EventKind::NodeTokenChanged { held });
    }

    pub(crate) fn hmac_key(&self) -> Option<Secret> {
        self.cfg
            .node_hmac_key
            .clone()
            .or_else(|| lock(&self.creds).hmac_key.clone())
    }

    pub(crate) fn directory_key(&self) -> Option<DirectoryPublicKey> {
        *self.dir_key.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_directory_key(&self, key: DirectoryPublicKey) {
        *self.dir_key.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }

    pub(crate) fn active_jobs(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn unix_secs(&self) -> u64 {
        self.cfg.clock.unix_now().as_secs()
    }

    pub(crate) fn unix_ms(&self) -> u64 {
        u64::try_from(self.cfg.clock.unix_now().as_millis()).unwrap_or(u64::MAX)
    }

    /// The secrets a directory might echo in an error message: the node token, the
    /// HMAC keys and the API tokens.
    pub(crate) fn secrets(&self) -> Vec<Secret> {
        let mut out: Vec<Secret> = self.cfg.api_tokens.clone();
        out.extend(self.cfg.node_hmac_key.clone());
        let c = lock(&self.creds);
        out.extend(c.token.clone());
        out.extend(c.hmac_key.clone());
        out
    }

    /// Records a failed directory call; returns the failures in a row, this one included.
    pub(crate) fn directory_failed(&self, e: &DirectoryError) -> u32 {
        let failure = DirectoryFailure::of(e, self.unix_ms());
        let mut st = lock(&self.dir_status);
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        st.last_error = Some(failure);
        st.consecutive_failures
    }

    /// Records a successful directory call (closing the breaker; announced with
    /// `directory_recovered` when it had opened); returns the failures in a row before it.
    pub(crate) fn directory_ok(&self) -> u32 {
        let now = self.unix_ms();
        let before = {
            let mut st = lock(&self.dir_status);
            st.breaker_open_until_unix_ms = None;
            st.last_success_unix_ms = Some(now);
            std::mem::take(&mut st.consecutive_failures)
        };
        let threshold = self.cfg.directory_breaker.failures;
        if threshold > 0 && before >= threshold {
            tracing::info!(
                after_failures = before,
                "directory reachable again: circuit breaker closed"
            );
            crate::event::emit(
                self,
                EventKind::DirectoryRecovered {
                    directory_url: self.cfg.directory_url.clone(),
                    after_failures: before,
                },
            );
        }
        before
    }

    /// Whether the directory circuit breaker is open: from the failure that opened it
    /// until a directory call succeeds. Only the agent's probe calls the directory
    /// meanwhile (no credit receipts, no peer look-ups).
    pub(crate) fn breaker_open(&self) -> bool {
        lock(&self.dir_status).breaker_open_until_unix_ms.is_some()
    }

    /// Opens the breaker until `until_unix_ms`, or closes it.
    pub(crate) fn set_breaker(&self, until_unix_ms: Option<u64>) {
        lock(&self.dir_status).breaker_open_until_unix_ms = until_unix_ms;
    }

    pub(crate) fn directory_status(&self) -> DirectoryStatus {
        let mut st = lock(&self.dir_status).clone();
        st.registered = self.token().is_some();
        st
    }

    /// The `transport_endpoint` advertised when native is on.
    pub(crate) fn transport_endpoint(&self) -> Option<String> {
        if !self.cfg.native {
            return None;
        }
        NativeEndpoint::from_http(&self.cfg.endpoint).map(|e| e.to_string())
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
        let mut capabilities = build_capabilities_for(&cfg.models, &cfg.intents, cfg.max_tokens);
        if cfg.auth != crate::config::AuthMode::Open {
            // tell clients which credential to bring (`iicp_auth` extension)
            for cap in &mut capabilities {
                cap.set_auth_mode(Some(cfg.auth.as_str()));
            }
        }
        let mut served: Vec<Intent> = cfg.intents.clone();
        for cap in &capabilities {
            if let Ok(i) = cap.parsed_intent() {
                if !served.contains(&i) {
                    served.push(i);
                }
            }
        }
        let creds = Credentials {
            node_id: cfg.node_id.clone(),
            token: None,
            hmac_key: None,
        };
        let shared = Shared {
            capabilities,
            served,
            creds: Mutex::new(creds),
            dir_key: RwLock::new(cfg.directory_key),
            slots: Arc::new(Semaphore::new(cfg.max_concurrent as usize)),
            active: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            dedup: Dedup::new(cfg.idempotency_ttl, cfg.idempotency_capacity),
            limiter: RateLimiter::new(cfg.rate_limit),
            metrics: Metrics::new(),
            counters: Mutex::new(Counters::default()),
            receipts: Arc::new(Semaphore::new(MAX_RECEIPTS_IN_FLIGHT)),
            delegation_not_after: AtomicU64::new(0),
            events: crate::event::channel(),
            advert: Mutex::new(crate::reach::Advert::default()),
            mesh: crate::mesh::MeshState::for_config(&cfg),
            dir_status: Mutex::new(DirectoryStatus::default()),
            cfg,
        };
        Self {
            shared: Arc::new(shared),
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
    /// [`EventKind::NodeTokenChanged`].
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

    /// Lifecycle events from now on (registration, serving, deregistration), for event
    /// logs. Bounded: a receiver that falls behind loses the oldest events.
    pub fn subscribe(&self) -> broadcast::Receiver<crate::event::NodeEvent> {
        self.shared.events.subscribe()
    }

    /// The advertised capabilities.
    pub fn capabilities(&self) -> &[Capability] {
        &self.shared.capabilities
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
        let s = &self.shared;
        let cfg = &s.cfg;
        let mut req = RegisterRequest::new(
            cfg.endpoint.clone(),
            cfg.region.clone(),
            s.capabilities.clone(),
            Limits {
                max_concurrent: cfg.max_concurrent,
                tokens_per_min: cfg.tokens_per_min,
                ..Limits::default()
            },
        );
        {
            let creds = lock(&s.creds);
            req.node_id.clone_from(&creds.node_id);
            req.current_node_token.clone_from(&creds.token);
        }
        req.transport_endpoint = s.transport_endpoint();
        if req.transport_endpoint.is_some() {
            req.transport_method = Some("direct".to_owned());
        }
        if cfg.relay_capable {
            req.relay_capable = Some(true);
            req.relay_accept_port = Some(cfg.relay_accept_port);
        }
        if let Some(key) = &cfg.cx_key {
            let not_after = iso8601(s.unix_secs().saturating_add(cfg.cx_key_lifetime.as_secs()));
            let mut adv = key.advertisement(Some(not_after), true);
            if cfg.native {
                adv.features.push(NATIVE_CX_V1.to_owned());
            }
            req.cx_public_key = Some(adv);
        }
        if let (Some(op), Some(node_id)) = (&cfg.operator, req.node_id.as_deref()) {
            // §17.1–§17.2: a fresh delegation at every REGISTER
            let delegation = op.delegate(node_id, s.unix_secs());
            req.operator_delegation = serde_json::to_value(&delegation).ok();
            req.operator_display_name =
                (!op.display_name().is_empty()).then(|| op.display_name().to_owned());
            req.operator_created_at =
                (!op.created_at().is_empty()).then(|| op.created_at().to_owned());
            req.operator_integrity_hash = Some(op.integrity_hash());
        }
        crate::reach::apply(s, &mut req);
        req.node_hmac_key.clone_from(&cfg.node_hmac_key);
        req.backend.clone_from(&cfg.backend);
        req.sdk_language = Some("rust".to_owned());
        req.implementation_name = Some(IMPLEMENTATION_NAME.to_owned());
        req.implementation_version = Some(IMPLEMENTATION_VERSION.to_owned());
        req.sdk_version = Some(cfg.sdk_compatibility_version.clone());
        req.sdk_compatibility_version = Some(cfg.sdk_compatibility_version.clone());
        req
    }

    /// Registers once (no retry: [`Node::serve`] retries in the background) and returns
    /// the node token. The directory's node id and HMAC key are kept inside; a 403
    /// leaves the old token in place (§8.2.4).
    ///
    /// # Errors
    /// [`Error::NoDirectory`], [`Error::PrivateEndpoint`], [`Error::Directory`].
    pub async fn register(&self) -> Result<Secret, Error> {
        let s = &self.shared;
        let result = self.register_once().await;
        match &result {
            Ok(_) => {
                s.directory_ok();
            }
            Err(Error::Directory(e)) => {
                s.directory_failed(e);
            }
            Err(_) => {}
        }
        let directory_url = s.cfg.directory_url.clone();
        crate::event::emit(
            s,
            match &result {
                Ok(_) => EventKind::Registered {
                    directory_url,
                    endpoint: crate::reach::advertised_endpoint(s),
                    operated: s.delegation_not_after.load(Ordering::Relaxed) > 0,
                },
                Err(e) => {
                    let (code, message) = match e {
                        Error::Directory(d) => (d.code_str(), d.message().map(str::to_owned)),
                        _ => (None, None),
                    };
                    EventKind::RegisterFailed {
                        directory_url,
                        status: crate::event::status_of(e),
                        retryable: e.is_retryable(),
                        error: e.to_string(),
                        code,
                        message,
                    }
                }
            },
        );
        result
    }

    async fn register_once(&self) -> Result<Secret, Error> {
        let s = &self.shared;
        let dir = s.cfg.directory.clone().ok_or(Error::NoDirectory)?;
        let endpoint = crate::reach::advertised_endpoint(s);
        if !may_register(&endpoint, s.cfg.directory_url.as_deref()) {
            return Err(Error::PrivateEndpoint);
        }
        if is_private_endpoint(&endpoint) {
            tracing::warn!(
                endpoint = %endpoint,
                "registering a loopback/private endpoint: only peers on this network can reach the node"
            );
        }
        let req = self.registration_request();
        let ack = tokio::time::timeout(s.cfg.directory_timeout, dir.register(&req))
            .await
            .map_err(|_| DirectoryError::transport("register", Elapsed))?
            .map_err(|e| {
                let secrets = s.secrets();
                e.redact(&secrets.iter().collect::<Vec<_>>())
            })?;
        let token = ack
            .node_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| DirectoryError::invalid_reply("register"))?;
        s.replace_token(|creds| {
            if !ack.node_id.is_empty() {
                creds.node_id = Some(ack.node_id.clone());
            }
            if ack.node_hmac_key.as_ref().is_some_and(|k| !k.is_empty()) {
                creds.hmac_key.clone_from(&ack.node_hmac_key);
            }
            Some(token.clone())
        });
        let not_after = req
            .operator_delegation
            .as_ref()
            .and_then(|d| d.get("not_after"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        s.delegation_not_after.store(not_after, Ordering::Relaxed);
        tracing::info!(node_id = ?s.node_id(), operated = not_after > 0, "registered with the directory");
        Ok(token)
    }

    /// Deregisters (`DELETE /v1/register`) and forgets the token. 404 counts as done.
    ///
    /// # Errors
    /// [`Error::NoDirectory`], [`Error::NotRegistered`], [`Error::Directory`].
    pub async fn deregister(&self) -> Result<(), Error> {
        let s = &self.shared;
        let result = self.deregister_once().await;
        let directory_url = s.cfg.directory_url.clone();
        match &result {
            Ok(()) => crate::event::emit(s, EventKind::Deregistered { directory_url }),
            // nothing to deregister is not a failure worth an event
            Err(Error::NoDirectory | Error::NotRegistered) => {}
            Err(e) => crate::event::emit(
                s,
                EventKind::DeregisterFailed {
                    directory_url,
                    status: crate::event::status_of(e),
                    error: e.to_string(),
                },
            ),
        }
        result
    }

    async fn deregister_once(&self) -> Result<(), Error> {
        let s = &self.shared;
        let dir = s.cfg.directory.clone().ok_or(Error::NoDirectory)?;
        let (token, node_id) = {
            let c = lock(&s.creds);
            (c.token.clone(), c.node_id.clone())
        };
        let (Some(token), Some(node_id)) = (token, node_id) else {
            return Err(Error::NotRegistered);
        };
        tokio::time::timeout(s.cfg.directory_timeout, dir.deregister(&token, &node_id))
            .await
            .map_err(|_| DirectoryError::transport("deregister", Elapsed))??;
        // a token issued meanwhile (a re-registration) stays
        s.replace_token(|c| c.token.clone().filter(|held| *held != token));
        tracing::info!(%node_id, "deregistered from the directory");
        Ok(())
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
        let handle =
            crate::serve::start(self.clone(), listener, Arc::new(handler), options).await?;
        crate::event::emit(
            &self.shared,
            EventKind::Serving {
                addr: handle.local_addr(),
                endpoint: self.shared.cfg.endpoint.clone(),
                native: self.shared.cfg.native,
            },
        );
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

    /// Time until the directory considers a silent node dormant (§8.3), for callers
    /// scheduling their own heartbeats.
    pub const DORMANT_AFTER: Duration = Duration::from_secs(90);
}

/// A directory call that did not finish within the configured timeout.
#[derive(Debug, thiserror::Error)]
#[error("directory call timed out")]
struct Elapsed;
