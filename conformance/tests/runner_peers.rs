//! The `iicp-conformance` binary against the peer SDK nodes (iicp-client 0.7.109 from
//! PyPI and crates.io), each registered with our embedded directory in front of an
//! OpenAI stub, over HTTP and the native transport on the node's port. Prints each
//! node's real results; the peers' failures are findings (`docs/conformance.md`),
//! pinned here so that a change on either side is noticed.
//!
//! Needs `IICP_PEER_PYTHON` / `IICP_RUST_SDK_BIN` (`scripts/peers env`): fails under CI
//! without them, skips elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use iicp_conformance::peers::{
    self, python_node, rust_sdk_node, Mesh, OpenAiStub, PeerCx, PeerProcess, Scratch, PYTHON_VAR,
    RUST_SDK_VAR,
};
use serde_json::Value;

/// Cases both peer SDK nodes fail (each explained in docs/conformance.md).
const PEER_NODES_FAIL: &[&str] = &[
    "METRICS-01",
    "NATIVE-HS-01",
    "NATIVE-MAL-02",
    "NATIVE-MAL-03",
    "NATIVE-MAL-04",
    "NATIVE-MAL-05",
    "NATIVE-MAL-06",
    "NATIVE-MAL-07",
    "NATIVE-MAL-08",
    "NATIVE-MAL-09",
    "NATIVE-MAL-10",
    "NATIVE-MAL-11",
    "NODE-TASK-04",
    "NODE-TASK-06",
    "NODE-VAL-01",
    "NODE-VAL-02",
    "NODE-VAL-03",
    "NODE-VAL-04",
    "NODE-VAL-05",
    "NODE-VAL-06",
    "PROTO-URN-01",
    "PROTO-URN-02",
    "PROTO-URN-03",
    "TRACE-02",
];
/// ... and the Python SDK node only.
const PYTHON_NODE_ALSO_FAILS: &[&str] = &["NODE-TASK-03"];
/// ... and the Rust SDK node only.
const RUST_SDK_NODE_ALSO_FAILS: &[&str] = &["PROTO-MSG-05", "SEC-LEAK-01"];

/// Cases the Python SDK client fails through `py_peer.py submit` (docs/conformance.md).
const PYTHON_CLIENT_FAILS: &[&str] = &["EXT-SDK-03", "EXT-SDK-05"];

fn located(var: &'static str) -> Option<PathBuf> {
    match peers::locate(var) {
        Ok(p) => {
            if p.is_none() {
                eprintln!("skipping: {var} not set (scripts/peers env prints it)");
            }
            p
        }
        Err(e) => panic!("{e}"),
    }
}

/// Runs the binary against the node on 127.0.0.1:`port` and checks the failures.
async fn run_against(
    node: &mut PeerProcess,
    port: u16,
    scratch: &Scratch,
    expected_fails: &[&str],
) {
    let target = vec![
        "--node-http".to_owned(),
        format!("http://127.0.0.1:{port}"),
        "--node-native".to_owned(),
        format!("iicp://127.0.0.1:{port}"),
    ];
    run_binary(target, scratch, expected_fails, 40).await;
    node.check_running().unwrap_or_else(|e| panic!("{e}"));
}

/// Runs the binary with `target` arguments; checks the failures and the case count.
async fn run_binary(target: Vec<String>, scratch: &Scratch, expected_fails: &[&str], min: usize) {
    let report = scratch.path().join("report.json");
    let mut args = target;
    args.extend([
        "--request-timeout".to_owned(),
        "2".to_owned(),
        "--case-timeout".to_owned(),
        "20".to_owned(),
        "--json".to_owned(),
        report.display().to_string(),
    ]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_iicp-conformance"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    let verdicts: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let label = p.next()?;
            let id = p.next()?;
            matches!(label, "PASS" | "FAIL" | "SKIP").then_some((id, label))
        })
        .collect();
    assert!(verdicts.len() >= min, "{verdicts:?}");
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|(_, l)| **l == "FAIL")
        .map(|(id, _)| *id)
        .collect();
    let mut expected = expected_fails.to_vec();
    expected.sort_unstable();
    assert_eq!(failed, expected, "the peer's failures changed");
    assert_eq!(
        out.status.code(),
        Some(if expected.is_empty() { 0 } else { 1 })
    );
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["summary"]["failed"], expected.len());
}

/// How a peer node is started (`peers::python_node`, `peers::rust_sdk_node`).
type StartNode =
    fn(&Path, &Scratch, &str, &str, PeerCx) -> Result<(PeerProcess, u16), peers::PeerError>;

/// Starts the peer node named by `var` (keyless) in front of our OpenAI stub, registered
/// with our directory, then runs the binary against it.
async fn check_peer_node(var: &'static str, tag: &str, start: StartNode, fails: &[&str]) {
    let Some(bin) = located(var) else {
        return;
    };
    let scratch = Scratch::new(tag).unwrap();
    let stub = OpenAiStub::start().await.unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (mut node, port) = start(&bin, &scratch, &mesh.url(), &stub.url(), PeerCx::Off).unwrap();
    mesh.wait_for_nodes(1, Duration::from_secs(60), Some(&mut node))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    run_against(&mut node, port, &scratch, fails).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_binary_against_the_python_node() {
    let fails = [PEER_NODES_FAIL, PYTHON_NODE_ALSO_FAILS].concat();
    check_peer_node(PYTHON_VAR, "conformance-py-node", python_node, &fails).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_binary_against_the_rust_sdk_node() {
    let fails = [PEER_NODES_FAIL, RUST_SDK_NODE_ALSO_FAILS].concat();
    check_peer_node(
        RUST_SDK_VAR,
        "conformance-rust-sdk-node",
        rust_sdk_node,
        &fails,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_binary_against_the_python_client() {
    let Some(py) = located(PYTHON_VAR) else {
        return;
    };
    let scratch = Scratch::new("conformance-py-client").unwrap();
    let cmd = format!(
        "'{}' '{}' submit",
        py.display(),
        peers::py_peer_script().display()
    );
    run_binary(
        vec!["--client-cmd".to_owned(), cmd],
        &scratch,
        PYTHON_CLIENT_FAILS,
        6,
    )
    .await;
}
