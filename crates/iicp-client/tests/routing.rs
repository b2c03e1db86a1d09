//! Routing profiles in the submit pipeline (PROTOCOL.md §9.4, ADR 0016): a profile is a
//! hard gate before any byte reaches a node — a node whose served policy manifest does
//! not check out is never contacted even when the directory vouches for it, a refusal
//! names the rules and counts and sends nothing, a request's profile overrides the
//! client's, and a restrictive profile evaluates the whole list instead of one ticket.

use std::sync::Arc;

use iicp_client::{DiscoverOptions, ErrorCode, ErrorKind, RoutingPolicy, RoutingProfile};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proto::crypto::manifest;
use iicp_proto::crypto::sign::OperatorKey;
use iicp_testkit::fake::*;
use iicp_testkit::time::*;
use rand_core::OsRng;
use serde_json::{json, Map, Value};

fn key() -> Option<CxKeyPair> {
    Some(CxKeyPair::generate(&mut OsRng))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn declaration(retention: &str) -> Map<String, Value> {
    json!({"jurisdiction": "DE", "training_use": "none", "retention": {"task_payload": retention}})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// A manifest as our directory serves it: the node's signed manifest plus evidence.
fn served(signed: &Map<String, Value>) -> Value {
    let mut out = signed.clone();
    out.insert(
        "verification".into(),
        manifest::verify(signed, now()).to_json(),
    );
    out.insert("manifest_identity_level".into(), "signed_valid".into());
    out.insert("evidence".into(), "signed_verified".into());
    Value::Object(out)
}

fn with_manifest(mut entry: Value, manifest: Value, score: f64) -> Value {
    entry["node_policy_manifest"] = manifest;
    entry["score"] = json!(score);
    entry
}

#[tokio::test]
async fn a_node_whose_manifest_does_not_verify_is_never_contacted() {
    let op = OperatorKey::from_seed(&[21; 32]);
    let honest = manifest::sign(declaration("none"), &op, now() - 60);
    // the tampered node keeps payloads but its directory entry says `none`, with the
    // directory's word that the signature is valid and the original hash
    let mut tampered = manifest::sign(declaration("provider_defined"), &op, now() - 60);
    let vouched = served(&manifest::sign(declaration("none"), &op, now() - 60));
    tampered["retention"]["task_payload"] = "none".into();
    let mut lie = served(&tampered);
    lie["verification"] = vouched["verification"].clone();

    let liar = fake_node(&node_id(1), key(), vec![]).await;
    let good = fake_node(&node_id(2), key(), vec![]).await;
    let nodes = vec![
        with_manifest(liar.entry(), lie, 0.95),
        with_manifest(good.entry(), served(&honest), 0.5),
    ];
    let dir = fake_directory(nodes, Tickets::Off).await;
    let strict = builder(&dir, Arc::new(RecordingSleeper::default()))
        .routing_policy(RoutingProfile::StrictPolicy)
        .build()
        .expect("client");
    for _ in 0..3 {
        let done = strict.submit(chat_task()).await.expect("submit");
        assert_eq!(done.node_id, node_id(2));
        assert_eq!(done.routing_profile, RoutingProfile::StrictPolicy);
    }
    assert_eq!(liar.count(), 0, "the tampered node got a request");
    assert_eq!(good.count(), 3);

    // the same mesh under `standard`: the first node in directory order is the liar, so
    // the gate above is what kept it out
    let standard = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = standard.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(1));
    assert_eq!(liar.count(), 1);
}

#[tokio::test]
async fn a_refusal_names_rules_and_counts_and_sends_nothing() {
    let a = fake_node(&node_id(1), key(), vec![]).await;
    let b = fake_node(&node_id(2), None, vec![]).await;
    let mut ea = a.entry();
    ea["region"] = json!("us-east");
    let mut eb = b.entry();
    eb["region"] = json!("eu-central");
    let dir = fake_directory(vec![ea, eb], Tickets::On).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .routing_policy(RoutingProfile::EuRestricted)
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Policy);
    assert_eq!(err.code(), &ErrorCode::RoutingPolicyRefused);
    let msg = err.to_string();
    assert!(msg.contains("eu_restricted"), "{msg}");
    assert!(msg.contains("region_not_allowed: 1"), "{msg}");
    assert!(msg.contains("missing_encryption_key: 1"), "{msg}");
    assert!(msg.contains("no prompt was sent"), "{msg}");
    assert!(!msg.contains("PAYLOAD-MARKER"), "{msg}");
    assert_eq!(a.count() + b.count(), 0);
    // a restrictive profile reads the whole list, not one ticket at a time
    assert_eq!(dir.count("/api/v1/dispatch/ticket"), 0);
    assert_eq!(dir.count("/api/v1/discover"), 1);
    for call in dir.calls() {
        assert!(!String::from_utf8_lossy(&call.body).contains("PAYLOAD-MARKER"));
    }
}

#[tokio::test]
async fn a_request_profile_overrides_the_clients() {
    let a = fake_node(&node_id(1), key(), vec![]).await;
    let b = fake_node(&node_id(2), key(), vec![]).await;
    let mut ea = a.entry();
    ea["region"] = json!("us-east");
    ea["score"] = json!(0.95);
    let mut eb = b.entry();
    eb["region"] = json!("eu-west");
    eb["score"] = json!(0.4);
    let dir = fake_directory(vec![ea, eb], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let task = chat_task().with_route(DiscoverOptions {
        routing: Some(
            RoutingPolicy::new(RoutingProfile::AllowedRegionsStrict).allowed_regions(["eu-west"]),
        ),
        ..DiscoverOptions::default()
    });
    let done = client.submit(task).await.expect("submit");
    assert_eq!(done.node_id, node_id(2));
    assert_eq!(done.routing_profile, RoutingProfile::AllowedRegionsStrict);
    // without it, the client's standard profile takes the directory's first
    assert_eq!(
        client.submit(chat_task()).await.expect("submit").node_id,
        node_id(1)
    );
    // an invalid request policy is a configuration error before any I/O
    let before = dir.calls().len();
    let bad = chat_task().with_route(DiscoverOptions {
        routing: Some(RoutingPolicy::new(RoutingProfile::AllowedRegionsStrict)),
        ..DiscoverOptions::default()
    });
    let err = client.submit(bad).await.expect_err("invalid");
    assert_eq!(err.code(), &ErrorCode::InvalidConfig);
    assert_eq!(dir.calls().len(), before);
}

#[tokio::test]
async fn debug_override_admits_keyless_nodes_and_standard_does_not() {
    let a = fake_node(&node_id(1), None, vec![]).await;
    let dir = fake_directory(vec![a.entry()], Tickets::Off).await;
    let standard = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = standard.submit(chat_task()).await.expect_err("keyless");
    assert_eq!(err.code(), &ErrorCode::CxRequired);
    let debug = builder(&dir, Arc::new(RecordingSleeper::default()))
        .routing_policy(RoutingProfile::DebugOverride)
        .build()
        .expect("client");
    let done = debug.submit(chat_task()).await.expect("plaintext");
    assert!(!done.encrypted);
    assert_eq!(a.count(), 1);
}
