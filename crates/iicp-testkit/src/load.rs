//! A closed-loop load generator for IICP nodes (the engine of `iicp bench`).
//!
//! [`run`] drives one target with `concurrency` workers, each sending its next task as
//! soon as the previous one is answered, until a duration or a request count is reached:
//!
//! * `http://` / `https://` targets get `POST /v1/task` (PROTOCOL.md §4.1) with a chat
//!   payload of about [`LoadConfig::payload_bytes`] over the keep-alive pool of one
//!   [`HttpClient`] (one connection per worker is kept idle between requests);
//! * `iicp://` / `iicpsec://` targets get native CALLs (§10) multiplexed over
//!   [`LoadConfig::connections`] pooled connections.
//!
//! Tasks are plaintext (no IICP-CX), so nodes that do not do native CX compare on equal
//! terms. Each task has a fresh UUID v4 task id, so no node answers from a duplicate
//! cache.
//!
//! The [`Report`] has throughput, a latency histogram of the successful tasks
//! (p50/p90/p99/max from fixed log-linear buckets, about 1.6 % resolution, bounded
//! memory per worker), errors counted by IICP code or HTTP status, and the CPU time the
//! generator itself used (from `/proc/self/stat`, Linux only) so a run can show that the
//! generator was not the bottleneck. Processes named in [`LoadConfig::watch_pids`] (the
//! node under test) are measured the same way.
//!
//! What it is not: a retrying client. Every failure is counted, never retried.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_proto::error::ErrorBody;
use iicp_proto::intent::Intent;
use iicp_proto::message::{Body, Call, Outcome, PROTOCOL_VERSION};
use iicp_proto::task::TaskResponse;
use iicp_transport::http::client::{HttpClient, HttpClientConfig, HttpClientError};
use iicp_transport::native::{NativeClient, NativeClientConfig, NativeEndpoint, NativeError};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

/// Most concurrent workers a run accepts.
pub const MAX_CONCURRENCY: usize = 4096;
/// Most native connections a run opens.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest payload a run sends (the node-side body cap is 16 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;
/// Most distinct error kinds kept per worker; further kinds are counted as `other`.
const MAX_ERROR_KINDS: usize = 64;
/// Linux `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// What the generator sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// `POST` to this task URL (`…/v1/task`).
    Http(String),
    /// Native CALLs to this endpoint.
    Native(NativeEndpoint),
}

/// A target URL that is not `http(s)://…` or `iicp(sec)://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target {url:?}: {reason}")]
pub struct TargetError {
    url: String,
    reason: &'static str,
}

impl FromStr for Target {
    type Err = TargetError;

    /// `http://host:port` (the task path `/v1/task` is added when the URL has no path),
    /// `http://host:port/some/task/path`, `iicp://host:port`, `iicpsec://host:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| TargetError {
            url: s.to_owned(),
            reason,
        };
        if s.starts_with("iicp://") || s.starts_with("iicpsec://") {
            let ep: NativeEndpoint = s.parse().map_err(|_| err("not a native endpoint"))?;
            return Ok(Target::Native(ep));
        }
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .ok_or_else(|| err("scheme must be http, https, iicp or iicpsec"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(err("missing host"));
        }
        if path.is_empty() || path == "/" {
            let base = s.trim_end_matches('/');
            Ok(Target::Http(format!("{base}/v1/task")))
        } else {
            Ok(Target::Http(s.to_owned()))
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Http(url) => f.write_str(url),
            Target::Native(ep) => write!(f, "{ep}"),
        }
    }
}

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// After this long (measured after the warm-up).
    Duration(Duration),
    /// After this many measured requests (successful or not).
    Requests(u64),
}

/// Settings of one run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoadConfig {
    /// Where to send.
    pub target: Target,
    /// Closed-loop workers (1–[`MAX_CONCURRENCY`]).
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
    /// Load sent before measuring starts (connections opened, caches warm); its
    /// requests are not counted.
    pub warmup: Duration,
    /// Approximate size of the task payload JSON (the user message is padded to it).
    pub payload_bytes: usize,
    /// Intent URN of the tasks.
    pub intent: String,
    /// Deadline of one task (also sent as the task's timeout).
    pub timeout: Duration,
    /// Native connections the CALLs are spread over (native targets only).
    pub connections: usize,
    /// Other processes whose CPU time and memory to report (the node under test).
    pub watch_pids: Vec<u32>,
}

impl LoadConfig {
    /// A run against `target` with the defaults: 64 workers, 10 s after a 1 s warm-up,
    /// 256-byte chat payloads, `llm:chat:v1`, 30 s task deadline, one native connection.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            concurrency: 64,
            stop: Stop::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(1),
            payload_bytes: 256,
            intent: iicp_client::CHAT_INTENT.to_owned(),
            timeout: Duration::from_secs(30),
            connections: 1,
            watch_pids: Vec::new(),
        }
    }
}

/// A configuration [`run`] refuses, or a client it could not build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A setting is out of range.
    #[error("invalid load configuration: {0}")]
    Config(&'static str),
    /// The intent is not a valid URN.
    #[error("invalid intent")]
    Intent(#[source] iicp_proto::intent::IntentError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] HttpClientError),
    /// Every worker stopped on a panic.
    #[error("a load worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Live counters of a run, for a progress display. Share it with [`run`] through an
/// `Arc` and read it from another task.
#[derive(Debug, Default)]
pub struct Progress {
    ok: AtomicU64,
    errors: AtomicU64,
    measuring: AtomicBool,
}

impl Progress {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Successful measured tasks so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Failed measured tasks so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether the warm-up is over.
    pub fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }
}

/// Latency quantiles of the successful tasks, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// Fastest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
}

/// CPU time and memory of one process over the measured window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProcessCost {
    /// Process id.
    pub pid: u32,
    /// User + system CPU seconds used in the window (10 ms resolution).
    pub cpu_seconds: f64,
    /// CPU seconds per 1000 measured requests.
    pub cpu_seconds_per_1000: f64,
    /// Of `cpu_seconds_per_1000`, the time in user space.
    pub user_seconds_per_1000: f64,
    /// Of `cpu_seconds_per_1000`, the time in the kernel (system calls, faults,
    /// interrupts charged to the process).
    pub system_seconds_per_1000: f64,
    /// Average cores kept busy (`cpu_seconds` / window).
    pub cores: f64,
    /// Resident set size at the end of the run, in bytes.
    pub rss_bytes: Option<u64>,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The target, as given.
    pub target: String,
    /// `http` or `native`.
    pub transport: &'static str,
    /// Workers.
    pub concurrency: usize,
    /// Native connections (1 for HTTP: one per worker, pooled).
    pub connections: usize,
    /// Payload size asked for, in bytes.
    pub payload_bytes: usize,
    /// Measured window, in seconds.
    pub elapsed_s: f64,
    /// Measured requests (successful + failed).
    pub requests: u64,
    /// Successful tasks.
    pub ok: u64,
    /// Failed tasks.
    pub errors: u64,
    /// Successful tasks per second.
    pub throughput_rps: f64,
    /// Latency of the successful tasks.
    pub latency: Latency,
    /// Failures by kind: `HTTP <status> <code>`, `native <code>`, `transport <what>`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The generator's own cost (Linux only).
    pub generator: Option<ProcessCost>,
    /// The watched processes' cost (Linux only).
    pub watched: Vec<ProcessCost>,
}

/// Runs the load described by `config`, updating `progress` as it goes.
pub async fn run(config: &LoadConfig, progress: Arc<Progress>) -> Result<Report, LoadError> {
    if config.concurrency == 0 || config.concurrency > MAX_CONCURRENCY {
        return Err(LoadError::Config("concurrency must be 1-4096"));
    }
    if config.connections == 0 || config.connections > MAX_CONNECTIONS {
        return Err(LoadError::Config("connections must be 1-256"));
    }
    if config.payload_bytes > MAX_PAYLOAD_BYTES {
        return Err(LoadError::Config("payload must be at most 8 MiB"));
    }
    match config.stop {
        Stop::Duration(d) if d.is_zero() => {
            return Err(LoadError::Config("duration must be positive"))
        }
        Stop::Requests(0) => return Err(LoadError::Config("requests must be positive")),
        _ => {}
    }
    let intent = Intent::new(config.intent.as_str()).map_err(LoadError::Intent)?;
    let payload = chat_payload(config.payload_bytes);
    let timeout_ms = u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX);

    let sender = match &config.target {
        Target::Http(url) => {
            let mut hc = HttpClientConfig::default();
            hc.pool_max_idle_per_host = config.concurrency;
            hc.request_timeout = config.timeout;
            let client = HttpClient::new(hc).map_err(LoadError::HttpClient)?;
            let timeout_ms = timeout_ms.clamp(
                iicp_proto::task::MIN_TIMEOUT_MS,
                iicp_proto::task::MAX_TIMEOUT_MS,
            );
            Sender::Http(Arc::new(HttpTarget {
                client,
                url: url.clone(),
                prefix: b"{\"task_id\":\"".to_vec(),
                suffix: format!(
                    "\",\"intent\":\"{}\",\"payload\":{},\"constraints\":{{\"timeout_ms\":{timeout_ms},\"qos\":\"best-effort\"}}}}",
                    intent.as_str(),
                    payload
                )
                .into_bytes(),
                timeout: config.timeout,
            }))
        }
        Target::Native(ep) => {
            let clients = (0..config.connections)
                .map(|_| NativeClient::new(NativeClientConfig::default()))
                .collect();
            Sender::Native(Arc::new(NativeTarget {
                clients,
                endpoint: ep.clone(),
                intent: intent.as_str().to_owned(),
                payload: payload.into_bytes(),
                timeout: config.timeout,
            }))
        }
    };

    let start = Instant::now();
    let measure_from = start + config.warmup;
    let deadline = match config.stop {
        Stop::Duration(d) => Some(measure_from + d),
        Stop::Requests(_) => None,
    };
    let shared = Arc::new(Shared {
        measure_from,
        deadline,
        budget: match config.stop {
            Stop::Requests(n) => Some(n),
            Stop::Duration(_) => None,
        },
        tickets: AtomicU64::new(0),
        progress: Arc::clone(&progress),
    });

    let mut workers = tokio::task::JoinSet::new();
    for index in 0..config.concurrency {
        let sender = sender.clone();
        let shared = Arc::clone(&shared);
        workers.spawn(async move { worker(index, sender, shared).await });
    }

    // CPU sample at the start of the measured window
    tokio::time::sleep_until(measure_from.into()).await;
    progress.measuring.store(true, Ordering::Relaxed);
    let self_before = cpu_ticks("self");
    let watched_before: Vec<Option<CpuTicks>> = config
        .watch_pids
        .iter()
        .map(|pid| cpu_ticks(&pid.to_string()))
        .collect();
    let window_start = Instant::now();

    let mut total = WorkerStats::new();
    while let Some(joined) = workers.join_next().await {
        total.merge(joined.map_err(LoadError::Worker)?);
    }
    let elapsed = window_start.elapsed().max(Duration::from_micros(1));
    let self_after = cpu_ticks("self");

    let requests = total.ok + total.errors;
    let secs = elapsed.as_secs_f64();
    let per_1000 = |seconds: f64| {
        if requests == 0 {
            0.0
        } else {
            seconds * 1000.0 / requests as f64
        }
    };
    let cost = |pid: u32, before: Option<CpuTicks>, after: Option<CpuTicks>, rss: Option<u64>| {
        let (b, a) = (before?, after?);
        let user = a.user.saturating_sub(b.user) as f64 / CLOCK_TICKS_PER_SEC;
        let system = a.system.saturating_sub(b.system) as f64 / CLOCK_TICKS_PER_SEC;
        let cpu = user + system;
        Some(ProcessCost {
            pid,
            cpu_seconds: cpu,
            cpu_seconds_per_1000: per_1000(cpu),
            user_seconds_per_1000: per_1000(user),
            system_seconds_per_1000: per_1000(system),
            cores: cpu / secs,
            rss_bytes: rss,
        })
    };
    let generator = cost(
        std::process::id(),
        self_before,
        self_after,
        rss_bytes("self"),
    );
    let watched = config
        .watch_pids
        .iter()
        .zip(watched_before)
        .filter_map(|(pid, before)| {
            let id = pid.to_string();
            cost(*pid, before, cpu_ticks(&id), rss_bytes(&id))
        })
        .collect();

    let (transport, connections) = match &config.target {
        Target::Http(_) => ("http", config.concurrency),
        Target::Native(_) => ("native", config.connections),
    };
    Ok(Report {
        target: config.target.to_string(),
        transport,
        concurrency: config.concurrency,
        connections,
        payload_bytes: config.payload_bytes,
        elapsed_s: secs,
        requests,
        ok: total.ok,
        errors: total.errors,
        throughput_rps: total.ok as f64 / secs,
        latency: total.histogram.latency(),
        errors_by_kind: total.errors_by_kind,
        generator,
        watched,
    })
}

/// The chat payload JSON, padded to about `bytes`.
fn chat_payload(bytes: usize) -> String {
    const FRAME: usize = r#"{"messages":[{"role":"user","content":""}]}"#.len();
    let text_len = bytes.saturating_sub(FRAME).max(1);
    let word = "lorem ";
    let mut text = word.repeat(text_len / word.len() + 1);
    text.truncate(text_len);
    serde_json::json!({"messages": [{"role": "user", "content": text}]}).to_string()
}

struct Shared {
    measure_from: Instant,
    deadline: Option<Instant>,
    budget: Option<u64>,
    tickets: AtomicU64,
    progress: Arc<Progress>,
}

#[derive(Clone)]
enum Sender {
    Http(Arc<HttpTarget>),
    Native(Arc<NativeTarget>),
}

struct HttpTarget {
    client: HttpClient,
    url: String,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    timeout: Duration,
}

struct NativeTarget {
    clients: Vec<NativeClient>,
    endpoint: NativeEndpoint,
    intent: String,
    payload: Vec<u8>,
    timeout: Duration,
}

/// Outcome of one task: `Ok` or the error kind.
type Attempt = Result<(), String>;

async fn worker(index: usize, sender: Sender, shared: Arc<Shared>) -> WorkerStats {
    let mut stats = WorkerStats::new();
    let mut ids = IdGen::new();
    loop {
        let started = Instant::now();
        let measured = started >= shared.measure_from;
        if measured {
            if shared.deadline.is_some_and(|d| started >= d) {
                break;
            }
            if let Some(budget) = shared.budget {
                if shared.tickets.fetch_add(1, Ordering::Relaxed) >= budget {
                    break;
                }
            }
        }
        let id = ids.next();
        let outcome = match &sender {
            Sender::Http(t) => http_task(t, &id).await,
            Sender::Native(t) => native_task(t, index, &id).await,
        };
        if !measured {
            continue;
        }
        match outcome {
            Ok(()) => {
                stats.ok += 1;
                stats.histogram.record(started.elapsed());
                shared.progress.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                stats.errors += 1;
                stats.count_error(kind);
                shared.progress.errors.fetch_add(1, Ordering::Relaxed);
                // a refused connection fails in microseconds: do not spin on it
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    stats
}

async fn http_task(t: &HttpTarget, id: &str) -> Attempt {
    let mut body = Vec::with_capacity(t.prefix.len() + id.len() + t.suffix.len());
    body.extend_from_slice(&t.prefix);
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(&t.suffix);
    let reply = t
        .client
        .request(http::Method::POST, &t.url)
        .body("application/json", body)
        .timeout(t.timeout)
        .send()
        .await
        .map_err(|e| transport_kind(&e))?;
    let status = reply.status.as_u16();
    match TaskResponse::parse(status, &reply.body) {
        Ok(_) => Ok(()),
        Err(err) => Err(http_error_kind(status, &err)),
    }
}

fn http_error_kind(status: u16, err: &ErrorBody) -> String {
    format!("HTTP {status} {}", err.code.as_str())
}

fn transport_kind(e: &HttpClientError) -> String {
    let what = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        match e {
            HttpClientError::BodyTooLarge { .. } => "body too large",
            HttpClientError::Body { .. } => "body",
            _ => "request",
        }
    };
    format!("transport {what}")
}

async fn native_task(t: &NativeTarget, index: usize, id: &str) -> Attempt {
    let client = &t.clients[index % t.clients.len()];
    let call = Call {
        protocol_version: Some(PROTOCOL_VERSION),
        session_id: Some(id.to_owned()),
        intent: Some(t.intent.clone()),
        payload: Some(Body::Bytes(t.payload.clone())),
        timeout_s: Some(t.timeout.as_secs().clamp(1, 3600)),
        call_id: Some(id.to_owned()),
        idempotency_key: Some(id.to_owned()),
        qos: Some("best-effort".to_owned()),
        ..Call::default()
    };
    let resp = client
        .call(&t.endpoint, call, t.timeout)
        .await
        .map_err(|e| native_transport_kind(&e))?;
    match resp.outcome() {
        Outcome::Success(_) | Outcome::Partial(_) => Ok(()),
        Outcome::Timeout => Err("native task_timeout".to_owned()),
        Outcome::Error { code, status, .. } => Err(match (status, code) {
            (Some(s), Some(c)) => format!("native {s} {c}"),
            (Some(s), None) => format!("native {s}"),
            (None, Some(c)) => format!("native {c}"),
            (None, None) => "native error".to_owned(),
        }),
    }
}

fn native_transport_kind(e: &NativeError) -> String {
    let what = match e {
        NativeError::Connect { .. } | NativeError::ConnectTimeout(_) => "connect",
        NativeError::Tls { .. } => "tls",
        NativeError::BackingOff(_) => "backing off",
        NativeError::Closed(_) => "closed",
        NativeError::Timeout => "timeout",
        NativeError::Session(_) => "session",
        _ => "other",
    };
    format!("transport {what}")
}

/// UUID v4 strings from one random seed and a counter: unique per worker without a
/// system call per task.
struct IdGen {
    seed: [u8; 16],
    counter: u64,
}

impl IdGen {
    fn new() -> Self {
        let mut seed = [0u8; 16];
        OsRng.fill_bytes(&mut seed);
        Self { seed, counter: 0 }
    }

    fn next(&mut self) -> String {
        self.counter = self.counter.wrapping_add(1);
        let mut b = self.seed;
        for (slot, byte) in b[8..].iter_mut().zip(self.counter.to_be_bytes()) {
            *slot ^= byte;
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(36);
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push(char::from(HEX[usize::from(byte >> 4)]));
            s.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        s
    }
}

struct WorkerStats {
    ok: u64,
    errors: u64,
    histogram: Histogram,
    errors_by_kind: BTreeMap<String, u64>,
}

impl WorkerStats {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: 0,
            histogram: Histogram::new(),
            errors_by_kind: BTreeMap::new(),
        }
    }

    fn count_error(&mut self, kind: String) {
        let key = if self.errors_by_kind.len() >= MAX_ERROR_KINDS
            && !self.errors_by_kind.contains_key(&kind)
        {
            "other".to_owned()
        } else {
            kind
        };
        *self.errors_by_kind.entry(key).or_default() += 1;
    }

    fn merge(&mut self, other: WorkerStats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.histogram.merge(&other.histogram);
        for (k, v) in other.errors_by_kind {
            *self.errors_by_kind.entry(k).or_default() += v;
        }
    }
}

/// Log-linear latency histogram over nanoseconds: exact below 128 ns, then 64 buckets
/// per power of two (at most 1/64 relative error); 3 776 counters whatever the run.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB;
const BUCKETS: usize = (LINEAR + (64 - 7) * SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    fn index(ns: u64) -> usize {
        if ns < LINEAR {
            return ns as usize;
        }
        let exp = 63 - u64::from(ns.leading_zeros()); // >= 7
        let sub = (ns >> (exp - u64::from(SUB_BITS))) & (SUB - 1);
        (LINEAR + (exp - 7) * SUB + sub) as usize
    }

    /// The middle of bucket `i`, in nanoseconds.
    fn value(i: usize) -> f64 {
        let i = i as u64;
        if i < LINEAR {
            return i as f64;
        }
        let exp = (i - LINEAR) / SUB + 7;
        let sub = (i - LINEAR) % SUB;
        let width = 1u64 << (exp - u64::from(SUB_BITS));
        let low = (1u64 << exp) + sub * width;
        low as f64 + width as f64 / 2.0
    }

    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds `other`'s samples.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `q` quantile (0–1) in nanoseconds, clamped to the recorded min and max.
    pub fn quantile_ns(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).clamp(self.min_ns as f64, self.max_ns as f64);
            }
        }
        self.max_ns as f64
    }

    /// The summary in microseconds.
    pub fn latency(&self) -> Latency {
        if self.total == 0 {
            return Latency::default();
        }
        Latency {
            min_us: self.min_ns as f64 / 1e3,
            mean_us: self.sum_ns as f64 / self.total as f64 / 1e3,
            p50_us: self.quantile_ns(0.50) / 1e3,
            p90_us: self.quantile_ns(0.90) / 1e3,
            p99_us: self.quantile_ns(0.99) / 1e3,
            max_us: self.max_ns as f64 / 1e3,
        }
    }
}

/// User + system CPU ticks of `/proc/<pid>/stat` (`pid` may be `self`).
/// A process's CPU time so far, in clock ticks.
#[derive(Clone, Copy)]
struct CpuTicks {
    user: u64,
    system: u64,
}

fn cpu_ticks(pid: &str) -> Option<CpuTicks> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime and stime of a `/proc/PID/stat` line.
fn parse_cpu_ticks(stat: &str) -> Option<CpuTicks> {
    // the command name may hold spaces and parentheses: fields resume after the last ')'
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // after ')' come state (field 3) … utime (14) and stime (15)
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(CpuTicks { user, system })
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "http://127.0.0.1:9484".parse::<Target>().unwrap(),
            Target::Http("http://127.0.0.1:9484/v1/task".into())
        );
        assert_eq!(
            "http://h:1/".parse::<Target>().unwrap(),
            Target::Http("http://h:1/v1/task".into())
        );
        assert_eq!(
            "https://h/x/task".parse::<Target>().unwrap(),
            Target::Http("https://h/x/task".into())
        );
        assert!(matches!(
            "iicp://127.0.0.1:9".parse::<Target>().unwrap(),
            Target::Native(_)
        ));
        assert!("ftp://h".parse::<Target>().is_err());
        assert!("http:///v1".parse::<Target>().is_err());
    }

    #[test]
    fn histogram_quantiles_are_within_resolution() {
        let mut h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let l = h.latency();
        for (got, want) in [(l.p50_us, 5000.0), (l.p90_us, 9000.0), (l.p99_us, 9900.0)] {
            assert!((got - want).abs() / want < 0.02, "{got} vs {want}");
        }
        assert_eq!(l.max_us, 10_000.0);
        assert_eq!(l.min_us, 1.0);
        // every index is in range, up to the largest duration
        assert!(Histogram::index(u64::MAX) < BUCKETS);
        for i in 0..BUCKETS {
            assert_eq!(Histogram::index(Histogram::value(i) as u64), i);
        }
    }

    #[test]
    fn ids_are_uuid_v4_and_unique() {
        let mut g = IdGen::new();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        let id = iicp_proto::ids::TaskId::parse(&a).unwrap();
        assert!(id.is_uuid_v4());
    }

    #[test]
    fn payload_has_about_the_asked_size() {
        for n in [64usize, 1024, 65_536] {
            let p = chat_payload(n);
            assert!(p.len().abs_diff(n) <= 2, "{n}: {}", p.len());
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert!(v["messages"][0]["content"].is_string());
        }
    }

    #[test]
    fn own_cpu_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_ticks("self").is_some());
            assert!(rss_bytes("self").is_some());
        }
    }

    #[test]
    fn user_and_system_ticks_come_from_fields_14_and_15() {
        // a command name with spaces and parentheses, as the kernel writes it
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 510 0 0 0 37 12 0 0 20 0 3 0";
        let t = parse_cpu_ticks(stat).unwrap();
        assert_eq!((t.user, t.system), (37, 12));
        assert!(parse_cpu_ticks("4242 (x) S 1 2").is_none());
        assert!(parse_cpu_ticks("no parenthesis").is_none());
    }
}
