//! Directory-signed tokens and the operator surface: `GET /v1/directory-key` and
//! `POST /v1/consumer-token` (§8.10), `POST /v1/relay/ticket` (§14.6),
//! `POST /v1/operator/rename` (§17.3).

use std::sync::Arc;

use http::StatusCode;
use iicp_proto::crypto::sign::{verify_rename, Rename, SignatureError};
use iicp_proto::crypto::token::{ConsumerTokenClaims, RelayTicketClaims, WILDCARD};
use iicp_proto::directory::ConsumerTokenRequest;
use iicp_proto::error::ErrorCode;
use iicp_proto::intent::Intent;
use iicp_transport::http::server::{HttpError, Params, Request};
use rand_core::OsRng;
use serde_json::json;

use super::{
    authenticate, client_ip, err, issuer, no_store, rate_limited, read_object, store_failed, typed,
    unauthorized, HandlerResult,
};
use crate::state::{Core, Counters};
use crate::sweep::short;
use crate::view::operator_fingerprint;

pub(super) async fn directory_key(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    if let Err(retry_ms) = core
        .key_limiter
        .check(client_ip(&core, &req), core.now_ms())
    {
        return Ok(rate_limited("rate_limited", retry_ms));
    }
    let public = core.key.public_key().to_hex();
    let mut resp = iicp_transport::http::server::json(
        StatusCode::OK,
        &json!({
            "public_key": public,
            "algorithm": "ed25519",
            "key_id": public.get(..16).unwrap_or(&public),
            "issuer": issuer(&core, &req),
        }),
    );
    super::set_cache(&mut resp, "public, max-age=300");
    Ok(resp)
}

pub(super) async fn consumer_token(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    let caller = authenticate(&core, req.headers(), None, None).await?;
    if let Err(retry_ms) = core
        .consumer_limiter
        .check(client_ip(&core, &req), core.now_ms())
    {
        return Ok(rate_limited("rate_limited", retry_ms));
    }
    let body = read_object(&core, &mut req).await?;
    let r: ConsumerTokenRequest = typed(&body, "consumer-token")?;
    if r.target_node_id.is_empty() {
        return Err(HttpError::validation("`target_node_id` is required"));
    }
    let intent = if r.intent.is_empty() {
        WILDCARD.to_owned()
    } else {
        r.intent.clone()
    };
    if intent != WILDCARD {
        Intent::check(&intent)
            .map_err(|e| HttpError::validation(format!("invalid intent: {e}")))?;
    }
    if core.node(&r.target_node_id).is_none() {
        return Err(HttpError::not_found("target node is not registered"));
    }
    let claims = ConsumerTokenClaims::new(
        &issuer(&core, &req),
        &caller,
        &r.target_node_id,
        &intent,
        core.clock.now_secs(),
    );
    let token = core.key.issue(&claims).map_err(|_| HttpError::internal())?;
    Counters::bump(&core.counters.consumer_tokens);
    Ok(no_store(
        StatusCode::CREATED,
        &json!({
            "token": token,
            "expires_at": claims.exp,
            "caller_node_id": caller,
            "target_node_id": r.target_node_id,
            "intent": intent,
        }),
    ))
}

pub(super) async fn relay_ticket(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    let worker = authenticate(&core, req.headers(), None, None).await?;
    let body = read_object(&core, &mut req).await?;
    let relay = match body.get("relay_node_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s == WILDCARD || s.is_empty() => None,
        Some(serde_json::Value::String(s)) if s.len() <= 128 => Some(s.clone()),
        Some(_) => {
            return Err(HttpError::validation(
                "`relay_node_id` must be a node id or \"*\"",
            ))
        }
    };
    let claims = RelayTicketClaims::new(
        &mut OsRng,
        &issuer(&core, &req),
        &worker,
        relay.as_deref(),
        core.clock.now_secs(),
    );
    let ticket = core.key.issue(&claims).map_err(|_| HttpError::internal())?;
    Ok(no_store(
        StatusCode::CREATED,
        &json!({
            "ticket": ticket,
            "expires_at": claims.exp,
            "worker_node_id": worker,
            "relay_node_id": claims.aud,
            "algorithm": "ed25519",
        }),
    ))
}

fn valid_display_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=64).contains(&n) && name.trim() == name && !name.chars().any(char::is_control)
}

pub(super) async fn operator_rename(
    core: Arc<Core>,
    mut req: Request,
    _p: Params,
) -> HandlerResult {
    let body = read_object(&core, &mut req).await?;
    let rename: Rename = typed(&body, "rename")?;
    if !valid_display_name(&rename.display_name) {
        return Err(HttpError::validation(
            "`display_name` must be 1-64 characters without control characters or outer spaces",
        ));
    }
    match verify_rename(&rename, core.clock.now_secs()) {
        Ok(()) => {}
        Err(SignatureError::TimestampOutOfWindow) => {
            return Err(HttpError::validation(
                "`ts` is more than 300 s away from the directory clock",
            ))
        }
        Err(SignatureError::BadPublicKey) => {
            return Err(HttpError::validation(
                "`operator_pub` is not a base64 Ed25519 public key",
            ))
        }
        Err(_) => return Err(unauthorized("operator signature does not verify")),
    }
    let stored = core
        .store
        .set_operator_name(
            rename.operator_pub.clone(),
            rename.display_name.clone(),
            rename.ts,
        )
        .await
        .map_err(|e| store_failed(&core, &e))?;
    if !stored {
        return Err(err(
            StatusCode::CONFLICT,
            ErrorCode::E011,
            "a rename with the same or a later timestamp was already applied",
        ));
    }
    let mut bound = 0usize;
    for n in core.write().nodes.values_mut() {
        if n.record.state.operator_pub.as_deref() == Some(rename.operator_pub.as_str()) {
            n.operator_name = Some(rename.display_name.clone());
            bound += 1;
        }
    }
    core.discover_cache.invalidate();
    let fingerprint = operator_fingerprint(&rename.operator_pub);
    tracing::info!(operator = %short(&fingerprint), nodes = bound, "operator renamed");
    Ok(no_store(
        StatusCode::OK,
        &json!({
            "ok": true,
            "display_name": rename.display_name,
            "operator_fingerprint": fingerprint,
            "nodes_updated": bound,
        }),
    ))
}
