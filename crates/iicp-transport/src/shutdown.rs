//! Graceful shutdown on tokio-util's [`CancellationToken`]: a [`Shutdown`] is the token
//! every server and background task watches (`shutdown.cancelled().await`); a
//! [`Trigger`] owns the shutdown and fires it when told or when dropped, so a server
//! whose owner goes away stops by itself. Servers stop accepting when it fires and drain
//! what is in flight.

pub use tokio_util::sync::CancellationToken;

/// The shutdown signal servers and tasks watch: a [`CancellationToken`]. Clone it into
/// every task that must stop; [`CancellationToken::child_token`] gives one that a part
/// can also stop on its own. `Shutdown::new()` is one nobody fires (for callers without
/// shutdown needs).
pub type Shutdown = CancellationToken;

/// Fires its [`Shutdown`] on [`Trigger::fire`] or when dropped.
#[derive(Debug)]
pub struct Trigger(CancellationToken);

/// A new trigger and its shutdown signal.
pub fn channel() -> (Trigger, Shutdown) {
    let token = CancellationToken::new();
    (Trigger(token.clone()), token)
}

impl Trigger {
    /// Signals every listener. Idempotent.
    pub fn fire(&self) {
        self.0.cancel();
    }

    /// A listener for this trigger.
    pub fn subscribe(&self) -> Shutdown {
        self.0.clone()
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_on_fire_and_on_drop_and_never_otherwise() {
        let (trigger, shutdown) = channel();
        let other = trigger.subscribe();
        assert!(!shutdown.is_cancelled());
        trigger.fire();
        shutdown.cancelled().await;
        assert!(other.is_cancelled());

        let (trigger, shutdown) = channel();
        drop(trigger);
        shutdown.cancelled().await;

        let never = Shutdown::new();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), never.cancelled());
        assert!(waited.await.is_err());
    }
}
