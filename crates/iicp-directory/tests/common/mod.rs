//! Shared helpers of the directory integration tests: start a directory on
//! 127.0.0.1:0 over either store, a small JSON HTTP client, the peer-python lookup.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use iicp_directory::{Directory, DirectoryBuilder, ManualClock, PgStore, SqliteStore};
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
    let directory = builder.build().await.unwrap();
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
