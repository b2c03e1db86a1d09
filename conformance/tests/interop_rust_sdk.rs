//! Cross-SDK matrix, Rust SDK rows and columns (crates.io iicp-client 0.7.109, its
//! `iicp-node` CLI), through our embedded directory on 127.0.0.1 (`docs/interop.md`):
//!
//! * our `Client` → Rust SDK node (`iicp-node serve`): HTTP with IICP-CX; native
//!   preferred (the node does not do IICP-CX over native, so CX stays on HTTP); native
//!   in plaintext against a keyless Rust SDK node;
//! * Rust SDK client (`iicp-node query`, default encryption, dispatch tickets) → our
//!   node, HTTP.
//!
//! The Rust SDK's native client (`IicpTcpClient`) is a library type its CLI does not
//! expose; our harness `conformance/peers/rust-sdk-tcp` drives it (calls, DISCOVER and
//! its lifecycle client `call_stream`) against our node.
//!
//! Needs `IICP_RUST_SDK_BIN` (`scripts/peers env`): fails under CI without it, skips
//! elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use iicp_client::{Encryption, ErrorCode, Transport, TransportUsed};
use iicp_conformance::peers::{
    self, rust_sdk_endpoint, rust_sdk_node, Mesh, OpenAiStub, PeerCx, PeerProcess, Scratch,
    ECHO_MODEL, RUST_SDK_VAR,
};
use iicp_node::handler::Transport as Arrival;
use iicp_proto::task::ChatMessage;
use serde_json::{json, Value};

const REGISTER_WITHIN: Duration = Duration::from_secs(60);
const PEER_RUN_WITHIN: Duration = Duration::from_secs(90);

fn rust_sdk() -> Option<PathBuf> {
    match peers::locate(RUST_SDK_VAR) {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            eprintln!("skipping: {RUST_SDK_VAR} not set (scripts/peers env prints it)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

use peers::{chat_task, reply};

/// Starts the Rust SDK node and returns it with its discovery entry once registered.
async fn registered_rust_node(
    bin: &std::path::Path,
    scratch: &Scratch,
    mesh: &Mesh,
    stub: &OpenAiStub,
    cx: PeerCx,
) -> (PeerProcess, u16, Value) {
    let (mut node, port) = rust_sdk_node(bin, scratch, &mesh.url(), &stub.url(), cx).unwrap();
    mesh.wait_for_nodes(1, REGISTER_WITHIN, Some(&mut node))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let entry = mesh.discover_raw().await.unwrap()["nodes"][0].clone();
    assert_eq!(entry["endpoint"], rust_sdk_endpoint(port), "{entry}");
    assert_eq!(
        entry["transport_endpoint"],
        rust_sdk_endpoint(port).replace("http://", "iicp://"),
        "{entry}"
    );
    assert_eq!(entry["sdk_language"], "rust", "{entry}");
    (node, port, entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_rust_sdk_node_with_cx() {
    let Some(bin) = rust_sdk() else { return };
    let scratch = Scratch::new("rs-node-cx").unwrap();
    let stub = OpenAiStub::start().await.unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (node, _port, entry) = registered_rust_node(&bin, &scratch, &mesh, &stub, PeerCx::On).await;
    assert!(entry["cx_public_key"]["key"].is_string(), "{entry}");
    assert!(
        !entry["cx_public_key"]["features"]
            .to_string()
            .contains("native_cx_v1"),
        "the Rust SDK node does not do IICP-CX over native: {entry}"
    );

    // HTTP, IICP-CX on, through a dispatch ticket
    let client = mesh.client(Transport::Http, Encryption::Required).unwrap();
    let r = client
        .submit(chat_task("rust sdk node over http"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.logs()));
    assert_eq!(r.transport, TransportUsed::Http);
    assert!(r.encrypted);
    assert_eq!(r.selection_profile, "directory_ticket_v1");
    assert_eq!(
        reply(&r),
        "STUB: rust sdk node over http",
        "{:?}",
        r.response
    );
    assert_eq!(entry["node_id"], r.node_id.as_str());
    let c = client
        .chat(vec![ChatMessage::new("user", "hello rust sdk node")])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.logs()));
    assert_eq!(c.text(), "STUB: hello rust sdk node");

    // native preferred or auto, and plaintext allowed: a keyed node without native_cx_v1
    // keeps IICP-CX on HTTP (never a plaintext downgrade)
    for (transport, encryption) in [
        (Transport::Native, Encryption::Required),
        (Transport::Auto, Encryption::Required),
        (Transport::Native, Encryption::AllowPlaintext),
    ] {
        let prompt = format!("{transport:?} {encryption:?}");
        let r = mesh
            .client(transport, encryption)
            .unwrap()
            .submit(chat_task(&prompt))
            .await
            .unwrap_or_else(|e| panic!("{prompt}: {e}\n{}", node.logs()));
        assert_eq!(r.transport, TransportUsed::Http, "{prompt}");
        assert!(r.encrypted, "{prompt}");
        assert_eq!(reply(&r), format!("STUB: {prompt}").as_str());
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_keyless_rust_sdk_node_native_plaintext() {
    let Some(bin) = rust_sdk() else { return };
    let scratch = Scratch::new("rs-node-plain").unwrap();
    let stub = OpenAiStub::start().await.unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (node, _port, entry) =
        registered_rust_node(&bin, &scratch, &mesh, &stub, PeerCx::Off).await;
    assert!(
        entry.get("cx_public_key").is_none_or(Value::is_null),
        "{entry}"
    );

    let err = mesh
        .client(Transport::Auto, Encryption::Required)
        .unwrap()
        .submit(chat_task("refused"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), &ErrorCode::CxRequired, "{err}");

    let client = mesh
        .client(Transport::Native, Encryption::AllowPlaintext)
        .unwrap();
    for i in 0..3 {
        let r = client
            .submit(chat_task(&format!("native plaintext #{i}")))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", node.logs()));
        assert_eq!(r.transport, TransportUsed::Native);
        assert!(!r.encrypted);
        assert_eq!(reply(&r), format!("STUB: native plaintext #{i}").as_str());
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_client_to_our_node_with_cx() {
    let Some(bin) = rust_sdk() else { return };
    let scratch = Scratch::new("rs-client").unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (handle, recorder) = mesh.start_echo_node().await.unwrap();
    let prompt = "hello from the rust sdk";
    let mut cmd = peers::peer_command(&bin, &scratch);
    // default route discovery (dispatch tickets) and default encryption; only the
    // client's loopback filter is relaxed
    cmd.args(["query", "--directory-url", &mesh.url(), prompt])
        .env("IICP_PROXY_ALLOW_LOOPBACK_NODES", "1")
        .env_remove("IICP_CX_ALLOW_PLAINTEXT")
        .env_remove("IICP_ROUTE_DISCOVERY_MODE");
    let out = peers::run("rust-sdk-query", cmd, &scratch, PEER_RUN_WITHIN)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "rust sdk query failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    // it prints the completion as pretty JSON
    let completion: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        format!("echo: {prompt}"),
        "{completion}"
    );
    assert_eq!(completion["model"], ECHO_MODEL);
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].transport, Arrival::Http);
    assert!(
        seen[0].encrypted,
        "the Rust SDK client must encrypt: {seen:?}"
    );
    assert!(
        mesh.dispatch_tickets().await.unwrap() >= 1,
        "the Rust SDK client discovers through a dispatch ticket"
    );
    handle.stop().await;
    mesh.stop().await;
}

/// The Rust SDK's own native client (`iicp_client::iicp_tcp::IicpTcpClient`, driven by
/// our small harness `conformance/peers/rust-sdk-tcp`, built by `scripts/peers`) completes
/// a handshake, a PING and CALLs against our node's native port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_tcp_client_to_our_node_native() {
    let bin = match peers::locate("IICP_RUST_SDK_TCP") {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    let scratch = Scratch::new("rs-tcp").unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (handle, recorder) = mesh.start_echo_node().await.unwrap();
    let node_id = handle.node().node_id().unwrap();
    let port = handle.local_addr().port().to_string();
    let mut cmd = peers::peer_command(&bin, &scratch);
    cmd.args(["127.0.0.1", &port, "3"]);
    let out = peers::run("rust-sdk-tcp", cmd, &scratch, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "rust sdk tcp client failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    let events = out.json_lines();
    assert_eq!(events[0]["event"], "handshake", "{events:?}");
    assert_eq!(events[0]["peer_node_id"], node_id.as_str());
    assert_eq!(events[0]["framing"], 1);
    assert_eq!(events[1], json!({"event": "pong", "echo": "rs-echo"}));
    let calls: Vec<&Value> = events.iter().filter(|e| e["event"] == "call").collect();
    assert_eq!(calls.len(), 3, "{events:?}");
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(
            c["result"]["choices"][0]["message"]["content"],
            format!("echo: rust sdk native #{i}"),
            "{c}"
        );
    }
    let seen = recorder.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen
        .iter()
        .all(|a| a.transport == Arrival::Native && !a.encrypted));
    handle.stop().await;
    mesh.stop().await;
}

/// The Rust SDK's validating lifecycle client (`IicpTcpClient::call_stream`, native CALL
/// with key 24, checked frame by frame with its `NativeResponseSequence`) accepts our
/// streaming node's lifecycle RESPONSEs (ADR 0013): ids echoed, sequence 0, 1, … , one
/// `completed` terminal, and the chunks join to the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_stream_call_to_our_streaming_node() {
    let bin = match peers::locate("IICP_RUST_SDK_TCP") {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    let scratch = Scratch::new("rs-tcp-stream").unwrap();
    let handle = peers::streaming_echo_node().await.unwrap();
    let port = handle.local_addr().port().to_string();
    let task_id = "3e1c1d2e-8a57-4c1e-9d3a-0b1f2e3d4c5b";
    let mut cmd = peers::peer_command(&bin, &scratch);
    cmd.args(["127.0.0.1", &port, "stream", task_id, "stream me from rust"]);
    let out = peers::run(
        "rust-sdk-tcp-stream",
        cmd,
        &scratch,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let events = out.json_lines();
    assert!(
        !events.iter().any(|e| e["event"] == "error"),
        "the SDK refused a frame: {events:?}"
    );
    let frames: Vec<&Value> = events.iter().filter(|e| e["event"] == "frame").collect();
    assert!(frames.len() >= 4, "{events:?}");
    let mut text = String::new();
    for (i, f) in frames.iter().enumerate() {
        let frame = &f["frame"];
        assert_eq!(frame["lifecycle"]["sequence"], i, "{frame}");
        assert_eq!(frame["lifecycle"]["task_id"], task_id);
        assert_eq!(frame["call_id"], "rs-stream-call");
        assert_eq!(frame["session_id"], "rs-stream-session");
        if let Some(t) = frame["result"]["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    let last = &frames.last().unwrap()["frame"];
    assert_eq!(last["is_final"], true);
    assert_eq!(last["lifecycle"]["event"], "completed");
    assert!(frames[..frames.len() - 1]
        .iter()
        .all(|f| f["frame"]["is_final"] == false));
    assert_eq!(text, "echo: stream me from rust");
    handle.stop().await;
}

/// The Rust SDK's `IicpTcpClient::discover` gets our node's own entry at once (issue 16
/// §4: the DISCOVER used to be dropped and the client waited out its 10 s timeout), and
/// an empty list for an intent the node does not serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_tcp_client_discovers_our_node_native() {
    let bin = match peers::locate("IICP_RUST_SDK_TCP") {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    let scratch = Scratch::new("rs-tcp-discover").unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (handle, recorder) = mesh.start_echo_node().await.unwrap();
    let node_id = handle.node().node_id().unwrap();
    let port = handle.local_addr().port().to_string();
    for (intent, served) in [
        (peers::CHAT, true),
        ("urn:iicp:intent:llm:embedding:v1", false),
    ] {
        let mut cmd = peers::peer_command(&bin, &scratch);
        cmd.args(["127.0.0.1", &port, "discover", intent]);
        let out = peers::run("rust-sdk-tcp", cmd, &scratch, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "rust sdk discover failed: {}\n{}",
            out.stdout,
            out.stderr
        );
        let events = out.json_lines();
        let d = events
            .iter()
            .find(|e| e["event"] == "discover")
            .unwrap_or_else(|| panic!("{events:?}"));
        assert!(
            d["ms"].as_f64().unwrap() < 3000.0,
            "answered, not timed out: {d}"
        );
        let nodes = d["nodes"].as_array().unwrap();
        if served {
            assert_eq!(nodes.len(), 1, "{d}");
            assert_eq!(nodes[0]["node_id"], node_id.as_str(), "{d}");
            assert_eq!(
                nodes[0]["transport_endpoint"],
                format!("iicp://127.0.0.1:{port}"),
                "{d}"
            );
        } else {
            assert!(nodes.is_empty(), "{d}");
        }
    }
    assert!(recorder.seen().is_empty(), "DISCOVER runs no task");
    handle.stop().await;
    mesh.stop().await;
}
