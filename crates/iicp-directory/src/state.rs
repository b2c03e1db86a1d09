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
use crate::error::StoreError;
use crate::net::{parse_url, EndpointUrl, HTTP_SCHEMES};
use crate::ratelimit::RateLimiter;
pub(crate) mod scan;

use crate::store::{Change, ChangedState, KeyRecord, NodeRecord, NodeState, Store};
use scan::ScanIndex;

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
    /// The lifecycle record of the manifest's signing key, when it was revoked or
    /// superseded (kept current by [`Registry`]).
    pub(crate) key_status: Option<KeyRecord>,
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
            key_status: None,
        })
    }
}

/// Nodes by id plus the token-hash indexes.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) nodes: HashMap<String, Node>,
    pub(crate) by_token: HashMap<String, String>,
    pub(crate) by_proxy_token: HashMap<String, String>,
    /// The key lifecycle registry (revoked and superseded keys), by key SHA-256.
    pub(crate) keys: HashMap<String, KeyRecord>,
    /// The dense records DISCOVER scans, kept in step with `nodes` by
    /// [`Registry::insert`], [`Registry::remove`] and [`Core::replace_state`] (the only
    /// places that change what a selection reads).
    pub(crate) scan: ScanIndex,
}

impl Node {
    /// SHA-256 of the key that signed the registration's policy manifest.
    pub(crate) fn manifest_key_sha256(&self) -> Option<&str> {
        self.manifest.as_ref()?.public_key_sha256.as_deref()
    }
}

impl Registry {
    /// Replaces the key lifecycle registry and updates every node's `key_status`.
    pub(crate) fn set_keys(&mut self, keys: HashMap<String, KeyRecord>) {
        self.keys = keys;
        for node in self.nodes.values_mut() {
            node.key_status = node
                .manifest_key_sha256()
                .and_then(|sha| self.keys.get(sha))
                .cloned();
        }
    }

    pub(crate) fn insert(&mut self, mut node: Node) {
        node.key_status = node
            .manifest_key_sha256()
            .and_then(|sha| self.keys.get(sha))
            .cloned();
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
        self.scan.upsert(&node);
        self.nodes.insert(id, node);
        if self.scan.bloated() {
            self.scan = ScanIndex::build(self.nodes.values());
        }
    }

    /// Sets the state and revision of `node_id` (and its scan record); `false` when the
    /// node is unknown.
    pub(crate) fn set_state(&mut self, node_id: &str, state: NodeState, rev: u64) -> bool {
        let Some(n) = self.nodes.get_mut(node_id) else {
            return false;
        };
        n.record.state = state;
        n.record.rev = rev;
        self.scan.update_state(n);
        true
    }

    pub(crate) fn remove(&mut self, node_id: &str) -> Option<Node> {
        let old = self.nodes.remove(node_id)?;
        self.scan.remove(node_id);
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
    /// The feed of other processes' changes (shared stores), until the sync task takes it.
    pub(crate) changes: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<Change>>>,
    /// Whether this process ran the last background sweep (held the sweep lease).
    pub(crate) sweeper: std::sync::atomic::AtomicBool,
    /// Nodes or names were reloaded from a shared store since the discover cache was
    /// last invalidated for that ([`Core::flush_remote_changes`]).
    remote_changes: std::sync::atomic::AtomicBool,
    /// Operator challenge nonces: nonce → (operator_pub, expiry ms) (`api::keys`).
    pub(crate) nonces: parking_lot::Mutex<HashMap<String, (String, u64)>>,
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
            changes: parking_lot::Mutex::new(None),
            sweeper: std::sync::atomic::AtomicBool::new(false),
            remote_changes: std::sync::atomic::AtomicBool::new(false),
            nonces: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Reloads the key lifecycle registry from the store (another process changed it).
    pub(crate) async fn reload_keys(&self) -> Result<(), crate::error::StoreError> {
        let keys = self.store.key_statuses().await?;
        self.write().set_keys(
            keys.into_iter()
                .map(|k| (k.key_sha256.clone(), k))
                .collect(),
        );
        self.discover_cache.invalidate();
        Ok(())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read()
    }

    /// Replaces the working-set state of `node_id` after it was stored at revision
    /// `rev`, and drops cached discover results when the change can alter which queries
    /// return the node. A state older than the one held (a lower revision, from a shared
    /// store) is ignored; revision 0 (single-process stores) always replaces.
    pub(crate) fn replace_state(&self, node_id: &str, state: NodeState, rev: u64) {
        let mut reg = self.write();
        self.replace_state_in(&mut reg, node_id, state, rev);
    }

    fn replace_state_in(&self, reg: &mut Registry, node_id: &str, state: NodeState, rev: u64) {
        let Some(n) = reg.nodes.get(node_id) else {
            return;
        };
        if rev != 0 && rev <= n.record.rev {
            return;
        }
        if changes_eligibility(
            &n.record.state,
            &state,
            self.settings.liveness_window_ms,
            PROBATION_TASKS,
        ) {
            self.discover_cache.invalidate();
        }
        reg.set_state(node_id, state, rev);
    }

    /// Applies states another process wrote (shared stores); returns the nodes to reload
    /// whole (unknown here, or re-registered since).
    pub(crate) fn apply_states(&self, states: Vec<ChangedState>) -> Vec<String> {
        let mut reload = Vec::new();
        for chunk in states.chunks(256) {
            let mut reg = self.write();
            for c in chunk {
                if c.registration_changed || !reg.nodes.contains_key(&c.node_id) {
                    let newer = reg
                        .nodes
                        .get(&c.node_id)
                        .is_none_or(|n| n.record.rev < c.rev);
                    if newer {
                        reload.push(c.node_id.clone());
                    }
                    continue;
                }
                self.replace_state_in(&mut reg, &c.node_id, c.state.clone(), c.rev);
            }
        }
        reload
    }

    /// Notes that a reload from a shared store changed the node set. The discover cache
    /// is invalidated for such changes at most every [`crate::sync::FLUSH_INTERVAL`]:
    /// a burst of registrations through another instance (thousands per second while a
    /// mesh restarts) would otherwise make every discover here recompute.
    fn remote_changed(&self) {
        self.remote_changes.store(true, Ordering::Release);
    }

    /// Invalidates the discover cache if reloads changed the node set since the last call.
    pub(crate) fn flush_remote_changes(&self) {
        if self.remote_changes.swap(false, Ordering::AcqRel) {
            self.discover_cache.invalidate();
        }
    }

    /// A node from a stored record, with its operator's display name.
    pub(crate) async fn node_from_record(&self, record: NodeRecord) -> Option<Node> {
        let mut node = Node::from_record(record)?;
        if node.operator_name.is_none() {
            if let Some(op) = node.record.state.operator_pub.clone() {
                node.operator_name = self.store.operator_name(op).await.ok().flatten();
            }
        }
        Some(node)
    }

    /// Reloads `node_id` from the store (shared stores: another process may have
    /// registered, rotated or deleted it), under its mutation lock.
    pub(crate) async fn refresh_node(&self, node_id: &str) -> Result<(), StoreError> {
        let _guard = self.node_lock(node_id).lock().await;
        self.refresh_node_locked(node_id).await
    }

    /// [`Core::refresh_node`] for a caller that holds the node's mutation lock.
    pub(crate) async fn refresh_node_locked(&self, node_id: &str) -> Result<(), StoreError> {
        match self.store.load_node(node_id.to_owned()).await? {
            Some(record) => {
                let held = self.read().nodes.get(node_id).map(|n| n.record.rev);
                if held.is_some_and(|rev| rev >= record.rev) {
                    return Ok(());
                }
                match self.node_from_record(record).await {
                    Some(node) => self.write().insert(node),
                    None => {
                        tracing::warn!("a stored node with an unreadable registration was skipped");
                        self.write().remove(node_id);
                    }
                }
                self.remote_changed();
            }
            None => {
                if self.write().remove(node_id).is_some() {
                    self.remote_changed();
                }
            }
        }
        Ok(())
    }

    /// Reloads the display name of `operator_pub` into its nodes.
    pub(crate) async fn refresh_operator(&self, operator_pub: &str) -> Result<(), StoreError> {
        let name = self.store.operator_name(operator_pub.to_owned()).await?;
        for n in self.write().nodes.values_mut() {
            if n.record.state.operator_pub.as_deref() == Some(operator_pub) {
                n.operator_name = name.clone().or_else(|| n.reg.operator_display_name.clone());
            }
        }
        self.remote_changed();
        Ok(())
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
