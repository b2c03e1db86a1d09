//! The relay-accept server (PROTOCOL.md §14.1, §14.2, §14.4, §19 T4, T18, T31;
//! SEED-SDK.md §3.7).
//!
//! Workers connect to the relay accept port (default 9485), send INIT then RELAY_BIND;
//! the relay checks, in order: the bind ticket (signature, audience, subject, expiry;
//! required when configured so), that no alive session holds the `worker_id`
//! (non-displacement), the per-source bind rate limit and the session cap (a rebind of a
//! known worker is exempt from both), and finally consumes the ticket's `jti`. It then
//! answers RELAY_ACK `ok` (with its HTTP port under key 4) or `error` with the reason and
//! closes. A bound session lives while its connection does (idle timeout 90 s; workers
//! PING every 30 s); the relay pushes CALLs down it and reads the RESPONSEs.
//!
//! [`RelayHandle::routes`] adds the HTTP side to the node's router:
//! `POST /v1/relay-for/{worker_id}/v1/task` (forward; 404 `IICP-E030` without an alive
//! session, 502 `IICP-E031` when forwarding fails) and
//! `GET /v1/relay-for/{worker_id}/iicp/health`, and the HTTP long-poll worker API of
//! §14.3 (module `longpoll`): HTTP workers are sessions like native ones, admitted by
//! the same checks. Payloads are never logged, and source addresses are not logged
//! either.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use iicp_proto::crypto::token::{verify_relay_ticket, DirectoryPublicKey};
use iicp_proto::error::ErrorCode;
use iicp_proto::message::{
    Body, Call, Channel, Message, Outcome, Prefer, RelayAck, RelayBind, Response,
};
use iicp_proto::session::Role;
use iicp_transport::http::server::{json, read_json, HttpError};
use iicp_transport::http::Router;
use iicp_transport::native::connection::{self, ConnectionConfig, ConnectionHandle};
use iicp_transport::native::CallContext;
use iicp_transport::shutdown::Shutdown;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::limits::{BindRateLimiter, JtiCache};

mod longpoll;
mod stream;
use super::{RelayError, DEFAULT_RELAY_PORT};

/// RELAY_ACK error reasons (PROTOCOL.md §14.2).
pub mod reason {
    /// The ticket failed verification.
    pub const TICKET_INVALID: &str = "relay bind ticket invalid";
    /// A ticket is required and none was sent.
    pub const TICKET_REQUIRED: &str = "relay bind ticket required";
    /// An alive session holds the worker id.
    pub const ALREADY_BOUND: &str = "worker_id already bound to an alive session";
    /// Too many binds from this source.
    pub const RATE_LIMITED: &str = "relay_bind_rate_limited";
    /// The session cap is reached.
    pub const AT_CAPACITY: &str = "relay at session capacity";
    /// The ticket's `jti` was used before.
    pub const TICKET_REPLAYED: &str = "relay bind ticket replayed";
    /// RELAY_BIND without `worker_id`.
    pub const WORKER_ID_REQUIRED: &str = "worker_id required";
}

/// Settings of a [`RelayServer`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Listen address (default `0.0.0.0:9485`).
    pub listen: SocketAddr,
    /// This relay's node id: the accepted ticket audience besides `"*"`.
    pub relay_node_id: Option<String>,
    /// Directory key that signs bind tickets; without it tickets are not checked.
    pub ticket_key: Option<DirectoryPublicKey>,
    /// Refuse binds without a valid ticket (hard mode).
    pub require_ticket: bool,
    /// Most bound sessions (default 256).
    pub max_sessions: usize,
    /// New binds per source per window (default 30; 0 disables).
    pub bind_rate_limit: u32,
    /// The rate-limit window (default 60 s).
    pub bind_rate_window: Duration,
    /// The node's HTTP port, announced in RELAY_ACK key 4.
    pub http_port: u16,
    /// How long a forwarded task may take (default 120 s).
    pub forward_timeout: Duration,
    /// RELAY_BIND must arrive within this after connect (default 10 s).
    pub bind_timeout: Duration,
    /// Largest task body accepted on the HTTP route (default 4 MiB).
    pub max_body_bytes: usize,
    /// Session settings (server role, relay channel; idle timeout 90 s).
    pub connection: ConnectionConfig,
    /// Longest `GET /v1/relay/pull` wait (§14.3: 25 s).
    pub poll_timeout: Duration,
    /// An HTTP worker that has not pulled for this long is dead (§14.1: 90 s).
    pub http_liveness: Duration,
    /// Tasks queued per HTTP worker before forwarding fails (default 16).
    pub http_queue: usize,
    /// Relayed tasks per source address per `bind_rate_window` (default 600; 0
    /// disables): 429 `rate_limited` beyond.
    pub forward_rate_limit: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let mut connection = ConnectionConfig::server();
        connection.session.role = Role::Server;
        connection.session.channel = Channel::Relay;
        connection.session.idle_timeout = Some(Duration::from_secs(90));
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_RELAY_PORT)),
            relay_node_id: None,
            ticket_key: None,
            require_ticket: false,
            max_sessions: 256,
            bind_rate_limit: 30,
            bind_rate_window: Duration::from_secs(60),
            http_port: iicp_transport::native::DEFAULT_PORT,
            forward_timeout: Duration::from_secs(120),
            bind_timeout: Duration::from_secs(10),
            max_body_bytes: 4 * 1024 * 1024,
            connection,
            poll_timeout: Duration::from_secs(25),
            http_liveness: Duration::from_secs(90),
            http_queue: 16,
            forward_rate_limit: 600,
        }
    }
}

/// Checks the relay accept port against the node's port (§19 T31): they must differ.
///
/// # Errors
/// [`RelayError::PortCollision`] when they are equal.
pub fn check_ports(node_port: u16, relay_port: u16) -> Result<(), RelayError> {
    if relay_port != 0 && node_port == relay_port {
        return Err(RelayError::PortCollision { port: relay_port });
    }
    Ok(())
}

/// Why forwarding a task failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No alive session for the worker (`IICP-E030`, 404).
    #[error("no alive relay session for this worker")]
    NoSession,
    /// The worker did not answer in time (`IICP-E031`, 502).
    #[error("the relayed worker did not answer in time")]
    Timeout,
    /// The session failed or the worker's answer was unusable (`IICP-E031`, 502).
    #[error("forwarding to the relayed worker failed")]
    Failed,
    /// The worker answered the task with a protocol error; passed on as it is.
    #[error("the relayed worker answered with {code} ({status})")]
    Worker {
        /// HTTP status (400–599).
        status: u16,
        /// The worker's error code.
        code: String,
        /// The worker's message.
        message: String,
    },
}

impl ForwardError {
    /// The protocol code for the HTTP answer.
    pub fn code(&self) -> ErrorCode {
        match self {
            ForwardError::NoSession => ErrorCode::E030,
            ForwardError::Timeout | ForwardError::Failed => ErrorCode::E031,
            ForwardError::Worker { code, .. } => ErrorCode::from(code.as_str()),
        }
    }

    fn http(&self) -> HttpError {
        let status = match self {
            ForwardError::NoSession => StatusCode::NOT_FOUND,
            ForwardError::Worker { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        let message = match self {
            ForwardError::Worker { message, .. } => message.clone(),
            other => other.to_string(),
        };
        HttpError::new(status, self.code(), message)
    }
}

/// A bound worker's session: a native relay connection or an HTTP long-poll session.
#[derive(Clone)]
enum Session {
    Native(ConnectionHandle),
    Http(Arc<longpoll::HttpSession>),
}

impl Session {
    fn is_closed(&self) -> bool {
        match self {
            Session::Native(h) => h.is_closed(),
            Session::Http(s) => s.is_closed(),
        }
    }

    fn close(&self) {
        match self {
            Session::Native(h) => h.close(),
            Session::Http(s) => s.close(),
        }
    }
}

struct Bound {
    session: Session,
    generation: u64,
    intent: Option<String>,
    models: Vec<String>,
}

struct State {
    sessions: HashMap<String, Bound>,
    rate: BindRateLimiter,
    /// Relayed tasks per source (the worker's own limiter only sees the relay).
    forward_rate: BindRateLimiter,
    jti: JtiCache,
}

struct Registry {
    config: RelayConfig,
    state: Mutex<State>,
    generation: AtomicU64,
    calls: AtomicU64,
    /// Tasks streamed through the relay (`stream`).
    streams: stream::Streams,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn alive(&self, worker_id: &str) -> Option<Session> {
        let st = self.lock();
        st.sessions
            .get(worker_id)
            .filter(|b| !b.session.is_closed())
            .map(|b| b.session.clone())
    }

    /// Runs the §14.2 checks; on success registers the session and returns its
    /// generation.
    fn admit(
        &self,
        bind: &RelayBind,
        source: IpAddr,
        session: Session,
    ) -> Result<u64, &'static str> {
        let Some(worker_id) = bind.worker_id.as_deref().filter(|w| !w.is_empty()) else {
            return Err(reason::WORKER_ID_REQUIRED);
        };
        let ticket = bind.bind_ticket.as_ref().filter(|t| !t.is_empty());
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = None;
        match (ticket, &self.config.ticket_key) {
            (Some(t), Some(key)) => {
                let audience = self.config.relay_node_id.as_deref().unwrap_or("*");
                match verify_relay_ticket(key, t.expose(), worker_id, audience, now_unix) {
                    Ok(c) => claims = Some(c),
                    Err(e) => {
                        tracing::info!(error = %e, "relay bind ticket rejected");
                        return Err(reason::TICKET_INVALID);
                    }
                }
            }
            (None, _) if self.config.require_ticket => return Err(reason::TICKET_REQUIRED),
            (Some(_), None) if self.config.require_ticket => return Err(reason::TICKET_INVALID),
            (_, _) => {
                tracing::warn!("relay bind accepted without a verified ticket (soft mode)");
            }
        }
        let now = Instant::now();
        let mut st = self.lock();
        let rebind = match st.sessions.get(worker_id) {
            Some(b) if !b.session.is_closed() => return Err(reason::ALREADY_BOUND),
            Some(_) => true,
            None => false,
        };
        if !rebind {
            if !st.rate.allow(source, now) {
                return Err(reason::RATE_LIMITED);
            }
            st.sessions.retain(|_, b| !b.session.is_closed());
            if st.sessions.len() >= self.config.max_sessions {
                return Err(reason::AT_CAPACITY);
            }
        }
        if let Some(c) = &claims {
            if let Some(jti) = &c.jti {
                if !st.jti.consume(jti, c.exp, now_unix) {
                    return Err(reason::TICKET_REPLAYED);
                }
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        st.sessions.insert(
            worker_id.to_owned(),
            Bound {
                session,
                generation,
                intent: bind.intent.clone(),
                models: bind.models.clone().unwrap_or_default(),
            },
        );
        Ok(generation)
    }

    fn release(&self, worker_id: &str, generation: u64) {
        let mut st = self.lock();
        if st
            .sessions
            .get(worker_id)
            .is_some_and(|b| b.generation == generation)
        {
            st.sessions.remove(worker_id);
        }
    }
}

/// A cheap, cloneable handle on the relay's sessions: forwarding and HTTP routes.
#[derive(Clone)]
pub struct RelayHandle {
    inner: Arc<Registry>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("sessions", &self.session_count())
            .finish()
    }
}

impl RelayHandle {
    /// Whether `worker_id` has an alive session.
    pub fn is_bound(&self, worker_id: &str) -> bool {
        self.inner.alive(worker_id).is_some()
    }

    /// Number of alive sessions.
    pub fn session_count(&self) -> usize {
        let st = self.inner.lock();
        st.sessions
            .values()
            .filter(|b| !b.session.is_closed())
            .count()
    }

    /// The per-source limit on relayed tasks.
    fn admit_task(&self, req: &iicp_transport::http::server::Request) -> Result<(), HttpError> {
        let Some(peer) = req
            .extensions()
            .get::<iicp_transport::http::PeerAddr>()
            .map(|p| p.0.ip())
        else {
            return Ok(());
        };
        if self.inner.lock().forward_rate.allow(peer, Instant::now()) {
            Ok(())
        } else {
            Err(HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many relayed tasks; slow down",
            )
            .with_retry_after(Duration::from_secs(1)))
        }
    }

    /// Pushes `task` (the JSON task body) to the worker as a CALL and returns the
    /// worker's JSON result.
    ///
    /// # Errors
    /// [`ForwardError`].
    pub async fn forward(&self, worker_id: &str, task: &Value) -> Result<Value, ForwardError> {
        let session = self.inner.alive(worker_id).ok_or(ForwardError::NoSession)?;
        let n = self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let handle = match session {
            Session::Native(h) => h,
            Session::Http(s) => {
                return s
                    .forward(
                        format!("relay-{n}"),
                        task,
                        self.inner.config.forward_timeout,
                    )
                    .await
            }
        };
        let call = Call {
            call_id: Some(format!("relay-{n}")),
            payload: Some(Body::json(task)),
            ..Call::default()
        };
        let resp = match handle.call(call, self.inner.config.forward_timeout).await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(ForwardError::Timeout),
            Err(e) => {
                tracing::info!(error = %e, "relay forward failed");
                return Err(ForwardError::Failed);
            }
        };
        outcome_of(&resp)
    }

    /// Adds `POST /v1/relay-for/{worker_id}/v1/task`,
    /// `GET /v1/relay-for/{worker_id}/iicp/health` and the HTTP long-poll worker API
    /// (`POST /v1/relay/bind`, `GET /v1/relay/pull`, `POST /v1/relay/result`,
    /// `POST /v1/relay/unbind`, §14.3) to `router`, all with CORS.
    pub fn routes(&self, router: Router) -> Router {
        let task = self.clone();
        let health = self.clone();
        let legacy = self.clone();
        let router = stream::routes(self, router);
        longpoll::routes(self, router)
            .route_cors(Method::POST, "/v1/relay", move |mut req, _params| {
                // legacy `{target_node_id, task}` (§14.4): bound workers only; no peer
                // forwarding
                let relay = legacy.clone();
                async move {
                    relay.admit_task(&req)?;
                    let limit = relay.inner.config.max_body_bytes;
                    let body: Value = read_json(&mut req, limit).await?;
                    let (Some(worker), Some(task)) = (
                        body.get("target_node_id").and_then(Value::as_str),
                        body.get("task"),
                    ) else {
                        return Err(HttpError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            ErrorCode::E001,
                            "`target_node_id` and `task` are required",
                        ));
                    };
                    let result = relay.forward(worker, task).await.map_err(|e| e.http())?;
                    Ok::<_, HttpError>(json(StatusCode::OK, &relay_answer(task, result)))
                }
            })
            .route_cors(
                Method::POST,
                "/v1/relay-for/{worker_id}/v1/task",
                move |mut req, params| {
                    let relay = task.clone();
                    async move {
                        let worker = params.get("worker_id").unwrap_or_default().to_owned();
                        relay.admit_task(&req)?;
                        if !relay.is_bound(&worker) {
                            return Err(ForwardError::NoSession.http());
                        }
                        let limit = relay.inner.config.max_body_bytes;
                        let body: Value = read_json(&mut req, limit).await?;
                        let result = relay.forward(&worker, &body).await.map_err(|e| e.http())?;
                        Ok::<_, HttpError>(json(StatusCode::OK, &relay_answer(&body, result)))
                    }
                },
            )
            .route_cors(
                Method::GET,
                "/v1/relay-for/{worker_id}/iicp/health",
                move |_req, params| {
                    let relay = health.clone();
                    async move {
                        let worker = params.get("worker_id").unwrap_or_default().to_owned();
                        let st = relay.inner.lock();
                        let Some(b) = st.sessions.get(&worker).filter(|b| !b.session.is_closed())
                        else {
                            return Err(ForwardError::NoSession.http());
                        };
                        Ok(json(
                            StatusCode::OK,
                            &json!({
                                "status": "ok",
                                "node_id": worker,
                                "via_relay": true,
                                "models": b.models,
                                "intent": b.intent,
                            }),
                        ))
                    }
                },
            )
    }
}

/// What a worker's (final, buffered) RESPONSE says: its JSON result, or why it failed.
fn outcome_of(resp: &Response) -> Result<Value, ForwardError> {
    match resp.outcome() {
        Outcome::Success(Some(body)) => {
            body.to_json(Prefer::Json).map_err(|_| ForwardError::Failed)
        }
        Outcome::Success(None) => Ok(Value::Object(Map::new())),
        Outcome::Timeout => Err(ForwardError::Worker {
            status: 504,
            code: "task_timeout".to_owned(),
            message: "the relayed worker's task timed out".to_owned(),
        }),
        Outcome::Error {
            code: Some(code),
            status: Some(status),
            message,
        } if (400..600).contains(&status) => Err(ForwardError::Worker {
            status: u16::try_from(status).unwrap_or(502),
            code: code.chars().take(64).collect(),
            message: message
                .unwrap_or("the relayed worker refused the task")
                .chars()
                .take(512)
                .collect(),
        }),
        _ => Err(ForwardError::Failed),
    }
}

/// `{task_id, status: "completed", ...result, generated_by_ai: true}` (§14.4).
fn relay_answer(task: &Value, result: Value) -> Value {
    let mut out = Map::new();
    if let Some(id) = task.get("task_id") {
        out.insert("task_id".into(), id.clone());
    }
    out.insert("status".into(), Value::from("completed"));
    match result {
        Value::Object(m) => out.extend(m),
        other => {
            out.insert("result".into(), other);
        }
    }
    out.insert("generated_by_ai".into(), Value::Bool(true));
    Value::Object(out)
}

/// The relay-accept listener.
pub struct RelayServer {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl RelayServer {
    /// Binds the accept port. Fails when it is taken (§19 T31: the caller advertises
    /// the real port as `relay_accept_port`, or picks another).
    ///
    /// # Errors
    /// [`RelayError::PortInUse`] or [`RelayError::Bind`].
    pub async fn bind(mut config: RelayConfig) -> Result<Self, RelayError> {
        config.connection.session.role = Role::Server;
        config.connection.session.channel = Channel::Relay;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                RelayError::PortInUse {
                    addr: config.listen,
                    source,
                }
            } else {
                RelayError::Bind {
                    addr: config.listen,
                    source,
                }
            }
        })?;
        let max_sources = config.max_sessions.saturating_mul(4).max(64);
        let jti_cap = config.max_sessions.saturating_mul(64).max(4096);
        let registry = Arc::new(Registry {
            state: Mutex::new(State {
                sessions: HashMap::new(),
                rate: BindRateLimiter::new(
                    config.bind_rate_limit,
                    config.bind_rate_window,
                    max_sources,
                ),
                forward_rate: BindRateLimiter::new(
                    config.forward_rate_limit,
                    config.bind_rate_window,
                    max_sources,
                ),
                jti: JtiCache::new(jti_cap),
            }),
            config,
            generation: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            streams: stream::Streams::default(),
        });
        Ok(Self { listener, registry })
    }

    /// The bound address (the real `relay_accept_port` to advertise).
    ///
    /// # Errors
    /// Socket errors.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle for forwarding and routes.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            inner: Arc::clone(&self.registry),
        }
    }

    /// Accepts workers until `shutdown` fires; then closes every session gracefully.
    pub async fn serve(self, shutdown: Shutdown) {
        // bound sessions plus room for handshakes and refusals
        let slots = Arc::new(Semaphore::new(
            self.registry.config.max_sessions.saturating_add(64),
        ));
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "relay accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let registry = Arc::clone(&self.registry);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                session(registry, stream, peer, shutdown).await;
                drop(permit);
            });
        }
        let sessions: Vec<Session> = {
            let st = self.registry.lock();
            st.sessions.values().map(|b| b.session.clone()).collect()
        };
        for s in sessions {
            s.close();
        }
    }
}

async fn session(registry: Arc<Registry>, stream: TcpStream, peer: SocketAddr, shutdown: Shutdown) {
    let _ = stream.set_nodelay(true);
    let (msg_tx, mut msg_rx) = mpsc::channel(4);
    let ctx = CallContext { peer, tls: false };
    let (handle, task) = connection::spawn(
        stream,
        ctx,
        registry.config.connection.clone(),
        None,
        Some(msg_tx),
        shutdown,
    );
    let deadline = tokio::time::Instant::now() + registry.config.bind_timeout;
    let bind = loop {
        match tokio::time::timeout_at(deadline, msg_rx.recv()).await {
            Ok(Some(Message::RelayBind(b))) => break Some(b),
            Ok(Some(other)) => {
                tracing::debug!(msg_type = %other.msg_type(), "relay: message before RELAY_BIND ignored");
            }
            Ok(None) | Err(_) => break None,
        }
    };
    // later messages are of no interest; dropping the receiver makes the actor drop them
    drop(msg_rx);
    let Some(bind) = bind else {
        handle.close();
        let _ = task.await;
        return;
    };
    let worker_id = bind.worker_id.clone().unwrap_or_default();
    match registry.admit(&bind, peer.ip(), Session::Native(handle.clone())) {
        Err(why) => {
            tracing::info!(reason = why, "relay bind refused");
            let _ = handle
                .send(Message::RelayAck(RelayAck {
                    status: Some("error".into()),
                    worker_id: Some(worker_id),
                    reason: Some(why.into()),
                    relay_http_port: None,
                }))
                .await;
            handle.close();
            let _ = task.await;
        }
        Ok(generation) => {
            let ack = RelayAck {
                status: Some("ok".into()),
                worker_id: Some(worker_id.clone()),
                reason: None,
                relay_http_port: Some(u64::from(registry.config.http_port)),
            };
            if handle.send(Message::RelayAck(ack)).await.is_err() {
                registry.release(&worker_id, generation);
                return;
            }
            tracing::info!(
                sessions = registry.lock().sessions.len(),
                "relay worker bound"
            );
            let info = handle.closed().await;
            registry.release(&worker_id, generation);
            tracing::info!(reason = %info.reason, "relay worker session ended");
            let _ = task.await;
        }
    }
}
