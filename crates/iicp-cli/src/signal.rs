//! SIGINT and SIGTERM both start a graceful shutdown.

use iicp_transport::shutdown::Trigger;

/// Fires `trigger` on the first SIGINT or SIGTERM. The handlers are installed before
/// this returns (a signal arriving right after it is not lost); call it inside the
/// runtime.
pub(crate) fn on_terminate(trigger: Trigger) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::spawn(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
                trigger.fire();
            });
            return;
        }
    }
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        trigger.fire();
    });
}
