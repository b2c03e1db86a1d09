//! Read paths: DISCOVER (§8.4), ticketed dispatch (§8.5), BOOTSTRAP (§8.8), node
//! detail (§8.11), PROBE (§8.9), stats (§8.11) and health.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use iicp_proto::crypto::token::DispatchTicketClaims;
use iicp_proto::directory::{
    DiscoverQuery, DiscoverQueryError, DiscoverView, DispatchTicketRequest, PROMPT_MATERIAL_MEMBERS,
};
use iicp_proto::error::ErrorCode;
use iicp_proto::intent::check_intent_policy;
use iicp_proto::task::Qos;
use iicp_transport::http::server::{json, json_bytes, HttpError, Params, Request};
use rand_core::OsRng;
use serde_json::{json, Value};

use super::{
    client_ip, err, issuer, json_with, no_store, query_pairs, rate_limited, read_object, set_cache,
    typed, HandlerResult,
};
use crate::auth::iso8601;
use crate::cache::{Cached, Lookup};
use crate::net::{ip_literal, is_private_host, EndpointUrl};
use crate::probe::{self, ProbeFailure};
use crate::rank::Selection;
use crate::state::PROBATION_TASKS;
use crate::state::{Core, Counters, Node};

/// Scores below this are never returned (§9.1).
const MIN_SCORE: f64 = 0.1;

fn policy_refused(intent: &str) -> Result<(), HttpError> {
    check_intent_policy(intent).map_err(|refusal| {
        err(
            StatusCode::UNPROCESSABLE_ENTITY,
            refusal.code(),
            "intent is prohibited or high-risk and is not served by this directory",
        )
        .with_member("rule_id", refusal.rule_id)
        .with_member("reason", "policy_refusal")
    })
}

/// Eligible nodes matching `sel`, scored, best first (ties: most recently seen, then id),
/// from the dense scan index; only the winners' nodes are read (and cloned).
fn select(core: &Core, sel: &Selection<'_>, limit: usize) -> Vec<(Node, f64)> {
    let now = core.now_ms();
    let reg = core.read();
    reg.scan
        .select(sel, now, &core.settings, MIN_SCORE, limit)
        .into_iter()
        .filter_map(|(id, score)| Some((reg.nodes.get(id)?.clone(), score)))
        .collect()
}

/// `{"nodes": <nodes_json>, ...envelope}`: the envelope is per request (timing), the
/// node list may come from the cache already serialised.
fn splice_nodes(envelope: &Value, nodes_json: &str) -> Vec<u8> {
    let rest = serde_json::to_vec(envelope).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(rest.len() + nodes_json.len() + 16);
    out.extend_from_slice(b"{\"nodes\":");
    out.extend_from_slice(nodes_json.as_bytes());
    match rest.get(1..) {
        Some(tail) if tail != b"}" => {
            out.push(b',');
            out.extend_from_slice(tail);
        }
        _ => out.push(b'}'),
    }
    out
}

fn discover_error(e: DiscoverQueryError) -> HttpError {
    HttpError::validation(e.to_string())
}

/// Ranks and renders the nodes for `q` at `now` and stores the result under `key`.
fn compute_discover(core: &Core, q: &DiscoverQuery, key: String, now: u64) -> Arc<Cached> {
    let generation = core.discover_cache.generation();
    let sel = Selection {
        intent: &q.intent,
        region: q.region.as_deref(),
        model: q.model.as_deref().filter(|m| !m.is_empty()),
        min_reputation: q.min_reputation,
        max_multiplier: q.max_multiplier,
        min_quality_score: q.min_quality_score,
        cip_capable: q.cip_capable.unwrap_or(false),
        modality: q.modality.as_deref().filter(|m| !m.is_empty()),
        relay_capable: q.relay_capable.filter(|r| *r),
        realtime: q.qos == Some(Qos::Realtime),
        ..Selection::default()
    };
    let limit = usize::try_from(q.effective_limit()).unwrap_or(10);
    let public = q.view == Some(DiscoverView::Public);
    let picked = select(core, &sel, limit);
    let nodes: Vec<Value> = picked
        .iter()
        .map(|(n, score)| {
            if public {
                n.public_entry(*score, &q.intent, now, &core.settings)
            } else {
                n.entry(*score, &q.intent, now, &core.settings)
            }
        })
        .collect();
    let relay_available = picked
        .iter()
        .any(|(n, _)| n.reg.relay_capable.unwrap_or(false));
    let nodes_json = serde_json::to_string(&nodes).unwrap_or_else(|_| "[]".into());
    let (body, split) = render_discover(q, &nodes_json, nodes.len(), relay_available);
    core.discover_cache
        .put(key, generation, now, body, split, public)
}

/// The DISCOVER body for `nodes_json` (`{"nodes": …, …envelope}`), rendered once per
/// cached result with `query_ms` 0, and the offset of that `0`.
fn render_discover(
    q: &DiscoverQuery,
    nodes_json: &str,
    count: usize,
    relay_available: bool,
) -> (Vec<u8>, Option<usize>) {
    let public = q.view == Some(DiscoverView::Public);
    let mut envelope = json!({
        "count": count,
        "query_ms": 0,
        "intent": q.intent,
        "view": if public { "public" } else { "dispatch" },
        "data_class": if public { "public_presentation" } else { "route_dispatch" },
        "route_fields_present": !public,
        "relay_available": relay_available,
        "ticketed_dispatch_available": true,
        "dispatch_ticket_endpoint": "/v1/dispatch/ticket",
    });
    if public {
        envelope["redaction"] = json!({
            "node_id": "prefix_only",
            "route_fields": "omitted",
            "cx_public_key": "key_ready_only",
        });
    }
    let body = splice_nodes(&envelope, nodes_json);
    // the placeholder is searched for after the node list, in the envelope only
    const MARK: &[u8] = b"\"query_ms\":0";
    let from = b"{\"nodes\":".len() + nodes_json.len();
    let split = body
        .get(from..)
        .and_then(|rest| rest.windows(MARK.len()).position(|w| w == MARK))
        .map(|at| from + at + MARK.len() - 1);
    (body, split)
}

/// [`compute_discover`] on the blocking pool: scoring thousands of nodes takes
/// milliseconds, which must not stall the requests served from the cache meanwhile.
async fn compute_off_runtime(
    core: &Arc<Core>,
    q: &DiscoverQuery,
    key: &str,
) -> Result<Arc<Cached>, HttpError> {
    let (core, q, key) = (Arc::clone(core), q.clone(), key.to_owned());
    tokio::task::spawn_blocking(move || {
        let now = core.now_ms();
        compute_discover(&core, &q, key, now)
    })
    .await
    .map_err(|_| HttpError::internal())
}

/// The discover result for `q`: from the cache when fresh; a stale entry of the same
/// node set is served while one request refreshes it in the background; otherwise one
/// request per query computes it while the others wait for its result.
async fn discover_result(
    core: &Arc<Core>,
    q: &DiscoverQuery,
    key: &str,
) -> Result<Arc<Cached>, HttpError> {
    let now = core.now_ms();
    match core.discover_cache.lookup(key, now) {
        Lookup::Fresh(hit) => Ok(hit),
        Lookup::Stale(hit) => {
            if let Ok(guard) = core.discover_cache.compute_lock(key).try_lock_owned() {
                let (core, q, key) = (Arc::clone(core), q.clone(), key.to_owned());
                tokio::spawn(async move {
                    let _ = compute_off_runtime(&core, &q, &key).await;
                    drop(guard);
                });
            }
            Ok(hit)
        }
        Lookup::Miss => {
            let _guard = core.discover_cache.compute_lock(key).lock_owned().await;
            match core.discover_cache.lookup(key, core.now_ms()) {
                Lookup::Fresh(hit) => Ok(hit),
                Lookup::Stale(_) | Lookup::Miss => compute_off_runtime(core, q, key).await,
            }
        }
    }
}

pub(super) async fn discover(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    let started = Instant::now();
    let key = req.uri().query().unwrap_or("");
    // A fresh result of this very query string: the query parsed and passed the intent
    // policy when it was computed, so it is served without parsing it again.
    let cached = match core.discover_cache.lookup(key, core.now_ms()) {
        Lookup::Fresh(hit) => hit,
        _ => {
            let q = DiscoverQuery::from_query_pairs(query_pairs(&req)).map_err(discover_error)?;
            policy_refused(&q.intent)?;
            discover_result(&core, &q, key).await?
        }
    };
    Counters::bump(&core.counters.discovers);
    let query_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let body = cached.body_with(query_ms);
    let data_class = if cached.public {
        "public_presentation"
    } else {
        "route_dispatch"
    };
    let mut resp = json_bytes(StatusCode::OK, body);
    resp.headers_mut().insert(
        "x-iicp-discover-data-class",
        http::HeaderValue::from_static(data_class),
    );
    set_cache(
        &mut resp,
        "public, max-age=5, s-maxage=10, stale-while-revalidate=5",
    );
    Ok(resp)
}

pub(super) async fn dispatch_ticket(
    core: Arc<Core>,
    mut req: Request,
    _p: Params,
) -> HandlerResult {
    let body = read_object(&core, &mut req).await?;
    // Task material first, by member name only: the value is never read or echoed.
    if let Some(member) = body.keys().find_map(|k| {
        PROMPT_MATERIAL_MEMBERS
            .iter()
            .copied()
            .find(|m| k.eq_ignore_ascii_case(m))
    }) {
        return Err(HttpError::validation(format!(
            "dispatch ticket issuance is control-plane only; member `{member}` is not accepted"
        ))
        .with_member("reason", "prompt_material"));
    }
    let ticket_req: DispatchTicketRequest = typed(&body, "dispatch ticket")?;
    let intent = ticket_req
        .validate()
        .map_err(|e| HttpError::validation(e.to_string()))?;
    policy_refused(intent.as_str())?;
    let sel = Selection {
        intent: intent.as_str(),
        region: ticket_req.region.as_deref(),
        model: ticket_req.model.as_deref().filter(|m| !m.is_empty()),
        min_reputation: ticket_req.min_reputation,
        realtime: ticket_req.qos == Some(Qos::Realtime),
        exclude_prefixes: &ticket_req.exclude_node_id_prefixes,
        node_id: ticket_req.node_id.as_deref(),
        node_id_prefix: ticket_req.node_id_prefix.as_deref(),
        ..Selection::default()
    };
    let Some((node, score)) = select(&core, &sel, 1).into_iter().next() else {
        return Err(err(
            StatusCode::NOT_FOUND,
            ErrorCode::NoRouteAvailable,
            "no eligible node for this intent",
        ));
    };
    let now_secs = core.clock.now_secs();
    let iss = issuer(&core, &req);
    let mut claims = DispatchTicketClaims::new(
        &mut OsRng,
        &iss,
        &node.record.node_id,
        intent.as_str(),
        now_secs,
        core.settings.ticket_ttl_secs,
    );
    let route = node.entry(score, intent.as_str(), core.now_ms(), &core.settings);
    // the ticket binds the route's manifest (§8.5 `policy_manifest_sha256`)
    claims.policy_manifest_sha256 = route
        .pointer("/node_policy_manifest/verification/canonical_sha256")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ticket = core.key.issue(&claims).map_err(|_| HttpError::internal())?;
    Counters::bump(&core.counters.tickets);
    let body = json!({
        "ticket": ticket,
        "ticket_id_prefix": claims.jti.get(..12).unwrap_or(&claims.jti),
        "expires_at": claims.exp,
        "intent": intent.as_str(),
        "node_id": node.record.node_id,
        "node_id_prefix": node.record.node_id.get(..8).unwrap_or(&node.record.node_id),
        "route": route,
        "algorithm": "ed25519",
        "data_class": "ticketed_route_dispatch",
        "route_fields_present": true,
        "prompt_payload_accepted": false,
    });
    Ok(json_with(
        StatusCode::CREATED,
        &body,
        &[
            ("cache-control", "no-store"),
            ("x-iicp-discover-data-class", "ticketed_route_dispatch"),
        ],
    ))
}

pub(super) async fn bootstrap(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    let mut limit = 5usize;
    for (k, v) in query_pairs(&req) {
        if k == "limit" {
            limit = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| HttpError::validation("`limit` must be a positive integer"))?
                .min(50);
        }
    }
    let now = core.now_ms();
    let s = &core.settings;
    let mut peers: Vec<(u64, Value)> = core
        .read()
        .nodes
        .values()
        .filter(|n| n.is_fresh(now, s) && n.record.state.available)
        .map(|n| {
            (
                n.record.state.last_seen_ms,
                json!({
                    "node_id": n.record.node_id,
                    "endpoint": n.reg.endpoint,
                    "region": n.reg.region,
                    "last_seen": iso8601(n.record.state.last_seen_ms / 1000),
                }),
            )
        })
        .collect();
    peers.sort_by_key(|p| std::cmp::Reverse(p.0));
    let peers: Vec<Value> = peers.into_iter().take(limit).map(|(_, v)| v).collect();
    Ok(json(
        StatusCode::OK,
        &json!({"count": peers.len(), "peers": peers}),
    ))
}

pub(super) async fn node_detail(core: Arc<Core>, _req: Request, p: Params) -> HandlerResult {
    let id = p.get("id").unwrap_or_default();
    let node = core
        .node(id)
        .ok_or_else(|| HttpError::not_found("node not found"))?;
    let now = core.now_ms();
    let s = &core.settings;
    let intent = node
        .reg
        .capabilities
        .first()
        .map(|c| c.intent.clone())
        .unwrap_or_default();
    let sel = Selection {
        intent: &intent,
        ..Selection::default()
    };
    let mut v = node.entry(node.score(&sel, now), &intent, now, s);
    let (_, _, health) = node.health(now, s);
    if let Value::Object(m) = &mut v {
        m.insert(
            "probation".into(),
            Value::Bool(node.completed_tasks() < PROBATION_TASKS),
        );
        m.insert("health".into(), health);
        m.insert(
            "public_key".into(),
            node.reg
                .public_key
                .clone()
                .map_or(Value::Null, Value::String),
        );
        m.insert(
            "status".into(),
            Value::String(
                if node.is_fresh(now, s) {
                    "active"
                } else {
                    "dormant"
                }
                .to_owned(),
            ),
        );
        m.insert("eligible".into(), Value::Bool(node.is_eligible(now, s)));
        m.insert(
            "registered_at".into(),
            Value::String(iso8601(node.record.registered_at_ms / 1000)),
        );
        m.insert(
            "endpoint_verified".into(),
            Value::Bool(node.record.state.probe.verified),
        );
        m.insert(
            "liveness_challenges_passed".into(),
            Value::from(node.record.state.challenges_passed),
        );
    }
    Ok(json(StatusCode::OK, &v))
}

/// `GET /v1/registry/nodes/{id-or-prefix}` (§8.1): the presentation-safe view of one
/// live node, as the SDK recovery loop reads it; 404 when absent or dormant.
pub(super) async fn registry_node(core: Arc<Core>, _req: Request, p: Params) -> HandlerResult {
    let prefix = p.get("prefix").unwrap_or_default().to_ascii_lowercase();
    if prefix.len() < 8 || prefix.len() > 128 {
        return Err(HttpError::validation(
            "node id prefix must be 8-128 characters",
        ));
    }
    let now = core.now_ms();
    let s = &core.settings;
    let node = {
        let reg = core.read();
        let mut matches: Vec<&Node> = reg
            .nodes
            .values()
            .filter(|n| {
                n.record.node_id.to_ascii_lowercase().starts_with(&prefix) && n.is_fresh(now, s)
            })
            .collect();
        matches.sort_by(|a, b| {
            b.record
                .state
                .last_seen_ms
                .cmp(&a.record.state.last_seen_ms)
        });
        matches.first().map(|n| (*n).clone())
    }
    .ok_or_else(|| HttpError::not_found("node not found"))?;
    let (_, _, health) = node.health(now, s);
    let intent = node
        .reg
        .capabilities
        .first()
        .map(|c| c.intent.clone())
        .unwrap_or_default();
    let entry = node.public_entry(0.0, &intent, now, s);
    let mut v = json!({
        "node_id_prefix": node.record.node_id.get(..8).unwrap_or(&node.record.node_id),
        "region": node.reg.region,
        "completed_tasks": node.completed_tasks(),
        "probation": node.completed_tasks() < PROBATION_TASKS,
        "health": health,
        "last_seen": iso8601(node.record.state.last_seen_ms / 1000),
        "reputation_score": node.record.state.reputation,
        "exposure_mode": node.reg.exposure_mode,
        "observed_latency_ms": node.record.state.probe.latency_ms,
        "status": "active",
    });
    for k in [
        "reputation_tier",
        "transport",
        "operator_display_name",
        "operator_fingerprint",
        "route_evidence",
        "browser_usable",
        "address_family",
        "key_ready",
    ] {
        if let Some(x) = entry.get(k) {
            v[k] = x.clone();
        }
    }
    Ok(json(StatusCode::OK, &v))
}

fn probe_refusal() -> HandlerResult {
    Ok(json(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"reachable": false, "latency_ms": Value::Null, "error": "private_address"}),
    ))
}

pub(super) async fn probe(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    let (mut host, mut port) = (None, None);
    for (k, v) in query_pairs(&req) {
        match k.as_str() {
            "host" if host.is_none() => host = Some(v),
            "port" if port.is_none() => port = Some(v),
            _ => {}
        }
    }
    let host = host
        .map(|h| {
            h.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty() && h.len() <= 253)
        .ok_or_else(|| HttpError::validation("`host` is required"))?;
    let port = port
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p >= 1024)
        .ok_or_else(|| HttpError::validation("`port` must be an integer in 1024..=65535"))?;
    let url = EndpointUrl {
        scheme: "tcp".to_owned(),
        ip: ip_literal(&host),
        host,
        port,
    };
    let private_ok = core.settings.private_mesh;
    if !private_ok && is_private_host(&url) {
        return probe_refusal();
    }
    if let Err(retry_ms) = core
        .probe_limiter
        .check(client_ip(&core, &req), core.now_ms())
    {
        return Ok(rate_limited("rate_limited", retry_ms));
    }
    let timeout = Duration::from_secs(5);
    let addrs = match probe::resolve_checked(&url, private_ok, timeout).await {
        Ok(a) => a,
        Err(ProbeFailure::PrivateAddress) => return probe_refusal(),
        Err(ProbeFailure::Unreachable) => {
            return Ok(no_store(
                StatusCode::OK,
                &json!({"reachable": false, "latency_ms": Value::Null, "error": "unreachable"}),
            ))
        }
    };
    let body = match probe::tcp(&addrs, timeout).await {
        Some(ms) => json!({"reachable": true, "latency_ms": ms}),
        None => json!({"reachable": false, "latency_ms": Value::Null, "error": "unreachable"}),
    };
    Ok(no_store(StatusCode::OK, &body))
}

pub(super) async fn stats(core: Arc<Core>, _req: Request, _p: Params) -> HandlerResult {
    let now = core.now_ms();
    let s = &core.settings;
    let (total, active, eligible, verified, by_lang) = {
        let reg = core.read();
        let mut by_lang = serde_json::Map::new();
        let (mut active, mut eligible, mut verified) = (0u64, 0u64, 0u64);
        for n in reg.nodes.values() {
            if n.is_fresh(now, s) {
                active += 1;
                let lang = n
                    .reg
                    .sdk_language
                    .clone()
                    .unwrap_or_else(|| "unknown".to_owned());
                let lang: String = lang.chars().take(32).collect();
                let c = by_lang.entry(lang).or_insert(json!(0));
                *c = json!(c.as_u64().unwrap_or(0) + 1);
            }
            if n.is_eligible(now, s) {
                eligible += 1;
            }
            if n.record.state.probe.verified {
                verified += 1;
            }
        }
        (reg.nodes.len(), active, eligible, verified, by_lang)
    };
    let health = if active == 0 {
        0.0
    } else {
        eligible as f64 / active as f64
    };
    let label = match health {
        h if active == 0 && h == 0.0 => "idle",
        h if h >= 0.85 => "healthy",
        h if h >= 0.65 => "degraded",
        h if h >= 0.40 => "impaired",
        _ => "critical",
    };
    let c = &core.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Ok(json(
        StatusCode::OK,
        &json!({
            "server": {
                "active_nodes": active,
                "registered_nodes": total,
                "eligible_nodes": eligible,
                "verified_endpoints": verified,
                "version": env!("CARGO_PKG_VERSION"),
                "implementation": "iicp-rs-directory",
                "uptime_s": now.saturating_sub(core.started_at_ms) / 1000,
            },
            "credit_schedule": {
                "formula": "credits = tokens_used / tokens_per_credit * tier_weight",
                "tokens_per_credit": 1000,
                "tier_weights": {"sub_1b": 0.05, "7b": 1.0, "13b": 2.0, "30b": 6.5, "70b": 32.0, "100b_plus": 75.0},
                "evaluation_grant": {"credits": 5, "interval_seconds": 21600},
                "burn_rate_pct": 0.0,
            },
            "mesh_health": {
                "score": (health * 100.0).round() / 100.0,
                "label": label,
                "window": format!("{}s", s.liveness_window_ms / 1000),
                "active_nodes": active,
                "eligible_nodes": eligible,
            },
            "directory_health": {
                "status": "ok",
                "store_errors": load(&c.store_errors),
                "registrations": load(&c.registrations),
                "heartbeats": load(&c.heartbeats),
                "discovers": load(&c.discovers),
                "dispatch_tickets": load(&c.tickets),
                "consumer_tokens": load(&c.consumer_tokens),
                "receipts": load(&c.receipts),
            },
            "sdk_adoption": {"by_language": by_lang},
            "credits_extension": true,
        }),
    ))
}

pub(super) async fn health(core: Arc<Core>, _req: Request, _p: Params) -> HandlerResult {
    let now = core.now_ms();
    let active = core
        .read()
        .nodes
        .values()
        .filter(|n| n.is_fresh(now, &core.settings))
        .count();
    Ok(json(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "service": "iicp-directory",
            "version": env!("CARGO_PKG_VERSION"),
            "active_nodes": active,
            "directory_key": core.key.public_key().to_hex(),
            "private_mesh": core.settings.private_mesh,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-rendered body with `query_ms` spliced in is the body rendered whole.
    #[test]
    fn a_cached_body_is_the_body_rendered_per_request() {
        let nodes = r#"[{"node_id":"a","query_ms":0,"score":0.5}]"#;
        for query in [
            "intent=urn:iicp:intent:llm:chat:v1",
            "intent=urn:iicp:intent:llm:chat:v1&view=public",
        ] {
            let q = DiscoverQuery::from_query_pairs(iicp_proto::endpoint::query_pairs(query, 64))
                .expect("a valid query");
            let (body, split) = render_discover(&q, nodes, 1, true);
            let cache = crate::cache::DiscoverCache::default();
            let public = q.view == Some(DiscoverView::Public);
            let hit = cache.put(query.into(), cache.generation(), 1, body, split, public);
            for ms in [0u64, 7, 1234] {
                let mut envelope = json!({
                    "count": 1,
                    "query_ms": ms,
                    "intent": q.intent,
                    "view": if public { "public" } else { "dispatch" },
                    "data_class": if public { "public_presentation" } else { "route_dispatch" },
                    "route_fields_present": !public,
                    "relay_available": true,
                    "ticketed_dispatch_available": true,
                    "dispatch_ticket_endpoint": "/v1/dispatch/ticket",
                });
                if public {
                    envelope["redaction"] = json!({
                        "node_id": "prefix_only",
                        "route_fields": "omitted",
                        "cx_public_key": "key_ready_only",
                    });
                }
                assert_eq!(
                    hit.body_with(ms),
                    splice_nodes(&envelope, nodes),
                    "{query} {ms}"
                );
            }
        }
    }
}
