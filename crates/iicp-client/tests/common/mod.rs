//! Scripted providers for the client tests: a fake directory and fake nodes built on
//! iicp-transport's router and listener, all on 127.0.0.1:0. They record what they
//! receive (every byte of every connection, and each parsed request) and answer from a
//! script. Everything stops when the test's runtime ends.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_client::time::{Random, SleepFuture, Sleeper};
use iicp_proto::crypto::cx::{open_call, CxKeyPair, IicpConf};
use iicp_proto::crypto::token::{DirectoryKey, DispatchTicketClaims};
use iicp_transport::http::server::{
    json, read_body, serve_connection, HttpServerConfig, Request, Response, Router,
};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::CallHandler;
use iicp_transport::shutdown::{self, Trigger};
use rand_core::OsRng;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

pub const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

// ---------------------------------------------------------------------------------
// Injected time and randomness
// ---------------------------------------------------------------------------------

/// Records requested sleeps and returns at once.
#[derive(Default)]
pub struct RecordingSleeper(pub Mutex<Vec<Duration>>);

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> SleepFuture {
        lock(&self.0).push(d);
        Box::pin(async {})
    }
}

impl RecordingSleeper {
    pub fn sleeps(&self) -> Vec<Duration> {
        lock(&self.0).clone()
    }
}

/// Always returns the same number.
pub struct FixedRandom(pub f64);

impl Random for FixedRandom {
    fn next_f64(&self) -> f64 {
        self.0
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------
// HTTP server with connection counting and byte capture
// ---------------------------------------------------------------------------------

/// A stream that copies every byte it reads into `log`.
struct Tee<S> {
    inner: S,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = buf.filled()[before..].to_vec();
            lock(&self.log).extend_from_slice(&new);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A running HTTP server.
pub struct Server {
    pub addr: SocketAddr,
    /// Accepted TCP connections.
    pub connections: Arc<AtomicUsize>,
    /// Every byte received, all connections concatenated.
    pub bytes: Arc<Mutex<Vec<u8>>>,
    _trigger: Trigger,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&lock(&self.bytes)).into_owned()
    }
}

pub async fn serve(router: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Arc::new(router);
    let connections = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (trigger, shutdown) = shutdown::channel();
    {
        let connections = Arc::clone(&connections);
        let bytes = Arc::clone(&bytes);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let config = HttpServerConfig::default();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, peer)) = accepted else { continue };
                        connections.fetch_add(1, Ordering::SeqCst);
                        let io = Tee { inner: stream, log: Arc::clone(&bytes) };
                        let router = Arc::clone(&router);
                        let config = config.clone();
                        let sd = shutdown.clone();
                        tokio::spawn(async move {
                            serve_connection(io, peer, router, &config, sd).await;
                        });
                    }
                    () = stop.fired() => break,
                }
            }
        });
    }
    Server {
        addr,
        connections,
        bytes,
        _trigger: trigger,
    }
}

/// One request as a handler saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub async fn record(req: &mut Request) -> Recorded {
    let body = read_body(req, 4 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Recorded {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body,
    }
}

// ---------------------------------------------------------------------------------
// Fake node
// ---------------------------------------------------------------------------------

/// What a fake node answers to one task.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 success (encrypted when the request asked for it).
    Ok,
    /// 200 success with this result.
    Result(Value),
    /// This status and JSON body.
    Status(u16, Value),
    /// This status and JSON body, with these headers (`Retry-After`, …).
    Headed(u16, Value, Vec<(&'static str, &'static str)>),
    /// Sleep, then answer `Ok`.
    Sleep(Duration),
    /// 200 success naming another task id.
    WrongTaskId,
    /// 200 plaintext success even when an encrypted answer was required.
    PlainAlways,
    /// ref-py shape: `{"task_id", "status": "completed", ...value}` (plaintext only).
    Spread(Value),
}

pub fn capacity_exceeded() -> Reply {
    Reply::Status(
        429,
        json!({"error": {"code": "capacity_exceeded", "message": "busy", "qos_class": "interactive", "retry_after_ms": 1000, "legacy_code": "IICP-E021"}}),
    )
}

pub fn e021_429() -> Reply {
    Reply::Status(
        429,
        json!({"error": {"code": "IICP-E021", "message": "capacity_exceeded"}}),
    )
}

pub fn status(code: u16) -> Reply {
    let slug = match code {
        400 => "validation_error",
        401 => "unauthorized",
        429 => "rate_limited",
        502 => "backend_error",
        503 => "temporarily_unavailable",
        504 => "task_timeout",
        _ => "internal_error",
    };
    Reply::Status(
        code,
        json!({"error": {"code": slug, "message": format!("scripted {code}")}}),
    )
}

pub struct NodeState {
    pub id: String,
    pub script: Mutex<VecDeque<Reply>>,
    pub calls: Mutex<Vec<Recorded>>,
    pub key: Option<CxKeyPair>,
    /// Plaintext payloads the node saw (decrypted when encrypted).
    pub payloads: Mutex<Vec<Value>>,
}

pub struct FakeNode {
    pub server: Server,
    pub state: Arc<NodeState>,
}

impl FakeNode {
    pub fn calls(&self) -> Vec<Recorded> {
        lock(&self.state.calls).clone()
    }
    pub fn count(&self) -> usize {
        lock(&self.state.calls).len()
    }
    pub fn url(&self) -> String {
        self.server.url()
    }
    pub fn payloads(&self) -> Vec<Value> {
        lock(&self.state.payloads).clone()
    }
    /// The NODELIST entry of this node.
    pub fn entry(&self) -> Value {
        node_entry(&self.state.id, &self.url(), self.state.key.as_ref(), &[])
    }
    pub fn entry_with_features(&self, features: &[&str]) -> Value {
        node_entry(
            &self.state.id,
            &self.url(),
            self.state.key.as_ref(),
            features,
        )
    }
}

pub fn node_entry(id: &str, endpoint: &str, key: Option<&CxKeyPair>, features: &[&str]) -> Value {
    let mut v = json!({
        "node_id": id,
        "endpoint": endpoint,
        "region": "eu-central",
        "score": 0.9,
        "available": true,
        "load": 0.1,
    });
    if let Some(key) = key {
        let mut adv = key.advertisement(None, true);
        for f in features {
            adv.features.push((*f).to_owned());
        }
        v["cx_public_key"] = serde_json::to_value(adv).expect("adv");
    }
    v
}

/// A node id whose first 8 characters are unique per `n`.
pub fn node_id(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

pub async fn fake_node(id: &str, key: Option<CxKeyPair>, script: Vec<Reply>) -> FakeNode {
    let state = Arc::new(NodeState {
        id: id.to_owned(),
        script: Mutex::new(script.into()),
        calls: Mutex::new(Vec::new()),
        key,
        payloads: Mutex::new(Vec::new()),
    });
    let st = Arc::clone(&state);
    let router = Router::new()
        .route(Method::POST, "/v1/task", move |mut req: Request, _p| {
            let st = Arc::clone(&st);
            async move {
                let rec = record(&mut req).await;
                let body = rec.json();
                lock(&st.calls).push(rec);
                let reply = lock(&st.script).pop_front().unwrap_or(Reply::Ok);
                answer(&st, &body, reply).await
            }
        })
        .route(Method::GET, "/iicp/health", |_req, _p| async {
            json(StatusCode::OK, &json!({"status": "ok"}))
        });
    FakeNode {
        server: serve(router).await,
        state,
    }
}

fn chat_result(node: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {node}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    })
}

async fn answer(st: &NodeState, body: &Value, reply: Reply) -> Response {
    let task_id = body["task_id"].as_str().unwrap_or_default().to_owned();
    let intent = body["intent"].as_str().unwrap_or_default().to_owned();
    let (result, plain_always, wrong_id) = match reply {
        Reply::Ok => (chat_result(&st.id), false, false),
        Reply::Result(v) => (v, false, false),
        Reply::Sleep(d) => {
            tokio::time::sleep(d).await;
            (chat_result(&st.id), false, false)
        }
        Reply::WrongTaskId => (chat_result(&st.id), false, true),
        Reply::PlainAlways => (chat_result(&st.id), true, false),
        Reply::Spread(v) => {
            let mut obj = v.as_object().cloned().unwrap_or_default();
            obj.insert("task_id".into(), json!(task_id));
            obj.insert("status".into(), json!("completed"));
            obj.insert("generated_by_ai".into(), json!(true));
            lock(&st.payloads).push(body.get("payload").cloned().unwrap_or(Value::Null));
            return json(StatusCode::OK, &Value::Object(obj));
        }
        Reply::Status(code, v) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json(status, &v);
        }
        Reply::Headed(code, v, headers) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = json(status, &v);
            for (k, val) in headers {
                r.headers_mut()
                    .insert(k, http::HeaderValue::from_static(val));
            }
            return r;
        }
    };
    let mut response_key = None;
    if let Some(conf) = body.get("iicp_conf") {
        let Some(key) = st.key.as_ref() else {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"code": "IICP-CX-01", "message": "no key"}}),
            );
        };
        let opened = IicpConf::from_value(conf).and_then(|c| open_call(key, &c, &task_id, &intent));
        match opened {
            Ok(o) => {
                lock(&st.payloads).push(o.payload_json().unwrap_or(Value::Null));
                response_key = Some(o.response_key().clone());
            }
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": {"code": e.wire_code(), "message": "cx failed"}}),
                )
            }
        }
    } else {
        lock(&st.payloads).push(body.get("payload").cloned().unwrap_or(Value::Null));
    }
    let id = if wrong_id {
        "00000000-0000-4000-8000-000000000001".to_owned()
    } else {
        task_id.clone()
    };
    let full = json!({"task_id": id, "status": "success", "result": result, "generated_by_ai": true, "model_used": "test-model"});
    let wants_encrypted = body["cx_response_encryption"] == "required";
    match response_key {
        Some(rk) if wants_encrypted && !plain_always => {
            let sealed = rk
                .seal(&mut OsRng, &serde_json::to_vec(&full).expect("json"))
                .expect("seal");
            json(
                StatusCode::OK,
                &json!({"task_id": id, "status": "encrypted", "iicp_conf_resp": sealed.to_value()}),
            )
        }
        _ => json(StatusCode::OK, &full),
    }
}

// ---------------------------------------------------------------------------------
// Fake native node (HTTP + native on one port)
// ---------------------------------------------------------------------------------

pub struct NativeNode {
    pub addr: SocketAddr,
    pub http_calls: Arc<Mutex<Vec<Recorded>>>,
    _trigger: Trigger,
}

pub async fn native_node(handler: Arc<dyn CallHandler>) -> NativeNode {
    let http_calls = Arc::new(Mutex::new(Vec::new()));
    let hc = Arc::clone(&http_calls);
    let router = Router::new().route(Method::POST, "/v1/task", move |mut req: Request, _p| {
        let hc = Arc::clone(&hc);
        async move {
            let rec = record(&mut req).await;
            let body = rec.json();
            lock(&hc).push(rec);
            json(
                StatusCode::OK,
                &json!({"task_id": body["task_id"], "status": "success", "result": {"via": "http"}}),
            )
        }
    });
    let listener = Listener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        ListenerConfig::default(),
    )
    .await
    .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, sd) = shutdown::channel();
    tokio::spawn(listener.serve(
        Services {
            http: Some(Arc::new(router)),
            native: Some(handler),
        },
        sd,
    ));
    NativeNode {
        addr,
        http_calls,
        _trigger: trigger,
    }
}

// ---------------------------------------------------------------------------------
// Fake directory
// ---------------------------------------------------------------------------------

/// How the fake directory answers `POST /v1/dispatch/ticket`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tickets {
    /// 404 without a code: not offered.
    Off,
    /// Signed tickets for the listed nodes, in order, honouring exclusions.
    On,
    /// Tickets signed with another key.
    BadSignature,
}

pub struct DirState {
    pub nodes: Mutex<Vec<Value>>,
    pub tickets: Mutex<Tickets>,
    pub key: DirectoryKey,
    pub other_key: DirectoryKey,
    pub origin: Mutex<String>,
    pub calls: Mutex<Vec<Recorded>>,
}

pub struct FakeDirectory {
    pub server: Server,
    pub state: Arc<DirState>,
}

impl FakeDirectory {
    /// The base URL (`…/api`).
    pub fn base(&self) -> String {
        format!("{}/api", self.server.url())
    }
    pub fn calls(&self) -> Vec<Recorded> {
        lock(&self.state.calls).clone()
    }
    pub fn count(&self, path_prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.path.starts_with(path_prefix))
            .count()
    }
    pub fn set_nodes(&self, nodes: Vec<Value>) {
        *lock(&self.state.nodes) = nodes;
    }
}

pub async fn fake_directory(nodes: Vec<Value>, tickets: Tickets) -> FakeDirectory {
    let state = Arc::new(DirState {
        nodes: Mutex::new(nodes),
        tickets: Mutex::new(tickets),
        key: DirectoryKey::generate(&mut OsRng),
        other_key: DirectoryKey::generate(&mut OsRng),
        origin: Mutex::new(String::new()),
        calls: Mutex::new(Vec::new()),
    });
    let s1 = Arc::clone(&state);
    let s2 = Arc::clone(&state);
    let s3 = Arc::clone(&state);
    let s4 = Arc::clone(&state);
    let router = Router::new()
        .route(Method::GET, "/v1/discover", move |mut req: Request, _p| {
            let st = Arc::clone(&s1);
            async move {
                let rec = record(&mut req).await;
                lock(&st.calls).push(rec);
                let nodes = lock(&st.nodes).clone();
                let mut resp = json(StatusCode::OK, &json!({"nodes": nodes, "count": nodes.len(), "query_ms": 1}));
                resp.headers_mut().insert(
                    "cache-control",
                    http::HeaderValue::from_static("public, max-age=5, s-maxage=10"),
                );
                resp
            }
        })
        .route(Method::POST, "/v1/dispatch/ticket", move |mut req: Request, _p| {
            let st = Arc::clone(&s2);
            async move {
                let rec = record(&mut req).await;
                let body = rec.json();
                lock(&st.calls).push(rec);
                ticket(&st, &body)
            }
        })
        .route(Method::GET, "/v1/directory-key", move |mut req: Request, _p| {
            let st = Arc::clone(&s3);
            async move {
                let rec = record(&mut req).await;
                lock(&st.calls).push(rec);
                json(
                    StatusCode::OK,
                    &json!({"public_key": st.key.public_key().to_hex(), "algorithm": "ed25519"}),
                )
            }
        })
        .route(Method::POST, "/v1/consumer-token", move |mut req: Request, _p| {
            let st = Arc::clone(&s4);
            async move {
                let rec = record(&mut req).await;
                let body = rec.json();
                lock(&st.calls).push(rec);
                json(
                    StatusCode::CREATED,
                    &json!({"token": format!("consumer-token-for-{}", body["target_node_id"].as_str().unwrap_or("")), "expires_at": unix_now() + 300}),
                )
            }
        })
        .nest_alias("/api");
    let server = serve(router).await;
    *lock(&state.origin) = server.url();
    FakeDirectory { server, state }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ticket(st: &DirState, body: &Value) -> Response {
    let mode = *lock(&st.tickets);
    if mode == Tickets::Off {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": {"code": "not_found", "message": "no such route"}}),
        );
    }
    let excluded: Vec<String> = body["exclude_node_id_prefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let intent = body["intent"].as_str().unwrap_or_default();
    let nodes = lock(&st.nodes).clone();
    let Some(node) = nodes.into_iter().find(|n| {
        let id = n["node_id"].as_str().unwrap_or_default();
        !excluded.iter().any(|p| id.starts_with(p.as_str()))
    }) else {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": {"code": "no_route_available", "message": "no eligible node"}}),
        );
    };
    let node_id = node["node_id"].as_str().unwrap_or_default().to_owned();
    let origin = lock(&st.origin).clone();
    let claims = DispatchTicketClaims::new(&mut OsRng, &origin, &node_id, intent, unix_now(), 60);
    let key = if mode == Tickets::BadSignature {
        &st.other_key
    } else {
        &st.key
    };
    let token = key.issue(&claims).expect("issue");
    json(
        StatusCode::CREATED,
        &json!({
            "ticket": token,
            "ticket_id_prefix": &claims.jti[..12],
            "expires_at": claims.exp,
            "intent": intent,
            "node_id": node_id,
            "node_id_prefix": &node_id[..8],
            "route": node,
            "algorithm": "ed25519",
            "data_class": "ticketed_route_dispatch",
            "route_fields_present": true,
            "prompt_payload_accepted": false,
        }),
    )
}

/// A client builder for a fake mesh: private endpoints allowed, recording sleeper,
/// fixed random 0.5 (so back-off has no jitter).
pub fn builder(dir: &FakeDirectory, sleeper: Arc<RecordingSleeper>) -> iicp_client::ClientBuilder {
    iicp_client::Client::builder()
        .directory_url(dir.base())
        .allow_private_endpoints(true)
        .sleeper(sleeper)
        .random(Arc::new(FixedRandom(0.5)))
}

pub fn chat_task() -> iicp_client::Task {
    iicp_client::Task::new(
        CHAT,
        json!({"messages": [{"role": "user", "content": "PAYLOAD-MARKER-7f3a"}]}),
    )
}
