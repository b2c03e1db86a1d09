//! Streamed tasks (the service-lifecycle profile, ADR 0013) against fake streaming
//! nodes, native and HTTP: the happy paths, hostile nodes (every violation is an
//! error, never a success), retries before the first partial only, cancel on drop,
//! the deadline, IICP-CX chunks, and the buffered fallback.

use std::sync::Arc;
use std::time::Duration;

use iicp_client::{
    ChatEvent, ChatOptions, ChatRequest, Client, Encryption, ErrorCode, ErrorKind, TaskEvent,
    TransportUsed, NATIVE_CX_V1,
};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proto::lifecycle::{EventKind, CX_STREAM_V1, PROFILE};
use iicp_proto::message::{Call, Message};
use iicp_proto::task::ChatMessage;
use iicp_testkit::fake::*;
use iicp_testkit::stream::*;
use iicp_testkit::time::*;
use rand_core::OsRng;
use serde_json::{json, Value};

/// An OpenAI chat.completion.chunk with `text`.
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

fn native_script(f: impl Fn(&Call) -> Vec<NativeStep> + Send + Sync + 'static) -> NativeScript {
    Arc::new(f)
}

fn http_script(
    submit: impl Fn(&Value) -> Submit + Send + Sync + 'static,
    events: impl Fn(&str, &Value) -> Vec<HttpStep> + Send + Sync + 'static,
) -> HttpScript {
    HttpScript {
        submit: Arc::new(submit),
        events: Arc::new(events),
        one_request: true,
    }
}

async fn client_for(nodes: Vec<Value>) -> (Client, FakeDirectory) {
    let dir = fake_directory(nodes, Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .api_token("api-token-stream-1")
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    (client, dir)
}

fn native_entry(n: u32, node: &NativeStreamNode) -> Value {
    // the HTTP endpoint is unused (native is preferred when advertised)
    stream_entry(
        &node_id(n),
        &format!("http://{}", node.addr),
        Some(node.addr),
        None,
        &[],
    )
}

fn http_entry(n: u32, node: &HttpStreamNode) -> Value {
    stream_entry(&node_id(n), &node.url(), None, None, &[])
}

/// An entry that advertises only the reference lifecycle resources (no
/// `submit_stream`): a peer SDK's node.
fn two_step_entry(n: u32, node: &HttpStreamNode) -> Value {
    let mut e = http_entry(n, node);
    e["capabilities"][0]["extensions"]["service_lifecycle"]
        .as_object_mut()
        .expect("resources")
        .remove("submit_stream");
    e
}

fn request() -> ChatRequest {
    ChatRequest::new(vec![ChatMessage::new("user", "PAYLOAD-MARKER-7f3a")])
}

/// One streamed chat of [`request`] through `client`, read to its end.
async fn chat_to_end(
    client: &Client,
) -> (String, Result<iicp_client::ChatResult, iicp_client::Error>) {
    drain_chat(
        client
            .chat_stream(request(), ChatOptions::default())
            .await
            .expect("stream"),
    )
    .await
}

/// Reads a chat stream to its end: the deltas' text and the `Done` result (or error).
async fn drain_chat(
    mut s: iicp_client::ChatStream,
) -> (String, Result<iicp_client::ChatResult, iicp_client::Error>) {
    let mut text = String::new();
    while let Some(ev) = s.next().await {
        match ev {
            Ok(ChatEvent::Delta(t)) => text.push_str(&t),
            Ok(ChatEvent::Done(r)) => {
                assert!(s.next().await.is_none(), "nothing after Done");
                return (text, Ok(*r));
            }
            Ok(_) => {}
            Err(e) => {
                assert!(s.next().await.is_none(), "nothing after an error");
                return (text, Err(e));
            }
        }
    }
    panic!("the stream ended without Done or an error");
}

/// Reads a task stream to its end: partial count, and the terminal or the error.
async fn drain_task(
    mut s: iicp_client::TaskStream,
) -> (
    usize,
    Result<Box<iicp_client::StreamEnd>, iicp_client::Error>,
) {
    let mut partials = 0;
    while let Some(ev) = s.next().await {
        match ev {
            Ok(TaskEvent::Partial { .. }) => partials += 1,
            Ok(TaskEvent::Completed(end)) => return (partials, Ok(end)),
            Ok(_) => {}
            Err(e) => return (partials, Err(e)),
        }
    }
    panic!("the stream ended without Completed or an error");
}

// -------------------------------------------------------------------------------------
// Happy paths
// -------------------------------------------------------------------------------------

#[tokio::test]
async fn native_chat_streams_deltas_and_assembles_the_completion() {
    let node = native_stream_node(native_script(|c| {
        happy_frames(c, &hello(), Some(last_chunk()))
    }))
    .await;
    let (client, _dir) = client_for(vec![native_entry(1, &node)]).await;
    let s = client
        .chat_stream(request(), ChatOptions::default())
        .await
        .expect("stream");
    assert!(s.is_streamed());
    let task_id = s.task_id().clone();
    let (text, done) = drain_chat(s).await;
    let done = done.expect("done");
    assert_eq!(text, "Hello, world");
    assert_eq!(
        done.text(),
        "Hello, world",
        "the assembly is the concatenation"
    );
    assert_eq!(
        done.completion.choices[0].finish_reason.as_deref(),
        Some("stop")
    );
    assert_eq!(
        done.completion.usage.as_ref().and_then(|u| u.total_tokens),
        Some(7)
    );
    assert_eq!(done.task_id, task_id);
    assert_eq!(done.node_id, node_id(1));
    // the CALL: key 24 = the task id, a call id, the task id as idempotency key
    let calls = node.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.task_id.as_deref(), Some(task_id.as_str()));
    assert!(c.call_id.is_some());
    assert_eq!(c.idempotency_key.as_deref(), Some(task_id.as_str()));
    assert_eq!(
        call_payload(c)["messages"][0]["content"],
        "PAYLOAD-MARKER-7f3a"
    );
    assert!(
        node.controls().is_empty(),
        "a finished stream cancels nothing"
    );
}

#[tokio::test]
async fn native_task_events_carry_sequences_and_cumulative_tokens() {
    let node = native_stream_node(native_script(|c| happy_frames(c, &hello(), None))).await;
    let (client, _dir) = client_for(vec![native_entry(1, &node)]).await;
    let mut s = client.submit_stream(chat_task()).await.expect("stream");
    assert_eq!(s.transport(), TransportUsed::Native);
    let mut seqs = Vec::new();
    let end = loop {
        match s.next().await.expect("event").expect("ok") {
            TaskEvent::Partial {
                sequence,
                tokens_used,
                ..
            } => {
                assert_eq!(tokens_used, Some(sequence + 1));
                seqs.push(sequence);
            }
            TaskEvent::Completed(end) => break end,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(seqs, vec![0, 1, 2]);
    assert_eq!(end.sequence, Some(3));
    assert_eq!(end.tokens_used, Some(4));
    assert_eq!(end.chunks, 3);
    assert!(end.streamed);
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn http_chat_streams_over_sse_in_one_request_with_the_credentials_and_trace() {
    let node = http_stream_node(http_script(
        |_| Submit::Accept,
        |task, _| happy_events(task, &hello(), Some(last_chunk())),
    ))
    .await;
    let (client, _dir) = client_for(vec![http_entry(1, &node)]).await;
    let mut s = client.submit_stream(chat_task()).await.expect("stream");
    assert_eq!(s.transport(), TransportUsed::Http);
    let first = s.next().await.expect("one").expect("ok");
    assert_eq!(first, TaskEvent::Accepted { sequence: 0 });
    let (partials, end) = drain_task(s).await;
    let end = end.expect("completed");
    assert_eq!(partials, 3);
    assert_eq!(end.model_used.as_deref(), Some("fake-model"));

    let (text, done) = chat_to_end(&client).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(done.expect("done").text(), "Hello, world");

    // each stream is one request: the task, answered with its events
    assert_eq!(node.requests().len(), 2);
    let posts = node.hits("POST", "/v1/tasks/stream");
    assert_eq!(posts.len(), 2);
    let body = posts[0].json();
    assert_eq!(body["constraints"]["required_profiles"], json!([PROFILE]));
    assert_eq!(
        body["payload"]["messages"][0]["content"],
        "PAYLOAD-MARKER-7f3a"
    );
    assert_eq!(posts[0].header("accept"), Some("text/event-stream"));
    assert_eq!(
        posts[0].header("authorization"),
        Some("Bearer api-token-stream-1")
    );
    assert!(posts[0].header("traceparent").is_some());
    assert!(node.hits("GET", "/events").is_empty());
    assert!(node.hits("POST", "/cancel").is_empty());
}

/// The two requests of the reference resources: `POST /v1/tasks`, then the events.
fn assert_two_requests(node: &HttpStreamNode) {
    let posts = node.hits("POST", "/v1/tasks");
    assert_eq!(posts.len(), 1);
    let body = posts[0].json();
    assert_eq!(body["constraints"]["required_profiles"], json!([PROFILE]));
    let gets = node.hits("GET", "/events");
    assert_eq!(gets.len(), 1);
    let task_id = body["task_id"].as_str().expect("task id");
    assert_eq!(gets[0].path, format!("/v1/tasks/{task_id}/events"));
    assert_eq!(gets[0].header("accept"), Some("text/event-stream"));
    for r in [&posts[0], &gets[0]] {
        assert_eq!(r.header("authorization"), Some("Bearer api-token-stream-1"));
    }
    assert_eq!(
        posts[0].header("traceparent"),
        gets[0].header("traceparent")
    );
    assert!(posts[0].header("traceparent").is_some());
}

#[tokio::test]
async fn a_node_without_the_one_request_resource_streams_in_two_requests() {
    let node = http_stream_node(http_script(
        |_| Submit::Accept,
        |task, _| happy_events(task, &hello(), Some(last_chunk())),
    ))
    .await;
    let (client, _dir) = client_for(vec![two_step_entry(1, &node)]).await;
    let (text, done) = chat_to_end(&client).await;
    assert_eq!(text, "Hello, world");
    done.expect("done");
    assert!(node.hits("POST", "/v1/tasks/stream").is_empty());
    assert_two_requests(&node);
}

#[tokio::test]
async fn an_advertised_one_request_resource_that_is_missing_falls_back_to_two_requests() {
    let mut script = http_script(
        |_| Submit::Accept,
        |task, _| happy_events(task, &hello(), Some(last_chunk())),
    );
    script.one_request = false;
    let node = http_stream_node(script).await;
    let (client, _dir) = client_for(vec![http_entry(1, &node)]).await;
    let (text, done) = chat_to_end(&client).await;
    assert_eq!(text, "Hello, world");
    done.expect("done");
    assert_eq!(
        node.hits("POST", "/v1/tasks/stream").len(),
        1,
        "tried first"
    );
    assert_two_requests(&node);
}

// -------------------------------------------------------------------------------------
// Hostile nodes: protocol errors, never success
// -------------------------------------------------------------------------------------

/// Runs one stream against a native node scripted by `f`; returns the chunks and the
/// outcome.
async fn native_outcome(
    f: impl Fn(&Call) -> Vec<NativeStep> + Send + Sync + 'static,
) -> (
    usize,
    Result<Box<iicp_client::StreamEnd>, iicp_client::Error>,
) {
    let node = native_stream_node(native_script(f)).await;
    let (client, _dir) = client_for(vec![native_entry(1, &node)]).await;
    match client.submit_stream(chat_task()).await {
        Ok(s) => drain_task(s).await,
        Err(e) => (0, Err(e)),
    }
}

fn send(r: iicp_proto::message::Response) -> NativeStep {
    NativeStep::Send(r)
}

#[tokio::test]
async fn native_call_id_drift_is_an_error() {
    let (_, out) = native_outcome(|c| {
        let p0 = lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")));
        let mut done = lifecycle_frame(c, 1, EventKind::Completed, None);
        done.call_id = Some("c-drift".into());
        vec![
            send(p0),
            send(done),
            NativeStep::Sleep(Duration::from_secs(3)),
        ]
    })
    .await;
    let e = out.expect_err("drift");
    assert!(
        matches!(e.kind(), ErrorKind::Protocol | ErrorKind::Transport),
        "{e}"
    );
}

#[tokio::test]
async fn native_session_drift_is_an_error() {
    let (_, out) = native_outcome(|c| {
        let p0 = lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")));
        let mut p1 = lifecycle_frame(c, 1, EventKind::Partial, Some(chunk("b")));
        p1.session_id = Some("another-session".into());
        vec![
            send(p0),
            send(p1),
            NativeStep::Sleep(Duration::from_secs(3)),
        ]
    })
    .await;
    let e = out.expect_err("drift");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.message().contains("session_id_drift"), "{e}");
    assert!(e.message().contains("1 chunk(s)"), "{e}");
}

#[tokio::test]
async fn native_sequence_gap_is_an_error() {
    let (partials, out) = native_outcome(|c| {
        vec![
            send(lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")))),
            send(lifecycle_frame(c, 2, EventKind::Completed, None)),
        ]
    })
    .await;
    assert_eq!(partials, 1);
    let e = out.expect_err("gap");
    assert!(e.message().contains("sequence_gap"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Protocol);
}

#[tokio::test]
async fn native_duplicates_and_regressions_are_discarded() {
    let node = native_stream_node(native_script(|c| {
        vec![
            send(lifecycle_frame(
                c,
                0,
                EventKind::Partial,
                Some(chunk("Hel")),
            )),
            send(lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("XX")))),
            send(lifecycle_frame(c, 1, EventKind::Partial, Some(chunk("lo")))),
            send(lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("YY")))),
            send(lifecycle_frame(
                c,
                2,
                EventKind::Completed,
                Some(last_chunk()),
            )),
        ]
    }))
    .await;
    let (client, _dir) = client_for(vec![native_entry(1, &node)]).await;
    let (text, done) = chat_to_end(&client).await;
    assert_eq!(text, "Hello");
    assert_eq!(done.expect("done").text(), "Hello");
}

#[tokio::test]
async fn native_partial_marked_final_and_status_contradictions_are_errors() {
    let (_, out) = native_outcome(|c| {
        let mut p = lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")));
        p.is_final = Some(true);
        p.lifecycle.as_mut().expect("env").is_final = Some(true);
        vec![send(p)]
    })
    .await;
    assert!(out
        .expect_err("final partial")
        .message()
        .contains("partial_marked_final"));
    let (_, out) = native_outcome(|c| {
        let mut p = lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")));
        p.status = Some("success".into());
        vec![send(p), NativeStep::Sleep(Duration::from_secs(3))]
    })
    .await;
    assert!(out
        .expect_err("contradiction")
        .message()
        .contains("status_event_disagreement"));
}

#[tokio::test]
async fn native_missing_terminal_is_a_failure() {
    let (partials, out) = native_outcome(|c| {
        vec![
            send(lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")))),
            send(lifecycle_frame(c, 1, EventKind::Partial, Some(chunk("bc")))),
            NativeStep::Close,
        ]
    })
    .await;
    assert_eq!(partials, 2);
    let e = out.expect_err("no terminal");
    assert!(!e.is_retryable() || e.kind() == ErrorKind::Transport);
    assert!(e.message().contains("2 chunk(s) (3 chars)"), "{e}");
}

#[tokio::test]
async fn native_oversize_frame_is_an_error() {
    let (_, out) = native_outcome(|c| {
        let mut frame =
            Message::Response(lifecycle_frame(c, 1, EventKind::Partial, Some(chunk("b"))))
                .to_frame()
                .expect("frame");
        frame[8..12].copy_from_slice(&(iicp_proto::frame::MAX_PAYLOAD + 1).to_be_bytes());
        vec![
            send(lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")))),
            NativeStep::Raw(frame),
            NativeStep::Sleep(Duration::from_secs(3)),
        ]
    })
    .await;
    let e = out.expect_err("oversize");
    assert!(e.message().contains("1 chunk(s)"), "{e}");
}

#[tokio::test]
async fn native_failed_terminal_after_partial_keeps_its_code() {
    let (partials, out) = native_outcome(|c| {
        let mut failed = lifecycle_frame(c, 1, EventKind::Failed, None);
        failed.error = Some(iicp_proto::message::ErrorMap {
            code: Some("backend_error".into()),
            message: Some("generation failed".into()),
        });
        vec![
            send(lifecycle_frame(
                c,
                0,
                EventKind::Partial,
                Some(json!("incomplete")),
            )),
            send(failed),
        ]
    })
    .await;
    assert_eq!(partials, 1);
    let e = out.expect_err("failed");
    assert_eq!(e.code(), &ErrorCode::BackendError);
    assert_eq!(e.kind(), ErrorKind::Remote);
    assert!(e.message().contains("1 chunk(s) (10 chars)"), "{e}");
}

/// One stream against an HTTP node whose event stream `events` scripts.
async fn http_outcome(
    events: impl Fn(&str, &Value) -> Vec<HttpStep> + Send + Sync + 'static,
) -> (
    usize,
    Result<Box<iicp_client::StreamEnd>, iicp_client::Error>,
) {
    let node = http_stream_node(http_script(|_| Submit::Accept, events)).await;
    let (client, _dir) = client_for(vec![http_entry(1, &node)]).await;
    match client.submit_stream(chat_task()).await {
        Ok(s) => drain_task(s).await,
        Err(e) => (0, Err(e)),
    }
}

#[tokio::test]
async fn http_partial_after_the_terminal_and_a_second_terminal_are_errors() {
    let (_, out) = http_outcome(|t, _| {
        let mut steps = happy_events(t, &[chunk("a")], None);
        steps.push(HttpStep::Event(event(
            t,
            3,
            EventKind::Partial,
            Some(chunk("late")),
        )));
        steps
    })
    .await;
    assert!(out
        .expect_err("late partial")
        .message()
        .contains("after_terminal"));
    let (_, out) = http_outcome(|t, _| {
        let mut steps = happy_events(t, &[chunk("a")], None);
        let mut failed = event(t, 3, EventKind::Failed, None);
        failed.error = Some(iicp_proto::task::ErrorObject {
            code: Some(ErrorCode::from("late_error")),
            message: "late terminal".into(),
            extra: Default::default(),
        });
        steps.push(HttpStep::Event(failed));
        steps
    })
    .await;
    assert!(out
        .expect_err("second terminal")
        .message()
        .contains("after_terminal"));
}

#[tokio::test]
async fn http_sse_ending_without_terminal_and_gaps_are_errors() {
    let (partials, out) = http_outcome(|t, _| {
        let mut steps = happy_events(t, &[chunk("a"), chunk("b")], None);
        steps.pop(); // no terminal: the stream just ends
        steps
    })
    .await;
    assert_eq!(partials, 2);
    assert!(out
        .expect_err("missing")
        .message()
        .contains("missing_terminal"));
    let (_, out) = http_outcome(|t, _| {
        vec![
            HttpStep::Event(event(t, 0, EventKind::Accepted, None)),
            HttpStep::Event(event(t, 1, EventKind::Partial, Some(chunk("a")))),
            HttpStep::Event(event(t, 3, EventKind::Completed, None)),
        ]
    })
    .await;
    assert!(out.expect_err("gap").message().contains("sequence_gap"));
    // an SSE id that is not the event's sequence
    let (_, out) = http_outcome(|t, _| {
        let e = event(t, 0, EventKind::Accepted, None);
        vec![HttpStep::Raw(format!(
            "id: 5\nevent: accepted\ndata: {}\n\n",
            serde_json::to_string(&e).expect("json")
        ))]
    })
    .await;
    // before any content: retried elsewhere, so the node's error is the last one
    let e = out.expect_err("id");
    assert_eq!(e.code(), &ErrorCode::AllNodesFailed, "{e}");
    assert_eq!(
        e.last_node_error().map(iicp_client::Error::kind),
        Some(ErrorKind::Protocol)
    );
}

#[tokio::test]
async fn http_task_id_drift_is_an_error() {
    let (_, out) = http_outcome(|t, _| {
        vec![
            HttpStep::Event(event(t, 0, EventKind::Accepted, None)),
            HttpStep::Event(event(
                "another-task",
                1,
                EventKind::Completed,
                Some(chunk("x")),
            )),
        ]
    })
    .await;
    assert!(out.expect_err("drift").message().contains("task_id_drift"));
}

// -------------------------------------------------------------------------------------
// Retries
// -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_failure_before_the_first_partial_goes_to_the_next_node_with_the_same_task_id() {
    let a = native_stream_node(native_script(|_| vec![NativeStep::Close])).await;
    let b = native_stream_node(native_script(|c| happy_frames(c, &hello(), None))).await;
    let (client, _dir) = client_for(vec![native_entry(1, &a), native_entry(2, &b)]).await;
    let s = client.submit_stream(chat_task()).await.expect("stream");
    assert_eq!(s.node_id(), node_id(2));
    let (partials, end) = drain_task(s).await;
    assert_eq!(partials, 3);
    let end = end.expect("completed");
    assert_eq!(end.attempts, 2);
    let (ca, cb) = (a.calls(), b.calls());
    assert_eq!((ca.len(), cb.len()), (1, 1));
    assert_eq!(ca[0].task_id, cb[0].task_id, "one logical task");
    assert_ne!(ca[0].call_id, cb[0].call_id, "a new call id per attempt");
}

#[tokio::test]
async fn an_http_refusal_is_retried_like_a_buffered_one() {
    let busy = http_stream_node(http_script(
        |_| {
            Submit::Refuse(
                429,
                json!({"error": {"code": "capacity_exceeded", "message": "busy", "retry_after_ms": 1000}}),
                vec![("retry-after", "1")],
            )
        },
        |_, _| Vec::new(),
    ))
    .await;
    let ok = http_stream_node(http_script(
        |_| Submit::Accept,
        |t, _| happy_events(t, &hello(), None),
    ))
    .await;
    let (client, _dir) = client_for(vec![http_entry(1, &busy), http_entry(2, &ok)]).await;
    let s = client.submit_stream(chat_task()).await.expect("stream");
    assert_eq!(s.node_id(), node_id(2));
    drain_task(s).await.1.expect("completed");
    assert_eq!(
        busy.hits("POST", "/v1/tasks/stream").len(),
        1,
        "capacity_exceeded: next node at once"
    );
    assert!(busy.hits("GET", "/events").is_empty());
}

#[tokio::test]
async fn a_failure_after_a_partial_is_terminal_and_says_what_was_received() {
    let a = native_stream_node(native_script(|c| {
        vec![
            send(lifecycle_frame(
                c,
                0,
                EventKind::Partial,
                Some(chunk("Hel")),
            )),
            send(lifecycle_frame(c, 1, EventKind::Partial, Some(chunk("lo")))),
            NativeStep::Close,
        ]
    }))
    .await;
    let b = native_stream_node(native_script(|c| happy_frames(c, &hello(), None))).await;
    let (client, _dir) = client_for(vec![native_entry(1, &a), native_entry(2, &b)]).await;
    let (text, out) = chat_to_end(&client).await;
    assert_eq!(text, "Hello", "what came before the failure was delivered");
    let e = out.expect_err("terminal failure");
    assert!(e.message().contains("2 chunk(s) (5 chars)"), "{e}");
    assert!(b.calls().is_empty(), "no retry after the first partial");
}

// -------------------------------------------------------------------------------------
// Cancel, deadline
// -------------------------------------------------------------------------------------

#[tokio::test]
async fn dropping_a_native_stream_sends_the_cancel_control() {
    let node = native_stream_node(native_script(|c| {
        vec![
            send(lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")))),
            NativeStep::Sleep(Duration::from_secs(10)),
        ]
    }))
    .await;
    let (client, _dir) = client_for(vec![native_entry(1, &node)]).await;
    let mut s = client.submit_stream(chat_task()).await.expect("stream");
    let task_id = s.task_id().clone();
    assert!(matches!(
        s.next().await,
        Some(Ok(TaskEvent::Partial { .. }))
    ));
    drop(s);
    let cancel = node
        .wait_cancel(Duration::from_secs(3))
        .await
        .expect("the CONTROL cancel reached the node");
    assert_eq!(cancel.task_id.as_deref(), Some(task_id.as_str()));
    assert!(cancel.reason.is_some());
}

#[tokio::test]
async fn dropping_an_http_stream_posts_the_cancel() {
    let node = http_stream_node(http_script(
        |_| Submit::Accept,
        |t, _| {
            vec![
                HttpStep::Event(event(t, 0, EventKind::Accepted, None)),
                HttpStep::Event(event(t, 1, EventKind::Partial, Some(chunk("a")))),
                HttpStep::Hold,
            ]
        },
    ))
    .await;
    let (client, _dir) = client_for(vec![http_entry(1, &node)]).await;
    let mut s = client.submit_stream(chat_task()).await.expect("stream");
    let task_id = s.task_id().clone();
    assert!(matches!(
        s.next().await,
        Some(Ok(TaskEvent::Accepted { .. }))
    ));
    assert!(matches!(
        s.next().await,
        Some(Ok(TaskEvent::Partial { .. }))
    ));
    drop(s);
    let cancel = node
        .wait_cancel(Duration::from_secs(3))
        .await
        .expect("the cancel POST reached the node");
    assert_eq!(cancel.path, format!("/v1/tasks/{task_id}/cancel"));
    assert_eq!(
        cancel.header("authorization"),
        Some("Bearer api-token-stream-1")
    );
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_stream() {
    let node = native_stream_node(native_script(|c| {
        vec![
            send(lifecycle_frame(c, 0, EventKind::Partial, Some(chunk("a")))),
            NativeStep::Sleep(Duration::from_secs(30)),
        ]
    }))
    .await;
    let dir = fake_directory(vec![native_entry(1, &node)], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .timeout(Duration::from_millis(800))
        .build()
        .expect("client");
    let started = std::time::Instant::now();
    let (partials, out) =
        drain_task(client.submit_stream(chat_task()).await.expect("stream")).await;
    assert_eq!(partials, 1);
    let e = out.expect_err("deadline");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.code(), &ErrorCode::TaskTimeout);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        node.wait_cancel(Duration::from_secs(3)).await.is_some(),
        "the expired task is cancelled"
    );
}

// -------------------------------------------------------------------------------------
// IICP-CX
// -------------------------------------------------------------------------------------

/// A native node that opens the sealed CALL and seals each chunk at `seal_at(seq)`.
async fn cx_native_node(key: CxKeyPair, seal_at: fn(u64) -> u64) -> NativeStreamNode {
    native_stream_node(native_script(move |c| {
        let task = c.task_id.clone().unwrap_or_default();
        let p = call_payload(c);
        let Some((_, rk)) = open_cx(
            &key,
            &p["iicp_conf"],
            &task,
            c.intent.as_deref().unwrap_or(""),
        ) else {
            return vec![NativeStep::Close];
        };
        assert_eq!(p["cx_response_encryption"], "required");
        let mut out = Vec::new();
        for (i, ch) in hello().iter().enumerate() {
            let sealed = sealed_native_result(&rk, &task, seal_at(i as u64), ch);
            out.push(send(lifecycle_frame(
                c,
                i as u64,
                EventKind::Partial,
                Some(sealed),
            )));
        }
        let sealed = sealed_native_result(&rk, &task, seal_at(3), &last_chunk());
        out.push(send(lifecycle_frame(
            c,
            3,
            EventKind::Completed,
            Some(sealed),
        )));
        out
    }))
    .await
}

fn cx_entry(n: u32, node: &NativeStreamNode, key: &CxKeyPair, features: &[&str]) -> Value {
    stream_entry(
        &node_id(n),
        &format!("http://{}", node.addr),
        Some(node.addr),
        Some(key),
        features,
    )
}

#[tokio::test]
async fn cx_chunks_are_opened_at_their_sequence() {
    let key = CxKeyPair::generate(&mut OsRng);
    let node = cx_native_node(key.clone(), |s| s).await;
    let dir = fake_directory(
        vec![cx_entry(1, &node, &key, &[NATIVE_CX_V1, CX_STREAM_V1])],
        Tickets::Off,
    )
    .await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client: encryption required");
    let (text, done) = chat_to_end(&client).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(done.expect("done").text(), "Hello, world");
    let call = &node.calls()[0];
    let p = call_payload(call);
    assert!(p.get("iicp_conf").is_some());
    assert!(
        !p.to_string().contains("PAYLOAD-MARKER"),
        "the payload travelled sealed"
    );
}

#[tokio::test]
async fn a_chunk_sealed_at_another_index_is_refused() {
    let key = CxKeyPair::generate(&mut OsRng);
    let node = cx_native_node(key.clone(), |s| if s == 1 { 2 } else { s }).await;
    let dir = fake_directory(
        vec![cx_entry(1, &node, &key, &[NATIVE_CX_V1, CX_STREAM_V1])],
        Tickets::Off,
    )
    .await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let (partials, out) =
        drain_task(client.submit_stream(chat_task()).await.expect("stream")).await;
    assert_eq!(partials, 1, "chunk 0 opened, chunk 1 refused");
    let e = out.expect_err("moved chunk");
    assert_eq!(e.code().as_str(), "IICP-CX-RESP-INVALID");
    assert_eq!(e.kind(), ErrorKind::Crypto);
}

#[tokio::test]
async fn a_keyed_node_without_cx_stream_is_asked_buffered() {
    let key = CxKeyPair::generate(&mut OsRng);
    let node = cx_native_node(key.clone(), |s| s).await;
    let dir = fake_directory(
        vec![cx_entry(1, &node, &key, &[NATIVE_CX_V1])],
        Tickets::Off,
    )
    .await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    // the buffered CALL carries no key 24; this fake then answers lifecycle frames,
    // which a buffered call refuses
    let err = client
        .submit_stream(chat_task())
        .await
        .expect_err("lifecycle frames to a buffered call");
    assert_eq!(node.calls()[0].task_id, None, "no key 24: asked buffered");
    assert_ne!(err.code(), &ErrorCode::from("success"));
}

// -------------------------------------------------------------------------------------
// Fallback and preference
// -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_node_that_does_not_stream_answers_as_one_delta() {
    let plain = fake_node(
        &node_id(1),
        None,
        vec![Reply::Result(
            json!({"choices": [{"message": {"role": "assistant", "content": "whole answer"}}]}),
        )],
    )
    .await;
    let (client, _dir) = client_for(vec![plain.entry()]).await;
    let mut s = client
        .chat_stream(request(), ChatOptions::default())
        .await
        .expect("stream");
    assert!(!s.is_streamed());
    match s.next().await {
        Some(Ok(ChatEvent::Delta(t))) => assert_eq!(t, "whole answer"),
        other => panic!("{other:?}"),
    }
    match s.next().await {
        Some(Ok(ChatEvent::Done(r))) => assert_eq!(r.text(), "whole answer"),
        other => panic!("{other:?}"),
    }
    assert!(s.next().await.is_none());
    assert_eq!(plain.count(), 1, "POST /v1/task, buffered");
}

#[tokio::test]
async fn discovery_prefers_nodes_that_stream() {
    let plain = fake_node(&node_id(1), None, vec![]).await;
    let streaming = http_stream_node(http_script(
        |_| Submit::Accept,
        |t, _| happy_events(t, &hello(), None),
    ))
    .await;
    let (client, _dir) = client_for(vec![plain.entry(), http_entry(2, &streaming)]).await;
    let s = client.submit_stream(chat_task()).await.expect("stream");
    assert_eq!(s.node_id(), node_id(2));
    assert!(s.is_streamed());
    drain_task(s).await.1.expect("completed");
    assert_eq!(plain.count(), 0);
}

// -------------------------------------------------------------------------------------
// Buffered native calls (regression of the strict correlation)
// -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_buffered_native_call_refuses_a_response_with_another_call_id() {
    let node = native_stream_node(native_script(|c| {
        let mut r = iicp_proto::message::Response::success(
            c,
            iicp_proto::message::Body::cbor(&json!({"hijacked": true})),
        );
        r.call_id = Some("another-call".into());
        r.legacy_call_id = Some("another-call".into());
        assert_eq!(r.session_id, c.session_id, "same session id");
        vec![send(r), NativeStep::Sleep(Duration::from_secs(3))]
    }))
    .await;
    // a plain (non-streaming) entry: the client submits buffered
    let mut entry = node_entry(&node_id(1), &format!("http://{}", node.addr), None, &[]);
    entry["transport_endpoint"] = json!(node.url());
    let (client, _dir) = client_for(vec![entry]).await;
    let err = client
        .submit(chat_task().with_timeout_ms(2000))
        .await
        .expect_err("a RESPONSE with another call id completes nothing");
    assert!(!err.to_string().contains("hijacked"));
}

#[tokio::test]
async fn a_buffered_native_call_refuses_a_lifecycle_partial() {
    let node = native_stream_node(native_script(|c| {
        let mut p = lifecycle_frame(c, 0, EventKind::Partial, Some(json!("x")));
        p.lifecycle.as_mut().expect("env").task_id = Some("t".into());
        vec![send(p), NativeStep::Sleep(Duration::from_secs(3))]
    }))
    .await;
    let mut entry = node_entry(&node_id(1), &format!("http://{}", node.addr), None, &[]);
    entry["transport_endpoint"] = json!(node.url());
    let (client, _dir) = client_for(vec![entry]).await;
    let err = client
        .submit(chat_task().with_timeout_ms(2000))
        .await
        .expect_err("partial to a buffered call");
    assert!(err.to_string().contains("lifecycle"), "{err}");
    assert!(!err.is_timeout(), "refused at once, not timed out: {err}");
}

#[tokio::test]
async fn cx_chunks_over_http_are_encrypted_events() {
    let key = CxKeyPair::generate(&mut OsRng);
    let k = key.clone();
    let node = http_stream_node(http_script(
        |_| Submit::Accept,
        move |t, body| {
            let intent = body["intent"].as_str().unwrap_or_default();
            let Some((plain, rk)) = open_cx(&k, &body["iicp_conf"], t, intent) else {
                return Vec::new();
            };
            assert_eq!(plain["messages"][0]["content"], "PAYLOAD-MARKER-7f3a");
            let mut steps = vec![HttpStep::Event(event(t, 0, EventKind::Accepted, None))];
            let chunks = hello();
            for (i, c) in chunks.iter().chain([&last_chunk()]).enumerate() {
                let seq = i as u64 + 1;
                let kind = if i == chunks.len() {
                    EventKind::Completed
                } else {
                    EventKind::Partial
                };
                let mut e = event(t, seq, kind, None);
                e.status = "encrypted".into();
                let text = serde_json::to_vec(c).expect("json");
                e.iicp_conf_resp = Some(
                    rk.seal_chunk(&mut OsRng, seq, &text)
                        .expect("seal")
                        .to_value(),
                );
                steps.push(HttpStep::Event(e));
            }
            steps
        },
    ))
    .await;
    let entry = stream_entry(&node_id(1), &node.url(), None, Some(&key), &[CX_STREAM_V1]);
    let dir = fake_directory(vec![entry], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let (text, done) = chat_to_end(&client).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(
        done.expect("done")
            .completion
            .usage
            .and_then(|u| u.total_tokens),
        Some(7)
    );
    let post = &node.hits("POST", "/v1/tasks/stream")[0];
    assert!(!post.json().to_string().contains("PAYLOAD-MARKER"));
    assert_eq!(post.json()["cx_response_encryption"], "required");
}

#[tokio::test]
async fn a_native_accepted_frame_is_taken_where_one_comes() {
    let node = native_stream_node(native_script(|c| {
        // `accepted` travels as status partial without a result, at sequence 0
        let mut out = vec![send(lifecycle_frame(c, 0, EventKind::Accepted, None))];
        out.push(send(lifecycle_frame(
            c,
            1,
            EventKind::Partial,
            Some(chunk("Hi")),
        )));
        out.push(send(lifecycle_frame(
            c,
            2,
            EventKind::Completed,
            Some(last_chunk()),
        )));
        out
    }))
    .await;
    let (client, _dir) = client_for(vec![native_entry(1, &node)]).await;
    let mut s = client.submit_stream(chat_task()).await.expect("stream");
    assert_eq!(
        s.next().await.expect("one").expect("ok"),
        TaskEvent::Accepted { sequence: 0 }
    );
    let (partials, end) = drain_task(s).await;
    assert_eq!(partials, 1);
    assert_eq!(end.expect("completed").sequence, Some(2));
}

#[tokio::test]
async fn chat_streams_tool_call_fragments_and_usage() {
    let node = http_stream_node(http_script(
        |_| Submit::Accept,
        |t, _| {
            let frags = vec![
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"ci"}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": "ty\":\"Bonn\"}"}}]}}]}),
            ];
            let last = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}});
            happy_events(t, &frags, Some(last))
        },
    ))
    .await;
    let (client, _dir) = client_for(vec![http_entry(1, &node)]).await;
    let mut s = client
        .chat_stream(request(), ChatOptions::default())
        .await
        .expect("stream");
    let (mut frags, mut usage, mut done) = (Vec::new(), None, None);
    while let Some(ev) = s.next().await {
        match ev.expect("ok") {
            ChatEvent::ToolCallDelta(d) => frags.push(d),
            ChatEvent::Usage(u) => usage = Some(u),
            ChatEvent::Done(r) => done = Some(r),
            ChatEvent::Delta(t) => panic!("no text expected: {t:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(frags.len(), 2);
    assert_eq!(frags[0].id.as_deref(), Some("call_1"));
    assert_eq!(usage.and_then(|u| u.total_tokens), Some(15));
    let done = done.expect("done");
    let choice = &done.completion.choices[0];
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    let call = &choice.message.extra["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Bonn\"}");
}
