//! `iicp-backends`: the adapters that turn an IICP task into a call to the operator's
//! model server and map the answer back, so every node looks the same to every client
//! whatever serves it.
//!
//! * [`Backend`] — the async trait a node calls: `execute` (any supported intent),
//!   `chat_stream` (server-sent events), `models`, `health`. Futures are cancelled by
//!   dropping them (the HTTP request is dropped with them); `deadline` bounds each call
//!   and turns into `task_timeout`.
//! * [`build`] — the factory by type name ([`BackendKind`]): `openai_compat` (Ollama,
//!   LM Studio, OpenAI; default base `http://localhost:11434/v1`), `vllm`
//!   (`http://localhost:8000/v1`), `llamacpp` (`http://localhost:8080/v1`) and
//!   `anthropic` (`https://api.anthropic.com/v1`, the Messages API mapped to and from
//!   the OpenAI chat-completion shape).
//! * [`detect_flavour`] — what kind of OpenAI-compatible server answers at a URL.
//! * [`ServerSpec`] — a model server as an operator names it (type, URL, key), read the
//!   same way by every command; [`ServerSpec::prepare`] chooses the served model
//!   ([`plan_models`]) and builds its adapter.
//!
//! Every result of `llm:chat:v1` is an OpenAI chat-completion object, whichever server
//! produced it. Errors are [`BackendError`]s carrying an IICP [`ErrorCode`]
//! (`backend_error` for unreachable or failing servers, `task_timeout` for deadlines,
//! `validation_error` for payloads the server refused, `capacity_exceeded` when the
//! server is rate limiting or overloaded) and a message cleaned of paths and traces.
//!
//! Cargo features, all on by default: `openai-compat`, `vllm`, `llamacpp`, `anthropic`.
//!
//! Place in the crate graph: layer L2, above `iicp-proto` and `iicp-transport`; it knows
//! nothing of nodes or directories. PROTOCOL.md §4.1 (payloads), §4.2 (results), §6
//! (codes); the backend table of SEED-SDK.md §1.14.
#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use iicp_proto::error::ErrorCode;
use iicp_proto::result::{summary_of_text, ResultJson, Summary};
use iicp_proto::secret::Secret;
use iicp_transport::http::{HttpClient, HttpClientConfig};
use serde_json::Value;

#[cfg(feature = "anthropic")]
pub mod anthropic;
mod clean;
mod detect;
#[cfg(feature = "openai-compat")]
pub mod openai;
mod server;
pub mod sse;

pub use detect::{
    context_length, detect_flavour, flavour_of, list_models, plan_models, Flavour,
    ModelChoiceError, ModelPlan,
};
pub use server::{Prepared, ServerSpec, SetupError};

/// The chat intent every backend serves.
pub use iicp_proto::constants::CHAT_INTENT;
/// The text-completion intent (OpenAI dialect).
pub const COMPLETION_INTENT: &str = "urn:iicp:intent:llm:completion:v1";
/// The embedding intent (OpenAI dialect).
pub const EMBEDDING_INTENT: &str = "urn:iicp:intent:llm:embedding:v1";
/// Longest backend error text kept in a [`BackendError`] message.
pub const MAX_ERROR_TEXT: usize = 512;

/// A boxed, sendable future.
pub use futures_util::future::BoxFuture;

/// The model-server dialects this crate speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// OpenAI-compatible chat completions: Ollama, LM Studio, OpenAI.
    OpenAiCompat,
    /// vLLM's OpenAI-compatible server.
    Vllm,
    /// llama.cpp's `llama-server` (and llama-cpp-python's server).
    LlamaCpp,
    /// The Anthropic Messages API.
    Anthropic,
}

impl BackendKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::OpenAiCompat,
        BackendKind::Vllm,
        BackendKind::LlamaCpp,
        BackendKind::Anthropic,
    ];

    /// The type name used on the command line and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::OpenAiCompat => "openai_compat",
            BackendKind::Vllm => "vllm",
            BackendKind::LlamaCpp => "llamacpp",
            BackendKind::Anthropic => "anthropic",
        }
    }

    /// The default base URL of this kind of server.
    pub fn default_base_url(self) -> &'static str {
        match self {
            BackendKind::OpenAiCompat => "http://localhost:11434/v1",
            BackendKind::Vllm => "http://localhost:8000/v1",
            BackendKind::LlamaCpp => "http://localhost:8080/v1",
            BackendKind::Anthropic => "https://api.anthropic.com/v1",
        }
    }

    /// Whether this build includes the adapter (cargo features).
    pub fn is_enabled(self) -> bool {
        match self {
            BackendKind::OpenAiCompat => cfg!(feature = "openai-compat"),
            BackendKind::Vllm => cfg!(feature = "vllm"),
            BackendKind::LlamaCpp => cfg!(feature = "llamacpp"),
            BackendKind::Anthropic => cfg!(feature = "anthropic"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown backend type name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown backend type `{0}` (expected one of openai_compat, vllm, llamacpp, anthropic)")]
pub struct UnknownBackend(pub String);

impl FromStr for BackendKind {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "openai_compat" | "openai" | "ollama" | "lmstudio" => Ok(BackendKind::OpenAiCompat),
            "vllm" => Ok(BackendKind::Vllm),
            "llamacpp" | "llama.cpp" | "llama_cpp" => Ok(BackendKind::LlamaCpp),
            "anthropic" | "claude" => Ok(BackendKind::Anthropic),
            _ => Err(UnknownBackend(s.chars().take(40).collect())),
        }
    }
}

/// Why a backend type or URL is refused by [`resolve_endpoint`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// The type name is unknown.
    #[error(transparent)]
    UnknownType(#[from] UnknownBackend),
    /// The URL is not an absolute `http(s)` URL.
    #[error("the backend URL must be an http(s) URL, got {0:?}")]
    NotHttp(String),
}

/// The backend kind and base URL that `--backend-type` / `--backend-url` mean, as every
/// command reads them: an unset type is `openai_compat`, except for a URL at
/// `api.anthropic.com` (a saved profile has no type); an unset URL is the kind's
/// default; a URL without the API version gets `/v1` (SEED-SDK §2.3 step 13: users
/// paste `http://localhost:11434`, the adapters need `…/v1`); trailing slashes go.
///
/// ```
/// use iicp_backends::{resolve_endpoint, BackendKind};
///
/// let (kind, url) = resolve_endpoint(None, Some("http://127.0.0.1:8080/")).unwrap();
/// assert_eq!((kind, url.as_str()), (BackendKind::OpenAiCompat, "http://127.0.0.1:8080/v1"));
/// let (kind, url) = resolve_endpoint(None, Some("https://api.anthropic.com")).unwrap();
/// assert_eq!((kind, url.as_str()), (BackendKind::Anthropic, "https://api.anthropic.com/v1"));
/// ```
pub fn resolve_endpoint(
    backend_type: Option<&str>,
    url: Option<&str>,
) -> Result<(BackendKind, String), EndpointError> {
    let url = url.map(str::trim).filter(|u| !u.is_empty());
    let kind = match backend_type.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => t.parse()?,
        None if url.is_some_and(|u| u.contains("api.anthropic.com")) => BackendKind::Anthropic,
        None => BackendKind::OpenAiCompat,
    };
    let base = match url {
        Some(u) => {
            if !is_http_url(u) {
                return Err(EndpointError::NotHttp(u.chars().take(200).collect()));
            }
            let u = u.trim_end_matches('/');
            if u.ends_with("/v1") {
                u.to_owned()
            } else {
                format!("{u}/v1")
            }
        }
        None => kind.default_base_url().to_owned(),
    };
    Ok((kind, base))
}

/// The name a node advertises for a model id its server lists. llama.cpp's server and
/// llama-cpp-python list a model by the path of its GGUF file, which is a local file
/// path that must not be published: it becomes the file's stem
/// (`/models/qwen2.5-0.5b-instruct-q4_k_m.gguf` → `qwen2.5-0.5b-instruct-q4_k_m`). Other
/// ids (`qwen2.5:0.5b`, `Qwen/Qwen2.5-0.5B-Instruct`) are kept as they are.
pub fn public_model_name(id: &str) -> String {
    let looks_like_path = id.starts_with('/')
        || id.starts_with("~/")
        || id.starts_with("./")
        || id.contains('\\')
        || id.to_ascii_lowercase().ends_with(".gguf")
        || id.to_ascii_lowercase().ends_with(".bin");
    if !looks_like_path {
        return id.to_owned();
    }
    let file = id.rsplit(['/', '\\']).next().unwrap_or(id);
    let stem = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => stem,
        _ => file,
    };
    if stem.is_empty() {
        "model".to_owned()
    } else {
        stem.to_owned()
    }
}

/// How to reach a model server.
#[derive(Clone)]
pub struct BackendConfig {
    /// The dialect.
    pub kind: BackendKind,
    /// Base URL ending in the API version (`…/v1`); `None` = the kind's default.
    pub base_url: Option<String>,
    /// Default model, used when a payload names none.
    pub model: Option<String>,
    /// API key: a bearer token for OpenAI-compatible servers, `x-api-key` for Anthropic.
    pub api_key: Option<Secret>,
    /// Upper bound on one backend call when the task sets no deadline.
    pub timeout: Duration,
    /// `anthropic-version` header value.
    pub anthropic_version: String,
    /// `max_tokens` sent to Anthropic when the payload sets none (the API requires one).
    pub anthropic_default_max_tokens: u64,
    /// Largest accepted response body.
    pub max_response_bytes: usize,
    /// Public model names and the ids the server knows them by (see
    /// [`public_model_name`]): a payload naming the public name is sent with the
    /// server's id, and the server's id in a result is replaced by the public name.
    pub model_aliases: Vec<(String, String)>,
}

impl BackendConfig {
    /// Defaults for `kind`.
    pub fn new(kind: BackendKind) -> Self {
        Self {
            kind,
            base_url: None,
            model: None,
            api_key: None,
            timeout: Duration::from_secs(120),
            anthropic_version: "2023-06-01".into(),
            anthropic_default_max_tokens: 4096,
            max_response_bytes: 16 * 1024 * 1024,
            model_aliases: Vec::new(),
        }
    }

    /// The server's id for a model a payload names (its public alias, or itself).
    pub fn upstream_model<'a>(&'a self, name: &'a str) -> &'a str {
        self.model_aliases
            .iter()
            .find(|(public, _)| public == name)
            .map_or(name, |(_, upstream)| upstream.as_str())
    }

    /// The public name of a model id the server reported (its alias, or itself).
    pub fn public_model<'a>(&'a self, id: &'a str) -> &'a str {
        self.model_aliases
            .iter()
            .find(|(_, upstream)| upstream == id)
            .map_or(id, |(public, _)| public.as_str())
    }

    /// The base URL in force, without a trailing slash.
    pub fn effective_base_url(&self) -> String {
        self.base_url
            .as_deref()
            .unwrap_or(self.kind.default_base_url())
            .trim_end_matches('/')
            .to_owned()
    }
}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a backend call failed.
///
/// `message` is our own fixed text (with the model server's HTTP status when it
/// answered): it is what a node tells its caller. What the model server said about the
/// failure is in `detail`, cleaned of stack traces, file paths, markup and secret-like
/// words, for the operator's log only: a caller, who may be anonymous, never sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BackendError {
    /// The IICP code a node answers with.
    pub code: ErrorCode,
    /// The HTTP status a node answers with.
    pub http_status: u16,
    /// A short fixed message, safe to send to a caller.
    pub message: String,
    /// The backend's own HTTP status, when it answered.
    pub upstream_status: Option<u16>,
    /// The model server's own words (cleaned, truncated), for the operator only.
    pub detail: Option<String>,
}

impl BackendError {
    /// A new error.
    pub fn new(code: ErrorCode, http_status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            http_status,
            message: message.into(),
            upstream_status: None,
            detail: None,
        }
    }

    /// The model server could not be reached or failed (502 `backend_error`).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BackendError, 502, message)
    }

    /// The deadline passed (504 `task_timeout`).
    pub fn timeout() -> Self {
        Self::new(
            ErrorCode::TaskTimeout,
            504,
            "the model server did not answer before the task deadline",
        )
    }

    /// The payload cannot be served (422 `validation_error`).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, 422, message)
    }

    /// The intent is not served by this backend (422 `unknown_intent`).
    pub fn unsupported_intent(intent: &str) -> Self {
        Self::new(
            ErrorCode::UnknownIntent,
            422,
            format!(
                "this backend does not serve {}",
                clean::truncate(intent, 120)
            ),
        )
    }

    /// Whether a retry on another node may succeed.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable() || matches!(self.http_status, 429 | 503)
    }

    /// The spec error body a node sends for this error.
    pub fn to_error_body(&self) -> iicp_proto::error::ErrorBody {
        iicp_proto::error::ErrorBody::new(self.code.clone(), self.message.clone())
            .with_status(self.http_status)
    }
}

/// The result of a successful backend call.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The result (an OpenAI chat-completion object for `llm:chat:v1`): the model
    /// server's JSON text as it came, or a value when the backend rewrote it.
    pub result: ResultJson,
    /// The model that produced it, when known.
    pub model: Option<String>,
    /// Total tokens used, when the server reported usage.
    pub tokens_used: Option<u64>,
}

impl Completion {
    /// Wraps a result and reads `model` and the token count from it
    /// ([`ResultJson::summary`]).
    pub fn from_result(result: impl Into<ResultJson>) -> Self {
        let result = result.into();
        let summary = result.summary().unwrap_or_default();
        Self::with_summary(result, summary)
    }

    /// Wraps a result with what [`ResultJson::summary`] read from it.
    pub fn with_summary(result: ResultJson, summary: Summary) -> Self {
        Self {
            result,
            model: summary.model,
            tokens_used: summary.tokens_used,
        }
    }
}

/// One event of a streamed chat: an OpenAI `chat.completion.chunk` object, kept as the
/// JSON text it arrived as (a node passes it on without parsing it into a tree and
/// writing it out again, ADR 0020). What a node reads from it (`usage`, `model`) is
/// parsed out when asked for, without building a tree.
#[derive(Clone, Debug)]
pub struct ChatChunk {
    json: Box<serde_json::value::RawValue>,
}

impl ChatChunk {
    /// A chunk from a model server's JSON text.
    ///
    /// # Errors
    /// The text is not JSON.
    pub fn from_text(text: String) -> Result<Self, BackendError> {
        serde_json::value::RawValue::from_string(text)
            .map(|json| Self { json })
            .map_err(|_| BackendError::unavailable("streamed event is not JSON"))
    }

    /// A chunk made as a value (a dialect mapped to the OpenAI shape).
    pub fn from_value(v: &Value) -> Self {
        Self {
            json: serde_json::value::to_raw_value(v).unwrap_or_default(),
        }
    }

    /// The chunk's JSON text.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// The chunk's JSON text, owned.
    pub fn into_json(self) -> Box<serde_json::value::RawValue> {
        self.json
    }

    /// The chunk as a value.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json.get()).unwrap_or(Value::Null)
    }

    /// The chunk's token count ([`ResultJson::summary`]'s rule), when it carries usage.
    /// (Only a chunk whose text has a `"usage"` key is parsed: usage comes in the last
    /// chunk, if at all.)
    pub fn total_tokens(&self) -> Option<u64> {
        if !self.json().contains("\"usage\"") {
            return None;
        }
        summary_of_text(self.json())?.tokens_used
    }

    /// `model`, when the chunk names one.
    pub fn model(&self) -> Option<String> {
        summary_of_text(self.json())?.model
    }

    /// `choices[0].delta.content`, when present.
    pub fn content(&self) -> Option<String> {
        self.to_value()
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// A streamed chat: chunks until `None`. Dropping it cancels the backend request.
pub struct ChatStream {
    source: Source,
}

enum Source {
    /// Chunks sent by someone else ([`ChatStream::new`]).
    Channel(tokio::sync::mpsc::Receiver<Result<ChatChunk, BackendError>>),
    /// A model server's event stream, read as chunks are asked for.
    Events(Box<EventSource>),
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChatStream")
    }
}

impl ChatStream {
    /// Creates a stream fed by `rx` (a backend of one's own that produces chunks on a
    /// task of its own).
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<ChatChunk, BackendError>>) -> Self {
        Self {
            source: Source::Channel(rx),
        }
    }

    /// The next chunk, or `None` when the stream ended. After an error, `None`.
    pub async fn next(&mut self) -> Option<Result<ChatChunk, BackendError>> {
        match &mut self.source {
            Source::Channel(rx) => rx.recv().await,
            Source::Events(events) => events.next().await,
        }
    }

    /// Reads every chunk and joins their `delta.content` texts.
    pub async fn collect_text(mut self) -> Result<String, BackendError> {
        let mut text = String::new();
        while let Some(chunk) = self.next().await {
            if let Some(t) = chunk?.content() {
                text.push_str(&t);
            }
        }
        Ok(text)
    }
}

/// Health of the model server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    /// Whether it answered.
    pub reachable: bool,
    /// The models it lists (empty when unknown).
    pub models: Vec<String>,
}

/// A model server adapter.
pub trait Backend: Send + Sync + 'static {
    /// The dialect.
    fn kind(&self) -> BackendKind;

    /// The default model, used when a payload names none.
    fn default_model(&self) -> Option<&str>;

    /// The intents this backend serves.
    fn intents(&self) -> &[&'static str];

    /// Runs one task. `deadline` bounds the call (`task_timeout` when it passes);
    /// dropping the future cancels the request.
    fn execute<'a>(
        &'a self,
        intent: &'a str,
        payload: &'a Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Completion, BackendError>>;

    /// Streams a chat (`stream: true` towards the server; SSE back).
    fn chat_stream<'a>(
        &'a self,
        payload: &'a Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<ChatStream, BackendError>>;

    /// The models the server lists.
    fn models(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// Whether the server answers, and its models.
    fn health(&self) -> BoxFuture<'_, BackendHealth> {
        Box::pin(async move {
            match self.models().await {
                Ok(models) => BackendHealth {
                    reachable: true,
                    models,
                },
                Err(e) => BackendHealth {
                    reachable: e.upstream_status.is_some(),
                    models: Vec::new(),
                },
            }
        })
    }
}

/// Why [`build`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The adapter is not compiled in (cargo feature off).
    #[error("backend type {0} is not enabled in this build")]
    Disabled(BackendKind),
    /// The HTTP client could not be created.
    #[error("could not create the HTTP client")]
    Http(#[source] iicp_transport::http::HttpClientError),
    /// The base URL is not an http(s) URL.
    #[error("backend URL must start with http:// or https://")]
    BadUrl,
}

/// Builds the adapter for `config`, with its own pooled HTTP client.
pub fn build(config: BackendConfig) -> Result<Arc<dyn Backend>, BuildError> {
    let mut http = HttpClientConfig::default();
    // keep a kept-alive connection per concurrent task (a node runs at most 256): a
    // smaller idle pool closes and reopens connections under load
    http.pool_max_idle_per_host = 256;
    http.max_response_bytes = config.max_response_bytes;
    http.request_timeout = config.timeout;
    let client = HttpClient::new(http).map_err(BuildError::Http)?;
    build_with_client(config, client)
}

/// Whether `url` is an `http(s)://` URL with a host (the workspace's endpoint model).
fn is_http_url(url: &str) -> bool {
    iicp_proto::endpoint::parse_url(url, iicp_proto::endpoint::HTTP_SCHEMES).is_ok()
}

/// Builds the adapter for `config` sharing an existing HTTP client.
pub fn build_with_client(
    config: BackendConfig,
    client: HttpClient,
) -> Result<Arc<dyn Backend>, BuildError> {
    let base = config.effective_base_url();
    if !is_http_url(&base) {
        return Err(BuildError::BadUrl);
    }
    if !config.kind.is_enabled() {
        return Err(BuildError::Disabled(config.kind));
    }
    match config.kind {
        #[cfg(feature = "anthropic")]
        BackendKind::Anthropic => Ok(Arc::new(anthropic::Anthropic::new(config, client))),
        #[cfg(feature = "openai-compat")]
        BackendKind::OpenAiCompat | BackendKind::Vllm | BackendKind::LlamaCpp => {
            Ok(Arc::new(openai::OpenAi::new(config, client)))
        }
        #[allow(unreachable_patterns)]
        other => Err(BuildError::Disabled(other)),
    }
}

/// Runs `fut` within `deadline` (if any), mapping expiry to `task_timeout`.
pub(crate) async fn within<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut)
            .await
            .unwrap_or_else(|_| Err(BackendError::timeout())),
        None => fut.await,
    }
}

/// The model a payload names, else the backend default; an error when neither exists.
pub(crate) fn model_for(payload: &Value, default: Option<&str>) -> Result<String, BackendError> {
    payload
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .or(default)
        .map(str::to_owned)
        .ok_or_else(|| BackendError::invalid("no model given and the backend has no default model"))
}

/// What a streamed event turns into.
pub(crate) enum Step {
    /// Send this chunk to the consumer.
    Emit(ChatChunk),
    /// Nothing to send for this event.
    Skip,
    /// The stream is complete.
    Done,
}

/// Sends a streaming request; a non-2xx answer is read (bounded) and mapped to an error.
pub(crate) async fn open_stream(
    req: iicp_transport::http::client::RequestBuilder,
    deadline: Option<Instant>,
) -> Result<iicp_transport::http::HttpStream, BackendError> {
    let stream = within(deadline, async {
        req.send_streaming().await.map_err(|e| transport_error(&e))
    })
    .await?;
    if !stream.status.is_success() {
        let status = stream.status.as_u16();
        let body = stream.collect().await.unwrap_or_default();
        return Err(status_error(status, &body));
    }
    Ok(stream)
}

/// Reads the server-sent events of `stream` through `on_event` as the consumer asks for
/// chunks: no task of its own, so a chunk goes from the model server's connection to
/// the caller without another hop. The whole stream is bounded by `deadline`; dropping
/// the [`ChatStream`] ends the request.
pub(crate) fn pump_events(
    stream: iicp_transport::http::HttpStream,
    deadline: Option<Instant>,
    on_event: impl FnMut(sse::SseEvent) -> Result<Step, BackendError> + Send + 'static,
) -> ChatStream {
    ChatStream {
        source: Source::Events(Box::new(EventSource {
            stream,
            parser: sse::SseParser::new(),
            pending: std::collections::VecDeque::new(),
            on_event: Box::new(on_event),
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            done: false,
        })),
    }
}

/// A model server's event stream, read on demand ([`pump_events`]).
struct EventSource {
    stream: iicp_transport::http::HttpStream,
    parser: sse::SseParser,
    /// Events parsed from the last read, not handed out yet.
    pending: std::collections::VecDeque<sse::SseEvent>,
    on_event: Box<dyn FnMut(sse::SseEvent) -> Result<Step, BackendError> + Send>,
    /// One timer for the whole stream.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Ended (`Done`, the body's end, or an error already handed out).
    done: bool,
}

impl EventSource {
    async fn next(&mut self) -> Option<Result<ChatChunk, BackendError>> {
        let out = self.step().await;
        if !matches!(out, Some(Ok(_))) {
            self.done = true;
        }
        out
    }

    async fn step(&mut self) -> Option<Result<ChatChunk, BackendError>> {
        if self.done {
            return None;
        }
        loop {
            while let Some(ev) = self.pending.pop_front() {
                match (self.on_event)(ev) {
                    Ok(Step::Emit(chunk)) => return Some(Ok(chunk)),
                    Ok(Step::Skip) => {}
                    Ok(Step::Done) => return None,
                    Err(e) => return Some(Err(e)),
                }
            }
            let read = self.stream.chunk();
            let read = match self.deadline.as_mut() {
                Some(expiry) => tokio::select! {
                    biased;
                    r = read => r,
                    () = expiry.as_mut() => return Some(Err(BackendError::timeout())),
                },
                None => read.await,
            };
            match read {
                Err(e) => return Some(Err(transport_error(&e))),
                Ok(None) => return None,
                Ok(Some(bytes)) => {
                    if self.parser.push_into(&bytes, &mut self.pending).is_err() {
                        return Some(Err(BackendError::unavailable("oversized streamed event")));
                    }
                }
            }
        }
    }
}

/// Maps an HTTP-client failure to a backend error.
pub(crate) fn transport_error(e: &iicp_transport::http::HttpClientError) -> BackendError {
    if e.is_timeout() {
        BackendError::timeout()
    } else if e.is_connect() {
        BackendError::unavailable("the model server is unreachable")
    } else {
        BackendError::unavailable("the model server connection failed")
    }
}

/// Maps a backend's error status and body to an IICP error. The caller's message is
/// fixed; the body's message (cleaned, truncated) becomes the operator-only `detail`.
pub(crate) fn status_error(status: u16, body: &[u8]) -> BackendError {
    let text = clean::error_text(body);
    let (code, http_status) = match status {
        400 | 404 | 413 | 422 => (ErrorCode::ValidationError, 422),
        401 | 403 => (ErrorCode::BackendError, 502),
        408 | 504 => (ErrorCode::TaskTimeout, 504),
        429 | 529 => (ErrorCode::CapacityExceeded, 429),
        503 => (ErrorCode::TemporarilyUnavailable, 503),
        _ => (ErrorCode::BackendError, 502),
    };
    let message = match status {
        400 | 404 | 413 | 422 => format!("the model server refused the request (HTTP {status})"),
        _ => format!("the model server failed (HTTP {status})"),
    };
    BackendError {
        code,
        http_status,
        message,
        upstream_status: Some(status),
        detail: (!text.is_empty()).then_some(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_default() {
        for k in BackendKind::ALL {
            assert_eq!(k.as_str().parse::<BackendKind>(), Ok(k));
            assert!(k.default_base_url().ends_with("/v1"));
            assert!(k.is_enabled());
        }
        assert_eq!(
            "llama.cpp".parse::<BackendKind>(),
            Ok(BackendKind::LlamaCpp)
        );
        assert_eq!(
            "Ollama".parse::<BackendKind>(),
            Ok(BackendKind::OpenAiCompat)
        );
        assert!("meshllm".parse::<BackendKind>().is_err());
    }

    #[test]
    fn status_mapping() {
        assert_eq!(status_error(429, b"{}").code, ErrorCode::CapacityExceeded);
        assert_eq!(status_error(400, b"{}").http_status, 422);
        assert_eq!(status_error(500, b"boom").code, ErrorCode::BackendError);
        assert_eq!(status_error(504, b"").code, ErrorCode::TaskTimeout);
        assert_eq!(status_error(529, b"").http_status, 429);
    }

    #[test]
    fn the_callers_message_is_fixed_and_the_detail_is_cleaned() {
        let body = b"Traceback (most recent call last):\n  File \"/home/x/secret.py\", line 3\nValueError: bad shape in /srv/app/model.py key sk-proj-abcdefghijklmnop1234";
        let e = status_error(500, body);
        assert_eq!(e.message, "the model server failed (HTTP 500)");
        assert_eq!(e.to_error_body().message, e.message);
        let detail = e.detail.unwrap();
        assert!(detail.starts_with("ValueError: bad shape"), "{detail}");
        for leak in ["secret.py", "/srv/app", "sk-proj", "Traceback"] {
            assert!(!detail.contains(leak), "{leak} in {detail}");
        }
        let e = status_error(400, br#"{"error":{"message":"prompt too long: /tmp/x/y"}}"#);
        assert_eq!(e.message, "the model server refused the request (HTTP 400)");
        assert_eq!(e.detail.as_deref(), Some("prompt too long: <path>"));
        assert_eq!(status_error(502, b"").detail, None);
    }

    #[test]
    fn completion_reads_model_and_usage() {
        let c = Completion::from_result(
            serde_json::json!({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        );
        assert_eq!((c.model.as_deref(), c.tokens_used), (Some("m"), Some(7)));
    }

    #[test]
    fn endpoints_and_public_model_names() {
        for (ty, url, kind, base) in [
            (
                None,
                Some("http://127.0.0.1:8080"),
                BackendKind::OpenAiCompat,
                "http://127.0.0.1:8080/v1",
            ),
            (
                None,
                Some("http://h:11434/v1/"),
                BackendKind::OpenAiCompat,
                "http://h:11434/v1",
            ),
            (
                Some("llamacpp"),
                Some("http://h:8080/"),
                BackendKind::LlamaCpp,
                "http://h:8080/v1",
            ),
            (
                None,
                Some("https://api.anthropic.com"),
                BackendKind::Anthropic,
                "https://api.anthropic.com/v1",
            ),
            (
                Some("vllm"),
                None,
                BackendKind::Vllm,
                "http://localhost:8000/v1",
            ),
            (
                Some(""),
                Some(""),
                BackendKind::OpenAiCompat,
                "http://localhost:11434/v1",
            ),
        ] {
            assert_eq!(
                resolve_endpoint(ty, url),
                Ok((kind, base.to_owned())),
                "{url:?}"
            );
        }
        assert!(matches!(
            resolve_endpoint(None, Some("localhost:8080")),
            Err(EndpointError::NotHttp(_))
        ));
        assert!(matches!(
            resolve_endpoint(Some("meshllm"), None),
            Err(EndpointError::UnknownType(_))
        ));
        for (id, public) in [
            (
                "/root/.cache/m/SmolLM2-135M-Instruct.Q4_1.gguf",
                "SmolLM2-135M-Instruct.Q4_1",
            ),
            (
                "models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
                "qwen2.5-0.5b-instruct-q4_k_m",
            ),
            ("C:\\models\\llama.gguf", "llama"),
            ("qwen2.5:0.5b", "qwen2.5:0.5b"),
            ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
            ("gpt-4o-mini", "gpt-4o-mini"),
        ] {
            assert_eq!(public_model_name(id), public, "{id}");
        }
        let mut c = BackendConfig::new(BackendKind::LlamaCpp);
        c.model_aliases = vec![("q".into(), "/m/q.gguf".into())];
        assert_eq!(c.upstream_model("q"), "/m/q.gguf");
        assert_eq!(c.upstream_model("other"), "other");
        assert_eq!(c.public_model("/m/q.gguf"), "q");
    }

    #[test]
    fn chunks_pass_as_text_with_usage_and_model_read() {
        let text = r#"{"id":"c","object":"chat.completion.chunk","model":"m1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let c = ChatChunk::from_text(text.to_owned()).expect("chunk");
        assert_eq!(c.json(), text, "the text passes as it came");
        assert_eq!(
            (c.total_tokens(), c.model().as_deref()),
            (Some(7), Some("m1"))
        );
        // odd shapes are still read (a float count, a null model, not an object)
        let c = ChatChunk::from_text(r#"{"model":null,"usage":{"total_tokens":7.5}}"#.into())
            .expect("chunk");
        assert_eq!((c.total_tokens(), c.model()), (None, None));
        let c = ChatChunk::from_text(r#"{"model":5,"usage":null}"#.into()).expect("chunk");
        assert_eq!((c.total_tokens(), c.model()), (None, None));
        assert_eq!(
            ChatChunk::from_text("[1]".into()).expect("chunk").json(),
            "[1]"
        );
        let c =
            ChatChunk::from_text(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#.into())
                .expect("chunk");
        assert_eq!(c.content().as_deref(), Some("Hi"));
        for bad in ["", "{", "data", r#"{"a":1}x"#] {
            let e = ChatChunk::from_text(bad.into()).expect_err(bad);
            assert_eq!(e.code, ErrorCode::BackendError);
        }
        let v = serde_json::json!({"model": "m2", "usage": {"total_tokens": 9}});
        let c = ChatChunk::from_value(&v);
        assert_eq!(
            (c.total_tokens(), c.model().as_deref(), c.to_value()),
            (Some(9), Some("m2"), v)
        );
        // the content may name usage: harmless, it is parsed and has none
        let c =
            ChatChunk::from_text(r#"{"choices":[{"delta":{"content":"\"usage\": {}"}}]}"#.into())
                .expect("chunk");
        assert_eq!(c.total_tokens(), None);
    }

    #[test]
    fn config_debug_redacts_key() {
        let mut c = BackendConfig::new(BackendKind::Anthropic);
        c.api_key = Some(Secret::new("sk-ant-secret"));
        assert!(!format!("{c:?}").contains("sk-ant"));
    }
}
