//! A fast OpenAI-compatible stub model server (`iicp stub-model`): the shared, zero-cost
//! backend of node benchmarks (ours and the other SDKs' nodes), of tests that need a
//! model server, and of demos without one.
//!
//! Answers what nodes send to a model server: `POST /v1/chat/completions` (and
//! `/chat/completions`, `/v1/completions`, `/completions`, Ollama's `/api/chat`,
//! `/v1/embeddings`), `GET /v1/models` (and `/models`), Ollama's `GET /api/tags`, and
//! `GET /health`. `"stream": true` gets the same answer as server-sent events. Every reply
//! is a fixed small completion, after the configured delay. Other paths get a JSON 404
//! and are counted ([`StubModel::request_counts`]).
//!
//! Tool calls, for round trips: a chat completion request with `tools` whose last message
//! is not a `tool` result is answered with a call of the first tool (`id`
//! `call_stub_0`, arguments `{"query": <the last user text>}`, `finish_reason`
//! `tool_calls`; streamed as tool-call deltas); a request whose last message is a `tool`
//! result is answered `tool said: <its content>`.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_transport::http::server::{json_bytes, read_body, Params, Request, Response, Router};
use serde::Deserialize;

/// Most distinct paths counted.
const MAX_PATHS: usize = 64;

/// A stub model server's state: its model name, fixed delay and request counts.
pub struct StubModel {
    delay: Duration,
    model: String,
    completions: AtomicU64,
    counts: Mutex<BTreeMap<String, u64>>,
    /// Paced streaming: this many content tokens, this far apart (`None`: the fixed
    /// three-chunk answer at once).
    pacing: Option<(usize, Duration)>,
    /// Streams whose reader went away before the last chunk.
    disconnects: AtomicU64,
    /// Streamed chunks written.
    streamed_chunks: AtomicU64,
    /// What `/v1/models` and `/api/tags` list (the model alone until
    /// [`StubModel::set_listed`]).
    listed: Mutex<Vec<String>>,
}

impl StubModel {
    /// A stub answering as `model` after `delay`.
    pub fn new(model: impl Into<String>, delay: Duration) -> Arc<Self> {
        let model = model.into();
        Arc::new(Self {
            delay,
            listed: Mutex::new(vec![model.clone()]),
            model,
            completions: AtomicU64::new(0),
            counts: Mutex::new(BTreeMap::new()),
            pacing: None,
            disconnects: AtomicU64::new(0),
            streamed_chunks: AtomicU64::new(0),
        })
    }

    /// A stub whose streamed answers are `tokens` content chunks (`"t0 "`, `"t1 "`, …;
    /// fewer when the request's `max_tokens` says so) written `every` apart, then the
    /// finish chunk with usage and `[DONE]`, as a model server generating tokens does. A reader that leaves early is counted
    /// ([`StubModel::disconnects`]) and the generation stops.
    pub fn paced(model: impl Into<String>, tokens: usize, every: Duration) -> Arc<Self> {
        let mut s = Self::new(model, Duration::ZERO);
        if let Some(m) = Arc::get_mut(&mut s) {
            m.pacing = Some((tokens, every));
        }
        s
    }

    /// Paced streams whose reader disconnected before the end.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    /// Paced chunks written so far.
    pub fn streamed_chunks(&self) -> u64 {
        self.streamed_chunks.load(Ordering::Relaxed)
    }

    /// Requests seen, by `METHOD path` (at most 64 distinct paths are counted).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().clone()
    }

    /// Lists `models` from now on (a model server that loaded or dropped models); the
    /// stub still answers every completion as its own model.
    pub fn set_listed(&self, models: &[&str]) {
        *self.listed.lock() = models.iter().map(|m| (*m).to_owned()).collect();
    }

    /// Completions answered.
    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    /// The routes, to serve with `iicp_transport`'s HTTP server or listener.
    pub fn router(self: &Arc<Self>) -> Router {
        router(self)
    }

    fn count(&self, key: &str) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(key) {
            *n += 1;
        } else if counts.len() < MAX_PATHS {
            counts.insert(key.to_owned(), 1);
        }
    }
}

/// The members of a completion request the stub looks at.
#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    tools: Vec<serde_json::Value>,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
}

/// What a tool-aware chat request asks of the stub.
enum ToolTurn {
    /// Call this tool with these arguments (a JSON text).
    Call { name: String, arguments: String },
    /// Answer after the tool's result.
    Answer(String),
}

/// The message's text: a string content, or its text parts joined.
fn text_of(message: &serde_json::Value) -> String {
    match message.get("content") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

impl CompletionRequest {
    fn tool_turn(&self) -> Option<ToolTurn> {
        let last = self.messages.last()?;
        if last.get("role").and_then(serde_json::Value::as_str) == Some("tool") {
            return Some(ToolTurn::Answer(format!("tool said: {}", text_of(last))));
        }
        let name = self
            .tools
            .first()?
            .pointer("/function/name")?
            .as_str()?
            .to_owned();
        let query = self
            .messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(serde_json::Value::as_str) == Some("user"))
            .map(text_of)
            .unwrap_or_default();
        Some(ToolTurn::Call {
            name,
            arguments: serde_json::json!({ "query": query }).to_string(),
        })
    }
}

/// A chat completion for a tool turn.
fn tool_completion(n: u64, model: &str, turn: &ToolTurn) -> Vec<u8> {
    let (message, finish) = match turn {
        ToolTurn::Call { name, arguments } => (
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_stub_0", "type": "function", "function": {"name": name, "arguments": arguments}}
            ]}),
            "tool_calls",
        ),
        ToolTurn::Answer(text) => (
            serde_json::json!({"role": "assistant", "content": text}),
            "stop",
        ),
    };
    serde_json::json!({
        "id": format!("chatcmpl-stub-{n}"), "object": "chat.completion", "created": 1_767_225_600u64,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    })
    .to_string()
    .into_bytes()
}

/// The same tool turn as server-sent events: the call's name first, its arguments in
/// two pieces, then the finish chunk.
fn tool_sse(model: &str, turn: &ToolTurn) -> Vec<u8> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let c = serde_json::json!({
            "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1_767_225_600u64,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    };
    let mut out = String::new();
    match turn {
        ToolTurn::Call { name, arguments } => {
            let (a, b) = arguments.split_at(arguments.len() / 2);
            out.push_str(&chunk(
                serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": "call_stub_0", "type": "function", "function": {"name": name, "arguments": ""}}
                ]}),
                None,
            ));
            for piece in [a, b] {
                out.push_str(&chunk(
                    serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    None,
                ));
            }
            out.push_str(&chunk(serde_json::json!({}), Some("tool_calls")));
        }
        ToolTurn::Answer(text) => {
            out.push_str(&chunk(
                serde_json::json!({"role": "assistant", "content": text}),
                None,
            ));
            out.push_str(&chunk(serde_json::json!({}), Some("stop")));
        }
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn completion(stub: &StubModel, model: &str, path: &str) -> Vec<u8> {
    let n = stub.completions.fetch_add(1, Ordering::Relaxed);
    let model = serde_json::Value::from(model);
    if path.ends_with("/embeddings") {
        return format!(
            r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3,0.4]}}],"model":{model},"usage":{{"prompt_tokens":4,"total_tokens":4}}}}"#
        )
        .into_bytes();
    }
    if path == "/api/chat" {
        return format!(
            r#"{{"model":{model},"created_at":"2026-01-01T00:00:00Z","message":{{"role":"assistant","content":"stub reply"}},"done":true,"prompt_eval_count":4,"eval_count":2}}"#
        )
        .into_bytes();
    }
    if path.ends_with("/chat/completions") {
        format!(
            r#"{{"id":"chatcmpl-stub-{n}","object":"chat.completion","created":1767225600,"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":"stub reply"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}}}"#
        )
        .into_bytes()
    } else {
        format!(
            r#"{{"id":"cmpl-stub-{n}","object":"text_completion","created":1767225600,"model":{model},"choices":[{{"index":0,"text":"stub reply","finish_reason":"stop"}}],"usage":{{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}}}"#
        )
        .into_bytes()
    }
}

fn sse(model: &str) -> Vec<u8> {
    let model = serde_json::Value::from(model);
    let mut out = String::new();
    for (delta, finish) in [
        (r#"{"role":"assistant","content":"stub "}"#, "null"),
        (r#"{"content":"reply"}"#, "null"),
        ("{}", r#""stop""#),
    ] {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":{model},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        ));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// A paced event stream (see [`StubModel::paced`]).
fn paced(stub: Arc<StubModel>, model: String, tokens: usize, every: Duration) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    tokio::spawn(async move {
        let model = serde_json::Value::from(model);
        let chunk = |delta: &str, finish: &str, usage: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":{model},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]{usage}}}\n\n"
            )
        };
        let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, "null", "")];
        for i in 0..tokens {
            events.push(chunk(&format!(r#"{{"content":"t{i} "}}"#), "null", ""));
        }
        events.push(chunk(
            "{}",
            r#""stop""#,
            &format!(
                r#","usage":{{"prompt_tokens":3,"completion_tokens":{tokens},"total_tokens":{}}}"#,
                tokens + 3
            ),
        ));
        events.push("data: [DONE]\n\n".to_owned());
        let last = events.len() - 1;
        for (i, e) in events.into_iter().enumerate() {
            if i > 1 && i <= tokens + 1 {
                tokio::time::sleep(every).await;
            }
            if tx.send(bytes::Bytes::from(e)).await.is_err() {
                stub.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
            stub.streamed_chunks.fetch_add(1, Ordering::Relaxed);
            if i == last {
                return;
            }
        }
    });
    let mut r = Response::new(iicp_transport::http::server::ResponseBody::channel(rx));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

async fn complete(stub: Arc<StubModel>, mut req: Request) -> Response {
    let path = req.uri().path().to_owned();
    stub.count(&format!("POST {path}"));
    let body = match read_body(&mut req, 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let parsed: CompletionRequest = serde_json::from_slice(&body).unwrap_or(CompletionRequest {
        model: None,
        stream: None,
        max_tokens: None,
        tools: Vec::new(),
        messages: Vec::new(),
    });
    if !stub.delay.is_zero() {
        tokio::time::sleep(stub.delay).await;
    }
    let model = parsed.model.as_deref().unwrap_or(&stub.model);
    if path.ends_with("/chat/completions") {
        if let Some(turn) = parsed.tool_turn() {
            let n = stub.completions.fetch_add(1, Ordering::Relaxed);
            if parsed.stream == Some(true) {
                let mut response = json_bytes(StatusCode::OK, tool_sse(model, &turn).into());
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/event-stream"),
                );
                return response;
            }
            return json_bytes(StatusCode::OK, tool_completion(n, model, &turn).into());
        }
    }
    if parsed.stream == Some(true) && path != "/api/chat" {
        stub.completions.fetch_add(1, Ordering::Relaxed);
        if let Some((tokens, every)) = stub.pacing {
            let model = model.to_owned();
            // a request's `max_tokens` shortens the answer, as a model server's does
            let tokens = parsed.max_tokens.map_or(tokens, |m| m.min(tokens));
            return paced(stub, model, tokens, every);
        }
        let mut response = json_bytes(StatusCode::OK, sse(model).into());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        return response;
    }
    json_bytes(StatusCode::OK, completion(&stub, model, &path).into())
}

fn router(stub: &Arc<StubModel>) -> Router {
    let mut router = Router::new();
    for path in [
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completions",
        "/api/chat",
        "/v1/embeddings",
        "/embeddings",
    ] {
        let s = Arc::clone(stub);
        router = router.route(Method::POST, path, move |req: Request, _p: Params| {
            complete(Arc::clone(&s), req)
        });
    }
    for path in ["/v1/models", "/models"] {
        let s = Arc::clone(stub);
        router = router.route(Method::GET, path, move |req: Request, _p: Params| {
            s.count(&format!("GET {}", req.uri().path()));
            let data: Vec<serde_json::Value> = s
                .listed
                .lock()
                .iter()
                .map(|m| serde_json::json!({"id": m, "object": "model", "created": 1767225600, "owned_by": "stub"}))
                .collect();
            let body = serde_json::json!({"object": "list", "data": data}).to_string();
            async move { json_bytes(StatusCode::OK, body.into_bytes().into()) }
        });
    }
    let s = Arc::clone(stub);
    router = router.route(
        Method::GET,
        "/api/tags",
        move |_req: Request, _p: Params| {
            s.count("GET /api/tags");
            let models: Vec<serde_json::Value> = s
                .listed
                .lock()
                .iter()
                .map(|m| serde_json::json!({"name": m, "model": m, "size": 0, "digest": "stub"}))
                .collect();
            let body = serde_json::json!({"models": models}).to_string();
            async move { json_bytes(StatusCode::OK, body.into_bytes().into()) }
        },
    );
    let s = Arc::clone(stub);
    router = router.route(Method::GET, "/health", move |_req: Request, _p: Params| {
        s.count("GET /health");
        async move { json_bytes(StatusCode::OK, (&br#"{"status":"ok"}"#[..]).into()) }
    });
    for method in [Method::GET, Method::POST] {
        let s = Arc::clone(stub);
        router = router.route(method, "/{*rest}", move |req: Request, _p: Params| {
            s.count(&format!("{} {} (404)", req.method(), req.uri().path()));
            async move {
                iicp_transport::http::server::error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "the stub model server does not serve this path",
                )
            }
        });
    }
    router
}
