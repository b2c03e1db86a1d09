//! Spec fixtures vendored in `tests/data` (see its README): `selection-v1.json` for the
//! `weighted_v1` profile and `endpoint-security-v1.json` for the endpoint policy.

use std::collections::HashMap;
use std::net::IpAddr;

use iicp_client::select::{weighted_v1, Strategy, MAX_CANDIDATES};
use iicp_client::time::Random;
use iicp_client::{EndpointPolicy, EndpointRefusal};
use iicp_proto::directory::NodeEntry;
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn pairs(nodes: &Value) -> (Vec<String>, Vec<(f64, f64)>) {
    let nodes = nodes.as_array().expect("nodes");
    let ids = nodes
        .iter()
        .map(|n| n["node_id"].as_str().expect("id").to_owned())
        .collect();
    let weights = nodes
        .iter()
        .map(|n| {
            (
                n["score"].as_f64().expect("score"),
                n["load"].as_f64().expect("load"),
            )
        })
        .collect();
    (ids, weights)
}

#[test]
fn weighted_v1_order_vectors() {
    let fx = load("selection-v1.json");
    assert_eq!(fx["profile"], "weighted_v1");
    let top_k = fx["top_k"].as_u64().expect("top_k") as usize;
    let vectors = fx["vectors"].as_array().expect("vectors");
    assert!(!vectors.is_empty());
    for v in vectors {
        let (ids, weights) = pairs(&v["nodes"]);
        let random = v["random"].as_f64().expect("random");
        let order: Vec<String> = weighted_v1(&weights, top_k, random)
            .into_iter()
            .map(|i| ids[i].clone())
            .collect();
        let expected: Vec<String> = v["expected_order"]
            .as_array()
            .expect("expected")
            .iter()
            .map(|s| s.as_str().expect("id").to_owned())
            .collect();
        assert_eq!(order, expected, "{}", v["name"]);

        // the same through the public strategy, on node entries
        struct Fixed(f64);
        impl Random for Fixed {
            fn next_f64(&self) -> f64 {
                self.0
            }
        }
        let entries: Vec<NodeEntry> = weights
            .iter()
            .map(|&(s, l)| NodeEntry {
                score: Some(s),
                load: Some(l),
                ..NodeEntry::default()
            })
            .collect();
        let via_strategy: Vec<String> = Strategy::WeightedV1 { top_k }
            .order(&entries, MAX_CANDIDATES, &Fixed(random))
            .into_iter()
            .map(|i| ids[i].clone())
            .collect();
        let mut capped = expected.clone();
        capped.truncate(MAX_CANDIDATES);
        assert_eq!(via_strategy, capped, "{}", v["name"]);
    }
}

#[test]
fn weighted_v1_distribution_vectors() {
    let fx = load("selection-v1.json");
    for v in fx["distribution_vectors"].as_array().expect("vectors") {
        let (ids, weights) = pairs(&v["nodes"]);
        let n = v["sample_count"].as_u64().expect("count");
        let top_k = v["top_k"].as_u64().expect("top_k") as usize;
        let mut counts: HashMap<String, u64> = ids.iter().map(|id| (id.clone(), 0)).collect();
        for i in 0..n {
            let r = (i as f64 + 0.5) / n as f64;
            let first = weighted_v1(&weights, top_k, r)[0];
            *counts.entry(ids[first].clone()).or_default() += 1;
        }
        for (id, expected) in v["expected_first_counts"].as_object().expect("counts") {
            assert_eq!(
                counts.get(id).copied(),
                expected.as_u64(),
                "{} node {id}",
                v["name"]
            );
        }
    }
}

fn addrs(v: &Value) -> Vec<IpAddr> {
    v.as_array()
        .expect("addresses")
        .iter()
        .map(|a| a.as_str().expect("addr").parse().expect("ip"))
        .collect()
}

#[test]
fn endpoint_address_vectors() {
    let fx = load("endpoint-security-v1.json");
    for v in fx["address_vectors"].as_array().expect("vectors") {
        let policy = EndpointPolicy::new(v["allow_private"].as_bool().expect("flag"));
        let got = policy.check_addresses(&addrs(&v["addresses"]));
        assert_eq!(
            got.is_ok(),
            v["allowed"].as_bool().expect("allowed"),
            "{} {got:?}",
            v["id"]
        );
        if v["id"] == "mixed-public-private" {
            assert_eq!(got, Err(EndpointRefusal::MixedAnswer));
        }
        // IP literals in URLs get the same verdict
        let list = addrs(&v["addresses"]);
        if list.len() == 1 {
            let host = match list[0] {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            let url_verdict = policy.check_url(&format!("https://{host}:9484"));
            assert_eq!(url_verdict.is_ok(), got.is_ok(), "{} as URL", v["id"]);
        }
    }
}

#[test]
fn endpoint_hostname_vectors() {
    let fx = load("endpoint-security-v1.json");
    let policy = EndpointPolicy::default();
    for v in fx["hostname_vectors"].as_array().expect("vectors") {
        let host = v["host"].as_str().expect("host");
        let got = policy.check_host(host);
        assert_eq!(
            got.is_ok(),
            v["allowed"].as_bool().expect("allowed"),
            "{} {got:?}",
            v["id"]
        );
        assert_eq!(
            policy.check_url(&format!("https://{host}")).is_ok(),
            got.is_ok(),
            "{}",
            v["id"]
        );
    }
}

#[test]
fn endpoint_resolution_attempt_vectors() {
    // Each resolution is validated on its own (a rebind to a private address is refused).
    let fx = load("endpoint-security-v1.json");
    for v in fx["resolution_attempt_vectors"]
        .as_array()
        .expect("vectors")
    {
        let policy = EndpointPolicy::new(v["allow_private"].as_bool().expect("flag"));
        let attempts = v["attempts"].as_array().expect("attempts");
        let expected = v["expected"].as_array().expect("expected");
        for (attempt, want) in attempts.iter().zip(expected) {
            let verdict = if policy.check_addresses(&addrs(attempt)).is_ok() {
                "allow"
            } else {
                "refuse"
            };
            assert_eq!(verdict, want.as_str().expect("verdict"), "{}", v["id"]);
        }
    }
}

#[test]
fn endpoint_redirect_vectors_target_checks() {
    // Redirect following itself is iicp-transport's (same-origin 307/308, ≤ 3 hops).
    // What the client decides is the target validation: a redirect may be followed
    // only to addresses the policy admits, and only for same-origin 307/308.
    let fx = load("endpoint-security-v1.json");
    for v in fx["redirect_vectors"].as_array().expect("vectors") {
        let policy = EndpointPolicy::new(v["allow_private"].as_bool().expect("flag"));
        let status = v["status"].as_u64().expect("status");
        let same_origin = v["same_origin"].as_bool().expect("same_origin");
        let target_ok = policy
            .check_addresses(&addrs(&v["target_addresses"]))
            .is_ok();
        let follow = matches!(status, 307 | 308) && same_origin && target_ok;
        let want = v["expected"].as_str().expect("expected");
        assert_eq!(follow, want == "follow_after_revalidation", "{}", v["id"]);
    }
}
