//! Structure rules of received native payloads (framing §4.1, §9.6, §10.6; ADR 0007):
//! duplicate map keys at any depth and indefinite-length items are refused with CLOSE
//! `invalid_payload` and never reach the application, while non-canonical forms
//! (DESIGN T5) stay accepted; the peers' captured traffic passes the rules; bad magic
//! after a valid frame closes with zero bytes; DISCOVER is handed to a task server and
//! answered in the deployed shape.

use std::time::Instant;

use iicp_proto::cbor::{self, CborError};
use iicp_proto::frame::{Decoded, Frame, FrameHeader, MessageType, MAX_PAYLOAD};
use iicp_proto::message::{
    Channel, CloseReason, Discover, DiscoverReply, Message, MessageError, Prefer,
};
use iicp_proto::session::{Config, Event, Session, SessionError};
use proptest::prelude::*;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("hex")
}

/// The issue's INIT: `{1: 1, 2: 1}`.
const INIT: &str = "494943500101000000000005a201010201";

/// A CBOR head in its shortest form, or with an 8-byte argument when `wide`.
fn head(major: u8, n: u64, wide: bool, out: &mut Vec<u8>) {
    let m = major << 5;
    if wide {
        out.push(m | 27);
        out.extend(n.to_be_bytes());
    } else if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend([m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend((n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend((n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend(n.to_be_bytes());
    }
}

fn text(s: &str, out: &mut Vec<u8>) {
    head(3, s.len() as u64, false, out);
    out.extend(s.as_bytes());
}

fn frame(msg_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = FrameHeader::new(MessageType(msg_type), payload.len() as u32)
        .encode()
        .to_vec();
    f.extend(payload);
    f
}

/// A deployed-dialect CALL `{2: "call-1", 3: intent, …, 5: bstr JSON}` with one key 3
/// per entry of `intents`.
fn call_payload(intents: &[&str]) -> Vec<u8> {
    let mut p = Vec::new();
    head(5, 2 + intents.len() as u64, false, &mut p);
    p.push(0x02);
    text("call-1", &mut p);
    for i in intents {
        p.push(0x03);
        text(i, &mut p);
    }
    p.push(0x05);
    let json = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
    head(2, json.len() as u64, false, &mut p);
    p.extend(json);
    p
}

/// The issue's stimulus: key 3 twice, first a custom intent, then the chat intent.
fn call_with_key3_twice() -> Vec<u8> {
    call_payload(&[
        "urn:iicp:intent:x.acc:other:v1",
        "urn:iicp:intent:llm:chat:v1",
    ])
}

/// Feeds INIT then `payload` as a frame of `msg_type` to a fresh server session; returns
/// the frames it sent and its events.
fn server_after_init(msg_type: u8, payload: &[u8]) -> (Vec<Message>, Vec<Event>, bool) {
    let t0 = Instant::now();
    let mut s = Session::new(Config::server(), t0);
    let mut wire = unhex(INIT);
    wire.extend(frame(msg_type, payload));
    let _ = s.handle_input(&wire, t0);
    let mut out = Vec::new();
    s.take_transmit(&mut out);
    let mut sent = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&out[at..], MAX_PAYLOAD)
        else {
            panic!("partial frame queued")
        };
        sent.push(Message::decode(&frame.header, frame.payload, Channel::Task).expect("ours"));
        at += consumed;
    }
    let events = std::iter::from_fn(|| s.poll_event()).collect();
    (sent, events, s.is_closed())
}

fn close_reason(sent: &[Message]) -> Option<String> {
    sent.iter().find_map(|m| match m {
        Message::Close(c) => c.reason.clone(),
        _ => None,
    })
}

fn has_call(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Call(_)))
}

#[test]
fn the_issue_stimulus_is_refused_with_invalid_payload_and_never_executed() {
    let (sent, events, closed) = server_after_init(0x05, &call_with_key3_twice());
    assert!(closed);
    assert!(matches!(sent.first(), Some(Message::Ack(_))), "{sent:?}");
    assert_eq!(close_reason(&sent).as_deref(), Some("invalid_payload"));
    assert!(!has_call(&events), "{events:?}");
    // the same CALL with one key 3 is executed
    let single = call_payload(&["urn:iicp:intent:x.acc:other:v1"]);
    let (sent, events, closed) = server_after_init(0x05, &single);
    assert!(!closed, "{sent:?}");
    let Some(Event::Call(call)) = events.iter().find(|e| matches!(e, Event::Call(_))) else {
        panic!("{events:?}")
    };
    assert_eq!(
        call.intent.as_deref(),
        Some("urn:iicp:intent:x.acc:other:v1")
    );
}

#[test]
fn structural_violations_at_any_depth_close_invalid_payload() {
    let cases: &[(&str, u8, &str)] = &[
        ("indefinite CALL map", 0x05, "bf 02 61 73 03 61 69 ff"),
        (
            "indefinite array in a CALL",
            0x05,
            "a2 02 61 73 15 9f 61 61 ff",
        ),
        ("indefinite text in a CALL", 0x05, "a1 02 7f 61 73 ff"),
        (
            "indefinite bytes as key 5",
            0x05,
            "a2 02 61 73 05 5f 41 7b 41 7d ff",
        ),
        (
            "duplicate key in key-5 map",
            0x05,
            "a2 02 61 73 05 a2 61 61 01 61 61 02",
        ),
        (
            "duplicate metadata key",
            0x05,
            "a2 02 61 73 17 a2 61 6b 61 31 61 6b 61 32",
        ),
        (
            "duplicate non-shortest key",
            0x05,
            "a2 02 61 73 18 02 61 74",
        ),
        ("duplicate key in a PING", 0x09, "a2 01 41 00 01 41 01"),
        ("duplicate key in a CLOSE", 0x07, "a2 01 61 61 01 61 62"),
        ("indefinite DISCOVER", 0x03, "bf 01 61 69 ff"),
        ("duplicate key in DISCOVER", 0x03, "a2 03 61 69 03 61 6a"),
        ("duplicate key in FEEDBACK", 0x08, "a2 01 61 63 01 61 64"),
    ];
    for (name, t, hex) in cases {
        let (sent, events, closed) = server_after_init(*t, &unhex(hex));
        assert!(closed, "{name}");
        assert_eq!(
            close_reason(&sent).as_deref(),
            Some("invalid_payload"),
            "{name}: {sent:?}"
        );
        assert!(
            events
                .iter()
                .all(|e| matches!(e, Event::Established { .. } | Event::Closed { .. })),
            "{name}: nothing reaches the application: {events:?}"
        );
    }
    // the error itself says what the rule was
    let e = Message::decode(
        &FrameHeader::new(MessageType::CALL, 0),
        &call_with_key3_twice(),
        Channel::Task,
    )
    .expect_err("dup");
    assert!(matches!(e, MessageError::Cbor(CborError::DuplicateKey)));
    assert_eq!(e.close_reason(), CloseReason::InvalidPayload);
    // malformed CBOR keeps its own reason
    let (sent, _, _) = server_after_init(0x05, &unhex("a2 02"));
    assert_eq!(close_reason(&sent).as_deref(), Some("cbor_decode_error"));
}

#[test]
fn non_canonical_calls_are_still_executed() {
    // DESIGN T5 — keys out of order (as the Rust SDK sends), non-shortest integers and
    // lengths, a float of every width in unknown keys, a tagged map and a tagged value
    let cases: &[(&str, &str)] = &[
        ("reverse key order", "a3 0f 62 63 31 05 42 7b 7d 02 61 73"),
        (
            "non-shortest key and length",
            "a2 18 02 78 01 73 19 0005 42 7b 7d",
        ),
        (
            "floats of every width",
            "a5 02 61 73 05 42 7b 7d 18 63 f9 3c00 18 64 fa 3f800000 18 65 fb 3ff0000000000000",
        ),
        (
            "tagged map and value",
            "d9 ffff a2 02 d8 25 61 73 05 42 7b 7d",
        ),
    ];
    for (name, hex) in cases {
        let (sent, events, closed) = server_after_init(0x05, &unhex(hex));
        assert!(!closed, "{name}: {sent:?}");
        let Some(Event::Call(call)) = events.iter().find(|e| matches!(e, Event::Call(_))) else {
            panic!("{name}: {events:?}")
        };
        assert_eq!(call.session_id.as_deref(), Some("s"), "{name}");
        assert_eq!(
            call.payload
                .as_ref()
                .expect("payload")
                .to_json(Prefer::Json)
                .expect("json"),
            serde_json::json!({}),
            "{name}"
        );
    }
}

/// Frames (hex) of a capture file, payload only, with their direction and type name.
fn capture_payloads(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with(">> ") || t.starts_with("<< ") {
            name = t.to_owned();
        } else if let Some(h) = t.strip_prefix("hex: ") {
            let wire = unhex(h);
            if let Ok(Decoded::Complete { frame, .. }) = Frame::decode(&wire, MAX_PAYLOAD) {
                out.push((name.clone(), frame.payload.to_vec()));
            }
        }
    }
    out
}

#[test]
fn every_captured_peer_frame_passes_the_structure_rules() {
    // ADR 0007's evidence: neither the Python nor the Rust SDK (0.7.109) sends an
    // indefinite-length item or a duplicate key, at the top or inside the CBOR-in-bytes
    // results of their RESPONSEs
    let mut frames = 0;
    let mut nested = 0;
    for text in [
        include_str!("data/native-tcp-python-node.txt"),
        include_str!("data/native-tcp-rust-node.txt"),
        include_str!("data/native-tcp-sessions-from-pcap.txt"),
    ] {
        for (name, payload) in capture_payloads(text) {
            frames += 1;
            if payload.is_empty() {
                continue;
            }
            cbor::normalize(&payload).unwrap_or_else(|e| panic!("{name}: {e}"));
            let map = cbor::to_json(&payload).unwrap_or_else(|e| panic!("{name}: {e}"));
            // key 5 of a RESPONSE is CBOR inside a byte string: walk it too
            if name.contains("RESPONSE") {
                let mut d = minicbor::Decoder::new(&payload);
                let n = d.map().expect("map").expect("definite");
                for _ in 0..n {
                    let k = d.u64().expect("int key");
                    if k == 5 && d.datatype().expect("type") == minicbor::data::Type::Bytes {
                        let inner = d.bytes().expect("bytes");
                        cbor::normalize(inner).unwrap_or_else(|e| panic!("{name}: {e}"));
                        nested += 1;
                    } else {
                        d.skip().expect("skip");
                    }
                }
            }
            assert!(map.is_object(), "{name}");
        }
    }
    assert!(frames >= 100, "{frames} frames");
    assert!(nested >= 20, "{nested} nested results");
}

#[test]
fn bad_magic_after_a_valid_frame_closes_with_zero_bytes() {
    let t0 = Instant::now();
    let mut s = Session::new(Config::server(), t0);
    let _ = s.handle_input(&unhex(INIT), t0);
    let mut ack = Vec::new();
    s.take_transmit(&mut ack);
    assert_eq!(ack[5], MessageType::ACK.0);
    // 12 bytes that are not a frame header
    let _ = s.handle_input(b"XXXX\x01\x09\x00\x00\x00\x00\x00\x00", t0);
    assert!(s.is_closed());
    assert_eq!(s.pending_transmit(), 0, "no CLOSE frame after bad magic");
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        matches!(events.last(), Some(Event::Closed { reason, by_peer: false }) if reason == "invalid_magic"),
        "{events:?}"
    );
    // and the same after a PING was answered on the connection
    let mut s = Session::new(Config::server(), t0);
    let mut wire = unhex(INIT);
    wire.extend(frame(0x09, &[]));
    wire.extend(b"GET / HTTP/1.1\r\n");
    let _ = s.handle_input(&wire, t0);
    let mut out = Vec::new();
    s.take_transmit(&mut out);
    let types: Vec<u8> = {
        let mut v = Vec::new();
        let mut at = 0;
        while let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&out[at..], MAX_PAYLOAD)
        {
            v.push(frame.header.msg_type.0);
            at += consumed;
        }
        v
    };
    assert_eq!(types, vec![0x02, 0x0a], "ACK and PONG, then nothing");
    assert!(s.is_closed());
}

#[test]
fn discover_is_handed_to_task_servers_and_answered_in_the_deployed_shape() {
    let sdk = "a2 02 6a 646973636f7665722d31 03 78 1b 75726e3a696963703a696e74656e743a6c6c6d3a636861743a7631";
    let spec = "a2 01 78 1b 75726e3a696963703a696e74656e743a6c6c6d3a636861743a7631 02 05";
    for (name, hex, session_id, limit) in [
        ("sdk", sdk, Some("discover-1"), None),
        ("spec", spec, None, Some(5)),
    ] {
        let t0 = Instant::now();
        let mut s = Session::new(Config::server(), t0);
        let mut wire = unhex(INIT);
        wire.extend(frame(0x03, &unhex(hex)));
        let _ = s.handle_input(&wire, t0);
        let mut ack = Vec::new();
        s.take_transmit(&mut ack);
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        let Some(Event::Discover(d)) = events.iter().find(|e| matches!(e, Event::Discover(_)))
        else {
            panic!("{name}: {events:?}")
        };
        assert_eq!(d.intent.as_deref(), Some("urn:iicp:intent:llm:chat:v1"));
        assert_eq!(d.session_id.as_deref(), session_id, "{name}");
        assert_eq!(d.limit, limit, "{name}");
        let node = serde_json::json!({"node_id": "n-1", "endpoint": "http://127.0.0.1:1"});
        s.send_discover_reply(&DiscoverReply::new(d, std::slice::from_ref(&node)))
            .expect("reply");
        assert_eq!(
            s.send_discover_reply(&DiscoverReply::new(d, &[])),
            Err(SessionError::UnknownCall),
            "one answer per DISCOVER"
        );
        let mut out = Vec::new();
        s.take_transmit(&mut out);
        let (f, _) = Frame::parse_exact(&out, MAX_PAYLOAD).expect("one frame");
        assert_eq!(f.header.msg_type, MessageType::RESPONSE);
        // read as the SDK clients do: a map with integer keys, the list under 20
        let map = cbor::to_json(f.payload).expect("cbor");
        assert_eq!(map["20"], serde_json::json!([node]), "{name}");
        assert_eq!(map["3"], "urn:iicp:intent:llm:chat:v1");
        match session_id {
            Some(id) => assert_eq!(map["2"], id),
            None => assert!(map.get("2").is_none(), "{name}: {map}"),
        }
        assert!(!s.is_closed());
    }
    // an empty list is still a list under key 20
    let reply = DiscoverReply::new(&Discover::default(), &[]);
    let mut out = Vec::new();
    reply.encode_frame(&mut out).expect("frame");
    assert_eq!(hex::encode(&out[12..]), "a11480");
    // clients are not asked to answer DISCOVERs; a client session cannot send one
    let mut c = Session::new(Config::client(), Instant::now());
    assert_eq!(
        c.send_discover_reply(&reply),
        Err(SessionError::WrongDirection(MessageType::RESPONSE))
    );
}

#[test]
fn discover_before_init_follows_the_call_rule() {
    let t0 = Instant::now();
    let payload = unhex("a1 01 63 75726e");
    let mut strict = Config::server();
    strict.require_init = true;
    let mut s = Session::new(strict, t0);
    let _ = s.handle_input(&frame(0x03, &payload), t0);
    assert!(s.is_closed(), "require_init refuses it");
    let mut s = Session::new(Config::server(), t0);
    let _ = s.handle_input(&frame(0x03, &payload), t0);
    assert!(!s.is_closed());
    assert!(std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, Event::Discover(_))));
}

// ---------------------------------------------------------------------------------
// Property tests: random nested maps
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Int(u64),
    Text(String),
}

#[derive(Clone, Debug)]
enum Val {
    Int(u64),
    Text(String),
    Map(Vec<(Key, Val)>),
    Array(Vec<Val>),
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        (0u64..40).prop_map(Key::Int),
        "[a-z]{1,3}".prop_map(Key::Text),
    ]
}

fn arb_val() -> impl Strategy<Value = Val> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(Val::Int),
        "[a-z ]{0,8}".prop_map(Val::Text)
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::btree_map(arb_key(), inner.clone(), 0..6)
                .prop_map(|m| Val::Map(m.into_iter().collect())),
            proptest::collection::vec(inner, 0..4).prop_map(Val::Array),
        ]
    })
}

/// How to encode a tree: which widths, and which single violation to inject.
struct Enc {
    /// One bit per head: set = 8-byte argument (non-shortest).
    wide: u64,
    heads: u32,
    /// DFS index of the container to encode with an indefinite length.
    indefinite_at: Option<usize>,
    /// DFS index of the non-empty map that gets its first key again.
    duplicate_at: Option<usize>,
    containers: usize,
    maps: usize,
    injected: bool,
}

impl Enc {
    fn new(wide: u64) -> Self {
        Self {
            wide,
            heads: 0,
            indefinite_at: None,
            duplicate_at: None,
            containers: 0,
            maps: 0,
            injected: false,
        }
    }

    fn head(&mut self, major: u8, n: u64, out: &mut Vec<u8>) {
        let wide = self.wide >> (self.heads % 64) & 1 == 1;
        self.heads += 1;
        head(major, n, wide, out);
    }

    fn key(&mut self, k: &Key, out: &mut Vec<u8>) {
        match k {
            Key::Int(n) => self.head(0, *n, out),
            Key::Text(s) => {
                self.head(3, s.len() as u64, out);
                out.extend(s.as_bytes());
            }
        }
    }

    fn val(&mut self, v: &Val, out: &mut Vec<u8>) {
        match v {
            Val::Int(n) => self.head(0, *n, out),
            Val::Text(s) => {
                self.head(3, s.len() as u64, out);
                out.extend(s.as_bytes());
            }
            Val::Array(items) => {
                let indef = self.indefinite_at == Some(self.containers);
                self.containers += 1;
                if indef {
                    self.injected = true;
                    out.push(0x9f);
                } else {
                    self.head(4, items.len() as u64, out);
                }
                for i in items {
                    self.val(i, out);
                }
                if indef {
                    out.push(0xff);
                }
            }
            Val::Map(entries) => {
                let indef = self.indefinite_at == Some(self.containers);
                self.containers += 1;
                let dup = !entries.is_empty() && self.duplicate_at == Some(self.maps);
                if !entries.is_empty() {
                    self.maps += 1;
                }
                let n = entries.len() as u64 + u64::from(dup);
                if indef {
                    self.injected = true;
                    out.push(0xbf);
                } else {
                    self.head(5, n, out);
                }
                for (k, v) in entries {
                    self.key(k, out);
                    self.val(v, out);
                }
                if dup {
                    self.injected = true;
                    // the first key again, in whatever width comes next
                    self.key(&entries[0].0, out);
                    out.push(0xf6);
                }
                if indef {
                    out.push(0xff);
                }
            }
        }
    }
}

fn encode(root: &[(Key, Val)], enc: &mut Enc) -> Vec<u8> {
    let mut out = Vec::new();
    enc.val(&Val::Map(root.to_vec()), &mut out);
    out
}

fn arb_root() -> impl Strategy<Value = Vec<(Key, Val)>> {
    proptest::collection::btree_map(arb_key(), arb_val(), 1..6)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn distinct_keys_in_any_width_are_accepted(root in arb_root(), wide in any::<u64>()) {
        let bytes = encode(&root, &mut Enc::new(wide));
        prop_assert!(cbor::normalize(&bytes).is_ok());
        prop_assert!(cbor::to_json(&bytes).is_ok());
        // non-shortest forms never change what is read
        let canonical = encode(&root, &mut Enc::new(0));
        prop_assert_eq!(cbor::to_json(&bytes).ok(), cbor::to_json(&canonical).ok());
    }

    #[test]
    fn one_duplicate_key_anywhere_is_refused(root in arb_root(), wide in any::<u64>(), pick in any::<prop::sample::Index>()) {
        let maps = {
            let mut e = Enc::new(0);
            encode(&root, &mut e);
            e.maps
        };
        let mut enc = Enc::new(wide);
        enc.duplicate_at = Some(pick.index(maps));
        let bytes = encode(&root, &mut enc);
        prop_assert!(enc.injected);
        prop_assert!(matches!(cbor::normalize(&bytes), Err(CborError::DuplicateKey)));
        prop_assert!(matches!(cbor::to_json(&bytes), Err(CborError::DuplicateKey)));
        let e = Message::decode(&FrameHeader::new(MessageType::CALL, 0), &bytes, Channel::Task)
            .expect_err("refused");
        prop_assert_eq!(e.close_reason(), CloseReason::InvalidPayload);
    }

    #[test]
    fn one_indefinite_container_anywhere_is_refused(root in arb_root(), wide in any::<u64>(), pick in any::<prop::sample::Index>()) {
        let containers = {
            let mut e = Enc::new(0);
            encode(&root, &mut e);
            e.containers
        };
        let mut enc = Enc::new(wide);
        enc.indefinite_at = Some(pick.index(containers));
        let bytes = encode(&root, &mut enc);
        prop_assert!(enc.injected);
        prop_assert!(matches!(cbor::normalize(&bytes), Err(CborError::Indefinite)));
        prop_assert!(matches!(cbor::to_json(&bytes), Err(CborError::Indefinite)));
        let e = Message::decode(&FrameHeader::new(MessageType::CALL, 0), &bytes, Channel::Task)
            .expect_err("refused");
        prop_assert_eq!(e.close_reason(), CloseReason::InvalidPayload);
    }
}
