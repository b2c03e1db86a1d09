//! Task handlers that come with the node: [`BackendHandler`] runs tasks on a model server
//! through an `iicp-backends` adapter, and [`EchoModel`] is a deterministic built-in model
//! for development meshes, tests and benchmarks (no model server needed).

use std::sync::Arc;

use iicp_backends::{Backend, BackendError};
use iicp_proto::error::ErrorCode;
use serde_json::{json, Value};

use crate::handler::{BoxFuture, Chunks, HandlerError, Task, TaskHandler, TaskOutput};

/// Runs each task on a model server; the backend call is bounded by the task deadline
/// and cancelled when the node abandons the task.
#[derive(Clone)]
pub struct BackendHandler {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for BackendHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendHandler")
            .field("kind", &self.backend.kind())
            .finish()
    }
}

impl BackendHandler {
    /// A handler over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }
}

/// Maps a backend failure to the node's handler error (keeping the IICP code and status).
/// The caller gets the code, the status and the fixed message; what the model server
/// said goes to the node's own log (already cleaned of paths and secret-like words).
fn map_error(e: BackendError) -> HandlerError {
    if let Some(detail) = &e.detail {
        tracing::warn!(
            upstream_status = e.upstream_status,
            code = %e.code,
            detail = %detail,
            "model server error"
        );
    }
    match e.code {
        ErrorCode::TaskTimeout => HandlerError::Timeout,
        ErrorCode::BackendError => HandlerError::backend(e.message),
        ErrorCode::ValidationError => HandlerError::invalid(e.message),
        _ => HandlerError::Protocol(e.to_error_body()),
    }
}

impl TaskHandler for BackendHandler {
    fn handle(&self, task: Task) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        let backend = Arc::clone(&self.backend);
        Box::pin(async move {
            let run = backend.execute(task.intent.as_str(), &task.payload, Some(task.deadline));
            let out = tokio::select! {
                out = run => out.map_err(map_error)?,
                () = task.cancel.cancelled() => return Err(HandlerError::Timeout),
            };
            let mut output = TaskOutput::new(out.result);
            if let Some(t) = out.tokens_used {
                output = output.with_tokens(t);
            }
            if let Some(m) = out.model {
                output = output.with_model(m);
            }
            Ok(output)
        })
    }

    /// The server's model list, by public name (no GGUF path is advertised).
    fn models(&self) -> Option<BoxFuture<'static, Result<Vec<String>, HandlerError>>> {
        let backend = Arc::clone(&self.backend);
        Some(Box::pin(async move {
            let ids = backend.models().await.map_err(map_error)?;
            let mut out: Vec<String> = Vec::with_capacity(ids.len());
            for id in ids {
                let public = iicp_backends::public_model_name(&id);
                if !out.contains(&public) {
                    out.push(public);
                }
            }
            Ok(out)
        }))
    }

    /// Chat streams from the model server (OpenAI-compatible SSE, Anthropic events);
    /// other intents are answered in one chunk.
    fn streams(&self) -> bool {
        self.backend
            .intents()
            .contains(&iicp_proto::constants::CHAT_INTENT)
    }

    fn handle_stream(
        &self,
        task: Task,
        chunks: Chunks,
    ) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        if task.intent.as_str() != iicp_proto::constants::CHAT_INTENT {
            return self.handle(task);
        }
        let backend = Arc::clone(&self.backend);
        Box::pin(async move {
            let mut stream = backend
                .chat_stream(&task.payload, Some(task.deadline))
                .await
                .map_err(map_error)?;
            // every chunk goes out as it arrives (holding one back for the terminal
            // would delay each by a token); the terminal carries none ([life] §4: a
            // completed event may omit an empty last chunk)
            let mut tokens: Option<u64> = None;
            let mut model: Option<String> = None;
            while let Some(next) = stream.next().await {
                let chunk = next.map_err(map_error)?;
                if let Some(t) = chunk.total_tokens() {
                    tokens = Some(t);
                }
                if model.is_none() {
                    model = chunk.model();
                }
                // the model server's JSON text goes on as it came (ADR 0020)
                if chunks.send_text(chunk.into_json(), tokens).await.is_err() {
                    // nobody reads any more: dropping the stream ends the request
                    return Err(HandlerError::backend("the task's stream was closed"));
                }
            }
            let mut output = TaskOutput::new(Value::Null);
            if let Some(t) = tokens {
                output = output.with_tokens(t);
            }
            if let Some(m) = model {
                output = output.with_model(m);
            }
            Ok(output)
        })
    }
}

/// A deterministic model: answers a chat with `echo: <last user message>` in the OpenAI
/// chat-completion shape, with word-count usage. Serves only `llm:chat:v1` payloads.
#[derive(Clone, Debug)]
pub struct EchoModel {
    name: String,
}

impl EchoModel {
    /// The model name it reports (`echo` by default).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The completion it gives for a chat payload.
    #[allow(clippy::result_large_err)] // HandlerError is what every handler returns
    pub fn complete(&self, payload: &Value) -> Result<Value, HandlerError> {
        let messages = payload
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| HandlerError::invalid("payload.messages must be an array"))?;
        let last = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .ok_or_else(|| HandlerError::invalid("no user message"))?;
        let text = match last.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        let prompt_words: usize = messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_str))
            .map(|c| c.split_whitespace().count())
            .sum();
        let reply = format!("echo: {text}");
        let completion_words = reply.split_whitespace().count();
        Ok(json!({
            "id": "chatcmpl-echo",
            "object": "chat.completion",
            "created": 0,
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion_words, "total_tokens": prompt_words + completion_words},
        }))
    }
}

impl Default for EchoModel {
    fn default() -> Self {
        Self::new("echo")
    }
}

impl EchoModel {
    /// The same completion as streamed `chat.completion.chunk`s: a role chunk, one
    /// chunk per word, then the finish chunk with the usage (the terminal's result).
    #[allow(clippy::result_large_err)] // HandlerError is what every handler returns
    pub fn stream_chunks(&self, payload: &Value) -> Result<Vec<Value>, HandlerError> {
        let whole = self.complete(payload)?;
        let text = whole
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-echo",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let mut out = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        let mut rest = text;
        while !rest.is_empty() {
            // each word with the space before the next one: the chunks join to the text
            let end = rest
                .char_indices()
                .skip_while(|(_, c)| !c.is_whitespace())
                .find(|(_, c)| !c.is_whitespace())
                .map_or(rest.len(), |(i, _)| i);
            out.push(chunk(json!({"content": &rest[..end]}), Value::Null));
            rest = &rest[end..];
        }
        let mut last = chunk(json!({}), json!("stop"));
        last["usage"] = whole["usage"].clone();
        out.push(last);
        Ok(out)
    }
}

impl TaskHandler for EchoModel {
    fn handle(&self, task: Task) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        let out = self
            .complete(&task.payload)
            .map(|v| TaskOutput::new(v).with_model(self.name.clone()));
        Box::pin(async move { out })
    }

    fn streams(&self) -> bool {
        true
    }

    fn handle_stream(
        &self,
        task: Task,
        chunks: Chunks,
    ) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        let all = self.stream_chunks(&task.payload);
        let name = self.name.clone();
        Box::pin(async move {
            let mut all = all?;
            let last = all.pop().unwrap_or(Value::Null);
            let tokens = last.pointer("/usage/total_tokens").and_then(Value::as_u64);
            for c in all {
                chunks
                    .send(c, None)
                    .await
                    .map_err(|_| HandlerError::backend("the task's stream was closed"))?;
            }
            let mut out = TaskOutput::new(last).with_model(name);
            out.tokens_used = tokens;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_completion() {
        let m = EchoModel::default();
        let v = m.complete(&json!({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hello there"}]})).expect("ok");
        assert_eq!(v["choices"][0]["message"]["content"], "echo: hello there");
        assert_eq!(v["usage"]["total_tokens"], 6);
        assert!(m.complete(&json!({"messages": []})).is_err());
        assert!(m.complete(&json!({})).is_err());
    }

    #[test]
    fn echo_streams_the_same_text_word_by_word() {
        let m = EchoModel::default();
        let p = json!({"messages": [{"role": "user", "content": "hello  there, mesh"}]});
        let chunks = m.stream_chunks(&p).expect("ok");
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(text, "echo: hello  there, mesh");
        // role chunk, four words, finish chunk
        assert_eq!(chunks.len(), 6);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["usage"], m.complete(&p).unwrap()["usage"]);
        assert!(chunks[..5]
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"
                && c["choices"][0]["finish_reason"].is_null()));
    }

    #[test]
    fn backend_errors_map_to_handler_errors() {
        assert!(matches!(
            map_error(BackendError::timeout()),
            HandlerError::Timeout
        ));
        assert!(matches!(
            map_error(BackendError::unavailable("x")),
            HandlerError::Backend { .. }
        ));
        assert!(matches!(
            map_error(BackendError::invalid("x")),
            HandlerError::Invalid { .. }
        ));
        let HandlerError::Protocol(body) =
            map_error(BackendError::new(ErrorCode::CapacityExceeded, 429, "busy"))
        else {
            panic!()
        };
        assert_eq!(body.status_or_default(), 429);
    }
}
