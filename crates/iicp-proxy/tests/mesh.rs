//! The proxy's router in process against the test kit's fake directory and nodes
//! (IICP-CX on): what a node receives for an OpenAI request (tools, image parts, no
//! proxy-local members), tool calls back in OpenAI's shape, and each mesh failure in
//! the OpenAI error shape with its status and IICP code, never the node's own text.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proxy::Proxy;
use iicp_testkit::fake::{
    builder, capacity_exceeded, fake_directory, fake_node, node_id, status, FakeDirectory,
    FakeNode, Reply, Tickets,
};
use iicp_testkit::time::RecordingSleeper;
use iicp_transport::http::server::{Request, RequestBody, Response};
use rand_core::OsRng;
use serde_json::{json, Value};

async fn mesh(scripts: Vec<Vec<Reply>>) -> (Vec<FakeNode>, FakeDirectory) {
    let mut nodes = Vec::new();
    for (i, script) in scripts.into_iter().enumerate() {
        let id = node_id(u32::try_from(i).unwrap() + 1);
        nodes.push(fake_node(&id, Some(CxKeyPair::generate(&mut OsRng)), script).await);
    }
    let entries = nodes
        .iter()
        .map(|n| {
            let mut e = n.entry();
            e["models"] = json!(["test-model"]);
            e
        })
        .collect();
    let dir = fake_directory(entries, Tickets::Off).await;
    (nodes, dir)
}

fn proxy(dir: &FakeDirectory, key: Option<&str>) -> Proxy {
    let client = builder(dir, Arc::new(RecordingSleeper::default()))
        .build()
        .unwrap();
    let mut b = Proxy::builder().client(client).max_body_bytes(64 * 1024);
    if let Some(k) = key {
        b = b.api_key(k);
    }
    b.build().unwrap()
}

async fn call(
    proxy: &Proxy,
    method: Method,
    path: &str,
    body: &[u8],
    key: Option<&str>,
) -> (Response, Bytes) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req: Request = req.body(RequestBody::from(body.to_vec())).unwrap();
    let mut resp = proxy.router().handle(req).await;
    let bytes = std::mem::take(resp.body_mut())
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (resp, bytes)
}

fn chat_body(extra: Value) -> Vec<u8> {
    let mut body =
        json!({"model": "iicp", "messages": [{"role": "user", "content": "PAYLOAD-MARKER-7f3a"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&body).unwrap()
}

fn json_of(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn the_node_gets_the_openai_request_and_tool_calls_come_back() {
    let tool_answer = json!({
        "id": "chatcmpl-x", "object": "chat.completion", "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": "call_abc", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    });
    let (nodes, dir) = mesh(vec![vec![Reply::Result(tool_answer)]]).await;
    let p = proxy(&dir, None);
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let body = json!({
        "model": "test-model",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "weather?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
        "tools": tools, "tool_choice": "auto", "top_p": 0.5, "stream": false,
        "stream_options": {"include_usage": true},
    });
    let (resp, bytes) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        body.to_string().as_bytes(),
        None,
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let v = json_of(&bytes);
    let message = &v["choices"][0]["message"];
    assert_eq!(message["tool_calls"][0]["id"], "call_abc");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"]["total_tokens"], 14);
    assert_eq!(resp.headers()["x-iicp-node-id"], node_id(1).as_str());

    // what the node received (decrypted): the OpenAI members, not the proxy-local ones
    let payload = nodes[0].payloads().pop().unwrap();
    assert_eq!(payload["tools"], tools);
    assert_eq!(payload["tool_choice"], "auto");
    assert_eq!(payload["top_p"], 0.5);
    assert_eq!(payload["model"], "test-model");
    assert_eq!(
        payload["messages"][0]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert!(
        payload.get("stream").is_none() && payload.get("stream_options").is_none(),
        "{payload}"
    );

    // the tool result goes back as a `tool` message
    let body = json!({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}]});
    let (resp, _) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        body.to_string().as_bytes(),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let payload = nodes[0].payloads().pop().unwrap();
    assert_eq!(payload["messages"][2]["tool_call_id"], "call_abc");
    assert_eq!(
        payload["messages"][1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
}

#[tokio::test]
async fn streamed_tool_calls_use_openai_chunks() {
    let tool_answer = json!({"choices": [{"message": {"role": "assistant", "content": null,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
    let (_nodes, dir) = mesh(vec![vec![Reply::Result(tool_answer)]]).await;
    let p = proxy(&dir, None);
    let (resp, bytes) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true})),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks.len(), 3, "start, tool call, finish: {text}");
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "f"
    );
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["tool_calls"][0]["index"],
        0
    );
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn capacity_everywhere_is_429_with_retry_after() {
    let busy = || vec![capacity_exceeded(); 3];
    let (_nodes, dir) = mesh(vec![busy(), busy(), busy()]).await;
    let p = proxy(&dir, None);
    let (resp, bytes) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        &chat_body(json!({})),
        None,
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(resp.headers().contains_key("retry-after"));
    let v = json_of(&bytes);
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "capacity_exceeded");
}

#[tokio::test]
async fn failing_nodes_are_502_without_their_text() {
    let (_nodes, dir) = mesh(vec![vec![status(500)], vec![status(500)]]).await;
    let p = proxy(&dir, None);
    let (resp, bytes) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        &chat_body(json!({})),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["server"], "iicp-proxy");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("scripted"),
        "a node's own text leaked: {text}"
    );
    assert!(
        !text.contains("PAYLOAD-MARKER"),
        "the payload leaked: {text}"
    );
    let v = json_of(&bytes);
    assert_eq!(v["error"]["type"], "api_error");
    assert!(v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(resp.headers().get("x-iicp-generated-by-ai").is_none());
}

#[tokio::test]
async fn local_request_errors() {
    let (_nodes, dir) = mesh(vec![vec![]]).await;
    let p = proxy(&dir, Some("sk-local-key"));
    let key = Some("sk-local-key");
    // bad JSON → 400
    let (resp, bytes) = call(&p, Method::POST, "/v1/chat/completions", b"{nope", key).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&bytes)["error"]["code"], "invalid_json");
    // over the body cap → 413
    let big = chat_body(json!({"user": "x".repeat(70 * 1024)}));
    let (resp, bytes) = call(&p, Method::POST, "/v1/chat/completions", &big, key).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_of(&bytes)["error"]["type"], "invalid_request_error");
    // no key, wrong key → 401; x-api-key works too
    let (resp, _) = call(&p, Method::GET, "/v1/models", b"", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (resp, bytes) = call(&p, Method::GET, "/v1/models", b"", Some("sk-local-kex")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(!String::from_utf8_lossy(&bytes).contains("sk-local"));
    let req: Request = http::Request::builder()
        .uri("/v1/models")
        .header("x-api-key", "sk-local-key")
        .body(RequestBody::empty())
        .unwrap();
    assert_eq!(p.router().handle(req).await.status(), StatusCode::OK);
    // models from the directory; an unknown one is 404 on both routes
    let (resp, bytes) = call(&p, Method::GET, "/v1/models", b"", key).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(&bytes)["data"][0]["id"], "test-model");
    let (resp, _) = call(&p, Method::GET, "/v1/models/test-model", b"", key).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (resp, bytes) = call(&p, Method::GET, "/v1/models/nope", b"", key).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(&bytes)["error"]["code"], "model_not_found");
    let (resp, _) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        &chat_body(json!({"model": "nope"})),
        key,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // an unknown route is an OpenAI-shaped 404 with the proxy's headers
    let (resp, bytes) = call(&p, Method::GET, "/v1/nothing", b"", key).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["server"], "iicp-proxy");
    assert_eq!(resp.headers()["x-iicp-trace-id"].len(), 32);
    assert_eq!(json_of(&bytes)["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn no_nodes_is_502_with_e033() {
    let (_nodes, dir) = mesh(vec![]).await;
    let p = proxy(&dir, None);
    let (resp, bytes) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        &chat_body(json!({})),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json_of(&bytes)["error"]["code"], "IICP-E033");
}

#[tokio::test]
async fn ollama_streams_ndjson_by_default_and_anthropic_errors_are_its_own() {
    let (_nodes, dir) = mesh(vec![vec![]]).await;
    let p = proxy(&dir, None);
    let body = br#"{"model":"test-model","messages":[{"role":"user","content":"hi"}]}"#;
    let (resp, bytes) = call(&p, Method::POST, "/api/chat", body, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = std::str::from_utf8(&bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["message"]["content"],
        format!("hello from {}", node_id(1))
    );
    assert_eq!(lines[1]["done"], true);
    // `iicp` is any model of the mesh
    let (resp, _) = call(&p, Method::POST, "/api/show", br#"{"model":"iicp"}"#, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // an unknown model, in Ollama's and in Anthropic's shape
    let (resp, bytes) = call(&p, Method::POST, "/api/show", br#"{"model":"nope"}"#, None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(json_of(&bytes)["error"]
        .as_str()
        .unwrap()
        .starts_with("model_not_found: "));
    let body = br#"{"model":"nope","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let (resp, bytes) = call(&p, Method::POST, "/v1/messages", body, None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v = json_of(&bytes);
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("not_found_error"))
    );
}

#[tokio::test]
async fn status_and_metrics_report_the_mesh() {
    let (_nodes, dir) = mesh(vec![vec![status(500)], vec![status(500)]]).await;
    let p = proxy(&dir, None);
    let (resp, _) = call(
        &p,
        Method::POST,
        "/v1/chat/completions",
        &chat_body(json!({})),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let (resp, _) = call(&p, Method::GET, "/v1/models", b"", None).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let (resp, bytes) = call(&p, Method::GET, "/status", b"", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json_of(&bytes);
    assert_eq!(v["directory"]["reachable"], true, "{v}");
    assert_eq!(v["nodes"], 2);
    assert_eq!(v["models"], json!(["test-model"]));
    assert_eq!(v["last_errors"][0]["status"], 502, "{v}");
    assert_eq!(v["last_errors"][0]["surface"], "openai");

    let (resp, bytes) = call(&p, Method::GET, "/metrics", b"", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        text.contains(r#"iicp_proxy_requests_total{surface="openai",status="502"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"iicp_proxy_requests_total{surface="openai",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("iicp_proxy_upstream_failures_total{code="),
        "{text}"
    );
    assert!(
        text.contains(r#"iicp_proxy_request_duration_seconds_count{surface="openai"} 2"#),
        "{text}"
    );

    // a directory that does not answer: status says so
    drop(dir);
    p.client().clear_discovery_cache(); // the client caches discovery for a few seconds
    let (_, bytes) = call(&p, Method::GET, "/status", b"", None).await;
    let v = json_of(&bytes);
    assert_eq!(v["directory"]["reachable"], false, "{v}");
    assert!(v["directory"]["error"].is_string(), "{v}");
}
