//! Cross-SDK matrix, Python SDK rows and columns (iicp-client 0.7.109 from PyPI),
//! through our embedded directory on 127.0.0.1 (`docs/interop.md`):
//!
//! * our `Client` → Python SDK node: HTTP with IICP-CX; native preferred (the node does
//!   not do IICP-CX over native, so CX stays on HTTP); native in plaintext against a
//!   keyless Python node;
//! * Python SDK client (`IicpClient.chat_async`, default encryption) → our node, HTTP;
//! * Python `IicpTcpClient` → our node's native port (CALLs, and `discover()`, which our
//!   node answers with its own entry instead of leaving the client to its 10 s timeout).
//!
//! Needs `IICP_PEER_PYTHON` (`scripts/peers env`): fails under CI without it, skips
//! elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use iicp_client::{Encryption, ErrorCode, Transport, TransportUsed};
use iicp_conformance::peers::{
    self, python_node, Mesh, OpenAiStub, PeerCx, PeerProcess, Scratch, ECHO_MODEL, PYTHON_VAR,
    STUB_MODEL,
};
use iicp_node::handler::Transport as Arrival;
use iicp_proto::task::ChatMessage;
use serde_json::{json, Value};

const REGISTER_WITHIN: Duration = Duration::from_secs(60);
const PEER_RUN_WITHIN: Duration = Duration::from_secs(90);

fn python() -> Option<PathBuf> {
    match peers::locate(PYTHON_VAR) {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            eprintln!("skipping: {PYTHON_VAR} not set (scripts/peers env prints it)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

use peers::{chat_task, reply};

/// The Python node's discovery entry, once it registered.
async fn python_entry(mesh: &Mesh, node: &mut PeerProcess) -> Value {
    mesh.wait_for_nodes(1, REGISTER_WITHIN, Some(node))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let d = mesh.discover_raw().await.unwrap();
    d["nodes"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_python_node_with_cx() {
    let Some(py) = python() else { return };
    let scratch = Scratch::new("py-node-cx").unwrap();
    let stub = OpenAiStub::start().await.unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (mut node, port) =
        python_node(&py, &scratch, &mesh.url(), &stub.url(), PeerCx::On).unwrap();
    let entry = python_entry(&mesh, &mut node).await;
    assert_eq!(
        entry["transport_endpoint"],
        format!("iicp://127.0.0.1:{port}"),
        "{entry}"
    );
    assert!(entry["cx_public_key"]["key"].is_string(), "{entry}");
    let features = entry["cx_public_key"]["features"].to_string();
    assert!(
        !features.contains("native_cx_v1"),
        "the Python node does not do IICP-CX over native: {entry}"
    );

    // HTTP, IICP-CX on (the default policy)
    let client = mesh.client(Transport::Http, Encryption::Required).unwrap();
    let r = client
        .submit(chat_task("python node over http"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.logs()));
    assert_eq!(r.transport, TransportUsed::Http);
    assert!(r.encrypted, "payload must travel IICP-CX encrypted");
    assert_eq!(reply(&r), "STUB: python node over http", "{:?}", r.response);
    let node_id = r.node_id.clone();
    assert_eq!(entry["node_id"], node_id.as_str());

    // the chat API (OpenAI shape), default QoS interactive: our directory does not gate it
    let c = client
        .chat(vec![ChatMessage::new("user", "hello python node")])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.logs()));
    assert_eq!(c.text(), "STUB: hello python node");
    assert_eq!(c.node_id, node_id);
    assert_eq!(c.model.as_deref(), Some(STUB_MODEL));

    // native preferred or auto: the node advertises transport_endpoint but its key lacks
    // native_cx_v1, so IICP-CX falls back to HTTP instead of downgrading to plaintext
    for transport in [Transport::Native, Transport::Auto] {
        let client = mesh.client(transport, Encryption::Required).unwrap();
        let r = client
            .submit(chat_task(&format!("{transport:?} preferred")))
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}\n{}", node.logs()));
        assert_eq!(r.transport, TransportUsed::Http, "{transport:?}");
        assert!(r.encrypted, "{transport:?}");
        assert_eq!(reply(&r), format!("STUB: {transport:?} preferred").as_str());
    }
    // even with plaintext allowed, a keyed node is never downgraded
    let client = mesh
        .client(Transport::Native, Encryption::AllowPlaintext)
        .unwrap();
    let r = client.submit(chat_task("no downgrade")).await.unwrap();
    assert_eq!(r.transport, TransportUsed::Http);
    assert!(r.encrypted);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_keyless_python_node_native_plaintext() {
    let Some(py) = python() else { return };
    let scratch = Scratch::new("py-node-plain").unwrap();
    let stub = OpenAiStub::start().await.unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (mut node, port) =
        python_node(&py, &scratch, &mesh.url(), &stub.url(), PeerCx::Off).unwrap();
    let entry = python_entry(&mesh, &mut node).await;
    assert!(
        entry.get("cx_public_key").is_none_or(Value::is_null),
        "{entry}"
    );
    assert_eq!(
        entry["transport_endpoint"],
        format!("iicp://127.0.0.1:{port}")
    );

    // the default policy refuses plaintext: the keyless node is skipped
    let err = mesh
        .client(Transport::Auto, Encryption::Required)
        .unwrap()
        .submit(chat_task("refused"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), &ErrorCode::CxRequired, "{err}");

    // plaintext explicitly allowed: the native transport carries it
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
    // and HTTP too
    let r = mesh
        .client(Transport::Http, Encryption::AllowPlaintext)
        .unwrap()
        .submit(chat_task("http plaintext"))
        .await
        .unwrap();
    assert_eq!(r.transport, TransportUsed::Http);
    assert_eq!(reply(&r), "STUB: http plaintext");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_our_node_with_cx() {
    let Some(py) = python() else { return };
    let scratch = Scratch::new("py-client").unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (handle, recorder) = mesh.start_echo_node().await.unwrap();
    let node_id = handle.node().node_id().unwrap();

    // best-effort QoS (py_peer's default) and the SDK's own default (interactive)
    for (prompt, extra) in [
        ("hello from python", None),
        ("hello again, interactive", Some("--sdk-qos")),
    ] {
        let mut args = vec!["chat", "__DIR__", prompt];
        if let Some(e) = extra {
            args.push(e);
        }
        let url = mesh.url();
        let args: Vec<&str> = args
            .into_iter()
            .map(|a| if a == "__DIR__" { url.as_str() } else { a })
            .collect();
        let out = peers::run(
            "py-chat",
            peers::py_peer(&py, &scratch, &args),
            &scratch,
            PEER_RUN_WITHIN,
        )
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "python chat failed: {}\n{}",
            out.stdout,
            out.stderr
        );
        let chat = out.event("chat").expect("chat event");
        assert_eq!(chat["reply"], format!("echo: {prompt}"), "{chat}");
        assert_eq!(chat["node_id"], node_id.as_str());
        assert_eq!(chat["model"], ECHO_MODEL);
    }
    let seen = recorder.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for a in &seen {
        assert_eq!(a.transport, Arrival::Http, "{a:?}");
        assert!(a.encrypted, "the Python client must encrypt: {a:?}");
    }
    handle.stop().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tcp_client_to_our_node_native() {
    let Some(py) = python() else { return };
    let scratch = Scratch::new("py-tcp").unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (handle, recorder) = mesh.start_echo_node().await.unwrap();
    let node_id = handle.node().node_id().unwrap();
    let port = handle.local_addr().port().to_string();

    let out = peers::run(
        "py-tcp-client",
        peers::py_peer(&py, &scratch, &["tcp-client", "127.0.0.1", &port, "3"]),
        &scratch,
        PEER_RUN_WITHIN,
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python tcp client failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    let events = out.json_lines();
    assert_eq!(events[0]["event"], "handshake", "{events:?}");
    assert_eq!(events[0]["peer_node_id"], node_id.as_str());
    assert_eq!(events[1], json!({"event": "pong", "echo": "py-echo"}));
    let calls: Vec<&Value> = events.iter().filter(|e| e["event"] == "call").collect();
    assert_eq!(calls.len(), 3, "{events:?}");
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(
            c["result"]["choices"][0]["message"]["content"],
            format!("echo: py native #{i}"),
            "{c}"
        );
    }
    assert_eq!(events.last().unwrap()["event"], "closed");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen
        .iter()
        .all(|a| a.transport == Arrival::Native && !a.encrypted));
    handle.stop().await;
    mesh.stop().await;
}

/// `IicpTcpClient.discover()` gets our node's own entry at once (issue 16 §4: the
/// DISCOVER used to be dropped and the client waited out its 10 s timeout), and an empty
/// list for an intent the node does not serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tcp_client_discovers_our_node_native() {
    let Some(py) = python() else { return };
    let scratch = Scratch::new("py-tcp-discover").unwrap();
    let mesh = Mesh::start().await.unwrap();
    let (handle, recorder) = mesh.start_echo_node().await.unwrap();
    let node_id = handle.node().node_id().unwrap();
    let port = handle.local_addr().port().to_string();
    for (intent, served) in [
        (peers::CHAT, true),
        ("urn:iicp:intent:llm:embedding:v1", false),
    ] {
        let out = peers::run(
            "py-tcp-discover",
            peers::py_peer(&py, &scratch, &["tcp-discover", "127.0.0.1", &port, intent]),
            &scratch,
            PEER_RUN_WITHIN,
        )
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "python discover failed: {}\n{}",
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
            assert!(nodes[0]["models"].to_string().contains(ECHO_MODEL), "{d}");
        } else {
            assert!(nodes.is_empty(), "{d}");
        }
        assert_eq!(events.last().unwrap()["event"], "closed");
    }
    assert!(recorder.seen().is_empty(), "DISCOVER runs no task");
    handle.stop().await;
    mesh.stop().await;
}

/// The Python SDK's lifecycle client (`IicpTcpClient.stream_call`, which validates the
/// ids, the sequence, the status/event pairs and the finality of every frame) against
/// our streaming node (ADR 0013): it accepts our lifecycle RESPONSEs, the chunks join
/// to the answer, and a base `call()` on the same connection still gets one buffered
/// RESPONSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_stream_call_to_our_streaming_node() {
    let Some(py) = python() else { return };
    let scratch = Scratch::new("py-stream").unwrap();
    let handle = peers::streaming_echo_node().await.unwrap();
    let port = handle.local_addr().port().to_string();
    let task_id = "6f1c1d2e-8a57-4c1e-9d3a-0b1f2e3d4c5b";
    let out = peers::run(
        "py-tcp-stream",
        peers::py_peer(
            &py,
            &scratch,
            &[
                "tcp-stream",
                "127.0.0.1",
                &port,
                task_id,
                "stream me please",
            ],
        ),
        &scratch,
        PEER_RUN_WITHIN,
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python stream_call failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    let events = out.json_lines();
    let frames: Vec<&Value> = events.iter().filter(|e| e["event"] == "frame").collect();
    assert!(frames.len() >= 4, "{events:?}");
    let mut text = String::new();
    for (i, f) in frames.iter().enumerate() {
        let frame = &f["frame"];
        assert_eq!(frame["lifecycle"]["sequence"], i, "{frame}");
        assert_eq!(frame["lifecycle"]["task_id"], task_id);
        assert_eq!(frame["call_id"], "py-attempt-1");
        if let Some(t) = frame["result"]["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    let last = &frames.last().unwrap()["frame"];
    assert_eq!(last["status"], "success");
    assert_eq!(last["lifecycle"]["event"], "completed");
    assert_eq!(text, "echo: stream me please");
    let call = events
        .iter()
        .find(|e| e["event"] == "call")
        .expect("base call");
    assert_eq!(
        call["result"]["choices"][0]["message"]["content"],
        "echo: stream me please"
    );
    handle.stop().await;
}
