//! Leases of port mappings and IPv6 pinholes, their renewal and their removal
//! (PROTOCOL.md §13.2 "IPv6 pinholes need renewal at lease/2"; SEED-SDK.md §3.3).
//!
//! [`Leases`] is what the [`crate::Executor`] made and the plan uses. [`Leases::keep`]
//! starts a [`LeaseKeeper`] task that renews every lease at `max(lease/2, min)`
//! (mappings by repeating `AddPortMapping`, pinholes by `UpdatePinhole`), retries a
//! failed renewal sooner, and deletes everything when stopped. [`renew_interval`] is the
//! pure schedule.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::upnp::{Gateway, PinholeRequest, PortMapping, Protocol};

/// When to renew a lease of `lease` length: half the lease, at least `min`; `None` for
/// a permanent (zero) lease.
pub fn renew_interval(lease: Duration, min: Duration) -> Option<Duration> {
    if lease.is_zero() {
        None
    } else {
        Some((lease / 2).max(min))
    }
}

/// One active port mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingLease {
    /// The request that made it (repeated to renew).
    pub mapping: PortMapping,
}

/// One active pinhole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinholeLease {
    /// `UniqueID` from `AddPinhole`.
    pub id: u32,
    /// The request that made it.
    pub request: PinholeRequest,
}

/// Mappings and pinholes held on one gateway.
#[derive(Clone, Debug, Default)]
pub struct Leases {
    gateway: Option<Arc<dyn Gateway>>,
    /// Port mappings.
    pub mappings: Vec<MappingLease>,
    /// Pinholes.
    pub pinholes: Vec<PinholeLease>,
}

/// Settings of a [`LeaseKeeper`].
#[derive(Clone, Copy, Debug)]
pub struct KeeperConfig {
    /// Shortest renewal interval (default 60 s, SEED-SDK.md §3.3).
    pub min_interval: Duration,
    /// Wait before retrying a failed renewal (default 30 s, bounded by the interval).
    pub retry_after_failure: Duration,
    /// Timeout of each renewal call and of each delete at stop.
    pub cleanup_timeout: Duration,
}

impl Default for KeeperConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(60),
            retry_after_failure: Duration::from_secs(30),
            cleanup_timeout: Duration::from_secs(5),
        }
    }
}

impl Leases {
    pub(crate) fn new(gateway: Option<Arc<dyn Gateway>>) -> Self {
        Self {
            gateway,
            mappings: Vec::new(),
            pinholes: Vec::new(),
        }
    }

    pub(crate) fn set_gateway(&mut self, gateway: Option<Arc<dyn Gateway>>) {
        self.gateway = gateway;
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty() && self.pinholes.is_empty()
    }

    /// Deletes every mapping and pinhole now (errors are logged).
    pub async fn release(mut self, timeout: Duration) {
        release(
            self.gateway.take(),
            &mut self.mappings,
            &mut self.pinholes,
            timeout,
        )
        .await;
    }

    /// Starts renewing; the returned keeper deletes everything when stopped or dropped.
    /// Needs a tokio runtime.
    pub fn keep(self, config: KeeperConfig) -> LeaseKeeper {
        let renewals = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep(self, config, Arc::clone(&renewals), stop_rx));
        LeaseKeeper {
            stop: Some(stop_tx),
            task: Some(task),
            renewals,
        }
    }
}

async fn release(
    gateway: Option<Arc<dyn Gateway>>,
    mappings: &mut Vec<MappingLease>,
    pinholes: &mut Vec<PinholeLease>,
    timeout: Duration,
) {
    let Some(gw) = gateway else { return };
    for m in mappings.drain(..) {
        let port = m.mapping.external_port;
        match tokio::time::timeout(timeout, gw.delete_port_mapping(port, m.mapping.protocol)).await
        {
            Ok(Ok(())) => tracing::info!(port, "UPnP port mapping deleted"),
            Ok(Err(e)) => tracing::warn!(port, error = %e, "DeletePortMapping failed"),
            Err(_) => tracing::warn!(port, "DeletePortMapping timed out"),
        }
    }
    for p in pinholes.drain(..) {
        match tokio::time::timeout(timeout, gw.delete_pinhole(p.id)).await {
            Ok(Ok(())) => tracing::info!(id = p.id, "IPv6 pinhole deleted"),
            Ok(Err(e)) => tracing::warn!(id = p.id, error = %e, "DeletePinhole failed"),
            Err(_) => tracing::warn!(id = p.id, "DeletePinhole timed out"),
        }
    }
}

async fn keep(
    mut leases: Leases,
    config: KeeperConfig,
    renewals: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let shortest = leases
        .mappings
        .iter()
        .map(|m| m.mapping.lease)
        .chain(leases.pinholes.iter().map(|p| p.request.lease))
        .filter_map(|l| renew_interval(l, config.min_interval))
        .min();
    if let (Some(interval), Some(gw)) = (shortest, leases.gateway.clone()) {
        let mut wait = interval;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let mut ok = true;
            let t = config.cleanup_timeout;
            for m in &leases.mappings {
                let r = tokio::time::timeout(t, gw.add_port_mapping(&m.mapping)).await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!(
                        port = m.mapping.external_port,
                        "port mapping renewal failed"
                    );
                    ok = false;
                }
            }
            for p in &mut leases.pinholes {
                let r = tokio::time::timeout(t, gw.update_pinhole(p.id, p.request.lease)).await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::warn!(id = p.id, "pinhole renewal failed");
                    // SEED-SDK.md §3.3: raise the lease to at least 120 s and reschedule
                    p.request.lease = p.request.lease.max(Duration::from_secs(120));
                    ok = false;
                }
            }
            if ok {
                renewals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("leases renewed");
                wait = interval;
            } else {
                wait = config.retry_after_failure.min(interval);
            }
        }
    } else {
        let _ = (&mut stop).await;
    }
    let gw = leases.gateway.take();
    release(
        gw,
        &mut leases.mappings,
        &mut leases.pinholes,
        config.cleanup_timeout,
    )
    .await;
}

/// Renews leases in the background; deletes them on [`LeaseKeeper::stop`] (or, best
/// effort, when dropped inside a runtime).
#[derive(Debug)]
pub struct LeaseKeeper {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    renewals: Arc<AtomicU64>,
}

impl LeaseKeeper {
    /// Completed renewal rounds.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Stops renewing and waits until every mapping and pinhole is deleted.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        // the task sees the closed channel, deletes the leases and ends on its own
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A mapping request for `internal_client:port` → WAN `port`, TCP.
pub(crate) fn tcp_mapping(
    internal_client: IpAddr,
    internal: u16,
    external: u16,
    lease: Duration,
    description: &str,
) -> PortMapping {
    PortMapping {
        external_port: external,
        internal_port: internal,
        internal_client,
        protocol: Protocol::Tcp,
        lease,
        description: description.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let min = Duration::from_secs(60);
        assert_eq!(
            renew_interval(Duration::from_secs(3600), min),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(renew_interval(Duration::from_secs(90), min), Some(min));
        assert_eq!(renew_interval(Duration::ZERO, min), None);
    }
}
