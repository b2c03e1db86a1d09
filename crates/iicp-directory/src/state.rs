//! The directory core shared by the HTTP handlers and the background tasks: settings,
//! the in-memory working set of nodes (a write-through cache of the [`Store`]), the
//! per-node mutation locks and the signing keys. PROTOCOL.md §8.12 (state axes and
//! timers).

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use iicp_proto::crypto::manifest::{self, Verification};
use iicp_proto::crypto::token::DirectoryKey;
use iicp_proto::directory::RegisterRequest;
use iicp_transport::http::client::HttpClient;

use crate::auth::JwtKey;
use crate::cache::{changes_eligibility, DiscoverCache};
use crate::clock::Clock;
use crate::net::{parse_url, EndpointUrl, HTTP_SCHEMES};
use crate::ratelimit::RateLimiter;
use crate::store::{NodeRecord, NodeState, Store};

/// Nodes with at least this many completed tasks are out of probation.
pub(crate) const PROBATION_TASKS: u64 = 10;

/// Resolved, immutable settings (see [`crate::Config`] for the documented knobs).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) private_mesh: bool,
    pub(crate) liveness_window_ms: u64,
    pub(crate) heartbeat_interval_ms: u64,
    pub(crate) liveness_probe: bool,
    pub(crate) probe_timeout_ms: u64,
    pub(crate) unverified_grace_ms: u64,
    pub(crate) active_probe_interval_ms: u64,
    pub(crate) ticket_ttl_secs: u64,
    pub(crate) max_nodes: usize,
    pub(crate) node_retention_ms: u64,
    pub(crate) max_body_bytes: usize,
    pub(crate) trust_forwarded_headers: bool,
    pub(crate) name: String,
    pub(crate) max_concurrent_probes: usize,
}

/// One node in the working set.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) record: NodeRecord,
    /// The registration, typed.
    pub(crate) reg: RegisterRequest,
    /// The parsed endpoint.
    pub(crate) url: EndpointUrl,
    /// Operator display name (rename or bound delegation), if any.
    pub(crate) operator_name: Option<String>,
    /// The signature check of the registration's `policy_manifest` (time-free; the
    /// views apply the dates).
    pub(crate) manifest: Option<Verification>,
}

impl Node {
    /// Rebuilds the typed views of a stored record. `None` when the stored registration
    /// no longer parses (it is then skipped, with a warning).
    pub(crate) fn from_record(record: NodeRecord) -> Option<Self> {
        let reg: RegisterRequest = serde_json::from_value(record.registration.clone()).ok()?;
        let url = parse_url(&reg.endpoint, HTTP_SCHEMES).ok()?;
        let operator_name = reg
            .operator_display_name
            .clone()
            .filter(|_| record.state.operator_pub.is_some());
        let manifest = reg
            .policy_manifest
            .as_ref()
            .and_then(serde_json::Value::as_object)
            .map(manifest::check);
        Some(Self {
            record,
            reg,
            url,
            operator_name,
            manifest,
        })
    }
}

/// Nodes by id plus the token-hash indexes.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) nodes: HashMap<String, Node>,
    pub(crate) by_token: HashMap<String, String>,
    pub(crate) by_proxy_token: HashMap<String, String>,
}

impl Registry {
    pub(crate) fn insert(&mut self, node: Node) {
        if let Some(old) = self.nodes.get(&node.record.node_id) {
            let (t, p) = (
                old.record.credentials.token_hash.clone(),
                old.record.credentials.proxy_token_hash.clone(),
            );
            self.by_token.remove(&t);
            self.by_proxy_token.remove(&p);
        }
        let id = node.record.node_id.clone();
        self.by_token
            .insert(node.record.credentials.token_hash.clone(), id.clone());
        self.by_proxy_token
            .insert(node.record.credentials.proxy_token_hash.clone(), id.clone());
        self.nodes.insert(id, node);
    }

    pub(crate) fn remove(&mut self, node_id: &str) -> Option<Node> {
        let old = self.nodes.remove(node_id)?;
        self.by_token.remove(&old.record.credentials.token_hash);
        self.by_proxy_token
            .remove(&old.record.credentials.proxy_token_hash);
        Some(old)
    }
}

/// Counters for `/v1/stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) registrations: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) discovers: AtomicU64,
    pub(crate) tickets: AtomicU64,
    pub(crate) consumer_tokens: AtomicU64,
    pub(crate) receipts: AtomicU64,
    pub(crate) store_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

const LOCK_SHARDS: usize = 64;

/// The directory core.
pub(crate) struct Core {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) key: DirectoryKey,
    pub(crate) jwt: JwtKey,
    pub(crate) public_url: OnceLock<String>,
    registry: RwLock<Registry>,
    locks: Vec<tokio::sync::Mutex<()>>,
    pub(crate) register_limiter: RateLimiter,
    pub(crate) key_limiter: RateLimiter,
    pub(crate) consumer_limiter: RateLimiter,
    pub(crate) probe_limiter: RateLimiter,
    pub(crate) http: HttpClient,
    pub(crate) counters: Counters,
    pub(crate) started_at_ms: u64,
    pub(crate) discover_cache: DiscoverCache,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .field("public_key", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        key: DirectoryKey,
        public_url: Option<String>,
        registry: Registry,
        register_limit: (usize, u64),
        http: HttpClient,
    ) -> Self {
        let jwt = JwtKey::derive(&key.seed());
        let public = OnceLock::new();
        if let Some(url) = public_url {
            let _ = public.set(url);
        }
        let started_at_ms = clock.now_ms();
        Self {
            settings,
            store,
            clock,
            key,
            jwt,
            public_url: public,
            registry: RwLock::new(registry),
            locks: (0..LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            register_limiter: RateLimiter::new(register_limit.0, register_limit.1, 65_536),
            key_limiter: RateLimiter::new(30, 60_000, 65_536),
            consumer_limiter: RateLimiter::new(60, 60_000, 65_536),
            probe_limiter: RateLimiter::new(10, 60_000, 65_536),
            http,
            counters: Counters::default(),
            started_at_ms,
            discover_cache: DiscoverCache::default(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read()
    }

    /// Replaces the working-set state of `node_id` after it was stored, and drops cached
    /// discover results when the change can alter which queries return the node.
    pub(crate) fn replace_state(&self, node_id: &str, state: NodeState) {
        let mut reg = self.write();
        if let Some(n) = reg.nodes.get_mut(node_id) {
            if changes_eligibility(
                &n.record.state,
                &state,
                self.settings.liveness_window_ms,
                PROBATION_TASKS,
            ) {
                self.discover_cache.invalidate();
            }
            n.record.state = state;
        }
    }

    /// Write access to the node set. Callers that add, remove or rename nodes also call
    /// `discover_cache.invalidate()`; state updates go through [`Core::replace_state`].
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write()
    }

    /// The mutation lock of `node_id`: register, heartbeat, deregister and probe
    /// updates of one node are serialised so memory and store agree.
    pub(crate) fn node_lock(&self, node_id: &str) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        node_id.hash(&mut h);
        let i = usize::try_from(h.finish() % LOCK_SHARDS as u64).unwrap_or(0);
        &self.locks[i]
    }

    /// A snapshot of one node.
    pub(crate) fn node(&self, node_id: &str) -> Option<Node> {
        self.read().nodes.get(node_id).cloned()
    }
}
