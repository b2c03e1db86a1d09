//! The service-lifecycle profile on a real node (PROTOCOL.md §11, ADR 0013): native
//! CALLs with key 24 answered with lifecycle RESPONSEs, the HTTP `/v1/tasks` resources
//! with their event stream, cancellation (CONTROL, cancel resource) reaching the model
//! server, deadlines, duplicates, IICP-CX per chunk, and buffered callers never seeing a
//! partial.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use iicp_node::backend::{BackendHandler, EchoModel};
use iicp_node::handler::{BoxFuture, Chunks};
use iicp_node::{HandlerError, Task, TaskHandler, TaskOutput};
use iicp_proto::crypto::cx::{seal_request, IicpConfResp, NodePublicKey};
use iicp_proto::frame::{Decoded, Frame};
use iicp_proto::lifecycle::{Event, EventKind, TaskState, PROFILE};
use iicp_proto::message::{Body, Call, Channel, Control, Init, Message, Prefer, Response};
use iicp_testkit::stub::StubModel;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// A raw native client: frames in, messages out, nothing hidden.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw { s, buf: Vec::new() };
        raw.send(Message::Init(Init::v1())).await;
        let ack = raw.next(T).await.expect("ack");
        assert!(matches!(ack, Message::Ack(_)), "{ack:?}");
        raw
    }

    async fn send(&mut self, m: Message) {
        let mut out = Vec::new();
        m.encode(&mut out).expect("encode");
        self.s.write_all(&out).await.expect("write");
    }

    /// The next message, or `None` when nothing came within `wait` or the peer closed.
    async fn next(&mut self, wait: Duration) -> Option<Message> {
        loop {
            if let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&self.buf, 1 << 24) {
                let m =
                    Message::decode(&frame.header, frame.payload, Channel::Task).expect("decode");
                self.buf.drain(..consumed);
                return Some(m);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(wait, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// RESPONSEs until the final one.
    async fn responses(&mut self) -> Vec<Response> {
        let mut out = Vec::new();
        loop {
            match self.next(T).await {
                Some(Message::Response(r)) => {
                    let last = r.is_final();
                    out.push(r);
                    if last {
                        return out;
                    }
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("stream ended without a final RESPONSE after {}", out.len()),
            }
        }
    }
}

fn chat(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

fn lifecycle_call(task_id: &str, call_id: &str, payload: Value) -> Call {
    Call {
        protocol_version: Some(1),
        session_id: Some("s-1".into()),
        intent: Some(CHAT.into()),
        payload: Some(Body::json(&payload)),
        timeout_s: Some(10),
        call_id: Some(call_id.into()),
        task_id: Some(task_id.into()),
        ..Call::default()
    }
}

fn delta_text(v: &Value) -> String {
    v.pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn result_json(r: &Response) -> Option<Value> {
    r.result
        .as_ref()
        .map(|b| b.to_json(Prefer::Cbor).expect("result"))
}

/// Streams `"x "` chunks every `every` until dropped, which it records.
#[derive(Clone)]
struct Endless {
    dropped: Arc<AtomicBool>,
    every: Duration,
}

struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl TaskHandler for Endless {
    fn handle(&self, _task: Task) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        Box::pin(async { Ok(TaskOutput::new(chat_completion("x"))) })
    }
    fn streams(&self) -> bool {
        true
    }
    fn handle_stream(
        &self,
        _task: Task,
        chunks: Chunks,
    ) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        let guard = SetOnDrop(Arc::clone(&self.dropped));
        let every = self.every;
        Box::pin(async move {
            let _guard = guard;
            loop {
                chunks
                    .send(
                        json!({"choices": [{"index": 0, "delta": {"content": "x "}}]}),
                        None,
                    )
                    .await
                    .map_err(|_| HandlerError::backend("closed"))?;
                tokio::time::sleep(every).await;
            }
        })
    }
}

fn endless() -> Endless {
    Endless {
        dropped: Arc::new(AtomicBool::new(false)),
        every: Duration::from_millis(20),
    }
}

// ---------------------------------------------------------------------------
// native
// ---------------------------------------------------------------------------

#[tokio::test]
async fn native_key_24_streams_lifecycle_responses() {
    let node = builder()
        .node_id("3fa85f64-5717-4562-b3fc-2c963f66afa6")
        .build()
        .expect("node");
    let h = serve(&node, EchoModel::default()).await;
    let mut raw = Raw::connect(h.local_addr()).await;
    let task_id = uuid();
    raw.send(Message::Call(lifecycle_call(
        &task_id,
        "c-1",
        chat("one two three"),
    )))
    .await;
    let frames = raw.responses().await;
    assert!(frames.len() >= 4, "role, three words, …: {}", frames.len());
    let mut text = String::new();
    for (i, r) in frames.iter().enumerate() {
        let env = r.lifecycle.as_ref().expect("key 13");
        assert_eq!(
            env.sequence,
            Some(i as u64),
            "0-based, no gap, no accepted frame"
        );
        assert_eq!(env.task_id.as_deref(), Some(task_id.as_str()));
        assert_eq!(r.call_id.as_deref(), Some("c-1"), "call id in key 3");
        assert_eq!(r.legacy_call_id, None, "no key 15 in lifecycle frames");
        assert_eq!(r.session_id.as_deref(), Some("s-1"));
        assert_eq!(r.is_final, env.is_final, "key 12 equals the envelope");
        let last = i == frames.len() - 1;
        assert_eq!(r.is_final, Some(last));
        let (status, event) = if last {
            ("success", "completed")
        } else {
            ("partial", "partial")
        };
        assert_eq!(r.status.as_deref(), Some(status));
        assert_eq!(env.event.as_deref(), Some(event));
        if let Some(v) = result_json(r) {
            assert_eq!(v["object"], "chat.completion.chunk");
            text.push_str(&delta_text(&v));
        }
    }
    assert_eq!(text, "echo: one two three");
    let terminal = frames.last().unwrap();
    assert_eq!(terminal.tokens_used, Some(7), "usage of the finish chunk");
    assert_eq!(
        terminal.node_id.as_deref(),
        Some("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    );
    // nothing after the terminal
    assert!(raw.next(Duration::from_millis(200)).await.is_none());

    // the same connection, no key 24: one buffered RESPONSE, as before
    let mut plain = lifecycle_call("", "c-2", chat("buffered"));
    plain.task_id = None;
    raw.send(Message::Call(plain)).await;
    let frames = raw.responses().await;
    assert_eq!(frames.len(), 1);
    assert!(frames[0].lifecycle.is_none());
    assert_eq!(
        result_json(&frames[0]).unwrap()["choices"][0]["message"]["content"],
        "echo: buffered"
    );
}

#[tokio::test]
async fn native_duplicates_replay_and_a_changed_body_conflicts() {
    let node = builder().build().expect("node");
    let h = serve(&node, EchoModel::default()).await;
    let mut raw = Raw::connect(h.local_addr()).await;
    let task_id = uuid();
    raw.send(Message::Call(lifecycle_call(&task_id, "a-1", chat("same"))))
        .await;
    let first = raw.responses().await;
    // a retry keeps the task id and changes the call id: the stored events again
    raw.send(Message::Call(lifecycle_call(&task_id, "a-2", chat("same"))))
        .await;
    let again = raw.responses().await;
    assert_eq!(first.len(), again.len());
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(result_json(a), result_json(b));
        assert_eq!(b.call_id.as_deref(), Some("a-2"));
    }
    raw.send(Message::Call(lifecycle_call(
        &task_id,
        "a-3",
        chat("other"),
    )))
    .await;
    let conflict = raw.responses().await;
    assert_eq!(conflict.len(), 1);
    let (code, _) = error_of(&conflict[0]);
    assert_eq!(code, "conflict");
}

fn error_of(r: &Response) -> (String, String) {
    let e = r.error.as_ref().expect("error map");
    (
        e.code.clone().unwrap_or_default(),
        e.message.clone().unwrap_or_default(),
    )
}

#[tokio::test]
async fn native_cancel_control_stops_the_handler() {
    let handler = endless();
    let node = builder().build().expect("node");
    let h = serve(&node, handler.clone()).await;
    let mut raw = Raw::connect(h.local_addr()).await;
    let task_id = uuid();
    raw.send(Message::Call(lifecycle_call(&task_id, "c-1", chat("go"))))
        .await;
    let Some(Message::Response(first)) = raw.next(T).await else {
        panic!("no partial")
    };
    assert_eq!(first.status.as_deref(), Some("partial"));
    raw.send(Message::Control(Control {
        action: Some("cancel".into()),
        reason: Some("user".into()),
        task_id: Some(task_id.clone()),
        ..Control::default()
    }))
    .await;
    let rest = raw.responses().await;
    let terminal = rest.last().unwrap();
    assert_eq!(terminal.status.as_deref(), Some("error"));
    let env = terminal.lifecycle.as_ref().unwrap();
    assert_eq!(env.event.as_deref(), Some("cancelled"));
    assert_eq!(error_of(terminal).0, "cancelled");
    assert!(
        result_json(terminal).is_none(),
        "a cancelled terminal carries no result"
    );
    wait_for("the handler's future dropped", || {
        handler.dropped.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test]
async fn native_disconnect_cancels_the_task() {
    let handler = endless();
    let node = builder().build().expect("node");
    let h = serve(&node, handler.clone()).await;
    let mut raw = Raw::connect(h.local_addr()).await;
    raw.send(Message::Call(lifecycle_call(&uuid(), "c-1", chat("go"))))
        .await;
    assert!(raw.next(T).await.is_some());
    drop(raw);
    wait_for("the handler's future dropped", || {
        handler.dropped.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test]
async fn deadline_gives_a_timed_out_terminal() {
    let handler = endless();
    let node = builder().build().expect("node");
    let h = serve(&node, handler.clone()).await;
    let mut raw = Raw::connect(h.local_addr()).await;
    let mut call = lifecycle_call(&uuid(), "c-1", chat("go"));
    call.timeout_s = Some(1);
    raw.send(Message::Call(call)).await;
    let frames = raw.responses().await;
    assert!(frames.len() > 1, "partials before the deadline");
    let terminal = frames.last().unwrap();
    assert_eq!(terminal.status.as_deref(), Some("timeout"));
    assert_eq!(
        terminal.lifecycle.as_ref().unwrap().event.as_deref(),
        Some("timed_out")
    );
    assert_eq!(error_of(terminal).0, "task_timeout");
    assert!(handler.dropped.load(Ordering::SeqCst));
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

fn task_body(task_id: &str, text: &str) -> Value {
    json!({
        "task_id": task_id,
        "intent": CHAT,
        "payload": chat(text),
        "constraints": {"required_profiles": [PROFILE]},
    })
}

/// A node whose backend is the real OpenAI-dialect adapter in front of the model server
/// at `stub` (model `paced`).
async fn serve_before(stub: SocketAddr) -> iicp_node::ServeHandle {
    let mut cfg = iicp_backends::BackendConfig::new(iicp_backends::BackendKind::OpenAiCompat);
    cfg.base_url = Some(format!("http://{stub}/v1"));
    cfg.model = Some("paced".into());
    let backend = iicp_backends::build(cfg).expect("backend");
    let node = builder().build().expect("node");
    serve(&node, BackendHandler::new(backend)).await
}

/// Reads a whole event stream and parses its messages.
async fn events(
    addr: SocketAddr,
    task_id: &str,
    query: &str,
) -> (u16, Vec<(String, String, Event)>) {
    let r = http()
        .get(url(addr, &format!("/v1/tasks/{task_id}/events{query}")))
        .send()
        .await
        .expect("events");
    let content_type = r.headers.get("content-type").and_then(|v| v.to_str().ok());
    if r.status == 200 {
        assert_eq!(content_type, Some("text/event-stream"));
    }
    if r.status != 200 {
        return (r.status.as_u16(), Vec::new());
    }
    (r.status.as_u16(), parse_sse(&r.body))
}

/// The messages of an event stream body: (id, event name, event).
fn parse_sse(body: &[u8]) -> Vec<(String, String, Event)> {
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let mut out = Vec::new();
    for msg in text.split("\n\n").filter(|m| !m.trim().is_empty()) {
        let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
        for line in msg.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.into();
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = v.into();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.into();
            }
        }
        out.push((id, name, serde_json::from_str(&data).expect("event json")));
    }
    out
}

async fn post_tasks(addr: SocketAddr, body: &Value) -> (u16, Value) {
    let r = http()
        .post_json(url(addr, "/v1/tasks"), body)
        .send()
        .await
        .expect("post");
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn http_tasks_stream_their_events() {
    let node = builder().build().expect("node");
    let h = serve(&node, EchoModel::default()).await;
    let addr = h.local_addr();
    let id = uuid();
    let (status, state) = post_tasks(addr, &task_body(&id, "over http")).await;
    assert_eq!(status, 202, "{state}");
    let state: TaskState = serde_json::from_value(state).expect("state");
    assert_eq!(state.profile, PROFILE);
    assert_eq!(state.task_id, id);
    assert_eq!(
        state.events_url.as_deref(),
        Some(format!("/v1/tasks/{id}/events").as_str())
    );
    assert_eq!(
        state.cancel_url.as_deref(),
        Some(format!("/v1/tasks/{id}/cancel").as_str())
    );

    let (status, evs) = events(addr, &id, "").await;
    assert_eq!(status, 200);
    assert_eq!(evs[0].2.event, EventKind::Accepted);
    let mut text = String::new();
    for (i, (sse_id, name, e)) in evs.iter().enumerate() {
        assert_eq!(e.sequence, i as u64);
        assert_eq!(sse_id, &i.to_string());
        assert_eq!(name, e.event.as_str());
        assert_eq!(e.task_id, id);
        assert_eq!(e.status, e.event.status());
        assert_eq!(e.is_final, i == evs.len() - 1);
        if let Some(r) = &e.result {
            text.push_str(&delta_text(&r.to_value()));
        }
    }
    assert_eq!(
        text,
        "echo: over http",
        "{:?}",
        evs.iter().map(|e| &e.2).collect::<Vec<_>>()
    );
    let last = &evs.last().unwrap().2;
    assert_eq!(last.event, EventKind::Completed);
    assert_eq!(
        last.tokens_used,
        Some(5),
        "two prompt words, three answer words"
    );
    assert_eq!(last.generated_by_ai, Some(true));
    assert!(last.metrics.is_some());

    // resume after a sequence (query or Last-Event-ID)
    let (_, tail) = events(addr, &id, "?after_sequence=2").await;
    assert_eq!(tail.len(), evs.len() - 3);
    assert_eq!(tail[0].2.sequence, 3);

    // the state, and a duplicate submission attaching to the finished task
    let r = http()
        .get(url(addr, &format!("/v1/tasks/{id}")))
        .send()
        .await
        .expect("state");
    let s: TaskState = serde_json::from_slice(&r.body).expect("state");
    assert_eq!((s.state.as_str(), s.is_final), ("completed", true));
    let (status, _) = post_tasks(addr, &task_body(&id, "over http")).await;
    assert_eq!(status, 200, "the same request again: the known state");
    let (status, body) = post_tasks(addr, &task_body(&id, "changed")).await;
    assert_eq!(status, 409, "{body}");

    // unknown tasks are 404; the buffered resource is untouched
    let (status, _) = events(addr, &uuid(), "").await;
    assert_eq!(status, 404);
    let r = post(&http(), addr, &common::task_body(&uuid(), "buffered")).await;
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r)["status"], "success");
}

#[tokio::test]
async fn one_request_submits_and_answers_with_the_event_stream() {
    let node = builder().build().expect("node");
    let h = serve(&node, EchoModel::default()).await;
    let addr = h.local_addr();
    let id = uuid();
    let submit = |body: Value| {
        let url = url(addr, iicp_proto::lifecycle::HTTP_SUBMIT_STREAM_PATH);
        async move {
            http()
                .post_json(url, &body)
                .header("accept", "text/event-stream")
                .send()
                .await
                .expect("post")
        }
    };
    let r = submit(task_body(&id, "in one request")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let evs = parse_sse(&r.body);
    assert_eq!(evs[0].2.event, EventKind::Accepted);
    let mut text = String::new();
    for (i, (sse_id, name, e)) in evs.iter().enumerate() {
        assert_eq!(e.sequence, i as u64);
        assert_eq!(sse_id, &i.to_string());
        assert_eq!(name, e.event.as_str());
        assert_eq!(e.task_id, id);
        assert_eq!(e.is_final, i == evs.len() - 1);
        if let Some(r) = &e.result {
            text.push_str(&delta_text(&r.to_value()));
        }
    }
    assert_eq!(text, "echo: in one request");
    assert_eq!(evs.last().unwrap().2.event, EventKind::Completed);
    // the task is a lifecycle task like any other: its state and events are there
    let (status, again) = events(addr, &id, "").await;
    assert_eq!(status, 200);
    assert_eq!(again.len(), evs.len());
    // the same request again attaches to the task's stream; a changed one conflicts
    let r = submit(task_body(&id, "in one request")).await;
    assert_eq!(r.status, 200);
    let replay = parse_sse(&r.body);
    assert_eq!(
        replay.iter().map(|e| e.2.sequence).collect::<Vec<_>>(),
        evs.iter().map(|e| e.2.sequence).collect::<Vec<_>>()
    );
    let r = submit(task_body(&id, "changed")).await;
    assert_eq!(r.status, 409);
    assert_eq!(json_of(&r)["error"]["code"], "conflict");
    // advertised beside the reference resources
    for c in node.capabilities() {
        assert_eq!(
            c.extensions.as_ref().unwrap()["service_lifecycle"]["submit_stream"],
            iicp_proto::lifecycle::HTTP_SUBMIT_STREAM_PATH
        );
    }
}

#[tokio::test]
async fn http_cancel_reaches_the_model_server() {
    // a model server generating 200 tokens 20 ms apart, behind the real backend adapter
    let stub = StubModel::paced("paced", 200, Duration::from_millis(20));
    let stub_srv = iicp_testkit::server::serve(stub.router())
        .await
        .expect("stub");
    let h = serve_before(stub_srv.addr()).await;
    let addr = h.local_addr();
    let id = uuid();
    let (status, _) = post_tasks(addr, &task_body(&id, "count")).await;
    assert_eq!(status, 202);
    // a few tokens arrive, then the caller cancels
    wait_for("tokens streamed", || stub.streamed_chunks() >= 4).await;
    let r = http()
        .post_json(
            url(addr, &format!("/v1/tasks/{id}/cancel")),
            &json!({"task_id": id, "reason": "user"}),
        )
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status, 200);
    let s: TaskState = serde_json::from_slice(&r.body).expect("state");
    assert_eq!(s.state, "cancelled");
    wait_for("the model server saw the disconnect", || {
        stub.disconnects() == 1
    })
    .await;
    assert!(stub.streamed_chunks() < 100, "generation stopped early");
    let (_, evs) = events(addr, &id, "").await;
    let last = &evs.last().unwrap().2;
    assert_eq!(last.event, EventKind::Cancelled);
    assert!(last.result.is_none());
    assert!(
        evs.iter()
            .filter(|e| e.2.event == EventKind::Partial)
            .count()
            >= 2
    );
}

#[tokio::test]
async fn first_partial_arrives_before_the_model_finishes() {
    let stub = StubModel::paced("paced", 20, Duration::from_millis(50));
    let stub_srv = iicp_testkit::server::serve(stub.router())
        .await
        .expect("stub");
    let h = serve_before(stub_srv.addr()).await;
    let mut raw = Raw::connect(h.local_addr()).await;
    raw.send(Message::Call(lifecycle_call(&uuid(), "c-1", chat("go"))))
        .await;
    let Some(Message::Response(first)) = raw.next(T).await else {
        panic!("no partial")
    };
    assert_eq!(first.status.as_deref(), Some("partial"));
    // 20 tokens 50 ms apart take a second; the first partial came long before the end
    assert!(
        stub.streamed_chunks() < 10,
        "first partial only after {} of 23 chunks",
        stub.streamed_chunks()
    );
    let rest = raw.responses().await;
    let text: String = std::iter::once(&first)
        .chain(&rest)
        .filter_map(result_json)
        .map(|v| delta_text(&v))
        .collect();
    assert_eq!(text, (0..20).map(|i| format!("t{i} ")).collect::<String>());
    assert_eq!(
        rest.last().unwrap().tokens_used,
        Some(23),
        "the usage chunk"
    );
}

#[tokio::test]
async fn profiles_are_advertised_only_for_streaming_handlers() {
    let buffered = builder().build().expect("node");
    let h = serve(&buffered, Echo::default().handler()).await;
    assert!(buffered
        .capabilities()
        .iter()
        .all(|c| c.supported_profiles.is_none()));
    let (status, body) = post_tasks(h.local_addr(), &task_body(&uuid(), "x")).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "unsupported_profile");
    // required on the buffered resource of a node that cannot stream: refused
    let r = post(&http(), h.local_addr(), &task_body(&uuid(), "x")).await;
    assert_eq!(r.status, 422);
    assert_eq!(code_of(&r), "unsupported_profile");
    // native key 24 to a node that cannot stream: one buffered RESPONSE
    let mut raw = Raw::connect(h.local_addr()).await;
    raw.send(Message::Call(lifecycle_call(&uuid(), "c", chat("x"))))
        .await;
    let frames = raw.responses().await;
    assert_eq!(frames.len(), 1);
    assert!(frames[0].lifecycle.is_none());

    let streaming = builder().build().expect("node");
    let h2 = serve(&streaming, EchoModel::default()).await;
    for c in streaming.capabilities() {
        assert_eq!(
            c.supported_profiles.as_deref(),
            Some(&[PROFILE.to_owned()][..])
        );
        assert_eq!(c.supports_streaming, Some(true));
        assert_eq!(
            c.extensions.as_ref().unwrap()["service_lifecycle"]["events"],
            "/v1/tasks/{task_id}/events"
        );
    }
    let cx = streaming.registration_request().cx_public_key.expect("cx");
    assert!(cx.features.iter().any(|f| f == "cx_stream_v1"));
    // required on the buffered resource of a streaming node: answered buffered
    let r = post(&http(), h2.local_addr(), &task_body(&uuid(), "x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        json_of(&r)["result"]["choices"][0]["message"]["content"],
        "echo: x"
    );
}

#[tokio::test]
async fn encrypted_tasks_stream_sealed_chunks() {
    let node = builder().build().expect("node");
    let h = serve(&node, EchoModel::default()).await;
    let adv = node.registration_request().cx_public_key.expect("cx");
    let key = NodePublicKey::from_advertisement(&adv).expect("key");
    let addr = h.local_addr();

    // HTTP: each result sealed at its sequence
    let id = uuid();
    let plain = serde_json::to_vec(&chat("secret words")).expect("json");
    let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
    let body = json!({
        "task_id": id, "intent": CHAT,
        "iicp_conf": sealed.envelope.to_value(),
        "cx_response_encryption": "required",
        "constraints": {"required_profiles": [PROFILE]},
    });
    let (status, _) = post_tasks(addr, &body).await;
    assert_eq!(status, 202);
    let (_, evs) = events(addr, &id, "").await;
    let mut text = String::new();
    let mut sealed_count = 0;
    for (_, _, e) in &evs {
        assert!(e.result.is_none(), "no result in clear");
        if let Some(conf) = &e.iicp_conf_resp {
            assert_eq!(e.status, "encrypted");
            let conf = IicpConfResp::from_value(conf).expect("conf");
            let opened = sealed
                .response_key
                .open_chunk(e.sequence, &conf)
                .expect("open");
            // at another position it does not open
            assert!(sealed
                .response_key
                .open_chunk(e.sequence + 1, &conf)
                .is_err());
            let v: Value = serde_json::from_slice(&opened).expect("chunk");
            text.push_str(&delta_text(&v));
            sealed_count += 1;
        }
    }
    assert!(sealed_count > 2);
    assert_eq!(text, "echo: secret words");
    let raw_text = serde_json::to_string(&evs.iter().map(|e| &e.2).collect::<Vec<_>>()).unwrap();
    assert!(!raw_text.contains("secret"));

    // native: key 5 `{task_id, status: "encrypted", iicp_conf_resp}` sealed at the
    // native sequence
    let id = uuid();
    let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
    let env = json!({
        "task_id": id,
        "iicp_conf": sealed.envelope.to_value(),
        "cx_response_encryption": "required",
    });
    let mut raw = Raw::connect(addr).await;
    raw.send(Message::Call(lifecycle_call(&id, "c-1", env)))
        .await;
    let frames = raw.responses().await;
    let mut text = String::new();
    for r in &frames {
        let Some(v) = result_json(r) else { continue };
        assert_eq!(v["status"], "encrypted");
        let seq = r.lifecycle.as_ref().unwrap().sequence.unwrap();
        let conf = IicpConfResp::from_value(&v["iicp_conf_resp"]).expect("conf");
        let opened = sealed.response_key.open_chunk(seq, &conf).expect("open");
        text.push_str(&delta_text(&serde_json::from_slice(&opened).unwrap()));
    }
    assert_eq!(text, "echo: secret words");
}

/// A model server's streamed chunks reach the caller as they came (ADR 0020): over HTTP
/// each chunk's JSON text is the partial event's `result` byte for byte, and over native
/// each partial's body is the deterministic CBOR of that same JSON.
#[tokio::test]
async fn model_chunks_pass_through_unchanged() {
    let stub = StubModel::paced("paced", 3, Duration::ZERO);
    let stub_srv = iicp_testkit::server::serve(stub.router())
        .await
        .expect("stub");
    // what the model server itself sends
    let direct = http()
        .post_json(
            format!("http://{}/v1/chat/completions", stub_srv.addr()),
            &json!({"model": "paced", "stream": true, "messages": [{"role": "user", "content": "go"}]}),
        )
        .send()
        .await
        .expect("direct");
    let chunks: Vec<String> = String::from_utf8(direct.body.to_vec())
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(str::to_owned)
        .collect();
    assert_eq!(chunks.len(), 5, "role, three tokens, the finish");

    let h = serve_before(stub_srv.addr()).await;
    let addr = h.local_addr();

    let id = uuid();
    let (status, _) = post_tasks(addr, &task_body(&id, "go")).await;
    assert_eq!(status, 202);
    let r = http()
        .get(url(addr, &format!("/v1/tasks/{id}/events")))
        .send()
        .await
        .expect("events");
    let body = String::from_utf8(r.body.to_vec()).expect("utf-8");
    let partials: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| d.contains(r#""event":"partial""#))
        .collect();
    assert!(partials.len() >= chunks.len(), "{body}");
    for chunk in &chunks {
        let member = format!(r#""result":{chunk}"#);
        assert!(
            partials.iter().any(|p| p.contains(&member)),
            "{chunk} not passed as it came in {body}"
        );
    }

    let mut raw = Raw::connect(addr).await;
    raw.send(Message::Call(lifecycle_call(&uuid(), "c-1", chat("go"))))
        .await;
    let bodies: Vec<Vec<u8>> = raw
        .responses()
        .await
        .iter()
        .filter(|r| r.status.as_deref() == Some("partial"))
        .filter_map(|r| match &r.result {
            Some(Body::Cbor(b)) => Some(b.clone()),
            _ => None,
        })
        .collect();
    let expected: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| iicp_proto::cbor::json_to_vec(&serde_json::from_str(c).expect("json")))
        .collect();
    assert_eq!(bodies, expected);
}
