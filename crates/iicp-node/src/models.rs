//! The periodic read of the backend's model list (SEED-SDK.md §1.9 `health_models` and
//! the model-drift check): every [`NodeConfig::model_check_interval`] the node asks its
//! handler ([`TaskHandler::models`]) which models the backend lists. The answer goes
//! into the heartbeat (`health_models`) and into recovery (a failed read is
//! `backend_attention`). When the list is not empty and, with the served model kept
//! first, differs as a set from the advertised one, the node advertises the new list
//! and the directory agent registers again with it.
//!
//! [`NodeConfig::model_check_interval`]: crate::NodeConfig::model_check_interval

use std::sync::Arc;

use iicp_transport::shutdown::Shutdown;

use crate::handler::TaskHandler;
use crate::state::Shared;

/// Runs until `stop` fires, or at once returns when the handler cannot list models.
pub(crate) async fn run(shared: Arc<Shared>, handler: Arc<dyn TaskHandler>, stop: Shutdown) {
    let every = shared.cfg.model_check_interval;
    if every.is_zero() {
        return;
    }
    loop {
        let Some(listing) = handler.models() else {
            return;
        };
        let read = tokio::select! {
            r = tokio::time::timeout(shared.cfg.directory_timeout, listing) => r,
            () = stop.cancelled() => return,
        };
        match read {
            Ok(Ok(live)) => {
                shared.recovery.backend_read(true);
                check(&shared, live);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the backend's model list");
                shared.recovery.backend_read(false);
            }
            Err(_) => {
                tracing::warn!("the backend's model list did not come in time");
                shared.recovery.backend_read(false);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Records `live` and advertises it when it drifted from the advertised list.
fn check(shared: &Shared, live: Vec<String>) {
    *shared.health_models.lock() = Some(live.clone());
    let current = shared.models();
    if let Some(next) = drifted(&current, &live) {
        tracing::info!(
            before = %current.join(", "),
            now = %next.join(", "),
            "the backend's models changed: advertising the new list and registering again"
        );
        shared.set_models(next);
    }
}

/// The list to advertise when the backend's `live` list (not empty) changed what the
/// node offers: the served model (`current`'s first, kept even when the backend does not
/// list it — the operator may have named a model the server loads on demand) followed by
/// `live`; `None` when that is the same set as `current`.
pub(crate) fn drifted(current: &[String], live: &[String]) -> Option<Vec<String>> {
    if live.is_empty() {
        return None;
    }
    let mut next: Vec<String> = current.first().cloned().into_iter().collect();
    for m in live {
        if !next.contains(m) {
            next.push(m.clone());
        }
    }
    let same = next.len() == current.len() && next.iter().all(|m| current.contains(m));
    (!same).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::drifted;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn drift_is_a_change_of_the_set_and_keeps_the_served_model_first() {
        assert_eq!(drifted(&v(&["a", "b"]), &v(&["b", "a"])), None);
        assert_eq!(
            drifted(&v(&["a"]), &v(&[])),
            None,
            "an empty list is no evidence"
        );
        // a named model the backend does not list stays, as the served one
        assert_eq!(drifted(&v(&["a", "b"]), &v(&["b"])), None);
        assert_eq!(drifted(&v(&["a"]), &v(&["b", "a"])), Some(v(&["a", "b"])));
        assert_eq!(drifted(&v(&["a", "b"]), &v(&["c"])), Some(v(&["a", "c"])));
        assert_eq!(
            drifted(&v(&["a", "b"]), &v(&["c", "b"])),
            Some(v(&["a", "c", "b"]))
        );
    }
}
