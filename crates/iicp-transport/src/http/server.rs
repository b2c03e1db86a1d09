//! HTTP/1.1 server over hyper: a small typed router, JSON helpers and the connection
//! driver used by the node and the directory.
//!
//! Implements the transport side of PROTOCOL.md §5 (node HTTP surface: routes such as
//! `POST /v1/task`, `GET /iicp/health` and `/v1/relay-for/{worker_id}/{*rest}`; the
//! §5.1 CORS preflight), §6.1 (every error, including 404, 405, 413, 415, 422 and handler
//! panics, is a JSON body `{"error":{"code","message"}}`, never framework text) and §8.0
//! (the directory serves each route under `/v1/...` and `/api/v1/...`: see
//! [`Router::nest_alias`]).
//!
//! * [`Router`] maps `(method, path pattern)` to a [`Handler`]. Patterns have literal
//!   segments, `{param}` segments and a trailing `{*rest}`; the most specific matching
//!   pattern wins (literal > param > rest, segment by segment). No route → 404
//!   `not_found`; a path served for other methods → 405 `method_not_allowed` with
//!   `Allow`. `HEAD` runs the `GET` handler and hyper drops the body.
//! * CORS ([`Router::cors`], [`Router::route_cors`]): `OPTIONS` preflight → 204 with the
//!   §5.1 headers; `Access-Control-Allow-Origin: *` on every response of a CORS route.
//! * JSON: [`read_json`] / [`read_body`] enforce a size limit without buffering more than
//!   the limit, [`json`] and [`error`] build responses, [`HttpError`] is the error a
//!   handler returns.
//! * [`serve_connection`] drives one connection of any byte stream (the one-port
//!   listener hands over sniffed TCP or TLS streams); [`HttpServer`] is a standalone
//!   accept loop with a connection bound. Both shut down gracefully on a
//!   [`Shutdown`](crate::shutdown::Shutdown) signal.
//!
//! A panicking handler does not take the connection or the server down: the panic is
//! caught and answered with 500 `internal_error`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use http::{Method, StatusCode};
//! use iicp_transport::http::server::{json, read_json, HttpError, HttpServer, Router};
//! use iicp_transport::shutdown;
//!
//! # async fn run() -> std::io::Result<()> {
//! let greeting = Arc::new(String::from("hello"));
//! let router = Router::new()
//!     .route(Method::GET, "/iicp/health", |_req, _params| async {
//!         json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
//!     })
//!     .route(Method::POST, "/v1/echo/{name}", move |mut req, p| {
//!         let greeting = Arc::clone(&greeting);
//!         async move {
//!             let body: serde_json::Value = read_json(&mut req, 64 * 1024).await?;
//!             let name = p.get("name").unwrap_or_default();
//!             Ok::<_, HttpError>(json(StatusCode::OK, &(greeting.as_str(), name, body)))
//!         }
//!     })
//!     .nest_alias("/api")
//!     .cors(true);
//! let (trigger, shutdown) = shutdown::channel();
//! let server = HttpServer::bind("127.0.0.1:0".parse().unwrap()).await?;
//! let task = tokio::spawn(server.serve(router, shutdown));
//! // …
//! trigger.fire();
//! let _ = task.await;
//! # Ok(()) }
//! ```

mod body;
mod conn;
mod json;
mod route;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW,
};
use http::{Method, StatusCode};
use iicp_proto::error::ErrorCode;

pub use body::{BoxError, RequestBody, ResponseBody};
pub use conn::{serve_connection, HttpServer, HttpServerConfig};
pub use json::{
    error, is_json_content_type, json, json_bytes, parse_json, read_body, read_json,
    set_retry_after, HttpError, IntoResponse, DEFAULT_BODY_LIMIT,
};
pub use route::{Params, PatternError};

use route::Pattern;

/// A request as handlers see it. The connection driver puts the peer address into the
/// extensions as [`PeerAddr`].
pub type Request = http::Request<RequestBody>;

/// A response as handlers return it.
pub type Response = http::Response<ResponseBody>;

/// The future a [`Handler`] returns.
pub type HandlerFuture = futures_util::future::BoxFuture<'static, Response>;

/// The remote address of the connection a request arrived on (request extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// `Access-Control-Allow-Methods` of the preflight (§5.1).
const CORS_ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// `Access-Control-Allow-Headers` of the preflight (§5.1, plus the §5.3 request headers a
/// browser client sends).
const CORS_ALLOW_HEADERS: &str =
    "Content-Type, Authorization, X-IICP-Consumer-Token, X-IICP-Require-E2E, traceparent, tracestate";
/// Response headers a browser may read (§5.3).
const CORS_EXPOSE_HEADERS: &str = "Retry-After, X-IICP-Trace-Id, traceparent";
/// `Access-Control-Max-Age` of the preflight (§5.1).
const CORS_MAX_AGE: &str = "86400";

/// An async request handler.
///
/// Implemented for every `Fn(Request, Params) -> impl Future<Output = impl IntoResponse>`
/// that is `Send + Sync + 'static`; share state by capturing an `Arc`. The router stores
/// each handler once (`Arc<dyn Handler>`); each request costs one boxed future.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, req: Request, params: Params) -> HandlerFuture;
}

impl<F, Fut, R> Handler for F
where
    F: Fn(Request, Params) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse + 'static,
{
    fn call(&self, req: Request, params: Params) -> HandlerFuture {
        // a map, not `async move { fut.await.into_response() }`: an async block keeps
        // the captured future and the awaited one side by side, twice its size
        Box::pin(futures_util::FutureExt::map(
            self(req, params),
            IntoResponse::into_response,
        ))
    }
}

struct Route {
    pattern: Pattern,
    handlers: Vec<(Method, Arc<dyn Handler>)>,
    cors: bool,
}

impl Route {
    fn handler_for(&self, method: &Method) -> Option<&Arc<dyn Handler>> {
        let exact = self.handlers.iter().find(|(m, _)| m == method);
        match exact {
            Some((_, h)) => Some(h),
            None if method == Method::HEAD => self
                .handlers
                .iter()
                .find(|(m, _)| m == Method::GET)
                .map(|(_, h)| h),
            None => None,
        }
    }
}

/// Maps `(method, path)` to handlers. Build it once, wrap it in an `Arc`, share it
/// between connections.
#[derive(Default)]
pub struct Router {
    /// Sorted most specific first.
    routes: Vec<Route>,
    aliases: Vec<Box<str>>,
    cors_all: bool,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|r| {
                let methods: Vec<&str> = r.handlers.iter().map(|(m, _)| m.as_str()).collect();
                format!("{} {}", methods.join(","), r.pattern.source())
            })
            .collect();
        f.debug_struct("Router")
            .field("routes", &routes)
            .field("aliases", &self.aliases)
            .field("cors", &self.cors_all)
            .finish()
    }
}

enum Lookup<'r> {
    Found {
        handler: &'r Arc<dyn Handler>,
        params: Params,
        cors: bool,
    },
    MethodNotAllowed {
        allow: Vec<Method>,
        cors: bool,
    },
    NotFound,
}

impl Router {
    /// An empty router (every request → 404), CORS off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route served by an async closure (`|req, params| async move { … }`; the
    /// argument types are inferred). Registering the same pattern again adds a method to
    /// it; the same method and pattern twice replaces the handler.
    ///
    /// # Panics
    ///
    /// When `pattern` is malformed (see [`Router::try_route`]); patterns are program
    /// constants, so this is a programming error.
    pub fn route<F, Fut, R>(self, method: Method, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        self.route_handler(method, pattern, handler, false)
    }

    /// Like [`Router::route`], with CORS enabled for this pattern.
    ///
    /// # Panics
    ///
    /// When `pattern` is malformed.
    pub fn route_cors<F, Fut, R>(self, method: Method, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        self.route_handler(method, pattern, handler, true)
    }

    /// Adds a route served by any [`Handler`] implementation, with or without CORS.
    ///
    /// # Panics
    ///
    /// When `pattern` is malformed.
    pub fn route_handler(
        self,
        method: Method,
        pattern: &str,
        handler: impl Handler,
        cors: bool,
    ) -> Self {
        match self.add(method, pattern, Arc::new(handler), cors) {
            Ok(router) => router,
            Err(err) => panic!("{err}"),
        }
    }

    /// Adds a route, refusing a malformed pattern: it must start with `/`, have no empty
    /// segment, `{name}` names of `[A-Za-z0-9_-]`, at most one `{*rest}` and only last,
    /// no repeated names.
    pub fn try_route(
        self,
        method: Method,
        pattern: &str,
        handler: impl Handler,
    ) -> Result<Self, PatternError> {
        self.add(method, pattern, Arc::new(handler), false)
    }

    fn add(
        mut self,
        method: Method,
        pattern: &str,
        handler: Arc<dyn Handler>,
        cors: bool,
    ) -> Result<Self, PatternError> {
        let pattern = Pattern::parse(pattern)?;
        if let Some(route) = self
            .routes
            .iter_mut()
            .find(|r| r.pattern.source() == pattern.source())
        {
            route.cors |= cors;
            match route.handlers.iter_mut().find(|(m, _)| *m == method) {
                Some(slot) => slot.1 = handler,
                None => route.handlers.push((method, handler)),
            }
            return Ok(self);
        }
        let at = self
            .routes
            .partition_point(|r| r.pattern.rank() >= pattern.rank());
        self.routes.insert(
            at,
            Route {
                pattern,
                handlers: vec![(method, handler)],
                cors,
            },
        );
        Ok(self)
    }

    /// Also serves every route under `prefix` (e.g. `/api`, so `/v1/register` is
    /// reachable as `/api/v1/register` too, §8.0). A path is first matched as is, then
    /// with each alias prefix stripped. A trailing `/` on the prefix is ignored; an empty
    /// prefix or `/` is ignored.
    pub fn nest_alias(mut self, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            let prefix = if prefix.starts_with('/') {
                prefix.to_owned()
            } else {
                format!("/{prefix}")
            };
            if !self.aliases.iter().any(|a| **a == *prefix) {
                self.aliases.push(prefix.into());
            }
        }
        self
    }

    /// Enables (or disables) CORS for every route and for unmatched `OPTIONS` requests
    /// (`OPTIONS *` included), as reference nodes do (§5.1).
    pub fn cors(mut self, enabled: bool) -> Self {
        self.cors_all = enabled;
        self
    }

    /// Routes one request and runs its handler, catching panics (→ 500). This is what
    /// the connection driver calls; call it directly to test handlers in process.
    pub async fn handle(&self, req: Request) -> Response {
        let method = req.method().clone();
        match self.lookup(req.uri().path(), &method) {
            Lookup::Found {
                handler,
                params,
                cors,
            } => {
                let response = match catch_unwind(AssertUnwindSafe(|| handler.call(req, params))) {
                    Ok(fut) => CatchUnwind { inner: Some(fut) }.await,
                    Err(payload) => Err(payload),
                };
                let mut response = response.unwrap_or_else(|payload| {
                    tracing::error!(
                        panic = panic_message(payload.as_ref()),
                        "HTTP handler panicked"
                    );
                    HttpError::internal().into_response()
                });
                if cors {
                    add_cors_headers(response.headers_mut());
                }
                response
            }
            Lookup::MethodNotAllowed { allow, cors } => {
                if method == Method::OPTIONS {
                    return options_response(&allow, cors);
                }
                let mut response = HttpError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("method {method} is not allowed on this path"),
                )
                .into_response();
                response.headers_mut().insert(ALLOW, allow_header(&allow));
                if cors {
                    add_cors_headers(response.headers_mut());
                }
                response
            }
            Lookup::NotFound => {
                if method == Method::OPTIONS && self.cors_all {
                    return options_response(&[], true);
                }
                let mut response =
                    HttpError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
                        .into_response();
                if self.cors_all {
                    add_cors_headers(response.headers_mut());
                }
                response
            }
        }
    }

    fn lookup(&self, path: &str, method: &Method) -> Lookup<'_> {
        let path = if path.len() > 1 {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        let found = self.lookup_in(path, method);
        if !matches!(found, Lookup::NotFound) {
            return found;
        }
        for alias in &self.aliases {
            let stripped = match path.strip_prefix(&**alias) {
                Some("") => "/",
                Some(rest) if rest.starts_with('/') => rest,
                _ => continue,
            };
            let found = self.lookup_in(stripped, method);
            if !matches!(found, Lookup::NotFound) {
                return found;
            }
        }
        Lookup::NotFound
    }

    fn lookup_in(&self, path: &str, method: &Method) -> Lookup<'_> {
        let mut allow: Vec<Method> = Vec::new();
        let mut cors = false;
        let mut matched = false;
        for route in &self.routes {
            let Some(params) = route.pattern.matches(path) else {
                continue;
            };
            let route_cors = route.cors || self.cors_all;
            if let Some(handler) = route.handler_for(method) {
                return Lookup::Found {
                    handler,
                    params,
                    cors: route_cors,
                };
            }
            matched = true;
            cors |= route_cors;
            for (m, _) in &route.handlers {
                if !allow.contains(m) {
                    allow.push(m.clone());
                }
            }
        }
        if matched {
            Lookup::MethodNotAllowed { allow, cors }
        } else {
            Lookup::NotFound
        }
    }
}

/// The `Allow` value: the registered methods, `HEAD` with `GET`, and `OPTIONS`.
fn allow_header(methods: &[Method]) -> HeaderValue {
    let mut list: Vec<&str> = Vec::with_capacity(methods.len() + 2);
    for m in methods {
        if !list.contains(&m.as_str()) {
            list.push(m.as_str());
        }
        if *m == Method::GET && !methods.contains(&Method::HEAD) && !list.contains(&"HEAD") {
            list.push("HEAD");
        }
    }
    if !list.contains(&"OPTIONS") {
        list.push("OPTIONS");
    }
    HeaderValue::from_str(&list.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_static("GET, POST, OPTIONS"))
}

/// 204 answer to `OPTIONS`: a CORS preflight when `cors`, else a plain `Allow` answer.
fn options_response(methods: &[Method], cors: bool) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    if !methods.is_empty() {
        headers.insert(ALLOW, allow_header(methods));
    }
    if cors {
        let mut allow_methods = String::from(CORS_ALLOW_METHODS);
        for m in methods {
            if !matches!(
                *m,
                Method::GET | Method::POST | Method::OPTIONS | Method::HEAD
            ) {
                allow_methods.push_str(", ");
                allow_methods.push_str(m.as_str());
            }
        }
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_str(&allow_methods)
                .unwrap_or_else(|_| HeaderValue::from_static(CORS_ALLOW_METHODS)),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_ALLOW_HEADERS),
        );
        headers.insert(
            ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(CORS_MAX_AGE),
        );
    }
    response
}

/// Adds `Access-Control-Allow-Origin: *` (and the exposed headers) unless the handler
/// set them.
fn add_cors_headers(headers: &mut HeaderMap) {
    headers
        .entry(ACCESS_CONTROL_ALLOW_ORIGIN)
        .or_insert(HeaderValue::from_static("*"));
    headers
        .entry(ACCESS_CONTROL_EXPOSE_HEADERS)
        .or_insert(HeaderValue::from_static(CORS_EXPOSE_HEADERS));
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Polls a handler future, turning a panic into `Err(payload)`.
struct CatchUnwind {
    inner: Option<HandlerFuture>,
}

impl Future for CatchUnwind {
    type Output = Result<Response, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.inner.as_mut() else {
            return Poll::Ready(Err(Box::new("handler polled after completion")));
        };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(response)) => {
                this.inner = None;
                Poll::Ready(Ok(response))
            }
            Err(payload) => {
                this.inner = None;
                Poll::Ready(Err(payload))
            }
        }
    }
}
