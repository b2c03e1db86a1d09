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

/// A signed self-service request of `action` by `key` over a fresh challenge nonce.
async fn self_service(
    base: &str,
    key: &OperatorKey,
    action: iicp_proto::crypto::sign::SelfServiceAction,
    fields: Map<String, Value>,
    now: u64,
) -> Map<String, Value> {
    use iicp_proto::crypto::sign::{self_service_body, sign_self_service};
    let c = post(
        &format!("{base}/api/v1/operator/challenge"),
        &json!({"operator_pub": key.operator_id()}),
        None,
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        c.raw
            .headers
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let nonce = c.body["nonce"].as_str().unwrap();
    let mut body = self_service_body(action, &key.operator_id(), nonce, now, fields);
    let sig = sign_self_service(key, &body);
    body.insert("sig".into(), sig.into());
    body
}

#[tokio::test]
async fn revoked_and_rotated_keys_are_refused() {
    use iicp_proto::crypto::sign::{self_service_body, sign_self_service, SelfServiceAction};
    for backend in backends() {
        let clock = ManualClock::starting_now();
        let d = start_mesh(backend, &clock).await;
        let base = d.base.clone();
        let now = clock.now_secs();
        let k = OperatorKey::from_seed(&[31; 32]);
        let node_id = "7b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e12";
        let mut body = with_manifest(
            "http://127.0.0.1:19321",
            Value::Object(manifest::sign(declaration(), &k, now)),
        );
        body["node_id"] = json!(node_id);
        body["operator_delegation"] =
            serde_json::to_value(sign_delegation(&k, node_id, now + 3600)).unwrap();
        register(&base, &body).await;
        let detail =
            |base: String| async move { get(&format!("{base}/api/v1/node/{node_id}")).await.body };
        assert_eq!(
            detail(base.clone()).await["node_policy_manifest"]["manifest_identity_level"],
            "operator_bound"
        );

        // revocation needs confirm, the key's signature and a nonce issued to it
        let revoke_url = format!("{base}/api/v1/operator/key/revoke");
        let fields = |v: Value| v.as_object().cloned().unwrap();
        let unconfirmed = self_service(
            &base,
            &k,
            SelfServiceAction::KeyRevoke,
            fields(json!({"reason_class": "compromise"})),
            now,
        )
        .await;
        assert_eq!(
            post(&revoke_url, &Value::Object(unconfirmed), None)
                .await
                .status,
            422
        );
        let other = OperatorKey::from_seed(&[32; 32]);
        let mut forged = self_service(
            &base,
            &k,
            SelfServiceAction::KeyRevoke,
            fields(json!({"confirm": true})),
            now,
        )
        .await;
        forged.insert("sig".into(), sign_self_service(&other, &forged).into());
        assert_eq!(
            post(&revoke_url, &Value::Object(forged), None).await.status,
            401
        );
        let good = self_service(
            &base,
            &k,
            SelfServiceAction::KeyRevoke,
            fields(json!({"confirm": true, "reason_class": "compromise"})),
            now,
        )
        .await;
        let r = post(&revoke_url, &Value::Object(good.clone()), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["revocation_reason_class"], "compromise");
        // the nonce was used
        assert_eq!(
            post(&revoke_url, &Value::Object(good), None).await.status,
            401
        );

        let m = detail(base.clone()).await["node_policy_manifest"].clone();
        assert_eq!(m["verification"]["status"], "signed_revoked", "{m}");
        assert_eq!(m["manifest_identity_level"], "revoked");
        assert_eq!(m["evidence"], "directory_revoked");
        assert_eq!(m["revocation_reason_class"], "compromise");
        assert!(m["revoked_at"].is_string());
        // nothing new is signed with it, and it binds no node
        let mut again = with_manifest(
            "http://127.0.0.1:19322",
            Value::Object(manifest::sign(declaration(), &k, now)),
        );
        let r = post(&format!("{base}/api/v1/register"), &again, None).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signed_revoked"));
        again.as_object_mut().unwrap().remove("policy_manifest");
        again["node_id"] = json!("8b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e13");
        again["operator_delegation"] = serde_json::to_value(sign_delegation(
            &k,
            "8b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e13",
            now + 3600,
        ))
        .unwrap();
        register(&base, &again).await;
        let r = get(&format!(
            "{base}/api/v1/node/8b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e13"
        ))
        .await;
        assert!(r.body["operator_fingerprint"].is_null(), "{}", r.body);
        let again = self_service(
            &base,
            &k,
            SelfServiceAction::KeyRevoke,
            fields(json!({"confirm": true})),
            now,
        )
        .await;
        assert_eq!(
            post(&revoke_url, &Value::Object(again), None).await.status,
            409
        );

        // rotation: the old key and the successor both sign
        let l = OperatorKey::from_seed(&[33; 32]);
        let m_key = OperatorKey::from_seed(&[34; 32]);
        let node_l = "9b0f3a34-0c57-4a45-9d0e-3c1f2b7a9e14";
        let mut body = with_manifest(
            "http://127.0.0.1:19323",
            Value::Object(manifest::sign(declaration(), &l, now)),
        );
        body["node_id"] = json!(node_l);
        register(&base, &body).await;
        let rotate_url = format!("{base}/api/v1/operator/key/rotate");
        let rotation = |successor: &OperatorKey, signer: &OperatorKey| {
            let (successor, signer, l) = (successor.clone(), signer.clone(), l.clone());
            let base = base.clone();
            async move {
                let mut b = self_service(
                    &base,
                    &l,
                    SelfServiceAction::KeyRotate,
                    fields(json!({"new_operator_pub": successor.operator_id()})),
                    now,
                )
                .await;
                let mut succ = self_service_body(
                    SelfServiceAction::KeyRotateSuccessor,
                    &l.operator_id(),
                    b["nonce"].as_str().unwrap(),
                    now,
                    fields(
                        json!({"new_operator_pub": successor.operator_id(), "rotation_epoch": null}),
                    ),
                );
                succ.remove("sig");
                b.insert(
                    "new_key_sig".into(),
                    sign_self_service(&signer, &succ).into(),
                );
                b
            }
        };
        // the successor's signature must be the successor's
        let wrong = rotation(&m_key, &other).await;
        assert_eq!(
            post(&rotate_url, &Value::Object(wrong), None).await.status,
            401
        );
        // a revoked successor is refused
        let to_revoked = rotation(&k, &k).await;
        assert_eq!(
            post(&rotate_url, &Value::Object(to_revoked), None)
                .await
                .status,
            422
        );
        let ok = rotation(&m_key, &m_key).await;
        let r = post(&rotate_url, &Value::Object(ok), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["rotation_epoch"], 1);
        let m =
            get(&format!("{base}/api/v1/node/{node_l}")).await.body["node_policy_manifest"].clone();
        assert_eq!(m["verification"]["status"], "signed_superseded", "{m}");
        assert_eq!(m["manifest_identity_level"], "rotated");
        assert_eq!(m["rotation_epoch"], 1);
        let r = post(
            &format!("{base}/api/v1/register"),
            &with_manifest(
                "http://127.0.0.1:19324",
                Value::Object(manifest::sign(declaration(), &l, now)),
            ),
            None,
        )
        .await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signed_superseded"));
        // the successor signs as usual
        register(
            &base,
            &with_manifest(
                "http://127.0.0.1:19325",
                Value::Object(manifest::sign(declaration(), &m_key, now)),
            ),
        )
        .await;
        d.stop().await;
    }
}
