//! Streaming from a real model server (issue 19): llama-cpp-python's server with the
//! SmolLM2-135M chat model behind our node (the `llamacpp` adapter), our embedded
//! directory, and our client streaming the chat over HTTP and over native, IICP-CX on.
//!
//! What it shows: the answer arrives in more than one chunk; the chunks arrive spread
//! over the generation (the first long before the last, which a buffered path that
//! only pretends to stream cannot do); the joined text equals the streamed `Done`
//! answer and, with greedy decoding, the buffered answer to the same prompt; the
//! result has the buffered path's shape (`chat.completion`, assistant message, finish
//! reason).
//!
//! Needs `IICP_MODEL_PYTHON` and `IICP_MODEL_GGUF` (set by `scripts/test`); without them
//! the test fails under CI and skips elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use iicp_backends::{BackendConfig, BackendKind};
use iicp_client::{ChatEvent, ChatMessage, ChatOptions, ChatRequest, Client, Transport};
use iicp_directory::{Directory, MemoryStore};
use iicp_node::backend::BackendHandler;
use iicp_node::{Node, ServeOptions};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;

fn options() -> ChatOptions {
    ChatOptions {
        timeout: Some(Duration::from_secs(60)),
        ..ChatOptions::default()
    }
}

/// The chat, greedy and short.
fn request(prompt: &str) -> ChatRequest {
    let mut r = ChatRequest::new(vec![ChatMessage::new("user", prompt)]);
    r.max_tokens = Some(40);
    r.temperature = Some(0.0);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_streams_through_the_mesh_over_http_and_native_with_cx() {
    let Some((py, gguf)) = iicp_testkit::model::from_env() else {
        return;
    };
    let server = iicp_testkit::model::ModelServer::start(&py, &gguf, Some("smollm2"));
    let port = server.port();
    let mut cfg = BackendConfig::new(BackendKind::LlamaCpp);
    cfg.base_url = Some(format!("http://127.0.0.1:{port}/v1"));
    cfg.model = Some("smollm2".into());
    let backend = iicp_backends::build(cfg).expect("backend");
    let start = Instant::now();
    while backend.models().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "model server did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // the embedded directory and one node in front of the model server
    let dir = Directory::builder()
        .private_mesh(true)
        .store(MemoryStore::new())
        .build()
        .await
        .unwrap();
    let dl = Listener::bind((Ipv4Addr::LOCALHOST, 0).into(), ListenerConfig::default())
        .await
        .unwrap();
    let dir_url = format!("http://{}/api", dl.local_addr().unwrap());
    let (_dir_trigger, sd) = shutdown::channel();
    tokio::spawn(async move { dir.serve(dl, sd).await });
    let nl = Listener::bind((Ipv4Addr::LOCALHOST, 0).into(), ListenerConfig::default())
        .await
        .unwrap();
    let addr: SocketAddr = nl.local_addr().unwrap();
    let node = Node::builder()
        .endpoint(format!("http://{addr}"))
        .intent(iicp_client::CHAT_INTENT)
        .model("smollm2")
        .directory_url(dir_url.clone())
        .build()
        .unwrap();
    let handle = node
        .serve(nl, BackendHandler::new(backend), ServeOptions::default())
        .await
        .unwrap();
    let registered = Instant::now();
    while node.node_token().is_none() {
        assert!(
            registered.elapsed() < Duration::from_secs(10),
            "node did not register"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let prompt = "Name three colours of the rainbow.";

    // the buffered answer, for comparison (greedy decoding: the same text)
    // (the client's default encryption is `Required`: every task below is sealed, and
    // the streamed chunks come back sealed one by one)
    let client = Client::builder()
        .directory_url(dir_url.clone())
        .allow_private_endpoints(true)
        .build()
        .unwrap();
    let buffered = client
        .chat_request(request(prompt), options())
        .await
        .expect("buffered chat");
    let buffered_text = buffered.text().into_owned();
    assert!(!buffered_text.trim().is_empty());

    for transport in [Transport::Http, Transport::Native] {
        let client = Client::builder()
            .directory_url(dir_url.clone())
            .allow_private_endpoints(true)
            .transport(transport)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let mut chat = client
            .chat_stream(request(prompt), options())
            .await
            .expect("stream");
        assert!(chat.is_streamed(), "{transport:?}: the node streams");
        let mut arrivals: Vec<(Duration, String)> = Vec::new();
        let mut done = None;
        while let Some(ev) = chat.next().await {
            match ev.expect("event") {
                ChatEvent::Delta(t) if !t.is_empty() => arrivals.push((t0.elapsed(), t)),
                ChatEvent::Done(r) => done = Some(r),
                _ => {}
            }
        }
        let done = done.expect("done");
        assert!(
            arrivals.len() > 3,
            "{transport:?}: {} chunks",
            arrivals.len()
        );
        let text: String = arrivals.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            text,
            done.text(),
            "{transport:?}: the chunks join to the answer"
        );
        assert_eq!(
            text, buffered_text,
            "{transport:?}: greedy decoding, same text"
        );
        // the chunks came as the model generated them: spread over the generation
        let first = arrivals.first().unwrap().0;
        let last = arrivals.last().unwrap().0;
        assert!(
            (last - first) * 4 > last,
            "{transport:?}: first chunk at {first:?}, last at {last:?} — not spread out"
        );
        // the buffered path's shape
        let c = &done.completion;
        assert_eq!(c.object.as_deref(), Some("chat.completion"), "{c:?}");
        let v = serde_json::to_value(c).unwrap();
        assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{v}");
        assert!(v["choices"][0]["finish_reason"].is_string(), "{v}");
        // llama-cpp-python sends no usage chunk (it ignores `stream_options`), so a
        // streamed completion carries usage only from servers that report it
        eprintln!(
            "{transport:?}: {} chunks, first after {first:?}, last after {last:?}",
            arrivals.len()
        );
    }
    handle.stop().await;
}
