//! Shared fixtures: stub handlers, a node on 127.0.0.1:0, an HTTP client, task bodies.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iicp_node::{HandlerError, Node, NodeBuilder, ServeHandle, ServeOptions, Task, TaskOutput};
use iicp_transport::http::client::{HttpClient, HttpClientConfig, HttpReply};
use serde_json::{json, Value};

pub const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

/// A builder for a local test node.
pub fn builder() -> NodeBuilder {
    Node::builder()
        .endpoint("http://127.0.0.1:9484")
        .intent(CHAT)
        .model("stub-model")
        .region("test")
}

pub async fn serve(node: &Node, handler: impl iicp_node::TaskHandler) -> ServeHandle {
    node.bind_and_serve(
        std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        handler,
        ServeOptions::default().with_register(false),
    )
    .await
    .expect("serve")
}

pub fn http() -> HttpClient {
    let mut cfg = HttpClientConfig::default();
    cfg.request_timeout = Duration::from_secs(20);
    HttpClient::new(cfg).expect("client")
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

pub fn chat_completion(text: &str) -> Value {
    json!({
        "object": "chat.completion",
        "model": "stub-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    })
}

/// Answers with a chat completion echoing the last message; counts calls.
#[derive(Clone, Default)]
pub struct Echo {
    pub calls: Arc<AtomicUsize>,
}

impl Echo {
    pub fn handler(&self) -> impl iicp_node::TaskHandler {
        let calls = Arc::clone(&self.calls);
        move |task: Task| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if let Some(ms) = task.payload.get("sleep_ms").and_then(Value::as_u64) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if task.payload.get("fail").is_some() {
                    return Err(HandlerError::backend("stub backend failure"));
                }
                let text = task.payload["messages"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                Ok::<_, HandlerError>(TaskOutput::new(chat_completion(&format!("echo: {text}"))))
            }
        }
    }

    pub fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

pub fn task_body(task_id: &str, text: &str) -> Value {
    json!({
        "task_id": task_id,
        "intent": CHAT,
        "payload": {"messages": [{"role": "user", "content": text}]},
        "constraints": {"timeout_ms": 10000, "qos": "interactive"}
    })
}

pub fn uuid() -> String {
    iicp_proto::ids::TaskId::generate(&mut rand_core::OsRng).to_string()
}

pub async fn post(client: &HttpClient, addr: SocketAddr, body: &Value) -> HttpReply {
    client
        .post_json(url(addr, "/v1/task"), body)
        .send()
        .await
        .expect("send")
}

pub fn json_of(reply: &HttpReply) -> Value {
    serde_json::from_slice(&reply.body).expect("json body")
}

pub fn code_of(reply: &HttpReply) -> String {
    json_of(reply)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `cond` holds (polling), or panics after 5 s.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A handler that counts its calls and holds every task until the gate opens.
pub fn gated(
    gate: Arc<tokio::sync::Semaphore>,
    calls: Arc<AtomicUsize>,
) -> impl iicp_node::TaskHandler {
    move |_task: Task| {
        let gate = Arc::clone(&gate);
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let _p = gate.acquire().await;
            Ok::<_, HandlerError>(chat_completion("done"))
        }
    }
}
