//! Streamed answers relayed as they arrive, in process, against the test kit's fake
//! native streaming node (the service-lifecycle profile): each surface's chunks one
//! delta at a time, tool-call fragments, a failure before the first event as the
//! surface's error response, a failure after it as the surface's in-stream error (never
//! a success), and a reader that goes away cancelling the task on the node.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use iicp_client::Encryption;
use iicp_proto::lifecycle::EventKind;
use iicp_proto::message::Call;
use iicp_proxy::Proxy;
use iicp_testkit::fake::{builder, fake_directory, node_id, FakeDirectory, Tickets};
use iicp_testkit::stream::{
    happy_frames, lifecycle_frame, native_stream_node, stream_entry, NativeStep, NativeStreamNode,
};
use iicp_testkit::time::RecordingSleeper;
use iicp_transport::http::server::{Request, RequestBody, Response};
use serde_json::{json, Value};

fn chunk(text: &str) -> Value {
    json!({"object": "chat.completion.chunk", "model": "fake-model",
        "choices": [{"index": 0, "delta": {"content": text}}]})
}

fn last_chunk() -> Value {
    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
}

fn hello() -> Vec<Value> {
    vec![chunk("Hel"), chunk("lo, "), chunk("world")]
}

async fn streaming_node(
    f: impl Fn(&Call) -> Vec<NativeStep> + Send + Sync + 'static,
) -> (NativeStreamNode, FakeDirectory, Proxy) {
    let node = native_stream_node(Arc::new(f)).await;
    let mut entry = stream_entry(
        &node_id(1),
        &format!("http://{}", node.addr),
        Some(node.addr),
        None,
        &[],
    );
    entry["models"] = json!(["fake-model"]);
    let dir = fake_directory(vec![entry], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let proxy = Proxy::builder().client(client).build().unwrap();
    (node, dir, proxy)
}

async fn send(proxy: &Proxy, path: &str, body: &Value) -> Response {
    let req: Request = http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(RequestBody::from(body.to_string().into_bytes()))
        .unwrap();
    proxy.router().handle(req).await
}

/// The body's frames as they arrive (each is one write of the relay).
async fn frames(resp: &mut Response) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(frame) = resp.body_mut().frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.push(data);
        }
    }
    out
}

fn text_of(frames: &[Bytes]) -> String {
    frames
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect()
}

/// The JSON payloads of SSE `data:` lines (`[DONE]` as a string).
fn sse_data(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_owned())))
        .collect()
}

fn paced(call: &Call, chunks: &[Value]) -> Vec<NativeStep> {
    let mut steps = Vec::new();
    for step in happy_frames(call, chunks, Some(last_chunk())) {
        steps.push(step);
        steps.push(NativeStep::Sleep(Duration::from_millis(20)));
    }
    steps
}

fn chat(stream: bool) -> Value {
    json!({"model": "fake-model", "stream": stream, "max_tokens": 50,
           "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn each_surface_relays_the_deltas_one_at_a_time() {
    let (node, _dir, p) = streaming_node(|c| paced(c, &hello())).await;

    // OpenAI: role chunk, one chunk per delta (each its own write), finish, usage, [DONE]
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut resp = send(&p, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-iicp-node-id"], node_id(1).as_str());
    assert_eq!(resp.headers()["x-iicp-generated-by-ai"], "true");
    assert!(resp.headers().contains_key("x-iicp-task-id"));
    // the task's own trace id (32 hex), known when the stream starts
    let trace = resp.headers()["x-iicp-trace-id"].to_str().unwrap();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace}"
    );
    let f = frames(&mut resp).await;
    assert!(f.len() >= 4, "one write per delta: {} writes", f.len());
    let data = sse_data(&text_of(&f));
    let deltas: Vec<&str> = data
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(deltas, ["Hel", "lo, ", "world"]);
    assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = data
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null() && c["choices"][0].is_object())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    assert_eq!(data[data.len() - 2]["usage"]["total_tokens"], 7);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let id = &data[0]["id"];
    assert!(data[..data.len() - 1].iter().all(|c| &c["id"] == id));

    // Anthropic: the deltas as text_delta events of one text block
    let mut body = chat(true);
    body["messages"] = json!([{"role": "user", "content": "hi"}]);
    let mut resp = send(&p, "/v1/messages", &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = text_of(&frames(&mut resp).await);
    let events: Vec<Value> = sse_data(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        events[4]["delta"],
        json!({"type": "text_delta", "text": "lo, "})
    );
    assert_eq!(events[7]["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[7]["usage"]["output_tokens"], 3);

    // Ollama chat and generate: a done:false line per delta, then done:true with counts
    for (path, field) in [
        ("/api/chat", "/message/content"),
        ("/api/generate", "/response"),
    ] {
        let body = if path == "/api/chat" {
            json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
        } else {
            json!({"model": "fake-model", "prompt": "hi"})
        };
        let mut resp = send(&p, path, &body).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let text = text_of(&frames(&mut resp).await);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let parts: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.pointer(field).and_then(Value::as_str))
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(parts, ["Hel", "lo, ", "world"], "{path}");
        let last = lines.last().unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["eval_count"], 3);
        assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));
    }
    assert_eq!(node.calls().len(), 4);
}

#[tokio::test]
async fn tool_call_fragments_are_relayed() {
    let frag = |v: Value| json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": v}]});
    let chunks = vec![
        frag(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]}),
        ),
        frag(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})),
        frag(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]})),
    ];
    let last = json!({"object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]});
    let (_node, _dir, p) =
        streaming_node(move |c| happy_frames(c, &chunks, Some(last.clone()))).await;

    let mut resp = send(&p, "/v1/chat/completions", &chat(true)).await;
    let data = sse_data(&text_of(&frames(&mut resp).await));
    let calls: Vec<&Value> = data
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls.len(), 3, "{data:?}");
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert!(data
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    let mut resp = send(&p, "/v1/messages", &chat(true)).await;
    let events = sse_data(&text_of(&frames(&mut resp).await));
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["name"], "get_weather");
    let json: String = events
        .iter()
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json, r#"{"city":"Paris"}"#);
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    // Ollama: the assembled call in one message before the final line
    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]});
    let mut resp = send(&p, "/api/chat", &body).await;
    let text = text_of(&frames(&mut resp).await);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let with_calls = lines
        .iter()
        .find(|l| l["message"]["tool_calls"].is_array())
        .unwrap();
    assert_eq!(
        with_calls["message"]["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": {"city": "Paris"}})
    );
    assert_eq!(lines.last().unwrap()["done"], true);
}

#[tokio::test]
async fn a_failure_before_the_first_event_is_the_surfaces_error_response() {
    // the node hangs up on every call: nothing was streamed, every node failed
    let (_node, _dir, p) = streaming_node(|_| vec![NativeStep::Close]).await;
    let mut resp = send(&p, "/v1/chat/completions", &chat(true)).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = serde_json::from_str(&text_of(&frames(&mut resp).await)).unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    let mut resp = send(&p, "/v1/messages", &chat(true)).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let v: Value = serde_json::from_str(&text_of(&frames(&mut resp).await)).unwrap();
    assert_eq!(v["type"], "error");
}

#[tokio::test]
async fn a_failure_after_the_first_event_is_an_in_stream_error_never_a_success() {
    let (_node, _dir, p) = streaming_node(|c| {
        vec![
            NativeStep::Send(lifecycle_frame(
                c,
                0,
                EventKind::Partial,
                Some(chunk("Hel")),
            )),
            NativeStep::Sleep(Duration::from_millis(20)),
            NativeStep::Close,
        ]
    })
    .await;

    let mut resp = send(&p, "/v1/chat/completions", &chat(true)).await;
    assert_eq!(resp.status(), StatusCode::OK, "the head was sent");
    let text = text_of(&frames(&mut resp).await);
    let data = sse_data(&text);
    assert_eq!(data[1]["choices"][0]["delta"]["content"], "Hel");
    let last = data.last().unwrap();
    assert!(last["error"]["code"].is_string(), "{text}");
    assert!(
        !text.contains("[DONE]") && !text.contains("finish_reason\":\"stop"),
        "{text}"
    );

    let mut resp = send(&p, "/v1/messages", &chat(true)).await;
    let text = text_of(&frames(&mut resp).await);
    assert!(text.contains("event: error\n"), "{text}");
    assert!(
        !text.contains("message_stop") && !text.contains("message_delta"),
        "{text}"
    );
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap()["type"], "error");

    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]});
    let mut resp = send(&p, "/api/chat", &body).await;
    let text = text_of(&frames(&mut resp).await);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["message"]["content"], "Hel");
    assert!(lines.last().unwrap()["error"].is_string(), "{text}");
    assert!(lines.iter().all(|l| l["done"] != true), "{text}");

    // the metrics count the mid-stream failures
    let req: Request = http::Request::builder()
        .uri("/metrics")
        .body(RequestBody::from(Vec::new()))
        .unwrap();
    let mut m = p.router().handle(req).await;
    let metrics = text_of(&frames(&mut m).await);
    assert!(
        metrics.contains("iicp_proxy_upstream_failures_total"),
        "{metrics}"
    );
    // the streams released their slot (only this /metrics request is in flight)
    assert!(
        metrics.contains("iicp_proxy_requests_in_flight 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reader_that_goes_away_cancels_the_task_on_the_node() {
    let (node, _dir, p) = streaming_node(|c| {
        let mut steps = Vec::new();
        for i in 0..200u64 {
            steps.push(NativeStep::Send(lifecycle_frame(
                c,
                i,
                EventKind::Partial,
                Some(chunk("t ")),
            )));
            steps.push(NativeStep::Sleep(Duration::from_millis(20)));
        }
        steps
    })
    .await;
    let mut resp = send(&p, "/v1/chat/completions", &chat(true)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // a couple of chunks arrive, then the reader leaves
    for _ in 0..2 {
        let frame = resp.body_mut().frame().await.unwrap().unwrap();
        assert!(frame.is_data());
    }
    drop(resp);
    let cancel = node
        .wait_cancel(Duration::from_secs(5))
        .await
        .expect("the node got a cancel");
    assert_eq!(cancel.action.as_deref(), Some("cancel"));
}
