//! Cases against any node's HTTP endpoint: health, the task endpoint's success shape,
//! validation, auth, duplicates, admission, deadlines, error shapes, metrics and trace
//! headers (PROTOCOL.md §4–§7; conformance-test-suite.md §4, §6, §7).

use std::sync::Arc;
use std::time::Duration;

use iicp_transport::http::client::HttpReply;
use serde_json::{json, Value};

use super::{
    case, ensure, error_code, expect_status, is_json_ct, json_body, snippet, status_of, task_id,
    Case, Ctx, Outcome, Stop, Target,
};

const T: Target = Target::NodeHttp;

/// The node-over-HTTP cases.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "NODE-HEALTH-01",
            T,
            "GET /iicp/health answers 200 with status ok|degraded",
            "PROTOCOL §5.2; suite NODE-HEALTH-01",
            |ctx| health_status(ctx)
        ),
        case!(
            "NODE-HEALTH-02",
            T,
            "health carries numeric load and active_jobs",
            "PROTOCOL §5.2; suite NODE-HEALTH-02",
            |ctx| health_numbers(ctx)
        ),
        case!(
            "NODE-HEALTH-03",
            T,
            "health answers Content-Type: application/json",
            "PROTOCOL §5.2; suite NODE-HEALTH-03",
            |ctx| health_ct(ctx)
        ),
        case!(
            "SERVICE-LIFECYCLE-02",
            T,
            "POST /v1/tasks (profile required) → 202 task state; its event stream: accepted at 0, partials, one completed terminal, sequences without gaps (skipped when the node refuses the profile: it does not stream)",
            "PROTOCOL §11.2, §11.3, §11.5; [life] §3, §4, §6; SERVICE-LIFECYCLE-01, -02; ADR 0013",
            |ctx| lifecycle_http(ctx)
        ),
        case!(
            "NODE-TASK-01",
            T,
            "a valid CALL yields 200 (or 502) with a JSON body",
            "PROTOCOL §4.2; suite NODE-TASK-01",
            |ctx| task_ok(ctx)
        ),
        case!(
            "NODE-TASK-02",
            T,
            "the RESPONSE echoes the CALL's task_id",
            "PROTOCOL §4.2; suite NODE-TASK-02, PROTO-MSG-04",
            |ctx| task_echo(ctx)
        ),
        case!(
            "NODE-TASK-03",
            T,
            "RESPONSE status is success|error|timeout",
            "PROTOCOL §4.2, §19 T7; suite NODE-TASK-03",
            |ctx| task_status(ctx)
        ),
        case!(
            "NODE-TASK-04",
            T,
            "RESPONSE carries numeric metrics.latency_ms >= 0",
            "PROTOCOL §4.2; suite NODE-TASK-04",
            |ctx| task_metrics(ctx)
        ),
        case!(
            "PROTO-MSG-05",
            T,
            "task responses (success and error) are application/json",
            "PROTOCOL §6.1; suite PROTO-MSG-05",
            |ctx| task_ct(ctx)
        ),
        case!(
            "NODE-VAL-01",
            T,
            "malformed JSON → 4xx with the {error:{code,message}} body",
            "PROTOCOL §4.1, §6.1, §6.2 validation_error; suite NODE-TASK-01",
            |ctx| bad_json(ctx)
        ),
        case!(
            "NODE-VAL-02",
            T,
            "missing task_id → 422 validation_error",
            "PROTOCOL §4.1 (task_id required), §6.2",
            |ctx| missing_field(ctx, "task_id")
        ),
        case!(
            "NODE-VAL-03",
            T,
            "missing intent → 422 validation_error",
            "PROTOCOL §4.1 (intent required), §6.2",
            |ctx| missing_field(ctx, "intent")
        ),
        case!(
            "NODE-VAL-04",
            T,
            "empty task_id → 422 validation_error",
            "PROTOCOL §2.1 (task_id UUID v4), §4.1, §6.2",
            |ctx| empty_task_id(ctx)
        ),
        case!(
            "NODE-VAL-05",
            T,
            "missing payload → 422 validation_error",
            "PROTOCOL §4.1, §19 T2 (payload or iicp_conf required)",
            |ctx| missing_field(ctx, "payload")
        ),
        case!(
            "PROTO-URN-01",
            T,
            "intent without the urn:iicp:intent: prefix is refused (4xx)",
            "PROTOCOL §2.2; suite PROTO-URN-01",
            |ctx| bad_intent(ctx, "llm:chat:v1")
        ),
        case!(
            "PROTO-URN-02",
            T,
            "intent without a :vN version is refused (4xx)",
            "PROTOCOL §2.2; suite PROTO-URN-02",
            |ctx| bad_intent(ctx, "urn:iicp:intent:llm:chat")
        ),
        case!(
            "PROTO-URN-03",
            T,
            "a well-formed intent the node does not serve → unknown_intent",
            "PROTOCOL §6.2; suite PROTO-URN-03",
            |ctx| unknown_intent(ctx)
        ),
        case!(
            "NODE-VAL-06",
            T,
            "constraints.timeout_ms = 0 → 422 validation_error",
            "PROTOCOL §4.1, §7.5 (timeout_ms > 0); suite PROTO-MSG-03",
            |ctx| zero_timeout(ctx)
        ),
        case!(
            "SEC-LEAK-01",
            T,
            "error bodies carry no stack traces or file paths",
            "PROTOCOL §6.1; suite SEC-LEAK-01/02, NODE-TASK-07/08",
            |ctx| no_leaks(ctx)
        ),
        case!(
            "NODE-TASK-05",
            T,
            "token mode: a CALL without auth → 401 unauthorized",
            "PROTOCOL §4.3 TASK-1; suite NODE-TASK-05, SEC-AUTH-01, SEC-RN-02",
            |ctx| auth_missing(ctx)
        ),
        case!(
            "SEC-AUTH-02",
            T,
            "token mode: a wrong or empty token → 401, the right one → 200",
            "PROTOCOL §4.3 TASK-1; suite SEC-AUTH-02, SEC-RN-01",
            |ctx| auth_wrong(ctx)
        ),
        case!(
            "NODE-TASK-06",
            T,
            "same task_id with another payload → 409 conflict",
            "PROTOCOL §7.2, §19 T21; suite NODE-TASK-06",
            |ctx| dup_conflict(ctx)
        ),
        case!(
            "NODE-DUP-01",
            T,
            "identical duplicate → 409 conflict or a replay of the same result",
            "PROTOCOL §7.2 (both readings: core §7 409 / sem §6.3 cached result)",
            |ctx| dup_identical(ctx)
        ),
        case!(
            "NODE-DUP-02",
            T,
            "duplicate while the first is still running → 409 conflict, no second execution",
            "PROTOCOL §7.2, §19 T21; suite NODE-TASK-06",
            |ctx| dup_in_flight(ctx)
        ),
        case!(
            "TRACE-02",
            T,
            "traceparent in → X-IICP-Trace-Id with its trace id in the response",
            "PROTOCOL §2.3, §5.3, §19 T14; suite TRACE-02",
            |ctx| trace_echo(ctx)
        ),
        case!(
            "METRICS-01",
            T,
            "GET /metrics answers Prometheus text with iicp_tasks_total",
            "PROTOCOL §5.1; suite METRICS-01/04",
            |ctx| metrics(ctx)
        ),
        case!(
            "QOS-ADMIT-01",
            T,
            "beyond max_concurrent → 429 capacity_exceeded + Retry-After, no queueing",
            "PROTOCOL §7.3, §19 T8; suite QOS-ADMIT-01, NODE-CONC-01",
            |ctx| admission(ctx)
        ),
        case!(
            "NODE-DEADLINE-01",
            T,
            "a task exceeding timeout_ms ends as 504 task_timeout (or status timeout)",
            "PROTOCOL §4.1 TASK-4, §6.2 task_timeout, §7.5",
            |ctx| deadline(ctx)
        ),
    ]
}

fn base(ctx: &Ctx) -> Result<&str, Stop> {
    ctx.node_http
        .as_deref()
        .ok_or_else(|| Stop::Skip("no --node-http".into()))
}

/// A valid task body for the node's intent (with the credential when one is known).
fn task_body(ctx: &Ctx, id: &str) -> Value {
    let mut b = json!({
        "task_id": id,
        "intent": ctx.intent,
        "payload": ctx.payload,
        "constraints": {"timeout_ms": 30000, "qos": "best-effort"},
    });
    if let Some(t) = &ctx.node_token {
        b["auth"] = json!({"node_token": t});
    }
    b
}

async fn post(ctx: &Ctx, body: &Value, headers: &[(&str, &str)]) -> Result<HttpReply, Stop> {
    let http = ctx.http()?;
    let mut req = http.post_json(format!("{}/v1/task", base(ctx)?), body);
    // the bearer repeats the body's credential (both forms count, PROTOCOL §4.3)
    if let Some(t) = body["auth"]["node_token"]
        .as_str()
        .filter(|t| !t.is_empty())
    {
        req = req.bearer(t.to_owned());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.send().await?)
}

async fn post_raw(ctx: &Ctx, content_type: &'static str, body: Vec<u8>) -> Result<HttpReply, Stop> {
    let http = ctx.http()?;
    Ok(http
        .request(http::Method::POST, format!("{}/v1/task", base(ctx)?))
        .body(content_type, body)
        .send()
        .await?)
}

async fn health(ctx: &Ctx) -> Result<HttpReply, Stop> {
    let http = ctx.http()?;
    Ok(http
        .get(format!("{}/iicp/health", base(ctx)?))
        .send()
        .await?)
}

async fn health_status(ctx: Arc<Ctx>) -> Outcome {
    let r = health(&ctx).await?;
    expect_status(&r, &[200])?;
    let b = json_body(&r)?;
    let s = b["status"].as_str().unwrap_or_default();
    ensure(s == "ok" || s == "degraded", status_of(&r), || {
        format!("status is {}", b["status"])
    })?;
    Ok(status_of(&r))
}

async fn health_numbers(ctx: Arc<Ctx>) -> Outcome {
    let r = health(&ctx).await?;
    expect_status(&r, &[200])?;
    let b = json_body(&r)?;
    for k in ["load", "active_jobs"] {
        ensure(b[k].is_number(), status_of(&r), || {
            format!("{k} is {}, not a number", b[k])
        })?;
    }
    Ok(status_of(&r))
}

async fn health_ct(ctx: Arc<Ctx>) -> Outcome {
    let r = health(&ctx).await?;
    expect_status(&r, &[200])?;
    ensure(is_json_ct(&r), status_of(&r), || {
        format!("Content-Type is {:?}", r.headers.get("content-type"))
    })?;
    Ok(status_of(&r))
}

async fn valid_task(ctx: &Ctx) -> Result<(String, HttpReply, Value), Stop> {
    let id = task_id();
    let r = post(ctx, &task_body(ctx, &id), &[]).await?;
    expect_status(&r, &[200, 502])?;
    let b = json_body(&r)?;
    Ok((id, r, b))
}

async fn task_ok(ctx: Arc<Ctx>) -> Outcome {
    let (_, r, _) = valid_task(&ctx).await?;
    Ok(status_of(&r))
}

async fn task_echo(ctx: Arc<Ctx>) -> Outcome {
    let (id, r, b) = valid_task(&ctx).await?;
    ensure(b["task_id"] == id.as_str(), status_of(&r), || {
        format!("task_id {} != {id}", b["task_id"])
    })?;
    Ok(status_of(&r))
}

async fn task_status(ctx: Arc<Ctx>) -> Outcome {
    let (_, r, b) = valid_task(&ctx).await?;
    let s = b["status"].as_str().unwrap_or_default();
    ensure(
        matches!(s, "success" | "error" | "timeout"),
        status_of(&r),
        || format!("status is {}", b["status"]),
    )?;
    Ok(status_of(&r))
}

async fn task_metrics(ctx: Arc<Ctx>) -> Outcome {
    let (_, r, b) = valid_task(&ctx).await?;
    let l = &b["metrics"]["latency_ms"];
    ensure(l.as_f64().is_some_and(|x| x >= 0.0), status_of(&r), || {
        format!("metrics.latency_ms is {l}")
    })?;
    Ok(status_of(&r))
}

async fn task_ct(ctx: Arc<Ctx>) -> Outcome {
    let (_, r, _) = valid_task(&ctx).await?;
    ensure(is_json_ct(&r), status_of(&r), || {
        format!(
            "success Content-Type is {:?}",
            r.headers.get("content-type")
        )
    })?;
    let mut b = task_body(&ctx, &task_id());
    b.as_object_mut().map(|o| o.remove("intent"));
    let r = post(&ctx, &b, &[]).await?;
    ensure(is_json_ct(&r), status_of(&r), || {
        format!(
            "error ({}) Content-Type is {:?}",
            r.status,
            r.headers.get("content-type")
        )
    })?;
    Ok(status_of(&r))
}

/// A 4xx in `want` with the spec error body whose code is `code` (when given).
fn refused(r: &HttpReply, want: &[u16], code: Option<&str>) -> Outcome {
    expect_status(r, want)?;
    let got = error_code(r)?;
    if let Some(code) = code {
        ensure(got == code, status_of(r), || {
            format!("error.code is {got:?}, expected {code:?}")
        })?;
    }
    Ok(status_of(r))
}

async fn bad_json(ctx: Arc<Ctx>) -> Outcome {
    let r = post_raw(
        &ctx,
        "application/json",
        br#"{"task_id": "5c5b1f5e-0000-4000-8000-000000000000", "intent": "#.to_vec(),
    )
    .await?;
    refused(&r, &[400, 422], None)
}

async fn missing_field(ctx: Arc<Ctx>, field: &'static str) -> Outcome {
    let mut b = task_body(&ctx, &task_id());
    b.as_object_mut().map(|o| o.remove(field));
    let r = post(&ctx, &b, &[]).await?;
    refused(&r, &[422], Some("validation_error"))
}

async fn empty_task_id(ctx: Arc<Ctx>) -> Outcome {
    let b = task_body(&ctx, "");
    let r = post(&ctx, &b, &[]).await?;
    refused(&r, &[422], Some("validation_error"))
}

async fn bad_intent(ctx: Arc<Ctx>, intent: &'static str) -> Outcome {
    let mut b = task_body(&ctx, &task_id());
    b["intent"] = json!(intent);
    let r = post(&ctx, &b, &[]).await?;
    refused(&r, &[400, 404, 422], None)
}

async fn unknown_intent(ctx: Arc<Ctx>) -> Outcome {
    let mut b = task_body(&ctx, &task_id());
    b["intent"] = json!("urn:iicp:intent:x.conformance:never-served:v1");
    let r = post(&ctx, &b, &[]).await?;
    refused(&r, &[400, 404, 422], Some("unknown_intent"))
}

async fn zero_timeout(ctx: Arc<Ctx>) -> Outcome {
    let mut b = task_body(&ctx, &task_id());
    b["constraints"]["timeout_ms"] = json!(0);
    let r = post(&ctx, &b, &[]).await?;
    refused(&r, &[422], Some("validation_error"))
}

async fn no_leaks(ctx: Arc<Ctx>) -> Outcome {
    let mut replies = vec![
        post_raw(&ctx, "application/json", b"{\"task_id\": [".to_vec()).await?,
        post_raw(&ctx, "application/json", b"\xff\xfe not utf-8".to_vec()).await?,
    ];
    let mut b = task_body(&ctx, &task_id());
    b["payload"] = json!("not an object");
    replies.push(post(&ctx, &b, &[]).await?);
    b["constraints"] = json!({"timeout_ms": "soon"});
    replies.push(post(&ctx, &b, &[]).await?);
    let needles = [
        "Traceback",
        "at line",
        "panicked at",
        "/home/",
        "/Users/",
        "/var/",
        "/usr/lib/",
        "site-packages",
        ".rs:",
        ".py\"",
        "C:\\",
    ];
    let mut last = None;
    for r in &replies {
        last = status_of(r);
        let text = String::from_utf8_lossy(&r.body);
        if let Some(n) = needles.iter().find(|n| text.contains(*n)) {
            return Err(Stop::assertion(
                last,
                format!(
                    "HTTP {} body contains {n:?}: {}",
                    r.status,
                    snippet(&r.body)
                ),
            ));
        }
        ensure(r.status.as_u16() < 500 || r.status == 502, last, || {
            format!(
                "malformed input answered {} (server error): {}",
                r.status,
                snippet(&r.body)
            )
        })?;
    }
    Ok(last)
}

fn need_token(ctx: &Ctx) -> Result<&str, Stop> {
    ctx.node_token.as_deref().ok_or_else(|| {
        Stop::Skip(
            "open mode assumed; pass --node-token for a node in token mode (DESIGN §4.5)".into(),
        )
    })
}

async fn auth_missing(ctx: Arc<Ctx>) -> Outcome {
    need_token(&ctx)?;
    let mut b = task_body(&ctx, &task_id());
    b.as_object_mut().map(|o| o.remove("auth"));
    let r = post(&ctx, &b, &[]).await?;
    refused(&r, &[401], Some("unauthorized"))
}

async fn auth_wrong(ctx: Arc<Ctx>) -> Outcome {
    let token = need_token(&ctx)?.to_owned();
    for wrong in [format!("{token}x"), String::new()] {
        let mut b = task_body(&ctx, &task_id());
        b["auth"] = json!({"node_token": wrong});
        let r = post(&ctx, &b, &[]).await?;
        refused(&r, &[401], Some("unauthorized"))?;
    }
    let (_, r, _) = valid_task(&ctx).await?;
    expect_status(&r, &[200])?;
    Ok(status_of(&r))
}

async fn dup_conflict(ctx: Arc<Ctx>) -> Outcome {
    let id = task_id();
    let first = task_body(&ctx, &id);
    let r = post(&ctx, &first, &[]).await?;
    expect_status(&r, &[200])?;
    let mut second = first.clone();
    second["payload"] = json!({"messages": [{"role": "user", "content": "a different payload"}]});
    let r = post(&ctx, &second, &[]).await?;
    refused(&r, &[409], Some("conflict"))
}

async fn dup_identical(ctx: Arc<Ctx>) -> Outcome {
    let id = task_id();
    let body = task_body(&ctx, &id);
    let r1 = post(&ctx, &body, &[]).await?;
    expect_status(&r1, &[200])?;
    let b1 = json_body(&r1)?;
    let r2 = post(&ctx, &body, &[]).await?;
    if r2.status == 409 {
        return refused(&r2, &[409], Some("conflict"));
    }
    expect_status(&r2, &[200, 409])?;
    let b2 = json_body(&r2)?;
    ensure(
        b2["task_id"] == id.as_str() && b2["result"] == b1["result"],
        status_of(&r2),
        || "the duplicate neither got 409 nor a replay of the first result (re-executed?)".into(),
    )?;
    Ok(status_of(&r2))
}

async fn dup_in_flight(ctx: Arc<Ctx>) -> Outcome {
    let slow = need_slow(&ctx)?;
    let mut body = task_body(&ctx, &task_id());
    body["payload"] = slow;
    let first = {
        let (ctx, body) = (Arc::clone(&ctx), body.clone());
        tokio::spawn(async move { post(&ctx, &body, &[]).await })
    };
    // give the first CALL time to be admitted (pacing only: the verdict does not
    // depend on it, a late first call makes the second one the original)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = post(&ctx, &body, &[]).await?;
    let first = first
        .await
        .map_err(|e| Stop::request(None, format!("first call: {e}")))??;
    // whichever arrived second must be the conflict; the other one runs normally
    let (dup, orig) = if first.status == 409 {
        (first, second)
    } else {
        (second, first)
    };
    expect_status(&orig, &[200, 502])?;
    refused(&dup, &[409], Some("conflict"))
}

async fn trace_echo(ctx: Arc<Ctx>) -> Outcome {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = post(
        &ctx,
        &task_body(&ctx, &task_id()),
        &[("traceparent", tp.as_str())],
    )
    .await?;
    expect_status(&r, &[200, 502])?;
    let got = r
        .headers
        .get("x-iicp-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure(got.eq_ignore_ascii_case(trace), status_of(&r), || {
        format!("X-IICP-Trace-Id is {got:?}, expected {trace}")
    })?;
    Ok(status_of(&r))
}

async fn metrics(ctx: Arc<Ctx>) -> Outcome {
    // one task first so that the counter has a sample
    let _ = valid_task(&ctx).await?;
    let http = ctx.http()?;
    let r = http.get(format!("{}/metrics", base(&ctx)?)).send().await?;
    if r.status == 404 {
        return Err(Stop::Skip("GET /metrics is not served (404)".into()));
    }
    expect_status(&r, &[200])?;
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure(ct.starts_with("text/plain"), status_of(&r), || {
        format!("Content-Type is {ct:?}")
    })?;
    let text = String::from_utf8_lossy(&r.body);
    ensure(text.contains("iicp_tasks_total"), status_of(&r), || {
        "no iicp_tasks_total series".into()
    })?;
    Ok(status_of(&r))
}

fn need_slow(ctx: &Ctx) -> Result<Value, Stop> {
    ctx.slow_payload.clone().ok_or_else(|| {
        Stop::Skip("needs --slow-payload (a payload the backend takes seconds on)".into())
    })
}

async fn admission(ctx: Arc<Ctx>) -> Outcome {
    let slow = need_slow(&ctx)?;
    let r = health(&ctx).await?;
    let max = json_body(&r)
        .ok()
        .and_then(|b| b["max_concurrent"].as_u64())
        .unwrap_or(4)
        .clamp(1, 32);
    let mut tasks = Vec::new();
    for _ in 0..=max {
        let ctx = Arc::clone(&ctx);
        let mut b = task_body(&ctx, &task_id());
        b["payload"] = slow.clone();
        tasks.push(tokio::spawn(async move { post(&ctx, &b, &[]).await }));
        // let the earlier ones take their slots
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut refused_429 = None;
    for t in tasks {
        if let Ok(Ok(r)) = t.await {
            if r.status == 429 && refused_429.is_none() {
                refused_429 = Some(r);
            }
        }
    }
    let Some(r) = refused_429 else {
        return Err(Stop::status(
            None,
            format!(
                "{} concurrent slow tasks with max_concurrent={max}: none refused with 429",
                max + 1
            ),
        ));
    };
    let code = error_code(&r)?;
    ensure(
        code == "capacity_exceeded" || code == "IICP-E021",
        status_of(&r),
        || format!("error.code is {code:?}"),
    )?;
    ensure(
        r.headers.get("retry-after").is_some(),
        status_of(&r),
        || "no Retry-After header".into(),
    )?;
    let b = json_body(&r)?;
    ensure(b["error"]["retry_after_ms"].is_u64(), status_of(&r), || {
        "no error.retry_after_ms".into()
    })?;
    Ok(status_of(&r))
}

async fn deadline(ctx: Arc<Ctx>) -> Outcome {
    let slow = need_slow(&ctx)?;
    let mut b = task_body(&ctx, &task_id());
    b["payload"] = slow;
    b["constraints"]["timeout_ms"] = json!(100);
    let r = post(&ctx, &b, &[]).await?;
    if r.status == 200 {
        let body = json_body(&r)?;
        ensure(body["status"] == "timeout", status_of(&r), || {
            format!("200 with status {}", body["status"])
        })?;
        return Ok(status_of(&r));
    }
    refused(&r, &[504], Some("task_timeout"))
}

/// `POST /v1/tasks`, then `GET` the advertised event stream and check it (§11).
async fn lifecycle_http(ctx: Arc<Ctx>) -> Outcome {
    let http = ctx.http()?;
    let id = super::task_id();
    let mut body = task_body(&ctx, &id);
    body["constraints"]["required_profiles"] = json!([iicp_proto::lifecycle::PROFILE]);
    let mut req = http.post_json(format!("{}/v1/tasks", base(&ctx)?), &body);
    if let Some(t) = &ctx.node_token {
        req = req.bearer(t.clone());
    }
    let r = req.send().await?;
    if matches!(r.status.as_u16(), 404 | 405 | 422) {
        return Err(Stop::Skip(format!(
            "POST /v1/tasks answered {}: the node does not stream",
            r.status
        )));
    }
    expect_status(&r, &[202])?;
    let state = json_body(&r)?;
    ensure(state["task_id"] == id.as_str(), status_of(&r), || {
        format!("state names task {}", state["task_id"])
    })?;
    let events_url = state["events_url"].as_str().ok_or_else(|| {
        Stop::assertion(status_of(&r), "no events_url in the task state".to_owned())
    })?;
    let url = if events_url.starts_with("http") {
        events_url.to_owned()
    } else {
        format!("{}{events_url}", base(&ctx)?)
    };
    let mut req = http.get(url);
    if let Some(t) = &ctx.node_token {
        req = req.bearer(t.clone());
    }
    let r = req.send().await?;
    expect_status(&r, &[200])?;
    ensure(
        r.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")),
        status_of(&r),
        || format!("events Content-Type is {:?}", r.headers.get("content-type")),
    )?;
    let text = String::from_utf8_lossy(&r.body);
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d.trim()).unwrap_or(Value::Null))
        .collect();
    ensure(events.len() >= 2, status_of(&r), || {
        format!(
            "{} events; at least accepted and a terminal expected",
            events.len()
        )
    })?;
    ensure(events[0]["event"] == "accepted", status_of(&r), || {
        format!("the first event is {}", events[0])
    })?;
    for (i, e) in events.iter().enumerate() {
        let last = i == events.len() - 1;
        ensure(e["sequence"] == i as u64, status_of(&r), || {
            format!("event {i} has sequence {}", e["sequence"])
        })?;
        ensure(e["task_id"] == id.as_str(), status_of(&r), || {
            format!("event {i} names task {}", e["task_id"])
        })?;
        ensure(e["is_final"] == Value::Bool(last), status_of(&r), || {
            format!(
                "event {i}: is_final {} (only the last is final)",
                e["is_final"]
            )
        })?;
        if !last {
            ensure(
                e["event"] == "accepted" || e["event"] == "partial",
                status_of(&r),
                || format!("event {i} is {} before the end", e["event"]),
            )?;
        }
    }
    let terminal = &events[events.len() - 1];
    ensure(terminal["event"] == "completed", status_of(&r), || {
        format!("the terminal is {terminal}")
    })?;
    Ok(status_of(&r))
}
