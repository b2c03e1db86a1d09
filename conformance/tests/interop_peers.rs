//! Cross-SDK matrix, peer × peer cells: the Python and Rust SDK clients chat with the
//! Python and Rust SDK nodes through *our* embedded directory on 127.0.0.1, with their
//! default encryption (no `IICP_CX_ALLOW_PLAINTEXT`) and dispatch tickets
//! (`docs/interop.md`). Here our directory is the only piece of ours in the path.
//!
//! Needs `IICP_PEER_PYTHON` and `IICP_RUST_SDK_BIN` (`scripts/peers env`): fails under
//! CI without them, skips elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use iicp_conformance::peers::{
    self, python_node, rust_sdk_node, Finished, Mesh, OpenAiStub, PeerCx, PeerProcess, Scratch,
    PYTHON_VAR, RUST_SDK_VAR, STUB_MODEL,
};
use serde_json::Value;

const REGISTER_WITHIN: Duration = Duration::from_secs(60);
const PEER_RUN_WITHIN: Duration = Duration::from_secs(90);

fn need(var: &'static str) -> Option<PathBuf> {
    match peers::locate(var) {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            eprintln!("skipping: {var} not set (scripts/peers env prints it)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[derive(Clone, Copy, Debug)]
enum PeerNode {
    Python,
    Rust,
}

/// A mesh with one keyed peer node registered; returns it and the node's id.
async fn mesh_with(
    which: PeerNode,
    py: &Path,
    rs: &Path,
    scratch: &Scratch,
    stub: &OpenAiStub,
) -> (Mesh, PeerProcess, String) {
    let mesh = Mesh::start().await.unwrap();
    let (mut node, _port) = match which {
        PeerNode::Python => python_node(py, scratch, &mesh.url(), &stub.url(), PeerCx::On),
        PeerNode::Rust => rust_sdk_node(rs, scratch, &mesh.url(), &stub.url(), PeerCx::On),
    }
    .unwrap();
    mesh.wait_for_nodes(1, REGISTER_WITHIN, Some(&mut node))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let entry = mesh.discover_raw().await.unwrap()["nodes"][0].clone();
    assert!(entry["cx_public_key"]["key"].is_string(), "{entry}");
    let id = entry["node_id"].as_str().unwrap().to_owned();
    (mesh, node, id)
}

async fn python_chat(py: &Path, scratch: &Scratch, mesh: &Mesh, prompt: &str) -> Finished {
    let url = mesh.url();
    let cmd = peers::py_peer(py, scratch, &["chat", &url, prompt]);
    peers::run("py-chat", cmd, scratch, PEER_RUN_WITHIN)
        .await
        .unwrap()
}

async fn rust_query(rs: &Path, scratch: &Scratch, mesh: &Mesh, prompt: &str) -> Finished {
    let mut cmd = peers::peer_command(rs, scratch);
    cmd.args(["query", "--directory-url", &mesh.url(), prompt])
        .env("IICP_PROXY_ALLOW_LOOPBACK_NODES", "1")
        .env_remove("IICP_CX_ALLOW_PLAINTEXT")
        .env_remove("IICP_ROUTE_DISCOVERY_MODE");
    peers::run("rust-sdk-query", cmd, scratch, PEER_RUN_WITHIN)
        .await
        .unwrap()
}

fn python_reply(out: &Finished, node: &PeerProcess) -> Value {
    assert!(
        out.status.success(),
        "python chat failed: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        node.logs()
    );
    out.event("chat").expect("chat event")
}

fn rust_reply(out: &Finished, node: &PeerProcess) -> Value {
    assert!(
        out.status.success(),
        "rust sdk query failed: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        node.logs()
    );
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_peer_nodes() {
    let (Some(py), Some(rs)) = (need(PYTHON_VAR), need(RUST_SDK_VAR)) else {
        return;
    };
    let stub = OpenAiStub::start().await.unwrap();
    for which in [PeerNode::Python, PeerNode::Rust] {
        let scratch = Scratch::new("py-client-peers").unwrap();
        let (mesh, node, node_id) = mesh_with(which, &py, &rs, &scratch, &stub).await;
        let prompt = format!("python client to {which:?} node");
        let out = python_chat(&py, &scratch, &mesh, &prompt).await;
        let chat = python_reply(&out, &node);
        assert_eq!(chat["reply"], format!("STUB: {prompt}"), "{chat}");
        assert_eq!(chat["node_id"], node_id.as_str(), "{chat}");
        assert_eq!(chat["model"], STUB_MODEL, "{chat}");
        assert!(mesh.dispatch_tickets().await.unwrap() >= 1, "{which:?}");
        mesh.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_client_to_peer_nodes() {
    let (Some(py), Some(rs)) = (need(PYTHON_VAR), need(RUST_SDK_VAR)) else {
        return;
    };
    let stub = OpenAiStub::start().await.unwrap();
    for which in [PeerNode::Python, PeerNode::Rust] {
        let scratch = Scratch::new("rs-client-peers").unwrap();
        let (mesh, node, _node_id) = mesh_with(which, &py, &rs, &scratch, &stub).await;
        let prompt = format!("rust sdk client to {which:?} node");
        let out = rust_query(&rs, &scratch, &mesh, &prompt).await;
        let completion = rust_reply(&out, &node);
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            format!("STUB: {prompt}"),
            "{completion}"
        );
        assert!(mesh.dispatch_tickets().await.unwrap() >= 1, "{which:?}");
        mesh.stop().await;
    }
}
