//! Reachability: how a serving node becomes reachable from outside (PROTOCOL.md
//! §13.1–§13.2 ladder, §14.4–§14.6 relay, §19 T31; SEED-SDK.md §3).
//!
//! With [`ReachConfig`] in [`crate::ServeOptions::reach`], [`crate::Node::serve`], once
//! its port is bound and before the first registration:
//!
//! 1. gathers observations: interface addresses and container detection
//!    ([`iicp_nat::detect`], unless given in the config), the operator settings;
//! 2. runs the [`iicp_nat::Executor`] with UPnP discovery, a [`iicp_nat::Prober`] asking the
//!    directory's `GET /v1/probe` (§8.9), and a [`iicp_nat::RelayBinder`] that, unless a relay is
//!    configured, discovers `relay_capable` nodes (`GET /v1/discover?intent=…&
//!    relay_capable=true`), elects one ([`iicp_nat::relay::elect`], §14.5), fetches bind
//!    tickets (`POST /v1/relay/ticket`, §14.6) and runs a [`RelayWorker`] whose pushed
//!    CALLs go through the node's task pipeline;
//! 3. registers what the final plan says: the endpoint, `transport_method`,
//!    `exposure_mode` (and, through a relay, `transport_metadata = {relay_for,
//!    relay_host, relay_port}`, §14.4); a tier-4 node with a private endpoint does not
//!    register with a public directory;
//! 4. keeps UPnP leases renewed ([`iicp_nat::LeaseKeeper`]) and re-registers when the
//!    relay worker binds again with another endpoint.
//!
//! [`crate::ServeHandle::stop`] stops the relay worker and deletes mappings and pinholes
//! before deregistering. Relay-capable nodes serve [`iicp_nat::RelayServer`] on
//! `relay_accept_port` (refused when it equals the node port, §19 T31) and its HTTP
//! routes on the node's router.
//!
//! [`diagnose`] is the read-only variant for `iicp doctor`: it observes (interfaces,
//! container, gateway, external address) and plans, without mapping anything.
//!
//! This module reads no environment: the CLI fills [`ReachConfig`].

use parking_lot::Mutex;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use iicp_client::DirectoryClient;
use iicp_nat::relay::{elect, parse_relay_endpoint, RelayCandidate};
use iicp_nat::upnp::{BoxFuture, Discover, DiscoveryConfig, UpnpDiscovery};
use iicp_nat::{
    ExecutorConfig, ExternalIp, GatewayObservation, InterfaceAddr, KeeperConfig, LeaseKeeper,
    Observations, Plan, ProbeVerdict, RelayObservation, RelayWorker, Settings, Step, TicketSource,
    WorkerConfig, WorkerState,
};
use iicp_proto::directory::{DiscoverQuery, NodeEntry};
use iicp_proto::message::{Body, Call, Prefer, Response};
use iicp_proto::secret::Secret;
use iicp_proto::task::TaskRequest;
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::native::{CallContext, CallHandler};
use iicp_transport::shutdown::{self, Shutdown, Trigger};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::event::EventKind;
use crate::handler::{TaskHandler, Transport};
use crate::pipeline::{self, Inbound, Outcome, Started};
use crate::registration::advertised_endpoint;
use crate::state::Shared;

pub use iicp_nat::{Container, ExposureMode, Tier, TransportMethod};

/// How the node finds its public route. Fill it from flags and env in the CLI
/// (`IICP_AUTO_DETECT_NAT`, `IICP_PUBLIC_ENDPOINT`, `IICP_RELAY_WORKER_ENDPOINT`,
/// `IICP_SKIP_UPNP`); the library reads none of them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReachConfig {
    /// Detect NAT (default on). Off: only `public_endpoint` or a configured relay count.
    pub auto_detect: bool,
    /// The operator's public endpoint (trusted as given, tier 0).
    pub public_endpoint: Option<String>,
    /// `host:port` of a relay to bind to (skips election).
    pub relay_worker_endpoint: Option<String>,
    /// Skip UPnP.
    pub skip_upnp: bool,
    /// Accept a non-routable `public_endpoint` (private meshes).
    pub allow_private_endpoint: bool,
    /// Container detection result; `None`: detect (files only, no environment; pass
    /// `iicp_nat::detect::container(|k| std::env::var(k).ok())` from the CLI to include
    /// `KUBERNETES_SERVICE_HOST`).
    pub container: Option<Container>,
    /// Interface addresses; `None`: enumerate them.
    pub interfaces: Option<Vec<InterfaceAddr>>,
    /// Requested UPnP lease (default 3600 s).
    pub lease: Duration,
    /// SSDP / IGD settings.
    pub discovery: DiscoveryConfig,
    /// Executor settings (timeouts, round limit).
    pub executor: ExecutorConfig,
    /// Lease keeper settings.
    pub keeper: KeeperConfig,
    /// First reconnect delay of the relay worker (default 2 s).
    pub relay_backoff: Duration,
    /// How many relay candidates to ask the directory for (default 20).
    pub relay_candidates: u32,
    /// How often the node checks its route and plans again when it is broken or could
    /// be better (default 5 min; `Duration::ZERO`: never; docs/nat.md "Planning again").
    pub replan_interval: Duration,
}

impl Default for ReachConfig {
    fn default() -> Self {
        Self {
            auto_detect: true,
            public_endpoint: None,
            relay_worker_endpoint: None,
            skip_upnp: false,
            allow_private_endpoint: false,
            container: None,
            interfaces: None,
            lease: iicp_nat::plan::DEFAULT_LEASE,
            discovery: DiscoveryConfig::default(),
            executor: ExecutorConfig::default(),
            keeper: KeeperConfig::default(),
            relay_backoff: Duration::from_secs(2),
            relay_candidates: 20,
            replan_interval: Duration::from_secs(300),
        }
    }
}

impl ReachConfig {
    /// Sets the operator's public endpoint.
    pub fn with_public_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.public_endpoint = Some(endpoint.into());
        self
    }

    /// Binds to this relay (`host:port`) instead of electing one.
    pub fn with_relay_worker_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.relay_worker_endpoint = Some(endpoint.into());
        self
    }

    /// Turns NAT detection on or off.
    pub fn with_auto_detect(mut self, on: bool) -> Self {
        self.auto_detect = on;
        self
    }

    /// Skips UPnP.
    pub fn with_skip_upnp(mut self, skip: bool) -> Self {
        self.skip_upnp = skip;
        self
    }

    /// How often the route is checked and planned again (`Duration::ZERO`: never).
    pub fn with_replan_interval(mut self, interval: Duration) -> Self {
        self.replan_interval = interval;
        self
    }

    fn settings(&self, node: &Shared, port: u16) -> Settings {
        Settings {
            port,
            transport_port: None,
            public_endpoint: self.public_endpoint.clone().filter(|e| !e.is_empty()),
            auto_detect: self.auto_detect,
            relay_worker_endpoint: self.relay_worker_endpoint.clone().filter(|e| !e.is_empty()),
            relay_capable: node.cfg.relay_capable,
            skip_upnp: self.skip_upnp,
            allow_private_endpoint: self.allow_private_endpoint,
            lease: self.lease,
            ..Settings::default()
        }
    }

    fn observations(&self, node: &Shared, port: u16) -> Observations {
        let mut obs = Observations::new(self.settings(node, port));
        obs.interfaces = match &self.interfaces {
            Some(i) => i.clone(),
            None => iicp_nat::detect::interfaces().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "interface enumeration failed");
                Vec::new()
            }),
        };
        obs.container = self
            .container
            .unwrap_or_else(|| iicp_nat::detect::container(|_| None));
        obs
    }
}

/// What reachability planning achieved (on [`crate::ServeHandle::reachability`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reachability {
    /// The tier reached.
    pub tier: Tier,
    /// The endpoint advertised (`None` at tier 4: the configured one stays local).
    pub endpoint: Option<String>,
    /// `transport_method` registered.
    pub transport_method: Option<TransportMethod>,
    /// `exposure_mode` registered.
    pub exposure_mode: ExposureMode,
    /// Operator guidance, one sentence each.
    pub guidance: Vec<String>,
    /// The relay bound to (`host:port`), at tier 3.
    pub relay: Option<String>,
    /// External ports mapped through UPnP (tier 1a).
    pub mapped_ports: Vec<u16>,
    /// Whether the node registers at all (false: tier 4 with a private endpoint and a
    /// public directory).
    pub registers: bool,
}

impl Reachability {
    fn from_plan(plan: &Plan) -> Self {
        Self {
            tier: plan.tier,
            endpoint: plan.endpoint.clone(),
            transport_method: plan.transport_method,
            exposure_mode: plan.exposure_mode,
            guidance: plan.guidance.iter().map(ToString::to_string).collect(),
            relay: None,
            mapped_ports: Vec::new(),
            registers: true,
        }
    }
}

fn http_client() -> Option<HttpClient> {
    HttpClient::new(HttpClientConfig::default())
        .map_err(|e| tracing::warn!(error = %e, "reachability HTTP client unavailable"))
        .ok()
}

/// The node's directory, for probes, relay discovery and tickets.
fn directory(shared: &Shared, http: Option<&HttpClient>) -> Option<DirectoryClient> {
    let url = shared.cfg.directory_url.as_deref()?;
    DirectoryClient::new(url, http?.clone())
        .map_err(|e| tracing::warn!(error = %e, "reachability: directory URL unusable"))
        .ok()
}

/// [`iicp_nat::Prober`] over the directory's `GET /v1/probe?host=&port=` (§8.9).
struct DirectoryProber {
    dir: DirectoryClient,
}

impl iicp_nat::Prober for DirectoryProber {
    fn probe<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, ProbeVerdict> {
        Box::pin(async move {
            let verdict = match self.dir.probe(host, port).await {
                Ok(Some(true)) => ProbeVerdict::Reachable,
                Ok(Some(false)) => ProbeVerdict::Unreachable,
                // no verdict; 422 private_address, 404 (no probe), 429, 5xx, transport:
                // the probe could not run
                Ok(None) | Err(_) => ProbeVerdict::Unavailable,
            };
            tracing::info!(%host, port, ?verdict, "reachability probe");
            verdict
        })
    }
}

/// [`TicketSource`]: `POST /v1/relay/ticket` with the node's token (§14.6). Without a
/// token yet (first bind before registration), binds without a ticket (soft mode).
struct DirectoryTickets {
    shared: Arc<Shared>,
    dir: DirectoryClient,
    relay_node_id: Option<String>,
}

impl TicketSource for DirectoryTickets {
    fn ticket(&self) -> BoxFuture<'_, Option<Secret>> {
        Box::pin(async move {
            let (token, node_id) = {
                let c = self.shared.creds.lock();
                (c.token.clone(), c.node_id.clone())
            };
            let (Some(token), Some(node_id)) = (token, node_id) else {
                return None;
            };
            self.dir
                .relay_ticket(&token, &node_id, self.relay_node_id.as_deref())
                .await
                .map_err(|e| tracing::info!(error = %e, "no relay bind ticket"))
                .ok()
        })
    }
}

/// Tasks pushed by the relay (a CALL whose key 5 is the JSON task body, §14.4) go
/// through the node's pipeline; the answer is the task RESPONSE body.
struct RelayTasks {
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
}

impl CallHandler for RelayTasks {
    fn handle(
        &self,
        call: Call,
        ctx: CallContext,
    ) -> iicp_transport::native::BoxFuture<'static, Response> {
        self.relayed(call, ctx, None)
    }

    /// A relayed CALL with key 24 streams (PROTOCOL.md §14.2: the worker answers with
    /// lifecycle RESPONSEs, which the relay forwards).
    fn handle_streaming(
        &self,
        call: Call,
        ctx: CallContext,
        partials: iicp_transport::native::PartialSender,
    ) -> iicp_transport::native::BoxFuture<'static, Response> {
        self.relayed(call, ctx, Some(partials))
    }

    fn node_id(&self) -> Option<String> {
        self.shared.node_id()
    }

    fn control(&self, control: &iicp_proto::message::Control, ctx: &CallContext) {
        crate::native::cancel_by_control(&self.shared, control, ctx);
    }
}

impl RelayTasks {
    fn relayed(
        &self,
        call: Call,
        ctx: CallContext,
        partials: Option<iicp_transport::native::PartialSender>,
    ) -> iicp_transport::native::BoxFuture<'static, Response> {
        let shared = Arc::clone(&self.shared);
        let handler = Arc::clone(&self.handler);
        Box::pin(async move {
            let task = call
                .payload
                .as_ref()
                .and_then(|b| b.to_json(Prefer::Json).ok())
                .map(serde_json::from_value::<TaskRequest>);
            let task = match task {
                Some(Ok(t)) => t,
                _ => {
                    return Response::error(
                        &call,
                        iicp_proto::error::ErrorCode::ValidationError.as_str(),
                        422,
                        "relayed CALL without a valid JSON task in key 5",
                    )
                }
            };
            let lifecycle =
                partials.is_some() && call.task_id.as_deref().is_some_and(|t| !t.is_empty());
            let inbound = Inbound {
                transport: Transport::Native,
                peer: ctx.peer.ip(),
                bearer: None,
                consumer_token: None,
                traceparent: None,
                trace_bytes: None,
                task,
                track_duplicates: true,
                strict_task_id: true,
                lifecycle,
            };
            let reply = match partials {
                Some(partials) if lifecycle => {
                    match pipeline::start(&shared, handler, inbound).await {
                        Started::Reply(reply) => *reply,
                        Started::Stream(t) => {
                            return crate::native::forward(&shared, &call, t, &partials, true).await
                        }
                        Started::Attached(t) => {
                            return crate::native::forward(&shared, &call, t, &partials, false)
                                .await
                        }
                    }
                }
                _ => pipeline::run(shared, handler, inbound).await,
            };
            // the relayed answer is the whole RESPONSE (sealed or not), as JSON text
            let body = match reply.outcome {
                Outcome::Answered { text, .. } => Body::Bytes(text.as_bytes().to_vec()),
                Outcome::Sealed(sealed) => Body::json(&sealed),
                Outcome::Stream(_) => {
                    return Response::error(
                        &call,
                        iicp_proto::error::ErrorCode::Conflict.as_str(),
                        409,
                        "task_id is in use by a lifecycle task",
                    )
                }
                Outcome::Failed { status, error, .. } => {
                    return Response::error(&call, error.code.as_str(), status, &error.message)
                }
            };
            let mut r = Response::success(&call, body);
            r.tokens_used = reply.tokens_used;
            r.duration_ms = Some(reply.latency_ms);
            r
        })
    }
}

/// [`iicp_nat::RelayBinder`]: configured relay or election, tickets, worker.
struct NodeRelays {
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    dir: Option<DirectoryClient>,
    config: ReachConfig,
    /// The worker that bound (taken by [`Running`]).
    bound: Mutex<Option<(RelayWorker, WorkerConfig)>>,
}

/// Relay-capable nodes for the node's first intent:
/// `GET {base}/v1/discover?intent=…&relay_capable=true&limit=…` (`None` when the
/// directory fails).
pub(crate) async fn relay_nodes(
    dir: &DirectoryClient,
    shared: &Shared,
    limit: u32,
) -> Option<Vec<NodeEntry>> {
    let intent = shared.cfg.intents.first()?;
    let query = DiscoverQuery {
        intent: intent.as_str().to_owned(),
        relay_capable: Some(true),
        limit: Some(limit.clamp(1, 100)),
        ..DiscoverQuery::default()
    };
    dir.discover(&query, None)
        .await
        .map(|list| list.nodes)
        .map_err(|e| tracing::info!(error = %e, "relay discovery at the directory failed"))
        .ok()
}

impl NodeRelays {
    async fn candidates(&self) -> Vec<RelayCandidate> {
        let nodes = match &self.dir {
            Some(dir) => relay_nodes(dir, &self.shared, self.config.relay_candidates).await,
            None => None,
        };
        let mut found: Vec<RelayCandidate> = nodes
            .map(|nodes| nodes.iter().filter_map(candidate).collect())
            .unwrap_or_default();
        // §14.5: the gossip peer cache is another source
        if let Some(m) = &self.shared.mesh {
            for c in m.relay_candidates(self.shared.unix_ms()) {
                if !found.iter().any(|f| f.node_id == c.node_id) {
                    found.push(c);
                }
            }
        }
        found
    }
}

fn candidate(n: &NodeEntry) -> Option<RelayCandidate> {
    Some(RelayCandidate {
        node_id: n.node_id.clone()?,
        endpoint: n.endpoint.clone(),
        relay_capable: n.relay_capable.unwrap_or(false),
        load: n.relay_load.or(n.load),
        relay_accept_port: n.relay_accept_port.filter(|p| *p != 0),
        reputation_score: n.reputation_score,
    })
}

impl iicp_nat::RelayBinder for NodeRelays {
    fn bind<'a>(&'a self, configured: Option<&'a str>) -> BoxFuture<'a, RelayObservation> {
        Box::pin(async move {
            let Some(worker_id) = self.shared.node_id() else {
                tracing::warn!("relay: the node has no node id yet; cannot bind");
                return RelayObservation::Unavailable;
            };
            let (host, port, relay_node_id) = match configured {
                Some(text) => match parse_relay_endpoint(text) {
                    Some((h, p)) => (h, p, None),
                    None => {
                        tracing::warn!(endpoint = %text, "relay worker endpoint is not host:port");
                        return RelayObservation::Unavailable;
                    }
                },
                None => match elect(&worker_id, &self.candidates().await) {
                    Some(t) => {
                        tracing::info!(relay = %t.node_id, at = %t.authority(), "relay elected");
                        (t.host, t.port, Some(t.node_id))
                    }
                    None => {
                        tracing::info!("no relay-capable node to elect");
                        return RelayObservation::Unavailable;
                    }
                },
            };
            let Some(intent) = self.shared.cfg.intents.first() else {
                return RelayObservation::Unavailable;
            };
            let mut wc = WorkerConfig::new(host, port, worker_id, intent.as_str());
            wc.models = self.shared.models();
            wc.backoff_initial = self.config.relay_backoff;
            let tickets = self.dir.clone().map(|dir| {
                Arc::new(DirectoryTickets {
                    shared: Arc::clone(&self.shared),
                    dir,
                    relay_node_id,
                }) as Arc<dyn TicketSource>
            });
            let handler: Arc<dyn CallHandler> = Arc::new(RelayTasks {
                shared: Arc::clone(&self.shared),
                handler: Arc::clone(&self.handler),
            });
            let worker = RelayWorker::spawn(wc.clone(), handler, tickets);
            let wait = self
                .config
                .executor
                .relay_timeout
                .saturating_sub(Duration::from_secs(1));
            match worker.wait_bound(wait.max(Duration::from_secs(1))).await {
                Some(endpoint) => {
                    *self.bound.lock() = Some((worker, wc));
                    RelayObservation::Bound { endpoint }
                }
                None => {
                    tracing::info!(state = ?worker.state(), "relay bind did not succeed");
                    worker.stop().await;
                    RelayObservation::Unavailable
                }
            }
        })
    }
}

/// What one planning round holds while its plan is in force: leases, relay worker,
/// the worker's re-registration watcher.
#[derive(Debug)]
struct Round {
    tier: Tier,
    keeper: Option<LeaseKeeper>,
    worker: Option<RelayWorker>,
    watcher: Option<(Trigger, JoinHandle<()>)>,
}

impl Round {
    /// Stops the relay worker and deletes mappings and pinholes.
    async fn stop(mut self) {
        if let Some((tx, w)) = self.watcher.take() {
            tx.fire();
            let _ = w.await;
        }
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
            tracing::info!("relay worker stopped");
        }
        if let Some(k) = self.keeper.take() {
            k.stop().await;
            tracing::info!("UPnP mappings and pinholes removed");
        }
    }

    /// Whether the route of this round still works: a relay worker still bound (it
    /// reconnects by itself; a worker that gave up is not), a mapped or direct endpoint
    /// the directory can still reach (no verdict counts as working). Tier 4 and an
    /// unverified IPv6 route are never good enough to stop looking.
    async fn healthy(&self, shared: &Shared, prober: Option<&DirectoryProber>) -> bool {
        match self.tier {
            Tier::LocalOnly | Tier::Ipv6Unverified => false,
            // bound, or reconnecting for the first few times: a relay that keeps
            // refusing or stays away is given up for another
            Tier::Relay => self.worker.as_ref().is_some_and(|w| {
                matches!(
                    *w.subscribe().borrow(),
                    WorkerState::Bound { .. } | WorkerState::Connecting { attempt: 0..=2 }
                )
            }),
            _ => {
                let Some(prober) = prober else { return true };
                let endpoint = advertised_endpoint(shared);
                let Ok(uri) = endpoint.parse::<http::Uri>() else {
                    return true;
                };
                let (Some(host), Some(port)) = (
                    uri.host()
                        .map(|h| h.trim_start_matches('[').trim_end_matches(']')),
                    uri.port_u16().or(match uri.scheme_str() {
                        Some("https") => Some(443),
                        Some("http") => Some(80),
                        _ => None,
                    }),
                ) else {
                    return true;
                };
                iicp_nat::Prober::probe(prober, host, port).await != ProbeVerdict::Unreachable
            }
        }
    }
}

/// The running side of reachability: the current round and the supervisor that plans
/// again when the route breaks or a better one may exist.
#[derive(Debug)]
pub(crate) struct Running {
    supervisor: Option<JoinHandle<()>>,
    stop_tx: Trigger,
}

impl Running {
    /// Stops planning, the relay worker, and deletes mappings and pinholes.
    pub(crate) async fn stop(mut self) {
        self.stop_tx.fire();
        if let Some(s) = self.supervisor.take() {
            let _ = s.await;
        }
    }
}

/// Everything a planning round needs, kept by the supervisor for the next one.
struct Planner {
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    config: ReachConfig,
    port: u16,
    http: Option<HttpClient>,
    dir: Option<DirectoryClient>,
}

impl Planner {
    /// Observes, plans and executes once; sets what the node advertises.
    async fn round(&self) -> (Reachability, Round) {
        let shared = &self.shared;
        let config = &self.config;
        let mut executor = iicp_nat::Executor::new(config.executor.clone());
        if let Some(h) = &self.http {
            if !config.skip_upnp && config.auto_detect {
                executor = executor.with_discovery(Arc::new(UpnpDiscovery::new(
                    h.clone(),
                    config.discovery.clone(),
                )));
            }
            if let Some(d) = &self.dir {
                executor = executor.with_prober(Arc::new(DirectoryProber { dir: d.clone() }));
            }
        }
        let relays = Arc::new(NodeRelays {
            shared: Arc::clone(shared),
            handler: Arc::clone(&self.handler),
            dir: self.dir.clone(),
            config: config.clone(),
            bound: Mutex::new(None),
        });
        executor = executor.with_relay(Arc::clone(&relays) as Arc<dyn iicp_nat::RelayBinder>);
        let outcome = executor.run(config.observations(shared, self.port)).await;
        let plan = &outcome.plan;
        let mut reach = Reachability::from_plan(plan);
        reach.mapped_ports = outcome
            .leases
            .mappings
            .iter()
            .map(|m| m.mapping.external_port)
            .collect();
        let bound = relays.bound.lock().take();
        let (worker, worker_cfg) = match bound {
            Some((w, c)) if plan.tier == Tier::Relay => (Some(w), Some(c)),
            Some((w, _)) => {
                w.stop().await;
                (None, None)
            }
            None => (None, None),
        };
        {
            let mut ad = shared.advert.lock();
            ad.endpoint.clone_from(&plan.endpoint);
            ad.transport_method = plan.transport_method;
            ad.exposure_mode = Some(plan.exposure_mode);
            ad.relayed = plan.tier == Tier::Relay;
            ad.local_only = plan.tier == Tier::LocalOnly;
            ad.transport_metadata = None;
            if let Some(wc) = &worker_cfg {
                reach.relay = Some(format!("{}:{}", wc.relay_host, wc.relay_port));
                ad.transport_metadata = Some(relay_metadata(wc));
            }
        }
        let endpoint = advertised_endpoint(shared);
        if !crate::config::may_register(&endpoint, shared.cfg.directory_url.as_deref()) {
            reach.registers = false;
            reach.guidance.push(
                "the endpoint is private and no public route was found: not registering with the public directory".to_owned(),
            );
        }
        shared.advert.lock().withheld = !reach.registers;
        tracing::info!(
            tier = %reach.tier,
            endpoint = reach.endpoint.as_deref().unwrap_or("<none>"),
            method = reach.transport_method.map_or("-", |m| m.as_str()),
            exposure = reach.exposure_mode.as_str(),
            "NAT auto-detect"
        );
        let keeper = (!outcome.leases.is_empty()).then(|| outcome.leases.keep(config.keeper));
        let watcher = worker.as_ref().map(|w| {
            let (tx, rx) = shutdown::channel();
            (
                tx,
                tokio::spawn(watch_worker(Arc::clone(&self.shared), w.subscribe(), rx)),
            )
        });
        (
            reach,
            Round {
                tier: plan.tier,
                keeper,
                worker,
                watcher,
            },
        )
    }

    /// Every `replan_interval`: when the current route is broken (the directory cannot
    /// reach the endpoint, the relay worker gave up) or not good enough (tier 4, 1c),
    /// lets go of it and plans again; a new endpoint is registered (or withdrawn, when
    /// the new plan has no public route).
    async fn supervise(self, mut round: Round, stop: Shutdown) {
        let interval = self.config.replan_interval;
        let prober = self.dir.clone().map(|dir| DirectoryProber { dir });
        let publicly_configured = self.config.public_endpoint.is_some();
        loop {
            if interval.is_zero() || publicly_configured {
                // the operator's endpoint is trusted as given: nothing to re-plan
                stop.cancelled().await;
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => break,
            }
            if stop.is_cancelled() {
                break;
            }
            if round.healthy(&self.shared, prober.as_ref()).await {
                continue;
            }
            let before = advertised_endpoint(&self.shared);
            let registered_before = !self.shared.advert.lock().withheld;
            tracing::info!(tier = %round.tier, "reachability: the route is broken or could be better; planning again");
            round.stop().await;
            let (reach, next) = self.round().await;
            round = next;
            let after = advertised_endpoint(&self.shared);
            if after != before || registered_before != reach.registers {
                self.shared.emit(EventKind::ReachabilityChanged {
                    tier: reach.tier.label().to_owned(),
                    endpoint: reach.endpoint.clone(),
                    registers: reach.registers,
                });
                if !reach.registers {
                    if self.shared.token().is_some() {
                        tracing::info!("no public route any more: deregistering");
                        let _ = crate::registration::deregister(&self.shared).await;
                    }
                } else if self.shared.token().is_some() {
                    tracing::info!(endpoint = %after, "new route: registering again");
                    if let Err(e) = crate::registration::register(&self.shared).await {
                        tracing::warn!(error = %e, "re-registration failed; the heartbeat loop retries");
                    }
                }
            }
        }
        round.stop().await;
    }
}

/// Runs reachability for a node serving on `port`; sets what it registers, and starts
/// the supervisor that plans again when the route breaks or could be better.
pub(crate) async fn start(
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    config: ReachConfig,
    port: u16,
) -> (Reachability, Running) {
    let http = http_client();
    let dir = directory(&shared, http.as_ref());
    let planner = Planner {
        shared,
        handler,
        config,
        port,
        http,
        dir,
    };
    let (reach, round) = planner.round().await;
    let (stop_tx, stop_rx) = shutdown::channel();
    let supervisor = tokio::spawn(planner.supervise(round, stop_rx));
    (
        reach,
        Running {
            supervisor: Some(supervisor),
            stop_tx,
        },
    )
}

fn relay_metadata(wc: &WorkerConfig) -> Value {
    json!({
        "relay_for": wc.worker_id,
        "relay_host": wc.relay_host,
        "relay_port": wc.relay_port,
    })
}

/// Re-registers when the worker binds again with another endpoint (§14.4).
async fn watch_worker(
    shared: Arc<Shared>,
    mut state: watch::Receiver<WorkerState>,
    stop: Shutdown,
) {
    loop {
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        let endpoint = match &*state.borrow_and_update() {
            WorkerState::Bound { endpoint, .. } => endpoint.clone(),
            _ => continue,
        };
        let changed = {
            let mut ad = shared.advert.lock();
            let changed = ad.endpoint.as_deref() != Some(endpoint.as_str());
            ad.endpoint = Some(endpoint);
            changed
        };
        if changed && shared.token().is_some() {
            tracing::info!("relay endpoint changed; registering again");
            if let Err(e) = crate::registration::register(&shared).await {
                tracing::warn!(error = %e, "re-registration through the relay failed; the heartbeat loop retries");
            }
        }
    }
}

/// Container detection ([`iicp_nat::detect::container`]); `env` looks up environment
/// variables (the CLI passes `|k| std::env::var(k).ok()`).
pub fn detect_container(env: impl Fn(&str) -> Option<String>) -> Container {
    iicp_nat::detect::container(env)
}

/// What `iicp doctor` shows: observations and the plan so far, nothing mapped.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Diagnosis {
    /// Tier reached without acting (a non-final plan's tier is provisional).
    pub tier: Tier,
    /// Whether the plan is final (nothing left to try).
    pub is_final: bool,
    /// Endpoint the final plan would advertise.
    pub endpoint: Option<String>,
    /// The exposure mode.
    pub exposure_mode: ExposureMode,
    /// Next steps the node would take at `serve` (human text).
    pub next_steps: Vec<String>,
    /// Guidance.
    pub guidance: Vec<String>,
    /// Interface addresses seen (loopback excluded).
    pub interfaces: Vec<String>,
    /// Container detection.
    pub container: &'static str,
    /// The UPnP gateway: `None` not found (or UPnP skipped).
    pub gateway: Option<String>,
    /// The gateway's external address, when asked.
    pub external_ip: Option<String>,
}

/// Observes and plans without mapping anything (SSDP and `GetExternalIPAddress` only).
pub async fn diagnose(config: &ReachConfig, port: u16, relay_capable: bool) -> Diagnosis {
    let mut settings = Settings {
        port,
        public_endpoint: config.public_endpoint.clone().filter(|e| !e.is_empty()),
        auto_detect: config.auto_detect,
        relay_worker_endpoint: config
            .relay_worker_endpoint
            .clone()
            .filter(|e| !e.is_empty()),
        relay_capable,
        skip_upnp: config.skip_upnp,
        allow_private_endpoint: config.allow_private_endpoint,
        lease: config.lease,
        ..Settings::default()
    };
    settings.transport_port = None;
    let mut obs = Observations::new(settings);
    obs.interfaces = config
        .interfaces
        .clone()
        .unwrap_or_else(|| iicp_nat::detect::interfaces().unwrap_or_default());
    obs.container = config
        .container
        .unwrap_or_else(|| iicp_nat::detect::container(|_| None));
    let mut gateway_text = None;
    let mut external = None;
    // one pass of discovery when the plan asks for it; stop before any mapping
    for _ in 0..4 {
        let p = iicp_nat::plan(&obs);
        if p.is_final() {
            break;
        }
        let mut progressed = false;
        for step in &p.steps {
            match step {
                Step::DiscoverGateway => {
                    progressed = true;
                    let found = match http_client() {
                        Some(h) if !config.skip_upnp => {
                            let d = UpnpDiscovery::new(h, config.discovery.clone());
                            tokio::time::timeout(
                                config.executor.discovery_timeout,
                                Discover::discover(&d),
                            )
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten()
                        }
                        _ => None,
                    };
                    obs.gateway = match &found {
                        None => GatewayObservation::NotFound,
                        Some(gw) => {
                            gateway_text = Some(format!("{gw:?}"));
                            if let Ok(Ok(ip)) =
                                tokio::time::timeout(config.executor.step_timeout, gw.external_ip())
                                    .await
                            {
                                obs.external_ip = Some(match ip {
                                    Some(ip) => ExternalIp::Address(ip),
                                    None => ExternalIp::Empty,
                                });
                                external = ip.map(|i: IpAddr| i.to_string());
                            }
                            GatewayObservation::Found {
                                local_ip: gw.local_ip(),
                                pinhole_service: gw.has_pinhole_service(),
                            }
                        }
                    };
                }
                Step::QueryExternalIp if obs.external_ip.is_none() => {
                    progressed = true;
                    obs.external_ip =
                        Some(ExternalIp::Failed(iicp_nat::UpnpFailure { code: None }));
                }
                _ => {}
            }
        }
        if !progressed {
            break;
        }
    }
    let p = iicp_nat::plan(&obs);
    Diagnosis {
        tier: p.tier,
        is_final: p.is_final(),
        endpoint: p.endpoint.clone(),
        exposure_mode: p.exposure_mode,
        next_steps: p.steps.iter().map(describe_step).collect(),
        guidance: p.guidance.iter().map(ToString::to_string).collect(),
        interfaces: obs
            .interfaces
            .iter()
            .filter(|i| !i.loopback)
            .map(|i| format!("{} {}", i.name, i.ip))
            .collect(),
        container: match obs.container {
            Container::DockerBridge => "docker-bridge",
            Container::DockerHost => "docker-host",
            Container::Kubernetes => "kubernetes",
            _ => "none",
        },
        gateway: gateway_text,
        external_ip: external,
    }
}

fn describe_step(step: &Step) -> String {
    match step {
        Step::DiscoverGateway => "search for a UPnP gateway".to_owned(),
        Step::QueryExternalIp => "ask the gateway for its external address".to_owned(),
        Step::InspectMappings { ports, .. } => {
            format!("read who holds the conflicting port mappings {ports:?}")
        }
        Step::DeleteMappings { ports } => format!("delete stale mappings {ports:?}"),
        Step::Backoff(d) => format!("wait {d:?}"),
        Step::MapPorts {
            internal_client,
            ports,
            ..
        } => format!(
            "map TCP port(s) {} to {internal_client} through UPnP",
            ports
                .iter()
                .map(|p| p.external.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Step::OpenPinhole {
            internal_client,
            port,
            ..
        } => format!("open an IPv6 pinhole to [{internal_client}]:{port}"),
        Step::Probe { host, port } => {
            format!("ask the directory whether {host}:{port} is reachable")
        }
        Step::BindRelay {
            configured: Some(r),
        } => format!("bind to the relay {r}"),
        Step::BindRelay { configured: None } => {
            "elect a relay-capable node and bind to it".to_owned()
        }
        _ => format!("{step:?}"),
    }
}
