//! Group commit of the SQLite store (`docs/adr/0014-heartbeat-group-commit.md`):
//! concurrent heartbeats share transactions, every acknowledged one is in the file
//! after a reopen or a kill, and a failed transaction fails every write in it.
//!
//! Failures are injected without a test seam in the store: a second connection to the
//! same file adds a trigger whose deferred foreign-key violation makes the writer's
//! `COMMIT` itself fail, and a second connection holding the write lock keeps the
//! writer waiting so that queued writes batch deterministically.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::sync::Arc;

use common::*;
use iicp_directory::error::StoreError;
use iicp_directory::store::NodeState;
use iicp_directory::{Directory, SqliteStore, Store};
use serde_json::json;

/// Adds (or drops) a trigger that makes every transaction updating `nodes` fail at
/// `COMMIT` (a deferred foreign-key violation), through a second connection.
const FAIL_COMMITS: &str = "
    CREATE TABLE gc_parent (id INTEGER PRIMARY KEY);
    CREATE TABLE gc_child (pid INTEGER REFERENCES gc_parent(id) DEFERRABLE INITIALLY DEFERRED);
    CREATE TRIGGER gc_fail AFTER UPDATE ON nodes BEGIN INSERT INTO gc_child VALUES (1); END;";
const HEAL: &str = "DROP TRIGGER gc_fail; DROP TABLE gc_child; DROP TABLE gc_parent;";

fn second_connection(db: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_during_a_commit_share_one_transaction() {
    let tmp = TempDir::new("gc-batch");
    let store = SqliteStore::open_async(tmp.db()).await.unwrap();
    for i in 0..100 {
        store.put_node(record(i)).await.unwrap();
    }
    // A second connection holds the write lock: the writer waits in BEGIN for it while
    // the 100 writes below queue (each is queued when put_state is called).
    let blocker = second_connection(&tmp.db());
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let pending: Vec<_> = (0..100)
        .map(|i| store.put_state(format!("node-{i:04}"), state(i)))
        .collect();
    let unknown = store.put_state("no-such-node".into(), state(7));
    blocker.execute_batch("COMMIT").unwrap();
    for p in pending {
        assert!(p.await.unwrap());
    }
    assert!(
        !unknown.await.unwrap(),
        "an unknown node is reported per write"
    );
    let stats = store.group_commit_stats();
    assert_eq!(stats.writes, 101);
    // The first batch may have been taken before the rest were queued; the rest share
    // the next transaction.
    assert!(stats.commits <= 2, "{stats:?}");
    assert!(stats.largest_batch >= 50, "{stats:?}");
    drop(store);

    let reopened = SqliteStore::open_async(tmp.db()).await.unwrap();
    let nodes = reopened.load_nodes().await.unwrap();
    assert_eq!(nodes.len(), 100);
    for n in nodes {
        let i: u64 = n.node_id["node-".len()..].parse().unwrap();
        assert_eq!(n.state, state(i), "{}", n.node_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_commit_fails_every_write_in_it() {
    let tmp = TempDir::new("gc-fail");
    let store = SqliteStore::open_async(tmp.db()).await.unwrap();
    for i in 0..20 {
        store.put_node(record(i)).await.unwrap();
    }
    let side = second_connection(&tmp.db());
    side.execute_batch("BEGIN IMMEDIATE").unwrap();
    side.execute_batch(FAIL_COMMITS).unwrap();
    let pending: Vec<_> = (0..20)
        .map(|i| store.put_state(format!("node-{i:04}"), state(100 + i)))
        .collect();
    side.execute_batch("COMMIT").unwrap();
    for p in pending {
        let err = p
            .await
            .expect_err("a write of a failed transaction is not acknowledged");
        assert!(matches!(err, StoreError::GroupCommit(_)), "{err:?}");
    }
    let stats = store.group_commit_stats();
    assert_eq!((stats.writes, stats.failed_writes), (0, 20), "{stats:?}");
    assert!((1..=2).contains(&stats.failed_commits), "{stats:?}");

    // Nothing of the failed transactions is stored, and the writer keeps working.
    for n in store.load_nodes().await.unwrap() {
        assert_eq!(n.state, NodeState::new(1), "{}", n.node_id);
    }
    side.execute_batch(HEAL).unwrap();
    assert!(store.put_state("node-0003".into(), state(3)).await.unwrap());
    drop(store);
    let reopened = SqliteStore::open_async(tmp.db()).await.unwrap();
    for n in reopened.load_nodes().await.unwrap() {
        let want = if n.node_id == "node-0003" {
            state(3)
        } else {
            NodeState::new(1)
        };
        assert_eq!(n.state, want, "{}", n.node_id);
    }
}

async fn start_on(store: SqliteStore) -> (Directory, String, iicp_transport::shutdown::Trigger) {
    let directory = Directory::builder()
        .private_mesh(true)
        .liveness_probe(false)
        .store(store)
        .build()
        .await
        .unwrap();
    let listener = iicp_transport::listener::Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        iicp_transport::listener::ListenerConfig::default(),
    )
    .await
    .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (trigger, signal) = iicp_transport::shutdown::channel();
    let d = directory.clone();
    tokio::spawn(async move { d.serve(listener, signal).await.unwrap() });
    (directory, format!("http://127.0.0.1:{port}"), trigger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_heartbeats_are_all_durable_after_reopen() {
    let tmp = TempDir::new("gc-http");
    let store = SqliteStore::open_async(tmp.db()).await.unwrap();
    let (_directory, base, trigger) = start_on(store.clone()).await;
    let mut nodes = Vec::new();
    for i in 0..40 {
        let ack = register(
            &base,
            &register_body(
                &format!("http://127.0.0.1:{}", 21000 + i),
                "eu-central",
                &["m"],
            ),
        )
        .await;
        nodes.push((
            ack["node_id"].as_str().unwrap().to_owned(),
            ack["node_token"].as_str().unwrap().to_owned(),
        ));
    }
    let before = store.group_commit_stats();
    // Every node heartbeats 5 times in a row, all nodes at once: 200 heartbeats, 40 in
    // flight. The stored state must be the last acknowledged one of each node.
    let base = Arc::new(base);
    let mut tasks = Vec::new();
    for (id, token) in nodes {
        let base = Arc::clone(&base);
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for k in 1..=5u32 {
                let r = post(
                    &format!("{base}/v1/heartbeat"),
                    &json!({"node_id": id, "active_jobs": k, "load": 0.1 * f64::from(k)}),
                    Some(&token),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.body);
                last = Some(r.body["challenge"].as_str().unwrap().to_owned());
            }
            (id, last.unwrap())
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    let after = store.group_commit_stats();
    assert_eq!(after.writes - before.writes, 200);
    assert!(after.commits - before.commits <= 200);
    trigger.fire();
    drop(store);
    drop(_directory);

    let reopened = SqliteStore::open_async(tmp.db()).await.unwrap();
    let stored = reopened.load_nodes().await.unwrap();
    assert_eq!(stored.len(), 40);
    for (id, challenge) in acked {
        let n = stored.iter().find(|n| n.node_id == id).unwrap();
        assert_eq!(n.state.active_jobs, 5, "{id}");
        assert_eq!(
            n.state.challenge.as_deref(),
            Some(challenge.as_str()),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_answers_503_when_its_commit_fails() {
    let tmp = TempDir::new("gc-503");
    let store = SqliteStore::open_async(tmp.db()).await.unwrap();
    let (_directory, base, trigger) = start_on(store.clone()).await;
    let ack = register(
        &base,
        &register_body("http://127.0.0.1:21999", "eu-central", &["m"]),
    )
    .await;
    let (id, token) = (
        ack["node_id"].as_str().unwrap().to_owned(),
        ack["node_token"].as_str().unwrap().to_owned(),
    );
    let hb = json!({"node_id": id, "active_jobs": 3});
    let side = second_connection(&tmp.db());
    side.execute_batch(FAIL_COMMITS).unwrap();
    let r = post(&format!("{base}/v1/heartbeat"), &hb, Some(&token)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.raw.headers.get("retry-after").is_some());
    assert_eq!(store.group_commit_stats().failed_writes, 1);
    side.execute_batch(HEAL).unwrap();
    let r = post(&format!("{base}/v1/heartbeat"), &hb, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    trigger.fire();
}

const CHILD_ENV: &str = "IICP_GROUP_COMMIT_KILL_CHILD_DB";

/// The process the kill test starts and kills (`common::kill_child_writes`): opens the
/// store named by the environment and writes until killed. Without that environment
/// variable (a normal test run) it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_test_child_process() {
    let Some(db) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    kill_child_writes(Arc::new(SqliteStore::open_async(db).await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_kill() {
    let tmp = TempDir::new("gc-kill");
    let acked = kill_writer_child("kill_test_child_process", CHILD_ENV, tmp.db().as_os_str());
    let reopened = SqliteStore::open_async(tmp.db()).await.unwrap();
    assert_every_ack_stored(&reopened.load_nodes().await.unwrap(), acked);
}
