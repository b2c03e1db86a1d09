//! What a node refuses, on HTTP and native alike, with the backend never called
//! (issue 16 §1–§3): every auth mode against missing, wrong and right credentials;
//! consumer tokens that are expired, for another node or intent, or forged; task ids
//! that are not UUID v4; `timeout_ms` of the wrong type; and a model server's own error
//! text, which never reaches the caller.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use iicp_backends::{BackendConfig, BackendKind};
use iicp_node::{AuthMode, BackendHandler};
use iicp_proto::crypto::token::{ConsumerTokenClaims, DirectoryKey};
use iicp_proto::message::{Body, Call, Outcome, Response};
use iicp_transport::http::server::{read_body, Params, Request, Response as HttpResponse};
use iicp_transport::http::{HttpServer, Router};
use iicp_transport::native::{NativeClient, NativeEndpoint};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::{json, Value};

const NODE_ID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const TOKEN: &str = "operator-granted-token-0123456789";
const T: Duration = Duration::from_secs(10);

fn ep(addr: SocketAddr) -> NativeEndpoint {
    format!("iicp://{addr}").parse().expect("ep")
}

fn native_call(task_id: Option<String>, token: Option<&str>) -> Call {
    Call {
        protocol_version: Some(1),
        session_id: Some("call-1".into()),
        intent: Some(CHAT.into()),
        payload: Some(Body::json(
            &json!({"messages": [{"role": "user", "content": "x"}]}),
        )),
        timeout_s: Some(10),
        call_id: Some(uuid()),
        task_id,
        auth_token: token.map(Into::into),
        ..Call::default()
    }
}

/// The native answer as (status, code), with the legacy status key 100 checked against
/// the error's code.
fn native_refusal(resp: &Response) -> (u64, String) {
    match resp.outcome() {
        Outcome::Success(_) => (200, String::new()),
        Outcome::Error { code, status, .. } => {
            assert_eq!(status, resp.status_code, "key 100 carries the status");
            (status.unwrap_or(0), code.unwrap_or_default().to_owned())
        }
        Outcome::Partial(_) | Outcome::Timeout => panic!("unexpected native outcome"),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// The variants of a wrong credential the issue lists: last character flipped, empty,
/// one character too many.
fn wrong_variants(right: &str) -> Vec<(&'static str, String)> {
    let mut flipped = right.to_owned();
    let last = flipped.pop().expect("non-empty");
    flipped.push(if last == 'a' { 'b' } else { 'a' });
    vec![
        ("last char flipped", flipped),
        ("empty", String::new()),
        ("extra char", format!("{right}x")),
    ]
}

/// Sends one task over HTTP with `credential` placed as the mode expects it, and one
/// native CALL with it in key 11; returns both (status, code) answers.
async fn both_ways(
    addr: SocketAddr,
    mode: AuthMode,
    credential: Option<&str>,
) -> [(u64, String); 2] {
    let c = http();
    let mut req = c.post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"));
    if let Some(cred) = credential {
        req = match mode {
            AuthMode::Consumer => req.header("x-iicp-consumer-token", cred),
            _ => req.bearer(cred.to_owned()),
        };
    }
    let r = req.send().await.expect("send");
    let http_answer = (u64::from(r.status.as_u16()), code_of(&r));
    let native = NativeClient::default();
    let resp = native
        .call(&ep(addr), native_call(Some(uuid()), credential), T)
        .await
        .expect("native call");
    native.close_all();
    [http_answer, native_refusal(&resp)]
}

#[tokio::test]
async fn every_auth_mode_against_missing_wrong_and_right_credentials() {
    let dir = DirectoryKey::from_seed(&[7; 32]);
    let consumer = dir
        .issue(&ConsumerTokenClaims::new(
            "http://dir.test",
            "caller-node",
            NODE_ID,
            CHAT,
            now_secs(),
        ))
        .expect("issue");
    for mode in [AuthMode::Open, AuthMode::Token, AuthMode::Consumer] {
        let echo = Echo::default();
        let mut b = builder().node_id(NODE_ID).auth(mode);
        match mode {
            AuthMode::Token => b = b.api_token(TOKEN),
            AuthMode::Consumer => b = b.directory_key(dir.public_key()),
            _ => {}
        }
        let node = b.build().expect("node");
        let h = serve(&node, echo.handler()).await;
        let addr = h.local_addr();
        let right = match mode {
            AuthMode::Consumer => consumer.clone(),
            _ => TOKEN.to_owned(),
        };
        let open = mode == AuthMode::Open;
        let mut cases: Vec<(&str, Option<String>)> = vec![("no credential", None)];
        cases.extend(
            wrong_variants(&right)
                .into_iter()
                .map(|(n, v)| (n, Some(v))),
        );
        for (name, cred) in cases {
            let before = echo.count();
            let answers = both_ways(addr, mode, cred.as_deref()).await;
            for (transport, answer) in ["HTTP", "native"].iter().zip(answers) {
                if open {
                    assert_eq!(answer.0, 200, "{mode:?} {name} over {transport}");
                } else {
                    assert_eq!(
                        answer,
                        (401, "unauthorized".to_owned()),
                        "{mode:?} {name} over {transport}"
                    );
                }
            }
            let expected = if open { 2 } else { 0 };
            assert_eq!(
                echo.count() - before,
                expected,
                "{mode:?} {name}: backend calls"
            );
        }
        let before = echo.count();
        let answers = both_ways(addr, mode, Some(&right)).await;
        assert_eq!(
            answers.map(|a| a.0),
            [200, 200],
            "{mode:?} right credential"
        );
        assert_eq!(echo.count() - before, 2);
        h.stop().await;
    }
}

#[tokio::test]
async fn consumer_tokens_with_bad_claims_are_refused_on_both_transports() {
    let dir = DirectoryKey::from_seed(&[7; 32]);
    let now = now_secs();
    let issue = |aud: &str, intent: &str, iat: u64| {
        dir.issue(&ConsumerTokenClaims::new(
            "http://dir.test",
            "caller-node",
            aud,
            intent,
            iat,
        ))
        .expect("issue")
    };
    let echo = Echo::default();
    let node = builder()
        .node_id(NODE_ID)
        .auth(AuthMode::Consumer)
        .directory_key(dir.public_key())
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let good = issue(NODE_ID, CHAT, now);
    // flip one byte of the 128-hex signature (the part after the dot)
    let dot = good.rfind('.').expect("dot");
    let mut forged = good.clone().into_bytes();
    let at = dot + 5;
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).expect("utf8");
    let other_key = DirectoryKey::from_seed(&[8; 32])
        .issue(&ConsumerTokenClaims::new(
            "http://dir.test",
            "caller-node",
            NODE_ID,
            CHAT,
            now,
        ))
        .expect("issue");
    let bad = [
        ("expired", issue(NODE_ID, CHAT, now - 400)),
        (
            "wrong aud",
            issue("5b1f0c4e-0000-4000-8000-000000000001", CHAT, now),
        ),
        ("flipped signature byte", forged),
        (
            "wrong intent",
            issue(NODE_ID, "urn:iicp:intent:llm:embedding:v1", now),
        ),
        ("other directory's key", other_key),
    ];
    for (name, token) in bad {
        let answers = both_ways(addr, AuthMode::Consumer, Some(&token)).await;
        for answer in answers {
            assert_eq!(answer, (401, "unauthorized".to_owned()), "{name}");
        }
    }
    assert_eq!(echo.count(), 0, "no refused task reached the backend");
    let answers = both_ways(addr, AuthMode::Consumer, Some(&good)).await;
    assert_eq!(answers.map(|a| a.0), [200, 200]);
    let wildcard = issue(NODE_ID, "*", now);
    assert_eq!(
        both_ways(addr, AuthMode::Consumer, Some(&wildcard))
            .await
            .map(|a| a.0),
        [200, 200]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_locked_node_advertises_its_auth_mode() {
    for (mode, said) in [
        (AuthMode::Open, None),
        (AuthMode::Token, Some("token")),
        (AuthMode::Consumer, Some("consumer")),
    ] {
        let node = builder().auth(mode).api_token(TOKEN).build().expect("node");
        let reg = node.registration_request();
        assert!(!reg.capabilities.is_empty());
        for cap in &reg.capabilities {
            assert_eq!(cap.auth_mode(), said, "{mode:?}");
        }
        let wire = serde_json::to_value(&reg).expect("json");
        let ext = &wire["capabilities"][0]["extensions"]["iicp_auth"]["mode"];
        assert_eq!(ext.as_str(), said, "{mode:?} on the wire");
    }
}

#[tokio::test]
async fn task_ids_that_are_not_uuid_v4_are_refused() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();
    let bad = [
        "123",
        "not-a-uuid",
        "45439b9a-f1d4-11f1-abea-02fc00000001", // version 1
        "3fa85f64-5717-4562-03fc-2c963f66afa6", // version 4, wrong variant
        "3fa85f6457174562b3fc2c963f66afa6",     // no hyphens
        "{3fa85f64-5717-4562-b3fc-2c963f66afa6}",
    ];
    let native = NativeClient::default();
    for id in bad {
        let r = post(&c, addr, &task_body(id, "x")).await;
        assert_eq!(
            (r.status.as_u16(), code_of(&r).as_str()),
            (422, "validation_error"),
            "HTTP {id}"
        );
        assert!(
            json_of(&r)["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("UUID v4"),
            "{id}"
        );
        let resp = native
            .call(&ep(addr), native_call(Some(id.to_owned()), None), T)
            .await
            .expect("call");
        assert_eq!(
            native_refusal(&resp),
            (422, "validation_error".to_owned()),
            "native key 24 {id}"
        );
    }
    assert_eq!(echo.count(), 0, "nothing was executed");
    // a v4 id in upper case is still a UUID v4
    let upper = uuid().to_ascii_uppercase();
    assert_eq!(post(&c, addr, &task_body(&upper, "x")).await.status, 200);
    let resp = native
        .call(&ep(addr), native_call(Some(uuid()), None), T)
        .await
        .expect("call");
    assert_eq!(native_refusal(&resp).0, 200);
    // without key 24 the node uses the idempotency key / call id, which may be any
    // short string (the SDK clients send literal ids such as "call-1")
    let mut idem = native_call(None, None);
    idem.idempotency_key = Some("client-chosen-key-1".into());
    let resp = native.call(&ep(addr), idem, T).await.expect("call");
    assert_eq!(native_refusal(&resp).0, 200);
    let resp = native
        .call(&ep(addr), native_call(None, None), T)
        .await
        .expect("call");
    assert_eq!(native_refusal(&resp).0, 200);
    assert_eq!(echo.count(), 4);
    native.close_all();
    h.stop().await;
}

#[tokio::test]
async fn timeout_ms_must_be_a_number_of_milliseconds() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();
    for bad in [
        json!("abc"),
        json!("5000"),
        json!(true),
        json!([1]),
        json!({}),
        json!(-5),
        json!(2500.5),
    ] {
        let mut b = task_body(&uuid(), "x");
        b["constraints"]["timeout_ms"] = bad.clone();
        let r = post(&c, addr, &b).await;
        assert_eq!(
            (r.status.as_u16(), code_of(&r).as_str()),
            (422, "validation_error"),
            "timeout_ms {bad}"
        );
        assert_eq!(
            json_of(&r)["task_id"],
            b["task_id"],
            "the refusal names the task"
        );
    }
    assert_eq!(echo.count(), 0);
    // accepted: an integer, an integral float, null and absent (the reference clients
    // omit it; ADR 0010), and no constraints at all
    for ok in [json!(5000), json!(5000.0), Value::Null] {
        let mut b = task_body(&uuid(), "x");
        b["constraints"]["timeout_ms"] = ok.clone();
        assert_eq!(post(&c, addr, &b).await.status, 200, "timeout_ms {ok}");
    }
    let mut b = task_body(&uuid(), "x");
    b["constraints"]
        .as_object_mut()
        .expect("obj")
        .remove("timeout_ms");
    assert_eq!(post(&c, addr, &b).await.status, 200);
    let mut b = task_body(&uuid(), "x");
    b.as_object_mut().expect("obj").remove("constraints");
    assert_eq!(post(&c, addr, &b).await.status, 200);
    assert_eq!(echo.count(), 5);
    h.stop().await;
}

/// A model server that fails every POST with a Python traceback or an OpenAI-style
/// error whose message holds a path and a key.
struct FailingModel {
    base: String,
    _trigger: Trigger,
}

const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"/home/x/secret.py\", line 7, in run\n    raise ValueError(detail)\nValueError: tensor shape mismatch sk-live-0123456789abcdefXYZ";

impl FailingModel {
    async fn start(json_error: bool) -> Self {
        let router = Router::new().route(Method::POST, "/{*rest}", move |mut req: Request, _p: Params| async move {
            let _ = read_body(&mut req, 1 << 20).await;
            let (ct, body) = if json_error {
                (
                    "application/json",
                    json!({"error": {"message": "failed to load /srv/models/private/llama.gguf: ValueError secret-detail", "type": "server_error"}}).to_string(),
                )
            } else {
                ("text/plain", TRACEBACK.to_owned())
            };
            let mut resp = HttpResponse::new(body.into());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp.headers_mut().insert("content-type", ct.parse().expect("ct"));
            resp
        });
        let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let (trigger, sd) = shutdown::channel();
        tokio::spawn(server.serve(router, sd));
        Self {
            base: format!("http://{addr}"),
            _trigger: trigger,
        }
    }
}

#[tokio::test]
async fn the_model_servers_words_never_reach_the_caller() {
    for json_error in [false, true] {
        let model = FailingModel::start(json_error).await;
        for kind in BackendKind::ALL {
            let mut cfg = BackendConfig::new(kind);
            cfg.base_url = Some(format!("{}/v1", model.base));
            cfg.model = Some("m".into());
            let backend = iicp_backends::build(cfg).expect("backend");
            let node = builder().build().expect("node");
            let h = serve(&node, BackendHandler::new(backend)).await;
            let addr = h.local_addr();
            let r = post(&http(), addr, &task_body(&uuid(), "x")).await;
            let text = String::from_utf8_lossy(&r.body).into_owned();
            assert_eq!(
                (r.status.as_u16(), code_of(&r).as_str()),
                (502, "backend_error"),
                "{kind:?}: {text}"
            );
            assert_eq!(
                json_of(&r)["error"]["message"],
                "the model server failed (HTTP 500)",
                "{kind:?}"
            );
            let native = NativeClient::default();
            let resp = native
                .call(&ep(addr), native_call(Some(uuid()), None), T)
                .await
                .expect("call");
            native.close_all();
            assert_eq!(
                native_refusal(&resp),
                (502, "backend_error".to_owned()),
                "{kind:?} native"
            );
            let native_text = format!("{resp:?}");
            for leak in [
                "Traceback",
                "secret.py",
                "ValueError",
                "tensor",
                "sk-live",
                "/srv/models",
                "secret-detail",
            ] {
                assert!(!text.contains(leak), "{kind:?} HTTP leaks {leak}: {text}");
                assert!(
                    !native_text.contains(leak),
                    "{kind:?} native leaks {leak}: {native_text}"
                );
            }
            h.stop().await;
        }
    }
}
