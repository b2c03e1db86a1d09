//! The optional post-task CIP credits receipt (PROTOCOL.md §8.11; SEED-SDK.md §1.13):
//! `POST {dir}/v1/credits/award` with `{node_id, task_id, tokens_used, amount, nonce,
//! expires_at, signature, response_hash, reason: "task_completion",
//! querying_node_id?}`, signed with the node's HMAC key. Posted off the hot path, at
//! most a fixed number at once (extra receipts are dropped: they are best effort).
//! Tokens come from the handler's output (the seed read the wrong nesting level,
//! SEED-SDK.md §10 item 3).

use std::sync::Arc;

use iicp_proto::crypto::mac::{response_hash, Receipt};
use iicp_proto::ids::TaskId;
use iicp_proto::result::ResultJson;
use rand_core::RngCore;
use serde_json::{json, Value};

use crate::clock::iso8601;
use crate::state::Shared;

/// Receipt lifetime (`expires_at` = now + 300 s).
const RECEIPT_TTL_SECS: u64 = 300;

/// Spawns the receipt POST when enabled and the node holds a token, an HMAC key and a
/// directory.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    task_id: &TaskId,
    tokens_used: u64,
    result: &ResultJson,
    querying_node_id: Option<&str>,
) {
    if !shared.cfg.credits_receipts {
        return;
    }
    if shared.breaker_open() {
        tracing::debug!("credits receipt dropped: the directory circuit breaker is open");
        return;
    }
    let (Some(dir), Some(token), Some(key), Some(node_id)) = (
        shared.cfg.directory.clone(),
        shared.token(),
        shared.hmac_key(),
        shared.node_id(),
    ) else {
        return;
    };
    let Ok(permit) = Arc::clone(&shared.receipts).try_acquire_owned() else {
        tracing::debug!("credits receipt dropped: too many in flight");
        return;
    };
    let mut nonce = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let nonce = hex::encode(nonce);
    // the hash is of the canonical form, so a result kept as text is parsed here
    let hash = match result {
        ResultJson::Value(v) => response_hash(v),
        text => response_hash(&text.to_value()),
    };
    let querying = querying_node_id.filter(|q| !q.is_empty() && *q != node_id);
    let signature = Receipt {
        task_id: task_id.as_str(),
        tokens_used,
        nonce: &nonce,
        response_hash: &hash,
        querying_node_id: querying,
    }
    .sign(key.expose());
    let amount = ((tokens_used.max(1) as f64 / 1000.0) * 10_000.0).round() / 10_000.0;
    let mut body = json!({
        "node_id": node_id,
        "task_id": task_id.as_str(),
        "tokens_used": tokens_used,
        "amount": amount,
        "nonce": nonce,
        "expires_at": iso8601(shared.unix_secs().saturating_add(RECEIPT_TTL_SECS)),
        "signature": signature,
        "response_hash": hash,
        "reason": "task_completion",
    });
    if let (Some(q), Some(obj)) = (querying, body.as_object_mut()) {
        obj.insert("querying_node_id".into(), Value::String(q.to_owned()));
    }
    let task_id = task_id.clone();
    tokio::spawn(async move {
        let _permit = permit;
        match dir.award_credits(&token, &body).await {
            Ok(()) => tracing::debug!(%task_id, "credits receipt accepted"),
            Err(e) => tracing::debug!(%task_id, error = %e, "credits receipt not accepted"),
        }
    });
}
