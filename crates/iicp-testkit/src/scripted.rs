//! Scripted HTTP peers for the client-side cases: one server type that plays a
//! directory, a node or a misbehaving directory, on 127.0.0.1:0.
//!
//! Each route has a default reply ([`Canned`]) and a queue of scripted replies that are
//! used first, oldest first. Every request is recorded (method, path, headers, body,
//! arrival time: [`Recorded`]) so a case can count attempts, compare trace headers and
//! look for leaked secrets. It runs on the kit's test server ([`crate::server`]) and
//! stops when the [`Scripted`] is dropped.
//!
//! The conformance runner's client-side cases use it (`iicp-conformance`), so it speaks
//! only what any SDK's client sends; [`crate::fake`] has the protocol-aware fakes
//! (IICP-CX, signed dispatch tickets) of `iicp-client`'s own tests.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode};
use iicp_transport::http::server::{json, Request, Response, Router};
use serde_json::{json, Value};

use crate::server::{record, serve, Recorded, Server};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Canned {
    /// Node: 200 `success` echoing the task id, with a chat completion saying
    /// `hello from <label>`.
    TaskOk,
    /// Directory: 200 NODELIST of [`Scripted::set_nodes`].
    Discover,
    /// Directory: 201 with a fresh node id and token (`tok-<n>`, hex-free on purpose).
    Register,
    /// Directory: 200 heartbeat acknowledgement.
    Heartbeat,
    /// This status and JSON body.
    Json(u16, Value),
    /// This status and JSON body with `Retry-After: <secs>`.
    RetryAfter(u16, Value, u64),
    /// This status, content type and raw body.
    Raw(u16, &'static str, Vec<u8>),
    /// A redirect with this status to this path on the same server, or to this absolute
    /// URL when it starts with `http`.
    Redirect(u16, String),
}

/// `(method, path)` of a scripted route.
type RouteKey = (Method, String);
/// A route's queued replies and its default.
type Route = (VecDeque<Canned>, Canned);

#[derive(Default)]
struct State {
    label: String,
    origin: Mutex<String>,
    routes: Mutex<HashMap<RouteKey, Route>>,
    log: Mutex<Vec<Recorded>>,
    nodes: Mutex<Vec<Value>>,
    issued: AtomicUsize,
}

/// Declares the routes of a [`Scripted`] server.
#[derive(Default)]
pub struct ScriptedBuilder {
    label: String,
    routes: Vec<(Method, String, Canned)>,
    alias: Option<String>,
}

impl ScriptedBuilder {
    /// A server named `label` (used in node answers).
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            ..Self::default()
        }
    }

    /// Serves `method path` with `default` once its queue is empty.
    pub fn on(mut self, method: Method, path: &str, default: Canned) -> Self {
        self.routes.push((method, path.to_owned(), default));
        self
    }

    /// Also serves every route under `prefix` (e.g. `/api`).
    pub fn alias(mut self, prefix: &str) -> Self {
        self.alias = Some(prefix.to_owned());
        self
    }

    /// A scripted node: `POST /v1/task` answers [`Canned::TaskOk`], health `ok`.
    pub fn node(label: impl Into<String>) -> Self {
        Self::new(label)
            .on(Method::POST, "/v1/task", Canned::TaskOk)
            .on(
                Method::GET,
                "/iicp/health",
                Canned::Json(200, json!({"status": "ok", "load": 0.0, "active_jobs": 0})),
            )
    }

    /// A scripted directory at `…/api`: discover, register, heartbeat, deregister;
    /// dispatch tickets and consumer tokens answer 404 (not offered).
    pub fn directory() -> Self {
        let not_offered = Canned::Json(
            404,
            json!({"error": {"code": "not_found", "message": "not offered"}}),
        );
        Self::new("directory")
            .on(Method::GET, "/v1/discover", Canned::Discover)
            .on(Method::POST, "/v1/register", Canned::Register)
            .on(Method::POST, "/v1/heartbeat", Canned::Heartbeat)
            .on(
                Method::DELETE,
                "/v1/register",
                Canned::Json(200, json!({"deregistered": true})),
            )
            .on(Method::POST, "/v1/dispatch/ticket", not_offered.clone())
            .on(Method::POST, "/v1/consumer-token", not_offered)
            .on(
                Method::POST,
                "/v1/credits/award",
                Canned::Json(200, json!({"awarded": true})),
            )
            .alias("/api")
    }

    /// Binds and serves.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(self) -> std::io::Result<Scripted> {
        let state = Arc::new(State {
            label: self.label,
            ..State::default()
        });
        let mut router = Router::new();
        for (method, path, default) in self.routes {
            state
                .routes
                .lock()
                .insert((method.clone(), path.clone()), (VecDeque::new(), default));
            let st = Arc::clone(&state);
            let key = (method.clone(), path.clone());
            router = router.route(method, &path, move |req: Request, _p| {
                let st = Arc::clone(&st);
                let key = key.clone();
                async move { answer(&st, key, req).await }
            });
        }
        if let Some(prefix) = &self.alias {
            router = router.nest_alias(prefix);
        }
        let server = serve(router).await?;
        *state.origin.lock() = server.url();
        Ok(Scripted { server, state })
    }
}

/// A running scripted server; stops on drop.
pub struct Scripted {
    server: Server,
    state: Arc<State>,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripted")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl Scripted {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The test server underneath (connections accepted, raw bytes received).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `http://127.0.0.1:PORT/api`, the base a client is given.
    pub fn base(&self) -> String {
        format!("{}/api", self.url())
    }

    /// Queues `replies` on `method path` before its default.
    pub fn script(&self, method: Method, path: &str, replies: impl IntoIterator<Item = Canned>) {
        if let Some((q, _)) = self.state.routes.lock().get_mut(&(method, path.to_owned())) {
            q.extend(replies);
        }
    }

    /// Replaces the default reply of `method path`.
    pub fn set_default(&self, method: Method, path: &str, reply: Canned) {
        if let Some((_, d)) = self.state.routes.lock().get_mut(&(method, path.to_owned())) {
            *d = reply;
        }
    }

    /// Sets the NODELIST of [`Canned::Discover`].
    pub fn set_nodes(&self, nodes: Vec<Value>) {
        *self.state.nodes.lock() = nodes;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().clone()
    }

    /// Requests whose path ends with `suffix` (e.g. `/v1/task`), any method.
    pub fn hits(&self, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.path
                    .split('?')
                    .next()
                    .is_some_and(|p| p.ends_with(suffix))
            })
            .collect()
    }

    /// How many requests hit `suffix`.
    pub fn count(&self, suffix: &str) -> usize {
        self.hits(suffix).len()
    }

    /// A NODELIST entry for this server as a plaintext node with id `node_id`.
    pub fn entry(&self, node_id: &str) -> Value {
        json!({
            "node_id": node_id,
            "endpoint": self.url(),
            "region": "local",
            "score": 0.9,
            "available": true,
            "load": 0.1,
            "intents": [iicp_client::CHAT_INTENT],
        })
    }
}

async fn answer(st: &State, key: RouteKey, mut req: Request) -> Response {
    let rec = record(&mut req).await;
    let reply = {
        let mut routes = st.routes.lock();
        match routes.get_mut(&key) {
            Some((q, d)) => q.pop_front().unwrap_or_else(|| d.clone()),
            None => Canned::Json(
                404,
                json!({"error": {"code": "not_found", "message": "no route"}}),
            ),
        }
    };
    let req_json = rec.json();
    st.log.lock().push(rec);
    render(st, reply, &req_json)
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn render(st: &State, reply: Canned, req: &Value) -> Response {
    match reply {
        Canned::TaskOk => json(
            StatusCode::OK,
            &json!({
                "task_id": req["task_id"],
                "status": "success",
                "result": {
                    "id": "chatcmpl-scripted",
                    "object": "chat.completion",
                    "model": "scripted",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {}", st.label)}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
                },
                "metrics": {"latency_ms": 1, "tokens_used": 4},
                "model_used": "scripted",
            }),
        ),
        Canned::Discover => {
            let nodes = st.nodes.lock().clone();
            let mut r = json(
                StatusCode::OK,
                &json!({"nodes": nodes, "count": nodes.len(), "query_ms": 1}),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static(
                    "public, max-age=5, s-maxage=10, stale-while-revalidate=5",
                ),
            );
            r
        }
        Canned::Register => {
            let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
            json(
                StatusCode::CREATED,
                &json!({
                    "node_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "node_token": format!("tok-{n}"),
                    "node_hmac_key": "scripted-hmac-key",
                }),
            )
        }
        Canned::Heartbeat => json(
            StatusCode::OK,
            &json!({"ok": true, "next_heartbeat_ms": 50}),
        ),
        Canned::Json(code, v) => json(status(code), &v),
        Canned::RetryAfter(code, v, secs) => {
            let mut r = json(status(code), &v);
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Canned::Raw(code, ct, body) => {
            let mut r = iicp_transport::http::server::json_bytes(status(code), body.into());
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        Canned::Redirect(code, path) => {
            let mut r = iicp_transport::http::server::json_bytes(status(code), Vec::new().into());
            let location = if path.starts_with("http") {
                path
            } else {
                format!("{}{path}", st.origin.lock())
            };
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            r
        }
    }
}
