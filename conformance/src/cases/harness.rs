//! SDK cases against an external client (`--client-cmd CMD`): the runner starts a
//! scripted directory and scripted nodes on 127.0.0.1, runs `sh -c CMD` once per
//! scenario and judges the client by the requests its servers received — so any SDK
//! with a small harness can be checked (PROTOCOL.md §2.3, §7.1, §7.3, §9.2;
//! conformance-test-suite.md §10.1; SEED-SDK.md §6).
//!
//! The harness contract: submit one task (a one-message chat payload) through the SDK's
//! full pipeline to the directory base URL in `IICP_CONFORMANCE_DIRECTORY`, for the
//! intent in `IICP_CONFORMANCE_INTENT`, using plain `GET /v1/discover`, directory order,
//! plaintext to the keyless scripted nodes and loopback endpoints allowed; configure the
//! SDK's own node credential from `IICP_CONFORMANCE_NODE_TOKEN` when it has one; exit.
//! Its exit status is not judged. `conformance/peers/py_peer.py submit` is the Python
//! SDK's harness.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;

use super::sdk::{counts, mesh, shared_traceparent, task_ids, transient, SECRET};
use super::{case, ensure, Case, Ctx, Outcome, Stop, Target};
use crate::peers::{self, Scratch};
use iicp_testkit::scripted::{Canned, Scripted};

const T: Target = Target::ClientCmd;

/// The external-client cases.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "EXT-SDK-01",
            T,
            "a node answering 503 gets exactly 3 attempts, then the next node 1",
            "suite SDK-01, PROXY-ROUTE-03; SEED-SDK §6 SDK-01; PROTOCOL §7.1",
            |ctx| node_retry(ctx)
        ),
        case!(
            "EXT-SDK-02",
            T,
            "the task id is a UUID v4, kept across a retry",
            "SEED-SDK §6 SDK-02; PROTOCOL §2.1; suite PROTO-MSG-01",
            |ctx| uuid_task_id(ctx)
        ),
        case!(
            "EXT-SDK-03",
            T,
            "malformed intents (uppercase, unversioned) cause no request at all",
            "suite SDK-03, PROTO-URN-01/02; PROTOCOL §2.2, §9.2 step 1",
            |ctx| urn_zero_io(ctx)
        ),
        case!(
            "EXT-SDK-05",
            T,
            "429 capacity_exceeded moves to the next node without retrying the first",
            "PROTOCOL §7.3, §19 T8; SEED-SDK §6 SDK-05; suite QOS-ADMIT-02",
            |ctx| capacity_switch(ctx)
        ),
        case!(
            "EXT-SDK-06",
            T,
            "one W3C traceparent trace id for discovery and every node attempt",
            "SEED-SDK §6 SDK-06; PROTOCOL §2.3; suite TRACE-01",
            |ctx| traceparent(ctx)
        ),
        case!(
            "EXT-SDK-06-SPEC",
            T,
            "the SDK's node_token never reaches a provider or its output",
            "suite SDK-06; PROTOCOL §4.3, §19 T6",
            |ctx| token_not_sent(ctx)
        ),
    ]
}

/// Runs the harness once against `dir` for `intent`; returns its stdout and stderr.
async fn run(ctx: &Ctx, dir: &Scripted, intent: &str) -> Result<String, Stop> {
    let cmd_line = ctx
        .client_cmd
        .clone()
        .ok_or_else(|| Stop::Skip("no --client-cmd".into()))?;
    let scratch = Scratch::new("client-cmd").map_err(|e| Stop::request(None, e.to_string()))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&cmd_line)
        .env("IICP_CONFORMANCE_DIRECTORY", dir.base())
        .env("IICP_CONFORMANCE_INTENT", intent)
        .env("IICP_CONFORMANCE_NODE_TOKEN", SECRET)
        .stdin(std::process::Stdio::null());
    let within = ctx.case_timeout.saturating_sub(Duration::from_secs(1));
    let done = peers::run("client-harness", cmd, &scratch, within)
        .await
        .map_err(|e| Stop::request(None, format!("client harness: {e}")))?;
    Ok(format!("{}\n{}", done.stdout, done.stderr))
}

async fn node_retry(ctx: Arc<Ctx>) -> Outcome {
    let (dir, nodes, _) = mesh(2).await?;
    nodes[0].set_default(Method::POST, "/v1/task", transient(503));
    let out = run(&ctx, &dir, &ctx.intent).await?;
    ensure(counts(&nodes) == vec![3, 1], None, || {
        format!(
            "task POSTs per node {:?}, expected [3, 1]; harness said: {}",
            counts(&nodes),
            super::snippet(out.as_bytes())
        )
    })?;
    Ok(None)
}

async fn uuid_task_id(ctx: Arc<Ctx>) -> Outcome {
    let (dir, nodes, _) = mesh(1).await?;
    nodes[0].script(Method::POST, "/v1/task", [transient(503)]);
    run(&ctx, &dir, &ctx.intent).await?;
    let ids = task_ids(&nodes[0], 2)?;
    ensure(ids[0] == ids[1], None, || {
        format!("the retry changed the task id: {ids:?}")
    })?;
    Ok(None)
}

async fn urn_zero_io(ctx: Arc<Ctx>) -> Outcome {
    let (dir, nodes, _) = mesh(1).await?;
    // first a valid intent, so that silence below means refusal, not a broken harness
    run(&ctx, &dir, &ctx.intent).await?;
    let seen = || dir.requests().len() + nodes[0].requests().len();
    let before = seen();
    ensure(before > 0, None, || {
        "the harness made no request for a valid intent (the case would prove nothing)".into()
    })?;
    for bad in ["urn:iicp:intent:LLM:Chat:v1", "urn:iicp:intent:llm:chat"] {
        run(&ctx, &dir, bad).await?;
        let made = seen() - before;
        ensure(made == 0, None, || {
            format!("{bad:?}: {made} request(s) made for a malformed intent")
        })?;
    }
    Ok(None)
}

async fn capacity_switch(ctx: Arc<Ctx>) -> Outcome {
    let (dir, nodes, _) = mesh(2).await?;
    let busy = json!({"error": {"code": "capacity_exceeded", "message": "busy", "qos_class": "best-effort", "retry_after_ms": 1000}});
    nodes[0].script(Method::POST, "/v1/task", [Canned::RetryAfter(429, busy, 1)]);
    run(&ctx, &dir, &ctx.intent).await?;
    ensure(counts(&nodes) == vec![1, 1], None, || {
        format!("task POSTs per node {:?}, expected [1, 1]", counts(&nodes))
    })?;
    Ok(None)
}

async fn traceparent(ctx: Arc<Ctx>) -> Outcome {
    let (dir, nodes, _) = mesh(1).await?;
    nodes[0].script(Method::POST, "/v1/task", [transient(503)]);
    run(&ctx, &dir, &ctx.intent).await?;
    shared_traceparent(&dir, &nodes[0], 3)?;
    Ok(None)
}

async fn token_not_sent(ctx: Arc<Ctx>) -> Outcome {
    let (dir, nodes, _) = mesh(2).await?;
    nodes[0].set_default(
        Method::POST,
        "/v1/task",
        Canned::Json(
            401,
            json!({"error": {"code": "unauthorized", "message": "who are you"}}),
        ),
    );
    let out = run(&ctx, &dir, &ctx.intent).await?;
    ensure(nodes[0].count("/v1/task") >= 1, None, || {
        "no task reached a provider (the case proved nothing)".into()
    })?;
    let leaked: Vec<String> = nodes
        .iter()
        .flat_map(Scripted::requests)
        .filter(|r| r.contains(SECRET))
        .map(|r| {
            let place = if r
                .header("authorization")
                .is_some_and(|v| v.contains(SECRET))
            {
                "Authorization header"
            } else {
                "body"
            };
            format!("{} {} ({place})", r.method, r.path)
        })
        .collect();
    ensure(leaked.is_empty(), None, || {
        format!("node_token sent to a provider: {leaked:?}")
    })?;
    ensure(!out.contains(SECRET), None, || {
        "node_token appears in the client's output".into()
    })?;
    Ok(None)
}
