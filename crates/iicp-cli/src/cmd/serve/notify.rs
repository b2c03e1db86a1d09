//! `serve` under a service manager (systemd `Type=notify`): `READY=1` once the node
//! serves (after the first registration result, or at once without a directory),
//! `STATUS=` when the tier, endpoint or registration state change, `WATCHDOG=1` at half
//! of `WATCHDOG_USEC` from the main loop (a stuck loop stops the pings and the manager
//! restarts the node), `STOPPING=1` on shutdown. Nothing is sent without
//! `NOTIFY_SOCKET`. The protocol lives in [`iicp_node::notify`].

use std::time::Duration;

use iicp_node::notify::Notifier;
use iicp_node::ServeHandle;

/// The notify connection of one `serve` and the last status it sent.
pub(super) struct Manager {
    notifier: Option<Notifier>,
    last: Option<String>,
}

impl Manager {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`; a malformed value is
    /// logged and the node runs without notifications.
    pub(super) fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let notifier = match Notifier::new(
            socket.as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        ) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "not notifying the service manager");
                None
            }
        };
        Self {
            notifier,
            last: None,
        }
    }

    /// How often the main loop pings the watchdog (a day when nothing watches, so the
    /// loop's timer stays quiet).
    pub(super) fn watchdog_every(&self) -> Duration {
        self.notifier
            .as_ref()
            .and_then(Notifier::watchdog)
            .unwrap_or(Duration::from_secs(24 * 3600))
    }

    fn sent(&self, what: &str, r: Result<(), iicp_node::notify::NotifyError>) {
        if let Err(e) = r {
            tracing::debug!(error = %e, "cannot notify the service manager ({what})");
        }
    }

    /// `READY=1` with the status.
    pub(super) fn ready(&mut self, status: String) {
        if let Some(n) = &self.notifier {
            self.sent("READY", n.ready(&status));
        }
        self.last = Some(status);
    }

    /// `STATUS=` when it differs from the last one sent.
    pub(super) fn status(&mut self, status: String) {
        if self.last.as_ref() == Some(&status) {
            return;
        }
        if let Some(n) = &self.notifier {
            self.sent("STATUS", n.status(&status));
        }
        self.last = Some(status);
    }

    /// `WATCHDOG=1`, when a watchdog watches.
    pub(super) fn ping(&self) {
        if let Some(n) = self.notifier.as_ref().filter(|n| n.watchdog().is_some()) {
            self.sent("WATCHDOG", n.ping());
        }
    }

    /// `STOPPING=1`.
    pub(super) fn stopping(&self) {
        if let Some(n) = &self.notifier {
            self.sent(
                "STOPPING",
                n.stopping("stopping: draining and deregistering"),
            );
        }
    }
}

/// The status line: `serving <endpoint> (tier <tier>); directory <state>`.
pub(super) fn status_line(
    handle: &ServeHandle,
    configured_endpoint: &str,
    register: bool,
) -> String {
    let endpoint = super::nat::advertised(handle, configured_endpoint);
    let tier = handle
        .reachability()
        .map_or_else(|| "as configured".to_owned(), |r| r.tier.to_string());
    let node = handle.node();
    let directory = if register {
        node.directory_status().state()
    } else {
        "none"
    };
    format!(
        "serving {endpoint} (tier {tier}); directory {directory}; recovery {}",
        node.recovery().state.as_str()
    )
}
