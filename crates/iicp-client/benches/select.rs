//! Client selection benchmarks: ordering candidates with each strategy over 10, 100 and
//! 1000 discovered nodes, and the endpoint (SSRF) check applied to every candidate.
//!
//! `cargo bench -p iicp-client --bench select` (add `-- --quick` for a fast pass).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use iicp_client::select::{Strategy, MAX_CANDIDATES};
use iicp_client::time::Random;
use iicp_client::EndpointPolicy;
use iicp_proto::directory::NodeEntry;

/// A fixed sequence of "random" numbers, so every iteration does the same work.
struct Fixed;

impl Random for Fixed {
    fn next_f64(&self) -> f64 {
        0.37
    }
}

fn nodes(n: usize) -> Vec<NodeEntry> {
    (0..n)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "node_id": format!("node-{i}"),
                "endpoint": format!("https://node{i}.example.net:9484"),
                "score": 1.0 - i as f64 / (n as f64 + 1.0),
                "load": (i % 10) as f64 / 10.0,
                "region": "eu-central",
                "models": ["llama3"],
            }))
            .unwrap()
        })
        .collect()
}

fn selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_order");
    for n in [10usize, 100, 1000] {
        let list = nodes(n);
        for strategy in [
            Strategy::Deterministic,
            Strategy::Epsilon { epsilon: 0.5 },
            Strategy::weighted_v1(),
        ] {
            g.bench_with_input(BenchmarkId::new(strategy.name(), n), &list, |b, l| {
                b.iter(|| strategy.order(black_box(l), MAX_CANDIDATES, &Fixed))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("endpoint_policy");
    let policy = EndpointPolicy::new(false);
    for url in [
        "https://node7.example.net:9484",
        "http://203.0.113.9:9484",
        "http://127.0.0.1:9484",
    ] {
        g.bench_with_input(BenchmarkId::new("check_url", url), url, |b, u| {
            b.iter(|| policy.check_url(black_box(u)).is_ok())
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = selection
}
criterion_main!(benches);
