//! CALL/RESPONSE bodies, chat payloads and the health body (PROTOCOL.md §4, §5.2,
//! §19 T2, T7, T12, T13), checked against the vendored captures and fixtures.

// Tests may unwrap (DESIGN §3); the workspace lint targets library code.
#![allow(clippy::unwrap_used)]

use iicp_proto::error::ErrorCode;
use iicp_proto::ids::TaskId;
use iicp_proto::intent::Intent;
use iicp_proto::task::{
    ChatCompletion, ChatError, ChatMessage, ChatRequest, Constraints, HealthStatus, Qos,
    TaskRequest, TaskRequestError, TaskResponse, TaskStatus,
};
use serde_json::{json, Value};

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn exchanges(rel: &str) -> Vec<Value> {
    serde_json::from_str(&data(&format!("captures/{rel}"))).unwrap()
}

fn all_task_exchanges() -> Vec<Value> {
    let mut v = exchanges("http-inmem-dir-cx/task.json");
    v.extend(exchanges("http-mariadb-dir/task.json"));
    v
}

#[test]
fn every_captured_call_parses_and_validates() {
    let all = all_task_exchanges();
    assert!(all.len() >= 10);
    for ex in &all {
        let src = ex["source"].as_str().unwrap();
        let body = ex["request_body"].as_str().unwrap();
        let req: TaskRequest = serde_json::from_str(body).unwrap_or_else(|e| panic!("{src}: {e}"));
        // every SDK client sends a UUID v4; the one capture without (`t-rs-1`) was typed
        // by hand with curl, and a node refuses its id (ADR 0010)
        let intent = if req.task_id.is_hyphenated_uuid_v4() {
            req.validate().unwrap_or_else(|e| panic!("{src}: {e}"))
        } else {
            assert_eq!(
                req.validate(),
                Err(TaskRequestError::TaskIdNotUuidV4),
                "{src}"
            );
            req.validate_body().unwrap_or_else(|e| panic!("{src}: {e}"))
        };
        assert_eq!(intent.as_str(), "urn:iicp:intent:llm:chat:v1");
        if req.is_encrypted() {
            assert_eq!(req.cx_response_encryption.as_deref(), Some("required"));
            assert!(req.payload.is_none());
        } else {
            let chat: ChatRequest = serde_json::from_value(req.payload.clone().unwrap()).unwrap();
            chat.validate().unwrap();
        }
        // Re-serialising keeps every member the peer sent (modulo nulls).
        let raw: Value = serde_json::from_str(body).unwrap();
        let again = serde_json::to_value(&req).unwrap();
        assert_eq!(again, raw, "{src}");
    }
}

#[test]
fn every_captured_response_parses() {
    for ex in all_task_exchanges() {
        let src = ex["source"].as_str().unwrap();
        let status = ex["status"].as_u64().unwrap() as u16;
        let body = ex["response_body"].as_str().unwrap();
        let req: Value = serde_json::from_str(ex["request_body"].as_str().unwrap()).unwrap();
        let resp =
            TaskResponse::parse(status, body.as_bytes()).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(
            resp.task_id.as_str(),
            req["task_id"].as_str().unwrap(),
            "{src}"
        );
        match resp.status {
            TaskStatus::Encrypted => assert!(resp.iicp_conf_resp.is_some()),
            TaskStatus::Success => {
                let chat = resp.chat_completion().expect("chat completion");
                assert!(chat.text().unwrap().starts_with("FAKE-REPLY"), "{src}");
                assert!(chat.usage.unwrap().total().unwrap() > 0);
            }
            other => panic!("{src}: unexpected {other:?}"),
        }
        // And plain serde gives the same (captures use `completed`/`success`).
        let direct: TaskResponse = serde_json::from_str(body).unwrap();
        assert_eq!(direct, resp, "{src}");
    }
}

#[test]
fn task_sample_fixtures() {
    let valid: TaskRequest = serde_json::from_str(&data("task-valid.json")).unwrap();
    assert!(valid.task_id.is_uuid_v4());
    assert_eq!(valid.constraints.timeout_ms, Some(5000));
    assert_eq!(valid.constraints.qos, Some(Qos::Interactive));
    assert_eq!(
        valid
            .auth
            .as_ref()
            .unwrap()
            .node_token
            .as_ref()
            .unwrap()
            .expose(),
        "iicp_tok_example"
    );
    assert_eq!(
        valid.trace.as_ref().unwrap().trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    // Minimal output equals the schema sample exactly.
    let raw: Value = serde_json::from_str(&data("task-valid.json")).unwrap();
    assert_eq!(serde_json::to_value(&valid).unwrap(), raw);

    let batch: TaskRequest = serde_json::from_str(&data("task-batch.json")).unwrap();
    assert_eq!(batch.constraints.qos, Some(Qos::Batch));
    assert_eq!(batch.constraints.region.as_deref(), Some("eu-central"));
    batch.validate().unwrap();
}

#[test]
fn lenient_call_input_t2_t13() {
    let req: TaskRequest = serde_json::from_value(json!({
        "task_id": "t-rs-1",
        "intent": "urn:iicp:intent:llm:chat:v1",
        "payload": {"messages": [{"role": "user", "content": "hi"}]},
        "constraints": {"qos_class": "best_effort", "max_tokens": 64, "model": "m",
                        "priority": "high", "consensus": "majority_of_3",
                        "required_profiles": ["urn:iicp:profile:service-lifecycle:v1"],
                        "vendor_knob": 7},
        "auth": {"token": "tok"},
        "source_node_id": "n1",
        "nonce": "abc",
        "cip": {"mode": "x"},
        "identity": "did:example:1"
    }))
    .unwrap();
    assert_eq!(req.constraints.qos, Some(Qos::BestEffort));
    assert_eq!(req.constraints.max_tokens, Some(64));
    assert_eq!(req.constraints.extra.get("vendor_knob"), Some(&json!(7)));
    assert_eq!(
        req.auth
            .as_ref()
            .unwrap()
            .node_token
            .as_ref()
            .unwrap()
            .expose(),
        "tok"
    );
    assert!(req.extra.contains_key("cip"));
    assert!(req.extra.contains_key("identity"));
    assert!(req.validate_body().is_ok());
    assert_eq!(req.validate(), Err(TaskRequestError::TaskIdNotUuidV4));
    // Output: spec spellings.
    let out = serde_json::to_value(&req).unwrap();
    assert_eq!(out["constraints"]["qos"], "best-effort");
    assert!(out["constraints"].get("qos_class").is_none());
    assert_eq!(out["auth"]["node_token"], "tok");

    // Both spellings at once (T13 recommends sending both): `qos` wins, no error.
    let c: Constraints =
        serde_json::from_value(json!({"qos": "realtime", "qos_class": "batch"})).unwrap();
    assert_eq!(c.qos, Some(Qos::Realtime));
    // Both auth spellings at once.
    let req2: TaskRequest = serde_json::from_value(json!({
        "task_id": "a", "intent": "urn:iicp:intent:llm:chat:v1", "payload": {},
        "auth": {"node_token": "n", "token": "t"}
    }))
    .unwrap();
    assert_eq!(req2.auth.unwrap().node_token.unwrap().expose(), "n");
    // Unknown qos is a parse error (→ 422).
    assert!(serde_json::from_value::<Constraints>(json!({"qos": "fast"})).is_err());
}

/// The CALL parser's rules for member order, unknown and repeated members, nulls,
/// missing members and wrong shapes.
#[test]
fn call_parsing_rules() {
    let parse = |text: &str| serde_json::from_str::<TaskRequest>(text);
    let err = |text: &str| parse(text).unwrap_err().to_string();
    let i = "urn:iicp:intent:llm:chat:v1";

    // from text and from a value alike; members in any order; unknown ones kept,
    // escaped names unescaped, the last of two same-named unknown members kept
    let text = format!(
        r#"{{"x\u0079": 1, "payload": {{"messages": []}}, "intent": "{i}", "task_id": "t",
            "cip": 1, "cip": [2], "nonce": "n", "trace": {{"trace_id": "ab"}}}}"#
    );
    let req = parse(&text).unwrap();
    assert_eq!(req.task_id.as_str(), "t");
    assert_eq!(req.intent, i);
    assert_eq!(req.payload, Some(json!({"messages": []})));
    assert_eq!(req.extra.get("xy"), Some(&json!(1)));
    assert_eq!(req.extra.get("cip"), Some(&json!([2])));
    assert_eq!(req.nonce.as_deref(), Some("n"));
    assert_eq!(req.trace.as_ref().unwrap().trace_id.as_deref(), Some("ab"));
    let from_value: TaskRequest = serde_json::from_str::<Value>(&text)
        .and_then(serde_json::from_value)
        .unwrap();
    assert!(from_value == req);
    // and it writes back what it read
    let again: TaskRequest = serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
    assert!(again == req);

    // optional members sent as null are absent
    let req = parse(&format!(
        r#"{{"task_id": "t", "intent": "{i}", "payload": null, "iicp_conf": null,
            "auth": null, "trace": null, "cx_response_encryption": null,
            "source_node_id": null, "nonce": null}}"#
    ))
    .unwrap();
    assert!(req.payload.is_none() && req.iicp_conf.is_none() && req.auth.is_none());
    assert!(req.trace.is_none() && req.cx_response_encryption.is_none());
    assert!(req.source_node_id.is_none() && req.nonce.is_none() && req.extra.is_empty());
    assert!(req.constraints.is_empty());

    // required members
    assert!(err(&format!(r#"{{"intent": "{i}"}}"#)).contains("missing field `task_id`"));
    assert!(err(r#"{"task_id": "t"}"#).contains("missing field `intent`"));
    // a known member twice is an error, also when one of the two is null
    for (member, first, second) in [
        ("task_id", r#""a""#, r#""b""#),
        ("intent", "null", r#""x""#),
        ("payload", "null", "{}"),
        ("constraints", "{}", "{}"),
        ("nonce", r#""n""#, "null"),
    ] {
        let text = format!(
            r#"{{"task_id": "t", "intent": "{i}", "{member}": {first}, "{member}": {second}}}"#
        );
        assert!(
            err(&text).contains(&format!("duplicate field `{member}`")),
            "{member}: {}",
            err(&text)
        );
    }
    // wrong types and shapes are errors, not panics or silent drops
    assert!(parse(r#"["t", "i"]"#).is_err());
    assert!(parse(r#""t""#).is_err());
    assert!(parse(&format!(r#"{{"task_id": 7, "intent": "{i}"}}"#)).is_err());
    assert!(parse(&format!(
        r#"{{"task_id": "t", "intent": "{i}", "constraints": null}}"#
    ))
    .is_err());
    assert!(parse(&format!(
        r#"{{"task_id": "t", "intent": "{i}", "nonce": 5}}"#
    ))
    .is_err());
    assert!(parse(&format!(
        r#"{{"task_id": "t", "intent": "{i}", "payload": {{"a": }}}}"#
    ))
    .is_err());
    assert!(parse(&format!(r#"{{"task_id": "t", "intent": "{i}"}} trailing"#)).is_err());
}

#[test]
fn validate_errors() {
    let intent: Intent = "urn:iicp:intent:llm:chat:v1".parse().unwrap();
    let id = TaskId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
    let mut req = TaskRequest::new(id.clone(), &intent, json!({"messages": []}));
    assert!(req.validate().is_ok());
    for (t, ok) in [(99, false), (100, true), (300_000, true), (300_001, false)] {
        req.constraints.timeout_ms = Some(t);
        assert_eq!(req.validate().is_ok(), ok, "{t}");
    }
    req.constraints.timeout_ms = None;
    req.iicp_conf = Some(json!({"version": 1}));
    assert_eq!(
        req.validate().unwrap_err(),
        TaskRequestError::PayloadAndEnvelope
    );
    req.payload = None;
    assert!(req.validate().is_ok());
    req.iicp_conf = None;
    assert_eq!(
        req.validate().unwrap_err(),
        TaskRequestError::MissingPayload
    );
    req.payload = Some(json!("text"));
    assert_eq!(
        req.validate().unwrap_err(),
        TaskRequestError::PayloadNotObject
    );
    req.payload = Some(json!({}));
    req.intent = "urn:iicp:intent:llm:chat".into();
    assert!(matches!(
        req.validate().unwrap_err(),
        TaskRequestError::Intent(_)
    ));
    assert_eq!(
        req.validate().unwrap_err().code(),
        ErrorCode::ValidationError
    );
    assert_eq!(req.constraints.effective_timeout_ms(30_000), 30_000);
    req.constraints.timeout_ms = Some(10);
    assert_eq!(req.constraints.effective_timeout_ms(30_000), 100);
    // Missing task_id or intent fails parsing.
    assert!(serde_json::from_value::<TaskRequest>(json!({"intent": "x", "payload": {}})).is_err());
    assert!(serde_json::from_value::<TaskRequest>(json!({"task_id": "x", "payload": {}})).is_err());
}

#[test]
fn outbound_call_is_minimal_and_debug_is_redacted() {
    let intent: Intent = "urn:iicp:intent:llm:chat:v1".parse().unwrap();
    let id = TaskId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
    let mut req = TaskRequest::new(
        id,
        &intent,
        json!({"messages": [{"role": "user", "content": "top secret prompt"}]}),
    );
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({"task_id": "550e8400-e29b-41d4-a716-446655440000",
               "intent": "urn:iicp:intent:llm:chat:v1",
               "payload": {"messages": [{"role": "user", "content": "top secret prompt"}]}})
    );
    req.auth = Some(serde_json::from_value(json!({"node_token": "tok_supersecret"})).unwrap());
    let dbg = format!("{req:?}");
    assert!(!dbg.contains("top secret"), "{dbg}");
    assert!(!dbg.contains("tok_supersecret"), "{dbg}");
    assert!(dbg.contains("550e8400"));
}

#[test]
fn response_wire_reality_shapes() {
    // ref-py spread result: handler dict at the top level.
    let spread = TaskResponse::parse(
        200,
        br#"{"task_id":"a","status":"completed","generated_by_ai":true,
             "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
             "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
    )
    .unwrap();
    assert_eq!(spread.status, TaskStatus::Success);
    assert_eq!(spread.generated_by_ai, Some(true));
    assert!(spread.extra.is_empty());
    assert_eq!(
        spread.chat_completion().unwrap().text().as_deref(),
        Some("hi")
    );

    // ref-py handler error in a 200.
    let e = TaskResponse::parse(
        200,
        br#"{"task_id":"a","status":"completed","generated_by_ai":true,"error_code":500,"error_message":"boom"}"#,
    )
    .unwrap_err();
    assert_eq!(e.message, "boom");
    assert_eq!(e.http_status, Some(200));

    // ref-rs handler error: 500 with code-less error.
    let e = TaskResponse::parse(
        500,
        br#"{"task_id":"a","status":"error","error":{"message":"handler failed"},"generated_by_ai":false}"#,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BackendError);
    assert_eq!(e.message, "handler failed");

    // Spec error in a 200, with and without code; timeouts.
    let e = TaskResponse::parse(
        200,
        br#"{"task_id":"a","status":"error","error":{"code":"unknown_intent","message":"no"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownIntent);
    let e = TaskResponse::parse(200, br#"{"task_id":"a","status":"timeout"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::TaskTimeout);
    let e = TaskResponse::parse(200, br#"{"task_id":"a","status":"failed"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BackendError);

    // Non-2xx spec errors and HTML.
    let e = TaskResponse::parse(
        429,
        br#"{"error":{"code":"capacity_exceeded","message":"busy","qos_class":"batch","retry_after_ms":100}}"#,
    )
    .unwrap_err();
    assert!(e.is_node_switch());
    let e = TaskResponse::parse(
        500,
        b"<html><body><p>Internal Server Error</p></body></html>",
    )
    .unwrap_err();
    assert_eq!(e.message, "Internal Server Error");

    // Garbage 2xx bodies.
    for body in [
        &b"not json"[..],
        b"[]",
        br#"{"status":"success"}"#,
        br#"{"task_id":"a","status":"weird"}"#,
        br#"{"task_id":"a","status":"encrypted"}"#,
    ] {
        let e = TaskResponse::parse(200, body).unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::BackendError,
            "{}",
            String::from_utf8_lossy(body)
        );
    }

    // Spec success with metrics; float latency is rounded.
    let ok = TaskResponse::parse(
        200,
        br#"{"task_id":"a","status":"success","result":{"x":1},"metrics":{"latency_ms":320.4,"tokens_used":120},"model_used":"m","error":null}"#,
    )
    .unwrap();
    assert_eq!(ok.metrics.as_ref().unwrap().latency_ms, Some(320));
    assert_eq!(ok.model_used.as_deref(), Some("m"));
    assert!(ok.error.is_none());
}

#[test]
fn failure_response_carries_error_object() {
    let id = TaskId::parse_lenient("call-1").unwrap();
    let body = iicp_proto::error::ErrorBody::capacity_exceeded("interactive", 500);
    let resp = TaskResponse::failure(id, &body);
    let v = serde_json::to_value(&resp).unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["code"], "capacity_exceeded");
    assert_eq!(v["error"]["retry_after_ms"], 500);
    let timeout = TaskResponse::failure(
        TaskId::parse_lenient("x").unwrap(),
        &iicp_proto::error::ErrorBody::new(ErrorCode::TaskTimeout, "slow"),
    );
    assert_eq!(timeout.status, TaskStatus::Timeout);
}

#[test]
fn chat_payload_cases() {
    let doc: Value = serde_json::from_str(&data("intent-payloads-v1.json")).unwrap();
    let mut seen = 0;
    for case in doc["cases"].as_array().unwrap() {
        if case["intent"] != "urn:iicp:intent:llm:chat:v1" {
            continue;
        }
        seen += 1;
        let parsed = serde_json::from_value::<ChatRequest>(case["payload"].clone())
            .map_err(|_| ())
            .and_then(|c| c.validate().map_err(|_| ()));
        assert_eq!(
            parsed.is_ok(),
            case["valid"].as_bool().unwrap(),
            "{}",
            case["id"]
        );
    }
    assert_eq!(seen, 2);
}

#[test]
fn chat_schema_required_members() {
    let input: Value = serde_json::from_str(&data("llm-chat-v1-input.json")).unwrap();
    assert_eq!(input["required"], json!(["messages"]));
    assert!(serde_json::from_value::<ChatRequest>(json!({})).is_err());
    let output: Value = serde_json::from_str(&data("llm-chat-v1-output.json")).unwrap();
    assert_eq!(output["required"], json!(["choices"]));
    assert!(serde_json::from_value::<ChatCompletion>(json!({"usage": {}})).is_err());
    let min: ChatCompletion = serde_json::from_value(
        json!({"choices": [{"message": {"role": "assistant", "content": "x"}}]}),
    )
    .unwrap();
    assert_eq!(min.text().as_deref(), Some("x"));
    assert!(serde_json::from_value::<ChatCompletion>(json!({"choices": [{}]})).is_err());
}

#[test]
fn chat_request_details() {
    let req: ChatRequest = serde_json::from_value(json!({
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "data:"}}], "name": "bob"},
            {"role": "assistant", "content": null, "tool_calls": []}
        ],
        "model": "m", "temperature": 0.5, "max_tokens": 10, "stop": "END", "stream": false
    }))
    .unwrap();
    req.validate().unwrap();
    assert_eq!(req.stop, Some(vec!["END".to_owned()]));
    assert_eq!(req.messages[1].text().as_deref(), Some("a"));
    assert_eq!(req.messages[1].name.as_deref(), Some("bob"));
    assert!(req.extra.contains_key("stream"));
    assert!(req.messages[2].extra.contains_key("tool_calls"));

    let mut bad = ChatRequest::new(vec![ChatMessage::new("wizard", "x")]);
    assert_eq!(bad.validate(), Err(ChatError::InvalidRole { index: 0 }));
    bad.messages = vec![];
    assert_eq!(bad.validate(), Err(ChatError::NoMessages));
    bad.messages = vec![ChatMessage::new("user", "x")];
    bad.temperature = Some(2.5);
    assert_eq!(bad.validate(), Err(ChatError::InvalidTemperature));
    bad.temperature = None;
    bad.max_tokens = Some(0);
    assert_eq!(bad.validate(), Err(ChatError::InvalidMaxTokens));
    let mut user_null = ChatRequest::new(vec![ChatMessage::new("user", "x")]);
    user_null.messages[0].content = Value::Null;
    assert_eq!(
        user_null.validate(),
        Err(ChatError::InvalidContent { index: 0 })
    );
}

#[test]
fn captured_backend_completion_parses() {
    // The OpenAI-shaped results inside captured RESPONSEs round-trip through ChatCompletion.
    for ex in exchanges("http-mariadb-dir/task.json") {
        let body: Value = serde_json::from_str(ex["response_body"].as_str().unwrap()).unwrap();
        let result = body["result"].clone();
        let chat: ChatCompletion = serde_json::from_value(result.clone()).unwrap();
        assert_eq!(chat.object.as_deref(), Some("chat.completion"));
        assert_eq!(chat.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(serde_json::to_value(&chat).unwrap(), result);
    }
}

#[test]
fn health_bodies() {
    let mut nodes = 0;
    for dir in ["http-inmem-dir-cx", "http-mariadb-dir"] {
        for ex in exchanges(&format!("{dir}/health.json")) {
            let body = ex["response_body"].as_str().unwrap();
            let h: HealthStatus = serde_json::from_str(body).unwrap();
            let raw: Value = serde_json::from_str(body).unwrap();
            if raw.get("node_id").is_some() {
                nodes += 1;
                assert!(h.is_live());
                assert_eq!(h.load, Some(0.0));
                assert_eq!(h.active_jobs, Some(0));
                assert_eq!(h.models, vec!["fake-model".to_owned()]);
                assert_eq!(serde_json::to_value(&h).unwrap(), raw);
            } else {
                // The directory's own health (`{"ok":true,"version":…}`) still parses.
                assert!(!h.is_live());
                assert!(h.extra.contains_key("ok"));
            }
        }
    }
    assert!(nodes >= 6);
}

#[test]
fn timeout_ms_of_the_wrong_type_is_kept_and_refused() {
    let base = json!({
        "task_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "intent": "urn:iicp:intent:llm:chat:v1",
        "payload": {},
    });
    for bad in [
        json!("abc"),
        json!("5000"),
        json!(true),
        json!([1]),
        json!({}),
        json!(-1),
        json!(1.5),
    ] {
        let mut b = base.clone();
        b["constraints"] = json!({"timeout_ms": bad.clone(), "qos": "batch"});
        let req: TaskRequest = serde_json::from_value(b.clone()).expect("parses");
        assert_eq!(req.constraints.timeout_ms, None, "{bad}");
        assert_eq!(
            req.validate(),
            Err(TaskRequestError::TimeoutNotInteger),
            "{bad}"
        );
        // kept as sent: re-serialising gives the same document
        assert_eq!(serde_json::to_value(&req).expect("json"), b, "{bad}");
    }
    for (ok, ms) in [
        (json!(5000), Some(5000)),
        (json!(5000.0), Some(5000)),
        (Value::Null, None),
    ] {
        let mut b = base.clone();
        b["constraints"] = json!({"timeout_ms": ok.clone()});
        let req: TaskRequest = serde_json::from_value(b).expect("parses");
        assert_eq!(req.constraints.timeout_ms, ms, "{ok}");
        assert!(req.validate().is_ok(), "{ok}");
    }
}
