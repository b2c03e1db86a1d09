//! Operator key lifecycle (PROTOCOL.md §17.3 self-service; dir §3.4 "policy-key lifecycle
//! registry"; ADR 0016): `POST /v1/operator/challenge` → a single-use nonce valid 300 s;
//! `POST /v1/operator/key/revoke` (`confirm: true`) and `POST /v1/operator/key/rotate`
//! (signed by the old key, the successor's signature in `new_key_sig`) put the key into
//! the registry. Policy manifests signed with a revoked or superseded key are refused at
//! REGISTER and served `signed_revoked` / `signed_superseded`; a delegation by such a key
//! binds no node. Every answer is `no-store`.
//!
//! The nonces live in the process that issued them: with several instances, the
//! challenge and the request that uses it must reach the same one (docs/deploy.md).

use std::sync::Arc;

use http::StatusCode;
use iicp_proto::crypto::manifest::public_key_sha256;
use iicp_proto::crypto::sign::{
    verify_self_service, OperatorPublicKey, SelfServiceAction, SignatureError,
};
use iicp_proto::error::ErrorCode;
use iicp_proto::time::iso8601;
use iicp_transport::http::server::{HttpError, Params, Request};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Map, Value};

use super::{
    client_ip, err, no_store, rate_limited, read_object, store_failed, unauthorized, HandlerResult,
};
use crate::state::Core;
use crate::store::{KeyRecord, KeyStatus};
use crate::sweep::short;

/// How long a challenge nonce is valid.
const NONCE_TTL_MS: u64 = 300_000;
/// Most outstanding nonces (the oldest expired ones are dropped first).
const MAX_NONCES: usize = 10_000;
/// Reason classes a revocation may name (dir §3.4 `revocation_reason_class`).
const REASONS: [&str; 4] = [
    "operator_request",
    "compromise",
    "superseded",
    "policy_violation",
];

fn operator_key(
    body: &Map<String, Value>,
    field: &'static str,
) -> Result<OperatorPublicKey, HttpError> {
    let text = body
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::validation(format!("`{field}` is required")))?;
    OperatorPublicKey::from_operator_id(text)
        .map_err(|_| HttpError::validation(format!("`{field}` is not a base64 Ed25519 public key")))
}

pub(super) async fn challenge(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    if let Err(retry_ms) = core
        .key_limiter
        .check(client_ip(&core, &req), core.now_ms())
    {
        return Ok(rate_limited("rate_limited", retry_ms));
    }
    let body = read_object(&core, &mut req).await?;
    let key = operator_key(&body, "operator_pub")?;
    let mut raw = [0u8; 16];
    OsRng.fill_bytes(&mut raw);
    let nonce = hex::encode(raw);
    let now = core.now_ms();
    {
        let mut nonces = core.nonces.lock();
        nonces.retain(|_, (_, exp)| *exp > now);
        if nonces.len() >= MAX_NONCES {
            return Ok(rate_limited("rate_limited", 1000));
        }
        nonces.insert(nonce.clone(), (key.operator_id(), now + NONCE_TTL_MS));
    }
    Ok(no_store(
        StatusCode::OK,
        &json!({"nonce": nonce, "expires_at": iso8601((now + NONCE_TTL_MS) / 1000), "ttl_s": NONCE_TTL_MS / 1000}),
    ))
}

/// Checks a signed self-service request of `action` and consumes its nonce: the body's
/// `action`, a nonce issued to this `operator_pub` and not expired, `ts` within ±300 s and
/// `sig` by `operator_pub`.
fn verified(
    core: &Core,
    body: &Map<String, Value>,
    action: SelfServiceAction,
) -> Result<OperatorPublicKey, HttpError> {
    if body.get("action").and_then(Value::as_str) != Some(action.as_str()) {
        return Err(HttpError::validation(format!(
            "`action` must be {}",
            action.as_str()
        )));
    }
    let key = operator_key(body, "operator_pub")?;
    let sig = body
        .get("sig")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::validation("`sig` is required"))?;
    match verify_self_service(body, &key, sig, core.clock.now_secs()) {
        Ok(()) => {}
        Err(SignatureError::TimestampOutOfWindow) => {
            return Err(HttpError::validation(
                "`ts` is more than 300 s away from the directory clock",
            ))
        }
        Err(SignatureError::MissingField(f)) => {
            return Err(HttpError::validation(format!("`{f}` is required")))
        }
        Err(_) => return Err(unauthorized("operator signature does not verify")),
    }
    let nonce = body
        .get("nonce")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::validation("`nonce` is required"))?;
    let issued = core.nonces.lock().remove(nonce);
    match issued {
        Some((op, exp)) if op == key.operator_id() && exp > core.now_ms() => Ok(key),
        _ => Err(unauthorized(
            "`nonce` is unknown, used, expired or issued to another key",
        )),
    }
}

async fn record(core: &Core, record: KeyRecord) -> Result<bool, HttpError> {
    let stored = core
        .store
        .put_key_status(record)
        .await
        .map_err(|e| store_failed(core, &e))?;
    if stored {
        core.reload_keys()
            .await
            .map_err(|e| store_failed(core, &e))?;
    }
    Ok(stored)
}

fn status_of(core: &Core, key: &OperatorPublicKey) -> Option<KeyStatus> {
    core.read()
        .keys
        .get(&public_key_sha256(key))
        .map(|k| k.status)
}

pub(super) async fn revoke(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    let body = read_object(&core, &mut req).await?;
    if body.get("confirm") != Some(&Value::Bool(true)) {
        return Err(HttpError::validation(
            "revoking a key needs `confirm: true`",
        ));
    }
    let reason = body
        .get("reason_class")
        .and_then(Value::as_str)
        .unwrap_or("operator_request");
    if !REASONS.contains(&reason) {
        return Err(HttpError::validation(
            "`reason_class` must be operator_request, compromise, superseded or policy_violation",
        ));
    }
    let key = verified(&core, &body, SelfServiceAction::KeyRevoke)?;
    let sha = public_key_sha256(&key);
    let at_ms = core.now_ms();
    let stored = record(
        &core,
        KeyRecord {
            key_sha256: sha.clone(),
            status: KeyStatus::Revoked,
            at_ms,
            reason_class: reason.to_owned(),
            rotation_epoch: None,
        },
    )
    .await?;
    if !stored {
        return Err(err(
            StatusCode::CONFLICT,
            ErrorCode::E011,
            "this key is already revoked",
        ));
    }
    tracing::info!(key = %short(&sha), reason, "operator key revoked");
    Ok(no_store(
        StatusCode::OK,
        &json!({"revoked": true, "policy_key_fingerprint": &sha[..16], "revoked_at": iso8601(at_ms / 1000), "revocation_reason_class": reason}),
    ))
}

pub(super) async fn rotate(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    let body = read_object(&core, &mut req).await?;
    let successor = operator_key(&body, "new_operator_pub")?;
    let new_sig = body
        .get("new_key_sig")
        .and_then(Value::as_str)
        .ok_or_else(|| HttpError::validation("`new_key_sig` is required"))?
        .to_owned();
    // the successor proves possession over the same nonce and time
    let mut successor_body = Map::new();
    for k in ["operator_pub", "new_operator_pub", "nonce", "ts"] {
        if let Some(v) = body.get(k) {
            successor_body.insert(k.into(), v.clone());
        }
    }
    successor_body.insert(
        "action".into(),
        SelfServiceAction::KeyRotateSuccessor.as_str().into(),
    );
    successor_body.insert("rotation_epoch".into(), Value::Null);
    if verify_self_service(&successor_body, &successor, &new_sig, core.clock.now_secs()).is_err() {
        return Err(unauthorized(
            "the successor key's signature does not verify",
        ));
    }
    if status_of(&core, &successor).is_some() {
        return Err(HttpError::validation(
            "the successor key is revoked or superseded",
        ));
    }
    let key = verified(&core, &body, SelfServiceAction::KeyRotate)?;
    if key == successor {
        return Err(HttpError::validation("the successor key is the key itself"));
    }
    let epoch = core
        .read()
        .keys
        .values()
        .filter_map(|k| k.rotation_epoch)
        .max()
        .unwrap_or(0)
        + 1;
    let sha = public_key_sha256(&key);
    let stored = record(
        &core,
        KeyRecord {
            key_sha256: sha.clone(),
            status: KeyStatus::Superseded,
            at_ms: core.now_ms(),
            reason_class: "superseded".to_owned(),
            rotation_epoch: Some(epoch),
        },
    )
    .await?;
    if !stored {
        return Err(err(
            StatusCode::CONFLICT,
            ErrorCode::E011,
            "this key is already revoked or superseded",
        ));
    }
    tracing::info!(key = %short(&sha), epoch, "operator key rotated");
    Ok(no_store(
        StatusCode::OK,
        &json!({"rotated": true, "policy_key_fingerprint": &sha[..16], "rotation_epoch": epoch}),
    ))
}
