//! Cases against any native endpoint (`iicp://host:port`): the published framing
//! vectors, handshake and version rules, malformed-frame dispositions, both CALL key
//! layouts (spec and deployed dialect), and limits and timers (PROTOCOL.md §10,
//! §19 T3, T16, T17, T32; ADR 0002; conformance-test-suite.md §16 NATIVE-FRAME-BASE-*).
//!
//! Frames are built by hand here (a minimal CBOR writer), not with our codec, so the
//! cases test the target's bytes against the spec's, not our encoder against itself.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{case, ensure, Case, Ctx, Outcome, Stop, Target};

const T: Target = Target::NodeNative;

/// The published vectors (`native-framing-v1.json`, PROTOCOL.md §10.1), as vendored in
/// iicp-proto's test data.
const VECTORS: &str = include_str!("../../../crates/iicp-proto/tests/data/native-framing-v1.json");
/// Their pinned digest (PROTOCOL.md §10.1: SDK copies MUST be byte-identical).
const VECTORS_SHA256: &str = "e73a871c069f194c42716f462d2bde04fb79d769e1e98249c2d17c9af50bcfc1";

/// The native cases.
pub fn cases() -> Vec<Case> {
    vec![
        case!("NATIVE-FRAME-VECTORS", Target::Client, "our frame decoder reproduces every published framing vector",
            "PROTOCOL §10.1; native-framing-v1.json; suite NATIVE-FRAME-BASE-01..04", |_ctx| vectors()),
        case!("NATIVE-FRAME-BASE-01", T, "INIT {1:1,2:1} → ACK with negotiated version 1",
            "PROTOCOL §10.5 INIT/ACK, §10.6, §19 T32", |ctx| handshake(ctx)),
        case!("NATIVE-FRAME-BASE-02", T, "vector ping_empty → PONG",
            "PROTOCOL §10.1 ping_empty, §10.5 PING/PONG", |ctx| ping_variant(ctx, 0x00, 0x00)),
        case!("NATIVE-FRAME-BASE-03", T, "vector reserved_byte_is_ignored (0xff) → PONG",
            "PROTOCOL §10.1, §10.3 (non-zero reserved ignored)", |ctx| ping_variant(ctx, 0x00, 0xff)),
        case!("NATIVE-FRAME-BASE-04", T, "vector unknown_flag_bits_are_ignored (0x80) → PONG",
            "PROTOCOL §10.1, §10.3 (unknown flag bits ignored)", |ctx| ping_variant(ctx, 0x80, 0x00)),
        case!("NATIVE-HS-01", T, "INIT whose min_version exceeds the server's → CLOSE version_mismatch",
            "PROTOCOL §10.6 (negotiation), §10.3", |ctx| version_floor(ctx)),
        case!("NATIVE-MAL-01", T, "bad magic → never a native frame: closed with zero bytes (or HTTP on a one-port listener)",
            "PROTOCOL §10.3 (wrong magic: no CLOSE frame)", |ctx| bad_magic(ctx)),
        case!("NATIVE-MAL-02", T, "frame version 0x00 → CLOSE invalid_version",
            "PROTOCOL §10.3", |ctx| malformed(ctx, Bad::Version(0), "invalid_version")),
        case!("NATIVE-MAL-03", T, "frame version 0x02 → CLOSE version_mismatch",
            "PROTOCOL §10.3", |ctx| malformed(ctx, Bad::Version(2), "version_mismatch")),
        case!("NATIVE-MAL-04", T, "length 0xFFFFFFFF → CLOSE frame_too_large (no allocation)",
            "PROTOCOL §10.2, §10.3", |ctx| malformed(ctx, Bad::Length(u32::MAX), "frame_too_large")),
        case!("NATIVE-MAL-05", T, "type 0x20 after a spec INIT → CLOSE unknown_type",
            "PROTOCOL §10.3, §19 T17", |ctx| malformed(ctx, Bad::Type(0x20), "unknown_type")),
        case!("NATIVE-MAL-06", T, "type 0x00 after a spec INIT → CLOSE invalid_type",
            "PROTOCOL §10.3, §19 T17", |ctx| malformed(ctx, Bad::Type(0x00), "invalid_type")),
        case!("NATIVE-MAL-07", T, "un-negotiated custom type 0xF0 → CLOSE unsupported_extension",
            "PROTOCOL §10.3, §10.6 (custom types)", |ctx| malformed(ctx, Bad::Type(0xF0), "unsupported_extension")),
        case!("NATIVE-MAL-08", T, "CALL with undecodable CBOR → CLOSE cbor_decode_error",
            "PROTOCOL §10.3", |ctx| malformed(ctx, Bad::Cbor, "cbor_decode_error")),
        case!("NATIVE-MAL-09", T, "CALL with length 0 → CLOSE invalid_frame",
            "PROTOCOL §10.3 (length 0 on CALL)", |ctx| malformed(ctx, Bad::EmptyCall, "invalid_frame")),
        case!("NATIVE-MAL-10", T, "CALL whose map holds key 3 twice → CLOSE invalid_payload, not executed",
            "framing §4.1 (no duplicate map keys), §9.6; PROTOCOL §10.3, §10.4; ADR 0007", |ctx| malformed(ctx, Bad::DuplicateKey, "invalid_payload")),
        case!("NATIVE-MAL-11", T, "CALL as an indefinite-length map → CLOSE invalid_payload",
            "framing §4.1, §10.6 (indefinite length MUST be refused with invalid_payload); PROTOCOL §10.3; ADR 0007", |ctx| malformed(ctx, Bad::Indefinite, "invalid_payload")),
        case!("NATIVE-MAL-12", T, "bad magic after a valid frame → closed with zero bytes (no CLOSE frame)",
            "framing §1.2, §9.6 notes (wrong magic: close silently); PROTOCOL §10.3", |ctx| bad_magic_later(ctx)),
        case!("NATIVE-DISC-01", T, "deployed-dialect DISCOVER {2,3} → RESPONSE {2,3,20:[nodes]}",
            "PROTOCOL §10.5 DISCOVER, §10.7 (DISCOVER reply); ADR 0007", |ctx| discover(ctx)),
        case!("NATIVE-CALL-01", T, "deployed-dialect CALL {2,3,5:bstr JSON,15} → RESPONSE echoing 2 with a result",
            "PROTOCOL §10.7, §19 T3; ADR 0002", |ctx| call(ctx, Layout::Deployed)),
        case!("NATIVE-CALL-02", T, "spec-layout CALL {1,2,3,5,6,11?,15} → RESPONSE echoing call_id with a result",
            "PROTOCOL §10.5 CALL/RESPONSE, §19 T3", |ctx| call(ctx, Layout::Spec)),
        case!("NATIVE-CALL-03", T, "CALL with key 5 as a CBOR map is accepted",
            "PROTOCOL §10.7 (servers accept key 5 as a map), §19 T3", |ctx| call(ctx, Layout::MapPayload)),
        case!("SERVICE-LIFECYCLE-14", T, "CALL with key 24 → lifecycle RESPONSEs correlated to the CALL: ids echoed, sequence 0,1,… without gaps, status/event and key 12/envelope agree, exactly one terminal, nothing after it (skipped when the node answers buffered: it does not stream)",
            "PROTOCOL §11.3, §10.7 (key 24 switch); [life] §4, §6; service-profiles-v1.json SERVICE-LIFECYCLE-14..20; ADR 0013", |ctx| lifecycle_stream(ctx)),
        case!("SERVICE-LIFECYCLE-22", T, "a retry keeps task_id with a new call_id → the same events again, correlated to the new call",
            "PROTOCOL §11.4, §7.2; [life] §5; SERVICE-LIFECYCLE-07, -22", |ctx| lifecycle_retry(ctx)),
        case!("NATIVE-LIM-01", T, "a half-sent frame on one connection does not stall another",
            "PROTOCOL §10.2, §10.3; DESIGN §5 (bounded per connection)", |ctx| half_sent_isolated(ctx)),
        case!("NATIVE-TMO-01", T, "a half-sent frame is cut with CLOSE read_timeout",
            "PROTOCOL §10.3 (fewer than length bytes in time → read_timeout)", |ctx| read_timeout(ctx)),
        case!("NATIVE-TMO-02", T, "no INIT in time → CLOSE init_timeout",
            "PROTOCOL §10.3 (no INIT within 10 s), §10.6", |ctx| init_timeout(ctx)),
    ]
}

// ---------------------------------------------------------------------------------
// Minimal CBOR writer and frame I/O
// ---------------------------------------------------------------------------------

/// A CBOR value for hand-built frames.
#[derive(Clone, Debug)]
enum C {
    U(u64),
    T(String),
    B(Vec<u8>),
    M(Vec<(u64, C)>),
    /// A string-keyed map.
    S(Vec<(String, C)>),
    A(Vec<C>),
}

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

impl C {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::U(n) => head(0, *n, out),
            Self::B(b) => {
                head(2, b.len() as u64, out);
                out.extend(b);
            }
            Self::T(s) => {
                head(3, s.len() as u64, out);
                out.extend(s.as_bytes());
            }
            Self::A(a) => {
                head(4, a.len() as u64, out);
                a.iter().for_each(|v| v.write(out));
            }
            Self::M(m) => {
                head(5, m.len() as u64, out);
                for (k, v) in m {
                    head(0, *k, out);
                    v.write(out);
                }
            }
            Self::S(m) => {
                head(5, m.len() as u64, out);
                for (k, v) in m {
                    Self::T(k.clone()).write(out);
                    v.write(out);
                }
            }
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write(&mut v);
        v
    }
}

/// A JSON value as CBOR (objects string-keyed), for key 5 as a map.
fn from_json(v: &Value) -> C {
    match v {
        Value::Object(o) => C::S(o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
        Value::Array(a) => C::A(a.iter().map(from_json).collect()),
        Value::String(s) => C::T(s.clone()),
        Value::Number(n) => C::U(n.as_u64().unwrap_or(0)),
        _ => C::T(v.to_string()),
    }
}

fn frame(version: u8, ty: u8, flags: u8, reserved: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = b"IICP".to_vec();
    f.extend([version, ty, flags, reserved]);
    f.extend((payload.len() as u32).to_be_bytes());
    f.extend(payload);
    f
}

fn v1(ty: u8, payload: &[u8]) -> Vec<u8> {
    frame(1, ty, 0, 0, payload)
}

/// A spec INIT: protocol_version 1, min_version 1.
fn spec_init() -> Vec<u8> {
    v1(0x01, &C::M(vec![(1, C::U(1)), (2, C::U(1))]).bytes())
}

/// One received frame: version, type, payload.
#[derive(Debug)]
struct Rx {
    ty: u8,
    payload: Vec<u8>,
}

impl Rx {
    fn json(&self) -> Value {
        if self.payload.is_empty() {
            return Value::Null;
        }
        iicp_proto::cbor::to_json(&self.payload).unwrap_or(Value::Null)
    }
    /// CLOSE reason (key 1), if any.
    fn close_reason(&self) -> Option<String> {
        self.json()["1"].as_str().map(str::to_owned)
    }
}

struct Conn {
    s: TcpStream,
    budget: Duration,
}

impl Conn {
    async fn open(ctx: &Ctx) -> Result<Self, Stop> {
        let addr = ctx
            .node_native
            .as_deref()
            .ok_or_else(|| Stop::Skip("no --node-native".into()))?;
        let s = tokio::time::timeout(ctx.request_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Stop::request(None, format!("connect {addr}: timed out")))?
            .map_err(|e| Stop::request(None, format!("connect {addr}: {e}")))?;
        let _ = s.set_nodelay(true);
        Ok(Self {
            s,
            budget: ctx.request_timeout,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.s
            .write_all(bytes)
            .await
            .map_err(|e| Stop::request(None, format!("write: {e}")))
    }

    /// The next frame; `None` at EOF (or reset).
    async fn recv_within(&mut self, within: Duration) -> Result<Option<Rx>, Stop> {
        let fut = async {
            let mut h = [0u8; 12];
            if self.s.read_exact(&mut h).await.is_err() {
                return Ok(None);
            }
            if &h[..4] != b"IICP" {
                return Err(Stop::assertion(
                    None,
                    format!("peer sent a frame with bad magic {:02x?}", &h[..4]),
                ));
            }
            let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
            if len > 16 * 1024 * 1024 {
                return Err(Stop::assertion(
                    None,
                    format!("peer announced a {len}-byte frame"),
                ));
            }
            let mut payload = vec![0u8; len];
            if self.s.read_exact(&mut payload).await.is_err() {
                return Err(Stop::assertion(None, "peer closed mid-frame".to_owned()));
            }
            Ok(Some(Rx { ty: h[5], payload }))
        };
        tokio::time::timeout(within, fut)
            .await
            .map_err(|_| Stop::request(None, format!("no frame within {within:?}")))?
    }

    async fn recv(&mut self) -> Result<Option<Rx>, Stop> {
        self.recv_within(self.budget).await
    }

    /// The next frame that is not a PONG/ACK (those may interleave).
    async fn recv_skipping(&mut self, skip: &[u8], within: Duration) -> Result<Option<Rx>, Stop> {
        loop {
            match self.recv_within(within).await? {
                Some(rx) if skip.contains(&rx.ty) => continue,
                other => return Ok(other),
            }
        }
    }

    /// Completes the spec handshake.
    async fn handshake(&mut self) -> Result<Value, Stop> {
        self.send(&spec_init()).await?;
        match self.recv().await? {
            Some(rx) if rx.ty == 0x02 => Ok(rx.json()),
            Some(rx) => Err(Stop::assertion(
                None,
                format!("expected ACK (0x02), got type {:#04x} {}", rx.ty, rx.json()),
            )),
            None => Err(Stop::assertion(None, "closed instead of ACK".to_owned())),
        }
    }

    /// Asserts: exactly one CLOSE with `reason`, then EOF.
    async fn expect_close(&mut self, reason: &str, within: Duration) -> Result<(), Stop> {
        let rx = match self.recv_skipping(&[0x02, 0x0A], within).await? {
            None => {
                return Err(Stop::assertion(
                    None,
                    format!("closed without a CLOSE frame (expected reason {reason:?})"),
                ))
            }
            Some(rx) => rx,
        };
        ensure(rx.ty == 0x07, None, || {
            format!(
                "expected CLOSE (0x07), got type {:#04x} {}",
                rx.ty,
                rx.json()
            )
        })?;
        let got = rx.close_reason();
        ensure(got.as_deref() == Some(reason), None, || {
            format!("CLOSE reason {got:?}, expected {reason:?}")
        })?;
        match self.recv_within(within).await {
            Ok(None) | Err(Stop::Fail { .. }) => Ok(()),
            Ok(Some(rx)) => Err(Stop::assertion(
                None,
                format!("a frame (type {:#04x}) followed the CLOSE", rx.ty),
            )),
            Err(s) => Err(s),
        }
    }
}

// ---------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------

async fn vectors() -> Outcome {
    use iicp_proto::frame::Frame;
    let digest = hex::encode(Sha256::digest(VECTORS.as_bytes()));
    ensure(digest == VECTORS_SHA256, None, || {
        format!("vendored vectors differ from the published file (sha256 {digest})")
    })?;
    let doc: Value = serde_json::from_str(VECTORS)
        .map_err(|e| Stop::assertion(None, format!("vectors: {e}")))?;
    let scenarios = doc["scenarios"].as_array().cloned().unwrap_or_default();
    ensure(scenarios.len() >= 7, None, || {
        "fewer than 7 scenarios".into()
    })?;
    for s in scenarios {
        let name = s["name"].as_str().unwrap_or("?").to_owned();
        let wire = hex::decode(s["wire_hex"].as_str().unwrap_or_default())
            .map_err(|e| Stop::assertion(None, format!("{name}: {e}")))?;
        let exp = &s["expected"];
        let got = Frame::parse_exact(&wire, iicp_proto::frame::MAX_PAYLOAD);
        match (exp["outcome"].as_str(), got) {
            (Some("accept"), Ok((f, consumed))) => {
                let ok = u64::from(f.header.version) == exp["version"].as_u64().unwrap_or(99)
                    && u64::from(f.header.msg_type.0)
                        == exp["message_type"].as_u64().unwrap_or(999)
                    && u64::from(f.header.flags.0) == exp["flags"].as_u64().unwrap_or(999)
                    && hex::encode(f.payload) == exp["payload_hex"].as_str().unwrap_or("?")
                    && consumed as u64 == exp["consumed"].as_u64().unwrap_or(0);
                ensure(ok, None, || {
                    format!("{name}: decoded {f:?}, consumed {consumed}")
                })?;
            }
            (Some("reject"), Err(e)) => {
                ensure(exp["reason"] == e.code(), None, || {
                    format!(
                        "{name}: rejected as {}, expected {}",
                        e.code(),
                        exp["reason"]
                    )
                })?;
            }
            (_, got) => {
                return Err(Stop::assertion(
                    None,
                    format!("{name}: expected {exp}, got {got:?}"),
                ))
            }
        }
    }
    Ok(None)
}

async fn handshake(ctx: Arc<Ctx>) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    let ack = c.handshake().await?;
    ensure(ack["1"] == 1, None, || {
        format!("ACK key 1 (version) is {}", ack["1"])
    })?;
    Ok(None)
}

async fn ping_variant(ctx: Arc<Ctx>, flags: u8, reserved: u8) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    c.send(&frame(1, 0x09, flags, reserved, &[])).await?;
    match c.recv().await? {
        Some(rx) if rx.ty == 0x0A => Ok(None),
        Some(rx) => Err(Stop::assertion(
            None,
            format!("expected PONG, got type {:#04x} {}", rx.ty, rx.json()),
        )),
        None => Err(Stop::assertion(None, "closed instead of PONG".to_owned())),
    }
}

async fn version_floor(ctx: Arc<Ctx>) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.send(&v1(0x01, &C::M(vec![(1, C::U(7)), (2, C::U(7))]).bytes()))
        .await?;
    let within = ctx.request_timeout;
    c.expect_close("version_mismatch", within).await?;
    Ok(None)
}

async fn bad_magic(ctx: Arc<Ctx>) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.send(&hex::decode("584943500109000000000000").unwrap_or_default())
        .await?;
    let mut buf = Vec::new();
    let mut read = tokio::time::timeout(ctx.request_timeout, c.s.read_to_end(&mut buf)).await;
    if read.is_err() && buf.is_empty() {
        // A one-port listener (PROTOCOL §1.2) reads non-`IICP` bytes as the start of an
        // HTTP request and may wait for its end: complete it, then it must answer or
        // close.
        c.send(b"\r\n\r\n").await?;
        read = tokio::time::timeout(ctx.request_timeout, c.s.read_to_end(&mut buf)).await;
    }
    ensure(read.is_ok() || !buf.is_empty(), None, || {
        "the connection stayed open and silent after bad magic".into()
    })?;
    // What must never come is a native frame; an HTTP answer (any version, even a
    // bare HTTP/0.9 error page) is right on a one-port listener.
    ensure(!buf.starts_with(b"IICP"), None, || {
        format!(
            "peer answered with a native frame: {}",
            super::snippet(&buf)
        )
    })?;
    Ok(None)
}

async fn bad_magic_later(ctx: Arc<Ctx>) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    c.send(b"XICP\x01\x09\x00\x00\x00\x00\x00\x00").await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(ctx.request_timeout, c.s.read_to_end(&mut buf)).await;
    ensure(read.is_ok(), None, || {
        "the connection stayed open after bad magic".into()
    })?;
    ensure(buf.is_empty(), None, || {
        format!(
            "peer sent {} bytes after bad magic: {}",
            buf.len(),
            super::snippet(&buf)
        )
    })?;
    Ok(None)
}

async fn discover(ctx: Arc<Ctx>) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    let session = super::task_id();
    let m = C::M(vec![
        (2, C::T(session.clone())),
        (3, C::T(ctx.intent.clone())),
    ]);
    c.send(&v1(0x03, &m.bytes())).await?;
    let rx = c
        .recv_skipping(&[0x0A], ctx.request_timeout)
        .await?
        .ok_or_else(|| Stop::assertion(None, "closed instead of answering DISCOVER".to_owned()))?;
    let v = rx.json();
    ensure(rx.ty == 0x06, None, || {
        format!("expected RESPONSE (0x06), got type {:#04x} {v}", rx.ty)
    })?;
    ensure(v["2"] == session.as_str(), None, || {
        format!("DISCOVER reply key 2 is {}, not the session id", v["2"])
    })?;
    ensure(v["20"].is_array(), None, || {
        format!("DISCOVER reply has no node list under key 20: {v}")
    })?;
    Ok(None)
}

#[derive(Clone, Copy)]
enum Bad {
    Version(u8),
    Length(u32),
    Type(u8),
    Cbor,
    EmptyCall,
    /// A deployed-dialect CALL with key 3 twice: a custom intent, then the target's.
    DuplicateKey,
    /// A deployed-dialect CALL as an indefinite-length map.
    Indefinite,
}

async fn malformed(ctx: Arc<Ctx>, bad: Bad, reason: &'static str) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    let bytes = match bad {
        Bad::Version(v) => frame(v, 0x09, 0, 0, &[]),
        Bad::Length(n) => {
            let mut f = b"IICP".to_vec();
            f.extend([1, 0x05, 0, 0]);
            f.extend(n.to_be_bytes());
            f
        }
        Bad::Type(t) => v1(t, &C::M(vec![]).bytes()),
        Bad::Cbor => v1(0x05, &[0xa2, 0x01, 0xff, 0xff, 0x1c]),
        Bad::EmptyCall => v1(0x05, &[]),
        Bad::DuplicateKey | Bad::Indefinite => {
            let payload = serde_json::to_vec(&ctx.payload).unwrap_or_default();
            let mut m = vec![(2, C::T(super::task_id()))];
            if matches!(bad, Bad::DuplicateKey) {
                m.push((3, C::T("urn:iicp:intent:x.conformance:other:v1".into())));
            }
            m.push((3, C::T(ctx.intent.clone())));
            m.push((5, C::B(payload)));
            if let Some(t) = &ctx.node_token {
                m.push((11, C::T(t.clone())));
            }
            let mut body = C::M(m).bytes();
            if matches!(bad, Bad::Indefinite) {
                // same entries, indefinite-length map head and a break
                body[0] = 0xbf;
                body.push(0xff);
            }
            v1(0x05, &body)
        }
    };
    c.send(&bytes).await?;
    c.expect_close(reason, ctx.request_timeout).await?;
    Ok(None)
}

#[derive(Clone, Copy)]
enum Layout {
    Deployed,
    Spec,
    MapPayload,
}

async fn call(ctx: Arc<Ctx>, layout: Layout) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    let session = super::task_id();
    let call_id = super::task_id();
    let payload_json = serde_json::to_vec(&ctx.payload).unwrap_or_default();
    let mut m = vec![(2, C::T(session.clone())), (3, C::T(ctx.intent.clone()))];
    match layout {
        Layout::Deployed => m.push((5, C::B(payload_json))),
        Layout::Spec => {
            m.insert(0, (1, C::U(1)));
            m.push((5, C::B(payload_json)));
            m.push((6, C::U(30)));
        }
        Layout::MapPayload => m.push((5, from_json(&ctx.payload))),
    }
    // a credential for a node in token mode (key 11; unknown keys are ignored elsewhere)
    if let Some(t) = &ctx.node_token {
        m.push((11, C::T(t.clone())));
    }
    m.push((15, C::T(call_id.clone())));
    if matches!(layout, Layout::Spec) {
        m.push((16, C::T(call_id.clone())));
    }
    c.send(&v1(0x05, &C::M(m).bytes())).await?;
    let rx = c
        .recv_skipping(&[0x0A], ctx.request_timeout)
        .await?
        .ok_or_else(|| Stop::assertion(None, "closed instead of RESPONSE".to_owned()))?;
    let v = rx.json();
    ensure(rx.ty == 0x06, None, || {
        format!("expected RESPONSE (0x06), got type {:#04x} {v}", rx.ty)
    })?;
    ensure(v["2"] == session.as_str(), None, || {
        format!("RESPONSE key 2 (session_id) is {}, not the CALL's", v["2"])
    })?;
    if matches!(layout, Layout::Spec) {
        ensure(
            v["3"] == call_id.as_str() || v["15"] == call_id.as_str(),
            None,
            || format!("RESPONSE echoes call_id in neither key 3 nor 15: {v}"),
        )?;
    }
    let error = !v["100"].is_null() || !v["6"].is_null() || v["4"] == "error";
    ensure(!error && !v["5"].is_null(), None, || {
        format!("RESPONSE is an error or has no result (key 5): {v}")
    })?;
    Ok(None)
}

/// Sends a lifecycle CALL (key 24) and reads every RESPONSE up to the final one,
/// then waits briefly for anything after it. `Ok(None)`: the node answered one
/// buffered RESPONSE (no key 13), so it does not stream.
async fn lifecycle_frames(
    c: &mut Conn,
    ctx: &Ctx,
    task_id: &str,
    call_id: &str,
) -> Result<Option<Vec<Value>>, Stop> {
    let payload_json = serde_json::to_vec(&ctx.payload).unwrap_or_default();
    let mut m = vec![
        (1, C::U(1)),
        (2, C::T("lc-session".into())),
        (3, C::T(ctx.intent.clone())),
        (5, C::B(payload_json)),
        (6, C::U(30)),
    ];
    if let Some(t) = &ctx.node_token {
        m.push((11, C::T(t.clone())));
    }
    m.push((15, C::T(call_id.to_owned())));
    m.push((24, C::T(task_id.to_owned())));
    c.send(&v1(0x05, &C::M(m).bytes())).await?;
    let mut frames = Vec::new();
    loop {
        let rx = c
            .recv_skipping(&[0x0A], ctx.request_timeout)
            .await?
            .ok_or_else(|| {
                Stop::assertion(
                    None,
                    format!(
                        "closed after {} RESPONSEs, before a final one",
                        frames.len()
                    ),
                )
            })?;
        let v = rx.json();
        ensure(rx.ty == 0x06, None, || {
            format!("expected RESPONSE (0x06), got type {:#04x} {v}", rx.ty)
        })?;
        if frames.is_empty() && v["13"].is_null() {
            return Ok(None);
        }
        let last = v["12"] != Value::Bool(false);
        frames.push(v);
        if last {
            break;
        }
    }
    // nothing may follow the terminal
    if let Ok(Some(rx)) = c.recv_within(Duration::from_millis(300)).await {
        return Err(Stop::assertion(
            None,
            format!(
                "a frame after the terminal: type {:#04x} {}",
                rx.ty,
                rx.json()
            ),
        ));
    }
    Ok(Some(frames))
}

/// Checks one CALL's lifecycle RESPONSEs against §11.3.
fn check_lifecycle(frames: &[Value], task_id: &str, call_id: &str) -> Result<(), Stop> {
    for (i, v) in frames.iter().enumerate() {
        let env = &v["13"];
        ensure(v["2"] == "lc-session", None, || {
            format!("frame {i}: session_id drift: {v}")
        })?;
        ensure(v["3"] == call_id, None, || {
            format!("frame {i}: call_id (key 3) drift: {v}")
        })?;
        ensure(env["1"] == task_id, None, || {
            format!("frame {i}: task_id (13.1) drift: {v}")
        })?;
        ensure(env["2"] == i as u64, None, || {
            format!(
                "frame {i}: sequence {} (expected {i}: 0-based, no gap)",
                env["2"]
            )
        })?;
        ensure(v["12"] == env["4"], None, || {
            format!(
                "frame {i}: key 12 {} ≠ envelope is_final {}",
                v["12"], env["4"]
            )
        })?;
        let last = i == frames.len() - 1;
        ensure(v["12"] == Value::Bool(last), None, || {
            format!(
                "frame {i}: is_final {} (only the last frame is final)",
                v["12"]
            )
        })?;
        let agrees = match (v["4"].as_str(), env["3"].as_str()) {
            (Some("partial"), Some("partial")) => !last,
            (Some("success"), Some("completed")) => last,
            (Some("error"), Some("failed" | "cancelled")) => last,
            (Some("timeout"), Some("timed_out")) => last,
            _ => false,
        };
        ensure(agrees, None, || {
            format!("frame {i}: status {} / event {} disagree", v["4"], env["3"])
        })?;
    }
    let terminal = &frames[frames.len() - 1];
    ensure(terminal["4"] == "success", None, || {
        format!("the stream ended with {terminal}, not a completed result")
    })
}

async fn lifecycle_stream(ctx: Arc<Ctx>) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    let (task_id, call_id) = (super::task_id(), super::task_id());
    let Some(frames) = lifecycle_frames(&mut c, &ctx, &task_id, &call_id).await? else {
        return Err(Stop::Skip(
            "the node answered key 24 with one buffered RESPONSE: it does not stream".into(),
        ));
    };
    check_lifecycle(&frames, &task_id, &call_id)?;
    Ok(None)
}

async fn lifecycle_retry(ctx: Arc<Ctx>) -> Outcome {
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    let task_id = super::task_id();
    let first_call = super::task_id();
    let Some(first) = lifecycle_frames(&mut c, &ctx, &task_id, &first_call).await? else {
        return Err(Stop::Skip("the node does not stream".into()));
    };
    let retry_call = super::task_id();
    let again = lifecycle_frames(&mut c, &ctx, &task_id, &retry_call)
        .await?
        .ok_or_else(|| Stop::assertion(None, "the retry was answered buffered".to_owned()))?;
    check_lifecycle(&again, &task_id, &retry_call)?;
    let results = |f: &[Value]| f.iter().map(|v| v["5"].clone()).collect::<Vec<_>>();
    ensure(results(&first) == results(&again), None, || {
        "the retry's results differ from the first run's (executed again?)".to_owned()
    })?;
    Ok(None)
}

async fn half_sent_isolated(ctx: Arc<Ctx>) -> Outcome {
    let mut stuck = Conn::open(&ctx).await?;
    stuck.handshake().await?;
    let mut f = b"IICP".to_vec();
    f.extend([1, 0x05, 0, 0]);
    f.extend(100u32.to_be_bytes());
    f.extend([0xa1, 0x02, 0x61]);
    stuck.send(&f).await?;
    let mut other = Conn::open(&ctx).await?;
    other.handshake().await?;
    other.send(&v1(0x09, &[])).await?;
    match other.recv().await? {
        Some(rx) if rx.ty == 0x0A => Ok(None),
        other => Err(Stop::assertion(
            None,
            format!("second connection got {other:?} instead of PONG"),
        )),
    }
}

fn need_timers(ctx: &Ctx) -> Result<Duration, Stop> {
    ctx.native_timeouts
        .map(|t| t + Duration::from_secs(3))
        .ok_or_else(|| {
            Stop::Skip("needs --native-timeouts SECS (the target's handshake/read timeouts; the spec's are 10 s and 30 s)".into())
        })
}

async fn read_timeout(ctx: Arc<Ctx>) -> Outcome {
    let within = need_timers(&ctx)?;
    let mut c = Conn::open(&ctx).await?;
    c.handshake().await?;
    let mut f = b"IICP".to_vec();
    f.extend([1, 0x05, 0, 0]);
    f.extend(64u32.to_be_bytes());
    f.extend([0xa1, 0x02]);
    c.send(&f).await?;
    c.expect_close("read_timeout", within).await?;
    Ok(None)
}

async fn init_timeout(ctx: Arc<Ctx>) -> Outcome {
    let within = need_timers(&ctx)?;
    let mut c = Conn::open(&ctx).await?;
    // a frame (so that a one-port listener sees the magic) but never an INIT
    c.send(&v1(0x09, &[])).await?;
    c.expect_close("init_timeout", within).await?;
    Ok(None)
}
