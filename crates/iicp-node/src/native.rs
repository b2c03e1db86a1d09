//! Native CALLs through the task pipeline (PROTOCOL.md §10.7, §19 T3, T12, T22;
//! ADR 0002 and 0005).
//!
//! A CALL is mapped onto a task: intent from key 3, payload from key 5 (UTF-8 JSON in a
//! byte string, or CBOR), timeout from key 6 (seconds), credential from key 11, trace id
//! from key 13, QoS from key 18, max tokens from key 17. The task id is key 24, else the
//! idempotency key 16 (both are real idempotency keys, so duplicates are tracked), else
//! the call id or session id (then duplicates are not tracked: the SDKs reuse literal
//! session ids such as `"call-1"`).
//!
//! Native IICP-CX (`native_cx_v1`): when the key-5 JSON object has an `iicp_conf` member
//! it is an encrypted task `{task_id, iicp_conf, cx_response_encryption?}`; it is opened
//! with the node's CX key and, when response encryption is required, key 5 of the answer
//! is `{task_id, status: "encrypted", iicp_conf_resp}`.
//!
//! The answer uses the superset RESPONSE layout: on success key 5 holds the result value
//! itself (for chat the OpenAI completion, as the Python and Rust SDK nodes answer and
//! their `IicpTcpClient`s return it) as a CBOR map, with keys 7
//! (tokens), 8 (duration) and 11 (node id); errors carry key 6 `{code, message}` and keys
//! 100/101.
//!
//! A DISCOVER (type 0x03, `{2: session_id, 3: intent}` from the SDK clients or the spec's
//! `{1: intent, 2: limit, …}`) is answered with this node's own NODELIST entry when it
//! serves the intent, else with an empty list, in the deployed RESPONSE shape
//! `{2, 3, 20: [entry]}` (PROTOCOL.md §10.7; ADR 0007). The entry carries only what the
//! node advertises at REGISTER anyway: never a token or key other than the public CX key.

use std::sync::Arc;

use std::sync::atomic::Ordering;

use iicp_proto::directory::{Limits, NodeEntry, RegisterRequest};
use iicp_proto::error::ErrorCode;
use iicp_proto::ids::TaskId;
use iicp_proto::intent::Intent;
use iicp_proto::lifecycle::{self, Event, EventKind};
use iicp_proto::message::{Body, Call, Control, Discover, Prefer, Response};
use iicp_proto::message::{ErrorMap, Lifecycle};
use iicp_proto::task::{Constraints, Qos, TaskAuth, TaskRequest};
use iicp_transport::native::{BoxFuture, CallContext, CallHandler, PartialSender};
use serde_json::{Map, Value};

use crate::handler::{TaskHandler, Transport};
use crate::pipeline::{self, Inbound, Outcome, Started};
use crate::ratelimit::RateKey;
use crate::state::Shared;
use crate::stream::StreamTask;

/// The native CALL handler of a node.
pub(crate) struct NativeTasks {
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
}

impl NativeTasks {
    pub(crate) fn new(shared: Arc<Shared>, handler: Arc<dyn TaskHandler>) -> Self {
        Self { shared, handler }
    }
}

impl CallHandler for NativeTasks {
    fn handle(&self, call: Call, ctx: CallContext) -> BoxFuture<'static, Response> {
        let shared = Arc::clone(&self.shared);
        let handler = Arc::clone(&self.handler);
        Box::pin(native_call(shared, handler, call, ctx, None))
    }

    fn handle_streaming(
        &self,
        call: Call,
        ctx: CallContext,
        partials: PartialSender,
    ) -> BoxFuture<'static, Response> {
        let shared = Arc::clone(&self.shared);
        let handler = Arc::clone(&self.handler);
        Box::pin(native_call(shared, handler, call, ctx, Some(partials)))
    }

    /// A lifecycle cancel `{1: "cancel", 5: reason, 24: task_id}` (ADR 0013) stops the
    /// task when it was submitted from the same address.
    fn control(&self, control: &Control, ctx: &CallContext) {
        cancel_by_control(&self.shared, control, ctx);
    }

    /// The ACK announces the node id the node holds now: one assigned by the directory
    /// at registration, after the port was bound, included.
    fn node_id(&self) -> Option<String> {
        self.shared.node_id()
    }

    fn discover(&self, request: &Discover, _ctx: &CallContext) -> Vec<Value> {
        discover_self(&self.shared, request)
    }
}

/// This node's answer to a DISCOVER: its own entry when it serves the intent and is not
/// excluded by the request (key 4), else nothing.
fn discover_self(shared: &Shared, request: &Discover) -> Vec<Value> {
    let Some(intent) = request.intent.as_deref().and_then(|i| Intent::new(i).ok()) else {
        return Vec::new();
    };
    if !shared.served.contains(&intent) || request.limit == Some(0) {
        return Vec::new();
    }
    let entry = own_entry(shared, &intent);
    let excluded = request.exclude.as_ref().is_some_and(|ex| {
        entry
            .node_id
            .as_ref()
            .is_some_and(|id| ex.iter().any(|x| x == id))
    });
    if excluded {
        return Vec::new();
    }
    serde_json::to_value(&entry)
        .map(|v| vec![v])
        .unwrap_or_default()
}

/// The node's NODELIST entry (PROTOCOL.md §8.4) for `intent`, from what it registers.
fn own_entry(shared: &Shared, intent: &Intent) -> NodeEntry {
    let cfg = &shared.cfg;
    // what REGISTER would advertise: configured endpoint, then the reachability advert
    let mut reg = RegisterRequest::new(
        cfg.endpoint.clone(),
        cfg.region.clone(),
        Vec::new(),
        Limits::default(),
    );
    reg.transport_endpoint = shared.transport_endpoint();
    crate::registration::apply_advert(shared, &mut reg);
    let capabilities: Vec<_> = shared
        .capabilities()
        .iter()
        .filter(|c| c.intent == intent.as_str())
        .cloned()
        .collect();
    let mut models: Vec<String> = capabilities
        .iter()
        .flat_map(|c| c.models.iter().cloned())
        .collect();
    models.dedup();
    if models.is_empty() {
        models = shared.models();
    }
    let active = shared.active_jobs();
    let max = cfg.max_concurrent;
    let draining = shared.draining.load(Ordering::Relaxed);
    let cx = shared.cx_advertisement();
    let mut transport = vec!["http".to_owned()];
    if reg.transport_endpoint.is_some() {
        transport.push("iicp-native".to_owned());
    }
    NodeEntry {
        node_id: shared.node_id(),
        endpoint: Some(reg.endpoint),
        transport_endpoint: reg.transport_endpoint,
        transport_method: reg.transport_method,
        exposure_mode: reg.exposure_mode,
        relay_endpoint: reg.relay_endpoint,
        region: Some(cfg.region.clone()),
        available: Some(!draining && active < max),
        load: Some(f64::from(active) / f64::from(max.max(1))),
        active_jobs: Some(active),
        max_concurrent: Some(max),
        models: Some(models),
        capabilities,
        transport: Some(transport),
        key_ready: Some(cx.is_some()),
        cx_public_key: cx,
        relay_capable: cfg.relay_capable.then_some(true),
        relay_accept_port: reg.relay_accept_port,
        backend: cfg.backend.clone(),
        sdk_language: Some("rust".to_owned()),
        implementation_name: Some(crate::config::IMPLEMENTATION_NAME.to_owned()),
        implementation_version: Some(crate::config::IMPLEMENTATION_VERSION.to_owned()),
        ..NodeEntry::default()
    }
}

fn refuse(call: &Call, code: ErrorCode, status: u16, message: &str) -> Response {
    Response::error(call, code.as_str(), status, message)
}

async fn native_call(
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    call: Call,
    ctx: CallContext,
    partials: Option<PartialSender>,
) -> Response {
    // one bucket per caller across both transports (an IPv4 caller of a dual-stack
    // socket arrives IPv4-mapped); forwarding headers do not exist on native
    let peer = ctx.peer.ip().to_canonical();
    if shared.limiter.check(&RateKey::Ip(peer)).is_err() {
        return refuse(
            &call,
            ErrorCode::RateLimited,
            429,
            "too many calls; slow down",
        );
    }
    let Some(intent) = call.intent.clone() else {
        return refuse(
            &call,
            ErrorCode::ValidationError,
            422,
            "CALL without intent (key 3)",
        );
    };
    let payload = match call.payload.as_ref().map(|b| b.to_json(Prefer::Json)) {
        Some(Ok(Value::Object(map))) => map,
        Some(Ok(_)) => {
            return refuse(
                &call,
                ErrorCode::ValidationError,
                422,
                "payload (key 5) must be a JSON object",
            )
        }
        Some(Err(_)) => {
            return refuse(
                &call,
                ErrorCode::ValidationError,
                422,
                "payload (key 5) is neither JSON nor CBOR",
            )
        }
        None => {
            return refuse(
                &call,
                ErrorCode::ValidationError,
                422,
                "CALL without payload (key 5)",
            )
        }
    };
    let explicit_id = call
        .task_id
        .clone()
        .or_else(|| call.idempotency_key.clone())
        .filter(|s| !s.is_empty());
    // the caller's own task id (key 24, or the CX envelope's) must be a UUID v4;
    // one taken from idempotency key 16 may be any short string
    let mut strict = call.task_id.as_deref().is_some_and(|s| !s.is_empty());
    let (task_id_text, track, task_payload, iicp_conf, cx_resp) =
        if payload.contains_key("iicp_conf") {
            let mut env: Map<String, Value> = payload;
            let own = env
                .get("task_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            strict |= own.is_some();
            let id = own.or_else(|| explicit_id.clone());
            let conf = env.remove("iicp_conf");
            let resp = env
                .get("cx_response_encryption")
                .and_then(Value::as_str)
                .map(str::to_owned);
            (id, true, None, conf, resp)
        } else {
            let track = explicit_id.is_some();
            let id = explicit_id.or_else(|| call.correlation_id().map(str::to_owned));
            (id, track, Some(Value::Object(payload)), None, None)
        };
    let task_id = match task_id_text {
        Some(id) => match TaskId::parse_lenient(&id) {
            Ok(t) => t,
            Err(_) => return refuse(&call, ErrorCode::ValidationError, 422, "invalid task id"),
        },
        None if iicp_conf.is_some() => {
            return refuse(
                &call,
                ErrorCode::ValidationError,
                422,
                "encrypted CALL without task_id",
            )
        }
        None => TaskId::generate(&mut rand_core::OsRng),
    };
    let constraints = Constraints {
        timeout_ms: call
            .timeout_s
            .map(|s| s.saturating_mul(1000).min(iicp_proto::task::MAX_TIMEOUT_MS)),
        qos: call.qos.as_deref().and_then(Qos::parse),
        max_tokens: call
            .max_tokens
            .map(|t| u32::try_from(t).unwrap_or(u32::MAX)),
        region: call.region.clone(),
        ..Constraints::default()
    };
    let mut task = TaskRequest {
        task_id,
        intent,
        payload: task_payload,
        iicp_conf,
        constraints,
        auth: None,
        trace: None,
        cx_response_encryption: cx_resp,
        source_node_id: None,
        nonce: None,
        extra: Map::new(),
    };
    if let Some(tok) = call.auth_token.clone() {
        task.auth = Some(TaskAuth {
            node_token: Some(tok),
            ..TaskAuth::default()
        });
    }
    let trace_bytes = call.trace_id.as_ref().map(|t| **t);
    // key 24 is the deployed streaming switch (ADR 0013)
    let lifecycle = partials.is_some() && call.task_id.as_deref().is_some_and(|t| !t.is_empty());
    let inbound = Inbound {
        transport: Transport::Native,
        peer,
        bearer: None,
        consumer_token: None,
        traceparent: None,
        trace_bytes,
        task,
        track_duplicates: track,
        strict_task_id: strict,
        lifecycle,
    };
    let reply = match (lifecycle, partials) {
        (true, Some(partials)) => match pipeline::start(&shared, handler, inbound).await {
            Started::Reply(reply) => *reply,
            Started::Stream(task) => return forward(&shared, &call, task, &partials, true).await,
            Started::Attached(task) => {
                return forward(&shared, &call, task, &partials, false).await
            }
        },
        _ => pipeline::run(Arc::clone(&shared), handler, inbound).await,
    };
    let key5 = match reply.outcome {
        // key 5: the result itself, as the reference nodes answer (not `{"result": …}`,
        // which their clients would hand to the caller as is); the reply is ours, so
        // the result is moved out, not copied (a replay has only the text)
        Outcome::Answered { result, text } => match result {
            // JSON text (a model server's answer) goes to CBOR in one pass
            Some(result) => Body::Cbor(result.to_cbor()),
            None => Body::cbor(&match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(mut body)) => body.remove("result").unwrap_or(Value::Null),
                _ => Value::Null,
            }),
        },
        // native CX: the sealed `{task_id, status: "encrypted", iicp_conf_resp}`
        Outcome::Sealed(body) => Body::cbor(&body),
        // only lifecycle requests are answered with events
        Outcome::Stream(_) => {
            return refuse(
                &call,
                ErrorCode::Conflict,
                409,
                "task_id is in use by a lifecycle task",
            )
        }
        Outcome::Failed { status, error, .. } => {
            let mut r = Response::error(&call, error.code.as_str(), status, &error.message);
            r.duration_ms = Some(reply.latency_ms);
            r.node_id = shared.node_id();
            return r;
        }
    };
    let mut r = Response::success(&call, key5);
    r.tokens_used = reply.tokens_used;
    r.duration_ms = Some(reply.latency_ms);
    r.node_id = shared.node_id();
    r
}

/// Cancels the lifecycle task when the CALL's connection goes away first (a native
/// stream cannot be resumed, so nobody is left to read it).
struct CancelOnDrop(Option<Arc<StreamTask>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            if !task.log.is_finished() {
                tracing::info!(task_id = %task.task_id, "native caller gone; lifecycle task cancelled");
                task.log.cancel();
            }
        }
    }
}

/// Sends a lifecycle task's events as RESPONSEs of `call` (ADR 0013): each `partial`
/// through `partials`, the terminal as the returned answer; `accepted` is not sent on
/// native, so the first partial is sequence 0.
pub(crate) async fn forward(
    shared: &Shared,
    call: &Call,
    task: Arc<StreamTask>,
    partials: &PartialSender,
    own: bool,
) -> Response {
    let mut guard = CancelOnDrop(own.then(|| Arc::clone(&task)));
    let node_id = shared.node_id();
    let mut next = 0usize;
    let mut native_seq = 0u64;
    loop {
        let events = task.log.next_events(next).await;
        if events.is_empty() {
            // ended without a terminal: cannot happen (the log always ends with one)
            guard.0 = None;
            return Response::error(
                call,
                ErrorCode::BackendError.as_str(),
                502,
                "the task ended without a result",
            );
        }
        next += events.len();
        for e in events {
            if e.event == EventKind::Accepted {
                continue;
            }
            let sealed = task.sealed(&e, native_seq);
            let e = sealed.as_ref().unwrap_or(&e);
            let resp = event_response(call, e, native_seq, node_id.clone());
            native_seq += 1;
            if e.is_final {
                guard.0 = None;
                return resp;
            }
            if partials.send(resp).await.is_err() {
                // the connection is gone; the guard cancels our task
                return Response::error(call, ErrorCode::Cancelled.as_str(), 499, "caller gone");
            }
        }
    }
}

/// One lifecycle event as a RESPONSE in the deployed lifecycle layout: keys 1, 2, 3,
/// 4, 5?, 6?, 7?, 8?, 11, 12 and the key-13 envelope (no key 15: the call id moves to
/// key 3, PROTOCOL.md §10.7); a failure terminal also carries keys 100/101.
fn event_response(call: &Call, e: &Event, sequence: u64, node_id: Option<String>) -> Response {
    let result = match (&e.result, &e.iicp_conf_resp) {
        (_, Some(sealed)) => Some(Body::cbor(&serde_json::json!({
            "task_id": e.task_id,
            "status": "encrypted",
            "iicp_conf_resp": sealed,
        }))),
        (Some(v), None) => Some(Body::Cbor(v.to_cbor())),
        (None, None) => None,
    };
    Response {
        protocol_version: Some(iicp_proto::message::PROTOCOL_VERSION),
        session_id: call.session_id.clone(),
        call_id: call.call_id.clone(),
        status: Some(e.event.status().to_owned()),
        result,
        error: e.error.as_ref().map(|err| ErrorMap {
            code: err.code.as_ref().map(|c| c.as_str().to_owned()),
            message: Some(err.message.clone()),
        }),
        tokens_used: e.tokens_used,
        duration_ms: e.metrics.as_ref().and_then(|m| m.latency_ms),
        node_id,
        is_final: Some(e.is_final),
        // the deployed error keys too, so that a caller reading only those (a base
        // client that happened to send key 24) still sees the status and the reason
        status_code: e
            .error
            .as_ref()
            .and_then(|err| err.code.as_ref())
            .map(|c| u64::from(c.http_status().unwrap_or(502))),
        message: e.error.as_ref().map(|err| err.message.clone()),
        lifecycle: Some(Lifecycle {
            task_id: call.task_id.clone().or_else(|| Some(e.task_id.clone())),
            sequence: Some(sequence),
            event: Some(e.event.as_str().to_owned()),
            is_final: Some(e.is_final),
            receipt: None,
        }),
        ..Response::default()
    }
}

/// A lifecycle cancel CONTROL `{1: "cancel", 5: reason, 24: task_id}` (ADR 0013; from a
/// relay it arrives as OBSERVE and is handed over as this CONTROL) stops the task when
/// it was submitted over a connection from the same address.
pub(crate) fn cancel_by_control(shared: &Shared, control: &Control, ctx: &CallContext) {
    if control.action.as_deref() != Some(lifecycle::CANCEL_ACTION) {
        return;
    }
    let Some(task) = control
        .task_id
        .as_deref()
        .and_then(|id| shared.streams.get(id))
    else {
        return;
    };
    if task.owner.to_canonical() == ctx.peer.ip().to_canonical() {
        tracing::info!(task_id = %task.task_id, "lifecycle task cancelled by its caller");
        task.log.cancel();
    }
}
