//! The state every part of a running node shares ([`Shared`]): configuration, what the
//! directory issued, admission slots, the duplicate cache, counters, the advert that
//! reachability decided, gossip state and the event channel. A leaf below the task
//! pipeline, the routes, the directory agent and reachability, which all take an
//! `Arc<Shared>`; the public [`crate::Node`] is a handle on it.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use iicp_client::DirectoryClient;
use iicp_nat::relay::RelayCandidate;
use iicp_nat::{ExposureMode, TransportMethod};
use iicp_proto::crypto::sign::{OperatorKey, OperatorPublicKey};
use iicp_proto::crypto::token::DirectoryPublicKey;
use iicp_proto::directory::Capability;
use iicp_proto::intent::Intent;
use iicp_proto::secret::Secret;
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::native::NativeEndpoint;
use serde_json::Value;
use tokio::sync::{broadcast, Semaphore};

use crate::access::AuthMode;
use crate::capability::build_capabilities_for;
use crate::config::NodeConfig;
use crate::dedup::Dedup;
use crate::directory::{DirectoryError, DirectoryFailure, DirectoryStatus};
use crate::event::{EventKind, NodeEvent, EVENT_CAPACITY};
use crate::gossip::{Mesh, Peer};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::recovery::Recovery;

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
    /// The capabilities of the advertised models; [`Shared::capabilities`] adds what
    /// the handler brings (the lifecycle profile when it streams). Rebuilt when the
    /// backend's model list drifts ([`Shared::set_models`]).
    pub(crate) base_capabilities: RwLock<Vec<Capability>>,
    /// The advertised models: the configured ones until the backend's list drifts.
    pub(crate) models: RwLock<Vec<String>>,
    /// The models changed since the last registration: the agent registers again.
    pub(crate) models_dirty: AtomicBool,
    /// The backend's model list at the last check (heartbeat `health_models`).
    pub(crate) health_models: Mutex<Option<Vec<String>>>,
    /// What recovery observes ([`crate::recovery`]).
    pub(crate) recovery: crate::recovery::Signals,
    /// Whether the handler streams ([`crate::handler::TaskHandler::streams`]), set when
    /// the services are built.
    pub(crate) streaming: AtomicBool,
    /// Lifecycle tasks (`stream`).
    pub(crate) streams: crate::stream::Streams,
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
    /// Lifecycle events (`Node::subscribe`).
    pub(crate) events: broadcast::Sender<NodeEvent>,
    /// What reachability decided to advertise (`reach`).
    pub(crate) advert: Mutex<Advert>,
    /// Gossip state of mesh / relay nodes (`mesh`).
    pub(crate) mesh: Option<Arc<MeshState>>,
    /// What the node knows of its directory ([`Node::directory_status`]).
    pub(crate) dir_status: Mutex<DirectoryStatus>,
}

impl Shared {
    /// The advertised capabilities: with a streaming handler, each names the
    /// service-lifecycle profile, `supports_streaming` and its HTTP resources
    /// (`extensions.service_lifecycle`, ADR 0013).
    pub(crate) fn capabilities(&self) -> Vec<Capability> {
        let mut caps = self.base_capabilities.read().clone();
        if self.streaming.load(Ordering::Relaxed) {
            for cap in &mut caps {
                let profiles = cap.supported_profiles.get_or_insert_with(Vec::new);
                if !profiles.iter().any(|p| p == iicp_proto::lifecycle::PROFILE) {
                    profiles.push(iicp_proto::lifecycle::PROFILE.to_owned());
                }
                cap.supports_streaming = Some(true);
                let mut ext = match cap.extensions.take() {
                    Some(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                ext.insert(
                    "service_lifecycle".to_owned(),
                    iicp_proto::lifecycle::http_resources(),
                );
                cap.extensions = Some(serde_json::Value::Object(ext));
            }
        }
        caps
    }

    /// The CX key advertisement (REGISTER, DISCOVER answers): the key, its
    /// `not_after`, and the features this node speaks (native CX, sealed chunks).
    pub(crate) fn cx_advertisement(&self) -> Option<iicp_proto::directory::CxPublicKey> {
        let cfg = &self.cfg;
        let key = cfg.cx_key.as_ref()?;
        let not_after = crate::clock::iso8601(
            self.unix_secs()
                .saturating_add(cfg.cx_key_lifetime.as_secs()),
        );
        let mut adv = key.advertisement(Some(not_after), true);
        if cfg.native {
            adv.features
                .push(iicp_proto::constants::NATIVE_CX_V1.to_owned());
        }
        if self.streaming.load(Ordering::Relaxed) {
            adv.features
                .push(iicp_proto::constants::CX_STREAM_V1.to_owned());
        }
        Some(adv)
    }

    /// The profiles this node supports for a task.
    pub(crate) fn supported_profiles(&self) -> &'static [&'static str] {
        if self.streaming.load(Ordering::Relaxed) {
            &[iicp_proto::lifecycle::PROFILE]
        } else {
            &[]
        }
    }

    /// The capabilities of `models` under `cfg`.
    fn capabilities_of(cfg: &NodeConfig, models: &[String]) -> Vec<Capability> {
        let mut capabilities = build_capabilities_for(models, &cfg.intents, cfg.max_tokens);
        if cfg.auth != AuthMode::Open {
            // tell clients which credential to bring (`iicp_auth` extension)
            for cap in &mut capabilities {
                cap.set_auth_mode(Some(cfg.auth.as_str()));
            }
        }
        capabilities
    }

    /// The recovery verdict of the node now, from what its parts observed
    /// ([`crate::recovery`]).
    pub(crate) fn recovery_now(&self) -> Recovery {
        let shared = self;
        let st = shared.directory_status();
        let (reach, withheld) = {
            let ad = shared.advert.lock();
            let reach = if ad.relayed {
                crate::recovery::Reach::Relay
            } else if ad.local_only || ad.withheld {
                crate::recovery::Reach::LocalOnly
            } else {
                crate::recovery::Reach::Direct
            };
            (reach, ad.withheld)
        };
        let s = &shared.recovery;
        let o = crate::recovery::Observations {
            listener_dead: s.listener_dead.load(Ordering::Relaxed),
            tasks_died: s.tasks_died.load(Ordering::Relaxed),
            backend_reachable: s.backend_reachable(),
            backend_failures: s.backend_failures.load(Ordering::Relaxed),
            registers: s.registering.load(Ordering::Relaxed) && !withheld,
            registered: st.registered,
            directory_failures: st.consecutive_failures,
            breaker_open: st.breaker_open_until_unix_ms.is_some(),
            reach,
        };
        s.tracker.observe(&o, shared.unix_ms())
    }

    /// The advertised models.
    pub(crate) fn models(&self) -> Vec<String> {
        self.models.read().clone()
    }

    /// The first advertised model.
    pub(crate) fn first_model(&self) -> Option<String> {
        self.models.read().first().cloned()
    }

    /// Advertises `models` from now on (the capabilities follow) and marks the
    /// registration as out of date. The intents served stay those of the start.
    pub(crate) fn set_models(&self, models: Vec<String>) {
        let caps = Self::capabilities_of(&self.cfg, &models);
        *self.base_capabilities.write() = caps;
        *self.models.write() = models;
        self.models_dirty.store(true, Ordering::Relaxed);
    }

    pub(crate) fn new(cfg: NodeConfig) -> Self {
        let capabilities = Self::capabilities_of(&cfg, &cfg.models);
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
        Shared {
            base_capabilities: RwLock::new(capabilities),
            models: RwLock::new(cfg.models.clone()),
            models_dirty: AtomicBool::new(false),
            health_models: Mutex::new(None),
            recovery: crate::recovery::Signals::default(),
            streaming: AtomicBool::new(false),
            streams: crate::stream::Streams::default(),
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
            events: broadcast::channel(EVENT_CAPACITY).0,
            advert: Mutex::new(Advert::default()),
            mesh: MeshState::for_config(&cfg),
            dir_status: Mutex::new(DirectoryStatus::default()),
            cfg,
        }
    }

    pub(crate) fn node_id(&self) -> Option<String> {
        self.creds.lock().node_id.clone()
    }

    pub(crate) fn token(&self) -> Option<Secret> {
        self.creds.lock().token.clone()
    }

    /// Replaces the node token with what `f` returns, called under the credentials lock
    /// (it may update the other credentials, not the token), and announces a change
    /// ([`EventKind::NodeTokenChanged`]) once the lock is released.
    pub(crate) fn replace_token(&self, f: impl FnOnce(&mut Credentials) -> Option<Secret>) {
        let held = {
            let mut c = self.creds.lock();
            let token = f(&mut c);
            if c.token == token {
                return;
            }
            c.token = token;
            c.token.is_some()
        };
        self.emit(EventKind::NodeTokenChanged { held });
    }

    pub(crate) fn hmac_key(&self) -> Option<Secret> {
        self.cfg
            .node_hmac_key
            .clone()
            .or_else(|| self.creds.lock().hmac_key.clone())
    }

    pub(crate) fn directory_key(&self) -> Option<DirectoryPublicKey> {
        *self.dir_key.read()
    }

    pub(crate) fn set_directory_key(&self, key: DirectoryPublicKey) {
        *self.dir_key.write() = Some(key);
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
        let c = self.creds.lock();
        out.extend(c.token.clone());
        out.extend(c.hmac_key.clone());
        out
    }

    /// Records a failed directory call; returns the failures in a row, this one included.
    pub(crate) fn directory_failed(&self, e: &DirectoryError) -> u32 {
        let failure = DirectoryFailure::of(e, self.unix_ms());
        let mut st = self.dir_status.lock();
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        st.last_error = Some(failure);
        st.consecutive_failures
    }

    /// Records a successful directory call (closing the breaker; announced with
    /// `directory_recovered` when it had opened); returns the failures in a row before it.
    pub(crate) fn directory_ok(&self) -> u32 {
        let now = self.unix_ms();
        let before = {
            let mut st = self.dir_status.lock();
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
            self.emit(EventKind::DirectoryRecovered {
                directory_url: self.cfg.directory_url.clone(),
                after_failures: before,
            });
        }
        before
    }

    /// Whether the directory circuit breaker is open: from the failure that opened it
    /// until a directory call succeeds. Only the agent's probe calls the directory
    /// meanwhile (no credit receipts, no peer look-ups).
    pub(crate) fn breaker_open(&self) -> bool {
        self.dir_status.lock().breaker_open_until_unix_ms.is_some()
    }

    /// Opens the breaker until `until_unix_ms`, or closes it.
    pub(crate) fn set_breaker(&self, until_unix_ms: Option<u64>) {
        self.dir_status.lock().breaker_open_until_unix_ms = until_unix_ms;
    }

    pub(crate) fn directory_status(&self) -> DirectoryStatus {
        let mut st = self.dir_status.lock().clone();
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

    /// Sends `kind` to every event receiver (none listening is fine).
    pub(crate) fn emit(&self, kind: EventKind) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let _ = self.events.send(NodeEvent {
            at_unix_ms: self.unix_ms(),
            node_id: self.node_id(),
            kind,
        });
    }
}

/// What the node advertises instead of its configured endpoint (set by reachability).
#[derive(Clone, Debug, Default)]
pub(crate) struct Advert {
    pub(crate) endpoint: Option<String>,
    pub(crate) transport_method: Option<TransportMethod>,
    pub(crate) exposure_mode: Option<ExposureMode>,
    pub(crate) transport_metadata: Option<Value>,
    pub(crate) relayed: bool,
    /// The real relay accept port (an ephemeral one when configured as 0).
    pub(crate) relay_accept_port: Option<u16>,
    /// The plan found no public route and the directory is public: do not register
    /// (the heartbeat loop waits until a re-plan finds one).
    pub(crate) withheld: bool,
    /// The plan reaches the node on the local network only (tier 4).
    pub(crate) local_only: bool,
}

/// Peers, senders and cached keys a gossiping node holds at most.
pub(crate) const GOSSIP_CAPACITY: usize = 1024;

/// A sender looked up at the directory: its peer entry, its gossip key, when.
pub(crate) type Looked = (Option<Peer>, Option<OperatorPublicKey>, Instant);

/// A node's gossip state.
pub(crate) struct MeshState {
    pub(crate) key: OperatorKey,
    pub(crate) mesh: Mutex<Mesh>,
    /// Senders looked up at the directory: peer entry, gossip key, when.
    pub(crate) keys: Mutex<HashMap<String, Looked>>,
    /// For exchanges with peers.
    pub(crate) http: Option<HttpClient>,
    /// For sender lookups and relay-capable peers.
    pub(crate) directory: Option<DirectoryClient>,
}

impl std::fmt::Debug for MeshState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshState").finish_non_exhaustive()
    }
}

impl MeshState {
    /// Gossip state for a node that enables mesh or relays; `None` otherwise.
    pub(crate) fn for_config(cfg: &NodeConfig) -> Option<Arc<Self>> {
        (cfg.enable_mesh || cfg.relay_capable).then(|| {
            let http = HttpClient::new(HttpClientConfig::default()).ok();
            Arc::new(Self {
                key: OperatorKey::generate(&mut rand_core::OsRng),
                mesh: Mutex::new(Mesh::new(
                    cfg.node_id.clone().unwrap_or_default(),
                    GOSSIP_CAPACITY,
                )),
                keys: Mutex::new(HashMap::new()),
                http: http.clone(),
                directory: cfg
                    .directory_url
                    .as_deref()
                    .zip(http)
                    .and_then(|(url, http)| DirectoryClient::new(url, http).ok()),
            })
        })
    }

    /// The registered `public_key` (64 hex).
    pub(crate) fn public_key_hex(&self) -> String {
        crate::gossip::public_key_hex(&self.key)
    }

    /// Fresh relay-capable peers for election.
    pub(crate) fn relay_candidates(&self, now_ms: u64) -> Vec<RelayCandidate> {
        self.mesh.lock().relay_candidates(now_ms)
    }
}
