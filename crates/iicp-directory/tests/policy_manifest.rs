//! Signed node policy manifests at the directory (PROTOCOL.md §17.4, dir §3.1/§3.4,
//! ADR 0016): refused when invalid or expired at REGISTER, served with the directory's
//! evidence and the node's signature, bound to dispatch tickets, `operator_bound` when
//! the policy key is the node's delegated operator key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use iicp_directory::{Clock, ManualClock};
use iicp_proto::crypto::manifest::{self, Status};
use iicp_proto::crypto::sign::{sign_delegation, OperatorKey};
use iicp_proto::crypto::token::{
    directory_origin, verify_dispatch_ticket, DirectoryPublicKey, DispatchTicketCheck,
};
use serde_json::{json, Map, Value};

fn declaration() -> Map<String, Value> {
    json!({
        "version": "2026-07-02",
        "jurisdiction": "DE",
        "remote_executor_can_read_prompt": true,
        "training_use": "none",
        "retention": {"task_payload": "none", "logs_days": 7},
        "subprocessors": ["self-hosted"],
        "evidence": "self_attested"
    })
    .as_object()
    .cloned()
    .unwrap()
}

fn with_manifest(endpoint: &str, m: Value) -> Value {
    let mut body = register_body(endpoint, "eu-central", &["m"]);
    body["policy_manifest"] = m;
    body
}

async fn listed(base: &str, node_id: &str) -> Value {
    let r = get(&format!("{base}/api/v1/discover?intent={CHAT}&limit=50")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == node_id)
        .cloned()
        .unwrap_or_else(|| panic!("{node_id} not listed: {}", r.body))
}

#[tokio::test]
async fn signed_manifests_are_verified_served_and_bound_to_tickets() {
    for backend in backends() {
        let clock = ManualClock::starting_now();
        let d = start_mesh(backend, &clock).await;
        let base = d.base.clone();
        let now = clock.now_secs();
        let key = OperatorKey::from_seed(&[3; 32]);
        let signed = manifest::sign(declaration(), &key, now);

        // signed and valid
        let ack = register(
            &base,
            &with_manifest("http://127.0.0.1:19301", Value::Object(signed.clone())),
        )
        .await;
        let id = ack["node_id"].as_str().unwrap().to_owned();
        let served = listed(&base, &id).await["node_policy_manifest"].clone();
        assert_eq!(served["verification"]["status"], "signed_valid", "{served}");
        assert_eq!(served["evidence"], "signed_verified");
        assert_eq!(served["manifest_identity_level"], "signed_valid");
        assert_eq!(
            served["verification"]["canonical_sha256"],
            manifest::canonical_sha256(&signed)
        );
        assert_eq!(
            served["verification"]["key_id"],
            signed["signature"]["key_id"]
        );
        assert!(served.get("operator_fingerprint").is_none());
        // the node's signature travels with it: a client can check it without trusting us
        let originals = manifest::signed_originals(served.as_object().unwrap());
        assert!(originals.iter().any(|m| m == &signed));

        // the ticket binds the served manifest's hash
        let pk = DirectoryPublicKey::from_hex(
            get(&format!("{base}/api/v1/directory-key")).await.body["public_key"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let t = post(
            &format!("{base}/api/v1/dispatch/ticket"),
            &json!({"intent": CHAT, "node_id": id}),
            None,
        )
        .await;
        assert_eq!(t.status, 201, "{}", t.body);
        let sha = manifest::canonical_sha256(&signed);
        let issuer = directory_origin(&format!("{base}/api")).to_owned();
        let check = |sha: Option<&str>| {
            verify_dispatch_ticket(
                &pk,
                t.body["ticket"].as_str().unwrap(),
                &DispatchTicketCheck {
                    issuer: &issuer,
                    node_id: &id,
                    intent: CHAT,
                    policy_manifest_sha256: sha,
                },
                clock.now_secs(),
            )
        };
        assert_eq!(
            check(Some(&sha)).unwrap().policy_manifest_sha256.as_deref(),
            Some(sha.as_str())
        );
        assert!(
            check(Some(&"0".repeat(64))).is_err(),
            "another manifest hash must not verify"
        );
        assert!(
            check(None).is_err(),
            "a bound ticket needs the route's manifest"
        );

        // the same key as the node's verified operator delegation: operator_bound
        let mut body = with_manifest("http://127.0.0.1:19302", Value::Object(signed.clone()));
        body["node_id"] = json!("5b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e10");
        let delegation = sign_delegation(&key, "5b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e10", now + 3600);
        body["operator_delegation"] = serde_json::to_value(&delegation).unwrap();
        let ack = register(&base, &body).await;
        let bound =
            listed(&base, ack["node_id"].as_str().unwrap()).await["node_policy_manifest"].clone();
        assert_eq!(
            bound["manifest_identity_level"], "operator_bound",
            "{bound}"
        );
        assert_eq!(
            bound["operator_fingerprint"],
            manifest::operator_fingerprint(&key.operator_id())
        );
        // a delegation by another operator does not bind the policy key
        let other = OperatorKey::from_seed(&[4; 32]);
        let mut body = with_manifest("http://127.0.0.1:19303", Value::Object(signed.clone()));
        body["node_id"] = json!("6b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e11");
        body["operator_delegation"] = serde_json::to_value(sign_delegation(
            &other,
            "6b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e11",
            now + 3600,
        ))
        .unwrap();
        let ack = register(&base, &body).await;
        let unbound =
            listed(&base, ack["node_id"].as_str().unwrap()).await["node_policy_manifest"].clone();
        assert_eq!(unbound["manifest_identity_level"], "signed_valid");

        // unsigned: self-attested, still served
        let ack = register(
            &base,
            &with_manifest("http://127.0.0.1:19304", Value::Object(declaration())),
        )
        .await;
        let plain =
            listed(&base, ack["node_id"].as_str().unwrap()).await["node_policy_manifest"].clone();
        assert_eq!(plain["verification"]["status"], "self_attested");
        assert_eq!(plain["manifest_identity_level"], "self_attested");

        // a signed manifest that expires while registered is served as expired
        clock.advance(Duration::from_secs(manifest::MANIFEST_TTL_SECS + 1));
        let r = get(&format!("{base}/api/v1/node/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let later = &r.body["node_policy_manifest"];
        assert_eq!(
            later["verification"]["status"],
            Status::SignedExpired.as_str(),
            "{}",
            r.body
        );
        assert_eq!(later["evidence"], "signed_expired");
        assert!(later["manifest_identity_level"].is_null());
        d.stop().await;
    }
}

#[tokio::test]
async fn invalid_expired_and_malformed_manifests_are_refused_at_register() {
    let clock = ManualClock::starting_now();
    let d = start_mesh(Backend::Memory, &clock).await;
    let base = d.base.clone();
    let now = clock.now_secs();
    let key = OperatorKey::from_seed(&[5; 32]);
    let url = format!("{base}/api/v1/register");

    let mut tampered = manifest::sign(declaration(), &key, now);
    tampered["retention"]["task_payload"] = "provider_defined".into();
    let expired = manifest::sign(declaration(), &key, now - manifest::MANIFEST_TTL_SECS - 10);
    let cases = [
        (
            Value::Object(tampered),
            "signed_invalid (signature_mismatch)",
        ),
        (Value::Object(expired), "signed_expired"),
        (json!({"training_use": "sometimes"}), "/training_use"),
        (
            json!({"manifest_identity_level": "known_operator"}),
            "computed by the directory",
        ),
        (json!({"evidence": "signed_verified"}), "evidence"),
        (json!("not an object"), "JSON object"),
    ];
    for (i, (m, expect)) in cases.into_iter().enumerate() {
        let r = post(
            &url,
            &with_manifest(&format!("http://127.0.0.1:{}", 19310 + i), m),
            None,
        )
        .await;
        assert_eq!(r.status, 422, "case {i}: {}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expect), "case {i}: {message}");
    }
    let r = get(&format!("{base}/api/v1/discover?intent={CHAT}")).await;
    assert_eq!(
        r.body["nodes"].as_array().map(Vec::len),
        Some(0),
        "nothing was registered"
    );
    d.stop().await;
}
