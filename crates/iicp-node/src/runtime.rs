//! The tokio runtime a node runs on (ADR 0021).
//!
//! A node forwards tasks to a model server that usually shares its machine, and its own
//! work per task is small (tens of µs). On a multi-threaded runtime a task's steps
//! (the caller's connection, the pipeline, the model server's connection) hop between
//! workers, and each hop to a parked worker is a thread wake-up the kernel charges for;
//! measured on a 2-core VM, one worker thread served more tasks per second than two and
//! spent about a third less CPU on each (docs/PERFORMANCE.md, "One runtime thread or one
//! per core"). So a node's default is one worker thread fewer than the machine has cores,
//! leaving one core to the model server and the kernel's network work — on two cores, a
//! single-threaded runtime.

use std::num::NonZeroUsize;

/// The node's default number of runtime worker threads: the available cores less one,
/// at least one.
#[must_use]
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .saturating_sub(1)
        .max(1)
}

/// A runtime builder (I/O and time enabled) with `worker_threads` workers: 0 takes
/// [`default_worker_threads`]; 1 is a current-thread runtime (no hand-offs between
/// workers at all); more is a multi-threaded runtime with that many workers.
#[must_use]
pub fn builder(worker_threads: usize) -> tokio::runtime::Builder {
    let n = match worker_threads {
        0 => default_worker_threads(),
        n => n,
    };
    let mut b = if n == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(n);
        b
    };
    b.enable_all();
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_one_core_and_never_falls_below_one_thread() {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let n = default_worker_threads();
        assert!(n >= 1);
        assert_eq!(n, if cores > 1 { cores - 1 } else { 1 });
    }

    #[test]
    fn the_builders_run_tasks_with_the_threads_asked_for() {
        for threads in [0, 1, 3] {
            let rt = builder(threads).build().unwrap();
            let workers = rt.metrics().num_workers();
            let expected = if threads == 0 {
                default_worker_threads()
            } else {
                threads
            };
            assert_eq!(workers, expected, "threads {threads}");
            // timers and I/O are enabled
            let got = rt.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                l.local_addr().unwrap().port() > 0
            });
            assert!(got);
        }
    }
}
