//! PostgreSQL [`Store`] (`tokio-postgres`, no TLS): one database shared by any number of
//! directory processes (`docs/adr/0015-postgresql-store.md`).
//!
//! * **Connections.** A small pool (at most [`PgStoreConfig::pool_size`]) for registrations,
//!   receipts and reads; [`PgStoreConfig::writers`] dedicated connections for the
//!   group-commit writers of `put_state`; one connection that `LISTEN`s for the changes
//!   of the other processes ([`Store::subscribe`]); one that holds the sweep lease
//!   (a session advisory lock). Every connection names itself in `application_name`
//!   (`iicp-directory`, `-writer`, `-listener`, `-sweeper`). A connection that breaks is
//!   replaced on next use.
//! * **Durability.** A call resolves `Ok` only after its transaction committed. If the
//!   server's `synchronous_commit` is `off`, the store switches it `on` for its own
//!   sessions; with `fsync=off` on the server it warns once at open.
//! * **Group commit.** `put_state` (heartbeats, probes) is queued at once and taken by a
//!   writer with every other queued write (at most [`MAX_GROUP_COMMIT`], one node at most
//!   once per batch), and written with one `UPDATE … FROM unnest(…)` statement (one
//!   transaction, one WAL flush). Each caller is answered after the commit; a failed
//!   statement fails every write in it with [`StoreError::GroupCommit`].
//! * **Revisions.** Every write of a node takes a new number from the sequence
//!   `node_rev`; `put_state_at` writes only over the expected revision, so two processes
//!   never overwrite each other's heartbeat (the challenge of the last PONG included).
//! * **Announcements.** `put_node`, `delete_node` and `set_operator_name` send
//!   `NOTIFY iicp_directory` in their transaction (delivered at commit), payload
//!   `n:<instance>:<node_id>` or `o:<instance>:<operator_pub>`; a process ignores its own.
//! * **Schema.** Numbered migrations in `schema_version`, applied in one transaction under
//!   a transaction advisory lock, so concurrent starts migrate once; a database newer than
//!   the build is refused ([`StoreError::SchemaTooNew`]).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification, Statement};

use super::group::{Counters, GroupCommitStats, MAX_GROUP_COMMIT};
use super::{
    decode_node, decode_state, encode_registration, encode_state, registration_updates, to_i64,
    to_u64, Change, ChangedState, KeyRecord, KeyStatus, NodeRecord, NodeState, RawNode,
    ReceiptOutcome, ReceiptRecord, StateChanges, StateWrite, Store, StoreFuture,
};
use crate::error::StoreError;

/// The notification channel of node and operator changes.
const CHANNEL: &str = "iicp_directory";
/// Advisory lock key of the migrations (transaction scope).
const MIGRATION_LOCK: i64 = 0x4949_4350_4d49_4752; // "IICPMIGR"
/// Advisory lock key of the sweep lease (session scope).
const SWEEP_LOCK: i64 = 0x4949_4350_5357_4550; // "IICPSWEP"

/// The schema migrations, applied in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE SEQUENCE node_rev;
CREATE TABLE nodes (
    node_id            text PRIMARY KEY,
    endpoint           text NOT NULL,
    transport_endpoint text,
    region             text NOT NULL,
    cx_public_key      text,
    token_hash         text NOT NULL UNIQUE,
    proxy_token_hash   text NOT NULL,
    hmac_key           text NOT NULL,
    registered_at_ms   bigint NOT NULL,
    updated_at_ms      bigint NOT NULL,
    registration_json  text NOT NULL
);
CREATE INDEX nodes_region ON nodes (region);
CREATE TABLE node_state (
    node_id      text PRIMARY KEY REFERENCES nodes (node_id) ON DELETE CASCADE,
    rev          bigint NOT NULL,
    reg_rev      bigint NOT NULL,
    last_seen_ms bigint NOT NULL,
    state_json   text NOT NULL
) WITH (fillfactor = 50);
CREATE TABLE directory_key (
    id            integer PRIMARY KEY CHECK (id = 1),
    seed          bytea NOT NULL,
    created_at_ms bigint NOT NULL
);
CREATE TABLE receipts (
    id               bigserial PRIMARY KEY,
    node_id          text NOT NULL,
    task_id          text NOT NULL,
    nonce            text NOT NULL,
    tokens_used      bigint NOT NULL,
    amount           double precision NOT NULL,
    response_hash    text NOT NULL,
    querying_node_id text,
    reason           text NOT NULL,
    recorded_at_ms   bigint NOT NULL,
    UNIQUE (node_id, nonce)
);
CREATE INDEX receipts_node ON receipts (node_id, id);
CREATE TABLE credits (
    node_id text PRIMARY KEY,
    balance double precision NOT NULL
);
CREATE TABLE operators (
    operator_pub text PRIMARY KEY,
    display_name text NOT NULL,
    ts           bigint NOT NULL
);
"#,
    r#"
CREATE TABLE key_lifecycle (
    key_sha256     text PRIMARY KEY,
    status         text NOT NULL,
    at_ms          bigint NOT NULL,
    reason_class   text NOT NULL,
    rotation_epoch bigint
);
"#,
];

const UPSERT_NODE: &str = concat!(
    "INSERT INTO nodes (node_id, endpoint, transport_endpoint, region, cx_public_key,
        token_hash, proxy_token_hash, hmac_key, registered_at_ms, updated_at_ms,
        registration_json)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (node_id) DO UPDATE SET ",
    registration_updates!()
);

/// The state of a (re-)registered node, with a new revision that is also its
/// registration revision.
const UPSERT_STATE: &str = "
WITH r AS (SELECT nextval('node_rev') AS v)
INSERT INTO node_state (node_id, rev, reg_rev, last_seen_ms, state_json)
SELECT $1, r.v, r.v, $2, $3 FROM r
ON CONFLICT (node_id) DO UPDATE SET rev = excluded.rev, reg_rev = excluded.reg_rev,
    last_seen_ms = excluded.last_seen_ms, state_json = excluded.state_json
RETURNING rev";

/// Most heartbeat writes queued for the writers; more callers wait.
const MAX_QUEUED_WRITES: usize = 65_536;
/// Most announcements queued between the listener and the directory; beyond that they
/// are dropped and the directory resynchronises.
const MAX_QUEUED_NOTES: usize = 4096;
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// The group-commit statement: the rows whose revision matched (or any revision for
/// an expected revision < 0) get the new state and a new revision.
const UPDATE_STATES: &str = "
UPDATE node_state AS s
   SET state_json = u.state, last_seen_ms = u.seen, rev = nextval('node_rev')
  FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS u(node_id, state, seen, expect)
 WHERE s.node_id = u.node_id AND (u.expect < 0 OR s.rev = u.expect)
RETURNING s.node_id, s.rev";

const NODE_COLUMNS: &str = "n.node_id, n.endpoint, n.transport_endpoint, n.region,
    n.cx_public_key, n.token_hash, n.proxy_token_hash, n.hmac_key, n.registered_at_ms,
    n.updated_at_ms, n.registration_json, s.rev, s.state_json";

/// Tuning of a [`PgStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PgStoreConfig {
    /// Most pooled connections (registrations, receipts, reads). Default 8.
    pub pool_size: usize,
    /// Group-commit writers, each on its own connection; while one commits, the next
    /// batch forms and goes to another. Default 2.
    pub writers: usize,
    /// Time budget of opening one connection. Default 5 s.
    pub connect_timeout: Duration,
}

impl Default for PgStoreConfig {
    fn default() -> Self {
        Self {
            pool_size: 8,
            writers: 2,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `url` with the password (of the user info, or a `password=` parameter) replaced by
/// `***`: what errors and logs may show of a database URL.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@') {
            if let Some(colon) = out[start..start + at].find(':') {
                out.replace_range(start + colon + 1..start + at, "***");
            }
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..].to_ascii_lowercase().find("password=") {
        let value = from + i + "password=".len();
        let end = out[value..]
            .find(['&', ' ', '\t', '\n'])
            .map_or(out.len(), |j| value + j);
        out.replace_range(value..end, "***");
        from = value + 3;
    }
    out
}

/// Connection settings and the redacted URL for messages.
#[derive(Clone)]
struct Target {
    config: Config,
    redacted: String,
}

impl Target {
    /// Opens one connection named `role`, its driver on a task of its own.
    async fn connect(&self, role: &str) -> Result<Client, StoreError> {
        let mut config = self.config.clone();
        config.application_name(role);
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|source| self.connect_error(source))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "postgresql connection closed");
            }
        });
        durable(&client).await?;
        Ok(client)
    }

    fn connect_error(&self, source: tokio_postgres::Error) -> StoreError {
        StoreError::Connect {
            target: self.redacted.clone(),
            source,
        }
    }
}

/// Makes sure a commit is acknowledged only once it is flushed: `synchronous_commit =
/// off` on the server (or the role) is overridden for this session.
async fn durable(client: &Client) -> Result<(), StoreError> {
    let row = client.query_one("SHOW synchronous_commit", &[]).await?;
    if row.get::<_, String>(0) == "off" {
        client.batch_execute("SET synchronous_commit = on").await?;
    }
    Ok(())
}

/// The connection pool of the ordinary calls.
struct Pool {
    target: Target,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

/// A pooled connection and the statements prepared on it.
struct Conn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

/// A pooled connection, returned to the pool on drop unless it broke.
struct Pooled<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Pooled<'_> {
    /// The connection (present from creation until drop).
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        Ok(&mut self.conn.as_mut().ok_or(StoreError::Task)?.client)
    }

    /// `sql` prepared on this connection (once per connection).
    async fn prepare(&mut self, sql: &str) -> Result<Statement, StoreError> {
        let conn = self.conn.as_mut().ok_or(StoreError::Task)?;
        if let Some(st) = conn.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = conn.client.prepare(sql).await?;
        conn.prepared.insert(sql.to_owned(), st.clone());
        Ok(st)
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                self.pool.idle.lock().push(conn);
            }
        }
    }
}

impl Pool {
    async fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let permit = self.permits.acquire().await.map_err(|_| StoreError::Task)?;
        let reused = loop {
            match self.idle.lock().pop() {
                Some(c) if c.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match reused {
            Some(c) => c,
            None => Conn {
                client: self.target.connect("iicp-directory").await?,
                prepared: HashMap::new(),
            },
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self,
            _permit: permit,
        })
    }

    /// Runs one prepared statement on a pooled connection.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut c = self.get().await?;
        let st = c.prepare(sql).await?;
        Ok(c.client()?.query(&st, params).await?)
    }
}

/// One `put_state` waiting for a writer.
struct QueuedState {
    node_id: String,
    state_json: String,
    last_seen_ms: i64,
    /// Expected revision, or -1 for an unconditional write.
    expect: i64,
    reply: oneshot::Sender<Result<StateWrite, StoreError>>,
}

/// The writers' queue; `carry` holds a write taken from the channel that must wait for
/// the next batch (its node is already in the current one).
struct Queue {
    rx: mpsc::Receiver<QueuedState>,
    carry: Option<QueuedState>,
}

/// The session that holds (or tries for) the sweep lease.
#[derive(Default)]
struct Lease {
    client: Option<Client>,
    held: bool,
}

struct Inner {
    target: Target,
    pool: Pool,
    queue: mpsc::Sender<QueuedState>,
    counters: Arc<Counters>,
    instance: String,
    lease: tokio::sync::Mutex<Lease>,
    subscribed: AtomicBool,
}

/// A [`Store`] in a PostgreSQL database that several directory processes may share.
/// Cloning is cheap (one store); the writers, the listener and the lease end when the
/// last clone is dropped (which releases the sweep lease).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.target.redacted)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database[?…]`, or a
    /// `key=value` connection string), applies pending migrations and starts the
    /// group-commit writers, with the default [`PgStoreConfig`].
    ///
    /// # Errors
    /// [`StoreError::BadUrl`], [`StoreError::Connect`] (messages carry the URL with its
    /// password redacted), [`StoreError::SchemaTooNew`], [`StoreError::Postgres`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgStoreConfig::default()).await
    }

    /// [`PgStore::connect`] with explicit tuning.
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub async fn connect_with(url: &str, tuning: PgStoreConfig) -> Result<Self, StoreError> {
        let redacted = redact_url(url);
        let mut config = Config::from_str(url).map_err(|_| StoreError::BadUrl {
            target: redacted.clone(),
        })?;
        config.connect_timeout(tuning.connect_timeout);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let target = Target { config, redacted };

        let mut first = target.connect("iicp-directory").await?;
        migrate(&mut first).await?;
        let fsync = first.query_one("SHOW fsync", &[]).await?;
        if fsync.get::<_, String>(0) == "off" {
            tracing::warn!(
                "the PostgreSQL server runs with fsync=off: acknowledged writes can be lost on a crash"
            );
        }
        let pool = Pool {
            target: target.clone(),
            idle: Mutex::new(vec![Conn {
                client: first,
                prepared: HashMap::new(),
            }]),
            permits: Semaphore::new(tuning.pool_size.max(1)),
        };
        let (queue, rx) = mpsc::channel(MAX_QUEUED_WRITES);
        let counters = Arc::new(Counters::default());
        let shared_queue = Arc::new(tokio::sync::Mutex::new(Queue { rx, carry: None }));
        for _ in 0..tuning.writers.max(1) {
            tokio::spawn(writer_loop(
                Arc::clone(&shared_queue),
                target.clone(),
                Arc::clone(&counters),
            ));
        }
        let mut id = [0u8; 8];
        OsRng.fill_bytes(&mut id);
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                pool,
                queue,
                counters,
                instance: hex::encode(id),
                lease: tokio::sync::Mutex::new(Lease::default()),
                subscribed: AtomicBool::new(false),
            }),
        })
    }

    /// The database URL with its password redacted.
    pub fn redacted_url(&self) -> &str {
        &self.inner.target.redacted
    }

    /// Counters of the group-commit writers: transactions and writes so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.inner.counters.snapshot()
    }

    /// The schema version of the database.
    ///
    /// # Errors
    /// [`StoreError::Postgres`] and connection errors.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let mut c = self.inner.pool.get().await?;
        let row = c
            .client()?
            .query_one("SELECT version FROM schema_version WHERE id = 1", &[])
            .await?;
        Ok(row.get(0))
    }

    async fn notify(
        tx: &tokio_postgres::Transaction<'_>,
        kind: char,
        instance: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let payload = format!("{kind}:{instance}:{key}");
        tx.execute(NOTIFY, &[&CHANNEL, &payload]).await?;
        Ok(())
    }

    async fn load_where(
        &self,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes n JOIN node_state s ON s.node_id = n.node_id {filter}"
        );
        let rows = self.inner.pool.query(&sql, params).await?;
        rows.iter()
            .map(|r| {
                decode_node(RawNode {
                    node_id: r.try_get(0)?,
                    endpoint: r.try_get(1)?,
                    transport_endpoint: r.try_get(2)?,
                    region: r.try_get(3)?,
                    cx_public_key: r.try_get(4)?,
                    token_hash: r.try_get(5)?,
                    proxy_token_hash: r.try_get(6)?,
                    hmac_key: r.try_get(7)?,
                    registered_at_ms: r.try_get(8)?,
                    updated_at_ms: r.try_get(9)?,
                    registration_json: r.try_get(10)?,
                    rev: to_u64(r.try_get(11)?),
                    state_json: r.try_get(12)?,
                })
            })
            .collect()
    }

    fn queue_state(
        &self,
        node_id: String,
        state: &NodeState,
        expect: i64,
    ) -> StoreFuture<'_, StateWrite> {
        let (reply, answer) = oneshot::channel();
        let queued = encode_state(state).map(|state_json| QueuedState {
            node_id,
            state_json,
            last_seen_ms: to_i64(state.last_seen_ms),
            expect,
            reply,
        });
        // queued at once, so that writes made together commit together; a full queue
        // makes the caller wait (back-pressure) instead of growing memory
        let waiting = queued.map(|q| match self.inner.queue.try_send(q) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(q)) => Some(Ok(q)),
            Err(mpsc::error::TrySendError::Closed(_)) => Some(Err(StoreError::Task)),
        });
        Box::pin(async move {
            if let Some(q) = waiting? {
                self.inner
                    .queue
                    .send(q?)
                    .await
                    .map_err(|_| StoreError::Task)?;
            }
            answer.await.map_err(|_| StoreError::Task)?
        })
    }
}

/// Applies the pending migrations in one transaction under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            id integer PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL
        )",
    )
    .await?;
    let found: i64 = tx
        .query_opt("SELECT version FROM schema_version WHERE id = 1", &[])
        .await?
        .map_or(0, |r| r.get(0));
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
        tracing::info!(version = i + 1, "directory database migrated");
    }
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&supported],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A writer's connection with its prepared statements.
struct WriterConn {
    client: Client,
    update: Statement,
    existing: Statement,
}

impl WriterConn {
    async fn open(target: &Target) -> Result<Self, StoreError> {
        let client = target.connect("iicp-directory-writer").await?;
        let update = client.prepare(UPDATE_STATES).await?;
        let existing = client
            .prepare("SELECT node_id FROM node_state WHERE node_id = ANY($1::text[])")
            .await?;
        Ok(Self {
            client,
            update,
            existing,
        })
    }

    /// One statement (one transaction) for the batch; per write what became of it.
    async fn commit(&self, batch: &[QueuedState]) -> Result<Vec<StateWrite>, StoreError> {
        let ids: Vec<&str> = batch.iter().map(|w| w.node_id.as_str()).collect();
        let states: Vec<&str> = batch.iter().map(|w| w.state_json.as_str()).collect();
        let seen: Vec<i64> = batch.iter().map(|w| w.last_seen_ms).collect();
        let expect: Vec<i64> = batch.iter().map(|w| w.expect).collect();
        let rows = self
            .client
            .query(&self.update, &[&ids, &states, &seen, &expect])
            .await?;
        let mut written = HashMap::with_capacity(rows.len());
        for r in &rows {
            written.insert(r.try_get::<_, String>(0)?, to_u64(r.try_get(1)?));
        }
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !written.contains_key(*id))
            .collect();
        let mut existing = HashSet::new();
        if !missing.is_empty() {
            for r in self.client.query(&self.existing, &[&missing]).await? {
                existing.insert(r.try_get::<_, String>(0)?);
            }
        }
        Ok(ids
            .iter()
            .map(|id| match written.get(*id) {
                Some(rev) => StateWrite::Written { rev: *rev },
                None if existing.contains(*id) => StateWrite::Conflict,
                None => StateWrite::Unknown,
            })
            .collect())
    }
}

/// A group-commit writer: takes the next batch from the shared queue, writes it with
/// one statement and answers each caller after the commit (or the failure).
async fn writer_loop(
    queue: Arc<tokio::sync::Mutex<Queue>>,
    target: Target,
    counters: Arc<Counters>,
) {
    let mut conn: Option<WriterConn> = None;
    loop {
        let batch = {
            let mut q = queue.lock().await;
            let first = match q.carry.take() {
                Some(w) => w,
                None => match q.rx.recv().await {
                    Some(w) => w,
                    None => return,
                },
            };
            let mut ids = HashSet::new();
            ids.insert(first.node_id.clone());
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP_COMMIT {
                match q.rx.try_recv() {
                    Ok(w) if ids.insert(w.node_id.clone()) => batch.push(w),
                    Ok(w) => {
                        q.carry = Some(w);
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Rows are locked in node order by every batch (of this and of other
            // processes), so two concurrent batches cannot deadlock on each other.
            batch.sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
            batch
        };
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            conn = None;
            match WriterConn::open(&target).await {
                Ok(c) => conn = Some(c),
                Err(err) => {
                    fail_batch(batch, err, &counters);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        let n = batch.len() as u64;
        match c.commit(&batch).await {
            Ok(outcomes) => {
                counters.committed(n);
                for (w, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = w.reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                if c.client.is_closed() {
                    conn = None;
                }
                fail_batch(batch, err, &counters);
            }
        }
    }
}

fn fail_batch(batch: Vec<QueuedState>, err: StoreError, counters: &Counters) {
    let n = batch.len() as u64;
    counters.failed(n);
    tracing::error!(error = %err, writes = n, "directory group commit failed; nothing of it acknowledged");
    let err = Arc::new(err);
    for w in batch {
        let _ = w.reply.send(Err(StoreError::GroupCommit(Arc::clone(&err))));
    }
}

/// Opens the listening connection: `LISTEN` done, notifications arriving on the
/// returned channel until the connection ends.
async fn listen(target: &Target) -> Result<(Client, Notes), StoreError> {
    let mut config = target.config.clone();
    config.application_name("iicp-directory-listener");
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| target.connect_error(source))?;
    let (tx, rx) = mpsc::channel(MAX_QUEUED_NOTES);
    let overflow = Arc::new(AtomicBool::new(false));
    let lost = Arc::clone(&overflow);
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => match tx.try_send(n) {
                    Ok(()) => {}
                    // a reader that cannot keep up resynchronises instead
                    Err(mpsc::error::TrySendError::Full(_)) => lost.store(true, Ordering::Release),
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                },
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "postgresql listener connection ended");
                    break;
                }
                None => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, Notes { rx, overflow }))
}

/// The notifications of a listening connection, and whether some were dropped because
/// the reader fell [`MAX_QUEUED_NOTES`] behind.
struct Notes {
    rx: mpsc::Receiver<Notification>,
    overflow: Arc<AtomicBool>,
}

/// What a notification announces, unless it came from this process.
fn parse_change(n: &Notification, instance: &str) -> Option<Change> {
    let mut parts = n.payload().splitn(3, ':');
    let (kind, from, key) = (parts.next()?, parts.next()?, parts.next()?);
    if from == instance || key.is_empty() {
        return None;
    }
    match kind {
        "n" => Some(Change::Node(key.to_owned())),
        "o" => Some(Change::Operator(key.to_owned())),
        "k" => Some(Change::Key(key.to_owned())),
        _ => None,
    }
}

/// Forwards the changes of the other processes to `out` until it is dropped; after a
/// lost connection reconnects (backoff 0.1 s … 5 s) and sends [`Change::Resync`].
async fn feed_loop(
    target: Target,
    instance: String,
    out: mpsc::Sender<Change>,
    mut client: Client,
    mut notes: Notes,
) {
    loop {
        loop {
            tokio::select! {
                n = notes.rx.recv() => match n {
                    Some(n) => {
                        // announcements were dropped: everything is reloaded instead
                        let change = if notes.overflow.swap(false, Ordering::AcqRel) {
                            Some(Change::Resync)
                        } else {
                            parse_change(&n, &instance)
                        };
                        if let Some(change) = change {
                            if out.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => break,
                },
                () = out.closed() => return,
            }
        }
        drop(client);
        tracing::warn!(url = %target.redacted, "lost the PostgreSQL change listener; reconnecting");
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = out.closed() => return,
            }
            match listen(&target).await {
                Ok((c, n)) => {
                    client = c;
                    notes = n;
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "PostgreSQL change listener: reconnect failed");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!("PostgreSQL change listener reconnected; resynchronising");
        if out.send(Change::Resync).await.is_err() {
            return;
        }
    }
}

impl Store for PgStore {
    fn load_nodes(&self) -> StoreFuture<'_, Vec<NodeRecord>> {
        Box::pin(self.load_where("", &[]))
    }

    fn load_node(&self, node_id: String) -> StoreFuture<'_, Option<NodeRecord>> {
        Box::pin(async move {
            Ok(self
                .load_where("WHERE n.node_id = $1", &[&node_id])
                .await?
                .pop())
        })
    }

    /// One transaction: the registration, the state with a new revision, and the
    /// announcement, pipelined (one round trip for the three statements).
    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let (registration, cx) = encode_registration(&node)?;
            let state = encode_state(&node.state)?;
            let payload = format!("n:{}:{}", self.inner.instance, node.node_id);
            let mut c = self.inner.pool.get().await?;
            let (upsert_node, upsert_state, notify) = (
                c.prepare(UPSERT_NODE).await?,
                c.prepare(UPSERT_STATE).await?,
                c.prepare(NOTIFY).await?,
            );
            let tx = c.client()?.transaction().await?;
            let hmac_key = node.credentials.hmac_key.expose();
            let (registered, updated, seen) = (
                to_i64(node.registered_at_ms),
                to_i64(node.updated_at_ms),
                to_i64(node.state.last_seen_ms),
            );
            type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
            let node_params: [Param<'_>; 11] = [
                &node.node_id,
                &node.endpoint,
                &node.transport_endpoint,
                &node.region,
                &cx,
                &node.credentials.token_hash,
                &node.credentials.proxy_token_hash,
                &hmac_key,
                &registered,
                &updated,
                &registration,
            ];
            let state_params: [Param<'_>; 3] = [&node.node_id, &seen, &state];
            let notify_params: [Param<'_>; 2] = [&CHANNEL, &payload];
            let (_, row, _) = tokio::try_join!(
                tx.execute(&upsert_node, &node_params),
                tx.query_one(&upsert_state, &state_params),
                tx.execute(&notify, &notify_params),
            )?;
            tx.commit().await?;
            Ok(to_u64(row.try_get(0)?))
        })
    }

    /// Queued to a group-commit writer at once (not on first poll); resolves after the
    /// statement holding it committed.
    fn put_state(&self, node_id: String, state: NodeState) -> StoreFuture<'_, bool> {
        let write = self.queue_state(node_id, &state, -1);
        Box::pin(async move { Ok(matches!(write.await?, StateWrite::Written { .. })) })
    }

    fn put_state_at(
        &self,
        node_id: String,
        state: NodeState,
        rev: u64,
    ) -> StoreFuture<'_, StateWrite> {
        self.queue_state(node_id, &state, to_i64(rev))
    }

    fn delete_node(&self, node_id: String) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut c = self.inner.pool.get().await?;
            let tx = c.client()?.transaction().await?;
            let n = tx
                .execute("DELETE FROM nodes WHERE node_id = $1", &[&node_id])
                .await?;
            if n > 0 {
                Self::notify(&tx, 'n', &self.inner.instance, &node_id).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    fn directory_key_seed(&self, candidate: [u8; 32]) -> StoreFuture<'_, [u8; 32]> {
        Box::pin(async move {
            let mut c = self.inner.pool.get().await?;
            let client = c.client()?;
            let now = to_i64(crate::clock::Clock::now_ms(&crate::clock::SystemClock));
            // Two statements, each its own snapshot: after a concurrent first start
            // inserted its seed, the SELECT sees it.
            client
                .execute(
                    "INSERT INTO directory_key (id, seed, created_at_ms) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO NOTHING",
                    &[&candidate.as_slice(), &now],
                )
                .await?;
            let row = client
                .query_one("SELECT seed FROM directory_key WHERE id = 1", &[])
                .await?;
            let seed: Vec<u8> = row.try_get(0)?;
            <[u8; 32]>::try_from(seed.as_slice()).map_err(|_| StoreError::Corrupt {
                what: "directory key",
            })
        })
    }

    fn record_receipt(&self, receipt: ReceiptRecord) -> StoreFuture<'_, ReceiptOutcome> {
        Box::pin(async move {
            let mut c = self.inner.pool.get().await?;
            let tx = c.client()?.transaction().await?;
            let inserted = tx
                .execute(
                    "INSERT INTO receipts (node_id, task_id, nonce, tokens_used, amount,
                        response_hash, querying_node_id, reason, recorded_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (node_id, nonce) DO NOTHING",
                    &[
                        &receipt.node_id,
                        &receipt.task_id,
                        &receipt.nonce,
                        &to_i64(receipt.tokens_used),
                        &receipt.amount,
                        &receipt.response_hash,
                        &receipt.querying_node_id,
                        &receipt.reason,
                        &to_i64(receipt.recorded_at_ms),
                    ],
                )
                .await?;
            if inserted == 0 {
                return Ok(ReceiptOutcome::Duplicate);
            }
            let row = tx
                .query_one(
                    "INSERT INTO credits (node_id, balance) VALUES ($1, $2)
                     ON CONFLICT (node_id) DO UPDATE SET balance = credits.balance + excluded.balance
                     RETURNING balance",
                    &[&receipt.node_id, &receipt.amount],
                )
                .await?;
            tx.commit().await?;
            Ok(ReceiptOutcome::Recorded {
                balance: row.try_get(0)?,
            })
        })
    }

    fn credit_balance(&self, node_id: String) -> StoreFuture<'_, f64> {
        Box::pin(async move {
            let mut c = self.inner.pool.get().await?;
            let row = c
                .client()?
                .query_opt(
                    "SELECT balance FROM credits WHERE node_id = $1",
                    &[&node_id],
                )
                .await?;
            Ok(match row {
                Some(r) => r.try_get(0)?,
                None => 0.0,
            })
        })
    }

    fn receipts(&self, node_id: String, limit: usize) -> StoreFuture<'_, Vec<ReceiptRecord>> {
        Box::pin(async move {
            let rows = self
                .inner
                .pool
                .query(
                    "SELECT node_id, task_id, nonce, tokens_used, amount, response_hash,
                            querying_node_id, reason, recorded_at_ms
                     FROM receipts WHERE node_id = $1 ORDER BY id DESC LIMIT $2",
                    &[&node_id, &to_i64(limit as u64)],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ReceiptRecord {
                        node_id: r.try_get(0)?,
                        task_id: r.try_get(1)?,
                        nonce: r.try_get(2)?,
                        tokens_used: to_u64(r.try_get(3)?),
                        amount: r.try_get(4)?,
                        response_hash: r.try_get(5)?,
                        querying_node_id: r.try_get(6)?,
                        reason: r.try_get(7)?,
                        recorded_at_ms: to_u64(r.try_get(8)?),
                    })
                })
                .collect()
        })
    }

    fn set_operator_name(
        &self,
        operator_pub: String,
        display_name: String,
        ts: u64,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut c = self.inner.pool.get().await?;
            let tx = c.client()?.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO operators (operator_pub, display_name, ts) VALUES ($1, $2, $3)
                     ON CONFLICT (operator_pub) DO UPDATE SET display_name = excluded.display_name,
                        ts = excluded.ts
                     WHERE excluded.ts > operators.ts",
                    &[&operator_pub, &display_name, &to_i64(ts)],
                )
                .await?;
            if n > 0 {
                Self::notify(&tx, 'o', &self.inner.instance, &operator_pub).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    fn operator_name(&self, operator_pub: String) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let rows = self
                .inner
                .pool
                .query(
                    "SELECT display_name FROM operators WHERE operator_pub = $1",
                    &[&operator_pub],
                )
                .await?;
            Ok(match rows.first() {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            })
        })
    }

    fn put_key_status(&self, record: KeyRecord) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut c = self.inner.pool.get().await?;
            let tx = c.client()?.transaction().await?;
            // a revoked key stays revoked; a superseded one may still be revoked
            let n = tx
                .execute(
                    "INSERT INTO key_lifecycle (key_sha256, status, at_ms, reason_class, rotation_epoch)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (key_sha256) DO UPDATE SET status = excluded.status,
                        at_ms = excluded.at_ms, reason_class = excluded.reason_class
                     WHERE key_lifecycle.status = 'superseded' AND excluded.status = 'revoked'",
                    &[
                        &record.key_sha256,
                        &record.status.as_str(),
                        &to_i64(record.at_ms),
                        &record.reason_class,
                        &record.rotation_epoch.map(to_i64),
                    ],
                )
                .await?;
            if n > 0 {
                Self::notify(&tx, 'k', &self.inner.instance, &record.key_sha256).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    fn key_statuses(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        Box::pin(async move {
            let rows = self
                .inner
                .pool
                .query(
                    "SELECT key_sha256, status, at_ms, reason_class, rotation_epoch FROM key_lifecycle",
                    &[],
                )
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let status: String = r.try_get(1)?;
                let Some(status) = KeyStatus::parse(&status) else {
                    continue;
                };
                out.push(KeyRecord {
                    key_sha256: r.try_get(0)?,
                    status,
                    at_ms: to_u64(r.try_get(2)?),
                    reason_class: r.try_get(3)?,
                    rotation_epoch: r.try_get::<_, Option<i64>>(4)?.map(to_u64),
                });
            }
            Ok(out)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    /// Opens the listening connection (the `LISTEN` is in place when this resolves) and
    /// forwards the other processes' announcements. One feed per store: a second call
    /// gets `None`.
    fn subscribe(&self) -> StoreFuture<'_, Option<mpsc::Receiver<Change>>> {
        Box::pin(async move {
            if self.inner.subscribed.swap(true, Ordering::AcqRel) {
                return Ok(None);
            }
            let (client, notes) = match listen(&self.inner.target).await {
                Ok(x) => x,
                Err(err) => {
                    self.inner.subscribed.store(false, Ordering::Release);
                    return Err(err);
                }
            };
            let (tx, rx) = mpsc::channel(MAX_QUEUED_NOTES);
            tokio::spawn(feed_loop(
                self.inner.target.clone(),
                self.inner.instance.clone(),
                tx,
                client,
                notes,
            ));
            Ok(Some(rx))
        })
    }

    fn state_changes(&self, cursor: u64) -> StoreFuture<'_, StateChanges> {
        Box::pin(async move {
            let rows = self
                .inner
                .pool
                .query(
                    "SELECT node_id, rev, reg_rev > $1, state_json FROM node_state WHERE rev > $1",
                    &[&to_i64(cursor)],
                )
                .await?;
            let mut out = StateChanges {
                cursor,
                states: Vec::with_capacity(rows.len()),
            };
            for r in &rows {
                let rev = to_u64(r.try_get(1)?);
                out.cursor = out.cursor.max(rev);
                out.states.push(ChangedState {
                    node_id: r.try_get(0)?,
                    rev,
                    registration_changed: r.try_get(2)?,
                    state: decode_state(r.try_get(3)?)?,
                });
            }
            Ok(out)
        })
    }

    /// A session advisory lock on a connection of its own: taken with
    /// `pg_try_advisory_lock` when free, kept while that session lives (checked with a
    /// round trip on every call), released by PostgreSQL when the session ends (this
    /// store dropped, the process killed, the connection lost).
    fn sweep_lease(&self) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut lease = self.inner.lease.lock().await;
            if lease.client.as_ref().is_some_and(Client::is_closed) {
                lease.client = None;
                lease.held = false;
            }
            if lease.client.is_none() {
                lease.client = Some(self.inner.target.connect("iicp-directory-sweeper").await?);
                lease.held = false;
            }
            let Some(client) = lease.client.as_ref() else {
                return Ok(false);
            };
            let result = if lease.held {
                client.simple_query("SELECT 1").await.map(|_| true)
            } else {
                client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&SWEEP_LOCK])
                    .await
                    .and_then(|r| r.try_get::<_, bool>(0))
            };
            match result {
                Ok(held) => {
                    lease.held = held;
                    Ok(held)
                }
                Err(err) => {
                    lease.client = None;
                    lease.held = false;
                    Err(err.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://dir:s3cret@127.0.0.1:5432/iicp"),
            "postgres://dir:***@127.0.0.1:5432/iicp"
        );
        assert_eq!(
            redact_url("postgresql://dir@127.0.0.1/iicp"),
            "postgresql://dir@127.0.0.1/iicp"
        );
        assert_eq!(
            redact_url("postgres://a:b@c@host/db?sslmode=disable&password=x&user=y"),
            "postgres://a:***@host/db?sslmode=disable&password=***&user=y"
        );
        assert_eq!(
            redact_url("host=/tmp user=dir PASSWORD=hunter2 dbname=iicp"),
            "host=/tmp user=dir PASSWORD=*** dbname=iicp"
        );
        assert_eq!(
            redact_url("postgres://h/d?password="),
            "postgres://h/d?password=***"
        );
    }
}
