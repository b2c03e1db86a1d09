//! Directory cases.
//!
//! * Against any directory URL ([`Target::Directory`]): register, heartbeat, discover,
//!   deregister — happy path and error shapes (PROTOCOL.md §8; conformance-test-suite.md
//!   §3). The runner registers a node whose endpoint is its own `/iicp/health` server on
//!   127.0.0.1, so only private/dev directories accept it; the public profiles of
//!   `iicp-conformance` 0.3.0 cover a production directory (and our directory passes
//!   them: `crates/iicp-directory/tests/conformance_runner.rs`).
//! * Our node and client against a misbehaving, scripted directory ([`Target::Client`]):
//!   401/404 on heartbeat → re-register, 429 with `Retry-After`, 307/308 redirects (at
//!   most 3 hops), HTML error pages and truncated JSON → typed errors.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use iicp_client::RouteDiscovery;
use iicp_transport::http::client::HttpReply;
use serde_json::{json, Value};

use super::{
    case, ensure, error_code, expect_status, json_body, status_of, Case, Ctx, Outcome, Stop, Target,
};
use iicp_testkit::scripted::{Canned, Scripted, ScriptedBuilder};
use iicp_testkit::time::RecordingSleeper;

const T: Target = Target::Directory;
const X: Target = Target::Client;
const CHAT: &str = iicp_client::CHAT_INTENT;

/// The directory cases.
pub fn cases() -> Vec<Case> {
    vec![
        case!("DIR-REG-01", T, "POST /v1/register → 201 with node_id and node_token",
            "PROTOCOL §8.2; suite DIR-REG-01, DIR-LIFECYCLE-01", |ctx| reg_ok(ctx)),
        case!("DIR-REG-05", T, "node_token is at least 32 bytes, hex-encoded (≥ 64 hex chars)",
            "PROTOCOL §2.4; suite DIR-REG-05", |ctx| reg_token(ctx)),
        case!("DIR-REG-06", T, "the directory assigns a UUID v4 node_id when none is sent",
            "PROTOCOL §2.1; suite DIR-REG-06", |ctx| reg_node_id(ctx)),
        case!("DIR-REG-02", T, "register without endpoint → 422 validation_error",
            "PROTOCOL §8.2.1; suite DIR-REG-02", |ctx| reg_missing(ctx, "endpoint")),
        case!("DIR-REG-03", T, "register without capabilities → 422 validation_error",
            "PROTOCOL §8.2.1; suite DIR-REG-03", |ctx| reg_missing(ctx, "capabilities")),
        case!("DIR-HB-01", T, "heartbeat with the issued token → 200 ok:true, next_heartbeat_ms",
            "PROTOCOL §8.3; suite DIR-HB-01, DIR-LIFECYCLE-02", |ctx| hb_ok(ctx)),
        case!("DIR-HB-02", T, "heartbeat with an invalid token → 401 unauthorized",
            "PROTOCOL §8.3; suite DIR-HB-02", |ctx| hb_bad_token(ctx)),
        case!("DIR-HB-03", T, "heartbeat for an unknown node_id → 404 not_found",
            "PROTOCOL §8.3; suite DIR-HB-03", |ctx| hb_unknown(ctx)),
        case!("DIR-DISC-01", T, "discover → 200 with nodes[] and count, listing a registered node",
            "PROTOCOL §8.4; suite DIR-DISC-01", |ctx| disc_ok(ctx)),
        case!("DIR-DISC-08", T, "discover sends Cache-Control: public, max-age=5, s-maxage=10, stale-while-revalidate=5",
            "PROTOCOL §5.3; suite DIR-DISC-08", |ctx| disc_cache(ctx)),
        case!("DIR-DISC-10", T, "discover without intent → 422",
            "PROTOCOL §8.4; suite DIR-DISC-10", |ctx| disc_no_intent(ctx)),
        case!("DIR-DISC-11", T, "discover for a custom x.vendor intent → 200",
            "PROTOCOL §2.2; suite DIR-DISC-11", |ctx| disc_custom(ctx)),
        case!("DIR-LIFECYCLE-06", T, "deregister → 200 deregistered:true; the node leaves discovery",
            "PROTOCOL §8.6; suite DIR-LIFECYCLE-06", |ctx| dereg(ctx)),
        case!("DIRX-HB-401", X, "our node re-registers when the directory answers 401 to a heartbeat",
            "PROTOCOL §8.3, §8.2.4", |_c| node_reregisters(401)),
        case!("DIRX-HB-404", X, "our node re-registers when the directory answers 404 to a heartbeat",
            "PROTOCOL §8.3, §8.2.4", |_c| node_reregisters(404)),
        case!("DIRX-429", X, "our node honours 429 + Retry-After on register before trying again",
            "PROTOCOL §6.3 IICP-E034, §8.2, §5.3 Retry-After", |_c| node_retry_after()),
        case!("DIRX-REDIRECT-01", X, "our client follows a 307/308 redirect for directory calls",
            "PROTOCOL §19 T29; DESIGN §4.13; suite DIR-FED-05", |_c| redirect_followed()),
        case!("DIRX-REDIRECT-02", X, "our client stops after 3 redirect hops with a typed error",
            "PROTOCOL §19 T29; DESIGN §4.13; suite DIR-FED-06", |_c| redirect_capped()),
        case!("DIRX-REDIRECT-03", X, "our client does not follow a provider's redirect of POST /v1/task",
            "DESIGN §4.13 (redirects for directory calls only); PROTOCOL §9.3", |_c| provider_redirect_ignored()),
        case!("DIRX-HTML", X, "an HTML error page from the directory is a typed error, not a panic",
            "PROTOCOL §6.1 (plain-text/HTML bodies in the wild), §19 T8; suite SDK-ERR-01", |_c| html_error()),
        case!("DIRX-TRUNCATED", X, "truncated JSON from the directory is a typed error",
            "PROTOCOL §19 T20; suite SDK-ERR-01", |_c| truncated_json()),
    ]
}

// ---------------------------------------------------------------------------------
// Against any directory
// ---------------------------------------------------------------------------------

fn base(ctx: &Ctx) -> Result<String, Stop> {
    ctx.directory
        .as_deref()
        .map(|d| d.trim_end_matches('/').to_owned())
        .ok_or_else(|| Stop::Skip("no --directory".into()))
}

/// A node endpoint for registration: a health server in this process, kept alive by
/// the returned value.
async fn endpoint() -> Result<(Scripted, String), Stop> {
    let s = ScriptedBuilder::node("registered")
        .start()
        .await
        .map_err(|e| Stop::request(None, format!("health server: {e}")))?;
    let url = s.url();
    Ok((s, url))
}

fn register_body(endpoint: &str, intent: &str) -> Value {
    json!({
        "endpoint": endpoint,
        "region": "local",
        "capabilities": [{"intent": intent, "models": ["conformance-model"], "max_tokens": 1024}],
        "limits": {"max_concurrent": 1, "tokens_per_min": 1000},
    })
}

async fn register(ctx: &Ctx, body: &Value) -> Result<HttpReply, Stop> {
    Ok(ctx
        .http()?
        .post_json(format!("{}/v1/register", base(ctx)?), body)
        .send()
        .await?)
}

/// Registers a fresh node; returns (health server, node_id, node_token, reply).
async fn registered(ctx: &Ctx) -> Result<(Scripted, String, String, HttpReply), Stop> {
    let (health, url) = endpoint().await?;
    let r = register(ctx, &register_body(&url, &ctx.intent)).await?;
    expect_status(&r, &[201])?;
    let b = json_body(&r)?;
    let id = b["node_id"].as_str().unwrap_or_default().to_owned();
    let token = b["node_token"].as_str().unwrap_or_default().to_owned();
    ensure(!id.is_empty() && !token.is_empty(), status_of(&r), || {
        "201 without node_id and node_token".into()
    })?;
    Ok((health, id, token, r))
}

async fn heartbeat(ctx: &Ctx, id: &str, token: &str) -> Result<HttpReply, Stop> {
    Ok(ctx
        .http()?
        .post_json(
            format!("{}/v1/heartbeat", base(ctx)?),
            &json!({"node_id": id}),
        )
        .bearer(token.to_owned())
        .send()
        .await?)
}

async fn discover(ctx: &Ctx, query: &str) -> Result<HttpReply, Stop> {
    Ok(ctx
        .http()?
        .get(format!("{}/v1/discover{query}", base(ctx)?))
        .send()
        .await?)
}

async fn reg_ok(ctx: Arc<Ctx>) -> Outcome {
    let (_h, _, _, r) = registered(&ctx).await?;
    Ok(status_of(&r))
}

async fn reg_token(ctx: Arc<Ctx>) -> Outcome {
    let (_h, _, token, r) = registered(&ctx).await?;
    ensure(
        token.len() >= 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        status_of(&r),
        || {
            format!(
                "node_token is {} characters, hex: {}",
                token.len(),
                token.bytes().all(|b| b.is_ascii_hexdigit())
            )
        },
    )?;
    Ok(status_of(&r))
}

async fn reg_node_id(ctx: Arc<Ctx>) -> Outcome {
    let (_h, id, _, r) = registered(&ctx).await?;
    ensure(
        iicp_proto::ids::TaskId::parse(&id).is_ok_and(|t| t.is_uuid_v4()),
        status_of(&r),
        || format!("node_id {id:?} is not a UUID v4"),
    )?;
    Ok(status_of(&r))
}

async fn refused(r: &HttpReply, want: &[u16], code: &str) -> Outcome {
    expect_status(r, want)?;
    let got = error_code(r)?;
    ensure(got == code, status_of(r), || {
        format!("error.code {got:?}, expected {code:?}")
    })?;
    Ok(status_of(r))
}

async fn reg_missing(ctx: Arc<Ctx>, field: &'static str) -> Outcome {
    let (_h, url) = endpoint().await?;
    let mut b = register_body(&url, &ctx.intent);
    b.as_object_mut().map(|o| o.remove(field));
    let r = register(&ctx, &b).await?;
    refused(&r, &[422], "validation_error").await
}

async fn hb_ok(ctx: Arc<Ctx>) -> Outcome {
    let (_h, id, token, _) = registered(&ctx).await?;
    let r = heartbeat(&ctx, &id, &token).await?;
    expect_status(&r, &[200])?;
    let b = json_body(&r)?;
    ensure(b["ok"] == true, status_of(&r), || {
        format!("ok is {}", b["ok"])
    })?;
    ensure(
        b["next_heartbeat_ms"].as_u64().is_some_and(|n| n > 0),
        status_of(&r),
        || format!("next_heartbeat_ms is {}", b["next_heartbeat_ms"]),
    )?;
    Ok(status_of(&r))
}

async fn hb_bad_token(ctx: Arc<Ctx>) -> Outcome {
    let (_h, id, token, _) = registered(&ctx).await?;
    let r = heartbeat(&ctx, &id, &format!("{token}0")).await?;
    refused(&r, &[401], "unauthorized").await
}

async fn hb_unknown(ctx: Arc<Ctx>) -> Outcome {
    let (_h, _, token, _) = registered(&ctx).await?;
    let unknown = super::task_id();
    let r = heartbeat(&ctx, &unknown, &token).await?;
    refused(&r, &[404], "not_found").await
}

async fn disc_ok(ctx: Arc<Ctx>) -> Outcome {
    let (_h, id, _, _) = registered(&ctx).await?;
    let r = discover(&ctx, &format!("?intent={}&qos=best-effort", ctx.intent)).await?;
    expect_status(&r, &[200])?;
    let b = json_body(&r)?;
    let nodes = b["nodes"].as_array().cloned().unwrap_or_default();
    ensure(
        b["nodes"].is_array() && b["count"].is_u64(),
        status_of(&r),
        || "body lacks nodes[] or count".into(),
    )?;
    ensure(
        nodes.iter().any(|n| n["node_id"] == id.as_str()),
        status_of(&r),
        || "the node registered a moment ago is not listed".into(),
    )?;
    Ok(status_of(&r))
}

async fn disc_cache(ctx: Arc<Ctx>) -> Outcome {
    let r = discover(&ctx, &format!("?intent={}", ctx.intent)).await?;
    expect_status(&r, &[200])?;
    let cc = r
        .headers
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace(' ', "");
    ensure(
        cc == "public,max-age=5,s-maxage=10,stale-while-revalidate=5",
        status_of(&r),
        || format!("Cache-Control is {cc:?}"),
    )?;
    Ok(status_of(&r))
}

async fn disc_no_intent(ctx: Arc<Ctx>) -> Outcome {
    let r = discover(&ctx, "").await?;
    expect_status(&r, &[422])?;
    Ok(status_of(&r))
}

async fn disc_custom(ctx: Arc<Ctx>) -> Outcome {
    let r = discover(&ctx, "?intent=urn:iicp:intent:x.acme:invoice-classify:v1").await?;
    expect_status(&r, &[200])?;
    Ok(status_of(&r))
}

async fn dereg(ctx: Arc<Ctx>) -> Outcome {
    let (_h, id, token, _) = registered(&ctx).await?;
    let r = ctx
        .http()?
        .delete_json(
            format!("{}/v1/register", base(&ctx)?),
            &json!({"node_id": id}),
        )
        .bearer(token.clone())
        .send()
        .await?;
    expect_status(&r, &[200])?;
    let b = json_body(&r)?;
    ensure(b["deregistered"] == true, status_of(&r), || {
        format!("deregistered is {}", b["deregistered"])
    })?;
    let d = discover(&ctx, &format!("?intent={}&qos=best-effort", ctx.intent)).await?;
    let listed = json_body(&d)?["nodes"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n["node_id"] == id.as_str()));
    ensure(!listed, status_of(&d), || {
        "still discoverable after deregister".into()
    })?;
    Ok(status_of(&r))
}

// ---------------------------------------------------------------------------------
// Our node and client against a misbehaving directory
// ---------------------------------------------------------------------------------

fn io(e: impl std::fmt::Display) -> Stop {
    Stop::request(None, format!("setup: {e}"))
}

/// Our node (no listener of interest) registered with `dir`, heartbeating every 50 ms.
async fn our_node(dir: &Scripted) -> Result<iicp_node::ServeHandle, Stop> {
    let node = iicp_node::Node::builder()
        .endpoint("http://127.0.0.1:9")
        .intent(CHAT)
        .model("conformance-model")
        .region("local")
        .directory_url(dir.base())
        .heartbeat_interval(Duration::from_millis(50))
        .directory_backoff(iicp_node::Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        })
        .directory_timeout(Duration::from_secs(2))
        .build()
        .map_err(io)?;
    node.bind_and_serve(
        std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        iicp_node::EchoModel::new("conformance-model"),
        iicp_node::ServeOptions::default(),
    )
    .await
    .map_err(io)
}

/// Polls `cond` every 20 ms for up to `within`.
async fn until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

async fn node_reregisters(code: u16) -> Outcome {
    let dir = ScriptedBuilder::directory().start().await.map_err(io)?;
    let slug = if code == 401 {
        "unauthorized"
    } else {
        "not_found"
    };
    dir.script(
        Method::POST,
        "/v1/heartbeat",
        [Canned::Json(
            code,
            json!({"error": {"code": slug, "message": "scripted"}}),
        )],
    );
    let handle = our_node(&dir).await?;
    let ok = until(Duration::from_secs(10), || {
        dir.count("/v1/register") >= 2 && dir.count("/v1/heartbeat") >= 2
    })
    .await;
    let (regs, hbs) = (dir.hits("/v1/register"), dir.count("/v1/heartbeat"));
    handle.stop().await;
    ensure(ok, None, || {
        format!(
            "after a {code} heartbeat: {} register(s), {hbs} heartbeat(s)",
            regs.len()
        )
    })?;
    let second = regs
        .iter()
        .filter(|r| r.method == "POST")
        .nth(1)
        .map(Recorded::json)
        .unwrap_or_default();
    ensure(
        second["current_node_token"] == "tok-1" || code == 404,
        None,
        || {
            format!("the re-registration after 401 did not prove ownership with current_node_token: {second}")
        },
    )?;
    Ok(Some(code))
}

use iicp_testkit::server::Recorded;

async fn node_retry_after() -> Outcome {
    let dir = ScriptedBuilder::directory().start().await.map_err(io)?;
    dir.script(
        Method::POST,
        "/v1/register",
        [Canned::RetryAfter(
            429,
            json!({"error": {"code": "rate_limited", "message": "slow down", "legacy_code": "IICP-E034"}}),
            1,
        )],
    );
    let handle = our_node(&dir).await?;
    let ok = until(Duration::from_secs(10), || dir.count("/v1/register") >= 2).await;
    let regs: Vec<Recorded> = dir
        .hits("/v1/register")
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    handle.stop().await;
    ensure(ok && regs.len() >= 2, None, || {
        format!("{} register attempt(s) after a 429", regs.len())
    })?;
    let gap = regs[1].at.duration_since(regs[0].at);
    // a lower bound only: the retry must not come before Retry-After (1 s) elapsed
    ensure(gap >= Duration::from_millis(950), None, || {
        format!("retried after {gap:?}, before Retry-After: 1 s (back-off is 20 ms)")
    })?;
    Ok(Some(429))
}

async fn scripted_client(dir: &Scripted) -> Result<iicp_client::Client, Stop> {
    let sleeper = Arc::new(RecordingSleeper::default());
    super::sdk::client(dir, &sleeper)
        .route_discovery(RouteDiscovery::Legacy)
        .build()
        .map_err(io)
}

async fn redirect_followed() -> Outcome {
    for code in [307, 308] {
        let dir = ScriptedBuilder::directory()
            .on(Method::GET, "/moved/v1/discover", Canned::Discover)
            .start()
            .await
            .map_err(io)?;
        dir.set_nodes(vec![dir.entry("0000000a-0000-4000-8000-000000000000")]);
        dir.script(
            Method::GET,
            "/v1/discover",
            [Canned::Redirect(
                code,
                "/moved/v1/discover?intent=urn:iicp:intent:llm:chat:v1".into(),
            )],
        );
        let c = scripted_client(&dir).await?;
        let nodes = c
            .discover(CHAT, Default::default())
            .await
            .map_err(|e| Stop::assertion(Some(code), format!("{code} not followed: {e}")))?;
        ensure(
            nodes.len() == 1 && dir.count("/moved/v1/discover") == 1,
            Some(code),
            || {
                format!(
                    "{code}: {} node(s), {} hit(s) at the new location",
                    nodes.len(),
                    dir.count("/moved/v1/discover")
                )
            },
        )?;
    }
    Ok(Some(200))
}

async fn redirect_capped() -> Outcome {
    let mut b = ScriptedBuilder::directory();
    for hop in 1..=4 {
        b = b.on(
            Method::GET,
            &format!("/hop{hop}/v1/discover"),
            Canned::Redirect(307, format!("/hop{}/v1/discover", hop + 1)),
        );
    }
    let dir = b
        .on(Method::GET, "/hop5/v1/discover", Canned::Discover)
        .start()
        .await
        .map_err(io)?;
    dir.set_default(
        Method::GET,
        "/v1/discover",
        Canned::Redirect(307, "/hop1/v1/discover".into()),
    );
    let c = scripted_client(&dir).await?;
    match c.discover(CHAT, Default::default()).await {
        Ok(_) => Err(Stop::assertion(
            Some(307),
            "followed more than 3 redirect hops".to_owned(),
        )),
        Err(e) => {
            let hops = (1..=5)
                .map(|h| dir.count(&format!("/hop{h}/v1/discover")))
                .sum::<usize>();
            ensure(hops == 3, Some(307), || {
                format!("{hops} redirect hops followed, expected 3")
            })?;
            ensure(!e.code().as_str().is_empty(), Some(307), || {
                "untyped error".into()
            })?;
            Ok(Some(307))
        }
    }
}

async fn provider_redirect_ignored() -> Outcome {
    let (dir, nodes, sleeper) = super::sdk::mesh(1).await?;
    let elsewhere = ScriptedBuilder::node("elsewhere")
        .start()
        .await
        .map_err(io)?;
    nodes[0].set_default(
        Method::POST,
        "/v1/task",
        Canned::Redirect(307, format!("{}/v1/task", elsewhere.url())),
    );
    let c = super::sdk::client(&dir, &sleeper).build().map_err(io)?;
    let out = c.submit(super::sdk::chat_task()).await;
    ensure(elsewhere.count("/v1/task") == 0, None, || {
        "the task was re-sent to the redirect target".into()
    })?;
    ensure(out.is_err(), None, || {
        "a 307 answer to a task was taken as success".into()
    })?;
    Ok(Some(307))
}

async fn html_error() -> Outcome {
    let dir = ScriptedBuilder::directory().start().await.map_err(io)?;
    dir.set_default(
        Method::GET,
        "/v1/discover",
        Canned::Raw(
            502,
            "text/html",
            b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>".to_vec(),
        ),
    );
    let c = scripted_client(&dir).await?;
    match c.discover(CHAT, Default::default()).await {
        Ok(n) => Err(Stop::assertion(
            Some(502),
            format!("an HTML 502 page became {} node(s)", n.len()),
        )),
        Err(e) => {
            ensure(e.status_code() == Some(502), Some(502), || {
                format!("status_code {:?} ({e})", e.status_code())
            })?;
            ensure(!format!("{e}").contains("<html>"), Some(502), || {
                "the HTML page leaked into the error message".into()
            })?;
            Ok(Some(502))
        }
    }
}

async fn truncated_json() -> Outcome {
    let dir = ScriptedBuilder::directory().start().await.map_err(io)?;
    dir.set_default(
        Method::GET,
        "/v1/discover",
        Canned::Raw(
            200,
            "application/json",
            br#"{"nodes": [{"node_id": "0000"#.to_vec(),
        ),
    );
    let c = scripted_client(&dir).await?;
    match c.discover(CHAT, Default::default()).await {
        Ok(n) => Err(Stop::assertion(
            Some(200),
            format!("truncated JSON became {} node(s)", n.len()),
        )),
        Err(e) => {
            ensure(!e.code().as_str().is_empty(), Some(200), || {
                "untyped error".into()
            })?;
            Ok(Some(200))
        }
    }
}
