//! Issue 16 §4 against a real node on 127.0.0.1, with raw socket bytes: a CALL whose
//! map repeats a key (or uses indefinite lengths) is refused with CLOSE
//! `invalid_payload` and never executed; DISCOVER is answered with the node's own
//! entry; bad magic after a valid frame closes with zero bytes, while the first bytes of
//! a connection still choose HTTP (ADR 0004, ADR 0007).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use iicp_proto::cbor;
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proto::frame::{Decoded, Frame, FrameHeader, MessageType, MAX_PAYLOAD};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NODE_ID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
/// The issue's INIT: `{1: 1, 2: 1}`.
const INIT: &str = "494943500101000000000005a201010201";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
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

/// `{2: "call-1", 3: intent…, 5: bstr(JSON)}` with one key 3 per intent.
fn call_payload(intents: &[&str]) -> Vec<u8> {
    let mut p = vec![0xa0 | (2 + intents.len() as u8), 0x02];
    text("call-1", &mut p);
    for i in intents {
        p.push(0x03);
        text(i, &mut p);
    }
    let json = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
    p.extend([0x05, 0x58, json.len() as u8]);
    p.extend(json);
    p
}

/// Sends INIT then `payload` as a frame of `msg_type` on a fresh connection; returns the
/// frames received until `want` arrived or the node closed (5 s at most).
async fn exchange(addr: SocketAddr, msg_type: u8, payload: &[u8], want: usize) -> Vec<(u8, Value)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut wire = unhex(INIT);
    wire.extend(frame(msg_type, payload));
    s.write_all(&wire).await.expect("write");
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut out = Vec::new();
        let mut at = 0;
        while let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&buf[at..], MAX_PAYLOAD)
        {
            let v = if frame.payload.is_empty() {
                Value::Null
            } else {
                cbor::to_json(frame.payload).expect("the node sends strict CBOR")
            };
            out.push((frame.header.msg_type.0, v));
            at += consumed;
        }
        if out.len() >= want {
            return out;
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn duplicate_keys_and_indefinite_lengths_are_never_executed() {
    let echo = Echo::default();
    let node = builder().build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();

    // the issue's stimulus: key 3 twice (a custom intent, then the chat intent)
    let dup = call_payload(&["urn:iicp:intent:x.acc:other:v1", CHAT]);
    let got = exchange(addr, 0x05, &dup, 3).await;
    let types: Vec<u8> = got.iter().map(|f| f.0).collect();
    assert_eq!(types, vec![0x02, 0x07], "ACK, then CLOSE and nothing else");
    assert_eq!(got[1].1["1"], "invalid_payload");

    // the other order, a duplicate inside a key-5 map, indefinite lengths
    let dup_rev = call_payload(&[CHAT, "urn:iicp:intent:x.acc:other:v1"]);
    let mut nested = vec![0xa3, 0x02];
    text("call-1", &mut nested);
    nested.push(0x03);
    text(CHAT, &mut nested);
    // 5: {"messages": [], "messages": [{"role": "user", "content": "x"}]}
    nested.extend([0x05, 0xa2, 0x68]);
    nested.extend(b"messages");
    nested.push(0x80);
    nested.push(0x68);
    nested.extend(b"messages");
    nested.extend([0x81, 0xa2, 0x64]);
    nested.extend(b"role");
    nested.push(0x64);
    nested.extend(b"user");
    nested.push(0x67);
    nested.extend(b"content");
    nested.extend([0x61, b'x']);
    let mut indefinite = call_payload(&[CHAT]);
    indefinite[0] = 0xbf;
    indefinite.push(0xff);
    for (name, payload) in [
        ("reversed duplicate", dup_rev),
        ("nested duplicate", nested),
        ("indefinite map", indefinite),
    ] {
        let got = exchange(addr, 0x05, &payload, 3).await;
        assert_eq!(
            got.last().map(|f| (f.0, f.1["1"].clone())),
            Some((0x07, json!("invalid_payload"))),
            "{name}: {got:?}"
        );
    }
    // JSON in key 5 that repeats a member name: refused too, as an error RESPONSE (the
    // frame itself is well-formed CBOR)
    let mut json_dup = vec![0xa3, 0x02];
    text("call-1", &mut json_dup);
    json_dup.push(0x03);
    text(CHAT, &mut json_dup);
    let body = br#"{"messages":[{"role":"user","content":"a"}],"messages":[]}"#;
    json_dup.extend([0x05, 0x58, body.len() as u8]);
    json_dup.extend(body);
    let got = exchange(addr, 0x05, &json_dup, 2).await;
    assert_eq!(got.get(1).map(|f| f.0), Some(0x06), "{got:?}");
    assert_eq!(got[1].1["100"], 422, "{got:?}");
    assert_eq!(echo.count(), 0, "the backend was never called");

    // the clean CALL runs, on the same node
    let got = exchange(addr, 0x05, &call_payload(&[CHAT]), 2).await;
    assert_eq!(got[1].0, 0x06, "{got:?}");
    assert_eq!(
        got[1].1["5"]["choices"][0]["message"]["content"],
        "echo: hi"
    );
    assert_eq!(echo.count(), 1);
    h.stop().await;
}

fn sdk_discover(intent: &str) -> Vec<u8> {
    let mut p = vec![0xa2, 0x02];
    text("discover-1", &mut p);
    p.push(0x03);
    text(intent, &mut p);
    p
}

#[tokio::test]
async fn discover_answers_with_the_nodes_own_entry() {
    let echo = Echo::default();
    let node = builder()
        .node_id(NODE_ID)
        .cx_key(CxKeyPair::generate(&mut rand_core::OsRng))
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();

    // the SDK clients' request, byte for byte as in the issue
    let got = exchange(addr, 0x03, &sdk_discover(CHAT), 2).await;
    assert_eq!(got.len(), 2, "ACK and the answer, within 5 s: {got:?}");
    let (t, reply) = &got[1];
    assert_eq!(*t, 0x06, "a RESPONSE frame");
    assert_eq!(reply["2"], "discover-1");
    assert_eq!(reply["3"], CHAT);
    let nodes = reply["20"].as_array().expect("node list");
    assert_eq!(nodes.len(), 1);
    let me = &nodes[0];
    assert_eq!(me["node_id"], NODE_ID);
    assert_eq!(me["endpoint"], "http://127.0.0.1:9484");
    assert_eq!(me["transport_endpoint"], "iicp://127.0.0.1:9484");
    assert_eq!(me["region"], "test");
    assert_eq!(me["models"], json!(["stub-model"]));
    assert_eq!(me["available"], true);
    assert_eq!(me["load"], 0.0);
    assert_eq!(me["capabilities"][0]["intent"], CHAT);
    assert_eq!(me["key_ready"], true);
    let cx = &me["cx_public_key"];
    assert!(cx["key"].as_str().is_some_and(|k| !k.is_empty()), "{cx}");
    assert!(
        cx["features"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "native_cx_v1")),
        "{cx}"
    );
    // what the entry never holds: credentials
    let shown = me.to_string();
    for secret in ["node_token", "hmac", "secret", "private", "api_token"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // it parses as the directory's NODELIST entry
    let entry: iicp_proto::directory::NodeEntry =
        serde_json::from_value(me.clone()).expect("node entry");
    assert!(entry.serves(CHAT));

    // the spec form {1: intent}, with a limit
    let mut spec = vec![0xa2, 0x01];
    text(CHAT, &mut spec);
    spec.extend([0x02, 0x05]);
    let got = exchange(addr, 0x03, &spec, 2).await;
    assert_eq!(got[1].1["20"][0]["node_id"], NODE_ID);
    assert!(got[1].1.get("2").is_none());

    // an intent the node does not serve, an invalid one, and its own id excluded
    for (name, payload) in [
        ("unserved", sdk_discover("urn:iicp:intent:llm:embedding:v1")),
        ("invalid", sdk_discover("not-an-intent")),
        ("excluded", {
            let mut p = vec![0xa2, 0x01];
            text(CHAT, &mut p);
            p.extend([0x04, 0x81]);
            text(NODE_ID, &mut p);
            p
        }),
        ("limit 0", {
            let mut p = vec![0xa2, 0x01];
            text(CHAT, &mut p);
            p.extend([0x02, 0x00]);
            p
        }),
    ] {
        let got = exchange(addr, 0x03, &payload, 2).await;
        assert_eq!(got.get(1).map(|f| f.0), Some(0x06), "{name}: {got:?}");
        assert_eq!(got[1].1["20"], json!([]), "{name}");
    }
    assert_eq!(echo.count(), 0, "DISCOVER runs no task");
    h.stop().await;
}

#[tokio::test]
async fn bad_magic_after_a_valid_frame_closes_with_zero_bytes() {
    let node = builder().build().expect("node");
    let h = serve(&node, Echo::default().handler()).await;
    let addr = h.local_addr();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&unhex(INIT)).await.expect("init");
    let mut ack = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack))
        .await
        .expect("ack in time")
        .expect("ack header");
    assert_eq!(&ack[..4], b"IICP");
    assert_eq!(ack[5], 0x02);
    let mut rest = vec![0u8; u32::from_be_bytes([ack[8], ack[9], ack[10], ack[11]]) as usize];
    s.read_exact(&mut rest).await.expect("ack payload");
    // 12 bytes of garbage magic
    s.write_all(b"GARBAGEMAGIC").await.expect("garbage");
    let mut after = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut after))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!((n, after.len()), (0, 0), "EOF, not a CLOSE frame");

    // the first bytes of a connection still pick HTTP (ADR 0004)
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /iicp/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("http");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(40)])
    );
    h.stop().await;
}
