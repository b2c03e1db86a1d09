//! The relay over loopback (PROTOCOL.md §14): a worker binds, a task posted to the
//! relay's `/v1/relay-for/{id}/v1/task` reaches the worker's handler and the answer comes
//! back; an alive worker is not displaced; bind tickets are required / verified / single
//! use; rate limit and session cap; a gone worker gives `IICP-E030`; the worker
//! reconnects when the relay returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iicp_nat::relay::{check_ports, reason, RelayError, TicketSource, DEFAULT_RELAY_PORT};
use iicp_nat::upnp::BoxFuture;
use iicp_nat::{RelayConfig, RelayHandle, RelayServer, RelayWorker, WorkerConfig, WorkerState};
use iicp_proto::crypto::token::{DirectoryKey, RelayTicketClaims};
use iicp_proto::message::{Body, Call, Channel, Message, Prefer, RelayAck, RelayBind, Response};
use iicp_proto::secret::Secret;
use iicp_transport::http::{HttpClient, HttpClientConfig, HttpServer, Router};
use iicp_transport::native::connection::{self, ConnectionConfig, ConnectionHandle};
use iicp_transport::native::{CallContext, CallHandler};
use iicp_transport::shutdown::{self, Shutdown, Trigger};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

struct Relay {
    addr: SocketAddr,
    http: SocketAddr,
    handle: RelayHandle,
    trigger: Trigger,
    task: tokio::task::JoinHandle<()>,
}

async fn relay_with(mut config: RelayConfig) -> Relay {
    let http_server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let http = http_server.local_addr().unwrap();
    if config.listen.port() == DEFAULT_RELAY_PORT {
        config.listen = "127.0.0.1:0".parse().unwrap();
    }
    config.http_port = http.port();
    let server = RelayServer::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(http_server.serve(handle.routes(Router::new()), stop.clone()));
    let task = tokio::spawn(server.serve(stop));
    Relay {
        addr,
        http,
        handle,
        trigger,
        task,
    }
}

async fn relay() -> Relay {
    relay_with(RelayConfig::default()).await
}

fn echo_handler() -> Arc<dyn CallHandler> {
    Arc::new(|call: Call, _ctx: CallContext| async move {
        let task = call
            .payload
            .as_ref()
            .and_then(|b| b.to_json(Prefer::Json).ok())
            .unwrap_or(Value::Null);
        let result = json!({
            "output": {"echo": task["payload"]},
            "node_id": "w-1",
            "model": "echo",
        });
        Response::success(&call, Body::json(&result))
    })
}

fn worker_config(relay: &Relay, id: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new("127.0.0.1", relay.addr.port(), id, CHAT);
    c.models = vec!["echo".into()];
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c.ping_interval = Duration::from_millis(300);
    c
}

/// A hand-made relay connection: INIT, RELAY_BIND, returns the RELAY_ACK.
async fn raw_bind(addr: SocketAddr, bind: RelayBind) -> (RelayAck, ConnectionHandle) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let peer = stream.peer_addr().unwrap();
    let mut cfg = ConnectionConfig::client();
    cfg.session.channel = Channel::Relay;
    let (tx, mut rx) = mpsc::channel(4);
    let (handle, _task) = connection::spawn(
        stream,
        CallContext { peer, tls: false },
        cfg,
        None,
        Some(tx),
        Shutdown::new(),
    );
    handle.send(Message::RelayBind(bind)).await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(Message::RelayAck(a)) => return a,
                Some(_) => continue,
                None => panic!("connection ended without RELAY_ACK"),
            }
        }
    })
    .await
    .expect("RELAY_ACK in time");
    (ack, handle)
}

fn bind_msg(id: &str, ticket: Option<String>) -> RelayBind {
    RelayBind {
        worker_id: Some(id.into()),
        intent: Some(CHAT.into()),
        models: Some(vec!["echo".into()]),
        bind_ticket: ticket.map(Secret::new),
    }
}

fn client() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).unwrap()
}

async fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn task_through_the_relay_reaches_the_worker_and_returns() {
    let relay = relay().await;
    let worker = RelayWorker::spawn(worker_config(&relay, "w-1"), echo_handler(), None);
    let endpoint = worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound");
    assert_eq!(
        endpoint,
        format!("http://127.0.0.1:{}/v1/relay-for/w-1", relay.http.port())
    );
    assert!(relay.handle.is_bound("w-1"));
    assert_eq!(relay.handle.session_count(), 1);

    let task = json!({"task_id": "t-1", "intent": CHAT, "payload": {"messages": [{"role": "user", "content": "hi"}]}});
    let reply = client()
        .post_json(format!("{endpoint}/v1/task"), &task)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    let body: Value = reply.json().unwrap();
    assert_eq!(body["task_id"], "t-1");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["generated_by_ai"], true);
    assert_eq!(body["output"]["echo"]["messages"][0]["content"], "hi");
    assert_eq!(body["node_id"], "w-1");

    let health: Value = client()
        .get(format!("{endpoint}/iicp/health"))
        .send()
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["via_relay"], true);
    assert_eq!(health["node_id"], "w-1");
    assert_eq!(health["models"], json!(["echo"]));

    // several tasks in parallel over the one session
    let calls = (0..8).map(|i| {
        let url = format!("{endpoint}/v1/task");
        async move {
            let t = json!({"task_id": format!("p-{i}"), "intent": CHAT, "payload": {"n": i}});
            let r: Value = client()
                .post_json(url, &t)
                .send()
                .await
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(r["output"]["echo"]["n"], i);
        }
    });
    futures_join(calls).await;

    // keep-alive PINGs keep the session up
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(matches!(worker.state(), WorkerState::Bound { .. }));
    worker.stop().await;
    relay.trigger.fire();
}

async fn futures_join<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn an_alive_worker_is_not_displaced() {
    let relay = relay().await;
    let worker = RelayWorker::spawn(worker_config(&relay, "w-1"), echo_handler(), None);
    worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound");
    let (ack, _h) = raw_bind(relay.addr, bind_msg("w-1", None)).await;
    assert_eq!(ack.status.as_deref(), Some("error"));
    assert_eq!(ack.reason.as_deref(), Some(reason::ALREADY_BOUND));
    assert_eq!(ack.worker_id.as_deref(), Some("w-1"));
    // the original session still serves
    let r = client()
        .post_json(
            format!("http://{}/v1/relay-for/w-1/v1/task", relay.http),
            &json!({"task_id": "t", "payload": {}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    // a missing worker_id is refused too
    let (ack, _h) = raw_bind(relay.addr, RelayBind::default()).await;
    assert_eq!(ack.reason.as_deref(), Some(reason::WORKER_ID_REQUIRED));
    worker.stop().await;
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ticket(key: &DirectoryKey, worker: &str, relay_id: Option<&str>) -> String {
    let claims = RelayTicketClaims::new(
        &mut rand_core::OsRng,
        "https://dir.example",
        worker,
        relay_id,
        now_unix(),
    );
    key.issue(&claims).unwrap()
}

#[tokio::test]
async fn bind_tickets_required_invalid_and_replayed() {
    let key = DirectoryKey::from_seed(&[7; 32]);
    let relay = relay_with(RelayConfig {
        relay_node_id: Some("relay-1".into()),
        ticket_key: Some(key.public_key()),
        require_ticket: true,
        ..RelayConfig::default()
    })
    .await;
    let (ack, _) = raw_bind(relay.addr, bind_msg("w-1", None)).await;
    assert_eq!(ack.reason.as_deref(), Some(reason::TICKET_REQUIRED));
    let (ack, _) = raw_bind(relay.addr, bind_msg("w-1", Some("not-a-ticket".into()))).await;
    assert_eq!(ack.reason.as_deref(), Some(reason::TICKET_INVALID));
    // someone else's ticket, another relay's ticket, another directory's ticket
    for bad in [
        ticket(&key, "w-2", Some("relay-1")),
        ticket(&key, "w-1", Some("relay-2")),
        ticket(&DirectoryKey::from_seed(&[8; 32]), "w-1", Some("relay-1")),
    ] {
        let (ack, _) = raw_bind(relay.addr, bind_msg("w-1", Some(bad))).await;
        assert_eq!(ack.reason.as_deref(), Some(reason::TICKET_INVALID));
    }
    assert!(!relay.handle.is_bound("w-1"));

    let good = ticket(&key, "w-1", Some("relay-1"));
    let (ack, h) = raw_bind(relay.addr, bind_msg("w-1", Some(good.clone()))).await;
    assert_eq!(ack.status.as_deref(), Some("ok"));
    assert_eq!(ack.relay_http_port, Some(u64::from(relay.http.port())));
    assert!(relay.handle.is_bound("w-1"));
    h.close();
    h.closed().await;
    let handle = relay.handle.clone();
    wait_until(|| !handle.is_bound("w-1"), "the session is released").await;
    let (ack, _) = raw_bind(relay.addr, bind_msg("w-1", Some(good))).await;
    assert_eq!(ack.reason.as_deref(), Some(reason::TICKET_REPLAYED));
    // a wildcard-audience ticket from the worker client's ticket source works
    struct Tickets(DirectoryKey);
    impl TicketSource for Tickets {
        fn ticket(&self) -> BoxFuture<'_, Option<Secret>> {
            Box::pin(async move { Some(Secret::new(ticket(&self.0, "w-1", None))) })
        }
    }
    let worker = RelayWorker::spawn(
        worker_config(&relay, "w-1"),
        echo_handler(),
        Some(Arc::new(Tickets(key))),
    );
    worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound with a ticket");
    worker.stop().await;
}

#[tokio::test]
async fn soft_mode_accepts_unsigned_binds() {
    let key = DirectoryKey::from_seed(&[7; 32]);
    let relay = relay_with(RelayConfig {
        ticket_key: Some(key.public_key()),
        ..RelayConfig::default()
    })
    .await;
    let (ack, _h) = raw_bind(relay.addr, bind_msg("w-1", None)).await;
    assert_eq!(ack.status.as_deref(), Some("ok"));
    // but a presented ticket must still be valid
    let (ack, _h2) = raw_bind(relay.addr, bind_msg("w-2", Some("junk".into()))).await;
    assert_eq!(ack.reason.as_deref(), Some(reason::TICKET_INVALID));
}

#[tokio::test]
async fn bind_rate_limit_and_session_cap() {
    let relay = relay_with(RelayConfig {
        bind_rate_limit: 2,
        ..RelayConfig::default()
    })
    .await;
    let (a, _h1) = raw_bind(relay.addr, bind_msg("a", None)).await;
    let (b, _h2) = raw_bind(relay.addr, bind_msg("b", None)).await;
    let (c, _h3) = raw_bind(relay.addr, bind_msg("c", None)).await;
    assert_eq!(a.status.as_deref(), Some("ok"));
    assert_eq!(b.status.as_deref(), Some("ok"));
    assert_eq!(c.reason.as_deref(), Some(reason::RATE_LIMITED));

    let relay = relay_with(RelayConfig {
        max_sessions: 1,
        ..RelayConfig::default()
    })
    .await;
    let (a, h1) = raw_bind(relay.addr, bind_msg("a", None)).await;
    let (b, _h2) = raw_bind(relay.addr, bind_msg("b", None)).await;
    assert_eq!(a.status.as_deref(), Some("ok"));
    assert_eq!(b.reason.as_deref(), Some(reason::AT_CAPACITY));
    // once "a" is gone there is room again
    h1.close();
    h1.closed().await;
    let handle = relay.handle.clone();
    wait_until(|| handle.session_count() == 0, "the session is released").await;
    let (b, _h2) = raw_bind(relay.addr, bind_msg("b", None)).await;
    assert_eq!(b.status.as_deref(), Some("ok"));
}

#[tokio::test]
async fn gone_worker_gives_e030_and_worker_reconnects_when_the_relay_returns() {
    let relay = relay().await;
    let url = format!("http://{}/v1/relay-for/w-1/v1/task", relay.http);
    let task = json!({"task_id": "t", "payload": {"x": 1}});
    // nobody bound yet
    let r = client().post_json(&url, &task).send().await.unwrap();
    assert_eq!(r.status.as_u16(), 404);
    assert_eq!(r.error_body().code.as_str(), "IICP-E030");
    let h = client()
        .get(format!(
            "http://{}/v1/relay-for/w-1/iicp/health",
            relay.http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status.as_u16(), 404);

    let worker = RelayWorker::spawn(worker_config(&relay, "w-1"), echo_handler(), None);
    worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound");
    assert_eq!(
        client()
            .post_json(&url, &task)
            .send()
            .await
            .unwrap()
            .status
            .as_u16(),
        200
    );
    // the worker goes away: the relay answers IICP-E030
    worker.stop().await;
    let handle = relay.handle.clone();
    wait_until(|| !handle.is_bound("w-1"), "the session is released").await;
    let r = client().post_json(&url, &task).send().await.unwrap();
    assert_eq!(r.status.as_u16(), 404);
    assert_eq!(r.error_body().code.as_str(), "IICP-E030");

    // a worker whose relay restarts binds again by itself
    let worker = RelayWorker::spawn(worker_config(&relay, "w-1"), echo_handler(), None);
    worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound");
    let relay_port = relay.addr;
    relay.trigger.fire();
    relay.task.await.unwrap();
    let mut states = worker.subscribe();
    tokio::time::timeout(Duration::from_secs(5), async {
        while matches!(*states.borrow_and_update(), WorkerState::Bound { .. }) {
            states.changed().await.unwrap();
        }
    })
    .await
    .expect("worker noticed the relay going away");
    // same port again (the worker keeps dialing it)
    let again = relay_with(RelayConfig {
        listen: relay_port,
        ..RelayConfig::default()
    })
    .await;
    let endpoint = worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("rebound");
    let r = client()
        .post_json(
            format!("http://{}/v1/relay-for/w-1/v1/task", again.http),
            &task,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200, "{endpoint}");
    worker.stop().await;
    again.trigger.fire();
}

#[tokio::test]
async fn relay_port_collisions() {
    assert!(matches!(
        check_ports(9485, 9485),
        Err(RelayError::PortCollision { port: 9485 })
    ));
    assert!(check_ports(9484, 9485).is_ok());
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = RelayServer::bind(RelayConfig {
        listen: taken.local_addr().unwrap(),
        ..RelayConfig::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, RelayError::PortInUse { .. }), "{err:?}");
}

/// A worker handler that streams: a CALL with key 24 gets `n` partial lifecycle frames
/// (`"w0 "`, `"w1 "`, …) `every` apart, then the completed terminal; a cancel CONTROL
/// for its task ends it with `cancelled`. With `skip`, it numbers its terminal wrong.
struct Streamer {
    n: u64,
    every: Duration,
    skip: bool,
    cancelled: Arc<std::sync::Mutex<Vec<String>>>,
}

fn frame(call: &Call, seq: u64, event: &str, status: &str, result: Option<Value>) -> Response {
    let last = status != "partial";
    Response {
        protocol_version: Some(1),
        session_id: call.session_id.clone(),
        call_id: call.call_id.clone(),
        status: Some(status.into()),
        result: result.map(|r| Body::cbor(&r)),
        is_final: Some(last),
        lifecycle: Some(iicp_proto::message::Lifecycle {
            task_id: call.task_id.clone(),
            sequence: Some(seq),
            event: Some(event.into()),
            is_final: Some(last),
            receipt: None,
        }),
        ..Response::default()
    }
}

impl CallHandler for Streamer {
    fn handle(
        &self,
        call: Call,
        _ctx: CallContext,
    ) -> iicp_transport::native::BoxFuture<'static, Response> {
        Box::pin(async move { Response::success(&call, Body::json(&json!({"buffered": true}))) })
    }

    fn handle_streaming(
        &self,
        call: Call,
        ctx: CallContext,
        partials: iicp_transport::native::PartialSender,
    ) -> iicp_transport::native::BoxFuture<'static, Response> {
        if call.task_id.is_none() {
            return self.handle(call, ctx);
        }
        let (n, every, skip) = (self.n, self.every, self.skip);
        let cancelled = Arc::clone(&self.cancelled);
        Box::pin(async move {
            let id = call.task_id.clone().unwrap_or_default();
            for seq in 0..n {
                if cancelled.lock().unwrap().contains(&id) {
                    let mut r = frame(&call, seq, "cancelled", "error", None);
                    r.error = Some(iicp_proto::message::ErrorMap {
                        code: Some("cancelled".into()),
                        message: Some("cancelled".into()),
                    });
                    return r;
                }
                let chunk =
                    json!({"choices": [{"index": 0, "delta": {"content": format!("w{seq} ")}}]});
                if partials
                    .send(frame(&call, seq, "partial", "partial", Some(chunk)))
                    .await
                    .is_err()
                {
                    return frame(&call, seq, "failed", "error", None);
                }
                tokio::time::sleep(every).await;
            }
            let last = if skip { n + 1 } else { n };
            frame(
                &call,
                last,
                "completed",
                "success",
                Some(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
            )
        })
    }

    fn control(&self, control: &iicp_proto::message::Control, _ctx: &CallContext) {
        if control.action.as_deref() == Some("cancel") {
            if let Some(id) = &control.task_id {
                self.cancelled.lock().unwrap().push(id.clone());
            }
        }
    }
}

fn sse_events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn lifecycle_streams_pass_through_the_relay() {
    let relay = relay().await;
    let cancelled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let streamer = Streamer {
        n: 3,
        every: Duration::from_millis(10),
        skip: false,
        cancelled: Arc::clone(&cancelled),
    };
    let worker = RelayWorker::spawn(worker_config(&relay, "w-s"), Arc::new(streamer), None);
    let endpoint = worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound");
    let id = "5b8c6d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
    let task = json!({"task_id": id, "intent": CHAT, "payload": {"messages": []},
        "constraints": {"required_profiles": ["urn:iicp:profile:service-lifecycle:v1"]}});
    let r = client()
        .post_json(format!("{endpoint}/v1/tasks"), &task)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status.as_u16(),
        202,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let state: Value = r.json().unwrap();
    assert_eq!(state["task_id"], id);
    assert_eq!(
        state["events_url"],
        format!("/v1/relay-for/w-s/v1/tasks/{id}/events")
    );
    let r = client()
        .get(format!("{endpoint}/v1/tasks/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 4, "{events:?}");
    let text: String = events
        .iter()
        .filter_map(|e| e["result"]["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "w0 w1 w2 ");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence"], i, "the worker's numbering is kept");
        assert_eq!(e["task_id"], id);
    }
    assert_eq!(events[3]["event"], "completed");
    assert_eq!(events[3]["is_final"], true);
    // the state, and a retry of the same caller: the known state
    let s: Value = client()
        .get(format!("{endpoint}/v1/tasks/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(s["state"], "completed");
    let r = client()
        .post_json(format!("{endpoint}/v1/tasks"), &task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    // the buffered resource is untouched
    let r = client()
        .post_json(
            format!("{endpoint}/v1/task"),
            &json!({"task_id": "b-1", "intent": CHAT, "payload": {}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap()["buffered"], true);
    // unknown tasks: 404
    let r = client()
        .get(format!("{endpoint}/v1/tasks/nope/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 404);
    worker.stop().await;
    relay.trigger.fire();
}

#[tokio::test]
async fn relayed_cancel_reaches_the_worker_and_broken_streams_fail() {
    let relay = relay().await;
    let cancelled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let slow = Streamer {
        n: 1000,
        every: Duration::from_millis(20),
        skip: false,
        cancelled: Arc::clone(&cancelled),
    };
    let worker = RelayWorker::spawn(worker_config(&relay, "w-c"), Arc::new(slow), None);
    let endpoint = worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound");
    let id = "6c9d7e2f-3a4b-4c5d-9e0f-1a2b3c4d5e6f";
    let task = json!({"task_id": id, "intent": CHAT, "payload": {}});
    let r = client()
        .post_json(format!("{endpoint}/v1/tasks"), &task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = client()
        .post_json(
            format!("{endpoint}/v1/tasks/{id}/cancel"),
            &json!({"reason": "user"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    let s: Value = r.json().unwrap();
    assert_eq!(s["state"], "cancelled", "{s}");
    assert_eq!(cancelled.lock().unwrap().as_slice(), [id.to_owned()]);
    let events = sse_events(
        &client()
            .get(format!("{endpoint}/v1/tasks/{id}/events"))
            .send()
            .await
            .unwrap()
            .body,
    );
    assert_eq!(events.last().unwrap()["event"], "cancelled");
    assert!(events.len() < 100);
    worker.stop().await;

    // a worker that skips a sequence number: the relay ends the stream as failed
    let broken = Streamer {
        n: 2,
        every: Duration::from_millis(1),
        skip: true,
        cancelled: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let worker = RelayWorker::spawn(worker_config(&relay, "w-b"), Arc::new(broken), None);
    let endpoint = worker
        .wait_bound(Duration::from_secs(5))
        .await
        .expect("bound");
    let id = "7d0e8f3a-4b5c-4d6e-8f1a-2b3c4d5e6f70";
    let r = client()
        .post_json(
            format!("{endpoint}/v1/tasks"),
            &json!({"task_id": id, "intent": CHAT, "payload": {}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 202);
    let events = sse_events(
        &client()
            .get(format!("{endpoint}/v1/tasks/{id}/events"))
            .send()
            .await
            .unwrap()
            .body,
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "failed", "{events:?}");
    assert_eq!(last["error"]["code"], "IICP-E031");
    assert_eq!(last["sequence"], 2, "numbered after the last good event");
    assert!(!events.iter().any(|e| e["event"] == "completed"));
    worker.stop().await;
    relay.trigger.fire();
}
