//! The real-gateway test (shared/testing/NAT-LAB.md): Debian's `miniupnpd` runs as the
//! IGD between network namespaces this test creates (`scripts/nat-lab`), our executor
//! runs inside the LAN namespace and maps the node's port, a client in the WAN namespace
//! reaches the node through the mapping, the lease is renewed, and stopping the lease
//! keeper deletes the mapping (the WAN client is refused afterwards).
//!
//! The parent test re-executes this test binary inside the namespaces (`ip netns exec …
//! <binary> --exact lab_lan_child --ignored`), passing roles through the environment and
//! progress through files in the lab's state directory. Nothing leaves the machine: the
//! namespaces have no link to the host network.
//!
//! The second test puts a relay in the WAN namespace and a relay worker in the LAN
//! namespace, which has no inbound route (the gateway only masquerades outbound
//! traffic): a WAN client reaches the worker's task endpoint through the relay, killing
//! the worker makes the relay answer `IICP-E030`, and a restarted worker binds again.
//!
//! Skips (with a message) when not root or without `ip netns`; under `CI=true` a lab
//! that cannot be built fails the test instead. The harness is `tests/lab/mod.rs`,
//! shared with the node-level lab test of `iicp-cli`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod lab;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_nat::upnp::{DiscoveryConfig, Protocol, UpnpDiscovery};
use iicp_nat::{
    detect, Executor, ExecutorConfig, KeeperConfig, Observations, Settings, Tier, TransportMethod,
};
use iicp_transport::http::server::json;
use iicp_transport::http::{HttpClient, HttpClientConfig, HttpServer, Router};
use iicp_transport::shutdown;
use lab::{build_lab, role_is, wait_file, write, LAN6, TARGET, WAN_IP};

const NODE_PORT: u16 = 18080;
const LEASE: Duration = Duration::from_secs(6);

#[test]
fn real_gateway_maps_reaches_renews_and_deletes() {
    let Some(mut lab) = build_lab("t") else {
        return;
    };

    // the node and our executor, inside the LAN namespace
    lab.start("lan", "lab_lan_child");
    let mapped = lab.wait_last("mapped", Duration::from_secs(60));
    let mapped: Vec<&str> = mapped.split_whitespace().collect();
    assert_eq!(mapped[0], "1a", "tier: {mapped:?}");
    assert_eq!(mapped[1], format!("http://{WAN_IP}:{NODE_PORT}"));
    assert_eq!(mapped[2], "upnp_mapped");
    assert_eq!(
        mapped[3], WAN_IP,
        "GetExternalIPAddress must be the WAN address"
    );

    // a client on the WAN side reaches the node through the mapping
    let target = format!("{WAN_IP}:{NODE_PORT}");
    let status = lab
        .spawn_child("wan", "lab_wan_reach", Some(&target))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "WAN client could not reach the node through the mapping"
    );
    write(&lab.dir, "wan-done", "ok");

    // renewal, then deletion on stop
    let renewed = lab.wait_last("renewed", Duration::from_secs(60));
    let renewals: u64 = renewed.trim().parse().unwrap();
    assert!(renewals >= 2, "lease renewed {renewals} times");
    let deleted = lab.wait_last("deleted", Duration::from_secs(30));
    assert_eq!(deleted.trim(), "gone", "mapping still listed after stop");
    let status = lab
        .spawn_child("wan", "lab_wan_refused", Some(&target))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "WAN client still reached the node after the mapping was deleted"
    );
    write(&lab.dir, "wan2-done", "ok");
    lab.finish_last();
}

/// Runs in the LAN namespace: serve, plan and map, renew, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of real_gateway_maps_reaches_renews_and_deletes"]
async fn lab_lan_child() {
    let Some(dir) = role_is("lab_lan_child") else {
        return;
    };
    // the node: a health route on the node port
    let router = Router::new().route(Method::GET, "/iicp/health", |_req, _p| async {
        json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "side": "lan"}),
        )
    });
    let server = HttpServer::bind(([0, 0, 0, 0], NODE_PORT).into())
        .await
        .unwrap();
    let (trigger, stop) = shutdown::channel();
    let serving = tokio::spawn(server.serve(router, stop));

    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let discovery = UpnpDiscovery::new(http.clone(), DiscoveryConfig::default());
    let mut obs = Observations::new(Settings {
        port: NODE_PORT,
        lease: LEASE,
        ..Settings::default()
    });
    obs.interfaces = detect::interfaces().unwrap();
    let executor =
        Executor::new(ExecutorConfig::default()).with_discovery(Arc::new(discovery.clone()));
    let outcome = executor.run(obs).await;
    let plan = &outcome.plan;
    assert_eq!(plan.tier, Tier::UpnpMapped, "{plan:?}");
    assert_eq!(plan.transport_method, Some(TransportMethod::UpnpMapped));
    let external = match outcome.observations.external_ip {
        Some(iicp_nat::ExternalIp::Address(ip)) => ip.to_string(),
        other => panic!("{other:?}"),
    };
    // our own view of the gateway, for checks
    let igd = discovery.find().await.unwrap().expect("IGD");
    let entry = igd
        .get_mapping(NODE_PORT, Protocol::Tcp)
        .await
        .unwrap()
        .expect("mapping listed");
    assert_eq!(entry.internal_port, NODE_PORT);
    assert_eq!(entry.internal_client, "10.77.1.2");
    assert_eq!(outcome.leases.mappings.len(), 1);
    let keeper = outcome.leases.keep(KeeperConfig {
        min_interval: Duration::from_secs(1),
        retry_after_failure: Duration::from_secs(1),
        cleanup_timeout: Duration::from_secs(5),
    });
    write(
        &dir,
        "mapped",
        &format!(
            "{} {} {} {external}",
            plan.tier,
            plan.endpoint.as_deref().unwrap_or("-"),
            plan.transport_method.map_or("-", |m| m.as_str()),
        ),
    );
    wait_file(&dir.join("wan-done"), Duration::from_secs(60)).await;

    // outlive the original lease: the keeper must have renewed it (every lease/2 = 3 s)
    tokio::time::sleep(LEASE + Duration::from_secs(4)).await;
    assert!(
        igd.get_mapping(NODE_PORT, Protocol::Tcp)
            .await
            .unwrap()
            .is_some(),
        "mapping expired although the keeper runs"
    );
    write(&dir, "renewed", &keeper.renewals().to_string());

    keeper.stop().await;
    let gone = igd
        .get_mapping(NODE_PORT, Protocol::Tcp)
        .await
        .unwrap()
        .is_none();
    write(&dir, "deleted", if gone { "gone" } else { "present" });
    wait_file(&dir.join("wan2-done"), Duration::from_secs(60)).await;
    trigger.fire();
    let _ = serving.await;
}

/// Runs in the WAN namespace: the node answers through the mapping.
#[tokio::test]
#[ignore = "child process of real_gateway_maps_reaches_renews_and_deletes"]
async fn lab_wan_reach() {
    if role_is("lab_wan_reach").is_none() {
        return;
    }
    let target = std::env::var(TARGET).unwrap();
    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let reply = http
        .get(format!("http://{target}/iicp/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("reach the node through the mapping");
    assert_eq!(reply.status, StatusCode::OK);
    let body: serde_json::Value = reply.json().unwrap();
    assert_eq!(body["side"], "lan");
}

/// Runs in the WAN namespace: after deletion nothing answers.
#[tokio::test]
#[ignore = "child process of real_gateway_maps_reaches_renews_and_deletes"]
async fn lab_wan_refused() {
    if role_is("lab_wan_refused").is_none() {
        return;
    }
    let target = std::env::var(TARGET).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&target),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "connected to {target} after the mapping was deleted"
    );
}

// ------------------------------------------------ two LAN hosts wanting one port

/// Two nodes on two LAN hosts both serve on port 18080. The second one's mapping
/// conflicts (718) with the first one's: it reads the entry, sees another host's
/// address, leaves that mapping alone and maps 18081, which it advertises — in both of
/// miniupnpd's modes (`secure_mode=no`, and `yes`, where a host may map only to itself).
#[test]
fn two_lan_hosts_on_one_port_each_get_their_own_mapping() {
    for (id, args) in [
        ("two", &["--lan2"][..]),
        ("twos", &["--lan2", "--secure"][..]),
    ] {
        let Some(mut lab) = lab::build_lab_with(id, args) else {
            return;
        };
        lab.start("lan", "lab_lan_host_a");
        let a = lab.wait_last("mapped-a", Duration::from_secs(60));
        assert_eq!(
            a.trim(),
            format!("1a http://{WAN_IP}:{NODE_PORT}"),
            "{args:?}"
        );
        lab.start("lan2", "lab_lan_host_b");
        let b = lab.wait_last("mapped-b", Duration::from_secs(60));
        assert_eq!(
            b.trim(),
            format!("1a http://{WAN_IP}:{} 10.77.1.2", NODE_PORT + 1),
            "the second host takes the next port and leaves the first one's mapping: {args:?}"
        );
        // from the WAN side, each advertised endpoint reaches its own node
        for (port, side) in [(NODE_PORT, "a"), (NODE_PORT + 1, "b")] {
            let target = format!("{WAN_IP}:{port}={side}");
            assert!(
                lab.run_child("wan", "lab_wan_side", Some(&target)),
                "{target} ({args:?})"
            );
        }
        write(&lab.dir, "two-done", "ok");
        lab.finish_last();
        let first = lab.children.first_mut().expect("host a");
        let status = first.wait().unwrap();
        assert!(status.success(), "host a failed ({args:?})");
    }
}

/// A node on a LAN host: serves `/iicp/health` (saying `side`) on NODE_PORT, maps it
/// through the gateway and writes `mapped-SIDE` (tier, endpoint, and for host b the
/// holder of NODE_PORT afterwards), then deletes its mapping when told.
async fn lan_host(dir: std::path::PathBuf, side: &'static str) {
    let router = Router::new().route(Method::GET, "/iicp/health", move |_req, _p| async move {
        json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "side": side}),
        )
    });
    let server = HttpServer::bind(([0, 0, 0, 0], NODE_PORT).into())
        .await
        .unwrap();
    let (trigger, stop) = shutdown::channel();
    let serving = tokio::spawn(server.serve(router, stop));
    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let discovery = UpnpDiscovery::new(http.clone(), DiscoveryConfig::default());
    let mut obs = Observations::new(Settings {
        port: NODE_PORT,
        lease: Duration::from_secs(120),
        ..Settings::default()
    });
    obs.interfaces = detect::interfaces().unwrap();
    let outcome = Executor::new(ExecutorConfig::default())
        .with_discovery(Arc::new(discovery.clone()))
        .run(obs)
        .await;
    let plan = &outcome.plan;
    let mut line = format!("{} {}", plan.tier, plan.endpoint.as_deref().unwrap_or("-"));
    if side == "b" {
        let igd = discovery.find().await.unwrap().expect("IGD");
        let held = igd
            .get_mapping(NODE_PORT, Protocol::Tcp)
            .await
            .unwrap()
            .map_or("-".to_owned(), |e| e.internal_client);
        line.push_str(&format!(" {held}"));
    }
    let keeper = outcome.leases.keep(KeeperConfig {
        min_interval: Duration::from_secs(1),
        retry_after_failure: Duration::from_secs(1),
        cleanup_timeout: Duration::from_secs(5),
    });
    write(&dir, &format!("mapped-{side}"), &line);
    wait_file(&dir.join("two-done"), Duration::from_secs(90)).await;
    keeper.stop().await;
    trigger.fire();
    let _ = serving.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of two_lan_hosts_on_one_port_each_get_their_own_mapping"]
async fn lab_lan_host_a() {
    if let Some(dir) = role_is("lab_lan_host_a") {
        lan_host(dir, "a").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of two_lan_hosts_on_one_port_each_get_their_own_mapping"]
async fn lab_lan_host_b() {
    if let Some(dir) = role_is("lab_lan_host_b") {
        lan_host(dir, "b").await;
    }
}

/// Runs in the WAN namespace: `host:port=side` answers as that side.
#[tokio::test]
#[ignore = "child process of two_lan_hosts_on_one_port_each_get_their_own_mapping"]
async fn lab_wan_side() {
    if role_is("lab_wan_side").is_none() {
        return;
    }
    let target = std::env::var(TARGET).unwrap();
    let (addr, side) = target.split_once('=').unwrap();
    let reply = HttpClient::new(HttpClientConfig::default())
        .unwrap()
        .get(format!("http://{addr}/iicp/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("reach the node through its mapping");
    let body: serde_json::Value = reply.json().unwrap();
    assert_eq!(body["side"], side, "{addr}");
}

// ------------------------------------------------------------ relay through the NAT

const RELAY_IP: &str = lab::WAN_HOST;
const RELAY_HTTP_PORT: u16 = 18090;
const TAG: &str = "IICP_NAT_LAB_TAG";

#[test]
fn relay_reaches_a_worker_behind_the_nat() {
    let Some(mut lab) = build_lab("r") else {
        return;
    };
    lab.start("wan", "lab_relay_child");
    lab.wait_last("relay-up", Duration::from_secs(30));

    // nothing on the WAN side can open a connection to the LAN host
    let status = lab
        .spawn_child("wan", "lab_wan_refused", Some("10.77.1.2:18080"))
        .status()
        .unwrap();
    assert!(status.success(), "the LAN host must have no inbound route");

    let task_url = format!("http://{RELAY_IP}:{RELAY_HTTP_PORT}/v1/relay-for/w-lab/v1/task");
    for round in ["1", "2"] {
        let mut worker = lab.spawn_child("lan", "lab_worker_child", None);
        worker.env(TAG, round);
        let mut worker = worker.spawn().expect("spawn worker");
        let bound = lab.wait_for(
            &format!("bound-{round}"),
            Duration::from_secs(30),
            &mut worker,
        );
        assert_eq!(
            bound.trim(),
            format!("http://{RELAY_IP}:{RELAY_HTTP_PORT}/v1/relay-for/w-lab")
        );
        let status = lab
            .spawn_child("wan", "lab_wan_task", Some(&task_url))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "round {round}: task through the relay failed"
        );
        // kill the worker: the relay must answer IICP-E030
        let _ = worker.kill();
        let _ = worker.wait();
        let status = lab
            .spawn_child("wan", "lab_wan_task_e030", Some(&task_url))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "round {round}: no IICP-E030 after the worker died"
        );
    }
    write(&lab.dir, "relay-stop", "ok");
}

/// Runs in the WAN namespace: a relay-capable node's relay listener and HTTP routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of relay_reaches_a_worker_behind_the_nat"]
async fn lab_relay_child() {
    let Some(dir) = role_is("lab_relay_child") else {
        return;
    };
    let http = HttpServer::bind(
        (
            RELAY_IP.parse::<std::net::IpAddr>().unwrap(),
            RELAY_HTTP_PORT,
        )
            .into(),
    )
    .await
    .unwrap();
    let relay = iicp_nat::RelayServer::bind(iicp_nat::RelayConfig {
        listen: (
            RELAY_IP.parse::<std::net::IpAddr>().unwrap(),
            iicp_nat::relay::DEFAULT_RELAY_PORT,
        )
            .into(),
        http_port: RELAY_HTTP_PORT,
        ..iicp_nat::RelayConfig::default()
    })
    .await
    .unwrap();
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(http.serve(relay.handle().routes(Router::new()), stop.clone()));
    let serving = tokio::spawn(relay.serve(stop));
    write(&dir, "relay-up", "ok");
    wait_file(&dir.join("relay-stop"), Duration::from_secs(120)).await;
    trigger.fire();
    let _ = serving.await;
}

/// Runs in the LAN namespace: a worker that binds to the relay and echoes tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of relay_reaches_a_worker_behind_the_nat"]
async fn lab_worker_child() {
    let Some(dir) = role_is("lab_worker_child") else {
        return;
    };
    let tag = std::env::var(TAG).unwrap();
    let handler: Arc<dyn iicp_transport::native::CallHandler> = Arc::new(
        |call: iicp_proto::message::Call, _ctx: iicp_transport::native::CallContext| async move {
            let task = call
                .payload
                .as_ref()
                .and_then(|b| b.to_json(iicp_proto::message::Prefer::Json).ok())
                .unwrap_or_default();
            let result =
                serde_json::json!({"output": {"echo": task["payload"]}, "node_id": "w-lab"});
            iicp_proto::message::Response::success(&call, iicp_proto::message::Body::json(&result))
        },
    );
    let mut config = iicp_nat::WorkerConfig::new(
        RELAY_IP,
        iicp_nat::relay::DEFAULT_RELAY_PORT,
        "w-lab",
        "urn:iicp:intent:llm:chat:v1",
    );
    config.backoff_initial = Duration::from_millis(200);
    let worker = iicp_nat::RelayWorker::spawn(config, handler, None);
    let endpoint = worker
        .wait_bound(Duration::from_secs(20))
        .await
        .expect("bound");
    write(&dir, &format!("bound-{tag}"), &endpoint);
    // serve until the parent kills this process
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// Runs in the WAN namespace: a task through the relay comes back from the worker.
#[tokio::test]
#[ignore = "child process of relay_reaches_a_worker_behind_the_nat"]
async fn lab_wan_task() {
    if role_is("lab_wan_task").is_none() {
        return;
    }
    let url = std::env::var(TARGET).unwrap();
    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let task = serde_json::json!({"task_id": "lab-1", "intent": "urn:iicp:intent:llm:chat:v1", "payload": {"q": 42}});
    let reply = http
        .post_json(&url, &task)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let body: serde_json::Value = reply.json().unwrap();
    assert_eq!(body["output"]["echo"]["q"], 42);
    assert_eq!(body["task_id"], "lab-1");
}

/// Runs in the WAN namespace: with the worker gone the relay answers IICP-E030.
#[tokio::test]
#[ignore = "child process of relay_reaches_a_worker_behind_the_nat"]
async fn lab_wan_task_e030() {
    if role_is("lab_wan_task_e030").is_none() {
        return;
    }
    lab::expect_e030(&std::env::var(TARGET).unwrap()).await;
}

// ---------------------------------------------- IPv6 pinholes behind carrier-grade NAT

/// A second port of the LAN host that no pinhole opens.
const CLOSED_PORT: u16 = 18081;

#[test]
fn real_gateway_opens_an_ipv6_pinhole_behind_cgnat() {
    // Tier 1b with Debian's miniupnpd: no external IPv4 address (CGNAT), a global IPv6
    // address on the LAN host, AddPinhole sent over IPv6 from that address; a WAN client
    // reaches the node through the pinhole while a port without one stays closed; the
    // lease is renewed; stopping the keeper deletes the pinhole.
    let Some(mut lab) = lab::build_lab_with("p", &["--cgnat6"]) else {
        return;
    };
    lab.start("lan", "lab_lan_pinhole");
    let opened = lab.wait_last("opened", Duration::from_secs(60));
    let opened: Vec<&str> = opened.split_whitespace().collect();
    assert_eq!(opened[0], "1b", "tier: {opened:?}");
    assert_eq!(opened[1], format!("http://[{LAN6}]:{NODE_PORT}"));
    let rules = lab.pinhole_rules();
    assert!(
        rules.contains(&format!("dport {NODE_PORT}")) && rules.lines().count() == 1,
        "gateway rules: {rules}"
    );

    let open = format!("[{LAN6}]:{NODE_PORT}");
    let closed = format!("[{LAN6}]:{CLOSED_PORT}");
    assert!(
        lab.run_child("wan", "lab_wan_reach", Some(&open)),
        "WAN client could not reach the node through the pinhole"
    );
    assert!(
        lab.run_child("wan", "lab_wan_refused", Some(&closed)),
        "a port without a pinhole was reachable: the lab's firewall is open"
    );
    write(&lab.dir, "wan-done", "ok");

    let renewed = lab.wait_last("renewed", Duration::from_secs(60));
    let renewals: u64 = renewed.trim().parse().unwrap();
    assert!(renewals >= 2, "pinhole lease renewed {renewals} times");
    lab.wait_last("deleted", Duration::from_secs(30));
    assert_eq!(lab.pinhole_rules(), "", "pinhole left on the gateway");
    assert!(
        lab.run_child("wan", "lab_wan_refused", Some(&open)),
        "the node was reachable after the pinhole was deleted"
    );
    write(&lab.dir, "wan2-done", "ok");
    lab.finish_last();
}

#[test]
fn real_gateway_refuses_a_pinhole_asked_for_over_ipv4() {
    // Tier 1c: the gateway does not answer IPv6 SSDP (dropped at its input), so the
    // pinhole request can only go to its IPv4 control URL, and miniupnpd refuses a
    // pinhole for an IPv6 address the caller is not (606): the node keeps its IPv6
    // endpoint unverified and tells the operator how to open the port.
    let Some(mut lab) = lab::build_lab_with("q", &["--cgnat6"]) else {
        return;
    };
    let rules = lab.dir.join("no-ipv6-ssdp.nft");
    std::fs::write(
        &rules,
        "table inet lab {\n  chain input {\n    type filter hook input priority 0;\n    meta nfproto ipv6 udp dport 1900 drop\n  }\n}\n",
    )
    .unwrap();
    let blocked = lab.exec("igd", "nft").arg("-f").arg(&rules).status();
    assert!(blocked.is_ok_and(|s| s.success()), "nft refused the rules");
    lab.start("lan", "lab_lan_pinhole_refused");
    let out = lab.wait_last("planned", Duration::from_secs(60));
    let out: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(out[0], "1c", "tier: {out:?}");
    assert_eq!(out[1], format!("http://[{LAN6}]:{NODE_PORT}"));
    assert_eq!(out[2], "pinhole_refused", "{out:?}");
    assert_eq!(lab.pinhole_rules(), "");
    lab.finish_last();
}

/// Serves `/iicp/health` on the node port and on [`CLOSED_PORT`] (dual stack).
async fn serve_both_ports() -> shutdown::Trigger {
    let (trigger, stop) = shutdown::channel();
    for port in [NODE_PORT, CLOSED_PORT] {
        let router = Router::new().route(Method::GET, "/iicp/health", |_req, _p| async {
            json(
                StatusCode::OK,
                &serde_json::json!({"status": "ok", "side": "lan"}),
            )
        });
        let server = HttpServer::bind((std::net::Ipv6Addr::UNSPECIFIED, port).into())
            .await
            .unwrap();
        tokio::spawn(server.serve(router, stop.clone()));
    }
    trigger
}

fn lab_observations() -> Observations {
    let mut obs = Observations::new(Settings {
        port: NODE_PORT,
        lease: LEASE,
        ..Settings::default()
    });
    obs.interfaces = detect::interfaces().unwrap();
    obs
}

/// Runs in the LAN namespace of the `--cgnat6` lab: plan, open, renew, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of real_gateway_opens_an_ipv6_pinhole_behind_cgnat"]
async fn lab_lan_pinhole() {
    let Some(dir) = role_is("lab_lan_pinhole") else {
        return;
    };
    let trigger = serve_both_ports().await;
    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let discovery = UpnpDiscovery::new(http, DiscoveryConfig::default());
    let executor = Executor::new(ExecutorConfig::default()).with_discovery(Arc::new(discovery));
    let outcome = executor.run(lab_observations()).await;
    let plan = &outcome.plan;
    assert_eq!(plan.tier, Tier::Ipv6Pinhole, "{plan:?}");
    assert_eq!(outcome.leases.pinholes.len(), 1);
    assert!(outcome.leases.mappings.is_empty());
    let keeper = outcome.leases.keep(KeeperConfig {
        min_interval: Duration::from_secs(1),
        retry_after_failure: Duration::from_secs(1),
        cleanup_timeout: Duration::from_secs(5),
    });
    write(
        &dir,
        "opened",
        &format!("{} {}", plan.tier, plan.endpoint.as_deref().unwrap_or("-")),
    );
    wait_file(&dir.join("wan-done"), Duration::from_secs(60)).await;
    // outlive the lease: the keeper renews every lease/2 (UpdatePinhole)
    tokio::time::sleep(LEASE + Duration::from_secs(4)).await;
    write(&dir, "renewed", &keeper.renewals().to_string());
    keeper.stop().await;
    write(&dir, "deleted", "ok");
    wait_file(&dir.join("wan2-done"), Duration::from_secs(60)).await;
    trigger.fire();
}

/// Runs in the LAN namespace of the `--cgnat6` lab whose gateway ignores IPv6 SSDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of real_gateway_refuses_a_pinhole_asked_for_over_ipv4"]
async fn lab_lan_pinhole_refused() {
    let Some(dir) = role_is("lab_lan_pinhole_refused") else {
        return;
    };
    let http = HttpClient::new(HttpClientConfig::default()).unwrap();
    let discovery = UpnpDiscovery::new(http, DiscoveryConfig::default());
    let executor = Executor::new(ExecutorConfig::default()).with_discovery(Arc::new(discovery));
    let outcome = executor.run(lab_observations()).await;
    let plan = &outcome.plan;
    assert!(outcome.leases.is_empty());
    let refused = plan.guidance.contains(&iicp_nat::Guidance::PinholeRefused);
    write(
        &dir,
        "planned",
        &format!(
            "{} {} {}",
            plan.tier,
            plan.endpoint.as_deref().unwrap_or("-"),
            if refused {
                "pinhole_refused"
            } else {
                "no_guidance"
            }
        ),
    );
}
