//! In-process [`Store`]: nothing survives the process. For tests and throwaway meshes.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};

use super::{
    KeyRecord, KeyStatus, NodeRecord, NodeState, ReceiptOutcome, ReceiptRecord, Store, StoreFuture,
};

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<String, NodeRecord>,
    key_seed: Option<[u8; 32]>,
    receipts: Vec<ReceiptRecord>,
    nonces: HashSet<(String, String)>,
    balances: HashMap<String, f64>,
    operators: HashMap<String, (String, u64)>,
    keys: HashMap<String, KeyRecord>,
}

/// A [`Store`] in memory. Receipts are kept up to a bound (oldest dropped first).
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_receipts: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping at most 100 000 receipts.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_receipts: 100_000,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Store for MemoryStore {
    fn load_nodes(&self) -> StoreFuture<'_, Vec<NodeRecord>> {
        ready(self.lock().nodes.values().cloned().collect())
    }

    fn load_node(&self, node_id: String) -> StoreFuture<'_, Option<NodeRecord>> {
        ready(self.lock().nodes.get(&node_id).cloned())
    }

    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, u64> {
        self.lock().nodes.insert(node.node_id.clone(), node);
        ready(0)
    }

    fn put_state(&self, node_id: String, state: NodeState) -> StoreFuture<'_, bool> {
        let found = match self.lock().nodes.get_mut(&node_id) {
            Some(n) => {
                n.state = state;
                true
            }
            None => false,
        };
        ready(found)
    }

    fn delete_node(&self, node_id: String) -> StoreFuture<'_, bool> {
        ready(self.lock().nodes.remove(&node_id).is_some())
    }

    fn directory_key_seed(&self, candidate: [u8; 32]) -> StoreFuture<'_, [u8; 32]> {
        let mut inner = self.lock();
        let seed = *inner.key_seed.get_or_insert(candidate);
        ready(seed)
    }

    fn record_receipt(&self, receipt: ReceiptRecord) -> StoreFuture<'_, ReceiptOutcome> {
        let mut inner = self.lock();
        let key = (receipt.node_id.clone(), receipt.nonce.clone());
        if !inner.nonces.insert(key) {
            return ready(ReceiptOutcome::Duplicate);
        }
        let balance = {
            let b = inner.balances.entry(receipt.node_id.clone()).or_insert(0.0);
            *b += receipt.amount;
            *b
        };
        inner.receipts.push(receipt);
        if inner.receipts.len() > self.max_receipts {
            let excess = inner.receipts.len() - self.max_receipts;
            inner.receipts.drain(..excess);
        }
        ready(ReceiptOutcome::Recorded { balance })
    }

    fn credit_balance(&self, node_id: String) -> StoreFuture<'_, f64> {
        ready(self.lock().balances.get(&node_id).copied().unwrap_or(0.0))
    }

    fn receipts(&self, node_id: String, limit: usize) -> StoreFuture<'_, Vec<ReceiptRecord>> {
        let inner = self.lock();
        ready(
            inner
                .receipts
                .iter()
                .rev()
                .filter(|r| r.node_id == node_id)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    fn set_operator_name(
        &self,
        operator_pub: String,
        display_name: String,
        ts: u64,
    ) -> StoreFuture<'_, bool> {
        let mut inner = self.lock();
        let stale = inner
            .operators
            .get(&operator_pub)
            .is_some_and(|(_, old_ts)| *old_ts >= ts);
        if stale {
            return ready(false);
        }
        inner.operators.insert(operator_pub, (display_name, ts));
        ready(true)
    }

    fn operator_name(&self, operator_pub: String) -> StoreFuture<'_, Option<String>> {
        ready(
            self.lock()
                .operators
                .get(&operator_pub)
                .map(|(n, _)| n.clone()),
        )
    }

    fn put_key_status(&self, record: KeyRecord) -> StoreFuture<'_, bool> {
        let mut inner = self.lock();
        let allowed = match inner.keys.get(&record.key_sha256) {
            None => true,
            Some(old) => old.status == KeyStatus::Superseded && record.status == KeyStatus::Revoked,
        };
        if allowed {
            inner.keys.insert(record.key_sha256.clone(), record);
        }
        ready(allowed)
    }

    fn key_statuses(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        ready(self.lock().keys.values().cloned().collect())
    }
}
