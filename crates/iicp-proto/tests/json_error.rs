//! Error codes and error bodies (PROTOCOL.md §6, §7.1, §7.3; DESIGN §4.8/§4.9), checked
//! against the error bodies in the vendored interop captures.

// Tests may unwrap (DESIGN §3); the workspace lint targets library code.
#![allow(clippy::unwrap_used)]

use iicp_proto::error::{is_retryable_status, ErrorBody, ErrorCode, MAX_MESSAGE_CHARS};
use serde_json::{json, Value};

fn captures(rel: &str) -> Vec<Value> {
    let path = format!("{}/tests/data/captures/{rel}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

/// Every non-2xx exchange of every vendored capture file.
fn error_exchanges() -> Vec<(String, u16, String)> {
    let mut out = Vec::new();
    for dir in ["http-inmem-dir-cx", "http-mariadb-dir"] {
        let base = format!("{}/tests/data/captures/{dir}", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(&base).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            for ex in captures(&format!("{dir}/{name}")) {
                let status = ex["status"].as_u64().unwrap() as u16;
                if !(200..300).contains(&status)
                    || ex["response_body"].as_str().unwrap().contains("\"error\"")
                {
                    out.push((
                        ex["source"].as_str().unwrap().to_owned(),
                        status,
                        ex["response_body"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn every_captured_error_body_parses_with_its_code() {
    let exchanges = error_exchanges();
    assert!(
        exchanges.len() >= 8,
        "expected error samples, got {}",
        exchanges.len()
    );
    for (source, status, body) in exchanges {
        let parsed = ErrorBody::parse(status, body.as_bytes());
        let raw: Value = serde_json::from_str(&body).unwrap();
        let expected = match &raw["error"] {
            Value::Object(o) => o["code"].as_str().unwrap().to_owned(),
            Value::String(s) => s.clone(),
            other => panic!("{source}: unexpected error member {other}"),
        };
        assert_eq!(parsed.code.as_str(), expected, "{source}");
        assert_eq!(parsed.http_status, Some(status), "{source}");
        assert!(!parsed.message.is_empty(), "{source}");
        assert!(
            !parsed.code.is_unknown(),
            "{source}: {expected} should be a known code"
        );
    }
}

#[test]
fn captured_shapes_in_detail() {
    // Nested spec shape (mariadb heartbeat 401).
    let b = ErrorBody::parse(
        401,
        br#"{"error":{"code":"unauthorized","message":"invalid node_token"}}"#,
    );
    assert_eq!(b.code, ErrorCode::Unauthorized);
    assert_eq!(b.message, "invalid node_token");
    assert!(!b.is_retryable());

    // Flat form from /v1/probe.
    let b = ErrorBody::parse(
        422,
        br#"{"error":"private_address","latency_ms":null,"reachable":false}"#,
    );
    assert_eq!(b.code, ErrorCode::PrivateAddress);
    assert_eq!(b.extra.get("reachable"), Some(&json!(false)));
    assert!(b.message.contains("private_address"));

    // Policy refusal from dispatch ticket.
    let b = ErrorBody::parse(
        422,
        br#"{"error":{"code":"IICP-POLICY-001","message":"Intent refused"}}"#,
    );
    assert_eq!(b.code, ErrorCode::PolicyRefused);
    assert!(!b.is_retryable());
}

#[test]
fn flat_rate_limit_form_with_retry_after_seconds() {
    let b = ErrorBody::parse(
        429,
        br#"{"error":"IICP-E034","message":"too many registrations","retry_after":60}"#,
    );
    assert_eq!(b.code, ErrorCode::E034);
    assert_eq!(b.message, "too many registrations");
    assert_eq!(b.retry_after_ms, Some(60_000));
    assert!(b.is_retryable());
    assert!(!b.is_node_switch());
}

#[test]
fn nested_without_code_falls_back_to_status() {
    // ref-rs task handler error.
    let b = ErrorBody::parse(
        500,
        br#"{"task_id":"t","status":"error","error":{"message":"backend exploded"},"generated_by_ai":false}"#,
    );
    assert_eq!(b.code, ErrorCode::Unknown("http_500".into()));
    assert_eq!(b.message, "backend exploded");
    assert!(!b.is_retryable());
    let b = ErrorBody::parse(503, br#"{"error":{"message":"draining"}}"#);
    assert_eq!(b.code, ErrorCode::TemporarilyUnavailable);
    assert!(b.is_retryable());
}

#[test]
fn ref_py_error_code_in_200() {
    let b = ErrorBody::parse(
        200,
        br#"{"task_id":"x","status":"completed","generated_by_ai":true,"error_code":502,"error_message":"model not loaded"}"#,
    );
    assert_eq!(b.code, ErrorCode::Unknown("502".into()));
    assert_eq!(b.message, "model not loaded");
}

#[test]
fn plain_text_and_html_bodies() {
    let html = br#"<!DOCTYPE HTML>
<html lang="en">
    <head>
        <meta charset="utf-8">
        <title>Error response</title>
        <style>body { color: red }</style>
    </head>
    <body>
        <h1>Error response</h1>
        <p>Error code: 500</p>
        <p>Message: Internal Server Error &amp; more.</p>
        <script>alert("x")</script>
    </body>
</html>"#;
    let b = ErrorBody::parse(500, html);
    assert_eq!(b.code, ErrorCode::Unknown("http_500".into()));
    assert_eq!(
        b.message,
        "Error response Error code: 500 Message: Internal Server Error & more."
    );
    assert!(!b.message.contains('<'));
    assert!(!b.message.contains("color"));
    assert!(!b.message.contains("alert"));

    let b = ErrorBody::parse(404, b"Not Found");
    assert_eq!(b.code, ErrorCode::NotFound);
    assert_eq!(b.message, "Not Found");

    let b = ErrorBody::parse(502, b"");
    assert_eq!(b.code, ErrorCode::BackendError);
    assert_eq!(b.message, "HTTP 502 (backend_error)");

    let b = ErrorBody::parse(429, &[0xff, 0xfe, b'x']);
    assert_eq!(b.code, ErrorCode::RateLimited);
    assert!(b.is_retryable());

    let huge = "A".repeat(100_000);
    let b = ErrorBody::parse(500, huge.as_bytes());
    assert!(b.message.chars().count() <= MAX_MESSAGE_CHARS);
    let huge_json = format!(r#"{{"error":{{"code":"x","message":"{huge}"}}}}"#);
    let b = ErrorBody::parse(500, huge_json.as_bytes());
    assert!(b.message.chars().count() <= MAX_MESSAGE_CHARS);
    assert!(b.message.ends_with('…'));
}

#[test]
fn other_json_objects() {
    let b = ErrorBody::parse(422, br#"{"detail":"Not a valid intent"}"#);
    assert_eq!(b.code, ErrorCode::ValidationError);
    assert_eq!(b.message, "Not a valid intent");
    let b = ErrorBody::parse(418, br#"[1,2,3]"#);
    assert_eq!(b.code, ErrorCode::Unknown("http_418".into()));
    let b = ErrorBody::parse(400, br#""just a string""#);
    assert_eq!(b.message, "just a string");
    let b = ErrorBody::parse(409, br#"{"error":{"code":21,"message":"n"}}"#);
    assert_eq!(b.code, ErrorCode::Unknown("21".into()));
}

#[test]
fn capacity_exceeded_emits_spec_shape() {
    let body = ErrorBody::capacity_exceeded("interactive", 1500);
    let v = serde_json::to_value(&body).unwrap();
    assert_eq!(
        v,
        json!({"error": {
            "code": "capacity_exceeded",
            "message": "node is at max_concurrent; try another node",
            "qos_class": "interactive",
            "retry_after_ms": 1500,
            "legacy_code": "IICP-E021"
        }})
    );
    assert_eq!(body.status_or_default(), 429);
    assert!(body.is_node_switch());
    let back = ErrorBody::parse(429, serde_json::to_vec(&body).unwrap().as_slice());
    assert_eq!(back, body);
}

#[test]
fn e021_node_switch_variants() {
    let sdk = ErrorBody::parse(
        429,
        br#"{"error":{"code":"IICP-E021","message":"capacity_exceeded","reason":"availability_window"}}"#,
    );
    assert_eq!(sdk.code, ErrorCode::E021);
    assert_eq!(sdk.reason.as_deref(), Some("availability_window"));
    assert!(sdk.is_node_switch());
    let cip = ErrorBody::parse(
        503,
        br#"{"error":{"code":"IICP-E021","message":"cip cap"}}"#,
    );
    assert!(!cip.is_node_switch());
    assert!(cip.is_retryable());
    let legacy = ErrorBody::parse(
        429,
        br#"{"error":{"code":"capacity_exceeded","message":"m","legacy_code":"IICP-E021","qos_class":"batch","retry_after_ms":250}}"#,
    );
    assert!(legacy.is_node_switch());
    assert_eq!(legacy.legacy_code, Some(ErrorCode::E021));
    assert_eq!(legacy.qos_class.as_deref(), Some("batch"));
    assert_eq!(legacy.retry_after_ms, Some(250));
}

#[test]
fn code_table_status_and_retryability() {
    let table: &[(&str, Option<u16>, bool)] = &[
        ("unauthorized", Some(401), false),
        ("forbidden", Some(403), false),
        ("not_found", Some(404), false),
        ("conflict", Some(409), false),
        ("rate_limited", Some(429), true),
        ("capacity_exceeded", Some(429), true),
        ("task_timeout", Some(504), true),
        ("backend_error", Some(502), false),
        ("no_consensus", Some(502), false),
        ("validation_error", Some(422), false),
        ("liveness_failed", Some(422), false),
        ("unsupported_media_type", Some(415), false),
        ("unknown_intent", Some(422), false),
        ("unsupported_profile", Some(422), false),
        ("cancelled", Some(499), false),
        ("no_available_node", None, false),
        ("timeout", None, true),
        ("tool_execution_denied", Some(403), false),
        ("reputation_too_low", Some(403), false),
        ("insufficient_credits", Some(402), false),
        ("private_address", Some(422), false),
        ("not_configured", Some(503), false),
        ("no_route_available", Some(404), false),
        ("overloaded", Some(429), true),
        ("deadline_unachievable", Some(504), false),
        ("temporarily_unavailable", Some(503), true),
        ("policy_rejected", Some(403), false),
        ("invalid_config", None, false),
        ("invalid_intent", None, false),
        ("no_nodes_available", None, true),
        ("all_nodes_failed", None, false),
        ("IICP-E001", Some(422), false),
        ("IICP-E003", None, true),
        ("IICP-E004", None, true),
        ("IICP-E005", None, true),
        ("IICP-E006", Some(503), true),
        ("IICP-E008", None, true),
        ("IICP-E010", Some(409), false),
        ("IICP-E011", Some(409), false),
        ("IICP-E012", Some(401), false),
        ("IICP-E013", None, false),
        ("IICP-E014", None, false),
        ("IICP-E020", Some(403), false),
        ("IICP-E021", Some(503), true),
        ("IICP-E022", Some(503), true),
        ("IICP-E023", Some(429), true),
        ("IICP-E024", Some(504), true),
        ("IICP-E025", Some(422), false),
        ("IICP-E026", Some(422), false),
        ("IICP-E027", Some(422), false),
        ("IICP-E028", Some(422), false),
        ("IICP-E029", Some(404), false),
        ("IICP-E030", Some(404), false),
        ("IICP-E031", Some(502), false),
        ("IICP-E032", Some(401), false),
        ("IICP-E033", Some(503), true),
        ("IICP-E034", Some(429), true),
        ("IICP-E035", Some(422), false),
        ("IICP-E036", Some(402), false),
        ("IICP-E038", Some(409), false),
        ("IICP-E039", Some(503), true),
        ("IICP-E040", Some(401), false),
        ("IICP-E041", None, false),
        ("IICP-E042", None, false),
        ("IICP-E043", None, false),
        ("IICP-E044", None, false),
        ("IICP-E045", None, false),
        ("IICP-E046", None, false),
        ("IICP-E047", None, false),
        ("IICP-E048", Some(503), false),
        ("IICP-E049", Some(403), false),
        ("IICP-E050", Some(403), false),
        ("IICP-E053", Some(413), false),
        ("IICP-E060", Some(422), false),
        ("IICP-E061", Some(422), false),
        ("IICP-E062", Some(400), false),
        ("IICP-E063", Some(422), false),
        ("IICP-E064", Some(422), false),
        ("IICP-E065", None, false),
        ("IICP-CX-01", Some(400), false),
        ("IICP-CX-02", Some(400), false),
        ("IICP-CX-03", Some(400), false),
        ("IICP-CX-REQUIRED", None, false),
        ("IICP-POLICY-001", Some(422), false),
        ("IICP-CONSUMER-AUTH-REQUIRED", None, false),
        ("IICP-ENDPOINT-REFUSED", None, false),
        ("IICP-REDIRECT-REFUSED", None, false),
        ("IICP-CANDIDATE-RANKER-REFUSED", None, false),
        ("IICP-POLICY-MANIFEST-BINDING-MISMATCH", None, false),
        ("IICP-POLICY-ROUTING", None, false),
    ];
    assert_eq!(
        table.len(),
        ErrorCode::ALL.len(),
        "table covers every known code"
    );
    for &(text, status, retry) in table {
        let code: ErrorCode = text.parse().unwrap();
        assert!(!code.is_unknown(), "{text} should be known");
        assert_eq!(code.as_str(), text);
        assert_eq!(code.to_string(), text);
        assert_eq!(code.http_status(), status, "{text} status");
        assert_eq!(code.is_retryable(), retry, "{text} retryable");
        assert_eq!(
            code.is_node_switch(),
            matches!(text, "capacity_exceeded" | "overloaded"),
            "{text} node switch"
        );
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
    }
}

#[test]
fn unknown_codes_are_kept_verbatim() {
    for text in [
        "IICP-E099",
        "IICP-DISPATCH-TICKET-EXPIRED",
        "IICP-IDSLOT-04",
        "weird",
    ] {
        let code: ErrorCode = text.parse().unwrap();
        assert_eq!(code, ErrorCode::Unknown(text.to_owned()));
        assert_eq!(code.as_str(), text);
        assert!(!code.is_retryable());
        assert_eq!(code.http_status(), None);
    }
    // ErrorBody falls back to the status for unknown codes.
    let b = ErrorBody::parse(503, br#"{"error":{"code":"IICP-E099","message":"m"}}"#);
    assert!(b.is_retryable());
    let b = ErrorBody::parse(400, br#"{"error":{"code":"IICP-E099","message":"m"}}"#);
    assert!(!b.is_retryable());
}

#[test]
fn retryable_statuses() {
    for s in [408, 429, 503, 504] {
        assert!(is_retryable_status(s), "{s}");
    }
    for s in [200, 400, 401, 403, 404, 409, 422, 500, 502] {
        assert!(!is_retryable_status(s), "{s}");
    }
    assert_eq!(ErrorCode::from_http_status(401), ErrorCode::Unauthorized);
    assert_eq!(ErrorCode::from_http_status(504), ErrorCode::TaskTimeout);
    assert_eq!(
        ErrorCode::from_http_status(599),
        ErrorCode::Unknown("http_599".into())
    );
}

#[test]
fn serde_deserialize_accepts_shapes_and_requires_a_code() {
    let b: ErrorBody =
        serde_json::from_str(r#"{"error":{"code":"conflict","message":"dup"}}"#).unwrap();
    assert_eq!(b.code, ErrorCode::Conflict);
    assert_eq!(b.http_status, None);
    let b: ErrorBody = serde_json::from_str(r#"{"error":"IICP-E034"}"#).unwrap();
    assert_eq!(b.message, "IICP-E034");
    assert!(serde_json::from_str::<ErrorBody>(r#"{"message":"no code"}"#).is_err());
    assert!(serde_json::from_str::<ErrorBody>("[]").is_err());
}

#[test]
fn display_is_short_and_has_no_extra() {
    let mut b = ErrorBody::new(ErrorCode::Conflict, "duplicate task").with_status(409);
    b.extra.insert("secret_ish".into(), json!("do-not-print"));
    let text = b.to_string();
    assert_eq!(text, "conflict (HTTP 409): duplicate task");
}
