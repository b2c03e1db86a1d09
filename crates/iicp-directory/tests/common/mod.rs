//! Shared helpers of the directory integration tests: start a directory on
//! 127.0.0.1:0 over either store, a small JSON HTTP client, the peer-python lookup.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use iicp_directory::store::{NodeCredentials, NodeRecord, NodeState};
use iicp_directory::{Directory, DirectoryBuilder, ManualClock, PgStore, SqliteStore, Store};
use iicp_proto::secret::Secret;
use iicp_testkit::postgres::PgServer;
use iicp_transport::http::client::{HttpClient, HttpClientConfig, HttpReply};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

pub const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

/// Which store a test directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    /// A fresh database on the test binary's PostgreSQL server.
    Postgres,
}

/// Every store the tests run against: memory, SQLite, and PostgreSQL when its binaries
/// are there (skipped with a note outside CI, a failure under CI otherwise).
pub fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Memory, Backend::Sqlite];
    if PgServer::shared().is_some() {
        b.push(Backend::Postgres);
    }
    b
}

/// A fresh, empty database on the test binary's PostgreSQL server, as a URL; `None`
/// when PostgreSQL is missing outside CI.
pub async fn pg_database(tag: &str) -> Option<String> {
    let server = PgServer::shared()?;
    let name = PgServer::database_name(tag);
    let (client, conn) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    Some(server.url(&name))
}

/// A fresh temporary directory path (removed by [`TempDir`]'s drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "iicp-dir-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("directory.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running directory.
pub struct TestDir {
    pub directory: Directory,
    pub base: String,
    pub port: u16,
    trigger: Trigger,
    task: Option<JoinHandle<()>>,
    pub tmp: Option<TempDir>,
}

impl TestDir {
    pub async fn stop(mut self) {
        self.trigger.fire();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl TestDir {
    /// Takes the temp dir so that it outlives this directory (restart tests).
    pub fn take_for_restart(&mut self) -> Option<TempDir> {
        self.tmp.take()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

/// Starts `builder` (store chosen by `backend`, a SQLite file in `tmp` or a new temp
/// dir) on 127.0.0.1:0.
pub async fn start_with(
    backend: Backend,
    builder: DirectoryBuilder,
    tmp: Option<TempDir>,
) -> TestDir {
    let (builder, tmp) = match backend {
        Backend::Memory => (builder, tmp),
        Backend::Sqlite => {
            let tmp = tmp.unwrap_or_else(|| TempDir::new("sqlite"));
            let store = SqliteStore::open_async(tmp.db()).await.unwrap();
            (builder.store(store), Some(tmp))
        }
        Backend::Postgres => {
            let url = pg_database("dir").await.expect("PostgreSQL available");
            (builder.store(PgStore::connect(&url).await.unwrap()), tmp)
        }
    };
    serve(builder.build().await.unwrap(), tmp).await
}

/// Serves a built directory on 127.0.0.1:0.
pub async fn serve(directory: Directory, tmp: Option<TempDir>) -> TestDir {
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenerConfig::default())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (trigger, signal) = shutdown::channel();
    let d = directory.clone();
    let task = tokio::spawn(async move {
        d.serve(listener, signal).await.unwrap();
    });
    TestDir {
        directory,
        base: format!("http://127.0.0.1:{port}"),
        port,
        trigger,
        task: Some(task),
        tmp,
    }
}

/// A private-mesh directory without liveness probing, on a manual clock.
pub async fn start_mesh(backend: Backend, clock: &ManualClock) -> TestDir {
    let b = Directory::builder()
        .private_mesh(true)
        .liveness_probe(false)
        .clock(clock.clone());
    start_with(backend, b, None).await
}

pub fn client() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).unwrap()
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub raw: HttpReply,
}

impl Reply {
    pub fn code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }
}

pub async fn call(method: Method, url: &str, body: Option<&Value>, token: Option<&str>) -> Reply {
    let c = client();
    let mut rb = c.request(method, url);
    if let Some(b) = body {
        rb = rb.json(b);
    }
    if let Some(t) = token {
        rb = rb.bearer(t.to_owned());
    }
    let raw = rb.send().await.unwrap();
    let body = serde_json::from_slice(&raw.body).unwrap_or(Value::Null);
    Reply {
        status: raw.status.as_u16(),
        body,
        raw,
    }
}

pub async fn get(url: &str) -> Reply {
    call(Method::GET, url, None, None).await
}

pub async fn post(url: &str, body: &Value, token: Option<&str>) -> Reply {
    call(Method::POST, url, Some(body), token).await
}

/// A valid REGISTER body.
pub fn register_body(endpoint: &str, region: &str, models: &[&str]) -> Value {
    json!({
        "endpoint": endpoint,
        "region": region,
        "capabilities": [{"intent": CHAT, "models": models, "max_tokens": 4096, "input_modalities": ["text"]}],
        "limits": {"max_concurrent": 4, "tokens_per_min": 10000},
        "transport_endpoint": endpoint.replace("https://", "iicpsec://").replace("http://", "iicp://"),
        "cx_public_key": {"algorithm": "X25519", "encoding": "base64url", "key": "eEW8eUzTqyM0-9ptRPrz06oUE3gCtgrdnvu8LpN3Yi0", "key_id": "cx-ab1453003c73ed6a", "features": ["response_encryption_v1"]},
        "sdk_language": "rust",
        "sdk_version": "0.1.0",
        "backend": "custom",
    })
}

/// Registers and returns the ACK.
pub async fn register(base: &str, body: &Value) -> Value {
    let r = post(&format!("{base}/api/v1/register"), body, None).await;
    assert_eq!(r.status, 201, "register failed: {}", r.body);
    r.body
}

/// The peer python (`IICP_PEER_PYTHON`): `None` (skip) outside CI, panic under CI.
pub fn peer_python() -> Option<PathBuf> {
    match std::env::var_os("IICP_PEER_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("IICP_PEER_PYTHON is not set: run the tests through scripts/test (scripts/peers env)")
        }
        None => {
            eprintln!("skipping: IICP_PEER_PYTHON not set (scripts/peers env prints it)");
            None
        }
    }
}

/// `conformance/peers/py_peer.py` of this repository.
pub fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/peers/py_peer.py")
}

/// A stored node record for store-level tests: `node-{i:04}`.
pub fn record(i: usize) -> NodeRecord {
    NodeRecord {
        node_id: format!("node-{i:04}"),
        registration: json!({"endpoint": format!("http://127.0.0.1:{}", 20000 + i)}),
        endpoint: format!("http://127.0.0.1:{}", 20000 + i),
        transport_endpoint: None,
        region: "eu-central".into(),
        cx_public_key: None,
        credentials: NodeCredentials {
            token_hash: format!("{i:064x}"),
            proxy_token_hash: format!("p{i:063x}"),
            hmac_key: Secret::new(format!("key-{i}")),
        },
        registered_at_ms: 1,
        updated_at_ms: 1,
        state: NodeState::new(1),
        rev: 0,
    }
}

/// The `seq`-th state written in store-level tests (`active_jobs` = `seq`).
pub fn state(seq: u64) -> NodeState {
    let mut s = NodeState::new(1_000 + seq);
    s.active_jobs = u32::try_from(seq).unwrap();
    s
}

/// The body of a kill test's child process: registers 16 nodes in `store` and writes
/// their states concurrently (each node in order) for ever, printing `ack <node> <seq>`
/// after each acknowledged write.
pub async fn kill_child_writes(store: Arc<dyn Store>) {
    for i in 0..16 {
        store.put_node(record(i)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let id = format!("node-{i:04}");
            for seq in 1.. {
                assert!(store.put_state(id.clone(), state(seq)).await.unwrap());
                let mut out = std::io::stdout().lock();
                writeln!(out, "ack {id} {seq}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs test `child_test` of this binary as a child process with `env=value`, reads
/// 2 000 acknowledgements of [`kill_child_writes`], then SIGKILLs it while writes are in
/// flight (no shutdown, no unwinding). The highest acknowledged sequence per node.
pub fn kill_writer_child(child_test: &str, env: &str, value: &OsStr) -> HashMap<String, u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child_test, "--nocapture"])
        .env(env, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = HashMap::<String, u64>::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut count = 0;
    while count < 2_000 {
        let line = lines.next().expect("child ended early").unwrap();
        let mut parts = line.split(' ');
        if parts.next() != Some("ack") {
            continue;
        }
        let id = parts.next().unwrap().to_owned();
        let seq: u64 = parts.next().unwrap().parse().unwrap();
        let e = acked.entry(id).or_default();
        *e = (*e).max(seq);
        count += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    acked
}

/// Every acknowledged write of [`kill_writer_child`] is in `stored`: the last
/// acknowledged state of each node, or a later one (acknowledged after the parent
/// stopped reading, or committed but not yet answered).
pub fn assert_every_ack_stored(stored: &[NodeRecord], acked: HashMap<String, u64>) {
    assert_eq!(stored.len(), 16);
    for (id, seq) in acked {
        let n = stored.iter().find(|n| n.node_id == id).unwrap();
        assert!(
            u64::from(n.state.active_jobs) >= seq,
            "{id}: acknowledged {seq}, stored {}",
            n.state.active_jobs
        );
        assert_eq!(n.state.last_seen_ms, 1_000 + u64::from(n.state.active_jobs));
    }
}

/// Polls `check` every 20 ms until it holds or `within` has passed; how long it took.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
