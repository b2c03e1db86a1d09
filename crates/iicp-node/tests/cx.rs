//! IICP-CX over HTTP and over native CALLs (PROTOCOL.md §16, ADR 0005): request
//! decryption, encrypted responses, and every CX refusal.

mod common;

use common::*;
use iicp_node::Node;
use iicp_proto::crypto::cx::{seal_request, IicpConfResp, NodePublicKey};
use iicp_proto::message::{Body, Call, Outcome, Prefer};
use iicp_proto::task::{TaskResponse, TaskStatus};
use iicp_transport::native::{NativeClient, NativeEndpoint};
use serde_json::{json, Value};

fn node_key(node: &Node) -> NodePublicKey {
    let adv = node
        .registration_request()
        .cx_public_key
        .expect("advertised key");
    assert!(adv.features.iter().any(|f| f == "response_encryption_v1"));
    assert!(adv.features.iter().any(|f| f == "native_cx_v1"));
    assert!(adv.not_after.is_some());
    NodePublicKey::from_advertisement(&adv).expect("key")
}

fn payload(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn http_round_trip_and_errors() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let key = node_key(&node);
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();

    // encrypted request, encrypted response
    let id = uuid();
    let plain = serde_json::to_vec(&payload("secret")).expect("json");
    let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
    let body = json!({
        "task_id": id, "intent": CHAT,
        "iicp_conf": sealed.envelope.to_value(),
        "cx_response_encryption": "required"
    });
    let r = post(&c, addr, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!String::from_utf8_lossy(&r.body).contains("echo: secret"));
    let outer = TaskResponse::parse(200, &r.body).expect("outer");
    assert_eq!(outer.status, TaskStatus::Encrypted);
    let conf =
        IicpConfResp::from_value(outer.iicp_conf_resp.as_ref().expect("resp")).expect("conf");
    let inner = sealed.response_key.open(&conf).expect("open");
    let inner = TaskResponse::parse(200, &inner).expect("inner");
    assert_eq!(inner.status, TaskStatus::Success);
    assert_eq!(
        inner.chat_completion().and_then(|c| c.text()).as_deref(),
        Some("echo: secret")
    );
    assert!(inner.metrics.is_some());

    // encrypted request, plaintext response
    let id = uuid();
    let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
    let body = json!({"task_id": id, "intent": CHAT, "iicp_conf": sealed.envelope.to_value()});
    let r = post(&c, addr, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        json_of(&r)["result"]["choices"][0]["message"]["content"],
        "echo: secret"
    );

    // replay of an envelope under another task id → aad mismatch
    let body = json!({"task_id": uuid(), "intent": CHAT, "iicp_conf": sealed.envelope.to_value()});
    let r = post(&c, addr, &body).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (400, "IICP-CX-02")
    );
    // tampered ciphertext
    let mut env = sealed.envelope.to_value();
    env["encrypted_body"] = json!("AAAA");
    let r = post(
        &c,
        addr,
        &json!({"task_id": id, "intent": CHAT, "iicp_conf": env}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (400, "IICP-CX-02")
    );
    // encrypted response without an encrypted request
    let mut b = task_body(&uuid(), "x");
    b["cx_response_encryption"] = json!("required");
    let r = post(&c, addr, &b).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (400, "IICP-CX-03")
    );
    // payload and envelope together
    let mut b = task_body(&uuid(), "x");
    b["iicp_conf"] = sealed.envelope.to_value();
    assert_eq!(post(&c, addr, &b).await.status, 422);
    h.stop().await;

    // a node without a CX key
    let plain_node = builder().without_cx().build().expect("node");
    assert!(plain_node.registration_request().cx_public_key.is_none());
    let h = serve(&plain_node, echo.handler()).await;
    let id = uuid();
    let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
    let body = json!({"task_id": id, "intent": CHAT, "iicp_conf": sealed.envelope.to_value()});
    let r = post(&c, h.local_addr(), &body).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (400, "IICP-CX-01")
    );
    h.stop().await;
}

#[tokio::test]
async fn duplicate_of_a_resealed_task_replays_encrypted() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let key = node_key(&node);
    let h = serve(&node, echo.handler()).await;
    let c = http();
    let id = uuid();
    let plain = serde_json::to_vec(&payload("again")).expect("json");
    let mut texts = Vec::new();
    for _ in 0..2 {
        // a retry re-seals with a fresh ephemeral key: still the same task
        let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
        let body = json!({
            "task_id": id, "intent": CHAT,
            "iicp_conf": sealed.envelope.to_value(),
            "cx_response_encryption": "required"
        });
        let r = post(&c, h.local_addr(), &body).await;
        assert_eq!(r.status, 200);
        let outer = TaskResponse::parse(200, &r.body).expect("outer");
        let conf =
            IicpConfResp::from_value(outer.iicp_conf_resp.as_ref().expect("resp")).expect("c");
        let inner = TaskResponse::parse(200, &sealed.response_key.open(&conf).expect("open"))
            .expect("inner");
        texts.push(inner.chat_completion().and_then(|c| c.text()));
    }
    assert_eq!(texts[0], texts[1]);
    assert_eq!(echo.count(), 1, "replayed, not executed twice");
    h.stop().await;
}

#[tokio::test]
async fn native_cx_round_trip() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let key = node_key(&node);
    let h = serve(&node, echo.handler()).await;
    let ep: NativeEndpoint = format!("iicp://{}", h.local_addr()).parse().expect("ep");
    let native = NativeClient::default();
    let id = uuid();
    let plain = serde_json::to_vec(&payload("native secret")).expect("json");
    let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
    let key5 = json!({
        "task_id": id,
        "iicp_conf": sealed.envelope.to_value(),
        "cx_response_encryption": "required"
    });
    let call = Call {
        protocol_version: Some(1),
        session_id: Some("cx-1".into()),
        intent: Some(CHAT.into()),
        payload: Some(Body::json(&key5)),
        timeout_s: Some(10),
        call_id: Some(uuid()),
        idempotency_key: Some(id.clone()),
        ..Call::default()
    };
    let resp = native
        .call(&ep, call, std::time::Duration::from_secs(10))
        .await
        .expect("call");
    let Outcome::Success(Some(body)) = resp.outcome() else {
        panic!("not a success: {:?}", resp.outcome());
    };
    let v = body.to_json(Prefer::Cbor).expect("json");
    let conf = IicpConfResp::from_value(&v["iicp_conf_resp"]).expect("conf");
    let inner =
        TaskResponse::parse(200, &sealed.response_key.open(&conf).expect("open")).expect("inner");
    assert_eq!(
        inner.chat_completion().and_then(|c| c.text()).as_deref(),
        Some("echo: native secret")
    );

    // native CX refusal: envelope bound to another task id
    let key5 = json!({"task_id": uuid(), "iicp_conf": sealed.envelope.to_value()});
    let call = Call {
        session_id: Some("cx-2".into()),
        intent: Some(CHAT.into()),
        payload: Some(Body::json(&key5)),
        call_id: Some(uuid()),
        ..Call::default()
    };
    let resp = native
        .call(&ep, call, std::time::Duration::from_secs(10))
        .await
        .expect("call");
    match resp.outcome() {
        Outcome::Error { code, status, .. } => {
            assert_eq!(code, Some("IICP-CX-02"));
            assert_eq!(status, Some(400));
        }
        other => panic!("expected an error, got {other:?}"),
    }
    native.close_all();
    h.stop().await;
}
