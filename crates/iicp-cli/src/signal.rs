//! SIGINT and SIGTERM both start a graceful shutdown.

use iicp_transport::shutdown::Trigger;

/// Fires `trigger` on the first SIGINT or SIGTERM.
pub(crate) fn on_terminate(trigger: Trigger) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    trigger.fire();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
        trigger.fire();
    });
}
