//! Native framing: the published vectors (`native-framing-v1.json`), frames captured
//! from the Python and Rust SDKs, and property tests of the decoders.

use iicp_proto::frame::{self, Decoded, Frame, FrameError, MessageType, MAX_PAYLOAD};
use iicp_proto::message::{Body, Call, Channel, Message, Outcome, Prefer, Response};
use proptest::prelude::*;
use serde_json::Value;

const FIXTURE: &str = include_str!("data/native-framing-v1.json");
const MANIFEST: &str = include_str!("data/native-framing-fixture-manifest-v1.json");

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim()).expect("hex")
}

#[test]
fn fixture_is_byte_identical_to_the_pinned_digest() {
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(FIXTURE.as_bytes()));
    assert_eq!(
        digest,
        "e73a871c069f194c42716f462d2bde04fb79d769e1e98249c2d17c9af50bcfc1"
    );
    assert!(
        MANIFEST.contains(&digest),
        "manifest pins the fixture digest"
    );
}

#[test]
fn every_framing_vector() {
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture json");
    let scenarios = fixture["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 7);
    for s in scenarios {
        let name = s["name"].as_str().expect("name");
        let wire = unhex(s["wire_hex"].as_str().expect("wire"));
        let exp = &s["expected"];
        let got = Frame::parse_exact(&wire, MAX_PAYLOAD);
        match exp["outcome"].as_str() {
            Some("accept") => {
                let (f, consumed) = got.unwrap_or_else(|e| panic!("{name}: rejected with {e}"));
                assert_eq!(
                    u64::from(f.header.version),
                    exp["version"].as_u64().expect("v"),
                    "{name}"
                );
                assert_eq!(
                    u64::from(f.header.msg_type.0),
                    exp["message_type"].as_u64().expect("t"),
                    "{name}"
                );
                assert_eq!(
                    u64::from(f.header.flags.0),
                    exp["flags"].as_u64().expect("f"),
                    "{name}"
                );
                assert_eq!(
                    hex::encode(f.payload),
                    exp["payload_hex"].as_str().expect("p"),
                    "{name}"
                );
                assert_eq!(
                    consumed as u64,
                    exp["consumed"].as_u64().expect("c"),
                    "{name}"
                );
            }
            Some("reject") => {
                let e = got.expect_err(name);
                assert_eq!(e.code(), exp["reason"].as_str().expect("reason"), "{name}");
            }
            other => panic!("{name}: unknown outcome {other:?}"),
        }
    }
}

/// `(direction, name, frame bytes)` of every complete hex line in a capture file.
/// The integer keys of a CBOR map, in wire order.
fn map_keys(payload: &[u8]) -> Vec<u64> {
    let mut d = minicbor::Decoder::new(payload);
    let n = d.map().expect("map").expect("definite");
    (0..n)
        .map(|_| {
            let k = d.u64().expect("int key");
            d.skip().expect("value");
            k
        })
        .collect()
}

fn capture_frames(text: &str) -> Vec<(char, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Option<(char, String)> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(">> ").or_else(|| t.strip_prefix("<< ")) {
            let dir = t.chars().next().expect("dir");
            let name = rest
                .split_whitespace()
                .find(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                .unwrap_or("")
                .to_owned();
            current = Some((dir, name));
        } else if let Some(h) = t.strip_prefix("hex: ") {
            if let Some((dir, name)) = current.take() {
                out.push((dir, name, unhex(h)));
            }
        }
    }
    out
}

fn check_capture(text: &str, reply_word: &str) {
    let frames = capture_frames(text);
    assert_eq!(frames.len(), 7, "INIT ACK PING PONG CALL RESPONSE CLOSE");
    for (dir, name, wire) in &frames {
        let (f, consumed) =
            Frame::parse_exact(wire, MAX_PAYLOAD).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(consumed, wire.len());
        assert_eq!(
            f.header.msg_type.name(),
            Some(name.as_str()),
            "{dir} {name}"
        );
        let msg = Message::decode(&f.header, f.payload, Channel::Task)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match msg {
            Message::Call(c) => {
                assert_eq!(c.intent.as_deref(), Some("urn:iicp:intent:llm:chat:v1"));
                assert_eq!(c.correlation_id(), Some("call-1"));
                let payload = c
                    .payload
                    .expect("payload")
                    .to_json(Prefer::Json)
                    .expect("json payload");
                assert_eq!(payload["messages"][0]["role"], "user");
            }
            Message::Response(r) => {
                assert_eq!(r.call_id(), Some("call-1"));
                let Outcome::Success(Some(body)) = r.outcome() else {
                    panic!("success expected")
                };
                let result = body.to_json(Prefer::Cbor).expect("cbor result");
                let content = result["choices"][0]["message"]["content"]
                    .as_str()
                    .expect("content");
                assert!(content.contains(reply_word), "{content}");
            }
            Message::Ack(a) => {
                assert_eq!(a.protocol_version, Some(1));
                assert_eq!(a.node_id.as_deref().map(str::len), Some(36));
            }
            Message::Ping(p) | Message::Pong(p) => assert_eq!(
                p.echo.as_deref().map(|e| e.as_slice()),
                Some(&b"ping-echo"[..])
            ),
            Message::Init(i) => assert_eq!(i.protocol_version, Some(1)),
            Message::Close(c) => assert_eq!(c.reason, None, "SDK CLOSE frames are empty"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn python_node_session_capture_decodes() {
    check_capture(
        include_str!("data/native-tcp-python-node.txt"),
        "hello python native",
    );
}

#[test]
fn rust_node_session_capture_decodes() {
    check_capture(
        include_str!("data/native-tcp-rust-node.txt"),
        "hello rust native",
    );
}

#[test]
fn pcap_sessions_decode_frame_by_frame() {
    let frames = capture_frames(include_str!("data/native-tcp-sessions-from-pcap.txt"));
    assert!(frames.len() > 20);
    let mut decoded = 0;
    for (_, name, wire) in frames {
        // some hex lines in this file are cut short; the complete ones must decode fully
        match Frame::decode(&wire, MAX_PAYLOAD) {
            Ok(Decoded::Complete { frame, consumed }) => {
                assert_eq!(consumed, wire.len(), "{name}");
                Message::decode(&frame.header, frame.payload, Channel::Task)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                decoded += 1;
            }
            Ok(Decoded::Incomplete { .. }) => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert!(decoded > 20, "decoded {decoded}");
}

#[test]
fn our_call_is_read_by_the_sdk_rules() {
    // The SDK servers read keys 2, 3, 5 (JSON in bytes) and 15 and ignore the rest.
    let payload = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
    let call = Call {
        protocol_version: Some(1),
        session_id: Some("s-1".into()),
        intent: Some("urn:iicp:intent:llm:chat:v1".into()),
        payload: Some(Body::json(&payload)),
        timeout_s: Some(30),
        call_id: Some("c-1".into()),
        idempotency_key: Some("k".into()),
        ..Call::default()
    };
    let wire = Message::Call(call).to_frame().expect("encode");
    let (f, _) = Frame::parse_exact(&wire, MAX_PAYLOAD).expect("frame");
    let map = iicp_proto::cbor::to_json(f.payload).expect("cbor");
    assert_eq!(map["2"], "s-1");
    assert_eq!(map["3"], "urn:iicp:intent:llm:chat:v1");
    assert_eq!(map["15"], "c-1");
    // key 5 is a byte string of UTF-8 JSON, exactly what the SDKs json.loads()
    let Ok(Decoded::Complete { frame, .. }) = Frame::decode(&wire, MAX_PAYLOAD) else {
        panic!()
    };
    let Message::Call(back) =
        Message::decode(&frame.header, frame.payload, Channel::Task).expect("decode")
    else {
        panic!()
    };
    let Some(Body::Bytes(raw)) = back.payload else {
        panic!("bytes expected")
    };
    assert_eq!(
        serde_json::from_slice::<Value>(&raw).expect("json"),
        payload
    );
    // canonical: keys ascending, as written on the wire
    assert_eq!(map_keys(f.payload), vec![1, 2, 3, 5, 6, 15, 16]);
}

#[test]
fn our_response_is_read_by_the_sdk_rules() {
    // SDK clients read key 5 as CBOR (map or CBOR-in-bytes) and the call id from 15.
    let call = Call {
        session_id: Some("s".into()),
        call_id: Some("c".into()),
        ..Call::default()
    };
    let result =
        serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "ok"}}]});
    let wire = Message::Response(Response::success(&call, Body::cbor(&result)))
        .to_frame()
        .expect("encode");
    let (f, _) = Frame::parse_exact(&wire, MAX_PAYLOAD).expect("frame");
    let map = iicp_proto::cbor::to_json(f.payload).expect("cbor");
    assert_eq!(map["15"], "c");
    assert_eq!(map["3"], "c");
    assert_eq!(map["2"], "s");
    assert_eq!(map["4"], "success");
    assert_eq!(map["5"], result);
    assert_eq!(map_keys(f.payload), vec![1, 2, 3, 4, 5, 12, 15]);
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Body::Bytes),
        "[a-z]{0,12}".prop_map(|s| Body::cbor(&serde_json::json!({"k": s, "n": 1}))),
    ]
}

prop_compose! {
    fn arb_call()(session in proptest::option::of("[a-z0-9-]{1,20}"), intent in proptest::option::of("urn:iicp:intent:[a-z]{1,8}:[a-z]{1,8}:v[0-9]"),
                  payload in proptest::option::of(arb_body()), timeout in proptest::option::of(1u64..3600), call_id in proptest::option::of("[a-f0-9-]{1,36}"),
                  trace in proptest::option::of(any::<[u8; 16]>()), task_id in proptest::option::of("[a-f0-9-]{36}"), max_tokens in proptest::option::of(any::<u64>())) -> Call {
        Call { session_id: session, intent, payload, timeout_s: timeout, call_id, trace_id: trace.map(Into::into), task_id, max_tokens, ..Call::default() }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn call_round_trips(call in arb_call()) {
        let wire = Message::Call(call.clone()).to_frame().expect("encode");
        let (f, _) = Frame::parse_exact(&wire, MAX_PAYLOAD).expect("frame");
        prop_assert_eq!(Message::decode(&f.header, f.payload, Channel::Task).expect("decode"), Message::Call(call));
    }

    #[test]
    fn response_round_trips(status in proptest::option::of("[a-z]{1,10}"), code in proptest::option::of(100u64..600), msg in proptest::option::of(".{0,30}"),
                            result in proptest::option::of(arb_body()), fin in proptest::option::of(any::<bool>()), tokens in proptest::option::of(any::<u64>())) {
        let r = Response { status, status_code: code, message: msg, result, is_final: fin, tokens_used: tokens, legacy_call_id: Some("c".into()), ..Response::default() };
        let wire = Message::Response(r.clone()).to_frame().expect("encode");
        let (f, _) = Frame::parse_exact(&wire, MAX_PAYLOAD).expect("frame");
        prop_assert_eq!(Message::decode(&f.header, f.payload, Channel::Task).expect("decode"), Message::Response(r));
    }

    /// The frame decoder never panics and never claims more bytes than it was given.
    #[test]
    fn frame_decoder_total(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0u32..1024) {
        match Frame::decode(&bytes, max) {
            Ok(Decoded::Complete { frame, consumed }) => {
                prop_assert!(consumed <= bytes.len());
                prop_assert!(frame.header.length <= max);
            }
            Ok(Decoded::Incomplete { needed, .. }) => prop_assert!(needed > bytes.len() || needed == frame::HEADER_LEN),
            Err(FrameError::TooLarge { length, .. }) => prop_assert!(length > max),
            Err(_) => {}
        }
    }

    /// Random payloads under every type byte never panic the message decoder.
    #[test]
    fn message_decoder_total(t in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..96), relay in any::<bool>()) {
        let h = frame::FrameHeader::new(MessageType(t), payload.len() as u32);
        let ch = if relay { Channel::Relay } else { Channel::Task };
        let _ = Message::decode(&h, &payload, ch);
    }

    /// JSON text transcoded to CBOR in one pass gives the bytes of its parsed value,
    /// whatever the layout of the text (spacing, key order).
    #[test]
    fn json_text_transcodes_like_its_value(v in arb_json(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            serde_json::to_string(&v).unwrap()
        };
        // (compared with the value the same text parses to: serde_json's float parsing
        // may move the last bit of a printed float)
        let parsed: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(
            iicp_proto::cbor::json_text_to_vec(&text).unwrap(),
            iicp_proto::cbor::json_to_vec(&parsed)
        );
    }

    /// Structured CBOR garbage (valid items of the wrong shape) never panics either.
    #[test]
    fn message_decoder_total_on_cbor(t in 1u8..15, v in arb_json()) {
        let payload = iicp_proto::cbor::json_to_vec(&v);
        let h = frame::FrameHeader::new(MessageType(t), payload.len() as u32);
        let _ = Message::decode(&h, &payload, Channel::Task);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[0-9a-z]{1,3}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Many random byte strings through the decoders: the stable-toolchain stand-in for the
/// coverage-guided targets in `fuzz/` (which need cargo-fuzz and `RUSTC_BOOTSTRAP=1`).
#[test]
fn decoders_survive_random_bytes() {
    use rand_core::RngCore;
    let mut rng = rand_chacha_like(7);
    let mut buf = vec![0u8; 512];
    for i in 0..200_000u32 {
        let len = (rng.next_u32() % 512) as usize;
        rng.fill_bytes(&mut buf[..len]);
        if i % 3 == 0 && len >= 12 {
            buf[..4].copy_from_slice(b"IICP");
            buf[4] = 1;
            let plen = (len - 12) as u32;
            buf[8..12].copy_from_slice(&plen.to_be_bytes());
        }
        if let Ok(Decoded::Complete { frame, .. }) = Frame::decode(&buf[..len], MAX_PAYLOAD) {
            let _ = Message::decode(&frame.header, frame.payload, Channel::Task);
            let _ = Message::decode(&frame.header, frame.payload, Channel::Relay);
        }
        let _ = iicp_proto::cbor::normalize(&buf[..len]);
        let _ = iicp_proto::cbor::to_json(&buf[..len]);
    }
}

/// A small deterministic xorshift RNG so the test needs no extra crate.
fn rand_chacha_like(seed: u64) -> XorShift {
    XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

struct XorShift(u64);

impl rand_core::RngCore for XorShift {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// The transcoder's edges: long items (heads of more than one byte), repeated keys (the
/// last counts, as in a parsed value), escapes, numbers of every kind, and errors.
#[test]
fn json_text_transcoding_edges() {
    use iicp_proto::cbor::{json_text_to_vec, json_to_vec};
    let long_array = format!("[{}]", vec!["1"; 300].join(","));
    let wide_map = format!(
        "{{{}}}",
        (0..30)
            .map(|i| format!("\"k{i}\": {i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for text in [
        long_array.as_str(),
        wide_map.as_str(),
        r#"{"b": 1, "a": 2, "b": 3}"#,
        r#"{"esc\"aped": "line\nbreak \u00e9 \ud83d\ude00", "": ""}"#,
        r#"[-1, -9223372036854775808, 18446744073709551615, 0.5, 1.0, -0.0, 1e300]"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        "null",
        " true ",
    ] {
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            json_text_to_vec(text).unwrap(),
            json_to_vec(&parsed),
            "{text}"
        );
    }
    for bad in ["", "{", r#"{"a": 1} x"#, "[1,]", "nul"] {
        assert!(json_text_to_vec(bad).is_err(), "{bad:?}");
    }
}
