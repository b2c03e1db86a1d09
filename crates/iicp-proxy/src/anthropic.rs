//! The Anthropic surface: `POST /v1/messages` in Anthropic's shapes — a `message`
//! object, the server-sent event sequence `message_start`, `content_block_start`,
//! `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, and
//! `{"type":"error","error":{…}}` bodies — plus Anthropic's model list on
//! `GET /v1/models` when the request carries `anthropic-version`.
//!
//! Requests are mapped to the mesh's OpenAI-shaped `llm:chat:v1` payload: `system`
//! becomes a system message, image blocks `image_url` parts (a data URL for base64
//! sources), `tool_use` blocks assistant `tool_calls`, `tool_result` blocks `tool`
//! messages, `tools` / `tool_choice` OpenAI's function tools.

use bytes::{BufMut as _, BytesMut};
use iicp_client::{ChatMessage, ChatRequest};
use serde_json::{json, Map, Value};

use crate::call::{opt_bool, opt_f64_in, opt_string, opt_strings, opt_u32, ChatCall};
use crate::events::{ChatEvent, ChatOutcome, Finish, Head};
use crate::failure::{Class, Failure};
use crate::models::{is_any, MeshModel};

/// Parses an Anthropic Messages request. Errors: 400 for bad JSON or a malformed member
/// (named, its value never echoed).
pub(crate) fn parse_messages(body: &[u8]) -> Result<ChatCall, Failure> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::bad_json());
    };
    let mut messages = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(ChatMessage::new("system", s.clone())),
        Some(Value::Array(blocks)) => {
            let text: String = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n");
            messages.push(ChatMessage::new("system", text));
        }
        Some(_) => return Err(Failure::invalid("`system` must be a string or text blocks")),
    }
    let Some(Value::Array(input)) = obj.get("messages") else {
        return Err(Failure::invalid(
            "`messages` is required and must be an array",
        ));
    };
    for (i, m) in input.iter().enumerate() {
        map_message(i, m, &mut messages)?;
    }
    let model = opt_string(&obj, "model")?.filter(|m| !is_any(Some(m)));
    let mut request = ChatRequest::new(messages);
    request.model = model.clone();
    request.max_tokens = opt_u32(&obj, "max_tokens")?;
    request.temperature = opt_f64_in(&obj, "temperature", 0.0, 1.0)?;
    request.stop = opt_strings(&obj, "stop_sequences")?;
    if let Some(p) = opt_f64_in(&obj, "top_p", 0.0, 1.0)? {
        request.extra.insert("top_p".into(), json!(p));
    }
    if let Some(Value::Array(tools)) = obj.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.get("name").cloned().unwrap_or(Value::Null),
                    "description": t.get("description").cloned().unwrap_or(Value::Null),
                    "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                }})
            })
            .collect();
        request.extra.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = obj.get("tool_choice").filter(|c| !c.is_null()) {
        let mapped = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => {
                return Err(Failure::invalid(
                    "`tool_choice.type` must be auto, any, tool or none",
                ))
            }
        };
        request.extra.insert("tool_choice".into(), mapped);
    }
    request
        .validate()
        .map_err(|e| Failure::invalid(format!("invalid messages request: {e}")))?;
    Ok(ChatCall {
        request,
        model,
        stream: opt_bool(&obj, "stream")?.unwrap_or(false),
        include_usage: false,
    })
}

/// One Anthropic message as OpenAI messages (a user turn's `tool_result` blocks become
/// `tool` messages before the rest of the turn).
fn map_message(i: usize, m: &Value, out: &mut Vec<ChatMessage>) -> Result<(), Failure> {
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(Failure::invalid(format!(
                "message {i}: `role` must be user or assistant"
            )))
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(ChatMessage::new(role, s.clone()));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(Failure::invalid(format!(
                "message {i}: `content` must be a string or blocks"
            )))
        }
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(
                json!({"type": "text", "text": b.get("text").cloned().unwrap_or(Value::Null)}),
            ),
            Some("image") => {
                let src = b.get("source").unwrap_or(&Value::Null);
                let url = match src.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src.get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        src.get("data").and_then(Value::as_str).unwrap_or_default()
                    ),
                    Some("url") => src
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    _ => {
                        return Err(Failure::invalid(format!(
                            "message {i}: image `source` must be base64 or url"
                        )))
                    }
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_use") => tool_calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            Some("tool_result") => {
                let content = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .filter_map(|x| x.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => String::new(),
                };
                let mut tool = ChatMessage::new("tool", content);
                tool.extra.insert(
                    "tool_call_id".into(),
                    b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                );
                out.push(tool);
            }
            // thinking, documents, …: not carried
            _ => {}
        }
    }
    let all_text = parts.iter().all(|p| p["type"] == "text");
    let content = if all_text {
        Value::String(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    } else {
        Value::Array(parts)
    };
    if tool_calls.is_empty() {
        if content != Value::String(String::new()) || role == "assistant" {
            out.push(ChatMessage {
                role: role.to_owned(),
                content,
                name: None,
                extra: Map::new(),
            });
        }
    } else {
        let mut msg = ChatMessage {
            role: role.to_owned(),
            content: if content == Value::String(String::new()) {
                Value::Null
            } else {
                content
            },
            name: None,
            extra: Map::new(),
        };
        msg.extra
            .insert("tool_calls".into(), Value::Array(tool_calls));
        out.push(msg);
    }
    Ok(())
}

fn stop_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
        Finish::ContentFilter => "refusal",
    }
}

fn message_id(id: &str) -> String {
    format!("msg_{}", id.replace('-', ""))
}

fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// The `message` object of an outcome.
pub(crate) fn message(o: &ChatOutcome) -> Value {
    let mut content = Vec::new();
    if !o.text.is_empty() || o.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": o.text}));
    }
    for c in &o.tool_calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}));
    }
    json!({
        "id": message_id(&o.id),
        "type": "message",
        "role": "assistant",
        "model": o.model,
        "content": content,
        "stop_reason": stop_reason(&o.finish),
        "stop_sequence": null,
        "usage": {"input_tokens": o.usage.prompt, "output_tokens": o.usage.completion},
    })
}

fn sse(out: &mut BytesMut, event: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

/// The content block open in a rendered stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(usize),
    /// A `tool_use` block: its index, and the tool call's.
    Tool(usize, usize),
}

/// The block state of one rendered stream.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    next_index: usize,
    open: Option<Open>,
}

impl StreamState {
    fn close(&mut self, out: &mut BytesMut) {
        if let Some(Open::Text(index) | Open::Tool(index, _)) = self.open.take() {
            sse(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn next(&mut self) -> usize {
        let i = self.next_index;
        self.next_index += 1;
        i
    }
}

/// Renders one event as Anthropic server-sent events into `out`: text deltas in a text
/// block, tool-call fragments as a `tool_use` block's `input_json_delta`s.
pub(crate) fn render_event(
    out: &mut BytesMut,
    state: &mut StreamState,
    h: &Head,
    event: &ChatEvent,
) {
    match event {
        ChatEvent::Start => {
            sse(
                out,
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": message_id(&h.id), "type": "message", "role": "assistant", "model": h.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            );
            sse(out, "ping", &json!({"type": "ping"}));
        }
        ChatEvent::Text(text) => {
            let index = match state.open {
                Some(Open::Text(i)) => i,
                _ => {
                    state.close(out);
                    let i = state.next();
                    state.open = Some(Open::Text(i));
                    sse(
                        out,
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                    );
                    i
                }
            };
            sse(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        ChatEvent::Tool(d) => {
            let index = match state.open {
                Some(Open::Tool(i, call)) if call == d.index => i,
                _ => {
                    state.close(out);
                    let i = state.next();
                    state.open = Some(Open::Tool(i, d.index));
                    let id = d
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("toolu_{}_{}", h.id.replace('-', ""), d.index));
                    sse(
                        out,
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": i,
                                "content_block": {"type": "tool_use", "id": id, "name": d.name.clone().unwrap_or_default(), "input": {}}}),
                    );
                    i
                }
            };
            // a whole call's arguments are normalised to an object, as in a message
            let partial = if d.whole {
                tool_input(&d.arguments).to_string()
            } else {
                d.arguments.clone()
            };
            if !partial.is_empty() {
                sse(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": partial}}),
                );
            }
        }
        ChatEvent::Finish { reason, usage, .. } => {
            state.close(out);
            sse(
                out,
                "message_delta",
                &json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason(reason), "stop_sequence": null},
                        "usage": {"input_tokens": usage.prompt, "output_tokens": usage.completion}}),
            );
            sse(out, "message_stop", &json!({"type": "message_stop"}));
        }
    }
}

/// A failure after the stream began: Anthropic's `error` event (its clients raise it).
pub(crate) fn render_error(out: &mut BytesMut, f: &Failure) {
    sse(out, "error", &error(f));
}

/// Anthropic's model list (`GET /v1/models` with `anthropic-version`).
pub(crate) fn models(list: &[MeshModel]) -> Value {
    let data: Vec<Value> = list
        .iter()
        .map(|m| json!({"type": "model", "id": m.id, "display_name": m.id, "created_at": "1970-01-01T00:00:00Z"}))
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": list.first().map(|m| m.id.as_str()),
        "last_id": list.last().map(|m| m.id.as_str()),
    })
}

/// Anthropic's error body `{"type":"error","error":{"type","message"}}`, with the
/// IICP code as `error.code`.
pub(crate) fn error(f: &Failure) -> Value {
    let kind = match f.class {
        Class::InvalidRequest if f.status == http::StatusCode::PAYLOAD_TOO_LARGE => {
            "request_too_large"
        }
        Class::InvalidRequest => "invalid_request_error",
        Class::Authentication => "authentication_error",
        Class::Permission => "permission_error",
        Class::NotFound => "not_found_error",
        Class::RateLimit => "rate_limit_error",
        Class::Timeout | Class::Upstream | Class::Internal => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": f.message, "code": f.code}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::outcome;
    use crate::events::{ToolCall, ToolDelta};
    use bytes::Bytes;

    #[test]
    fn request_maps_to_openai_messages() {
        let body = json!({
            "model": "claude-like", "max_tokens": 100, "system": "be brief",
            "stop_sequences": ["END"], "temperature": 0.3, "top_p": 0.8, "stream": true,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "let me look"},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"},
                    {"type": "text", "text": "so?"}]},
            ],
            "tools": [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        });
        let call = parse_messages(body.to_string().as_bytes()).expect("valid");
        assert!(call.stream);
        assert_eq!(call.model.as_deref(), Some("claude-like"));
        let r = &call.request;
        assert_eq!(r.max_tokens, Some(100));
        assert_eq!(r.stop, Some(vec!["END".to_owned()]));
        let m = &r.messages;
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", Some("be brief"))
        );
        assert_eq!(
            m[1].content[1]["image_url"]["url"],
            "data:image/jpeg;base64,AAAA"
        );
        assert_eq!(
            m[2].extra["tool_calls"][0]["function"]["arguments"],
            r#"{"q":"x"}"#
        );
        assert_eq!(m[2].content, "let me look");
        assert_eq!(m[3].role, "tool");
        assert_eq!(m[3].extra["tool_call_id"], "toolu_1");
        assert_eq!(m[4].content, "so?");
        assert_eq!(
            r.extra["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(r.extra["tool_choice"], "required");
    }

    #[test]
    fn bad_requests() {
        for body in [
            &b"nope"[..],
            br#"{"max_tokens": 5}"#,
            br#"{"messages": [{"role": "system", "content": "x"}]}"#,
            br#"{"messages": [{"role": "user", "content": 5}]}"#,
            br#"{"messages": [{"role": "user", "content": "x"}], "temperature": 1.5}"#,
        ] {
            let f = parse_messages(body).expect_err("invalid");
            assert_eq!(f.status, http::StatusCode::BAD_REQUEST);
            assert_eq!(error(&f)["error"]["type"], "invalid_request_error");
            assert_eq!(error(&f)["type"], "error");
        }
    }

    #[test]
    fn message_shape() {
        let v = message(&outcome("hi", vec![]));
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"], json!([{"type": "text", "text": "hi"}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["usage"], json!({"input_tokens": 3, "output_tokens": 2}));
        let call = ToolCall {
            id: "toolu_9".into(),
            name: "f".into(),
            arguments: r#"{"a":1}"#.into(),
        };
        let v = message(&outcome("", vec![call]));
        assert_eq!(v["content"][0]["type"], "tool_use");
        assert_eq!(v["content"][0]["input"], json!({"a": 1}));
        assert_eq!(v["stop_reason"], "tool_use");
    }

    fn stream(o: &ChatOutcome) -> Bytes {
        let mut out = BytesMut::new();
        let mut state = StreamState::default();
        for event in o.events() {
            render_event(&mut out, &mut state, &o.head(), &event);
        }
        out.freeze()
    }

    fn events(b: &Bytes) -> Vec<(String, Value)> {
        std::str::from_utf8(b)
            .expect("utf-8")
            .split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (ev, data) = f.split_once('\n').expect("two lines");
                let ev = ev.strip_prefix("event: ").expect("event").to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("json");
                assert_eq!(data["type"], ev.as_str());
                (ev, data)
            })
            .collect()
    }

    #[test]
    fn stream_sequence() {
        let call = ToolCall {
            id: "toolu_1".into(),
            name: "f".into(),
            arguments: r#"{"a":1}"#.into(),
        };
        let ev = events(&stream(&outcome("hello", vec![call])));
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            ev[3].1["delta"],
            json!({"type": "text_delta", "text": "hello"})
        );
        assert_eq!(ev[5].1["index"], 1);
        assert_eq!(ev[6].1["delta"]["partial_json"], r#"{"a":1}"#);
        assert_eq!(ev[8].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(ev[8].1["usage"]["output_tokens"], 2);
    }

    #[test]
    fn streamed_tool_fragments_and_errors() {
        let h = outcome("", vec![]).head();
        let mut out = BytesMut::new();
        let mut st = StreamState::default();
        let frag = |index, first: bool, args: &str| {
            ChatEvent::Tool(ToolDelta {
                index,
                id: first.then(|| format!("call_{index}")),
                name: first.then(|| "f".to_owned()),
                arguments: args.into(),
                whole: false,
            })
        };
        for ev in [
            ChatEvent::Start,
            ChatEvent::Text("a".into()),
            frag(0, true, ""),
            frag(0, false, r#"{"x":"#),
            frag(0, false, "1}"),
            frag(1, true, "{}"),
        ] {
            render_event(&mut out, &mut st, &h, &ev);
        }
        render_error(&mut out, &Failure::deadline());
        let ev = events(&out.freeze());
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        assert_eq!(ev[5].1["content_block"]["id"], "call_0");
        assert_eq!(ev[6].1["delta"]["partial_json"], r#"{"x":"#);
        assert_eq!(ev[7].1["delta"]["partial_json"], "1}");
        assert_eq!(ev[9].1["index"], 2);
        assert_eq!(ev[11].1["error"]["type"], "api_error");
        assert_eq!(ev[11].1["error"]["code"], "task_timeout");
    }
}
