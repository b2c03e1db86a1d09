//! Node configuration and its builder (SEED-SDK.md §1.7; PROTOCOL.md §8.2 for the
//! registered fields, §4.3 and DESIGN §4.5 for the auth modes, §7.2–§7.3 for admission
//! and duplicates).
//!
//! The library reads no environment and no files: the CLI layers those and calls the
//! builder. No directory is configured by default (a standalone node); the CLI passes
//! `https://iicp.network/api` when the user asks for the public mesh.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proto::crypto::token::DirectoryPublicKey;
use iicp_proto::endpoint;
use iicp_proto::intent::{Intent, IntentError};
use iicp_proto::secret::Secret;

pub use crate::access::{AuthMode, UnknownAuthMode};
use crate::clock::{Clock, SystemClock};
use crate::directory::DirectoryApi;
use crate::operator::OperatorIdentity;

/// The name sent as `implementation_name` (PROTOCOL.md §8.2.3).
pub const IMPLEMENTATION_NAME: &str = "iicp-rs";
/// The version sent as `implementation_version`.
pub const IMPLEMENTATION_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default `sdk_compatibility_version` (and `sdk_version`, which must equal it).
pub const SDK_COMPATIBILITY_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The IICP port (PROTOCOL.md §1.2), where the CLI starts looking for a free one.
pub use iicp_proto::constants::DEFAULT_PORT;
/// Default relay accept port (§14.2).
pub use iicp_proto::constants::DEFAULT_RELAY_ACCEPT_PORT;
/// `cx_public_key.features` entry announcing IICP-CX over native CALLs (ADR 0005): a
/// key-5 JSON object with `iicp_conf` is an encrypted task.
pub use iicp_proto::constants::NATIVE_CX_V1;

/// How often the backend's model list is read by default.
pub const DEFAULT_MODEL_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A request limit per key (per `Origin`, else per source IP): at most `max_requests`
/// in any rolling `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window; 0 disables the limit.
    pub max_requests: u32,
    /// Window length.
    pub window: Duration,
}

impl Default for RateLimit {
    /// 120 requests per 60 s (the reference nodes' `IICP_TASK_RATE_LIMIT` default).
    fn default() -> Self {
        Self {
            max_requests: 120,
            window: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff between directory attempts (±20 % jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s doubling up to 60 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// The directory circuit breaker (ADR 0009): after `failures` directory calls in a row
/// failed (registration or heartbeat), the node makes no directory call for at least
/// `open_for`; then one call probes the directory, and each failed probe opens the
/// breaker again (for `open_for`, or the grown backoff when that is longer). Tasks are
/// served throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Failures in a row that open the breaker; 0 disables it (plain backoff).
    pub failures: u32,
    /// How long it stays open (never shortened by jitter).
    pub open_for: Duration,
}

impl Default for Breaker {
    /// 5 failures, open for 30 s.
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// A configuration the builder refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No public endpoint was given.
    #[error("the node needs a public endpoint")]
    MissingEndpoint,
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error("the endpoint must be an http:// or https:// URL with a host")]
    InvalidEndpoint,
    /// No intent was given.
    #[error("the node needs at least one intent")]
    NoIntent,
    /// An intent URN is invalid.
    #[error("invalid intent")]
    Intent(#[source] IntentError),
    /// `max_concurrent` is outside 1–256.
    #[error("max_concurrent must be 1-256")]
    MaxConcurrent,
    /// `region` is longer than 64 characters.
    #[error("region must be at most 64 characters")]
    Region,
    /// The directory URL is not an `http://` or `https://` URL.
    #[error("the directory URL must be an http:// or https:// URL")]
    DirectoryUrl,
    /// `sdk_compatibility_version` does not match the version grammar.
    #[error("sdk_compatibility_version does not match the version grammar")]
    SdkVersion,
    /// The HTTP client for the directory could not be built.
    #[error("the directory HTTP client could not be built")]
    HttpClient,
    /// The policy manifest is malformed (PROTOCOL.md §17.4).
    #[error("invalid policy manifest: {0}")]
    PolicyManifest(#[source] iicp_proto::crypto::manifest::ManifestError),
}

/// The validated node configuration. Built by [`NodeBuilder`]; read it back with
/// [`Node::config`](crate::Node::config).
#[derive(Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Node id to register with (the directory assigns one when absent).
    pub node_id: Option<String>,
    /// Public HTTP endpoint (`http(s)://host:port`).
    pub endpoint: String,
    /// Intents served (at least one; embedding models add the embedding intent).
    pub intents: Vec<Intent>,
    /// Models served (advertised and reported by `/iicp/health`).
    pub models: Vec<String>,
    /// Region (`"unknown"` when unset).
    pub region: String,
    /// Concurrent tasks (1–256); more are refused with 429, never queued.
    pub max_concurrent: u32,
    /// Advertised token throughput.
    pub tokens_per_min: u64,
    /// Advertised `max_tokens` of each capability.
    pub max_tokens: u32,
    /// Offer relay service (advertised; the relay server lives in `iicp-nat`).
    pub relay_capable: bool,
    /// Relay accept port advertised with `relay_capable`.
    pub relay_accept_port: u16,
    /// Take part in peer exchange (advertised only for now).
    pub enable_mesh: bool,
    /// Who may submit tasks.
    pub auth: AuthMode,
    /// Extra bearer credentials accepted in [`AuthMode::Token`] / fallback.
    pub api_tokens: Vec<Secret>,
    /// Per-origin / per-IP limit on task submissions.
    pub rate_limit: RateLimit,
    /// Key the per-IP limit by the client address a reverse proxy reports in
    /// `X-Forwarded-For` / `Forwarded` (the rightmost hop that is not a proxy, ADR 0008)
    /// instead of the connection's address. Off by default: only a node that is reached
    /// through its proxy alone may trust these headers.
    pub trust_forwarded_for: bool,
    /// Serve native CALLs on the HTTP port and advertise `transport_endpoint`.
    pub native: bool,
    /// Directory base URL (`None`: standalone, no registration).
    pub directory_url: Option<String>,
    /// Timeout of one directory call.
    pub directory_timeout: Duration,
    /// Backoff of registration and heartbeat retries.
    pub directory_backoff: Backoff,
    /// When directory outages pause directory calls altogether.
    pub directory_breaker: Breaker,
    /// Heartbeat interval until the directory says otherwise (`next_heartbeat_ms`).
    pub heartbeat_interval: Duration,
    /// How often the backend's model list is read (`health_models`; a changed list is
    /// advertised and registered again); zero never.
    pub model_check_interval: Duration,
    /// The CX key (`None`: no IICP-CX; privacy-first clients skip the node).
    pub cx_key: Option<CxKeyPair>,
    /// Advertised CX key lifetime (`not_after`, at most 90 days).
    pub cx_key_lifetime: Duration,
    /// Deadline of a task that sends no `timeout_ms`.
    pub default_timeout: Duration,
    /// `retry_after_ms` of a `capacity_exceeded` refusal.
    pub capacity_retry_after: Duration,
    /// How long finished task results are kept for duplicate replay.
    pub idempotency_ttl: Duration,
    /// Most task ids remembered for duplicate detection.
    pub idempotency_capacity: usize,
    /// Largest accepted `POST /v1/task` body.
    pub max_body_bytes: usize,
    /// Send a CIP credits receipt after each success (needs token and HMAC key).
    pub credits_receipts: bool,
    /// Operator-provisioned HMAC key (else the directory's is adopted).
    pub node_hmac_key: Option<Secret>,
    /// Backend label (`ollama`, `vllm`, …), advisory.
    pub backend: Option<String>,
    /// `sdk_compatibility_version` / `sdk_version` sent at REGISTER.
    pub sdk_compatibility_version: String,
    /// How long [`crate::ServeHandle::stop`] waits for in-flight work.
    pub drain_timeout: Duration,
    /// Directory key for consumer tokens, when known up front.
    pub directory_key: Option<DirectoryPublicKey>,
    /// The operator identity whose delegation every REGISTER carries (PROTOCOL.md §17.2);
    /// `None`: the node registers anonymously.
    pub operator: Option<OperatorIdentity>,
    /// The data-handling declaration every REGISTER carries as `policy_manifest`
    /// (PROTOCOL.md §17.4): signed with the operator key when there is an operator,
    /// self-attested otherwise.
    pub policy_manifest: Option<serde_json::Map<String, serde_json::Value>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) directory: Option<Arc<dyn DirectoryApi>>,
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("node_id", &self.node_id)
            .field("endpoint", &self.endpoint)
            .field(
                "intents",
                &self.intents.iter().map(Intent::as_str).collect::<Vec<_>>(),
            )
            .field("models", &self.models)
            .field("region", &self.region)
            .field("max_concurrent", &self.max_concurrent)
            .field("auth", &self.auth)
            .field("api_tokens", &self.api_tokens.len())
            .field("rate_limit", &self.rate_limit)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("native", &self.native)
            .field("directory_url", &self.directory_url)
            .field("cx_key", &self.cx_key.as_ref().map(CxKeyPair::key_id))
            .field(
                "operator",
                &self.operator.as_ref().map(OperatorIdentity::operator_id),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Node`](crate::Node). Start with [`Node::builder`](crate::Node::builder).
///
/// ```
/// use iicp_node::{AuthMode, Node};
/// let node = Node::builder()
///     .endpoint("http://127.0.0.1:9484")
///     .intent("urn:iicp:intent:llm:chat:v1")
///     .model("llama3")
///     .max_concurrent(2)
///     .auth(AuthMode::Open)
///     .build()?;
/// assert_eq!(node.config().max_concurrent, 2);
/// # Ok::<(), iicp_node::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct NodeBuilder {
    node_id: Option<String>,
    endpoint: Option<String>,
    intents: Vec<String>,
    models: Vec<String>,
    region: Option<String>,
    max_concurrent: Option<u32>,
    tokens_per_min: Option<u64>,
    max_tokens: Option<u32>,
    relay_capable: bool,
    relay_accept_port: Option<u16>,
    enable_mesh: bool,
    auth: AuthMode,
    api_tokens: Vec<Secret>,
    rate_limit: Option<RateLimit>,
    trust_forwarded_for: bool,
    native: Option<bool>,
    directory_url: Option<String>,
    directory_timeout: Option<Duration>,
    directory_backoff: Option<Backoff>,
    directory_breaker: Option<Breaker>,
    heartbeat_interval: Option<Duration>,
    model_check_interval: Option<Duration>,
    cx_key: Option<Option<CxKeyPair>>,
    cx_key_lifetime: Option<Duration>,
    default_timeout: Option<Duration>,
    capacity_retry_after: Option<Duration>,
    idempotency_ttl: Option<Duration>,
    idempotency_capacity: Option<usize>,
    max_body_bytes: Option<usize>,
    credits_receipts: Option<bool>,
    node_hmac_key: Option<Secret>,
    backend: Option<String>,
    sdk_compatibility_version: Option<String>,
    drain_timeout: Option<Duration>,
    directory_key: Option<DirectoryPublicKey>,
    operator: Option<OperatorIdentity>,
    policy_manifest: Option<serde_json::Map<String, serde_json::Value>>,
    clock: Option<ClockSlot>,
    directory: Option<DirectorySlot>,
}

#[derive(Clone)]
struct ClockSlot(Arc<dyn Clock>);

impl fmt::Debug for ClockSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone)]
struct DirectorySlot(Arc<dyn DirectoryApi>);

impl fmt::Debug for DirectorySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl NodeBuilder {
    /// Node id to register with (persist the one the directory returns).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Public HTTP endpoint, e.g. `https://node.example:9484`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Adds an intent URN.
    pub fn intent(mut self, intent: impl Into<String>) -> Self {
        self.intents.push(intent.into());
        self
    }

    /// Adds several intent URNs.
    pub fn intents<I, S>(mut self, intents: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.intents.extend(intents.into_iter().map(Into::into));
        self
    }

    /// Adds a model.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.models.push(model.into());
        self
    }

    /// Adds several models.
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models.extend(models.into_iter().map(Into::into));
        self
    }

    /// Region (≤ 64 chars).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Concurrent task slots (1–256, default 4).
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// Advertised tokens per minute (default 10 000).
    pub fn tokens_per_min(mut self, n: u64) -> Self {
        self.tokens_per_min = Some(n);
        self
    }

    /// Advertised `max_tokens` (default 8192).
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Advertise relay service.
    pub fn relay_capable(mut self, on: bool) -> Self {
        self.relay_capable = on;
        self
    }

    /// Relay accept port (default 9485).
    pub fn relay_accept_port(mut self, port: u16) -> Self {
        self.relay_accept_port = Some(port);
        self
    }

    /// Peer exchange on/off (default off).
    pub fn enable_mesh(mut self, on: bool) -> Self {
        self.enable_mesh = on;
        self
    }

    /// Auth mode (default [`AuthMode::Open`]).
    pub fn auth(mut self, mode: AuthMode) -> Self {
        self.auth = mode;
        self
    }

    /// Adds an accepted bearer credential for [`AuthMode::Token`].
    pub fn api_token(mut self, token: impl Into<Secret>) -> Self {
        self.api_tokens.push(token.into());
        self
    }

    /// Task rate limit per `Origin` / source IP (default 120 per 60 s).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Key the per-IP task limit by the client address in `X-Forwarded-For` /
    /// `Forwarded` (see [`NodeConfig::trust_forwarded_for`]; default off).
    pub fn trust_forwarded_for(mut self, on: bool) -> Self {
        self.trust_forwarded_for = on;
        self
    }

    /// Serve native CALLs on the HTTP port (default on).
    pub fn native(mut self, on: bool) -> Self {
        self.native = Some(on);
        self
    }

    /// Directory base URL, e.g. `https://iicp.network/api`.
    pub fn directory_url(mut self, url: impl Into<String>) -> Self {
        self.directory_url = Some(url.into());
        self
    }

    /// Uses `api` for every directory call instead of HTTP to `directory_url`.
    pub fn directory(mut self, api: Arc<dyn DirectoryApi>) -> Self {
        self.directory = Some(DirectorySlot(api));
        self
    }

    /// Timeout of one directory call (default 5 s).
    pub fn directory_timeout(mut self, timeout: Duration) -> Self {
        self.directory_timeout = Some(timeout);
        self
    }

    /// Backoff of directory retries (default 1 s → 60 s; the first delay is at least
    /// 1 ms and the largest at least the first).
    pub fn directory_backoff(mut self, backoff: Backoff) -> Self {
        self.directory_backoff = Some(backoff);
        self
    }

    /// The first backoff delay, keeping the default largest delay (60 s).
    pub fn directory_backoff_base(mut self, base: Duration) -> Self {
        let max = self.directory_backoff.unwrap_or_default().max;
        self.directory_backoff = Some(Backoff { initial: base, max });
        self
    }

    /// The directory circuit breaker (default: open for 30 s after 5 failures in a row).
    pub fn directory_breaker(mut self, breaker: Breaker) -> Self {
        self.directory_breaker = Some(breaker);
        self
    }

    /// Heartbeat interval until the directory sends `next_heartbeat_ms` (default 30 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// How often the node reads the backend's model list through its handler
    /// ([`crate::TaskHandler::models`]): the heartbeat's `health_models`, recovery's
    /// `backend_attention`, and re-registration when the list changed (default 60 s;
    /// zero never; at least 100 ms otherwise).
    pub fn model_check_interval(mut self, interval: Duration) -> Self {
        self.model_check_interval = Some(interval);
        self
    }

    /// The node's CX key (default: a fresh key generated at build).
    pub fn cx_key(mut self, key: CxKeyPair) -> Self {
        self.cx_key = Some(Some(key));
        self
    }

    /// No CX key: `iicp_conf` is refused with `IICP-CX-01`.
    pub fn without_cx(mut self) -> Self {
        self.cx_key = Some(None);
        self
    }

    /// Advertised CX key lifetime (default and maximum 90 days).
    pub fn cx_key_lifetime(mut self, lifetime: Duration) -> Self {
        self.cx_key_lifetime = Some(lifetime);
        self
    }

    /// Deadline of tasks without `timeout_ms` (default 60 s, clamped to 0.1–300 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// `retry_after_ms` of `capacity_exceeded` (default 2 s).
    pub fn capacity_retry_after(mut self, after: Duration) -> Self {
        self.capacity_retry_after = Some(after);
        self
    }

    /// Duplicate-replay window and capacity (default 300 s, 10 000 ids).
    pub fn idempotency(mut self, ttl: Duration, capacity: usize) -> Self {
        self.idempotency_ttl = Some(ttl);
        self.idempotency_capacity = Some(capacity);
        self
    }

    /// Largest `POST /v1/task` body (default 16 MiB).
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = Some(n);
        self
    }

    /// Post CIP credit receipts after successes (default on; needs token + HMAC key).
    pub fn credits_receipts(mut self, on: bool) -> Self {
        self.credits_receipts = Some(on);
        self
    }

    /// Operator-provisioned HMAC key.
    pub fn node_hmac_key(mut self, key: impl Into<Secret>) -> Self {
        self.node_hmac_key = Some(key.into());
        self
    }

    /// Backend label sent at REGISTER.
    pub fn backend(mut self, label: impl Into<String>) -> Self {
        self.backend = Some(label.into());
        self
    }

    /// `sdk_compatibility_version` (and `sdk_version`) sent at REGISTER.
    pub fn sdk_compatibility_version(mut self, version: impl Into<String>) -> Self {
        self.sdk_compatibility_version = Some(version.into());
        self
    }

    /// How long `stop()` waits for in-flight work (default 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    /// The directory's consumer-token key, when known up front.
    pub fn directory_key(mut self, key: DirectoryPublicKey) -> Self {
        self.directory_key = Some(key);
        self
    }

    /// Registers as operated by `identity`: every REGISTER carries a fresh
    /// `operator_delegation` for this node (signed at registration, valid for the
    /// identity's delegation TTL) with `operator_display_name`, `operator_created_at`
    /// and `operator_integrity_hash` (PROTOCOL.md §17.1–§17.2), and the node registers
    /// again before the delegation expires. A delegation names the node id, so a node
    /// built without [`NodeBuilder::node_id`] gets a random UUID.
    pub fn operator(mut self, identity: OperatorIdentity) -> Self {
        self.operator = Some(identity);
        self
    }

    /// The node's policy manifest (PROTOCOL.md §17.4, ADR 0016): a data-handling
    /// declaration (`retention`, `training_use`, `jurisdiction`, …) sent at every
    /// REGISTER, signed then with the operator key (90-day expiry) when the node has an
    /// [`NodeBuilder::operator`]. Checked by [`manifest::validate`](iicp_proto::crypto::manifest::validate).
    pub fn policy_manifest(mut self, manifest: serde_json::Map<String, serde_json::Value>) -> Self {
        self.policy_manifest = Some(manifest);
        self
    }

    /// Wall clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(ClockSlot(clock));
        self
    }

    /// Checks the settings given so far as [`NodeBuilder::build`] does, without building
    /// and without requiring the endpoint (checked when set): a caller that learns the
    /// endpoint and the models later (after binding its port, after asking its model
    /// server) refuses a bad configuration before any of that.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(false)
    }

    fn check(&self, endpoint_required: bool) -> Result<(), ConfigError> {
        match &self.endpoint {
            None if endpoint_required => return Err(ConfigError::MissingEndpoint),
            Some(e) if !is_http_url(e) => return Err(ConfigError::InvalidEndpoint),
            _ => {}
        }
        if self.intents.is_empty() {
            return Err(ConfigError::NoIntent);
        }
        for raw in &self.intents {
            Intent::new(raw.as_str()).map_err(ConfigError::Intent)?;
        }
        if !(1..=256).contains(&self.max_concurrent.unwrap_or(4)) {
            return Err(ConfigError::MaxConcurrent);
        }
        if self.region.as_ref().is_some_and(|r| r.chars().count() > 64) {
            return Err(ConfigError::Region);
        }
        if let Some(url) = &self.directory_url {
            if !is_http_url(url) {
                return Err(ConfigError::DirectoryUrl);
            }
        }
        if let Some(v) = &self.sdk_compatibility_version {
            if !version_grammar(v) {
                return Err(ConfigError::SdkVersion);
            }
        }
        if let Some(m) = &self.policy_manifest {
            iicp_proto::crypto::manifest::validate(&serde_json::Value::Object(m.clone()))
                .map_err(ConfigError::PolicyManifest)?;
        }
        Ok(())
    }

    /// Validates the settings into a [`NodeConfig`] (`NodeBuilder::build` makes the
    /// node from it).
    pub(crate) fn into_config(self) -> Result<NodeConfig, ConfigError> {
        self.check(true)?;
        let endpoint = self.endpoint.ok_or(ConfigError::MissingEndpoint)?;
        let mut intents: Vec<Intent> = Vec::new();
        for raw in &self.intents {
            let intent = Intent::new(raw.as_str()).map_err(ConfigError::Intent)?;
            if !intents.contains(&intent) {
                intents.push(intent);
            }
        }
        let max_concurrent = self.max_concurrent.unwrap_or(4);
        let region = self.region.unwrap_or_else(|| "unknown".to_owned());
        let sdk = self
            .sdk_compatibility_version
            .unwrap_or_else(|| SDK_COMPATIBILITY_VERSION.to_owned());
        let mut models: Vec<String> = Vec::new();
        for m in self.models {
            if !m.is_empty() && !models.contains(&m) {
                models.push(m);
            }
        }
        let cx_key = match self.cx_key {
            Some(k) => k,
            None => Some(CxKeyPair::generate(&mut rand_core::OsRng)),
        };
        let max_lifetime = Duration::from_secs(iicp_proto::crypto::cx::MAX_KEY_LIFETIME_SECS);
        let directory_timeout = self.directory_timeout.unwrap_or(Duration::from_secs(5));
        let directory = match (self.directory, &self.directory_url) {
            (Some(slot), _) => Some(slot.0),
            (None, Some(url)) => {
                let http = iicp_transport::http::client::HttpClient::new(
                    iicp_transport::http::client::HttpClientConfig::default(),
                )
                .map_err(|_| ConfigError::HttpClient)?;
                let api: Arc<dyn DirectoryApi> = Arc::new(
                    crate::directory::HttpDirectory::new(url, http, directory_timeout)
                        .map_err(|_| ConfigError::DirectoryUrl)?,
                );
                Some(api)
            }
            (None, None) => None,
        };
        let config = NodeConfig {
            node_id: self.node_id.filter(|s| !s.is_empty()).or_else(|| {
                self.operator
                    .as_ref()
                    .map(|_| iicp_proto::ids::uuid_v4(&mut rand_core::OsRng).to_string())
            }),
            endpoint,
            intents,
            models,
            region,
            max_concurrent,
            tokens_per_min: self.tokens_per_min.unwrap_or(10_000).max(1),
            max_tokens: self.max_tokens.unwrap_or(8192).max(1),
            relay_capable: self.relay_capable,
            relay_accept_port: self.relay_accept_port.unwrap_or(DEFAULT_RELAY_ACCEPT_PORT),
            enable_mesh: self.enable_mesh,
            auth: self.auth,
            api_tokens: self
                .api_tokens
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect(),
            rate_limit: self.rate_limit.unwrap_or_default(),
            trust_forwarded_for: self.trust_forwarded_for,
            native: self.native.unwrap_or(true),
            directory_url: self.directory_url,
            directory_timeout,
            directory_backoff: {
                let b = self.directory_backoff.unwrap_or_default();
                let initial = b.initial.max(Duration::from_millis(1));
                Backoff {
                    initial,
                    max: b.max.max(initial),
                }
            },
            directory_breaker: self.directory_breaker.unwrap_or_default(),
            heartbeat_interval: self
                .heartbeat_interval
                .unwrap_or(Duration::from_secs(30))
                .max(Duration::from_millis(10)),
            model_check_interval: match self.model_check_interval {
                None => DEFAULT_MODEL_CHECK_INTERVAL,
                Some(Duration::ZERO) => Duration::ZERO,
                Some(d) => d.max(Duration::from_millis(100)),
            },
            cx_key,
            cx_key_lifetime: self
                .cx_key_lifetime
                .unwrap_or(max_lifetime)
                .min(max_lifetime),
            default_timeout: self
                .default_timeout
                .unwrap_or(Duration::from_secs(60))
                .clamp(Duration::from_millis(100), Duration::from_secs(300)),
            capacity_retry_after: self
                .capacity_retry_after
                .unwrap_or(Duration::from_secs(2))
                .max(Duration::from_millis(1)),
            idempotency_ttl: self.idempotency_ttl.unwrap_or(Duration::from_secs(300)),
            idempotency_capacity: self.idempotency_capacity.unwrap_or(10_000),
            max_body_bytes: self.max_body_bytes.unwrap_or(16 * 1024 * 1024),
            credits_receipts: self.credits_receipts.unwrap_or(true),
            node_hmac_key: self.node_hmac_key.filter(|k| !k.is_empty()),
            backend: self.backend,
            sdk_compatibility_version: sdk,
            drain_timeout: self.drain_timeout.unwrap_or(Duration::from_secs(10)),
            directory_key: self.directory_key,
            operator: self.operator,
            policy_manifest: self.policy_manifest,
            clock: self
                .clock
                .map_or_else(|| Arc::new(SystemClock) as Arc<dyn Clock>, |c| c.0),
            directory,
        };
        Ok(config)
    }
}

/// Whether `url` is an `http://` / `https://` URL with a host.
fn is_http_url(url: &str) -> bool {
    endpoint::parse_url(url, endpoint::HTTP_SCHEMES).is_ok()
}

/// Whether an `http(s)://` endpoint is not routable on the internet: loopback, private,
/// link-local, CGNAT, documentation or other special-use addresses, or a local-only
/// name ([`iicp_proto::endpoint::HostClass`], the rule the directory applies at
/// REGISTER). A URL that does not parse counts as private. Such an endpoint registers
/// only with a directory that is itself private ([`crate::Node::register`]).
pub fn is_private_endpoint(url: &str) -> bool {
    endpoint::parse_url(url, endpoint::HTTP_SCHEMES).map_or(true, |u| !u.class().is_global())
}

/// Whether a node advertising `endpoint` may register with the directory at
/// `directory_url` (DESIGN §4.12): a public endpoint always; a loopback or LAN endpoint
/// ([`is_private_endpoint`]) only with a directory on this machine or its network (a
/// private mesh), since nobody a public directory sends could reach it. The node refuses such a
/// registration ([`crate::Error::PrivateEndpoint`]); a caller checks first to skip it.
pub fn may_register(endpoint: &str, directory_url: Option<&str>) -> bool {
    !is_private_endpoint(endpoint) || directory_url.is_none_or(is_local_directory)
}

/// Whether a directory URL names this machine or its network (an internal address or
/// a local name: [`iicp_proto::endpoint::HostClass::is_local_network`]), which makes a
/// private mesh. A name reserved for testing (`.example`) is not on the network.
fn is_local_directory(url: &str) -> bool {
    endpoint::parse_url(url, endpoint::HTTP_SCHEMES).is_ok_and(|u| u.class().is_local_network())
}

/// The endpoint a node bound to `addr` advertises when it is given no public one: the
/// bound address, with loopback for an unspecified one (`[::]:9484` →
/// `http://127.0.0.1:9484`; IPv6 loopback stays `http://[::1]:…`).
pub fn local_endpoint(addr: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv6Addr};
    let port = addr.port();
    match addr.ip() {
        IpAddr::V6(v6) if v6 == Ipv6Addr::LOCALHOST => format!("http://[::1]:{port}"),
        h if h.is_unspecified() || h.is_loopback() => format!("http://127.0.0.1:{port}"),
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    }
}

fn version_grammar(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._+-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Node;

    #[test]
    fn private_endpoints() {
        assert!(is_http_url("http://a.example.com:9484/x"));
        assert!(is_http_url("https://[::1]:8/"));
        for bad in ["ftp://x", "http://", "http://u@h", "nope"] {
            assert!(!is_http_url(bad), "{bad}");
        }
        for p in [
            "http://127.0.0.1:9484",
            "http://127.1:9484",
            "http://10.1.2.3",
            "http://192.168.0.1",
            "http://[::1]:1",
            "http://[fd00::1]",
            "http://[::ffff:10.0.0.1]",
            "http://localhost:8",
            "http://box",
            "http://n.local",
            "http://100.64.0.1",
            "http://192.0.2.1",
            "http://[2001:db8::1]",
            "not a url",
        ] {
            assert!(is_private_endpoint(p), "{p}");
        }
        for p in [
            "http://8.8.8.8",
            "https://node.example.com",
            "http://[2606:4700::1111]:9484",
        ] {
            assert!(!is_private_endpoint(p), "{p}");
        }
        let lo = "http://127.0.0.1:9484";
        assert!(may_register(
            "https://node.example.com",
            Some("https://iicp.network/api")
        ));
        assert!(!may_register(lo, Some("https://iicp.network/api")));
        assert!(!may_register(lo, Some("http://directory.example/api")));
        for dir in [
            "http://127.0.0.1:8080",
            "http://10.0.0.2/api",
            "http://dirbox:80",
            "http://d.lan",
        ] {
            assert!(may_register(lo, Some(dir)), "{dir}");
        }
        assert!(may_register(lo, None));
    }

    #[test]
    fn private_endpoints_register_only_with_private_directories() {
        let public_dir = Some("https://iicp.network/api");
        assert!(may_register("https://node.example.com:9484", public_dir));
        assert!(!may_register("http://127.0.0.1:9484", public_dir));
        assert!(!may_register("http://[::1]:9484", public_dir));
        assert!(may_register(
            "http://127.0.0.1:9484",
            Some("http://127.0.0.1:8080/api")
        ));
        assert!(may_register(
            "http://192.168.1.5:9484",
            Some("http://box.lan/api")
        ));
        assert!(may_register("http://127.0.0.1:9484", None));
    }

    #[test]
    fn local_endpoints() {
        let ep = |a: &str| local_endpoint(a.parse().expect("addr"));
        assert_eq!(ep("[::]:9484"), "http://127.0.0.1:9484");
        assert_eq!(ep("0.0.0.0:1"), "http://127.0.0.1:1");
        assert_eq!(ep("[::1]:9484"), "http://[::1]:9484");
        assert_eq!(ep("10.0.0.2:1"), "http://10.0.0.2:1");
        assert_eq!(ep("[2001:db8::1]:7"), "http://[2001:db8::1]:7");
    }

    #[test]
    fn auth_modes_parse() {
        for (text, mode) in [
            ("open", AuthMode::Open),
            ("Token", AuthMode::Token),
            (" consumer ", AuthMode::Consumer),
        ] {
            assert_eq!(text.parse::<AuthMode>(), Ok(mode), "{text}");
            assert_eq!(mode.to_string().parse::<AuthMode>(), Ok(mode));
        }
        for bad in ["", "tokens", "bearer", "none"] {
            assert!(bad.parse::<AuthMode>().is_err(), "{bad}");
        }
        let long = "x".repeat(100).parse::<AuthMode>().expect_err("bad");
        assert!(long.to_string().len() < 100, "{long}");
    }

    #[test]
    fn builder_rejects() {
        let base = || {
            Node::builder()
                .endpoint("http://1.2.3.4:9484")
                .intent("urn:iicp:intent:llm:chat:v1")
        };
        assert_eq!(
            Node::builder().build().err(),
            Some(ConfigError::MissingEndpoint)
        );
        assert_eq!(
            Node::builder().endpoint("x").build().err(),
            Some(ConfigError::InvalidEndpoint)
        );
        assert_eq!(
            Node::builder().endpoint("http://h").build().err(),
            Some(ConfigError::NoIntent)
        );
        assert!(matches!(
            base().intent("urn:iicp:intent:BAD:v1").build().err(),
            Some(ConfigError::Intent(_))
        ));
        assert_eq!(
            base().max_concurrent(0).build().err(),
            Some(ConfigError::MaxConcurrent)
        );
        assert_eq!(
            base().max_concurrent(257).build().err(),
            Some(ConfigError::MaxConcurrent)
        );
        assert_eq!(
            base().region("r".repeat(65)).build().err(),
            Some(ConfigError::Region)
        );
        assert_eq!(
            base().directory_url("iicp.network").build().err(),
            Some(ConfigError::DirectoryUrl)
        );
        assert_eq!(
            base()
                .sdk_compatibility_version("bad version")
                .build()
                .err(),
            Some(ConfigError::SdkVersion)
        );
        // validate: the same checks, the endpoint only when set
        let early = || Node::builder().intent("urn:iicp:intent:llm:chat:v1");
        assert_eq!(early().validate(), Ok(()));
        assert_eq!(
            early().max_concurrent(0).validate(),
            Err(ConfigError::MaxConcurrent)
        );
        assert_eq!(
            early().region("r".repeat(65)).validate(),
            Err(ConfigError::Region)
        );
        assert!(matches!(
            early().intent("urn:iicp:intent:BAD:v1").validate(),
            Err(ConfigError::Intent(_))
        ));
        assert_eq!(
            early().directory_url("iicp.network").validate(),
            Err(ConfigError::DirectoryUrl)
        );
        assert_eq!(
            early().endpoint("x").validate(),
            Err(ConfigError::InvalidEndpoint)
        );
        assert_eq!(Node::builder().validate(), Err(ConfigError::NoIntent));
        let node = base().model("a").model("a").build().expect("ok");
        assert_eq!(node.config().models, ["a"]);
        assert_eq!(node.config().region, "unknown");
        assert!(node.config().cx_key.is_some());
    }
}
