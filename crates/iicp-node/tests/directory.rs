//! The directory agent against a scripted directory built on the transport's router:
//! register (201) → heartbeats with the HMAC challenge → 401 → re-register with
//! `current_node_token` → deregister on stop; a directory that is down, then back;
//! credit receipts; the directory's refusals (code and message) reaching the operator;
//! the circuit breaker pausing directory calls while tasks are served.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use iicp_node::{Backoff, Breaker, Error, EventKind, Node, ServeOptions};
use iicp_proto::crypto::mac::{challenge_response, Receipt};
use iicp_transport::http::server::{json, read_json, HttpServer, Request, Router};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::{json as j, Value};

const NODE_ID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const HMAC_KEY: &str = "hmac-secret-from-directory";

#[derive(Default)]
struct Script {
    registers: Vec<Value>,
    /// (bearer, body)
    heartbeats: Vec<(String, Value)>,
    deregisters: Vec<(String, Value)>,
    credits: Vec<(String, Value)>,
    issued: usize,
    valid_token: Option<String>,
    challenges: Vec<String>,
    down: bool,
    /// Answer REGISTER with this status and body instead.
    refuse: Option<(StatusCode, Value)>,
    /// Every REGISTER and HEARTBEAT (path, arrival), answered or not.
    attempts: Vec<(&'static str, Instant)>,
}

type Shared = Arc<Mutex<Script>>;

fn bearer(req: &Request) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

fn unavailable() -> iicp_transport::http::server::Response {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &j!({"error": {"code": "temporarily_unavailable", "message": "down"}}),
    )
}

fn router(s: Shared) -> Router {
    let (s1, s2, s3, s4) = (s.clone(), s.clone(), s.clone(), s);
    Router::new()
        .route(Method::POST, "/v1/register", move |mut req: Request, _p| {
            let s = s1.clone();
            async move {
                let body: Value = read_json(&mut req, 1 << 20).await.unwrap_or(Value::Null);
                let mut g = s.lock().expect("lock");
                g.attempts.push(("register", Instant::now()));
                if g.down {
                    return unavailable();
                }
                if let Some((status, body)) = &g.refuse {
                    return json(*status, body);
                }
                g.registers.push(body);
                g.issued += 1;
                let token = format!("tok-{}", g.issued);
                g.valid_token = Some(token.clone());
                json(StatusCode::CREATED, &j!({
                    "node_id": NODE_ID, "node_token": token, "node_hmac_key": HMAC_KEY,
                    "expires_at": null, "directory": "scripted", "observed_source_ip": "127.0.0.1"
                }))
            }
        })
        .route(Method::POST, "/v1/heartbeat", move |mut req: Request, _p| {
            let s = s2.clone();
            async move {
                let token = bearer(&req);
                let body: Value = read_json(&mut req, 1 << 20).await.unwrap_or(Value::Null);
                let mut g = s.lock().expect("lock");
                g.attempts.push(("heartbeat", Instant::now()));
                if g.down {
                    return unavailable();
                }
                g.heartbeats.push((token.clone(), body.clone()));
                if g.valid_token.as_deref() != Some(token.as_str()) {
                    return json(StatusCode::UNAUTHORIZED, &j!({"error": {"code": "unauthorized", "message": "bad token"}}));
                }
                let challenge = format!("ch-{}", g.heartbeats.len());
                g.challenges.push(challenge.clone());
                json(StatusCode::OK, &j!({
                    "ok": true, "next_heartbeat_ms": 40, "challenge": challenge,
                    "metrics_batch_accepted": body.get("metrics_batch_id")
                }))
            }
        })
        .route(Method::DELETE, "/v1/register", move |mut req: Request, _p| {
            let s = s3.clone();
            async move {
                let token = bearer(&req);
                let body: Value = read_json(&mut req, 1 << 20).await.unwrap_or(Value::Null);
                s.lock().expect("lock").deregisters.push((token, body));
                json(StatusCode::OK, &j!({"deregistered": true}))
            }
        })
        .route(Method::POST, "/v1/credits/award", move |mut req: Request, _p| {
            let s = s4.clone();
            async move {
                let token = bearer(&req);
                let body: Value = read_json(&mut req, 1 << 20).await.unwrap_or(Value::Null);
                s.lock().expect("lock").credits.push((token, body));
                json(StatusCode::OK, &j!({"awarded": true}))
            }
        })
}

async fn start_directory(listener: tokio::net::TcpListener) -> (SocketAddr, Shared, Trigger) {
    let s: Shared = Arc::default();
    let server = HttpServer::from_listener(listener);
    let addr = server.local_addr().expect("addr");
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(server.serve(router(s.clone()), stop));
    (addr, s, trigger)
}

fn node_for(dir: SocketAddr) -> Node {
    builder()
        .directory_url(format!("http://{dir}"))
        .heartbeat_interval(Duration::from_millis(40))
        .directory_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .directory_breaker(Breaker {
            failures: 5,
            open_for: Duration::from_millis(300),
        })
        .directory_timeout(Duration::from_secs(2))
        .build()
        .expect("node")
}

async fn wait_until(what: &str, s: &Shared, cond: impl Fn(&Script) -> bool) {
    for _ in 0..500 {
        if cond(&s.lock().expect("lock")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn register_heartbeat_reregister_deregister() {
    let (dir, s, _t) = start_directory(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    )
    .await;
    let node = node_for(dir);
    let token = node.register().await.expect("register");
    assert_eq!(token.expose(), "tok-1");
    assert_eq!(node.node_id().as_deref(), Some(NODE_ID));
    {
        let g = s.lock().expect("lock");
        let reg = &g.registers[0];
        assert_eq!(reg["endpoint"], "http://127.0.0.1:9484");
        assert_eq!(reg["region"], "test");
        assert_eq!(reg["capabilities"][0]["intent"], CHAT);
        assert_eq!(reg["capabilities"][0]["models"], j!(["stub-model"]));
        assert_eq!(reg["limits"]["max_concurrent"], 4);
        assert!(reg["limits"]["tokens_per_min"].as_u64().unwrap_or(0) > 0);
        assert_eq!(reg["transport_endpoint"], "iicp://127.0.0.1:9484");
        assert_eq!(reg["implementation_name"], "iicp-rs");
        assert_eq!(reg["sdk_version"], reg["sdk_compatibility_version"]);
        assert_eq!(reg["cx_public_key"]["algorithm"], "X25519");
        assert!(reg.get("current_node_token").is_none());
        assert!(reg.get("node_id").is_none(), "the directory assigns it");
    }
    let echo = Echo::default();
    let h = node
        .bind_and_serve(
            std::net::SocketAddr::new([127, 0, 0, 1].into(), 0),
            echo.handler(),
            ServeOptions::default(),
        )
        .await
        .expect("serve");
    wait_until("two heartbeats", &s, |g| g.heartbeats.len() >= 2).await;
    // challenge answered with HMAC(node_hmac_key, previous challenge)
    {
        let g = s.lock().expect("lock");
        let (tok, hb) = &g.heartbeats[1];
        assert_eq!(tok, "tok-1");
        assert_eq!(hb["node_id"], NODE_ID);
        assert_eq!(
            hb["challenge_response"],
            challenge_response(HMAC_KEY, &g.challenges[0])
        );
        assert!(hb["load"].is_number() && hb["available"] == true);
    }
    // a task: its success reaches a heartbeat batch and a credits receipt
    let r = post(&http(), h.local_addr(), &task_body(&uuid(), "hello")).await;
    assert_eq!(r.status, 200);
    wait_until("metrics batch", &s, |g| {
        g.heartbeats
            .iter()
            .any(|(_, b)| b["metrics"]["tasks_success"] == 1 && b["metrics_batch_id"].is_string())
    })
    .await;
    wait_until("credits receipt", &s, |g| !g.credits.is_empty()).await;
    {
        let g = s.lock().expect("lock");
        let (tok, rc) = &g.credits[0];
        assert_eq!(tok, "tok-1");
        assert_eq!(rc["reason"], "task_completion");
        assert_eq!(rc["tokens_used"], 5);
        let receipt = Receipt {
            task_id: rc["task_id"].as_str().expect("str"),
            tokens_used: 5,
            nonce: rc["nonce"].as_str().expect("str"),
            response_hash: rc["response_hash"].as_str().expect("str"),
            querying_node_id: None,
        };
        assert!(receipt.verify(HMAC_KEY, rc["signature"].as_str().expect("str")));
        assert_eq!(rc["nonce"].as_str().expect("str").len(), 32);
    }
    // the directory forgets the token → 401 → re-register with current_node_token
    s.lock().expect("lock").valid_token = Some("revoked".into());
    wait_until("re-registration", &s, |g| g.registers.len() >= 2).await;
    {
        let g = s.lock().expect("lock");
        assert_eq!(g.registers[1]["current_node_token"], "tok-1");
        assert_eq!(g.registers[1]["node_id"], NODE_ID);
    }
    wait_until("heartbeat with the new token", &s, |g| {
        g.heartbeats.iter().any(|(t, _)| t == "tok-2")
    })
    .await;
    assert_eq!(
        node.node_token().map(|t| t.expose().to_owned()).as_deref(),
        Some("tok-2")
    );
    let stopped = h.stop().await;
    assert!(stopped.deregistered);
    let g = s.lock().expect("lock");
    assert_eq!(g.deregisters.len(), 1);
    assert_eq!(g.deregisters[0].0, "tok-2");
    assert_eq!(g.deregisters[0].1["node_id"], NODE_ID);
    assert!(node.node_token().is_none());
}

#[tokio::test]
async fn directory_down_then_back() {
    // a port with nothing listening yet: connection refused
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir_addr = probe.local_addr().expect("addr");
    drop(probe);
    let node = node_for(dir_addr);
    let echo = Echo::default();
    let h = node
        .bind_and_serve(
            std::net::SocketAddr::new([127, 0, 0, 1].into(), 0),
            echo.handler(),
            ServeOptions::default(),
        )
        .await
        .expect("serve");
    let c = http();
    // tasks are served while the directory is unreachable
    assert_eq!(
        post(&c, h.local_addr(), &task_body(&uuid(), "a"))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(node.node_token().is_none());
    // the directory comes up: the node registers and heartbeats
    let listener = tokio::net::TcpListener::bind(dir_addr)
        .await
        .expect("rebind");
    let (_, s, trigger) = start_directory(listener).await;
    wait_until("registration", &s, |g| g.registers.len() == 1).await;
    wait_until("heartbeats", &s, |g| g.heartbeats.len() >= 2).await;
    // outage (503) with a task in flight across it
    s.lock().expect("lock").down = true;
    let slow = {
        let c = c.clone();
        let mut b = task_body(&uuid(), "slow");
        b["payload"]["sleep_ms"] = j!(400);
        let addr = h.local_addr();
        tokio::spawn(async move { post(&c, addr, &b).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let beats_during = s.lock().expect("lock").heartbeats.len();
    assert_eq!(slow.await.expect("join").status, 200, "no task lost");
    let metrics = c
        .get(url(h.local_addr(), "/metrics"))
        .send()
        .await
        .expect("metrics");
    assert!(String::from_utf8_lossy(&metrics.body)
        .contains("iicp_heartbeat_failures_total{reason=\"server_error\"}"));
    s.lock().expect("lock").down = false;
    wait_until("heartbeats again", &s, |g| {
        g.heartbeats.len() > beats_during + 1
    })
    .await;
    assert_eq!(
        s.lock().expect("lock").registers.len(),
        1,
        "the token survived the outage"
    );
    // the directory restarts with no memory (404/401) → registers again
    s.lock().expect("lock").valid_token = None;
    wait_until("re-registration", &s, |g| g.registers.len() == 2).await;
    let stopped = h.stop().await;
    assert!(stopped.deregistered);
    trigger.fire();
}

#[tokio::test]
async fn register_refusals() {
    let node = builder().build().expect("node");
    assert!(matches!(node.register().await, Err(Error::NoDirectory)));
    assert!(matches!(node.deregister().await, Err(Error::NoDirectory)));
    let public = builder()
        .directory_url("https://iicp.network/api")
        .build()
        .expect("node");
    assert!(matches!(
        public.register().await,
        Err(Error::PrivateEndpoint)
    ));
    // a directory that refuses: the error carries the status, the token stays unset
    let (dir, s, _t) = start_directory(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    )
    .await;
    s.lock().expect("lock").down = true;
    let node = node_for(dir);
    match node.register().await {
        Err(Error::Directory(e)) => {
            assert_eq!(e.status_code(), Some(503));
            assert!(e.is_retryable());
        }
        other => panic!("{other:?}"),
    }
    assert!(node.node_token().is_none());
    assert!(matches!(node.deregister().await, Err(Error::NotRegistered)));
}

#[tokio::test]
async fn the_directory_code_and_message_reach_the_error_the_event_and_the_status() {
    let (dir, s, _t) = start_directory(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    )
    .await;
    s.lock().expect("lock").refuse = Some((
        StatusCode::FORBIDDEN,
        j!({"error": {"code": "IICP-E050", "message": "endpoint change requires\u{1b} current_node_token\r\n"}}),
    ));
    let node = node_for(dir);
    let mut events = node.subscribe();
    let e = match node.register().await {
        Err(Error::Directory(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.status_code(), Some(403));
    assert_eq!(e.code_str().as_deref(), Some("IICP-E050"));
    let message = "endpoint change requires current_node_token";
    assert_eq!(e.message(), Some(message), "control characters are dropped");
    assert_eq!(
        e.to_string(),
        format!("directory register failed with HTTP 403: IICP-E050: {message}")
    );
    let ev = events.try_recv().expect("register_fail");
    match ev.kind {
        EventKind::RegisterFailed {
            status,
            code,
            message: m,
            ..
        } => {
            assert_eq!(status, Some(403));
            assert_eq!(code.as_deref(), Some("IICP-E050"));
            assert_eq!(m.as_deref(), Some(message));
        }
        other => panic!("{other:?}"),
    }
    let st = node.directory_status();
    assert_eq!(st.state(), "refused");
    assert_eq!(st.consecutive_failures, 1);
    let last = st.last_error.expect("last error");
    assert_eq!(last.summary(), format!("HTTP 403 IICP-E050: {message}"));

    // 429 IICP-E034 with Retry-After: the code, the message and the delay asked for
    s.lock().expect("lock").refuse = Some((
        StatusCode::TOO_MANY_REQUESTS,
        j!({"error": {"code": "IICP-E034", "message": "registration rate limit", "retry_after_ms": 7000}}),
    ));
    let e = match node.register().await {
        Err(Error::Directory(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.code_str().as_deref(), Some("IICP-E034"));
    assert_eq!(e.message(), Some("registration rate limit"));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    let st = node.directory_status();
    assert_eq!((st.state(), st.consecutive_failures), ("rate_limited", 2));

    // accepted at last: the failures in a row are forgotten, the last error kept
    s.lock().expect("lock").refuse = None;
    node.register().await.expect("register");
    let st = node.directory_status();
    assert_eq!((st.state(), st.consecutive_failures), ("registered", 0));
    assert_eq!(
        st.last_error.and_then(|e| e.code).as_deref(),
        Some("IICP-E034")
    );
}

#[tokio::test]
async fn the_breaker_pauses_directory_calls_while_tasks_are_served() {
    let (dir, s, _t) = start_directory(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    )
    .await;
    s.lock().expect("lock").down = true;
    let open_for = Duration::from_millis(1500);
    let node = builder()
        .directory_url(format!("http://{dir}"))
        .heartbeat_interval(Duration::from_millis(40))
        .directory_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
        })
        .directory_breaker(Breaker {
            failures: 5,
            open_for,
        })
        .directory_timeout(Duration::from_secs(2))
        .build()
        .expect("node");
    let mut events = node.subscribe();
    let echo = Echo::default();
    let h = node
        .bind_and_serve(
            std::net::SocketAddr::new([127, 0, 0, 1].into(), 0),
            echo.handler(),
            ServeOptions::default(),
        )
        .await
        .expect("serve");
    // five failures, then the breaker opens
    wait_until("five attempts", &s, |g| g.attempts.len() >= 5).await;
    let opened = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(ev)) => {
                if let EventKind::DirectoryUnavailable {
                    failures, retry_in, ..
                } = ev.kind
                {
                    break (failures, retry_in);
                }
            }
            other => panic!("no directory_unavailable event: {other:?}"),
        }
    };
    assert_eq!(opened.0, 5);
    assert!(opened.1 >= open_for, "{opened:?}");
    assert_eq!(node.directory_status().state(), "breaker_open");
    // a task is served while the directory is out of reach
    let r = post(&http(), h.local_addr(), &task_body(&uuid(), "still here")).await;
    assert_eq!(r.status, 200);
    assert_eq!(echo.count(), 1);
    // the probe comes no sooner than the breaker allows; the directory is back for it
    s.lock().expect("lock").down = false;
    wait_until("the probe", &s, |g| g.attempts.len() >= 6).await;
    {
        let g = s.lock().expect("lock");
        let t: Vec<Instant> = g.attempts.iter().map(|(_, t)| *t).collect();
        assert!(t[5] - t[4] >= open_for, "probe after {:?}", t[5] - t[4]);
        assert_eq!(g.attempts[5].0, "register");
    }
    wait_until("registration", &s, |g| g.registers.len() == 1).await;
    wait_until("heartbeats", &s, |g| g.heartbeats.len() >= 2).await;
    let st = node.directory_status();
    assert_eq!((st.state(), st.consecutive_failures), ("registered", 0));
    let stopped = h.stop().await;
    assert!(stopped.deregistered);
}
