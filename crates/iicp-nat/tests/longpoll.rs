//! The HTTP long-poll relay (PROTOCOL.md §14.3, §14.1) over loopback, with a long-poll
//! worker written here: bind, pull, answer, a client's task through
//! `/v1/relay-for/{id}/v1/task`; idle pulls answer 204; every refusal code (422
//! `IICP-E001`, 401 `IICP-E021`/`IICP-E040`, 409 `IICP-E038`, 429 `IICP-E039`); CORS on
//! every answer; a worker that stops pulling is dead after the liveness window (its id
//! can be bound again) and an unbound one gives `IICP-E030`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use iicp_nat::{RelayConfig, RelayServer};
use iicp_transport::http::{HttpClient, HttpClientConfig, HttpReply, HttpServer, Router};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::{json, Value};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

struct Relay {
    base: String,
    _trigger: Trigger,
}

async fn relay_with(mut config: RelayConfig) -> Relay {
    let http_server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let http: SocketAddr = http_server.local_addr().unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.http_port = http.port();
    let server = RelayServer::bind(config).await.unwrap();
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(http_server.serve(server.handle().routes(Router::new()), stop.clone()));
    tokio::spawn(server.serve(stop));
    Relay {
        base: format!("http://{http}"),
        _trigger: trigger,
    }
}

fn quick() -> RelayConfig {
    RelayConfig {
        poll_timeout: Duration::from_millis(300),
        http_liveness: Duration::from_millis(800),
        ..RelayConfig::default()
    }
}

fn client() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).unwrap()
}

async fn post(url: String, body: &Value, token: Option<&str>) -> HttpReply {
    let mut rb = client()
        .post_json(url, body)
        .header("origin", "https://worker.example")
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        rb = rb.bearer(t.to_owned());
    }
    rb.send().await.unwrap()
}

async fn bind(relay: &Relay, worker_id: &str) -> HttpReply {
    post(
        format!("{}/v1/relay/bind", relay.base),
        &json!({"worker_id": worker_id, "intent": CHAT, "models": ["echo"]}),
        None,
    )
    .await
}

fn token(reply: &HttpReply) -> String {
    let v: Value = reply.json().unwrap();
    v["session_token"].as_str().unwrap().to_owned()
}

async fn pull(relay: &Relay, token: &str) -> HttpReply {
    client()
        .get(format!("{}/v1/relay/pull", relay.base))
        .bearer(token.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
}

/// A long-poll worker: pulls, echoes each task's payload, posts the result; `rounds`
/// pulls at most.
async fn worker(base: String, token: String, rounds: usize) {
    let relay = Relay {
        base,
        _trigger: shutdown::channel().0,
    };
    for _ in 0..rounds {
        let r = pull(&relay, &token).await;
        match r.status.as_u16() {
            204 => continue,
            200 => {
                let v: Value = r.json().unwrap();
                let result = json!({"output": {"echo": v["task"]["payload"]}, "model": "echo"});
                let done = post(
                    format!("{}/v1/relay/result", relay.base),
                    &json!({"call_id": v["call_id"], "result": result}),
                    Some(&token),
                )
                .await;
                assert_eq!(done.status.as_u16(), 204);
            }
            s => panic!("pull answered {s}"),
        }
    }
}

fn code(r: &HttpReply) -> String {
    r.error_body().code.as_str().to_owned()
}

#[tokio::test]
async fn a_long_poll_worker_answers_tasks_through_the_relay() {
    let relay = relay_with(quick()).await;
    let b = bind(&relay, "lp-1").await;
    assert_eq!(b.status.as_u16(), 200);
    assert!(b.headers.contains_key("access-control-allow-origin"));
    let v: Value = b.json().unwrap();
    assert_eq!(v["worker_endpoint_path"], "/v1/relay-for/lp-1");
    assert_eq!(v["poll_timeout_s"], 1); // 300 ms, announced as 1 s
    let tok = token(&b);

    // an idle pull answers 204 after the poll timeout
    let idle = pull(&relay, &tok).await;
    assert_eq!(idle.status.as_u16(), 204);

    let w = tokio::spawn(worker(relay.base.clone(), tok.clone(), 20));
    for i in 0..3 {
        let task = json!({"task_id": format!("t-{i}"), "intent": CHAT, "payload": {"n": i}});
        let r = post(
            format!("{}/v1/relay-for/lp-1/v1/task", relay.base),
            &task,
            None,
        )
        .await;
        assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
        let v: Value = r.json().unwrap();
        assert_eq!(v["task_id"], format!("t-{i}"));
        assert_eq!(v["output"]["echo"]["n"], i);
        assert_eq!(v["generated_by_ai"], true);
    }
    let health = client()
        .get(format!("{}/v1/relay-for/lp-1/iicp/health", relay.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status.as_u16(), 200);
    let h: Value = health.json().unwrap();
    assert_eq!(h["via_relay"], true);
    assert_eq!(h["models"], json!(["echo"]));

    // an alive worker is not displaced
    let again = bind(&relay, "lp-1").await;
    assert_eq!(again.status.as_u16(), 409);
    assert_eq!(code(&again), "IICP-E038");

    // unbind: the session ends, tasks get IICP-E030
    w.abort();
    let u = post(
        format!("{}/v1/relay/unbind", relay.base),
        &json!({}),
        Some(&tok),
    )
    .await;
    assert_eq!(u.status.as_u16(), 204);
    let r = post(
        format!("{}/v1/relay-for/lp-1/v1/task", relay.base),
        &json!({"task_id": "x", "payload": {}}),
        None,
    )
    .await;
    assert_eq!(r.status.as_u16(), 404);
    assert_eq!(code(&r), "IICP-E030");
    // the old token is refused
    let stale = pull(&relay, &tok).await;
    assert_eq!(stale.status.as_u16(), 401);
    assert_eq!(code(&stale), "IICP-E021");
}

#[tokio::test]
async fn refusals_carry_the_spec_codes() {
    let relay = relay_with(quick()).await;
    let none = post(
        format!("{}/v1/relay/bind", relay.base),
        &json!({"intent": CHAT}),
        None,
    )
    .await;
    assert_eq!(none.status.as_u16(), 422);
    assert_eq!(code(&none), "IICP-E001");
    let bad = pull(&relay, "not-a-session").await;
    assert_eq!(bad.status.as_u16(), 401);
    assert_eq!(code(&bad), "IICP-E021");
    assert!(bad.headers.contains_key("access-control-allow-origin"));
    let tok = token(&bind(&relay, "lp-r").await);
    let incomplete = post(
        format!("{}/v1/relay/result", relay.base),
        &json!({"result": {}}),
        Some(&tok),
    )
    .await;
    assert_eq!(incomplete.status.as_u16(), 422);
    assert_eq!(code(&incomplete), "IICP-E001");
    let no_result = post(
        format!("{}/v1/relay/result", relay.base),
        &json!({"call_id": "c"}),
        Some(&tok),
    )
    .await;
    assert_eq!(no_result.status.as_u16(), 422);

    // ticket required
    let strict = relay_with(RelayConfig {
        require_ticket: true,
        ..quick()
    })
    .await;
    let r = bind(&strict, "lp-t").await;
    assert_eq!(r.status.as_u16(), 401);
    assert_eq!(code(&r), "IICP-E040");

    // bind rate limit per source
    let limited = relay_with(RelayConfig {
        bind_rate_limit: 1,
        ..quick()
    })
    .await;
    assert_eq!(bind(&limited, "lp-a").await.status.as_u16(), 200);
    let r = bind(&limited, "lp-b").await;
    assert_eq!(r.status.as_u16(), 429);
    assert_eq!(code(&r), "IICP-E039");
    assert_eq!(
        r.error_body().reason.as_deref(),
        Some("relay_bind_rate_limited")
    );

    // session cap
    let capped = relay_with(RelayConfig {
        max_sessions: 1,
        ..quick()
    })
    .await;
    assert_eq!(bind(&capped, "lp-c").await.status.as_u16(), 200);
    let r = bind(&capped, "lp-d").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(code(&r), "IICP-E039");
}

#[tokio::test]
async fn a_worker_that_stops_pulling_is_dead_after_the_liveness_window() {
    let relay = relay_with(quick()).await;
    let tok = token(&bind(&relay, "lp-l").await);
    // a waiting pull keeps the session alive past the window
    let waiting = tokio::spawn({
        let base = relay.base.clone();
        let tok = tok.clone();
        async move {
            let r = Relay {
                base,
                _trigger: shutdown::channel().0,
            };
            pull(&r, &tok).await.status.as_u16()
        }
    });
    assert_eq!(waiting.await.unwrap(), 204);
    assert_eq!(bind(&relay, "lp-l").await.status.as_u16(), 409);
    // silence past the window: dead, tasks get IICP-E030, the id can be bound again
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = post(
        format!("{}/v1/relay-for/lp-l/v1/task", relay.base),
        &json!({"task_id": "x", "payload": {}}),
        None,
    )
    .await;
    assert_eq!(code(&r), "IICP-E030");
    assert_eq!(bind(&relay, "lp-l").await.status.as_u16(), 200);
}

#[tokio::test]
async fn legacy_relay_route_and_per_source_task_limit() {
    let relay = relay_with(RelayConfig {
        forward_rate_limit: 3,
        ..quick()
    })
    .await;
    let tok = token(&bind(&relay, "lp-x").await);
    let w = tokio::spawn(worker(relay.base.clone(), tok, 20));
    let legacy = post(
        format!("{}/v1/relay", relay.base),
        &json!({"target_node_id": "lp-x", "task": {"task_id": "t-l", "payload": {"q": 1}}}),
        None,
    )
    .await;
    assert_eq!(legacy.status.as_u16(), 200, "{:?}", legacy.body);
    let v: Value = legacy.json().unwrap();
    assert_eq!(v["task_id"], "t-l");
    assert_eq!(v["output"]["echo"]["q"], 1);
    let missing = post(
        format!("{}/v1/relay", relay.base),
        &json!({"task": {}}),
        None,
    )
    .await;
    assert_eq!(missing.status.as_u16(), 422);
    assert_eq!(code(&missing), "IICP-E001");
    let unknown = post(
        format!("{}/v1/relay", relay.base),
        &json!({"target_node_id": "nobody", "task": {}}),
        None,
    )
    .await;
    assert_eq!(code(&unknown), "IICP-E030");
    // the fourth relayed task from this source within the window is refused
    let r = post(
        format!("{}/v1/relay-for/lp-x/v1/task", relay.base),
        &json!({"task_id": "t-4", "payload": {}}),
        None,
    )
    .await;
    assert_eq!(r.status.as_u16(), 429);
    assert!(r.headers.contains_key("retry-after"));
    w.abort();
}

/// Posts one lifecycle event of a streamed call as a long-poll worker does.
async fn post_event(relay: &Relay, token: &str, call_id: &Value, event: Value) -> u16 {
    post(
        format!("{}/v1/relay/result", relay.base),
        &json!({"call_id": call_id, "event": event}),
        Some(token),
    )
    .await
    .status
    .as_u16()
}

fn event(task_id: &str, sequence: u64, kind: &str, text: Option<&str>) -> Value {
    let terminal = kind != "accepted" && kind != "partial";
    let mut e = json!({
        "task_id": task_id,
        "sequence": sequence,
        "event": kind,
        "status": match kind { "partial" => "partial", "accepted" => "accepted", _ => "success" },
        "is_final": terminal,
    });
    if let Some(t) = text {
        e["result"] = json!({"choices": [{"index": 0, "delta": {"content": t}}]});
    }
    e
}

/// Reads server-sent events from `stream` until one whose `event` is `until`; returns
/// the events read (data objects).
async fn read_until(
    stream: &mut iicp_transport::http::HttpStream,
    buf: &mut Vec<u8>,
    until: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let msg: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8(msg).unwrap();
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")) {
                let v: Value = serde_json::from_str(data.trim()).unwrap();
                let done = v["event"] == until;
                out.push(v);
                if done {
                    return out;
                }
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream goes on");
        buf.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn a_long_poll_worker_streams_its_events_as_it_posts_them() {
    let relay = relay_with(RelayConfig {
        poll_timeout: Duration::from_secs(5),
        ..quick()
    })
    .await;
    let tok = token(&bind(&relay, "lp-s").await);
    let endpoint = format!("{}/v1/relay-for/lp-s", relay.base);
    let id = "8e1f9a4b-5c6d-4e7f-9a2b-3c4d5e6f7081";
    let task = json!({"task_id": id, "intent": CHAT, "payload": {"messages": []},
        "constraints": {"required_profiles": ["urn:iicp:profile:service-lifecycle:v1"]}});

    // the caller submits; the worker's pull carries the task as a streamed call
    let submit = tokio::spawn({
        let (url, task) = (format!("{endpoint}/v1/tasks"), task.clone());
        async move { post(url, &task, None).await }
    });
    let pulled = pull(&relay, &tok).await;
    assert_eq!(pulled.status.as_u16(), 200);
    let p: Value = pulled.json().unwrap();
    assert_eq!(p["stream"], true, "{p}");
    assert_eq!(p["task_id"], id);
    assert!(p["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(p["task"]["payload"], json!({"messages": []}));
    let call = p["call_id"].clone();
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 0, "accepted", None)).await,
        204
    );
    let accepted = submit.await.unwrap();
    assert_eq!(accepted.status.as_u16(), 202, "{:?}", accepted.body);
    assert_eq!(accepted.json::<Value>().unwrap()["task_id"], id);

    // the caller's event stream shows each event as the worker posts it
    let mut events = client()
        .get(format!("{endpoint}/v1/tasks/{id}/events"))
        .header("accept", "text/event-stream")
        .send_streaming()
        .await
        .unwrap();
    assert_eq!(events.status.as_u16(), 200);
    let mut buf = Vec::new();
    let first = read_until(&mut events, &mut buf, "accepted").await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 1, "partial", Some("Hel"))).await,
        204
    );
    let got = read_until(&mut events, &mut buf, "partial").await;
    assert_eq!(got[0]["result"]["choices"][0]["delta"]["content"], "Hel");
    // the terminal is not posted yet: what the caller has was streamed, not buffered
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 2, "partial", Some("lo"))).await,
        204
    );
    let mut done = event(id, 3, "completed", None);
    done["tokens_used"] = json!(2);
    assert_eq!(post_event(&relay, &tok, &call, done).await, 204);
    let rest = read_until(&mut events, &mut buf, "completed").await;
    let kinds: Vec<_> = rest.iter().map(|e| e["event"].clone()).collect();
    assert_eq!(kinds, [json!("partial"), json!("completed")]);
    assert_eq!(rest[1]["sequence"], 3);
    assert_eq!(rest[1]["is_final"], true);
    assert_eq!(rest[1]["tokens_used"], 2);
    // an event after the terminal is dropped (the relay no longer listens)
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 4, "partial", Some("x"))).await,
        204
    );
    let state: Value = client()
        .get(format!("{endpoint}/v1/tasks/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(state["state"], "completed", "{state}");
}

#[tokio::test]
async fn long_poll_streams_cancel_answer_buffered_and_break_on_bad_events() {
    let relay = relay_with(RelayConfig {
        poll_timeout: Duration::from_secs(5),
        ..quick()
    })
    .await;
    let tok = token(&bind(&relay, "lp-c").await);
    let endpoint = format!("{}/v1/relay-for/lp-c", relay.base);
    let start = |id: &'static str| {
        let url = format!("{endpoint}/v1/tasks");
        tokio::spawn(async move {
            post(
                url,
                &json!({"task_id": id, "intent": CHAT, "payload": {}}),
                None,
            )
            .await
        })
    };

    // cancel: the caller's stream ends `cancelled`, the worker's later posts are dropped
    let id = "9f2a0b5c-6d7e-4f80-8b3c-4d5e6f708192";
    let submit = start(id);
    let p: Value = pull(&relay, &tok).await.json().unwrap();
    let call = p["call_id"].clone();
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 0, "accepted", None)).await,
        204
    );
    assert_eq!(submit.await.unwrap().status.as_u16(), 202);
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 1, "partial", Some("a"))).await,
        204
    );
    let c = post(format!("{endpoint}/v1/tasks/{id}/cancel"), &json!({}), None).await;
    assert_eq!(c.status.as_u16(), 200);
    let s: Value = c.json().unwrap();
    assert_eq!(s["state"], "cancelled", "{s}");
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 2, "partial", Some("b"))).await,
        204
    );
    let body = client()
        .get(format!("{endpoint}/v1/tasks/{id}/events"))
        .send()
        .await
        .unwrap()
        .body;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let kinds: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap()["event"].clone())
        .collect();
    assert_eq!(
        kinds,
        [json!("accepted"), json!("partial"), json!("cancelled")]
    );

    // a worker that answers the streamed call with one result: a buffered answer
    let id = "a03b1c6d-7e8f-4091-9c4d-5e6f708192a3";
    let submit = start(id);
    let p: Value = pull(&relay, &tok).await.json().unwrap();
    let r = post(
        format!("{}/v1/relay/result", relay.base),
        &json!({"call_id": p["call_id"], "result": {"output": {"text": "all at once"}}}),
        Some(&tok),
    )
    .await;
    assert_eq!(r.status.as_u16(), 204);
    let answer = submit.await.unwrap();
    assert_eq!(answer.status.as_u16(), 200);
    let v: Value = answer.json().unwrap();
    assert_eq!(v["task_id"], id);
    assert_eq!(v["output"]["text"], "all at once");

    // another task's event, or a sequence gap: the stream fails, never succeeds
    for (n, bad) in [
        ("b14c2d7e-8f90-4a12-8d5e-6f708192a3b4", "other"),
        ("c25d3e8f-90a1-4b23-9e6f-708192a3b4c5", "gap"),
    ] {
        let submit = start(n);
        let p: Value = pull(&relay, &tok).await.json().unwrap();
        let call = p["call_id"].clone();
        assert_eq!(
            post_event(&relay, &tok, &call, event(n, 0, "accepted", None)).await,
            204
        );
        assert_eq!(submit.await.unwrap().status.as_u16(), 202);
        let wrong = if bad == "other" {
            event("not-this-task", 1, "partial", Some("x"))
        } else {
            event(n, 5, "partial", Some("x"))
        };
        assert_eq!(post_event(&relay, &tok, &call, wrong).await, 204);
        let mut events = client()
            .get(format!("{endpoint}/v1/tasks/{n}/events"))
            .send_streaming()
            .await
            .unwrap();
        let got = read_until(&mut events, &mut Vec::new(), "failed").await;
        assert_eq!(got.last().unwrap()["event"], "failed", "{bad}: {got:?}");
        assert_eq!(got.last().unwrap()["error"]["code"], "IICP-E031");
    }
}

#[tokio::test]
async fn one_request_submit_streams_through_the_relay() {
    let relay = relay_with(RelayConfig {
        poll_timeout: Duration::from_secs(5),
        ..quick()
    })
    .await;
    let tok = token(&bind(&relay, "lp-o").await);
    let id = "d36e4f90-a1b2-4c34-8f70-8192a3b4c5d6";
    let task = json!({"task_id": id, "intent": CHAT, "payload": {}});
    let url = format!("{}/v1/relay-for/lp-o/v1/tasks/stream", relay.base);
    let opened = tokio::spawn(async move {
        client()
            .post_json(url, &task)
            .header("accept", "text/event-stream")
            .send_streaming()
            .await
            .unwrap()
    });
    let p: Value = pull(&relay, &tok).await.json().unwrap();
    let call = p["call_id"].clone();
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 0, "accepted", None)).await,
        204
    );
    let mut stream = opened.await.unwrap();
    assert_eq!(stream.status.as_u16(), 200);
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, "accepted").await;
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 1, "partial", Some("hi"))).await,
        204
    );
    let got = read_until(&mut stream, &mut buf, "partial").await;
    assert_eq!(got[0]["result"]["choices"][0]["delta"]["content"], "hi");
    assert_eq!(
        post_event(&relay, &tok, &call, event(id, 2, "completed", None)).await,
        204
    );
    let end = read_until(&mut stream, &mut buf, "completed").await;
    assert_eq!(end.last().unwrap()["is_final"], true);
}
