//! Streaming through the relay (PROTOCOL.md §11, §14.2 streaming variant; ADR 0013).
//!
//! A node behind the relay advertises `…/v1/relay-for/{worker_id}` as its endpoint, so
//! a client's lifecycle resources arrive here:
//!
//! * `POST /v1/relay-for/{worker_id}/v1/tasks` (and `…/v1/tasks/stream`, which answers
//!   with the event stream itself, ADR 0019) pushes the task to the worker as a CALL
//!   with key 24 (and key 2) and waits for its first RESPONSE. A lifecycle frame means
//!   accepted: the relay keeps the stream's events in an [`EventLog`] and answers 202
//!   with the task state; a final frame without the envelope is the worker's refusal
//!   (passed on as `POST /v1/relay-for/…/v1/task` passes it on) or its buffered answer.
//! * `GET …/v1/tasks/{task_id}/events` streams the events as the worker sends them
//!   (server-sent events; the worker's sequence numbers, which its sealed chunks are
//!   bound to, are kept — no `accepted` event is added).
//! * `POST …/v1/tasks/{task_id}/cancel` sends the worker the cancel — as OBSERVE
//!   (ADR 0013: on a relay connection CONTROL's type byte 0x0B is RELAY_BIND). A
//!   long-poll worker has no cancel message (§14.3): the relay ends the stream with a
//!   `cancelled` terminal and drops the worker's later events.
//!
//! A worker bound over HTTP long-poll streams too: its pull carries the task with
//! `stream: true`, and each `{call_id, event}` it posts is appended as it arrives
//! (module `longpoll`).
//! * `GET …/v1/tasks/{task_id}` is the state.
//!
//! The events are checked on the way (order, one terminal, nothing after it); a worker
//! whose stream breaks or whose session ends first leaves a `failed` terminal. Only the
//! address that submitted a task may observe or cancel it. Payloads are never logged.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_proto::error::ErrorCode;
use iicp_proto::lifecycle::{Event, EventKind};
use iicp_proto::message::{Body, Call, Message, Observe, Prefer, Response};
use iicp_proto::task::{ErrorObject, Metrics};
use iicp_transport::events::{self, EventLog, HasLog};
use iicp_transport::http::server::{json, read_json, HttpError, Request};
use iicp_transport::http::Router;
use iicp_transport::native::ConnectionHandle;
use serde_json::Value;

use super::longpoll::{HttpSession, Posted};
use super::{relay_answer, ForwardError, RelayHandle, Session};

/// A task streamed through the relay.
pub(crate) struct Relayed {
    log: EventLog,
    worker_id: String,
    owner: IpAddr,
    upstream: Upstream,
}

/// The worker a relayed stream comes from, as far as cancelling it goes.
enum Upstream {
    Native(ConnectionHandle),
    LongPoll {
        session: Arc<HttpSession>,
        call_id: String,
    },
}

/// Where a relayed stream's events come from.
enum Source {
    Native(iicp_transport::native::ResponseStream),
    LongPoll(tokio::sync::mpsc::Receiver<Posted>),
}

/// One read from a [`Source`].
enum Next {
    /// A lifecycle event of the task.
    Event(Box<Event>),
    /// An answer without the lifecycle envelope: a refusal or a buffered answer.
    Buffered(Answer),
    /// The worker went away, or sent something unusable.
    Broken(&'static str),
}

/// A buffered answer of the worker, in the form its transport gave it.
enum Answer {
    Native(Box<Response>),
    LongPoll(Value),
}

impl Source {
    async fn next(&mut self, task_id: &str) -> Next {
        match self {
            Self::Native(stream) => match stream.next().await {
                Some(Ok(resp)) => match event_of(&resp, task_id) {
                    Some(e) => Next::Event(Box::new(e)),
                    None => Next::Buffered(Answer::Native(Box::new(resp))),
                },
                Some(Err(_)) | None => Next::Broken("the relayed worker went away"),
            },
            Self::LongPoll(rx) => match rx.recv().await {
                Some(Posted::Event(v)) => match serde_json::from_value::<Event>(v) {
                    Ok(e) if e.task_id == task_id => Next::Event(Box::new(e)),
                    Ok(_) => Next::Broken("the relayed worker sent another task's event"),
                    Err(_) => Next::Broken("the relayed worker sent an invalid event"),
                },
                Some(Posted::Result(v)) => Next::Buffered(Answer::LongPoll(v)),
                None => Next::Broken("the relayed worker went away"),
            },
        }
    }
}

impl HasLog for Relayed {
    fn log(&self) -> &EventLog {
        &self.log
    }
}

/// The relay's streamed tasks.
pub(crate) type Streams = events::Registry<Relayed>;

/// How long a cancel waits for the worker's terminal before answering the state.
const CANCEL_SETTLE: Duration = Duration::from_secs(2);

fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<iicp_transport::http::PeerAddr>()
        .map(|p| p.0.ip().to_canonical())
}

fn base(worker: &str) -> String {
    format!("/v1/relay-for/{worker}")
}

/// Adds the streaming resources under `/v1/relay-for/{worker_id}`.
pub(super) fn routes(relay: &RelayHandle, router: Router) -> Router {
    let (s, s2, g, e, c) = (
        relay.clone(),
        relay.clone(),
        relay.clone(),
        relay.clone(),
        relay.clone(),
    );
    router
        .route_cors(
            Method::POST,
            "/v1/relay-for/{worker_id}/v1/tasks",
            move |req, params| {
                let relay = s.clone();
                async move {
                    let (worker, submitted) = submit_request(&relay, req, &params).await?;
                    Ok::<_, HttpError>(match submitted {
                        Submitted::Accepted(t) => {
                            json(StatusCode::ACCEPTED, &t.log.state(Some(&base(&worker))))
                        }
                        Submitted::Known(t) => {
                            json(StatusCode::OK, &t.log.state(Some(&base(&worker))))
                        }
                        Submitted::Answered(r) => r,
                    })
                }
            },
        )
        .route_cors(
            Method::POST,
            "/v1/relay-for/{worker_id}/v1/tasks/stream",
            move |req, params| {
                let relay = s2.clone();
                async move {
                    Ok::<_, HttpError>(match submit_request(&relay, req, &params).await?.1 {
                        Submitted::Accepted(t) | Submitted::Known(t) => {
                            events::sse_response(t, None, |_, _| None)
                        }
                        Submitted::Answered(r) => r,
                    })
                }
            },
        )
        .route_cors(
            Method::GET,
            "/v1/relay-for/{worker_id}/v1/tasks/{task_id}",
            move |req, params| {
                let relay = g.clone();
                async move {
                    let t = observed(&relay, &req, params.get("worker_id"), params.get("task_id"))?;
                    Ok::<_, HttpError>(json(
                        StatusCode::OK,
                        &t.log.state(Some(&base(&t.worker_id))),
                    ))
                }
            },
        )
        .route_cors(
            Method::GET,
            "/v1/relay-for/{worker_id}/v1/tasks/{task_id}/events",
            move |req, params| {
                let relay = e.clone();
                async move {
                    let t = observed(&relay, &req, params.get("worker_id"), params.get("task_id"))?;
                    Ok::<_, HttpError>(events::sse_response(
                        t,
                        events::resume_after(&req),
                        |_, _| None,
                    ))
                }
            },
        )
        .route_cors(
            Method::POST,
            "/v1/relay-for/{worker_id}/v1/tasks/{task_id}/cancel",
            move |req, params| {
                let relay = c.clone();
                async move {
                    let t = observed(&relay, &req, params.get("worker_id"), params.get("task_id"))?;
                    if !t.log.is_finished() {
                        cancel(&t).await;
                    }
                    Ok::<_, HttpError>(json(
                        StatusCode::OK,
                        &t.log.state(Some(&base(&t.worker_id))),
                    ))
                }
            },
        )
}

/// Cancels a relayed stream: a native worker is sent the cancel and given
/// [`CANCEL_SETTLE`] to end its stream; a long-poll worker's stream is ended here.
async fn cancel(t: &Relayed) {
    match &t.upstream {
        Upstream::Native(handle) => {
            // CONTROL's type byte is RELAY_BIND on a relay connection
            let cancel = Observe::cancel(t.log.task_id(), "cancelled by the caller");
            if handle.send(Message::Observe(cancel)).await.is_err() {
                tracing::debug!("relay: cancel not delivered, the worker's session ended");
            }
            let _ = tokio::time::timeout(CANCEL_SETTLE, t.log.finished()).await;
        }
        Upstream::LongPoll { session, call_id } => {
            session.end_stream(call_id);
            t.log.emit(EventKind::Cancelled, |e| {
                e.error = Some(ErrorObject {
                    code: Some(ErrorCode::Cancelled),
                    message: "cancelled by the caller".to_owned(),
                    extra: serde_json::Map::new(),
                });
            });
        }
    }
}

/// The streamed task `task_id` of `worker`, if the caller submitted it; 404 otherwise
/// (an unknown task and another caller's look the same).
fn observed(
    relay: &RelayHandle,
    req: &Request,
    worker: Option<&str>,
    task_id: Option<&str>,
) -> Result<Arc<Relayed>, HttpError> {
    let not_found = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such relayed task",
        )
    };
    let t = task_id
        .and_then(|id| relay.inner.streams.get(id))
        .ok_or_else(not_found)?;
    if Some(t.worker_id.as_str()) != worker || peer(req).is_some_and(|p| p != t.owner) {
        return Err(not_found());
    }
    Ok(t)
}

/// A submit resource's request: admitted, its body read, submitted; with the worker id.
async fn submit_request(
    relay: &RelayHandle,
    mut req: Request,
    params: &iicp_transport::http::Params,
) -> Result<(String, Submitted), HttpError> {
    let worker = params.get("worker_id").unwrap_or_default().to_owned();
    relay.admit_task(&req)?;
    let limit = relay.inner.config.max_body_bytes;
    let body: Value = read_json(&mut req, limit).await?;
    let submitted = submit(relay, &worker, body, peer(&req)).await?;
    Ok((worker, submitted))
}

/// What a streamed submit led to.
enum Submitted {
    /// A new relayed stream.
    Accepted(Arc<Relayed>),
    /// The same caller's task again (a retry): its known stream.
    Known(Arc<Relayed>),
    /// No stream: the worker's refusal or buffered answer.
    Answered(iicp_transport::http::server::Response),
}

async fn submit(
    relay: &RelayHandle,
    worker: &str,
    task: Value,
    owner: Option<IpAddr>,
) -> Result<Submitted, HttpError> {
    let Some(task_id) = task
        .get("task_id")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return Err(HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationError,
            "a streamed task needs its task_id",
        ));
    };
    let task_id = task_id.to_owned();
    let session = relay
        .inner
        .alive(worker)
        .ok_or_else(|| ForwardError::NoSession.http())?;
    if let Some(existing) = relay.inner.streams.get(&task_id) {
        if existing.worker_id == worker && Some(existing.owner) == owner {
            return Ok(Submitted::Known(existing));
        }
    }
    let n = relay
        .inner
        .calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let call_id = format!("relay-{n}");
    let (upstream, mut source) = match session {
        Session::Native(handle) => {
            let call = Call {
                session_id: Some(call_id.clone()),
                call_id: Some(call_id),
                payload: Some(Body::json(&task)),
                task_id: Some(task_id.clone()),
                ..Call::default()
            };
            match handle.call_stream(call).await {
                Ok(s) => (Upstream::Native(handle), Source::Native(s)),
                Err(e) => {
                    tracing::info!(error = %e, "relay: streamed forward failed");
                    return Err(ForwardError::Failed.http());
                }
            }
        }
        Session::Http(session) => {
            let rx = session
                .stream(&call_id, &task_id, &task)
                .map_err(|e| e.http())?;
            (
                Upstream::LongPoll { session, call_id },
                Source::LongPoll(rx),
            )
        }
    };
    let first =
        tokio::time::timeout(relay.inner.config.forward_timeout, source.next(&task_id)).await;
    let Ok(first) = first else {
        upstream.end();
        return Err(ForwardError::Timeout.http());
    };
    let first_event = match first {
        Next::Event(e) => *e,
        // no envelope: a refusal, or a worker that answered buffered
        Next::Buffered(answer) => {
            upstream.end();
            return buffered(&task, answer).map(Submitted::Answered);
        }
        Next::Broken(why) => {
            tracing::info!(reason = why, "relay: streamed forward failed");
            upstream.end();
            return Err(ForwardError::Failed.http());
        }
    };
    let relayed = Arc::new(Relayed {
        log: EventLog::new(task_id.clone()),
        worker_id: worker.to_owned(),
        owner: owner.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        upstream,
    });
    if relay.inner.streams.insert(Arc::clone(&relayed)).is_err() {
        relayed.upstream.end();
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "task_id is in use by another relayed stream",
        ));
    }
    append(&relayed, first_event);
    let pump = Arc::clone(&relayed);
    tokio::spawn(async move {
        while !pump.log.is_finished() {
            match source.next(pump.log.task_id()).await {
                Next::Event(e) => append(&pump, *e),
                Next::Buffered(_) => {
                    broken(&pump, "the relayed worker answered outside the stream");
                }
                Next::Broken(why) => broken(&pump, why),
            }
        }
        pump.upstream.end();
    });
    Ok(Submitted::Accepted(relayed))
}

impl Upstream {
    /// The relay stops listening to this call (a long-poll worker's later posts for it
    /// are dropped; a native stream ends with its `ResponseStream`).
    fn end(&self) {
        if let Self::LongPoll { session, call_id } = self {
            session.end_stream(call_id);
        }
    }
}

/// Appends a worker's event; one out of order or after the terminal ends the stream
/// with a `failed` terminal instead.
fn append(t: &Relayed, e: Event) {
    if let Err(err) = t.log.append(e) {
        tracing::info!(error = %err, "relay: the worker's stream is out of order");
        broken(t, "the relayed worker's stream broke");
    }
}

fn broken(t: &Relayed, message: &str) {
    t.log.emit(EventKind::Failed, |e| {
        e.error = Some(ErrorObject {
            code: Some(ErrorCode::E031),
            message: message.to_owned(),
            extra: serde_json::Map::new(),
        });
    });
}

/// A worker's first answer that carries no lifecycle envelope, answered as the
/// buffered relay route answers.
fn buffered(
    task: &Value,
    answer: Answer,
) -> Result<iicp_transport::http::server::Response, HttpError> {
    let result = match answer {
        Answer::Native(resp) => super::outcome_of(&resp),
        Answer::LongPoll(result) => Ok(result),
    };
    match result {
        Ok(result) => Ok(json(StatusCode::OK, &relay_answer(task, result))),
        Err(e) => Err(e.http()),
    }
}

/// The lifecycle event a worker's RESPONSE carries (key 13 envelope), as the HTTP
/// event object: status from key 4 (or `encrypted` when key 5 is the sealed chunk),
/// result from key 5, error from key 6, tokens from key 7. `None` without an envelope
/// or with another task's id.
fn event_of(r: &Response, task_id: &str) -> Option<Event> {
    let env = r.lifecycle.as_ref()?;
    if env.task_id.as_deref() != Some(task_id) {
        return None;
    }
    let kind = EventKind::parse(env.event.as_deref()?)?;
    let mut e = Event::new(task_id, env.sequence?, kind);
    e.is_final = env.is_final.unwrap_or(kind.is_terminal());
    if let Some(status) = &r.status {
        e.status.clone_from(status);
    }
    if let Some(body) = &r.result {
        let v = body.to_json(Prefer::Cbor).ok()?;
        match v.get("status").and_then(Value::as_str) {
            Some("encrypted") if v.get("iicp_conf_resp").is_some() => {
                e.status = "encrypted".to_owned();
                e.iicp_conf_resp = v.get("iicp_conf_resp").cloned();
            }
            _ => e.result = Some(v.into()),
        }
    }
    if let Some(err) = &r.error {
        e.error = Some(ErrorObject {
            code: err.code.as_deref().map(ErrorCode::from),
            message: err.message.clone().unwrap_or_default(),
            extra: serde_json::Map::new(),
        });
    }
    e.tokens_used = r.tokens_used;
    if kind.is_terminal() {
        e.metrics = r.duration_ms.map(|ms| Metrics {
            latency_ms: Some(ms),
            tokens_used: r.tokens_used,
            ..Metrics::default()
        });
        if kind == EventKind::Completed {
            e.generated_by_ai = Some(true);
        }
    }
    Some(e)
}
