//! The IO side of the planner (PROTOCOL.md §13.1, §13.2; SEED-SDK.md §3.1, §3.3, §3.4):
//! [`Executor::run`] alternates [`plan`](crate::plan::plan) and the execution of its
//! steps until the plan is final, then returns an [`Outcome`]: the final plan (tier,
//! endpoint, `transport_method`, `exposure_mode`, guidance), the observations that led
//! there, and the [`Leases`] the plan relies on. Mappings or pinholes made on the way
//! but not used by the final plan are deleted before `run` returns.
//!
//! The executor talks to the gateway through [`Discover`]/[`Gateway`]; directory probes
//! and relay binding belong to the node, which plugs them in as a [`Prober`] and a
//! [`RelayBinder`] (this crate makes no directory calls). Without them, probes count as
//! [`ProbeVerdict::Unavailable`] and relays as unavailable. Every step has a timeout
//! and the loop is bounded by [`ExecutorConfig::max_rounds`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::lease::{tcp_mapping, Leases, MappingLease, PinholeLease};
use crate::plan::{
    plan, ExternalIp, GatewayObservation, MappingAttempt, MappingOwner, Observations, Plan,
    ProbeVerdict, RelayObservation, Step, Tier, UpnpFailure,
};
use crate::upnp::{BoxFuture, Discover, Gateway, PinholeRequest, Protocol};

/// Asks whether `host:port` is reachable from outside (the node implements it with the
/// directory's `GET /v1/probe`, PROTOCOL.md §8.9).
pub trait Prober: Send + Sync {
    /// The verdict for `host:port`.
    fn probe<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, ProbeVerdict>;
}

/// Binds this node to a relay (the node implements it: elect with
/// [`crate::relay::elect`] from a directory discover unless `configured`, fetch a bind
/// ticket, start a [`crate::RelayWorker`], wait until bound).
pub trait RelayBinder: Send + Sync {
    /// Binds; [`RelayObservation::Bound`] carries the endpoint to advertise.
    fn bind<'a>(&'a self, configured: Option<&'a str>) -> BoxFuture<'a, RelayObservation>;
}

/// Settings of an [`Executor`].
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Most plan/execute rounds.
    pub max_rounds: usize,
    /// Timeout of one gateway call or probe.
    pub step_timeout: Duration,
    /// Timeout of discovery (SSDP plus description).
    pub discovery_timeout: Duration,
    /// Timeout of a relay bind.
    pub relay_timeout: Duration,
    /// `NewPortMappingDescription`.
    pub description: String,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_rounds: 32,
            step_timeout: Duration::from_secs(10),
            discovery_timeout: Duration::from_secs(10),
            relay_timeout: Duration::from_secs(30),
            description: "iicp-node".to_owned(),
        }
    }
}

/// What the executor achieved.
#[derive(Debug)]
pub struct Outcome {
    /// The final plan (or the last one, when the round limit was hit).
    pub plan: Plan,
    /// Everything observed.
    pub observations: Observations,
    /// Mappings and pinholes the plan relies on; keep them with [`Leases::keep`].
    pub leases: Leases,
}

impl Outcome {
    /// The tier reached.
    pub fn tier(&self) -> Tier {
        self.plan.tier
    }

    /// The endpoint to advertise, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.plan.endpoint.as_deref()
    }
}

/// Carries out plans. Cheap to build; attach the seams you have.
#[derive(Clone, Default)]
pub struct Executor {
    config: ExecutorConfig,
    discover: Option<Arc<dyn Discover>>,
    prober: Option<Arc<dyn Prober>>,
    relay: Option<Arc<dyn RelayBinder>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("config", &self.config)
            .field("discover", &self.discover.is_some())
            .field("prober", &self.prober.is_some())
            .field("relay", &self.relay.is_some())
            .finish()
    }
}

impl Executor {
    /// An executor with `config` and no seams (no UPnP, no probes, no relay).
    pub fn new(config: ExecutorConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Uses `discover` to find the UPnP gateway.
    pub fn with_discovery(mut self, discover: Arc<dyn Discover>) -> Self {
        self.discover = Some(discover);
        self
    }

    /// Uses `prober` for reachability probes.
    pub fn with_prober(mut self, prober: Arc<dyn Prober>) -> Self {
        self.prober = Some(prober);
        self
    }

    /// Uses `relay` to bind to relays.
    pub fn with_relay(mut self, relay: Arc<dyn RelayBinder>) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Plans and executes until the plan is final.
    pub async fn run(&self, mut obs: Observations) -> Outcome {
        let mut gateway: Option<Arc<dyn Gateway>> = None;
        let mut leases = Leases::new(None);
        let mut current = plan(&obs);
        for _ in 0..self.config.max_rounds {
            if current.is_final() {
                break;
            }
            for step in current.steps.clone() {
                self.execute(step, &mut obs, &mut gateway, &mut leases)
                    .await;
            }
            current = plan(&obs);
        }
        if !current.is_final() {
            tracing::warn!("reachability planning hit its round limit");
        }
        // keep only what the final plan uses
        let timeout = self.config.step_timeout;
        let mut unused = Leases::new(gateway.clone());
        if current.tier != Tier::UpnpMapped || !current.is_final() {
            unused.mappings = std::mem::take(&mut leases.mappings);
        }
        if current.tier != Tier::Ipv6Pinhole || !current.is_final() {
            unused.pinholes = std::mem::take(&mut leases.pinholes);
        }
        if !unused.is_empty() {
            unused.release(timeout).await;
        }
        let mut kept = Leases::new(gateway);
        kept.mappings = leases.mappings;
        kept.pinholes = leases.pinholes;
        for g in &current.guidance {
            tracing::info!(tier = %current.tier, "reachability: {g}");
        }
        Outcome {
            plan: current,
            observations: obs,
            leases: kept,
        }
    }

    async fn execute(
        &self,
        step: Step,
        obs: &mut Observations,
        gateway: &mut Option<Arc<dyn Gateway>>,
        leases: &mut Leases,
    ) {
        let t = self.config.step_timeout;
        let timeout_failure = UpnpFailure { code: None };
        match step {
            Step::DiscoverGateway => {
                let found = match &self.discover {
                    None => None,
                    Some(d) => {
                        match tokio::time::timeout(self.config.discovery_timeout, d.discover())
                            .await
                        {
                            Ok(Ok(gw)) => gw,
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, "UPnP discovery failed");
                                None
                            }
                            Err(_) => None,
                        }
                    }
                };
                obs.gateway = match &found {
                    None => GatewayObservation::NotFound,
                    Some(gw) => GatewayObservation::Found {
                        local_ip: gw.local_ip(),
                        pinhole_service: gw.has_pinhole_service(),
                    },
                };
                *gateway = found;
                leases.set_gateway(gateway.clone());
            }
            Step::QueryExternalIp => {
                let Some(gw) = gateway.as_ref() else {
                    obs.external_ip = Some(ExternalIp::Failed(timeout_failure));
                    return;
                };
                obs.external_ip = Some(match tokio::time::timeout(t, gw.external_ip()).await {
                    Ok(Ok(Some(ip))) => ExternalIp::Address(ip),
                    Ok(Ok(None)) => ExternalIp::Empty,
                    Ok(Err(e)) => ExternalIp::Failed(e.failure()),
                    Err(_) => ExternalIp::Failed(timeout_failure),
                });
            }
            Step::InspectMappings {
                internal_client,
                ports,
            } => {
                for port in ports {
                    let owner = match gateway.as_ref() {
                        None => MappingOwner::Unknown,
                        Some(gw) => {
                            match tokio::time::timeout(t, gw.mapping_entry(port, Protocol::Tcp))
                                .await
                            {
                                Ok(Ok(None)) => MappingOwner::Free,
                                Ok(Ok(Some(entry))) => {
                                    match entry.internal_client.trim().parse::<IpAddr>() {
                                        Ok(ip) if ip == internal_client => MappingOwner::Ours,
                                        _ => MappingOwner::Other(entry.internal_client),
                                    }
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(port, error = %e, "GetSpecificPortMappingEntry failed");
                                    MappingOwner::Unknown
                                }
                                Err(_) => MappingOwner::Unknown,
                            }
                        }
                    };
                    tracing::info!(port, owner = ?owner, "conflicting port mapping inspected");
                    obs.mapping_owners.push((port, owner));
                }
            }
            Step::DeleteMappings { ports } => {
                if let Some(gw) = gateway.as_ref() {
                    for port in ports {
                        let r =
                            tokio::time::timeout(t, gw.delete_port_mapping(port, Protocol::Tcp))
                                .await;
                        tracing::debug!(
                            port,
                            ok = matches!(r, Ok(Ok(()))),
                            "stale mapping deleted"
                        );
                    }
                }
                leases.mappings.clear();
                obs.conflict_cleared = true;
            }
            Step::Backoff(wait) => tokio::time::sleep(wait).await,
            Step::MapPorts {
                internal_client,
                ports,
                lease,
            } => {
                let Some(gw) = gateway.as_ref() else {
                    obs.mapping_attempts
                        .push(MappingAttempt::Failed(timeout_failure));
                    return;
                };
                let mut made = Vec::new();
                let mut failure = None;
                obs.last_mapping_ports = ports.iter().map(|p| p.external).collect();
                for p in ports {
                    let m = tcp_mapping(
                        internal_client,
                        p.internal,
                        p.external,
                        lease,
                        &self.config.description,
                    );
                    match tokio::time::timeout(t, gw.add_port_mapping(&m)).await {
                        Ok(Ok(())) => {
                            tracing::info!(port = p.external, "UPnP port mapping added");
                            made.push(MappingLease { mapping: m });
                        }
                        Ok(Err(e)) => {
                            tracing::info!(port = p.external, error = %e, "AddPortMapping failed");
                            failure = Some(e.failure());
                            break;
                        }
                        Err(_) => {
                            failure = Some(timeout_failure);
                            break;
                        }
                    }
                }
                match failure {
                    None => {
                        leases.mappings.retain(|old| {
                            !made
                                .iter()
                                .any(|n| n.mapping.external_port == old.mapping.external_port)
                        });
                        leases.mappings.extend(made);
                        obs.mapping_attempts.push(MappingAttempt::Mapped);
                    }
                    Some(f) => {
                        // undo the half-made round
                        for m in made {
                            let _ = tokio::time::timeout(
                                t,
                                gw.delete_port_mapping(m.mapping.external_port, Protocol::Tcp),
                            )
                            .await;
                        }
                        obs.mapping_attempts.push(MappingAttempt::Failed(f));
                    }
                }
            }
            Step::OpenPinhole {
                internal_client,
                port,
                lease,
            } => {
                let Some(gw) = gateway.as_ref() else {
                    obs.pinhole = Some(Err(timeout_failure));
                    return;
                };
                let request = PinholeRequest {
                    internal_client,
                    internal_port: port,
                    protocol: Protocol::Tcp,
                    lease,
                };
                obs.pinhole = Some(
                    match tokio::time::timeout(t, gw.add_pinhole(&request)).await {
                        Ok(Ok(id)) => {
                            tracing::info!(id, "IPv6 pinhole opened");
                            leases.pinholes.push(PinholeLease { id, request });
                            Ok(())
                        }
                        Ok(Err(e)) => {
                            tracing::info!(error = %e, "AddPinhole failed");
                            Err(e.failure())
                        }
                        Err(_) => Err(timeout_failure),
                    },
                );
            }
            Step::Probe { host, port } => {
                let verdict = match &self.prober {
                    None => ProbeVerdict::Unavailable,
                    Some(p) => tokio::time::timeout(t, p.probe(&host, port))
                        .await
                        .unwrap_or(ProbeVerdict::Unavailable),
                };
                obs.probes.push(((host, port), verdict));
            }
            Step::BindRelay { configured } => {
                let result = match &self.relay {
                    None => RelayObservation::Unavailable,
                    Some(r) => tokio::time::timeout(
                        self.config.relay_timeout,
                        r.bind(configured.as_deref()),
                    )
                    .await
                    .unwrap_or(RelayObservation::Unavailable),
                };
                obs.relay = Some(result);
            }
        }
    }
}
