//! The Ollama surface: `POST /api/chat`, `POST /api/generate`, `GET /api/tags`,
//! `GET /api/version`, `POST /api/show`, in Ollama's shapes — streamed as NDJSON by
//! default (`"stream": false` for one object), errors `{"error": "<IICP code>: …"}`.
//!
//! Requests are mapped to the mesh's OpenAI-shaped `llm:chat:v1` payload: `images`
//! become `image_url` parts (data URLs), `options.temperature` / `top_p` /
//! `num_predict` / `stop` / `seed` the OpenAI members, `format` a `response_format`,
//! tool calls OpenAI's (arguments as JSON text).

use bytes::{BufMut as _, BytesMut};
use iicp_client::{ChatMessage, ChatRequest};
use iicp_proto::time::iso8601;
use serde_json::{json, Map, Value};

use crate::call::{opt_bool, opt_f64_in, opt_string, opt_strings, opt_u32, ChatCall};
use crate::events::{ChatEvent, ChatOutcome, Finish, Head, Tokens, ToolCall};
use crate::failure::Failure;
use crate::models::{is_any, MeshModel};

/// The Ollama API version the surface answers like.
pub(crate) const VERSION: &str = "0.12.0";

/// Which Ollama endpoint a call came through (the answers differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/api/chat`: `message` objects.
    Chat,
    /// `/api/generate`: `response` text.
    Generate,
}

/// A data URL for a base64 image, its type guessed from the first bytes.
fn data_url(b64: &str) -> String {
    let media = match b64.get(..4) {
        Some("/9j/") => "image/jpeg",
        Some("R0lG") => "image/gif",
        Some("UklG") => "image/webp",
        _ => "image/png",
    };
    format!("data:{media};base64,{b64}")
}

/// A message with its `images` as `image_url` parts.
fn with_images(role: &str, text: String, images: Option<&Value>) -> Result<ChatMessage, Failure> {
    let Some(images) = images.filter(|v| !v.is_null()) else {
        return Ok(ChatMessage::new(role, text));
    };
    let Some(images) = images.as_array() else {
        return Err(Failure::invalid(
            "`images` must be an array of base64 strings",
        ));
    };
    let mut parts = vec![json!({"type": "text", "text": text})];
    for img in images {
        let b64 = img
            .as_str()
            .ok_or_else(|| Failure::invalid("`images` must be an array of base64 strings"))?;
        parts.push(json!({"type": "image_url", "image_url": {"url": data_url(b64)}}));
    }
    let mut m = ChatMessage::new(role, String::new());
    m.content = Value::Array(parts);
    Ok(m)
}

/// Ollama's `options` and `format` onto the request.
fn apply_options(obj: &Map<String, Value>, request: &mut ChatRequest) -> Result<(), Failure> {
    match obj.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            request.temperature = opt_f64_in(o, "temperature", 0.0, 2.0)?;
            request.max_tokens = opt_u32(o, "num_predict").ok().flatten();
            request.stop = opt_strings(o, "stop")?;
            for (from, to) in [
                ("top_p", "top_p"),
                ("seed", "seed"),
                ("presence_penalty", "presence_penalty"),
                ("frequency_penalty", "frequency_penalty"),
            ] {
                if let Some(v) = o.get(from).filter(|v| v.is_number()) {
                    request.extra.insert(to.to_owned(), v.clone());
                }
            }
        }
        Some(_) => return Err(Failure::invalid("`options` must be an object")),
    }
    match obj.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "json" => {
            request
                .extra
                .insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(Value::String(s)) if s.is_empty() => {}
        Some(schema @ Value::Object(_)) => {
            request.extra.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}),
            );
        }
        Some(_) => {
            return Err(Failure::invalid(
                "`format` must be \"json\" or a JSON schema",
            ))
        }
    }
    if let Some(tools) = obj.get("tools").filter(|t| t.is_array()) {
        request.extra.insert("tools".into(), tools.clone());
    }
    Ok(())
}

fn finish_call(obj: &Map<String, Value>, messages: Vec<ChatMessage>) -> Result<ChatCall, Failure> {
    let model = opt_string(obj, "model")?.filter(|m| !is_any(Some(m)));
    let mut request = ChatRequest::new(messages);
    request.model = model.clone();
    apply_options(obj, &mut request)?;
    request
        .validate()
        .map_err(|e| Failure::invalid(format!("invalid request: {e}")))?;
    Ok(ChatCall {
        request,
        model,
        // Ollama streams unless told not to
        stream: opt_bool(obj, "stream")?.unwrap_or(true),
        include_usage: false,
    })
}

/// Parses `POST /api/chat`.
pub(crate) fn parse_chat(body: &[u8]) -> Result<ChatCall, Failure> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::bad_json());
    };
    let Some(Value::Array(input)) = obj.get("messages") else {
        return Err(Failure::invalid(
            "`messages` is required and must be an array",
        ));
    };
    let mut messages = Vec::with_capacity(input.len());
    for (i, m) in input.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let text = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(Failure::invalid(format!(
                    "message {i}: `content` must be a string"
                )))
            }
        };
        let mut msg = with_images(role, text, m.get("images"))?;
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    let f = c.get("function").unwrap_or(&Value::Null);
                    let args = match f.get("arguments") {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => "{}".to_owned(),
                    };
                    json!({"id": c.get("id").cloned().unwrap_or_else(|| json!(format!("call_{k}"))),
                           "type": "function",
                           "function": {"name": f.get("name").cloned().unwrap_or(Value::Null), "arguments": args}})
                })
                .collect();
            msg.extra.insert("tool_calls".into(), Value::Array(calls));
        }
        if let Some(name) = m
            .get("tool_name")
            .or_else(|| m.get("name"))
            .filter(|v| v.is_string())
        {
            msg.extra.insert("name".into(), name.clone());
        }
        messages.push(msg);
    }
    finish_call(&obj, messages)
}

/// Parses `POST /api/generate` (`system` + `prompt` + `images` as a chat).
pub(crate) fn parse_generate(body: &[u8]) -> Result<ChatCall, Failure> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::bad_json());
    };
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = opt_string(&obj, "system")?.filter(|s| !s.is_empty()) {
        messages.push(ChatMessage::new("system", system));
    }
    let prompt = opt_string(&obj, "prompt")?.unwrap_or_default();
    messages.push(with_images("user", prompt, obj.get("images"))?);
    finish_call(&obj, messages)
}

/// Whether a generate request only loads the model (an empty prompt, no images).
pub(crate) fn is_load_only(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v.get("prompt")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && v.get("images")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
    })
}

fn done_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        _ => "stop",
    }
}

fn tool_calls(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                let args = serde_json::from_str::<Value>(&c.arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                json!({"function": {"name": c.name, "arguments": args}})
            })
            .collect(),
    )
}

/// The final object (`done: true`) of an answer; `text` is the whole answer when not
/// streamed, empty as the last line of a stream.
fn done(
    (model, created): (&str, u64),
    (finish, usage): (&Finish, Tokens),
    endpoint: Endpoint,
    text: &str,
    calls: &[ToolCall],
) -> Value {
    let mut v = json!({
        "model": model,
        "created_at": iso8601(created),
        "done": true,
        "done_reason": done_reason(finish),
        "total_duration": 0,
        "load_duration": 0,
        "prompt_eval_count": usage.prompt,
        "prompt_eval_duration": 0,
        "eval_count": usage.completion,
        "eval_duration": 0,
    });
    match endpoint {
        Endpoint::Chat => {
            let mut message = json!({"role": "assistant", "content": text});
            if !calls.is_empty() {
                message["tool_calls"] = tool_calls(calls);
            }
            v["message"] = message;
        }
        Endpoint::Generate => {
            v["response"] = json!(text);
            v["context"] = json!([]);
        }
    }
    v
}

/// The one-object answer (`"stream": false`).
pub(crate) fn answer(o: &ChatOutcome, endpoint: Endpoint) -> Value {
    done(
        (&o.model, o.created),
        (&o.finish, o.usage),
        endpoint,
        &o.text,
        &o.tool_calls,
    )
}

fn line(out: &mut BytesMut, v: &Value) {
    out.put_slice(v.to_string().as_bytes());
    out.put_u8(b'\n');
}

/// Renders one event as NDJSON lines into `out`: a `done: false` line per text delta;
/// tool calls whole in one message before the final `done: true` line (as Ollama).
pub(crate) fn render_event(out: &mut BytesMut, h: &Head, endpoint: Endpoint, event: &ChatEvent) {
    let partial = |text: &str| {
        let mut v = json!({"model": h.model, "created_at": iso8601(h.created), "done": false});
        match endpoint {
            Endpoint::Chat => v["message"] = json!({"role": "assistant", "content": text}),
            Endpoint::Generate => v["response"] = json!(text),
        }
        v
    };
    match event {
        ChatEvent::Start | ChatEvent::Tool(_) => {}
        ChatEvent::Text(text) => line(out, &partial(text)),
        ChatEvent::Finish {
            reason,
            usage,
            tool_calls: calls,
        } => {
            if endpoint == Endpoint::Chat && !calls.is_empty() {
                let mut v = partial("");
                v["message"]["tool_calls"] = tool_calls(calls);
                line(out, &v);
            }
            line(
                out,
                &done((&h.model, h.created), (reason, *usage), endpoint, "", &[]),
            );
        }
    }
}

/// A failure after the stream began: a last line `{"error": "…"}` (what Ollama sends
/// and its clients raise).
pub(crate) fn render_error(out: &mut BytesMut, f: &Failure) {
    line(out, &error(f));
}

/// The answer to a load-only generate (an empty prompt).
pub(crate) fn loaded(model: &str, now: u64) -> Value {
    json!({"model": model, "created_at": iso8601(now), "response": "", "done": true, "done_reason": "load"})
}

fn details() -> Value {
    json!({"parent_model": "", "format": "", "family": "", "families": null, "parameter_size": "", "quantization_level": ""})
}

/// `GET /api/tags`.
pub(crate) fn tags(list: &[MeshModel]) -> Value {
    let models: Vec<Value> = list
        .iter()
        .map(|m| {
            json!({"name": m.id, "model": m.id, "modified_at": iso8601(0), "size": 0,
                   "digest": "", "details": details()})
        })
        .collect();
    json!({"models": models})
}

/// `POST /api/show` of a listed model.
pub(crate) fn show(m: &MeshModel) -> Value {
    json!({
        "modelfile": "", "parameters": "", "template": "",
        "details": details(), "model_info": {"iicp.nodes": m.nodes},
        "capabilities": ["completion"], "modified_at": iso8601(0),
    })
}

/// The model named by a `/api/show` body (`model`, or the older `name`).
pub(crate) fn show_model(body: &[u8]) -> Result<String, Failure> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::bad_json());
    };
    opt_string(&obj, "model")?
        .or(opt_string(&obj, "name")?)
        .ok_or_else(|| Failure::invalid("`model` is required"))
}

/// Ollama's error body: `{"error": "<IICP code>: <message>"}`.
pub(crate) fn error(f: &Failure) -> Value {
    json!({"error": format!("{}: {}", f.code, f.message)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::outcome;
    use bytes::Bytes;

    fn stream(o: &ChatOutcome, endpoint: Endpoint) -> Bytes {
        let mut out = BytesMut::new();
        for event in o.events() {
            render_event(&mut out, &o.head(), endpoint, &event);
        }
        out.freeze()
    }

    #[test]
    fn chat_request_mapping() {
        let body = json!({
            "model": "llama3", "stream": false, "format": "json",
            "options": {"temperature": 0.1, "num_predict": 50, "stop": ["\n"], "top_p": 0.9, "seed": 7},
            "messages": [
                {"role": "user", "content": "what?", "images": ["/9j/AAAA"]},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        });
        let call = parse_chat(body.to_string().as_bytes()).expect("valid");
        assert!(!call.stream);
        assert_eq!(call.model.as_deref(), Some("llama3"));
        let r = &call.request;
        assert_eq!((r.temperature, r.max_tokens), (Some(0.1), Some(50)));
        assert_eq!(r.stop, Some(vec!["\n".to_owned()]));
        assert_eq!(r.extra["top_p"], 0.9);
        assert_eq!(r.extra["seed"], 7);
        assert_eq!(r.extra["response_format"], json!({"type": "json_object"}));
        assert!(r.extra["tools"].is_array());
        assert_eq!(
            r.messages[0].content[1]["image_url"]["url"],
            "data:image/jpeg;base64,/9j/AAAA"
        );
        assert_eq!(
            r.messages[1].extra["tool_calls"][0]["function"]["arguments"],
            r#"{"a":1}"#
        );
        assert_eq!(r.messages[2].extra["name"], "f");
        // streaming is the default
        let call = parse_chat(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
            .expect("valid");
        assert!(call.stream);
    }

    #[test]
    fn generate_request_mapping() {
        let call = parse_generate(br#"{"model":"iicp","system":"s","prompt":"p","stream":false}"#)
            .expect("valid");
        assert_eq!(call.model, None);
        let m = &call.request.messages;
        assert_eq!((m[0].role.as_str(), m[1].role.as_str()), ("system", "user"));
        assert_eq!(m[1].content, "p");
        assert!(is_load_only(br#"{"model":"m"}"#));
        assert!(!is_load_only(br#"{"model":"m","prompt":"x"}"#));
        assert_eq!(parse_generate(b"[").expect_err("bad").code, "invalid_json");
    }

    fn lines(b: &Bytes) -> Vec<Value> {
        std::str::from_utf8(b)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn ndjson_streams() {
        let o = outcome("hello", vec![]);
        let l = lines(&stream(&o, Endpoint::Chat));
        assert_eq!(l.len(), 2);
        assert_eq!(l[0]["message"]["content"], "hello");
        assert_eq!(l[0]["done"], false);
        assert_eq!(l[1]["done"], true);
        assert_eq!(l[1]["done_reason"], "stop");
        assert_eq!(l[1]["eval_count"], 2);
        let l = lines(&stream(&o, Endpoint::Generate));
        assert_eq!(l[0]["response"], "hello");
        assert_eq!(l[1]["response"], "");
        let call = ToolCall {
            id: "c".into(),
            name: "f".into(),
            arguments: r#"{"a":1}"#.into(),
        };
        let l = lines(&stream(&outcome("", vec![call]), Endpoint::Chat));
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0]["message"]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
        let mut out = BytesMut::new();
        render_error(&mut out, &Failure::deadline());
        let l = lines(&out.freeze());
        assert!(l[0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("task_timeout: ")));
    }

    #[test]
    fn one_object_answers_and_errors() {
        let v = answer(&outcome("hi", vec![]), Endpoint::Chat);
        assert_eq!(v["message"], json!({"role": "assistant", "content": "hi"}));
        assert_eq!(v["done"], true);
        let v = answer(&outcome("hi", vec![]), Endpoint::Generate);
        assert_eq!(v["response"], "hi");
        let e = error(&Failure::unknown_model("x"));
        assert!(e["error"]
            .as_str()
            .is_some_and(|s| s.starts_with("model_not_found: ")));
        let t = tags(&[MeshModel {
            id: "echo".into(),
            nodes: 1,
        }]);
        assert_eq!(t["models"][0]["name"], "echo");
        assert_eq!(show_model(br#"{"name":"echo"}"#).expect("ok"), "echo");
    }
}
