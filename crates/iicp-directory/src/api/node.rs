//! Node lifecycle: REGISTER (§8.2, token rotation §8.2.4), DEREGISTER (§8.6),
//! HEARTBEAT with the HMAC challenge (§8.3), `GET /v1/me` (§8.7).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use iicp_proto::crypto::mac::verify_challenge_response;
use iicp_proto::crypto::manifest::{self, Status};
use iicp_proto::crypto::sign::{verify_delegation_for_node, Delegation, OperatorPublicKey};
use iicp_proto::directory::{DeregisterRequest, HeartbeatRequest, RegisterRequest};
use iicp_proto::error::ErrorCode;
use iicp_proto::ids::uuid_v4;
use iicp_proto::secret::Secret;
use iicp_transport::http::server::{json, HttpError, Params, Request};
use rand_core::OsRng;
use serde_json::{json, Map, Value};

use super::{
    authenticate, client_ip, err, rate_limited, read_object, store_failed, typed, unknown_node,
    HandlerResult,
};
use crate::auth::{iso8601, random_hex, random_token, token_hash, token_matches, JWT_TTL_SECS};
use crate::net::{is_private_host, parse_url, HTTP_SCHEMES, NATIVE_SCHEMES};
use crate::probe::{self, ProbeFailure};
use crate::state::{Core, Counters, Node};
use crate::store::KeyStatus;
use crate::store::{NodeCredentials, NodeRecord, NodeState, StateWrite};
use crate::sweep::{next_probe_state, short};

/// Members never stored from a REGISTER body.
const REGISTER_SECRETS: [&str; 4] = ["current_node_token", "node_token", "node_hmac_key", "token"];
/// Members of a heartbeat kept only as typed state (or secrets), not in `heartbeat`.
const HEARTBEAT_SKIP: [&str; 12] = [
    "node_id",
    "node_token",
    "challenge_response",
    "load",
    "active_jobs",
    "available",
    "max_concurrent",
    "metrics",
    "metrics_batch_id",
    "sla_p95_ms",
    "identity_signature",
    "token",
];
/// Largest operator-provisioned `node_hmac_key`.
const MAX_HMAC_KEY_LEN: usize = 256;

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn e035(message: &str) -> HttpError {
    err(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::E035,
        message.to_owned(),
    )
}

pub(super) async fn register(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    let ip = client_ip(&core, &req);
    if let Err(retry_ms) = core.register_limiter.check(ip, core.now_ms()) {
        return Ok(rate_limited("IICP-E034", retry_ms));
    }
    let mut body = read_object(&core, &mut req).await?;
    let reg: RegisterRequest = typed(&body, "REGISTER")?;
    reg.validate()
        .map_err(|e| HttpError::validation(e.to_string()))?;
    check_policy_manifest(&core, &reg)?;
    let s = &core.settings;

    // Endpoint policy (§8.2, DESIGN §4.12).
    let url = parse_url(&reg.endpoint, HTTP_SCHEMES).map_err(|_| {
        HttpError::validation("`endpoint` must be an http(s) URL with a host and no credentials")
    })?;
    if !s.private_mesh && is_private_host(&url) {
        return Err(e035(
            "`endpoint` is not publicly routable (loopback, private or local address)",
        ));
    }
    if let Some(te) = reg.transport_endpoint.as_deref().filter(|t| !t.is_empty()) {
        let t = parse_url(te, NATIVE_SCHEMES).map_err(|_| {
            HttpError::validation(
                "`transport_endpoint` must be iicp://host:port or iicpsec://host:port",
            )
        })?;
        if !s.private_mesh && is_private_host(&t) {
            return Err(e035("`transport_endpoint` is not publicly routable"));
        }
    }
    if let Some(id) = reg.node_id.as_deref() {
        if !valid_node_id(id) {
            return Err(HttpError::validation(
                "`node_id` must be 1-128 characters of [A-Za-z0-9._-]",
            ));
        }
    }
    if let Some(key) = reg.node_hmac_key.as_ref() {
        if key.expose().len() > MAX_HMAC_KEY_LEN {
            return Err(HttpError::validation("`node_hmac_key` is too long"));
        }
    }

    // Liveness probe before any lock (it may take up to probe_timeout).
    let probe_timeout = Duration::from_millis(s.probe_timeout_ms);
    let probe_result = if s.liveness_probe {
        let r = probe::health(&core.http, &reg.endpoint, probe_timeout).await;
        if r == Err(ProbeFailure::PrivateAddress) {
            return Err(e035("`endpoint` resolves to a non-routable address"));
        }
        Some(r)
    } else {
        None
    };

    let node_id = reg
        .node_id
        .clone()
        .unwrap_or_else(|| uuid_v4(&mut OsRng).to_string());

    // Ownership rules for a known node (§8.2.4), decided on a snapshot; the old
    // endpoint's probe (for a route change without proof) also runs outside the lock.
    let snapshot = core.node(&node_id);
    let presented = reg.current_node_token.as_ref().filter(|t| !t.is_empty());
    let mut old_route_dead = false;
    if let Some(old) = &snapshot {
        let proof = presented
            .is_some_and(|t| token_matches(t.expose(), &old.record.credentials.token_hash));
        let route_changed = old.reg.endpoint != reg.endpoint
            || old.reg.transport_endpoint != reg.transport_endpoint
            || old.reg.relay_endpoint != reg.relay_endpoint;
        if !proof && route_changed && old.reg.cx_public_key.is_none() {
            old_route_dead = probe::health(&core.http, &old.reg.endpoint, probe_timeout)
                .await
                .is_err();
        }
    }

    let _guard = core.node_lock(&node_id).lock().await;
    // With a shared store another directory process may know this node better (it
    // registered or rotated its token there): decide on the stored truth.
    if core.store.shared() {
        core.refresh_node_locked(&node_id)
            .await
            .map_err(|e| store_failed(&core, &e))?;
    }
    let existing = core.node(&node_id);
    if let Some(old) = &existing {
        let proof = presented
            .is_some_and(|t| token_matches(t.expose(), &old.record.credentials.token_hash));
        if presented.is_some() && !proof {
            return Err(err(
                StatusCode::FORBIDDEN,
                ErrorCode::E050,
                "`current_node_token` does not prove ownership of this node",
            ));
        }
        if !proof {
            if old.reg.cx_public_key.is_some() {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    ErrorCode::E049,
                    "this node has a cx_public_key on record; re-registration needs `current_node_token`",
                ));
            }
            let route_changed = old.reg.endpoint != reg.endpoint
                || old.reg.transport_endpoint != reg.transport_endpoint
                || old.reg.relay_endpoint != reg.relay_endpoint;
            let same_snapshot = snapshot
                .as_ref()
                .is_some_and(|s| s.reg.endpoint == old.reg.endpoint);
            if route_changed && !(old_route_dead && same_snapshot) {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    ErrorCode::E050,
                    "changing endpoint, transport_endpoint or relay_endpoint needs `current_node_token`",
                ));
            }
        }
    } else if core.read().nodes.len() >= s.max_nodes {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TemporarilyUnavailable,
            "directory is full",
        ))
        .map_err(|e| e.with_retry_after(Duration::from_secs(60)));
    }

    let now = core.now_ms();
    let node_token = random_token();
    let proxy_token = random_token();
    // The HMAC key stays stable across re-registrations of a known node (the
    // reference SDK nodes keep the first key they are given), unless the node
    // provisions its own.
    let hmac_key = reg
        .node_hmac_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| {
            existing
                .as_ref()
                .map(|o| o.record.credentials.hmac_key.clone())
        })
        .unwrap_or_else(random_token);
    let hmac_changed = existing
        .as_ref()
        .is_some_and(|o| o.record.credentials.hmac_key != hmac_key);
    let token_hash_now = token_hash(node_token.expose());

    let mut state = match &existing {
        Some(old) => {
            let mut st = old.record.state.clone();
            st.last_seen_ms = now;
            st.available = true;
            if hmac_changed {
                st.challenge = None;
            }
            if old.reg.endpoint != reg.endpoint {
                st.probe = Default::default();
            }
            st
        }
        None => NodeState::new(now),
    };
    state.observed_ip = Some(ip.to_string());
    if let Some(result) = probe_result {
        state.probe = next_probe_state(&state.probe, result, now, s);
    }
    // Operator delegation (§17.2): bind on success, ignore on failure.
    state.operator_pub = reg
        .operator_delegation
        .as_ref()
        .and_then(|d| serde_json::from_value::<Delegation>(d.clone()).ok())
        .filter(|d| verify_delegation_for_node(d, &node_id, core.clock.now_secs()).is_ok())
        // a revoked or superseded operator key binds no node
        .filter(|d| {
            OperatorPublicKey::from_operator_id(&d.operator_pub).is_ok_and(|k| {
                !core
                    .read()
                    .keys
                    .contains_key(&manifest::public_key_sha256(&k))
            })
        })
        .map(|d| d.operator_pub);

    for k in REGISTER_SECRETS {
        body.remove(k);
    }
    body.insert("node_id".into(), Value::String(node_id.clone()));
    let record = NodeRecord {
        node_id: node_id.clone(),
        registration: Value::Object(body),
        endpoint: reg.endpoint.clone(),
        transport_endpoint: reg.transport_endpoint.clone(),
        region: reg.region.clone(),
        cx_public_key: reg
            .cx_public_key
            .as_ref()
            .and_then(|k| serde_json::to_value(k).ok()),
        credentials: NodeCredentials {
            token_hash: token_hash_now.clone(),
            proxy_token_hash: token_hash(proxy_token.expose()),
            hmac_key: hmac_key.clone(),
        },
        registered_at_ms: existing.as_ref().map_or(now, |o| o.record.registered_at_ms),
        updated_at_ms: now,
        state,
        rev: 0,
    };
    let mut node = core
        .node_from_record(record.clone())
        .await
        .ok_or_else(|| HttpError::validation("registration could not be stored"))?;
    node.record.rev = core
        .store
        .put_node(record)
        .await
        .map_err(|e| store_failed(&core, &e))?;
    let verified = node.record.state.probe.verified;
    let lifetime_jobs = node.completed_tasks();
    core.write().insert(node);
    core.discover_cache.invalidate();
    drop(_guard);
    Counters::bump(&core.counters.registrations);
    tracing::info!(
        node = %short(&node_id),
        recovered = existing.is_some(),
        rotated = presented.is_some(),
        endpoint_verified = verified,
        "node registered"
    );

    let now_secs = core.clock.now_secs();
    let jwt = core.jwt.issue(&node_id, &token_hash_now, now_secs);
    let ack = json!({
        "node_id": node_id,
        "node_token": node_token.expose(),
        "node_hmac_key": hmac_key.expose(),
        "proxy_token": proxy_token.expose(),
        "jwt_token": jwt.as_ref().map(Secret::expose),
        "jwt_expires_at": iso8601(now_secs.saturating_add(JWT_TTL_SECS)),
        "expires_at": Value::Null,
        "directory": s.name,
        "observed_source_ip": ip.to_string(),
        "recovered": existing.is_some(),
        "lifetime_jobs": lifetime_jobs,
        "public_reachable": verified,
        "endpoint_verified": verified,
        "next_heartbeat_ms": s.heartbeat_interval_ms,
    });
    Ok(super::no_store(StatusCode::CREATED, &ack))
}

pub(super) async fn deregister(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    let body = read_object(&core, &mut req).await?;
    let d: DeregisterRequest = typed(&body, "DEREGISTER")?;
    if d.node_id.is_empty() {
        return Err(HttpError::validation("`node_id` is required"));
    }
    if !known_node(&core, &d.node_id).await? {
        return Err(unknown_node());
    }
    let node_id = authenticate(&core, req.headers(), Some(&d.node_id), None).await?;
    let _guard = core.node_lock(&node_id).lock().await;
    core.store
        .delete_node(node_id.clone())
        .await
        .map_err(|e| store_failed(&core, &e))?;
    core.write().remove(&node_id);
    core.discover_cache.invalidate();
    tracing::info!(node = %short(&node_id), "node deregistered");
    Ok(json(
        StatusCode::OK,
        &json!({"deregistered": true, "node_id": node_id}),
    ))
}

pub(super) async fn heartbeat(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    // parsed once: the typed request is read from the same document the extras come from
    let body = super::read_object_value(&core, &mut req).await?;
    let hb: HeartbeatRequest = super::typed_value(&body, "HEARTBEAT")?;
    let Value::Object(body) = &body else {
        return Err(HttpError::validation("request body must be a JSON object"));
    };
    if hb.node_id.is_empty() {
        return Err(HttpError::validation("`node_id` is required"));
    }
    if !known_node(&core, &hb.node_id).await? {
        return Err(unknown_node());
    }
    let body_token = hb.node_token.as_ref().map(Secret::expose);
    let node_id = authenticate(&core, req.headers(), Some(&hb.node_id), body_token).await?;
    hb.validate()
        .map_err(|e| HttpError::validation(e.to_string()))?;
    let ip = client_ip(&core, &req);
    let s = &core.settings;

    let _guard = core.node_lock(&node_id).lock().await;
    // With a shared store, a stale working copy (another directory process took the
    // last heartbeat, and with it sent the challenge) is reloaded and the heartbeat
    // applied again: on a challenge mismatch, and when the conditional write finds a
    // newer revision.
    let mut reloads = 0;
    let (challenge, reputation, challenge_verified, batch_accepted) = loop {
        // the new state is computed on the working copy in place (no copy of the node)
        let (rev, applied) = {
            let reg = core.read();
            let node = reg.nodes.get(&node_id).ok_or_else(unknown_node)?;
            (node.record.rev, apply_heartbeat(&core, node, &hb, body, ip))
        };
        match applied {
            Ok((state, verified, batch)) => {
                match core
                    .store
                    .put_state_at(node_id.clone(), state.clone(), rev)
                    .await
                    .map_err(|e| store_failed(&core, &e))?
                {
                    StateWrite::Written { rev } => {
                        let challenge = state.challenge.clone().unwrap_or_default();
                        let reputation = state.reputation;
                        core.replace_state(&node_id, state, rev);
                        break (challenge, reputation, verified, batch);
                    }
                    StateWrite::Conflict if reloads < MAX_RELOADS => {}
                    StateWrite::Conflict => return Err(busy()),
                    _ => {
                        core.write().remove(&node_id);
                        core.discover_cache.invalidate();
                        return Err(unknown_node());
                    }
                }
            }
            // The only refusal: the challenge response did not verify.
            Err(_) if core.store.shared() && reloads == 0 => {
                tracing::debug!(node = %short(&node_id), "challenge response did not verify on the working copy; reloading the node");
            }
            Err(e) => {
                tracing::warn!(node = %short(&node_id), "heartbeat challenge response did not verify");
                return Err(e);
            }
        }
        reloads += 1;
        core.refresh_node_locked(&node_id)
            .await
            .map_err(|e| store_failed(&core, &e))?;
        // The reloaded node may have rotated its token meanwhile: check it again.
        super::check_credential(&core, req.headers(), Some(&node_id), body_token)?;
    };
    drop(_guard);
    Counters::bump(&core.counters.heartbeats);

    Ok(json(
        StatusCode::OK,
        &HeartbeatAck {
            challenge: &challenge,
            challenge_verified: challenge_verified.unwrap_or(false),
            metrics_batch_accepted: batch_accepted.as_deref(),
            next_heartbeat_ms: s.heartbeat_interval_ms,
            ok: true,
            reputation_epoch: "v1",
            reputation_model: "iicp-rs-beta-v1",
            reputation_score: reputation,
        },
    ))
}

/// The PONG of a heartbeat (§8.3), serialised without an intermediate JSON map; the
/// members in the order the map gave them (sorted by name).
#[derive(serde::Serialize)]
struct HeartbeatAck<'a> {
    challenge: &'a str,
    challenge_verified: bool,
    metrics_batch_accepted: Option<&'a str>,
    next_heartbeat_ms: u64,
    ok: bool,
    reputation_epoch: &'static str,
    reputation_model: &'static str,
    reputation_score: f64,
}

pub(super) async fn me(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    let node_id = authenticate(&core, req.headers(), None, None).await?;
    let node = core.node(&node_id).ok_or_else(unknown_node)?;
    Ok(super::no_store(
        StatusCode::OK,
        &json!({
            "node_id": node_id,
            "observed_source_ip": node.record.state.observed_ip,
            "endpoint": node.reg.endpoint,
        }),
    ))
}

/// Reloads of a node one heartbeat may take before it answers 503 (another directory
/// process keeps writing the node).
const MAX_RELOADS: usize = 3;

/// 503 for a heartbeat whose node other directory processes keep writing.
fn busy() -> HttpError {
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TemporarilyUnavailable,
        "the node is being updated through another directory instance; retry",
    )
    .with_retry_after(Duration::from_secs(1))
}

/// Whether `node_id` is registered; with a shared store, a node missing from the working
/// copy is looked up in the store (it may have registered through another directory
/// process a moment ago).
async fn known_node(core: &Core, node_id: &str) -> Result<bool, HttpError> {
    if core.read().nodes.contains_key(node_id) {
        return Ok(true);
    }
    if core.store.shared() && valid_node_id(node_id) {
        core.refresh_node(node_id)
            .await
            .map_err(|e| store_failed(core, &e))?;
        return Ok(core.node(node_id).is_some());
    }
    Ok(false)
}

/// The state after heartbeat `hb` on `node` (its challenge response checked), whether
/// the challenge verified, and the accepted metrics batch.
fn apply_heartbeat(
    core: &Core,
    node: &Node,
    hb: &HeartbeatRequest,
    body: &Map<String, Value>,
    ip: std::net::IpAddr,
) -> Result<(NodeState, Option<bool>, Option<String>), HttpError> {
    let mut state = node.record.state.clone();
    let mut challenge_verified = None;
    if let Some(response) = hb.challenge_response.as_deref() {
        if let Some(challenge) = state.challenge.as_deref() {
            let ok = verify_challenge_response(
                node.record.credentials.hmac_key.expose(),
                challenge,
                response,
            );
            if !ok {
                return Err(err(
                    StatusCode::UNAUTHORIZED,
                    "invalid_challenge_response",
                    "challenge_response does not match HMAC-SHA256(node_hmac_key, challenge)",
                )
                .with_member("reason", "challenge_mismatch"));
            }
            state.challenges_passed = state.challenges_passed.saturating_add(1);
            challenge_verified = Some(true);
        }
    }
    let now = core.now_ms();
    state.last_seen_ms = now;
    state.available = hb.available.unwrap_or(true);
    state.load = hb.load;
    state.active_jobs = hb.active_jobs.unwrap_or(0);
    if let Some(m) = hb.max_concurrent.filter(|m| (1..=256).contains(m)) {
        state.max_concurrent = Some(m);
    }
    if hb.sla_p95_ms.is_some() {
        state.sla_p95_ms = hb.sla_p95_ms;
    }
    state.observed_ip = Some(ip.to_string());
    let mut batch_accepted = None;
    if let (Some(m), Some(batch)) = (hb.metrics.as_ref(), hb.metrics_batch_id.as_ref()) {
        if state.last_metrics_batch.as_deref() != Some(batch.as_str()) {
            let ok = m.tasks_success.unwrap_or(0).min(1_000_000);
            let bad = m.tasks_failed.unwrap_or(0).min(1_000_000);
            state.tasks_success = state.tasks_success.saturating_add(ok);
            state.tasks_failed = state.tasks_failed.saturating_add(bad);
            if let Some(lat) = m.avg_latency_ms.filter(|l| l.is_finite() && *l >= 0.0) {
                state.avg_latency_ms = Some(lat);
            }
            // Beta prior of 5 observations at 0.5 (§9.7: default 0.5).
            let (s_, f_) = (state.tasks_success as f64, state.tasks_failed as f64);
            state.reputation = ((s_ + 2.5) / (s_ + f_ + 5.0)).clamp(0.0, 1.0);
            state.last_metrics_batch = Some(batch.clone());
        }
        batch_accepted = Some(batch.clone());
    }
    let mut extras = Map::new();
    for (k, v) in body.iter().take(64) {
        if !HEARTBEAT_SKIP.contains(&k.as_str()) {
            extras.insert(k.clone(), v.clone());
        }
    }
    state.heartbeat = extras;
    state.challenge = Some(random_hex(16));
    Ok((state, challenge_verified, batch_accepted))
}

/// A REGISTER's `policy_manifest` (PROTOCOL.md §17.4, ADR 0016): well-formed, and when
/// signed, valid now. Invalid and expired signed manifests are refused (dir §3.1);
/// unsigned ones are accepted as self-attested.
fn check_policy_manifest(core: &Core, reg: &RegisterRequest) -> Result<(), HttpError> {
    let Some(m) = reg.policy_manifest.as_ref().filter(|m| !m.is_null()) else {
        return Ok(());
    };
    manifest::validate(m).map_err(|e| HttpError::validation(e.to_string()))?;
    let Some(object) = m.as_object() else {
        return Ok(());
    };
    let v = manifest::verify(object, core.clock.now_secs());
    // a key in the lifecycle registry signs nothing new (dir §3.4)
    if let Some(sha) = v.public_key_sha256.as_deref() {
        if let Some(k) = core.read().keys.get(sha) {
            let status = match k.status {
                KeyStatus::Revoked => Status::SignedRevoked,
                KeyStatus::Superseded => Status::SignedSuperseded,
            };
            return Err(HttpError::validation(format!(
                "`policy_manifest` refused: {} (the signing key was {} by its operator)",
                status.as_str(),
                k.status.as_str()
            )));
        }
    }
    match v.status {
        Status::SignedInvalid | Status::SignedExpired => Err(HttpError::validation(format!(
            "`policy_manifest` refused: {}{}",
            v.status.as_str(),
            v.error.map(|e| format!(" ({e})")).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}
