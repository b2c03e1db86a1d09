//! Admission (`capacity_exceeded` exactly at `max_concurrent`), deadlines (504 with the
//! handler cancelled and its slot freed), duplicate replay / 409, auth modes and the
//! per-origin rate limit.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use iicp_node::{AuthMode, HandlerError, RateLimit, Task};
use iicp_proto::crypto::token::{ConsumerTokenClaims, DirectoryKey};
use serde_json::json;
use tokio::sync::Semaphore;

#[tokio::test]
async fn capacity_exactly_at_max_concurrent() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let node = builder().max_concurrent(3).build().expect("node");
    let h = serve(&node, gated(Arc::clone(&gate), Arc::clone(&calls))).await;
    let addr = h.local_addr();
    let c = http();
    let run_ids: Arc<Vec<String>> = Arc::new((0..3).map(|_| uuid()).collect());
    let over_ids: Arc<Vec<String>> = Arc::new((0..8).map(|_| uuid()).collect());
    let mut running = Vec::new();
    for i in 0..3 {
        let run_ids = Arc::clone(&run_ids);
        let c = c.clone();
        running.push(tokio::spawn(async move {
            post(&c, addr, &task_body(&run_ids[i], "x")).await
        }));
    }
    wait_for("3 running", || node.active_jobs() == 3).await;
    // 8 more at once: all refused immediately, none queued
    let mut refused = Vec::new();
    for i in 0..8 {
        let over_ids = Arc::clone(&over_ids);
        let c = c.clone();
        refused.push(tokio::spawn(async move {
            post(&c, addr, &task_body(&over_ids[i], "x")).await
        }));
    }
    for r in refused {
        let r = r.await.expect("join");
        assert_eq!(r.status, 429);
        assert_eq!(r.headers["retry-after"], "2");
        let b = json_of(&r);
        assert_eq!(b["error"]["code"], "capacity_exceeded");
        assert_eq!(b["error"]["retry_after_ms"], 2000);
        assert_eq!(b["error"]["legacy_code"], "IICP-E021");
        assert_eq!(b["error"]["qos_class"], "interactive");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "refused tasks never reach the handler"
    );
    let health = json_of(
        &c.get(url(addr, "/iicp/health"))
            .send()
            .await
            .expect("health"),
    );
    assert_eq!(health["active_jobs"], 3);
    assert_eq!(health["available"], false);
    assert_eq!(health["load"], 1.0);
    gate.add_permits(100);
    for r in running {
        assert_eq!(r.await.expect("join").status, 200);
    }
    // refused ids were forgotten: the same id runs now
    assert_eq!(
        post(&c, addr, &task_body(&over_ids[0], "x")).await.status,
        200
    );
    h.stop().await;
}

/// Counts futures dropped before they finished.
struct DropFlag(Arc<AtomicUsize>, bool);
impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn deadline_cancels_and_frees_the_slot() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let signalled = Arc::new(AtomicUsize::new(0));
    let (c1, s1) = (Arc::clone(&cancelled), Arc::clone(&signalled));
    let handler = move |task: Task| {
        let cancelled = Arc::clone(&c1);
        let signalled = Arc::clone(&s1);
        async move {
            let slow = task.payload.get("slow").is_some();
            // a task spawned by the handler watches the cancellation signal
            let cancel = task.cancel.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                signalled.fetch_add(1, Ordering::SeqCst);
            });
            let mut flag = DropFlag(cancelled, false);
            if slow {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            flag.1 = true;
            Ok::<_, HandlerError>(chat_completion("fast"))
        }
    };
    let node = builder().max_concurrent(1).build().expect("node");
    let h = serve(&node, handler).await;
    let c = http();
    let mut b = task_body(&uuid(), "x");
    b["payload"]["slow"] = json!(true);
    b["constraints"]["timeout_ms"] = json!(300);
    let start = Instant::now();
    let r = post(&c, h.local_addr(), &b).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status, 504);
    let body = json_of(&r);
    assert_eq!(body["error"]["code"], "task_timeout");
    assert_eq!(body["status"], "timeout");
    wait_for("handler dropped", || cancelled.load(Ordering::SeqCst) == 1).await;
    wait_for("cancel signalled", || signalled.load(Ordering::SeqCst) == 1).await;
    assert_eq!(node.active_jobs(), 0);
    // the only slot is free again
    let r = post(&c, h.local_addr(), &task_body(&uuid(), "x")).await;
    assert_eq!(r.status, 200);
    h.stop().await;
}

#[tokio::test]
async fn duplicates_replay_or_conflict() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let node = builder().build().expect("node");
    let h = serve(&node, gated(Arc::clone(&gate), Arc::clone(&calls))).await;
    let addr = h.local_addr();
    let c = http();
    let id = uuid();
    let first = {
        let c = c.clone();
        let b = task_body(&id, "same");
        tokio::spawn(async move { post(&c, addr, &b).await })
    };
    wait_for("running", || node.active_jobs() == 1).await;
    // in flight → 409
    let r = post(&c, addr, &task_body(&id, "same")).await;
    assert_eq!((r.status.as_u16(), code_of(&r).as_str()), (409, "conflict"));
    gate.add_permits(100);
    let first = first.await.expect("join");
    assert_eq!(first.status, 200);
    // identical → cached replay, no second execution
    let again = post(&c, addr, &task_body(&id, "same")).await;
    assert_eq!(again.status, 200);
    assert_eq!(json_of(&again), json_of(&first));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // same id, other body → 409
    let r = post(&c, addr, &task_body(&id, "different")).await;
    assert_eq!((r.status.as_u16(), code_of(&r).as_str()), (409, "conflict"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test]
async fn token_mode() {
    let echo = Echo::default();
    let node = builder()
        .auth(AuthMode::Token)
        .api_token("operator-granted-token-0123456789")
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();
    let r = post(&c, addr, &task_body(&uuid(), "x")).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "unauthorized")
    );
    let r = c
        .post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"))
        .bearer("wrong")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status, 401);
    assert!(!String::from_utf8_lossy(&r.body).contains("wrong"));
    let r = c
        .post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"))
        .bearer("operator-granted-token-0123456789")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status, 200);
    let mut b = task_body(&uuid(), "x");
    b["auth"] = json!({"node_token": "operator-granted-token-0123456789"});
    assert_eq!(post(&c, addr, &b).await.status, 200);
    b["auth"] = json!({"node_token": ""});
    b["task_id"] = json!(uuid());
    assert_eq!(post(&c, addr, &b).await.status, 401);
    // the node's own directory token is accepted too (TASK-1)
    node.set_node_token("directory-issued-node-token".into());
    let r = c
        .post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"))
        .bearer("directory-issued-node-token")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status, 200);
    assert_eq!(echo.count(), 3);
    h.stop().await;
}

#[tokio::test]
async fn consumer_mode() {
    let dir = DirectoryKey::from_seed(&[7; 32]);
    let node_id = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let token_for = |aud: &str, intent: &str, iat: u64| {
        dir.issue(&ConsumerTokenClaims::new(
            "https://dir.example",
            "caller",
            aud,
            intent,
            iat,
        ))
        .expect("issue")
    };
    let echo = Echo::default();
    let node = builder()
        .node_id(node_id)
        .auth(AuthMode::Consumer)
        .api_token("fallback-token")
        .directory_key(dir.public_key())
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();
    let with_consumer = |tok: String| {
        let c = c.clone();
        async move {
            c.post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"))
                .header("x-iicp-consumer-token", tok)
                .send()
                .await
                .expect("send")
        }
    };
    assert_eq!(
        with_consumer(token_for(node_id, CHAT, now)).await.status,
        200
    );
    assert_eq!(
        with_consumer(token_for(node_id, "*", now)).await.status,
        200
    );
    assert_eq!(
        with_consumer(token_for("other-node", CHAT, now))
            .await
            .status,
        401
    );
    assert_eq!(
        with_consumer(token_for(node_id, "urn:iicp:intent:llm:embedding:v1", now))
            .await
            .status,
        401
    );
    assert_eq!(
        with_consumer(token_for(node_id, CHAT, now - 400))
            .await
            .status,
        401,
        "expired"
    );
    let forged = DirectoryKey::from_seed(&[8; 32])
        .issue(&ConsumerTokenClaims::new("x", "c", node_id, CHAT, now))
        .expect("issue");
    assert_eq!(with_consumer(forged).await.status, 401);
    assert_eq!(post(&c, addr, &task_body(&uuid(), "x")).await.status, 401);
    // bearer fallback
    let r = c
        .post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"))
        .bearer("fallback-token")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status, 200);
    h.stop().await;

    // the node's injected clock decides expiry
    let late = builder()
        .node_id(node_id)
        .auth(AuthMode::Consumer)
        .directory_key(dir.public_key())
        .clock(Arc::new(iicp_node::clock::ManualClock::at(now + 311)))
        .build()
        .expect("node");
    let h2 = serve(&late, echo.handler()).await;
    let r = c
        .post_json(url(h2.local_addr(), "/v1/task"), &task_body(&uuid(), "x"))
        .header("x-iicp-consumer-token", token_for(node_id, CHAT, now))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status, 401, "past exp + 10 s grace on the node's clock");
    h2.stop().await;

    // without the directory key, consumer mode falls back to token checks
    let node = builder()
        .node_id(node_id)
        .auth(AuthMode::Consumer)
        .api_token("fallback-token")
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let r = c
        .post_json(url(h.local_addr(), "/v1/task"), &task_body(&uuid(), "x"))
        .header("x-iicp-consumer-token", token_for(node_id, CHAT, now))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status, 401);
    h.stop().await;
}

#[tokio::test]
async fn open_mode_rate_limits_per_origin_and_ip() {
    let echo = Echo::default();
    let node = builder()
        .rate_limit(RateLimit {
            max_requests: 3,
            window: Duration::from_secs(60),
        })
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let addr = h.local_addr();
    let c = http();
    let from = |origin: &'static str| {
        let c = c.clone();
        async move {
            c.post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"))
                .header("origin", origin)
                .send()
                .await
                .expect("send")
        }
    };
    for _ in 0..3 {
        assert_eq!(from("https://a.example").await.status, 200);
    }
    let r = from("https://a.example").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (429, "rate_limited")
    );
    assert_eq!(json_of(&r)["error"]["legacy_code"], "IICP-E023");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(from("https://b.example").await.status, 200, "per origin");
    // no Origin: per source IP
    for _ in 0..3 {
        assert_eq!(post(&c, addr, &task_body(&uuid(), "x")).await.status, 200);
    }
    assert_eq!(post(&c, addr, &task_body(&uuid(), "x")).await.status, 429);
    h.stop().await;
}
