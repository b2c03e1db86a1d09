//! Directory load benchmark: registers N nodes over loopback HTTP, then measures
//! `GET /v1/discover` latency (one client; one client with the result cache defeated;
//! 100 concurrent clients) and `POST /v1/heartbeat` throughput at a given concurrency,
//! for the memory, the SQLite and the PostgreSQL store.
//!
//! `cargo run --release -p iicp-directory --example dirbench -- [NODES] [REQUESTS] [CONCURRENCY] [--store S]… [--pg-url URL] [--instances N] [--store-only]`
//!
//! * `--store memory|sqlite|postgres` (repeatable; default memory and sqlite, or
//!   `DIRBENCH_STORES=memory,sqlite,postgres`) picks the stores.
//! * `--pg-url URL` (or `DIRBENCH_PG_URL`): the PostgreSQL database (emptied tables are
//!   not assumed: use a fresh one). Without it a throwaway server is started with
//!   `iicp_testkit::postgres` (default settings, `fsync=on`) and a fresh database made.
//! * `--instances N` (PostgreSQL only, default 1): N directory instances on the one
//!   database, as behind a reverse proxy: registrations and discovers go round-robin,
//!   each node heartbeats through one instance (node i → instance i mod N, sticky as a
//!   proxy hashing on the node would make it).
//! * `--store-only`: also measure `Store::put_state` without HTTP (N stores' worth of
//!   callers calling the store directly at CONCURRENCY): what the store itself sustains.
//!
//! The directories (their HTTP servers, background tasks and stores) run on their own
//! tokio runtime, threads named `dir-rt` (plus the SQLite writer thread), and the load
//! generator on the main runtime, so that each phase can report the CPU time of the
//! directory apart from the load generator's (`/proc/self/task/*/stat`, 10 ms ticks;
//! PostgreSQL's own server processes are in neither). The load generator is kept light:
//! heartbeat bodies and URLs are serialised once, and a discover answer is checked by
//! its status and by being a JSON object that starts with its `nodes` array, not parsed.
//!
//! `DIRBENCH_SHARED_RUNTIME=1` runs the directories on the load generator's runtime
//! instead (two worker threads in all, fewer threads than the split's four on a 2-core
//! machine; no CPU split then: everything counts as load generator).
//!
//! `DIRBENCH_SKIP_DISCOVER=1` runs only register and heartbeats (for `strace -c -f`).
//! Each store reports the RSS growth of the process over its registrations (RSS delta
//! / nodes: the working set, the store and the allocator's slack), and the SQL stores
//! the transactions their group-commit writers used for the heartbeats.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_directory::store::{GroupCommitStats, MemoryStore, PgStore, SqliteStore, Store};
use iicp_directory::{Config, Directory};
use iicp_testkit::raw_http::{self, RawHttp};
use iicp_transport::http::{HttpClient, HttpClientConfig};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;
use serde_json::{json, Value};

/// The address of a directory base URL (`http://ADDR/api`).
fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://")
        .trim_end_matches("/api")
        .parse()
        .unwrap()
}

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

/// CPU time (user + system, ms) of each thread of this process and of the PostgreSQL
/// processes it started, at one moment (see [`cpu_report`]).
#[derive(Debug, Clone, Default)]
struct Cpu {
    /// By thread id: (thread name, ms).
    threads: std::collections::HashMap<u32, (String, u64)>,
    /// By process id: ms (the postmaster's includes its ended children).
    postgres: std::collections::HashMap<u32, u64>,
}

/// `(name, [utime, stime, cutime, cstime] in ms, ppid)` of a `/proc/…/stat`.
fn proc_stat(path: &std::path::Path) -> Option<(String, [u64; 4], u32)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat[open + 1..close].to_owned();
    // after the name: field 3 (state) is f[0]; ppid is field 4, utime..cstime 14..17
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 10; // CLK_TCK 100
    let ppid = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some((name, [n(11), n(12), n(13), n(14)], ppid))
}

/// [`Cpu`] now, from `/proc/self/task/*/stat` and the PostgreSQL processes this
/// process started.
fn cpu_now() -> Cpu {
    let mut cpu = Cpu::default();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((name, [u, s, _, _], _)) = proc_stat(&t.path().join("stat")) {
                cpu.threads.insert(tid, (name, u + s));
            }
        }
    }
    let me = std::process::id();
    let procs: Vec<(u32, String, [u64; 4], u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let (name, t, ppid) = proc_stat(&e.path().join("stat"))?;
            Some((pid, name, t, ppid))
        })
        .collect();
    let parent: std::collections::HashMap<u32, (u32, &str)> = procs
        .iter()
        .map(|(pid, name, _, ppid)| (*pid, (*ppid, name.as_str())))
        .collect();
    let mine = |mut pid: u32| {
        for _ in 0..8 {
            match parent.get(&pid) {
                Some((ppid, _)) if *ppid == me => return true,
                Some((ppid, _)) => pid = *ppid,
                None => return false,
            }
        }
        false
    };
    for (pid, name, [u, s, cu, cs], ppid) in &procs {
        if name != "postgres" || !mine(*pid) {
            continue;
        }
        let postmaster = parent.get(ppid).is_none_or(|(_, n)| *n != "postgres");
        // ended backends are in the postmaster's children's time
        cpu.postgres
            .insert(*pid, u + s + if postmaster { cu + cs } else { 0 });
    }
    cpu
}

/// CPU per operation since `before`, per thread and process (a thread that ended
/// during the phase is missing, one that started counts whole): the directory's
/// runtime (`dir-rt`: HTTP, handlers, blocking pool), its store thread (`iicp-dir-*`,
/// SQLite's group-commit writer), the load generator (every other thread of this
/// process) and PostgreSQL's processes.
fn cpu_report(what: &str, before: Cpu, ops: usize) {
    let after = cpu_now();
    let (mut rt, mut st, mut load) = (0, 0, 0);
    for (tid, (name, ms)) in &after.threads {
        let d = ms.saturating_sub(before.threads.get(tid).map_or(0, |t| t.1));
        if name.starts_with("dir-rt") {
            rt += d;
        } else if name.starts_with("iicp-dir-") {
            st += d;
        } else {
            load += d;
        }
    }
    let pg: u64 = after
        .postgres
        .iter()
        .map(|(pid, ms)| ms.saturating_sub(before.postgres.get(pid).copied().unwrap_or(0)))
        .sum();
    let per = |ms: u64| ms as f64 * 1000.0 / ops.max(1) as f64;
    println!(
        "{what}: CPU per request: directory {:.1} µs (runtime {:.1} + store thread {:.1}), load generator {:.1} µs, PostgreSQL {:.1} µs ({} + {} + {} + {} ms over {ops})",
        per(rt + st),
        per(rt),
        per(st),
        per(load),
        per(pg),
        rt,
        st,
        load,
        pg,
    );
}

/// Group-commit counters of the store(s) under test: (commits, writes, largest batch).
#[derive(Clone)]
enum Stats {
    None,
    Sqlite(SqliteStore),
    Pg(Vec<PgStore>),
}

impl Stats {
    fn get(&self) -> Option<(u64, u64, u64)> {
        let sum = |all: &[GroupCommitStats]| {
            all.iter().fold((0, 0, 0), |(c, w, l), s| {
                (c + s.commits, w + s.writes, l.max(s.largest_batch))
            })
        };
        match self {
            Self::None => None,
            Self::Sqlite(s) => Some(sum(&[s.group_commit_stats()])),
            Self::Pg(v) => Some(sum(&v
                .iter()
                .map(PgStore::group_commit_stats)
                .collect::<Vec<_>>())),
        }
    }
}

async fn run(
    label: &str,
    dir_rt: &tokio::runtime::Handle,
    directories: Vec<Directory>,
    stats: Stats,
    nodes: usize,
    requests: usize,
    concurrency: usize,
) {
    let skip_discover = std::env::var_os("DIRBENCH_SKIP_DISCOVER").is_some();
    let (trigger, sd) = shutdown::channel();
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    for directory in directories {
        let listener = Listener::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ListenerConfig::default(),
        )
        .await
        .unwrap();
        bases.push(format!("http://{}/api", listener.local_addr().unwrap()));
        let sd = sd.clone();
        servers.push(dir_rt.spawn(async move { directory.serve(listener, sd).await }));
    }
    let bases = Arc::new(bases);
    // keep a connection per concurrent caller (the default pool keeps 32 per host)
    let mut config = HttpClientConfig::default();
    config.pool_max_idle_per_host = 256;
    let http = HttpClient::new(config).unwrap();

    // register
    let rss0 = rss_kib();
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let mut creds: Vec<(String, String)> = Vec::with_capacity(nodes);
    let regions = ["eu-central", "us-west", "ap-south", "sa-east"];
    let mut batch = Vec::new();
    for i in 0..nodes {
        let http = http.clone();
        let url = format!("{}/v1/register", bases[i % bases.len()]);
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
    cpu_report(&format!("{label}: register"), cpu0, nodes);
    if !skip_discover {
        discover(label, &http, &bases).await;
    }
    heartbeats(label, &bases, creds, stats, requests, concurrency).await;
    trigger.fire();
    for s in servers {
        let _ = s.await;
    }
}

/// A discover answer as the load generator checks it: 200, and a JSON object that opens
/// with its `nodes` array (the directory writes that member first) and closes.
fn check_discover(r: &iicp_transport::http::client::HttpReply) {
    assert!(r.is_success(), "{}", r.status);
    assert!(
        r.body.starts_with(b"{\"nodes\":[") && r.body.ends_with(b"}"),
        "not a discover body"
    );
}

async fn discover(label: &str, http: &HttpClient, bases: &Arc<Vec<String>>) {
    let base = bases[0].as_str();
    // discover latency, one at a time
    for (limit, region) in [(10, ""), (50, "&region=eu-central"), (10, "&model=model-3")] {
        let url = format!("{base}/v1/discover?intent=urn:iicp:intent:llm:chat:v1&qos=best-effort&limit={limit}{region}");
        let mut samples = Vec::with_capacity(200);
        for _ in 0..200 {
            let t = Instant::now();
            let r = http.get(&url).send().await.unwrap();
            check_discover(&r);
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
    let cpu0 = cpu_now();
    for i in 0..200 {
        let url =
            format!("{base}/v1/discover?intent=urn:iicp:intent:llm:chat:v1&limit=10&nocache={i}");
        let t = Instant::now();
        let r = http.get(&url).send().await.unwrap();
        check_discover(&r);
        samples.push(t.elapsed());
    }
    cpu_report(&format!("{label}: discover uncached"), cpu0, 200);
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
    // (a wrk-like keep-alive connection per client, `iicp_testkit::raw_http`: the load
    // tool shares the two cores with the directory and should cost it little)
    for w in 0..clients {
        let start = Arc::clone(&start);
        let addr = addr_of(&bases[w % bases.len()]);
        workers.push(tokio::spawn(async move {
            let requests = ["", "&region=eu-central&limit=50", "&model=model-3"].map(|q| {
                let path = format!(
                    "/api/v1/discover?intent=urn:iicp:intent:llm:chat:v1&qos=best-effort{q}"
                );
                raw_http::request("GET", addr, &path, &[], b"")
            });
            let mut conn = RawHttp::new(addr);
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..warmup + per_client {
                if i == warmup {
                    start.wait().await;
                }
                let request = &requests[(w + i) % requests.len()];
                let t = Instant::now();
                let status = conn.send(request).await.unwrap();
                assert_eq!(status, 200);
                let body = conn.body();
                assert!(
                    body.starts_with(b"{\"nodes\":[") && body.ends_with(b"}"),
                    "not a discover body"
                );
                if i >= warmup {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    start.wait().await;
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let el = t0.elapsed();
    cpu_report(
        &format!("{label}: discover at {clients} concurrent clients"),
        cpu0,
        clients * per_client,
    );
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
    bases: &Arc<Vec<String>>,
    creds: Vec<(String, String)>,
    stats: Stats,
    requests: usize,
    concurrency: usize,
) {
    if requests == 0 {
        return;
    }
    // what each node sends, as request bytes built once: (instance, request); the load
    // comes from wrk-like keep-alive connections (`iicp_testkit::raw_http`), so that the
    // load tool's own HTTP stack does not count against the directory on the same cores
    let addrs: Vec<SocketAddr> = bases.iter().map(|b| addr_of(b)).collect();
    let calls: Arc<Vec<(usize, Vec<u8>)>> = Arc::new(
        creds
            .iter()
            .enumerate()
            .map(|(node, (id, token))| {
                // a node heartbeats through one instance (sticky)
                let instance = node % addrs.len();
                let body =
                    serde_json::to_vec(&json!({"node_id": id, "load": 0.25, "active_jobs": 1}))
                        .unwrap();
                let auth = format!("Bearer {token}");
                let request = raw_http::request(
                    "POST",
                    addrs[instance],
                    "/api/v1/heartbeat",
                    &[
                        ("content-type", "application/json"),
                        ("authorization", &auth),
                    ],
                    &body,
                );
                (instance, request)
            })
            .collect(),
    );
    let stats0 = stats.get();
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (calls, addrs) = (Arc::clone(&calls), addrs.clone());
        workers.push(tokio::spawn(async move {
            let mut conns: Vec<RawHttp> = addrs.iter().map(|a| RawHttp::new(*a)).collect();
            let mut lat = Vec::new();
            let mut i = w;
            while i < requests {
                let (instance, request) = &calls[i % calls.len()];
                let t = Instant::now();
                let status = conns[*instance].send(request).await.unwrap();
                assert!((200..300).contains(&status), "heartbeat answered {status}");
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
    report_rate(
        &format!("{label}: {requests} heartbeats"),
        requests,
        concurrency,
        t0.elapsed(),
        &mut lat,
    );
    cpu_report(&format!("{label}: heartbeats"), cpu0, requests);
    report_group_commit(label, &stats, stats0);
}

/// `requests` calls of `call(i)` from `concurrency` workers (worker w makes calls w,
/// w + concurrency, …); prints the rate and latency percentiles after `what`.
async fn closed_loop<F, Fut>(what: &str, requests: usize, concurrency: usize, call: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while i < requests {
                let t = Instant::now();
                call(i).await;
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
    report_rate(what, requests, concurrency, t0.elapsed(), &mut lat);
}

/// Prints the rate and latency percentiles of a closed loop after `what`.
fn report_rate(
    what: &str,
    requests: usize,
    concurrency: usize,
    el: Duration,
    lat: &mut [Duration],
) {
    println!(
        "{what} in {el:.2?} = {:.0}/s at concurrency {concurrency}; median {:.2?} p99 {:.2?}",
        requests as f64 / el.as_secs_f64(),
        pct(lat, 0.5),
        pct(lat, 0.99)
    );
}

fn report_group_commit(label: &str, stats: &Stats, before: Option<(u64, u64, u64)>) {
    if let (Some(before), Some(after)) = (before, stats.get()) {
        let commits = after.0 - before.0;
        let writes = after.1 - before.1;
        println!(
            "{label}: group commit: {writes} heartbeats in {commits} transactions = {:.3} transactions (WAL flushes) per heartbeat, {:.1} per transaction, largest {}",
            commits as f64 / writes.max(1) as f64,
            writes as f64 / commits.max(1) as f64,
            after.2
        );
    }
}

/// `Store::put_state` called directly (no HTTP): `requests` durable writes over the
/// stored nodes from `concurrency` callers, spread over `stores`.
async fn store_only(
    label: &str,
    stores: Vec<Arc<dyn Store>>,
    stats: &Stats,
    nodes: usize,
    requests: usize,
    concurrency: usize,
) {
    let ids: Arc<Vec<String>> = Arc::new(
        stores[0]
            .load_nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.node_id)
            .take(nodes)
            .collect(),
    );
    let before = stats.get();
    let stores = Arc::new(stores);
    closed_loop(
        &format!("{label}: store only: {requests} durable put_state"),
        requests,
        concurrency,
        move |i| {
            let (ids, stores) = (Arc::clone(&ids), Arc::clone(&stores));
            async move {
                let mut state = iicp_directory::store::NodeState::new(1_000 + i as u64);
                state.active_jobs = 1;
                let store = &stores[i % concurrency % stores.len()];
                assert!(store
                    .put_state(ids[i % ids.len()].clone(), state)
                    .await
                    .unwrap());
            }
        },
    )
    .await;
    report_group_commit(&format!("{label} store only"), stats, before);
}

/// A fresh database: on `--pg-url`'s server, else on a throwaway server of this process.
async fn pg_database(url: Option<String>) -> (String, Option<iicp_testkit::postgres::PgServer>) {
    if let Some(url) = url {
        return (url, None);
    }
    let bin =
        iicp_testkit::postgres::find_binaries().expect("PostgreSQL binaries (initdb, postgres)");
    let server = iicp_testkit::postgres::PgServer::start(&bin).unwrap();
    let (client, conn) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE DATABASE dirbench")
        .await
        .unwrap();
    (server.url("dirbench"), Some(server))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut numbers = Vec::new();
    let mut stores: Vec<String> = Vec::new();
    let mut pg_url = std::env::var("DIRBENCH_PG_URL").ok();
    let mut instances = 1usize;
    let mut direct = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--store" => stores.push(args.next().expect("--store NAME")),
            "--pg-url" => pg_url = Some(args.next().expect("--pg-url URL")),
            "--instances" => {
                instances = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--instances N")
            }
            "--store-only" => direct = true,
            n => numbers.push(n.parse::<usize>().expect("a number or a flag")),
        }
    }
    if stores.is_empty() {
        stores = std::env::var("DIRBENCH_STORES")
            .unwrap_or_else(|_| "memory,sqlite".into())
            .split(',')
            .map(str::to_owned)
            .collect();
    }
    let nodes = numbers.first().copied().unwrap_or(10_000);
    let requests = numbers.get(1).copied().unwrap_or(20_000);
    let concurrency = numbers.get(2).copied().unwrap_or(32);
    let config = || {
        let mut c = Config::default();
        c.private_mesh = true;
        c.liveness_probe = false;
        c.register_rate_limit = u32::MAX;
        c
    };
    // the directories' own runtime (see the module documentation)
    let dir_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dir-rt")
        .enable_all()
        .build()
        .unwrap();
    // DIRBENCH_SHARED_RUNTIME=1: the directories share the load generator's runtime
    // (two worker threads in all, as before the split; no CPU split then)
    let dir_rt = if std::env::var_os("DIRBENCH_SHARED_RUNTIME").is_some() {
        tokio::runtime::Handle::current()
    } else {
        dir_runtime.handle().clone()
    };
    // builds on the directory runtime, so that the background tasks and store
    // connections it spawns run there
    let on_dir = |f: std::pin::Pin<Box<dyn std::future::Future<Output = Directory> + Send>>| {
        let h = dir_rt.clone();
        async move { h.spawn(f).await.unwrap() }
    };
    let builder = move || Directory::builder().config(config());
    let has = |s: &str| stores.iter().any(|x| x == s);
    if has("memory") {
        run(
            "memory",
            &dir_rt,
            vec![
                on_dir(Box::pin(async move {
                    builder().store(MemoryStore::new()).build().await.unwrap()
                }))
                .await,
            ],
            Stats::None,
            nodes,
            requests,
            concurrency,
        )
        .await;
    }
    if has("sqlite") {
        let path = std::env::temp_dir().join(format!("iicp-dirbench-{}.db", std::process::id()));
        let store = SqliteStore::open_async(&path).await.unwrap();
        let s2 = store.clone();
        run(
            "sqlite",
            &dir_rt,
            vec![
                on_dir(Box::pin(async move {
                    builder().store(s2).build().await.unwrap()
                }))
                .await,
            ],
            Stats::Sqlite(store.clone()),
            nodes,
            requests,
            concurrency,
        )
        .await;
        if direct {
            store_only(
                "sqlite",
                vec![Arc::new(store.clone())],
                &Stats::Sqlite(store),
                nodes,
                requests,
                concurrency,
            )
            .await;
        }
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
    if has("postgres") {
        let (url, _server) = pg_database(pg_url.clone()).await;
        let mut pg = Vec::new();
        let mut directories = Vec::new();
        for _ in 0..instances.max(1) {
            let url = url.clone();
            let store = dir_rt
                .spawn(async move { PgStore::connect(&url).await.unwrap() })
                .await
                .unwrap();
            let s2 = store.clone();
            directories.push(
                on_dir(Box::pin(async move {
                    builder().store(s2).build().await.unwrap()
                }))
                .await,
            );
            pg.push(store);
        }
        let label = if instances > 1 {
            format!("postgres, {instances} instances")
        } else {
            "postgres".to_owned()
        };
        run(
            &label,
            &dir_rt,
            directories,
            Stats::Pg(pg.clone()),
            nodes,
            requests,
            concurrency,
        )
        .await;
        if direct {
            let stores: Vec<Arc<dyn Store>> = pg
                .iter()
                .map(|s| Arc::new(s.clone()) as Arc<dyn Store>)
                .collect();
            store_only(&label, stores, &Stats::Pg(pg), nodes, requests, concurrency).await;
        }
    }
    dir_runtime.shutdown_background();
}
