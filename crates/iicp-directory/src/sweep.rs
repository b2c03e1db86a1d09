//! The background sweep: re-probes endpoints that have not answered yet (with
//! backoff: 5 s, 10 s, 20 s … 300 s), actively probes verified endpoints every
//! [`crate::Config::active_probe_interval`] (PROTOCOL.md §8.9, §8.12), and deletes nodes
//! dormant for longer than [`crate::Config::node_retention`]. Bounded: at most
//! `max_concurrent_probes` probes in flight and a fixed batch per tick; stops when the
//! shutdown signal fires.

use std::sync::Arc;
use std::time::Duration;

use iicp_transport::shutdown::Shutdown;
use tokio::task::JoinSet;

use crate::probe::{self, ProbeFailure};
use crate::state::{Core, Settings};
use crate::store::{ProbeState, StateWrite};

/// Consecutive failures after which a verified endpoint counts as unverified again.
const FAILURES_TO_UNVERIFY: u32 = 3;
/// Deleted nodes per tick (bounds the work of one sweep).
const RETENTION_BATCH: usize = 256;

/// The probe state after a probe at `now_ms` with `result`.
pub(crate) fn next_probe_state(
    prev: &ProbeState,
    result: Result<u64, ProbeFailure>,
    now_ms: u64,
    s: &Settings,
) -> ProbeState {
    let mut p = prev.clone();
    p.last_attempt_ms = Some(now_ms);
    match result {
        Ok(latency) => {
            p.verified = true;
            p.failures = 0;
            p.last_ok_ms = Some(now_ms);
            p.latency_ms = Some(latency);
            p.next_due_ms = now_ms.saturating_add(s.active_probe_interval_ms);
        }
        Err(_) => {
            p.failures = p.failures.saturating_add(1);
            if p.verified && p.failures >= FAILURES_TO_UNVERIFY {
                p.verified = false;
            }
            let backoff = if p.verified {
                30_000
            } else {
                (5_000u64 << p.failures.saturating_sub(1).min(6)).min(300_000)
            };
            p.next_due_ms = now_ms.saturating_add(backoff);
        }
    }
    p
}

pub(crate) async fn run(core: Arc<Core>, interval: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // With a shared store only the holder of the sweep lease sweeps.
        let lead = tokio::select! {
            () = shutdown.cancelled() => break,
            lead = core.store.sweep_lease() => lead,
        };
        let lead = lead.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "could not check the sweep lease");
            false
        });
        if core.sweeper.swap(lead, std::sync::atomic::Ordering::AcqRel) != lead {
            tracing::info!(sweeper = lead, "directory background sweep lease changed");
        }
        if !lead {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = sweep_once(&core) => {}
        }
    }
    tracing::debug!("directory background sweep stopped");
}

async fn sweep_once(core: &Arc<Core>) {
    let now = core.now_ms();
    let s = &core.settings;
    let (stale, due): (Vec<String>, Vec<(String, String)>) = {
        let reg = core.read();
        let stale = reg
            .nodes
            .values()
            .filter(|n| now.saturating_sub(n.record.state.last_seen_ms) > s.node_retention_ms)
            .take(RETENTION_BATCH)
            .map(|n| n.record.node_id.clone())
            .collect();
        let due = if s.liveness_probe {
            reg.nodes
                .values()
                .filter(|n| n.is_fresh(now, s) && n.record.state.probe.next_due_ms <= now)
                .take(s.max_concurrent_probes.saturating_mul(4))
                .map(|n| (n.record.node_id.clone(), n.reg.endpoint.clone()))
                .collect()
        } else {
            Vec::new()
        };
        (stale, due)
    };

    for id in stale {
        let _guard = core.node_lock(&id).lock().await;
        let still_stale = core.node(&id).is_some_and(|n| {
            core.now_ms().saturating_sub(n.record.state.last_seen_ms) > s.node_retention_ms
        });
        if still_stale {
            match core.store.delete_node(id.clone()).await {
                Ok(_) => {
                    core.write().remove(&id);
                    core.discover_cache.invalidate();
                    tracing::info!(node = %short(&id), "dormant node removed after retention period");
                }
                Err(err) => tracing::warn!(error = %err, "could not delete dormant node"),
            }
        }
    }

    let mut queue = due.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < s.max_concurrent_probes {
            let Some((id, endpoint)) = queue.next() else {
                break;
            };
            let core = Arc::clone(core);
            running.spawn(async move {
                let timeout = Duration::from_millis(core.settings.probe_timeout_ms);
                let result = probe::health(&core.http, &endpoint, timeout).await;
                apply_probe(&core, &id, &endpoint, result).await;
            });
        }
        if running.join_next().await.is_none() {
            break;
        }
    }
}

/// Records a probe result for `node_id` if its endpoint is still `endpoint`.
pub(crate) async fn apply_probe(
    core: &Core,
    node_id: &str,
    endpoint: &str,
    result: Result<u64, ProbeFailure>,
) {
    let _guard = core.node_lock(node_id).lock().await;
    let Some(node) = core.node(node_id) else {
        return;
    };
    if node.reg.endpoint != endpoint {
        return;
    }
    let mut state = node.record.state.clone();
    let was_verified = state.probe.verified;
    state.probe = next_probe_state(&state.probe, result, core.now_ms(), &core.settings);
    if state.probe.verified != was_verified {
        tracing::info!(node = %short(node_id), verified = state.probe.verified, "endpoint liveness changed");
    }
    match core
        .store
        .put_state_at(node_id.to_owned(), state.clone(), node.record.rev)
        .await
    {
        Ok(StateWrite::Written { rev }) => core.replace_state(node_id, state, rev),
        Ok(StateWrite::Conflict) => {
            // Another directory process wrote the node since: take its state; the
            // endpoint is probed again at the next due time.
            if let Err(err) = core.refresh_node_locked(node_id).await {
                tracing::warn!(error = %err, "could not reload a node");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not store probe result"),
    }
}

/// First 8 characters of a node id, for logs.
pub(crate) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
