//! Mesh gossip on the node (PROTOCOL.md §15 in the spec's Ed25519 form, §19 T10; the
//! checks and the peer cache are [`crate::gossip`]).
//!
//! Nodes built with `enable_mesh(true)` or `relay_capable(true)` hold a fresh Ed25519
//! gossip key, register its public half as `public_key` (64 hex), serve
//! `POST /v1/peers` and, every 30 s once registered, exchange with up to three peers
//! (from the cache, else relay-capable nodes the directory lists). The sender's key is
//! looked up at the directory (`GET /v1/node/{sender_id}`, cached 10 min, bounded); the
//! node token is never sent to peers and any `Authorization` header is ignored. Relay
//! election ([`crate::reach`]) adds the cache's relay-capable peers to the directory's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use iicp_proto::crypto::sign::OperatorPublicKey;
use iicp_proto::directory::NodeEntry;
use iicp_transport::http::server::{json, read_body, HttpError, Request, Response};
use iicp_transport::http::Router;
use iicp_transport::shutdown::Shutdown;
use serde_json::Value;

use crate::gossip::{self as mesh, Peer, SIGNATURE_HEADER};
use crate::state::{MeshState, Shared, GOSSIP_CAPACITY};

/// Largest `POST /v1/peers` body.
const MAX_BODY: usize = 64 * 1024;
/// How long a looked-up sender key is trusted.
const KEY_TTL: Duration = Duration::from_secs(600);
/// Interval of outbound exchanges.
const ROUND: Duration = Duration::from_secs(30);
/// Peers contacted per round.
const FANOUT: usize = 3;

fn now_ms(shared: &Shared) -> u64 {
    u64::try_from(shared.cfg.clock.unix_now().as_millis()).unwrap_or(u64::MAX)
}

/// The sender's detail from the directory: its peer entry and gossip key.
async fn lookup(
    shared: &Shared,
    state: &MeshState,
    id: &str,
) -> (Option<Peer>, Option<OperatorPublicKey>) {
    if let Some((p, k, at)) = state.keys.lock().get(id) {
        if at.elapsed() < KEY_TTL {
            return (p.clone(), *k);
        }
    }
    let Some(dir) = &state.directory else {
        return (None, None);
    };
    if shared.breaker_open() {
        // no directory calls while the circuit breaker is open (ADR 0009)
        return (None, None);
    }
    let lookup = dir.node_detail(id);
    let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(5), lookup).await else {
        return (None, None);
    };
    let key = d
        .get("public_key")
        .and_then(Value::as_str)
        .and_then(mesh::parse_public_key);
    let peer = serde_json::from_value::<NodeEntry>(d)
        .ok()
        .and_then(|n| peer_of(&n, now_ms(shared)));
    let mut keys = state.keys.lock();
    if keys.len() >= GOSSIP_CAPACITY {
        keys.retain(|_, (_, _, at)| at.elapsed() < KEY_TTL);
        if keys.len() >= GOSSIP_CAPACITY {
            keys.clear();
        }
    }
    keys.insert(id.to_owned(), (peer.clone(), key, Instant::now()));
    (peer, key)
}

/// A peer entry from a directory node object (discover entry or node detail).
fn peer_of(n: &NodeEntry, now_ms: u64) -> Option<Peer> {
    Some(Peer {
        node_id: n.node_id.clone()?,
        endpoint: n.endpoint.clone()?,
        region: n.region.clone(),
        last_seen_ms: now_ms,
        relay_capable: n.relay_capable.unwrap_or(false),
        relay_accept_port: n.relay_accept_port,
        relay_load: n.relay_load.or(n.load),
    })
}

fn refusal(r: &mesh::Refusal) -> HttpError {
    HttpError::new(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
        r.code,
        r.message,
    )
}

async fn post_peers(
    shared: Arc<Shared>,
    state: Arc<MeshState>,
    mut req: Request,
) -> Result<Response, HttpError> {
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(&mut req, MAX_BODY).await?;
    let sender = mesh::sender_of(&body).map_err(|r| refusal(&r))?;
    let (peer, key) = if signature.is_some() {
        lookup(&shared, &state, &sender).await
    } else {
        (None, None)
    };
    let now = now_ms(&shared);
    let mut m = state.mesh.lock();
    if let Some(id) = shared.node_id() {
        m.set_own_id(id);
    }
    let ex = m
        .admit(&body, signature.as_deref(), key.as_ref(), now)
        .map_err(|r| {
            tracing::debug!(status = r.status, "peer exchange refused");
            refusal(&r)
        })?;
    let answer = m.answer(&ex, now);
    if let Some(p) = peer {
        m.merge([p], now);
    }
    Ok(json(StatusCode::OK, &answer))
}

/// Mounts `POST /v1/peers` when the node gossips.
pub(crate) fn routes(shared: &Arc<Shared>, router: Router) -> Router {
    let Some(state) = shared.mesh.clone() else {
        return router;
    };
    let shared = Arc::clone(shared);
    router.route_cors(Method::POST, "/v1/peers", move |req, _| {
        post_peers(Arc::clone(&shared), Arc::clone(&state), req)
    })
}

/// Exchanges with one peer; merges its answer.
async fn exchange(shared: &Shared, state: &MeshState, own_id: &str, peer: &Peer) -> bool {
    let Some(http) = &state.http else {
        return false;
    };
    let now = now_ms(shared);
    let known: Vec<String> = state
        .mesh
        .lock()
        .peers(now)
        .into_iter()
        .map(|p| p.node_id)
        .collect();
    let (body, sig) = mesh::sign(&state.key, own_id, &known, now);
    let url = format!("{}/v1/peers", peer.endpoint.trim_end_matches('/'));
    let reply = http
        .request(Method::POST, url)
        .header(SIGNATURE_HEADER, sig)
        .body("application/json", body)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match reply {
        Ok(r) if r.status.is_success() => {
            if let Ok(v) = r.json::<Value>() {
                let mut m = state.mesh.lock();
                m.merge(
                    [Peer {
                        last_seen_ms: now,
                        ..peer.clone()
                    }],
                    now,
                );
                m.merge_answer(&v, now);
                return true;
            }
            false
        }
        Ok(r) => {
            tracing::debug!(status = r.status.as_u16(), "peer exchange refused by peer");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "peer exchange failed");
            false
        }
    }
}

/// Relay-capable nodes the directory lists, as exchange targets.
async fn directory_peers(shared: &Shared, state: &MeshState) -> Vec<Peer> {
    let Some(dir) = &state.directory else {
        return Vec::new();
    };
    let now = now_ms(shared);
    crate::reach::relay_nodes(dir, shared, 20)
        .await
        .map(|nodes| nodes.iter().filter_map(|n| peer_of(n, now)).collect())
        .unwrap_or_default()
}

/// One round: up to three peers from the cache, else relay-capable nodes the directory
/// lists; returns how many exchanges succeeded.
pub(crate) async fn round(shared: &Shared, state: &MeshState) -> usize {
    let (Some(own_id), true) = (shared.node_id(), shared.token().is_some()) else {
        return 0;
    };
    let now = now_ms(shared);
    let mut targets = state.mesh.lock().peers(now);
    if targets.is_empty() {
        targets = directory_peers(shared, state).await;
    }
    targets.retain(|p| p.node_id != own_id);
    let mut ok = 0;
    for p in targets.iter().take(FANOUT) {
        if exchange(shared, state, &own_id, p).await {
            ok += 1;
        }
    }
    ok
}

/// Exchanges every 30 s until `stop` fires.
pub(crate) async fn run(shared: Arc<Shared>, stop: Shutdown) {
    let Some(state) = shared.mesh.clone() else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(ROUND) => {}
            () = stop.cancelled() => return,
        }
        tokio::select! {
            _ = round(&shared, &state) => {}
            () = stop.cancelled() => return,
        }
    }
}
