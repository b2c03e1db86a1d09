//! The HTTP long-poll worker transport (PROTOCOL.md §14.3; §14.1 rules): for workers
//! that cannot hold a native session (browsers, serverless runtimes).
//!
//! | call | answer |
//! |---|---|
//! | `POST /v1/relay/bind` `{worker_id, intent, models[], bind_ticket?}` | 200 `{session_token, poll_timeout_s, worker_endpoint_path}`; 422 `IICP-E001`; 401 `IICP-E040` (ticket invalid/required); 409 `IICP-E038` (alive session) / `IICP-E040` (replayed); 429/503 `IICP-E039` |
//! | `GET /v1/relay/pull` (Bearer session token; ≤ `poll_timeout`) | 200 `{call_id, task}` or 204 idle; 401 `IICP-E021` |
//! | `POST /v1/relay/result` `{call_id, result}` or `{call_id, event}` | 204; 422 `IICP-E001` |
//! | `POST /v1/relay/unbind` | 204 |
//!
//! Binds go through the same checks as RELAY_BIND (ticket, non-displacement, rate
//! limit, session cap, `jti` replay). A session is alive while a pull is waiting or the
//! last pull ended less than `http_liveness` (90 s) ago. Queues and the pending-call map
//! are bounded; payloads and session tokens are never logged.
//!
//! A task submitted to the worker's lifecycle resources (`…/v1/relay-for/{id}/v1/tasks`,
//! module `stream`) is pulled as `{call_id, task_id, session_id, stream: true, task}`;
//! the worker posts its lifecycle events one by one as `{call_id, event}` and the relay
//! streams them to the caller as they come. A worker that cannot stream may post one
//! `{call_id, result}` instead: the caller gets a buffered answer. An event posted for a
//! call the relay no longer streams (cancelled, ended, timed out) is answered 204 and
//! dropped, like any result for an unknown call (§14.3 has no cancel for long-poll
//! workers: the relay ends the caller's stream and stops listening).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{Method, StatusCode};
use iicp_proto::error::ErrorCode;
use iicp_proto::message::RelayBind;
use iicp_proto::secret::Secret;
use iicp_transport::http::server::{
    json, read_json, HttpError, IntoResponse, PeerAddr, Request, Response,
};
use iicp_transport::http::Router;
use rand_core::RngCore;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{reason, ForwardError, Registry, RelayHandle, Session};

/// Largest bind / result body.
const MAX_CONTROL_BODY: usize = 64 * 1024;

struct Pushed {
    call_id: String,
    task: Value,
    /// A streamed call: its task and session ids.
    stream: Option<(String, String)>,
}

/// What a worker posted for a streamed call.
#[derive(Debug)]
pub(super) enum Posted {
    /// `{call_id, result}`: a buffered answer.
    Result(Value),
    /// `{call_id, event}`: one lifecycle event, as the worker wrote it.
    Event(Value),
}

/// Who waits for a pushed call's answer.
enum Waiter {
    /// A buffered call: its one result.
    Result(oneshot::Sender<Value>),
    /// A streamed call: everything the worker posts for it, in order.
    Stream(mpsc::Sender<Posted>),
}

/// Posts of one streamed call buffered before the worker's `POST /v1/relay/result`
/// waits (back-pressure instead of a drop).
const STREAM_QUEUE: usize = 64;
/// One HTTP long-poll worker session.
pub(super) struct HttpSession {
    token: Secret,
    worker_id: String,
    generation: AtomicU64,
    calls_tx: mpsc::Sender<Pushed>,
    calls_rx: tokio::sync::Mutex<mpsc::Receiver<Pushed>>,
    pending: Mutex<HashMap<String, Waiter>>,
    max_pending: usize,
    last_seen: Mutex<Instant>,
    pulling: AtomicUsize,
    closed: AtomicBool,
    liveness: Duration,
}

impl HttpSession {
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
            || (self.pulling.load(Ordering::Relaxed) == 0
                && self.last_seen.lock().elapsed() > self.liveness)
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        // waiting forwards see their sender dropped and fail
        self.pending.lock().clear();
    }

    fn touch(&self) {
        *self.last_seen.lock() = Instant::now();
    }

    /// Queues `task` for the worker's next pull and waits for its result.
    pub(super) async fn forward(
        &self,
        call_id: String,
        task: &Value,
        timeout: Duration,
    ) -> Result<Value, ForwardError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= self.max_pending {
                return Err(ForwardError::Failed);
            }
            pending.insert(call_id.clone(), Waiter::Result(tx));
        }
        let pushed = Pushed {
            call_id: call_id.clone(),
            task: task.clone(),
            stream: None,
        };
        if self.calls_tx.try_send(pushed).is_err() {
            self.pending.lock().remove(&call_id);
            return Err(ForwardError::Failed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ForwardError::Failed),
            Err(_) => {
                self.pending.lock().remove(&call_id);
                Err(ForwardError::Timeout)
            }
        }
    }

    /// Queues `task` for the worker's next pull as the streamed call `call_id` of
    /// `task_id`, and returns what the worker posts for it (until
    /// [`Self::end_stream`], or the session's end, which closes the receiver).
    pub(super) fn stream(
        &self,
        call_id: &str,
        task_id: &str,
        task: &Value,
    ) -> Result<mpsc::Receiver<Posted>, ForwardError> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        {
            let mut pending = self.pending.lock();
            if pending.len() >= self.max_pending {
                return Err(ForwardError::Failed);
            }
            pending.insert(call_id.to_owned(), Waiter::Stream(tx));
        }
        let pushed = Pushed {
            call_id: call_id.to_owned(),
            task: task.clone(),
            stream: Some((task_id.to_owned(), call_id.to_owned())),
        };
        if self.calls_tx.try_send(pushed).is_err() {
            self.pending.lock().remove(call_id);
            return Err(ForwardError::Failed);
        }
        Ok(rx)
    }

    /// Stops listening for the streamed call `call_id`: later posts for it are dropped.
    pub(super) fn end_stream(&self, call_id: &str) {
        self.pending.lock().remove(call_id);
    }

    /// Hands a worker's post for `call_id` to whoever waits for it; a post nobody
    /// waits for is dropped.
    async fn deliver(&self, call_id: &str, posted: Posted) {
        let stream = {
            let mut pending = self.pending.lock();
            match pending.get(call_id) {
                Some(Waiter::Stream(tx)) => tx.clone(),
                Some(Waiter::Result(_)) => {
                    if let (Posted::Result(v), Some(Waiter::Result(tx))) =
                        (posted, pending.remove(call_id))
                    {
                        let _ = tx.send(v);
                    }
                    // a lifecycle event for a buffered call is ignored
                    return;
                }
                None => return,
            }
        };
        // waits while the caller's side is behind; a closed receiver means the relay
        // stopped listening
        if stream.send(posted).await.is_err() {
            self.end_stream(call_id);
        }
    }
}

fn session_token() -> Secret {
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    Secret::new(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

fn bearer(req: &Request) -> Option<Secret> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Secret::new(token.trim()))
        .filter(|t| !t.is_empty())
}

/// The session holding `req`'s bearer token (compared in constant time).
fn authenticate(registry: &Registry, req: &Request) -> Result<Arc<HttpSession>, HttpError> {
    let refused = || {
        HttpError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::E021,
            "unknown or expired relay session token",
        )
    };
    let token = bearer(req).ok_or_else(refused)?;
    let st = registry.lock();
    st.sessions
        .values()
        .find_map(|b| match &b.session {
            // `Secret`'s equality is constant-time
            Session::Http(s) if s.token == token && !s.closed.load(Ordering::Relaxed) => {
                Some(Arc::clone(s))
            }
            _ => None,
        })
        .ok_or_else(refused)
}

fn refusal(why: &'static str) -> HttpError {
    let (status, code) = match why {
        reason::WORKER_ID_REQUIRED => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::E001),
        reason::TICKET_INVALID | reason::TICKET_REQUIRED => {
            (StatusCode::UNAUTHORIZED, ErrorCode::E040)
        }
        reason::ALREADY_BOUND => (StatusCode::CONFLICT, ErrorCode::E038),
        reason::TICKET_REPLAYED => (StatusCode::CONFLICT, ErrorCode::E040),
        reason::RATE_LIMITED => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::E039),
        _ => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::E039),
    };
    HttpError::new(status, code, why).with_member("reason", why)
}

fn str_field(body: &Value, key: &str) -> Option<String> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

async fn bind(relay: RelayHandle, mut req: Request) -> Result<Response, HttpError> {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let body: Value = read_json(&mut req, MAX_CONTROL_BODY).await?;
    let worker_id = str_field(&body, "worker_id").filter(|w| w.len() <= 128);
    let Some(worker_id) = worker_id else {
        return Err(refusal(reason::WORKER_ID_REQUIRED));
    };
    let models = body.get("models").and_then(Value::as_array).map(|m| {
        m.iter()
            .filter_map(Value::as_str)
            .take(64)
            .map(str::to_owned)
            .collect()
    });
    let bind = RelayBind {
        worker_id: Some(worker_id.clone()),
        intent: str_field(&body, "intent"),
        models,
        bind_ticket: str_field(&body, "bind_ticket").map(Secret::new),
    };
    let registry = &relay.inner;
    let cfg = &registry.config;
    let (calls_tx, calls_rx) = mpsc::channel(cfg.http_queue.max(1));
    let session = Arc::new(HttpSession {
        token: session_token(),
        worker_id: worker_id.clone(),
        generation: AtomicU64::new(0),
        calls_tx,
        calls_rx: tokio::sync::Mutex::new(calls_rx),
        pending: Mutex::new(HashMap::new()),
        max_pending: cfg.http_queue.max(1).saturating_mul(4),
        last_seen: Mutex::new(Instant::now()),
        pulling: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        liveness: cfg.http_liveness,
    });
    let source = peer.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let generation = registry
        .admit(&bind, source, Session::Http(Arc::clone(&session)))
        .map_err(|why| {
            tracing::info!(reason = why, "relay HTTP bind refused");
            refusal(why)
        })?;
    session.generation.store(generation, Ordering::Relaxed);
    tracing::info!("relay HTTP worker bound");
    Ok(json(
        StatusCode::OK,
        &json!({
            "session_token": session.token.expose(),
            "poll_timeout_s": cfg.poll_timeout.as_secs().max(1),
            "worker_endpoint_path": format!("/v1/relay-for/{worker_id}"),
        }),
    ))
}

/// Decrements the pull count and refreshes liveness when a pull ends, however it ends.
struct Pulling<'a>(&'a HttpSession);

impl Drop for Pulling<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.pulling.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn pull(relay: RelayHandle, req: Request) -> Result<Response, HttpError> {
    let session = authenticate(&relay.inner, &req)?;
    session.pulling.fetch_add(1, Ordering::Relaxed);
    session.touch();
    let _guard = Pulling(&session);
    let deadline = tokio::time::Instant::now() + relay.inner.config.poll_timeout;
    let next = async {
        let mut rx = session.calls_rx.lock().await;
        rx.recv().await
    };
    match tokio::time::timeout_at(deadline, next).await {
        Ok(Some(p)) => {
            let body = match p.stream {
                None => json!({"call_id": p.call_id, "task": p.task}),
                Some((task_id, session_id)) => json!({
                    "call_id": p.call_id,
                    "task_id": task_id,
                    "session_id": session_id,
                    "stream": true,
                    "task": p.task,
                }),
            };
            Ok(json(StatusCode::OK, &body))
        }
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn result(relay: RelayHandle, mut req: Request) -> Result<Response, HttpError> {
    let session = authenticate(&relay.inner, &req)?;
    session.touch();
    let body: Value = read_json(&mut req, relay.inner.config.max_body_bytes).await?;
    let incomplete = || {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::E001,
            "`call_id` and `result` (or `event`) are required",
        )
    };
    let call_id = str_field(&body, "call_id").ok_or_else(incomplete)?;
    let posted = match body {
        Value::Object(mut m) => match (m.remove("result"), m.remove("event")) {
            (Some(result), _) => Posted::Result(result),
            (None, Some(event)) => Posted::Event(event),
            (None, None) => return Err(incomplete()),
        },
        _ => return Err(incomplete()),
    };
    session.deliver(&call_id, posted).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn unbind(relay: RelayHandle, req: Request) -> Result<Response, HttpError> {
    let session = authenticate(&relay.inner, &req)?;
    session.close();
    relay.inner.release(
        &session.worker_id,
        session.generation.load(Ordering::Relaxed),
    );
    tracing::info!("relay HTTP worker unbound");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Mounts the long-poll API on `router`.
pub(super) fn routes(relay: &RelayHandle, router: Router) -> Router {
    let (b, p, r, u) = (relay.clone(), relay.clone(), relay.clone(), relay.clone());
    router
        .route_cors(Method::POST, "/v1/relay/bind", move |req, _| {
            bind(b.clone(), req)
        })
        .route_cors(Method::GET, "/v1/relay/pull", move |req, _| {
            pull(p.clone(), req)
        })
        .route_cors(Method::POST, "/v1/relay/result", move |req, _| {
            result(r.clone(), req)
        })
        .route_cors(Method::POST, "/v1/relay/unbind", move |req, _| {
            unbind(u.clone(), req)
        })
}
