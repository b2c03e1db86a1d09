//! Peer exchange checks (PROTOCOL.md §15, Ed25519 form per §19 T10): every refusal
//! status (401/403/409/422/429), the answer (≤ 20 peers the sender did not list, 90 s
//! expiry), merging, and the cache as relay-election input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iicp_node::gossip::{self as mesh, Mesh, Peer, MAX_NEW_PEERS, PEER_EXPIRY_MS};
use iicp_proto::crypto::sign::OperatorKey;

const NOW: u64 = 1_800_000_000_000;

fn key(seed: u8) -> OperatorKey {
    OperatorKey::from_seed(&[seed; 32])
}

fn peer(id: &str, seen: u64, relay: bool) -> Peer {
    Peer {
        node_id: id.into(),
        endpoint: format!("http://{id}.example:9484"),
        region: Some("eu".into()),
        last_seen_ms: seen,
        relay_capable: relay,
        relay_accept_port: relay.then_some(9485),
        relay_load: relay.then_some(0.2),
    }
}

#[test]
fn signed_exchange_is_answered_with_unknown_fresh_peers() {
    let mut m = Mesh::new("receiver", 256);
    m.merge(
        (0..30).map(|i| peer(&format!("p{i}"), NOW - 1000, i % 2 == 0)),
        NOW,
    );
    m.merge([peer("old", NOW - PEER_EXPIRY_MS - 1, true)], NOW);
    let k = key(1);
    let pk = mesh::parse_public_key(&mesh::public_key_hex(&k)).unwrap();
    let known = vec!["p0".to_owned(), "p1".to_owned()];
    let (body, sig) = mesh::sign(&k, "sender", &known, NOW);
    let ex = m.admit(&body, Some(&sig), Some(&pk), NOW).unwrap();
    assert_eq!(ex.sender_id, "sender");
    assert_eq!(ex.known_peers, known);
    let answer = m.answer(&ex, NOW);
    assert_eq!(answer["receiver_id"], "receiver");
    let new = answer["new_peers"].as_array().unwrap();
    assert_eq!(new.len(), MAX_NEW_PEERS);
    for p in new {
        let id = p["node_id"].as_str().unwrap();
        assert!(id != "p0" && id != "p1" && id != "old" && id != "sender");
        assert!(p["endpoint"].is_string());
    }

    // the other side merges the answer; relay-capable peers become candidates
    let mut other = Mesh::new("sender", 256);
    other.merge_answer(&answer, NOW);
    assert_eq!(other.peers(NOW).len(), MAX_NEW_PEERS);
    let relays = other.relay_candidates(NOW);
    assert!(!relays.is_empty());
    assert!(relays
        .iter()
        .all(|c| c.relay_capable && c.relay_accept_port == Some(9485)));
    // and forgets them 90 s later
    assert!(other.peers(NOW + PEER_EXPIRY_MS + 1001).is_empty());
}

#[test]
fn refusals() {
    let mut m = Mesh::new("receiver", 256);
    let k = key(2);
    let pk = mesh::parse_public_key(&mesh::public_key_hex(&k)).unwrap();
    let (body, sig) = mesh::sign(&k, "s1", &[], NOW);

    // 401: no signature; no sender
    assert_eq!(
        m.admit(&body, None, Some(&pk), NOW).unwrap_err().status,
        401
    );
    let no_sender = br#"{"known_peers": [], "timestamp_ms": 1}"#;
    assert_eq!(
        m.admit(no_sender, Some("00"), Some(&pk), NOW)
            .unwrap_err()
            .status,
        401
    );
    // 403: unknown key; wrong key; tampered body; garbage signature
    assert_eq!(
        m.admit(&body, Some(&sig), None, NOW).unwrap_err().status,
        403
    );
    let other = mesh::parse_public_key(&mesh::public_key_hex(&key(3))).unwrap();
    assert_eq!(
        m.admit(&body, Some(&sig), Some(&other), NOW)
            .unwrap_err()
            .status,
        403
    );
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(
        m.admit(&tampered, Some(&sig), Some(&pk), NOW)
            .unwrap_err()
            .status,
        403
    );
    assert_eq!(
        m.admit(&body, Some("zz"), Some(&pk), NOW)
            .unwrap_err()
            .status,
        403
    );
    // 422: timestamp out of window; missing field
    let (skewed, ssig) = mesh::sign(&k, "s1", &[], NOW - 61_000);
    assert_eq!(
        m.admit(&skewed, Some(&ssig), Some(&pk), NOW)
            .unwrap_err()
            .status,
        422
    );
    let partial = br#"{"sender_id": "s1", "timestamp_ms": 1800000000000}"#;
    let psig = hex::encode(k.sign(partial));
    assert_eq!(
        m.admit(partial, Some(&psig), Some(&pk), NOW)
            .unwrap_err()
            .status,
        422
    );
    // accepted once; 409 on replay; 429 on a second exchange within 30 s
    m.admit(&body, Some(&sig), Some(&pk), NOW).unwrap();
    assert_eq!(
        m.admit(&body, Some(&sig), Some(&pk), NOW + 10)
            .unwrap_err()
            .status,
        409
    );
    let (again, asig) = mesh::sign(&k, "s1", &["x".into()], NOW + 1000);
    assert_eq!(
        m.admit(&again, Some(&asig), Some(&pk), NOW + 1000)
            .unwrap_err()
            .status,
        429
    );
    // after 30 s the sender may exchange again
    let (later, lsig) = mesh::sign(&k, "s1", &[], NOW + 31_000);
    m.admit(&later, Some(&lsig), Some(&pk), NOW + 31_000)
        .unwrap();
}

#[test]
fn cache_is_bounded_and_keeps_the_freshest() {
    let mut m = Mesh::new("me", 3);
    m.merge(
        [
            peer("a", NOW - 3000, false),
            peer("b", NOW - 2000, false),
            peer("c", NOW - 1000, false),
            peer("me", NOW, true),
        ],
        NOW,
    );
    assert_eq!(m.peers(NOW).len(), 3);
    m.merge([peer("d", NOW, false)], NOW);
    let ids: Vec<String> = m.peers(NOW).into_iter().map(|p| p.node_id).collect();
    assert_eq!(ids, ["d", "c", "b"]);
    // an older report does not overwrite a newer one
    m.merge([peer("d", NOW - 5000, true)], NOW);
    assert!(!m.peers(NOW)[0].relay_capable);
    // base64 keys are accepted too
    let k = key(4);
    assert!(mesh::parse_public_key(&k.public_key().operator_id()).is_some());
    assert!(mesh::parse_public_key("not a key").is_none());
}
