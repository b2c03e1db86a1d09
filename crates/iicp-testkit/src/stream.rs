//! Fake streaming nodes (the service-lifecycle profile as ADR 0013 puts it on the wire)
//! for `iicp-client`'s streaming tests, scripted frame by frame so that a test can make
//! them misbehave: drift ids, skip or repeat sequences, send after the terminal, never
//! end, hang up.
//!
//! * [`native_stream_node`] — a raw native server: the handshake and the decoding of
//!   the client's frames by [`iicp_proto::session::Session`], every answer written as
//!   the script says (RESPONSE frames, raw bytes, pauses, a hang-up). It records each
//!   CALL and each CONTROL.
//! * [`http_stream_node`] — a raw HTTP/1.1 server: `POST /v1/tasks` (accept with 202
//!   and the task state, or refuse), `GET /v1/tasks/{id}/events` (the scripted SSE
//!   body), `POST /v1/tasks/stream` (both in one: the refusal, or the scripted SSE body),
//!   `POST /v1/tasks/{id}/cancel`; every response closes its connection. It
//!   records each request.
//!
//! Both bind 127.0.0.1:0 and stop accepting when dropped (open connections end with the
//! test's runtime).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_proto::crypto::cx::{CxKeyPair, IicpConf, ResponseKey};
use iicp_proto::lifecycle::{Event, EventKind, PROFILE};
use iicp_proto::message::{Body, Call, Control, Lifecycle, Message, Prefer, Response};
use iicp_proto::session::{self, Session};
use parking_lot::Mutex;
use rand_core::OsRng;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------
// Native
// ---------------------------------------------------------------------------------

/// One step of a native script.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // scripts are short; a frame reads better unboxed
pub enum NativeStep {
    /// Write this RESPONSE frame as it is.
    Send(Response),
    /// Write these bytes as they are.
    Raw(Vec<u8>),
    /// Wait.
    Sleep(Duration),
    /// Hang up (shut the connection down).
    Close,
}

/// What the node answers to one CALL.
pub type NativeScript = Arc<dyn Fn(&Call) -> Vec<NativeStep> + Send + Sync>;

/// A running fake native streaming node.
pub struct NativeStreamNode {
    /// The bound address.
    pub addr: SocketAddr,
    /// Every CALL received.
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// Every CONTROL received.
    pub controls: Arc<Mutex<Vec<Control>>>,
    accept: tokio::task::AbortHandle,
}

impl std::fmt::Debug for NativeStreamNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeStreamNode")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for NativeStreamNode {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl NativeStreamNode {
    /// `iicp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("iicp://{}", self.addr)
    }

    /// The CALLs so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    /// The CONTROLs so far.
    pub fn controls(&self) -> Vec<Control> {
        self.controls.lock().clone()
    }

    /// Waits up to `within` for a CONTROL `cancel`.
    pub async fn wait_cancel(&self, within: Duration) -> Option<Control> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(c) = self
                .controls()
                .into_iter()
                .find(|c| c.action.as_deref() == Some("cancel"))
            {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

/// The RESPONSE of lifecycle event `kind` at `sequence` for `call`, in the ADR 0013
/// layout `{1: 1, 2, 3, 4, 5?, 11, 12, 13: {1, 2, 3, 4}}`.
pub fn lifecycle_frame(
    call: &Call,
    sequence: u64,
    kind: EventKind,
    result: Option<Value>,
) -> Response {
    Response {
        protocol_version: Some(1),
        session_id: call.session_id.clone(),
        call_id: call.call_id.clone(),
        status: Some(kind.status().to_owned()),
        result: result.as_ref().map(Body::cbor),
        node_id: Some("fake-stream-node".into()),
        is_final: Some(kind.is_terminal()),
        lifecycle: Some(Lifecycle {
            task_id: call.task_id.clone(),
            sequence: Some(sequence),
            event: Some(kind.as_str().to_owned()),
            is_final: Some(kind.is_terminal()),
            receipt: None,
        }),
        ..Response::default()
    }
}

/// The frames of a happy stream: one partial per chunk from sequence 0, then
/// `completed` carrying `last` (the tokens cumulative, one per chunk).
pub fn happy_frames(call: &Call, chunks: &[Value], last: Option<Value>) -> Vec<NativeStep> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let mut r = lifecycle_frame(call, i as u64, EventKind::Partial, Some(c.clone()));
        r.tokens_used = Some(i as u64 + 1);
        out.push(NativeStep::Send(r));
    }
    let mut done = lifecycle_frame(call, chunks.len() as u64, EventKind::Completed, last);
    done.tokens_used = Some(chunks.len() as u64 + 1);
    out.push(NativeStep::Send(done));
    out
}

/// Starts a native streaming node answering each CALL with `script`.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn native_stream_node(script: NativeScript) -> NativeStreamNode {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let controls = Arc::new(Mutex::new(Vec::new()));
    let (c1, c2) = (Arc::clone(&calls), Arc::clone(&controls));
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(native_connection(
                stream,
                Arc::clone(&script),
                Arc::clone(&c1),
                Arc::clone(&c2),
            ));
        }
    })
    .abort_handle();
    NativeStreamNode {
        addr,
        calls,
        controls,
        accept,
    }
}

enum Out {
    Bytes(Vec<u8>),
    Close,
}

async fn native_connection(
    stream: TcpStream,
    script: NativeScript,
    calls: Arc<Mutex<Vec<Call>>>,
    controls: Arc<Mutex<Vec<Control>>>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // bounded: a scripted node that writes faster than its peer reads waits
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Bytes(b) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Out::Close => {
                    let _ = wr.shutdown().await;
                    break;
                }
            }
        }
    });
    let mut session = Session::new(session::Config::server(), Instant::now());
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let used = session.handle_input(&buf, Instant::now());
        buf.drain(..used);
        let mut out = Vec::new();
        session.take_transmit(&mut out);
        if !out.is_empty() {
            let _ = tx.send(Out::Bytes(out)).await;
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                session::Event::Call(call) => {
                    calls.lock().push(call.clone());
                    let steps = script(&call);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        for step in steps {
                            match step {
                                NativeStep::Send(r) => {
                                    if let Ok(f) = Message::Response(r).to_frame() {
                                        let _ = tx.send(Out::Bytes(f)).await;
                                    }
                                }
                                NativeStep::Raw(b) => {
                                    let _ = tx.send(Out::Bytes(b)).await;
                                }
                                NativeStep::Sleep(d) => tokio::time::sleep(d).await,
                                NativeStep::Close => {
                                    let _ = tx.send(Out::Close).await;
                                    return;
                                }
                            }
                        }
                    });
                }
                session::Event::Message(Message::Control(c)) => controls.lock().push(c),
                session::Event::Closed { .. } => return,
                _ => {}
            }
        }
    }
}

/// The key-5 JSON of a CALL (the payload, or the CX object).
pub fn call_payload(call: &Call) -> Value {
    call.payload
        .as_ref()
        .and_then(|p| p.to_json(Prefer::Json).ok())
        .unwrap_or(Value::Null)
}

/// Opens the IICP-CX request in a native CALL's key 5 or an HTTP task body (its
/// `iicp_conf`) with `key`: the plaintext payload and the task's response key.
pub fn open_cx(
    key: &CxKeyPair,
    conf: &Value,
    task_id: &str,
    intent: &str,
) -> Option<(Value, ResponseKey)> {
    let conf = IicpConf::from_value(conf).ok()?;
    let opened = iicp_proto::crypto::cx::open_call(key, &conf, task_id, intent).ok()?;
    Some((opened.payload_json().ok()?, opened.response_key().clone()))
}

/// `chunk` sealed at sequence `index` as an encrypted native result: `{task_id,
/// status: "encrypted", iicp_conf_resp}`.
pub fn sealed_native_result(rk: &ResponseKey, task_id: &str, index: u64, chunk: &Value) -> Value {
    let text = serde_json::to_vec(chunk).unwrap_or_default();
    let sealed = rk
        .seal_chunk(&mut OsRng, index, &text)
        .expect("seal a chunk");
    json!({"task_id": task_id, "status": "encrypted", "iicp_conf_resp": sealed.to_value()})
}

// ---------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------

/// One request as the HTTP fake saw it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How `POST /v1/tasks` is answered.
#[derive(Clone, Debug)]
pub enum Submit {
    /// 202 with the task state.
    Accept,
    /// This status, JSON body and headers (a refusal).
    Refuse(u16, Value, Vec<(&'static str, &'static str)>),
    /// 200 with this task response body (a node answering buffered).
    Buffered(Value),
}

/// One step of the event stream.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // scripts are short; an event reads better unboxed
pub enum HttpStep {
    /// One SSE message for the event (`id:` sequence, `event:` name, `data:` JSON).
    Event(Event),
    /// These bytes as they are.
    Raw(String),
    /// Wait.
    Sleep(Duration),
    /// Keep the stream open (until the client goes away).
    Hold,
}

/// The SSE message of `event` (ADR 0013).
pub fn sse(event: &Event) -> String {
    format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.sequence,
        event.event,
        serde_json::to_string(event).unwrap_or_default()
    )
}

/// An event with a plaintext result and cumulative tokens.
pub fn event(task_id: &str, sequence: u64, kind: EventKind, result: Option<Value>) -> Event {
    let mut e = Event::new(task_id, sequence, kind);
    e.result = result.map(Into::into);
    e
}

/// The events of a happy HTTP stream: `accepted` at 0, one partial per chunk, then
/// `completed` with `last`.
pub fn happy_events(task_id: &str, chunks: &[Value], last: Option<Value>) -> Vec<HttpStep> {
    let mut out = vec![HttpStep::Event(event(
        task_id,
        0,
        EventKind::Accepted,
        None,
    ))];
    for (i, c) in chunks.iter().enumerate() {
        let mut e = event(task_id, i as u64 + 1, EventKind::Partial, Some(c.clone()));
        e.tokens_used = Some(i as u64 + 1);
        out.push(HttpStep::Event(e));
    }
    let mut done = event(task_id, chunks.len() as u64 + 1, EventKind::Completed, last);
    done.tokens_used = Some(chunks.len() as u64 + 1);
    done.model_used = Some("fake-model".into());
    out.push(HttpStep::Event(done));
    out
}

/// The answer to a `POST /v1/tasks` body.
pub type SubmitScript = Arc<dyn Fn(&Value) -> Submit + Send + Sync>;
/// The event stream of a task id and its `POST /v1/tasks` body.
pub type EventScript = Arc<dyn Fn(&str, &Value) -> Vec<HttpStep> + Send + Sync>;

/// What the HTTP fake answers: `submit` for each `POST /v1/tasks` (given its body),
/// `events` for each event stream (given the task id and that body).
#[derive(Clone)]
pub struct HttpScript {
    /// The answer to `POST /v1/tasks`.
    pub submit: SubmitScript,
    /// The event stream of a task.
    pub events: EventScript,
    /// Whether `POST /v1/tasks/stream` is served (else it is a 404, as on a node or
    /// relay without it).
    pub one_request: bool,
}

/// A running fake HTTP streaming node.
pub struct HttpStreamNode {
    /// The bound address.
    pub addr: SocketAddr,
    /// Every request so far.
    pub requests: Arc<Mutex<Vec<RawRequest>>>,
    accept: tokio::task::AbortHandle,
}

impl std::fmt::Debug for HttpStreamNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStreamNode")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for HttpStreamNode {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl HttpStreamNode {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().clone()
    }

    /// The requests whose path ends with `suffix` (`/cancel`, `/events`, …).
    pub fn hits(&self, method: &str, suffix: &str) -> Vec<RawRequest> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == method && r.path.split('?').next().unwrap_or("").ends_with(suffix)
            })
            .collect()
    }

    /// Waits up to `within` for a `POST …/cancel`.
    pub async fn wait_cancel(&self, within: Duration) -> Option<RawRequest> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(r) = self.hits("POST", "/cancel").into_iter().next() {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

/// Starts an HTTP streaming node.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn http_stream_node(script: HttpScript) -> HttpStreamNode {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let bodies: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let reqs = Arc::clone(&requests);
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(http_connection(
                stream,
                script.clone(),
                Arc::clone(&reqs),
                Arc::clone(&bodies),
            ));
        }
    })
    .abort_handle();
    HttpStreamNode {
        addr,
        requests,
        accept,
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some(RawRequest {
        method,
        path,
        headers,
        body,
    })
}

async fn respond(stream: &mut TcpStream, status: u16, body: &Value, headers: &[(&str, &str)]) {
    let text = serde_json::to_string(body).unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        text.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn task_state(task_id: &str, state: &str) -> Value {
    json!({
        "profile": PROFILE,
        "task_id": task_id,
        "state": state,
        "latest_sequence": 0,
        "is_final": state != "accepted",
        "events_url": format!("/v1/tasks/{task_id}/events"),
        "cancel_url": format!("/v1/tasks/{task_id}/cancel"),
    })
}

async fn http_connection(
    mut stream: TcpStream,
    script: HttpScript,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    bodies: Arc<Mutex<HashMap<String, Value>>>,
) {
    let _ = stream.set_nodelay(true);
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    requests.lock().push(req.clone());
    let path = req.path.split('?').next().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "tasks"]) => {
            let body = req.json();
            let task_id = body["task_id"].as_str().unwrap_or_default().to_owned();
            match (script.submit)(&body) {
                Submit::Accept => {
                    bodies.lock().insert(task_id.clone(), body);
                    respond(&mut stream, 202, &task_state(&task_id, "accepted"), &[]).await;
                }
                Submit::Refuse(status, v, headers) => {
                    respond(&mut stream, status, &v, &headers).await;
                }
                Submit::Buffered(v) => respond(&mut stream, 200, &v, &[]).await,
            }
        }
        // submit and events in one request (ADR 0019)
        ("POST", ["v1", "tasks", "stream"]) if script.one_request => {
            let body = req.json();
            let task_id = body["task_id"].as_str().unwrap_or_default().to_owned();
            match (script.submit)(&body) {
                Submit::Accept => {
                    let steps = (script.events)(&task_id, &body);
                    bodies.lock().insert(task_id, body);
                    write_events(&mut stream, steps).await;
                }
                Submit::Refuse(status, v, headers) => {
                    respond(&mut stream, status, &v, &headers).await;
                }
                Submit::Buffered(v) => respond(&mut stream, 200, &v, &[]).await,
            }
        }
        ("GET", ["v1", "tasks", task_id, "events"]) => {
            let body = bodies.lock().get(*task_id).cloned().unwrap_or(Value::Null);
            let steps = (script.events)(task_id, &body);
            write_events(&mut stream, steps).await;
        }
        ("POST", ["v1", "tasks", task_id, "cancel"]) => {
            respond(&mut stream, 200, &task_state(task_id, "cancelled"), &[]).await;
        }
        _ => {
            respond(
                &mut stream,
                404,
                &json!({"error": {"code": "not_found", "message": "no such resource"}}),
                &[],
            )
            .await;
        }
    }
}

/// Writes an event stream response: the head, then the scripted steps.
async fn write_events(stream: &mut TcpStream, steps: Vec<HttpStep>) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for step in steps {
        match step {
            HttpStep::Event(e) => {
                if stream.write_all(sse(&e).as_bytes()).await.is_err() {
                    return;
                }
            }
            HttpStep::Raw(s) => {
                if stream.write_all(s.as_bytes()).await.is_err() {
                    return;
                }
            }
            HttpStep::Sleep(d) => tokio::time::sleep(d).await,
            HttpStep::Hold => {
                // until the client hangs up
                let mut sink = [0u8; 256];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// A NODELIST entry that advertises the lifecycle profile for the chat intent: HTTP at
/// `endpoint`, native at `native` when given, the CX key of `key` with `features`.
pub fn stream_entry(
    id: &str,
    endpoint: &str,
    native: Option<SocketAddr>,
    key: Option<&CxKeyPair>,
    features: &[&str],
) -> Value {
    let mut v = crate::fake::node_entry(id, endpoint, key, features);
    v["capabilities"] = json!([{
        "intent": crate::fake::CHAT,
        "supported_profiles": [PROFILE],
        "supports_streaming": true,
        "extensions": {"service_lifecycle": iicp_proto::lifecycle::http_resources()},
    }]);
    if let Some(addr) = native {
        v["transport_endpoint"] = json!(format!("iicp://{addr}"));
    }
    v
}
