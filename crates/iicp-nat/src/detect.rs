//! Local observations for the planner (PROTOCOL.md §13.2; SEED-SDK.md §3.1 step 0, §3.8):
//! interface addresses ([`interfaces`], via `getifaddrs`) and container detection
//! ([`container`]: `/.dockerenv`, `/proc/1/cgroup`, `KUBERNETES_SERVICE_HOST`, the
//! default-route source address). The environment is read through a lookup function the
//! caller passes in: this crate reads no environment itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;

use crate::plan::{Container, InterfaceAddr};

/// The addresses of every local interface (loopback included, flagged).
///
/// # Errors
/// The `getifaddrs` error.
pub fn interfaces() -> std::io::Result<Vec<InterfaceAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| InterfaceAddr {
            loopback: i.is_loopback(),
            ip: i.ip(),
            name: i.name,
        })
        .collect())
}

/// Indexes of the interfaces that have a global IPv6 address (at most 8): where an
/// IPv6 SSDP search goes.
pub fn ipv6_scopes() -> Vec<u32> {
    let mut scopes: Vec<u32> = Vec::new();
    for i in if_addrs::get_if_addrs().unwrap_or_default() {
        let IpAddr::V6(v6) = i.ip() else { continue };
        if i.is_loopback() || !crate::addr::is_global_v6(v6) {
            continue;
        }
        if let Some(index) = i.index.filter(|x| !scopes.contains(x)) {
            scopes.push(index);
        }
        if scopes.len() >= 8 {
            break;
        }
    }
    scopes
}

/// The raw signals of container detection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerSignals {
    /// `/.dockerenv` exists.
    pub dockerenv: bool,
    /// `/proc/1/cgroup` mentions docker, containerd, kubepods or libpod.
    pub container_cgroup: bool,
    /// `KUBERNETES_SERVICE_HOST` is set.
    pub kubernetes_env: bool,
    /// Source address of the default IPv4 route.
    pub default_ipv4: Option<Ipv4Addr>,
}

/// Classifies the signals (pure; SEED-SDK.md §3.8): Kubernetes wins; Docker (or a
/// container cgroup) with a default route from 172.16.0.0/12 is a bridge network;
/// otherwise a container with another address is treated as host networking.
pub fn classify(s: &ContainerSignals) -> Container {
    if s.kubernetes_env {
        return Container::Kubernetes;
    }
    if !(s.dockerenv || s.container_cgroup) {
        return Container::None;
    }
    match s.default_ipv4 {
        Some(ip) if ip.octets()[0] == 172 && (ip.octets()[1] & 0xF0) == 16 => {
            Container::DockerBridge
        }
        // no default route inside a container: assume the isolated bridge
        None => Container::DockerBridge,
        Some(_) => Container::DockerHost,
    }
}

/// Reads the container signals; `env` looks up environment variables (pass
/// `|k| std::env::var(k).ok()` from the CLI).
pub fn container_signals(env: impl Fn(&str) -> Option<String>) -> ContainerSignals {
    let cgroup = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    ContainerSignals {
        dockerenv: Path::new("/.dockerenv").exists(),
        container_cgroup: ["docker", "containerd", "kubepods", "libpod"]
            .iter()
            .any(|k| cgroup.contains(k)),
        kubernetes_env: env("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()),
        default_ipv4: default_route_ipv4(),
    }
}

/// Detects the container situation (see [`classify`]).
pub fn container(env: impl Fn(&str) -> Option<String>) -> Container {
    classify(&container_signals(env))
}

/// The source address the kernel picks for the default IPv4 route: a UDP socket
/// "connected" to a documentation address (no packet is sent).
pub fn default_route_ipv4() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).ok()?;
    socket.connect(SocketAddr::from(([192, 0, 2, 1], 9))).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_rules() {
        let mut s = ContainerSignals::default();
        assert_eq!(classify(&s), Container::None);
        s.dockerenv = true;
        s.default_ipv4 = Some("172.17.0.2".parse().unwrap());
        assert_eq!(classify(&s), Container::DockerBridge);
        s.default_ipv4 = Some("192.168.1.20".parse().unwrap());
        assert_eq!(classify(&s), Container::DockerHost);
        s.default_ipv4 = None;
        assert_eq!(classify(&s), Container::DockerBridge);
        s.kubernetes_env = true;
        assert_eq!(classify(&s), Container::Kubernetes);
        let cg = ContainerSignals {
            container_cgroup: true,
            default_ipv4: Some("172.31.255.1".parse().unwrap()),
            ..ContainerSignals::default()
        };
        assert_eq!(classify(&cg), Container::DockerBridge);
    }

    #[test]
    fn reads_this_host() {
        let ifs = interfaces().unwrap();
        assert!(ifs.iter().any(|i| i.loopback));
        // no env lookups leak in
        let _ = container(|_| None);
    }
}
