//! Every case of the library against our own crates, in-process and over loopback: our
//! node (HTTP and native on one port, open and token auth modes), our embedded
//! directory, our client and node against scripted peers — and the runner reporting
//! FAIL against deliberately broken targets, so that the cases can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use iicp_conformance::cases::{self, Case, Ctx, Target};
use iicp_conformance::peers::Mesh;
use iicp_conformance::report::{CaseReport, Verdict};
use iicp_node::handler::{BoxFuture, Chunks};
use iicp_node::{
    AuthMode, HandlerError, Node, ServeHandle, ServeOptions, Task, TaskHandler, TaskOutput,
};
use iicp_testkit::scripted::{Canned, ScriptedBuilder};
use iicp_transport::listener::{Listener, ListenerConfig};
use serde_json::{json, Value};

const CHAT: &str = iicp_client::CHAT_INTENT;
const TOKEN: &str = "conformance-api-token-0123456789abcdef";
/// Native handshake/read timeouts of the node under test (NATIVE-TMO-*).
const NATIVE_TIMEOUT: Duration = Duration::from_secs(1);

fn chat_completion(text: &str) -> Value {
    json!({
        "object": "chat.completion",
        "model": "echo",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })
}

/// Echoes the last message; sleeps `sleep_ms` first when the payload says so (the
/// runner's `--slow-payload`).
async fn handle(task: Task) -> Result<TaskOutput, HandlerError> {
    if let Some(ms) = task.payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let text = task.payload["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(TaskOutput::new(chat_completion(&format!("echo: {text}"))))
}

/// [`handle`], and streaming: the echo in two chunks (the lifecycle cases).
struct Echoing;

impl TaskHandler for Echoing {
    fn handle(&self, task: Task) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        Box::pin(handle(task))
    }
    fn streams(&self) -> bool {
        true
    }
    fn handle_stream(
        &self,
        task: Task,
        chunks: Chunks,
    ) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        Box::pin(async move {
            let text = task.payload["messages"][0]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let chunk = |t: &str| json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]});
            chunks
                .send(chunk("echo: "), Some(1))
                .await
                .map_err(|_| HandlerError::backend("closed"))?;
            Ok(TaskOutput::new(chunk(&text)).with_tokens(2))
        })
    }
}

async fn our_node(mesh: &Mesh, auth: AuthMode) -> ServeHandle {
    let mut config = ListenerConfig::default();
    config.native.session.handshake_timeout = NATIVE_TIMEOUT;
    config.native.session.read_timeout = NATIVE_TIMEOUT;
    let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0).into(), config)
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let node = Node::builder()
        .endpoint(format!("http://127.0.0.1:{port}"))
        .intent(CHAT)
        .model("echo")
        .region("local")
        .max_concurrent(2)
        .auth(auth)
        .api_token(TOKEN)
        .directory_url(mesh.url())
        .build()
        .unwrap();
    node.serve(listener, Echoing, ServeOptions::default())
        .await
        .unwrap()
}

fn ctx_for(h: &ServeHandle, mesh: &Mesh) -> Ctx {
    let addr = h.local_addr();
    Ctx {
        node_http: Some(format!("http://{addr}")),
        node_native: Some(addr.to_string()),
        directory: Some(mesh.url()),
        native_timeouts: Some(NATIVE_TIMEOUT),
        slow_payload: Some(
            json!({"messages": [{"role": "user", "content": "slow"}], "sleep_ms": 2000}),
        ),
        case_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(10),
        ..Ctx::default()
    }
}

fn of(targets: &[Target]) -> Vec<Case> {
    cases::all()
        .into_iter()
        .filter(|c| targets.contains(&c.target))
        .collect()
}

fn ids(reports: &[CaseReport], label: &str) -> Vec<&'static str> {
    reports
        .iter()
        .filter(|r| r.verdict.label() == label)
        .map(|r| r.id)
        .collect()
}

fn show(reports: &[CaseReport]) {
    for r in reports {
        eprintln!("{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_node_and_directory_pass_in_open_mode() {
    let mesh = Mesh::start().await.unwrap();
    let h = our_node(&mesh, AuthMode::Open).await;
    let ctx = Arc::new(ctx_for(&h, &mesh));
    let cases = of(&[Target::NodeHttp, Target::NodeNative, Target::Directory]);
    let reports = cases::run(&cases, ctx).await;
    show(&reports);
    assert_eq!(reports.len(), cases.len(), "every case ran");
    assert_eq!(ids(&reports, "FAIL"), Vec::<&str>::new());
    // only the token-mode cases need what open mode cannot give
    assert_eq!(ids(&reports, "SKIP"), vec!["NODE-TASK-05", "SEC-AUTH-02"]);
    h.stop().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_node_passes_in_token_mode() {
    let mesh = Mesh::start().await.unwrap();
    let h = our_node(&mesh, AuthMode::Token).await;
    let mut ctx = ctx_for(&h, &mesh);
    ctx.node_token = Some(TOKEN.to_owned());
    let cases = of(&[Target::NodeHttp, Target::NodeNative]);
    let reports = cases::run(&cases, Arc::new(ctx)).await;
    show(&reports);
    assert_eq!(ids(&reports, "FAIL"), Vec::<&str>::new());
    assert_eq!(ids(&reports, "SKIP"), Vec::<&str>::new());
    h.stop().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_harness_cases_pass_against_our_client_and_node() {
    let cases = of(&[Target::Client]);
    let reports = cases::run(&cases, Arc::new(Ctx::default())).await;
    show(&reports);
    assert_eq!(reports.len(), cases.len());
    assert_eq!(ids(&reports, "FAIL"), Vec::<&str>::new());
    assert_eq!(ids(&reports, "SKIP"), Vec::<&str>::new());
}

fn verdict<'a>(reports: &'a [CaseReport], id: &str) -> &'a Verdict {
    &reports
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("{id} did not run"))
        .verdict
}

/// Runs the cases of `target` against `ctx` and asserts that each of `failing` fails.
async fn run_expecting_failures(ctx: Ctx, target: Target, failing: &[&str]) -> Vec<CaseReport> {
    let reports = cases::run(&of(&[target]), Arc::new(ctx)).await;
    show(&reports);
    for id in failing {
        assert!(
            verdict(&reports, id).is_fail(),
            "{id} must fail against the broken target"
        );
    }
    reports
}

/// A node that gets the shapes wrong: ref-py-style `completed` without metrics, HTML
/// health, no validation, no duplicate detection, no trace echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_fail_against_a_broken_node() {
    let broken = ScriptedBuilder::new("broken")
        .on(
            Method::POST,
            "/v1/task",
            Canned::Json(
                200,
                json!({"task_id": "not-the-one", "status": "completed", "result": {}}),
            ),
        )
        .on(
            Method::GET,
            "/iicp/health",
            Canned::Raw(200, "text/html", b"<h1>fine</h1>".to_vec()),
        )
        .start()
        .await
        .unwrap();
    let ctx = Ctx {
        node_http: Some(broken.url()),
        node_token: Some(TOKEN.to_owned()),
        ..Ctx::default()
    };
    let reports = run_expecting_failures(
        ctx,
        Target::NodeHttp,
        &[
            "NODE-HEALTH-01",
            "NODE-HEALTH-03",
            "NODE-TASK-02",
            "NODE-TASK-03",
            "NODE-TASK-04",
            "NODE-VAL-01",
            "NODE-VAL-02",
            "PROTO-URN-03",
            "NODE-TASK-05",
            "NODE-TASK-06",
            "NODE-DUP-01",
            "TRACE-02",
        ],
    )
    .await;
    // the 404 for /metrics is a skip, not a pass
    assert_eq!(verdict(&reports, "METRICS-01").label(), "SKIP");
}

/// A native endpoint that answers every read with the same empty RESPONSE frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_fail_against_a_garbage_native_endpoint() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = s.write_all(b"IICP\x01\x06\x00\x00\x00\x00\x00\x00").await;
                }
            });
        }
    });
    let ctx = Ctx {
        node_native: Some(addr.to_string()),
        request_timeout: Duration::from_secs(2),
        ..Ctx::default()
    };
    run_expecting_failures(
        ctx,
        Target::NodeNative,
        &[
            "NATIVE-FRAME-BASE-01",
            "NATIVE-MAL-01",
            "NATIVE-MAL-04",
            "NATIVE-CALL-01",
        ],
    )
    .await;
    server.abort();
}

/// A native node whose lifecycle streams drift: the first RESPONSE names another call
/// id, the terminal skips a sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_cases_fail_against_a_drifting_stream() {
    use iicp_proto::frame::{Decoded, Frame};
    use iicp_proto::message::{Ack, Body, Channel, Lifecycle, Message, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Ok(Decoded::Complete { frame, consumed }) =
                        Frame::decode(&buf, 1 << 20)
                    {
                        let msg = Message::decode(&frame.header, frame.payload, Channel::Task);
                        buf.drain(..consumed);
                        let mut out = Vec::new();
                        match msg {
                            Ok(Message::Init(_)) => {
                                Message::Ack(Ack::default()).encode(&mut out).unwrap();
                            }
                            Ok(Message::Call(call)) => {
                                for (seq, last, call_id) in
                                    [(0, false, "someone-else"), (2, true, "")]
                                {
                                    let r = Response {
                                        session_id: call.session_id.clone(),
                                        call_id: Some(if call_id.is_empty() {
                                            call.call_id.clone().unwrap_or_default()
                                        } else {
                                            call_id.to_owned()
                                        }),
                                        status: Some(
                                            if last { "success" } else { "partial" }.into(),
                                        ),
                                        result: Some(Body::cbor(&json!({"x": seq}))),
                                        is_final: Some(last),
                                        lifecycle: Some(Lifecycle {
                                            task_id: call.task_id.clone(),
                                            sequence: Some(seq),
                                            event: Some(
                                                if last { "completed" } else { "partial" }.into(),
                                            ),
                                            is_final: Some(last),
                                            receipt: None,
                                        }),
                                        ..Response::default()
                                    };
                                    Message::Response(r).encode(&mut out).unwrap();
                                }
                            }
                            _ => {}
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let ctx = Ctx {
        node_native: Some(addr.to_string()),
        request_timeout: Duration::from_secs(2),
        ..Ctx::default()
    };
    run_expecting_failures(
        ctx,
        Target::NodeNative,
        &["SERVICE-LIFECYCLE-14", "SERVICE-LIFECYCLE-22"],
    )
    .await;
    server.abort();
}

/// SDK-05-SPEC fails for a client that accepts any certificate (only expressible in
/// debug builds, where the transport keeps that switch for tests).
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_case_fails_for_a_client_without_verification() {
    use iicp_conformance::cases::sdk::{tls, tls_refused};
    use iicp_transport::http::client::{HttpClient, HttpClientConfig};
    let server = tls::SelfSigned::start().await.unwrap();
    let mut cfg = HttpClientConfig::default();
    cfg.danger_accept_invalid_certs = true;
    let c = iicp_client::Client::builder()
        .directory_url(server.base())
        .allow_private_endpoints(true)
        .route_discovery(iicp_client::RouteDiscovery::Legacy)
        .http_client(HttpClient::new(cfg).unwrap())
        .build()
        .unwrap();
    let out = tls_refused(&c, &server).await;
    assert!(out.is_err(), "the case must fail: {out:?}");
    assert_eq!(server.served(), 1);
}
