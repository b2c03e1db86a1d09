//! DISCOVER routing and the structure rules of ADR 0007, over real sockets on
//! 127.0.0.1: a DISCOVER is answered (the handler's nodes, bounded by the limit, or an
//! empty list by default) instead of being dropped; a CALL with a duplicate key never
//! reaches the handler; bad magic after a valid frame gets zero bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::cbor;
use iicp_proto::frame::{Decoded, Frame, FrameHeader, MessageType, MAX_PAYLOAD};
use iicp_proto::message::{Body, Call, Discover, Response};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::{BoxFuture, CallContext, CallHandler, DISCOVER_DEFAULT_LIMIT};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INTENT: &str = "urn:iicp:intent:llm:chat:v1";
const INIT: &str = "494943500101000000000005a201010201";

/// Counts CALLs; lists `nodes` nodes for DISCOVER when `nodes` is set.
struct Handler {
    calls: Arc<AtomicUsize>,
    nodes: Option<usize>,
}

impl CallHandler for Handler {
    fn handle(&self, call: Call, _ctx: CallContext) -> BoxFuture<'static, Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Response::success(&call, Body::cbor(&json!({"ok": true}))) })
    }

    fn discover(&self, request: &Discover, _ctx: &CallContext) -> Vec<Value> {
        match self.nodes {
            Some(n) if request.intent.as_deref() == Some(INTENT) => (0..n)
                .map(|i| json!({"node_id": format!("node-{i}"), "endpoint": "http://127.0.0.1:1"}))
                .collect(),
            _ => Vec::new(),
        }
    }
}

async fn start(handler: Arc<dyn CallHandler>) -> (SocketAddr, Trigger) {
    let listener = Listener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerConfig::default(),
    )
    .await
    .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(listener.serve(
        Services {
            http: None,
            native: Some(handler),
        },
        shutdown,
    ));
    (addr, trigger)
}

fn frame(msg_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = FrameHeader::new(MessageType(msg_type), payload.len() as u32)
        .encode()
        .to_vec();
    f.extend(payload);
    f
}

fn text(s: &str, out: &mut Vec<u8>) {
    assert!(s.len() < 256);
    if s.len() < 24 {
        out.push(0x60 | s.len() as u8);
    } else {
        out.extend([0x78, s.len() as u8]);
    }
    out.extend(s.as_bytes());
}

/// Reads whole frames until `want` arrived, EOF, or 5 s passed; returns them and the
/// raw bytes.
async fn read_frames(s: &mut TcpStream, want: usize) -> (Vec<(MessageType, Vec<u8>)>, usize) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut at = 0;
        frames.clear();
        while let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&buf[at..], MAX_PAYLOAD)
        {
            frames.push((frame.header.msg_type, frame.payload.to_vec()));
            at += consumed;
        }
        if frames.len() >= want {
            return (frames, buf.len());
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (frames, buf.len()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn discover_over_socket(addr: SocketAddr, payload: &[u8]) -> Value {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut wire = hex::decode(INIT).expect("hex");
    wire.extend(frame(0x03, payload));
    s.write_all(&wire).await.expect("write");
    let (frames, _) = read_frames(&mut s, 2).await;
    assert_eq!(frames.len(), 2, "ACK and an answer to the DISCOVER");
    assert_eq!(frames[0].0, MessageType::ACK);
    assert_eq!(frames[1].0, MessageType::RESPONSE);
    cbor::to_json(&frames[1].1).expect("cbor map")
}

fn sdk_discover(intent: &str) -> Vec<u8> {
    let mut p = vec![0xa2, 0x02];
    text("discover-1", &mut p);
    p.push(0x03);
    text(intent, &mut p);
    p
}

fn spec_discover(intent: &str, limit: u8) -> Vec<u8> {
    let mut p = vec![0xa2, 0x01];
    text(intent, &mut p);
    p.extend([0x02, 0x18, limit]);
    p
}

#[tokio::test]
async fn discover_is_answered_by_default_with_an_empty_list() {
    // a handler that knows nothing about DISCOVER (a closure) still answers it
    let echo: Arc<dyn CallHandler> = Arc::new(|call: Call, _ctx: CallContext| async move {
        Response::success(&call, Body::cbor(&json!({})))
    });
    let (addr, trigger) = start(echo).await;
    let reply = discover_over_socket(addr, &sdk_discover(INTENT)).await;
    assert_eq!(reply["2"], "discover-1");
    assert_eq!(reply["3"], INTENT);
    assert_eq!(reply["20"], json!([]));
    trigger.fire();
}

#[tokio::test]
async fn discover_lists_the_handlers_nodes_up_to_the_limit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (addr, trigger) = start(Arc::new(Handler {
        calls: Arc::clone(&calls),
        nodes: Some(150),
    }))
    .await;
    // SDK form: no limit → the spec default of 10
    let reply = discover_over_socket(addr, &sdk_discover(INTENT)).await;
    let nodes = reply["20"].as_array().expect("list");
    assert_eq!(nodes.len(), DISCOVER_DEFAULT_LIMIT);
    assert_eq!(nodes[0]["node_id"], "node-0");
    // spec form with a limit; one above the cap is held to the cap
    let reply = discover_over_socket(addr, &spec_discover(INTENT, 3)).await;
    assert_eq!(reply["20"].as_array().expect("list").len(), 3);
    assert!(reply.get("2").is_none(), "no session id to echo: {reply}");
    let reply = discover_over_socket(addr, &spec_discover(INTENT, 200)).await;
    assert_eq!(reply["20"].as_array().expect("list").len(), 100);
    // another intent: an empty list
    let reply = discover_over_socket(addr, &sdk_discover("urn:iicp:intent:llm:embedding:v1")).await;
    assert_eq!(reply["20"], json!([]));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "DISCOVER is not a CALL");
    trigger.fire();
}

#[tokio::test]
async fn a_call_with_a_duplicate_key_never_reaches_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (addr, trigger) = start(Arc::new(Handler {
        calls: Arc::clone(&calls),
        nodes: None,
    }))
    .await;
    // {2: "call-1", 3: other, 3: chat, 5: h'{}'}
    let mut p = vec![0xa4, 0x02];
    text("call-1", &mut p);
    p.push(0x03);
    text("urn:iicp:intent:x.acc:other:v1", &mut p);
    p.push(0x03);
    text(INTENT, &mut p);
    p.extend([0x05, 0x42, b'{', b'}']);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut wire = hex::decode(INIT).expect("hex");
    wire.extend(frame(0x05, &p));
    s.write_all(&wire).await.expect("write");
    let (frames, _) = read_frames(&mut s, 3).await;
    let types: Vec<MessageType> = frames.iter().map(|f| f.0).collect();
    assert_eq!(types, vec![MessageType::ACK, MessageType::CLOSE]);
    let close = cbor::to_json(&frames[1].1).expect("close map");
    assert_eq!(close["1"], "invalid_payload");
    // the same CALL without the duplicate is executed
    let mut ok = vec![0xa3, 0x02];
    text("call-1", &mut ok);
    ok.push(0x03);
    text(INTENT, &mut ok);
    ok.extend([0x05, 0x42, b'{', b'}']);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut wire = hex::decode(INIT).expect("hex");
    wire.extend(frame(0x05, &ok));
    s.write_all(&wire).await.expect("write");
    let (frames, _) = read_frames(&mut s, 2).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].0, MessageType::RESPONSE);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the clean CALL ran");
    trigger.fire();
}

#[tokio::test]
async fn bad_magic_after_the_handshake_gets_zero_bytes() {
    let (addr, trigger) = start(Arc::new(Handler {
        calls: Arc::new(AtomicUsize::new(0)),
        nodes: None,
    }))
    .await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&hex::decode(INIT).expect("hex"))
        .await
        .expect("init");
    let (frames, acked) = read_frames(&mut s, 1).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, MessageType::ACK);
    s.write_all(b"XICP\x01\x09\x00\x00\x00\x00\x00\x00")
        .await
        .expect("garbage");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!((n, rest.len()), (0, 0), "EOF without a CLOSE frame");
    assert!(acked > 0);
    trigger.fire();
}
