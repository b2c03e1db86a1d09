//! Following the other directory processes of a shared store (PostgreSQL,
//! `docs/adr/0015-postgresql-store.md`): the working copy of this process takes in
//!
//! * announced changes ([`Change`]): a node registered, re-registered (token rotation)
//!   or deleted elsewhere is reloaded at once, an operator rename reloads the name;
//! * node states written elsewhere (heartbeats, probes), pulled every
//!   [`crate::Config::sync_interval`] by revision. Each pull starts from the cursor of
//!   the pull before the last one, so a write whose commit came a little after a later
//!   revision's is still seen; states at or below the revision held are ignored;
//! * changes of the node set found this way drop the discover cache at most every
//!   [`FLUSH_INTERVAL`] (200 ms), not once per reloaded node;
//! * everything, when the feed reconnected ([`Change::Resync`]) and every
//!   [`crate::Config::resync_interval`] as a safety net: nodes with a higher revision
//!   are replaced, nodes missing here or gone from the store are reloaded one by one
//!   under their lock (so a node deleted here a moment ago is not brought back).
//!
//! Liveness needs the pull: expiry is computed from `last_seen` at read time, so a
//! process that never saw the heartbeats another process took would expire a live
//! node. The pull keeps `last_seen` at most one interval (default 2 s) behind, far
//! inside the 90 s window. Writes never depend on it: a heartbeat is written only over
//! the revision it was computed from, and reloads the node when another process wrote
//! it first (`api::node`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use iicp_transport::shutdown::Shutdown;
use tokio::sync::mpsc::Receiver;

use crate::state::Core;
use crate::store::Change;

/// How often node-set changes reloaded from the store invalidate the discover cache (at
/// most; a cached result is never served older than 2 s anyway, `cache.rs`).
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Follows the store until `shutdown` fires. `cursor`: the highest revision loaded at
/// start.
pub(crate) async fn run(
    core: Arc<Core>,
    mut changes: Receiver<Change>,
    cursor: u64,
    interval: Duration,
    resync_interval: Duration,
    shutdown: Shutdown,
) {
    let mut pull = tokio::time::interval(interval);
    pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval_at(
        tokio::time::Instant::now() + resync_interval,
        resync_interval,
    );
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (cursor of the previous pull, cursor of the last pull)
    let mut cursors = (cursor, cursor);
    let mut feed_open = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            change = changes.recv(), if feed_open => match change {
                Some(Change::Node(id)) => {
                    if let Err(err) = core.refresh_node(&id).await {
                        tracing::warn!(error = %err, "could not reload a node changed by another directory process");
                    }
                }
                Some(Change::Operator(op)) => {
                    if let Err(err) = core.refresh_operator(&op).await {
                        tracing::warn!(error = %err, "could not reload an operator name");
                    }
                }
                Some(Change::Key(_)) => {
                    if let Err(err) = core.reload_keys().await {
                        tracing::warn!(error = %err, "could not reload the key lifecycle registry");
                    }
                }
                Some(Change::Resync) => full_resync(&core).await,
                None => feed_open = false,
            },
            _ = pull.tick() => {
                match core.store.state_changes(cursors.0).await {
                    Ok(found) => {
                        cursors = (cursors.1, found.cursor.max(cursors.1));
                        for id in core.apply_states(found.states) {
                            if let Err(err) = core.refresh_node(&id).await {
                                tracing::warn!(error = %err, "could not reload a node changed by another directory process");
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "could not read the node states written by other directory processes"),
                }
            }
            _ = resync.tick() => full_resync(&core).await,
            _ = flush.tick() => core.flush_remote_changes(),
        }
    }
    tracing::debug!("directory store sync stopped");
}

/// Reloads every node that differs from the store.
pub(crate) async fn full_resync(core: &Core) {
    if let Err(err) = core.reload_keys().await {
        tracing::warn!(error = %err, "could not reload the key lifecycle registry");
    }
    let records = match core.store.load_nodes().await {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(error = %err, "directory resync failed");
            return;
        }
    };
    let stored: HashSet<String> = records.iter().map(|r| r.node_id.clone()).collect();
    let mut reload: Vec<String> = {
        let reg = core.read();
        reg.nodes
            .keys()
            .filter(|id| !stored.contains(*id))
            .cloned()
            .collect()
    };
    let mut replaced = 0usize;
    for record in records {
        let held = core.read().nodes.get(&record.node_id).map(|n| n.record.rev);
        match held {
            None => reload.push(record.node_id.clone()),
            Some(rev) if rev < record.rev => {
                let id = record.node_id.clone();
                let _guard = core.node_lock(&id).lock().await;
                let still_older = core
                    .read()
                    .nodes
                    .get(&id)
                    .is_some_and(|n| n.record.rev < record.rev);
                if still_older {
                    if let Some(node) = core.node_from_record(record).await {
                        core.write().insert(node);
                        replaced += 1;
                    }
                }
            }
            Some(_) => {}
        }
    }
    let reloaded = reload.len();
    for id in reload {
        if let Err(err) = core.refresh_node(&id).await {
            tracing::warn!(error = %err, "directory resync: could not reload a node");
        }
    }
    let operators: HashSet<String> = core
        .read()
        .nodes
        .values()
        .filter_map(|n| n.record.state.operator_pub.clone())
        .collect();
    for op in operators {
        if let Err(err) = core.refresh_operator(&op).await {
            tracing::warn!(error = %err, "directory resync: could not reload an operator name");
        }
    }
    core.discover_cache.invalidate();
    tracing::info!(
        replaced,
        reloaded,
        "directory resynchronised with the store"
    );
}
