//! Crash safety of the SQLite store: drop the directory, reopen the same file, and
//! nodes (with `cx_public_key`, `transport_endpoint` and the full registration), token
//! hashes, the directory key and receipts survive; heartbeats continue with the same
//! token and challenge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::*;
use iicp_directory::{Directory, ManualClock, SqliteStore, Store};
use iicp_proto::crypto::mac::{challenge_response, response_hash, Receipt};
use serde_json::json;

#[tokio::test]
async fn restart_keeps_state() {
    let tmp = TempDir::new("restart");
    let db = tmp.db();
    let clock = ManualClock::starting_now();
    let builder = || {
        Directory::builder()
            .private_mesh(true)
            .liveness_probe(false)
            .clock(clock.clone())
    };

    let d = start_with(Backend::Sqlite, builder(), Some(tmp)).await;
    let mut body = register_body("http://127.0.0.1:19501", "eu-central", &["m"]);
    body["policy"] = json!({"allow_remote_inference": true});
    body["custom_vendor_field"] = json!({"kept": [1, 2, 3]});
    let ack = register(&d.base, &body).await;
    let id = ack["node_id"].as_str().unwrap().to_owned();
    let token = ack["node_token"].as_str().unwrap().to_owned();
    let hmac = ack["node_hmac_key"].as_str().unwrap().to_owned();
    let key_before = d.directory.public_key();
    let hb = post(
        &format!("{}/v1/heartbeat", d.base),
        &json!({"node_id": id}),
        Some(&token),
    )
    .await;
    let challenge = hb.body["challenge"].as_str().unwrap().to_owned();
    let rh = response_hash(&json!({"ok": 1}));
    let nonce = "00112233445566778899aabbccddeeff";
    let sig = Receipt {
        task_id: "t",
        tokens_used: 2000,
        nonce,
        response_hash: &rh,
        querying_node_id: None,
    }
    .sign(&hmac);
    let r = post(
        &format!("{}/v1/credits/award", d.base),
        &json!({"node_id": id, "task_id": "t", "tokens_used": 2000, "nonce": nonce, "signature": sig, "response_hash": rh}),
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut d = d;
    let tmp = d.take_for_restart();
    d.stop().await;

    // The raw file holds hashes, not tokens, and every member the node sent.
    {
        let store = SqliteStore::open_async(&db).await.unwrap();
        assert_eq!(store.schema_version().unwrap(), 2);
        let nodes = store.load_nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        let n = &nodes[0];
        assert_eq!(
            n.transport_endpoint.as_deref(),
            Some("iicp://127.0.0.1:19501")
        );
        assert_eq!(
            n.cx_public_key.as_ref().unwrap()["key_id"],
            "cx-ab1453003c73ed6a"
        );
        assert_eq!(n.registration["custom_vendor_field"]["kept"][2], 3);
        assert_ne!(n.credentials.token_hash, token);
        let raw = std::fs::read(&db).unwrap();
        let wal = std::fs::read(db.with_extension("db-wal")).unwrap_or_default();
        let needle = token.as_bytes();
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle)
                && !wal.windows(needle.len()).any(|w| w == needle),
            "token in clear on disk"
        );
    }

    let d = start_with(Backend::Sqlite, builder(), tmp).await;
    assert_eq!(
        d.directory.public_key(),
        key_before,
        "directory key persisted"
    );
    assert_eq!(d.directory.node_count(), 1);
    let r = get(&format!("{}/v1/discover?intent={CHAT}", d.base)).await;
    assert_eq!(r.body["count"], 1);
    assert_eq!(
        r.body["nodes"][0]["cx_public_key"]["key_id"],
        "cx-ab1453003c73ed6a"
    );
    // the same token and the pending challenge still work
    let r = post(
        &format!("{}/v1/heartbeat", d.base),
        &json!({"node_id": id, "challenge_response": challenge_response(&hmac, &challenge)}),
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["challenge_verified"], true);
    let r = call(
        http::Method::GET,
        &format!("{}/v1/credits/balance", d.base),
        None,
        Some(&token),
    )
    .await;
    assert_eq!(r.body["balance"], 2.0);
    d.stop().await;
}
