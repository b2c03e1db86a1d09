//! The credits extension (§8.11, [dir §8]): `POST /v1/credits/award` with the
//! HMAC-signed CIP worker receipt, balance and transactions, and telemetry (§8.11,
//! `proxy_token`).

use std::sync::Arc;

use http::StatusCode;
use iicp_proto::crypto::mac::Receipt;
use iicp_proto::error::ErrorCode;
use iicp_transport::http::server::{json, HttpError, Params, Request};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    authenticate, bearer, err, read_object, store_failed, typed, unauthorized, HandlerResult,
};
use crate::auth::token_hash;
use crate::state::{Core, Counters};
use crate::store::{ReceiptOutcome, ReceiptRecord, StateWrite};

/// Tokens per credit (§8.11 credit schedule).
const TOKENS_PER_CREDIT: u32 = 1000;
/// Largest `tokens_used` accepted in one receipt.
const MAX_TOKENS_PER_RECEIPT: u64 = 10_000_000;

#[derive(Deserialize)]
struct AwardRequest {
    node_id: String,
    task_id: String,
    tokens_used: u64,
    nonce: String,
    signature: String,
    response_hash: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    querying_node_id: Option<String>,
}

fn e027(message: &str) -> HttpError {
    err(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::E027,
        message.to_owned(),
    )
}

fn bounded(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

use iicp_proto::time::parse_rfc3339;

pub(super) async fn award(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    if bearer(req.headers()).is_none() {
        return Err(unauthorized("missing bearer credential"));
    }
    let body = read_object(&core, &mut req).await?;
    let claimed = body
        .get("node_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let node_id = authenticate(&core, req.headers(), claimed.as_deref(), None).await?;
    let r: AwardRequest = typed(&body, "credits award")?;
    if !bounded(&r.task_id, 128)
        || !bounded(&r.nonce, 128)
        || !bounded(&r.response_hash, 128)
        || r.querying_node_id
            .as_deref()
            .is_some_and(|q| !bounded(q, 128))
        || r.node_id != node_id
    {
        return Err(HttpError::validation(
            "receipt fields are missing or malformed",
        ));
    }
    if r.tokens_used > MAX_TOKENS_PER_RECEIPT {
        return Err(e027("`tokens_used` is out of range"));
    }
    let now_secs = i64::try_from(core.clock.now_secs()).unwrap_or(i64::MAX);
    if let Some(exp) = r.expires_at.as_deref() {
        match parse_rfc3339(exp) {
            Some(t) if t >= now_secs => {}
            Some(_) => return Err(e027("receipt has expired")),
            None => return Err(e027("`expires_at` is not an ISO-8601 timestamp")),
        }
    }
    let node = core.node(&node_id).ok_or_else(super::unknown_node)?;
    let receipt = Receipt {
        task_id: &r.task_id,
        tokens_used: r.tokens_used,
        nonce: &r.nonce,
        response_hash: &r.response_hash,
        querying_node_id: r.querying_node_id.as_deref(),
    };
    if !receipt.verify(node.record.credentials.hmac_key.expose(), &r.signature) {
        return Err(e027(
            "receipt signature does not verify with this node's node_hmac_key",
        ));
    }
    let self_query = r.querying_node_id.as_deref() == Some(node_id.as_str());
    let amount = if self_query {
        0.0
    } else {
        (r.tokens_used.max(1) as f64 / f64::from(TOKENS_PER_CREDIT) * 10_000.0).round() / 10_000.0
    };
    let record = ReceiptRecord {
        node_id: node_id.clone(),
        task_id: r.task_id.clone(),
        nonce: r.nonce.clone(),
        tokens_used: r.tokens_used,
        amount,
        response_hash: r.response_hash.clone(),
        querying_node_id: r.querying_node_id.clone(),
        reason: r
            .reason
            .clone()
            .unwrap_or_else(|| "task_completion".to_owned()),
        recorded_at_ms: core.now_ms(),
    };
    let outcome = core
        .store
        .record_receipt(record)
        .await
        .map_err(|e| store_failed(&core, &e))?;
    let balance = match outcome {
        ReceiptOutcome::Recorded { balance } => balance,
        _ => {
            return Err(err(
                StatusCode::CONFLICT,
                ErrorCode::E011,
                "receipt nonce was already used",
            ))
        }
    };
    Counters::bump(&core.counters.receipts);
    {
        // The receipt counter of the node state (best effort, as the receipt itself is
        // stored): written over the revision it was read at, reloaded once if another
        // directory process wrote the node in between.
        let _guard = core.node_lock(&node_id).lock().await;
        for _ in 0..2 {
            let Some(n) = core.node(&node_id) else { break };
            let mut state = n.record.state.clone();
            state.receipts = state.receipts.saturating_add(1);
            match core
                .store
                .put_state_at(node_id.clone(), state.clone(), n.record.rev)
                .await
            {
                Ok(StateWrite::Written { rev }) => {
                    core.replace_state(&node_id, state, rev);
                    break;
                }
                Ok(StateWrite::Conflict) => {
                    if core.refresh_node_locked(&node_id).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "node_id": node_id,
            "task_id": r.task_id,
            "awarded": amount,
            "balance": balance,
            "spent": 0.0,
            "excluded": self_query,
            "attribution": "self_reported",
            "trust_weight": 0.0,
        }),
    ))
}

pub(super) async fn balance(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    let node_id = authenticate(&core, req.headers(), None, None).await?;
    let balance = core
        .store
        .credit_balance(node_id.clone())
        .await
        .map_err(|e| store_failed(&core, &e))?;
    Ok(super::no_store(
        StatusCode::OK,
        &json!({"node_id": node_id, "balance": balance, "currency": "credits"}),
    ))
}

/// `GET /v1/credits/summary?node_id=…` (Bearer node token; PROTOCOL.md §8 credits
/// extension): the node's ledger as `iicp credits` and the other SDKs' CLIs show it.
/// This directory only awards credits (nothing is spent through it), so the balance is
/// what was earned; `reconciles` is its own check of balance = earned − spent.
pub(super) async fn summary(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    let claimed = super::query_pairs(&req)
        .into_iter()
        .find(|(k, _)| k == "node_id")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty());
    let node_id = authenticate(&core, req.headers(), claimed.as_deref(), None).await?;
    let balance = core
        .store
        .credit_balance(node_id.clone())
        .await
        .map_err(|e| store_failed(&core, &e))?;
    let tx_count = core.node(&node_id).map_or(0, |n| n.record.state.receipts);
    let (earned, spent) = (balance, 0.0_f64);
    Ok(super::no_store(
        StatusCode::OK,
        &json!({
            "node_id": node_id,
            "balance": balance,
            "total_earned": earned,
            "total_spent": spent,
            "tx_count": tx_count,
            "reconciles": (balance - (earned - spent)).abs() < 1e-9,
            "tokens_per_credit": TOKENS_PER_CREDIT,
            "currency": "credits",
        }),
    ))
}

pub(super) async fn transactions(core: Arc<Core>, req: Request, _p: Params) -> HandlerResult {
    let node_id = authenticate(&core, req.headers(), None, None).await?;
    let receipts = core
        .store
        .receipts(node_id.clone(), 100)
        .await
        .map_err(|e| store_failed(&core, &e))?;
    let items: Vec<Value> = receipts
        .iter()
        .map(|r| {
            json!({
                "task_id": r.task_id,
                "amount": r.amount,
                "tokens_used": r.tokens_used,
                "reason": r.reason,
                "recorded_at": crate::auth::iso8601(r.recorded_at_ms / 1000),
            })
        })
        .collect();
    Ok(super::no_store(
        StatusCode::OK,
        &json!({"node_id": node_id, "transactions": items, "count": items.len()}),
    ))
}

pub(super) async fn telemetry(core: Arc<Core>, mut req: Request, _p: Params) -> HandlerResult {
    let token = bearer(req.headers()).ok_or_else(|| {
        err(
            StatusCode::UNAUTHORIZED,
            ErrorCode::E032,
            "missing proxy_token",
        )
    })?;
    let known = core.read().by_proxy_token.contains_key(&token_hash(&token));
    if !known {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            ErrorCode::E032,
            "invalid proxy_token",
        ));
    }
    let body = read_object(&core, &mut req).await?;
    let _: Value = typed(&body, "telemetry")?;
    Ok(json(StatusCode::OK, &json!({"recorded": true})))
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-05-28T20:26:40+00:00"),
            Some(1_780_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-05-28T22:26:40.123456+02:00"),
            Some(1_780_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
