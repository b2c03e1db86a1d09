//! Cross-SDK matrix, our own cell: our `Client` → our node through our embedded
//! directory on 127.0.0.1, IICP-CX on, over HTTP and over the native transport
//! (`native_cx_v1`, ADR 0005). The reference row the peer cells are compared with
//! (`docs/interop.md`); needs no peer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iicp_client::{Encryption, Task, Transport, TransportUsed};
use iicp_conformance::peers::{Mesh, CHAT};
use iicp_node::handler::Transport as Arrival;
use iicp_proto::task::Qos;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_our_node_with_cx() {
    let mesh = Mesh::start().await.unwrap();
    let (handle, recorder) = mesh.start_echo_node().await.unwrap();
    let entry = mesh.discover_raw().await.unwrap()["nodes"][0].clone();
    assert!(
        entry["cx_public_key"]["features"]
            .to_string()
            .contains("native_cx_v1"),
        "{entry}"
    );
    for (transport, used, arrival) in [
        (Transport::Http, TransportUsed::Http, Arrival::Http),
        (Transport::Native, TransportUsed::Native, Arrival::Native),
        (Transport::Auto, TransportUsed::Native, Arrival::Native),
    ] {
        let prompt = format!("{transport:?} to our node");
        let r = mesh
            .client(transport, Encryption::Required)
            .unwrap()
            .submit(
                Task::new(
                    CHAT,
                    json!({"messages": [{"role": "user", "content": prompt}]}),
                )
                .with_qos(Qos::BestEffort),
            )
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        assert_eq!(r.transport, used, "{transport:?}");
        assert!(r.encrypted, "{transport:?}");
        assert_eq!(
            r.result()["choices"][0]["message"]["content"],
            format!("echo: {prompt}")
        );
        let last = recorder.seen().pop().unwrap();
        assert_eq!(last.task_id, r.task_id.as_str());
        assert_eq!(last.transport, arrival, "{transport:?}");
        assert!(last.encrypted, "{transport:?}");
    }
    handle.stop().await;
    mesh.stop().await;
}

/// A node that is not open says so in its capabilities (`iicp_auth`), and our client
/// brings the credential it asks for: with its own node identity it obtains a consumer
/// token from the directory and sends it as `X-IICP-Consumer-Token` over HTTP and in key
/// 11 over native; without a usable credential it skips such nodes up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_brings_consumer_tokens_to_a_consumer_mode_node() {
    use iicp_client::{Client, ErrorCode};
    use iicp_node::AuthMode;
    use std::time::Duration;

    let mesh = Mesh::start().await.unwrap();
    let (locked, recorder) = mesh
        .start_echo_node_with(|b| b.auth(AuthMode::Consumer))
        .await
        .unwrap();
    // the caller's identity: another registered node (token mode, so no client without
    // its token picks it)
    let (caller, caller_seen) = mesh
        .start_echo_node_with(|b| b.auth(AuthMode::Token).api_token("caller-only-token-0123"))
        .await
        .unwrap();
    let caller_id = caller.node().node_id().unwrap();
    let caller_token = caller.node().node_token().unwrap();
    let entries = mesh.discover_raw().await.unwrap()["nodes"].clone();
    let modes: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["capabilities"][0]["extensions"]["iicp_auth"]["mode"].to_string())
        .collect();
    assert!(modes.contains(&"\"consumer\"".to_owned()), "{modes:?}");
    let builder = |transport: Transport| {
        Client::builder()
            .directory_url(mesh.url())
            .allow_private_endpoints(true)
            .transport(transport)
            .encryption(Encryption::Required)
            .discovery_cache_ttl(Duration::ZERO)
    };
    for (transport, arrival) in [
        (Transport::Http, Arrival::Http),
        (Transport::Native, Arrival::Native),
    ] {
        let client = builder(transport)
            .node_credentials(caller_id.clone(), caller_token.clone())
            .build()
            .unwrap();
        let r = client
            .submit(iicp_conformance::peers::chat_task("locked"))
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        assert_eq!(r.node_id, locked.node().node_id().unwrap(), "{transport:?}");
        let last = recorder.seen().pop().unwrap();
        assert_eq!(last.transport, arrival, "{transport:?}");
    }
    // no credential at all: both nodes are skipped before any attempt
    let err = builder(Transport::Auto)
        .build()
        .unwrap()
        .submit(iicp_conformance::peers::chat_task("no credential"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable, "{err}");
    assert!(err.to_string().contains("NoCredential: 2"), "{err}");
    assert_eq!(
        recorder.seen().len(),
        2,
        "the locked node saw only the two tasks"
    );
    assert!(caller_seen.seen().is_empty());
    caller.stop().await;
    locked.stop().await;
    mesh.stop().await;
}
