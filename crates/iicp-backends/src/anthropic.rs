//! The Anthropic Messages API behind the OpenAI chat-completion surface, so a Claude
//! node is indistinguishable from an Ollama node to every client (SEED-SDK.md §1.14).
//!
//! Request mapping (OpenAI → Anthropic): `system` (and `developer`) messages are hoisted
//! into the top-level `system` field; `max_tokens` is required (payload value, else the
//! configured default 4096); `stop` becomes `stop_sequences`; `temperature`, `top_p`,
//! `top_k` pass through; `image_url` content parts become image blocks (data URLs as
//! base64 sources, http(s) URLs as url sources); `tools`/`tool_choice` and assistant
//! `tool_calls` / `tool` messages map to `tool_use` / `tool_result` blocks. Headers:
//! `x-api-key` (never a bearer token) and `anthropic-version`.
//!
//! Response mapping (Anthropic → OpenAI): text blocks joined into `message.content`,
//! `tool_use` blocks into `message.tool_calls`, `stop_reason` into `finish_reason`
//! (`end_turn`/`stop_sequence` → `stop`, `max_tokens` → `length`, `tool_use` →
//! `tool_calls`), usage into `prompt_tokens`/`completion_tokens`/`total_tokens`.
//! Anthropic errors map to IICP codes: `overloaded_error` and `rate_limit_error` →
//! `capacity_exceeded`, `invalid_request_error` → `validation_error`, others →
//! `backend_error`.

use std::time::Duration;
use tokio::time::Instant;

use iicp_transport::clock::{Clock, SystemClock};
use iicp_transport::http::HttpClient;
use serde_json::{json, Map, Value};

use crate::{
    model_for, open_stream, pump_events, status_error, transport_error, Backend, BackendConfig,
    BackendError, BackendKind, BoxFuture, ChatChunk, ChatStream, Completion, Step, CHAT_INTENT,
};

const INTENTS: [&str; 1] = [CHAT_INTENT];

/// The Anthropic adapter.
#[derive(Debug)]
pub struct Anthropic {
    config: BackendConfig,
    client: HttpClient,
    base: String,
}

impl Anthropic {
    /// An adapter for `config` using `client`.
    pub fn new(config: BackendConfig, client: HttpClient) -> Self {
        let base = config.effective_base_url();
        Self {
            config,
            client,
            base,
        }
    }

    fn post(
        &self,
        body: &Value,
        timeout: Duration,
    ) -> iicp_transport::http::client::RequestBuilder {
        let mut req = self
            .client
            .post_json(format!("{}/messages", self.base), body)
            .timeout(timeout)
            .header("anthropic-version", self.config.anthropic_version.as_str());
        if let Some(key) = &self.config.api_key {
            req = req.header("x-api-key", key.expose());
        }
        req
    }

    fn timeout(&self, deadline: Option<Instant>) -> Duration {
        deadline.map_or(self.config.timeout, |d| {
            d.saturating_duration_since(Instant::now())
                .min(self.config.timeout)
        })
    }

    /// The Messages API request for an OpenAI-shaped chat payload.
    pub fn request_body(&self, payload: &Value, stream: bool) -> Result<Value, BackendError> {
        to_messages_request(
            payload,
            &model_for(payload, self.config.model.as_deref())?,
            self.config.anthropic_default_max_tokens,
            stream,
        )
    }
}

/// Text of an OpenAI message content (a string or text parts).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Anthropic content blocks for an OpenAI message content.
fn content_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| json!({"type": "text", "text": t})),
                Some("image_url") => {
                    let url = p
                        .get("image_url")
                        .and_then(|i| i.get("url").or(Some(i)))
                        .and_then(Value::as_str)?;
                    Some(image_block(url))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').unwrap_or(("", rest));
        let media_type = meta
            .split(';')
            .next()
            .filter(|m| !m.is_empty())
            .unwrap_or("image/png");
        json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
    } else {
        json!({"type": "image", "source": {"type": "url", "url": url}})
    }
}

/// Maps an OpenAI chat payload to a Messages API request.
pub fn to_messages_request(
    payload: &Value,
    model: &str,
    default_max_tokens: u64,
    stream: bool,
) -> Result<Value, BackendError> {
    let messages = payload
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| BackendError::invalid("payload.messages must be an array"))?;
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(content_text(content)),
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": content_text(content)});
                push_block(&mut out, "user", block);
            }
            "assistant" => {
                let mut blocks = content_blocks(content);
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let f = c.get("function").unwrap_or(&Value::Null);
                        let args = f
                            .get("arguments")
                            .and_then(Value::as_str)
                            .and_then(|a| serde_json::from_str::<Value>(a).ok())
                            .unwrap_or_else(|| json!({}));
                        blocks.push(json!({"type": "tool_use", "id": c.get("id").cloned().unwrap_or(Value::Null), "name": f.get("name").cloned().unwrap_or(Value::Null), "input": args}));
                    }
                }
                out.push(json!({"role": "assistant", "content": blocks}));
            }
            _ => out.push(json!({"role": "user", "content": content_blocks(content)})),
        }
    }
    if out.is_empty() {
        return Err(BackendError::invalid(
            "the conversation has no user or assistant message",
        ));
    }
    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(Value::as_u64))
        .filter(|n| *n > 0)
        .unwrap_or(default_max_tokens);
    let mut req = Map::new();
    req.insert("model".into(), Value::String(model.to_owned()));
    req.insert("max_tokens".into(), Value::from(max_tokens));
    req.insert("messages".into(), Value::Array(out));
    if !system.is_empty() {
        req.insert("system".into(), Value::String(system.join("\n\n")));
    }
    for k in ["temperature", "top_p", "top_k", "metadata"] {
        if let Some(v) = payload.get(k) {
            req.insert(k.into(), v.clone());
        }
    }
    match payload.get("stop") {
        Some(Value::String(s)) => {
            req.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            req.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = payload.get("tools").and_then(Value::as_array) {
        let mapped: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| json!({"name": f.get("name"), "description": f.get("description").cloned().unwrap_or(Value::Null), "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))}))
            .map(|mut t| {
                if t["description"].is_null() {
                    if let Some(o) = t.as_object_mut() {
                        o.remove("description");
                    }
                }
                t
            })
            .collect();
        req.insert("tools".into(), Value::Array(mapped));
    }
    match payload.get("tool_choice") {
        Some(Value::String(s)) if s == "auto" => {
            req.insert("tool_choice".into(), json!({"type": "auto"}));
        }
        Some(Value::String(s)) if s == "required" => {
            req.insert("tool_choice".into(), json!({"type": "any"}));
        }
        Some(Value::Object(o)) => {
            if let Some(name) = o.get("function").and_then(|f| f.get("name")) {
                req.insert("tool_choice".into(), json!({"type": "tool", "name": name}));
            }
        }
        _ => {}
    }
    if stream {
        req.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(req))
}

fn push_block(out: &mut Vec<Value>, role: &str, block: Value) {
    if let Some(last) = out.last_mut() {
        if last["role"] == role {
            if let Some(arr) = last.get_mut("content").and_then(Value::as_array_mut) {
                arr.push(block);
                return;
            }
        }
    }
    out.push(json!({"role": role, "content": [block]}));
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
}

/// Maps a Messages API response to an OpenAI chat completion.
pub fn from_messages_response(resp: &Value) -> Result<Value, BackendError> {
    let blocks = resp
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| BackendError::unavailable("the Anthropic response has no content"))?;
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("");
    let tool_calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| json!({"id": b.get("id"), "type": "function", "function": {"name": b.get("name"), "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)}}))
        .collect();
    let mut message = json!({"role": "assistant", "content": text});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let input = resp
        .pointer("/usage/input_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let output = resp
        .pointer("/usage/output_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(json!({
        "id": resp.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": SystemClock.now_secs(),
        "model": resp.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(resp.get("stop_reason").and_then(Value::as_str))}],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    }))
}

impl Backend for Anthropic {
    fn kind(&self) -> BackendKind {
        BackendKind::Anthropic
    }

    fn default_model(&self) -> Option<&str> {
        self.config.model.as_deref()
    }

    fn intents(&self) -> &[&'static str] {
        &INTENTS
    }

    fn execute<'a>(
        &'a self,
        intent: &'a str,
        payload: &'a Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Completion, BackendError>> {
        // the request's timeout ends at the deadline and covers the whole exchange,
        // the only await here: no second timer per task
        Box::pin(async move {
            if intent != CHAT_INTENT {
                return Err(BackendError::unsupported_intent(intent));
            }
            let body = self.request_body(payload, false)?;
            let reply = self
                .post(&body, self.timeout(deadline))
                .send()
                .await
                .map_err(|e| transport_error(&e))?;
            if !reply.is_success() {
                return Err(status_error(reply.status.as_u16(), &reply.body));
            }
            let resp: Value = serde_json::from_slice(&reply.body)
                .map_err(|_| BackendError::unavailable("the Anthropic response is not JSON"))?;
            Ok(Completion::from_result(from_messages_response(&resp)?))
        })
    }

    fn chat_stream<'a>(
        &'a self,
        payload: &'a Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<ChatStream, BackendError>> {
        Box::pin(async move {
            let body = self.request_body(payload, true)?;
            let stream = open_stream(self.post(&body, self.timeout(deadline)), deadline).await?;
            let (mut id, mut model) = (Value::Null, Value::Null);
            Ok(pump_events(stream, deadline, move |ev| {
                let v: Value = serde_json::from_str(&ev.data)
                    .map_err(|_| BackendError::unavailable("streamed event is not JSON"))?;
                let chunk = |delta: Value, finish: Value, id: &Value, model: &Value| {
                    ChatChunk::from_value(
                        &json!({"id": id, "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
                    )
                };
                Ok(match v.get("type").and_then(Value::as_str) {
                    Some("message_start") => {
                        id = v.pointer("/message/id").cloned().unwrap_or(Value::Null);
                        model = v.pointer("/message/model").cloned().unwrap_or(Value::Null);
                        Step::Emit(chunk(
                            json!({"role": "assistant"}),
                            Value::Null,
                            &id,
                            &model,
                        ))
                    }
                    Some("content_block_delta") => {
                        match v.pointer("/delta/text").and_then(Value::as_str) {
                            Some(t) => {
                                Step::Emit(chunk(json!({"content": t}), Value::Null, &id, &model))
                            }
                            None => Step::Skip,
                        }
                    }
                    Some("message_delta") => {
                        let fr =
                            finish_reason(v.pointer("/delta/stop_reason").and_then(Value::as_str));
                        Step::Emit(chunk(json!({}), json!(fr), &id, &model))
                    }
                    Some("message_stop") => Step::Done,
                    Some("error") => return Err(status_error(529, ev.data.as_bytes())),
                    _ => Step::Skip,
                })
            }))
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async move {
            let mut req = self
                .client
                .get(format!("{}/models", self.base))
                .timeout(Duration::from_secs(5))
                .header("anthropic-version", self.config.anthropic_version.as_str());
            if let Some(key) = &self.config.api_key {
                req = req.header("x-api-key", key.expose());
            }
            let reply = req.send().await.map_err(|e| transport_error(&e))?;
            if !reply.is_success() {
                return Err(status_error(reply.status.as_u16(), &reply.body));
            }
            let v: Value = reply
                .json()
                .map_err(|_| BackendError::unavailable("model list is not JSON"))?;
            Ok(v.get("data")
                .and_then(Value::as_array)
                .map(|d| {
                    d.iter()
                        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default())
        })
    }
}
