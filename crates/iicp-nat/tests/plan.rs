//! Table tests of the pure planner: every tier of the table and the §13.2 traps.
//!
//! A scripted "world" answers each step the planner asks for (no IO), so each row is the
//! whole conversation from the first plan to the final one.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use iicp_nat::plan::code;
use iicp_nat::{
    plan, Container, ExposureMode, ExternalIp, GatewayObservation, Guidance, InterfaceAddr,
    MappingAttempt, MappingOwner, Observations, Plan, PortPair, ProbeVerdict, RelayObservation,
    Settings, Step, Tier, TransportMethod, UpnpFailure,
};

const LAN: &str = "192.168.1.20";
const WAN: &str = "11.77.2.1";
const GUA: &str = "2a01:4f8:1:2::1234";
const RELAY_EP: &str = "http://relay.example:9484/v1/relay-for/me";

#[derive(Clone)]
struct World {
    gateway: Option<bool>, // Some(pinhole service)
    external_ip: ExternalIp,
    mappings: VecDeque<MappingAttempt>,
    pinhole: Result<(), UpnpFailure>,
    probe: fn(&str) -> ProbeVerdict,
    relay: RelayObservation,
    /// Who holds which external port (`GetSpecificPortMappingEntry`).
    owners: Vec<(u16, MappingOwner)>,
}

impl Default for World {
    fn default() -> Self {
        Self {
            gateway: Some(false),
            external_ip: ExternalIp::Address(WAN.parse().unwrap()),
            mappings: VecDeque::new(),
            owners: Vec::new(),
            pinhole: Ok(()),
            probe: |_| ProbeVerdict::Reachable,
            relay: RelayObservation::Bound {
                endpoint: RELAY_EP.into(),
            },
        }
    }
}

fn fail(code: u16) -> UpnpFailure {
    UpnpFailure { code: Some(code) }
}

fn iface(ip: &str) -> InterfaceAddr {
    InterfaceAddr {
        name: "eth0".into(),
        ip: ip.parse().unwrap(),
        loopback: false,
    }
}

fn home(ips: &[&str]) -> Observations {
    let mut o = Observations::new(Settings::default());
    o.interfaces.push(InterfaceAddr {
        name: "lo".into(),
        ip: "127.0.0.1".parse().unwrap(),
        loopback: true,
    });
    o.interfaces.extend(ips.iter().map(|ip| iface(ip)));
    o
}

/// Runs the planner against the world until the plan is final; returns it and every
/// step asked for.
fn simulate(mut obs: Observations, mut world: World) -> (Plan, Vec<Step>) {
    let mut trace = Vec::new();
    for _ in 0..40 {
        let p = plan(&obs);
        if p.is_final() {
            return (p, trace);
        }
        for step in p.steps {
            trace.push(step.clone());
            match step {
                Step::DiscoverGateway => {
                    obs.gateway = match world.gateway {
                        None => GatewayObservation::NotFound,
                        Some(pinhole_service) => GatewayObservation::Found {
                            local_ip: Some(LAN.parse().unwrap()),
                            pinhole_service,
                        },
                    }
                }
                Step::QueryExternalIp => obs.external_ip = Some(world.external_ip),
                Step::DeleteMappings { .. } => obs.conflict_cleared = true,
                Step::InspectMappings { ports, .. } => {
                    for port in ports {
                        let owner = world
                            .owners
                            .iter()
                            .find(|(p, _)| *p == port)
                            .map_or(MappingOwner::Free, |(_, o)| o.clone());
                        obs.mapping_owners.push((port, owner));
                    }
                }
                Step::Backoff(_) => {}
                Step::MapPorts { ports, .. } => {
                    obs.last_mapping_ports = ports.iter().map(|p| p.external).collect();
                    obs.mapping_attempts
                        .push(world.mappings.pop_front().unwrap_or(MappingAttempt::Mapped))
                }
                Step::OpenPinhole { .. } => obs.pinhole = Some(world.pinhole),
                Step::Probe { host, port } => {
                    let v = (world.probe)(&host);
                    obs.probes.push(((host, port), v));
                }
                Step::BindRelay { .. } => obs.relay = Some(world.relay.clone()),
                _ => unreachable!(),
            }
        }
    }
    panic!("planner did not converge: {trace:?}");
}

fn kinds(trace: &[Step]) -> Vec<&'static str> {
    trace
        .iter()
        .map(|s| match s {
            Step::DiscoverGateway => "discover",
            Step::QueryExternalIp => "external_ip",
            Step::DeleteMappings { .. } => "delete",
            Step::InspectMappings { .. } => "inspect",
            Step::Backoff(_) => "backoff",
            Step::MapPorts { .. } => "map",
            Step::OpenPinhole { .. } => "pinhole",
            Step::Probe { .. } => "probe",
            Step::BindRelay { .. } => "relay",
            _ => "other",
        })
        .collect()
}

fn cgnat_world() -> World {
    World {
        gateway: Some(true),
        external_ip: ExternalIp::Address("100.64.12.7".parse().unwrap()),
        ..World::default()
    }
}

// ---------------------------------------------------------------- tier rows

#[test]
fn tier0_operator_endpoint_is_advertised_as_given() {
    let mut o = home(&[LAN]);
    o.settings.public_endpoint = Some("https://node.example.com".into());
    let (p, trace) = simulate(o, World::default());
    assert!(trace.is_empty(), "{trace:?}");
    assert_eq!(p.tier, Tier::Direct);
    assert_eq!(p.endpoint.as_deref(), Some("https://node.example.com"));
    assert_eq!(p.transport_method, Some(TransportMethod::Direct));
    assert_eq!(p.exposure_mode, ExposureMode::Ipv4PublicDirect);
}

#[test]
fn tier0_operator_ipv6_endpoint() {
    let mut o = home(&[]);
    o.settings.public_endpoint = Some(format!("http://[{GUA}]:9484"));
    let (p, _) = simulate(o, World::default());
    assert_eq!(p.tier, Tier::Direct);
    assert_eq!(p.exposure_mode, ExposureMode::Ipv6DirectFirewallRequired);
}

#[test]
fn tier0_unroutable_operator_endpoint_is_ignored_unless_allowed() {
    let mut o = home(&[LAN]);
    o.settings.public_endpoint = Some("http://127.0.0.1:9484".into());
    let (p, _) = simulate(o.clone(), World::default());
    assert_eq!(p.tier, Tier::UpnpMapped);
    assert!(p.guidance.contains(&Guidance::PublicEndpointNotRoutable));
    o.settings.allow_private_endpoint = true;
    let (p, trace) = simulate(o, World::default());
    assert!(trace.is_empty());
    assert_eq!(p.tier, Tier::Direct);
    assert_eq!(p.endpoint.as_deref(), Some("http://127.0.0.1:9484"));
}

#[test]
fn tier0_public_interface_address_after_probe() {
    let (p, trace) = simulate(home(&[WAN]), World::default());
    assert_eq!(kinds(&trace), ["probe"]);
    assert_eq!(p.tier, Tier::Direct);
    assert_eq!(p.endpoint.as_deref(), Some("http://11.77.2.1:9484"));
    assert_eq!(p.exposure_mode, ExposureMode::Ipv4PublicDirect);
    // probe unavailable (no directory) does not block
    let w = World {
        probe: |_| ProbeVerdict::Unavailable,
        ..World::default()
    };
    assert_eq!(simulate(home(&[WAN]), w).0.tier, Tier::Direct);
    // dual stack
    let (p, _) = simulate(home(&[WAN, GUA]), World::default());
    assert_eq!(p.exposure_mode, ExposureMode::DualStackAvailable);
}

#[test]
fn tier0_public_address_behind_a_firewall_falls_to_relay() {
    let w = World {
        probe: |_| ProbeVerdict::Unreachable,
        ..World::default()
    };
    let (p, trace) = simulate(home(&[WAN]), w);
    // no UPnP on a host that has a public address itself
    assert_eq!(kinds(&trace), ["probe", "relay"]);
    assert_eq!(p.tier, Tier::Relay);
    assert!(p.guidance.contains(&Guidance::PublicAddressUnreachable));
}

#[test]
fn tier1a_upnp_mapping_on_a_public_wan() {
    let (p, trace) = simulate(home(&[LAN]), World::default());
    assert_eq!(kinds(&trace), ["discover", "external_ip", "map", "probe"]);
    let Step::MapPorts {
        internal_client,
        ports,
        lease,
    } = &trace[2]
    else {
        panic!()
    };
    assert_eq!(*internal_client, LAN.parse::<IpAddr>().unwrap());
    assert_eq!((ports[0].internal, ports[0].external), (9484, 9484));
    assert_eq!(*lease, Duration::from_secs(3600));
    assert_eq!(p.tier, Tier::UpnpMapped);
    assert_eq!(p.tier.label(), "1a");
    assert_eq!(p.endpoint.as_deref(), Some("http://11.77.2.1:9484"));
    assert_eq!(p.transport_method, Some(TransportMethod::UpnpMapped));
    assert_eq!(p.transport_endpoint, None);
}

#[test]
fn tier1a_maps_a_separate_transport_port_too() {
    let mut o = home(&[LAN]);
    o.settings.transport_port = Some(9500);
    let (p, trace) = simulate(o, World::default());
    let Step::MapPorts { ports, .. } = &trace[2] else {
        panic!()
    };
    assert_eq!(ports.len(), 2);
    assert_eq!(
        p.transport_endpoint.as_deref(),
        Some("iicp://11.77.2.1:9500")
    );
}

#[test]
fn tier1b_cgnat_with_ipv6_pinhole() {
    let (p, trace) = simulate(home(&[LAN, GUA]), cgnat_world());
    assert_eq!(
        kinds(&trace),
        ["discover", "external_ip", "pinhole", "probe"]
    );
    assert_eq!(p.tier, Tier::Ipv6Pinhole);
    assert_eq!(p.tier.label(), "1b");
    assert_eq!(p.endpoint, Some(format!("http://[{GUA}]:9484")));
    assert_eq!(p.transport_method, Some(TransportMethod::Direct));
    assert_eq!(p.exposure_mode, ExposureMode::Ipv6DirectPinholeAvailable);
    assert!(p.guidance.contains(&Guidance::Cgnat));
}

#[test]
fn tier1c_cgnat_with_pinhole_refused_606() {
    let w = World {
        pinhole: Err(fail(code::NOT_AUTHORIZED)),
        ..cgnat_world()
    };
    let (p, _) = simulate(home(&[LAN, GUA]), w);
    assert_eq!(p.tier, Tier::Ipv6Unverified);
    assert_eq!(p.tier.label(), "1c");
    assert_eq!(p.endpoint, Some(format!("http://[{GUA}]:9484")));
    assert!(p.guidance.contains(&Guidance::PinholeRefused));
    assert!(p.guidance.iter().any(|g| g.to_string().contains("606")));
    assert_eq!(p.exposure_mode, ExposureMode::Ipv6DirectFirewallRequired);
}

#[test]
fn tier1c_without_a_pinhole_service() {
    let w = World {
        gateway: Some(false),
        ..cgnat_world()
    };
    let (p, trace) = simulate(home(&[LAN, GUA]), w);
    assert!(!kinds(&trace).contains(&"pinhole"));
    assert_eq!(p.tier, Tier::Ipv6Unverified);
    assert!(p.guidance.contains(&Guidance::Ipv6FirewallUnverified));
}

#[test]
fn ipv6_that_the_probe_cannot_reach_goes_to_the_relay() {
    let w = World {
        probe: |h| {
            if h.contains(':') {
                ProbeVerdict::Unreachable
            } else {
                ProbeVerdict::Reachable
            }
        },
        ..cgnat_world()
    };
    let (p, _) = simulate(home(&[LAN, GUA]), w);
    assert_eq!(p.tier, Tier::Relay);
    assert!(p.guidance.contains(&Guidance::Ipv6Unreachable));
}

#[test]
fn tier3_cgnat_without_ipv6_elects_a_relay() {
    let (p, trace) = simulate(home(&[LAN]), cgnat_world());
    assert_eq!(kinds(&trace), ["discover", "external_ip", "relay"]);
    assert_eq!(trace[2], Step::BindRelay { configured: None });
    assert_eq!(p.tier, Tier::Relay);
    assert_eq!(p.endpoint.as_deref(), Some(RELAY_EP));
    assert_eq!(p.transport_method, Some(TransportMethod::TurnRelay));
    assert_eq!(p.exposure_mode, ExposureMode::RelayRequired);
}

#[test]
fn tier3_configured_relay_skips_detection() {
    let mut o = home(&[LAN]);
    o.settings.relay_worker_endpoint = Some("relay.example:9485".into());
    let (p, trace) = simulate(o, World::default());
    assert_eq!(
        trace,
        [Step::BindRelay {
            configured: Some("relay.example:9485".into())
        }]
    );
    assert_eq!(p.tier, Tier::Relay);
}

#[test]
fn tier4_nothing_worked() {
    let w = World {
        relay: RelayObservation::Unavailable,
        ..cgnat_world()
    };
    let (p, _) = simulate(home(&[LAN]), w);
    assert_eq!(p.tier, Tier::LocalOnly);
    assert!(!p.tier.is_reachable());
    assert_eq!(p.endpoint, None);
    assert_eq!(p.transport_method, None);
    assert_eq!(p.exposure_mode, ExposureMode::Ipv4CgnatBlocked);
    assert!(p.guidance.contains(&Guidance::RelayUnavailable));
    assert_eq!(p.guidance.last(), Some(&Guidance::LocalOnly));
    // no gateway at all, no IPv6, no relay
    let w = World {
        gateway: None,
        relay: RelayObservation::Unavailable,
        ..World::default()
    };
    let (p, _) = simulate(home(&[LAN]), w);
    assert_eq!(p.tier, Tier::LocalOnly);
    assert_eq!(p.exposure_mode, ExposureMode::OutboundOnly);
    assert!(p.guidance.contains(&Guidance::NoGateway));
}

#[test]
fn tier4_relay_capable_nodes_do_not_become_workers() {
    let mut o = home(&[LAN]);
    o.settings.relay_capable = true;
    let (p, trace) = simulate(o, cgnat_world());
    assert!(!kinds(&trace).contains(&"relay"));
    assert_eq!(p.tier, Tier::LocalOnly);
    assert!(p.guidance.contains(&Guidance::RelayCapableNoRelay));
}

#[test]
fn tier4_auto_detect_off() {
    let mut o = home(&[WAN]);
    o.settings.auto_detect = false;
    let (p, trace) = simulate(o.clone(), World::default());
    assert!(trace.is_empty());
    assert_eq!(p.tier, Tier::LocalOnly);
    assert!(p.guidance.contains(&Guidance::AutoDetectOff));
    // the operator endpoint still counts
    o.settings.public_endpoint = Some("http://node.example.org:9484".into());
    assert_eq!(simulate(o, World::default()).0.tier, Tier::Direct);
}

// ---------------------------------------------------------------- §13.2 traps

#[test]
fn trap_cgnat_wan_is_never_mapped() {
    // UPnP would "succeed" behind CGNAT; the planner does not even try
    let (p, trace) = simulate(home(&[LAN]), cgnat_world());
    assert!(!kinds(&trace).contains(&"map"));
    assert!(p.guidance.contains(&Guidance::Cgnat));
    for wan in ["100.64.0.1", "100.127.255.254"] {
        let w = World {
            external_ip: ExternalIp::Address(wan.parse().unwrap()),
            ..World::default()
        };
        assert!(!kinds(&simulate(home(&[LAN]), w).1).contains(&"map"));
    }
}

#[test]
fn trap_double_nat_private_wan() {
    for wan in ["192.168.0.5", "10.0.0.1", "172.20.1.1"] {
        let w = World {
            external_ip: ExternalIp::Address(wan.parse().unwrap()),
            ..World::default()
        };
        let (p, trace) = simulate(home(&[LAN]), w);
        assert!(!kinds(&trace).contains(&"map"), "{wan}");
        assert!(p.guidance.contains(&Guidance::DoubleNat), "{wan}");
        assert_eq!(p.tier, Tier::Relay);
    }
}

#[test]
fn trap_upnp_success_that_the_probe_cannot_reach() {
    let w = World {
        probe: |_| ProbeVerdict::Unreachable,
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    assert_eq!(
        kinds(&trace),
        ["discover", "external_ip", "map", "probe", "relay"]
    );
    assert!(p.guidance.contains(&Guidance::MappedButUnreachable));
    assert_eq!(p.tier, Tier::Relay);
}

#[test]
fn trap_auth_required_igd_606() {
    let w = World {
        mappings: [MappingAttempt::Failed(fail(code::NOT_AUTHORIZED))].into(),
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    assert_eq!(kinds(&trace), ["discover", "external_ip", "map", "relay"]);
    assert!(p.guidance.contains(&Guidance::UpnpAuthRequired));
}

#[test]
fn trap_conflict_718_deletes_a_stale_mapping_of_ours_then_re_adds_once() {
    let w = World {
        mappings: [MappingAttempt::Failed(fail(code::CONFLICT))].into(),
        owners: vec![(9484, MappingOwner::Ours)],
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    assert_eq!(
        kinds(&trace),
        [
            "discover",
            "external_ip",
            "map",
            "inspect",
            "delete",
            "map",
            "probe"
        ]
    );
    assert_eq!(trace[4], Step::DeleteMappings { ports: vec![9484] });
    assert_eq!(p.tier, Tier::UpnpMapped);
    // a second conflict after the delete gives up
    let w = World {
        mappings: [
            MappingAttempt::Failed(fail(code::CONFLICT)),
            MappingAttempt::Failed(fail(code::CONFLICT)),
        ]
        .into(),
        owners: vec![(9484, MappingOwner::Ours)],
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    assert_eq!(kinds(&trace).iter().filter(|k| **k == "delete").count(), 1);
    assert!(p.guidance.contains(&Guidance::UpnpConflict));
    assert_eq!(p.tier, Tier::Relay);
}

#[test]
fn trap_conflict_718_with_another_hosts_mapping_takes_the_next_port() {
    for owner in [
        MappingOwner::Other("10.0.0.9".into()),
        MappingOwner::Unknown,
    ] {
        let w = World {
            mappings: [MappingAttempt::Failed(fail(code::CONFLICT))].into(),
            owners: vec![(9484, owner.clone())],
            ..World::default()
        };
        let (p, trace) = simulate(home(&[LAN]), w);
        assert_eq!(
            kinds(&trace),
            ["discover", "external_ip", "map", "inspect", "map", "probe"],
            "{owner:?}"
        );
        let Step::MapPorts { ports, .. } = &trace[4] else {
            panic!("{trace:?}")
        };
        assert_eq!(
            ports,
            &[PortPair {
                internal: 9484,
                external: 9485
            }]
        );
        assert_eq!(
            trace[5],
            Step::Probe {
                host: WAN.into(),
                port: 9485
            }
        );
        assert_eq!(p.tier, Tier::UpnpMapped);
        assert_eq!(p.endpoint.as_deref(), Some("http://11.77.2.1:9485"));
    }
    // every port of the range taken: no mapping, guidance
    let taken: Vec<(u16, MappingOwner)> = (0..=iicp_nat::MAX_PORT_SHIFT)
        .map(|i| (9484 + i, MappingOwner::Other("10.0.0.9".into())))
        .collect();
    let mut w = World {
        owners: taken,
        ..World::default()
    };
    w.mappings = std::iter::repeat_n(MappingAttempt::Failed(fail(code::CONFLICT)), 20).collect();
    let (p, trace) = simulate(home(&[LAN]), w);
    assert!(p.guidance.contains(&Guidance::UpnpConflict), "{trace:?}");
    assert_ne!(p.tier, Tier::UpnpMapped);
    assert_eq!(kinds(&trace).iter().filter(|k| **k == "delete").count(), 0);
}

#[test]
fn trap_rate_limited_igd_502_backs_off_exponentially() {
    let w = World {
        mappings: [
            MappingAttempt::Failed(fail(code::RATE_LIMITED)),
            MappingAttempt::Failed(fail(code::RATE_LIMITED)),
        ]
        .into(),
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    let waits: Vec<Duration> = trace
        .iter()
        .filter_map(|s| match s {
            Step::Backoff(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(waits, [Duration::from_secs(1), Duration::from_secs(2)]);
    assert_eq!(p.tier, Tier::UpnpMapped);
    // never succeeding: bounded by max_mapping_attempts
    let w = World {
        mappings: std::iter::repeat_n(MappingAttempt::Failed(fail(code::RATE_LIMITED)), 10)
            .collect(),
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    assert_eq!(kinds(&trace).iter().filter(|k| **k == "map").count(), 4);
    assert!(p.guidance.contains(&Guidance::UpnpRateLimited));
    assert_eq!(p.tier, Tier::Relay);
}

#[test]
fn trap_only_permanent_leases_725() {
    let w = World {
        mappings: [MappingAttempt::Failed(fail(code::ONLY_PERMANENT_LEASES))].into(),
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    let leases: Vec<Duration> = trace
        .iter()
        .filter_map(|s| match s {
            Step::MapPorts { lease, .. } => Some(*lease),
            _ => None,
        })
        .collect();
    assert_eq!(leases, [Duration::from_secs(3600), Duration::ZERO]);
    assert_eq!(p.tier, Tier::UpnpMapped);
}

#[test]
fn trap_other_mapping_errors_and_timeouts_move_on() {
    for f in [fail(code::SAME_PORT_REQUIRED), UpnpFailure { code: None }] {
        let w = World {
            mappings: [MappingAttempt::Failed(f)].into(),
            ..World::default()
        };
        let (p, _) = simulate(home(&[LAN]), w);
        assert!(p.guidance.contains(&Guidance::MappingFailed(f)));
        assert_eq!(p.tier, Tier::Relay);
    }
}

#[test]
fn trap_containers_skip_upnp() {
    for (c, g) in [
        (Container::DockerBridge, Guidance::DockerBridgeSkipsUpnp),
        (
            Container::Kubernetes,
            Guidance::KubernetesNeedsPublicEndpoint,
        ),
    ] {
        let mut o = home(&["172.17.0.2"]);
        o.container = c;
        let (p, trace) = simulate(o, World::default());
        assert_eq!(kinds(&trace), ["relay"], "{c:?}");
        assert!(p.guidance.contains(&g));
        assert_eq!(p.tier, Tier::Relay);
    }
    // host networking behaves like the host
    let mut o = home(&[LAN]);
    o.container = Container::DockerHost;
    assert_eq!(simulate(o, World::default()).0.tier, Tier::UpnpMapped);
    // and skip_upnp too
    let mut o = home(&[LAN]);
    o.settings.skip_upnp = true;
    let (p, trace) = simulate(o, World::default());
    assert_eq!(kinds(&trace), ["relay"]);
    assert!(p.guidance.contains(&Guidance::UpnpDisabled));
}

#[test]
fn trap_empty_or_failed_external_ip() {
    let w = World {
        external_ip: ExternalIp::Empty,
        ..World::default()
    };
    let (p, trace) = simulate(home(&[LAN]), w);
    assert!(!kinds(&trace).contains(&"map"));
    assert!(p.guidance.contains(&Guidance::ExternalIpUnknown));
    let w = World {
        external_ip: ExternalIp::Failed(fail(501)),
        ..World::default()
    };
    let (p, _) = simulate(home(&[LAN]), w);
    assert!(p.guidance.contains(&Guidance::ExternalIpFailed(fail(501))));
}

#[test]
fn ipv6_choice_prefers_stable_addresses_and_respects_outbound() {
    let privacy = "2a01:4f8:1:2:1234:5678:9abc:def0";
    let stable = "2a01:4f8:1:2:211:22ff:fe33:4455";
    let (p, _) = simulate(home(&[LAN, privacy, stable]), cgnat_world());
    assert_eq!(p.endpoint, Some(format!("http://[{stable}]:9484")));
    let mut o = home(&[LAN, stable]);
    o.ipv6_outbound = Some(false);
    assert_eq!(simulate(o, cgnat_world()).0.tier, Tier::Relay);
    // documentation and ULA addresses are not global
    let (p, _) = simulate(home(&[LAN, "2001:db8::1", "fd00::1"]), cgnat_world());
    assert_eq!(p.tier, Tier::Relay);
}

#[test]
fn ipv6_only_host_without_gateway() {
    let w = World {
        gateway: None,
        ..World::default()
    };
    let (p, trace) = simulate(home(&[GUA]), w);
    assert_eq!(kinds(&trace), ["discover", "probe"]);
    assert_eq!(p.tier, Tier::Ipv6Unverified);
}

#[test]
fn labels_and_wire_strings() {
    let tiers = [
        (Tier::Direct, "0"),
        (Tier::UpnpMapped, "1a"),
        (Tier::Ipv6Pinhole, "1b"),
        (Tier::Ipv6Unverified, "1c"),
        (Tier::Relay, "3"),
        (Tier::LocalOnly, "4"),
    ];
    for (t, l) in tiers {
        assert_eq!(t.to_string(), l);
    }
    assert_eq!(TransportMethod::TurnRelay.as_str(), "turn_relay");
    assert_eq!(TransportMethod::UpnpMapped.as_str(), "upnp_mapped");
    assert_eq!(
        ExposureMode::Ipv6DirectPinholeAvailable.as_str(),
        "ipv6_direct_pinhole_available"
    );
}
