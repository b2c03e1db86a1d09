//! Native CALLs on the HTTP port through the same pipeline (PROTOCOL.md §10.7, T3, T22):
//! superset responses, errors, auth, garbage input isolation and graceful stop.

mod common;

use std::time::Duration;

use common::*;
use iicp_node::AuthMode;
use iicp_proto::frame::{Decoded, Frame, MessageType};
use iicp_proto::message::{Body, Call, Message, Outcome, Prefer};
use iicp_transport::native::{NativeClient, NativeEndpoint};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ep(addr: std::net::SocketAddr) -> NativeEndpoint {
    format!("iicp://{addr}").parse().expect("ep")
}

fn call(payload: Value) -> Call {
    Call {
        protocol_version: Some(1),
        session_id: Some("call-1".into()),
        intent: Some(CHAT.into()),
        payload: Some(Body::json(&payload)),
        timeout_s: Some(10),
        call_id: Some(uuid()),
        ..Call::default()
    }
}

fn msg(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn native_calls_share_the_pipeline() {
    let echo = Echo::default();
    let node = builder()
        .node_id("3fa85f64-5717-4562-b3fc-2c963f66afa6")
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let native = NativeClient::default();
    let ep = ep(h.local_addr());
    let resp = native
        .call(&ep, call(msg("over tcp")), T)
        .await
        .expect("call");
    assert_eq!(resp.status.as_deref(), Some("success"));
    assert_eq!(resp.protocol_version, Some(1));
    assert_eq!(
        resp.call_id, resp.legacy_call_id,
        "call id in keys 3 and 15"
    );
    assert_eq!(resp.tokens_used, Some(5));
    assert_eq!(
        resp.node_id.as_deref(),
        Some("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    );
    let Outcome::Success(Some(body)) = resp.outcome() else {
        panic!("{:?}", resp.outcome())
    };
    let v = body.to_json(Prefer::Cbor).expect("result");
    assert_eq!(
        v["choices"][0]["message"]["content"], "echo: over tcp",
        "key 5 is the result itself, as the reference nodes send it"
    );
    // session ids such as "call-1" are reused by SDK clients: never treated as duplicates
    let resp = native.call(&ep, call(msg("other")), T).await.expect("call");
    assert!(matches!(resp.outcome(), Outcome::Success(_)));

    // errors in the superset layout (key 6 and keys 100/101)
    let mut bad = call(msg("x"));
    bad.intent = Some("urn:iicp:intent:llm:embedding:v1".into());
    let resp = native.call(&ep, bad, T).await.expect("call");
    assert_eq!(
        resp.error.as_ref().and_then(|e| e.code.as_deref()),
        Some("unknown_intent")
    );
    assert_eq!(resp.status_code, Some(422));
    assert!(resp.message.is_some());
    let mut bad = call(msg("x"));
    bad.payload = Some(Body::Bytes(b"not json".to_vec()));
    let resp = native.call(&ep, bad, T).await.expect("call");
    assert_eq!(resp.status_code, Some(422));
    let mut bad = call(msg("x"));
    bad.payload = None;
    let resp = native.call(&ep, bad, T).await.expect("call");
    assert_eq!(resp.status_code, Some(422));
    let mut fail = call(json!({"fail": true}));
    fail.call_id = Some(uuid());
    let resp = native.call(&ep, fail, T).await.expect("call");
    assert!(matches!(
        resp.outcome(),
        Outcome::Error {
            code: Some("backend_error"),
            status: Some(502),
            ..
        }
    ));

    // key 6 seconds become the task deadline
    let mut slow = call(json!({"sleep_ms": 3000, "messages": []}));
    slow.timeout_s = Some(1);
    let resp = native.call(&ep, slow, T).await.expect("call");
    assert_eq!(resp.status.as_deref(), Some("timeout"));
    assert_eq!(resp.status_code, Some(504));

    // duplicates tracked by the idempotency key (16)
    let mut a = call(msg("idem"));
    a.idempotency_key = Some("idem-1".into());
    let first = native.call(&ep, a.clone(), T).await.expect("call");
    a.call_id = Some(uuid());
    let second = native.call(&ep, a.clone(), T).await.expect("call");
    assert_eq!(first.result, second.result);
    a.call_id = Some(uuid());
    a.payload = Some(Body::json(&msg("changed")));
    let third = native.call(&ep, a, T).await.expect("call");
    assert_eq!(third.status_code, Some(409));
    native.close_all();
    h.stop().await;
}

#[tokio::test]
async fn native_auth_and_capacity_match_http() {
    let echo = Echo::default();
    let node = builder()
        .auth(AuthMode::Token)
        .api_token("tok-0123456789")
        .max_concurrent(1)
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let native = NativeClient::default();
    let ep = ep(h.local_addr());
    let resp = native.call(&ep, call(msg("x")), T).await.expect("call");
    assert_eq!(resp.status_code, Some(401));
    let mut authed = call(json!({"sleep_ms": 500, "messages": []}));
    authed.auth_token = Some("tok-0123456789".into());
    let slow = {
        let native = native.clone();
        let ep = ep.clone();
        let c = authed.clone();
        tokio::spawn(async move { native.call(&ep, c, T).await })
    };
    wait_for("busy", || node.active_jobs() == 1).await;
    authed.call_id = Some(uuid());
    let resp = native.call(&ep, authed, T).await.expect("call");
    assert_eq!(
        resp.error.as_ref().and_then(|e| e.code.as_deref()),
        Some("capacity_exceeded")
    );
    assert_eq!(resp.status_code, Some(429));
    let resp = slow.await.expect("join").expect("call");
    assert!(matches!(resp.outcome(), Outcome::Success(_)));
    native.close_all();
    h.stop().await;
}

#[tokio::test]
async fn garbage_never_affects_in_flight_tasks() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let native = NativeClient::default();
    let ep = ep(addr);
    let c = http();
    // slow tasks in flight on both transports
    let slow_native = {
        let (native, ep) = (native.clone(), ep.clone());
        tokio::spawn(async move {
            native
                .call(
                    &ep,
                    call(json!({"sleep_ms": 600, "messages": [{"role":"user","content":"n"}]})),
                    T,
                )
                .await
        })
    };
    let slow_http = {
        let c = c.clone();
        let mut b = task_body(&uuid(), "h");
        b["payload"]["sleep_ms"] = json!(600);
        tokio::spawn(async move { post(&c, addr, &b).await })
    };
    wait_for("in flight", || node.active_jobs() == 2).await;
    let garbage: Vec<Vec<u8>> = vec![
        b"IICP\x09\x05\x00\x00\x00\x00\x00\x01\xa0".to_vec(), // bad version
        b"IICP\x01\x05\x00\x00\xff\xff\xff\xff".to_vec(),     // oversize length
        b"IICP\x01\x05\x00\x00\x00\x00\x00\x03\xff\xff\xff".to_vec(), // undecodable CBOR
        b"IICP\x01\x05\x00\x00\x00\x00\x00\x10abc".to_vec(),  // truncated frame
        b"\x16\x03\x01\x02\x00garbage".to_vec(),
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        b"GET /iicp/health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".to_vec(),
    ];
    let mut socks = Vec::new();
    for g in garbage {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(&g).await;
        socks.push(s);
    }
    // an established native connection that turns hostile is closed alone
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let init = Message::Init(iicp_proto::message::Init::v1())
        .to_frame()
        .expect("frame");
    s.write_all(&init).await.expect("init");
    s.write_all(b"IICP\x01\x05\x00\x00\x00\x00\x00\x02\xa1\xff")
        .await
        .expect("bad call");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let mut types = Vec::new();
    let mut rest = &buf[..];
    while let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(rest, 1 << 24) {
        types.push(frame.header.msg_type);
        rest = &rest[consumed..];
    }
    assert_eq!(types.first(), Some(&MessageType::ACK));
    assert_eq!(types.last(), Some(&MessageType::CLOSE), "{types:?}");

    let r = slow_native.await.expect("join").expect("call");
    assert!(
        matches!(r.outcome(), Outcome::Success(_)),
        "{:?}",
        r.outcome()
    );
    assert_eq!(slow_http.await.expect("join").status, 200);
    // and the node still serves
    assert_eq!(
        post(&c, addr, &task_body(&uuid(), "after")).await.status,
        200
    );
    drop(socks);
    native.close_all();
    h.stop().await;
}

#[tokio::test]
async fn stop_drains_then_closes_native_sessions() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let native = NativeClient::default();
    let ep = ep(addr);
    let conn = native.connection(&ep).await.expect("connect");
    let slow_native = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.call(
                call(json!({"sleep_ms": 400, "messages": [{"role":"user","content":"n"}]})),
                T,
            )
            .await
        })
    };
    let c = http();
    let slow_http = {
        let c = c.clone();
        let mut b = task_body(&uuid(), "h");
        b["payload"]["sleep_ms"] = json!(400);
        tokio::spawn(async move { post(&c, addr, &b).await })
    };
    wait_for("in flight", || node.active_jobs() == 2).await;
    let stopped = h.stop().await;
    assert!(stopped.drained);
    assert!(!stopped.deregistered, "no directory");
    let r = slow_native
        .await
        .expect("join")
        .expect("answered before CLOSE");
    assert!(matches!(r.outcome(), Outcome::Success(_)));
    assert_eq!(slow_http.await.expect("join").status, 200);
    let info = tokio::time::timeout(T, conn.closed())
        .await
        .expect("closed");
    assert_eq!(info.reason, "graceful");
    assert!(info.by_peer);
    // the port no longer accepts
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn native_off_and_port_in_use() {
    let echo = Echo::default();
    let node = builder().native(false).build().expect("node");
    assert!(node.registration_request().transport_endpoint.is_none());
    let h = serve(&node, echo.handler()).await;
    let native = NativeClient::default();
    assert!(native
        .call(&ep(h.local_addr()), call(msg("x")), Duration::from_secs(3))
        .await
        .is_err());
    // the library never moves to another port
    let again = node
        .bind_and_serve(
            h.local_addr(),
            echo.handler(),
            iicp_node::ServeOptions::default().with_register(false),
        )
        .await;
    assert!(matches!(again, Err(iicp_node::Error::Bind { .. })));
    h.stop().await;
    let on = builder().build().expect("node");
    assert_eq!(
        on.registration_request().transport_endpoint.as_deref(),
        Some("iicp://127.0.0.1:9484")
    );
}
