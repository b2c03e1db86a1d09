//! Directory load benchmark: registers N nodes over loopback HTTP, then measures
//! `GET /v1/discover` latency (one client; one client with the result cache defeated;
//! 100 concurrent clients) and `POST /v1/heartbeat` throughput at a given concurrency,
//! for the memory and the SQLite store.
//!
//! `cargo run --release -p iicp-directory --example dirbench -- [NODES] [REQUESTS] [CONCURRENCY]`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_directory::store::{MemoryStore, SqliteStore};
use iicp_directory::Directory;
use iicp_transport::http::{HttpClient, HttpClientConfig};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;
use serde_json::{json, Value};

fn pct(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

async fn run(label: &str, directory: Directory, nodes: usize, requests: usize, concurrency: usize) {
    let listener = Listener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerConfig::default(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, sd) = shutdown::channel();
    let directory = Arc::new(directory);
    let server = {
        let d = Arc::clone(&directory);
        tokio::spawn(async move { d.serve(listener, sd).await })
    };
    let base = format!("http://{addr}/api");
    // keep a connection per concurrent caller (the default pool keeps 32 per host)
    let mut config = HttpClientConfig::default();
    config.pool_max_idle_per_host = 256;
    let http = HttpClient::new(config).unwrap();

    // register
    let t0 = Instant::now();
    let mut creds: Vec<(String, String)> = Vec::with_capacity(nodes);
    let regions = ["eu-central", "us-west", "ap-south", "sa-east"];
    let mut batch = Vec::new();
    for i in 0..nodes {
        let http = http.clone();
        let url = format!("{base}/v1/register");
        let body = json!({
            "endpoint": format!("http://10.{}.{}.{}:9484", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            "region": regions[i % regions.len()],
            "capabilities": [{"intent": "urn:iicp:intent:llm:chat:v1", "models": [format!("model-{}", i % 7)], "max_tokens": 4096}],
            "limits": {"max_concurrent": 4, "tokens_per_min": 100000},
        });
        batch.push(tokio::spawn(async move {
            http.post_json(&url, &body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .unwrap()
        }));
        if batch.len() == concurrency || i + 1 == nodes {
            for h in batch.drain(..) {
                let ack = h.await.unwrap();
                creds.push((
                    ack["node_id"].as_str().unwrap().to_owned(),
                    ack["node_token"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    let reg = t0.elapsed();
    println!(
        "{label}: registered {nodes} nodes in {reg:.2?} ({:.0}/s at concurrency {concurrency})",
        nodes as f64 / reg.as_secs_f64()
    );

    // discover latency, one at a time
    for (limit, region) in [(10, ""), (50, "&region=eu-central"), (10, "&model=model-3")] {
        let url = format!("{base}/v1/discover?intent=urn:iicp:intent:llm:chat:v1&qos=best-effort&limit={limit}{region}");
        let mut samples = Vec::with_capacity(200);
        for _ in 0..200 {
            let t = Instant::now();
            let r = http.get(&url).send().await.unwrap();
            assert!(r.is_success());
            samples.push(t.elapsed());
        }
        let count = http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .unwrap()["count"]
            .clone();
        println!(
            "{label}: discover limit={limit}{region}: median {:.2?} p99 {:.2?} (returned {count})",
            pct(&mut samples, 0.5),
            pct(&mut samples, 0.99)
        );
    }

    // discover without the result cache: every request a distinct query
    let mut samples = Vec::with_capacity(200);
    for i in 0..200 {
        let url =
            format!("{base}/v1/discover?intent=urn:iicp:intent:llm:chat:v1&limit=10&nocache={i}");
        let t = Instant::now();
        let r = http.get(&url).send().await.unwrap();
        assert!(r.is_success());
        samples.push(t.elapsed());
    }
    println!(
        "{label}: discover limit=10, uncached (distinct queries): median {:.2?} p99 {:.2?}",
        pct(&mut samples, 0.5),
        pct(&mut samples, 0.99)
    );

    // discover under load: 100 concurrent clients (each on its own kept-alive
    // connection, opened during 20 unmeasured requests), the three queries above in
    // turn, long enough for every cached result to be refreshed a few times
    let clients = 100;
    let per_client = 500;
    let warmup = 20;
    let start = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut workers = Vec::new();
    for w in 0..clients {
        let (http, base, start) = (http.clone(), base.clone(), Arc::clone(&start));
        workers.push(tokio::spawn(async move {
            let queries = ["", "&region=eu-central&limit=50", "&model=model-3"];
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..warmup + per_client {
                if i == warmup {
                    start.wait().await;
                }
                let url = format!(
                    "{base}/v1/discover?intent=urn:iicp:intent:llm:chat:v1&qos=best-effort{}",
                    queries[(w + i) % queries.len()]
                );
                let t = Instant::now();
                let r = http.get(&url).send().await.unwrap();
                assert!(r.is_success());
                if i >= warmup {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let el = t0.elapsed();
    println!(
        "{label}: discover at {clients} concurrent clients: {} requests in {el:.2?} = {:.0}/s; median {:.2?} p99 {:.2?}",
        lat.len(),
        lat.len() as f64 / el.as_secs_f64(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );

    // heartbeat throughput
    let creds = Arc::new(creds);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (http, creds, base) = (http.clone(), Arc::clone(&creds), base.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while i < requests {
                let (id, token) = &creds[i % creds.len()];
                let t = Instant::now();
                let r = http
                    .post_json(
                        format!("{base}/v1/heartbeat"),
                        &json!({"node_id": id, "load": 0.25, "active_jobs": 1}),
                    )
                    .bearer(token.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.is_success(), "{}", r.status);
                lat.push(t.elapsed());
                i += concurrency;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let el = t0.elapsed();
    println!(
        "{label}: {requests} heartbeats in {el:.2?} = {:.0}/s at concurrency {concurrency}; median {:.2?} p99 {:.2?}",
        requests as f64 / el.as_secs_f64(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    trigger.fire();
    let _ = server.await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(10_000);
    let requests = args.get(1).copied().unwrap_or(20_000);
    let concurrency = args.get(2).copied().unwrap_or(32);
    let builder = || {
        Directory::builder()
            .private_mesh(true)
            .liveness_probe(false)
            .register_rate_limit(u32::MAX, Duration::from_secs(60))
    };
    run(
        "memory",
        builder().store(MemoryStore::new()).build().await.unwrap(),
        nodes,
        requests,
        concurrency,
    )
    .await;
    let path = std::env::temp_dir().join(format!("iicp-dirbench-{}.db", std::process::id()));
    let store = SqliteStore::open_async(&path).await.unwrap();
    run(
        "sqlite",
        builder().store(store).build().await.unwrap(),
        nodes,
        requests,
        concurrency,
    )
    .await;
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}
