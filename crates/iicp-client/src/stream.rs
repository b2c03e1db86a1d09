//! Streamed tasks: the service-lifecycle profile from the client's side (PROTOCOL.md
//! §11, ADR 0013).
//!
//! * Native: the CALL carries key 24 (the task id); each event is one RESPONSE with the
//!   key-13 envelope, validated by [`Tracker`] (call, session and task ids, sequence,
//!   status, finality); cancel is a CONTROL `{1: "cancel", 5: reason, 24: task_id}` on
//!   the same connection.
//! * HTTP: `POST {node}/v1/tasks` (the `/v1/task` body, `required_profiles` naming the
//!   profile) answers 202 and the task state; `GET {node}/v1/tasks/{id}/events` is the
//!   `text/event-stream` of the events (`id:` sequence, `event:` name, `data:` the
//!   event object); cancel is `POST {node}/v1/tasks/{id}/cancel`.
//! * IICP-CX: a result-bearing event of an encrypted task carries its result sealed
//!   (`iicp_conf_resp`, opened with [`ResponseKey::open_chunk`] at the event's sequence).
//!
//! An event stream that breaks a rule, ends without its terminal event, or outlives the
//! client's deadline fails with an error — never a success. Dropping a stream before its
//! terminal event sends the cancel (best effort, on a spawned task).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{BoxStream, Stream, StreamExt};
use iicp_proto::crypto::cx::{IicpConfResp, ResponseKey};
use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_proto::ids::{TaskId, TraceParent};
use iicp_proto::lifecycle::{self, Event, EventKind, Step, TaskState, Tracker, PROFILE};
use iicp_proto::message::{Control, Message, Prefer, Response};
use iicp_proto::secret::Secret;
use iicp_proto::task::{
    ChatChunkParts, ChatStreamAssembler, Metrics, TaskResponse, TaskStatus, ToolCallDelta, Usage,
};
use iicp_transport::http::client::{HttpClient, HttpStream, Redirects};
use iicp_transport::native::{ConnectionHandle, NativeClient, NativeEndpoint, ResponseStream};
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, Kind};
use crate::options::{ChatResult, TransportUsed};
use crate::submit::{self, Exchange, Seal, CX_RESP_INVALID, CX_RESP_REQUIRED};

/// Largest SSE message (bytes between blank lines) the client buffers.
const MAX_SSE_MESSAGE: usize = 4 << 20;
/// How long an HTTP event stream may take to end after its terminal event; an event
/// arriving within it breaks the stream (nothing may follow the terminal).
const TRAILING_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// The reason sent with the cancel of a dropped stream.
const DROP_REASON: &str = "client_cancelled";

/// One event of a streamed task ([`Client::submit_stream`](crate::Client::submit_stream)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TaskEvent {
    /// The node committed to one execution (HTTP streams start with it).
    Accepted {
        /// Its sequence (0).
        sequence: u64,
    },
    /// An incremental result chunk: concatenate them in order.
    Partial {
        /// Its sequence.
        sequence: u64,
        /// The chunk (opened when it travelled sealed).
        result: Value,
        /// Cumulative tokens so far, if the node said.
        tokens_used: Option<u64>,
    },
    /// The task succeeded; nothing follows.
    Completed(Box<StreamEnd>),
}

/// The success of a streamed task: its last chunk and what is known about the run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StreamEnd {
    /// The terminal event's sequence (`None` when the node answered buffered).
    pub sequence: Option<u64>,
    /// The last chunk (maybe `null`); the whole result when the node answered buffered.
    pub result: Value,
    /// Tokens used (the terminal's value is authoritative).
    pub tokens_used: Option<u64>,
    /// The model, when the node said.
    pub model_used: Option<String>,
    /// Node-side metrics, when the node sent them.
    pub metrics: Option<Metrics>,
    /// The node that answered.
    pub node_id: String,
    /// The task id.
    pub task_id: TaskId,
    /// The transport that carried it.
    pub transport: TransportUsed,
    /// Whether the node streamed (false: it answered buffered and this is everything).
    pub streamed: bool,
    /// Whether the payload travelled IICP-CX encrypted.
    pub encrypted: bool,
    /// Partial chunks received before the terminal.
    pub chunks: usize,
    /// Attempts made across nodes before the stream started.
    pub attempts: u32,
    /// The W3C trace context sent.
    pub traceparent: TraceParent,
}

/// What is fixed about a stream once it started.
#[derive(Clone, Debug)]
pub(crate) struct Info {
    pub(crate) node_id: String,
    pub(crate) task_id: TaskId,
    pub(crate) transport: TransportUsed,
    pub(crate) encrypted: bool,
    pub(crate) attempts: u32,
    pub(crate) traceparent: TraceParent,
}

/// The events of a streamed task: `Accepted`?, `Partial`*, then `Completed` — or an
/// error, after which the stream ends. A [`futures_util::Stream`]; [`TaskStream::next`]
/// reads without importing `StreamExt`. Dropping it before the end cancels the task on
/// the node (best effort).
pub struct TaskStream {
    inner: BoxStream<'static, Result<TaskEvent, Error>>,
    info: Info,
    streamed: bool,
}

impl std::fmt::Debug for TaskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStream")
            .field("info", &self.info)
            .field("streamed", &self.streamed)
            .finish_non_exhaustive()
    }
}

impl TaskStream {
    pub(crate) fn new(driver: Driver) -> Self {
        let info = driver.info.clone();
        let streamed = driver.streamed;
        let inner = futures_util::stream::unfold(driver, |mut d| async move {
            d.next_event().await.map(|ev| (ev, d))
        })
        .boxed();
        Self {
            inner,
            info,
            streamed,
        }
    }

    /// The next event; `None` after `Completed` or after an error.
    pub async fn next(&mut self) -> Option<Result<TaskEvent, Error>> {
        self.inner.next().await
    }

    /// The task id.
    pub fn task_id(&self) -> &TaskId {
        &self.info.task_id
    }

    /// The node serving the stream.
    pub fn node_id(&self) -> &str {
        &self.info.node_id
    }

    /// The transport carrying it.
    pub fn transport(&self) -> TransportUsed {
        self.info.transport
    }

    /// Whether the node streams (false: it answers buffered, as one `Completed`).
    pub fn is_streamed(&self) -> bool {
        self.streamed
    }

    /// The W3C trace context sent.
    pub fn traceparent(&self) -> &TraceParent {
        &self.info.traceparent
    }
}

impl Stream for TaskStream {
    type Item = Result<TaskEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

// -----------------------------------------------------------------------------------
// Chat
// -----------------------------------------------------------------------------------

/// One event of a streamed chat ([`Client::chat_stream`](crate::Client::chat_stream)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ChatEvent {
    /// New text of the first choice.
    Delta(String),
    /// A tool-call fragment (fragments with the same `index` form one call; the
    /// assembled calls are in `Done`).
    ToolCallDelta(ToolCallDelta),
    /// Token usage, when a chunk carried it.
    Usage(Usage),
    /// The end: the assembled completion, as [`Client::chat`](crate::Client::chat)
    /// returns it.
    Done(Box<ChatResult>),
}

/// The events of a streamed chat: deltas, then `Done` with the assembled completion
/// (or an error). Dropping it before `Done` cancels the task on the node.
pub struct ChatStream {
    inner: BoxStream<'static, Result<ChatEvent, Error>>,
    task_id: TaskId,
    node_id: String,
    streamed: bool,
    traceparent: TraceParent,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("task_id", &self.task_id)
            .field("node_id", &self.node_id)
            .field("streamed", &self.streamed)
            .finish_non_exhaustive()
    }
}

struct ChatState {
    tasks: TaskStream,
    assembler: ChatStreamAssembler,
    queue: VecDeque<ChatEvent>,
    done: bool,
}

impl ChatState {
    fn queue_parts(&mut self, parts: ChatChunkParts) {
        if !parts.text.is_empty() {
            self.queue.push_back(ChatEvent::Delta(parts.text));
        }
        for t in parts.tool_calls {
            self.queue.push_back(ChatEvent::ToolCallDelta(t));
        }
        if let Some(u) = parts.usage {
            self.queue.push_back(ChatEvent::Usage(u));
        }
    }

    async fn next(&mut self) -> Option<Result<ChatEvent, Error>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            match self.tasks.next().await? {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(TaskEvent::Accepted { .. }) => {}
                Ok(TaskEvent::Partial { result, .. }) => {
                    let parts = self.assembler.push(&result);
                    self.queue_parts(parts);
                }
                Ok(TaskEvent::Completed(end)) => {
                    self.done = true;
                    let assembler = std::mem::take(&mut self.assembler);
                    match finish_chat(assembler, &end) {
                        Ok((parts, result)) => {
                            self.queue_parts(parts);
                            self.queue.push_back(ChatEvent::Done(Box::new(result)));
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }
}

/// The last chunk's contribution and the assembled chat result.
fn finish_chat(
    mut assembler: ChatStreamAssembler,
    end: &StreamEnd,
) -> Result<(ChatChunkParts, ChatResult), Error> {
    let (parts, completion) = if end.streamed {
        let parts = assembler.push(&end.result);
        let mut completion = assembler.finish();
        if completion.id.is_none() {
            completion.id = Some(end.task_id.as_str().to_owned());
        }
        (parts, completion)
    } else {
        // a buffered answer: the whole completion, as `chat` maps it
        let completion =
            crate::options::to_completion(&end.result, &end.task_id).ok_or_else(|| {
                Error::protocol("the node's result is not a chat completion")
                    .with_node(&end.node_id)
            })?;
        let parts = ChatChunkParts {
            text: completion.text().unwrap_or_default(),
            usage: completion.usage.clone(),
            ..ChatChunkParts::default()
        };
        (parts, completion)
    };
    let model = end.model_used.clone().or_else(|| completion.model.clone());
    Ok((
        parts,
        ChatResult {
            completion,
            node_id: end.node_id.clone(),
            task_id: end.task_id.clone(),
            model,
            traceparent: end.traceparent,
        },
    ))
}

impl ChatStream {
    pub(crate) fn new(tasks: TaskStream) -> Self {
        let task_id = tasks.task_id().clone();
        let node_id = tasks.node_id().to_owned();
        let streamed = tasks.is_streamed();
        let traceparent = *tasks.traceparent();
        let state = ChatState {
            tasks,
            assembler: ChatStreamAssembler::new(),
            queue: VecDeque::new(),
            done: false,
        };
        let inner =
            futures_util::stream::unfold(
                state,
                |mut s| async move { s.next().await.map(|ev| (ev, s)) },
            )
            .boxed();
        Self {
            inner,
            task_id,
            node_id,
            streamed,
            traceparent,
        }
    }

    /// The W3C trace context the task travels under (its trace id is the one the
    /// node logs and answers with).
    pub fn traceparent(&self) -> &TraceParent {
        &self.traceparent
    }

    /// The next event; `None` after `Done` or after an error.
    pub async fn next(&mut self) -> Option<Result<ChatEvent, Error>> {
        self.inner.next().await
    }

    /// The task id.
    pub fn task_id(&self) -> &TaskId {
        &self.task_id
    }

    /// The node serving the chat.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether the node streams (false: the whole answer comes as one delta).
    pub fn is_streamed(&self) -> bool {
        self.streamed
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

// -----------------------------------------------------------------------------------
// The driver of one stream
// -----------------------------------------------------------------------------------

/// How a running task is cancelled.
enum Canceller {
    Native {
        conn: ConnectionHandle,
        task_id: String,
    },
    Http {
        http: HttpClient,
        url: String,
        traceparent: TraceParent,
        api_token: Option<Secret>,
        consumer_token: Option<Secret>,
    },
}

impl Canceller {
    /// Sends the cancel on a spawned task (needs a tokio runtime; without one, nothing).
    fn fire(self, reason: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let reason = reason.to_owned();
        match self {
            Canceller::Native { conn, task_id } => {
                rt.spawn(async move {
                    let _ = conn
                        .send(Message::Control(Control::cancel(task_id, reason)))
                        .await;
                });
            }
            Canceller::Http {
                http,
                url,
                traceparent,
                api_token,
                consumer_token,
            } => {
                rt.spawn(async move {
                    let mut req = http
                        .post_json(&url, &serde_json::json!({"reason": reason}))
                        .header("traceparent", traceparent.to_string())
                        .header("x-iicp-trace-id", traceparent.trace_id_hex())
                        .header(
                            iicp_proto::constants::VERSION_HEADER,
                            crate::directory::PROTOCOL_VERSION_HEADER,
                        )
                        .timeout(std::time::Duration::from_secs(10))
                        .redirects(Redirects::None);
                    if let Some(t) = api_token {
                        req = req.bearer(t);
                    }
                    if let Some(t) = consumer_token {
                        req = req.header("x-iicp-consumer-token", t.expose());
                    }
                    let _ = req.send().await;
                });
            }
        }
    }
}

enum Source {
    Native(ResponseStream),
    Http {
        /// Boxed: the stream holds its connection's state (one allocation per stream).
        body: Box<HttpStream>,
        sse: Sse,
    },
    /// A buffered answer: nothing more to read.
    None,
}

/// One event after validation, before the result is opened.
struct Raw {
    sequence: u64,
    kind: EventKind,
    result: Option<Value>,
    sealed: Option<Value>,
    error: Option<ErrorBody>,
    tokens_used: Option<u64>,
    model_used: Option<String>,
    metrics: Option<Metrics>,
}

/// Reads, validates and converts the events of one started stream.
pub(crate) struct Driver {
    pub(crate) info: Info,
    pub(crate) streamed: bool,
    queue: VecDeque<TaskEvent>,
    source: Source,
    tracker: Tracker,
    key: Option<ResponseKey>,
    resp_required: bool,
    deadline: Instant,
    cancel: Option<Canceller>,
    chunks: usize,
    chars: usize,
    done: bool,
    secrets: Vec<Secret>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            c.fire(DROP_REASON);
        }
    }
}

/// What a stream attempt starts with besides the exchange.
pub(crate) struct Start {
    pub(crate) info: Info,
    pub(crate) deadline: Instant,
    pub(crate) secrets: Vec<Secret>,
    /// Over HTTP: the node takes `POST /v1/tasks/stream` (ADR 0019).
    pub(crate) one_request: bool,
}

/// A stream attempt's outcome before its first content: the driver, or the error (with
/// what to do about it decided by the caller's retry loop).
pub(crate) async fn open(
    http: &HttpClient,
    native: &NativeClient,
    route: &crate::submit::Route,
    ex: &Exchange<'_>,
    seal: &Seal<'_>,
    start: Start,
) -> Result<Driver, Error> {
    let Start {
        info,
        deadline,
        secrets,
        one_request,
    } = start;
    let sealed = submit::seal_for(ex, seal)?;
    let resp_required = sealed.is_some() && seal.response_encryption;
    let key = sealed.as_ref().map(|s| s.response_key.clone());
    let task_id = ex.task_id.as_str().to_owned();
    let (source, cancel) = match route {
        crate::submit::Route::Native(endpoint) => {
            let mut call =
                submit::native_call(&submit::native_key5(ex, sealed.as_ref(), resp_required), ex);
            call.task_id = Some(task_id.clone());
            let (conn, source) = native_stream(native, endpoint, call).await?;
            let cancel = Canceller::Native {
                conn,
                task_id: task_id.clone(),
            };
            (source, cancel)
        }
        crate::submit::Route::Http(url) => {
            let base = url.trim_end_matches("/v1/task").to_owned();
            let started = if one_request {
                http_start_streaming(http, &base, ex, sealed.as_ref(), resp_required, deadline)
                    .await?
            } else {
                None
            };
            let started = match started {
                Some(s) => s,
                None => {
                    http_start(http, &base, ex, sealed.as_ref(), resp_required, deadline).await?
                }
            };
            match started {
                HttpStart::Buffered(resp) => {
                    let resp = submit::open_response(resp, key.as_ref(), resp_required)?;
                    return Ok(Driver::buffered(info, resp, deadline, secrets));
                }
                HttpStart::Stream(body) => (
                    Source::Http {
                        body: Box::new(body),
                        sse: Sse::default(),
                    },
                    Canceller::Http {
                        http: http.clone(),
                        url: format!(
                            "{base}{}",
                            lifecycle::HTTP_CANCEL_PATH.replace("{task_id}", &task_id)
                        ),
                        traceparent: *ex.traceparent,
                        api_token: ex.api_token.cloned(),
                        consumer_token: ex.consumer_token.cloned(),
                    },
                ),
            }
        }
    };
    let tracker = match &source {
        Source::Native(rs) => Tracker::native(task_id.clone(), Some(rs.id()), Some(rs.id())),
        _ => Tracker::new(task_id.clone()),
    };
    let mut driver = Driver {
        info,
        streamed: true,
        queue: VecDeque::new(),
        source,
        tracker,
        key,
        resp_required,
        deadline,
        cancel: Some(cancel),
        chunks: 0,
        chars: 0,
        done: false,
        secrets,
    };
    driver.until_first_content().await?;
    Ok(driver)
}

async fn native_stream(
    native: &NativeClient,
    endpoint: &NativeEndpoint,
    call: iicp_proto::message::Call,
) -> Result<(ConnectionHandle, Source), Error> {
    let conn = native
        .connection(endpoint)
        .await
        .map_err(submit::native_error)?;
    let rs = conn.call_stream(call).await.map_err(submit::native_error)?;
    Ok((conn, Source::Native(rs)))
}

enum HttpStart {
    Stream(HttpStream),
    Buffered(TaskResponse),
}

/// Whether an answer's body is an event stream (`text/event-stream`).
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// The lifecycle task body: the task with the profile required.
fn lifecycle_body(
    ex: &Exchange<'_>,
    sealed: Option<&iicp_proto::crypto::cx::SealedRequest>,
    resp_required: bool,
) -> iicp_proto::task::TaskRequest {
    let mut body = submit::task_body(ex, sealed, resp_required);
    let profiles = body
        .constraints
        .required_profiles
        .get_or_insert_with(Vec::new);
    if !profiles.iter().any(|p| p == PROFILE) {
        profiles.push(PROFILE.to_owned());
    }
    body
}

/// `POST /v1/tasks/stream`: the task and its event stream in one request (ADR 0019).
/// `None` when the resource is not there after all (404/405: an older relay or node in
/// front): the caller falls back to [`http_start`].
async fn http_start_streaming(
    http: &HttpClient,
    base: &str,
    ex: &Exchange<'_>,
    sealed: Option<&iicp_proto::crypto::cx::SealedRequest>,
    resp_required: bool,
    deadline: Instant,
) -> Result<Option<HttpStart>, Error> {
    let body = lifecycle_body(ex, sealed, resp_required);
    let left = deadline.saturating_duration_since(Instant::now());
    let stream = submit::provider_headers(
        http.post_json(
            format!("{base}{}", lifecycle::HTTP_SUBMIT_STREAM_PATH),
            &body,
        )
        .header("accept", "text/event-stream")
        .timeout(left.max(std::time::Duration::from_millis(1)))
        .redirects(Redirects::None),
        ex,
    )
    .send_streaming()
    .await
    .map_err(|e| Error::http(e, ErrorCode::TaskTimeout))?;
    let status = stream.status.as_u16();
    if status == 200 && is_event_stream(&stream.headers) {
        return Ok(Some(HttpStart::Stream(stream)));
    }
    let retry_after = stream.retry_after_ms();
    let bytes = stream.collect().await.unwrap_or_default();
    // no such resource here (a relay's missing session is 404 `IICP-E030`, a refusal)
    if status == 405
        || (status == 404 && ErrorBody::parse(status, &bytes).code == ErrorCode::NotFound)
    {
        return Ok(None);
    }
    // a refusal exactly as /v1/tasks answers it; a 200 JSON is a buffered answer
    TaskResponse::parse(status, &bytes)
        .map(|r| Some(HttpStart::Buffered(r)))
        .map_err(|mut b| {
            if b.retry_after_ms.is_none() {
                b.retry_after_ms = retry_after;
            }
            Error::remote(b)
        })
}

/// `POST /v1/tasks`, then the event stream.
async fn http_start(
    http: &HttpClient,
    base: &str,
    ex: &Exchange<'_>,
    sealed: Option<&iicp_proto::crypto::cx::SealedRequest>,
    resp_required: bool,
    deadline: Instant,
) -> Result<HttpStart, Error> {
    let body = lifecycle_body(ex, sealed, resp_required);
    let left = deadline.saturating_duration_since(Instant::now());
    let req = submit::provider_headers(
        http.post_json(format!("{base}{}", lifecycle::HTTP_SUBMIT_PATH), &body)
            .header("accept", "application/json")
            .timeout(left.max(std::time::Duration::from_millis(1)))
            .redirects(Redirects::None),
        ex,
    );
    let reply = req
        .send()
        .await
        .map_err(|e| Error::http(e, ErrorCode::TaskTimeout))?;
    let status = reply.status.as_u16();
    if status != 202 {
        // a refusal exactly as /v1/task answers it; a 200 is a buffered answer
        return TaskResponse::parse(status, &reply.body)
            .map(HttpStart::Buffered)
            .map_err(|mut b| {
                if b.retry_after_ms.is_none() {
                    b.retry_after_ms = reply.retry_after_ms();
                }
                Error::remote(b)
            });
    }
    let state: TaskState = serde_json::from_slice(&reply.body)
        .map_err(|e| Error::protocol("the 202 answer is not a task state").with_source(e))?;
    if state.task_id != ex.task_id.as_str() {
        return Err(Error::protocol("the node accepted another task_id"));
    }
    let events = format!(
        "{base}{}",
        lifecycle::HTTP_EVENTS_PATH.replace("{task_id}", ex.task_id.as_str())
    );
    let left = deadline.saturating_duration_since(Instant::now());
    let stream = submit::provider_headers(
        http.get(events)
            .header("accept", "text/event-stream")
            .timeout(left.max(std::time::Duration::from_millis(1))),
        ex,
    )
    .send_streaming()
    .await
    .map_err(|e| Error::http(e, ErrorCode::TaskTimeout))?;
    if !stream.status.is_success() {
        let status = stream.status.as_u16();
        let bytes = stream.collect().await.unwrap_or_default();
        return Err(Error::remote(ErrorBody::parse(status, &bytes)));
    }
    if !is_event_stream(&stream.headers) {
        return Err(Error::protocol("the event stream is not text/event-stream"));
    }
    Ok(HttpStart::Stream(stream))
}

impl Driver {
    /// A node that answered buffered: one `Completed`.
    pub(crate) fn buffered(
        info: Info,
        resp: TaskResponse,
        deadline: Instant,
        secrets: Vec<Secret>,
    ) -> Self {
        let end = StreamEnd {
            sequence: None,
            result: resp.result.clone().unwrap_or(Value::Null),
            tokens_used: resp.metrics.as_ref().and_then(|m| m.tokens_used),
            model_used: resp.model_used.clone(),
            metrics: resp.metrics.clone(),
            node_id: info.node_id.clone(),
            task_id: info.task_id.clone(),
            transport: info.transport,
            streamed: false,
            encrypted: info.encrypted,
            chunks: 0,
            attempts: info.attempts,
            traceparent: info.traceparent,
        };
        Self {
            tracker: Tracker::new(info.task_id.as_str()),
            info,
            streamed: false,
            queue: VecDeque::from([TaskEvent::Completed(Box::new(end))]),
            source: Source::None,
            key: None,
            resp_required: false,
            deadline,
            cancel: None,
            chunks: 0,
            chars: 0,
            done: true,
            secrets,
        }
    }

    /// Reads until the first partial or terminal event (accepted events are queued): a
    /// failure up to here may be retried on another node.
    async fn until_first_content(&mut self) -> Result<(), Error> {
        loop {
            match self.read().await? {
                TaskEvent::Accepted { sequence } => {
                    self.queue.push_back(TaskEvent::Accepted { sequence });
                }
                ev => {
                    self.queue.push_back(ev);
                    return Ok(());
                }
            }
        }
    }

    /// The next event for the caller.
    async fn next_event(&mut self) -> Option<Result<TaskEvent, Error>> {
        if let Some(ev) = self.queue.pop_front() {
            return Some(Ok(ev));
        }
        if self.done {
            return None;
        }
        match self.read().await {
            Ok(ev) => Some(Ok(ev)),
            Err(e) => {
                let e = self.after_partial(e);
                Some(Err(e))
            }
        }
    }

    /// A failure after content was received says how much.
    fn after_partial(&self, e: Error) -> Error {
        if self.chunks == 0 {
            return e;
        }
        e.with_prefix(&format!(
            "stream failed after {} chunk(s) ({} chars) were received",
            self.chunks, self.chars
        ))
    }

    /// Ends the stream with `e`; the task is cancelled unless the node ended it.
    fn fail(&mut self, e: Error, node_ended: bool) -> Error {
        self.done = true;
        if node_ended {
            self.cancel = None;
        } else if let Some(c) = self.cancel.take() {
            c.fire(if e.is_timeout() {
                "deadline_exceeded"
            } else {
                "protocol_error"
            });
        }
        let refs: Vec<&str> = self.secrets.iter().map(Secret::expose).collect();
        e.with_node(&self.info.node_id).scrub(&refs)
    }

    /// Reads one event (validated, opened) or fails the stream.
    async fn read(&mut self) -> Result<TaskEvent, Error> {
        loop {
            let next = tokio::time::timeout_at(self.deadline, self.next_raw()).await;
            let raw = match next {
                Err(_) => {
                    let e = Error::new(
                        Kind::Timeout,
                        ErrorCode::TaskTimeout,
                        "the stream did not finish within the task's deadline",
                    );
                    return Err(self.fail(e, false));
                }
                Ok(Err(e)) => return Err(self.fail(e, false)),
                Ok(Ok(None)) => continue, // a discarded repeat
                Ok(Ok(Some(Ok(raw)))) => raw,
                Ok(Ok(Some(Err(terminal)))) => return Ok(terminal),
            };
            let ev = self.convert(raw)?;
            if matches!(ev, TaskEvent::Completed(_)) {
                if let Err(e) = self.drain_trailing().await {
                    return Err(self.fail(e, true));
                }
            }
            return Ok(ev);
        }
    }

    /// After an HTTP terminal: the stream must end; an event after the terminal (a
    /// second terminal, a late partial) is a protocol error, not a success.
    async fn drain_trailing(&mut self) -> Result<(), Error> {
        let Self {
            source, tracker, ..
        } = self;
        let Source::Http { body, sse } = source else {
            return Ok(());
        };
        let check = |tracker: &mut Tracker, sse: &mut Sse| -> Result<bool, Error> {
            while let Some(msg) = sse.next_message()? {
                let ev = parse_sse_event(&msg)?;
                match tracker.accept_event(&ev) {
                    Err(v) => return Err(violation(&v)),
                    Ok(Step::Discard) => {}
                    Ok(Step::Accept(_)) => {
                        return Err(Error::protocol("an event after the terminal event"))
                    }
                }
            }
            Ok(true)
        };
        let grace = tokio::time::sleep(TRAILING_GRACE);
        tokio::pin!(grace);
        loop {
            check(tracker, sse)?;
            tokio::select! {
                () = &mut grace => return Ok(()),
                chunk = body.chunk() => match chunk {
                    Ok(Some(bytes)) => sse.feed(&bytes)?,
                    Ok(None) => {
                        sse.feed(b"\n\n")?;
                        check(tracker, sse)?;
                        return Ok(());
                    }
                    Err(_) => return Ok(()),
                },
            }
        }
    }

    fn convert(&mut self, raw: Raw) -> Result<TaskEvent, Error> {
        let result = match self.open_result(&raw) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e, false)),
        };
        match raw.kind {
            EventKind::Accepted => Ok(TaskEvent::Accepted {
                sequence: raw.sequence,
            }),
            EventKind::Partial => {
                let result = result.unwrap_or(Value::Null);
                self.chunks += 1;
                self.chars += chars_of(&result);
                Ok(TaskEvent::Partial {
                    sequence: raw.sequence,
                    result,
                    tokens_used: raw.tokens_used,
                })
            }
            EventKind::Completed => {
                self.done = true;
                self.cancel = None;
                Ok(TaskEvent::Completed(Box::new(StreamEnd {
                    sequence: Some(raw.sequence),
                    result: result.unwrap_or(Value::Null),
                    tokens_used: raw.tokens_used,
                    model_used: raw.model_used,
                    metrics: raw.metrics,
                    node_id: self.info.node_id.clone(),
                    task_id: self.info.task_id.clone(),
                    transport: self.info.transport,
                    streamed: true,
                    encrypted: self.info.encrypted,
                    chunks: self.chunks,
                    attempts: self.info.attempts,
                    traceparent: self.info.traceparent,
                })))
            }
            kind => {
                let mut body = raw.error.unwrap_or_else(|| {
                    ErrorBody::new(
                        ErrorCode::BackendError,
                        format!("the node ended the task: {kind}"),
                    )
                });
                if kind == EventKind::TimedOut {
                    body.code = ErrorCode::TaskTimeout;
                    body.http_status.get_or_insert(504);
                } else if kind == EventKind::Cancelled && body.message.is_empty() {
                    body.message = "the node cancelled the task".into();
                }
                Err(self.fail(Error::remote(body), true))
            }
        }
    }

    /// The event's result, opened when sealed.
    fn open_result(&self, raw: &Raw) -> Result<Option<Value>, Error> {
        let invalid = |msg: &str| Error::new(Kind::Crypto, ErrorCode::from(CX_RESP_INVALID), msg);
        if let Some(sealed) = &raw.sealed {
            let Some(key) = &self.key else {
                return Err(Error::protocol(
                    "the node sealed a chunk of a plaintext request",
                ));
            };
            let conf = IicpConfResp::from_value(sealed)
                .map_err(|e| invalid("malformed iicp_conf_resp").with_source(e))?;
            let plain = key.open_chunk(raw.sequence, &conf).map_err(|e| {
                invalid("a sealed chunk does not open at its sequence").with_source(e)
            })?;
            let value: Value = serde_json::from_slice(&plain)
                .map_err(|e| invalid("a sealed chunk is not JSON").with_source(e))?;
            return Ok(Some(value));
        }
        if self.resp_required && raw.result.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(Error::new(
                Kind::Crypto,
                ErrorCode::from(CX_RESP_REQUIRED),
                "the node streamed a plaintext chunk although encryption was required",
            ));
        }
        Ok(raw.result.clone())
    }

    /// The next validated event: `None` for a discarded repeat, `Some(Err(event))` for
    /// a buffered answer already converted.
    async fn next_raw(&mut self) -> Result<Option<Result<Raw, TaskEvent>>, Error> {
        match &mut self.source {
            Source::None => Err(Error::protocol("the stream has ended")),
            Source::Native(rs) => {
                let resp = match rs.next().await {
                    None => return Err(missing_terminal()),
                    Some(Err(e)) => return Err(submit::native_error(e)),
                    Some(Ok(r)) => r,
                };
                if resp.lifecycle.is_none() {
                    return self.native_buffered(&resp).map(|ev| Some(Err(ev)));
                }
                match self.tracker.accept_response(&resp) {
                    Err(v) => Err(violation(&v)),
                    Ok(Step::Discard) => Ok(None),
                    Ok(Step::Accept(kind)) => Ok(Some(Ok(native_raw(&resp, kind)?))),
                }
            }
            Source::Http { body, sse } => loop {
                if let Some(msg) = sse.next_message()? {
                    let ev = parse_sse_event(&msg)?;
                    return match self.tracker.accept_event(&ev) {
                        Err(v) => Err(violation(&v)),
                        Ok(Step::Discard) => Ok(None),
                        Ok(Step::Accept(kind)) => Ok(Some(Ok(http_raw(ev, kind)))),
                    };
                }
                match body.chunk().await {
                    Ok(Some(bytes)) => sse.feed(&bytes)?,
                    Ok(None) => {
                        sse.feed(b"\n\n")?;
                        if let Some(msg) = sse.next_message()? {
                            sse.ended = true;
                            let ev = parse_sse_event(&msg)?;
                            return match self.tracker.accept_event(&ev) {
                                Err(v) => Err(violation(&v)),
                                Ok(Step::Discard) => Ok(None),
                                Ok(Step::Accept(kind)) => Ok(Some(Ok(http_raw(ev, kind)))),
                            };
                        }
                        return Err(missing_terminal());
                    }
                    Err(e) => return Err(Error::http(e, ErrorCode::TaskTimeout)),
                }
            },
        }
    }

    /// A native node that answered the CALL buffered (no envelope): allowed only as the
    /// whole answer, before any lifecycle frame.
    fn native_buffered(&mut self, resp: &Response) -> Result<TaskEvent, Error> {
        if self.tracker.accepted() > 0 || !resp.is_final() {
            return Err(Error::protocol(
                "a RESPONSE without the lifecycle envelope inside a lifecycle stream",
            ));
        }
        let task_id = self.info.task_id.clone();
        let ex_resp = buffered_native(resp, &task_id)?;
        let resp = submit::open_response(ex_resp, self.key.as_ref(), self.resp_required)?;
        self.done = true;
        self.cancel = None;
        self.streamed = false;
        Ok(TaskEvent::Completed(Box::new(StreamEnd {
            sequence: None,
            result: resp.result.unwrap_or(Value::Null),
            tokens_used: None,
            model_used: resp.model_used,
            metrics: resp.metrics,
            node_id: self.info.node_id.clone(),
            task_id,
            transport: self.info.transport,
            streamed: false,
            encrypted: self.info.encrypted,
            chunks: 0,
            attempts: self.info.attempts,
            traceparent: self.info.traceparent,
        })))
    }
}

/// A buffered native RESPONSE as a task response (the node's error as an error).
fn buffered_native(resp: &Response, task_id: &TaskId) -> Result<TaskResponse, Error> {
    use iicp_proto::message::Outcome;
    match resp.outcome() {
        Outcome::Success(body) => {
            let value = match body {
                Some(b) => b.to_json(Prefer::Cbor).map_err(|e| {
                    Error::protocol("native result is neither CBOR nor JSON").with_source(e)
                })?,
                None => Value::Null,
            };
            if let Some(conf) = value.get("iicp_conf_resp").filter(|v| v.is_object()) {
                let mut r = TaskResponse::success(task_id.clone(), Value::Null);
                r.status = TaskStatus::Encrypted;
                r.result = None;
                r.iicp_conf_resp = Some(conf.clone());
                return Ok(r);
            }
            Ok(TaskResponse::success(
                task_id.clone(),
                submit::lift_result(value),
            ))
        }
        Outcome::Partial(_) => Err(Error::protocol("a partial without the lifecycle envelope")),
        Outcome::Timeout => Err(Error::remote(
            ErrorBody::new(ErrorCode::TaskTimeout, "the node reported a timeout").with_status(504),
        )),
        Outcome::Error {
            code,
            status,
            message,
        } => Err(submit::native_failure(code, status, message)),
    }
}

fn native_raw(resp: &Response, kind: EventKind) -> Result<Raw, Error> {
    let env = resp.lifecycle.as_ref();
    let value = match &resp.result {
        Some(b) => Some(b.to_json(Prefer::Cbor).map_err(|e| {
            Error::protocol("a lifecycle result is neither CBOR nor JSON").with_source(e)
        })?),
        None => None,
    };
    let (result, sealed) = match value {
        Some(Value::Object(o))
            if o.get("status").and_then(Value::as_str) == Some("encrypted")
                && o.get("iicp_conf_resp").is_some_and(Value::is_object) =>
        {
            (None, o.get("iicp_conf_resp").cloned())
        }
        other => (other, None),
    };
    let error = resp.error.as_ref().map(|e| {
        ErrorBody::new(
            e.code
                .as_deref()
                .map_or(ErrorCode::BackendError, ErrorCode::from),
            e.message
                .clone()
                .or_else(|| resp.message.clone())
                .unwrap_or_default(),
        )
    });
    Ok(Raw {
        sequence: env.and_then(|e| e.sequence).unwrap_or_default(),
        kind,
        result,
        sealed,
        error,
        tokens_used: resp.tokens_used,
        model_used: None,
        metrics: None,
    })
}

fn http_raw(ev: Event, kind: EventKind) -> Raw {
    let sealed = if ev.is_encrypted() {
        ev.iicp_conf_resp.clone()
    } else {
        None
    };
    Raw {
        sequence: ev.sequence,
        kind,
        result: if sealed.is_some() {
            None
        } else {
            ev.result.map(iicp_proto::result::ResultJson::into_value)
        },
        sealed,
        error: ev
            .error
            .map(|e| ErrorBody::new(e.code.unwrap_or(ErrorCode::BackendError), e.message)),
        tokens_used: ev.tokens_used,
        model_used: ev.model_used,
        metrics: ev.metrics,
    }
}

fn violation(v: &lifecycle::Violation) -> Error {
    Error::protocol(format!("lifecycle {}: {v}", v.code()))
}

fn missing_terminal() -> Error {
    Error::new(
        Kind::Transport,
        ErrorCode::E004,
        format!(
            "lifecycle {}: the stream ended before its terminal event",
            lifecycle::Violation::MissingTerminal.code()
        ),
    )
}

/// The text size of a chunk: its string, or its chat delta's content, else its JSON.
fn chars_of(v: &Value) -> usize {
    match v {
        Value::Null => 0,
        Value::String(s) => s.chars().count(),
        other => {
            let parts = ChatStreamAssembler::new().push(other);
            if parts.text.is_empty() && parts.tool_calls.is_empty() {
                0
            } else {
                parts.text.chars().count()
            }
        }
    }
}

// -----------------------------------------------------------------------------------
// Server-sent events
// -----------------------------------------------------------------------------------

/// One SSE message: its `id`, `event` and joined `data` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseMessage {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// An incremental `text/event-stream` parser (WHATWG): messages end at a blank line;
/// `id`, `event`, `data` fields; comments and other fields ignored.
#[derive(Debug, Default)]
struct Sse {
    buf: Vec<u8>,
    ended: bool,
}

impl Sse {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.ended {
            return Ok(());
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_SSE_MESSAGE && find_blank(&self.buf).is_none() {
            return Err(Error::protocol("an event-stream message is too large"));
        }
        Ok(())
    }

    fn next_message(&mut self) -> Result<Option<SseMessage>, Error> {
        loop {
            let Some((end, skip)) = find_blank(&self.buf) else {
                return Ok(None);
            };
            let block: Vec<u8> = self.buf.drain(..end + skip).take(end).collect();
            let text = std::str::from_utf8(&block)
                .map_err(|_| Error::protocol("the event stream is not UTF-8"))?;
            let mut msg = SseMessage::default();
            let mut has_data = false;
            for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "id" => msg.id = Some(value.to_owned()),
                    "event" => msg.event = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            msg.data.push('\n');
                        }
                        msg.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                return Ok(Some(msg));
            }
        }
    }
}

/// The end of the first message (index of the blank line) and the separator length.
fn find_blank(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i + 1, 1));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i + 1, 2));
            }
        }
        i += 1;
    }
    None
}

/// The event object of an SSE message; its `id:` and `event:` must agree with it.
fn parse_sse_event(msg: &SseMessage) -> Result<Event, Error> {
    let ev: Event = serde_json::from_str(&msg.data)
        .map_err(|e| Error::protocol("an event is not a lifecycle event object").with_source(e))?;
    if msg.event.as_deref().is_some_and(|n| n != ev.event.as_str()) {
        return Err(Error::protocol(
            "an event's SSE name disagrees with its data",
        ));
    }
    if msg
        .id
        .as_deref()
        .is_some_and(|id| id.parse::<u64>().ok() != Some(ev.sequence))
    {
        return Err(Error::protocol(
            "an event's SSE id disagrees with its sequence",
        ));
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_split_on_blank_lines_across_chunks() {
        let mut sse = Sse::default();
        sse.feed(b": comment\nid: 0\nevent: accepted\ndata: {\"a\":")
            .expect("feed");
        assert_eq!(sse.next_message().expect("ok"), None);
        sse.feed(b"1}\r\n\r\nid: 1\ndata: x\ndata: y\n\n")
            .expect("feed");
        let m = sse.next_message().expect("ok").expect("one");
        assert_eq!(m.id.as_deref(), Some("0"));
        assert_eq!(m.event.as_deref(), Some("accepted"));
        assert_eq!(m.data, "{\"a\":1}");
        let m = sse.next_message().expect("ok").expect("two");
        assert_eq!(m.data, "x\ny");
        assert_eq!(sse.next_message().expect("ok"), None);
    }

    #[test]
    fn sse_names_and_ids_must_agree_with_the_event() {
        let data = r#"{"task_id":"t","sequence":2,"event":"partial","status":"partial","is_final":false,"result":"x"}"#;
        let ok = SseMessage {
            id: Some("2".into()),
            event: Some("partial".into()),
            data: data.into(),
        };
        assert_eq!(parse_sse_event(&ok).expect("ok").sequence, 2);
        let wrong_id = SseMessage {
            id: Some("3".into()),
            ..SseMessage {
                event: ok.event.clone(),
                data: ok.data.clone(),
                id: None,
            }
        };
        assert!(parse_sse_event(&wrong_id).is_err());
        let wrong_name = SseMessage {
            event: Some("completed".into()),
            id: None,
            data: data.into(),
        };
        assert!(parse_sse_event(&wrong_name).is_err());
    }
}
