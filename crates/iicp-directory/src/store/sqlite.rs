//! SQLite [`Store`] (rusqlite, bundled SQLite): one database file, WAL journal,
//! `synchronous=FULL` so every acknowledged write survives a crash or power loss,
//! numbered schema migrations in a transaction, and every call off the async runtime
//! threads: [`Store::put_state`] (heartbeats, probe results) on one writer thread with
//! group commit, everything else on the blocking thread pool (`spawn_blocking`).
//!
//! Group commit (`docs/adr/0014-heartbeat-group-commit.md`): `put_state` hands its row
//! to the writer thread and waits. The writer takes the first waiting write and every
//! other one already queued (at most [`MAX_GROUP_COMMIT`]), applies them in one
//! `IMMEDIATE` transaction and commits it (one WAL fsync), and only then answers each
//! caller. It never waits for more writes to arrive: a lone write commits at once, and
//! writes batch up by themselves while a commit is in flight. If the transaction fails,
//! it is rolled back and every write in it gets [`StoreError::GroupCommit`]; nothing is
//! acknowledged that is not durable.
//!
//! Schema (version 1): `nodes` keeps indexed copies of `endpoint`,
//! `transport_endpoint`, `region`, `cx_public_key`, the credential hashes and
//! `last_seen_ms`, plus the full REGISTER JSON and the dynamic state as JSON;
//! `directory_key`, `receipts` (unique `(node_id, nonce)`), `credits` and `operators`.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::group::{Counters, GroupCommitStats, MAX_GROUP_COMMIT};
use super::{
    decode_node, encode_state, registration_updates, to_i64, to_u64, KeyRecord, KeyStatus,
    NodeRecord, NodeState, RawNode, ReceiptOutcome, ReceiptRecord, Store, StoreFuture,
};
use crate::error::StoreError;

/// The schema migrations, applied in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE nodes (
    node_id            TEXT PRIMARY KEY,
    endpoint           TEXT NOT NULL,
    transport_endpoint TEXT,
    region             TEXT NOT NULL,
    cx_public_key      TEXT,
    token_hash         TEXT NOT NULL UNIQUE,
    proxy_token_hash   TEXT NOT NULL,
    hmac_key           TEXT NOT NULL,
    registered_at_ms   INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    last_seen_ms       INTEGER NOT NULL,
    registration_json  TEXT NOT NULL,
    state_json         TEXT NOT NULL
);
CREATE INDEX nodes_last_seen ON nodes(last_seen_ms);
CREATE INDEX nodes_region ON nodes(region);
CREATE TABLE directory_key (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seed BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE receipts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id          TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    nonce            TEXT NOT NULL,
    tokens_used      INTEGER NOT NULL,
    amount           REAL NOT NULL,
    response_hash    TEXT NOT NULL,
    querying_node_id TEXT,
    reason           TEXT NOT NULL,
    recorded_at_ms   INTEGER NOT NULL,
    UNIQUE (node_id, nonce)
);
CREATE INDEX receipts_node ON receipts(node_id, id);
CREATE TABLE credits (
    node_id TEXT PRIMARY KEY,
    balance REAL NOT NULL
);
CREATE TABLE operators (
    operator_pub TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    ts           INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE key_lifecycle (
    key_sha256     TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    at_ms          INTEGER NOT NULL,
    reason_class   TEXT NOT NULL,
    rotation_epoch INTEGER
);
"#,
];

/// One `put_state` waiting for the writer.
struct StateWrite {
    node_id: String,
    state_json: String,
    last_seen_ms: i64,
    reply: tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
}

/// The sending half of the writer thread's queue; the thread ends when the last clone
/// of the store is dropped.
#[derive(Debug)]
struct Writer {
    queue: mpsc::Sender<StateWrite>,
    counters: Arc<Counters>,
}

/// A [`Store`] in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    writer: Arc<Writer>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, switches it to WAL and
    /// applies pending migrations. Blocking: call it before starting the runtime work,
    /// or use [`SqliteStore::open_async`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(StoreError::Io)?;
        }
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        let (queue, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        {
            let (conn, counters) = (Arc::clone(&conn), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("iicp-dir-sqlite-writer".into())
                .spawn(move || writer_loop(&conn, &rx, &counters))
                .map_err(StoreError::Io)?;
        }
        Ok(Self {
            conn,
            path,
            writer: Arc::new(Writer { queue, counters }),
        })
    }

    /// Counters of the group-commit writer: transactions and writes so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.writer.counters.snapshot()
    }

    /// [`SqliteStore::open`] on the blocking thread pool.
    pub async fn open_async(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open(path))
            .await
            .map_err(|_| StoreError::Task)?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.conn.lock();
        Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn run<'a, T, F>(&'a self, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock();
                f(&mut guard)
            })
            .await
            .map_err(|_| StoreError::Task)?
        })
    }
}

/// The group-commit writer: one transaction per batch of queued `put_state` writes,
/// each caller answered after the commit (or the rollback).
fn writer_loop(conn: &Mutex<Connection>, rx: &mpsc::Receiver<StateWrite>, counters: &Counters) {
    let mut batch: Vec<StateWrite> = Vec::with_capacity(MAX_GROUP_COMMIT);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP_COMMIT {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = commit_states(&mut conn.lock(), &batch);
        let n = batch.len() as u64;
        match result {
            Ok(found) => {
                counters.committed(n);
                for (w, found) in batch.drain(..).zip(found) {
                    let _ = w.reply.send(Ok(found));
                }
            }
            Err(err) => {
                counters.failed(n);
                tracing::error!(error = %err, writes = n, "directory group commit failed; rolled back");
                let err = Arc::new(err);
                for w in batch.drain(..) {
                    let _ = w.reply.send(Err(StoreError::GroupCommit(Arc::clone(&err))));
                }
            }
        }
    }
}

/// Applies `batch` in one `IMMEDIATE` transaction; for each write whether its node
/// exists. On any error the transaction is rolled back (dropped uncommitted).
fn commit_states(conn: &mut Connection, batch: &[StateWrite]) -> Result<Vec<bool>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut found = Vec::with_capacity(batch.len());
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE nodes SET state_json = ?2, last_seen_ms = ?3 WHERE node_id = ?1",
        )?;
        for w in batch {
            found.push(stmt.execute(params![w.node_id, w.state_json, w.last_seen_ms])? > 0);
        }
    }
    tx.commit()?;
    Ok(found)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tracing::info!(version = i + 1, "directory database migrated");
    }
    tx.commit()?;
    Ok(())
}

fn row_to_node(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<NodeRecord, StoreError>> {
    let raw = RawNode {
        node_id: row.get("node_id")?,
        endpoint: row.get("endpoint")?,
        transport_endpoint: row.get("transport_endpoint")?,
        region: row.get("region")?,
        cx_public_key: row.get("cx_public_key")?,
        token_hash: row.get("token_hash")?,
        proxy_token_hash: row.get("proxy_token_hash")?,
        hmac_key: row.get("hmac_key")?,
        registered_at_ms: row.get("registered_at_ms")?,
        updated_at_ms: row.get("updated_at_ms")?,
        registration_json: row.get("registration_json")?,
        state_json: row.get("state_json")?,
        rev: 0,
    };
    Ok(decode_node(raw))
}

impl Store for SqliteStore {
    fn load_nodes(&self) -> StoreFuture<'_, Vec<NodeRecord>> {
        self.run(|conn| {
            let mut stmt = conn.prepare("SELECT * FROM nodes")?;
            let rows = stmt.query_map([], row_to_node)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
    }

    fn load_node(&self, node_id: String) -> StoreFuture<'_, Option<NodeRecord>> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT * FROM nodes WHERE node_id = ?1")?;
            let found = stmt.query_row([node_id], row_to_node).optional()?;
            found.transpose()
        })
    }

    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, u64> {
        self.run(move |conn| {
            let (registration, cx) = super::encode_registration(&node)?;
            conn.execute(
                concat!(
                    "INSERT INTO nodes (node_id, endpoint, transport_endpoint, region,
                        cx_public_key, token_hash, proxy_token_hash, hmac_key, registered_at_ms,
                        updated_at_ms, last_seen_ms, registration_json, state_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT(node_id) DO UPDATE SET ",
                    registration_updates!(),
                    ", last_seen_ms = excluded.last_seen_ms, state_json = excluded.state_json"
                ),
                params![
                    node.node_id,
                    node.endpoint,
                    node.transport_endpoint,
                    node.region,
                    cx,
                    node.credentials.token_hash,
                    node.credentials.proxy_token_hash,
                    node.credentials.hmac_key.expose(),
                    to_i64(node.registered_at_ms),
                    to_i64(node.updated_at_ms),
                    to_i64(node.state.last_seen_ms),
                    registration,
                    encode_state(&node.state)?,
                ],
            )?;
            Ok(0)
        })
    }

    /// Queued to the group-commit writer at once (not on first poll); resolves after
    /// the transaction holding it is durable, or with [`StoreError::GroupCommit`] if
    /// that transaction failed.
    fn put_state(&self, node_id: String, state: NodeState) -> StoreFuture<'_, bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = encode_state(&state).and_then(|state_json| {
            self.writer
                .queue
                .send(StateWrite {
                    node_id,
                    state_json,
                    last_seen_ms: to_i64(state.last_seen_ms),
                    reply,
                })
                .map_err(|_| StoreError::Task)
        });
        Box::pin(async move {
            queued?;
            answer.await.map_err(|_| StoreError::Task)?
        })
    }

    fn delete_node(&self, node_id: String) -> StoreFuture<'_, bool> {
        self.run(move |conn| {
            Ok(conn.execute("DELETE FROM nodes WHERE node_id = ?1", [node_id])? > 0)
        })
    }

    fn directory_key_seed(&self, candidate: [u8; 32]) -> StoreFuture<'_, [u8; 32]> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<Vec<u8>> = tx
                .query_row("SELECT seed FROM directory_key WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let seed = match existing {
                Some(bytes) => {
                    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| StoreError::Corrupt {
                        what: "directory key",
                    })?
                }
                None => {
                    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                    tx.execute(
                        "INSERT INTO directory_key (id, seed, created_at_ms) VALUES (1, ?1, ?2)",
                        params![candidate.as_slice(), to_i64(now)],
                    )?;
                    candidate
                }
            };
            tx.commit()?;
            Ok(seed)
        })
    }

    fn record_receipt(&self, receipt: ReceiptRecord) -> StoreFuture<'_, ReceiptOutcome> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO receipts (node_id, task_id, nonce, tokens_used, amount,
                    response_hash, querying_node_id, reason, recorded_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    receipt.node_id,
                    receipt.task_id,
                    receipt.nonce,
                    to_i64(receipt.tokens_used),
                    receipt.amount,
                    receipt.response_hash,
                    receipt.querying_node_id,
                    receipt.reason,
                    to_i64(receipt.recorded_at_ms),
                ],
            )?;
            if inserted == 0 {
                return Ok(ReceiptOutcome::Duplicate);
            }
            tx.execute(
                "INSERT INTO credits (node_id, balance) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET balance = balance + excluded.balance",
                params![receipt.node_id, receipt.amount],
            )?;
            let balance: f64 = tx.query_row(
                "SELECT balance FROM credits WHERE node_id = ?1",
                [&receipt.node_id],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(ReceiptOutcome::Recorded { balance })
        })
    }

    fn credit_balance(&self, node_id: String) -> StoreFuture<'_, f64> {
        self.run(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT balance FROM credits WHERE node_id = ?1",
                    [node_id],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0.0))
        })
    }

    fn receipts(&self, node_id: String, limit: usize) -> StoreFuture<'_, Vec<ReceiptRecord>> {
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT node_id, task_id, nonce, tokens_used, amount, response_hash,
                        querying_node_id, reason, recorded_at_ms
                 FROM receipts WHERE node_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![node_id, to_i64(limit as u64)], |r| {
                Ok(ReceiptRecord {
                    node_id: r.get(0)?,
                    task_id: r.get(1)?,
                    nonce: r.get(2)?,
                    tokens_used: to_u64(r.get(3)?),
                    amount: r.get(4)?,
                    response_hash: r.get(5)?,
                    querying_node_id: r.get(6)?,
                    reason: r.get(7)?,
                    recorded_at_ms: to_u64(r.get(8)?),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn set_operator_name(
        &self,
        operator_pub: String,
        display_name: String,
        ts: u64,
    ) -> StoreFuture<'_, bool> {
        self.run(move |conn| {
            let n = conn.execute(
                "INSERT INTO operators (operator_pub, display_name, ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT(operator_pub) DO UPDATE SET display_name = excluded.display_name,
                    ts = excluded.ts
                 WHERE excluded.ts > operators.ts",
                params![operator_pub, display_name, to_i64(ts)],
            )?;
            Ok(n > 0)
        })
    }

    fn operator_name(&self, operator_pub: String) -> StoreFuture<'_, Option<String>> {
        self.run(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT display_name FROM operators WHERE operator_pub = ?1",
                    [operator_pub],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn put_key_status(&self, record: KeyRecord) -> StoreFuture<'_, bool> {
        self.run(move |conn| {
            // a revoked key stays revoked; a superseded one may still be revoked
            let n = conn.execute(
                "INSERT INTO key_lifecycle (key_sha256, status, at_ms, reason_class, rotation_epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(key_sha256) DO UPDATE SET status = excluded.status,
                    at_ms = excluded.at_ms, reason_class = excluded.reason_class
                 WHERE key_lifecycle.status = 'superseded' AND excluded.status = 'revoked'",
                params![
                    record.key_sha256,
                    record.status.as_str(),
                    to_i64(record.at_ms),
                    record.reason_class,
                    record.rotation_epoch.map(to_i64),
                ],
            )?;
            Ok(n > 0)
        })
    }

    fn key_statuses(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT key_sha256, status, at_ms, reason_class, rotation_epoch FROM key_lifecycle",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (key_sha256, status, at_ms, reason_class, epoch) = row?;
                let Some(status) = KeyStatus::parse(&status) else {
                    continue;
                };
                out.push(KeyRecord {
                    key_sha256,
                    status,
                    at_ms: to_u64(at_ms),
                    reason_class,
                    rotation_epoch: epoch.map(to_u64),
                });
            }
            Ok(out)
        })
    }
}
