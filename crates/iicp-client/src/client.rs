//! [`Client`] and [`ClientBuilder`]: discover, select, submit, chat.
//!
//! The submit pipeline follows PROTOCOL.md §9.2 and DESIGN §4.9 exactly:
//!
//! 1. intent URN validation and the local prohibited-intent guardrail, payload and
//!    timeout checks — before any I/O (`invalid_intent`, `IICP-POLICY-001`,
//!    `invalid_config`);
//! 2. one `task_id` (UUID v4) and one W3C `traceparent` for the whole logical submit;
//! 3. candidates: ticketed dispatch (§8.5) when the directory offers it, else
//!    `GET /v1/discover` (cached for a few seconds, §8.4 `Cache-Control`); hard
//!    eligibility gates (available, score, node id, route, endpoint policy §9.3, IICP-CX
//!    key unless plaintext is allowed §16, circuit breaker §9.5), then the selection
//!    strategy; at most 3 candidates;
//! 4. per node up to 3 attempts on 429/503 with back-off 200 ms × 2ⁿ ± 20 % jitter;
//!    `capacity_exceeded` (or `IICP-E021` + 429) → next node at once; transport errors
//!    and timeouts → next node; other 4xx, 500 and 502 → stop (§7.1, §7.3);
//! 5. per-node circuit breaker: 5 consecutive failures open it for 30 s;
//! 6. `no_nodes_available` (+ `IICP-E033`) when no candidate was eligible,
//!    `all_nodes_failed` (last node error as source) when every candidate failed.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_proto::crypto::cx::NodePublicKey;
use iicp_proto::directory::{DiscoverQuery, NodeEntry, NodeList, MAX_EXCLUDED_PREFIXES};
use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_proto::ids::{TaskId, TraceParent};
use iicp_proto::intent::{check_intent_policy, Intent};
use iicp_proto::lifecycle;
use iicp_proto::secret::Secret;
use iicp_proto::task::{ChatMessage, ChatRequest, Constraints, Qos, TaskResponse, MIN_TIMEOUT_MS};
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::native::{NativeClient, NativeEndpoint};
use rand_core::OsRng;
use serde_json::{Map, Value};

use crate::breaker::Breakers;
use crate::directory::{DirectoryClient, TicketOutcome, VerifiedTicket, DEFAULT_DIRECTORY_URL};
use crate::endpoint::EndpointPolicy;
use crate::error::{short_id, Disposition, Error, Kind};
use crate::options::{
    to_completion, ChatOptions, ChatResult, DiscoverOptions, Encryption, RouteDiscovery, Task,
    TaskResult, Transport, TransportUsed, CHAT_INTENT,
};
use crate::routing::{self, Exclusion, RoutingPolicy, RoutingProfile};
use crate::select::{Strategy, MAX_CANDIDATES};
use crate::stream::{self, ChatStream, Driver, TaskStream};
use crate::submit::{self, Exchange, Route, Seal, NATIVE_CX_V1};
use crate::time::{Clock, Env, Random, Sleeper};

/// Default node timeout (conf SDK-04, seed SDK).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);
/// Largest node timeout a client accepts (conf SDK-04): more is `invalid_config`.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(120_000);
/// Attempts per node on 429/503 (DESIGN §4.9).
pub const MAX_ATTEMPTS_PER_NODE: u32 = 3;
/// Base of the exponential back-off (DESIGN §4.9).
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Relative jitter of the back-off (± 20 %).
pub const BACKOFF_JITTER: f64 = 0.2;
/// Default lifetime of cached discovery results (the directory's `max-age=5`).
pub const DEFAULT_DISCOVERY_TTL: Duration = Duration::from_secs(5);

/// Most discovery results cached.
const DISCOVERY_CACHE_ENTRIES: usize = 64;
/// Most consumer tokens cached.
const TOKEN_CACHE_ENTRIES: usize = 256;
/// A consumer token is renewed this long before it expires (seed SDK).
const TOKEN_RENEW_BEFORE_SECS: u64 = 30;
/// Most ticket requests per submit (usable or not).
const MAX_TICKET_REQUESTS: usize = 6;
/// Longest a dispatch ticket's route serves further tasks of the same query (§8.5: a
/// ticket discloses a route and is not single-use in v1). The directory ranks from a
/// view it refreshes about this often (its discover cache), so a new ticket within it
/// names the same node; never longer than the client's discovery TTL.
const TICKET_REUSE: Duration = Duration::from_secs(1);
/// A ticket this close to its `exp` is not reused.
const TICKET_REUSE_MARGIN_SECS: u64 = 5;
/// Most ticket queries remembered.
const TICKET_CACHE_ENTRIES: usize = 64;
/// How long a directory without ticketed dispatch is not asked again.
const TICKETING_RECHECK: Duration = Duration::from_secs(300);
/// Code of a directory that lacks ticketed dispatch in `Ticketed` mode (seed SDK).
const TICKET_UNAVAILABLE: &str = "IICP-DISPATCH-TICKET-UNAVAILABLE";
/// Code of a node skipped because its circuit breaker is open.
const CIRCUIT_OPEN: &str = "circuit_open";
/// The longest directory `Retry-After` the client honours by failing fast.
const MAX_DIRECTORY_WAIT: Duration = Duration::from_secs(300);

/// The back-off before retry `n` (0-based) of the same node: `200 ms × 2ⁿ`, scaled by
/// `1 + 0.2 × (2r − 1)` for the uniform draw `r` (so within ± 20 %).
pub fn backoff(retry: u32, r: f64) -> Duration {
    RetryPolicy::default().delay(retry, r)
}

/// How often one node is tried and how long the client waits between tries
/// ([`ClientBuilder::retry`]). Default: 3 attempts, 200 ms doubling, capped at 10 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts on one node before the next candidate (1–10).
    pub attempts_per_node: u32,
    /// The first back-off (before jitter); it doubles with each retry.
    pub base: Duration,
    /// The longest back-off (before jitter).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts_per_node: MAX_ATTEMPTS_PER_NODE,
            base: BACKOFF_BASE,
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The back-off before retry `n` (0-based): `base × 2ⁿ` capped at `cap`, scaled by
    /// `1 + 0.2 × (2r − 1)` for the uniform draw `r`.
    pub fn delay(&self, retry: u32, r: f64) -> Duration {
        let grown = self.base.as_secs_f64() * f64::from(2u32.saturating_pow(retry.min(16)));
        let capped = grown.min(self.cap.as_secs_f64());
        let r = if r.is_finite() {
            r.clamp(0.0, 1.0)
        } else {
            0.5
        };
        Duration::from_secs_f64(capped * (1.0 + BACKOFF_JITTER * (2.0 * r - 1.0)))
    }
}

/// Builds a [`Client`].
///
/// ```
/// use std::time::Duration;
/// use iicp_client::{Client, Encryption, Strategy, Transport};
///
/// let client = Client::builder()
///     .directory_url("http://127.0.0.1:8080/api")
///     .timeout(Duration::from_secs(60))
///     .region("eu-central")
///     .api_token("my-api-token")
///     .transport(Transport::Http)
///     .encryption(Encryption::Required)
///     .allow_private_endpoints(true)
///     .strategy(Strategy::weighted_v1())
///     .build()?;
/// assert_eq!(client.directory().base_url(), "http://127.0.0.1:8080/api");
/// # Ok::<(), iicp_client::Error>(())
/// ```
pub struct ClientBuilder {
    directory_url: String,
    timeout: Duration,
    region: Option<String>,
    api_token: Option<Secret>,
    node_credentials: Option<(String, Secret)>,
    transport: Transport,
    encryption: Encryption,
    allow_private_endpoints: bool,
    strategy: Strategy,
    route_discovery: RouteDiscovery,
    discovery_ttl: Duration,
    http: Option<HttpClient>,
    native: Option<NativeClient>,
    env: Env,
    retry: RetryPolicy,
    directory_timeout: Option<Duration>,
    user_agent: Option<String>,
    headers: Vec<(String, String)>,
    routing: RoutingPolicy,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("directory_url", &self.directory_url)
            .field("timeout", &self.timeout)
            .field("region", &self.region)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("node_id", &self.node_credentials.as_ref().map(|(id, _)| id))
            .field("transport", &self.transport)
            .field("encryption", &self.encryption)
            .field("allow_private_endpoints", &self.allow_private_endpoints)
            .field("strategy", &self.strategy)
            .field("route_discovery", &self.route_discovery)
            .field("routing", &self.routing)
            .field("retry", &self.retry)
            .field("directory_timeout", &self.directory_timeout)
            .field("user_agent", &self.user_agent)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            directory_url: DEFAULT_DIRECTORY_URL.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            region: None,
            api_token: None,
            node_credentials: None,
            transport: Transport::default(),
            encryption: Encryption::default(),
            allow_private_endpoints: false,
            strategy: Strategy::default(),
            route_discovery: RouteDiscovery::default(),
            discovery_ttl: DEFAULT_DISCOVERY_TTL,
            http: None,
            native: None,
            env: Env::default(),
            retry: RetryPolicy::default(),
            directory_timeout: None,
            user_agent: None,
            headers: Vec::new(),
            routing: RoutingPolicy::default(),
        }
    }
}

impl ClientBuilder {
    /// The directory base URL (default `https://iicp.network/api`); every directory path
    /// is derived from it.
    pub fn directory_url(mut self, url: impl Into<String>) -> Self {
        self.directory_url = url.into();
        self
    }

    /// Attempts per node and the back-off between them (default
    /// [`RetryPolicy::default`]). Attempts outside 1–10, a zero base or a cap below the
    /// base make [`ClientBuilder::build`] fail with `invalid_config`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The timeout of one directory request (default 10 s).
    pub fn directory_timeout(mut self, timeout: Duration) -> Self {
        self.directory_timeout = Some(timeout);
        self
    }

    /// The `User-Agent` of every request (default `iicp-rs/<version>`). Ignored with
    /// [`ClientBuilder::http_client`].
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// A header sent with every request to the directory and to nodes (a gateway key,
    /// a tenant id); treated like a credential: not sent after a redirect leaves the
    /// origin, never logged. An invalid name or value makes [`ClientBuilder::build`]
    /// fail with `invalid_config`. Ignored with [`ClientBuilder::http_client`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The node timeout (default 30 s). More than 120 000 ms (or zero) makes
    /// [`ClientBuilder::build`] fail with `invalid_config` (conf SDK-04).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The default region preference of discovery.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The caller's credential for authenticated nodes, sent as
    /// `Authorization: Bearer` (HTTP) or key 11 (native). Never logged.
    pub fn api_token(mut self, token: impl Into<Secret>) -> Self {
        self.api_token = Some(token.into());
        self
    }

    /// Identity of a client that is itself a registered node: its `node_id` and the
    /// directory-issued `node_token`. The token is used only towards the directory, to
    /// mint per-node consumer tokens sent as `X-IICP-Consumer-Token` (§8.10); it is
    /// never sent to a provider (§19 T6).
    pub fn node_credentials(
        mut self,
        node_id: impl Into<String>,
        token: impl Into<Secret>,
    ) -> Self {
        self.node_credentials = Some((node_id.into(), token.into()));
        self
    }

    /// Transport preference (default [`Transport::Auto`]).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Encryption policy (default [`Encryption::Required`]).
    pub fn encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = encryption;
        self
    }

    /// Admit loopback, private and link-local provider endpoints (off by default; dev
    /// meshes on one machine or a LAN need it).
    pub fn allow_private_endpoints(mut self, allow: bool) -> Self {
        self.allow_private_endpoints = allow;
        self
    }

    /// Selection strategy (default [`Strategy::Deterministic`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The routing policy of every request (PROTOCOL.md §9.4; default `standard`); a
    /// request's [`DiscoverOptions::routing`] overrides it. `debug_override` allows
    /// plaintext (with a warning in the log); `sensitive` admits only nodes on this
    /// machine, whose loopback endpoints it therefore allows.
    pub fn routing_policy(mut self, policy: impl Into<RoutingPolicy>) -> Self {
        self.routing = policy.into();
        self
    }

    /// Route discovery mode (default [`RouteDiscovery::Auto`]).
    pub fn route_discovery(mut self, mode: RouteDiscovery) -> Self {
        self.route_discovery = mode;
        self
    }

    /// Lifetime of cached discovery results (default 5 s; the directory's
    /// `Cache-Control: max-age` caps it; zero disables the cache).
    pub fn discovery_cache_ttl(mut self, ttl: Duration) -> Self {
        self.discovery_ttl = ttl;
        self
    }

    /// Shares an HTTP client (and its keep-alive pool).
    pub fn http_client(mut self, http: HttpClient) -> Self {
        self.http = Some(http);
        self
    }

    /// Shares a native client (and its connection pool).
    pub fn native_client(mut self, native: NativeClient) -> Self {
        self.native = Some(native);
        self
    }

    /// The clock of the circuit breaker and the caches (tests, simulations).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.env.clock = clock;
        self
    }

    /// The sleeper of the retry back-off (tests, simulations).
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.env.sleeper = sleeper;
        self
    }

    /// The random source of selection profiles and back-off jitter (tests).
    pub fn random(mut self, random: Arc<dyn Random>) -> Self {
        self.env.random = random;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// `invalid_config` for a timeout of zero or above 120 000 ms, a bad directory URL,
    /// an empty credential, or an HTTP client that cannot be built.
    pub fn build(mut self) -> Result<Client, Error> {
        self.routing.validate().map_err(Error::config)?;
        match self.routing.profile {
            RoutingProfile::DebugOverride => {
                tracing::warn!(
                    "routing profile debug_override: prompts may be sent in plaintext to nodes without an IICP-CX key"
                );
                self.encryption = Encryption::AllowPlaintext;
            }
            // the only nodes it admits are on this machine
            RoutingProfile::Sensitive => self.allow_private_endpoints = true,
            _ => {}
        }
        if self.timeout > MAX_TIMEOUT {
            return Err(Error::config(format!(
                "timeout of {} ms exceeds the maximum of {} ms",
                self.timeout.as_millis(),
                MAX_TIMEOUT.as_millis()
            )));
        }
        if self.timeout < Duration::from_millis(MIN_TIMEOUT_MS) {
            return Err(Error::config(format!(
                "timeout must be at least {MIN_TIMEOUT_MS} ms"
            )));
        }
        if self.api_token.as_ref().is_some_and(Secret::is_empty) {
            return Err(Error::config("api_token is empty"));
        }
        if let Some((id, token)) = &self.node_credentials {
            if id.is_empty() || token.is_empty() {
                return Err(Error::config("node credentials are incomplete"));
            }
        }
        let r = &self.retry;
        if !(1..=10).contains(&r.attempts_per_node) || r.base.is_zero() || r.cap < r.base {
            return Err(Error::config(
                "retry policy: attempts_per_node must be 1-10, base above zero, cap >= base",
            ));
        }
        if self.directory_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("directory_timeout must be above zero"));
        }
        let http = match self.http {
            Some(h) => h,
            None => {
                let mut cfg = HttpClientConfig::default();
                if let Some(ua) = self.user_agent {
                    cfg.user_agent = ua;
                }
                for (name, value) in &self.headers {
                    let name = http::HeaderName::try_from(name.as_str())
                        .map_err(|_| Error::config(format!("header name {name:?} is invalid")))?;
                    let value = http::HeaderValue::try_from(value.as_str()).map_err(|_| {
                        Error::config(format!("the value of header {name} is invalid"))
                    })?;
                    cfg.default_headers.append(name, value);
                }
                HttpClient::new(cfg).map_err(|e| {
                    Error::config("the HTTP client could not be built").with_source(e)
                })?
            }
        };
        let mut directory = DirectoryClient::new(&self.directory_url, http.clone())?;
        if let Some(t) = self.directory_timeout {
            directory = directory.with_timeout(t);
        }
        // Provider calls get pools of their own whose connectors enforce the endpoint
        // policy on the addresses they dial; directory calls keep the given client.
        let endpoint_policy = EndpointPolicy::new(self.allow_private_endpoints);
        let native = self.native.unwrap_or_default();
        let (http, native) = match endpoint_policy.address_rule() {
            Some(rule) => (
                http.with_address_rule(rule.clone()).map_err(|e| {
                    Error::config("the HTTP client could not be built").with_source(e)
                })?,
                native.with_address_rule(rule),
            ),
            None => (http, native),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                directory,
                http,
                native,
                timeout: self.timeout,
                region: self.region,
                api_token: self.api_token,
                node_credentials: self.node_credentials,
                transport: self.transport,
                encryption: self.encryption,
                endpoint_policy,
                strategy: self.strategy,
                route_discovery: self.route_discovery,
                discovery_ttl: self.discovery_ttl,
                env: self.env,
                breakers: Breakers::default(),
                discovery_cache: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
                ticketing_off_until: Mutex::new(None),
                recent_tickets: Mutex::new(HashMap::new()),
                directory_wait: Mutex::new(None),
                retry: self.retry,
                routing: self.routing,
            }),
        })
    }
}

struct Inner {
    directory: DirectoryClient,
    http: HttpClient,
    native: NativeClient,
    timeout: Duration,
    region: Option<String>,
    api_token: Option<Secret>,
    node_credentials: Option<(String, Secret)>,
    transport: Transport,
    encryption: Encryption,
    endpoint_policy: EndpointPolicy,
    strategy: Strategy,
    route_discovery: RouteDiscovery,
    discovery_ttl: Duration,
    env: Env,
    breakers: Breakers,
    routing: RoutingPolicy,
    discovery_cache: Mutex<HashMap<String, (Instant, Arc<NodeList>)>>,
    tokens: Mutex<HashMap<(String, String), (Secret, u64)>>,
    ticketing_off_until: Mutex<Option<Instant>>,
    /// The last verified ticket of each ticket query (without exclusions), by the
    /// request's JSON text, and when it came ([`TICKET_REUSE`]).
    recent_tickets: Mutex<HashMap<String, (Instant, Arc<VerifiedTicket>)>>,
    /// A directory 429/503 with `Retry-After`: until then, directory calls fail fast
    /// with that error (what it answered, and how long is left).
    directory_wait: Mutex<Option<(Instant, ErrorBody)>>,
    retry: RetryPolicy,
}

/// The IICP consumer client. Cheap to clone; clones share pools, caches and breakers.
///
/// ```no_run
/// use iicp_client::{Client, Task};
/// use iicp_proto::task::ChatMessage;
/// use serde_json::json;
///
/// # async fn run() -> Result<(), iicp_client::Error> {
/// let client = Client::new()?;
///
/// // Chat: an OpenAI-shaped completion and the node that answered.
/// let reply = client.chat(vec![ChatMessage::new("user", "Hello!")]).await?;
/// println!("{} (node {})", reply.text(), reply.node_id);
///
/// // Discover nodes for an intent.
/// let nodes = client.discover("urn:iicp:intent:llm:chat:v1", Default::default()).await?;
/// println!("{} nodes", nodes.len());
///
/// // Submit any task.
/// let task = Task::new(
///     "urn:iicp:intent:llm:chat:v1",
///     json!({"messages": [{"role": "user", "content": "Hi"}]}),
/// );
/// let result = client.submit(task).await?;
/// println!("{}", result.result());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("directory", &self.inner.directory.base_url())
            .field("timeout", &self.inner.timeout)
            .field("transport", &self.inner.transport)
            .field("encryption", &self.inner.encryption)
            .field("strategy", &self.inner.strategy)
            .finish_non_exhaustive()
    }
}

/// Why a discovered node is not a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Skip {
    Unavailable,
    NoNodeId,
    Score,
    NoRoute,
    Endpoint,
    Keyless,
    BadKey,
    CircuitOpen,
    /// The node advertises an auth mode whose credential this client cannot present.
    NoCredential,
    /// The routing profile excludes it.
    Policy(Exclusion),
}

/// An eligible node with its route and key.
struct Candidate {
    /// The node advertises the service-lifecycle profile.
    streams: bool,
    /// Its CX key lists `cx_stream_v1` (it seals streamed chunks).
    cx_stream: bool,
    /// It advertises `POST /v1/tasks/stream` (submit and events in one request, ADR 0019).
    submit_stream: bool,
    node_id: String,
    route: Route,
    check_url: String,
    key: Option<NodePublicKey>,
    response_encryption: bool,
    /// The node advertises `consumer` auth (`iicp_auth` capability extension).
    consumer_auth: bool,
}

/// Buffered submission, or a stream bounded by a deadline.
#[derive(Clone, Copy)]
enum Mode {
    Buffered,
    Stream { deadline: tokio::time::Instant },
}

/// What a successful attempt produced.
enum Done {
    Buffered(Box<TaskResponse>),
    Stream(Box<Driver>),
}

/// A successful submission through the retry loop.
struct Finished {
    done: Done,
    node_id: String,
    attempts: u32,
    latency: Duration,
    transport: TransportUsed,
    encrypted: bool,
    profile: &'static str,
}

/// What to do after a failed attempt.
enum Next {
    RetrySame,
    OtherNode,
    Stop,
}

/// Where candidates come from during one submit.
enum Source {
    List(VecDeque<Candidate>),
    Tickets {
        excluded: Vec<String>,
        requests: usize,
        exhausted: bool,
    },
}

/// Everything fixed for one logical submit.
struct Prepared {
    intent: Intent,
    payload: Value,
    payload_json: Vec<u8>,
    constraints: Constraints,
    route: DiscoverOptions,
    task_id: TaskId,
    traceparent: TraceParent,
    timeout: Duration,
    /// A streamed submit: candidates that stream come first.
    stream: bool,
    /// The effective routing policy.
    routing: RoutingPolicy,
}

#[derive(Default)]
struct Skips {
    counts: HashMap<Skip, usize>,
}

impl Skips {
    fn add(&mut self, s: Skip) {
        *self.counts.entry(s).or_default() += 1;
    }

    fn no_candidates(&self, routing: &RoutingPolicy) -> Error {
        let total: usize = self.counts.values().sum();
        if self.counts.keys().any(|k| matches!(k, Skip::Policy(_))) {
            let mut reasons: Vec<String> = self
                .counts
                .iter()
                .map(|(k, v)| match k {
                    Skip::Policy(e) => format!("{}: {v}", e.as_str()),
                    other => format!("{other:?}: {v}"),
                })
                .collect();
            reasons.sort();
            return Error::new(
                Kind::Policy,
                ErrorCode::RoutingPolicyRefused,
                format!(
                    "routing profile {} refused all {total} discovered node(s) before dispatch; no prompt was sent ({})",
                    routing.profile,
                    reasons.join(", ")
                ),
            );
        }
        let keyless = self.counts.get(&Skip::Keyless).copied().unwrap_or(0);
        if total > 0 && keyless == total {
            return Error::new(
                Kind::NoNodes,
                ErrorCode::CxRequired,
                "every discovered node lacks an IICP-CX key and plaintext is not allowed",
            );
        }
        let mut reasons: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k:?}: {v}"))
            .collect();
        reasons.sort();
        let message = if total == 0 {
            "the directory returned no node for this intent".to_owned()
        } else {
            format!("no eligible node ({})", reasons.join(", "))
        };
        Error::new(Kind::NoNodes, ErrorCode::NoNodesAvailable, message)
            .with_spec_code(ErrorCode::E033)
    }
}

impl Client {
    /// A client with the defaults: directory `https://iicp.network/api`, 30 s timeout,
    /// IICP-CX required, public endpoints only, deterministic selection.
    ///
    /// # Errors
    /// `invalid_config` if the HTTP client cannot be built.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// A builder with the defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The directory client (shared pool).
    pub fn directory(&self) -> &DirectoryClient {
        &self.inner.directory
    }

    /// The configured node timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    fn secrets(&self) -> Vec<&str> {
        let mut out = Vec::with_capacity(2);
        if let Some(t) = &self.inner.api_token {
            out.push(t.expose());
        }
        if let Some((_, t)) = &self.inner.node_credentials {
            out.push(t.expose());
        }
        out
    }

    fn secret_values(&self) -> Vec<Secret> {
        let mut out = Vec::with_capacity(2);
        if let Some(t) = &self.inner.api_token {
            out.push(t.clone());
        }
        if let Some((_, t)) = &self.inner.node_credentials {
            out.push(t.clone());
        }
        out
    }

    fn scrub(&self, e: Error) -> Error {
        e.scrub(&self.secrets())
    }

    /// Discovers nodes for `intent` (`GET /v1/discover`, cached a few seconds) and drops
    /// ineligible ones: unavailable, score below 0.1, no node id, no usable endpoint,
    /// refused by the endpoint policy. IICP-CX keys are not required here.
    ///
    /// ```no_run
    /// use iicp_client::{Client, DiscoverOptions};
    ///
    /// # async fn run() -> Result<(), iicp_client::Error> {
    /// let client = Client::new()?;
    /// let opts = DiscoverOptions { region: Some("eu-central".into()), limit: Some(5), ..Default::default() };
    /// for node in client.discover("urn:iicp:intent:llm:chat:v1", opts).await? {
    ///     println!("{:?} score {:?}", node.node_id, node.score);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `invalid_intent` / `IICP-POLICY-001` before any I/O, `validation_error` for a
    /// `min_reputation` outside `[0, 1]`, directory and transport errors.
    pub async fn discover(
        &self,
        intent: &str,
        options: DiscoverOptions,
    ) -> Result<Vec<NodeEntry>, Error> {
        let intent = check_intent(intent)?;
        check_route_options(&options)?;
        let tp = TraceParent::generate(&mut OsRng);
        let list = self
            .discover_cached(&options.query(&intent, self.inner.region.as_deref()), &tp)
            .await
            .map_err(|e| self.scrub(e))?;
        let limit = options
            .limit
            .map_or(usize::MAX, |l| l.clamp(1, 50) as usize);
        Ok(list
            .nodes
            .iter()
            .filter(|n| pinned_to(&options, n))
            .filter(|n| self.basic_eligibility(n).is_ok())
            .take(limit)
            .cloned()
            .collect())
    }

    /// Submits a task: validation before any I/O, discovery, selection, submission with
    /// the retry rules of DESIGN §4.9.
    ///
    /// ```no_run
    /// use iicp_client::{Client, ErrorCode, Task};
    /// use serde_json::json;
    ///
    /// # async fn run() -> Result<(), iicp_client::Error> {
    /// let client = Client::new()?;
    /// let task = Task::new("urn:iicp:intent:llm:chat:v1", json!({"messages": [{"role": "user", "content": "2+2?"}]}))
    ///     .with_timeout_ms(20_000);
    /// match client.submit(task).await {
    ///     Ok(done) => println!("{} answered: {}", done.node_id, done.result()),
    ///     Err(e) if e.code() == &ErrorCode::NoNodesAvailable => println!("no node serves this intent"),
    ///     Err(e) if e.code() == &ErrorCode::AllNodesFailed => println!("every node failed: {e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `invalid_intent`, `IICP-POLICY-001`, `invalid_config` (timeout), `validation_error`
    /// (payload not an object) before any I/O; `no_nodes_available` / `IICP-CX-REQUIRED`
    /// when no node is eligible; a node's error when it is not retryable (other 4xx,
    /// 500, 502, CX errors); `all_nodes_failed` when every candidate failed.
    pub async fn submit(&self, task: Task) -> Result<TaskResult, Error> {
        let prepared = self.prepare(task)?;
        self.run(&prepared).await.map_err(|e| self.scrub(e))
    }

    /// Chat with the default options: intent `urn:iicp:intent:llm:chat:v1`, QoS
    /// `interactive`.
    ///
    /// ```no_run
    /// use iicp_client::Client;
    /// use iicp_proto::task::ChatMessage;
    ///
    /// # async fn run() -> Result<(), iicp_client::Error> {
    /// let client = Client::new()?;
    /// let reply = client.chat(vec![ChatMessage::new("user", "Say hi")]).await?;
    /// println!("{}", reply.completion.choices[0].message.content);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::submit`], plus `validation_error` for an invalid chat payload and
    /// `backend_error` when the node's result is not a chat completion.
    pub async fn chat(&self, messages: Vec<ChatMessage>) -> Result<ChatResult, Error> {
        self.chat_with(messages, ChatOptions::default()).await
    }

    /// Chat with options (model, max_tokens, temperature, timeout, QoS, region, …).
    ///
    /// # Errors
    /// As [`Client::chat`].
    pub async fn chat_with(
        &self,
        messages: Vec<ChatMessage>,
        options: ChatOptions,
    ) -> Result<ChatResult, Error> {
        let mut request = ChatRequest::new(messages);
        request.model = options.model.clone();
        request.max_tokens = options.max_tokens;
        request.temperature = options.temperature;
        self.chat_request(request, options).await
    }

    /// Chat with a complete `llm:chat:v1` request: every member of `request` (`top_p`,
    /// `stop`, `tools`, `tool_choice`, `response_format`, image parts, …) travels to the
    /// node as given; `options` sets the route, QoS, timeout and intent, and its
    /// `model` / `max_tokens` (when set) the constraints. What compatibility layers
    /// (the `iicp-proxy` crate) call; [`Client::chat_with`] builds a request from its
    /// options and calls this.
    ///
    /// # Errors
    /// As [`Client::chat`].
    pub async fn chat_request(
        &self,
        request: ChatRequest,
        options: ChatOptions,
    ) -> Result<ChatResult, Error> {
        let task = chat_task(request, options)?;
        let result = self.submit(task).await?;
        let completion = to_completion(result.result(), &result.task_id).ok_or_else(|| {
            Error::protocol("the node's result is not a chat completion").with_node(&result.node_id)
        })?;
        let model = result
            .response
            .model_used
            .clone()
            .or_else(|| completion.model.clone());
        Ok(ChatResult {
            completion,
            node_id: result.node_id,
            task_id: result.task_id,
            model,
            traceparent: result.traceparent,
        })
    }

    /// Submits a task as a stream of lifecycle events (the service-lifecycle profile,
    /// PROTOCOL.md §11, ADR 0013): `Accepted`?, `Partial` chunks, then `Completed` — or
    /// an error, never a success, when the node breaks the event rules, the stream ends
    /// before its terminal event, or the deadline passes.
    ///
    /// Discovery prefers nodes that advertise the profile; a node that does not stream
    /// (or a keyed node without `cx_stream_v1`) is asked buffered and its answer comes
    /// as one `Completed` ([`TaskStream::is_streamed`] is then false). Failures before
    /// the first partial are retried as [`Client::submit`] retries them (the next node
    /// gets the same task id, a new call id); after it a failure ends the stream, its
    /// message saying how many chunks and characters were received. The client's (or
    /// the task's) timeout bounds the whole stream. Dropping the stream before its end
    /// cancels the task on the node (native CONTROL `cancel`, HTTP `POST
    /// /v1/tasks/{id}/cancel`; best effort).
    ///
    /// ```no_run
    /// use iicp_client::{Client, Task, TaskEvent};
    /// use serde_json::json;
    ///
    /// # async fn run(client: Client) -> Result<(), iicp_client::Error> {
    /// let task = Task::new("urn:iicp:intent:llm:chat:v1", json!({"messages": [{"role": "user", "content": "Hi"}]}));
    /// let mut events = client.submit_stream(task).await?;
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         TaskEvent::Partial { result, .. } => println!("chunk {result}"),
    ///         TaskEvent::Completed(end) => println!("done, {:?} tokens", end.tokens_used),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::submit`] until the stream starts; the stream's items after that.
    pub async fn submit_stream(&self, task: Task) -> Result<TaskStream, Error> {
        let mut prepared = self.prepare(task)?;
        prepared.stream = true;
        let deadline = tokio::time::Instant::now() + prepared.timeout;
        let run = self.run_with(&prepared, Mode::Stream { deadline });
        let finished = match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => r.map_err(|e| self.scrub(e))?,
            Err(_) => {
                return Err(Error::new(
                    Kind::Timeout,
                    ErrorCode::TaskTimeout,
                    "no stream started within the task's deadline",
                ))
            }
        };
        let info = stream::Info {
            node_id: finished.node_id,
            task_id: prepared.task_id.clone(),
            transport: finished.transport,
            encrypted: finished.encrypted,
            attempts: finished.attempts,
            traceparent: prepared.traceparent,
        };
        let driver = match finished.done {
            Done::Stream(d) => *d,
            Done::Buffered(resp) => Driver::buffered(info, *resp, deadline, self.secret_values()),
        };
        Ok(TaskStream::new(driver))
    }

    /// Chat as a stream ([`Client::chat_request`] streamed): text deltas, tool-call
    /// fragments and usage as they come, then `Done` with the assembled completion —
    /// what [`Client::chat_request`] would have returned. Always works: from a node
    /// that does not stream, the whole answer comes as one delta before `Done`.
    ///
    /// ```no_run
    /// use iicp_client::{ChatEvent, ChatMessage, ChatOptions, ChatRequest, Client};
    /// use std::io::Write;
    ///
    /// # async fn run(client: Client) -> Result<(), iicp_client::Error> {
    /// let request = ChatRequest::new(vec![ChatMessage::new("user", "Tell me a story")]);
    /// let mut chat = client.chat_stream(request, ChatOptions::default()).await?;
    /// while let Some(event) = chat.next().await {
    ///     match event? {
    ///         ChatEvent::Delta(text) => print!("{text}"),
    ///         ChatEvent::Done(reply) => println!("\n[{} via {}]", reply.task_id, reply.node_id),
    ///         _ => {}
    ///     }
    ///     let _ = std::io::stdout().flush();
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::chat_request`] until the stream starts; then as
    /// [`Client::submit_stream`].
    pub async fn chat_stream(
        &self,
        request: ChatRequest,
        options: ChatOptions,
    ) -> Result<ChatStream, Error> {
        let task = chat_task(request, options)?;
        Ok(ChatStream::new(self.submit_stream(task).await?))
    }
}

/// The `llm:chat:v1` task of a chat request and its options.
fn chat_task(request: ChatRequest, options: ChatOptions) -> Result<Task, Error> {
    {
        request.validate().map_err(|e| {
            Error::new(
                Kind::Input,
                ErrorCode::ValidationError,
                format!("invalid chat request: {e}"),
            )
        })?;
        let payload = serde_json::to_value(&request).map_err(|e| {
            Error::new(
                Kind::Input,
                ErrorCode::ValidationError,
                "chat request is not serialisable",
            )
            .with_source(e)
        })?;
        let qos = options.qos.unwrap_or(Qos::Interactive);
        let mut task = Task::new(options.intent.as_deref().unwrap_or(CHAT_INTENT), payload);
        task.constraints.qos = Some(qos);
        task.constraints.model = options.model.clone();
        task.constraints.max_tokens = options.max_tokens;
        task.constraints.timeout_ms = options
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        task.route = DiscoverOptions {
            region: options.region,
            qos: Some(qos),
            min_reputation: options.min_reputation,
            model: options.model,
            node_id: options.node_id,
            routing: options.routing,
            ..DiscoverOptions::default()
        };
        Ok(task)
    }
}

impl Client {
    // -----------------------------------------------------------------------------
    // Pipeline
    // -----------------------------------------------------------------------------

    fn prepare(&self, task: Task) -> Result<Prepared, Error> {
        let intent = check_intent(&task.intent)?;
        check_route_options(&task.route)?;
        if !task.payload.is_object() {
            return Err(Error::new(
                Kind::Input,
                ErrorCode::ValidationError,
                "the task payload must be a JSON object",
            ));
        }
        let timeout = match task.constraints.timeout_ms {
            Some(ms) if ms > MAX_TIMEOUT.as_millis() as u64 => {
                return Err(Error::config(format!(
                    "constraints.timeout_ms of {ms} exceeds the maximum of {} ms",
                    MAX_TIMEOUT.as_millis()
                )))
            }
            Some(ms) if ms < MIN_TIMEOUT_MS => {
                return Err(Error::config(format!(
                    "constraints.timeout_ms must be at least {MIN_TIMEOUT_MS} ms"
                )))
            }
            Some(ms) => Duration::from_millis(ms),
            None => self.inner.timeout,
        };
        let payload_json = serde_json::to_vec(&task.payload).map_err(|e| {
            Error::new(
                Kind::Input,
                ErrorCode::ValidationError,
                "payload is not serialisable",
            )
            .with_source(e)
        })?;
        let constraints = project_constraints(&task.constraints, timeout);
        let mut route = task.route;
        if route.qos.is_none() {
            route.qos = task.constraints.qos;
        }
        if route.model.is_none() {
            route.model = task.constraints.model.clone();
        }
        if route.region.is_none() {
            route.region = task.constraints.region.clone();
        }
        let routing = route
            .routing
            .clone()
            .unwrap_or_else(|| self.inner.routing.clone());
        routing.validate().map_err(Error::config)?;
        if routing.profile == RoutingProfile::DebugOverride
            && self.inner.routing.profile != RoutingProfile::DebugOverride
        {
            tracing::warn!("routing profile debug_override: this request may travel in plaintext");
        }
        Ok(Prepared {
            intent,
            payload: task.payload,
            payload_json,
            constraints,
            route,
            task_id: task.task_id.unwrap_or_else(|| TaskId::generate(&mut OsRng)),
            traceparent: TraceParent::generate(&mut OsRng),
            timeout,
            stream: false,
            routing,
        })
    }

    async fn run(&self, p: &Prepared) -> Result<TaskResult, Error> {
        let f = self.run_with(p, Mode::Buffered).await?;
        let Done::Buffered(response) = f.done else {
            return Err(Error::protocol("a buffered submit produced a stream"));
        };
        Ok(TaskResult {
            task_id: p.task_id.clone(),
            node_id: f.node_id,
            response: *response,
            attempts: f.attempts,
            latency: f.latency,
            transport: f.transport,
            encrypted: f.encrypted,
            selection_profile: f.profile,
            routing_profile: p.routing.profile,
            traceparent: p.traceparent,
        })
    }

    async fn run_with(&self, p: &Prepared, mode: Mode) -> Result<Finished, Error> {
        let mut skips = Skips::default();
        let (mut source, mut profile) = self.open_source(p, &mut skips).await?;
        let mut attempts = 0u32;
        let mut tried = 0usize;
        let mut last: Option<Error> = None;
        let mut all_transient = true;
        while tried < MAX_CANDIDATES {
            let cand = match self
                .next_candidate(&mut source, &mut profile, p, &mut skips)
                .await?
            {
                Some(c) => c,
                None => break,
            };
            tried += 1;
            match self.try_node(&cand, p, &mut attempts, mode).await {
                Ok((done, latency, transport)) => {
                    return Ok(Finished {
                        done,
                        node_id: cand.node_id,
                        attempts,
                        latency,
                        transport,
                        encrypted: cand.key.is_some(),
                        profile,
                    })
                }
                Err((Next::Stop, e)) => return Err(e.with_node(&cand.node_id)),
                Err((_, e)) => {
                    self.forget_tickets_to(&cand.node_id);
                    tracing::debug!(
                        node = %short_id(&cand.node_id),
                        code = %e.code(),
                        "node failed; trying the next candidate"
                    );
                    all_transient &= e.disposition().is_transient();
                    last = Some(e.with_node(&cand.node_id));
                }
            }
        }
        match last {
            None => Err(skips.no_candidates(&p.routing)),
            Some(last) => Err(Error::exhausted(tried, attempts, last, all_transient)),
        }
    }

    async fn open_source(
        &self,
        p: &Prepared,
        skips: &mut Skips,
    ) -> Result<(Source, &'static str), Error> {
        let ticketing = match self.inner.route_discovery {
            // a pinned task names its node: the list is filtered to it
            _ if p.route.node_id.is_some() => false,
            RouteDiscovery::Legacy => false,
            RouteDiscovery::Ticketed => true,
            // a restrictive profile evaluates every discovered node, not one per ticket
            RouteDiscovery::Auto if p.routing.profile.is_restrictive() => false,
            RouteDiscovery::Auto => {
                let now = self.inner.env.clock.now();
                let mut off = self.inner.ticketing_off_until.lock();
                match *off {
                    Some(until) if now < until => false,
                    Some(_) => {
                        *off = None;
                        true
                    }
                    None => true,
                }
            }
        };
        if ticketing {
            return Ok((
                Source::Tickets {
                    excluded: Vec::new(),
                    requests: 0,
                    exhausted: false,
                },
                "directory_ticket_v1",
            ));
        }
        Ok((
            self.list_source(p, skips).await?,
            self.inner.strategy.name(),
        ))
    }

    async fn list_source(&self, p: &Prepared, skips: &mut Skips) -> Result<Source, Error> {
        let query = p.route.query(&p.intent, self.inner.region.as_deref());
        let list = self.discover_cached(&query, &p.traceparent).await?;
        let mut eligible: Vec<(NodeEntry, Candidate)> = Vec::new();
        for node in list.nodes.iter().filter(|n| pinned_to(&p.route, n)) {
            match self.candidate(node, &p.routing) {
                Ok(c) => eligible.push((node.clone(), c)),
                Err(s) => skips.add(s),
            }
        }
        let nodes: Vec<NodeEntry> = eligible.iter().map(|(n, _)| n.clone()).collect();
        // a stream ranks every eligible node, so that streaming ones can come first
        let max = if p.stream {
            nodes.len().max(MAX_CANDIDATES)
        } else {
            MAX_CANDIDATES
        };
        let order = self
            .inner
            .strategy
            .order(&nodes, max, self.inner.env.random.as_ref());
        let mut slots: Vec<Option<Candidate>> =
            eligible.into_iter().map(|(_, c)| Some(c)).collect();
        let mut queue: VecDeque<Candidate> = order
            .into_iter()
            .filter_map(|i| slots.get_mut(i).and_then(Option::take))
            .collect();
        if p.stream {
            // nodes that stream first, each group in the strategy's order
            queue.make_contiguous().sort_by_key(|c| !c.streams);
        }
        Ok(Source::List(queue))
    }

    /// The recent ticket of the query `key`, while it may be reused.
    fn recent_ticket(&self, key: &str) -> Option<Arc<VerifiedTicket>> {
        let clock = self.inner.env.clock.as_ref();
        let reuse = TICKET_REUSE.min(self.inner.discovery_ttl);
        let mut recent = self.inner.recent_tickets.lock();
        let (at, ticket) = recent.get(key)?;
        if clock.now().saturating_duration_since(*at) < reuse
            && ticket.claims.exp > clock.now_secs() + TICKET_REUSE_MARGIN_SECS
        {
            return Some(Arc::clone(ticket));
        }
        recent.remove(key);
        None
    }

    fn remember_ticket(&self, key: String, ticket: &VerifiedTicket) {
        if TICKET_REUSE.min(self.inner.discovery_ttl).is_zero() {
            return;
        }
        let mut recent = self.inner.recent_tickets.lock();
        if recent.len() >= TICKET_CACHE_ENTRIES && !recent.contains_key(&key) {
            recent.clear();
        }
        let now = self.inner.env.clock.now();
        recent.insert(key, (now, Arc::new(ticket.clone())));
    }

    /// A node failed: no remembered ticket routes to it any more.
    fn forget_tickets_to(&self, node_id: &str) {
        self.inner
            .recent_tickets
            .lock()
            .retain(|_, (_, t)| t.node_id() != node_id);
    }

    async fn next_candidate(
        &self,
        source: &mut Source,
        profile: &mut &'static str,
        p: &Prepared,
        skips: &mut Skips,
    ) -> Result<Option<Candidate>, Error> {
        loop {
            match source {
                Source::List(queue) => return Ok(queue.pop_front()),
                Source::Tickets {
                    excluded,
                    requests,
                    exhausted,
                } => {
                    if *exhausted
                        || *requests >= MAX_TICKET_REQUESTS
                        || excluded.len() >= MAX_EXCLUDED_PREFIXES
                    {
                        return Ok(None);
                    }
                    *requests += 1;
                    let mut req = p
                        .route
                        .ticket_request(&p.intent, self.inner.region.as_deref());
                    req.exclude_node_id_prefixes = excluded.clone();
                    // a first request of a query may reuse its recent ticket's route
                    let reuse_key = excluded
                        .is_empty()
                        .then(|| serde_json::to_string(&req).ok())
                        .flatten();
                    if let Some(ticket) = reuse_key.as_deref().and_then(|k| self.recent_ticket(k)) {
                        excluded.push(short_id(ticket.node_id()).to_owned());
                        match self.candidate(&ticket.route, &p.routing) {
                            Ok(c) => return Ok(Some(c)),
                            Err(s) => {
                                skips.add(s);
                                continue;
                            }
                        }
                    }
                    self.directory_gate()?;
                    let outcome = self.note_directory(
                        self.inner
                            .directory
                            .dispatch_ticket(&req, Some(&p.traceparent))
                            .await,
                    )?;
                    match outcome {
                        TicketOutcome::Ticket(ticket) => {
                            if let Some(key) = reuse_key {
                                self.remember_ticket(key, &ticket);
                            }
                            let node_id = ticket.node_id().to_owned();
                            excluded.push(short_id(&node_id).to_owned());
                            match self.candidate(&ticket.route, &p.routing) {
                                Ok(c) => return Ok(Some(c)),
                                Err(s) => skips.add(s),
                            }
                        }
                        TicketOutcome::NoRoute => *exhausted = true,
                        TicketOutcome::Unavailable => {
                            if self.inner.route_discovery == RouteDiscovery::Ticketed {
                                return Err(Error::new(
                                    Kind::Remote,
                                    ErrorCode::from(TICKET_UNAVAILABLE),
                                    "the directory does not offer ticketed dispatch",
                                ));
                            }
                            if *requests > 1 {
                                // tickets worked before in this submit; do not mix sources
                                *exhausted = true;
                                continue;
                            }
                            let until = self.inner.env.clock.now() + TICKETING_RECHECK;
                            *self.inner.ticketing_off_until.lock() = Some(until);
                            tracing::debug!("directory lacks ticketed dispatch; using discover");
                            *source = self.list_source(p, skips).await?;
                            *profile = self.inner.strategy.name();
                        }
                    }
                }
            }
        }
    }

    /// Up to 3 attempts on one node. Returns the response, the attempt's latency and
    /// transport, or what to do next with the node's error.
    async fn try_node(
        &self,
        cand: &Candidate,
        p: &Prepared,
        attempts: &mut u32,
        mode: Mode,
    ) -> Result<(Done, Duration, TransportUsed), (Next, Error)> {
        let env = &self.inner.env;
        // names and literals here; resolved addresses in the provider pools' connectors
        if let Err(refusal) = self.inner.endpoint_policy.check_url(&cand.check_url) {
            return Err((
                Next::OtherNode,
                Error::new(
                    Kind::Connect,
                    ErrorCode::EndpointRefused,
                    refusal.to_string(),
                )
                .with_source(refusal),
            ));
        }
        // Consumer tokens travel as an HTTP header; native CALLs have only key 11, which
        // carries one to a node that advertises `consumer` auth when no API token is set.
        let consumer_token = match cand.route {
            Route::Http(_) => self.consumer_token(&cand.node_id, p.intent.as_str()).await,
            Route::Native(_) if cand.consumer_auth && self.inner.api_token.is_none() => {
                self.consumer_token(&cand.node_id, p.intent.as_str()).await
            }
            Route::Native(_) => None,
        };
        let api_token = match cand.route {
            Route::Native(_) if self.inner.api_token.is_none() => consumer_token.as_ref(),
            _ => self.inner.api_token.as_ref(),
        };
        let exchange = Exchange {
            task_id: &p.task_id,
            intent: &p.intent,
            payload: &p.payload,
            payload_json: &p.payload_json,
            constraints: &p.constraints,
            traceparent: &p.traceparent,
            timeout: p.timeout,
            api_token,
            consumer_token: consumer_token.as_ref(),
        };
        let seal = Seal {
            key: cand.key.as_ref(),
            response_encryption: cand.response_encryption,
        };
        let transport = match cand.route {
            Route::Http(_) => TransportUsed::Http,
            Route::Native(_) => TransportUsed::Native,
        };
        let mut retry = 0u32;
        loop {
            if !self.inner.breakers.allow(&cand.node_id, env.clock.as_ref()) {
                return Err((
                    Next::OtherNode,
                    Error::new(
                        Kind::Connect,
                        ErrorCode::from(CIRCUIT_OPEN),
                        "the node's circuit breaker is open",
                    ),
                ));
            }
            *attempts += 1;
            let started = Instant::now();
            let stream_deadline = match mode {
                // a keyed node streams only when it seals chunks (ADR 0013)
                Mode::Stream { deadline }
                    if cand.streams && (cand.key.is_none() || cand.cx_stream) =>
                {
                    Some(deadline)
                }
                _ => None,
            };
            let outcome = match stream_deadline {
                Some(deadline) => {
                    let info = stream::Info {
                        node_id: cand.node_id.clone(),
                        task_id: p.task_id.clone(),
                        transport,
                        encrypted: cand.key.is_some(),
                        attempts: *attempts,
                        traceparent: p.traceparent,
                    };
                    stream::open(
                        &self.inner.http,
                        &self.inner.native,
                        &cand.route,
                        &exchange,
                        &seal,
                        stream::Start {
                            info,
                            deadline,
                            secrets: self.secret_values(),
                            one_request: cand.submit_stream,
                        },
                    )
                    .await
                    .map(|d| Done::Stream(Box::new(d)))
                }
                None => submit::attempt(
                    &self.inner.http,
                    &self.inner.native,
                    &cand.route,
                    &exchange,
                    &seal,
                )
                .await
                .map(|r| Done::Buffered(Box::new(r))),
            };
            let err = match outcome {
                Ok(done) => {
                    self.inner.breakers.record_success(&cand.node_id);
                    return Ok((done, started.elapsed(), transport));
                }
                Err(e) => self.scrub(e),
            };
            let next = classify(&err);
            let counts_as_failure = match next {
                Next::RetrySame | Next::OtherNode => !err.is_node_switch(),
                Next::Stop => err.status_code().is_some_and(|s| s >= 500),
            };
            if counts_as_failure {
                self.inner
                    .breakers
                    .record_failure(&cand.node_id, env.clock.as_ref());
            } else {
                self.inner.breakers.release_probe(&cand.node_id);
            }
            match next {
                Next::RetrySame if retry + 1 < self.inner.retry.attempts_per_node => {
                    // max(backoff, the node's Retry-After), if that fits the task's
                    // budget; otherwise the next node
                    let delay = self
                        .inner
                        .retry
                        .delay(retry, env.random.next_f64())
                        .max(err.retry_after().unwrap_or_default());
                    if delay > p.timeout {
                        return Err((Next::OtherNode, err));
                    }
                    tracing::debug!(
                        node = %short_id(&cand.node_id),
                        code = %err.code(),
                        delay_ms = delay.as_millis() as u64,
                        "retrying the same node"
                    );
                    env.sleeper.sleep(delay).await;
                    retry += 1;
                }
                Next::RetrySame => return Err((Next::OtherNode, err)),
                other => return Err((other, err)),
            }
        }
    }

    async fn consumer_token(&self, target: &str, intent: &str) -> Option<Secret> {
        let (caller, node_token) = self.inner.node_credentials.as_ref()?;
        let key = (target.to_owned(), intent.to_owned());
        let now = self.inner.env.clock.now_secs();
        if let Some((tok, exp)) = self.inner.tokens.lock().get(&key) {
            if now.saturating_add(TOKEN_RENEW_BEFORE_SECS) < *exp {
                return Some(tok.clone());
            }
        }
        match self
            .inner
            .directory
            .consumer_token(node_token, caller, target, intent)
            .await
        {
            Ok(resp) => {
                let exp = resp.expires_at.unwrap_or(now.saturating_add(300));
                let mut tokens = self.inner.tokens.lock();
                if tokens.len() >= TOKEN_CACHE_ENTRIES {
                    tokens.retain(|_, (_, e)| now.saturating_add(TOKEN_RENEW_BEFORE_SECS) < *e);
                    if tokens.len() >= TOKEN_CACHE_ENTRIES {
                        tokens.clear();
                    }
                }
                tokens.insert(key, (resp.token.clone(), exp));
                Some(resp.token)
            }
            Err(e) => {
                tracing::debug!(code = %e.code(), "no consumer token; continuing without one");
                None
            }
        }
    }

    async fn discover_cached(
        &self,
        query: &DiscoverQuery,
        tp: &TraceParent,
    ) -> Result<Arc<NodeList>, Error> {
        let key = query
            .to_query_pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let now = self.inner.env.clock.now();
        if let Some((expires, list)) = self.inner.discovery_cache.lock().get(&key) {
            if now < *expires {
                return Ok(Arc::clone(list));
            }
        }
        self.directory_gate()?;
        let (list, max_age) = self.note_directory(
            self.inner
                .directory
                .discover_with_ttl(query, Some(tp))
                .await,
        )?;
        let list = Arc::new(sanitize(list));
        let ttl = max_age.map_or(self.inner.discovery_ttl, |m| {
            m.min(self.inner.discovery_ttl)
        });
        if !ttl.is_zero() {
            let mut cache = self.inner.discovery_cache.lock();
            if cache.len() >= DISCOVERY_CACHE_ENTRIES {
                cache.retain(|_, (e, _)| now < *e);
                if cache.len() >= DISCOVERY_CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, (now + ttl, Arc::clone(&list)));
        }
        Ok(list)
    }

    /// Fails fast while the directory's last 429/503 `Retry-After` runs: the error it
    /// answered, with the time left as `retry_after`, and no request sent.
    fn directory_gate(&self) -> Result<(), Error> {
        let now = self.inner.env.clock.now();
        let mut wait = self.inner.directory_wait.lock();
        match wait.as_ref() {
            Some((until, body)) if now < *until => {
                let mut body = body.clone();
                let left = until.saturating_duration_since(now);
                body.retry_after_ms =
                    Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1));
                Err(Error::remote(body))
            }
            Some(_) => {
                *wait = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Remembers a directory 429/503 that asked for a wait (`Retry-After`).
    fn note_directory<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &r {
            if let (Some(429 | 503), Some(after), Some(body)) =
                (e.status_code(), e.retry_after(), e.error_body())
            {
                let after = after.min(MAX_DIRECTORY_WAIT);
                let until = self.inner.env.clock.now() + after;
                *self.inner.directory_wait.lock() = Some((until, body.clone()));
                tracing::debug!(
                    wait_ms = after.as_millis() as u64,
                    "directory asked to wait"
                );
            }
        }
        r
    }

    /// Drops cached discovery results (e.g. after the mesh changed).
    pub fn clear_discovery_cache(&self) {
        self.inner.discovery_cache.lock().clear();
    }

    // -----------------------------------------------------------------------------
    // Eligibility
    // -----------------------------------------------------------------------------

    /// The checks shared by `discover` and submission: availability, score, node id, a
    /// usable route for the transport preference, the endpoint policy.
    fn basic_eligibility(&self, node: &NodeEntry) -> Result<(String, Route, String), Skip> {
        if !node.is_available() {
            return Err(Skip::Unavailable);
        }
        if let Some(score) = node.score {
            if !score.is_finite() || score < 0.1 {
                return Err(Skip::Score);
            }
        }
        let node_id = node
            .node_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or(Skip::NoNodeId)?;
        let (route, check_url) = self.route_for(node)?;
        Ok((node_id, route, check_url))
    }

    fn route_for(&self, node: &NodeEntry) -> Result<(Route, String), Skip> {
        let policy = &self.inner.endpoint_policy;
        let native_cx = node
            .cx_key()
            .is_some_and(|k| k.features.iter().any(|f| f == NATIVE_CX_V1));
        let has_key = node.cx_key().is_some();
        let native = node
            .transport_endpoint
            .as_deref()
            .filter(|t| !t.is_empty())
            .and_then(|t| {
                t.parse::<NativeEndpoint>()
                    .ok()
                    .map(|ep| (t.to_owned(), ep))
            })
            .filter(|(t, _)| policy.check_url(t).is_ok())
            .filter(|_| !has_key || native_cx);
        let http = node
            .endpoint
            .as_deref()
            .map(|e| e.trim().trim_end_matches('/'))
            .filter(|e| e.starts_with("http://") || e.starts_with("https://"))
            .map(str::to_owned);
        let http_ok = http.as_ref().map(|e| policy.check_url(e).is_ok());
        // A keyed node without `native_cx_v1` is reached over HTTP even when native is
        // preferred: IICP-CX over native needs the ADR 0005 convention.
        let advertised = node
            .transport_endpoint
            .as_deref()
            .is_some_and(|t| !t.is_empty());
        let use_native = match self.inner.transport {
            Transport::Http => false,
            Transport::Native => native.is_some() || !(advertised && has_key && !native_cx),
            Transport::Auto => native.is_some(),
        };
        if use_native {
            return match native {
                Some((url, ep)) => Ok((Route::Native(ep), url)),
                None => Err(Skip::NoRoute),
            };
        }
        match (http, http_ok) {
            (Some(e), Some(true)) => Ok((Route::Http(format!("{e}/v1/task")), e)),
            (Some(_), _) => Err(Skip::Endpoint),
            (None, _) => Err(Skip::NoRoute),
        }
    }

    /// Full eligibility for submission: [`Client::basic_eligibility`], the IICP-CX
    /// requirement and the circuit breaker.
    fn candidate(&self, node: &NodeEntry, routing: &RoutingPolicy) -> Result<Candidate, Skip> {
        let (node_id, route, check_url) = self.basic_eligibility(node)?;
        routing::evaluate(
            routing,
            node,
            &check_url,
            node.cx_key().is_some(),
            self.inner.env.clock.now_secs(),
        )
        .map_err(Skip::Policy)?;
        let plaintext_ok = self.inner.encryption == Encryption::AllowPlaintext
            || routing.profile == RoutingProfile::DebugOverride;
        let (key, response_encryption) = match node.cx_key() {
            Some(adv) => match NodePublicKey::from_advertisement(&adv) {
                Ok(k) => (Some(k), adv.supports_response_encryption()),
                Err(_) => return Err(Skip::BadKey),
            },
            None if !plaintext_ok => return Err(Skip::Keyless),
            None => (None, false),
        };
        if self
            .inner
            .breakers
            .is_open(&node_id, self.inner.env.clock.as_ref())
        {
            return Err(Skip::CircuitOpen);
        }
        // a locked node is worth an attempt only with a credential it can accept
        let auth_mode = node.capabilities.iter().find_map(|c| c.auth_mode());
        let has_api_token = self.inner.api_token.is_some();
        let has_identity = self.inner.node_credentials.is_some();
        let consumer_auth = auth_mode == Some("consumer");
        match auth_mode {
            Some("token") if !has_api_token => return Err(Skip::NoCredential),
            Some("consumer") if !has_api_token && !has_identity => return Err(Skip::NoCredential),
            _ => {}
        }
        let streams = node.capabilities.iter().any(|c| {
            c.supported_profiles
                .iter()
                .flatten()
                .any(|p| p == lifecycle::PROFILE)
        });
        let submit_stream = node.capabilities.iter().any(|c| {
            c.extensions
                .as_ref()
                .and_then(|e| e.pointer("/service_lifecycle/submit_stream"))
                .and_then(Value::as_str)
                == Some(lifecycle::HTTP_SUBMIT_STREAM_PATH)
        });
        let cx_stream = node
            .cx_key()
            .is_some_and(|k| k.features.iter().any(|f| f == lifecycle::CX_STREAM_V1));
        Ok(Candidate {
            streams,
            cx_stream,
            submit_stream,
            node_id,
            route,
            check_url,
            key,
            response_encryption,
            consumer_auth,
        })
    }
}

/// Retry classification of a failed attempt (§7.1, §7.3, DESIGN §4.9).
/// Whether `node` may serve a task routed with `options` (its `node_id` pin).
fn pinned_to(options: &DiscoverOptions, node: &NodeEntry) -> bool {
    options
        .node_id
        .as_deref()
        .is_none_or(|pin| node.node_id.as_deref() == Some(pin))
}

/// Drops directory entries whose numbers are out of the spec's range or not finite
/// (`score` and `reputation_score` in [0, 1], `load` and `relay_load` ≥ 0), and every
/// repeat of a node id after its first entry: a directory's data is not trusted further
/// than its schema.
fn sanitize(mut list: NodeList) -> NodeList {
    let unit = |v: Option<f64>| v.is_none_or(|x| x.is_finite() && (0.0..=1.0).contains(&x));
    let non_negative = |v: Option<f64>| v.is_none_or(|x| x.is_finite() && x >= 0.0);
    let mut seen = std::collections::HashSet::new();
    let before = list.nodes.len();
    list.nodes.retain(|n| {
        let sane = unit(n.score)
            && unit(n.reputation_score)
            && non_negative(n.load)
            && non_negative(n.relay_load);
        let first = n.node_id.as_ref().is_none_or(|id| seen.insert(id.clone()));
        if !sane || !first {
            tracing::debug!(
                node = %n.node_id.as_deref().map_or("?", short_id),
                out_of_range = !sane,
                duplicate = !first,
                "discovery entry dropped"
            );
        }
        sane && first
    });
    if list.nodes.len() != before {
        list.count = Some(list.nodes.len() as u64);
    }
    list
}

fn classify(e: &Error) -> Next {
    match e.disposition() {
        Disposition::RetrySame => Next::RetrySame,
        Disposition::OtherNode | Disposition::BrokenNode => Next::OtherNode,
        Disposition::Stop => Next::Stop,
    }
}

fn check_intent(intent: &str) -> Result<Intent, Error> {
    let parsed = Intent::new(intent).map_err(|e| {
        Error::new(
            Kind::Input,
            ErrorCode::InvalidIntent,
            format!("invalid intent URN: {e}"),
        )
        .with_source(e)
    })?;
    check_intent_policy(parsed.as_str()).map_err(|refusal| {
        Error::new(Kind::Policy, refusal.code(), refusal.to_string()).with_source(refusal)
    })?;
    Ok(parsed)
}

fn check_route_options(options: &DiscoverOptions) -> Result<(), Error> {
    if let Some(r) = options.min_reputation {
        if !(0.0..=1.0).contains(&r) {
            return Err(Error::new(
                Kind::Input,
                ErrorCode::ValidationError,
                "min_reputation must be within [0, 1]",
            ));
        }
    }
    Ok(())
}

/// The execution constraints sent to the provider (§9.3 projection): route-only members
/// (`region`) are dropped; `timeout_ms` is always set; `qos_class` mirrors `qos` for the
/// reference nodes (§19 T13).
fn project_constraints(c: &Constraints, timeout: Duration) -> Constraints {
    let mut out = Constraints {
        timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        qos: c.qos,
        priority: c.priority,
        consensus: c.consensus,
        region: None,
        max_tokens: c.max_tokens,
        model: c.model.clone(),
        required_profiles: c.required_profiles.clone(),
        optional_profiles: c.optional_profiles.clone(),
        extra: Map::new(),
    };
    for (k, v) in &c.extra {
        if !matches!(
            k.as_str(),
            "min_reputation" | "limit" | "region" | "qos_class"
        ) {
            out.extra.insert(k.clone(), v.clone());
        }
    }
    if let Some(q) = c.qos {
        out.extra.insert(
            "qos_class".into(),
            Value::String(q.as_str().replace('-', "_")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_envelope() {
        assert_eq!(backoff(0, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(1, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(0, 0.0), Duration::from_millis(160));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(480));
        for r in [0.0, 0.13, 0.5, 0.77, 0.999] {
            let d = backoff(2, r).as_secs_f64();
            assert!((0.64..=0.96).contains(&d), "{d}");
        }
    }

    #[test]
    fn chat_mapping() {
        let id = TaskId::generate(&mut OsRng);
        let c = to_completion(
            &serde_json::json!({"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 3}}),
            &id,
        )
        .expect("completion");
        assert_eq!(c.text().as_deref(), Some("hi"));
        assert_eq!(c.choices[0].message.role, "assistant");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.id.as_deref(), Some(id.as_str()));
        let c = to_completion(&serde_json::json!({"content": "plain"}), &id).expect("completion");
        assert_eq!(c.text().as_deref(), Some("plain"));
        assert!(to_completion(&serde_json::json!(42), &id).is_none());
    }

    #[test]
    fn projection_drops_route_fields() {
        let mut c = Constraints {
            region: Some("eu".into()),
            qos: Some(Qos::BestEffort),
            ..Constraints::default()
        };
        c.extra.insert("min_reputation".into(), Value::from(0.5));
        let out = project_constraints(&c, Duration::from_millis(1500));
        assert_eq!(out.region, None);
        assert_eq!(out.timeout_ms, Some(1500));
        assert!(out.extra.get("min_reputation").is_none());
        assert_eq!(
            out.extra.get("qos_class"),
            Some(&Value::from("best_effort"))
        );
    }
}
