//! Interop with the Python SDK (iicp-client 0.7.109): its node registers and heartbeats
//! (with the HMAC challenge) against our directory, and its client discovers the node
//! through plain `GET /v1/discover` and through a verified dispatch ticket, then chats
//! with it. The node reports the task with a credits receipt. Needs `IICP_PEER_PYTHON`
//! (fails under CI without it, skips elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use iicp_directory::Directory;
use serde_json::Value;

/// Kills the child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn peer(py: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(py);
    c.arg(harness()).args(args);
    c.env("IICP_AUTO_UPDATE", "0")
        .env("IICP_AUTO_DETECT_NAT", "0")
        .env("IICP_TUNNEL", "0");
    c
}

async fn run_peer(py: &Path, args: &[&str], home: &Path) -> Vec<Value> {
    let mut cmd = peer(py, args);
    cmd.env("HOME", home);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "py_peer {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_until<F: FnMut() -> bool>(what: &str, within: Duration, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_node_and_client_against_our_directory() {
    let Some(py) = peer_python() else { return };
    let d = start_with(
        Backend::Sqlite,
        Directory::builder().private_mesh(true),
        None,
    )
    .await;
    let home = TempDir::new("py-home");

    // stub model server
    let mut stub = peer(&py, &["stub-openai", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(stub.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _stub = Guard(stub);
    let stub_port = serde_json::from_str::<Value>(&line).unwrap()["port"]
        .as_u64()
        .unwrap();

    // the SDK node
    let port = free_port();
    let dir_url = format!("{}/api", d.base);
    let node_log = home.0.join("node.log");
    let node = peer(
        &py,
        &[
            "node",
            "serve",
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--public-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--directory-url",
            &dir_url,
            "--backend-url",
            &format!("http://127.0.0.1:{stub_port}"),
            "--model",
            "stub-model",
            "--no-auto-detect-nat",
            "--no-tunnel",
        ],
    )
    .env("HOME", &home.0)
    .env("IICP_PEER_HEARTBEAT_S", "1.5")
    .stdout(Stdio::from(std::fs::File::create(&node_log).unwrap()))
    .stderr(Stdio::from(
        std::fs::File::create(home.0.join("node.err")).unwrap(),
    ))
    .spawn()
    .unwrap();
    let _node = Guard(node);

    let dir = d.directory.clone();
    wait_until(
        "the Python node to register",
        Duration::from_secs(40),
        || dir.node_count() == 1,
    )
    .await;
    let nodes = get(&format!("{}/v1/discover?intent={CHAT}", d.base)).await;
    let node_id = nodes.body["nodes"][0]["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        nodes.body["nodes"][0]["transport_endpoint"],
        format!("iicp://127.0.0.1:{port}")
    );
    assert!(
        nodes.body["nodes"][0]["cx_public_key"]["key"].is_string(),
        "cx key stored and served"
    );

    // heartbeats with a verified challenge response, and the endpoint verified by re-probe
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(&format!("{}/v1/node/{node_id}", d.base)).await;
        if r.body["liveness_challenges_passed"].as_u64().unwrap_or(0) >= 1
            && r.body["endpoint_verified"] == true
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no verified heartbeat challenge / endpoint probe: {}\nnode log: {}",
            r.body,
            std::fs::read_to_string(home.0.join("node.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // the SDK client: plain GET discover
    let events = run_peer(&py, &["discover", &dir_url], &home.0).await;
    let found: Vec<&Value> = events.iter().filter(|e| e["event"] == "node").collect();
    assert_eq!(found.len(), 1, "{events:?}");
    assert_eq!(found[0]["node_id"], node_id.as_str());
    assert_eq!(found[0]["cx_key"], true);

    // the SDK client: ticketed dispatch (ticket verified by the SDK), then chat
    let events = run_peer(&py, &["chat", &dir_url, "hello from rust"], &home.0).await;
    let chat = events
        .iter()
        .find(|e| e["event"] == "chat")
        .expect("chat event");
    assert_eq!(chat["node_id"], node_id.as_str());
    assert_eq!(chat["reply"], "STUB: hello from rust");
    let stats = get(&format!("{}/v1/stats", d.base)).await;
    assert!(
        stats.body["directory_health"]["dispatch_tickets"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // the node reports the task with an HMAC receipt
    let base = d.base.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = get(&format!("{base}/v1/stats")).await;
        if s.body["directory_health"]["receipts"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no credits receipt recorded: {}\nnode log: {}",
            s.body,
            std::fs::read_to_string(home.0.join("node.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    d.stop().await;
}

/// Runs `py_peer.py manifest-verify` on `manifest`: (signature ok, the SDK's canonical
/// SHA-256).
fn python_verifies(py: &Path, manifest: &Value) -> (bool, String) {
    use std::io::Write as _;
    let mut child = peer(py, &["manifest-verify"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "manifest-verify failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["ok"].as_bool().unwrap(),
        v["canonical_sha256"].as_str().unwrap().to_owned(),
    )
}

/// PROTOCOL.md §17.4: a policy manifest the Python SDK signs (fresh operator key,
/// microsecond timestamps) registers with our directory and is served `signed_valid`
/// with the hash the SDK computes; a manifest we sign verifies with the SDK's canonical
/// form and Ed25519, and a changed one does not.
#[tokio::test]
async fn policy_manifests_cross_between_the_sdks() {
    use iicp_proto::crypto::manifest::{self, Status};
    use iicp_proto::crypto::sign::OperatorKey;
    use iicp_transport::clock::{Clock as _, SystemClock};

    let Some(py) = peer_python() else { return };
    let tmp = TempDir::new("py-manifest");
    std::fs::create_dir_all(&tmp.0).unwrap();
    let file = tmp.0.join("manifest.json");
    let declaration = serde_json::json!({
        "version": "2026-07-02",
        "jurisdiction": "DE",
        "policy_url": "https://example.org/policy/v1",
        "remote_executor_can_read_prompt": true,
        "training_use": "none",
        "retention": {"task_payload": "none", "logs_days": 7},
        "subprocessors": ["self-hosted", "Rechenzentrum N\u{fc}rnberg"]
    });
    std::fs::write(&file, declaration.to_string()).unwrap();

    // Python signs, our directory verifies and serves it
    let out = run_peer(&py, &["manifest-sign", file.to_str().unwrap()], &tmp.0).await;
    let theirs = out[0]["manifest"].clone();
    let object = theirs.as_object().unwrap();
    assert_eq!(
        manifest::verify(object, SystemClock.now_secs()).status,
        Status::SignedValid
    );
    let (ok, their_sha) = python_verifies(&py, &theirs);
    assert!(ok);
    assert_eq!(manifest::canonical_sha256(object), their_sha);
    let d = start_with(
        Backend::Memory,
        Directory::builder().private_mesh(true),
        None,
    )
    .await;
    let mut body = register_body("http://127.0.0.1:19401", "eu-central", &["m"]);
    body["policy_manifest"] = theirs.clone();
    let ack = register(&d.base, &body).await;
    let id = ack["node_id"].as_str().unwrap();
    let r = get(&format!("{}/api/v1/node/{id}", d.base)).await;
    let served = &r.body["node_policy_manifest"];
    assert_eq!(
        served["verification"]["status"], "signed_valid",
        "{}",
        r.body
    );
    assert_eq!(
        served["verification"]["canonical_sha256"],
        their_sha.as_str()
    );

    // we sign, Python verifies; a changed member fails there too
    let key = OperatorKey::from_seed(&[42; 32]);
    let ours = manifest::sign(
        declaration.as_object().unwrap().clone(),
        &key,
        SystemClock.now_secs(),
    );
    let (ok, sha) = python_verifies(&py, &Value::Object(ours.clone()));
    assert!(ok, "the Python SDK refused our signature");
    assert_eq!(sha, manifest::canonical_sha256(&ours));
    let mut changed = ours;
    changed["jurisdiction"] = "US".into();
    assert!(!python_verifies(&py, &Value::Object(changed)).0);
    d.stop().await;
}
