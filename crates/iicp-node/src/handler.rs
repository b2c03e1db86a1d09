//! The application side of a node: the [`TaskHandler`] that turns a validated task into
//! a result (PROTOCOL.md §4.1 CALL, §4.2 RESPONSE; seed contract of SEED-SDK.md §1.11).
//!
//! The handler returns the *inner* result value (for `llm:chat:v1` an OpenAI
//! chat-completion object); the node wraps it as `{"task_id", "status": "success",
//! "result": …, "metrics", "model_used", "generated_by_ai": true}`. Returning
//! `{"result": …}` yourself nests it twice. Failures are typed ([`HandlerError`]) and
//! mapped to spec error responses (§6.1, §6.2).
//!
//! Cancellation: when the task's deadline passes, the caller goes away or the node shuts
//! down, the handler's future is dropped — an `async fn` handler needs to do nothing.
//! Work the handler spawns elsewhere can watch [`Task::cancel`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use iicp_proto::error::{ErrorBody, ErrorCode, MAX_MESSAGE_CHARS};
use iicp_proto::ids::{TaskId, TraceParent};
use iicp_proto::intent::Intent;
use iicp_proto::result::ResultJson;
use iicp_proto::task::Constraints;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A boxed, sendable future.
pub use futures_util::future::BoxFuture;

/// Which transport a task arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// `POST /v1/task`.
    Http,
    /// A native CALL frame on the same port.
    Native,
}

impl Transport {
    /// `http` or `native` (metrics and logs).
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Native => "native",
        }
    }
}

/// The trace context of a task (PROTOCOL.md §2.3, §19 T14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex chars: from `traceparent`, else `trace.trace_id`, else native key
    /// 13, else freshly generated. Echoed as `X-IICP-Trace-Id`.
    pub trace_id: String,
    /// The caller's `traceparent`, when it sent one.
    pub traceparent: Option<TraceParent>,
}

/// Fires when the task is abandoned: deadline passed, caller gone, node stopping, or
/// the task finished. Cheap to clone (a [`CancellationToken`] underneath).
#[derive(Clone)]
pub struct Cancellation(CancellationToken);

impl fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancellation")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancellation {
    /// A signal and the guard that fires it when dropped.
    pub(crate) fn new() -> (CancelGuard, Cancellation) {
        let token = CancellationToken::new();
        let guard = CancelGuard {
            _fires_on_drop: token.clone().drop_guard(),
        };
        (guard, Cancellation(token))
    }

    /// Whether the task was abandoned.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the task is abandoned.
    pub async fn cancelled(&self) {
        self.0.cancelled().await;
    }
}

/// Fires the [`Cancellation`] when dropped.
#[derive(Debug)]
pub(crate) struct CancelGuard {
    _fires_on_drop: DropGuard,
}

/// A validated task as the handler sees it. `Debug` never shows the payload.
#[derive(Clone)]
#[non_exhaustive]
pub struct Task {
    /// Task id (echoed in the response).
    pub task_id: TaskId,
    /// The intent; always one this node serves.
    pub intent: Intent,
    /// The task input, decrypted when it arrived under IICP-CX. Never log it.
    pub payload: Value,
    /// Constraints as sent (`timeout_ms` already applied as [`Task::deadline`]).
    pub constraints: Constraints,
    /// Trace context.
    pub trace: TraceContext,
    /// When the node gives up on the task and answers 504 `task_timeout`.
    pub deadline: tokio::time::Instant,
    /// Fires when the task is abandoned.
    pub cancel: Cancellation,
    /// Transport the task arrived on.
    pub transport: Transport,
    /// Whether the payload arrived CX-encrypted.
    pub encrypted: bool,
    /// The requesting node's id, when the caller named it (`source_node_id`).
    pub source_node_id: Option<String>,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("task_id", &self.task_id)
            .field("intent", &self.intent.as_str())
            .field("payload", &"<redacted>")
            .field("constraints", &self.constraints)
            .field("trace", &self.trace)
            .field("transport", &self.transport)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

impl Task {
    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// The task as the seed backends take it: `{task_id, intent, payload, constraints?}`.
    pub fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("task_id".into(), Value::String(self.task_id.to_string()));
        obj.insert(
            "intent".into(),
            Value::String(self.intent.as_str().to_owned()),
        );
        obj.insert("payload".into(), self.payload.clone());
        if !self.constraints.is_empty() {
            if let Ok(c) = serde_json::to_value(&self.constraints) {
                obj.insert("constraints".into(), c);
            }
        }
        Value::Object(obj)
    }
}

/// What a handler returns on success: the inner result and optional accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    /// The inner result (wrapped by the node as `result`): a value, or JSON text that
    /// is passed on as it is (a model server's answer, ADR 0022).
    pub result: ResultJson,
    /// Tokens used; when `None`, the node reads `result.usage` (`total_tokens`, else
    /// `prompt_tokens` + `completion_tokens`).
    pub tokens_used: Option<u64>,
    /// The model that produced the result; when `None`, the node reads `result.model`,
    /// else names its first model.
    pub model_used: Option<String>,
}

impl TaskOutput {
    /// An output with just a result (a [`Value`] or a [`ResultJson`]).
    pub fn new(result: impl Into<ResultJson>) -> Self {
        Self {
            result: result.into(),
            tokens_used: None,
            model_used: None,
        }
    }

    /// Sets the token count.
    pub fn with_tokens(mut self, tokens: u64) -> Self {
        self.tokens_used = Some(tokens);
        self
    }

    /// Sets the model name.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model_used = Some(model.into());
        self
    }

    /// The token count and the model, moved out: the handler's, else what the result
    /// says (`usage`, `model`; [`ResultJson::summary`]).
    pub(crate) fn take_accounting(&mut self) -> (Option<u64>, Option<String>) {
        let read = if self.tokens_used.is_none() || self.model_used.is_none() {
            self.result.summary().unwrap_or_default()
        } else {
            iicp_proto::result::Summary::default()
        };
        (
            self.tokens_used.or(read.tokens_used),
            self.model_used.take().or(read.model),
        )
    }
}

impl From<Value> for TaskOutput {
    fn from(result: Value) -> Self {
        Self::new(result)
    }
}

/// A handler failure, mapped to a spec error response. Messages are sent to the caller:
/// never put secrets, paths or payload content in them (they are cut to 512 chars).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The inference backend failed → 502 `backend_error`.
    #[error("backend failed: {message}")]
    Backend {
        /// Caller-visible message.
        message: String,
    },
    /// The task input is unusable for this backend → 422 `validation_error`.
    #[error("invalid task: {message}")]
    Invalid {
        /// Caller-visible message.
        message: String,
    },
    /// The backend is temporarily unavailable → 503 `temporarily_unavailable` with
    /// `Retry-After` when given.
    #[error("backend temporarily unavailable")]
    Unavailable {
        /// Suggested wait.
        retry_after: Option<Duration>,
    },
    /// The backend timed out → 504 `task_timeout`.
    #[error("backend timed out")]
    Timeout,
    /// Any protocol error, sent as given (status from the body or its code).
    #[error("{0}")]
    Protocol(ErrorBody),
}

impl HandlerError {
    /// [`HandlerError::Backend`].
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
        }
    }

    /// [`HandlerError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
        }
    }

    /// The error body (with HTTP status) this failure is answered with.
    pub fn to_error_body(&self) -> ErrorBody {
        let cut = |m: &str| m.chars().take(MAX_MESSAGE_CHARS).collect::<String>();
        match self {
            HandlerError::Backend { message } => {
                ErrorBody::new(ErrorCode::BackendError, cut(message)).with_status(502)
            }
            HandlerError::Invalid { message } => {
                ErrorBody::new(ErrorCode::ValidationError, cut(message)).with_status(422)
            }
            HandlerError::Unavailable { retry_after } => {
                let mut b = ErrorBody::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the backend is temporarily unavailable",
                )
                .with_status(503);
                b.retry_after_ms =
                    retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                b
            }
            HandlerError::Timeout => {
                ErrorBody::new(ErrorCode::TaskTimeout, "the backend timed out").with_status(504)
            }
            HandlerError::Protocol(body) => {
                let mut b = body.clone();
                b.message = cut(&b.message);
                b.http_status = Some(b.status_or_default());
                b
            }
        }
    }
}

/// Executes tasks. Implemented for every `Fn(Task) -> impl Future<Output =
/// Result<impl Into<TaskOutput>, HandlerError>>` that is `Send + Sync + 'static`.
///
/// ```
/// use iicp_node::handler::{HandlerError, Task, TaskHandler};
/// use serde_json::json;
/// fn assert_handler(_: impl TaskHandler) {}
/// assert_handler(|task: Task| async move {
///     Ok::<_, HandlerError>(json!({"echo": task.payload}))
/// });
/// ```
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one task.
    fn handle(&self, task: Task) -> BoxFuture<'static, Result<TaskOutput, HandlerError>>;

    /// Whether [`TaskHandler::handle_stream`] really streams. Only then does the node
    /// advertise the service-lifecycle profile (PROTOCOL.md §11.6: never claim it for a
    /// buffered path). The default is `false`.
    fn streams(&self) -> bool {
        false
    }

    /// Runs one task of the service-lifecycle profile: sends each incremental result
    /// chunk to `chunks` as it is produced and returns the terminal output, whose
    /// result is the last chunk (`Value::Null` when there is none left). The deadline
    /// and cancellation are those of [`TaskHandler::handle`]: the future is dropped
    /// when the task is cancelled or times out. The default runs `handle` and returns
    /// its whole result as the one chunk.
    fn handle_stream(
        &self,
        task: Task,
        chunks: Chunks,
    ) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        let _ = chunks;
        self.handle(task)
    }

    /// The models the backend lists now (public names), for the node's periodic check
    /// (`health_models`, re-registration when the list drifts, recovery's
    /// `backend_attention`). `None`: the handler cannot tell, and the node does not
    /// check. The default is `None`.
    fn models(&self) -> Option<BoxFuture<'static, Result<Vec<String>, HandlerError>>> {
        None
    }
}

/// One incremental result of a streaming handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The chunk (for `llm:chat:v1` an OpenAI `chat.completion.chunk`): a value, or JSON
    /// text passed on as it came ([`Chunks::send_text`]).
    pub result: ResultJson,
    /// Tokens used so far (cumulative), when known.
    pub tokens_used: Option<u64>,
}

/// Where a streaming handler sends its chunks ([`TaskHandler::handle_stream`]). In a
/// node a chunk is appended to the task's event log as it is sent (the log keeps every
/// event for its readers and for a duplicate's replay, so a queue in front of it would
/// bound nothing and cost each chunk another wake-up of the task); [`Chunks::channel`]
/// makes a bounded queue instead, for running a handler outside a node.
#[derive(Clone)]
pub struct Chunks(Sink);

type SinkFn = dyn Fn(Chunk) -> Result<(), StreamClosed> + Send + Sync;

#[derive(Clone)]
enum Sink {
    Channel(tokio::sync::mpsc::Sender<Chunk>),
    Direct(std::sync::Arc<SinkFn>),
}

impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Sink::Channel(_) => "Chunks(channel)",
            Sink::Direct(_) => "Chunks(direct)",
        })
    }
}

/// The task's consumer is gone: stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the task's stream is closed")]
pub struct StreamClosed;

impl Chunks {
    /// A sender and its receiving end, `capacity` chunks apart.
    pub fn channel(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<Chunk>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (Self(Sink::Channel(tx)), rx)
    }

    /// Chunks handed to `sink` as they are sent.
    pub(crate) fn direct(
        sink: impl Fn(Chunk) -> Result<(), StreamClosed> + Send + Sync + 'static,
    ) -> Self {
        Self(Sink::Direct(std::sync::Arc::new(sink)))
    }

    /// Sends one chunk.
    ///
    /// # Errors
    /// [`StreamClosed`] when the task's consumer is gone.
    pub async fn send(&self, result: Value, tokens_used: Option<u64>) -> Result<(), StreamClosed> {
        self.send_chunk(ResultJson::Value(result), tokens_used)
            .await
    }

    /// Sends one chunk given as JSON text (a model server's own, passed on without
    /// being parsed into a value and written out again).
    ///
    /// # Errors
    /// [`StreamClosed`] when the task's consumer is gone.
    pub async fn send_text(
        &self,
        json: Box<serde_json::value::RawValue>,
        tokens_used: Option<u64>,
    ) -> Result<(), StreamClosed> {
        self.send_chunk(ResultJson::Text(json), tokens_used).await
    }

    async fn send_chunk(
        &self,
        result: ResultJson,
        tokens_used: Option<u64>,
    ) -> Result<(), StreamClosed> {
        let chunk = Chunk {
            result,
            tokens_used,
        };
        match &self.0 {
            Sink::Channel(tx) => tx.send(chunk).await.map_err(|_| StreamClosed),
            Sink::Direct(sink) => sink(chunk),
        }
    }
}

impl<F, Fut, O> TaskHandler for F
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, HandlerError>> + Send + 'static,
    O: Into<TaskOutput>,
{
    fn handle(&self, task: Task) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        let fut = self(task);
        Box::pin(async move { fut.await.map(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping() {
        let cases = [
            (HandlerError::backend("x"), 502, "backend_error"),
            (HandlerError::invalid("x"), 422, "validation_error"),
            (
                HandlerError::Unavailable {
                    retry_after: Some(Duration::from_secs(2)),
                },
                503,
                "temporarily_unavailable",
            ),
            (HandlerError::Timeout, 504, "task_timeout"),
            (
                HandlerError::Protocol(ErrorBody::new(ErrorCode::E029, "no such model")),
                404,
                "IICP-E029",
            ),
        ];
        for (err, status, code) in cases {
            let b = err.to_error_body();
            assert_eq!(b.status_or_default(), status, "{err}");
            assert_eq!(b.code.as_str(), code);
        }
        let long = HandlerError::backend("y".repeat(2000)).to_error_body();
        assert_eq!(long.message.len(), MAX_MESSAGE_CHARS);
    }

    #[tokio::test]
    async fn cancellation_fires_on_drop() {
        let (guard, cancel) = Cancellation::new();
        assert!(!cancel.is_cancelled());
        drop(guard);
        cancel.cancelled().await;
        assert!(cancel.is_cancelled());
    }
}
