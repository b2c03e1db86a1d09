//! Directory load benchmark: registers N nodes over loopback HTTP, then measures
//! `GET /v1/discover` latency (one client; one client with the result cache defeated;
//! 100 concurrent clients) and `POST /v1/heartbeat` throughput at a given concurrency,
//! for the memory and the SQLite store.
//!
//! `cargo run --release -p iicp-directory --example dirbench -- [NODES] [REQUESTS] [CONCURRENCY]`
//!
//! Environment: `DIRBENCH_STORES=memory,sqlite` (the default: both) picks the stores;
//! `DIRBENCH_SKIP_DISCOVER=1` runs only register and heartbeats (for `strace -c -f`).
//! Each store reports the RSS growth of the process over its registrations (RSS delta
//! / nodes: the working set, the store and the allocator's slack), and the SQLite store
//! the transactions its group-commit writer used for the heartbeats.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_directory::store::{GroupCommitStats, MemoryStore, SqliteStore};
use iicp_directory::Directory;
use iicp_transport::http::{HttpClient, HttpClientConfig};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;
use serde_json::{json, Value};

fn pct(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

/// Resident set size of this process in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn run(
    label: &str,
    directory: Directory,
    sqlite: Option<SqliteStore>,
    nodes: usize,
    requests: usize,
    concurrency: usize,
) {
    let skip_discover = std::env::var_os("DIRBENCH_SKIP_DISCOVER").is_some();
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
    let rss0 = rss_kib();
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
    let rss1 = rss_kib();
    println!(
        "{label}: registered {nodes} nodes in {reg:.2?} ({:.0}/s at concurrency {concurrency}); RSS {} -> {} MiB, {:.0} bytes per node",
        nodes as f64 / reg.as_secs_f64(),
        rss0 / 1024,
        rss1 / 1024,
        (rss1.saturating_sub(rss0) * 1024) as f64 / nodes.max(1) as f64
    );
    if !skip_discover {
        discover(label, &http, &base).await;
    }
    heartbeats(label, &http, &base, creds, sqlite, requests, concurrency).await;
    trigger.fire();
    let _ = server.await;
}

async fn discover(label: &str, http: &HttpClient, base: &str) {
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
        let (http, base, start) = (http.clone(), base.to_owned(), Arc::clone(&start));
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
}

async fn heartbeats(
    label: &str,
    http: &HttpClient,
    base: &str,
    creds: Vec<(String, String)>,
    sqlite: Option<SqliteStore>,
    requests: usize,
    concurrency: usize,
) {
    if requests == 0 {
        return;
    }
    let creds = Arc::new(creds);
    let stats0 = sqlite.as_ref().map(SqliteStore::group_commit_stats);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (http, creds, base) = (http.clone(), Arc::clone(&creds), base.to_owned());
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
    if let (Some(store), Some(before)) = (sqlite, stats0) {
        let after: GroupCommitStats = store.group_commit_stats();
        let commits = after.commits - before.commits;
        let writes = after.writes - before.writes;
        println!(
            "{label}: group commit: {writes} heartbeats in {commits} transactions = {:.3} transactions (WAL fsyncs) per heartbeat, {:.1} per transaction, largest {}",
            commits as f64 / writes.max(1) as f64,
            writes as f64 / commits.max(1) as f64,
            after.largest_batch
        );
    }
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
    let stores = std::env::var("DIRBENCH_STORES").unwrap_or_else(|_| "memory,sqlite".into());
    if stores.split(',').any(|s| s == "memory") {
        run(
            "memory",
            builder().store(MemoryStore::new()).build().await.unwrap(),
            None,
            nodes,
            requests,
            concurrency,
        )
        .await;
    }
    if stores.split(',').any(|s| s == "sqlite") {
        let path = std::env::temp_dir().join(format!("iicp-dirbench-{}.db", std::process::id()));
        let store = SqliteStore::open_async(&path).await.unwrap();
        run(
            "sqlite",
            builder().store(store.clone()).build().await.unwrap(),
            Some(store),
            nodes,
            requests,
            concurrency,
        )
        .await;
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
