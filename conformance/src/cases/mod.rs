//! The case library: every conformance case with its id, a one-line description, the
//! spec source it checks (PROTOCOL.md section and/or `conformance-test-suite.md` id) and
//! the target it needs. [`all`] is the catalogue, [`run`] runs a selection.
//!
//! Targets ([`Target`]):
//! * [`Target::NodeHttp`] — any node's HTTP endpoint ([`node_http`]);
//! * [`Target::NodeNative`] — any `iicp://host:port` native endpoint ([`native`]);
//! * [`Target::Directory`] — any directory base URL ([`directory`]);
//! * [`Target::Client`] — client-side behaviour: the runner provides scripted
//!   directories and nodes on 127.0.0.1:0 and drives our `iicp_client::Client` and
//!   `iicp_node::Node` against them ([`sdk`], [`directory`]'s misbehaving-directory cases),
//!   plus the offline framing vectors;
//! * [`Target::ClientCmd`] — an external client harness (`--client-cmd CMD`) against the
//!   same scripted peers ([`harness`]).
//!
//! Cases assert only what the spec requires (both readings where DESIGN.md §4.10 gives
//! two), so that they can run against any implementation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_transport::http::client::{HttpClient, HttpClientConfig, HttpClientError, HttpReply};
use serde_json::Value;

use crate::report::{CaseReport, Reason, Verdict};

pub mod directory;
pub mod harness;
pub mod native;
pub mod node_http;
pub mod sdk;

/// What a case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A node's HTTP endpoint (`--node-http URL`).
    NodeHttp,
    /// A native endpoint (`--node-native iicp://host:port`).
    NodeNative,
    /// A directory (`--directory URL`).
    Directory,
    /// The client harness: scripted servers in the runner, our client and node driven
    /// through their public API (`--client`).
    Client,
    /// An external client harness (`--client-cmd CMD`) run against scripted servers.
    ClientCmd,
}

impl Target {
    /// The report's `target_role`.
    pub fn role(self) -> &'static str {
        match self {
            Self::NodeHttp => "node_http",
            Self::NodeNative => "node_native",
            Self::Directory => "directory",
            Self::Client => "client",
            Self::ClientCmd => "client_cmd",
        }
    }
}

/// What the invocation provides to the cases.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The node's HTTP base URL (no trailing slash).
    pub node_http: Option<String>,
    /// The native endpoint as `host:port`.
    pub node_native: Option<String>,
    /// The directory base URL (the one the SDKs are given, e.g. `http://h:p/api`).
    pub directory: Option<String>,
    /// An intent the node serves.
    pub intent: String,
    /// A valid payload for [`Ctx::intent`].
    pub payload: Value,
    /// The node's task credential, when it runs in token mode (enables the auth cases).
    pub node_token: Option<String>,
    /// A payload that keeps the node's backend busy for seconds (enables the admission
    /// and deadline cases).
    pub slow_payload: Option<Value>,
    /// The node's native handshake/read timeouts are at most this (enables the native
    /// timer cases, which wait this long plus a margin).
    pub native_timeouts: Option<Duration>,
    /// A shell command that runs an external client harness (`--client-cmd`): it submits
    /// one task to `$IICP_CONFORMANCE_DIRECTORY` for `$IICP_CONFORMANCE_INTENT`, with
    /// `$IICP_CONFORMANCE_NODE_TOKEN` as its own node credential, and exits.
    pub client_cmd: Option<String>,
    /// Budget of one case.
    pub case_timeout: Duration,
    /// Budget of one request.
    pub request_timeout: Duration,
}

impl Default for Ctx {
    fn default() -> Self {
        Self {
            node_http: None,
            node_native: None,
            directory: None,
            intent: iicp_client::CHAT_INTENT.to_owned(),
            payload: serde_json::json!({"messages": [{"role": "user", "content": "conformance ping"}]}),
            node_token: None,
            slow_payload: None,
            native_timeouts: None,
            client_cmd: None,
            case_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(20),
        }
    }
}

impl Ctx {
    /// Whether the target a case needs was given.
    pub fn has(&self, target: Target) -> bool {
        match target {
            Target::NodeHttp => self.node_http.is_some(),
            Target::NodeNative => self.node_native.is_some(),
            Target::Directory => self.directory.is_some(),
            Target::Client => true,
            Target::ClientCmd => self.client_cmd.is_some(),
        }
    }

    /// A plain HTTP client with the request budget (no redirects).
    pub fn http(&self) -> Result<HttpClient, Stop> {
        let mut cfg = HttpClientConfig::default();
        cfg.request_timeout = self.request_timeout;
        HttpClient::new(cfg).map_err(|e| Stop::request(None, format!("HTTP client: {e}")))
    }
}

/// Why a case body stopped before passing.
#[derive(Debug, Clone)]
pub enum Stop {
    /// A failure.
    Fail {
        /// The reason class.
        reason: Reason,
        /// The last status seen.
        status: Option<u16>,
        /// Explanation.
        detail: String,
    },
    /// A missing prerequisite.
    Skip(String),
}

impl Stop {
    /// A request that could not be made.
    pub fn request(status: Option<u16>, detail: impl Into<String>) -> Self {
        Self::Fail {
            reason: Reason::RequestFailed,
            status,
            detail: detail.into(),
        }
    }
    /// A wrong status.
    pub fn status(status: Option<u16>, detail: impl Into<String>) -> Self {
        Self::Fail {
            reason: Reason::UnexpectedStatus,
            status,
            detail: detail.into(),
        }
    }
    /// A wrong answer.
    pub fn assertion(status: Option<u16>, detail: impl Into<String>) -> Self {
        Self::Fail {
            reason: Reason::AssertionFailed,
            status,
            detail: detail.into(),
        }
    }
}

impl From<HttpClientError> for Stop {
    fn from(e: HttpClientError) -> Self {
        Self::request(None, format!("request failed: {e}"))
    }
}

/// A case body's result: the last observed HTTP status on success.
pub type Outcome = Result<Option<u16>, Stop>;

/// A case body.
pub type CaseFn = fn(Arc<Ctx>) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One case of the library.
#[derive(Clone, Copy)]
pub struct Case {
    /// Stable id (the suite's id where one exists).
    pub id: &'static str,
    /// One-line description.
    pub title: &'static str,
    /// Where the requirement comes from.
    pub spec: &'static str,
    /// What it runs against.
    pub target: Target,
    /// The body.
    pub run: CaseFn,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("id", &self.id)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Declares a case: `case!(ID, Target, "title", "spec", |ctx| async move { ... })`.
macro_rules! case {
    ($id:expr, $target:expr, $title:expr, $spec:expr, |$ctx:ident| $body:expr) => {
        $crate::cases::Case {
            id: $id,
            title: $title,
            spec: $spec,
            target: $target,
            run: |$ctx| Box::pin($body),
        }
    };
}
pub(crate) use case;

/// Every case, in report order.
pub fn all() -> Vec<Case> {
    let mut v = node_http::cases();
    v.extend(native::cases());
    v.extend(directory::cases());
    v.extend(sdk::cases());
    v.extend(harness::cases());
    v
}

/// Runs the cases of `cases` whose target `ctx` provides, one after another, each
/// within [`Ctx::case_timeout`].
pub async fn run(cases: &[Case], ctx: Arc<Ctx>) -> Vec<CaseReport> {
    let mut out = Vec::new();
    for case in cases.iter().filter(|c| ctx.has(c.target)) {
        out.push(run_one(case, Arc::clone(&ctx)).await);
    }
    out
}

/// Runs one case.
pub async fn run_one(case: &Case, ctx: Arc<Ctx>) -> CaseReport {
    let started = Instant::now();
    let budget = ctx.case_timeout;
    let result = tokio::time::timeout(budget, (case.run)(ctx)).await;
    let (verdict, observed_status) = match result {
        Ok(Ok(status)) => (Verdict::Pass, status),
        Ok(Err(Stop::Skip(detail))) => (Verdict::Skip { detail }, None),
        Ok(Err(Stop::Fail {
            reason,
            status,
            detail,
        })) => (Verdict::Fail { reason, detail }, status),
        Err(_) => (
            Verdict::Fail {
                reason: Reason::RequestFailed,
                detail: format!("no verdict within {budget:?}"),
            },
            None,
        ),
    };
    CaseReport {
        id: case.id,
        title: case.title,
        verdict,
        observed_status,
        duration: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------------
// Helpers shared by the case modules
// ---------------------------------------------------------------------------------

/// Fails with `assertion` unless `cond`.
pub fn ensure(
    cond: bool,
    status: Option<u16>,
    detail: impl FnOnce() -> String,
) -> Result<(), Stop> {
    if cond {
        Ok(())
    } else {
        Err(Stop::assertion(status, detail()))
    }
}

/// The status of a reply.
pub fn status_of(r: &HttpReply) -> Option<u16> {
    Some(r.status.as_u16())
}

/// Fails with `unexpected_status` unless the reply's status is one of `want`.
pub fn expect_status(r: &HttpReply, want: &[u16]) -> Result<(), Stop> {
    let got = r.status.as_u16();
    if want.contains(&got) {
        Ok(())
    } else {
        Err(Stop::status(
            Some(got),
            format!("expected HTTP {want:?}, got {got}: {}", snippet(&r.body)),
        ))
    }
}

/// The reply body as JSON, or an assertion failure.
pub fn json_body(r: &HttpReply) -> Result<Value, Stop> {
    serde_json::from_slice(&r.body).map_err(|_| {
        Stop::assertion(
            status_of(r),
            format!("body is not JSON: {}", snippet(&r.body)),
        )
    })
}

/// Whether the reply says `Content-Type: application/json` (parameters allowed).
pub fn is_json_ct(r: &HttpReply) -> bool {
    r.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// The spec error body `{"error": {"code", "message"}}` (PROTOCOL.md §6.1): its code,
/// or an assertion failure naming what is wrong.
pub fn error_code(r: &HttpReply) -> Result<String, Stop> {
    let body = json_body(r)?;
    let code = body["error"]["code"].as_str().unwrap_or_default();
    ensure(!code.is_empty(), status_of(r), || {
        format!(
            "error body lacks error.code (§6.1 shape): {}",
            snippet(&r.body)
        )
    })?;
    ensure(body["error"]["message"].is_string(), status_of(r), || {
        format!("error body lacks error.message: {}", snippet(&r.body))
    })?;
    Ok(code.to_owned())
}

/// The first 160 characters of a body, for details.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(160).collect();
    if text.chars().count() > 160 {
        s.push('…');
    }
    s.replace(['\n', '\r'], " ")
}

/// A fresh UUID v4 task id.
pub fn task_id() -> String {
    iicp_proto::ids::TaskId::generate(&mut rand_core::OsRng).to_string()
}
