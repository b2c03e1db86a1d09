//! Submission over the native transport against a native `CallHandler` (ADR 0002 CALL
//! layout, ADR 0005 native IICP-CX), and the transport preference.

use std::sync::Arc;

use iicp_client::{Encryption, ErrorCode, Transport, TransportUsed, NATIVE_CX_V1};
use iicp_proto::crypto::cx::{open_call, CxKeyPair, IicpConf};
use iicp_proto::message::{Body, Call, Prefer, Response};
use iicp_testkit::fake::*;
use iicp_testkit::time::*;
use iicp_transport::native::{CallContext, CallHandler};
use parking_lot::Mutex;
use rand_core::OsRng;
use serde_json::{json, Value};

type Calls = Arc<Mutex<Vec<Call>>>;

/// Records each CALL; answers from `script` (status codes; 0 = success) then success.
fn handler(calls: Calls, script: Vec<u16>, key: Option<CxKeyPair>) -> Arc<dyn CallHandler> {
    let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
    Arc::new(move |call: Call, _ctx: CallContext| {
        let calls = Arc::clone(&calls);
        let script = Arc::clone(&script);
        let key = key.clone();
        async move {
            calls.lock().push(call.clone());
            let step = script.lock().pop_front().unwrap_or(0);
            if step != 0 {
                return Response::error(&call, "temporarily_unavailable", step, "scripted");
            }
            let key5 = call
                .payload
                .as_ref()
                .and_then(|p| p.to_json(Prefer::Json).ok())
                .unwrap_or(Value::Null);
            match (&key, key5.get("iicp_conf")) {
                (Some(key), Some(conf)) => {
                    let task_id = key5["task_id"].as_str().unwrap_or_default().to_owned();
                    let intent = call.intent.clone().unwrap_or_default();
                    let opened = IicpConf::from_value(conf)
                        .and_then(|c| open_call(key, &c, &task_id, &intent));
                    let Ok(opened) = opened else {
                        return Response::error(&call, "IICP-CX-02", 400, "cx failed");
                    };
                    let seen = opened.payload_json().unwrap_or(Value::Null);
                    let full = json!({"task_id": task_id, "status": "success", "result": {"native_cx": true, "seen": seen}});
                    let sealed = opened
                        .response_key()
                        .seal(&mut OsRng, &serde_json::to_vec(&full).unwrap_or_default())
                        .expect("seal");
                    Response::success(
                        &call,
                        Body::cbor(&json!({"iicp_conf_resp": sealed.to_value()})),
                    )
                }
                _ => Response::success(&call, Body::cbor(&json!({"echo": key5}))),
            }
        }
    })
}

fn entry(
    id: &str,
    addr: std::net::SocketAddr,
    key: Option<&CxKeyPair>,
    features: &[&str],
) -> Value {
    let mut v = node_entry(id, &format!("http://{addr}"), key, features);
    v["transport_endpoint"] = json!(format!("iicp://{addr}"));
    v
}

#[tokio::test]
async fn plaintext_task_over_native_uses_the_superset_call_layout() {
    let calls: Calls = Arc::default();
    let node = native_node(handler(Arc::clone(&calls), vec![], None)).await;
    let dir = fake_directory(vec![entry(&node_id(1), node.addr, None, &[])], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .api_token("api-token-native-1")
        .build()
        .expect("client");
    let done = client
        .submit(chat_task().with_timeout_ms(1500))
        .await
        .expect("submit");
    assert_eq!(done.transport, TransportUsed::Native);
    assert_eq!(
        done.result()["echo"]["messages"][0]["content"],
        "PAYLOAD-MARKER-7f3a"
    );
    let calls = calls.lock().clone();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.protocol_version, Some(1));
    assert!(c.session_id.is_some());
    assert_eq!(c.intent.as_deref(), Some(CHAT));
    assert!(
        matches!(c.payload, Some(Body::Bytes(_))),
        "key 5 is bstr(JSON)"
    );
    assert_eq!(c.timeout_s, Some(2), "1500 ms rounded up to seconds");
    assert_eq!(c.idempotency_key.as_deref(), Some(done.task_id.as_str()));
    assert!(c.call_id.is_some());
    assert_eq!(c.task_id, None, "never key 24");
    assert_eq!(
        c.auth_token.as_ref().map(|s| s.expose().to_owned()),
        Some("api-token-native-1".to_owned())
    );
    assert!(node.http_calls.lock().is_empty());
}

#[tokio::test]
async fn native_ipv4_shorthand_for_loopback_is_refused_before_any_io() {
    // as the HTTP test in submit.rs: `127.1` is loopback to the resolver, and so to the
    // endpoint policy, before anything is dialled
    let calls: Calls = Arc::default();
    let node = native_node(handler(Arc::clone(&calls), vec![], None)).await;
    let mut v = entry(&node_id(1), node.addr, None, &[]);
    v["endpoint"] = json!(format!("http://127.1:{}", node.addr.port()));
    v["transport_endpoint"] = json!(format!("iicp://127.1:{}", node.addr.port()));
    let dir = fake_directory(vec![v], Tickets::Off).await;
    let strict = iicp_client::Client::builder()
        .directory_url(dir.base())
        .sleeper(Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .transport(Transport::Native)
        .build()
        .expect("client");
    let err = strict.submit(chat_task()).await.expect_err("refused");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable, "{err}");
    assert!(calls.lock().is_empty());
    assert!(node.http_calls.lock().is_empty());
    let open = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .transport(Transport::Native)
        .build()
        .expect("client");
    let done = open.submit(chat_task()).await.expect("submit");
    assert_eq!(done.transport, TransportUsed::Native);
    assert_eq!(calls.lock().len(), 1);
}

#[tokio::test]
async fn native_retries_keep_the_idempotency_key_and_change_the_call_id() {
    let calls: Calls = Arc::default();
    let node = native_node(handler(Arc::clone(&calls), vec![503, 429], None)).await;
    let dir = fake_directory(vec![entry(&node_id(1), node.addr, None, &[])], Tickets::Off).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone())
        .encryption(Encryption::AllowPlaintext)
        .transport(Transport::Native)
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.attempts, 3);
    let calls = calls.lock().clone();
    assert_eq!(calls.len(), 3);
    let ids: std::collections::HashSet<_> = calls.iter().map(|c| c.call_id.clone()).collect();
    assert_eq!(ids.len(), 3, "fresh call id per attempt");
    for c in &calls {
        assert_eq!(c.idempotency_key.as_deref(), Some(done.task_id.as_str()));
    }
    assert_eq!(sleeper.sleeps().len(), 2);
}

#[tokio::test]
async fn native_errors_follow_the_same_rules() {
    let calls: Calls = Arc::default();
    let node = native_node(handler(Arc::clone(&calls), vec![502], None)).await;
    let dir = fake_directory(vec![entry(&node_id(1), node.addr, None, &[])], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .transport(Transport::Native)
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("502");
    assert_eq!(err.status_code(), Some(502));
    assert_eq!(calls.lock().len(), 1);
    assert_ne!(err.code(), &ErrorCode::AllNodesFailed);
}

#[tokio::test]
async fn native_cx_round_trip_with_a_native_cx_v1_node() {
    let key = CxKeyPair::generate(&mut OsRng);
    let calls: Calls = Arc::default();
    let node = native_node(handler(Arc::clone(&calls), vec![], Some(key.clone()))).await;
    let dir = fake_directory(
        vec![entry(&node_id(1), node.addr, Some(&key), &[NATIVE_CX_V1])],
        Tickets::Off,
    )
    .await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.transport, TransportUsed::Native);
    assert!(done.encrypted);
    assert_eq!(done.result()["native_cx"], true);
    assert_eq!(
        done.result()["seen"]["messages"][0]["content"],
        "PAYLOAD-MARKER-7f3a"
    );
    let c = &calls.lock()[0];
    let key5 = c
        .payload
        .as_ref()
        .and_then(|p| p.to_json(Prefer::Json).ok())
        .expect("key 5");
    assert_eq!(key5["task_id"], done.task_id.as_str());
    assert_eq!(key5["cx_response_encryption"], "required");
    assert!(key5.get("iicp_conf").is_some());
    assert!(!key5.to_string().contains("PAYLOAD-MARKER"));
}

#[tokio::test]
async fn keyed_node_without_native_cx_is_reached_over_http() {
    let key = CxKeyPair::generate(&mut OsRng);
    let calls: Calls = Arc::default();
    let node = native_node(handler(Arc::clone(&calls), vec![], Some(key.clone()))).await;
    let mut e = entry(&node_id(1), node.addr, Some(&key), &[]);
    // the fake HTTP side answers in plaintext: no response_encryption_v1
    e["cx_public_key"]["features"] = json!([]);
    let dir = fake_directory(vec![e], Tickets::Off).await;
    for transport in [Transport::Auto, Transport::Native] {
        let client = builder(&dir, Arc::new(RecordingSleeper::default()))
            .transport(transport)
            .build()
            .expect("client");
        let done = client.submit(chat_task()).await.expect("submit");
        assert_eq!(done.transport, TransportUsed::Http, "{transport:?}");
    }
    assert!(calls.lock().is_empty());
    assert_eq!(node.http_calls.lock().len(), 2);
}

#[tokio::test]
async fn http_preference_ignores_the_native_endpoint() {
    let calls: Calls = Arc::default();
    let node = native_node(handler(Arc::clone(&calls), vec![], None)).await;
    let dir = fake_directory(vec![entry(&node_id(1), node.addr, None, &[])], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .transport(Transport::Http)
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.transport, TransportUsed::Http);
    assert!(calls.lock().is_empty());
}
