//! `iicp-proxy`: the IICP mesh as a local OpenAI, Anthropic and Ollama endpoint.
//!
//! Point an OpenAI, Anthropic or Ollama client (the official SDKs, LangChain, an editor
//! plugin, `curl`) at `http://127.0.0.1:9483` and every chat is routed by intent across
//! the mesh: discover → select → submit with retry, IICP-CX encrypted, through
//! [`iicp_client::Client`]. What it serves, each in that API's own shapes, status codes
//! and error bodies:
//!
//! * OpenAI: `POST /v1/chat/completions` — messages (image parts included),
//!   `temperature`, `top_p`, `max_tokens` / `max_completion_tokens`, `stop`, `tools` /
//!   `tool_choice`, `response_format`, `stream` and `stream_options.include_usage` —
//!   `GET /v1/models`, `GET /v1/models/{id}`;
//! * Anthropic: `POST /v1/messages` — `system`, content blocks (images, `tool_use`,
//!   `tool_result`), `max_tokens`, `stop_sequences`, `tools`, `stream` with the event
//!   sequence `message_start` … `message_stop` — and its model list on `GET /v1/models`
//!   when the request carries `anthropic-version`;
//! * Ollama: `POST /api/chat`, `POST /api/generate` (NDJSON streaming by default),
//!   `GET /api/tags`, `GET /api/version`, `POST /api/show`;
//! * `GET /status` (the mesh as the proxy sees it: directory reachable, nodes and
//!   models for the chat intent, the last mesh errors) and `GET /metrics` (OpenMetrics:
//!   requests by surface and status, latency histogram, mesh failures by IICP code,
//!   requests in flight).
//!
//! Models are the mesh's: the listings show what the directory offers for
//! `urn:iicp:intent:llm:chat:v1` (cached briefly); a request's `model` filters
//! discovery (`iicp` or empty: any model) and an unknown model is a 404.
//!
//! Streaming is real: a `stream: true` request (Ollama streams by default) goes through
//! [`iicp_client::Client::chat_stream`] and each text delta and tool-call fragment the
//! node sends is written to the application as it arrives, in that API's chunk format
//! (OpenAI `chat.completion.chunk` events, a usage chunk with
//! `stream_options.include_usage`, `data: [DONE]` last; Anthropic's event sequence with
//! `text_delta` and `input_json_delta`; Ollama's NDJSON lines, `done: true` last with the
//! counts). The response head is sent once the node's first event came: a failure before
//! it is the surface's normal error response; a failure after it is the surface's
//! in-stream error (OpenAI a `data: {"error": …}` event, Anthropic an `error` event,
//! Ollama a last `{"error": …}` line) and the stream ends without its success marker. An
//! application that hangs up drops the chat stream, which cancels the task on the node
//! (and the node stops its model server). A node that does not stream answers through the
//! same path as one delta (the client's fallback). While a stream runs it holds its
//! concurrency slot.
//!
//! Every response carries `Server: iicp-proxy` and `X-IICP-Trace-Id` (a streamed answer
//! the trace id of its task); answered chats
//! also `X-IICP-Node-Id`, `X-IICP-Task-Id` and `X-IICP-Generated-By-AI: true`. Failures are mapped once,
//! for every surface: no node → 502 with `IICP-E033`, every node failed → 502, timeout
//! → 504, capacity everywhere → 429 with `Retry-After`, bad JSON → 400, body over the
//! cap → 413, wrong API key → 401, too many requests at once → 429. The IICP code is in
//! each API's error body (`error.code` for OpenAI and Anthropic, the message prefix for
//! Ollama); a node's or backend's own error text is never passed on, nor are keys,
//! tokens or payloads logged.
//!
//! What it is not: a node, or a directory. Place in the crate graph: layer L3, above
//! `iicp-client`, `iicp-transport` and `iicp-proto`; `iicp proxy` is its command.
//!
//! ```no_run
//! use iicp_proxy::Proxy;
//! use iicp_transport::listener::{Listener, ListenerConfig};
//! use iicp_transport::shutdown;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = Proxy::builder()
//!     .directory_url("http://127.0.0.1:41669/api") // e.g. what `iicp dev` printed
//!     .allow_private_endpoints(true)
//!     .api_key("sk-local")
//!     .build()?;
//! let listener = Listener::bind("127.0.0.1:9483".parse()?, ListenerConfig::default()).await?;
//! let (trigger, stop) = shutdown::channel();
//! tokio::spawn(async move { proxy.serve(listener, stop).await });
//! // … point OPENAI_BASE_URL=http://127.0.0.1:9483/v1 at it; later:
//! trigger.fire();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod anthropic;
mod call;
mod events;
mod failure;
mod metrics;
mod models;
mod ollama;
mod openai;
mod proxy;
mod stream;

pub use proxy::{
    Proxy, ProxyBuilder, ProxyError, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT,
    DEFAULT_MODEL_CACHE_TTL, DEFAULT_PORT, DEFAULT_TIMEOUT, MAX_TIMEOUT,
};
