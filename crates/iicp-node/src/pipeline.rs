//! The task pipeline shared by `POST /v1/task` and native CALL (PROTOCOL.md §4.1–§4.3,
//! §6, §7.2, §7.3, §16, §19 T2, T6, T7, T8, T11, T12, T13, T21, T22).
//!
//! Order of checks, each with its answer:
//! 1. validation (`TaskRequest::validate`: `task_id` a UUID v4 when the caller chose
//!    it, intent URN, `timeout_ms` a whole number in 100–300000 when present, payload
//!    or envelope) → 422 `validation_error`;
//! 2. auth per mode → 401 `unauthorized`;
//! 3. intent served → 422 `unknown_intent`; required profiles → 422
//!    `unsupported_profile`;
//! 4. IICP-CX: open `iicp_conf` (no key → 400 `IICP-CX-01`, failure → 400
//!    `IICP-CX-02`); `cx_response_encryption: "required"` without an envelope → 400
//!    `IICP-CX-03`;
//! 5. duplicates: identical id + body of a finished task → replay; otherwise → 409
//!    `conflict` (fingerprint over intent and the decrypted payload, so a re-sealed
//!    retry is still identical);
//! 6. admission: stopping → 503 `temporarily_unavailable`; all `max_concurrent` slots
//!    busy → 429 `capacity_exceeded` + `Retry-After` + `retry_after_ms` (never queued);
//! 7. execution under the deadline → 504 `task_timeout` (the handler future is dropped,
//!    its slot freed); handler errors → their spec codes;
//! 8. success → `{task_id, status: "success", result, metrics, model_used,
//!    generated_by_ai: true}`, sealed as `{task_id, status: "encrypted", iicp_conf_resp}`
//!    when response encryption was required.
//!
//! Steps 1–6 are [`admit`], 7 [`execute`], 8 [`finish`]. The answer is a typed
//! [`Outcome`] (answered, sealed, failed) that HTTP (`routes`), native (`native`) and the
//! relay worker (`reach`) each render in their own shape; the answered RESPONSE is
//! serialised once, and that text is what the duplicate store keeps and HTTP sends.
//!
//! Logs carry task id, intent, trace id, status and timings — never payloads, results
//! or credentials (§4.1 SEC-LOG-01).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::crypto::canonical;
use iicp_proto::crypto::cx::{self, IicpConf, IicpConfResp, ResponseKey};
use iicp_proto::crypto::mac::tokens_equal;
use iicp_proto::crypto::token::verify_consumer_token;
use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_proto::ids::{TaskId, TraceParent};
use iicp_proto::intent::Intent;
use iicp_proto::lifecycle::{self, EventKind};
use iicp_proto::result::ResultJson;
use iicp_proto::secret::Secret;
use iicp_proto::task::{ErrorObject, Metrics as TaskMetrics, TaskRequest, TaskResponse};
use rand_core::RngCore;
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::Instrument;

use crate::access::AuthMode;
use crate::dedup::{Begin, Cached};
use crate::handler::{
    Cancellation, Chunk, Chunks, HandlerError, StreamClosed, Task, TaskHandler, TaskOutput,
    TraceContext, Transport,
};
use crate::state::Shared;
use crate::stream::StreamTask;
use iicp_transport::events::EventLog;

/// A task as it reaches the pipeline, whichever transport carried it.
pub(crate) struct Inbound {
    pub(crate) transport: Transport,
    pub(crate) peer: IpAddr,
    pub(crate) bearer: Option<Secret>,
    pub(crate) consumer_token: Option<Secret>,
    pub(crate) traceparent: Option<TraceParent>,
    pub(crate) trace_bytes: Option<[u8; 16]>,
    pub(crate) task: TaskRequest,
    /// Whether the task id is a real idempotency key (native CALLs without key 24/16
    /// have none).
    pub(crate) track_duplicates: bool,
    /// Whether the task id is the caller's `task_id` (HTTP body, native key 24, a
    /// relayed task object, a native CX envelope), which must be a UUID v4; false for
    /// ids the node took from a native idempotency key or made itself.
    pub(crate) strict_task_id: bool,
    /// Whether the caller negotiated the service-lifecycle profile for this request
    /// (`POST /v1/tasks`, native key 24, a relayed streaming CALL): it streams when
    /// the handler does ([`start`]).
    pub(crate) lifecycle: bool,
}

/// What became of a task, for each transport to render in its own shape.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The task ran, now or before (a duplicate replayed): the RESPONSE
    /// `{task_id, status: "success", result, …}` as JSON text, shared with the
    /// duplicate store; `result` is its result as a value when the task just ran (the
    /// native transport answers with it), `None` on a replay.
    Answered {
        /// The RESPONSE as JSON text.
        text: Arc<str>,
        /// The RESPONSE's result, when the task ran here (moved, not copied).
        result: Option<ResultJson>,
    },
    /// The answer sealed for the caller (IICP-CX response encryption, §16.4):
    /// `{task_id, status: "encrypted", iicp_conf_resp}`.
    Sealed(Value),
    /// A lifecycle task's events: a duplicate attached to the running task or replaying
    /// the finished one (only [`start`] answers this).
    Stream(Arc<StreamTask>),
    /// Refused or failed: the status, the RESPONSE-superset error body, the error.
    Failed {
        /// HTTP (and native key 100) status.
        status: u16,
        /// `{task_id, status, error:{code,message,…}, metrics, generated_by_ai:false}`.
        body: Value,
        /// The error.
        error: ErrorBody,
    },
}

/// The pipeline's answer: the outcome and what every transport reports with it.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) outcome: Outcome,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) trace_id: String,
    pub(crate) tokens_used: Option<u64>,
    pub(crate) latency_ms: u64,
}

impl Reply {
    /// The HTTP status of the answer.
    pub(crate) fn status(&self) -> u16 {
        match &self.outcome {
            Outcome::Answered { .. } | Outcome::Sealed(_) | Outcome::Stream(_) => 200,
            Outcome::Failed { status, .. } => *status,
        }
    }

    /// The error, for a refused or failed task.
    pub(crate) fn error(&self) -> Option<&ErrorBody> {
        match &self.outcome {
            Outcome::Failed { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A random 32-hex trace id.
pub(crate) fn new_trace_id() -> String {
    // OS randomness drawn in blocks: one system call per 256 ids, not one per task
    let mut b = [0u8; 16];
    iicp_transport::random::PooledRng.fill_bytes(&mut b);
    if b == [0; 16] {
        b[15] = 1;
    }
    iicp_proto::ids::trace_id_hex(&b)
}

fn trace_context(inb: &Inbound) -> TraceContext {
    let from_body = inb
        .task
        .trace
        .as_ref()
        .and_then(|t| t.trace_id.as_deref())
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    let trace_id = inb
        .traceparent
        .as_ref()
        .map(TraceParent::trace_id_hex)
        .or(from_body)
        .or_else(|| {
            inb.trace_bytes
                .filter(|b| *b != [0; 16])
                .map(|b| iicp_proto::ids::trace_id_hex(&b))
        })
        .unwrap_or_else(new_trace_id);
    TraceContext {
        trace_id,
        traceparent: inb.traceparent,
    }
}

/// Builds an error reply; with a task id the body is the RESPONSE superset
/// `{task_id, status, error:{code,message,…}, metrics, generated_by_ai:false}`.
pub(crate) fn error_reply(
    task_id: Option<&TaskId>,
    mut error: ErrorBody,
    trace_id: String,
    latency_ms: u64,
) -> Reply {
    let status = error.status_or_default();
    error.http_status = Some(status);
    let body = match task_id {
        Some(id) => {
            let mut r = TaskResponse::failure(id.clone(), &error);
            r.metrics = Some(TaskMetrics {
                latency_ms: Some(latency_ms),
                tokens_used: Some(0),
                ..TaskMetrics::default()
            });
            serde_json::to_value(&r)
                .unwrap_or_else(|_| json!({"error": {"code": "internal_error"}}))
        }
        None => serde_json::to_value(&error)
            .unwrap_or_else(|_| json!({"error": {"code": "internal_error"}})),
    };
    Reply {
        retry_after: error.retry_after_ms.map(Duration::from_millis),
        outcome: Outcome::Failed {
            status,
            body,
            error,
        },
        trace_id,
        tokens_used: None,
        latency_ms,
    }
}

/// Checks the caller's credential per [`AuthMode`] (§4.3, DESIGN §4.5).
///
/// `consumer`: a directory-signed consumer token, from `X-IICP-Consumer-Token` or, on
/// the native transport (which has no headers), from key 11; or, as §4.3 requires of
/// every node, the node's own token or a configured API token.
fn authorize(shared: &Shared, inb: &Inbound, intent: &str) -> bool {
    let body_token = inb.task.auth.as_ref().and_then(|a| a.node_token.as_ref());
    let credentials = Credentials {
        transport: inb.transport,
        bearer: inb.bearer.as_ref(),
        consumer_token: inb.consumer_token.as_ref(),
        body_token,
    };
    authorized(shared, &credentials, intent)
}

/// The credentials a request brought.
pub(crate) struct Credentials<'a> {
    pub(crate) transport: Transport,
    /// `Authorization: Bearer`.
    pub(crate) bearer: Option<&'a Secret>,
    /// `X-IICP-Consumer-Token`.
    pub(crate) consumer_token: Option<&'a Secret>,
    /// The task body's `auth.node_token` (native key 11).
    pub(crate) body_token: Option<&'a Secret>,
}

/// Whether `c` may run (or observe, or cancel) a task of `intent` under the node's
/// [`AuthMode`] (§4.3, DESIGN §4.5).
pub(crate) fn authorized(shared: &Shared, c: &Credentials<'_>, intent: &str) -> bool {
    match shared.cfg.auth {
        AuthMode::Open => true,
        AuthMode::Token => check_token(shared, c),
        AuthMode::Consumer => {
            let offered = c.consumer_token.or(match c.transport {
                Transport::Native => c.body_token,
                _ => None,
            });
            if let (Some(token), Some(key), Some(node_id)) =
                (offered, shared.directory_key(), shared.node_id())
            {
                match verify_consumer_token(
                    &key,
                    token.expose(),
                    &node_id,
                    intent,
                    shared.unix_secs(),
                ) {
                    Ok(_) => return true,
                    Err(e) => tracing::debug!(reason = %e, "consumer token refused"),
                }
            }
            check_token(shared, c)
        }
    }
}

fn check_token(shared: &Shared, c: &Credentials<'_>) -> bool {
    let offered: Vec<&Secret> = [c.bearer, c.body_token]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    let own = shared.token();
    let accepted = shared.cfg.api_tokens.iter().chain(own.as_ref());
    let mut ok = false;
    for a in accepted {
        for o in &offered {
            ok |= tokens_equal(a.expose(), o.expose());
        }
    }
    ok
}

/// The canonical JSON of `{"intent": intent, "payload": payload}`, written without
/// building (and deep-copying the payload into) that object: keys in canonical order.
fn duplicate_key(intent: &str, payload: &Value) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"intent\":");
    canonical::write_string(intent, &mut out);
    out.push_str(",\"payload\":");
    canonical::write(payload, &mut out);
    out.push('}');
    out
}

/// SHA-256 of `bytes` (the duplicate fingerprint).
fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    iicp_proto::crypto::mac::sha256(bytes)
}

fn qos_label(task: &TaskRequest) -> &'static str {
    task.constraints.qos.map_or("best-effort", |q| q.as_str())
}

/// The log span of one task (ids, transport, peer; never the payload).
fn task_span(inb: &Inbound, trace: &TraceContext, lifecycle: bool) -> tracing::Span {
    tracing::info_span!(
        "task",
        task_id = %inb.task.task_id,
        intent = %inb.task.intent,
        trace_id = %trace.trace_id,
        transport = inb.transport.as_str(),
        peer = %inb.peer,
        lifecycle,
    )
}

/// Runs one task through the pipeline.
pub(crate) async fn run(shared: Arc<Shared>, handler: Arc<dyn TaskHandler>, inb: Inbound) -> Reply {
    let trace = trace_context(&inb);
    let span = task_span(&inb, &trace, false);
    async move {
        let started = Instant::now();
        let reply = run_inner(&shared, handler, inb, trace, started).await;
        match reply.error() {
            None => tracing::info!(status = reply.status(), latency_ms = reply.latency_ms, "task answered"),
            Some(e) => tracing::info!(status = reply.status(), code = %e.code, latency_ms = reply.latency_ms, "task refused or failed"),
        }
        reply
    }
    .instrument(span)
    .await
}

/// What [`start`] made of a lifecycle request.
pub(crate) enum Started {
    /// Refused before acceptance (or not a lifecycle task after all): the answer, to
    /// render as the buffered transports do.
    Reply(Box<Reply>),
    /// Accepted now: read its events.
    Stream(Arc<StreamTask>),
    /// A duplicate: attached to the running task, or its finished events replayed.
    Attached(Arc<StreamTask>),
}

/// Starts a lifecycle task (PROTOCOL.md §11, ADR 0013): steps 1–6 as for any task; once
/// admitted, the task is registered, `accepted` is its first event, and it runs on its
/// own tokio task, appending `partial` events as the handler produces chunks and exactly
/// one terminal. The caller reads the events from the returned [`StreamTask`]; a caller
/// that goes away does not stop the task (cancel it, or let its deadline end it).
///
/// A handler that does not stream, or a request that did not negotiate the profile,
/// runs buffered ([`run`]) and comes back as [`Started::Reply`].
pub(crate) async fn start(
    shared: &Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    mut inb: Inbound,
) -> Started {
    if !(inb.lifecycle && handler.streams()) {
        return Started::Reply(Box::new(run(Arc::clone(shared), handler, inb).await));
    }
    let trace = trace_context(&inb);
    let span = task_span(&inb, &trace, true);
    let started = Instant::now();
    let admitted = match span.in_scope(|| admit(shared, &mut inb, &trace, started, true)) {
        Ok(a) => a,
        Err(reply) => {
            return match reply.outcome {
                Outcome::Stream(task) => Started::Attached(task),
                _ => {
                    if let Some(e) = reply.error() {
                        span.in_scope(|| tracing::info!(status = reply.status(), code = %e.code, "task refused"));
                    }
                    Started::Reply(reply)
                }
            };
        }
    };
    let task = Arc::new(StreamTask::new(
        EventLog::new(inb.task.task_id.as_str()),
        admitted.intent.as_str().to_owned(),
        admitted.fingerprint,
        inb.peer,
        admitted.seal_key.clone(),
        trace.trace_id.clone(),
    ));
    if let Err(running) = shared.streams.insert(Arc::clone(&task)) {
        // untracked duplicates (store full) of a running task: attach
        return Started::Attached(running);
    }
    task.log.emit(EventKind::Accepted, |_| {});
    tokio::spawn(
        drive(
            Arc::clone(shared),
            handler,
            inb,
            trace,
            started,
            admitted,
            Arc::clone(&task),
        )
        .instrument(span),
    );
    Started::Stream(task)
}

/// How a lifecycle task's execution ended.
enum End {
    Done(Result<TaskOutput, HandlerError>),
    Cancelled,
    TimedOut,
}

/// Runs an accepted lifecycle task: the handler's chunks become `partial` events, and
/// its end one terminal event; then metrics, the receipt and the duplicate store.
async fn drive(
    shared: Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    inb: Inbound,
    trace: TraceContext,
    started: Instant,
    admitted: Admitted,
    task: Arc<StreamTask>,
) {
    let Admitted {
        intent,
        intent_label,
        payload,
        ticket,
        permit,
        ..
    } = admitted;
    let (timeout_ms, deadline) = budget(&shared, &inb);
    // tokens so far, cumulative: the handler's chunks go straight into the task's log
    let tokens: Arc<parking_lot::Mutex<Option<u64>>> = Arc::default();
    let end = {
        let (cancel_guard, cancel) = Cancellation::new();
        let running = Running::start(&shared);
        let chunks = {
            let (task, tokens) = (Arc::clone(&task), Arc::clone(&tokens));
            Chunks::direct(move |chunk| {
                if partial(&task, chunk, &mut tokens.lock()) {
                    Ok(())
                } else {
                    Err(StreamClosed)
                }
            })
        };
        let work = handler.handle_stream(
            handler_task(&inb, &trace, (intent, payload), deadline, cancel),
            chunks,
        );
        let end = tokio::select! {
            biased;
            () = task.log.cancelled() => End::Cancelled,
            () = tokio::time::sleep_until(deadline) => End::TimedOut,
            out = work => End::Done(out),
        };
        // the handler's future (and with it the model server's request) ends here
        drop(cancel_guard);
        drop(running);
        end
    };
    drop(permit);
    let latency_ms = elapsed_ms(started);
    let qos = qos_label(&inb.task);
    let task_id = &inb.task.task_id;
    let (status, error_code) = match end {
        End::Done(Ok(mut out)) => {
            let (total, model) = out.take_accounting();
            let total = total.or(*tokens.lock()).unwrap_or(0);
            let model = model.or_else(|| shared.first_model());
            crate::receipt::spawn(
                &shared,
                task_id,
                total,
                &out.result,
                inb.task.source_node_id.as_deref(),
            );
            let result = out.result;
            task.log.emit(EventKind::Completed, |e| {
                e.result = (!result.is_null()).then_some(result);
                e.tokens_used = Some(total);
                e.model_used = model;
                e.metrics = Some(TaskMetrics {
                    latency_ms: Some(latency_ms),
                    tokens_used: Some(total),
                    ..TaskMetrics::default()
                });
                e.generated_by_ai = Some(true);
            });
            shared
                .metrics
                .task("success", &intent_label, qos, Some(latency_ms), total);
            count(&shared, true, latency_ms);
            tracing::info!(status = 200, latency_ms, "lifecycle task completed");
            (200, None)
        }
        End::Done(Err(e)) => {
            let body = e.to_error_body();
            tracing::warn!(code = %body.code, "lifecycle task handler failed");
            let kind = if body.code == ErrorCode::TaskTimeout {
                EventKind::TimedOut
            } else {
                EventKind::Failed
            };
            fail_stream(&shared, &task, kind, &body, &intent_label, qos, latency_ms)
        }
        End::Cancelled => {
            tracing::info!(latency_ms, "lifecycle task cancelled");
            let body =
                ErrorBody::new(ErrorCode::Cancelled, "the task was cancelled").with_status(499);
            fail_stream(
                &shared,
                &task,
                EventKind::Cancelled,
                &body,
                &intent_label,
                qos,
                latency_ms,
            )
        }
        End::TimedOut => {
            tracing::warn!(
                timeout_ms,
                "lifecycle task deadline passed; handler cancelled"
            );
            let body = ErrorBody::new(
                ErrorCode::TaskTimeout,
                format!("the task exceeded its {timeout_ms} ms budget"),
            )
            .with_status(504);
            fail_stream(
                &shared,
                &task,
                EventKind::TimedOut,
                &body,
                &intent_label,
                qos,
                latency_ms,
            )
        }
    };
    if let Some(t) = ticket {
        let events = task.log.events();
        let terminal = events
            .last()
            .and_then(|e| serde_json::to_string(&**e).ok())
            .unwrap_or_default();
        t.finish(Cached {
            status,
            body: Arc::from(terminal),
            error_code,
            events: Some(Arc::from(events)),
        });
    }
}

/// Appends one handler chunk as a `partial` event (tokens cumulative).
/// `false` once the task has its terminal.
fn partial(task: &StreamTask, chunk: Chunk, tokens: &mut Option<u64>) -> bool {
    if chunk.tokens_used.is_some() {
        *tokens = chunk.tokens_used;
    }
    let t = *tokens;
    task.log.emit(EventKind::Partial, |e| {
        e.result = Some(chunk.result);
        e.tokens_used = t;
    })
}

/// Ends a lifecycle task with a failure terminal of `kind`; returns what the duplicate
/// store keeps (status, code).
fn fail_stream(
    shared: &Shared,
    task: &StreamTask,
    kind: EventKind,
    body: &ErrorBody,
    intent_label: &str,
    qos: &'static str,
    latency_ms: u64,
) -> (u16, Option<String>) {
    let label = match kind {
        EventKind::TimedOut => "timeout",
        EventKind::Cancelled => "cancelled",
        _ => "error",
    };
    shared
        .metrics
        .task(label, intent_label, qos, Some(latency_ms), 0);
    count(shared, false, latency_ms);
    shared.recovery.task_failed(&body.code);
    task.log.emit(kind, |e| {
        e.error = Some(ErrorObject {
            code: Some(body.code.clone()),
            message: body.message.clone(),
            extra: serde_json::Map::new(),
        });
        e.metrics = Some(TaskMetrics {
            latency_ms: Some(latency_ms),
            ..TaskMetrics::default()
        });
    });
    (
        body.status_or_default(),
        Some(body.code.as_str().to_owned()),
    )
}

/// A task that passed steps 1–6, holding its slot.
struct Admitted {
    intent: Intent,
    intent_label: String,
    payload: Value,
    /// The key to seal the answer with (IICP-CX response encryption required).
    seal_key: Option<ResponseKey>,
    /// The duplicate-store entry the answer goes to.
    ticket: Option<crate::dedup::Ticket>,
    permit: tokio::sync::OwnedSemaphorePermit,
    /// The duplicate fingerprint (a lifecycle resubmission attaches when equal).
    fingerprint: [u8; 32],
}

async fn run_inner(
    shared: &Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    mut inb: Inbound,
    trace: TraceContext,
    started: Instant,
) -> Reply {
    let Admitted {
        intent,
        intent_label,
        payload,
        seal_key,
        ticket,
        permit,
        ..
    } = match admit(shared, &mut inb, &trace, started, false) {
        Ok(a) => a,
        Err(answer) => return *answer,
    };
    let (timeout_ms, outcome) =
        execute(shared, handler, &inb, &trace, (intent, payload), permit).await;
    let pending = Pending {
        intent_label,
        seal_key,
        ticket,
        timeout_ms,
    };
    finish(shared, &inb, &trace, started, pending, outcome)
}

/// Steps 1–6: validation, auth, served intent and profiles, IICP-CX, duplicates,
/// admission. `Err` is the answer already (a refusal, or a duplicate's replay; boxed,
/// as the admitted path is the common one).
fn admit(
    shared: &Arc<Shared>,
    inb: &mut Inbound,
    trace: &TraceContext,
    started: Instant,
    streamed: bool,
) -> Result<Admitted, Box<Reply>> {
    let cfg = &shared.cfg;
    let task_id = inb.task.task_id.clone();
    let qos = qos_label(&inb.task);
    let fail = |e: ErrorBody, intent_label: &str, status_label: &'static str| {
        shared
            .metrics
            .task(status_label, intent_label, qos, None, 0);
        Err(Box::new(error_reply(
            Some(&task_id),
            e,
            trace.trace_id.clone(),
            elapsed_ms(started),
        )))
    };

    // 1. validation
    let checked = if inb.strict_task_id {
        inb.task.validate()
    } else {
        inb.task.validate_body()
    };
    let intent = match checked {
        Ok(i) => i,
        Err(e) => {
            return fail(
                ErrorBody::new(e.code(), e.to_string()).with_status(422),
                "other",
                "rejected",
            )
        }
    };
    // 2. auth
    if !authorize(shared, inb, intent.as_str()) {
        return fail(
            ErrorBody::new(
                ErrorCode::Unauthorized,
                "missing or invalid task credential",
            )
            .with_status(401),
            "other",
            "rejected",
        );
    }
    // 3. served intent, profiles
    if !shared.served.contains(&intent) {
        return fail(
            ErrorBody::new(
                ErrorCode::UnknownIntent,
                format!("this node does not serve {}", intent.as_str()),
            )
            .with_status(422),
            "other",
            "rejected",
        );
    }
    let intent_label = intent.as_str().to_owned();
    let missing = lifecycle::missing_required(&inb.task.constraints, shared.supported_profiles());
    if !missing.is_empty() {
        return fail(
            ErrorBody::new(
                ErrorCode::UnsupportedProfile,
                format!(
                    "this node does not support the required profile {}",
                    missing[0]
                ),
            )
            .with_status(422),
            &intent_label,
            "rejected",
        );
    }
    // 4. IICP-CX
    let wants_encryption = inb
        .task
        .cx_response_encryption
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case(cx::RESPONSE_ENCRYPTION_REQUIRED));
    let (payload, response_key) = match &inb.task.iicp_conf {
        Some(conf) => match open_envelope(shared, conf, &task_id, &intent) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(reason = %e, spec_code = %e.spec_code(), "CX request refused");
                return fail(
                    ErrorBody::new(e.wire_code(), e.to_string()).with_status(e.http_status()),
                    &intent_label,
                    "rejected",
                );
            }
        },
        None => {
            if wants_encryption {
                return fail(
                    ErrorBody::new(
                        ErrorCode::Cx03,
                        "an encrypted response needs an encrypted request",
                    )
                    .with_status(400),
                    &intent_label,
                    "rejected",
                );
            }
            // the task's payload is not read again: move it, do not copy the tree
            (inb.task.payload.take().unwrap_or(Value::Null), None)
        }
    };
    let seal_key = if wants_encryption { response_key } else { None };
    // 5. duplicates
    // a streamed and a buffered run of one task id are different requests
    let mut key = duplicate_key(intent.as_str(), &payload);
    if streamed {
        key.push_str("\u{0}lifecycle");
    }
    let fp = fingerprint(key.as_bytes());
    let ticket = if inb.track_duplicates {
        match shared.dedup.begin(task_id.as_str(), fp) {
            Begin::New(t) => Some(t),
            Begin::Untracked => None,
            Begin::Replay(Cached {
                events: Some(events),
                ..
            }) => {
                tracing::info!("duplicate lifecycle task: replaying its events");
                let replay = StreamTask::new(
                    EventLog::replayed(task_id.as_str(), &events),
                    intent.as_str().to_owned(),
                    fp,
                    inb.peer,
                    seal_key,
                    trace.trace_id.clone(),
                );
                return Err(Box::new(Reply {
                    outcome: Outcome::Stream(Arc::new(replay)),
                    retry_after: None,
                    trace_id: trace.trace_id.clone(),
                    tokens_used: None,
                    latency_ms: elapsed_ms(started),
                }));
            }
            Begin::Conflict if streamed => {
                // the same request while it runs: attach to its events
                if let Some(running) = shared
                    .streams
                    .get(task_id.as_str())
                    .filter(|t| t.fingerprint == fp && !t.log.is_finished())
                {
                    return Err(Box::new(Reply {
                        outcome: Outcome::Stream(running),
                        retry_after: None,
                        trace_id: trace.trace_id.clone(),
                        tokens_used: None,
                        latency_ms: elapsed_ms(started),
                    }));
                }
                return fail(
                    ErrorBody::new(
                        ErrorCode::Conflict,
                        "task_id is in use: still running, or reused with a different body",
                    )
                    .with_status(409),
                    &intent_label,
                    "rejected",
                );
            }
            Begin::Replay(cached) => {
                tracing::info!("duplicate task: replaying the cached result");
                let outcome = match cached.error_code {
                    None => Outcome::Answered {
                        text: Arc::clone(&cached.body),
                        result: None,
                    },
                    Some(code) => Outcome::Failed {
                        status: cached.status,
                        body: serde_json::from_str(&cached.body).unwrap_or(Value::Null),
                        error: ErrorBody::new(ErrorCode::from(code), "replayed"),
                    },
                };
                let mut reply = Reply {
                    outcome,
                    retry_after: None,
                    trace_id: trace.trace_id.clone(),
                    tokens_used: None,
                    latency_ms: elapsed_ms(started),
                };
                if let Some(key) = &seal_key {
                    seal(&mut reply, key, &task_id);
                }
                return Err(Box::new(reply));
            }
            Begin::Conflict => {
                return fail(
                    ErrorBody::new(
                        ErrorCode::Conflict,
                        "task_id is in use: still running, or reused with a different body",
                    )
                    .with_status(409),
                    &intent_label,
                    "rejected",
                )
            }
        }
    } else {
        None
    };
    // 6. admission
    if shared.draining.load(Ordering::Relaxed) {
        return fail(
            ErrorBody::new(ErrorCode::TemporarilyUnavailable, "the node is stopping")
                .with_status(503),
            &intent_label,
            "rejected",
        );
    }
    let Ok(permit) = Arc::clone(&shared.slots).try_acquire_owned() else {
        let ms = u64::try_from(cfg.capacity_retry_after.as_millis()).unwrap_or(u64::MAX);
        return fail(
            ErrorBody::capacity_exceeded(qos, ms),
            &intent_label,
            "capacity_exceeded",
        );
    };
    Ok(Admitted {
        intent,
        intent_label,
        payload,
        seal_key,
        ticket,
        permit,
        fingerprint: fp,
    })
}

/// The task's budget in ms (its `timeout_ms`, else the node's default) and the
/// deadline it sets from now: the one place the task deadline is computed.
fn budget(shared: &Shared, inb: &Inbound) -> (u64, Instant) {
    let timeout_ms = inb.task.constraints.effective_timeout_ms(
        u64::try_from(shared.cfg.default_timeout.as_millis()).unwrap_or(60_000),
    );
    (
        timeout_ms,
        Instant::now() + Duration::from_millis(timeout_ms),
    )
}

/// The task as the handler sees it.
fn handler_task(
    inb: &Inbound,
    trace: &TraceContext,
    (intent, payload): (Intent, Value),
    deadline: Instant,
    cancel: Cancellation,
) -> Task {
    Task {
        task_id: inb.task.task_id.clone(),
        intent,
        payload,
        constraints: inb.task.constraints.clone(),
        trace: trace.clone(),
        deadline,
        cancel,
        transport: inb.transport,
        encrypted: inb.task.iicp_conf.is_some(),
        source_node_id: inb.task.source_node_id.clone(),
    }
}

/// What the handler did within the deadline (`Err`: the deadline passed first).
type HandlerOutcome = Result<Result<TaskOutput, HandlerError>, tokio::time::error::Elapsed>;

/// Step 7: runs the handler under the task's deadline (its future is dropped when the
/// deadline passes) and frees the slot. Returns the budget and what the handler did.
async fn execute(
    shared: &Arc<Shared>,
    handler: Arc<dyn TaskHandler>,
    inb: &Inbound,
    trace: &TraceContext,
    (intent, payload): (Intent, Value),
    permit: tokio::sync::OwnedSemaphorePermit,
) -> (u64, HandlerOutcome) {
    let (timeout_ms, deadline) = budget(shared, inb);
    let (cancel_guard, cancel) = Cancellation::new();
    let task = handler_task(inb, trace, (intent, payload), deadline, cancel);
    let running = Running::start(shared);
    let outcome = tokio::time::timeout_at(deadline, handler.handle(task)).await;
    drop(cancel_guard);
    drop(running);
    drop(permit);
    (timeout_ms, outcome)
}

/// What [`finish`] needs of an admitted task besides the handler's outcome.
struct Pending {
    intent_label: String,
    seal_key: Option<ResponseKey>,
    ticket: Option<crate::dedup::Ticket>,
    timeout_ms: u64,
}

/// Step 8: the answer — success (kept for duplicates, sealed when asked), the
/// handler's error, or the timeout — with metrics and the credits receipt.
fn finish(
    shared: &Arc<Shared>,
    inb: &Inbound,
    trace: &TraceContext,
    started: Instant,
    pending: Pending,
    outcome: HandlerOutcome,
) -> Reply {
    let task_id = &inb.task.task_id;
    let qos = qos_label(&inb.task);
    let Pending {
        intent_label,
        seal_key,
        ticket,
        timeout_ms,
    } = pending;

    let latency_ms = elapsed_ms(started);
    match outcome {
        Ok(Ok(mut out)) => {
            let (tokens, model) = out.take_accounting();
            let model = model.or_else(|| shared.first_model());
            crate::receipt::spawn(
                shared,
                task_id,
                tokens.unwrap_or(0),
                &out.result,
                inb.task.source_node_id.as_deref(),
            );
            // the result as it came: a model server's text is written out unparsed
            let mut r = TaskResponse::success(task_id.clone(), out.result);
            r.metrics = Some(TaskMetrics {
                latency_ms: Some(latency_ms),
                tokens_used: Some(tokens.unwrap_or(0)),
                ..TaskMetrics::default()
            });
            r.model_used = model;
            r.generated_by_ai = Some(true);
            shared.metrics.task(
                "success",
                &intent_label,
                qos,
                Some(latency_ms),
                tokens.unwrap_or(0),
            );
            count(shared, true, latency_ms);
            // serialised once, straight from the response (no value tree of it): the
            // replay copy and the HTTP answer share the text
            let text: Arc<str> = Arc::from(serde_json::to_string(&r).unwrap_or_default());
            if let Some(t) = ticket {
                t.finish(Cached {
                    status: 200,
                    body: Arc::clone(&text),
                    error_code: None,
                    events: None,
                });
            }
            let mut reply = Reply {
                outcome: Outcome::Answered {
                    text,
                    result: r.result.take(),
                },
                retry_after: None,
                trace_id: trace.trace_id.clone(),
                tokens_used: tokens,
                latency_ms,
            };
            if let Some(key) = &seal_key {
                seal(&mut reply, key, task_id);
            }
            reply
        }
        Ok(Err(e)) => {
            let body = e.to_error_body();
            let label = if body.code == ErrorCode::TaskTimeout {
                "timeout"
            } else {
                "error"
            };
            tracing::warn!(code = %body.code, "task handler failed");
            shared
                .metrics
                .task(label, &intent_label, qos, Some(latency_ms), 0);
            count(shared, false, latency_ms);
            shared.recovery.task_failed(&body.code);
            error_reply(Some(task_id), body, trace.trace_id.clone(), latency_ms)
        }
        Err(_) => {
            tracing::warn!(timeout_ms, "task deadline passed; handler cancelled");
            shared
                .metrics
                .task("timeout", &intent_label, qos, Some(latency_ms), 0);
            count(shared, false, latency_ms);
            shared.recovery.task_failed(&ErrorCode::TaskTimeout);
            error_reply(
                Some(task_id),
                ErrorBody::new(
                    ErrorCode::TaskTimeout,
                    format!("the task exceeded its {timeout_ms} ms budget"),
                )
                .with_status(504),
                trace.trace_id.clone(),
                latency_ms,
            )
        }
    }
}

/// Counts a running task in `active_jobs` and the in-flight gauge, even when the
/// pipeline future is dropped midway (caller gone).
struct Running<'a>(&'a Shared);

impl<'a> Running<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.active.fetch_add(1, Ordering::Relaxed);
        shared.metrics.in_flight(1);
        Self(shared)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight(-1);
    }
}

fn count(shared: &Shared, success: bool, latency_ms: u64) {
    if success {
        shared.recovery.task_succeeded();
    }
    let mut c = shared.counters.lock();
    if success {
        c.success += 1;
    } else {
        c.failed += 1;
    }
    c.latency_sum_ms = c.latency_sum_ms.saturating_add(latency_ms);
}

fn open_envelope(
    shared: &Shared,
    conf: &Value,
    task_id: &TaskId,
    intent: &Intent,
) -> Result<(Value, Option<ResponseKey>), cx::CxError> {
    let key = shared.cfg.cx_key.as_ref().ok_or(cx::CxError::NoKey)?;
    let conf = IicpConf::from_value(conf)?;
    let opened = cx::open_call(key, &conf, task_id.as_str(), intent.as_str())?;
    let payload = opened.payload_json()?;
    Ok((payload, Some(opened.response_key().clone())))
}

/// Seals an answered task for the caller: `{task_id, status: "encrypted",
/// iicp_conf_resp}` (§16.4), the plaintext being the RESPONSE text. Failures stay as
/// they are.
fn seal(reply: &mut Reply, key: &ResponseKey, task_id: &TaskId) {
    let Outcome::Answered { text, .. } = &reply.outcome else {
        return;
    };
    match key.seal(&mut rand_core::OsRng, text.as_bytes()) {
        Ok(sealed) => {
            reply.outcome = Outcome::Sealed(json!({
                "task_id": task_id.as_str(),
                "status": "encrypted",
                "iicp_conf_resp": IicpConfResp::to_value(&sealed),
            }));
        }
        Err(e) => {
            tracing::error!(reason = %e, "CX response encryption failed");
            *reply = error_reply(
                Some(task_id),
                ErrorBody::new(ErrorCode::Cx02, "response encryption failed").with_status(500),
                reply.trace_id.clone(),
                reply.latency_ms,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_random_hex_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..200).map(|_| new_trace_id()).collect();
        assert_eq!(ids.len(), 200, "ids repeat across block refills");
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn the_duplicate_key_is_the_canonical_object() {
        let payload = json!({
            "messages": [{"role": "user", "content": "h\u{e9}llo \"q\" \n"}],
            "max_tokens": 64,
            "temperature": 0.25,
            "z": null,
            "a": [true, false, 1e3],
        });
        let intent = "urn:iicp:intent:llm:chat:v1";
        let built = canonical::to_vec(&json!({"intent": intent, "payload": &payload}));
        assert_eq!(duplicate_key(intent, &payload).as_bytes(), built.as_slice());
        assert_eq!(
            fingerprint(b"abc"),
            <[u8; 32]>::try_from(
                hex::decode("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                    .unwrap()
                    .as_slice()
            )
            .unwrap()
        );
    }
}
