//! `POST /v1/task`, `/iicp/health`, `/metrics` and CORS over real HTTP on 127.0.0.1:
//! the success shape and every input error path.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn success_shape_and_trace_echo() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let c = http();
    let id = uuid();
    let reply = c
        .post_json(url(h.local_addr(), "/v1/task"), &task_body(&id, "hi"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("send");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["x-iicp-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
    let body = json_of(&reply);
    assert_eq!(body["task_id"], id.as_str());
    assert_eq!(body["status"], "success");
    assert_eq!(body["generated_by_ai"], true);
    assert_eq!(body["model_used"], "stub-model");
    assert_eq!(
        body["result"]["choices"][0]["message"]["content"],
        "echo: hi"
    );
    assert_eq!(
        body["metrics"]["tokens_used"], 5,
        "from result.usage.total_tokens"
    );
    assert!(body["metrics"]["latency_ms"].is_u64());
    assert!(body.get("error").is_none());
    // the client's parser accepts it
    let parsed = iicp_proto::task::TaskResponse::parse(200, &reply.body).expect("parse");
    assert_eq!(
        parsed.chat_completion().and_then(|c| c.text()).as_deref(),
        Some("echo: hi")
    );
    // a trace id is generated when none is sent
    let reply = post(&c, h.local_addr(), &task_body(&uuid(), "x")).await;
    let t = reply.headers["x-iicp-trace-id"].to_str().expect("ascii");
    assert_eq!(t.len(), 32);
    assert_eq!(echo.count(), 2);
    h.stop().await;
}

async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn input_errors() {
    let echo = Echo::default();
    let node = builder().max_body_bytes(1024 * 1024).build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();
    let send_raw = |ct: &'static str, body: Vec<u8>| {
        let c = c.clone();
        async move {
            c.request(Method::POST, url(addr, "/v1/task"))
                .body(ct, body)
                .send()
                .await
                .expect("send")
        }
    };
    // truncated / bad JSON
    let r = send_raw(
        "application/json",
        br#"{"task_id": "t1", "intent": "#.to_vec(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (422, "validation_error")
    );
    // wrong content type
    let r = send_raw(
        "text/plain",
        serde_json::to_vec(&task_body("t2", "x")).expect("json"),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (415, "unsupported_media_type")
    );
    // deep nesting
    let deep = format!(
        r#"{{"task_id":"t3","intent":"{CHAT}","payload":{{"x":{}1{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = send_raw("application/json", deep.into_bytes()).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (422, "validation_error")
    );
    // invalid intent URN
    let t4 = uuid();
    let mut b = task_body(&t4, "x");
    b["intent"] = json!("urn:iicp:intent:LLM:Chat:v1");
    let r = post(&c, addr, &b).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (422, "validation_error")
    );
    assert_eq!(json_of(&r)["task_id"], t4.as_str());
    // valid but unknown intent
    b["intent"] = json!("urn:iicp:intent:llm:embedding:v1");
    let r = post(&c, addr, &b).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (422, "unknown_intent")
    );
    // missing ids
    for missing in ["task_id", "intent"] {
        let mut b = task_body(&uuid(), "x");
        b.as_object_mut().expect("obj").remove(missing);
        let r = post(&c, addr, &b).await;
        assert_eq!(
            (r.status.as_u16(), code_of(&r).as_str()),
            (422, "validation_error"),
            "{missing}"
        );
        assert!(json_of(&r)["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(missing));
    }
    let mut b = task_body("", "x");
    b["task_id"] = json!("");
    let r = post(&c, addr, &b).await;
    assert_eq!(r.status, 422);
    // payload missing / not an object
    let mut b = task_body(&uuid(), "x");
    b.as_object_mut().expect("obj").remove("payload");
    assert_eq!(post(&c, addr, &b).await.status, 422);
    b["payload"] = json!("text");
    assert_eq!(post(&c, addr, &b).await.status, 422);
    // timeout_ms out of range (both ends)
    for t in [0, 99, 300_001] {
        let mut b = task_body(&uuid(), "x");
        b["constraints"]["timeout_ms"] = json!(t);
        let r = post(&c, addr, &b).await;
        assert_eq!(
            (r.status.as_u16(), code_of(&r).as_str()),
            (422, "validation_error"),
            "{t}"
        );
    }
    // required profile we do not support
    let mut b = task_body(&uuid(), "x");
    b["constraints"]["required_profiles"] = json!(["urn:iicp:profile:service-lifecycle:v1"]);
    let r = post(&c, addr, &b).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (422, "unsupported_profile")
    );
    // lenient: unknown members, qos_class, a string max_tokens, no constraints (a
    // string timeout_ms is refused: tests/refusals.rs)
    let b = json!({
        "task_id": uuid(), "intent": CHAT,
        "payload": {"messages": [{"role": "user", "content": "ok"}]},
        "constraints": {"qos_class": "best_effort", "timeout_ms": 5000, "max_tokens": "10", "model": "m"},
        "cip": {"x": 1}, "nonce": "n", "source_node_id": "peer", "billing": {}
    });
    let r = post(&c, addr, &b).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // a handler error maps to 502 backend_error
    let mut b = task_body(&uuid(), "x");
    b["payload"]["fail"] = json!(true);
    let r = post(&c, addr, &b).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (502, "backend_error")
    );
    assert_eq!(json_of(&r)["status"], "error");
    // oversize body announced by Content-Length: 413 before the body is read
    let head = format!(
        "POST /v1/task HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        20 * 1024 * 1024
    );
    let (status, body) = raw(addr, &head, b"{\"task_id\":").await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
    // the node is still fine
    assert_eq!(
        post(&c, addr, &task_body(&uuid(), "still")).await.status,
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn health_metrics_cors() {
    let echo = Echo::default();
    let node = builder()
        .node_id("3fa85f64-5717-4562-b3fc-2c963f66afa6")
        .model("llava:7b")
        .max_concurrent(3)
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();
    let r = c
        .get(url(addr, "/iicp/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let b = json_of(&r);
    assert_eq!(b["status"], "ok");
    assert_eq!(b["node_id"], "3fa85f64-5717-4562-b3fc-2c963f66afa6");
    assert_eq!(b["region"], "test");
    assert_eq!(b["load"], 0.0);
    assert_eq!(b["active_jobs"], 0);
    assert_eq!(b["max_concurrent"], 3);
    assert_eq!(b["available"], true);
    assert_eq!(b["model"], "stub-model");
    assert_eq!(b["models"], json!(["stub-model", "llava:7b"]));
    assert_eq!(b["intent"], CHAT);

    assert_eq!(post(&c, addr, &task_body(&uuid(), "a")).await.status, 200);
    let mut bad = task_body(&uuid(), "a");
    bad["payload"]["fail"] = json!(1);
    assert_eq!(post(&c, addr, &bad).await.status, 502);
    let r = c.get(url(addr, "/metrics")).send().await.expect("metrics");
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8_lossy(&r.body);
    for needle in [
        "# TYPE iicp_tasks_total counter",
        &format!("iicp_tasks_total{{status=\"success\",intent=\"{CHAT}\",qos=\"interactive\"}} 1"),
        &format!("iicp_tasks_total{{status=\"error\",intent=\"{CHAT}\",qos=\"interactive\"}} 1"),
        "# TYPE iicp_task_latency_ms histogram",
        &format!("iicp_task_latency_ms_count{{intent=\"{CHAT}\",qos=\"interactive\"}} 2"),
        &format!("iicp_tokens_used_total{{intent=\"{CHAT}\"}} 5"),
        "iicp_tasks_in_flight 0",
        "iicp_peers_active 0",
        "# TYPE iicp_heartbeat_failures_total counter",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("messages"), "no payload in metrics");

    // CORS preflight on any path
    for path in ["/v1/task", "/iicp/health", "/anything"] {
        let r = c
            .request(Method::OPTIONS, url(addr, path))
            .send()
            .await
            .expect("options");
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(r.headers["access-control-allow-origin"], "*");
        assert_eq!(r.headers["access-control-max-age"], "86400");
        let methods = r.headers["access-control-allow-methods"]
            .to_str()
            .expect("m");
        assert!(methods.contains("POST") && methods.contains("GET"));
        let allowed = r.headers["access-control-allow-headers"]
            .to_str()
            .expect("h");
        assert!(allowed.contains("Content-Type") && allowed.contains("Authorization"));
    }
    let r = c.get(url(addr, "/nope")).send().await.expect("404");
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (404, "not_found")
    );
    let r = c.get(url(addr, "/v1/task")).send().await.expect("405");
    assert_eq!(r.status, 405);
    h.stop().await;
}
