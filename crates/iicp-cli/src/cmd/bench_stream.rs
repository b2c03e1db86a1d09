//! `bench-stream`: what streaming through the mesh costs (issue 19's benchmark).
//!
//! One private mesh on this machine: the embedded directory, one node whose model
//! server streams (the built-in paced stub — `--tokens` content chunks `--token-delay-ms`
//! apart — or `--backend-url`, e.g. llama.cpp's server), and this process's clients.
//! The node runs on a runtime of its own, on one thread, so that its CPU time can be
//! read apart from the clients' and the model server's (`/proc/self/task/TID/schedstat`,
//! nanoseconds).
//!
//! Reported:
//! * time to the first token: calling the model server directly (a streamed
//!   `POST /chat/completions`, until the first content chunk) and through the mesh
//!   (`Client::chat_stream`, until the first non-empty delta; discovery cached, IICP-CX
//!   on), over HTTP and native — p50/p90/p99, and the mesh's p50 minus the direct p50;
//! * the node's CPU per streamed chunk: the node thread's CPU time over tasks of
//!   `--tokens` chunks minus that over one-chunk tasks, divided by the extra chunks
//!   (the stub's pacing is off for this part).

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use iicp_backends::{BackendConfig, BackendKind};
use iicp_client::{ChatEvent, ChatMessage, ChatOptions, ChatRequest, Client, Transport};
use iicp_directory::store::MemoryStore;
use iicp_directory::Directory;
use iicp_node::backend::BackendHandler;
use iicp_node::{Node, ServeOptions};
use iicp_testkit::load::Histogram;
use iicp_testkit::stub::StubModel;
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;
use serde_json::json;

use super::bench::ms;

/// Arguments of `bench-stream`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Measured chats per path (after 20 unmeasured).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rounds: u32,
    /// Content chunks of each streamed answer (the stub's; a cap for a model server).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..=4096))]
    tokens: u32,
    /// The stub's delay between tokens, in ms.
    #[arg(long, default_value_t = 5)]
    token_delay_ms: u64,
    /// An OpenAI-compatible model server that streams (e.g. `http://127.0.0.1:8080/v1`)
    /// instead of the built-in paced stub.
    #[arg(long, value_name = "URL")]
    backend_url: Option<String>,
    /// The model to ask the server for.
    #[arg(long, default_value = "stub")]
    model: String,
    /// Tasks per side of the CPU-per-chunk measurement (0: skip it).
    #[arg(long, default_value_t = 300)]
    cpu_tasks: u32,
    /// Without IICP-CX (a keyless node, plaintext tasks): what the encryption costs.
    #[arg(long)]
    plaintext: bool,
    /// Also count the node thread's system calls per chunk, under `strace -c` (a
    /// separate pass: strace slows the node; needs `strace` and ptrace rights).
    #[arg(long)]
    syscalls: bool,
    /// Also measure the machine's floor: what a thread that only copies the model
    /// server's stream to a socket spends per chunk (with the built-in stub).
    #[arg(long)]
    floor: bool,
    /// Only this transport in the CPU-per-chunk measurement (`http` or `native`; both
    /// by default), so that a profile of the node thread covers one path.
    #[arg(long, value_parser = ["http", "native"])]
    transport: Option<String>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `strace -c` attached to one thread for the length of a pass.
struct Strace {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Strace {
    fn attach(tid: u32, tag: &str) -> anyhow::Result<Self> {
        let out = std::env::temp_dir().join(format!(
            "iicp-bench-stream-{}-{tag}.strace",
            std::process::id()
        ));
        let child = std::process::Command::new("strace")
            .args(["-c", "-p", &tid.to_string(), "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting strace (is it installed?)")?;
        // attaching takes a moment
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { child, out })
    }

    /// Detaches (SIGINT) and returns the system calls counted.
    fn calls(mut self) -> anyhow::Result<u64> {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).context("reading strace's summary")?;
        let _ = std::fs::remove_file(&self.out);
        // "100.00    0.000123           1       456         7 total"
        text.lines()
            .find(|l| l.trim_end().ends_with(" total"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .context("no total in strace's summary")
    }
}

/// The node's thread: its id (for its CPU time) and how to stop it.
struct NodeThread {
    tid: u32,
    node_id: String,
    trigger: shutdown::Trigger,
    join: std::thread::JoinHandle<()>,
}

/// CPU time the thread `tid` of this process has used, in ns.
fn thread_cpu_ns(tid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .context("reading the node thread's schedstat")?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("unexpected schedstat")
}

/// User and system CPU time the thread `tid` of this process has used, in ns (from
/// `/proc/self/task/TID/stat`: clock ticks, so a resolution of 10 ms at the usual 100 Hz;
/// enough over a pass of a few hundred ms, and it tells what our code could change — user
/// time — from the kernel's share).
fn thread_user_sys_ns(tid: u32) -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .context("reading the node thread's stat")?;
    // the fields after the command name (which is in parentheses and may hold spaces)
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected stat")?;
    let mut fields = rest.split_whitespace().skip(11);
    let mut tick = || -> anyhow::Result<u64> {
        let t: u64 = fields
            .next()
            .and_then(|v| v.parse().ok())
            .context("unexpected stat")?;
        // USER_HZ is 100 on Linux for every architecture this runs on
        Ok(t * 10_000_000)
    };
    Ok((tick()?, tick()?))
}

/// Context switches of the thread `tid` of this process so far: (all, involuntary — the
/// thread was preempted rather than waiting for work).
fn thread_switches(tid: u32) -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .context("reading the node thread's status")?;
    let count = |l: &str| {
        l.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (mut all, mut involuntary) = (0, 0);
    for l in s.lines().filter(|l| l.contains("ctxt_switches:")) {
        all += count(l);
        if l.starts_with("nonvoluntary") {
            involuntary += count(l);
        }
    }
    Ok((all, involuntary))
}

/// One thread's readings at a point in time, for [`PerChunk`].
#[derive(Clone, Copy)]
struct Reading {
    cpu_ns: u64,
    user_sys_ns: (u64, u64),
    switches: (u64, u64),
}

impl Reading {
    fn take(tid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            cpu_ns: thread_cpu_ns(tid)?,
            user_sys_ns: thread_user_sys_ns(tid)?,
            switches: thread_switches(tid)?,
        })
    }
}

/// What one thread spent per task over 1-chunk and over many-chunk tasks, and per extra
/// chunk: CPU (µs; also split into user and system time, at tick resolution), and
/// context switches (all, and of those the preemptions).
struct PerChunk {
    one: f64,
    many: f64,
    per_chunk: f64,
    user_per_chunk: f64,
    sys_per_chunk: f64,
    switches_per_chunk: f64,
    involuntary_per_chunk: f64,
}

impl PerChunk {
    /// From readings before and after `tasks` tasks of one chunk (`one`) and of
    /// `tokens` chunks (`many`).
    fn new(one: [Reading; 2], many: [Reading; 2], tasks: u32, tokens: u32) -> Self {
        let per_task = |v: u64| v as f64 / f64::from(tasks);
        let d = |r: [Reading; 2]| {
            [
                per_task(r[1].cpu_ns - r[0].cpu_ns) / 1000.0,
                per_task(r[1].user_sys_ns.0 - r[0].user_sys_ns.0) / 1000.0,
                per_task(r[1].user_sys_ns.1 - r[0].user_sys_ns.1) / 1000.0,
                per_task(r[1].switches.0 - r[0].switches.0),
                per_task(r[1].switches.1 - r[0].switches.1),
            ]
        };
        let (a, b) = (d(one), d(many));
        let extra = f64::from(tokens - 1);
        let per = |i: usize| (b[i] - a[i]) / extra;
        Self {
            one: a[0],
            many: b[0],
            per_chunk: per(0),
            user_per_chunk: per(1),
            sys_per_chunk: per(2),
            switches_per_chunk: per(3),
            involuntary_per_chunk: per(4),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"cpu_us_per_1_chunk_task": self.one, "cpu_us_per_many_chunk_task": self.many,
            "cpu_us_per_chunk": self.per_chunk, "user_us_per_chunk": self.user_per_chunk,
            "system_us_per_chunk": self.sys_per_chunk,
            "context_switches_per_chunk": self.switches_per_chunk,
            "involuntary_switches_per_chunk": self.involuntary_per_chunk})
    }

    /// "A per 1-chunk task, B per N-chunk task: C (user U, system S) and …".
    fn line(&self, tokens: u32, what: &str) -> String {
        format!(
            "{} per 1-chunk {what}, {} per {tokens}-chunk {what}: {} (user {}, system {}) and {:.2} context switches per chunk ({:.2} preempted)",
            ms(self.one),
            ms(self.many),
            ms(self.per_chunk),
            ms(self.user_per_chunk),
            ms(self.sys_per_chunk),
            self.switches_per_chunk,
            self.involuntary_per_chunk
        )
    }
}

/// The floor's two connections: to the model server and to the sink.
enum Pipe {
    Blocking(std::net::TcpStream, std::net::TcpStream),
    /// The same copy on a one-thread tokio runtime: what the event loop adds.
    Evented(
        tokio::runtime::Runtime,
        tokio::net::TcpStream,
        tokio::net::TcpStream,
    ),
}

/// Whether the bytes so far (`tail`: the last 16) end a chunked body.
fn body_ended(tail: &mut Vec<u8>, read: &[u8]) -> bool {
    tail.extend_from_slice(&read[read.len().saturating_sub(16)..]);
    if tail.len() > 16 {
        tail.drain(..tail.len() - 16);
    }
    tail.ends_with(b"0\r\n\r\n")
}

impl Pipe {
    /// One streamed answer, forwarded read by read; it ends with the last chunk.
    fn once(&mut self, req: &[u8], buf: &mut [u8]) -> anyhow::Result<()> {
        let mut tail = Vec::with_capacity(32);
        match self {
            Self::Blocking(up, out) => {
                use std::io::{Read, Write};
                up.write_all(req)?;
                loop {
                    let n = up.read(buf)?;
                    if n == 0 {
                        bail!("the model server closed the connection");
                    }
                    out.write_all(&buf[..n])?;
                    if body_ended(&mut tail, &buf[..n]) {
                        return Ok(());
                    }
                }
            }
            Self::Evented(rt, up, out) => rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                up.write_all(req).await?;
                loop {
                    let n = up.read(buf).await?;
                    if n == 0 {
                        bail!("the model server closed the connection");
                    }
                    out.write_all(&buf[..n]).await?;
                    if body_ended(&mut tail, &buf[..n]) {
                        return Ok(());
                    }
                }
            }),
        }
    }
}

/// What forwarding a stream costs any process on this machine: a thread that does
/// nothing but copy the (unpaced) model server's streamed answer, read by read, to a
/// loopback socket — no parsing, no framing — with blocking I/O, or (`evented`) on a
/// one-thread tokio runtime. Measured like the node (CPU of `tokens`-chunk against
/// 1-chunk answers, per extra chunk), so the two compare: what the node spends above
/// this floor is its own.
fn floor_pass(
    stub: SocketAddr,
    model: &str,
    tokens: u32,
    tasks: u32,
    evented: bool,
) -> anyhow::Result<PerChunk> {
    use std::io::Read;
    let sink = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let sink_addr = sink.local_addr()?;
    let drain = std::thread::spawn(move || {
        if let Ok((mut s, _)) = sink.accept() {
            let mut buf = [0u8; 16 * 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let out = std::net::TcpStream::connect(sink_addr)?;
    out.set_nodelay(true)?;
    let up = std::net::TcpStream::connect(stub)?;
    up.set_nodelay(true)?;
    let tid: u32 = std::fs::read_link("/proc/thread-self")?
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .context("no thread id")?;
    let request = |max_tokens: u32| {
        let body = json!({"model": model, "stream": true, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Tell me a story."}]})
        .to_string();
        iicp_testkit::raw_http::request(
            "POST",
            stub,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut pipe = if evented {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        up.set_nonblocking(true)?;
        out.set_nonblocking(true)?;
        let (up, out) = rt.block_on(async {
            Ok::<_, std::io::Error>((
                tokio::net::TcpStream::from_std(up)?,
                tokio::net::TcpStream::from_std(out)?,
            ))
        })?;
        Pipe::Evented(rt, up, out)
    } else {
        Pipe::Blocking(up, out)
    };
    let mut once = |req: &[u8]| pipe.once(req, &mut buf);
    let (req_one, req_many) = (request(1), request(tokens));
    for _ in 0..20 {
        once(&req_one)?;
        once(&req_many)?;
    }
    let mut readings = Vec::with_capacity(2);
    for req in [&req_one, &req_many] {
        let before = Reading::take(tid)?;
        for _ in 0..tasks {
            once(req)?;
        }
        readings.push([before, Reading::take(tid)?]);
    }
    // closing the connections ends the drain
    drop(pipe);
    let _ = drain.join();
    Ok(PerChunk::new(readings[0], readings[1], tasks, tokens))
}

/// Starts the node on its own one-thread runtime, in front of `backend_url`, registered
/// with `dir_url`.
fn start_node(
    dir_url: String,
    backend_url: String,
    model: String,
    plaintext: bool,
) -> anyhow::Result<NodeThread> {
    let (tx, rx) = std_mpsc::channel();
    let (trigger, stop) = shutdown::channel();
    let join = std::thread::Builder::new()
        .name("bench-node".into())
        .spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self").ok().and_then(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u32>().ok())
            });
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::new(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let started = async {
                    let listener = Listener::bind(
                        (std::net::Ipv4Addr::LOCALHOST, 0).into(),
                        ListenerConfig::default(),
                    )
                    .await?;
                    let addr = listener.local_addr()?;
                    let mut cfg = BackendConfig::new(BackendKind::OpenAiCompat);
                    cfg.base_url = Some(backend_url);
                    cfg.model = Some(model.clone());
                    let backend = iicp_backends::build(cfg)?;
                    let mut builder = Node::builder();
                    if plaintext {
                        builder = builder.without_cx();
                    }
                    let node = builder
                        .endpoint(format!("http://{addr}"))
                        .intent(iicp_client::CHAT_INTENT)
                        .model(model)
                        .directory_url(dir_url)
                        .max_concurrent(256)
                        // loopback load: no per-origin task limit
                        .rate_limit(iicp_node::RateLimit {
                            max_requests: 0,
                            ..iicp_node::RateLimit::default()
                        })
                        .build()?;
                    let handle = node
                        .serve(
                            listener,
                            BackendHandler::new(backend),
                            ServeOptions::default(),
                        )
                        .await?;
                    let t0 = Instant::now();
                    while node.node_token().is_none() {
                        if t0.elapsed() > Duration::from_secs(10) {
                            bail!("the node did not register");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let id = node.node_id().unwrap_or_default();
                    Ok::<_, anyhow::Error>((handle, id))
                };
                match started.await {
                    Ok((handle, id)) => {
                        let _ = tx.send(tid.context("no thread id").map(|t| (t, id)));
                        stop.cancelled().await;
                        handle.stop().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    let (tid, node_id) = rx.recv().context("the node thread ended")??;
    Ok(NodeThread {
        tid,
        node_id,
        trigger,
        join,
    })
}

fn request(max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::new(vec![ChatMessage::new("user", "Tell me a story.")]);
    r.max_tokens = Some(max_tokens);
    r
}

/// Time to the first non-empty delta of one streamed chat; drains it to the end and
/// returns the chunk count too.
async fn mesh_once(client: &Client, max_tokens: u32) -> anyhow::Result<(Duration, usize)> {
    let t0 = Instant::now();
    let mut chat = client
        .chat_stream(request(max_tokens), ChatOptions::default())
        .await?;
    let mut first = None;
    let mut chunks = 0;
    while let Some(ev) = chat.next().await {
        match ev? {
            ChatEvent::Delta(t) if !t.is_empty() => {
                chunks += 1;
                first.get_or_insert_with(|| t0.elapsed());
            }
            ChatEvent::Done(_) => break,
            _ => {}
        }
    }
    if !chat.is_streamed() {
        bail!("the node answered buffered");
    }
    Ok((first.context("no text")?, chunks))
}

/// Time to the first content chunk calling the model server directly.
async fn direct_once(
    http: &HttpClient,
    url: &str,
    model: &str,
    max_tokens: u32,
) -> anyhow::Result<Duration> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "stream": true,
    });
    let t0 = Instant::now();
    let mut stream = http.post_json(url, &body).send_streaming().await?;
    if !stream.status.is_success() {
        bail!("the model server answered HTTP {}", stream.status);
    }
    let mut first = None;
    let mut seen = Vec::new();
    while let Some(chunk) = stream.chunk().await? {
        if first.is_none() {
            seen.extend_from_slice(&chunk);
            // the first event with non-empty content
            let text = String::from_utf8_lossy(&seen);
            if text
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .any(|v| {
                    v.pointer("/choices/0/delta/content")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|t| !t.is_empty())
                })
            {
                first = Some(t0.elapsed());
                seen.clear();
            }
        }
    }
    first.context("the model server sent no content")
}

struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
}

fn quantiles(h: &Histogram) -> Quantiles {
    Quantiles {
        p50: h.quantile_ns(0.5) / 1000.0,
        p90: h.quantile_ns(0.9) / 1000.0,
        p99: h.quantile_ns(0.99) / 1000.0,
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    // the model server: the paced stub unless one is given
    let (_stub_server, backend_url, stub) = match &args.backend_url {
        Some(url) => (None, url.trim_end_matches('/').to_owned(), None),
        None => {
            let stub = StubModel::paced(
                args.model.clone(),
                args.tokens as usize,
                Duration::from_millis(args.token_delay_ms),
            );
            let server = iicp_testkit::server::serve(stub.router()).await?;
            let url = format!("{}/v1", server.url());
            (Some(server), url, Some(stub))
        }
    };
    // the directory
    let dir = Directory::builder()
        .private_mesh(true)
        .store(MemoryStore::new())
        .build()
        .await?;
    let dl = Listener::bind(
        (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        ListenerConfig::default(),
    )
    .await?;
    let dir_url = format!("http://{}/api", dl.local_addr()?);
    let (dir_trigger, dir_stop) = shutdown::channel();
    let dir_task = tokio::spawn(async move { dir.serve(dl, dir_stop).await });
    let node = start_node(
        dir_url.clone(),
        backend_url.clone(),
        args.model.clone(),
        args.plaintext,
    )?;
    let encryption = if args.plaintext {
        iicp_client::Encryption::AllowPlaintext
    } else {
        iicp_client::Encryption::Required
    };

    let http = HttpClient::new(HttpClientConfig::default())?;
    let chat_url = format!("{backend_url}/chat/completions");
    let mut results = Vec::new();
    // direct
    for _ in 0..20 {
        direct_once(&http, &chat_url, &args.model, args.tokens).await?;
    }
    let mut direct = Histogram::new();
    for _ in 0..args.rounds {
        direct.record(direct_once(&http, &chat_url, &args.model, args.tokens).await?);
    }
    results.push(("direct", quantiles(&direct), 0usize));
    for (name, transport) in [
        ("mesh, HTTP", Transport::Http),
        ("mesh, native", Transport::Native),
    ] {
        let client = Client::builder()
            .directory_url(dir_url.clone())
            .allow_private_endpoints(true)
            .transport(transport)
            .encryption(encryption)
            .build()?;
        for _ in 0..20 {
            mesh_once(&client, args.tokens).await?;
        }
        let mut h = Histogram::new();
        let mut chunks = 0;
        for _ in 0..args.rounds {
            let (first, n) = mesh_once(&client, args.tokens).await?;
            h.record(first);
            chunks = n;
        }
        results.push((name, quantiles(&h), chunks));
    }

    // the node's CPU per chunk: many chunks against one, pacing off
    let mut cpu = Vec::new();
    let mut syscalls = Vec::new();
    let mut floors: Vec<(&str, PerChunk)> = Vec::new();
    if args.cpu_tasks > 0 {
        let fast_stub = if stub.is_some() {
            let s = StubModel::paced(args.model.clone(), args.tokens as usize, Duration::ZERO);
            Some((iicp_testkit::server::serve(s.router()).await?, s))
        } else {
            None
        };
        // a second node in front of the unpaced stub (the paced one would dominate)
        let cpu_node = match &fast_stub {
            Some((server, _)) => Some(start_node(
                dir_url.clone(),
                format!("{}/v1", server.url()),
                format!("{}-fast", args.model),
                args.plaintext,
            )?),
            None => None,
        };
        let measured = cpu_node.as_ref().unwrap_or(&node);
        let model = if cpu_node.is_some() {
            format!("{}-fast", args.model)
        } else {
            args.model.clone()
        };
        let measured_paths = [("HTTP", Transport::Http), ("native", Transport::Native)]
            .into_iter()
            .filter(|(name, _)| {
                args.transport
                    .as_deref()
                    .is_none_or(|only| only.eq_ignore_ascii_case(name))
            });
        for (name, transport) in measured_paths {
            let client = Client::builder()
                .directory_url(dir_url.clone())
                .allow_private_endpoints(true)
                .transport(transport)
                .encryption(encryption)
                .build()?;
            // pinned to the measured node
            let options = ChatOptions {
                model: Some(model.clone()),
                node_id: Some(measured.node_id.clone()),
                ..ChatOptions::default()
            };
            let once = |max_tokens: u32| {
                let client = &client;
                let options = options.clone();
                async move {
                    let mut r = request(max_tokens);
                    r.model = options.model.clone();
                    let mut chat = client.chat_stream(r, options).await?;
                    while let Some(ev) = chat.next().await {
                        if let ChatEvent::Done(_) = ev? {
                            break;
                        }
                    }
                    Ok::<_, anyhow::Error>(())
                }
            };
            for _ in 0..20 {
                once(1).await?;
                once(args.tokens).await?;
            }
            let mut readings = Vec::with_capacity(2);
            for tokens in [1, args.tokens] {
                let before = Reading::take(measured.tid)?;
                for _ in 0..args.cpu_tasks {
                    once(tokens).await?;
                }
                readings.push([before, Reading::take(measured.tid)?]);
            }
            cpu.push((
                name,
                PerChunk::new(readings[0], readings[1], args.cpu_tasks, args.tokens),
            ));
            let extra = f64::from(args.tokens - 1);
            if args.syscalls {
                let mut calls = [0f64; 2];
                for (i, tokens) in [1, args.tokens].into_iter().enumerate() {
                    let strace = Strace::attach(measured.tid, &format!("{name}-{tokens}"))?;
                    for _ in 0..args.cpu_tasks {
                        once(tokens).await?;
                    }
                    calls[i] = strace.calls()? as f64 / f64::from(args.cpu_tasks);
                }
                syscalls.push((name, calls[0], calls[1], (calls[1] - calls[0]) / extra));
            }
        }
        if let (Some((server, _)), true) = (&fast_stub, args.floor) {
            let addr: SocketAddr = server
                .url()
                .trim_start_matches("http://")
                .parse()
                .context("the stub's address")?;
            let (model, tokens, tasks) =
                (format!("{}-fast", args.model), args.tokens, args.cpu_tasks);
            for (name, evented) in [("floor", false), ("floor, tokio", true)] {
                let model = model.clone();
                let f = tokio::task::spawn_blocking(move || {
                    floor_pass(addr, &model, tokens, tasks, evented)
                })
                .await
                .context("the floor pass panicked")??;
                floors.push((name, f));
            }
        }
        if let Some(n) = cpu_node {
            n.trigger.fire();
            let _ = n.join.join();
        }
    }
    node.trigger.fire();
    let _ = node.join.join();
    dir_trigger.fire();
    let _ = dir_task.await;

    let direct_p50 = results[0].1.p50;
    if args.json {
        let ttft: Vec<_> = results
            .iter()
            .map(|(name, q, chunks)| {
                json!({"path": name, "p50_us": q.p50, "p90_us": q.p90, "p99_us": q.p99,
                "p50_minus_direct_us": q.p50 - direct_p50, "chunks": chunks})
            })
            .collect();
        let cpu: Vec<_> = cpu
            .iter()
            .map(|(name, p)| {
                let mut v = p.json();
                v["transport"] = json!(name);
                v
            })
            .collect();
        let syscalls: Vec<_> = syscalls
            .iter()
            .map(|(name, one, many, per)| {
                json!({"transport": name, "syscalls_per_1_chunk_task": one,
                "syscalls_per_many_chunk_task": many, "syscalls_per_chunk": per})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "rounds": args.rounds, "tokens": args.tokens, "token_delay_ms": args.token_delay_ms,
                "backend": if stub.is_some() { "paced stub" } else { backend_url.as_str() },
                "time_to_first_token": ttft, "node_cpu_per_chunk": cpu,
                "node_syscalls_per_chunk": syscalls,
                "floor_cpu_per_chunk": floors.first().map(|f| f.1.json()),
                "tokio_floor_cpu_per_chunk": floors.get(1).map(|f| f.1.json()),
            }))?
        );
        return Ok(());
    }
    println!(
        "time to first token, {} chats each ({} tokens, {}):",
        args.rounds,
        args.tokens,
        if stub.is_some() {
            format!("paced stub, {} ms apart", args.token_delay_ms)
        } else {
            backend_url.clone()
        }
    );
    for (name, q, chunks) in &results {
        let over = if *name == "direct" {
            String::new()
        } else {
            let d = q.p50 - direct_p50;
            let sign = if d < 0.0 { "-" } else { "+" };
            format!("  ({sign}{} against direct, {chunks} chunks)", ms(d.abs()))
        };
        println!(
            "  {name:<13} p50 {:>9}  p90 {:>9}  p99 {:>9}{over}",
            ms(q.p50),
            ms(q.p90),
            ms(q.p99)
        );
    }
    if !cpu.is_empty() {
        println!("node CPU ({} tasks each side, pacing off):", args.cpu_tasks);
        for (name, p) in &cpu {
            println!("  {name:<7} {}", p.line(args.tokens, "task"));
        }
    }
    for (name, f) in &floors {
        println!(
            "  {name:<7} {} (a thread that only copies the stream, {})",
            f.line(args.tokens, "answer"),
            if name.contains("tokio") {
                "a one-thread tokio runtime"
            } else {
                "blocking I/O"
            }
        );
    }
    for (name, one, many, per) in &syscalls {
        println!(
            "  {name:<7} {one:.1} system calls per 1-chunk task, {many:.1} per {}-chunk task: {per:.2} per chunk (strace -c)",
            args.tokens
        );
    }
    Ok(())
}
