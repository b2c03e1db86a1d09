//! Reachability of a real node against the embedded directory, on loopback
//! (`iicp_node::reach`; PROTOCOL.md §13, §14.4–§14.6):
//!
//! * a relay-capable node serves the relay accept port and the relay routes; a node
//!   without a public route (UPnP skipped, no public address) elects it from the
//!   directory, binds, registers the relay endpoint with `transport_method =
//!   turn_relay`, a client reaches its task endpoint through the relay, and after the
//!   worker stops the relay answers `IICP-E030`;
//! * the relay accept port may not equal the node port (§19 T31);
//! * with a configured public endpoint the node is tier 0 and registers it as given;
//! * with nothing at all the node is tier 4, and does not claim public reachability.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../iicp-nat/tests/igd/mod.rs"]
mod igd;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::free_port;
use iicp_directory::{Directory, MemoryStore};
use iicp_node::gossip;
use iicp_node::{EchoModel, Node, ReachConfig, ServeOptions};
use iicp_transport::http::{HttpClient, HttpClientConfig};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::{json, Value};

const INTENT: &str = "urn:iicp:intent:llm:chat:v1";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn directory() -> (String, Trigger) {
    let dir = Directory::builder()
        .private_mesh(true)
        .store(MemoryStore::new())
        .build()
        .await
        .unwrap();
    let listener = Listener::bind((LOCAL, 0).into(), ListenerConfig::default())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, sd) = shutdown::channel();
    tokio::spawn(async move { dir.serve(listener, sd).await });
    (format!("http://{addr}/api"), trigger)
}

/// A node on `127.0.0.1:port` serving the chat intent with the echo model.
fn on_port(port: u16) -> iicp_node::NodeBuilder {
    Node::builder()
        .endpoint(format!("http://127.0.0.1:{port}"))
        .intent(INTENT)
        .model("echo")
}

fn http() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).unwrap()
}

async fn discover(dir: &str) -> Vec<Value> {
    let r = http()
        .get(format!("{dir}/v1/discover?intent={INTENT}&limit=50"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().unwrap();
    v["nodes"].as_array().cloned().unwrap_or_default()
}

async fn wait_registered(node: &Node) {
    for _ in 0..200 {
        if node.node_token().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("node did not register");
}

/// A reach config for loopback: no UPnP, no interfaces (nothing public), short waits.
fn no_route() -> ReachConfig {
    let mut rc = ReachConfig::default().with_skip_upnp(true);
    rc.interfaces = Some(Vec::new());
    rc.container = Some(iicp_node::reach::Container::None);
    rc.relay_backoff = Duration::from_millis(200);
    rc.executor.relay_timeout = Duration::from_secs(10);
    rc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_route_binds_an_elected_relay_and_is_reached_through_it() {
    let (dir, _dir_stop) = directory().await;

    // the relay: a relay-capable node with an ephemeral relay accept port
    let relay_port = free_port();
    let relay = on_port(relay_port)
        .node_id("relay-node-1")
        .relay_capable(true)
        .relay_accept_port(0)
        .directory_url(dir.clone())
        .heartbeat_interval(Duration::from_secs(5))
        .build()
        .unwrap();
    let relay_handle = relay
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, relay_port),
            EchoModel::default(),
            ServeOptions::default(),
        )
        .await
        .unwrap();
    let accept = relay_handle.relay_addr().expect("relay accept listener");
    assert_ne!(accept.port(), relay_port);
    wait_registered(&relay).await;
    let listed = discover(&dir).await;
    let r = listed
        .iter()
        .find(|n| n["node_id"] == "relay-node-1")
        .expect("relay listed");
    assert_eq!(r["relay_capable"], true);
    assert_eq!(r["relay_accept_port"], accept.port());

    // the worker: no public route at all
    let worker_port = free_port();
    let worker = on_port(worker_port)
        .node_id("worker-node-1")
        .directory_url(dir.clone())
        .without_cx()
        .build()
        .unwrap();
    let handle = worker
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, worker_port),
            EchoModel::default(),
            ServeOptions::default().with_reach(no_route()),
        )
        .await
        .unwrap();
    let reach = handle.reachability().expect("reachability").clone();
    let expected = format!("http://127.0.0.1:{relay_port}/v1/relay-for/worker-node-1");
    assert_eq!(reach.tier, iicp_node::reach::Tier::Relay, "{reach:?}");
    assert_eq!(reach.endpoint.as_deref(), Some(expected.as_str()));
    assert_eq!(
        reach.transport_method,
        Some(iicp_node::reach::TransportMethod::TurnRelay)
    );
    assert_eq!(
        reach.relay.as_deref(),
        Some(format!("127.0.0.1:{}", accept.port()).as_str())
    );
    let req = worker.registration_request();
    assert_eq!(req.endpoint, expected);
    assert_eq!(req.transport_method.as_deref(), Some("turn_relay"));
    assert_eq!(req.relay_endpoint.as_deref(), Some(expected.as_str()));
    assert_eq!(req.transport_endpoint, None);
    let meta = req.transport_metadata.expect("transport_metadata");
    assert_eq!(meta["relay_for"], "worker-node-1");
    assert_eq!(meta["relay_host"], "127.0.0.1");
    assert_eq!(meta["relay_port"], accept.port());

    // the directory lists the worker at its relay endpoint
    wait_registered(&worker).await;
    let listed = discover(&dir).await;
    let w = listed
        .iter()
        .find(|n| n["node_id"] == "worker-node-1")
        .expect("worker listed");
    assert_eq!(w["endpoint"], expected);

    // a client reaches the worker's task endpoint through the relay
    let task = json!({
        "task_id": "7d1e5f4a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
        "intent": INTENT,
        "payload": {"messages": [{"role": "user", "content": "through the relay"}]},
    });
    let reply = http()
        .post_json(format!("{expected}/v1/task"), &task)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    let body: Value = reply.json().unwrap();
    assert_eq!(body["task_id"], task["task_id"]);
    let text = body.to_string();
    assert!(text.contains("through the relay"), "{text}");
    let health = http()
        .get(format!("{expected}/iicp/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status.as_u16(), 200);

    // our client streams a chat from the worker through the relay: the worker's
    // lifecycle RESPONSEs pass the relay and arrive as server-sent events
    let client = iicp_client::Client::builder()
        .directory_url(dir.clone())
        .allow_private_endpoints(true)
        .encryption(iicp_client::Encryption::AllowPlaintext)
        .build()
        .unwrap();
    let options = iicp_client::ChatOptions {
        node_id: Some("worker-node-1".into()),
        ..Default::default()
    };
    let request = iicp_client::ChatRequest::new(vec![iicp_client::ChatMessage::new(
        "user",
        "streamed through the relay",
    )]);
    let mut chat = client.chat_stream(request, options).await.unwrap();
    assert!(chat.is_streamed(), "the worker streams");
    let (mut deltas, mut text, mut done) = (0, String::new(), None);
    while let Some(ev) = chat.next().await {
        match ev.unwrap() {
            iicp_client::ChatEvent::Delta(t) => {
                deltas += 1;
                text.push_str(&t);
            }
            iicp_client::ChatEvent::Done(r) => done = Some(r),
            _ => {}
        }
    }
    assert_eq!(text, "echo: streamed through the relay");
    assert!(deltas > 1, "more than one chunk: {deltas}");
    let done = done.expect("done");
    assert_eq!(done.node_id, "worker-node-1");
    assert_eq!(done.text(), "echo: streamed through the relay");

    // the worker's own refusals come back as they are (not as a relay failure)
    let unserved = json!({
        "task_id": "8e2f6a5b-3c4d-4e5f-9a0b-b1c2d3e4f5a6",
        "intent": "urn:iicp:intent:vision:describe:v1",
        "payload": {},
    });
    let refused = http()
        .post_json(format!("{expected}/v1/task"), &unserved)
        .send()
        .await
        .unwrap();
    let status = refused.status.as_u16();
    assert!((400..500).contains(&status), "{status} {:?}", refused.body);
    assert_ne!(refused.error_body().code.as_str(), "IICP-E031");
    // a relayed task object is validated like any other: its id must be a UUID v4
    let not_v4 = json!({
        "task_id": "45439b9a-f1d4-11f1-abea-02fc00000001",
        "intent": INTENT,
        "payload": {"messages": [{"role": "user", "content": "never run"}]},
    });
    let refused = http()
        .post_json(format!("{expected}/v1/task"), &not_v4)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status.as_u16(), 422, "{:?}", refused.body);
    assert_eq!(refused.error_body().code.as_str(), "validation_error");

    // stopping the worker ends the relay session: IICP-E030
    let stopped = handle.stop().await;
    assert!(stopped.deregistered);
    let mut gone = false;
    for _ in 0..50 {
        let r = http()
            .post_json(format!("{expected}/v1/task"), &task)
            .send()
            .await
            .unwrap();
        if r.status.as_u16() == 404 {
            assert_eq!(r.error_body().code.as_str(), "IICP-E030");
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "relay still forwards after the worker stopped");
    relay_handle.stop().await;
}

#[tokio::test]
async fn relay_accept_port_may_not_equal_the_node_port() {
    let port = free_port();
    let node = on_port(port)
        .relay_capable(true)
        .relay_accept_port(port)
        .build()
        .unwrap();
    let err = node
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, port),
            EchoModel::default(),
            ServeOptions::default(),
        )
        .await
        .expect_err("collision refused");
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("collides"), "{text}");
}

#[tokio::test]
async fn public_endpoint_is_tier_0_and_nothing_is_tier_4() {
    let port = free_port();
    let node = on_port(port).build().unwrap();
    let h = node
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, port),
            EchoModel::default(),
            ServeOptions::default()
                .with_reach(no_route().with_public_endpoint("https://node.example.com:9484")),
        )
        .await
        .unwrap();
    let r = h.reachability().unwrap().clone();
    assert_eq!(r.tier, iicp_node::reach::Tier::Direct);
    assert_eq!(r.endpoint.as_deref(), Some("https://node.example.com:9484"));
    let req = node.registration_request();
    assert_eq!(req.endpoint, "https://node.example.com:9484");
    assert_eq!(req.transport_method.as_deref(), Some("direct"));
    h.stop().await;

    // no directory, no UPnP, no public address, no relay: local only
    let port = free_port();
    let node = on_port(port).build().unwrap();
    let h = node
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, port),
            EchoModel::default(),
            ServeOptions::default().with_reach(no_route()),
        )
        .await
        .unwrap();
    let r = h.reachability().unwrap().clone();
    assert_eq!(r.tier, iicp_node::reach::Tier::LocalOnly, "{r:?}");
    assert_eq!(r.endpoint, None);
    assert!(!r.guidance.is_empty());
    let req = node.registration_request();
    assert_eq!(req.endpoint, format!("http://127.0.0.1:{port}"));
    assert_eq!(req.transport_method.as_deref(), Some("direct"));
    h.stop().await;
}

/// Registers `id` with `dir` (as a node built here would) with the gossip key `key`.
async fn register_gossiper(dir: &str, id: &str, key: &iicp_proto::crypto::sign::OperatorKey) {
    let node = on_port(free_port()).node_id(id).build().unwrap();
    let mut req = node.registration_request();
    req.public_key = Some(gossip::public_key_hex(key));
    let r = http()
        .post_json(format!("{dir}/v1/register"), &req)
        .send()
        .await
        .unwrap();
    assert!(r.status.is_success(), "{:?}", r.body);
}

async fn exchange(url: &str, body: &[u8], sig: Option<&str>) -> iicp_transport::http::HttpReply {
    let mut rb = http().request(http::Method::POST, format!("{url}/v1/peers"));
    rb = rb.body("application/json", body.to_vec());
    if let Some(s) = sig {
        rb = rb.header("x-iicp-signature", s.to_owned());
    }
    rb.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_node_answers_signed_peer_exchanges() {
    use iicp_proto::crypto::sign::OperatorKey;
    let (dir, _dir_stop) = directory().await;
    let port = free_port();
    let relay = on_port(port)
        .node_id("relay-gossip-1")
        .relay_capable(true)
        .relay_accept_port(0)
        .directory_url(dir.clone())
        .build()
        .unwrap();
    let h = relay
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, port),
            EchoModel::default(),
            ServeOptions::default(),
        )
        .await
        .unwrap();
    wait_registered(&relay).await;
    // the directory serves the registered gossip key
    let detail: Value = http()
        .get(format!("{dir}/v1/node/relay-gossip-1"))
        .send()
        .await
        .unwrap()
        .json()
        .unwrap();
    let pk = detail["public_key"].as_str().expect("public_key");
    assert_eq!(pk.len(), 64);
    assert!(gossip::parse_public_key(pk).is_some());

    let url = format!("http://127.0.0.1:{port}");
    let g = OperatorKey::from_seed(&[7; 32]);
    register_gossiper(&dir, "gossip-g", &g).await;
    let now = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    let (body, sig) = gossip::sign(&g, "gossip-g", &[], now());
    // unsigned → 401; signed by another key → 403
    assert_eq!(exchange(&url, &body, None).await.status.as_u16(), 401);
    let (_, wrong) = gossip::sign(&OperatorKey::from_seed(&[8; 32]), "gossip-g", &[], now());
    assert_eq!(
        exchange(&url, &body, Some(&wrong)).await.status.as_u16(),
        403
    );
    // signed → 200 with receiver_id; replay → 409; again within 30 s → 429
    let ok = exchange(&url, &body, Some(&sig)).await;
    assert_eq!(ok.status.as_u16(), 200, "{:?}", ok.body);
    let v: Value = ok.json().unwrap();
    assert_eq!(v["receiver_id"], "relay-gossip-1");
    assert!(v["new_peers"].as_array().unwrap().is_empty());
    assert_eq!(exchange(&url, &body, Some(&sig)).await.status.as_u16(), 409);
    let (b2, s2) = gossip::sign(&g, "gossip-g", &["x".into()], now());
    assert_eq!(exchange(&url, &b2, Some(&s2)).await.status.as_u16(), 429);
    // an unknown sender (no registered key) → 403
    let u = OperatorKey::from_seed(&[9; 32]);
    let (b3, s3) = gossip::sign(&u, "never-registered", &[], now());
    assert_eq!(exchange(&url, &b3, Some(&s3)).await.status.as_u16(), 403);

    // a second sender learns about the first from the relay's peer cache
    let k = OperatorKey::from_seed(&[10; 32]);
    register_gossiper(&dir, "gossip-k", &k).await;
    let (b4, s4) = gossip::sign(&k, "gossip-k", &[], now());
    let r = exchange(&url, &b4, Some(&s4)).await;
    assert_eq!(r.status.as_u16(), 200);
    let v: Value = r.json().unwrap();
    let ids: Vec<&str> = v["new_peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["gossip-g"]);
    h.stop().await;
}

#[test]
fn doctor_reports_the_nat_tier_without_mapping() {
    let home = common::temp_home("doctor-nat");
    let doctor = |env: &[(&str, &str)]| -> Value {
        let mut cmd = common::iicp();
        cmd.env("IICP_HOME", &home)
            .env_remove("IICP_PUBLIC_ENDPOINT")
            .env_remove("IICP_RELAY_WORKER_ENDPOINT")
            .env_remove("IICP_AUTO_DETECT_NAT")
            .env("IICP_SKIP_UPNP", "1")
            .args([
                "doctor",
                "--json",
                "--backend-type",
                "echo",
                "--directory-url",
                "http://127.0.0.1:1/api",
            ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = common::run(&mut cmd);
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "nat")
            .cloned()
            .expect("nat check")
    };
    let nat = doctor(&[("IICP_PUBLIC_ENDPOINT", "https://node.example.com:9484")]);
    assert_eq!(nat["ok"], true);
    assert_eq!(nat["available"], true);
    assert_eq!(nat["tier"], "0");
    assert_eq!(nat["final"], true);
    assert_eq!(nat["endpoint"], "https://node.example.com:9484");
    assert_eq!(nat["mapped"], false);
    assert!(nat["detail"].as_str().unwrap().contains("tier 0"));

    // detection off, nothing configured: local only, with guidance
    let nat = doctor(&[("IICP_AUTO_DETECT_NAT", "false")]);
    assert_eq!(nat["tier"], "4");
    assert!(!nat["guidance"].as_array().unwrap().is_empty());
    // a configured relay is what serve would bind to
    let nat = doctor(&[("IICP_RELAY_WORKER_ENDPOINT", "relay.example.com:9485")]);
    assert_eq!(nat["tier"], "3");
    assert_eq!(nat["final"], false);
    let steps = nat["next_steps"].to_string();
    assert!(steps.contains("relay.example.com:9485"), "{steps}");
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_nodes_exchange_peers_through_a_relay_node() {
    let (dir, _dir_stop) = directory().await;
    let mut handles = Vec::new();
    let mut nodes = Vec::new();
    for (id, relay) in [("mesh-a", true), ("mesh-b", false), ("mesh-c", false)] {
        let port = free_port();
        let node = on_port(port)
            .node_id(id)
            .relay_capable(relay)
            .relay_accept_port(0)
            .enable_mesh(true)
            .directory_url(dir.clone())
            .build()
            .unwrap();
        handles.push(
            node.bind_and_serve(
                std::net::SocketAddr::new(LOCAL, port),
                EchoModel::default(),
                ServeOptions::default(),
            )
            .await
            .unwrap(),
        );
        wait_registered(&node).await;
        nodes.push(node);
    }
    // B finds the relay-capable A at the directory and exchanges with it
    assert_eq!(nodes[1].exchange_peers().await, 1);
    assert_eq!(nodes[1].mesh_peers(), ["mesh-a"]);
    assert_eq!(nodes[0].mesh_peers(), ["mesh-b"]);
    // C learns B from A's answer
    assert_eq!(nodes[2].exchange_peers().await, 1);
    let mut c = nodes[2].mesh_peers();
    c.sort();
    assert_eq!(c, ["mesh-a", "mesh-b"]);
    for h in handles {
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maps_its_port_through_an_igd_and_deletes_the_mapping_on_stop() {
    let igd = igd::FakeIgd::start("11.22.33.44").await;
    let port = free_port();
    let node = on_port(port).build().unwrap();
    let mut rc = ReachConfig::default();
    rc.interfaces = Some(vec![iicp_nat::InterfaceAddr {
        name: "eth0".into(),
        ip: "10.0.0.5".parse().unwrap(),
        loopback: false,
    }]);
    rc.container = Some(iicp_node::reach::Container::None);
    rc.discovery = igd.discovery_config();
    let h = node
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, port),
            EchoModel::default(),
            ServeOptions::default().with_reach(rc),
        )
        .await
        .unwrap();
    let r = h.reachability().unwrap().clone();
    let expected = format!("http://11.22.33.44:{port}");
    assert_eq!(r.tier, iicp_node::reach::Tier::UpnpMapped, "{r:?}");
    assert_eq!(r.endpoint.as_deref(), Some(expected.as_str()));
    assert_eq!(r.mapped_ports, [port]);
    let req = node.registration_request();
    assert_eq!(req.endpoint, expected);
    assert_eq!(req.transport_method.as_deref(), Some("upnp_mapped"));
    assert_eq!(req.exposure_mode.as_deref(), Some("ipv4_public_direct"));
    assert_eq!(
        req.transport_endpoint.as_deref(),
        Some(format!("iicp://11.22.33.44:{port}").as_str())
    );
    assert!(igd
        .state
        .lock()
        .unwrap()
        .mappings
        .contains_key(&port.to_string()));
    // stop: the mapping is deleted
    h.stop().await;
    assert!(igd.calls().iter().any(|c| c == "DeletePortMapping"));
    assert!(igd.state.lock().unwrap().mappings.is_empty());
}

/// `doctor` says whether the directory lists a relay-capable node when tier 3 is what
/// the node needs, and names the flags as well as the env vars in its guidance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_whether_a_relay_is_listed() {
    let (dir, _dir_stop) = directory().await;
    let home = common::temp_home("doctor-relay");
    let doctor = |dir: String| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || -> Value {
            let mut cmd = common::iicp();
            cmd.env("IICP_HOME", &home)
                .env_remove("IICP_PUBLIC_ENDPOINT")
                .env_remove("IICP_RELAY_WORKER_ENDPOINT")
                .env_remove("IICP_RELAY_CAPABLE")
                .env("IICP_AUTO_DETECT_NAT", "false")
                .env("IICP_SKIP_UPNP", "1")
                .args([
                    "doctor",
                    "--json",
                    "--backend-type",
                    "echo",
                    "--directory-url",
                    &dir,
                ]);
            let o = common::run(&mut cmd);
            let v: Value = serde_json::from_slice(&o.stdout).expect("json");
            v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "nat")
                .cloned()
                .expect("nat check")
        })
    };
    let nat = doctor(dir.clone()).await.unwrap();
    assert_eq!(nat["tier"], "4");
    let detail = nat["detail"].as_str().unwrap();
    assert!(
        detail.contains("no relay-capable node is listed"),
        "{detail}"
    );
    assert!(
        detail.contains("--relay-capable / IICP_RELAY_CAPABLE"),
        "{detail}"
    );
    assert!(
        detail.contains("--relay-worker-endpoint (IICP_RELAY_WORKER_ENDPOINT)")
            || detail.contains("--no-auto-detect-nat / IICP_AUTO_DETECT_NAT"),
        "guidance names flags and env vars: {detail}"
    );
    assert_eq!(nat["relay_capable_nodes"], 0);

    let port = free_port();
    let relay = on_port(port)
        .node_id("relay-r")
        .relay_capable(true)
        .relay_accept_port(0)
        .directory_url(dir.clone())
        .build()
        .unwrap();
    let h = relay
        .bind_and_serve(
            std::net::SocketAddr::new(LOCAL, port),
            EchoModel::default(),
            ServeOptions::default(),
        )
        .await
        .unwrap();
    wait_registered(&relay).await;
    let nat = doctor(dir.clone()).await.unwrap();
    let detail = nat["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 relay-capable node(s) listed"),
        "{detail}"
    );
    assert_eq!(nat["relay_capable_nodes"], 1);
    h.stop().await;

    let nat = doctor("http://127.0.0.1:1/api".into()).await.unwrap();
    let detail = nat["detail"].as_str().unwrap();
    assert!(detail.contains("could not ask"), "{detail}");
    let _ = std::fs::remove_dir_all(&home);
}
