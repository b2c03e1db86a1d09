//! SDK-01..06 in both readings (DESIGN.md §4.10) against our `iicp_client::Client`,
//! with scripted directories and nodes on 127.0.0.1:0 ([`iicp_testkit::scripted`]).
//!
//! * the seed's reading (SEED-SDK.md §6): SDK-01 pipeline with node retry, SDK-02 UUID v4
//!   task ids, SDK-03 URN validation, SDK-04 the 120 000 ms cap, SDK-05 429/503 back-off
//!   and node switch, SDK-06 W3C `traceparent`;
//! * the spec badge's reading (conformance-test-suite.md §10.1): SDK-01 exactly three
//!   attempts on transient errors, then a structured error; SDK-02 chat output in the
//!   OpenAI shape; SDK-03 URN validation before sending; SDK-04 `invalid_config`;
//!   SDK-05 no TLS-verify switch (verification on by default); SDK-06 the node token
//!   never in logs, errors or provider requests.
//!
//! Ids: `SDK-0N` where both readings coincide, `SDK-0N-SEED` / `SDK-0N-SPEC` where they
//! differ.

use parking_lot::Mutex;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use iicp_client::{Client, ClientBuilder, Encryption, ErrorCode, RouteDiscovery, Task};
use serde_json::json;

use super::{case, ensure, Case, Outcome, Stop, Target};
use iicp_testkit::scripted::{Canned, Scripted, ScriptedBuilder};
use iicp_testkit::time::{FixedRandom, RecordingSleeper};

const T: Target = Target::Client;

/// The SDK cases.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "SDK-01-SEED",
            T,
            "discover → select → submit: 3 attempts on a 503 node, then the next node",
            "SEED-SDK §6 SDK-01; PROTOCOL §7.1, §9.2; DESIGN §4.9",
            |_c| pipeline_retry()
        ),
        case!(
            "SDK-01-SPEC",
            T,
            "exactly 3 attempts on transient errors, then a structured error",
            "suite SDK-01, PROXY-ROUTE-03/04; PROTOCOL §7.1",
            |_c| exactly_three()
        ),
        case!(
            "SDK-01-BACKOFF",
            T,
            "back-off 200 ms × 2^n within ±20 % jitter",
            "PROTOCOL §7.1 (base 200 ms, ×2, ±20 %); DESIGN §4.9",
            |_c| backoff_envelope()
        ),
        case!(
            "SDK-02-SEED",
            T,
            "task ids are fresh UUID v4, one per logical submit across retries",
            "SEED-SDK §6 SDK-02; PROTOCOL §2.1; suite PROTO-MSG-01",
            |_c| uuid_ids()
        ),
        case!(
            "SDK-02-SPEC",
            T,
            "chat() output has the OpenAI shape (choices[0].message.content)",
            "suite SDK-02, PROXY-OAI-02; PROTOCOL §9.3",
            |_c| openai_shape()
        ),
        case!(
            "SDK-03",
            T,
            "invalid intent URNs are refused with invalid_intent and zero I/O",
            "suite SDK-03, PROTO-URN-01/02; SEED-SDK §6 SDK-03; PROTOCOL §2.2, §9.2 step 1, §19 T1",
            |_c| urn_zero_io()
        ),
        case!(
            "SDK-04",
            T,
            "timeout > 120 000 ms is refused at construction with invalid_config",
            "suite SDK-04; SEED-SDK §6 SDK-04; PROTOCOL §7.5",
            |_c| timeout_cap()
        ),
        case!(
            "SDK-05-SEED",
            T,
            "429/503 back off on the same node; capacity_exceeded switches at once; 502 is final",
            "SEED-SDK §6 SDK-05; PROTOCOL §7.1, §7.3, §19 T8",
            |_c| backoff_and_switch()
        ),
        case!(
            "SDK-05-SPEC",
            T,
            "TLS certificates are verified by default (self-signed directory refused)",
            "suite SDK-05, PROXY-ROUTE-05; PROTOCOL §8",
            |_c| tls_verified()
        ),
        case!(
            "SDK-06-SEED",
            T,
            "one W3C traceparent per submit, shared by discovery and every node attempt",
            "SEED-SDK §6 SDK-06; PROTOCOL §2.3; suite TRACE-01",
            |_c| traceparent()
        ),
        case!(
            "SDK-06-SPEC",
            T,
            "node_token never in logs, errors or provider requests",
            "suite SDK-06; PROTOCOL §4.3, §19 T6; DESIGN §4.5",
            |_c| token_never_leaks()
        ),
        case!(
            "PROXY-ERR-01",
            T,
            "empty discovery → no_nodes_available carrying IICP-E033",
            "suite PROXY-ERR-01; PROTOCOL §9.2 step 8; DESIGN §4.8",
            |_c| empty_discovery()
        ),
    ]
}

const CHAT: &str = iicp_client::CHAT_INTENT;

fn io(e: std::io::Error) -> Stop {
    Stop::request(None, format!("scripted server: {e}"))
}

pub(crate) fn node_id(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

/// A scripted directory listing `n` scripted nodes, in order, and a sleeper for the
/// client.
pub(crate) async fn mesh(n: u32) -> Result<(Scripted, Vec<Scripted>, Arc<RecordingSleeper>), Stop> {
    let dir = ScriptedBuilder::directory().start().await.map_err(io)?;
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(
            ScriptedBuilder::node(format!("node-{i}"))
                .start()
                .await
                .map_err(io)?,
        );
    }
    dir.set_nodes(
        nodes
            .iter()
            .enumerate()
            .map(|(i, s)| s.entry(&node_id(i as u32 + 1)))
            .collect(),
    );
    Ok((dir, nodes, Arc::default()))
}

/// Our client for a scripted mesh: plain discovery, plaintext to keyless scripted
/// nodes, private endpoints allowed, back-off recorded instead of slept, no jitter.
pub(crate) fn client(dir: &Scripted, sleeper: &Arc<RecordingSleeper>) -> ClientBuilder {
    Client::builder()
        .directory_url(dir.base())
        .allow_private_endpoints(true)
        .encryption(Encryption::AllowPlaintext)
        .route_discovery(RouteDiscovery::Legacy)
        .discovery_cache_ttl(Duration::ZERO)
        .sleeper(Arc::clone(sleeper) as Arc<dyn iicp_client::time::Sleeper>)
        .random(Arc::new(FixedRandom(0.5)))
}

fn build(b: ClientBuilder) -> Result<Client, Stop> {
    b.build()
        .map_err(|e| Stop::assertion(None, format!("client refused: {e}")))
}

pub(crate) fn chat_task() -> Task {
    Task::new(
        CHAT,
        json!({"messages": [{"role": "user", "content": "conformance"}]}),
    )
}

pub(crate) fn transient(code: u16) -> Canned {
    let slug = if code == 429 {
        "rate_limited"
    } else {
        "temporarily_unavailable"
    };
    Canned::Json(
        code,
        json!({"error": {"code": slug, "message": format!("scripted {code}")}}),
    )
}

pub(crate) fn counts(nodes: &[Scripted]) -> Vec<usize> {
    nodes.iter().map(|n| n.count("/v1/task")).collect()
}

async fn pipeline_retry() -> Outcome {
    let (dir, nodes, sleeper) = mesh(2).await?;
    nodes[0].script(
        Method::POST,
        "/v1/task",
        [transient(503), transient(503), transient(503)],
    );
    let c = build(client(&dir, &sleeper))?;
    let done = c
        .submit(chat_task())
        .await
        .map_err(|e| Stop::assertion(None, format!("submit failed: {e}")))?;
    ensure(dir.count("/v1/discover") >= 1, None, || {
        "no discovery before submission".into()
    })?;
    ensure(done.node_id == node_id(2), None, || {
        format!("answered by {}", done.node_id)
    })?;
    ensure(counts(&nodes) == vec![3, 1], None, || {
        format!("attempts per node {:?}, expected [3, 1]", counts(&nodes))
    })?;
    ensure(done.attempts == 4, None, || {
        format!("attempts = {}", done.attempts)
    })?;
    Ok(None)
}

async fn exactly_three() -> Outcome {
    let (dir, nodes, sleeper) = mesh(1).await?;
    nodes[0].set_default(Method::POST, "/v1/task", transient(503));
    let c = build(client(&dir, &sleeper))?;
    let err = match c.submit(chat_task()).await {
        Ok(_) => {
            return Err(Stop::assertion(
                None,
                "a node that always answers 503 succeeded".to_owned(),
            ))
        }
        Err(e) => e,
    };
    ensure(counts(&nodes) == vec![3], None, || {
        format!("{:?} attempts, expected exactly 3", counts(&nodes))
    })?;
    ensure(!err.code().as_str().is_empty(), None, || {
        "error without a code".into()
    })?;
    ensure(
        matches!(
            err.code(),
            ErrorCode::AllNodesFailed | ErrorCode::TemporarilyUnavailable
        ),
        None,
        || format!("error code {}", err.code().as_str()),
    )?;
    Ok(None)
}

async fn backoff_envelope() -> Outcome {
    for (r, lo0, hi0) in [(0.0, 160, 200), (0.999_999, 200, 240)] {
        let (dir, nodes, sleeper) = mesh(2).await?;
        nodes[0].script(
            Method::POST,
            "/v1/task",
            [transient(503), transient(503), transient(503)],
        );
        let c = build(client(&dir, &sleeper).random(Arc::new(FixedRandom(r))))?;
        c.submit(chat_task())
            .await
            .map_err(|e| Stop::assertion(None, format!("submit failed: {e}")))?;
        let s: Vec<u128> = sleeper.sleeps().iter().map(Duration::as_millis).collect();
        ensure(s.len() == 2, None, || {
            format!("sleeps {s:?}: expected 2 back-offs for 3 attempts")
        })?;
        ensure(
            (lo0..=hi0).contains(&s[0]) && (lo0 * 2..=hi0 * 2).contains(&s[1]),
            None,
            || format!("random {r}: back-offs {s:?} ms outside 200·2^n ±20 %"),
        )?;
    }
    Ok(None)
}

/// The task ids `node` received: exactly `expected` of them, all UUID v4.
pub(crate) fn task_ids(node: &Scripted, expected: usize) -> Result<Vec<String>, Stop> {
    let ids: Vec<String> = node
        .hits("/v1/task")
        .iter()
        .map(|r| r.json()["task_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure(ids.len() == expected, None, || {
        format!("{} task POSTs, expected {expected}", ids.len())
    })?;
    ensure(ids.iter().all(|i| is_uuid_v4(i)), None, || {
        format!("not UUID v4: {ids:?}")
    })?;
    Ok(ids)
}

fn is_uuid_v4(s: &str) -> bool {
    iicp_proto::ids::TaskId::parse(s).is_ok_and(|t| t.is_uuid_v4())
        && s.len() == 36
        && s == s.to_ascii_lowercase()
}

async fn uuid_ids() -> Outcome {
    let (dir, nodes, sleeper) = mesh(1).await?;
    nodes[0].script(Method::POST, "/v1/task", [transient(503)]);
    let c = build(client(&dir, &sleeper))?;
    for _ in 0..2 {
        c.submit(chat_task())
            .await
            .map_err(|e| Stop::assertion(None, format!("submit failed: {e}")))?;
    }
    let ids = task_ids(&nodes[0], 3)?;
    ensure(ids[0] == ids[1] && ids[1] != ids[2], None, || {
        format!("ids {ids:?}: the retry must keep the id, the next submit must not")
    })?;
    Ok(None)
}

async fn openai_shape() -> Outcome {
    let (dir, _nodes, sleeper) = mesh(1).await?;
    let c = build(client(&dir, &sleeper))?;
    let r = c
        .chat(vec![iicp_proto::task::ChatMessage::new("user", "hi")])
        .await
        .map_err(|e| Stop::assertion(None, format!("chat failed: {e}")))?;
    let v = serde_json::to_value(&r.completion)
        .map_err(|e| Stop::assertion(None, format!("completion not serialisable: {e}")))?;
    ensure(
        v["choices"][0]["message"]["content"] == "hello from node-1",
        None,
        || format!("choices[0].message.content missing or wrong: {v}"),
    )?;
    ensure(
        v["choices"][0]["message"]["role"] == "assistant",
        None,
        || format!("choices[0].message.role: {v}"),
    )?;
    Ok(None)
}

async fn urn_zero_io() -> Outcome {
    let (dir, nodes, sleeper) = mesh(1).await?;
    let c = build(client(&dir, &sleeper))?;
    for bad in [
        "llm:chat:v1",
        "urn:iicp:intent:llm:chat",
        "urn:iicp:intent:LLM:Chat:v1",
        "urn:iicp:intent:llm:chat:v1+fast",
        "urn:iicp:intent::chat:v1",
        "",
    ] {
        let task = Task::new(bad, json!({"messages": [{"role": "user", "content": "x"}]}));
        match c.submit(task).await {
            Ok(_) => return Err(Stop::assertion(None, format!("{bad:?} was accepted"))),
            Err(e) => ensure(e.code() == &ErrorCode::InvalidIntent, None, || {
                format!("{bad:?}: code {}", e.code().as_str())
            })?,
        }
        let _ = c.discover(bad, Default::default()).await.is_ok();
    }
    let io_seen = dir.requests().len() + nodes[0].requests().len();
    ensure(io_seen == 0, None, || {
        format!("{io_seen} requests were made for invalid intents")
    })?;
    // a custom x.vendor intent is valid (PROTOCOL §2.2) and does reach the directory
    let task = Task::new(
        "urn:iicp:intent:x.acme:invoice-classify:v1",
        json!({"text": "x"}),
    );
    let _ = c.submit(task).await;
    ensure(dir.count("/v1/discover") == 1, None, || {
        "an x.vendor intent was refused locally".into()
    })?;
    Ok(None)
}

async fn timeout_cap() -> Outcome {
    match Client::builder()
        .timeout(Duration::from_millis(120_001))
        .build()
    {
        Ok(_) => {
            return Err(Stop::assertion(
                None,
                "timeout 120 001 ms accepted".to_owned(),
            ))
        }
        Err(e) => ensure(e.code() == &ErrorCode::InvalidConfig, None, || {
            format!("code {}", e.code().as_str())
        })?,
    }
    Client::builder()
        .timeout(Duration::from_millis(120_000))
        .build()
        .map_err(|e| Stop::assertion(None, format!("timeout 120 000 ms refused: {e}")))?;
    Ok(None)
}

async fn backoff_and_switch() -> Outcome {
    // 429 then 503 then success on the same node, with two back-offs
    let (dir, nodes, sleeper) = mesh(2).await?;
    nodes[0].script(Method::POST, "/v1/task", [transient(429), transient(503)]);
    let c = build(client(&dir, &sleeper))?;
    let done = c
        .submit(chat_task())
        .await
        .map_err(|e| Stop::assertion(None, format!("submit failed: {e}")))?;
    ensure(
        done.node_id == node_id(1) && counts(&nodes) == vec![3, 0] && sleeper.sleeps().len() == 2,
        None,
        || {
            format!(
                "429/503: node {} counts {:?} sleeps {:?}",
                done.node_id,
                counts(&nodes),
                sleeper.sleeps()
            )
        },
    )?;
    // capacity_exceeded (spec and SDK spellings) → next node at once, no back-off
    for busy in [
        json!({"error": {"code": "capacity_exceeded", "message": "busy", "qos_class": "best-effort", "retry_after_ms": 1000}}),
        json!({"error": {"code": "IICP-E021", "message": "capacity_exceeded"}}),
    ] {
        let (dir, nodes, sleeper) = mesh(2).await?;
        nodes[0].script(
            Method::POST,
            "/v1/task",
            [Canned::RetryAfter(429, busy.clone(), 1)],
        );
        let c = build(client(&dir, &sleeper))?;
        let done = c
            .submit(chat_task())
            .await
            .map_err(|e| Stop::assertion(None, format!("submit failed: {e}")))?;
        ensure(
            done.node_id == node_id(2)
                && counts(&nodes) == vec![1, 1]
                && sleeper.sleeps().is_empty(),
            None,
            || {
                format!(
                    "{}: node {} counts {:?} sleeps {:?}",
                    busy["error"]["code"],
                    done.node_id,
                    counts(&nodes),
                    sleeper.sleeps()
                )
            },
        )?;
    }
    // 502 is final: no retry, no other node
    let (dir, nodes, sleeper) = mesh(2).await?;
    nodes[0].script(
        Method::POST,
        "/v1/task",
        [Canned::Json(
            502,
            json!({"error": {"code": "backend_error", "message": "down"}}),
        )],
    );
    let c = build(client(&dir, &sleeper))?;
    let r = c.submit(chat_task()).await;
    ensure(r.is_err() && counts(&nodes) == vec![1, 0], None, || {
        format!(
            "502: {:?} counts {:?}",
            r.map(|d| d.node_id),
            counts(&nodes)
        )
    })?;
    Ok(None)
}

async fn tls_verified() -> Outcome {
    let server = tls::SelfSigned::start()
        .await
        .map_err(|e| Stop::request(None, format!("TLS fake: {e}")))?;
    let c = build(
        Client::builder()
            .directory_url(server.base())
            .allow_private_endpoints(true)
            .route_discovery(RouteDiscovery::Legacy),
    )?;
    tls_refused(&c, &server).await
}

/// Whether `c` refuses the self-signed `server` (a separate step so that a test can
/// show the case fails for a client that accepts any certificate).
///
/// # Errors
/// A [`Stop`] when the client trusted the server or failed for another reason.
pub async fn tls_refused(c: &Client, server: &tls::SelfSigned) -> Outcome {
    match c.discover(CHAT, Default::default()).await {
        Ok(_) => Err(Stop::assertion(
            None,
            "a directory with a self-signed certificate was trusted".to_owned(),
        )),
        Err(e) => {
            ensure(server.served() == 0, None, || {
                "a request was served over the untrusted connection".into()
            })?;
            let text = format!("{e} {e:?}").to_ascii_lowercase();
            ensure(
                text.contains("certificate")
                    || text.contains("tls")
                    || text.contains("unknownissuer"),
                None,
                || format!("failed for another reason than the certificate: {e}"),
            )?;
            Ok(None)
        }
    }
}

async fn traceparent() -> Outcome {
    let (dir, nodes, sleeper) = mesh(1).await?;
    nodes[0].script(Method::POST, "/v1/task", [transient(503)]);
    let c = build(client(&dir, &sleeper))?;
    c.submit(chat_task())
        .await
        .map_err(|e| Stop::assertion(None, format!("submit failed: {e}")))?;
    shared_traceparent(&dir, &nodes[0], 3)?;
    Ok(None)
}

/// Asserts that the discovery calls of `dir` and the task POSTs of `node` (`expected`
/// requests in all) carry one W3C traceparent trace id (PROTOCOL §2.3, SDK-06).
pub(crate) fn shared_traceparent(
    dir: &Scripted,
    node: &Scripted,
    expected: usize,
) -> Result<(), Stop> {
    let mut tps: Vec<String> = dir
        .hits("/v1/discover")
        .iter()
        .chain(node.hits("/v1/task").iter())
        .map(|r| r.header("traceparent").unwrap_or_default().to_owned())
        .collect();
    ensure(tps.len() == expected, None, || {
        format!("{} requests, expected {expected}", tps.len())
    })?;
    let first = tps.remove(0);
    let parts: Vec<&str> = first.split('-').collect();
    let well_formed = parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts[1..]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        && parts[1] != "0".repeat(32);
    ensure(well_formed, None, || {
        format!("traceparent {first:?} is not W3C")
    })?;
    let trace = parts[1].to_owned();
    ensure(
        tps.iter()
            .all(|t| t.split('-').nth(1) == Some(trace.as_str())),
        None,
        || format!("trace ids differ across discovery and attempts: {first} vs {tps:?}"),
    )
}

pub(crate) const SECRET: &str = "conformance-node-token-5f0c9a";

async fn token_never_leaks() -> Outcome {
    // Own thread and current-thread runtime, so that a thread-local subscriber sees
    // every log line of the client and the scripted servers.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(token_scenario()),
                Err(e) => Err(Stop::request(None, format!("runtime: {e}"))),
            }
        });
        let text = logs.text();
        let out = out.and_then(|(error_text, provider_leak)| {
            ensure(!text.is_empty(), None, || {
                "no log lines captured (the case proved nothing)".into()
            })?;
            ensure(!text.contains(SECRET), None, || {
                "node_token appears in the logs".into()
            })?;
            ensure(!error_text.contains(SECRET), None, || {
                "node_token appears in an error".into()
            })?;
            ensure(!provider_leak, None, || {
                "node_token was sent to a provider".into()
            })?;
            Ok(None)
        });
        let _ = tx.send(out);
    });
    rx.await
        .map_err(|_| Stop::request(None, "the scenario thread panicked".to_owned()))?
}

/// Returns the text of every error (Display and Debug) and whether any provider saw the
/// secret.
async fn token_scenario() -> Result<(String, bool), Stop> {
    let (dir, nodes, sleeper) = mesh(2).await?;
    nodes[0].set_default(
        Method::POST,
        "/v1/task",
        Canned::Json(
            401,
            json!({"error": {"code": "unauthorized", "message": "who are you"}}),
        ),
    );
    nodes[1].script(Method::POST, "/v1/task", [transient(503)]);
    let c = build(client(&dir, &sleeper).node_credentials(node_id(9), SECRET))?;
    let mut errors = String::new();
    for _ in 0..2 {
        if let Err(e) = c.submit(chat_task()).await {
            errors.push_str(&format!("{e} {e:?} "));
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                errors.push_str(&format!("{s} {s:?} "));
                src = s.source();
            }
        }
    }
    let leak = nodes
        .iter()
        .any(|n| n.requests().iter().any(|r| r.contains(SECRET)));
    ensure(nodes[0].count("/v1/task") >= 1, None, || {
        "no task reached the provider".into()
    })?;
    Ok((errors, leak))
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

async fn empty_discovery() -> Outcome {
    let (dir, _nodes, sleeper) = mesh(0).await?;
    let c = build(client(&dir, &sleeper))?;
    match c.submit(chat_task()).await {
        Ok(_) => Err(Stop::assertion(None, "succeeded without nodes".to_owned())),
        Err(e) => {
            ensure(e.code() == &ErrorCode::NoNodesAvailable, None, || {
                format!("code {}", e.code().as_str())
            })?;
            ensure(
                e.spec_code().is_some_and(|c| c.as_str() == "IICP-E033"),
                None,
                || {
                    format!(
                        "spec code {:?}",
                        e.spec_code().map(|c| c.as_str().to_owned())
                    )
                },
            )?;
            Ok(None)
        }
    }
}

pub mod tls {
    //! An HTTPS directory with a throw-away self-signed certificate (SDK-05-SPEC).
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use iicp_transport::http::server::{json, Router};
    use iicp_transport::listener::{Listener, ListenerConfig, Services};
    use iicp_transport::shutdown::{self, Trigger};

    /// The server; stops on drop.
    #[derive(Debug)]
    pub struct SelfSigned {
        addr: SocketAddr,
        served: Arc<AtomicUsize>,
        _trigger: Trigger,
    }

    impl SelfSigned {
        /// `https://127.0.0.1:PORT/api`.
        pub fn base(&self) -> String {
            format!("https://{}/api", self.addr)
        }
        /// Requests it answered.
        pub fn served(&self) -> usize {
            self.served.load(Ordering::SeqCst)
        }

        /// Starts it on 127.0.0.1 and an ephemeral port.
        ///
        /// # Errors
        /// When the certificate or the listener cannot be made.
        pub async fn start() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
            let certified = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ])?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(
                    vec![rustls::pki_types::CertificateDer::from(
                        certified.cert.der().to_vec(),
                    )],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(
                        certified.signing_key.serialize_der().into(),
                    ),
                )?;
            let served = Arc::new(AtomicUsize::new(0));
            let s = Arc::clone(&served);
            let router = Router::new()
                .route(http::Method::GET, "/v1/discover", move |_req, _p| {
                    s.fetch_add(1, Ordering::SeqCst);
                    async {
                        json(
                            http::StatusCode::OK,
                            &serde_json::json!({"nodes": [], "count": 0}),
                        )
                    }
                })
                .nest_alias("/api");
            let config = ListenerConfig {
                tls: Some(Arc::new(tls)),
                ..ListenerConfig::default()
            };
            let listener =
                Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await?;
            let addr = listener.local_addr()?;
            let (trigger, signal) = shutdown::channel();
            tokio::spawn(listener.serve(
                Services {
                    http: Some(Arc::new(router)),
                    native: None,
                },
                signal,
            ));
            Ok(Self {
                addr,
                served,
                _trigger: trigger,
            })
        }
    }
}
