//! `serve`'s NAT flags and output (SEED-SDK.md §2.2, §3): turns `--auto-detect-nat` /
//! `--no-auto-detect-nat` / `IICP_AUTO_DETECT_NAT`, `--public-endpoint`,
//! `--relay-worker-endpoint`, `--skip-upnp` into an [`iicp_node::ReachConfig`] and prints
//! what the node's reachability planning achieved. The logic lives in `iicp_node::reach`.

use iicp_node::reach::{Container, Tier};
use iicp_node::{is_private_endpoint, ReachConfig, ServeHandle};

use super::Args;

/// Precedence `--no-auto-detect-nat` > `--auto-detect-nat` > `IICP_AUTO_DETECT_NAT` > on.
pub(super) fn auto_detect(args: &Args) -> bool {
    if args.no_auto_detect_nat {
        return false;
    }
    if args.auto_detect_nat {
        return true;
    }
    std::env::var("IICP_AUTO_DETECT_NAT")
        .ok()
        .and_then(|v| parse_bool(&v))
        .unwrap_or(true)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Some(true),
        "0" | "false" | "no" | "off" | "n" | "" => Some(false),
        _ => None,
    }
}

fn container() -> Container {
    iicp_node::reach::detect_container(|k| std::env::var(k).ok())
}

/// The reachability configuration, or `None` when the node serves as configured: NAT
/// detection is off and no relay is configured, or the directory is private (a private
/// mesh reaches its nodes on the LAN; `--auto-detect-nat` forces detection anyway).
pub(super) fn reach_config(
    args: &Args,
    public_endpoint: Option<&str>,
    directory: Option<&str>,
) -> Option<ReachConfig> {
    let auto = auto_detect(args);
    let relay = args
        .relay_worker_endpoint
        .as_deref()
        .filter(|s| !s.trim().is_empty());
    let private_dir = directory.is_none_or(is_private_endpoint);
    if relay.is_none() && (!auto || (private_dir && !args.auto_detect_nat)) {
        return None;
    }
    let mut rc = ReachConfig::default()
        .with_auto_detect(auto)
        .with_skip_upnp(args.skip_upnp);
    if let Some(every) = args.replan_interval {
        rc = rc.with_replan_interval(every);
    }
    if let Some(e) = public_endpoint {
        rc = rc.with_public_endpoint(e);
    }
    if let Some(r) = relay {
        rc = rc.with_relay_worker_endpoint(r);
    }
    rc.allow_private_endpoint = private_dir;
    rc.container = Some(container());
    Some(rc)
}

/// The `tier` line of the startup summary.
pub(super) fn tier_line(handle: &ServeHandle, configured: bool) -> String {
    match handle.reachability() {
        None if configured => "0 (public endpoint as configured; NAT detection off)".to_owned(),
        None => "not detected (NAT detection off or private directory)".to_owned(),
        Some(r) => {
            let what = match r.tier {
                Tier::Direct => "direct",
                Tier::UpnpMapped => "UPnP port mapping",
                Tier::Ipv6Pinhole => "IPv6 with firewall pinhole",
                Tier::Ipv6Unverified => "IPv6, inbound unverified",
                Tier::Relay => "relay",
                Tier::LocalOnly => "local only, not publicly reachable",
                _ => "other",
            };
            let mut s = format!(
                "{} ({what}; method={} exposure={})",
                r.tier,
                r.transport_method.map_or("-", |m| m.as_str()),
                r.exposure_mode.as_str()
            );
            if let Some(relay) = &r.relay {
                s.push_str(&format!(" via {relay}"));
            }
            s
        }
    }
}

/// The endpoint the node advertises (reachability's, else the configured one).
pub(super) fn advertised(handle: &ServeHandle, configured: &str) -> String {
    handle
        .reachability()
        .and_then(|r| r.endpoint.clone())
        .unwrap_or_else(|| configured.to_owned())
}

/// Whether the node registers (false: tier 4 with a public directory).
pub(super) fn registers(handle: &ServeHandle) -> bool {
    handle.reachability().is_none_or(|r| r.registers)
}

/// Whether the advertised endpoint also takes native IICP (not through a relay).
pub(super) fn native_reachable(handle: &ServeHandle) -> bool {
    handle.reachability().is_none_or(|r| r.tier != Tier::Relay)
}

/// Prints the guidance lines under the summary.
pub(super) fn print_guidance(handle: &ServeHandle) {
    if let Some(r) = handle.reachability() {
        for g in &r.guidance {
            println!("  nat        {g}");
        }
    }
}
