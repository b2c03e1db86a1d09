//! The NAT lab with our real node (issue 8; shared/testing/NAT-LAB.md): the `iicp`
//! binary runs inside network namespaces made by `scripts/nat-lab` — LAN 10.77.1.2 behind
//! a miniupnpd gateway (10.77.1.1 / WAN 11.77.2.1), and a WAN host 11.77.2.2 running the
//! embedded directory (`iicp directory serve`, not a private mesh). Nothing leaves the
//! machine.
//!
//! * `serve_maps_its_port_through_miniupnpd_and_cleans_up`: `iicp serve` in the LAN
//!   detects NAT, maps its port through the gateway (tier 1a), has the directory probe
//!   the WAN endpoint, registers `http://11.77.2.1:PORT`; a WAN client finds it at the
//!   directory and gets a chat answer through the mapping; after SIGTERM the mapping is
//!   gone from the gateway (`upnpc -l`) and the node from the directory.
//! * `serve_without_inbound_route_is_reached_through_an_elected_relay`: a relay-capable
//!   `iicp serve` on the WAN host; `iicp serve` in the LAN with UPnP skipped has no
//!   inbound route, elects the relay from the directory, binds, registers
//!   `http://11.77.2.2:PORT/v1/relay-for/{id}` (`turn_relay`); a WAN client reaches it
//!   through the relay; after SIGTERM the relay answers `IICP-E030`.
//! * `serve_behind_cgnat_opens_an_ipv6_pinhole_and_cleans_up`: behind a gateway with
//!   only a CGNAT IPv4 address and routed, firewalled IPv6 (`scripts/nat-lab up ID
//!   --cgnat6`), `iicp serve` opens an IPv6 pinhole (tier 1b), is probed and listed by an
//!   IPv6 directory, chats with a WAN client, and removes the pinhole on SIGTERM.
//!
//! * `sensitive_sends_no_byte_to_a_remote_node`: a chat from the LAN host under the
//!   `sensitive` routing profile refuses the node on the WAN host before dialling (an
//!   nftables counter on the WAN host stays at zero); under `standard` the same chat
//!   reaches it.
//!
//! The harness is shared with `iicp-nat`'s lab test (`crates/iicp-nat/tests/lab`). Runs
//! as root with `ip netns` and miniupnpd (installed by `scripts/nat-lab`); skips
//! otherwise, except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
#[path = "../../iicp-nat/tests/lab/mod.rs"]
mod lab;

use std::time::Duration;

use common::{iicp, temp_home, Proc};
use lab::{build_lab, role_is, Lab, LAN6, TARGET, WAN6_HOST, WAN_HOST, WAN_IP};
use serde_json::{json, Value};

const INTENT: &str = "urn:iicp:intent:llm:chat:v1";
const DIR_PORT: u16 = 9480;
const NODE_PORT: u16 = 18080;
const RELAY_HTTP_PORT: u16 = 18090;

fn dir_url() -> String {
    format!("http://{WAN_HOST}:{DIR_PORT}/api")
}

/// `iicp …` inside `side`, with a fresh IICP_HOME and none of the host's IICP settings.
fn iicp_in(lab: &Lab, side: &str, home: &std::path::Path) -> std::process::Command {
    let base = iicp();
    let mut cmd = lab.exec(side, base.get_program());
    for (k, _) in std::env::vars() {
        if k.starts_with("IICP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("IICP_HOME", home).env("RUST_LOG", "info");
    cmd
}

fn start_directory(lab: &Lab, home: &std::path::Path) -> Proc {
    start_directory_at(lab, home, &format!("{WAN_HOST}:{DIR_PORT}"))
}

/// `iicp directory serve --listen LISTEN` on the WAN host.
fn start_directory_at(lab: &Lab, home: &std::path::Path, listen: &str) -> Proc {
    let mut cmd = iicp_in(lab, "wan", home);
    cmd.args(["directory", "serve", "--listen", listen]);
    let mut p = Proc::spawn(cmd);
    p.read_until("listening");
    p
}

/// `iicp serve` with the echo backend on `port` in `side`, registering with the lab's
/// directory; `extra` flags appended.
fn serve_in(lab: &Lab, side: &str, home: &std::path::Path, port: u16, extra: &[&str]) -> Proc {
    serve_with(lab, side, home, port, &dir_url(), extra)
}

/// [`serve_in`] with the directory at `dir`.
fn serve_with(
    lab: &Lab,
    side: &str,
    home: &std::path::Path,
    port: u16,
    dir: &str,
    extra: &[&str],
) -> Proc {
    let mut cmd = iicp_in(lab, side, home);
    cmd.args([
        "serve",
        "--backend-type",
        "echo",
        "--port",
        &port.to_string(),
        "--directory-url",
        dir,
    ])
    .args(extra);
    Proc::spawn(cmd)
}

/// A relay-capable `iicp serve` on the WAN host (public endpoint, relay accept port
/// 9485), registered with the lab's directory.
fn start_relay(lab: &Lab, home: &std::path::Path) -> Proc {
    let public = format!("http://{WAN_HOST}:{RELAY_HTTP_PORT}");
    let mut relay = serve_in(
        lab,
        "wan",
        home,
        RELAY_HTTP_PORT,
        &[
            "--public-endpoint",
            &public,
            "--relay-capable",
            "--relay-accept-port",
            "9485",
        ],
    );
    let summary = read_within(&mut relay, "serving ", Duration::from_secs(60));
    assert!(summary.contains("(registered)"), "{summary}");
    relay
}

/// A WAN client finds `endpoint` at the directory and chats with it; then `node` gets
/// SIGTERM and must exit 0 after deregistering.
fn chat_then_stop(lab: &Lab, node: &mut Proc, endpoint: &str) {
    chat_then_stop_at(lab, node, &dir_url(), endpoint);
}

/// [`chat_then_stop`] with the directory at `dir`.
fn chat_then_stop_at(lab: &Lab, node: &mut Proc, dir: &str, endpoint: &str) {
    assert!(
        lab.run_child("wan", "lab_wan_chat", Some(&format!("{dir}|{endpoint}"))),
        "WAN client could not reach {endpoint}"
    );
    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("deregistered"), "{out}\n{err}");
}

fn upnp_listing(lab: &Lab) -> String {
    let o = lab
        .exec("lan", "upnpc")
        .arg("-l")
        .output()
        .expect("run upnpc");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mapped(listing: &str, port: u16) -> bool {
    listing
        .lines()
        .any(|l| l.contains("TCP") && l.contains(&format!("{port}->")))
}

#[test]
fn serve_maps_its_port_through_miniupnpd_and_cleans_up() {
    let Some(lab) = build_lab("c") else {
        return;
    };
    let home = temp_home("natlab-upnp");
    let _dir = start_directory(&lab, &home);

    let mut node = serve_in(&lab, "lan", &home, NODE_PORT, &[]);
    let summary = node.read_until("serving ");
    let endpoint = format!("http://{WAN_IP}:{NODE_PORT}");
    assert!(
        summary.contains(&format!("endpoint   {endpoint}")),
        "{summary}"
    );
    assert!(summary.contains("tier       1a"), "{summary}");
    assert!(summary.contains("upnp_mapped"), "{summary}");
    assert!(summary.contains("(registered)"), "{summary}");
    assert!(mapped(&upnp_listing(&lab), NODE_PORT), "mapping not listed");

    // a WAN client finds the node at the directory and reaches it through the mapping
    chat_then_stop(&lab, &mut node, &endpoint);
    let listing = upnp_listing(&lab);
    assert!(
        !mapped(&listing, NODE_PORT),
        "mapping left behind:\n{listing}"
    );
    assert!(
        lab.run_child("wan", "lab_wan_gone", Some(&dir_url())),
        "node still listed after shutdown"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn serve_behind_cgnat_opens_an_ipv6_pinhole_and_cleans_up() {
    // The gateway has no public IPv4 address (100.77.2.1) and routes IPv6, which it
    // firewalls: `iicp serve` opens a pinhole for its port (tier 1b, over the
    // gateway's IPv6 control URL), the directory (IPv6 only) probes and lists
    // `http://[2a0b:7701::2]:PORT`, a WAN client chats through the pinhole, and after
    // SIGTERM the pinhole is gone and the node deregistered.
    let Some(lab) = lab::build_lab_with("e", &["--cgnat6"]) else {
        return;
    };
    let home = temp_home("natlab-pinhole");
    let dir = format!("http://[{WAN6_HOST}]:{DIR_PORT}/api");
    let _dir = start_directory_at(&lab, &home, &format!("[{WAN6_HOST}]:{DIR_PORT}"));

    let mut node = serve_with(&lab, "lan", &home, NODE_PORT, &dir, &[]);
    let summary = node.read_until("serving ");
    let endpoint = format!("http://[{LAN6}]:{NODE_PORT}");
    assert!(
        summary.contains(&format!("endpoint   {endpoint}")),
        "{summary}"
    );
    assert!(summary.contains("tier       1b"), "{summary}");
    assert!(summary.contains("(registered)"), "{summary}");
    let rules = lab.pinhole_rules();
    assert!(
        rules.contains(&format!("dport {NODE_PORT}")),
        "no pinhole on the gateway: {rules:?}"
    );

    chat_then_stop_at(&lab, &mut node, &dir, &endpoint);
    assert_eq!(lab.pinhole_rules(), "", "pinhole left behind");
    assert!(
        lab.run_child("wan", "lab_wan_gone", Some(&dir)),
        "node still listed after shutdown"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn serve_without_inbound_route_is_reached_through_an_elected_relay() {
    let Some(lab) = build_lab("d") else {
        return;
    };
    let home = temp_home("natlab-relay");
    let _dir = start_directory(&lab, &home);

    // the relay: a relay-capable node on the WAN host
    let relay_home = temp_home("natlab-relay-r");
    let mut relay = start_relay(&lab, &relay_home);

    // the worker: LAN, UPnP skipped, so no inbound route
    let mut worker = serve_in(&lab, "lan", &home, NODE_PORT, &["--skip-upnp"]);
    let summary = worker.read_until("serving ");
    let prefix = format!("http://{WAN_HOST}:{RELAY_HTTP_PORT}/v1/relay-for/");
    let endpoint = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("endpoint").map(str::trim))
        .map(|e| e.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(endpoint.starts_with(&prefix), "{summary}");
    assert!(summary.contains("tier       3"), "{summary}");
    assert!(summary.contains("turn_relay"), "{summary}");
    assert!(
        summary.contains(&format!("via {WAN_HOST}:9485")),
        "{summary}"
    );
    assert!(summary.contains("(registered)"), "{summary}");

    chat_then_stop(&lab, &mut worker, &endpoint);
    assert!(
        lab.run_child("wan", "lab_wan_e030", Some(&endpoint)),
        "the relay did not answer IICP-E030 after the worker stopped"
    );
    relay.signal("-TERM");
    let _ = relay.wait();
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&relay_home);
}

/// [`Proc::read_until`], bounded: the process is killed when `needle` has not come
/// within `within`, so the read ends (and the test fails) instead of hanging.
fn read_within(node: &mut Proc, needle: &str, within: Duration) -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let done = Arc::new(AtomicBool::new(false));
    let pid = node.child.id().to_string();
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while start.elapsed() < within {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
        })
    };
    let out = node.read_until(needle);
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    out
}

/// A node with no inbound route starts at tier 4 (no relay exists yet, nothing is
/// registered); when a relay-capable node appears, its re-planning finds it, binds,
/// registers the relay endpoint, and a WAN client reaches it.
#[test]
fn serve_at_tier_4_picks_up_a_relay_that_appears_later() {
    let Some(lab) = build_lab("late") else {
        return;
    };
    let home = temp_home("natlab-late");
    let _dir = start_directory(&lab, &home);
    let mut worker = serve_in(
        &lab,
        "lan",
        &home,
        NODE_PORT,
        &["--skip-upnp", "--replan-interval", "1s"],
    );
    let summary = read_within(&mut worker, "serving ", Duration::from_secs(60));
    assert!(summary.contains("tier       4"), "{summary}");
    assert!(summary.contains("(registration skipped)"), "{summary}");

    // the relay comes later
    let relay_home = temp_home("natlab-late-r");
    let mut relay = start_relay(&lab, &relay_home);

    let changed = read_within(&mut worker, "reachability changed", Duration::from_secs(60));
    let line = changed
        .lines()
        .find(|l| l.contains("reachability changed"))
        .unwrap_or_default();
    let prefix = format!("http://{WAN_HOST}:{RELAY_HTTP_PORT}/v1/relay-for/");
    assert!(line.contains("tier 3"), "{line}");
    let endpoint = line
        .split_once("endpoint ")
        .map(|(_, e)| e.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(endpoint.starts_with(&prefix), "{line}");
    let registered = read_within(&mut worker, "registered with", Duration::from_secs(30));
    assert!(
        registered.contains(&endpoint) || registered.contains("as node"),
        "{registered}"
    );
    chat_then_stop(&lab, &mut worker, &endpoint);
    relay.signal("-TERM");
    let _ = relay.wait();
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&relay_home);
}

/// The gateway loses the node's mapping (it is deleted behind the node's back): the
/// directory's probe of the endpoint fails at the next check, the node plans again,
/// maps the port again, and a WAN client reaches it.
#[test]
fn serve_maps_again_when_the_gateway_loses_the_mapping() {
    let Some(lab) = build_lab("lost") else {
        return;
    };
    let home = temp_home("natlab-lost");
    let _dir = start_directory(&lab, &home);
    let mut node = serve_in(&lab, "lan", &home, NODE_PORT, &["--replan-interval", "1s"]);
    let summary = read_within(&mut node, "serving ", Duration::from_secs(60));
    let endpoint = format!("http://{WAN_IP}:{NODE_PORT}");
    assert!(summary.contains("tier       1a"), "{summary}");
    assert!(summary.contains("(registered)"), "{summary}");
    assert!(mapped(&upnp_listing(&lab), NODE_PORT));

    let deleted = lab
        .exec("lan", "upnpc")
        .args(["-d", &NODE_PORT.to_string(), "TCP"])
        .output()
        .expect("upnpc -d");
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(!mapped(&upnp_listing(&lab), NODE_PORT), "still mapped");
    let start = std::time::Instant::now();
    while !mapped(&upnp_listing(&lab), NODE_PORT) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the node did not map its port again"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    chat_then_stop(&lab, &mut node, &endpoint);
    assert!(
        !mapped(&upnp_listing(&lab), NODE_PORT),
        "mapping left behind"
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// The packets the WAN host has received on `port` (an nftables counter the test adds
/// in the WAN namespace: it sees every TCP segment, whether or not a request completes).
fn wan_packets_to(lab: &Lab, port: u16) -> u64 {
    let out = lab
        .exec("wan", "nft")
        .args(["list", "chain", "inet", "iicp_spy", "input"])
        .output()
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains(&format!("dport {port}")))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .iter()
                .position(|w| *w == "packets")
                .and_then(|i| words.get(i + 1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no counter for port {port}:\n{text}"))
}

/// `iicp chat --json` from the LAN host through the lab's directory.
fn lan_chat(
    lab: &Lab,
    home: &std::path::Path,
    prompt: &str,
    extra: &[&str],
) -> std::process::Output {
    iicp_in(lab, "lan", home)
        .args(["chat", prompt, "--json", "--directory-url", &dir_url()])
        .args(extra)
        .output()
        .expect("iicp chat")
}

#[test]
fn sensitive_sends_no_byte_to_a_remote_node() {
    // A node on the WAN host is remote for a client on the LAN host. Under the
    // `sensitive` routing profile the client refuses it before dialling: an nftables
    // counter on the WAN host sees no packet to the node's port. The same chat under
    // `standard` reaches the node and moves the counter (the control).
    let Some(lab) = build_lab("s") else {
        return;
    };
    let home = temp_home("natlab-sensitive");
    let _dir = start_directory(&lab, &home);
    let public = format!("http://{WAN_HOST}:{NODE_PORT}");
    let mut node = serve_in(
        &lab,
        "wan",
        &home,
        NODE_PORT,
        &["--public-endpoint", &public],
    );
    let summary = read_within(&mut node, "serving ", Duration::from_secs(60));
    assert!(summary.contains("(registered)"), "{summary}");
    for args in [
        vec!["add", "table", "inet", "iicp_spy"],
        vec![
            "add",
            "chain",
            "inet",
            "iicp_spy",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
        vec![
            "add",
            "rule",
            "inet",
            "iicp_spy",
            "input",
            "tcp",
            "dport",
            &NODE_PORT.to_string(),
            "counter",
        ],
    ] {
        let st = lab.exec("wan", "nft").args(&args).status().expect("nft");
        assert!(st.success(), "nft {args:?}");
    }
    assert_eq!(wan_packets_to(&lab, NODE_PORT), 0);

    let lan_home = temp_home("natlab-sensitive-client");
    let o = lan_chat(
        &lab,
        &lan_home,
        "a secret prompt",
        &["--routing-profile", "sensitive"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("IICP-POLICY-ROUTING"), "{err}");
    assert!(err.contains("remote_executor_disabled: 1"), "{err}");
    assert!(!err.contains("a secret prompt"), "{err}");
    assert_eq!(
        wan_packets_to(&lab, NODE_PORT),
        0,
        "sensitive reached the remote node"
    );

    let o = lan_chat(&lab, &lan_home, "a public prompt", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["text"], "echo: a public prompt", "{v}");
    assert!(
        wan_packets_to(&lab, NODE_PORT) > 0,
        "the control chat left no packet"
    );

    node.signal("-TERM");
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&lan_home);
}

fn client() -> iicp_transport::http::HttpClient {
    iicp_transport::http::HttpClient::new(iicp_transport::http::HttpClientConfig::default())
        .unwrap()
}

async fn listed(dir: &str) -> Vec<Value> {
    let r = client()
        .get(format!("{dir}/v1/discover?intent={INTENT}&limit=50"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().unwrap();
    v["nodes"].as_array().cloned().unwrap_or_default()
}

/// WAN side: the directory lists `endpoint`; a chat task to it is answered.
#[tokio::test]
#[ignore = "child process of the NAT lab tests"]
async fn lab_wan_chat() {
    if role_is("lab_wan_chat").is_none() {
        return;
    }
    let target = std::env::var(TARGET).unwrap();
    let (dir, endpoint) = target.split_once('|').unwrap();
    let nodes = listed(dir).await;
    assert!(
        nodes.iter().any(|n| n["endpoint"] == endpoint),
        "{endpoint} not listed: {nodes:?}"
    );
    let task = json!({
        "task_id": "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
        "intent": INTENT,
        "payload": {"messages": [{"role": "user", "content": "hello from the WAN"}]},
    });
    let reply = client()
        .post_json(format!("{endpoint}/v1/task"), &task)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(text.contains("hello from the WAN"), "{text}");
}

/// WAN side: the directory lists no node any more (the relay node excepted).
#[tokio::test]
#[ignore = "child process of the NAT lab tests"]
async fn lab_wan_gone() {
    if role_is("lab_wan_gone").is_none() {
        return;
    }
    let dir = std::env::var(TARGET).unwrap();
    let nodes = listed(&dir).await;
    assert!(nodes.is_empty(), "{nodes:?}");
}

/// WAN side: the relay answers IICP-E030 for the stopped worker.
#[tokio::test]
#[ignore = "child process of the NAT lab tests"]
async fn lab_wan_e030() {
    if role_is("lab_wan_e030").is_none() {
        return;
    }
    lab::expect_e030(&std::env::var(TARGET).unwrap()).await;
}
