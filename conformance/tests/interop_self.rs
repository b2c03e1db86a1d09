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
