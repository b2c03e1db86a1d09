//! The node's HTTP surface (PROTOCOL.md §5.1–§5.3): `POST /v1/task`, `GET /iicp/health`,
//! `GET /metrics`, CORS on every route and `OPTIONS` preflights (§5.1).
//!
//! `POST /v1/task` first applies the per-origin / per-IP rate limit (429
//! `rate_limited`, legacy `IICP-E023`), then reads the body (415 for a non-JSON
//! `Content-Type`, 413 past the size limit — refused from `Content-Length` before any
//! body byte is read — 422 for malformed or too deeply nested JSON) and hands the task
//! to the pipeline. Every answer echoes `X-IICP-Trace-Id`. The per-IP key is the
//! connection's address, or with `trust_forwarded_for` the client a reverse proxy
//! reports ([`crate::ratelimit::client_addr`], ADR 0008).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, StatusCode};
use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_proto::ids::TraceParent;
use iicp_proto::secret::Secret;
use iicp_proto::task::TaskRequest;
use iicp_transport::events;
use iicp_transport::http::server::{
    json, json_bytes, read_json, set_retry_after, HttpError, PeerAddr, Request, Response, Router,
};
use serde_json::json;

use crate::handler::{TaskHandler, Transport};
use crate::pipeline::{self, error_reply, Inbound, Outcome, Reply, Started};
use crate::ratelimit::RateKey;
use crate::state::Shared;

/// Response header carrying the trace id (§5.3, T14).
pub(crate) const TRACE_HEADER: &str = "x-iicp-trace-id";

/// The router of a node.
pub(crate) fn router(shared: Arc<Shared>, handler: Arc<dyn TaskHandler>) -> Router {
    let task_shared = Arc::clone(&shared);
    let health_shared = Arc::clone(&shared);
    let metrics_shared = Arc::clone(&shared);
    let task_handler = Arc::clone(&handler);
    let router = Router::new().route(Method::POST, "/v1/task", move |req, _params| {
        let shared = Arc::clone(&task_shared);
        let handler = Arc::clone(&task_handler);
        post_task(shared, handler, req, Submit::Buffered)
    });
    lifecycle_routes(router, &shared, handler)
        .route(Method::GET, "/iicp/health", move |_req, _params| {
            let shared = Arc::clone(&health_shared);
            async move { json(StatusCode::OK, &health(&shared)) }
        })
        .route(Method::GET, "/metrics", move |_req, _params| {
            let shared = Arc::clone(&metrics_shared);
            async move {
                let mut r = Response::new(shared.metrics.render().into());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        })
        .cors(true)
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let v = header_str(headers, AUTHORIZATION.as_str())?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Secret::new(token.trim()))
}

/// The caller's address for the rate limit and the log: the connection's, or with
/// `trust_forwarded_for` the client the reverse proxies report (ADR 0008).
fn client_ip(shared: &Shared, req: &Request, headers: &HeaderMap) -> IpAddr {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
    if !shared.cfg.trust_forwarded_for {
        return crate::ratelimit::client_addr(peer, false, &[], &[]);
    }
    let lines = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    crate::ratelimit::client_addr(peer, true, &lines("x-forwarded-for"), &lines("forwarded"))
}

/// Which task resource a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Submit {
    /// `POST /v1/task`: buffered.
    Buffered,
    /// `POST /v1/tasks`: the service-lifecycle resource (ADR 0013), 202 and the state.
    Lifecycle,
    /// `POST /v1/tasks/stream`: the lifecycle resource answered with the event stream
    /// itself (ADR 0019).
    LifecycleEvents,
}

/// `POST /v1/task`, `POST /v1/tasks` and `POST /v1/tasks/stream`.
async fn post_task(
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    mut req: Request,
    submit: Submit,
) -> Response {
    let lifecycle = submit != Submit::Buffered;
    let headers = req.headers();
    let peer = client_ip(&shared, &req, headers);
    let traceparent = header_str(headers, "traceparent").and_then(|v| TraceParent::parse(v).ok());
    let key = match header_str(headers, "origin") {
        Some(o) => RateKey::Origin(o.into()),
        None => RateKey::Ip(peer),
    };
    if let Err(wait) = shared.limiter.check(&key) {
        let mut e = ErrorBody::new(ErrorCode::RateLimited, "too many task requests; slow down")
            .with_status(429);
        e.legacy_code = Some(ErrorCode::E023);
        e.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        return to_response(error_reply(None, e, early_trace(traceparent.as_ref()), 0));
    }
    let bearer = bearer(headers);
    let consumer_token = header_str(headers, "x-iicp-consumer-token").map(Secret::new);
    let task: TaskRequest = match read_json(&mut req, shared.cfg.max_body_bytes).await {
        Ok(t) => t,
        Err(e) => return with_trace(error_response(e), &early_trace(traceparent.as_ref())),
    };
    let inbound = Inbound {
        transport: Transport::Http,
        peer,
        bearer,
        consumer_token,
        traceparent,
        trace_bytes: None,
        task,
        track_duplicates: true,
        strict_task_id: true,
        lifecycle,
    };
    if !lifecycle {
        return to_response(pipeline::run(shared, handler, inbound).await);
    }
    if !handler.streams() {
        let e = ErrorBody::new(
            ErrorCode::UnsupportedProfile,
            "this node does not stream: use POST /v1/task",
        )
        .with_status(422);
        let trace = early_trace(inbound.traceparent.as_ref());
        return to_response(error_reply(Some(&inbound.task.task_id), e, trace, 0));
    }
    match pipeline::start(&shared, handler, inbound).await {
        Started::Reply(reply) => to_response(*reply),
        // a duplicate attaches to the running task's stream, from its start
        Started::Stream(task) | Started::Attached(task) if submit == Submit::LifecycleEvents => {
            events_response(task, None)
        }
        Started::Stream(task) => with_trace(
            json(StatusCode::ACCEPTED, &task.log.state(Some(""))),
            &task.trace_id,
        ),
        Started::Attached(task) => with_trace(
            json(StatusCode::OK, &task.log.state(Some(""))),
            &task.trace_id,
        ),
    }
}

/// The trace id of an answer refused before the pipeline: the caller's, else a new one
/// (made only then: the pipeline makes its own for the tasks it takes).
fn early_trace(traceparent: Option<&TraceParent>) -> String {
    traceparent.map_or_else(pipeline::new_trace_id, TraceParent::trace_id_hex)
}

fn error_response(e: HttpError) -> Response {
    e.into_response()
}

fn with_trace(mut r: Response, trace_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(trace_id) {
        r.headers_mut().insert(TRACE_HEADER, v);
    }
    r
}

/// A JSON text shared with the duplicate store, as a response body without a copy.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn to_response(reply: Reply) -> Response {
    let mut r = match reply.outcome {
        // the RESPONSE text the duplicate store keeps, sent without a copy
        Outcome::Answered { text, .. } => {
            json_bytes(StatusCode::OK, Bytes::from_owner(SharedText(text)))
        }
        Outcome::Sealed(body) => json(StatusCode::OK, &body),
        Outcome::Failed { status, body, .. } => json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
        ),
        // only `POST /v1/tasks` asks for events; a buffered request never matches one
        Outcome::Stream(_) => json(
            StatusCode::CONFLICT,
            &ErrorBody::new(ErrorCode::Conflict, "task_id is in use by a lifecycle task"),
        ),
    };
    if let Some(after) = reply.retry_after {
        set_retry_after(r.headers_mut(), after);
    }
    with_trace(r, &reply.trace_id)
}

/// The `/iicp/health` body (§5.2).
fn health(shared: &Shared) -> serde_json::Value {
    let cfg = &shared.cfg;
    let active = shared.active_jobs();
    let max = cfg.max_concurrent;
    let draining = shared.draining.load(Ordering::Relaxed);
    let available = !draining && active < max;
    let intent = cfg.intents.first().map(|i| i.as_str().to_owned());
    let models = shared.models();
    json!({
        "status": if draining { "degraded" } else { "ok" },
        "node_id": shared.node_id(),
        "region": cfg.region,
        "load": f64::from(active) / f64::from(max.max(1)),
        "active_jobs": active,
        "max_concurrent": max,
        "effective_max_concurrent": max,
        "available": available,
        "model": models.first(),
        "models": models,
        "intent": intent,
        "intents": shared.served.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
        "auth_mode": cfg.auth.as_str(),
        "task_rate_limit": {
            "enabled": cfg.rate_limit.max_requests > 0,
            "max_requests": cfg.rate_limit.max_requests,
            "window_ms": u64::try_from(cfg.rate_limit.window.as_millis()).unwrap_or(u64::MAX),
            "trust_forwarded_for": cfg.trust_forwarded_for,
        },
        "native_transport": cfg.native,
        "transport_endpoint": shared.transport_endpoint(),
        "cx": cfg.cx_key.is_some(),
        "recovery": shared.recovery_now().to_json(),
        "implementation_name": crate::config::IMPLEMENTATION_NAME,
        "implementation_version": crate::config::IMPLEMENTATION_VERSION,
    })
}

// ---------------------------------------------------------------------------
// The service-lifecycle resources (PROTOCOL.md §11.5, ADR 0013)
// ---------------------------------------------------------------------------

/// Mounts `POST /v1/tasks`, `POST /v1/tasks/stream`, `GET /v1/tasks/{task_id}`,
/// `GET /v1/tasks/{task_id}/events` and `POST /v1/tasks/{task_id}/cancel`.
fn lifecycle_routes(router: Router, shared: &Arc<Shared>, handler: Arc<dyn TaskHandler>) -> Router {
    let (s1, s2, s3, s4, s5) = (
        Arc::clone(shared),
        Arc::clone(shared),
        Arc::clone(shared),
        Arc::clone(shared),
        Arc::clone(shared),
    );
    let h1 = Arc::clone(&handler);
    router
        .route(Method::POST, "/v1/tasks", move |req, _params| {
            let shared = Arc::clone(&s1);
            let handler = Arc::clone(&h1);
            post_task(shared, handler, req, Submit::Lifecycle)
        })
        .route(
            Method::POST,
            iicp_proto::lifecycle::HTTP_SUBMIT_STREAM_PATH,
            move |req, _params| {
                let shared = Arc::clone(&s5);
                let handler = Arc::clone(&handler);
                post_task(shared, handler, req, Submit::LifecycleEvents)
            },
        )
        .route(Method::GET, "/v1/tasks/{task_id}", move |req, params| {
            let shared = Arc::clone(&s2);
            async move {
                match observed(&shared, &req, params.get("task_id")) {
                    Ok(task) => with_trace(
                        json(StatusCode::OK, &task.log.state(Some(""))),
                        &task.trace_id,
                    ),
                    Err(r) => *r,
                }
            }
        })
        .route(
            Method::GET,
            "/v1/tasks/{task_id}/events",
            move |req, params| {
                let shared = Arc::clone(&s3);
                async move {
                    match observed(&shared, &req, params.get("task_id")) {
                        Ok(task) => events_response(task, events::resume_after(&req)),
                        Err(r) => *r,
                    }
                }
            },
        )
        .route(
            Method::POST,
            "/v1/tasks/{task_id}/cancel",
            move |req, params| {
                let shared = Arc::clone(&s4);
                async move {
                    match observed(&shared, &req, params.get("task_id")) {
                        Ok(task) => {
                            task.log.cancel();
                            // answer with the state the cancel led to, when it comes soon
                            let _ = tokio::time::timeout(CANCEL_SETTLE, task.log.finished()).await;
                            with_trace(
                                json(StatusCode::OK, &task.log.state(Some(""))),
                                &task.trace_id,
                            )
                        }
                        Err(r) => *r,
                    }
                }
            },
        )
}

/// How long a cancel waits for the task's terminal before it answers the state.
const CANCEL_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The lifecycle task a status, events or cancel request names, if the caller may see
/// it: the credential the node's auth mode asks for tasks of that intent, and in open
/// mode the submitter's own address. An unknown task and one the caller may not see
/// are both 404, so task ids cannot be probed.
fn observed(
    shared: &Arc<Shared>,
    req: &Request,
    task_id: Option<&str>,
) -> Result<Arc<crate::stream::StreamTask>, Box<Response>> {
    let headers = req.headers();
    let not_found = || {
        Box::new(json(
            StatusCode::NOT_FOUND,
            &ErrorBody::new(ErrorCode::NotFound, "no such lifecycle task"),
        ))
    };
    let task = task_id
        .and_then(|id| shared.streams.get(id))
        .ok_or_else(not_found)?;
    let bearer = bearer(headers);
    let consumer = header_str(headers, "x-iicp-consumer-token").map(Secret::new);
    let credentials = pipeline::Credentials {
        transport: Transport::Http,
        bearer: bearer.as_ref(),
        consumer_token: consumer.as_ref(),
        body_token: None,
    };
    if !pipeline::authorized(shared, &credentials, &task.intent) {
        return Err(Box::new(json(
            StatusCode::UNAUTHORIZED,
            &ErrorBody::new(
                ErrorCode::Unauthorized,
                "missing or invalid task credential",
            ),
        )));
    }
    let open = shared.cfg.auth == crate::access::AuthMode::Open;
    if open && client_ip(shared, req, headers) != task.owner {
        return Err(not_found());
    }
    Ok(task)
}

/// The task's event stream for this caller (sealed per chunk under response
/// encryption).
fn events_response(task: Arc<crate::stream::StreamTask>, after: Option<u64>) -> Response {
    let trace_id = task.trace_id.clone();
    let r = events::sse_response(task, after, |task, e| task.sealed(e, e.sequence));
    with_trace(r, &trace_id)
}
