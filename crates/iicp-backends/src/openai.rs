//! The OpenAI chat-completions dialect: Ollama, LM Studio, OpenAI, vLLM and llama.cpp
//! (SEED-SDK.md §1.14; PROTOCOL.md §4.1 `llm:chat:v1` payloads are OpenAI-shaped).
//!
//! Payloads are forwarded as they are — every request field (temperature, max_tokens,
//! stop, tools, response_format, …) reaches the server — with `model` filled from the
//! backend default when absent and `stream` removed from buffered calls. The answer is
//! the server's own completion object.

use std::time::Duration;
use tokio::time::Instant;

use iicp_proto::result::ResultJson;
use iicp_transport::http::HttpClient;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::{
    model_for, open_stream, pump_events, status_error, transport_error, Backend, BackendConfig,
    BackendError, BackendKind, BoxFuture, ChatChunk, ChatStream, Completion, Step, CHAT_INTENT,
    COMPLETION_INTENT, EMBEDDING_INTENT,
};

const INTENTS: [&str; 3] = [CHAT_INTENT, COMPLETION_INTENT, EMBEDDING_INTENT];

/// The paths of [`INTENTS`], in the same order.
const PATHS: [&str; 3] = ["/chat/completions", "/completions", "/embeddings"];

/// An OpenAI-dialect backend.
#[derive(Debug)]
pub struct OpenAi {
    config: BackendConfig,
    client: HttpClient,
    base: String,
    /// The URL of each of [`INTENTS`], made once rather than per request.
    urls: [String; 3],
}

impl OpenAi {
    /// An adapter for `config` using `client`.
    pub fn new(config: BackendConfig, client: HttpClient) -> Self {
        let base = config.effective_base_url();
        let urls = PATHS.map(|path| format!("{base}{path}"));
        Self {
            config,
            client,
            base,
            urls,
        }
    }

    /// The URL an intent is posted to, when the dialect has one.
    fn url_for(&self, intent: &str) -> Option<&str> {
        let i = INTENTS.iter().position(|i| *i == intent)?;
        Some(&self.urls[i])
    }

    fn post(
        &self,
        url: &str,
        body: &RequestBody<'_>,
        timeout: Duration,
    ) -> iicp_transport::http::client::RequestBuilder {
        let mut req = self.client.post_json(url, body).timeout(timeout);
        if let Some(key) = &self.config.api_key {
            req = req.bearer(key.clone());
        }
        req
    }

    fn body_for<'p>(
        &self,
        payload: &'p Value,
        stream: bool,
    ) -> Result<RequestBody<'p>, BackendError> {
        let Value::Object(map) = payload else {
            return Err(BackendError::invalid("payload must be a JSON object"));
        };
        let model = model_for(payload, self.config.model.as_deref())?;
        Ok(RequestBody {
            payload: map,
            model: self.config.upstream_model(&model).to_owned(),
            stream,
        })
    }

    fn publish_model(&self, result: &mut Value) {
        publish_model(&self.config, result);
    }

    fn timeout(&self, deadline: Option<Instant>) -> Duration {
        deadline.map_or(self.config.timeout, |d| {
            d.saturating_duration_since(Instant::now())
                .min(self.config.timeout)
        })
    }
}

/// Replaces a server model id in `result.model` by its public name (a GGUF path never
/// reaches a caller).
fn publish_model(config: &BackendConfig, result: &mut Value) {
    if config.model_aliases.is_empty() {
        return;
    }
    if let Some(Value::String(m)) = result.get_mut("model") {
        let public = config.public_model(m);
        if public != m.as_str() {
            *m = public.to_owned();
        }
    }
}

/// The request body: the task's payload with `model` set and `stream` set (streamed,
/// asking for the usage chunk unless the payload sets `stream_options`) or removed with
/// `stream_options` (buffered). Serialised from the borrowed payload: the
/// payload tree is not copied.
pub(crate) struct RequestBody<'p> {
    payload: &'p Map<String, Value>,
    model: String,
    stream: bool,
}

impl Serialize for RequestBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let skip =
            |k: &str| k == "model" || k == "stream" || (!self.stream && k == "stream_options");
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in self.payload.iter().filter(|(k, _)| !skip(k)) {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("model", &self.model)?;
        if self.stream {
            map.serialize_entry("stream", &true)?;
            // the usage arrives in a last chunk, so a streamed task is accounted too
            if !self.payload.contains_key("stream_options") {
                map.serialize_entry(
                    "stream_options",
                    &serde_json::json!({"include_usage": true}),
                )?;
            }
        }
        map.end()
    }
}

impl Backend for OpenAi {
    fn kind(&self) -> BackendKind {
        self.config.kind
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
            let url = self
                .url_for(intent)
                .ok_or_else(|| BackendError::unsupported_intent(intent))?;
            let body = self.body_for(payload, false)?;
            let reply = self
                .post(url, &body, self.timeout(deadline))
                .send()
                .await
                .map_err(|e| transport_error(&e))?;
            if !reply.is_success() {
                return Err(status_error(reply.status.as_u16(), &reply.body));
            }
            let not_json =
                |_| BackendError::unavailable("the model server returned a body that is not JSON");
            let result = if self.config.model_aliases.is_empty() {
                // passed on as the text it came as (ADR 0022)
                ResultJson::from_bytes(reply.body.into()).map_err(not_json)?
            } else {
                let mut result: Value = serde_json::from_slice(&reply.body).map_err(not_json)?;
                self.publish_model(&mut result);
                ResultJson::Value(result)
            };
            match result.summary() {
                Some(s) if intent != CHAT_INTENT || s.has_choices => {
                    Ok(Completion::with_summary(result, s))
                }
                _ => Err(BackendError::unavailable(
                    "the model server returned a malformed completion",
                )),
            }
        })
    }

    fn chat_stream<'a>(
        &'a self,
        payload: &'a Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<ChatStream, BackendError>> {
        Box::pin(async move {
            let body = self.body_for(payload, true)?;
            let url = self
                .url_for(CHAT_INTENT)
                .ok_or_else(|| BackendError::unsupported_intent(CHAT_INTENT))?;
            let stream =
                open_stream(self.post(url, &body, self.timeout(deadline)), deadline).await?;
            let config = self.config.clone();
            Ok(pump_events(stream, deadline, move |ev| {
                if ev.data.trim() == "[DONE]" {
                    return Ok(Step::Done);
                }
                if config.model_aliases.is_empty() {
                    // passed on as it came
                    return ChatChunk::from_text(ev.data).map(Step::Emit);
                }
                let mut chunk: Value = serde_json::from_str(&ev.data)
                    .map_err(|_| BackendError::unavailable("streamed event is not JSON"))?;
                publish_model(&config, &mut chunk);
                Ok(Step::Emit(ChatChunk::from_value(&chunk)))
            }))
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async move {
            crate::detect::list_models(&self.client, &self.base, self.config.api_key.as_ref()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(payload: &Value, default: Option<&str>, stream: bool) -> Value {
        let Value::Object(map) = payload else {
            panic!("object")
        };
        let b = RequestBody {
            payload: map,
            model: model_for(payload, default).unwrap(),
            stream,
        };
        serde_json::to_value(&b).unwrap()
    }

    #[test]
    fn request_bodies_are_the_payload_with_model_and_stream_set() {
        let p = json!({"messages": [{"role": "user", "content": "hi"}], "model": "m1",
            "stream": true, "stream_options": {"include_usage": true}, "temperature": 0.5});
        assert_eq!(
            body(&p, Some("default"), false),
            json!({"messages": [{"role": "user", "content": "hi"}], "model": "m1", "temperature": 0.5})
        );
        assert_eq!(
            body(&p, None, true),
            json!({"messages": [{"role": "user", "content": "hi"}], "model": "m1", "stream": true,
                "stream_options": {"include_usage": true}, "temperature": 0.5})
        );
        let bare = json!({"messages": [], "stream": false});
        assert_eq!(
            body(&bare, Some("d"), false),
            json!({"messages": [], "model": "d"})
        );
        // streamed without stream_options: the usage chunk is asked for; the caller's
        // own stream_options win
        assert_eq!(
            body(&bare, Some("d"), true),
            json!({"messages": [], "model": "d", "stream": true,
                "stream_options": {"include_usage": true}})
        );
        let off = json!({"messages": [], "stream_options": {"include_usage": false}});
        assert_eq!(
            body(&off, Some("d"), true),
            json!({"messages": [], "model": "d", "stream": true,
                "stream_options": {"include_usage": false}})
        );
    }
}
