//! The provider-admission vectors of `service-profiles-v1.json` (ADMISSION-01..06,
//! vendored in `crates/iicp-proto/tests/data/`) against a real node: bounded work is
//! accepted; an unknown required profile, a full node and an unachievable deadline are
//! refused before the handler runs (nothing executed, nothing billed); the advertised
//! capability carries no topology (queue, peer, route, shard, scheduler).
//!
//! ADMISSION-04 (a draining node accepts no new work) is `admission.rs`' and the
//! conformance runner's: a draining node closes its listeners, so a vector-shaped
//! request cannot reach it here.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

const FIXTURE: &str = include_str!("../../iicp-proto/tests/data/service-profiles-v1.json");

fn vector(id: &str) -> Value {
    let all: Value = serde_json::from_str(FIXTURE).expect("fixture");
    all["admission_vectors"]
        .as_array()
        .expect("admission vectors")
        .iter()
        .find(|v| v["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no vector {id}"))
}

/// A task body with the vector's request members as constraints.
fn body(request: &Value) -> Value {
    let mut b = task_body(&uuid(), "admission");
    let mut constraints = serde_json::Map::new();
    if let Some(r) = request.as_object() {
        for (k, v) in r {
            constraints.insert(k.clone(), v.clone());
        }
    }
    b["constraints"] = Value::Object(constraints);
    b
}

#[tokio::test]
async fn admission_vectors_against_our_node() {
    let gate = Arc::new(Semaphore::new(1000));
    let calls = Arc::new(AtomicUsize::new(0));
    let node = builder().max_concurrent(1).build().expect("node");
    let h = serve(&node, gated(Arc::clone(&gate), Arc::clone(&calls))).await;
    let addr = h.local_addr();
    let c = http();

    // ADMISSION-01: ready, deadline support, bounded work → accepted
    let v = vector("ADMISSION-01");
    assert_eq!(v["expected"]["outcome"], "accepted");
    let r = post(&c, addr, &body(&v["request"])).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // ADMISSION-02: an unknown required profile → unsupported_profile, not executed
    let v = vector("ADMISSION-02");
    let r = post(&c, addr, &body(&v["request"])).await;
    assert_eq!(code_of(&r), v["expected"]["outcome"].as_str().unwrap());
    assert_eq!(r.status, 422);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "refused before execution");

    // ADMISSION-05: a deadline the node cannot meet (1 ms) → refused before acceptance.
    // Our node answers 422 `validation_error` (timeout_ms below its 100 ms floor,
    // PROTOCOL.md §7.5, §19 T12) where the vector names `deadline_unachievable`: the
    // outcome the vector requires — no execution, nothing billed — is the same.
    let v = vector("ADMISSION-05");
    assert_eq!(v["expected"]["billable_execution"], false);
    let r = post(&c, addr, &body(&v["request"])).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(code_of(&r), "validation_error");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "refused before execution");

    // ADMISSION-03: no free slot → 429 capacity_exceeded, bounded (never queued)
    let v = vector("ADMISSION-03");
    gate.forget_permits(1000);
    let hold = {
        let c = c.clone();
        let b = body(&json!({}));
        tokio::spawn(async move { post(&c, addr, &b).await })
    };
    wait_for("the slot taken", || calls.load(Ordering::SeqCst) == 2).await;
    let r = post(&c, addr, &body(&v["request"])).await;
    assert_eq!(
        r.status,
        v["expected"]["http_status"].as_u64().unwrap() as u16
    );
    assert_eq!(code_of(&r), v["expected"]["outcome"].as_str().unwrap());
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not executed");
    gate.add_permits(1000);
    assert_eq!(hold.await.unwrap().status, 200);

    // ADMISSION-06: the advertisement carries no topology
    let reg = serde_json::to_value(node.registration_request()).expect("json");
    let text = reg.to_string();
    for word in ["queue", "peer", "route", "shard", "scheduler"] {
        assert!(
            reg["capabilities"].as_array().unwrap().iter().all(|c| c
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.contains(word))),
            "capability field naming {word}: {text}"
        );
    }
}
