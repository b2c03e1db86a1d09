//! [`Proxy`] and [`ProxyBuilder`]: the server, its routes, the API-key check, the
//! limits and the headers every response carries.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, SERVER};
use http::{Method, StatusCode};
use iicp_client::{ChatOptions, ChatRequest, Client, DiscoverOptions, Qos, Secret, CHAT_INTENT};
use iicp_proto::ids::TraceParent;
use iicp_transport::clock::{Clock, SystemClock};
use iicp_transport::http::server::{
    read_body, set_retry_after, Params, Request, Response, ResponseBody, Router,
};
use iicp_transport::listener::{Listener, Services};
use iicp_transport::shutdown::Shutdown;
use rand_core::OsRng;
use serde_json::Value;
use subtle::ConstantTimeEq as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::call::ChatCall;
use crate::events::{ChatEvent, ChatOutcome, Head, Relay};
use crate::failure::{Class, Failure};
use crate::metrics::Metrics;
use crate::models::{is_any, Catalog, MeshModel};
use crate::ollama::{self, Endpoint};
use crate::stream::Renderer;
use crate::{anthropic, openai};

/// The proxy's default port (the port every IICP SDK's compatibility proxy uses).
pub const DEFAULT_PORT: u16 = 9483;
/// The default deadline of one proxied request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);
/// The largest deadline of one proxied request (the protocol's task cap).
pub const MAX_TIMEOUT: Duration = Duration::from_millis(120_000);
/// The default request-body cap (room for a few base64 images).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The default number of requests served at once; more get 429.
pub const DEFAULT_MAX_CONCURRENT: usize = 256;
/// How long the model list is cached by default.
pub const DEFAULT_MODEL_CACHE_TTL: Duration = Duration::from_secs(10);

const X_IICP_GENERATED_BY_AI: HeaderName = HeaderName::from_static("x-iicp-generated-by-ai");
const X_IICP_NODE_ID: HeaderName = HeaderName::from_static("x-iicp-node-id");
const X_IICP_TRACE_ID: HeaderName = HeaderName::from_static("x-iicp-trace-id");
const X_IICP_TASK_ID: HeaderName = HeaderName::from_static("x-iicp-task-id");
/// Rendered pieces of a streamed answer queued for the connection; a slower reader
/// holds the relay (and so the node) back rather than growing a buffer.
const STREAM_QUEUE: usize = 16;
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const SERVER_NAME: HeaderValue = HeaderValue::from_static("iicp-proxy");

/// A configuration the builder refuses, or a failure to serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The configuration is invalid (the message says which setting).
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    /// The mesh client could not be built.
    #[error("invalid proxy configuration: {0}")]
    Client(#[source] iicp_client::Error),
    /// The listener failed.
    #[error("serving the proxy failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds a [`Proxy`]: which mesh (a [`Client`], or a directory URL), the local API
/// key, the deadline, the limits and the routing preferences.
#[derive(Default)]
pub struct ProxyBuilder {
    client: Option<Client>,
    directory_url: Option<String>,
    allow_private_endpoints: bool,
    routing: Option<iicp_client::RoutingPolicy>,
    api_key: Option<Secret>,
    timeout: Option<Duration>,
    max_body_bytes: Option<usize>,
    max_concurrent: Option<usize>,
    model_cache_ttl: Option<Duration>,
    qos: Option<Qos>,
    region: Option<String>,
    min_reputation: Option<f64>,
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("client", &self.client)
            .field("directory_url", &self.directory_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ProxyBuilder {
    /// The mesh client every request goes through (its directory, transport, IICP-CX
    /// policy, endpoint policy, credentials). Without it, a client with the defaults and
    /// [`ProxyBuilder::directory_url`] is built.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The directory of the default client (ignored with [`ProxyBuilder::client`]).
    pub fn directory_url(mut self, url: impl Into<String>) -> Self {
        self.directory_url = Some(url.into());
        self
    }

    /// The routing policy of the default client (PROTOCOL.md §9.4; ignored with
    /// [`ProxyBuilder::client`]): a refusal is answered 403 in each surface's shape.
    pub fn routing_policy(mut self, policy: impl Into<iicp_client::RoutingPolicy>) -> Self {
        self.routing = Some(policy.into());
        self
    }

    /// Lets the default client use loopback and private node endpoints (a dev mesh on
    /// this machine; ignored with [`ProxyBuilder::client`]).
    pub fn allow_private_endpoints(mut self, allow: bool) -> Self {
        self.allow_private_endpoints = allow;
        self
    }

    /// Requires `Authorization: Bearer <key>` or `x-api-key: <key>` on every request.
    pub fn api_key(mut self, key: impl Into<Secret>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The deadline of one request, at most 120 s (default 30 s); past it, 504.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The request-body cap (default 8 MiB); larger bodies get 413.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// Requests served at once (default 256); more get 429 with `Retry-After`.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// How long the mesh's model list is cached (default 10 s).
    pub fn model_cache_ttl(mut self, ttl: Duration) -> Self {
        self.model_cache_ttl = Some(ttl);
        self
    }

    /// The QoS class of chats (default `interactive`).
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = Some(qos);
        self
    }

    /// The preferred region (a preference, not an exclusion).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The minimum node reputation, 0–1.
    pub fn min_reputation(mut self, min: f64) -> Self {
        self.min_reputation = Some(min);
        self
    }

    /// Builds the proxy.
    ///
    /// # Errors
    /// [`ProxyError::Config`] for a timeout of zero or over 120 s, a body cap or
    /// concurrency of zero, a minimum reputation outside 0–1, an empty API key;
    /// [`ProxyError::Client`] when the default client cannot be built.
    pub fn build(self) -> Result<Proxy, ProxyError> {
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(ProxyError::Config(format!(
                "the timeout must be from 1 to {} ms",
                MAX_TIMEOUT.as_millis()
            )));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_concurrent = self.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
        if max_body_bytes == 0 || max_concurrent == 0 {
            return Err(ProxyError::Config(
                "the body cap and the concurrency limit must be at least 1".into(),
            ));
        }
        if let Some(m) = self.min_reputation {
            if !(0.0..=1.0).contains(&m) {
                return Err(ProxyError::Config(
                    "the minimum reputation must be from 0 to 1".into(),
                ));
            }
        }
        if self.api_key.as_ref().is_some_and(Secret::is_empty) {
            return Err(ProxyError::Config("the API key is empty".into()));
        }
        let client = match self.client {
            Some(c) => c,
            None => {
                let mut b = Client::builder()
                    .allow_private_endpoints(self.allow_private_endpoints)
                    .timeout(timeout);
                if let Some(policy) = self.routing {
                    b = b.routing_policy(policy);
                }
                if let Some(url) = self.directory_url {
                    b = b.directory_url(url);
                }
                b.build().map_err(ProxyError::Client)?
            }
        };
        let region = self.region.filter(|r| !r.is_empty());
        let route = DiscoverOptions {
            region: region.clone(),
            qos: self.qos,
            min_reputation: self.min_reputation,
            ..DiscoverOptions::default()
        };
        let catalog = Catalog::new(
            client.clone(),
            route.clone(),
            self.model_cache_ttl.unwrap_or(DEFAULT_MODEL_CACHE_TTL),
        );
        Ok(Proxy {
            state: Arc::new(State {
                client,
                route,
                metrics: Metrics::new(),
                started: Instant::now(),
                catalog,
                api_key: self.api_key,
                timeout,
                max_body_bytes,
                permits: Arc::new(Semaphore::new(max_concurrent)),
                qos: self.qos,
                region,
                min_reputation: self.min_reputation,
            }),
        })
    }
}

/// The IICP compatibility proxy: the mesh as a local OpenAI-compatible endpoint.
///
/// Cheap to clone (one shared state). Serve it on a bound listener with
/// [`Proxy::serve`], or mount [`Proxy::router`] in a server of your own.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<State>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("client", &self.state.client)
            .field(
                "api_key",
                &self.state.api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.state.timeout)
            .field("max_body_bytes", &self.state.max_body_bytes)
            .finish_non_exhaustive()
    }
}

struct State {
    client: Client,
    route: DiscoverOptions,
    metrics: Metrics,
    started: Instant,
    catalog: Catalog,
    api_key: Option<Secret>,
    timeout: Duration,
    max_body_bytes: usize,
    permits: Arc<Semaphore>,
    qos: Option<Qos>,
    region: Option<String>,
    min_reputation: Option<f64>,
}

/// What a handler produced: a response, and what the headers should say.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Body,
    /// Set when a chat answered.
    outcome: Option<Answered>,
}

/// The body of a reply.
enum Body {
    /// Complete bytes.
    Full(Bytes),
    /// A streamed answer: the connection reads `rx`; `pump` (run on its own task)
    /// relays the node's events into it.
    Stream {
        rx: mpsc::Receiver<Bytes>,
        pump: Pump,
    },
}

/// The relay of a streamed answer, run after the response head is sent.
type Pump = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Who answered a chat (the headers of an answer).
struct Answered {
    node_id: String,
    task_id: String,
    /// The mesh trace id, when known (a streamed answer's is not, before its end).
    trace_id: Option<String>,
}

impl Reply {
    fn json(status: StatusCode, value: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: Body::Full(Bytes::from(value.to_string())),
            outcome: None,
        }
    }

    /// An answered chat, as JSON.
    fn answer(outcome: &ChatOutcome, value: &Value) -> Self {
        Self {
            outcome: Some(Answered {
                node_id: outcome.node_id.clone(),
                task_id: outcome.id.clone(),
                trace_id: Some(outcome.trace_id.clone()),
            }),
            ..Self::json(StatusCode::OK, value)
        }
    }
}

/// Which API's shapes a route answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    OpenAi,
    Anthropic,
    Ollama,
    /// `/status`, `/metrics` and unknown routes (errors in OpenAI's shape).
    Proxy,
}

impl Surface {
    /// The `surface` label of the metrics.
    fn label(self) -> &'static str {
        match self {
            Surface::OpenAi => "openai",
            Surface::Anthropic => "anthropic",
            Surface::Ollama => "ollama",
            Surface::Proxy => "proxy",
        }
    }

    fn failure(self, f: &Failure) -> Reply {
        let body = match self {
            Surface::OpenAi | Surface::Proxy => openai::error(f),
            Surface::Anthropic => anthropic::error(f),
            Surface::Ollama => ollama::error(f),
        };
        Reply::json(f.status, &body)
    }
}

impl Proxy {
    /// A builder with the defaults.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// The mesh client the proxy uses.
    pub fn client(&self) -> &Client {
        &self.state.client
    }

    /// The routes: OpenAI's `POST /v1/chat/completions`, `GET /v1/models`,
    /// `GET /v1/models/{id}`; Anthropic's `POST /v1/messages` (and its model list on
    /// `GET /v1/models` with `anthropic-version`); Ollama's `POST /api/chat`,
    /// `POST /api/generate`, `GET /api/tags`, `GET /api/version`, `POST /api/show`;
    /// `GET /status` and `GET /metrics`; anything else is a 404 in OpenAI's error
    /// shape. Every route checks the API key (when one is set) and the concurrency
    /// limit.
    pub fn router(&self) -> Arc<Router> {
        let mut router = Router::new();
        router = self.add(
            router,
            Method::POST,
            "/v1/chat/completions",
            Surface::OpenAi,
            |s, mut req, _| async move {
                let call = openai::parse_chat(&read(&s, &mut req).await?)?;
                if call.stream {
                    let include_usage = call.include_usage;
                    return streamed(s, Surface::OpenAi, call, Renderer::OpenAi { include_usage })
                        .await;
                }
                let outcome = s.chat(call.request, call.model).await?;
                Ok(Reply::answer(&outcome, &openai::completion(&outcome)))
            },
        );
        router = self.add(
            router,
            Method::POST,
            "/v1/messages",
            Surface::Anthropic,
            |s, mut req, _| async move {
                let call = anthropic::parse_messages(&read(&s, &mut req).await?)?;
                if call.stream {
                    let renderer = Renderer::Anthropic(anthropic::StreamState::default());
                    return streamed(s, Surface::Anthropic, call, renderer).await;
                }
                let outcome = s.chat(call.request, call.model).await?;
                Ok(Reply::answer(&outcome, &anthropic::message(&outcome)))
            },
        );
        for (path, endpoint) in [
            ("/api/chat", Endpoint::Chat),
            ("/api/generate", Endpoint::Generate),
        ] {
            router = self.add(
                router,
                Method::POST,
                path,
                Surface::Ollama,
                move |s, mut req, _| async move {
                    let body = read(&s, &mut req).await?;
                    let call = match endpoint {
                        Endpoint::Chat => ollama::parse_chat(&body)?,
                        Endpoint::Generate => ollama::parse_generate(&body)?,
                    };
                    if endpoint == Endpoint::Generate && ollama::is_load_only(&body) {
                        let model = call.model.unwrap_or_else(|| "iicp".to_owned());
                        return Ok(Reply::json(
                            StatusCode::OK,
                            &ollama::loaded(&model, SystemClock.now_secs()),
                        ));
                    }
                    if call.stream {
                        let renderer = Renderer::Ollama(endpoint);
                        return streamed(s, Surface::Ollama, call, renderer).await;
                    }
                    let outcome = s.chat(call.request, call.model).await?;
                    Ok(Reply::answer(&outcome, &ollama::answer(&outcome, endpoint)))
                },
            );
        }
        router = self.add(
            router,
            Method::GET,
            "/api/tags",
            Surface::Ollama,
            |s, _, _| async move {
                let list = s
                    .catalog
                    .models()
                    .await
                    .map_err(|e| Failure::from_client(&e))?;
                Ok(Reply::json(StatusCode::OK, &ollama::tags(&list)))
            },
        );
        router = self.add(
            router,
            Method::GET,
            "/api/version",
            Surface::Ollama,
            |_, _, _| async move {
                Ok(Reply::json(
                    StatusCode::OK,
                    &serde_json::json!({"version": ollama::VERSION}),
                ))
            },
        );
        router = self.add(
            router,
            Method::POST,
            "/api/show",
            Surface::Ollama,
            |s, mut req, _| async move {
                let model = ollama::show_model(&read(&s, &mut req).await?)?;
                let list = s
                    .catalog
                    .models()
                    .await
                    .map_err(|e| Failure::from_client(&e))?;
                if is_any(Some(&model)) {
                    // `iicp`: any model of the mesh
                    let nodes = list.iter().map(|m| m.nodes).sum();
                    let any = MeshModel { id: model, nodes };
                    return Ok(Reply::json(StatusCode::OK, &ollama::show(&any)));
                }
                match list.iter().find(|m| m.id == model) {
                    Some(m) => Ok(Reply::json(StatusCode::OK, &ollama::show(m))),
                    None => Err(Failure::unknown_model(&model)),
                }
            },
        );
        router = self.add(
            router,
            Method::GET,
            "/status",
            Surface::Proxy,
            |s, _, _| async move { Ok(Reply::json(StatusCode::OK, &s.status().await)) },
        );
        router = self.add(
            router,
            Method::GET,
            "/metrics",
            Surface::Proxy,
            |s, _, _| async move {
                Ok(Reply {
                    status: StatusCode::OK,
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body: Body::Full(Bytes::from(s.metrics.render())),
                    outcome: None,
                })
            },
        );
        // one path, two APIs: Anthropic's clients send `anthropic-version`
        router = self.add(
            router,
            Method::GET,
            "/v1/models",
            Surface::OpenAi,
            |s, req, _| async move {
                let list = s
                    .catalog
                    .models()
                    .await
                    .map_err(|e| Failure::from_client(&e))?;
                let body = if req.headers().contains_key(ANTHROPIC_VERSION) {
                    anthropic::models(&list)
                } else {
                    openai::models(&list)
                };
                Ok(Reply::json(StatusCode::OK, &body))
            },
        );
        router = self.add(
            router,
            Method::GET,
            "/v1/models/{id}",
            Surface::OpenAi,
            |s, _, p| async move {
                let id = p.get("id").unwrap_or_default().to_owned();
                let list = s
                    .catalog
                    .models()
                    .await
                    .map_err(|e| Failure::from_client(&e))?;
                match list.iter().find(|m| m.id == id) {
                    Some(m) => Ok(Reply::json(StatusCode::OK, &openai::model(m))),
                    None => Err(Failure::unknown_model(&id)),
                }
            },
        );
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            router = self.add(
                router,
                method,
                "/{*rest}",
                Surface::Proxy,
                |_, _, _| async move { Err::<Reply, _>(Failure::no_route()) },
            );
        }
        Arc::new(router)
    }

    /// Adds one route: limits, API key, the handler, the surface's error shape, the
    /// headers.
    fn add<F, Fut>(
        &self,
        router: Router,
        method: Method,
        pattern: &str,
        surface: Surface,
        f: F,
    ) -> Router
    where
        F: Fn(Arc<State>, Request, Params) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Reply, Failure>> + Send + 'static,
    {
        let state = Arc::clone(&self.state);
        let f = Arc::new(f);
        router.route(method, pattern, move |req: Request, params: Params| {
            let state = Arc::clone(&state);
            let f = Arc::clone(&f);
            async move {
                let started = Instant::now();
                state.metrics.in_flight(1);
                let permit = Arc::clone(&state.permits).try_acquire_owned();
                let (result, permit) = match permit {
                    Err(_) => (Err(Failure::busy()), None),
                    Ok(permit) => match state.authorize(&req) {
                        Err(failure) => (Err(failure), Some(permit)),
                        Ok(()) => (f(Arc::clone(&state), req, params).await, Some(permit)),
                    },
                };
                if let Err(f) = &result {
                    state.record_failure(surface, f);
                }
                let (response, pump) = finish(surface, result);
                state.metrics.request(
                    surface.label(),
                    response.status().as_u16(),
                    started.elapsed(),
                );
                match pump {
                    // a streamed answer holds its permit and counts in flight to its end
                    Some(pump) => {
                        tokio::spawn(relay_to_end(Arc::clone(&state), pump, permit));
                    }
                    None => {
                        drop(permit);
                        state.metrics.in_flight(-1);
                    }
                }
                response
            }
        })
    }

    /// Serves on `listener` until `shutdown` fires (in-flight requests finish within
    /// the listener's drain timeout).
    ///
    /// # Errors
    /// [`ProxyError::Io`] when the listener fails.
    pub async fn serve(
        &self,
        mut listener: Listener,
        shutdown: Shutdown,
    ) -> Result<(), ProxyError> {
        let cfg = listener.config_mut();
        cfg.http.max_body_bytes = cfg.http.max_body_bytes.max(self.state.max_body_bytes);
        let services = Services {
            http: Some(self.router()),
            native: None,
        };
        listener.serve(services, shutdown).await?;
        Ok(())
    }
}

/// Runs a streamed answer's relay, then releases what the request held.
async fn relay_to_end(state: Arc<State>, pump: Pump, permit: Option<OwnedSemaphorePermit>) {
    pump.await;
    drop(permit);
    state.metrics.in_flight(-1);
}

/// A streamed chat: the node's deltas relayed to the client as they arrive, in the
/// surface's chunk format. Everything up to the node's first event is answered as a
/// normal response (a failure gets the surface's error status and body); after it, the
/// head is sent and a failure is the surface's in-stream error, never a success. The
/// client going away drops the chat stream, which cancels the task on the node.
async fn streamed(
    state: Arc<State>,
    surface: Surface,
    call: ChatCall,
    mut renderer: Renderer,
) -> Result<Reply, Failure> {
    let (request, options, model) = state.prepare(call.request, call.model).await?;
    let started = tokio::time::timeout(state.timeout, state.client.chat_stream(request, options));
    let mut chat = match started.await {
        Err(_) => return Err(Failure::deadline()),
        Ok(Err(e)) => return Err(state.failed(&e)),
        Ok(Ok(chat)) => chat,
    };
    // the first event before the head: nothing has been sent if it is a failure
    let first = match chat.next().await {
        Some(Ok(event)) => event,
        Some(Err(e)) => return Err(state.failed(&e)),
        None => return Err(Failure::stream_ended()),
    };
    let now = SystemClock.now_secs();
    let head = Head {
        id: chat.task_id().as_str().to_owned(),
        model: model.clone().unwrap_or_else(|| "iicp".to_owned()),
        created: now,
    };
    let answered = Answered {
        node_id: chat.node_id().to_owned(),
        task_id: head.id.clone(),
        trace_id: Some(chat.traceparent().trace_id_hex()),
    };
    let content_type = renderer.content_type();
    let mut relay = Relay::new(model);
    let mut out = BytesMut::with_capacity(1024);
    renderer.event(&mut out, &head, &ChatEvent::Start);
    for event in relay.push(first, now) {
        renderer.event(&mut out, &head, &event);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let pump = Box::pin(async move {
        loop {
            if !out.is_empty() && tx.send(out.split().freeze()).await.is_err() {
                return; // the client went away: dropping `chat` cancels the node's task
            }
            if relay.is_done() {
                return;
            }
            let next = tokio::select! {
                biased;
                () = tx.closed() => return,
                next = chat.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    for event in relay.push(event, SystemClock.now_secs()) {
                        renderer.event(&mut out, &head, &event);
                    }
                }
                Some(Err(e)) => {
                    let failure = state.failed(&e);
                    state.record_failure(surface, &failure);
                    renderer.error(&mut out, &failure);
                    let _ = tx.send(out.split().freeze()).await;
                    return;
                }
                None => {
                    renderer.error(&mut out, &Failure::stream_ended());
                    let _ = tx.send(out.split().freeze()).await;
                    return;
                }
            }
        }
    });
    Ok(Reply {
        status: StatusCode::OK,
        content_type,
        body: Body::Stream { rx, pump },
        outcome: Some(answered),
    })
}

impl State {
    /// Counts a mesh failure (upstream, timeout, capacity) in the metrics.
    fn record_failure(&self, surface: Surface, f: &Failure) {
        if matches!(f.class, Class::Upstream | Class::Timeout | Class::RateLimit) {
            self.metrics.upstream_failure(
                surface.label(),
                f.status.as_u16(),
                &f.code,
                SystemClock.now_secs(),
            );
        }
    }

    /// A client error as the proxy's failure (logged without the peer's text).
    fn failed(&self, e: &iicp_client::Error) -> Failure {
        let failure = Failure::from_client(e);
        tracing::debug!(code = %failure.code, status = failure.status.as_u16(), "proxied chat failed");
        failure
    }

    /// The mesh as the proxy sees it: is the directory reachable, how many nodes and
    /// which models serve the chat intent, the last mesh errors.
    async fn status(&self) -> Value {
        let found = self.client.discover(CHAT_INTENT, self.route.clone()).await;
        let (reachable, nodes, models, error) = match &found {
            Ok(nodes) => {
                let mut models: Vec<&str> = nodes
                    .iter()
                    .flat_map(|n| n.models.iter().flatten())
                    .map(String::as_str)
                    .collect();
                models.sort_unstable();
                models.dedup();
                (true, nodes.len(), models, None)
            }
            Err(e) => (false, 0, Vec::new(), Some(Failure::from_client(e).code)),
        };
        serde_json::json!({
            "proxy": {
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": self.started.elapsed().as_secs(),
                "timeout_ms": u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                "api_key_required": self.api_key.is_some(),
            },
            "directory": {"url": self.client.directory().base_url(), "reachable": reachable, "error": error},
            "intent": CHAT_INTENT,
            "nodes": nodes,
            "models": models,
            "last_errors": self.metrics.last_errors(),
        })
    }

    /// Checks the API key, when one is configured (constant time).
    fn authorize(&self, req: &Request) -> Result<(), Failure> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let headers = req.headers();
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let x_api_key = headers.get(X_API_KEY).and_then(|v| v.to_str().ok());
        let expected = key.expose().as_bytes();
        let ok = [bearer, x_api_key]
            .into_iter()
            .flatten()
            .any(|given| bool::from(given.as_bytes().ct_eq(expected)));
        if ok {
            Ok(())
        } else {
            Err(Failure::unauthorized())
        }
    }

    /// The request and options of one chat under the proxy's deadline, and the model
    /// asked for (`None`: any); an unknown model is a 404 before anything is sent.
    async fn prepare(
        &self,
        mut request: ChatRequest,
        model: Option<String>,
    ) -> Result<(ChatRequest, ChatOptions, Option<String>), Failure> {
        let model = model.filter(|m| !is_any(Some(m)));
        if let Some(m) = &model {
            match self.catalog.offers(m).await {
                Ok(true) => {}
                Ok(false) => return Err(Failure::unknown_model(m)),
                Err(e) => return Err(Failure::from_client(&e)),
            }
        }
        request.model = model.clone();
        let options = ChatOptions {
            model: model.clone(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            timeout: Some(self.timeout),
            qos: self.qos,
            region: self.region.clone(),
            min_reputation: self.min_reputation,
            ..ChatOptions::default()
        };
        Ok((request, options, model))
    }

    /// One buffered chat through the mesh under the proxy's deadline.
    async fn chat(
        &self,
        request: ChatRequest,
        model: Option<String>,
    ) -> Result<ChatOutcome, Failure> {
        let (request, options, model) = self.prepare(request, model).await?;
        let answer =
            tokio::time::timeout(self.timeout, self.client.chat_request(request, options)).await;
        match answer {
            Err(_) => Err(Failure::deadline()),
            Ok(Err(e)) => Err(self.failed(&e)),
            Ok(Ok(result)) => Ok(ChatOutcome::from_result(
                &result,
                model.as_deref(),
                SystemClock.now_secs(),
            )),
        }
    }
}

/// Reads the body under the proxy's cap.
async fn read(state: &State, req: &mut Request) -> Result<Bytes, Failure> {
    read_body(req, state.max_body_bytes)
        .await
        .map_err(|e| Failure::from_http(&e))
}

/// The response: the reply or the failure in the surface's shape, with `Server`,
/// `X-IICP-Trace-Id` (but on a streamed answer, whose trace the client does not tell
/// before its end), and on answered chats `X-IICP-Node-Id`, `X-IICP-Task-Id` and
/// `X-IICP-Generated-By-AI`; and a streamed answer's relay, to run.
fn finish(surface: Surface, result: Result<Reply, Failure>) -> (Response, Option<Pump>) {
    let (reply, node, retry_after) = match result {
        Ok(reply) => (reply, None, None),
        Err(f) => (surface.failure(&f), f.node_id.clone(), f.retry_after),
    };
    let (body, pump) = match reply.body {
        Body::Full(bytes) => (ResponseBody::from(bytes), None),
        Body::Stream { rx, pump } => (ResponseBody::channel(rx), Some(pump)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(SERVER, SERVER_NAME);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if pump.is_some() {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Some(after) = retry_after {
        set_retry_after(headers, after);
    }
    let (node, trace) = match reply.outcome {
        Some(answered) => {
            headers.insert(X_IICP_GENERATED_BY_AI, HeaderValue::from_static("true"));
            if let Ok(v) = HeaderValue::from_str(&answered.task_id) {
                headers.insert(X_IICP_TASK_ID, v);
            }
            (Some(answered.node_id), answered.trace_id)
        }
        None => (node, Some(TraceParent::generate(&mut OsRng).trace_id_hex())),
    };
    if let Some(v) = node.and_then(|n| HeaderValue::from_str(&n).ok()) {
        headers.insert(X_IICP_NODE_ID, v);
    }
    if let Some(v) = trace.and_then(|t| HeaderValue::from_str(&t).ok()) {
        headers.insert(X_IICP_TRACE_ID, v);
    }
    (response, pump)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_refuses_bad_settings() {
        let bad = [
            Proxy::builder().timeout(Duration::from_millis(120_001)),
            Proxy::builder().timeout(Duration::ZERO),
            Proxy::builder().max_body_bytes(0),
            Proxy::builder().min_reputation(1.5),
            Proxy::builder().api_key(""),
        ];
        for b in bad {
            assert!(matches!(b.build(), Err(ProxyError::Config(_))));
        }
        let p = Proxy::builder()
            .directory_url("http://127.0.0.1:1/api")
            .api_key("sk-secret-key")
            .build()
            .expect("valid");
        assert!(!format!("{p:?}").contains("sk-secret-key"));
    }
}
