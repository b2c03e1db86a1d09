//! The pure reachability planner (PROTOCOL.md §13.1 ladder, §13.2 traps; SEED-SDK.md
//! §3.1–§3.4, §3.8, §3.9).
//!
//! [`plan`] maps [`Observations`] — settings, interface addresses, container detection,
//! what the UPnP gateway answered, probe verdicts, the relay outcome — to a [`Plan`]: the
//! [`Tier`] reached so far and the [`Step`]s still to run. It does no IO and reads no
//! clock or environment. The [`crate::Executor`] runs the steps, records what happened
//! in the observations and asks again, until a plan has no steps left (a *final* plan).
//! Because the planner sees the whole history, every trap is a table row:
//!
//! | tier | when | what the final plan says |
//! |---|---|---|
//! | 0 | `IICP_PUBLIC_ENDPOINT` (routable) or a public IPv4 on an interface | advertise it, `direct` |
//! | 1a | UPnP IGD with a public WAN address maps the port | advertise `http://wan:port`, `upnp_mapped`, renew at lease/2 |
//! | 1b | no IPv4 route, global IPv6, `AddPinhole` worked | advertise `http://[gua]:port`, `direct`, renew the pinhole |
//! | 1c | no IPv4 route, global IPv6, pinhole refused (606) or no pinhole service | advertise IPv6, operator guidance |
//! | 3 | no direct route; a relay was bound (configured or elected) | advertise the relay endpoint, `turn_relay` |
//! | 4 | nothing worked | advertise nothing; guidance |
//!
//! Traps (§13.2): a WAN address in 100.64.0.0/10 (CGNAT) or a private one (double NAT)
//! is never mapped or advertised, although UPnP would "succeed"; a mapped endpoint that
//! the directory's probe cannot reach is dropped (UPnP "success" behind an upstream NAT);
//! error 606 (auth required) abandons UPnP; 718 (conflict) first reads the mapping that
//! holds the port (`GetSpecificPortMappingEntry`): one of ours (this host's address, a
//! stale lease) is deleted and re-added once, one of another host's is left alone and
//! the next external port is tried (up to [`MAX_PORT_SHIFT`] further), and the port
//! actually mapped is the one advertised; 502/501 (rate limited / action failed) retry with exponential back-off,
//! a bounded number of times; 725 (only permanent leases) retries with lease 0; Docker
//! bridge networks and Kubernetes skip UPnP and say why.
//!
//! Every derived endpoint is probed ([`Step::Probe`], the node asks `GET /v1/probe`)
//! before it is advertised; an operator's `IICP_PUBLIC_ENDPOINT` is trusted as given.
//! A probe that could not run ([`ProbeVerdict::Unavailable`], e.g. no directory) does not
//! block advertising.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::addr::{self, is_cgnat, is_global_v6, is_public_v4, is_stable_v6};

/// How many external ports past the node's own a conflicting mapping of another host
/// may push the node's mapping (718: the port is taken on the gateway).
pub const MAX_PORT_SHIFT: u16 = 16;

/// Default UPnP lease requested for port mappings and pinholes (SEED-SDK.md §3.1).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

/// UPnP error codes the planner acts on (UPnP IGD WANIPConnection / WANIPv6FirewallControl).
pub mod code {
    /// Action failed (some IGDs answer this when throttling).
    pub const ACTION_FAILED: u16 = 501;
    /// Rate limited / busy: retry with back-off (PROTOCOL.md §13.2).
    pub const RATE_LIMITED: u16 = 502;
    /// Action not authorized: the IGD requires authentication (FRITZ!Box pinholes).
    pub const NOT_AUTHORIZED: u16 = 606;
    /// ConflictInMappingEntry: a stale mapping holds the port; delete then re-add.
    pub const CONFLICT: u16 = 718;
    /// SamePortValuesRequired.
    pub const SAME_PORT_REQUIRED: u16 = 724;
    /// OnlyPermanentLeasesSupported: retry with lease 0.
    pub const ONLY_PERMANENT_LEASES: u16 = 725;
}

/// The reachability tier (issue table; PROTOCOL.md §13.1; SEED-SDK.md §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tier {
    /// 0: operator endpoint or public address on an interface.
    Direct,
    /// 1a: UPnP port mapping on a gateway with a public WAN address.
    UpnpMapped,
    /// 1b: IPv6 with a firewall pinhole opened through UPnP.
    Ipv6Pinhole,
    /// 1c: IPv6 without a pinhole (refused or unsupported); operator guidance.
    Ipv6Unverified,
    /// 3: reachable through a relay.
    Relay,
    /// 4: local only, no public claim.
    LocalOnly,
}

impl Tier {
    /// The tier's name in the issue table: `0`, `1a`, `1b`, `1c`, `3`, `4`.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Direct => "0",
            Tier::UpnpMapped => "1a",
            Tier::Ipv6Pinhole => "1b",
            Tier::Ipv6Unverified => "1c",
            Tier::Relay => "3",
            Tier::LocalOnly => "4",
        }
    }

    /// Whether the node has a public route (tiers 0 to 3).
    pub fn is_reachable(self) -> bool {
        self != Tier::LocalOnly
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// `transport_method` of the registration (PROTOCOL.md §13.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportMethod {
    /// `direct`.
    Direct,
    /// `upnp_mapped`.
    UpnpMapped,
    /// `turn_relay`.
    TurnRelay,
}

impl TransportMethod {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportMethod::Direct => "direct",
            TransportMethod::UpnpMapped => "upnp_mapped",
            TransportMethod::TurnRelay => "turn_relay",
        }
    }
}

/// `exposure_mode` (PROTOCOL.md §13.2, ADR-043 categories).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExposureMode {
    /// `outbound_only`.
    OutboundOnly,
    /// `ipv4_public_direct`.
    Ipv4PublicDirect,
    /// `ipv4_cgnat_blocked`.
    Ipv4CgnatBlocked,
    /// `ipv6_direct_firewall_required`.
    Ipv6DirectFirewallRequired,
    /// `ipv6_direct_pinhole_available`.
    Ipv6DirectPinholeAvailable,
    /// `relay_required`.
    RelayRequired,
    /// `tunnel_required`.
    TunnelRequired,
    /// `dual_stack_available`.
    DualStackAvailable,
}

impl ExposureMode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ExposureMode::OutboundOnly => "outbound_only",
            ExposureMode::Ipv4PublicDirect => "ipv4_public_direct",
            ExposureMode::Ipv4CgnatBlocked => "ipv4_cgnat_blocked",
            ExposureMode::Ipv6DirectFirewallRequired => "ipv6_direct_firewall_required",
            ExposureMode::Ipv6DirectPinholeAvailable => "ipv6_direct_pinhole_available",
            ExposureMode::RelayRequired => "relay_required",
            ExposureMode::TunnelRequired => "tunnel_required",
            ExposureMode::DualStackAvailable => "dual_stack_available",
        }
    }
}

/// Settings of the planner. The CLI fills them from flags and env
/// (`IICP_AUTO_DETECT_NAT`, `IICP_PUBLIC_ENDPOINT`, `IICP_RELAY_WORKER_ENDPOINT`); this
/// crate reads no environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The node's HTTP port (the one-port listener).
    pub port: u16,
    /// A separate native transport port, when it differs from `port`.
    pub transport_port: Option<u16>,
    /// `IICP_PUBLIC_ENDPOINT`: the operator's public endpoint.
    pub public_endpoint: Option<String>,
    /// `IICP_AUTO_DETECT_NAT` (default true). Off: only the operator endpoint or a
    /// configured relay are used.
    pub auto_detect: bool,
    /// `IICP_RELAY_WORKER_ENDPOINT` (`host:port`): bind to this relay, skip detection.
    pub relay_worker_endpoint: Option<String>,
    /// The node is a relay itself: it never becomes a relay worker.
    pub relay_capable: bool,
    /// Skip UPnP entirely (`IICP_SKIP_UPNP`).
    pub skip_upnp: bool,
    /// Accept a non-routable operator endpoint (private meshes).
    pub allow_private_endpoint: bool,
    /// Requested lease of mappings and pinholes.
    pub lease: Duration,
    /// Most `AddPortMapping` attempts (retries after 502/501/718/725 included).
    pub max_mapping_attempts: u32,
    /// First back-off after a rate-limited attempt; doubles per attempt, capped at 30 s.
    pub retry_base: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: iicp_transport::native::DEFAULT_PORT,
            transport_port: None,
            public_endpoint: None,
            auto_detect: true,
            relay_worker_endpoint: None,
            relay_capable: false,
            skip_upnp: false,
            allow_private_endpoint: false,
            lease: DEFAULT_LEASE,
            max_mapping_attempts: 4,
            retry_base: Duration::from_secs(1),
        }
    }
}

/// One address of a local network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    /// Interface name (`eth0`).
    pub name: String,
    /// The address.
    pub ip: IpAddr,
    /// Whether the interface is a loopback.
    pub loopback: bool,
}

/// What [`crate::detect::container`] found (SEED-SDK.md §3.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Container {
    /// Not in a container (or host networking that behaves like it).
    #[default]
    None,
    /// A Docker bridge network: UPnP would map the bridge, not the host. Skip it.
    DockerBridge,
    /// Docker with host networking: UPnP works as on the host.
    DockerHost,
    /// Kubernetes: skip UPnP; expect `IICP_PUBLIC_ENDPOINT` (LoadBalancer/NodePort).
    Kubernetes,
}

/// A UPnP failure as the planner needs it: the UPnP error code when the IGD sent a SOAP
/// fault, `None` for transport errors and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpnpFailure {
    /// UPnP `errorCode` from the SOAP fault.
    pub code: Option<u16>,
}

/// Result of gateway discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GatewayObservation {
    /// Not searched yet.
    #[default]
    NotSearched,
    /// No IGD answered within the timeout.
    NotFound,
    /// An IGD answered.
    Found {
        /// Our address on the gateway's network (the `NewInternalClient`).
        local_ip: Option<IpAddr>,
        /// Whether it offers WANIPv6FirewallControl.
        pinhole_service: bool,
    },
}

/// Result of `GetExternalIPAddress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalIp {
    /// An address.
    Address(IpAddr),
    /// Empty or `0.0.0.0` (miniupnpd with a reserved WAN address, disconnected WAN).
    Empty,
    /// The call failed.
    Failed(UpnpFailure),
}

/// One `AddPortMapping` round (all ports of the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingAttempt {
    /// Every port was mapped 1:1.
    Mapped,
    /// The round failed.
    Failed(UpnpFailure),
}

/// Who holds an external port on the gateway (`GetSpecificPortMappingEntry` after 718).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MappingOwner {
    /// No mapping (714): the conflict is gone.
    Free,
    /// A mapping to this host's own address: a stale one of ours.
    Ours,
    /// A mapping to another host of the LAN (its `NewInternalClient`).
    Other(String),
    /// The entry could not be read: treated like another host's, never deleted.
    Unknown,
}

/// Result of a reachability probe (`GET /v1/probe`, PROTOCOL.md §8.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// The directory reached the endpoint.
    Reachable,
    /// The directory could not reach it.
    Unreachable,
    /// No probe could be run (no directory, probe endpoint missing or failing).
    Unavailable,
}

/// Result of a relay bind (configured or elected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayObservation {
    /// Bound; the endpoint to advertise (`http://relay:port/v1/relay-for/{id}`).
    Bound {
        /// The advertised endpoint.
        endpoint: String,
    },
    /// No relay could be bound (no candidates, refused, unreachable).
    Unavailable,
}

/// Everything the planner knows. Start with [`Observations::new`], fill interfaces and
/// container; the executor appends the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observations {
    /// Settings.
    pub settings: Settings,
    /// Local interface addresses.
    pub interfaces: Vec<InterfaceAddr>,
    /// Container detection.
    pub container: Container,
    /// Whether outbound IPv6 works (`None` = unknown, assumed yes when a global IPv6
    /// address exists).
    pub ipv6_outbound: Option<bool>,
    /// Gateway discovery.
    pub gateway: GatewayObservation,
    /// `GetExternalIPAddress`.
    pub external_ip: Option<ExternalIp>,
    /// `AddPortMapping` rounds, in order.
    pub mapping_attempts: Vec<MappingAttempt>,
    /// Whether a conflicting mapping was deleted after 718.
    pub conflict_cleared: bool,
    /// Who holds the external ports that conflicted (718), as read from the gateway.
    pub mapping_owners: Vec<(u16, MappingOwner)>,
    /// The external ports of the last `AddPortMapping` round.
    pub last_mapping_ports: Vec<u16>,
    /// `AddPinhole`.
    pub pinhole: Option<Result<(), UpnpFailure>>,
    /// Probe verdicts per `(host, port)`.
    pub probes: Vec<((String, u16), ProbeVerdict)>,
    /// Relay outcome.
    pub relay: Option<RelayObservation>,
}

impl Observations {
    /// Observations with `settings` and nothing observed yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// The verdict recorded for `host:port`.
    pub fn probe(&self, host: &str, port: u16) -> Option<ProbeVerdict> {
        self.probes
            .iter()
            .rev()
            .find(|((h, p), _)| h == host && *p == port)
            .map(|(_, v)| *v)
    }
}

/// One port to map: internal port → external port (1:1 here), TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPair {
    /// Port on our host.
    pub internal: u16,
    /// Port on the gateway's WAN side.
    pub external: u16,
}

/// Something the executor must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// SSDP search for an IGD, then fetch its description.
    DiscoverGateway,
    /// `GetExternalIPAddress`.
    QueryExternalIp,
    /// `GetSpecificPortMappingEntry` for these external ports (after 718): whose
    /// mapping holds them.
    InspectMappings {
        /// Our address on the gateway's LAN (a mapping to it is ours).
        internal_client: IpAddr,
        /// External ports to read.
        ports: Vec<u16>,
    },
    /// `DeletePortMapping` for these external ports (stale mapping after 718).
    DeleteMappings {
        /// External ports to free.
        ports: Vec<u16>,
    },
    /// Wait before the next attempt (rate-limited IGD).
    Backoff(Duration),
    /// `AddPortMapping` for every port (TCP), then record one [`MappingAttempt`].
    MapPorts {
        /// Our address on the gateway's LAN.
        internal_client: IpAddr,
        /// The ports.
        ports: Vec<PortPair>,
        /// Lease; zero means permanent.
        lease: Duration,
    },
    /// WANIPv6FirewallControl `AddPinhole` for TCP to `internal_client:port`.
    OpenPinhole {
        /// Our global IPv6 address.
        internal_client: IpAddr,
        /// Our port.
        port: u16,
        /// Lease.
        lease: Duration,
    },
    /// Ask the directory whether `host:port` is reachable from outside.
    Probe {
        /// Host (IP literal or name).
        host: String,
        /// Port.
        port: u16,
    },
    /// Bind to a relay: the configured `host:port`, or one elected from the directory
    /// (PROTOCOL.md §14.5) when `None`.
    BindRelay {
        /// Configured relay worker endpoint.
        configured: Option<String>,
    },
}

/// Advice for the operator, logged by the node and shown by `doctor` (no secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Guidance {
    /// `IICP_PUBLIC_ENDPOINT` is not publicly routable; ignored.
    PublicEndpointNotRoutable,
    /// NAT detection is off and no endpoint or relay is configured.
    AutoDetectOff,
    /// UPnP skipped because of a Docker bridge network.
    DockerBridgeSkipsUpnp,
    /// UPnP skipped under Kubernetes; set `IICP_PUBLIC_ENDPOINT`.
    KubernetesNeedsPublicEndpoint,
    /// UPnP disabled by settings.
    UpnpDisabled,
    /// No UPnP IGD answered.
    NoGateway,
    /// The IGD reports a CGNAT WAN address (100.64.0.0/10): mappings would not be
    /// reachable.
    Cgnat,
    /// The IGD reports a private WAN address: another NAT sits upstream (double NAT).
    DoubleNat,
    /// The IGD reports no external address.
    ExternalIpUnknown,
    /// `GetExternalIPAddress` failed.
    ExternalIpFailed(UpnpFailure),
    /// The IGD requires authorization for port mappings (606).
    UpnpAuthRequired,
    /// The IGD kept rate limiting (502/501).
    UpnpRateLimited,
    /// A conflicting mapping (718) could not be cleared.
    UpnpConflict,
    /// `AddPortMapping` failed otherwise.
    MappingFailed(UpnpFailure),
    /// The mapping was made but the probe could not reach it (an upstream NAT?).
    MappedButUnreachable,
    /// A public interface address did not pass the probe (a firewall?).
    PublicAddressUnreachable,
    /// The pinhole was refused (606): allow UPnP pinholes / "permit independent port
    /// sharing" on the router (FRITZ!Box: Internet → Permit Access → IPv6), or open
    /// the port by hand.
    PinholeRefused,
    /// The pinhole failed otherwise, or the router offers no pinhole service: open the
    /// IPv6 firewall for the port by hand.
    Ipv6FirewallUnverified,
    /// The IPv6 endpoint did not pass the probe.
    Ipv6Unreachable,
    /// Relay-capable nodes do not bind to other relays.
    RelayCapableNoRelay,
    /// No relay could be bound.
    RelayUnavailable,
    /// Nothing worked: serving locally only. Set `IICP_PUBLIC_ENDPOINT`, forward the
    /// port, or configure `IICP_RELAY_WORKER_ENDPOINT`.
    LocalOnly,
}

impl fmt::Display for Guidance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = |c: &UpnpFailure| {
            c.code
                .map_or_else(|| "no answer".to_owned(), |c| c.to_string())
        };
        match self {
            Guidance::PublicEndpointNotRoutable => f.write_str("the configured public endpoint is not publicly routable; ignoring it"),
            Guidance::AutoDetectOff => f.write_str("NAT detection is off (--no-auto-detect-nat / IICP_AUTO_DETECT_NAT=0) and no public endpoint or relay is configured"),
            Guidance::DockerBridgeSkipsUpnp => f.write_str("running on a Docker bridge network: UPnP skipped; set --public-endpoint (IICP_PUBLIC_ENDPOINT) or use --network host"),
            Guidance::KubernetesNeedsPublicEndpoint => f.write_str("running under Kubernetes: UPnP skipped; set --public-endpoint (IICP_PUBLIC_ENDPOINT) to the LoadBalancer or NodePort address"),
            Guidance::UpnpDisabled => f.write_str("UPnP disabled by configuration (--skip-upnp / IICP_SKIP_UPNP)"),
            Guidance::NoGateway => f.write_str("no UPnP gateway answered"),
            Guidance::Cgnat => f.write_str("the gateway's WAN address is in the CGNAT range 100.64.0.0/10: a port mapping would not be reachable from the internet"),
            Guidance::DoubleNat => f.write_str("the gateway's WAN address is private: another NAT sits upstream (double NAT)"),
            Guidance::ExternalIpUnknown => f.write_str("the gateway reports no external address"),
            Guidance::ExternalIpFailed(c) => write!(f, "GetExternalIPAddress failed ({})", code(c)),
            Guidance::UpnpAuthRequired => f.write_str("the gateway requires authorization for port mappings (UPnP error 606)"),
            Guidance::UpnpRateLimited => f.write_str("the gateway kept refusing port mappings as rate limited"),
            Guidance::UpnpConflict => f.write_str("a conflicting port mapping (UPnP error 718) could not be cleared"),
            Guidance::MappingFailed(c) => write!(f, "AddPortMapping failed ({})", code(c)),
            Guidance::MappedButUnreachable => f.write_str("the port mapping was made but the directory could not reach it (an upstream NAT or firewall?)"),
            Guidance::PublicAddressUnreachable => f.write_str("the public interface address is not reachable from the directory (a firewall?)"),
            Guidance::PinholeRefused => f.write_str("the router refused the IPv6 pinhole (UPnP error 606): allow UPnP pinholes for this device on the router (FRITZ!Box: Internet > Permit Access > IPv6) or open the port by hand"),
            Guidance::Ipv6FirewallUnverified => f.write_str("no IPv6 pinhole could be opened: make sure the router's IPv6 firewall admits the port"),
            Guidance::Ipv6Unreachable => f.write_str("the IPv6 endpoint is not reachable from the directory"),
            Guidance::RelayCapableNoRelay => f.write_str("relay-capable nodes do not bind to other relays"),
            Guidance::RelayUnavailable => f.write_str("no relay could be bound"),
            Guidance::LocalOnly => f.write_str("no public route: serving locally only; set --public-endpoint (IICP_PUBLIC_ENDPOINT), forward the port on the router, or set --relay-worker-endpoint (IICP_RELAY_WORKER_ENDPOINT)"),
        }
    }
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The tier reached (final plan) or being attempted.
    pub tier: Tier,
    /// Steps to run next; empty means the plan is final.
    pub steps: Vec<Step>,
    /// HTTP endpoint to advertise (final plans of tiers 0–3).
    pub endpoint: Option<String>,
    /// Native endpoint, when the native port differs from the HTTP port.
    pub transport_endpoint: Option<String>,
    /// `transport_method` to register.
    pub transport_method: Option<TransportMethod>,
    /// `exposure_mode` to register.
    pub exposure_mode: ExposureMode,
    /// Advice collected on the way.
    pub guidance: Vec<Guidance>,
}

impl Plan {
    /// Whether nothing is left to do.
    pub fn is_final(&self) -> bool {
        self.steps.is_empty()
    }
}

struct Builder<'a> {
    obs: &'a Observations,
    guidance: Vec<Guidance>,
    /// The IPv4 side is blocked by CGNAT / double NAT.
    cgnat: bool,
}

enum Probed {
    /// Advertise it.
    Go,
    /// Run this probe first.
    Ask(Step),
    /// The probe failed.
    Failed,
}

impl Builder<'_> {
    fn finish(
        self,
        tier: Tier,
        endpoint: Option<String>,
        transport_endpoint: Option<String>,
        method: Option<TransportMethod>,
        exposure: ExposureMode,
    ) -> Plan {
        Plan {
            tier,
            steps: Vec::new(),
            endpoint,
            transport_endpoint,
            transport_method: method,
            exposure_mode: exposure,
            guidance: self.guidance,
        }
    }

    fn steps(self, tier: Tier, steps: Vec<Step>) -> Plan {
        Plan {
            tier,
            steps,
            endpoint: None,
            transport_endpoint: None,
            transport_method: None,
            exposure_mode: ExposureMode::OutboundOnly,
            guidance: self.guidance,
        }
    }

    fn probed(&self, ip: IpAddr, port: u16) -> Probed {
        let host = ip.to_string();
        match self.obs.probe(&host, port) {
            None => Probed::Ask(Step::Probe { host, port }),
            Some(ProbeVerdict::Unreachable) => Probed::Failed,
            Some(ProbeVerdict::Reachable | ProbeVerdict::Unavailable) => Probed::Go,
        }
    }

    fn transport_endpoint(&self, ip: IpAddr) -> Option<String> {
        let s = &self.obs.settings;
        s.transport_port.filter(|p| *p != s.port).map(|p| {
            let external = self
                .ports()
                .and_then(|ports| ports.into_iter().find(|x| x.internal == p))
                .map_or(p, |x| x.external);
            addr::native_endpoint(ip, external)
        })
    }

    /// The ports to map: 1:1, unless other hosts' mappings hold the node's ports on
    /// the gateway; then shifted past every external port known to be taken
    /// ([`MAX_PORT_SHIFT`] at most; `None` beyond).
    fn ports(&self) -> Option<Vec<PortPair>> {
        (0..=MAX_PORT_SHIFT)
            .map(|shift| self.ports_shifted(shift))
            .find(|ports| {
                ports.iter().all(|p| {
                    !self.obs.mapping_owners.iter().any(|(port, owner)| {
                        *port == p.external
                            && matches!(owner, MappingOwner::Other(_) | MappingOwner::Unknown)
                    })
                })
            })
    }

    fn ports_shifted(&self, shift: u16) -> Vec<PortPair> {
        let s = &self.obs.settings;
        let pair = |internal: u16| PortPair {
            internal,
            external: internal.checked_add(shift).unwrap_or(internal),
        };
        let mut ports = vec![pair(s.port)];
        if let Some(t) = s.transport_port.filter(|p| *p != s.port) {
            ports.push(pair(t));
        }
        ports
    }

    /// The external port the node's HTTP port is mapped to (1:1 unless shifted).
    fn external_port(&self) -> u16 {
        let s = &self.obs.settings;
        self.ports()
            .and_then(|p| p.first().map(|p| p.external))
            .unwrap_or(s.port)
    }

    fn global_v6(&self) -> Option<IpAddr> {
        let mut candidates: Vec<_> = self
            .obs
            .interfaces
            .iter()
            .filter(|i| !i.loopback)
            .filter_map(|i| match i.ip {
                IpAddr::V6(v6) if is_global_v6(v6) => Some(v6),
                _ => None,
            })
            .collect();
        // stable (EUI-64) addresses first, then privacy addresses, in interface order
        candidates.sort_by_key(|v6| !is_stable_v6(*v6));
        candidates.first().map(|v6| IpAddr::V6(*v6))
    }

    fn has_public_v4(&self) -> bool {
        self.obs.interfaces.iter().any(|i| match i.ip {
            IpAddr::V4(v4) => !i.loopback && is_public_v4(v4),
            IpAddr::V6(_) => false,
        })
    }
}

/// Computes the tier and the next steps from what has been observed. Pure.
pub fn plan(obs: &Observations) -> Plan {
    let mut b = Builder {
        obs,
        guidance: Vec::new(),
        cgnat: false,
    };
    let s = &obs.settings;

    // IICP_RELAY_WORKER_ENDPOINT: the operator chose the relay; no detection (§3.9)
    if let Some(relay) = &s.relay_worker_endpoint {
        return relay_rung(b, Some(relay.clone()));
    }

    // rung 1: the operator's endpoint
    if let Some(ep) = &s.public_endpoint {
        if addr::looks_routable(ep) || s.allow_private_endpoint {
            let v6 = addr::endpoint_host(ep)
                .and_then(|h| h.parse::<IpAddr>().ok())
                .is_some_and(|ip| ip.is_ipv6());
            let exposure = if v6 {
                ExposureMode::Ipv6DirectFirewallRequired
            } else {
                ExposureMode::Ipv4PublicDirect
            };
            return b.finish(
                Tier::Direct,
                Some(ep.clone()),
                None,
                Some(TransportMethod::Direct),
                exposure,
            );
        }
        b.guidance.push(Guidance::PublicEndpointNotRoutable);
    }

    if !s.auto_detect {
        b.guidance.push(Guidance::AutoDetectOff);
        return local_only(b);
    }

    // rung 1: a public IPv4 address on an interface (cloud VM)
    let public_v4 = obs.interfaces.iter().find_map(|i| match i.ip {
        IpAddr::V4(v4) if !i.loopback && is_public_v4(v4) => Some(IpAddr::V4(v4)),
        _ => None,
    });
    if let Some(ip) = public_v4 {
        match b.probed(ip, s.port) {
            Probed::Ask(step) => return b.steps(Tier::Direct, vec![step]),
            Probed::Go => {
                let exposure = if b.global_v6().is_some() {
                    ExposureMode::DualStackAvailable
                } else {
                    ExposureMode::Ipv4PublicDirect
                };
                let te = b.transport_endpoint(ip);
                return b.finish(
                    Tier::Direct,
                    Some(addr::http_endpoint(ip, s.port)),
                    te,
                    Some(TransportMethod::Direct),
                    exposure,
                );
            }
            Probed::Failed => b.guidance.push(Guidance::PublicAddressUnreachable),
        }
    }

    // rung 2: UPnP IPv4 mapping (not on a host that already has a public address)
    let upnp_allowed = match (s.skip_upnp, obs.container) {
        (true, _) => {
            b.guidance.push(Guidance::UpnpDisabled);
            false
        }
        (false, Container::DockerBridge) => {
            b.guidance.push(Guidance::DockerBridgeSkipsUpnp);
            false
        }
        (false, Container::Kubernetes) => {
            b.guidance.push(Guidance::KubernetesNeedsPublicEndpoint);
            false
        }
        (false, Container::None | Container::DockerHost) => true,
    };
    if upnp_allowed && !b.has_public_v4() {
        if let Some(p) = upnp_rung(&mut b) {
            return p;
        }
    }

    // rung 2b: IPv6 (tiers 1b / 1c)
    if let Some(p) = ipv6_rung(&mut b, upnp_allowed) {
        return p;
    }

    // rung 4: relay
    relay_rung(b, None)
}

/// The UPnP IPv4 rung: `Some(plan)` to stop here (steps or a final 1a), `None` to go on.
fn upnp_rung(b: &mut Builder<'_>) -> Option<Plan> {
    let obs = b.obs;
    let s = &obs.settings;
    let local_ip = match &obs.gateway {
        GatewayObservation::NotSearched => {
            let plan = std::mem::take(&mut b.guidance);
            return Some(Plan {
                guidance: plan,
                ..steps_only(Tier::UpnpMapped, vec![Step::DiscoverGateway])
            });
        }
        GatewayObservation::NotFound => {
            b.guidance.push(Guidance::NoGateway);
            return None;
        }
        GatewayObservation::Found { local_ip, .. } => *local_ip,
    };
    let wan = match obs.external_ip {
        None => {
            return Some(Plan {
                guidance: std::mem::take(&mut b.guidance),
                ..steps_only(Tier::UpnpMapped, vec![Step::QueryExternalIp])
            })
        }
        Some(ExternalIp::Failed(f)) => {
            b.guidance.push(Guidance::ExternalIpFailed(f));
            return None;
        }
        Some(ExternalIp::Empty) => {
            b.guidance.push(Guidance::ExternalIpUnknown);
            return None;
        }
        Some(ExternalIp::Address(ip)) => ip,
    };
    match wan {
        IpAddr::V4(v4) if is_cgnat(v4) => {
            b.guidance.push(Guidance::Cgnat);
            b.cgnat = true;
            return None;
        }
        IpAddr::V4(v4) if !is_public_v4(v4) => {
            b.guidance.push(Guidance::DoubleNat);
            b.cgnat = true;
            return None;
        }
        IpAddr::V4(v4) if v4 == Ipv4Addr::UNSPECIFIED => {
            b.guidance.push(Guidance::ExternalIpUnknown);
            return None;
        }
        IpAddr::V6(_) => {
            b.guidance.push(Guidance::ExternalIpUnknown);
            return None;
        }
        IpAddr::V4(_) => {}
    }
    let internal_client = local_ip.or_else(|| {
        obs.interfaces.iter().find_map(|i| match i.ip {
            IpAddr::V4(v4) if !i.loopback && v4.is_private() => Some(IpAddr::V4(v4)),
            _ => None,
        })
    });
    let Some(internal_client) = internal_client else {
        b.guidance.push(Guidance::NoGateway);
        return None;
    };
    let attempts = &obs.mapping_attempts;
    let used = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
    let can_retry = used < s.max_mapping_attempts.max(1);
    let Some(ports) = b.ports() else {
        b.guidance.push(Guidance::UpnpConflict);
        return None;
    };
    let map = |lease: Duration| Step::MapPorts {
        internal_client,
        ports: ports.clone(),
        lease,
    };
    let next = |b: &mut Builder<'_>, steps: Vec<Step>| {
        Some(Plan {
            guidance: std::mem::take(&mut b.guidance),
            ..steps_only(Tier::UpnpMapped, steps)
        })
    };
    // a permanent lease is requested after 725 and kept for later retries
    let lease = if attempts.iter().any(
        |a| matches!(a, MappingAttempt::Failed(f) if f.code == Some(code::ONLY_PERMANENT_LEASES)),
    ) {
        Duration::ZERO
    } else {
        s.lease
    };
    match attempts.last() {
        None => next(b, vec![map(lease)]),
        Some(MappingAttempt::Mapped) => match b.probed(wan, b.external_port()) {
            Probed::Ask(step) => next(b, vec![step]),
            Probed::Failed => {
                b.guidance.push(Guidance::MappedButUnreachable);
                None
            }
            Probed::Go => {
                let te = b.transport_endpoint(wan);
                let b = std::mem::replace(
                    b,
                    Builder {
                        obs,
                        guidance: Vec::new(),
                        cgnat: false,
                    },
                );
                let external = b.external_port();
                Some(b.finish(
                    Tier::UpnpMapped,
                    Some(addr::http_endpoint(wan, external)),
                    te,
                    Some(TransportMethod::UpnpMapped),
                    ExposureMode::Ipv4PublicDirect,
                ))
            }
        },
        Some(MappingAttempt::Failed(f)) => match f.code {
            Some(code::NOT_AUTHORIZED) => {
                b.guidance.push(Guidance::UpnpAuthRequired);
                None
            }
            Some(code::CONFLICT) if can_retry => {
                // whose mapping holds the ports? only a stale one of ours is deleted
                let externals: Vec<u16> = ports.iter().map(|p| p.external).collect();
                if obs.last_mapping_ports != externals {
                    // another host holds the ports that conflicted: the next ones
                    return next(b, vec![map(lease)]);
                }
                let owner = |port: u16| {
                    obs.mapping_owners
                        .iter()
                        .rev()
                        .find(|(p, _)| *p == port)
                        .map(|(_, o)| o)
                };
                if externals.iter().any(|p| owner(*p).is_none()) {
                    return next(
                        b,
                        vec![Step::InspectMappings {
                            internal_client,
                            ports: externals,
                        }],
                    );
                }
                let ours: Vec<u16> = externals
                    .iter()
                    .copied()
                    .filter(|p| owner(*p) == Some(&MappingOwner::Ours))
                    .collect();
                if obs.conflict_cleared {
                    // deleted ours and re-added, and it still conflicts
                    b.guidance.push(Guidance::UpnpConflict);
                    return None;
                }
                // nobody else's (another host's would have shifted the ports): ours, or
                // gone since the 718
                next(b, vec![Step::DeleteMappings { ports: ours }, map(lease)])
            }
            Some(code::CONFLICT) => {
                b.guidance.push(Guidance::UpnpConflict);
                None
            }
            Some(code::RATE_LIMITED | code::ACTION_FAILED) if can_retry => {
                let failures = attempts
                    .iter()
                    .filter(|a| matches!(a, MappingAttempt::Failed(_)))
                    .count();
                let exp = u32::try_from(failures.saturating_sub(1))
                    .unwrap_or(16)
                    .min(16);
                let wait = s
                    .retry_base
                    .saturating_mul(1u32 << exp)
                    .min(Duration::from_secs(30));
                next(b, vec![Step::Backoff(wait), map(lease)])
            }
            Some(code::RATE_LIMITED | code::ACTION_FAILED) => {
                b.guidance.push(Guidance::UpnpRateLimited);
                None
            }
            Some(code::ONLY_PERMANENT_LEASES) if can_retry => next(b, vec![map(Duration::ZERO)]),
            _ => {
                b.guidance.push(Guidance::MappingFailed(*f));
                None
            }
        },
    }
}

fn steps_only(tier: Tier, steps: Vec<Step>) -> Plan {
    Plan {
        tier,
        steps,
        endpoint: None,
        transport_endpoint: None,
        transport_method: None,
        exposure_mode: ExposureMode::OutboundOnly,
        guidance: Vec::new(),
    }
}

/// The IPv6 rung (tiers 1b and 1c).
fn ipv6_rung(b: &mut Builder<'_>, upnp_allowed: bool) -> Option<Plan> {
    let obs = b.obs;
    let s = &obs.settings;
    if obs.ipv6_outbound == Some(false) {
        return None;
    }
    let gua = b.global_v6()?;
    let pinhole_service = matches!(
        obs.gateway,
        GatewayObservation::Found {
            pinhole_service: true,
            ..
        }
    );
    if upnp_allowed && obs.gateway == GatewayObservation::NotSearched {
        return Some(Plan {
            guidance: std::mem::take(&mut b.guidance),
            ..steps_only(Tier::Ipv6Pinhole, vec![Step::DiscoverGateway])
        });
    }
    let tier = match (upnp_allowed && pinhole_service, obs.pinhole) {
        (true, None) => {
            return Some(Plan {
                guidance: std::mem::take(&mut b.guidance),
                ..steps_only(
                    Tier::Ipv6Pinhole,
                    vec![Step::OpenPinhole {
                        internal_client: gua,
                        port: s.port,
                        lease: s.lease,
                    }],
                )
            })
        }
        (true, Some(Ok(()))) => Tier::Ipv6Pinhole,
        (
            true,
            Some(Err(UpnpFailure {
                code: Some(code::NOT_AUTHORIZED),
            })),
        ) => {
            b.guidance.push(Guidance::PinholeRefused);
            Tier::Ipv6Unverified
        }
        _ => {
            b.guidance.push(Guidance::Ipv6FirewallUnverified);
            Tier::Ipv6Unverified
        }
    };
    match b.probed(gua, s.port) {
        Probed::Ask(step) => Some(Plan {
            guidance: std::mem::take(&mut b.guidance),
            ..steps_only(tier, vec![step])
        }),
        Probed::Failed => {
            b.guidance.push(Guidance::Ipv6Unreachable);
            None
        }
        Probed::Go => {
            let exposure = if tier == Tier::Ipv6Pinhole {
                ExposureMode::Ipv6DirectPinholeAvailable
            } else {
                ExposureMode::Ipv6DirectFirewallRequired
            };
            let te = b.transport_endpoint(gua);
            let done = std::mem::replace(
                b,
                Builder {
                    obs,
                    guidance: Vec::new(),
                    cgnat: false,
                },
            );
            Some(done.finish(
                tier,
                Some(addr::http_endpoint(gua, s.port)),
                te,
                Some(TransportMethod::Direct),
                exposure,
            ))
        }
    }
}

/// The relay rung (tier 3), else tier 4.
fn relay_rung(mut b: Builder<'_>, configured: Option<String>) -> Plan {
    let obs = b.obs;
    if configured.is_none() && obs.settings.relay_capable {
        b.guidance.push(Guidance::RelayCapableNoRelay);
        return local_only(b);
    }
    match &obs.relay {
        None => b.steps(Tier::Relay, vec![Step::BindRelay { configured }]),
        Some(RelayObservation::Bound { endpoint }) => b.finish(
            Tier::Relay,
            Some(endpoint.clone()),
            None,
            Some(TransportMethod::TurnRelay),
            ExposureMode::RelayRequired,
        ),
        Some(RelayObservation::Unavailable) => {
            b.guidance.push(Guidance::RelayUnavailable);
            local_only(b)
        }
    }
}

fn local_only(mut b: Builder<'_>) -> Plan {
    b.guidance.push(Guidance::LocalOnly);
    let exposure = if b.cgnat {
        ExposureMode::Ipv4CgnatBlocked
    } else {
        ExposureMode::OutboundOnly
    };
    b.finish(Tier::LocalOnly, None, None, None, exposure)
}
