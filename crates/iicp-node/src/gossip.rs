//! Peer exchange (mesh gossip) in the spec's Ed25519 form (PROTOCOL.md §15 errata v1.5.1,
//! §19 T10) — IO-free (the node's `mesh` module does the IO): the node serves `POST /v1/peers`, looks up the sender's gossip key
//! at the directory and sends exchanges; this module parses and checks them, keeps the
//! peer cache and answers.
//!
//! ```text
//! POST {peer}/v1/peers
//! X-IICP-Signature: <hex Ed25519 signature over the raw body bytes>
//! {"sender_id", "known_peers": ["<node_id>", …], "timestamp_ms", "ttl_s": 90}
//! → 200 {"new_peers": [{node_id, endpoint, region, last_seen_ms, …}], "receiver_id"}
//! ```
//!
//! Refusals ([`Refusal`]): 401 no signature or no sender; 403 bad signature or a sender
//! whose key is unknown; 409 the same signature within 5 minutes; 422 a missing field or
//! `timestamp_ms` more than 60 s away; 429 more than one exchange per 30 s from a sender.
//! The HMAC(node_token) variant of the deployed SDKs is deliberately not implemented
//! (it would need a secret the peers do not share). Returned peers are merged, never
//! deleted on that basis, and expire 90 s after they were last seen; the cache offers
//! them as [`RelayCandidate`]s for relay election.

use std::collections::{HashMap, VecDeque};

use iicp_proto::crypto::sign::{OperatorKey, OperatorPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use iicp_nat::relay::RelayCandidate;

/// Peers expire this long after they were last seen (§15).
pub const PEER_EXPIRY_MS: u64 = 90_000;
/// Most peers returned by one exchange (§15).
pub const MAX_NEW_PEERS: usize = 20;
/// Accepted clock skew of `timestamp_ms` (§15).
pub const MAX_SKEW_MS: u64 = 60_000;
/// A signature seen within this window is a replay (§15).
pub const REPLAY_WINDOW_MS: u64 = 300_000;
/// One exchange per sender per this window (§15).
pub const RATE_WINDOW_MS: u64 = 30_000;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-iicp-signature";

/// A known peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Its node id.
    pub node_id: String,
    /// Its HTTP endpoint.
    pub endpoint: String,
    /// Its region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// When it was last seen (unix ms).
    pub last_seen_ms: u64,
    /// Whether it relays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay_capable: bool,
    /// Its relay accept port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_accept_port: Option<u16>,
    /// Its relay load (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_load: Option<f64>,
}

/// A parsed exchange body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The sender's node id.
    pub sender_id: String,
    /// Node ids the sender knows.
    pub known_peers: Vec<String>,
    /// The sender's clock (unix ms).
    pub timestamp_ms: u64,
    /// Advisory TTL.
    pub ttl_s: u64,
}

/// Why an exchange is refused: HTTP status, IICP code and a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer exchange refused ({status}): {message}")]
pub struct Refusal {
    /// HTTP status (401, 403, 409, 422, 429).
    pub status: u16,
    /// Error code for the JSON error body.
    pub code: &'static str,
    /// What is wrong (no secrets, no body content).
    pub message: &'static str,
}

impl Refusal {
    const fn new(status: u16, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message,
        }
    }
}

/// Most known-peer ids read from one exchange.
const MAX_KNOWN: usize = 1024;

/// Reads the sender id of a raw body (to look its key up before verifying).
///
/// # Errors
/// 401 when the body has no `sender_id`; 422 when it is not a JSON object.
pub fn sender_of(body: &[u8]) -> Result<String, Refusal> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| Refusal::new(422, "validation_error", "body is not a JSON object"))?;
    v.get("sender_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_owned)
        .ok_or(Refusal::new(401, "unauthorized", "`sender_id` is required"))
}

fn parse(body: &[u8], now_ms: u64) -> Result<Exchange, Refusal> {
    let missing = Refusal::new(
        422,
        "validation_error",
        "`sender_id`, `known_peers` and `timestamp_ms` are required",
    );
    let v: Value = serde_json::from_slice(body).map_err(|_| missing.clone())?;
    let sender_id = sender_of(body)?;
    let known_peers = v
        .get("known_peers")
        .and_then(Value::as_array)
        .ok_or_else(|| missing.clone())?
        .iter()
        .take(MAX_KNOWN)
        .filter_map(|p| match p {
            Value::String(s) => Some(s.clone()),
            // lenient: the SDKs' peer objects
            Value::Object(o) => o.get("node_id").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        })
        .collect();
    let timestamp_ms = v
        .get("timestamp_ms")
        .and_then(Value::as_u64)
        .ok_or(missing)?;
    if timestamp_ms.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(Refusal::new(
            422,
            "validation_error",
            "`timestamp_ms` is more than 60 s away",
        ));
    }
    let ttl_s = v.get("ttl_s").and_then(Value::as_u64).unwrap_or(90);
    Ok(Exchange {
        sender_id,
        known_peers,
        timestamp_ms,
        ttl_s,
    })
}

/// Parses a gossip public key: 64 hex characters, or standard base64.
pub fn parse_public_key(text: &str) -> Option<OperatorPublicKey> {
    let t = text.trim();
    if t.len() == 64 {
        if let Ok(bytes) = hex::decode(t) {
            let arr: [u8; 32] = bytes.try_into().ok()?;
            return OperatorPublicKey::from_bytes(&arr).ok();
        }
    }
    OperatorPublicKey::from_operator_id(t).ok()
}

/// The signed exchange body and its `X-IICP-Signature` value.
pub fn sign(
    key: &OperatorKey,
    sender_id: &str,
    known_peers: &[String],
    now_ms: u64,
) -> (Vec<u8>, String) {
    let body = serde_json::json!({
        "sender_id": sender_id,
        "known_peers": known_peers,
        "timestamp_ms": now_ms,
        "ttl_s": PEER_EXPIRY_MS / 1000,
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let sig = hex::encode(key.sign(&bytes));
    (bytes, sig)
}

/// The gossip public key in the form registered (`public_key`: 64 hex characters).
pub fn public_key_hex(key: &OperatorKey) -> String {
    hex::encode(key.public_key().to_bytes())
}

/// The peer cache and the exchange guard (replays, per-sender rate) of one node.
/// Bounded: at most `capacity` peers, senders and signatures.
#[derive(Debug)]
pub struct Mesh {
    own_id: String,
    capacity: usize,
    peers: HashMap<String, Peer>,
    seen: VecDeque<(u64, String)>,
    last_exchange: HashMap<String, u64>,
}

impl Mesh {
    /// A mesh for node `own_id` holding at most `capacity` peers (and as many senders).
    pub fn new(own_id: impl Into<String>, capacity: usize) -> Self {
        Self {
            own_id: own_id.into(),
            capacity: capacity.max(1),
            peers: HashMap::new(),
            seen: VecDeque::new(),
            last_exchange: HashMap::new(),
        }
    }

    /// Sets this node's id (known after registration).
    pub fn set_own_id(&mut self, id: impl Into<String>) {
        self.own_id = id.into();
    }

    /// Drops peers not seen for 90 s, old signatures and old rate entries.
    pub fn expire(&mut self, now_ms: u64) {
        self.peers
            .retain(|_, p| now_ms.saturating_sub(p.last_seen_ms) <= PEER_EXPIRY_MS);
        while self
            .seen
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > REPLAY_WINDOW_MS)
        {
            self.seen.pop_front();
        }
        self.last_exchange
            .retain(|_, t| now_ms.saturating_sub(*t) < RATE_WINDOW_MS);
    }

    /// Adds or refreshes peers (never deletes; self and stale entries skipped).
    pub fn merge(&mut self, peers: impl IntoIterator<Item = Peer>, now_ms: u64) {
        self.expire(now_ms);
        for p in peers {
            if p.node_id.is_empty()
                || p.node_id == self.own_id
                || p.endpoint.is_empty()
                || now_ms.saturating_sub(p.last_seen_ms) > PEER_EXPIRY_MS
            {
                continue;
            }
            let newer = self
                .peers
                .get(&p.node_id)
                .is_none_or(|old| old.last_seen_ms <= p.last_seen_ms);
            if !newer {
                continue;
            }
            if !self.peers.contains_key(&p.node_id) && self.peers.len() >= self.capacity {
                // full: replace the stalest
                let stalest = self
                    .peers
                    .values()
                    .min_by_key(|q| q.last_seen_ms)
                    .map(|q| q.node_id.clone());
                match stalest {
                    Some(id) if self.peers[&id].last_seen_ms < p.last_seen_ms => {
                        self.peers.remove(&id);
                    }
                    _ => continue,
                }
            }
            self.peers.insert(p.node_id.clone(), p);
        }
    }

    /// The fresh peers.
    pub fn peers(&self, now_ms: u64) -> Vec<Peer> {
        let mut v: Vec<Peer> = self
            .peers
            .values()
            .filter(|p| now_ms.saturating_sub(p.last_seen_ms) <= PEER_EXPIRY_MS)
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            b.last_seen_ms
                .cmp(&a.last_seen_ms)
                .then(a.node_id.cmp(&b.node_id))
        });
        v
    }

    /// Fresh relay-capable peers as election candidates (§14.5 "or the gossip peer
    /// cache").
    pub fn relay_candidates(&self, now_ms: u64) -> Vec<RelayCandidate> {
        self.peers(now_ms)
            .into_iter()
            .filter(|p| p.relay_capable)
            .map(|p| RelayCandidate {
                node_id: p.node_id,
                endpoint: Some(p.endpoint),
                relay_capable: true,
                load: p.relay_load,
                relay_accept_port: p.relay_accept_port,
                reputation_score: None,
            })
            .collect()
    }

    /// Checks an inbound exchange: `signature` is the `X-IICP-Signature` header,
    /// `sender_key` the sender's registered gossip key (`None`: unknown). On success the
    /// sender is rate-limited and the signature remembered; returns the exchange.
    ///
    /// # Errors
    /// A [`Refusal`] with the §15 status.
    pub fn admit(
        &mut self,
        body: &[u8],
        signature: Option<&str>,
        sender_key: Option<&OperatorPublicKey>,
        now_ms: u64,
    ) -> Result<Exchange, Refusal> {
        let sig = signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(Refusal::new(
                401,
                "unauthorized",
                "`X-IICP-Signature` is required",
            ))?;
        sender_of(body)?;
        let key = sender_key.ok_or(Refusal::new(
            403,
            "forbidden",
            "the sender has no registered gossip key",
        ))?;
        let bad = Refusal::new(403, "forbidden", "the signature does not verify");
        let raw = hex::decode(sig).map_err(|_| bad.clone())?;
        key.verify(body, &raw).map_err(|_| bad)?;
        let ex = parse(body, now_ms)?;
        self.expire(now_ms);
        let sig_norm = sig.to_ascii_lowercase();
        if self.seen.iter().any(|(_, s)| *s == sig_norm) {
            return Err(Refusal::new(
                409,
                "conflict",
                "this exchange was already received",
            ));
        }
        if self.last_exchange.contains_key(&ex.sender_id) {
            return Err(Refusal::new(
                429,
                "rate_limited",
                "one exchange per 30 s per peer",
            ));
        }
        if self.last_exchange.len() >= self.capacity {
            return Err(Refusal::new(
                429,
                "rate_limited",
                "too many peers exchanging",
            ));
        }
        self.last_exchange.insert(ex.sender_id.clone(), now_ms);
        if self.seen.len() >= self.capacity.saturating_mul(4) {
            self.seen.pop_front();
        }
        self.seen.push_back((now_ms, sig_norm));
        Ok(ex)
    }

    /// The answer to `ex`: at most 20 fresh peers the sender did not list (not the
    /// sender itself), and `receiver_id`.
    pub fn answer(&self, ex: &Exchange, now_ms: u64) -> Value {
        let new: Vec<Peer> = self
            .peers(now_ms)
            .into_iter()
            .filter(|p| p.node_id != ex.sender_id && !ex.known_peers.contains(&p.node_id))
            .take(MAX_NEW_PEERS)
            .collect();
        serde_json::json!({"new_peers": new, "receiver_id": self.own_id})
    }

    /// Merges a peer's answer (`new_peers`, or the SDKs' `peers`), at most 20 entries.
    pub fn merge_answer(&mut self, answer: &Value, now_ms: u64) {
        let list = answer
            .get("new_peers")
            .or_else(|| answer.get("peers"))
            .and_then(Value::as_array);
        let peers: Vec<Peer> = list
            .map(|l| {
                l.iter()
                    .take(MAX_NEW_PEERS)
                    .filter_map(|p| serde_json::from_value::<Peer>(p.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        self.merge(peers, now_ms);
    }
}
