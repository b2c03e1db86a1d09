//! The native transport over real sockets on 127.0.0.1: concurrency, malformed input,
//! slow peers, shutdown, hostile servers, and both protocols on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::frame::{Decoded, Frame, FrameHeader, MessageType, MAX_PAYLOAD};
use iicp_proto::message::{Body, Call, Channel, Close, Init, Message, Outcome, Prefer, Response};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::{
    CallContext, CallHandler, NativeClient, NativeClientConfig, NativeEndpoint, NativeError,
};
use iicp_transport::shutdown::{self, Trigger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Echoes the payload back as the result; `{"sleep_ms": n}` delays the answer.
fn echo_handler() -> Arc<dyn CallHandler> {
    Arc::new(|call: Call, _ctx: CallContext| async move {
        let payload = call
            .payload
            .as_ref()
            .and_then(|p| p.to_json(Prefer::Json).ok())
            .unwrap_or_default();
        if let Some(ms) = payload.get("sleep_ms").and_then(serde_json::Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Response::success(&call, Body::cbor(&serde_json::json!({"echo": payload})))
    })
}

async fn start(
    config: ListenerConfig,
    services: Services,
) -> (
    SocketAddr,
    Trigger,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(listener.serve(services, shutdown));
    (addr, trigger, task)
}

fn native_only() -> Services {
    Services {
        http: None,
        native: Some(echo_handler()),
    }
}

fn endpoint(addr: SocketAddr) -> NativeEndpoint {
    format!("iicp://{addr}").parse().expect("endpoint")
}

fn call(id: &str, payload: serde_json::Value) -> Call {
    Call {
        protocol_version: Some(1),
        session_id: Some("s".into()),
        intent: Some("urn:iicp:intent:llm:chat:v1".into()),
        payload: Some(Body::json(&payload)),
        timeout_s: Some(10),
        call_id: Some(id.into()),
        ..Call::default()
    }
}

fn echo_of(resp: &Response) -> serde_json::Value {
    match resp.outcome() {
        Outcome::Success(Some(b)) => b.to_json(Prefer::Cbor).expect("result")["echo"].clone(),
        other => panic!("not a success: {other:?}"),
    }
}

/// Reads frames from a raw socket until EOF; returns them decoded (and whether EOF came).
async fn read_all_frames(sock: &mut TcpStream, wait: Duration) -> Vec<Message> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, sock.read_to_end(&mut buf)).await;
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&buf[at..], MAX_PAYLOAD) {
        out.push(
            Message::decode(&frame.header, frame.payload, Channel::Task)
                .expect("server frames decode"),
        );
        at += consumed;
    }
    out
}

fn close_reason(msgs: &[Message]) -> Option<String> {
    msgs.iter().rev().find_map(|m| {
        if let Message::Close(c) = m {
            Some(c.reason.clone().unwrap_or_default())
        } else {
            None
        }
    })
}

#[tokio::test]
async fn concurrent_calls_share_one_connection() {
    let (addr, trigger, task) = start(ListenerConfig::default(), native_only()).await;
    let client = NativeClient::default();
    let ep = endpoint(addr);
    let mut joins = Vec::new();
    for i in 0..64u64 {
        let client = client.clone();
        let ep = ep.clone();
        joins.push(tokio::spawn(async move {
            let sleep = (i * 7) % 40; // answers come back out of order
            let r = client
                .call(
                    &ep,
                    call(
                        &format!("c{i}"),
                        serde_json::json!({"i": i, "sleep_ms": sleep}),
                    ),
                    Duration::from_secs(10),
                )
                .await
                .expect("call");
            assert_eq!(echo_of(&r)["i"], i);
            assert_eq!(r.call_id(), Some(format!("c{i}").as_str()));
        }));
    }
    for j in joins {
        j.await.expect("join");
    }
    assert_eq!(client.pooled(), 1);
    trigger.fire();
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn many_connections_at_once() {
    let (addr, trigger, task) = start(ListenerConfig::default(), native_only()).await;
    let ep = endpoint(addr);
    let mut joins = Vec::new();
    for c in 0..40 {
        let ep = ep.clone();
        joins.push(tokio::spawn(async move {
            let client = NativeClient::default(); // own pool → own connection
            for i in 0..5 {
                let r = client
                    .call(
                        &ep,
                        call(&format!("{c}-{i}"), serde_json::json!({"c": c, "i": i})),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("call");
                assert_eq!(echo_of(&r)["c"], c);
            }
        }));
    }
    for j in joins {
        j.await.expect("join");
    }
    trigger.fire();
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn malformed_input_is_answered_per_spec_while_others_keep_working() {
    let (addr, trigger, task) = start(ListenerConfig::default(), native_only()).await;
    let client = NativeClient::default();
    let ep = endpoint(addr);
    // a slow call in flight on a healthy connection during the whole test
    let slow = {
        let (client, ep) = (client.clone(), ep.clone());
        tokio::spawn(async move {
            client
                .call(
                    &ep,
                    call("slow", serde_json::json!({"sleep_ms": 600})),
                    Duration::from_secs(10),
                )
                .await
        })
    };
    let init = Message::Init(Init::v1()).to_frame().expect("init");
    let frame = |version: u8, t: u8, payload: &[u8]| {
        let mut h = FrameHeader::new(MessageType(t), payload.len() as u32);
        h.version = version;
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "length over 16 MiB",
            hex::decode("494943500105000001000001").expect("hex"),
            "frame_too_large",
        ),
        ("empty CALL", frame(1, 5, &[]), "invalid_frame"),
        ("version 0", frame(0, 9, &[]), "invalid_version"),
        ("version 2", frame(2, 9, &[]), "version_mismatch"),
        ("type 0xFF", frame(1, 0xFF, &[]), "invalid_type"),
        (
            "reserved type after spec INIT",
            [init.clone(), frame(1, 0x40, &[0xa0])].concat(),
            "unknown_type",
        ),
        (
            "custom type after spec INIT",
            [init.clone(), frame(1, 0xF2, &[0xa0])].concat(),
            "unsupported_extension",
        ),
        (
            "undecodable CBOR",
            frame(1, 5, &[0xa3, 0x01]),
            "cbor_decode_error",
        ),
        (
            "CBOR of the wrong shape",
            frame(1, 5, &hex::decode("a10201").expect("hex")),
            "invalid_payload",
        ),
        (
            "unexpected RESPONSE",
            frame(1, 6, &hex::decode("a10f6163").expect("hex")),
            "protocol_error",
        ),
    ];
    for (name, bytes, want) in cases {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        sock.write_all(&bytes).await.expect("write");
        let msgs = read_all_frames(&mut sock, Duration::from_secs(5)).await;
        assert_eq!(
            close_reason(&msgs).as_deref(),
            Some(want),
            "{name}: {msgs:?}"
        );
        // exactly one CLOSE, and it is the last frame
        assert_eq!(
            msgs.iter()
                .filter(|m| matches!(m, Message::Close(_)))
                .count(),
            1,
            "{name}"
        );
    }
    // the healthy connection was not disturbed
    let r = slow.await.expect("join").expect("slow call");
    assert_eq!(echo_of(&r)["sleep_ms"], 600);
    let r = client
        .call(
            &ep,
            call("after", serde_json::json!({"ok": 1})),
            Duration::from_secs(5),
        )
        .await
        .expect("after");
    assert_eq!(echo_of(&r)["ok"], 1);
    trigger.fire();
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn bad_magic_on_native_only_port_closes_without_a_byte() {
    let (addr, trigger, task) = start(ListenerConfig::default(), native_only()).await;
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf))
        .await
        .expect("closed")
        .expect("read");
    assert!(buf.is_empty(), "nothing may be written: {buf:?}");
    trigger.fire();
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn slow_peers_are_cut_by_timeouts() {
    let mut config = ListenerConfig {
        sniff_timeout: Duration::from_millis(300),
        ..ListenerConfig::default()
    };
    config.native.session.read_timeout = Duration::from_millis(300);
    config.native.session.handshake_timeout = Duration::from_millis(400);
    let (addr, trigger, task) = start(config, native_only()).await;
    // connects and says nothing: dropped at the sniff timeout
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    let t0 = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
        .await
        .expect("cut")
        .expect("read");
    assert!(t0.elapsed() >= Duration::from_millis(250));
    // half a frame, then silence: CLOSE read_timeout
    let mut half = TcpStream::connect(addr).await.expect("connect");
    let full = Message::Call(call("h", serde_json::json!({})))
        .to_frame()
        .expect("frame");
    half.write_all(&full[..full.len() / 2])
        .await
        .expect("write");
    let msgs = read_all_frames(&mut half, Duration::from_secs(5)).await;
    assert_eq!(close_reason(&msgs).as_deref(), Some("read_timeout"));
    // magic, then no INIT and no CALL: CLOSE init_timeout
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(&Message::Ping(Default::default()).to_frame().expect("ping"))
        .await
        .expect("write");
    let msgs = read_all_frames(&mut idle, Duration::from_secs(5)).await;
    assert!(matches!(msgs.first(), Some(Message::Pong(_))));
    assert_eq!(close_reason(&msgs).as_deref(), Some("init_timeout"));
    trigger.fire();
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_calls() {
    let (addr, trigger, task) = start(ListenerConfig::default(), native_only()).await;
    let client = NativeClient::default();
    let ep = endpoint(addr);
    let conn = client.connection(&ep).await.expect("connect");
    let inflight = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.call(
                call("drain", serde_json::json!({"sleep_ms": 300})),
                Duration::from_secs(10),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    trigger.fire();
    let r = inflight
        .await
        .expect("join")
        .expect("in-flight call completes");
    assert_eq!(echo_of(&r)["sleep_ms"], 300);
    let info = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed");
    assert_eq!(info.reason, "graceful");
    task.await.expect("join").expect("serve");
    // the port no longer accepts
    assert!(TcpStream::connect(addr).await.is_err());
}

/// A raw server that answers the handshake and then whatever `reply` gives.
async fn hostile_server(reply: Vec<u8>, ack_first: bool) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await; // INIT (+CALL)
                if ack_first {
                    let _ = s
                        .write_all(&Message::Ack(Default::default()).to_frame().expect("ack"))
                        .await;
                }
                let _ = s.write_all(&reply).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn hostile_servers_fail_the_call_quickly() {
    let oversize = hex::decode("49494350010600007fffffff").expect("hex");
    let drift = Message::Response(Response {
        legacy_call_id: Some("not-mine".into()),
        result: Some(Body::Bytes(vec![])),
        ..Response::default()
    })
    .to_frame()
    .expect("f");
    for (name, reply, want) in [
        ("oversize length", oversize, "frame_too_large"),
        // bad magic after the ACK: closed without a CLOSE frame (framing §1.2, §9.6)
        (
            "bad magic",
            b"HTTP/1.1 400 Bad\r\n\r\n".to_vec(),
            "invalid_magic",
        ),
        ("call-id drift", drift, "protocol_error"),
    ] {
        let addr = hostile_server(reply, true).await;
        let client = NativeClient::default();
        let t0 = std::time::Instant::now();
        let err = client
            .call(
                &endpoint(addr),
                call("mine", serde_json::json!({})),
                Duration::from_secs(5),
            )
            .await
            .expect_err(name);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{name} took {:?}",
            t0.elapsed()
        );
        assert!(
            matches!(&err, NativeError::Closed(r) if r == want),
            "{name}: {err:?}"
        );
    }
    // a server that never ACKs: the call fails at the handshake timeout, then back-off
    let addr = hostile_server(Vec::new(), false).await;
    let mut cfg = NativeClientConfig::default();
    cfg.connection.session.handshake_timeout = Duration::from_millis(300);
    let client = NativeClient::new(cfg);
    let err = client
        .call(
            &endpoint(addr),
            call("x", serde_json::json!({})),
            Duration::from_secs(5),
        )
        .await
        .expect_err("ack timeout");
    assert!(
        matches!(&err, NativeError::Closed(r) if r == "ack_timeout"),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = client
        .call(
            &endpoint(addr),
            call("y", serde_json::json!({})),
            Duration::from_secs(5),
        )
        .await
        .expect_err("backing off");
    assert!(matches!(err, NativeError::BackingOff(_)), "{err:?}");
}

#[tokio::test]
async fn call_timeout_and_reconnect() {
    let (addr, trigger, task) = start(ListenerConfig::default(), native_only()).await;
    let client = NativeClient::default();
    let ep = endpoint(addr);
    let err = client
        .call(
            &ep,
            call("t", serde_json::json!({"sleep_ms": 500})),
            Duration::from_millis(100),
        )
        .await
        .expect_err("timeout");
    assert!(err.is_timeout());
    // the connection survives a timed-out call and carries the next one
    let r = client
        .call(
            &ep,
            call("t2", serde_json::json!({"n": 2})),
            Duration::from_secs(5),
        )
        .await
        .expect("next");
    assert_eq!(echo_of(&r)["n"], 2);
    // after the server closes the connection, the next call reconnects
    let conn = client.connection(&ep).await.expect("conn");
    conn.close();
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed");
    let r = client
        .call(
            &ep,
            call("t3", serde_json::json!({"n": 3})),
            Duration::from_secs(5),
        )
        .await
        .expect("reconnected");
    assert_eq!(echo_of(&r)["n"], 3);
    trigger.fire();
    task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn sdk_style_client_without_init_and_with_empty_close() {
    let (addr, trigger, task) = start(ListenerConfig::default(), native_only()).await;
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let mut out = Message::Call(call("legacy", serde_json::json!({"x": 1})))
        .to_frame()
        .expect("call");
    out.extend_from_slice(&hex::decode("494943500107000000000000").expect("close"));
    sock.write_all(&out).await.expect("write");
    let msgs = read_all_frames(&mut sock, Duration::from_secs(5)).await;
    let Message::Response(r) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!(echo_of(r)["x"], 1);
    assert_eq!(close_reason(&msgs).as_deref(), Some("graceful"));
    let _ = Close::default();
    trigger.fire();
    task.await.expect("join").expect("serve");
}

/// Counts the server's write calls (each `poll_write` that wrote something is one
/// `write(2)` on a socket).
struct CountingIo {
    inner: tokio::io::DuplexStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for CountingIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// 64 calls on one connection whose handlers return together: their answers leave in
/// one or two writes, not 64 (issue 22: coalesced replies, fewer syscalls per task).
#[tokio::test]
async fn answers_ready_together_leave_in_one_write() {
    use iicp_transport::native::connection::{serve, spawn};
    use iicp_transport::native::ConnectionConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const N: usize = 64;
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler: Arc<dyn CallHandler> = {
        let (started, gate) = (started.clone(), gate.clone());
        Arc::new(move |call: Call, _ctx: CallContext| {
            let (started, gate) = (started.clone(), gate.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.expect("gate");
                Response::success(&call, Body::cbor(&serde_json::json!({"ok": true})))
            }
        })
    };
    let (server_io, client_io) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let ctx = CallContext {
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        tls: false,
    };
    let (trigger, shutdown) = shutdown::channel();
    let server = tokio::spawn(serve(
        CountingIo {
            inner: server_io,
            writes: writes.clone(),
        },
        ctx.clone(),
        ConnectionConfig::server(),
        handler,
        shutdown.clone(),
    ));
    let (client, _task) = spawn(
        client_io,
        ctx,
        ConnectionConfig::client(),
        None,
        None,
        shutdown,
    );
    let mut calls = Vec::new();
    for i in 0..N {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .call(
                    call(&format!("c{i}"), serde_json::json!({"i": i})),
                    Duration::from_secs(10),
                )
                .await
        }));
    }
    while started.load(Ordering::SeqCst) < N {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = writes.load(Ordering::SeqCst);
    gate.add_permits(N);
    for c in calls {
        let r = c.await.expect("join").expect("call");
        assert!(matches!(r.outcome(), Outcome::Success(_)));
    }
    let answers = writes.load(Ordering::SeqCst) - before;
    assert!(
        (1..=2).contains(&answers),
        "{N} answers took {answers} writes"
    );
    trigger.fire();
    let _ = server.await;
}
