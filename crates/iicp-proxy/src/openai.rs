//! The OpenAI surface: `POST /v1/chat/completions`, `GET /v1/models`,
//! `GET /v1/models/{id}`, in OpenAI's own shapes (completion, `chat.completion.chunk`
//! server-sent events ending with `data: [DONE]`, `{"error":{…}}` bodies).

use bytes::{BufMut as _, BytesMut};
use iicp_client::{ChatMessage, ChatRequest};
use serde_json::{json, Value};

use crate::call::{opt_bool, opt_f64_in, opt_string, opt_strings, opt_u32, ChatCall};
use crate::events::{ChatEvent, ChatOutcome, Finish, Head, Tokens};
use crate::failure::{Class, Failure};
use crate::models::{is_any, MeshModel};

/// Who "owns" the models in listings.
pub(crate) const OWNER: &str = "iicp-mesh";

/// Request members forwarded to the node as they are (OpenAI semantics).
const FORWARDED: &[&str] = &[
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
];

/// Parses an OpenAI chat request. Errors: 400 for bad JSON, a missing or malformed
/// `messages`, or members of the wrong type (named, their values never echoed).
pub(crate) fn parse_chat(body: &[u8]) -> Result<ChatCall, Failure> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::bad_json());
    };
    let messages: Vec<ChatMessage> = match obj.remove("messages") {
        Some(v @ Value::Array(_)) => serde_json::from_value(v)
            .map_err(|_| Failure::invalid("`messages` must be an array of message objects"))?,
        _ => {
            return Err(Failure::invalid(
                "`messages` is required and must be an array",
            ))
        }
    };
    let model = opt_string(&obj, "model")?;
    let stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => o
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Some(_) => return Err(Failure::invalid("`stream_options` must be an object")),
    };
    let max_tokens = match opt_u32(&obj, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_u32(&obj, "max_tokens")?,
    };
    let temperature = opt_f64_in(&obj, "temperature", 0.0, 2.0)?;
    let stop = opt_strings(&obj, "stop")?;
    let mut request = ChatRequest::new(messages);
    let model = model.filter(|m| !is_any(Some(m)));
    request.model = model.clone();
    request.max_tokens = max_tokens;
    request.temperature = temperature;
    request.stop = stop;
    for key in FORWARDED {
        if let Some(v) = obj.remove(*key).filter(|v| !v.is_null()) {
            request.extra.insert((*key).to_owned(), v);
        }
    }
    request
        .validate()
        .map_err(|e| Failure::invalid(format!("invalid chat request: {e}")))?;
    Ok(ChatCall {
        request,
        model,
        stream,
        include_usage,
    })
}

fn usage(t: Tokens) -> Value {
    json!({
        "prompt_tokens": t.prompt,
        "completion_tokens": t.completion,
        "total_tokens": t.total(),
    })
}

fn tool_calls(o: &ChatOutcome) -> Value {
    Value::Array(
        o.tool_calls
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect(),
    )
}

/// The `chat.completion` object of an outcome.
pub(crate) fn completion(o: &ChatOutcome) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if o.text.is_empty() && !o.tool_calls.is_empty() { Value::Null } else { Value::from(o.text.as_str()) },
        "refusal": null,
    });
    if !o.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls(o);
    }
    json!({
        "id": format!("chatcmpl-{}", o.id),
        "object": "chat.completion",
        "created": o.created,
        "model": o.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": o.finish.openai(),
        }],
        "usage": usage(o.usage),
        "system_fingerprint": null,
    })
}

fn sse(out: &mut BytesMut, value: &Value) {
    out.put_slice(b"data: ");
    out.put_slice(value.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

/// One `chat.completion.chunk` (`usage: null` on every chunk when usage was asked
/// for, as OpenAI does).
fn chunk(h: &Head, delta: Value, finish: Option<&Finish>, include_usage: bool) -> Value {
    let mut c = json!({
        "id": format!("chatcmpl-{}", h.id),
        "object": "chat.completion.chunk",
        "created": h.created,
        "model": h.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish.map(Finish::openai),
        }],
    });
    if include_usage {
        c["usage"] = Value::Null;
    }
    c
}

/// Renders one event as server-sent events into `out`; after `Finish` comes
/// `data: [DONE]`.
pub(crate) fn render_event(out: &mut BytesMut, h: &Head, event: &ChatEvent, include_usage: bool) {
    match event {
        ChatEvent::Start => sse(
            out,
            &chunk(
                h,
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
                include_usage,
            ),
        ),
        ChatEvent::Text(text) => sse(
            out,
            &chunk(h, json!({"content": text}), None, include_usage),
        ),
        ChatEvent::Tool(d) => {
            // OpenAI's fragments: the first of a call names it, the rest add arguments
            let mut call = json!({"index": d.index, "function": {"arguments": d.arguments}});
            if let Some(id) = &d.id {
                call["id"] = json!(id);
                call["type"] = json!("function");
            }
            if let Some(name) = &d.name {
                call["function"]["name"] = json!(name);
            }
            sse(
                out,
                &chunk(h, json!({"tool_calls": [call]}), None, include_usage),
            );
        }
        ChatEvent::Finish {
            reason, usage: u, ..
        } => {
            sse(out, &chunk(h, json!({}), Some(reason), include_usage));
            if include_usage {
                sse(
                    out,
                    &json!({
                        "id": format!("chatcmpl-{}", h.id),
                        "object": "chat.completion.chunk",
                        "created": h.created,
                        "model": h.model,
                        "system_fingerprint": null,
                        "choices": [],
                        "usage": usage(*u),
                    }),
                );
            }
            out.put_slice(b"data: [DONE]\n\n");
        }
    }
}

/// A failure after the stream began: one `data: {"error": {…}}` event (what OpenAI
/// sends and its clients raise), and no `[DONE]`.
pub(crate) fn render_error(out: &mut BytesMut, f: &Failure) {
    sse(out, &error(f));
}

/// A model object.
pub(crate) fn model(m: &MeshModel) -> Value {
    json!({"id": m.id, "object": "model", "created": 0, "owned_by": OWNER})
}

/// The `GET /v1/models` list.
pub(crate) fn models(list: &[MeshModel]) -> Value {
    json!({"object": "list", "data": list.iter().map(model).collect::<Vec<_>>()})
}

/// OpenAI's error body: `{"error":{"message","type","param","code"}}`, `code` the IICP
/// code.
pub(crate) fn error(f: &Failure) -> Value {
    let kind = match f.class {
        Class::InvalidRequest | Class::NotFound => "invalid_request_error",
        Class::Authentication => "authentication_error",
        Class::Permission => "permission_error",
        Class::RateLimit => "rate_limit_error",
        Class::Timeout => "timeout_error",
        Class::Upstream => "api_error",
        Class::Internal => "server_error",
    };
    json!({"error": {"message": f.message, "type": kind, "param": null, "code": f.code}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::outcome;
    use crate::events::ToolCall;
    use bytes::Bytes;
    use http::StatusCode;

    #[test]
    fn request_maps_every_member() {
        let body = json!({
            "model": "smollm2",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]}
            ],
            "temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 20, "max_tokens": 99,
            "stop": "END", "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto", "response_format": {"type": "json_object"},
            "stream": true, "stream_options": {"include_usage": true}, "n": 3
        });
        let call = parse_chat(body.to_string().as_bytes()).expect("valid");
        assert!(call.stream && call.include_usage);
        assert_eq!(call.model.as_deref(), Some("smollm2"));
        let r = &call.request;
        assert_eq!(r.max_tokens, Some(20), "max_completion_tokens wins");
        assert_eq!(r.temperature, Some(0.5));
        assert_eq!(r.stop, Some(vec!["END".to_owned()]));
        assert_eq!(r.extra["top_p"], json!(0.9));
        assert_eq!(r.extra["tool_choice"], json!("auto"));
        assert!(r.extra.contains_key("tools") && r.extra.contains_key("response_format"));
        for dropped in ["stream", "stream_options", "n", "model", "messages"] {
            assert!(!r.extra.contains_key(dropped), "{dropped}");
        }
        // the image part travels as sent
        assert_eq!(
            r.messages[1].content[1]["image_url"]["url"],
            json!("data:image/png;base64,AAAA")
        );
    }

    #[test]
    fn any_model_and_defaults() {
        let call = parse_chat(br#"{"model":"iicp","messages":[{"role":"user","content":"hi"}]}"#)
            .expect("valid");
        assert_eq!(call.model, None);
        assert_eq!(call.request.model, None);
        assert!(!call.stream && !call.include_usage);
    }

    #[test]
    fn bad_requests_are_400() {
        for body in [
            &b"{not json"[..],
            b"[]",
            br#"{"messages": "hi"}"#,
            br#"{"messages": []}"#,
            br#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
            br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
            br#"{"messages": [{"role": "user", "content": "x"}], "temperature": 7}"#,
            br#"{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
            br#"{"messages": [{"role": "user", "content": "x"}], "stop": [1]}"#,
        ] {
            let f = parse_chat(body).expect_err("invalid");
            assert_eq!(
                f.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(error(&f)["error"]["type"], "invalid_request_error");
        }
        let f = parse_chat(b"{not json").expect_err("invalid");
        assert_eq!(f.code, "invalid_json");
    }

    #[test]
    fn completion_shape() {
        let v = completion(&outcome("hello", vec![]));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-task-1");
        assert_eq!(v["choices"][0]["message"]["content"], "hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let call = ToolCall {
            id: "call_9".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        };
        let v = completion(&outcome("", vec![call]));
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
    }

    fn stream(o: &ChatOutcome, include_usage: bool) -> Bytes {
        let mut out = BytesMut::new();
        for event in o.events() {
            render_event(&mut out, &o.head(), &event, include_usage);
        }
        out.freeze()
    }

    fn frames(b: &Bytes) -> Vec<String> {
        let text = std::str::from_utf8(b).expect("utf-8");
        assert!(text.ends_with("\n\n"));
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| f.strip_prefix("data: ").expect("data frame").to_owned())
            .collect()
    }

    #[test]
    fn stream_shape() {
        let o = outcome("hello", vec![]);
        let f = frames(&stream(&o, false));
        assert_eq!(f.len(), 4, "{f:?}");
        assert_eq!(f[3], "[DONE]");
        let c: Vec<Value> = f[..3]
            .iter()
            .map(|s| serde_json::from_str(s).expect("json"))
            .collect();
        assert!(c
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-task-1"));
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(c[1]["choices"][0]["delta"]["content"], "hello");
        assert_eq!(c[1]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(c[2]["choices"][0]["finish_reason"], "stop");
        assert!(c.iter().all(|c| c.get("usage").is_none()));

        let f = frames(&stream(&o, true));
        assert_eq!(f.len(), 5);
        let last: Value = serde_json::from_str(&f[3]).expect("json");
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], 2);
        let first: Value = serde_json::from_str(&f[0]).expect("json");
        assert_eq!(first["usage"], Value::Null);
    }

    #[test]
    fn tool_fragments_and_in_stream_errors() {
        let h = outcome("", vec![]).head();
        let mut out = BytesMut::new();
        let first = crate::events::ToolDelta {
            index: 1,
            id: Some("call_7".into()),
            name: Some("f".into()),
            arguments: String::new(),
            whole: false,
        };
        let more = crate::events::ToolDelta {
            id: None,
            name: None,
            arguments: r#"{"a":"#.into(),
            ..first.clone()
        };
        render_event(&mut out, &h, &ChatEvent::Tool(first), false);
        render_event(&mut out, &h, &ChatEvent::Tool(more), false);
        render_error(&mut out, &Failure::deadline());
        let f = frames(&out.freeze());
        let c: Vec<Value> = f
            .iter()
            .map(|s| serde_json::from_str(s).expect("json"))
            .collect();
        let t0 = &c[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (t0["index"].as_u64(), t0["id"].as_str(), t0["type"].as_str()),
            (Some(1), Some("call_7"), Some("function"))
        );
        assert_eq!(t0["function"], json!({"name": "f", "arguments": ""}));
        let t1 = &c[1]["choices"][0]["delta"]["tool_calls"][0];
        assert!(t1.get("id").is_none() && t1["function"].get("name").is_none());
        assert_eq!(t1["function"]["arguments"], r#"{"a":"#);
        assert_eq!(c[2]["error"]["code"], "task_timeout");
        assert!(!f.iter().any(|s| s == "[DONE]"));
    }

    #[test]
    fn error_shape() {
        let f = Failure::unknown_model("nope");
        let v = error(&f);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], Value::Null);
        assert_eq!(
            error(&Failure::unauthorized())["error"]["type"],
            "authentication_error"
        );
    }

    #[test]
    fn model_list_shape() {
        let v = models(&[MeshModel {
            id: "echo".into(),
            nodes: 2,
        }]);
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], "echo");
        assert_eq!(v["data"][0]["owned_by"], OWNER);
    }
}
