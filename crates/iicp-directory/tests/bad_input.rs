//! Bad input (§6.1, §8.2, §8.3, §8.5): each refusal is a JSON error with a spec code,
//! nothing of the request is echoed, and the directory keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use iicp_directory::{Directory, ManualClock};
use serde_json::json;

#[tokio::test]
async fn refusals_are_json_and_the_directory_keeps_serving() {
    let clock = ManualClock::starting_now();
    let d = start_mesh(Backend::Sqlite, &clock).await;
    let base = d.base.clone();
    let c = client();

    // malformed JSON
    let raw = c
        .request(Method::POST, format!("{base}/v1/register"))
        .body("application/json", &b"{\"endpoint\": tok_secret"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status.as_u16(), 422);
    assert_eq!(raw.error_body().code.as_str(), "validation_error");
    assert!(!String::from_utf8_lossy(&raw.body).contains("tok_secret"));
    // wrong media type
    let raw = c
        .request(Method::POST, format!("{base}/v1/heartbeat"))
        .body("text/plain", &b"hi"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status.as_u16(), 415);
    // oversize body (limit 256 KiB)
    let big = json!({"endpoint": "x".repeat(300 * 1024)});
    let r = post(&format!("{base}/v1/register"), &big, None).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.code().is_some());
    // wrong shapes and invalid values (never echoed)
    let mut body = register_body("http://127.0.0.1:19301", "eu", &["m"]);
    body["limits"]["max_concurrent"] = json!("secret-value-123");
    let r = post(&format!("{base}/v1/register"), &body, None).await;
    assert_eq!(r.status, 422);
    assert!(
        !r.body.to_string().contains("secret-value-123"),
        "{}",
        r.body
    );
    for (field, value) in [
        ("endpoint", json!("ftp://node")),
        ("endpoint", json!("http://user:pw@node.example.com")),
        ("endpoint", json!("")),
        ("region", json!("r".repeat(65))),
        ("capabilities", json!([])),
        (
            "capabilities",
            json!([{"intent": "urn:iicp:intent:LLM:chat:v1", "models": ["m"], "max_tokens": 1}]),
        ),
        (
            "capabilities",
            json!([{"intent": CHAT, "models": [], "max_tokens": 1}]),
        ),
        ("limits", json!({"max_concurrent": 0, "tokens_per_min": 1})),
        ("transport_endpoint", json!("http://node:9484")),
        ("node_id", json!("bad id with spaces")),
    ] {
        let mut body = register_body("http://127.0.0.1:19301", "eu", &["m"]);
        body[field] = value.clone();
        let r = post(&format!("{base}/v1/register"), &body, None).await;
        assert_eq!(r.status, 422, "{field}={value}: {}", r.body);
        assert_eq!(r.code(), Some("validation_error"), "{field}");
    }
    // discover errors
    let r = get(&format!("{base}/v1/discover")).await;
    assert_eq!((r.status, r.code()), (422, Some("validation_error")));
    let r = get(&format!("{base}/v1/discover?intent=not-an-urn")).await;
    assert_eq!(r.status, 422);
    let r = get(&format!(
        "{base}/v1/discover?intent={CHAT}&min_reputation=2"
    ))
    .await;
    assert_eq!(r.status, 422);
    let r = get(&format!(
        "{base}/v1/discover?intent=urn:iicp:intent:credit:decision:v1"
    ))
    .await;
    assert_eq!((r.status, r.code()), (422, Some("IICP-POLICY-001")));

    // tokens: missing, wrong, rotated, unknown node
    let ack = register(
        &base,
        &register_body("http://127.0.0.1:19302", "eu", &["m"]),
    )
    .await;
    let id = ack["node_id"].as_str().unwrap();
    let token = ack["node_token"].as_str().unwrap();
    let r = post(
        &format!("{base}/v1/heartbeat"),
        &json!({"node_id": id}),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (401, Some("unauthorized")));
    let r = post(
        &format!("{base}/v1/heartbeat"),
        &json!({"node_id": id}),
        Some("f".repeat(64).as_str()),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.body.to_string().contains(&"f".repeat(64)));
    let r = post(
        &format!("{base}/v1/heartbeat"),
        &json!({"node_id": "00000000-0000-4000-8000-000000000000"}),
        Some(token),
    )
    .await;
    assert_eq!((r.status, r.code()), (404, Some("not_found")));
    assert_eq!(r.body["error"]["legacy_code"], "IICP-E003");
    let r = post(
        &format!("{base}/v1/heartbeat"),
        &json!({"node_id": id, "load": 7}),
        Some(token),
    )
    .await;
    assert_eq!(r.status, 422);
    let r = post(
        &format!("{base}/v1/heartbeat"),
        &json!({"node_id": id, "challenge_response": "NOT-HEX"}),
        Some(token),
    )
    .await;
    assert_eq!(r.status, 422);
    // token of another node
    let other = register(
        &base,
        &register_body("http://127.0.0.1:19303", "eu", &["m"]),
    )
    .await;
    let r = post(
        &format!("{base}/v1/heartbeat"),
        &json!({"node_id": id}),
        other["node_token"].as_str(),
    )
    .await;
    assert_eq!(r.status, 401);
    // an expired JWT
    let jwt = ack["jwt_token"].as_str().unwrap();
    clock.advance(Duration::from_secs(3601));
    let r = call(Method::GET, &format!("{base}/v1/me"), None, Some(jwt)).await;
    assert_eq!(r.status, 401);

    // prompt material in a ticket request: refused without echoing it
    let r = post(
        &format!("{base}/v1/dispatch/ticket"),
        &json!({"intent": CHAT, "messages": [{"role": "user", "content": "tell-me-secret"}]}),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (422, Some("validation_error")));
    assert!(!r.body.to_string().contains("tell-me-secret"));
    let r = post(
        &format!("{base}/v1/dispatch/ticket"),
        &json!({"intent": CHAT, "qos": "bogus"}),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (422, Some("validation_error")));
    let r = post(
        &format!("{base}/v1/dispatch/ticket"),
        &json!({"intent": CHAT, "node_id": "a", "node_id_prefix": "a"}),
        None,
    )
    .await;
    assert_eq!(r.status, 422);
    let r = post(
        &format!("{base}/v1/dispatch/ticket"),
        &json!({"intent": CHAT, "exclude_node_id_prefixes": vec!["ab"; 11]}),
        None,
    )
    .await;
    assert_eq!(r.status, 422);
    // unknown routes and methods are JSON too
    let r = get(&format!("{base}/v1/nope")).await;
    assert_eq!((r.status, r.code()), (404, Some("not_found")));
    let r = get(&format!("{base}/v1/register")).await;
    assert_eq!(r.status, 405);
    assert!(r.code().is_some());

    // still serving
    let r = post(
        &format!("{base}/v1/heartbeat"),
        &json!({"node_id": id}),
        Some(token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    d.stop().await;
}

#[tokio::test]
async fn register_rate_limit_is_flat_iicp_e034() {
    let d = start_with(
        Backend::Memory,
        Directory::builder()
            .private_mesh(true)
            .liveness_probe(false)
            .register_rate_limit(3, Duration::from_secs(60)),
        None,
    )
    .await;
    for i in 0..3 {
        register(
            &d.base,
            &register_body(&format!("http://127.0.0.1:{}", 19400 + i), "eu", &["m"]),
        )
        .await;
    }
    let r = post(
        &format!("{}/v1/register", d.base),
        &register_body("http://127.0.0.1:19409", "eu", &["m"]),
        None,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["error"], "IICP-E034");
    assert!(r.body["retry_after"].as_u64().unwrap() >= 1);
    assert!(r.raw.headers.get("retry-after").is_some());
    assert_eq!(r.raw.error_body().code.as_str(), "IICP-E034");
    // other endpoints are not affected
    assert_eq!(get(&format!("{}/health", d.base)).await.status, 200);
    d.stop().await;
}
