//! The native session state machine, driven without sockets: two sessions wired
//! back to back, and single sessions fed crafted and captured bytes.

use std::time::{Duration, Instant};

use iicp_proto::frame::{Decoded, Frame, FrameHeader, MessageType, MAX_PAYLOAD};
use iicp_proto::message::{
    Body, Call, Channel, Close, Init, Message, Outcome, Prefer, RelayAck, RelayBind, Response,
};
use iicp_proto::session::{Config, Event, Role, Session, SessionError};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("hex")
}

/// Moves everything `from` wants to send into `to`.
fn pump(from: &mut Session, to: &mut Session, now: Instant) {
    let mut buf = Vec::new();
    from.take_transmit(&mut buf);
    let used = to.handle_input(&buf, now);
    assert!(
        to.is_closed() || used == buf.len(),
        "complete frames are consumed whole"
    );
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Decodes every frame a session queued.
fn sent(s: &mut Session, channel: Channel) -> Vec<Message> {
    let mut buf = Vec::new();
    s.take_transmit(&mut buf);
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&buf[at..], MAX_PAYLOAD)
        else {
            panic!("partial frame queued")
        };
        out.push(Message::decode(&frame.header, frame.payload, channel).expect("decodable"));
        at += consumed;
    }
    out
}

fn close_reason(msgs: &[Message]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        Message::Close(c) => c.reason.clone(),
        _ => None,
    })
}

fn call(id: &str) -> Call {
    Call {
        protocol_version: Some(1),
        session_id: Some("sess".into()),
        intent: Some("urn:iicp:intent:llm:chat:v1".into()),
        payload: Some(Body::json(
            &serde_json::json!({"messages": [{"role": "user", "content": id}]}),
        )),
        call_id: Some(id.into()),
        ..Call::default()
    }
}

fn server_with_id() -> Config {
    Config {
        node_id: Some("node-1".into()),
        ..Config::server()
    }
}

#[test]
fn handshake_and_concurrent_calls() {
    let t0 = Instant::now();
    let mut client = Session::new(Config::client(), t0);
    let mut server = Session::new(server_with_id(), t0);
    for id in ["a", "b", "c"] {
        client.send_call(call(id)).expect("pipelined behind INIT");
    }
    pump(&mut client, &mut server, t0);
    let ev = events(&mut server);
    assert!(matches!(
        ev[0],
        Event::Established {
            version: 1,
            ack: None
        }
    ));
    let calls: Vec<Call> = ev
        .into_iter()
        .filter_map(|e| {
            if let Event::Call(c) = e {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(calls.len(), 3);
    assert_eq!(server.in_flight(), (0, 3));
    // answer out of order
    for c in calls.iter().rev() {
        let who = c.call_id.clone().expect("id");
        server
            .send_response(Response::success(
                c,
                Body::cbor(&serde_json::json!({"echo": who})),
            ))
            .expect("respond");
    }
    pump(&mut server, &mut client, t0);
    let ev = events(&mut client);
    let Event::Established { ack: Some(ack), .. } = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(ack.node_id.as_deref(), Some("node-1"));
    let answers: Vec<String> = ev[1..]
        .iter()
        .map(|e| match e {
            Event::Response(r) => {
                let Outcome::Success(Some(b)) = r.outcome() else {
                    panic!()
                };
                let v = b.to_json(Prefer::Cbor).expect("json");
                assert_eq!(v["echo"].as_str(), r.call_id());
                r.call_id().expect("id").to_owned()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(answers, ["c", "b", "a"]);
    assert_eq!(client.in_flight(), (0, 0));
    assert!(client.is_established() && server.is_established());
}

#[test]
fn sdk_client_gets_the_ack_it_expects_and_spec_client_gets_more() {
    let t0 = Instant::now();
    let mut server = Session::new(server_with_id(), t0);
    let _ = server.handle_input(&unhex("494943500101000000000003a10101"), t0); // SDK INIT {1: 1}
    let ack = sent(&mut server, Channel::Task);
    assert_eq!(
        Message::Ack(iicp_proto::message::Ack {
            protocol_version: Some(1),
            node_id: Some("node-1".into()),
            ..Default::default()
        }),
        ack[0]
    );
    let mut server = Session::new(server_with_id(), t0);
    let mut client = Session::new(Config::client(), t0);
    pump(&mut client, &mut server, t0);
    let Message::Ack(ack) = &sent(&mut server, Channel::Task)[0] else {
        panic!()
    };
    assert_eq!(ack.max_frame_size, Some(u64::from(MAX_PAYLOAD)));
    assert_eq!(ack.capabilities, Some(vec![]));
}

#[test]
fn version_negotiation() {
    let t0 = Instant::now();
    let init = |v, min| {
        Message::Init(Init {
            protocol_version: Some(v),
            min_version: Some(min),
            ..Init::default()
        })
        .to_frame()
        .expect("enc")
    };
    let mut s = Session::new(Config::server(), t0);
    let _ = s.handle_input(&init(3, 1), t0);
    let Message::Ack(a) = &sent(&mut s, Channel::Task)[0] else {
        panic!()
    };
    assert_eq!(a.protocol_version, Some(1), "min(offered, ours)");
    let mut s = Session::new(Config::server(), t0);
    let _ = s.handle_input(&init(3, 2), t0);
    assert_eq!(
        close_reason(&sent(&mut s, Channel::Task)).as_deref(),
        Some("version_mismatch")
    );
    assert!(s.is_closed());
    // client refuses an ACK for another version
    let mut c = Session::new(Config::client(), t0);
    let _ = sent(&mut c, Channel::Task);
    let ack2 = Message::Ack(iicp_proto::message::Ack {
        protocol_version: Some(2),
        ..Default::default()
    })
    .to_frame()
    .expect("enc");
    let _ = c.handle_input(&ack2, t0);
    assert_eq!(
        close_reason(&sent(&mut c, Channel::Task)).as_deref(),
        Some("version_mismatch")
    );
}

/// Feeds one crafted input to a fresh server (optionally after a spec INIT) and returns
/// the CLOSE reason it answered with, or `None` if it stayed open.
fn server_reaction(spec_peer: bool, input: &[u8]) -> (Option<String>, bool, Vec<Event>) {
    let t0 = Instant::now();
    let mut s = Session::new(Config::server(), t0);
    if spec_peer {
        let _ = s.handle_input(&Message::Init(Init::v1()).to_frame().expect("enc"), t0);
        let _ = sent(&mut s, Channel::Task);
        let _ = events(&mut s);
    }
    let _ = s.handle_input(input, t0);
    let msgs = sent(&mut s, Channel::Task);
    (close_reason(&msgs), s.is_closed(), events(&mut s))
}

fn frame_bytes(version: u8, t: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = FrameHeader::new(MessageType(t), payload.len() as u32);
    h.version = version;
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn malformed_frame_dispositions() {
    // PROTOCOL.md §10.3, row by row
    let cases: Vec<(&str, bool, Vec<u8>, Option<&str>)> = vec![
        (
            "oversize length",
            false,
            unhex("49494350 01 05 00 00 01000001"),
            Some("frame_too_large"),
        ),
        (
            "0xFFFFFFFF length",
            false,
            unhex("49494350 01 05 00 00 ffffffff"),
            Some("frame_too_large"),
        ),
        (
            "empty CALL",
            false,
            frame_bytes(1, 5, &[]),
            Some("invalid_frame"),
        ),
        (
            "empty RESPONSE",
            false,
            frame_bytes(1, 6, &[]),
            Some("invalid_frame"),
        ),
        (
            "version 0",
            false,
            frame_bytes(0, 9, &[]),
            Some("invalid_version"),
        ),
        (
            "version 2",
            false,
            frame_bytes(2, 9, &[]),
            Some("version_mismatch"),
        ),
        (
            "type 0x00",
            false,
            frame_bytes(1, 0, &[]),
            Some("invalid_type"),
        ),
        (
            "type 0xFF",
            false,
            frame_bytes(1, 0xFF, &[]),
            Some("invalid_type"),
        ),
        (
            "reserved type, spec peer",
            true,
            frame_bytes(1, 0x20, &[0xa0]),
            Some("unknown_type"),
        ),
        (
            "custom type, spec peer",
            true,
            frame_bytes(1, 0xF3, &[0xa0]),
            Some("unsupported_extension"),
        ),
        (
            "CBOR garbage",
            false,
            frame_bytes(1, 5, &[0xa2, 0x01]),
            Some("cbor_decode_error"),
        ),
        (
            "wrong shape",
            false,
            frame_bytes(1, 5, &unhex("a1 02 01")),
            Some("invalid_payload"),
        ),
        (
            "invalid UTF-8",
            false,
            frame_bytes(1, 5, &unhex("a1 02 62 c328")),
            Some("cbor_decode_error"),
        ),
        (
            "trace id not 16 bytes",
            false,
            frame_bytes(1, 5, &unhex("a2 0f 6163 0d 4101")),
            Some("invalid_payload"),
        ),
        (
            "compressed flag",
            false,
            unhex("49494350 01 05 01 00 00000001 a0"),
            Some("protocol_error"),
        ),
        (
            "relay bind on task port",
            false,
            frame_bytes(1, 0x0B, &unhex("a1 01 6177")),
            Some("protocol_error"),
        ),
        (
            "RESPONSE to a server",
            false,
            frame_bytes(1, 6, &unhex("a1 0f 6163")),
            Some("protocol_error"),
        ),
        (
            "reserved type, SDK peer",
            false,
            frame_bytes(1, 0x20, &[0xa0]),
            None,
        ),
        (
            "custom type, SDK peer",
            false,
            frame_bytes(1, 0xF3, &[0xa0]),
            None,
        ),
        (
            "unknown flag bits and reserved byte",
            false,
            unhex("49494350 01 09 80 ff 00000000"),
            None,
        ),
    ];
    for (name, spec, input, want) in cases {
        let (reason, closed, _) = server_reaction(spec, &input);
        assert_eq!(reason.as_deref(), want, "{name}");
        assert_eq!(closed, want.is_some(), "{name}");
    }
}

#[test]
fn bad_magic_closes_without_a_byte() {
    let t0 = Instant::now();
    let mut s = Session::new(Config::server(), t0);
    let _ = s.handle_input(b"GET /iicp/health HTTP/1.1\r\n", t0);
    assert!(s.is_closed());
    assert_eq!(s.pending_transmit(), 0);
    assert!(
        matches!(events(&mut s).as_slice(), [Event::Closed { reason, .. }] if reason == "invalid_magic")
    );
}

#[test]
fn ignored_types_are_reported_not_fatal() {
    let (_, closed, ev) = server_reaction(false, &frame_bytes(1, 0x33, &[0xa0]));
    assert!(!closed);
    assert_eq!(ev, vec![Event::Ignored(MessageType(0x33))]);
}

#[test]
fn byte_at_a_time_input() {
    let t0 = Instant::now();
    let mut client = Session::new(Config::client(), t0);
    client.send_call(call("x")).expect("call");
    client.ping(Some(b"echo".to_vec())).expect("ping");
    let mut wire = Vec::new();
    client.take_transmit(&mut wire);
    let mut server = Session::new(Config::server(), t0);
    let mut buf: Vec<u8> = Vec::new();
    for b in wire {
        buf.push(b);
        let used = server.handle_input(&buf, t0);
        buf.drain(..used);
    }
    assert!(buf.is_empty());
    let ev = events(&mut server);
    assert_eq!(ev.len(), 2);
    assert!(matches!(&ev[1], Event::Call(c) if c.call_id.as_deref() == Some("x")));
    let out = sent(&mut server, Channel::Task);
    assert!(
        matches!(&out[1], Message::Pong(p) if p.echo.as_deref().map(|e| e.as_slice()) == Some(&b"echo"[..]))
    );
}

#[test]
fn deadlines() {
    let t0 = Instant::now();
    // INIT never arrives
    let mut s = Session::new(Config::server(), t0);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    s.handle_timeout(t0 + Duration::from_secs(9));
    assert!(!s.is_closed());
    s.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(
        close_reason(&sent(&mut s, Channel::Task)).as_deref(),
        Some("init_timeout")
    );

    // half a frame, then silence: read_timeout 30 s after its first byte
    let mut s = Session::new(Config::server(), t0);
    let _ = s.handle_input(&Message::Init(Init::v1()).to_frame().expect("enc"), t0);
    let _ = sent(&mut s, Channel::Task);
    let half = &frame_bytes(1, 5, &unhex("a1 02 6161"))[..9];
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(s.handle_input(half, t1), 0);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(30)));
    s.handle_timeout(t1 + Duration::from_secs(29));
    assert!(!s.is_closed());
    s.handle_timeout(t1 + Duration::from_secs(30));
    assert_eq!(
        close_reason(&sent(&mut s, Channel::Task)).as_deref(),
        Some("read_timeout")
    );

    // ACK never arrives: the client closes locally, sending nothing more
    let mut c = Session::new(Config::client(), t0);
    let _ = sent(&mut c, Channel::Task);
    c.handle_timeout(t0 + Duration::from_secs(10));
    assert!(c.is_closed());
    assert_eq!(c.pending_transmit(), 0);
    assert!(
        matches!(events(&mut c).as_slice(), [Event::Closed { reason, .. }] if reason == "ack_timeout")
    );

    // idle timeout when configured
    let mut s = Session::new(
        Config {
            idle_timeout: Some(Duration::from_secs(60)),
            ..Config::server()
        },
        t0,
    );
    let _ = s.handle_input(&Message::Init(Init::v1()).to_frame().expect("enc"), t0);
    let _ = sent(&mut s, Channel::Task);
    s.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(
        close_reason(&sent(&mut s, Channel::Task)).as_deref(),
        Some("idle_timeout")
    );
}

#[test]
fn call_id_bookkeeping() {
    let t0 = Instant::now();
    let mut client = Session::new(Config::client(), t0);
    client.send_call(call("a")).expect("a");
    assert_eq!(
        client.send_call(call("a")),
        Err(SessionError::DuplicateCall)
    );
    assert_eq!(
        client.send_call(Call::default()),
        Err(SessionError::MissingId)
    );
    // a RESPONSE nobody asked for is call-id drift
    let stray = Response::success(&call("zzz"), Body::cbor(&serde_json::json!(1)));
    let ack = Message::Ack(Default::default()).to_frame().expect("enc");
    let _ = client.handle_input(&ack, t0);
    let _ = client.handle_input(
        &Message::Response(Response {
            session_id: None,
            ..stray
        })
        .to_frame()
        .expect("enc"),
        t0,
    );
    assert_eq!(
        close_reason(&sent(&mut client, Channel::Task)).as_deref(),
        Some("protocol_error")
    );

    // server: duplicate in-flight id → 409, over the limit → 429 (answered, not queued)
    let mut server = Session::new(
        Config {
            max_in_flight: 2,
            ..Config::server()
        },
        t0,
    );
    let mut input = Vec::new();
    for id in ["1", "1", "2", "3"] {
        Message::Call(call(id)).encode(&mut input).expect("enc");
    }
    let _ = server.handle_input(&input, t0);
    let calls = events(&mut server)
        .into_iter()
        .filter(|e| matches!(e, Event::Call(_)))
        .count();
    assert_eq!(calls, 2);
    let answers = sent(&mut server, Channel::Task);
    let codes: Vec<u64> = answers
        .iter()
        .filter_map(|m| {
            if let Message::Response(r) = m {
                r.status_code
            } else {
                None
            }
        })
        .collect();
    assert_eq!(codes, vec![409, 429]);
    // responding to an unknown call is an API error, not a wire event
    assert_eq!(
        server.send_response(Response::success(&call("9"), Body::Bytes(vec![]))),
        Err(SessionError::UnknownCall)
    );
}

#[test]
fn lifecycle_partials_keep_the_call_open() {
    let t0 = Instant::now();
    let mut client = Session::new(Config::client(), t0);
    let mut server = Session::new(Config::server(), t0);
    client.send_call(call("s")).expect("call");
    pump(&mut client, &mut server, t0);
    let c = events(&mut server)
        .into_iter()
        .find_map(|e| {
            if let Event::Call(c) = e {
                Some(c)
            } else {
                None
            }
        })
        .expect("call");
    let mut partial = Response::success(&c, Body::cbor(&serde_json::json!("chunk")));
    partial.status = Some("partial".into());
    partial.is_final = Some(false);
    server.send_response(partial).expect("partial");
    assert_eq!(server.in_flight(), (0, 1));
    server
        .send_response(Response::success(&c, Body::cbor(&serde_json::json!(""))))
        .expect("final");
    assert_eq!(server.in_flight(), (0, 0));
    pump(&mut server, &mut client, t0);
    let responses = events(&mut client)
        .into_iter()
        .filter(|e| matches!(e, Event::Response(_)))
        .count();
    assert_eq!(responses, 2);
    assert_eq!(client.in_flight(), (0, 0));
}

#[test]
fn graceful_close_drains_in_flight_calls() {
    let t0 = Instant::now();
    let mut client = Session::new(Config::client(), t0);
    let mut server = Session::new(Config::server(), t0);
    client.send_call(call("slow")).expect("call");
    pump(&mut client, &mut server, t0);
    let c = events(&mut server)
        .into_iter()
        .find_map(|e| {
            if let Event::Call(c) = e {
                Some(c)
            } else {
                None
            }
        })
        .expect("call");
    let _ = sent(&mut server, Channel::Task);
    server.close(t0);
    assert!(!server.is_closed(), "waits for the in-flight call");
    assert_eq!(server.pending_transmit(), 0);
    // a new CALL during the drain is refused with 503
    let mut late = Vec::new();
    Message::Call(call("late")).encode(&mut late).expect("enc");
    let _ = server.handle_input(&late, t0);
    let refused = sent(&mut server, Channel::Task);
    assert!(matches!(&refused[0], Message::Response(r) if r.status_code == Some(503)));
    server
        .send_response(Response::success(
            &c,
            Body::cbor(&serde_json::json!("done")),
        ))
        .expect("respond");
    assert!(server.is_closed());
    let out = sent(&mut server, Channel::Task);
    assert!(matches!(&out[0], Message::Response(_)));
    assert_eq!(close_reason(&out).as_deref(), Some("graceful"));

    // drain deadline
    let mut server = Session::new(Config::server(), t0);
    let mut input = Vec::new();
    Message::Call(call("stuck"))
        .encode(&mut input)
        .expect("enc");
    let _ = server.handle_input(&input, t0);
    server.close(t0);
    server.handle_timeout(t0 + Duration::from_secs(5));
    assert!(server.is_closed());
    assert_eq!(
        close_reason(&sent(&mut server, Channel::Task)).as_deref(),
        Some("graceful")
    );
}

#[test]
fn peer_close_is_answered() {
    let t0 = Instant::now();
    let mut server = Session::new(Config::server(), t0);
    let _ = server.handle_input(
        &unhex("494943500101000000000003a10101 494943500107000000000000"),
        t0,
    ); // INIT, empty CLOSE
    let out = sent(&mut server, Channel::Task);
    assert!(matches!(out[0], Message::Ack(_)));
    assert_eq!(close_reason(&out).as_deref(), Some("graceful"));
    assert!(server.is_closed());
    let ev = events(&mut server);
    assert!(
        matches!(ev.last(), Some(Event::Closed { by_peer: true, reason }) if reason == "graceful")
    );
    // a CLOSE with a reason is reported with it
    let mut c = Session::new(Config::client(), t0);
    let _ = c.handle_input(
        &Message::Close(Close {
            reason: Some("auth_failed".into()),
            ..Close::default()
        })
        .to_frame()
        .expect("enc"),
        t0,
    );
    assert!(
        matches!(events(&mut c).as_slice(), [Event::Closed { reason, by_peer: true }] if reason == "auth_failed")
    );
}

#[test]
fn legacy_call_without_init_and_strict_mode() {
    let t0 = Instant::now();
    let mut input = Vec::new();
    Message::Call(call("x")).encode(&mut input).expect("enc");
    let mut s = Session::new(Config::server(), t0);
    let _ = s.handle_input(&input, t0);
    assert!(events(&mut s).iter().any(|e| matches!(e, Event::Call(_))));
    assert!(
        s.poll_timeout().is_none(),
        "no INIT deadline once a CALL arrived"
    );
    let mut strict = Session::new(
        Config {
            require_init: true,
            ..Config::server()
        },
        t0,
    );
    let _ = strict.handle_input(&input, t0);
    assert_eq!(
        close_reason(&sent(&mut strict, Channel::Task)).as_deref(),
        Some("protocol_error")
    );
}

#[test]
fn python_sdk_client_session_replayed() {
    // the client half of a real session captured from the Python SDK's TCP client
    let t0 = Instant::now();
    let mut server = Session::new(server_with_id(), t0);
    let client_frames = unhex(concat!(
        "494943500101000000000003a10101",
        "49494350010900000000000ca1014970696e672d6563686f",
        "494943500105000000000074a40266736573732d3103781b75726e3a696963703a696e74656e743a6c6c6d3a636861743a76310558427b226d65737361676573223a205b7b22726f6c65223a202275736572222c2022636f6e74656e74223a202268656c6c6f20707974686f6e206e6174697665227d5d7d0f6663616c6c2d31",
    ));
    assert_eq!(server.handle_input(&client_frames, t0), client_frames.len());
    let ev = events(&mut server);
    let Some(Event::Call(c)) = ev.last() else {
        panic!("{ev:?}")
    };
    let payload = c
        .payload
        .as_ref()
        .expect("payload")
        .to_json(Prefer::Json)
        .expect("json");
    assert_eq!(payload["messages"][0]["content"], "hello python native");
    let result = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]});
    server
        .send_response(Response::success(c, Body::cbor(&result)))
        .expect("respond");
    let _ = server.handle_input(&unhex("494943500107000000000000"), t0);
    let out = sent(&mut server, Channel::Task);
    assert_eq!(out.len(), 4, "ACK, PONG, RESPONSE, CLOSE");
    assert!(
        matches!(&out[1], Message::Pong(p) if p.echo.as_deref().map(|e| e.as_slice()) == Some(&b"ping-echo"[..]))
    );
    let Message::Response(r) = &out[2] else {
        panic!()
    };
    assert_eq!(r.session_id.as_deref(), Some("sess-1"));
    assert_eq!(
        r.legacy_call_id.as_deref(),
        Some("call-1"),
        "the SDK client reads key 15"
    );
}

#[test]
fn rust_sdk_node_session_replayed() {
    // the server half of a real session with the Rust SDK node, fed to our client
    let t0 = Instant::now();
    let mut client = Session::new(Config::client(), t0);
    let mut c = call("call-1");
    c.session_id = Some("sess-1".into());
    client.send_call(c).expect("call");
    let _ = sent(&mut client, Channel::Task);
    let server_frames = unhex(concat!(
        "49494350010200000000002aa2010102782466376565643461662d376339372d346663322d616433312d653630643835306239336338",
        "4949435001060000000000faa30266736573732d310f6663616c6c2d310558e6a66763686f6963657381a36d66696e6973685f726561736f6e6473746f7065696e64657800676d657373616765a267636f6e74656e74781d46414b452d5245504c593a2068656c6c6f2072757374206e617469766564726f6c6569617373697374616e7467637265617465641a6b05ec6e6269647263686174636d706c2d66616b652d30303031656d6f64656c6a66616b652d6d6f64656c666f626a6563746f636861742e636f6d706c6574696f6e657573616765a371636f6d706c6574696f6e5f746f6b656e73046d70726f6d70745f746f6b656e73036c746f74616c5f746f6b656e7307",
    ));
    let _ = client.handle_input(&server_frames, t0);
    let ev = events(&mut client);
    assert!(
        matches!(&ev[0], Event::Established { ack: Some(a), .. } if a.node_id.as_deref() == Some("f7eed4af-7c97-4fc2-ad31-e60d850b93c8"))
    );
    let Event::Response(r) = &ev[1] else {
        panic!("{ev:?}")
    };
    let Outcome::Success(Some(body)) = r.outcome() else {
        panic!()
    };
    let v = body.to_json(Prefer::Cbor).expect("result");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "FAKE-REPLY: hello rust native"
    );
    assert_eq!(v["usage"]["total_tokens"], 7);
    assert_eq!(client.in_flight(), (0, 0));
}

#[test]
fn relay_session_reverses_the_call_direction() {
    let t0 = Instant::now();
    let relay_cfg = |role| Config {
        channel: Channel::Relay,
        ..if role == Role::Client {
            Config::client()
        } else {
            Config::server()
        }
    };
    let mut worker = Session::new(relay_cfg(Role::Client), t0);
    let mut relay = Session::new(relay_cfg(Role::Server), t0);
    worker
        .send(Message::RelayBind(RelayBind {
            worker_id: Some("w-1".into()),
            intent: Some("urn:iicp:intent:llm:chat:v1".into()),
            models: Some(vec!["m".into()]),
            bind_ticket: None,
        }))
        .expect("bind");
    assert_eq!(
        worker.send_call(call("x")),
        Err(SessionError::WrongDirection(MessageType::CALL))
    );
    pump(&mut worker, &mut relay, t0);
    let ev = events(&mut relay);
    assert!(
        matches!(&ev[1], Event::Message(Message::RelayBind(b)) if b.worker_id.as_deref() == Some("w-1"))
    );
    relay
        .send(Message::RelayAck(RelayAck {
            status: Some("ok".into()),
            worker_id: Some("w-1".into()),
            reason: None,
            relay_http_port: Some(9484),
        }))
        .expect("ack");
    let pushed = Call {
        call_id: Some("rc-1".into()),
        payload: Some(Body::json(
            &serde_json::json!({"task_id": "t", "intent": "urn:iicp:intent:llm:chat:v1", "payload": {}}),
        )),
        ..Call::default()
    };
    relay.send_call(pushed).expect("push");
    pump(&mut relay, &mut worker, t0);
    let ev = events(&mut worker);
    assert!(
        matches!(&ev[1], Event::Message(Message::RelayAck(a)) if a.status.as_deref() == Some("ok"))
    );
    let Event::Call(c) = &ev[2] else {
        panic!("{ev:?}")
    };
    worker
        .send_response(Response {
            legacy_call_id: c.call_id.clone(),
            result: Some(Body::json(&serde_json::json!({"ok": true}))),
            ..Response::default()
        })
        .expect("answer");
    pump(&mut worker, &mut relay, t0);
    assert!(events(&mut relay)
        .iter()
        .any(|e| matches!(e, Event::Response(r) if r.call_id() == Some("rc-1"))));
}

#[test]
fn a_response_with_another_call_id_answers_nothing_even_with_the_same_session_id() {
    let t0 = Instant::now();
    let mut client = Session::new(Config::client(), t0);
    let ack = Message::Ack(Default::default()).to_frame().expect("enc");
    let _ = client.handle_input(&ack, t0);
    let _ = client.poll_event();
    // both calls share session id "sess" (as the SDKs' literal session ids do)
    client.send_call(call("a")).expect("a");
    let drift = Response::success(&call("not-a"), Body::cbor(&serde_json::json!(1)));
    assert_eq!(drift.session_id.as_deref(), Some("sess"));
    let _ = client.handle_input(&Message::Response(drift).to_frame().expect("enc"), t0);
    let mut answered = false;
    while let Some(e) = client.poll_event() {
        answered |= matches!(e, Event::Response(_));
    }
    assert!(!answered, "call-id drift must not complete call a");
    assert_eq!(
        close_reason(&sent(&mut client, Channel::Task)).as_deref(),
        Some("protocol_error")
    );

    // a RESPONSE echoing only the session id still answers (deployed peers)
    let mut client = Session::new(Config::client(), t0);
    let _ = client.handle_input(&ack, t0);
    client.send_call(call("b")).expect("b");
    let mut only_session = Response::success(&call("b"), Body::cbor(&serde_json::json!(1)));
    only_session.call_id = None;
    only_session.legacy_call_id = None;
    let _ = client.handle_input(
        &Message::Response(only_session).to_frame().expect("enc"),
        t0,
    );
    let mut answered = false;
    while let Some(e) = client.poll_event() {
        answered |= matches!(e, Event::Response(_));
    }
    assert!(answered);
    assert_eq!(client.in_flight().0, 0);
}
