//! SQLite [`Store`] (rusqlite, bundled SQLite): one database file, WAL journal,
//! `synchronous=FULL` so every acknowledged write survives a crash or power loss,
//! numbered schema migrations in a transaction, and every call on the blocking thread
//! pool (`spawn_blocking`), never on the async runtime threads.
//!
//! Schema (version 1): `nodes` keeps indexed copies of `endpoint`,
//! `transport_endpoint`, `region`, `cx_public_key`, the credential hashes and
//! `last_seen_ms`, plus the full REGISTER JSON and the dynamic state as JSON;
//! `directory_key`, `receipts` (unique `(node_id, nonce)`), `credits` and `operators`.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iicp_proto::secret::Secret;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::{
    NodeCredentials, NodeRecord, NodeState, ReceiptOutcome, ReceiptRecord, Store, StoreFuture,
};
use crate::error::StoreError;

/// The schema migrations, applied in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// A [`Store`] in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn state_json(state: &NodeState) -> Result<String, StoreError> {
    serde_json::to_string(state).map_err(|_| StoreError::Corrupt { what: "node state" })
}

fn row_to_node(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<NodeRecord, StoreError>> {
    let node_id: String = row.get("node_id")?;
    let cx: Option<String> = row.get("cx_public_key")?;
    let registration: String = row.get("registration_json")?;
    let state: String = row.get("state_json")?;
    let build = || -> Result<NodeRecord, StoreError> {
        Ok(NodeRecord {
            registration: serde_json::from_str(&registration).map_err(|_| StoreError::Corrupt {
                what: "registration",
            })?,
            endpoint: row.get("endpoint")?,
            transport_endpoint: row.get("transport_endpoint")?,
            region: row.get("region")?,
            cx_public_key: match cx {
                Some(text) => {
                    Some(
                        serde_json::from_str::<Value>(&text).map_err(|_| StoreError::Corrupt {
                            what: "cx_public_key",
                        })?,
                    )
                }
                None => None,
            },
            credentials: NodeCredentials {
                token_hash: row.get("token_hash")?,
                proxy_token_hash: row.get("proxy_token_hash")?,
                hmac_key: Secret::new(row.get::<_, String>("hmac_key")?),
            },
            registered_at_ms: to_u64(row.get("registered_at_ms")?),
            updated_at_ms: to_u64(row.get("updated_at_ms")?),
            state: serde_json::from_str(&state)
                .map_err(|_| StoreError::Corrupt { what: "node state" })?,
            node_id: node_id.clone(),
        })
    };
    Ok(build())
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

    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            let registration =
                serde_json::to_string(&node.registration).map_err(|_| StoreError::Corrupt {
                    what: "registration",
                })?;
            let cx = match &node.cx_public_key {
                Some(v) => Some(serde_json::to_string(v).map_err(|_| StoreError::Corrupt {
                    what: "cx_public_key",
                })?),
                None => None,
            };
            conn.execute(
                "INSERT INTO nodes (node_id, endpoint, transport_endpoint, region, cx_public_key,
                    token_hash, proxy_token_hash, hmac_key, registered_at_ms, updated_at_ms,
                    last_seen_ms, registration_json, state_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT(node_id) DO UPDATE SET
                    endpoint = excluded.endpoint,
                    transport_endpoint = excluded.transport_endpoint,
                    region = excluded.region,
                    cx_public_key = excluded.cx_public_key,
                    token_hash = excluded.token_hash,
                    proxy_token_hash = excluded.proxy_token_hash,
                    hmac_key = excluded.hmac_key,
                    registered_at_ms = excluded.registered_at_ms,
                    updated_at_ms = excluded.updated_at_ms,
                    last_seen_ms = excluded.last_seen_ms,
                    registration_json = excluded.registration_json,
                    state_json = excluded.state_json",
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
                    state_json(&node.state)?,
                ],
            )?;
            Ok(())
        })
    }

    fn put_state(&self, node_id: String, state: NodeState) -> StoreFuture<'_, bool> {
        self.run(move |conn| {
            let n = conn.execute(
                "UPDATE nodes SET state_json = ?2, last_seen_ms = ?3 WHERE node_id = ?1",
                params![node_id, state_json(&state)?, to_i64(state.last_seen_ms)],
            )?;
            Ok(n > 0)
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
}
