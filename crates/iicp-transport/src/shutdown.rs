//! A graceful-shutdown signal: one [`Trigger`], any number of cloned [`Shutdown`]
//! listeners. Servers stop accepting when it fires and drain what is in flight.

use tokio::sync::watch;

/// Fires the shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Observes the shutdown; clone it into every task that must stop.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// Keeps the sender of [`Shutdown::never`] alive so it never fires.
    _keep: Option<std::sync::Arc<watch::Sender<bool>>>,
}

/// A new trigger and its listener.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown { rx, _keep: None })
}

impl Trigger {
    /// Signals every listener. Idempotent.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    /// A listener for this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.0.subscribe(),
            _keep: None,
        }
    }
}

impl Shutdown {
    /// A listener that never fires (for callers without shutdown needs).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            rx,
            _keep: Some(std::sync::Arc::new(tx)),
        }
    }

    /// Whether shutdown was signalled.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is signalled (or its trigger is dropped).
    pub async fn fired(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }
}
