//! `iicp-nat`: how an IICP provider becomes reachable (PROTOCOL.md §13–§14, §19 T4, T18,
//! T31; SEED-SDK.md §3).
//!
//! What it does:
//! * [`plan()`] — the pure reachability planner: observations in (interfaces, container,
//!   UPnP answers, probe verdicts, relay outcome, operator settings), tier
//!   (0/1a/1b/1c/3/4) and next steps out. No IO, table-tested.
//! * [`Executor`] — runs a plan's steps against a UPnP gateway ([`upnp`]), a probe and a
//!   relay binder supplied by the node, until the plan is final; returns the endpoint to
//!   advertise, `transport_method`, `exposure_mode`, guidance and the [`Leases`] to keep
//!   ([`LeaseKeeper`] renews at lease/2 and deletes on stop).
//! * [`upnp`] — a small hand-written UPnP IGD client: SSDP, device description,
//!   WANIPConnection/WANPPPConnection and WANIPv6FirewallControl SOAP actions.
//! * [`detect`] — interface enumeration and Docker/Kubernetes detection.
//! * [`relay`] — the relay-accept server ([`RelayServer`]), the relay worker client
//!   ([`RelayWorker`]) and relay election ([`relay::elect`]).
//!
//! What it does not do: decide what the node advertises or call the directory (the node
//! does both, and plugs probes and relay binding in through [`Prober`] and
//! [`RelayBinder`]); read environment variables or configuration files (the CLI passes
//! [`Settings`]).
//!
//! Place in the crate graph: layer L2, above `iicp-proto` and `iicp-transport`; used by
//! `iicp-node` and `iicp-cli`.
//!
//! ```
//! use iicp_nat::{plan, InterfaceAddr, Observations, Settings, Step, Tier};
//!
//! let mut obs = Observations::new(Settings { port: 9484, ..Settings::default() });
//! obs.interfaces.push(InterfaceAddr {
//!     name: "eth0".into(),
//!     ip: "11.77.2.1".parse().unwrap(),
//!     loopback: false,
//! });
//! let p = plan(&obs);
//! // a public address on an interface is probed before it is advertised
//! assert_eq!(p.tier, Tier::Direct);
//! assert!(matches!(p.steps[..], [Step::Probe { .. }]));
//! ```
#![forbid(unsafe_code)]

pub mod addr;
pub mod detect;
mod executor;
pub mod lease;
pub mod plan;
pub mod relay;
pub mod upnp;

pub use executor::{Executor, ExecutorConfig, Outcome, Prober, RelayBinder};
pub use lease::{KeeperConfig, LeaseKeeper, Leases};
pub use plan::{
    plan, Container, ExposureMode, ExternalIp, GatewayObservation, Guidance, InterfaceAddr,
    MappingAttempt, MappingOwner, Observations, Plan, PortPair, ProbeVerdict, RelayObservation,
    Settings, Step, Tier, TransportMethod, UpnpFailure, MAX_PORT_SHIFT,
};
pub use relay::{
    RelayConfig, RelayHandle, RelayServer, RelayWorker, TicketSource, WorkerConfig, WorkerState,
};
