//! Peers of the cross-SDK interop matrix (issue 11, `docs/interop.md`): where the
//! installed peer SDKs are, their processes (killed when dropped), and an in-process
//! mesh of our embedded directory and our node on 127.0.0.1.
//!
//! The peer SDKs (iicp-client 0.7.109 from PyPI and crates.io) are installed by
//! `scripts/peers`, which prints the variables read here:
//!
//! * [`PYTHON_VAR`] (`IICP_PEER_PYTHON`) — a python with the Python SDK, which runs
//!   our harness `conformance/peers/py_peer.py` ([`py_peer_script`]);
//! * [`RUST_SDK_VAR`] (`IICP_RUST_SDK_BIN`) — the Rust SDK's `iicp-node` binary.
//!
//! [`locate`] returns `None` when a variable is unset so that a local run skips, and
//! an error under CI (`CI` set) so that a missing peer fails the build. Every peer runs
//! with its outbound features off (`IICP_AUTO_UPDATE=0`, `IICP_AUTO_DETECT_NAT=0`,
//! `IICP_TUNNEL=0`) and `HOME` in a [`Scratch`] directory, so it never reaches outside
//! the machine or touches the user's `~/.iicp`.

use parking_lot::Mutex;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_client::{Client, Encryption, Transport};
use iicp_directory::{Directory, DirectoryError, MemoryStore};
use iicp_node::handler::{BoxFuture, Transport as Arrival};
use iicp_node::{
    EchoModel, HandlerError, Node, ServeHandle, ServeOptions, TaskHandler, TaskOutput,
};
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown::{self, Trigger};
use serde_json::Value;
use tokio::task::JoinHandle;

/// The chat intent every matrix cell uses.
pub const CHAT: &str = iicp_client::CHAT_INTENT;
/// Names a python with the Python SDK (iicp-client 0.7.109) installed.
pub const PYTHON_VAR: &str = "IICP_PEER_PYTHON";
/// Names the Rust SDK's `iicp-node` binary (crates.io iicp-client 0.7.109).
pub const RUST_SDK_VAR: &str = "IICP_RUST_SDK_BIN";
/// The model name of our echo node ([`Mesh::start_echo_node`]).
pub const ECHO_MODEL: &str = "echo";
/// The model name served by the harness's OpenAI stub ([`stub_openai`]).
pub const STUB_MODEL: &str = "stub-model";

const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL: usize = 6000;

/// What can go wrong while running a peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// A peer variable is unset under CI.
    #[error("{var} is not set: run the tests through scripts/test (scripts/peers env prints it)")]
    Missing {
        /// The variable.
        var: &'static str,
    },
    /// A peer variable names a file that does not exist.
    #[error("{var} names {path}, which does not exist: rerun scripts/peers install")]
    NotFound {
        /// The variable.
        var: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// A local operation failed (spawn, temp files, sockets).
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A wait ran out.
    #[error("timed out after {within:?} waiting for {what}\n{logs}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The budget.
        within: Duration,
        /// The peer's output, if a peer was involved.
        logs: String,
    },
    /// A peer exited before it was expected to.
    #[error("{name} exited early ({status})\n{logs}")]
    Exited {
        /// The peer.
        name: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its output.
        logs: String,
    },
    /// Our directory failed to start.
    #[error("the embedded directory failed")]
    Directory(#[from] DirectoryError),
    /// Our node failed to start.
    #[error("our node failed")]
    Node(#[from] iicp_node::Error),
    /// Our node's configuration was refused.
    #[error("our node's configuration was refused")]
    NodeConfig(#[from] iicp_node::ConfigError),
    /// An HTTP call to the directory failed.
    #[error("HTTP call failed")]
    Http(#[from] iicp_transport::http::client::HttpClientError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let what = what.into();
    move |source| PeerError::Io { what, source }
}

/// The path in `var`: `Ok(None)` when unset outside CI (the caller skips), an error when
/// unset under CI or when the path does not exist.
///
/// # Errors
/// [`PeerError::Missing`] under CI, [`PeerError::NotFound`] for a dangling path.
pub fn locate(var: &'static str) -> Result<Option<PathBuf>, PeerError> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => {
            let path = PathBuf::from(p);
            if path.exists() {
                Ok(Some(path))
            } else {
                Err(PeerError::NotFound { var, path })
            }
        }
        None if std::env::var_os("CI").is_some() => Err(PeerError::Missing { var }),
        None => Ok(None),
    }
}

/// `conformance/peers/py_peer.py`, our harness around the Python SDK.
pub fn py_peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/py_peer.py")
}

/// A fresh directory under the system temp dir, removed on drop; peers use it as
/// `HOME` and for their logs.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `iicp-interop-<tag>-<pid>-<n>`.
    ///
    /// # Errors
    /// [`PeerError::Io`] when it cannot be created.
    pub fn new(tag: &str) -> Result<Self, PeerError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "iicp-interop-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A command for a peer: `HOME` in `scratch`, outbound features off.
pub fn peer_command(program: &Path, scratch: &Scratch) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("HOME", scratch.path())
        .env("IICP_AUTO_UPDATE", "0")
        .env("IICP_AUTO_DETECT_NAT", "0")
        .env("IICP_TUNNEL", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// A `py_peer.py` command run by `python`.
pub fn py_peer(python: &Path, scratch: &Scratch, args: &[&str]) -> Command {
    let mut cmd = peer_command(python, scratch);
    cmd.arg(py_peer_script()).args(args);
    cmd
}

/// A running peer process with its output in files; killed (and reaped) on drop.
#[derive(Debug)]
pub struct PeerProcess {
    name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

/// A peer process that exited.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Finished {
    /// The stdout lines that are JSON values (py_peer.py prints one object a line).
    pub fn json_lines(&self) -> Vec<Value> {
        json_lines(&self.stdout)
    }

    /// The first JSON line whose `event` is `event`.
    pub fn event(&self, event: &str) -> Option<Value> {
        self.json_lines().into_iter().find(|v| v["event"] == event)
    }
}

/// The lines of `text` that parse as JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect()
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(LOG_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl PeerProcess {
    /// Spawns `cmd` with stdout and stderr in `scratch/<name>.out|.err`.
    ///
    /// # Errors
    /// [`PeerError::Io`] when the log files or the process cannot be created.
    pub fn spawn(name: &str, mut cmd: Command, scratch: &Scratch) -> Result<Self, PeerError> {
        let out = scratch.path().join(format!("{name}.out"));
        let err = scratch.path().join(format!("{name}.err"));
        let out_file = File::create(&out).map_err(io(format!("creating {}", out.display())))?;
        let err_file = File::create(&err).map_err(io(format!("creating {}", err.display())))?;
        cmd.stdout(Stdio::from(out_file))
            .stderr(Stdio::from(err_file));
        let child = cmd
            .spawn()
            .map_err(io(format!("spawning {name} ({:?})", cmd.get_program())))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            out,
            err,
        })
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read(&self.out)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.err)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The tails of its stdout and stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            tail(&self.stdout()),
            tail(&self.stderr()),
            name = self.name
        )
    }

    /// Its exit status if it has exited.
    ///
    /// # Errors
    /// [`PeerError::Io`] when the status cannot be read.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, PeerError> {
        self.child
            .try_wait()
            .map_err(io(format!("waiting for {}", self.name)))
    }

    /// Waits for a JSON line on stdout that satisfies `pred`.
    ///
    /// # Errors
    /// [`PeerError::Exited`] when the process ends first, [`PeerError::Timeout`] after
    /// `within`.
    pub async fn wait_for_json(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, PeerError> {
        let start = Instant::now();
        loop {
            if let Some(v) = json_lines(&self.stdout()).into_iter().find(|v| pred(v)) {
                return Ok(v);
            }
            if let Some(status) = self.try_status()? {
                return Err(PeerError::Exited {
                    name: self.name.clone(),
                    status,
                    logs: self.logs(),
                });
            }
            if start.elapsed() > within {
                return Err(PeerError::Timeout {
                    what: what.to_owned(),
                    within,
                    logs: self.logs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the process to exit (it is killed after `within`).
    ///
    /// # Errors
    /// [`PeerError::Timeout`] when it is still running after `within`.
    pub async fn finish(&mut self, within: Duration) -> Result<Finished, PeerError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Finished {
                    status,
                    stdout: self.stdout(),
                    stderr: self.stderr(),
                });
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(PeerError::Timeout {
                    what: format!("{} to exit", self.name),
                    within,
                    logs: self.logs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails with the peer's logs when it has exited.
    ///
    /// # Errors
    /// [`PeerError::Exited`] when it is no longer running.
    pub fn check_running(&mut self) -> Result<(), PeerError> {
        match self.try_status()? {
            Some(status) => Err(PeerError::Exited {
                name: self.name.clone(),
                status,
                logs: self.logs(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion (killed after `within`).
///
/// # Errors
/// [`PeerError::Io`] when it cannot start, [`PeerError::Timeout`] when it runs too long.
pub async fn run(
    name: &str,
    cmd: Command,
    scratch: &Scratch,
    within: Duration,
) -> Result<Finished, PeerError> {
    let mut p = PeerProcess::spawn(name, cmd, scratch)?;
    p.finish(within).await
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// # Errors
/// [`PeerError::Io`] when no socket can be bound.
pub fn free_port() -> Result<u16, PeerError> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io("binding an ephemeral port"))?;
    Ok(l.local_addr().map_err(io("reading the bound port"))?.port())
}

/// Waits until 127.0.0.1:`port` accepts connections.
///
/// # Errors
/// [`PeerError::Timeout`] after `within`.
pub async fn wait_for_port(port: u16, within: Duration) -> Result<(), PeerError> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(PeerError::Timeout {
                what: format!("127.0.0.1:{port} to accept connections"),
                within,
                logs: String::new(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Starts `py_peer.py stub-openai 0` (an OpenAI-compatible stub answering
/// `STUB: <last user message>`) and returns it with its port.
///
/// # Errors
/// When it does not start or announce its port within 30 s.
pub async fn stub_openai(
    python: &Path,
    scratch: &Scratch,
) -> Result<(PeerProcess, u16), PeerError> {
    let mut stub = PeerProcess::spawn(
        "stub-openai",
        py_peer(python, scratch, &["stub-openai", "0"]),
        scratch,
    )?;
    let line = stub
        .wait_for_json("the OpenAI stub to listen", Duration::from_secs(30), |v| {
            v["event"] == "listening"
        })
        .await?;
    let port = line["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| PeerError::Timeout {
            what: "a port in the stub's announcement".into(),
            within: Duration::ZERO,
            logs: line.to_string(),
        })?;
    Ok((stub, port))
}

/// Whether a peer SDK node advertises an IICP-CX key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCx {
    /// As the SDKs do by default.
    On,
    /// Keyless, through each SDK's own fallback when its key cannot be loaded: the
    /// Python node gets `IICP_PEER_NO_CX=1` (the harness makes key loading fail), the
    /// Rust node an `IICP_CX_KEY_DIR` below a regular file. For plaintext native calls.
    Off,
}

/// Starts the Python SDK node (`py_peer.py node serve`, loopback registration allowed)
/// on a free port in front of the model server at `backend_url` (model
/// [`STUB_MODEL`]), registering with `dir_url`.
/// Returns it and its port; it registers in the background.
///
/// # Errors
/// When no port is free or it cannot be spawned.
pub fn python_node(
    python: &Path,
    scratch: &Scratch,
    dir_url: &str,
    backend_url: &str,
    cx: PeerCx,
) -> Result<(PeerProcess, u16), PeerError> {
    let port = free_port()?;
    let port_s = port.to_string();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut cmd = py_peer(
        python,
        scratch,
        &[
            "node",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
            "--public-endpoint",
            &endpoint,
            "--directory-url",
            dir_url,
            "--backend-url",
            backend_url,
            "--model",
            STUB_MODEL,
            "--region",
            "local",
            "--no-auto-detect-nat",
            "--no-tunnel",
        ],
    );
    if cx == PeerCx::Off {
        cmd.env("IICP_PEER_NO_CX", "1");
    }
    let node = PeerProcess::spawn("python-node", cmd, scratch)?;
    Ok((node, port))
}

/// Our node with the echo model (which streams) on 127.0.0.1, without a directory: the
/// target of the peers' lifecycle clients (ADR 0013).
///
/// # Errors
/// When it cannot be built or bound.
pub async fn streaming_echo_node() -> Result<ServeHandle, PeerError> {
    let node = Node::builder()
        .endpoint("http://127.0.0.1:9484")
        .intent(CHAT)
        .model(ECHO_MODEL)
        .build()?;
    Ok(node
        .bind_and_serve(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            EchoModel::default(),
            ServeOptions::default().with_register(false),
        )
        .await?)
}

/// The public endpoint the Rust SDK node registers: 127.0.0.1 written as one decimal
/// number, because its CLI skips registration for endpoints it recognises as loopback
/// (INTEROP.md).
pub fn rust_sdk_endpoint(port: u16) -> String {
    format!("http://{}:{port}", u32::from(Ipv4Addr::LOCALHOST))
}

/// Starts the Rust SDK node (`iicp-node serve`) on 127.0.0.1 and a free port in front
/// of the model server at `backend_url` (model [`STUB_MODEL`]), registering
/// [`rust_sdk_endpoint`] with `dir_url`.
///
/// # Errors
/// When no port is free or it cannot be spawned.
pub fn rust_sdk_node(
    bin: &Path,
    scratch: &Scratch,
    dir_url: &str,
    backend_url: &str,
    cx: PeerCx,
) -> Result<(PeerProcess, u16), PeerError> {
    let port = free_port()?;
    let mut cmd = peer_command(bin, scratch);
    if cx == PeerCx::Off {
        let file = scratch.path().join("not-a-directory");
        std::fs::write(&file, b"").map_err(io(format!("creating {}", file.display())))?;
        cmd.env("IICP_CX_KEY_DIR", file.join("cx"));
    }
    cmd.args(["serve", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--public-endpoint", &rust_sdk_endpoint(port)])
        .args(["--directory-url", dir_url])
        .args(["--backend-url", backend_url])
        .args([
            "--model",
            STUB_MODEL,
            "--region",
            "local",
            "--no-auto-detect-nat",
        ])
        .arg("--no-tunnel")
        .arg("--log-dir")
        .arg(scratch.path().join("rust-sdk-logs"));
    let node = PeerProcess::spawn("rust-sdk-node", cmd, scratch)?;
    Ok((node, port))
}

/// An OpenAI-compatible model stub in this process (`POST /v1/chat/completions`,
/// `GET /v1/models`), answering `STUB: <last user message>` as model [`STUB_MODEL`],
/// like `py_peer.py stub-openai`; stopped on drop.
#[derive(Debug)]
pub struct OpenAiStub {
    addr: SocketAddr,
    trigger: Trigger,
}

impl OpenAiStub {
    /// Starts it on 127.0.0.1 and an ephemeral port.
    ///
    /// # Errors
    /// [`PeerError::Io`] when it cannot bind.
    pub async fn start() -> Result<Self, PeerError> {
        use iicp_transport::http::server::{json, read_json, HttpServer, Router};
        let server = HttpServer::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
            .await
            .map_err(io("binding the OpenAI stub"))?;
        let addr = server.local_addr().map_err(io("OpenAI stub address"))?;
        let models =
            serde_json::json!({"object": "list", "data": [{"id": STUB_MODEL, "object": "model"}]});
        let router = Router::new()
            .route(http::Method::GET, "/v1/models", move |_req, _p| {
                let models = models.clone();
                async move { json(http::StatusCode::OK, &models) }
            })
            .route(
                http::Method::POST,
                "/v1/chat/completions",
                |mut req, _p| async move {
                    let body: Value = read_json(&mut req, 1 << 20).await?;
                    Ok::<_, iicp_transport::http::server::HttpError>(json(
                        http::StatusCode::OK,
                        &stub_completion(&body),
                    ))
                },
            );
        let (trigger, signal) = shutdown::channel();
        tokio::spawn(server.serve(router, signal));
        Ok(Self { addr, trigger })
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`, the backend URL for a node.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for OpenAiStub {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

/// The stub's answer to a chat-completions request.
fn stub_completion(req: &Value) -> Value {
    let last = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    serde_json::json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": req["model"].as_str().unwrap_or(STUB_MODEL),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("STUB: {last}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    })
}

/// How one task reached our node (recorded by [`RecordingEcho`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrived {
    /// The task id.
    pub task_id: String,
    /// The transport it came on.
    pub transport: Arrival,
    /// Whether its payload was IICP-CX encrypted.
    pub encrypted: bool,
}

/// The [`EchoModel`] (model [`ECHO_MODEL`]) that also records how each task arrived, so
/// a test can tell which transport and whether IICP-CX a peer client really used.
#[derive(Clone, Debug, Default)]
pub struct RecordingEcho {
    seen: Arc<Mutex<Vec<Arrived>>>,
}

impl RecordingEcho {
    /// The tasks handled so far, oldest first.
    pub fn seen(&self) -> Vec<Arrived> {
        self.seen.lock().clone()
    }
}

impl TaskHandler for RecordingEcho {
    fn handle(
        &self,
        task: iicp_node::Task,
    ) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        self.seen.lock().push(Arrived {
            task_id: task.task_id.as_str().to_owned(),
            transport: task.transport,
            encrypted: task.encrypted,
        });
        EchoModel::new(ECHO_MODEL).handle(task)
    }
}

/// Our embedded directory (private mesh, in-memory store) on 127.0.0.1, stopped on
/// drop.
#[derive(Debug)]
pub struct Mesh {
    directory: Directory,
    addr: SocketAddr,
    trigger: Trigger,
    server: Option<JoinHandle<Result<(), DirectoryError>>>,
}

impl Mesh {
    /// Starts the directory on an ephemeral port.
    ///
    /// # Errors
    /// When it cannot be built or bound.
    pub async fn start() -> Result<Self, PeerError> {
        let directory = Directory::builder()
            .private_mesh(true)
            .store(MemoryStore::new())
            .build()
            .await?;
        let listener = Listener::bind(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            ListenerConfig::default(),
        )
        .await
        .map_err(io("binding the directory"))?;
        let addr = listener.local_addr().map_err(io("directory address"))?;
        let (trigger, signal) = shutdown::channel();
        let d = directory.clone();
        let server = tokio::spawn(async move { d.serve(listener, signal).await });
        Ok(Self {
            directory,
            addr,
            trigger,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`, the host root.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/api`, the directory URL the SDKs are given.
    pub fn url(&self) -> String {
        format!("{}/api", self.base())
    }

    /// The directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Waits until `n` nodes are registered.
    ///
    /// # Errors
    /// [`PeerError::Timeout`] after `within`, with `peer`'s logs when given.
    pub async fn wait_for_nodes(
        &self,
        n: usize,
        within: Duration,
        mut peer: Option<&mut PeerProcess>,
    ) -> Result<(), PeerError> {
        let start = Instant::now();
        while self.directory.node_count() < n {
            if let Some(p) = peer.as_deref_mut() {
                p.check_running()?;
            }
            if start.elapsed() > within {
                return Err(PeerError::Timeout {
                    what: format!("{n} node(s) to register"),
                    within,
                    logs: peer.map(|p| p.logs()).unwrap_or_default(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// `GET {base}/api{path}` as JSON (`null` when the body is not JSON).
    ///
    /// # Errors
    /// When the call fails.
    pub async fn get_json(&self, path: &str) -> Result<Value, PeerError> {
        let http = HttpClient::new(HttpClientConfig::default())?;
        let reply = http.get(format!("{}{path}", self.url())).send().await?;
        Ok(serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
    }

    /// Dispatch tickets the directory issued so far (`/v1/stats`).
    ///
    /// # Errors
    /// When the call fails.
    pub async fn dispatch_tickets(&self) -> Result<u64, PeerError> {
        let stats = self.get_json("/v1/stats").await?;
        Ok(stats["directory_health"]["dispatch_tickets"]
            .as_u64()
            .unwrap_or(0))
    }

    /// `GET /v1/discover?intent=<chat>&qos=best-effort` as raw JSON.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn discover_raw(&self) -> Result<Value, PeerError> {
        self.get_json(&format!("/v1/discover?intent={CHAT}&qos=best-effort"))
            .await
    }

    /// Our client for this mesh: private endpoints allowed, legacy-free defaults
    /// otherwise (ticketed discovery, IICP-CX per `encryption`).
    ///
    /// # Errors
    /// When the configuration is refused.
    pub fn client(
        &self,
        transport: Transport,
        encryption: Encryption,
    ) -> Result<Client, iicp_client::Error> {
        Client::builder()
            .directory_url(self.url())
            .allow_private_endpoints(true)
            .transport(transport)
            .encryption(encryption)
            .discovery_cache_ttl(Duration::ZERO)
            .build()
    }

    /// Starts our node with a [`RecordingEcho`] handler (model [`ECHO_MODEL`]) on
    /// 127.0.0.1 and a free port, native transport on the same port, IICP-CX key
    /// advertised, and waits until it registered. Returns the handle and the recorder.
    ///
    /// # Errors
    /// When it cannot bind or does not register within 15 s.
    pub async fn start_echo_node(&self) -> Result<(ServeHandle, RecordingEcho), PeerError> {
        self.start_echo_node_with(|b| b).await
    }

    /// [`Mesh::start_echo_node`] with the builder adjusted by `configure` (auth mode,
    /// intent, …) before it is built.
    ///
    /// # Errors
    /// When it cannot bind or does not register within 15 s.
    pub async fn start_echo_node_with(
        &self,
        configure: impl FnOnce(iicp_node::NodeBuilder) -> iicp_node::NodeBuilder,
    ) -> Result<(ServeHandle, RecordingEcho), PeerError> {
        let recorder = RecordingEcho::default();
        let port = free_port()?;
        let node = configure(
            Node::builder()
                .endpoint(format!("http://127.0.0.1:{port}"))
                .intent(CHAT)
                .model(ECHO_MODEL)
                .region("local")
                .directory_url(self.url()),
        )
        .build()?;
        let handle = node
            .bind_and_serve(
                std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                recorder.clone(),
                ServeOptions::default(),
            )
            .await?;
        let start = Instant::now();
        let within = Duration::from_secs(15);
        while handle.node().node_token().is_none() {
            if start.elapsed() > within {
                return Err(PeerError::Timeout {
                    what: "our node to register".into(),
                    within,
                    logs: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((handle, recorder))
    }

    /// Stops the directory and waits for it (at most 10 s).
    pub async fn stop(mut self) {
        self.trigger.fire();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

/// A chat task for the interop tests. QoS `best-effort`: the nodes of a fresh mesh have no
/// task history, and some directories gate `interactive` on it.
pub fn chat_task(prompt: &str) -> iicp_client::Task {
    iicp_client::Task::new(
        CHAT,
        serde_json::json!({"messages": [{"role": "user", "content": prompt}]}),
    )
    .with_qos(iicp_proto::task::Qos::BestEffort)
}

/// The text of the first choice of a chat task's result.
pub fn reply(r: &iicp_client::TaskResult) -> &Value {
    &r.result()["choices"][0]["message"]["content"]
}
