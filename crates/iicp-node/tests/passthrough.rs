//! A model server's buffered answer reaches the caller as the text it sent (ADR 0022):
//! over HTTP the RESPONSE's `result` is the server's JSON text byte for byte (its key
//! order and escapes kept), over native it is the deterministic CBOR of the value that
//! text holds, and a duplicate replays the same answer on both; sealed under IICP-CX, the
//! answer holds the same text.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use iicp_backends::{BackendConfig, BackendKind};
use iicp_node::BackendHandler;
use iicp_proto::crypto::cx::{seal_request, IicpConfResp, NodePublicKey};
use iicp_proto::message::{Body, Call};
use iicp_proto::task::{TaskResponse, TaskStatus};
use iicp_transport::http::server::{read_body, Params, Request, Response as HttpResponse};
use iicp_transport::http::Router;
use iicp_transport::native::{NativeClient, NativeEndpoint};
use serde_json::{json, Value};

/// Keys out of order, an escaped letter and spaces: a value tree written out again
/// would differ in all three.
const ANSWER: &str = r#"{"object": "chat.completion", "id": "c-1", "model": "m-srv", "choices": [{"index": 0, "message": {"role": "assistant", "content": "h\u00e9llo"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}"#;

/// A model server answering every POST with [`ANSWER`].
async fn model() -> iicp_testkit::server::Server {
    let router = Router::new().route(
        Method::POST,
        "/{*rest}",
        |mut req: Request, _p: Params| async move {
            let _ = read_body(&mut req, 1 << 20).await;
            let mut resp = HttpResponse::new(ANSWER.as_bytes().to_vec().into());
            resp.headers_mut()
                .insert("content-type", "application/json".parse().expect("ct"));
            resp
        },
    );
    iicp_testkit::server::serve(router).await.expect("serve")
}

#[tokio::test]
async fn the_model_servers_answer_passes_as_it_came() {
    let model = model().await;
    let mut cfg = BackendConfig::new(BackendKind::OpenAiCompat);
    cfg.base_url = Some(format!("{}/v1", model.url()));
    cfg.model = Some("m".into());
    let backend = iicp_backends::build(cfg).expect("backend");
    let node = builder().build().expect("node");
    let h = serve(&node, BackendHandler::new(backend)).await;
    let value: Value = serde_json::from_str(ANSWER).expect("json");

    // HTTP: the result member is the server's text; the accounting is read from it
    let client = http();
    let body = task_body(&uuid(), "hi");
    let first = post(&client, h.local_addr(), &body).await;
    assert_eq!(first.status.as_u16(), 200);
    let text = std::str::from_utf8(&first.body).expect("utf-8");
    assert!(
        text.contains(&format!(r#""result":{ANSWER}"#)),
        "the answer as sent: {text}"
    );
    let r = json_of(&first);
    assert_eq!(r["result"], value);
    assert_eq!(r["metrics"]["tokens_used"], 7, "prompt + completion");
    assert_eq!(r["model_used"], "m-srv");
    let replay = post(&client, h.local_addr(), &body).await;
    assert_eq!(replay.body, first.body, "a duplicate replays the same text");

    // native: key 5 is the deterministic CBOR of the same value, on a replay too
    let native = NativeClient::default();
    let ep: NativeEndpoint = format!("iicp://{}", h.local_addr()).parse().expect("ep");
    let mut call = Call {
        protocol_version: Some(1),
        session_id: Some("s-1".into()),
        intent: Some(CHAT.into()),
        payload: Some(Body::json(
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )),
        timeout_s: Some(10),
        call_id: Some(uuid()),
        idempotency_key: Some("k-1".into()),
        ..Call::default()
    };
    let want = Some(Body::Cbor(iicp_proto::cbor::json_to_vec(&value)));
    let t = Duration::from_secs(10);
    let resp = native.call(&ep, call.clone(), t).await.expect("call");
    assert_eq!(resp.status.as_deref(), Some("success"));
    assert_eq!(resp.result, want);
    assert_eq!(resp.tokens_used, Some(7));
    call.call_id = Some(uuid());
    let again = native.call(&ep, call, t).await.expect("call");
    assert_eq!(again.result, want, "the replay's result");
    native.close_all();

    // IICP-CX: the sealed answer holds the same text, and opens to the same value
    let adv = node.registration_request().cx_public_key.expect("key");
    let key = NodePublicKey::from_advertisement(&adv).expect("key");
    let id = uuid();
    let plain = serde_json::to_vec(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .expect("json");
    let sealed = seal_request(&mut rand_core::OsRng, &key, &id, CHAT, &plain).expect("seal");
    let body = json!({
        "task_id": id, "intent": CHAT,
        "iicp_conf": sealed.envelope.to_value(),
        "cx_response_encryption": "required"
    });
    let r = post(&client, h.local_addr(), &body).await;
    assert_eq!(r.status.as_u16(), 200);
    let outer = TaskResponse::parse(200, &r.body).expect("outer");
    assert_eq!(outer.status, TaskStatus::Encrypted);
    let conf =
        IicpConfResp::from_value(outer.iicp_conf_resp.as_ref().expect("conf")).expect("conf");
    let inner = sealed.response_key.open(&conf).expect("open");
    let inner_text = std::str::from_utf8(&inner).expect("utf-8");
    assert!(
        inner_text.contains(&format!(r#""result":{ANSWER}"#)),
        "{inner_text}"
    );
    let inner = TaskResponse::parse(200, &inner).expect("inner");
    assert_eq!(inner.result.as_ref(), Some(&value));
    h.stop().await;
}
