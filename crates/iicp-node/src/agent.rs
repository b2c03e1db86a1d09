//! The directory agent: registration with retry and backoff, heartbeats every
//! `next_heartbeat_ms` answering the HMAC `challenge`, re-registration with
//! `current_node_token` when the directory answers 401/404/410, and patience through
//! directory outages (PROTOCOL.md §8.2, §8.2.4, §8.3; SEED-SDK.md §1.9).
//!
//! One loop per served node. Failures back off exponentially (±20 % jitter) up to the
//! configured maximum; the node keeps serving tasks meanwhile. Heartbeat `metrics` are
//! sent as a batch with a `metrics_batch_id` until the directory acknowledges it (or
//! does not speak batch ids at all).

use std::sync::Arc;
use std::time::Duration;

use iicp_proto::crypto::mac::challenge_response;
use iicp_proto::directory::{HeartbeatMetrics, HeartbeatRequest};
use rand_core::RngCore;
use tokio::sync::watch;

use crate::config::AuthMode;
use crate::directory::DirectoryError;
use crate::node::{lock, Counters, Node, Shared};

/// Shortest and longest heartbeat interval accepted from `next_heartbeat_ms`.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(600);

struct State {
    challenge: Option<String>,
    backoff: Option<Duration>,
    batch: Option<(String, HeartbeatMetrics)>,
    interval: Duration,
}

/// Runs until `stop` fires.
pub(crate) async fn run(node: Node, mut stop: watch::Receiver<bool>) {
    let shared = Arc::clone(&node.shared);
    let mut st = State {
        challenge: None,
        backoff: None,
        batch: None,
        interval: shared.cfg.heartbeat_interval,
    };
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        let delay = if first && shared.token().is_some() {
            // serving with a token from an earlier registration: beat after an interval
            first = false;
            st.interval
        } else {
            first = false;
            tokio::select! {
                d = step(&node, &mut st) => d,
                _ = stop.changed() => return,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let r = rand_core::OsRng.next_u32() % 401; // 0..=400 → 0.8..=1.2
    d.mul_f64(0.8 + f64::from(r) / 1000.0)
}

fn next_backoff(shared: &Shared, st: &mut State) -> Duration {
    let b = shared.cfg.directory_backoff;
    let next = match st.backoff {
        None => b.initial,
        Some(prev) => prev.saturating_mul(2).min(b.max),
    };
    st.backoff = Some(next);
    jitter(next)
}

/// Longest `Retry-After` honoured; a directory asking for more is retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The back-off after a failed call, but never sooner than the directory asked
/// (`Retry-After` on 429/503, PROTOCOL.md §5.3, §6.3).
fn delay_after(shared: &Shared, st: &mut State, e: Option<&DirectoryError>) -> Duration {
    let backoff = next_backoff(shared, st);
    match e.and_then(DirectoryError::retry_after) {
        Some(asked) => backoff.max(asked.min(MAX_RETRY_AFTER)),
        None => backoff,
    }
}

fn failure_reason(e: &DirectoryError) -> &'static str {
    match e.status_code() {
        Some(401 | 404 | 410) => "registration_lost",
        Some(429) => "rate_limited",
        Some(s) if s >= 500 => "server_error",
        Some(_) => "rejected",
        None if e.is_retryable() => "transport",
        None => "invalid_reply",
    }
}

/// One attempt: register when no token is held, else heartbeat. Returns the delay to
/// the next attempt.
async fn step(node: &Node, st: &mut State) -> Duration {
    let shared = &node.shared;
    if shared.token().is_none() {
        return register(node, st).await;
    }
    if delegation_due(shared) {
        tracing::info!("operator delegation expires soon; registering again to renew it");
        return register(node, st).await;
    }
    match heartbeat(shared, st).await {
        Ok(interval) => {
            st.backoff = None;
            st.interval = interval;
            fetch_directory_key(shared).await;
            interval
        }
        Err(e) if e.is_registration_lost() => {
            tracing::warn!(status = ?e.status_code(), "directory lost our registration; registering again");
            shared.metrics.heartbeat_failure("registration_lost");
            st.challenge = None;
            register(node, st).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat failed; will retry");
            shared.metrics.heartbeat_failure(failure_reason(&e));
            delay_after(shared, st, Some(&e))
        }
    }
}

async fn register(node: &Node, st: &mut State) -> Duration {
    let shared = &node.shared;
    match node.register().await {
        Ok(_) => {
            st.backoff = None;
            st.challenge = None;
            fetch_directory_key(shared).await;
            st.interval
        }
        Err(e) => {
            tracing::warn!(error = %e, "registration failed; will retry");
            let directory_error = match &e {
                crate::Error::Directory(d) => Some(d),
                _ => None,
            };
            shared
                .metrics
                .heartbeat_failure(directory_error.map_or("rejected", failure_reason));
            delay_after(shared, st, directory_error)
        }
    }
}

/// Whether the operator delegation sent at the last REGISTER is in the last fifth of
/// its lifetime (§17.2: re-issue before expiry and re-register).
fn delegation_due(shared: &Shared) -> bool {
    let Some(op) = &shared.cfg.operator else {
        return false;
    };
    let not_after = shared
        .delegation_not_after
        .load(std::sync::atomic::Ordering::Relaxed);
    if not_after == 0 {
        return false;
    }
    let margin = (op.delegation_ttl().as_secs() / 5).max(1);
    shared.unix_secs().saturating_add(margin) >= not_after
}

async fn fetch_directory_key(shared: &Shared) {
    if shared.cfg.auth != AuthMode::Consumer || shared.directory_key().is_some() {
        return;
    }
    let Some(dir) = shared.cfg.directory.clone() else {
        return;
    };
    match tokio::time::timeout(shared.cfg.directory_timeout, dir.directory_key()).await {
        Ok(Ok(Some(key))) => {
            shared.set_directory_key(key);
            tracing::info!("directory key fetched: consumer tokens accepted");
        }
        Ok(Ok(None)) => tracing::debug!("directory has no signing key"),
        Ok(Err(e)) => tracing::debug!(error = %e, "directory key fetch failed"),
        Err(_) => tracing::debug!("directory key fetch timed out"),
    }
}

async fn heartbeat(shared: &Shared, st: &mut State) -> Result<Duration, DirectoryError> {
    let dir = shared
        .cfg
        .directory
        .clone()
        .ok_or_else(|| DirectoryError::unsupported("heartbeat"))?;
    let (token, node_id) = {
        let c = lock(&shared.creds);
        (c.token.clone(), c.node_id.clone())
    };
    let (Some(token), Some(node_id)) = (token, node_id) else {
        return Err(DirectoryError::status("heartbeat", 404, None));
    };
    if st.batch.is_none() {
        let c = std::mem::take(&mut *lock(&shared.counters));
        if c.success + c.failed > 0 {
            st.batch = Some((batch_id(), batch_metrics(c)));
        }
    }
    let active = shared.active_jobs();
    let max = shared.cfg.max_concurrent;
    let available = active < max && !shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    let mut req = HeartbeatRequest::new(node_id);
    req.node_token = Some(token.clone());
    req.load = Some((f64::from(active) / f64::from(max.max(1))).min(1.0));
    req.active_jobs = Some(active);
    req.available = Some(available);
    req.status = Some("available".to_owned());
    req.max_concurrent = Some(max);
    if let Some((id, m)) = &st.batch {
        req.metrics_batch_id = Some(id.clone());
        req.metrics = Some(m.clone());
    }
    if let (Some(ch), Some(key)) = (&st.challenge, shared.hmac_key()) {
        req.challenge_response = Some(challenge_response(key.expose(), ch));
    }
    let pong = tokio::time::timeout(shared.cfg.directory_timeout, dir.heartbeat(&token, &req))
        .await
        .map_err(|_| DirectoryError::transport("heartbeat", TimedOut))??;
    if let Some((id, _)) = &st.batch {
        let acked = pong
            .metrics_batch_accepted
            .as_deref()
            .is_none_or(|a| a == id);
        if acked {
            st.batch = None;
        }
    }
    st.challenge = pong.challenge.filter(|c| !c.is_empty());
    let interval = pong
        .next_heartbeat_ms
        .map_or(shared.cfg.heartbeat_interval, Duration::from_millis)
        .clamp(MIN_INTERVAL, MAX_INTERVAL);
    Ok(interval)
}

fn batch_id() -> String {
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    format!("mb-{}", hex::encode(b))
}

fn batch_metrics(c: Counters) -> HeartbeatMetrics {
    let n = c.success + c.failed;
    let avg = if n == 0 {
        0.0
    } else {
        ((c.latency_sum_ms as f64 / n as f64) * 100.0).round() / 100.0
    };
    HeartbeatMetrics {
        tasks_success: Some(c.success),
        tasks_failed: Some(c.failed),
        avg_latency_ms: Some(avg),
        ..HeartbeatMetrics::default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("directory call timed out")]
struct TimedOut;
