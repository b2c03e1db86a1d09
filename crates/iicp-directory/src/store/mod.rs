//! Persistence of the directory state (PROTOCOL.md §8.12 "directory state"): node
//! registrations with their credential hashes and liveness, the directory signing key,
//! credit receipts (§8.11) and operator display names (§17.3).
//!
//! The [`Store`] trait is asynchronous and object-safe (boxed futures) so that back ends
//! with their own async drivers fit as well as blocking ones: [`SqliteStore`] runs every
//! call on the blocking thread pool, never on the async runtime threads; [`PgStore`]
//! (PostgreSQL, `docs/adr/0015-postgresql-store.md`) is natively async. [`MemoryStore`]
//! keeps everything in process (tests, throwaway meshes).
//!
//! The directory keeps a working copy of all live nodes in memory and writes through to
//! the store before it answers; on start it loads the store. Secrets: the store sees
//! only SHA-256 hashes of `node_token` and `proxy_token`. `node_hmac_key` is kept in
//! clear because verifying an HMAC needs the key; it is never served back.
//!
//! **Shared stores.** A store that several directory processes use at once
//! ([`Store::shared`], PostgreSQL) also tells each process what the others changed:
//! [`Store::subscribe`] announces registrations, deletions and renames
//! ([`Change`]), [`Store::state_changes`] lists the node states written since a cursor
//! (heartbeats, probes), and every row carries a revision ([`NodeRecord::rev`]) so that
//! [`Store::put_state_at`] writes only over the state it was computed from. Background
//! sweeps run in one process at a time ([`Store::sweep_lease`]). Single-process stores
//! keep the defaults: no announcements, revision 0, the lease always held.

mod group;
mod memory;
mod postgres;
mod sqlite;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use iicp_proto::secret::Secret;

pub use group::{GroupCommitStats, MAX_GROUP_COMMIT};
pub use memory::MemoryStore;

pub use postgres::{redact_url, PgStore, PgStoreConfig};
pub use sqlite::SqliteStore;

use crate::error::StoreError;

/// The future every [`Store`] method returns.
pub type StoreFuture<'a, T> = futures_util::future::BoxFuture<'a, Result<T, StoreError>>;

/// Credentials of one node, as stored.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCredentials {
    /// SHA-256 (hex) of the current `node_token`.
    pub token_hash: String,
    /// SHA-256 (hex) of the current `proxy_token`.
    pub proxy_token_hash: String,
    /// The HMAC key shared with the node (heartbeat challenge, receipts).
    pub hmac_key: Secret,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("token_hash", &"<hash>")
            .field("proxy_token_hash", &"<hash>")
            .field("hmac_key", &self.hmac_key)
            .finish()
    }
}

/// Result of the endpoint liveness probe (§8.2 "liveness probe", §8.9 active probes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeState {
    /// `GET {endpoint}/iicp/health` has answered at least once since the endpoint was
    /// registered.
    pub verified: bool,
    /// Last successful probe, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<u64>,
    /// Last probe attempt, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_ms: Option<u64>,
    /// Consecutive failed probes.
    #[serde(default)]
    pub failures: u32,
    /// When the next probe is due, ms since the epoch.
    #[serde(default)]
    pub next_due_ms: u64,
    /// Latency of the last successful probe in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

/// The dynamic state of a node: what heartbeats, probes and receipts change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Last valid REGISTER or HEARTBEAT, ms since the epoch.
    pub last_seen_ms: u64,
    /// `available` of the last heartbeat (absent ⇒ true, §8.3).
    pub available: bool,
    /// Load 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Tasks in flight.
    #[serde(default)]
    pub active_jobs: u32,
    /// Effective concurrency reported in heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Declared p95 latency SLA in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_p95_ms: Option<u64>,
    /// Source IP of the last REGISTER/HEARTBEAT (§8.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_ip: Option<String>,
    /// The challenge sent in the last PONG (§8.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// Heartbeats whose `challenge_response` verified.
    #[serde(default)]
    pub challenges_passed: u64,
    /// Outcome-based reputation 0–1 (default 0.5).
    pub reputation: f64,
    /// Successful tasks (heartbeat metrics and receipts).
    #[serde(default)]
    pub tasks_success: u64,
    /// Failed tasks (heartbeat metrics).
    #[serde(default)]
    pub tasks_failed: u64,
    /// Verified credit receipts (§8.11).
    #[serde(default)]
    pub receipts: u64,
    /// Average latency from heartbeat metrics, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_latency_ms: Option<f64>,
    /// Last accepted `metrics_batch_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_metrics_batch: Option<String>,
    /// Liveness probe state.
    #[serde(default)]
    pub probe: ProbeState,
    /// Other members of the last heartbeat (`health_models`, `backend_stability`,
    /// `recovery_*`, updater evidence, …), credentials removed.
    #[serde(default)]
    pub heartbeat: Map<String, Value>,
    /// Operator public key bound by a verified delegation (§17.2); never served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_pub: Option<String>,
}

impl NodeState {
    /// A fresh state at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            last_seen_ms: now_ms,
            available: true,
            load: None,
            active_jobs: 0,
            max_concurrent: None,
            sla_p95_ms: None,
            observed_ip: None,
            challenge: None,
            challenges_passed: 0,
            reputation: 0.5,
            tasks_success: 0,
            tasks_failed: 0,
            receipts: 0,
            avg_latency_ms: None,
            last_metrics_batch: None,
            probe: ProbeState::default(),
            heartbeat: Map::new(),
            operator_pub: None,
        }
    }
}

/// One registered node as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// Node id (UUID).
    pub node_id: String,
    /// The full REGISTER body as the node sent it, minus credentials
    /// (`current_node_token`, `node_token`, `node_hmac_key`).
    pub registration: Value,
    /// `endpoint` (indexed copy).
    pub endpoint: String,
    /// `transport_endpoint` (indexed copy).
    pub transport_endpoint: Option<String>,
    /// `region` (indexed copy).
    pub region: String,
    /// `cx_public_key` (copy).
    pub cx_public_key: Option<Value>,
    /// Credential hashes and the HMAC key.
    pub credentials: NodeCredentials,
    /// First registration, ms since the epoch.
    pub registered_at_ms: u64,
    /// Last REGISTER, ms since the epoch.
    pub updated_at_ms: u64,
    /// Dynamic state.
    pub state: NodeState,
    /// Revision of the stored row: a shared store gives every write of the node (of its
    /// registration or its state) a new, higher number; 0 in single-process stores,
    /// which do not track revisions. Ignored by [`Store::put_node`].
    pub rev: u64,
}

/// Outcome of a conditional state write ([`Store::put_state_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateWrite {
    /// Stored; the node's new revision (0 in single-process stores).
    Written {
        /// The revision of the row after the write.
        rev: u64,
    },
    /// No such node.
    Unknown,
    /// The stored revision is not the expected one: another process wrote the node
    /// since it was read. Nothing was written; reload the node and retry.
    Conflict,
}

/// Where a policy (operator) key stands in the directory's lifecycle registry (dir §3.4
/// "policy-key lifecycle registry", ADR 0016).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyStatus {
    /// The operator revoked it (`key_revoke`): final.
    Revoked,
    /// The operator rotated to a successor (`key_rotate`).
    Superseded,
}

impl KeyStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Superseded => "superseded",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Revoked, Self::Superseded]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One key of the lifecycle registry, by the SHA-256 (hex) of its raw 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// SHA-256 (lowercase hex) of the raw public key.
    pub key_sha256: String,
    /// Revoked or superseded.
    pub status: KeyStatus,
    /// When the directory recorded it, ms since the epoch.
    pub at_ms: u64,
    /// Redacted reason (`operator_request`, `compromise`, `superseded`, …).
    pub reason_class: String,
    /// Rotation epoch of a superseded key (1 for the first rotation).
    pub rotation_epoch: Option<u64>,
}

/// A change another directory process made to a shared store ([`Store::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The node was registered, re-registered (token rotation) or deleted: reload it.
    Node(String),
    /// The operator's display name changed: reload it.
    Operator(String),
    /// A key of the lifecycle registry changed: reload the registry.
    Key(String),
    /// Announcements may have been lost (the feed reconnected): reload everything.
    Resync,
}

/// One node state written since a cursor ([`Store::state_changes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedState {
    /// The node.
    pub node_id: String,
    /// Its revision after the write.
    pub rev: u64,
    /// The registration itself changed since the cursor (reload the whole node).
    pub registration_changed: bool,
    /// The state as stored.
    pub state: NodeState,
}

/// The answer of [`Store::state_changes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateChanges {
    /// The highest revision in `states` (the cursor passed in when there are none).
    pub cursor: u64,
    /// The states written with a revision above the cursor.
    pub states: Vec<ChangedState>,
}

/// A verified credit receipt (`POST /v1/credits/award`, §8.11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    /// Node that reported the work.
    pub node_id: String,
    /// Task id.
    pub task_id: String,
    /// Receipt nonce (unique per node).
    pub nonce: String,
    /// Tokens used.
    pub tokens_used: u64,
    /// Credits awarded.
    pub amount: f64,
    /// `response_hash` of the receipt.
    pub response_hash: String,
    /// Caller node, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub querying_node_id: Option<String>,
    /// Receipt `reason`.
    pub reason: String,
    /// When the directory recorded it, ms since the epoch.
    pub recorded_at_ms: u64,
}

/// Result of recording a receipt.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ReceiptOutcome {
    /// Recorded; the node's balance after it.
    Recorded {
        /// Balance after the award.
        balance: f64,
    },
    /// The `(node_id, nonce)` pair was recorded before; nothing changed.
    Duplicate,
}

/// Storage back end of a directory. See the module docs for the contract.
///
/// Implementations must be crash-safe: once a method's future resolves `Ok`, the change
/// survives a process crash.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Every stored node.
    fn load_nodes(&self) -> StoreFuture<'_, Vec<NodeRecord>>;
    /// One stored node, as it is now.
    fn load_node(&self, node_id: String) -> StoreFuture<'_, Option<NodeRecord>>;
    /// Inserts or replaces a node (registration, credentials and state); the node's new
    /// revision ([`NodeRecord::rev`], 0 in single-process stores).
    fn put_node(&self, node: NodeRecord) -> StoreFuture<'_, u64>;
    /// Replaces only the dynamic state of a node (heartbeats, probes). `Ok(false)` if
    /// the node is unknown.
    fn put_state(&self, node_id: String, state: NodeState) -> StoreFuture<'_, bool>;
    /// Replaces the dynamic state of a node if its stored revision is still `rev` (the
    /// one the state was computed from). Single-process stores have one writer and
    /// ignore `rev` (the default: [`Store::put_state`]).
    fn put_state_at(
        &self,
        node_id: String,
        state: NodeState,
        rev: u64,
    ) -> StoreFuture<'_, StateWrite> {
        let _ = rev;
        let write = self.put_state(node_id, state);
        Box::pin(async move {
            Ok(if write.await? {
                StateWrite::Written { rev: 0 }
            } else {
                StateWrite::Unknown
            })
        })
    }
    /// Removes a node. `Ok(false)` if it was unknown.
    fn delete_node(&self, node_id: String) -> StoreFuture<'_, bool>;
    /// The directory signing-key seed: the stored one, or `candidate` stored now if
    /// there is none yet (atomically, so concurrent starts agree on one key).
    fn directory_key_seed(&self, candidate: [u8; 32]) -> StoreFuture<'_, [u8; 32]>;
    /// Records a receipt and credits the node, unless its nonce was seen before.
    fn record_receipt(&self, receipt: ReceiptRecord) -> StoreFuture<'_, ReceiptOutcome>;
    /// The node's credit balance (sum of awards).
    fn credit_balance(&self, node_id: String) -> StoreFuture<'_, f64>;
    /// The node's most recent receipts, newest first, at most `limit`.
    fn receipts(&self, node_id: String, limit: usize) -> StoreFuture<'_, Vec<ReceiptRecord>>;
    /// Sets an operator's public display name (§17.3) signed at `ts`. `Ok(false)` if a
    /// rename with a later or equal `ts` is already stored (replay or reordering).
    fn set_operator_name(
        &self,
        operator_pub: String,
        display_name: String,
        ts: u64,
    ) -> StoreFuture<'_, bool>;
    /// An operator's display name.
    fn operator_name(&self, operator_pub: String) -> StoreFuture<'_, Option<String>>;
    /// Records a key's lifecycle status. A revoked key stays revoked: `Ok(false)` when
    /// the key is already revoked, or already superseded and `record` supersedes it
    /// again.
    fn put_key_status(&self, record: KeyRecord) -> StoreFuture<'_, bool>;
    /// Every key of the lifecycle registry.
    fn key_statuses(&self) -> StoreFuture<'_, Vec<KeyRecord>>;

    /// Whether other directory processes may write this store at the same time (then
    /// the directory follows their changes; see the module docs). Default `false`.
    fn shared(&self) -> bool {
        false
    }

    /// The changes other processes make from now on, once the feed is listening
    /// (`None` for single-process stores, the default). [`Change::Resync`] is sent when
    /// announcements may have been missed. The feed ends when the receiver is dropped.
    fn subscribe(&self) -> StoreFuture<'_, Option<tokio::sync::mpsc::Receiver<Change>>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Node states written with a revision above `cursor` (shared stores; the default
    /// is none).
    fn state_changes(&self, cursor: u64) -> StoreFuture<'_, StateChanges> {
        Box::pin(std::future::ready(Ok(StateChanges {
            cursor,
            states: Vec::new(),
        })))
    }

    /// Whether this process holds (or has just taken) the lease to run the background
    /// sweeps, which must run in one process at a time. Single-process stores always
    /// hold it (the default).
    fn sweep_lease(&self) -> StoreFuture<'_, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }
}

/// What a re-registration replaces in `nodes`, for both SQL stores (the `SET` list of
/// their `INSERT … ON CONFLICT (node_id) DO UPDATE`).
macro_rules! registration_updates {
    () => {
        "endpoint = excluded.endpoint,
         transport_endpoint = excluded.transport_endpoint,
         region = excluded.region,
         cx_public_key = excluded.cx_public_key,
         token_hash = excluded.token_hash,
         proxy_token_hash = excluded.proxy_token_hash,
         hmac_key = excluded.hmac_key,
         registered_at_ms = excluded.registered_at_ms,
         updated_at_ms = excluded.updated_at_ms,
         registration_json = excluded.registration_json"
    };
}
pub(crate) use registration_updates;

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The dynamic state as the stores keep it (JSON text).
pub(crate) fn encode_state(state: &NodeState) -> Result<String, StoreError> {
    serde_json::to_string(state).map_err(|_| StoreError::Corrupt { what: "node state" })
}

/// The registration and `cx_public_key` as the stores keep them (JSON text).
pub(crate) fn encode_registration(
    node: &NodeRecord,
) -> Result<(String, Option<String>), StoreError> {
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
    Ok((registration, cx))
}

/// The columns of one stored node, as the SQL stores read them.
pub(crate) struct RawNode {
    pub(crate) node_id: String,
    pub(crate) endpoint: String,
    pub(crate) transport_endpoint: Option<String>,
    pub(crate) region: String,
    pub(crate) cx_public_key: Option<String>,
    pub(crate) token_hash: String,
    pub(crate) proxy_token_hash: String,
    pub(crate) hmac_key: String,
    pub(crate) registered_at_ms: i64,
    pub(crate) updated_at_ms: i64,
    pub(crate) registration_json: String,
    pub(crate) state_json: String,
    pub(crate) rev: u64,
}

/// Decodes the JSON columns of a stored node.
pub(crate) fn decode_node(raw: RawNode) -> Result<NodeRecord, StoreError> {
    Ok(NodeRecord {
        registration: serde_json::from_str(&raw.registration_json).map_err(|_| {
            StoreError::Corrupt {
                what: "registration",
            }
        })?,
        endpoint: raw.endpoint,
        transport_endpoint: raw.transport_endpoint,
        region: raw.region,
        cx_public_key: match raw.cx_public_key {
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
            token_hash: raw.token_hash,
            proxy_token_hash: raw.proxy_token_hash,
            hmac_key: Secret::new(raw.hmac_key),
        },
        registered_at_ms: to_u64(raw.registered_at_ms),
        updated_at_ms: to_u64(raw.updated_at_ms),
        state: decode_state(&raw.state_json)?,
        node_id: raw.node_id,
        rev: raw.rev,
    })
}

/// Decodes a stored state.
pub(crate) fn decode_state(text: &str) -> Result<NodeState, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt { what: "node state" })
}
