//! What the group-commit writers of the SQLite and PostgreSQL stores share: the batch
//! bound and their counters (`docs/adr/0014-heartbeat-group-commit.md`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Most `put_state` writes committed in one transaction by a group-commit writer.
pub const MAX_GROUP_COMMIT: usize = 1024;

/// Counters of a group-commit writer (`put_state`), since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Transactions the writer committed (each one WAL flush).
    pub commits: u64,
    /// Writes acknowledged as durable (the rows of those transactions).
    pub writes: u64,
    /// Transactions that failed and were rolled back.
    pub failed_commits: u64,
    /// Writes answered with [`crate::StoreError::GroupCommit`].
    pub failed_writes: u64,
    /// The largest number of writes in one transaction.
    pub largest_batch: u64,
}

/// The live counters behind [`GroupCommitStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    failed_commits: AtomicU64,
    failed_writes: AtomicU64,
    largest_batch: AtomicU64,
}

impl Counters {
    /// A transaction of `n` writes committed.
    pub(crate) fn committed(&self, n: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(n, Ordering::Relaxed);
        self.largest_batch.fetch_max(n, Ordering::Relaxed);
    }

    /// A transaction of `n` writes failed.
    pub(crate) fn failed(&self, n: u64) {
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
        self.failed_writes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> GroupCommitStats {
        GroupCommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            failed_writes: self.failed_writes.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
        }
    }
}
