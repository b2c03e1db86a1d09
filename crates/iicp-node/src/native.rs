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
use iicp_proto::message::{Body, Call, Discover, Prefer, Response};
use iicp_proto::task::{Constraints, Qos, TaskAuth, TaskRequest};
use iicp_transport::native::{BoxFuture, CallContext, CallHandler};
use serde_json::{Map, Value};

use crate::handler::{TaskHandler, Transport};
use crate::pipeline::{self, Inbound, Outcome};
use crate::state::Shared;

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
        Box::pin(async move { native_call(shared, handler, call, ctx).await })
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
        .capabilities
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
        models.clone_from(&cfg.models);
    }
    let active = shared.active_jobs();
    let max = cfg.max_concurrent;
    let draining = shared.draining.load(Ordering::Relaxed);
    let cx = cfg.cx_key.as_ref().map(|key| {
        let not_after = crate::clock::iso8601(
            shared
                .unix_secs()
                .saturating_add(cfg.cx_key_lifetime.as_secs()),
        );
        let mut adv = key.advertisement(Some(not_after), true);
        if cfg.native {
            adv.features.push(crate::config::NATIVE_CX_V1.to_owned());
        }
        adv
    });
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
) -> Response {
    // one bucket per caller across both transports (an IPv4 caller of a dual-stack
    // socket arrives IPv4-mapped); forwarding headers do not exist on native
    let peer = ctx.peer.ip().to_canonical();
    if shared.limiter.check(&format!("ip:{peer}")).is_err() {
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
    let reply = pipeline::run(
        Arc::clone(&shared),
        handler,
        Inbound {
            transport: Transport::Native,
            peer,
            bearer: None,
            consumer_token: None,
            traceparent: None,
            trace_bytes,
            task,
            track_duplicates: track,
            strict_task_id: strict,
        },
    )
    .await;
    let key5 = match reply.outcome {
        // key 5: the result itself, as the reference nodes answer (not `{"result": …}`,
        // which their clients would hand to the caller as is); the reply is ours, so
        // the result is moved out, not copied (a replay has only the text)
        Outcome::Answered { body, text } => {
            let body = body.unwrap_or_else(|| serde_json::from_str(&text).unwrap_or(Value::Null));
            match body {
                Value::Object(mut body) => body.remove("result").unwrap_or(Value::Null),
                _ => Value::Null,
            }
        }
        // native CX: the sealed `{task_id, status: "encrypted", iicp_conf_resp}`
        Outcome::Sealed(body) => body,
        Outcome::Failed { status, error, .. } => {
            let mut r = Response::error(&call, error.code.as_str(), status, &error.message);
            r.duration_ms = Some(reply.latency_ms);
            r.node_id = shared.node_id();
            return r;
        }
    };
    let mut r = Response::success(&call, Body::cbor(&key5));
    r.tokens_used = reply.tokens_used;
    r.duration_ms = Some(reply.latency_ms);
    r.node_id = shared.node_id();
    r
}
