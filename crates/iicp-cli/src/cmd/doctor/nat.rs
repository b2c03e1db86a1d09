//! `doctor`'s NAT check: what `serve` would find (interfaces, container, UPnP gateway,
//! external address) and the reachability plan so far, from `iicp_node::reach::diagnose`.
//! Nothing is mapped: discovery and `GetExternalIPAddress` only.

use iicp_node::reach::Tier;
use iicp_node::ReachConfig;
use serde_json::json;

use super::Check;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_bool(name: &str) -> Option<bool> {
    match env(name)?.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Some(true),
        "0" | "false" | "no" | "off" | "n" => Some(false),
        _ => None,
    }
}

/// The NAT check for a node on `port` (settings from the `serve` environment); `relays`
/// is how many relay-capable nodes `directory` lists (tier 3 needs one).
pub(super) async fn check(port: u16, relays: Result<usize, &str>, directory: &str) -> Check {
    let mut rc = ReachConfig::default()
        .with_auto_detect(env_bool("IICP_AUTO_DETECT_NAT").unwrap_or(true))
        .with_skip_upnp(env_bool("IICP_SKIP_UPNP").unwrap_or(false));
    if let Some(e) = env("IICP_PUBLIC_ENDPOINT") {
        rc = rc.with_public_endpoint(e);
    }
    if let Some(r) = env("IICP_RELAY_WORKER_ENDPOINT") {
        rc = rc.with_relay_worker_endpoint(r);
    }
    rc.container = Some(iicp_node::reach::detect_container(|k| {
        std::env::var(k).ok()
    }));
    let relay_capable = env_bool("IICP_RELAY_CAPABLE").unwrap_or(false);
    let d = iicp_node::reach::diagnose(&rc, port, relay_capable).await;
    let mut detail = format!(
        "tier {}{} (exposure {})",
        d.tier,
        if d.is_final { "" } else { " so far" },
        d.exposure_mode.as_str()
    );
    if let Some(e) = &d.endpoint {
        detail.push_str(&format!(", endpoint {e}"));
    }
    match (&d.gateway, &d.external_ip) {
        (Some(_), Some(ip)) => {
            detail.push_str(&format!("; UPnP gateway found, external address {ip}"))
        }
        (Some(_), None) => detail.push_str("; UPnP gateway found"),
        (None, _) => {}
    }
    if !d.next_steps.is_empty() {
        detail.push_str(&format!("; serve would: {}", d.next_steps.join(", then ")));
    }
    for g in &d.guidance {
        detail.push_str(&format!("; {g}"));
    }
    // a relay is what tiers 3 and 4 hinge on: say whether the directory has one
    let wants_relay = matches!(d.tier, Tier::Relay | Tier::LocalOnly)
        || d.next_steps.iter().any(|s| s.contains("relay"));
    let configured_relay = env("IICP_RELAY_WORKER_ENDPOINT").is_some();
    if wants_relay && !configured_relay && !relay_capable {
        detail.push_str(&match relays {
            Ok(0) => format!(
                "; no relay-capable node is listed at {directory}: tier 3 needs one \
                 (run one with --relay-capable / IICP_RELAY_CAPABLE=1 on a reachable host, or \
                 point --relay-worker-endpoint / IICP_RELAY_WORKER_ENDPOINT at one)"
            ),
            Ok(n) => format!(
                "; {n} relay-capable node(s) listed at {directory}: serve would bind to one"
            ),
            Err(e) => format!("; could not ask {directory} for relays ({e})"),
        });
    }
    Check {
        name: "nat",
        ok: true,
        detail,
        extra: json!({
            "available": true,
            "tier": d.tier.label(),
            "final": d.is_final,
            "exposure_mode": d.exposure_mode.as_str(),
            "endpoint": d.endpoint,
            "interfaces": d.interfaces,
            "container": d.container,
            "gateway": d.gateway.is_some(),
            "external_ip": d.external_ip,
            "next_steps": d.next_steps,
            "guidance": d.guidance,
            "mapped": false,
            "relay_capable_nodes": relays.ok(),
        }),
    }
}
