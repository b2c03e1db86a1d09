//! Protocol-aware fakes for `iicp-client`'s tests: a fake directory (discovery, signed
//! dispatch tickets, consumer tokens, its key) and fake nodes (scripted answers, IICP-CX
//! opened and sealed with the node's key), all on the kit's test server
//! ([`crate::server`]) at 127.0.0.1:0. They record what they receive and answer from a
//! script. Everything stops when its value is dropped or the test's runtime ends.
//!
//! [`crate::scripted`] is the protocol-neutral counterpart the conformance runner uses.
//!
//! The constructors ([`fake_node`], [`fake_directory`], [`native_node`]) are test
//! fixtures: they panic when no loopback port can be bound.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_proto::crypto::cx::{open_call, CxKeyPair, IicpConf};
use iicp_proto::crypto::token::{DirectoryKey, DispatchTicketClaims};
use iicp_transport::clock::{Clock, SystemClock};
use iicp_transport::http::server::{json, Request, Response, Router};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::CallHandler;
use iicp_transport::shutdown::{self, Trigger};
use parking_lot::Mutex;
use rand_core::OsRng;
use serde_json::{json, Value};

use crate::server::{record, serve, Recorded, Server};
use crate::time::{FixedRandom, RecordingSleeper};

/// The chat intent URN the fakes and [`chat_task`] use.
pub const CHAT: &str = iicp_client::CHAT_INTENT;

fn internal_error(what: &str) -> Response {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"error": {"code": "internal_error", "message": what}}),
    )
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

/// 429 `capacity_exceeded` with the QoS class, `retry_after_ms` 1000 and the legacy
/// code `IICP-E021` (the current shape).
pub fn capacity_exceeded() -> Reply {
    Reply::Status(
        429,
        json!({"error": {"code": "capacity_exceeded", "message": "busy", "qos_class": "interactive", "retry_after_ms": 1000, "legacy_code": "IICP-E021"}}),
    )
}

/// 429 with the legacy code `IICP-E021` as its code (an older node's shape).
pub fn e021_429() -> Reply {
    Reply::Status(
        429,
        json!({"error": {"code": "IICP-E021", "message": "capacity_exceeded"}}),
    )
}

/// `code` with the protocol error code of that status (`validation_error` for 400,
/// `unauthorized` 401, `rate_limited` 429, `backend_error` 502,
/// `temporarily_unavailable` 503, `task_timeout` 504, else `internal_error`).
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

/// What a [`FakeNode`] knows and has seen.
#[derive(Debug)]
pub struct NodeState {
    /// Its node id.
    pub id: String,
    /// Answers still to give, oldest first; [`Reply::Ok`] once empty.
    pub script: Mutex<VecDeque<Reply>>,
    /// Every `POST /v1/task` so far.
    pub calls: Mutex<Vec<Recorded>>,
    /// Its IICP-CX key pair (`None`: plaintext only).
    pub key: Option<CxKeyPair>,
    /// Plaintext payloads the node saw (decrypted when encrypted).
    pub payloads: Mutex<Vec<Value>>,
}

/// A running fake node: `POST /v1/task` answers from its script, `GET /iicp/health`
/// says `ok`.
#[derive(Debug)]
pub struct FakeNode {
    /// The server it runs on.
    pub server: Server,
    /// What it knows and has seen.
    pub state: Arc<NodeState>,
}

impl FakeNode {
    /// Every task request so far.
    pub fn calls(&self) -> Vec<Recorded> {
        self.state.calls.lock().clone()
    }

    /// How many task requests it got.
    pub fn count(&self) -> usize {
        self.state.calls.lock().len()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The plaintext payloads it saw (decrypted when encrypted).
    pub fn payloads(&self) -> Vec<Value> {
        self.state.payloads.lock().clone()
    }

    /// The NODELIST entry of this node.
    pub fn entry(&self) -> Value {
        node_entry(&self.state.id, &self.url(), self.state.key.as_ref(), &[])
    }

    /// The NODELIST entry of this node, its CX advertisement also listing `features`.
    pub fn entry_with_features(&self, features: &[&str]) -> Value {
        node_entry(
            &self.state.id,
            &self.url(),
            self.state.key.as_ref(),
            features,
        )
    }
}

/// A NODELIST entry for node `id` at `endpoint` (region `eu-central`, score 0.9,
/// available, load 0.1), with the CX advertisement of `key` plus `features` when given.
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
        v["cx_public_key"] = serde_json::to_value(adv).unwrap_or(Value::Null);
    }
    v
}

/// A node id whose first 8 characters are unique per `n`.
pub fn node_id(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

/// Starts a fake node `id` answering `script` in order, then [`Reply::Ok`]; with `key`
/// it opens IICP-CX requests and seals the answer when the client requires it.
///
/// # Panics
/// When no loopback port can be bound.
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
                st.calls.lock().push(rec);
                let reply = st.script.lock().pop_front().unwrap_or(Reply::Ok);
                answer(&st, &body, reply).await
            }
        })
        .route(Method::GET, "/iicp/health", |_req, _p| async {
            json(StatusCode::OK, &json!({"status": "ok"}))
        });
    FakeNode {
        server: serve(router).await.expect("bind a loopback port"),
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
            st.payloads
                .lock()
                .push(body.get("payload").cloned().unwrap_or(Value::Null));
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
                st.payloads
                    .lock()
                    .push(o.payload_json().unwrap_or(Value::Null));
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
        st.payloads
            .lock()
            .push(body.get("payload").cloned().unwrap_or(Value::Null));
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
            let Ok(plain) = serde_json::to_vec(&full) else {
                return internal_error("cannot encode the answer");
            };
            let Ok(sealed) = rk.seal(&mut OsRng, &plain) else {
                return internal_error("cannot seal the answer");
            };
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

/// A running node on iicp-transport's one-port listener: native CALLs go to the
/// handler, `POST /v1/task` answers `{"via": "http"}`. Stops when dropped.
pub struct NativeNode {
    /// The bound address.
    pub addr: SocketAddr,
    /// Every HTTP task request so far.
    pub http_calls: Arc<Mutex<Vec<Recorded>>>,
    _trigger: Trigger,
}

impl std::fmt::Debug for NativeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNode")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts a node whose native CALLs `handler` answers.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn native_node(handler: Arc<dyn CallHandler>) -> NativeNode {
    let http_calls = Arc::new(Mutex::new(Vec::new()));
    let hc = Arc::clone(&http_calls);
    let router = Router::new().route(Method::POST, "/v1/task", move |mut req: Request, _p| {
        let hc = Arc::clone(&hc);
        async move {
            let rec = record(&mut req).await;
            let body = rec.json();
            hc.lock().push(rec);
            json(
                StatusCode::OK,
                &json!({"task_id": body["task_id"], "status": "success", "result": {"via": "http"}}),
            )
        }
    });
    let listener = Listener::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ListenerConfig::default(),
    )
    .await
    .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
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

/// What a [`FakeDirectory`] knows and has seen.
pub struct DirState {
    /// The NODELIST of `GET /v1/discover`, in order.
    pub nodes: Mutex<Vec<Value>>,
    /// How dispatch tickets are answered.
    pub tickets: Mutex<Tickets>,
    /// The directory key (`GET /v1/directory-key`, ticket signatures).
    pub key: DirectoryKey,
    /// The wrong key of [`Tickets::BadSignature`].
    pub other_key: DirectoryKey,
    /// `http://127.0.0.1:PORT`, the tickets' issuer.
    pub origin: Mutex<String>,
    /// Every request so far.
    pub calls: Mutex<Vec<Recorded>>,
}

impl std::fmt::Debug for DirState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirState")
            .field("nodes", &self.nodes.lock().len())
            .field("tickets", &*self.tickets.lock())
            .field("origin", &*self.origin.lock())
            .finish_non_exhaustive()
    }
}

/// A running fake directory at `…/api` (and at the root): `GET /v1/discover`,
/// `POST /v1/dispatch/ticket`, `GET /v1/directory-key`, `POST /v1/consumer-token`.
#[derive(Debug)]
pub struct FakeDirectory {
    /// The server it runs on.
    pub server: Server,
    /// What it knows and has seen.
    pub state: Arc<DirState>,
}

impl FakeDirectory {
    /// The base URL (`…/api`).
    pub fn base(&self) -> String {
        format!("{}/api", self.server.url())
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Recorded> {
        self.state.calls.lock().clone()
    }

    /// How many requests had a path starting with `path_prefix`.
    pub fn count(&self, path_prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.path.starts_with(path_prefix))
            .count()
    }

    /// Replaces the NODELIST.
    pub fn set_nodes(&self, nodes: Vec<Value>) {
        *self.state.nodes.lock() = nodes;
    }
}

/// Starts a fake directory listing `nodes`, answering dispatch tickets as `tickets`
/// says; consumer tokens are `consumer-token-for-<node id>`.
///
/// # Panics
/// When no loopback port can be bound.
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
                st.calls.lock().push(rec);
                let nodes = st.nodes.lock().clone();
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
                st.calls.lock().push(rec);
                ticket(&st, &body)
            }
        })
        .route(Method::GET, "/v1/directory-key", move |mut req: Request, _p| {
            let st = Arc::clone(&s3);
            async move {
                let rec = record(&mut req).await;
                st.calls.lock().push(rec);
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
                st.calls.lock().push(rec);
                json(
                    StatusCode::CREATED,
                    &json!({"token": format!("consumer-token-for-{}", body["target_node_id"].as_str().unwrap_or("")), "expires_at": SystemClock.now_secs() + 300}),
                )
            }
        })
        .nest_alias("/api");
    let server = serve(router).await.expect("bind a loopback port");
    *state.origin.lock() = server.url();
    FakeDirectory { server, state }
}

fn ticket(st: &DirState, body: &Value) -> Response {
    let mode = *st.tickets.lock();
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
    let nodes = st.nodes.lock().clone();
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
    let origin = st.origin.lock().clone();
    let claims = DispatchTicketClaims::new(
        &mut OsRng,
        &origin,
        &node_id,
        intent,
        SystemClock.now_secs(),
        60,
    );
    let key = if mode == Tickets::BadSignature {
        &st.other_key
    } else {
        &st.key
    };
    let Ok(token) = key.issue(&claims) else {
        return internal_error("cannot sign the ticket");
    };
    json(
        StatusCode::CREATED,
        &json!({
            "ticket": token,
            "ticket_id_prefix": claims.jti.get(..12).unwrap_or(&claims.jti),
            "expires_at": claims.exp,
            "intent": intent,
            "node_id": node_id,
            "node_id_prefix": node_id.get(..8).unwrap_or(&node_id),
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

/// A chat task whose user message is the marker `PAYLOAD-MARKER-7f3a` (to look for
/// leaks).
pub fn chat_task() -> iicp_client::Task {
    iicp_client::Task::new(
        CHAT,
        json!({"messages": [{"role": "user", "content": "PAYLOAD-MARKER-7f3a"}]}),
    )
}
