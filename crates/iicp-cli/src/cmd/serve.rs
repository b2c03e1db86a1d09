//! `serve`: run a provider node in front of a model server, registered with a directory
//! (SEED-SDK.md §2.2–§2.4). Configuration layers: saved node profile (`--node NAME`,
//! `~/.iicp/nodes/NAME.json`) → environment → flags, then the defaults. All
//! validation happens before any network I/O (exit 2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use iicp_backends::{BackendConfig, BackendKind};
use iicp_node::event::{EventKind, NodeEvent};
use iicp_node::operator::{Home, NodeAuth, NodeProfile, OperatorError, OperatorIdentity};
use iicp_node::run::Lifecycle;
use iicp_node::{BackendHandler, EchoModel, Node, ServeHandle, ServeOptions};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proto::secret::Secret;
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::shutdown;

use super::runstate::RunState;
use super::UsageError;

mod access;
mod nat;

pub(crate) use access::{check_token, generate_token, given_token};

/// The chat intent.
pub(crate) use iicp_proto::constants::CHAT_INTENT as CHAT;
/// The public mesh directory.
pub(crate) use iicp_proto::constants::DEFAULT_DIRECTORY_URL as DEFAULT_DIRECTORY;
use iicp_proto::constants::DEFAULT_PORT;
const PORT_TRIES: u16 = 64;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Saved node profile to load (~/.iicp/nodes/NAME.json, created by `init`).
    #[arg(long, env = "IICP_NODE_NAME", value_name = "NAME")]
    node: Option<String>,
    /// Model to serve (auto-selected when the backend lists exactly one).
    #[arg(long, env = "IICP_BACKEND_MODEL", value_name = "NAME")]
    model: Option<String>,
    /// Model server URL [default: http://localhost:11434; anthropic: https://api.anthropic.com].
    #[arg(long, env = "IICP_BACKEND_URL", value_name = "URL")]
    backend_url: Option<String>,
    /// Backend type: openai_compat, vllm, llamacpp, anthropic [default: openai_compat].
    #[arg(long, env = "IICP_BACKEND_TYPE", value_name = "TYPE")]
    backend_type: Option<String>,
    /// API key of the backend (Bearer; `x-api-key` for anthropic).
    #[arg(
        long,
        env = "IICP_BACKEND_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    backend_api_key: Option<String>,
    /// Externally reachable URL of this node (disables port auto-increment).
    #[arg(long, env = "IICP_PUBLIC_ENDPOINT", value_name = "URL")]
    public_endpoint: Option<String>,
    /// Directory base URL [default: https://iicp.network/api].
    #[arg(long, env = "IICP_DIRECTORY_URL", value_name = "URL")]
    directory_url: Option<String>,
    /// Heartbeat interval until the directory sets one, 100ms-60s (e.g. 30s, 500ms) [default: 30s].
    #[arg(long, env = "IICP_HEARTBEAT_INTERVAL", value_name = "DURATION", value_parser = heartbeat_interval)]
    heartbeat_interval: Option<Duration>,
    /// First retry delay after a failed directory call, doubling to 60s; 10ms-60s [default: 1s].
    #[arg(long, env = "IICP_DIRECTORY_BACKOFF_BASE", value_name = "DURATION", value_parser = backoff_base)]
    directory_backoff_base: Option<Duration>,
    /// Region (registered as `unknown` when empty).
    #[arg(long, env = "IICP_REGION")]
    region: Option<String>,
    /// Intent served [default: urn:iicp:intent:llm:chat:v1].
    #[arg(long, env = "IICP_INTENT", value_name = "URN")]
    intent: Option<String>,
    /// Concurrent tasks, 1-256 [default: 4].
    #[arg(long, env = "IICP_MAX_CONCURRENT", value_name = "N")]
    max_concurrent: Option<u32>,
    /// Node id [default: the saved profile's, else a random UUID].
    #[arg(long, env = "IICP_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
    /// Port; the first free one of the next 64 is taken unless --public-endpoint is set [default: 9484].
    #[arg(long, env = "IICP_PORT", value_name = "N")]
    port: Option<u16>,
    /// Address to bind [default: :: (dual stack)].
    #[arg(long, env = "IICP_HOST", value_name = "HOST")]
    host: Option<String>,
    /// Serve without registering with a directory (no heartbeat).
    #[arg(long, env = "IICP_SKIP_REGISTRATION", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    skip_registration: bool,
    /// Detect NAT reachability at startup (the default).
    #[arg(long, env = "IICP_AUTO_DETECT_NAT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    auto_detect_nat: bool,
    /// Do not detect NAT reachability (overrides --auto-detect-nat and the environment).
    #[arg(long)]
    no_auto_detect_nat: bool,
    /// Offer relay service to nodes behind CGNAT (advertised at registration).
    #[arg(long, env = "IICP_RELAY_CAPABLE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    relay_capable: bool,
    /// TCP port of the relay accept server [default: 9485].
    #[arg(long, env = "IICP_RELAY_ACCEPT_PORT", value_name = "N")]
    relay_accept_port: Option<u16>,
    /// Relay host:port to reach this node through (disables relay auto-election).
    #[arg(long, env = "IICP_RELAY_WORKER_ENDPOINT", value_name = "HOST:PORT")]
    relay_worker_endpoint: Option<String>,
    /// How often the route is checked and planned again when it broke or could be better (a relay that appeared, a lost mapping), e.g. 5m; 0 never [default: 5m].
    #[arg(long, env = "IICP_REPLAN_INTERVAL", value_name = "DURATION", value_parser = replan_interval)]
    replan_interval: Option<Duration>,
    /// Do not try UPnP port mapping or IPv6 pinholes during NAT detection.
    #[arg(long, env = "IICP_SKIP_UPNP", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    skip_upnp: bool,
    /// Do not serve the native IICP transport on the HTTP port.
    #[arg(long, env = "IICP_DISABLE_NATIVE_TRANSPORT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    no_native: bool,
    /// Take over the single-instance lock (~/.iicp/run/<node_id>.pid) of a running process.
    #[arg(long, env = "IICP_FORCE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    force: bool,
    /// Also log to DIR/<node_id>.log, and lifecycle events to DIR/events.jsonl.
    #[arg(long, env = "IICP_LOG_DIR", value_name = "DIR")]
    log_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    access: access::AccessArgs,
}

/// What answers the tasks.
pub(crate) enum Backend {
    /// The built-in deterministic echo model (testing and demos).
    Echo,
    /// A model server.
    Server {
        kind: BackendKind,
        base_url: String,
        api_key: Option<Secret>,
    },
}

impl Backend {
    /// Parses `--backend-type` / `--backend-url` / `--backend-api-key` (usage errors).
    /// The hidden type `echo` is the built-in echo model, for tests and demos.
    pub(crate) fn from_flags(
        backend_type: Option<&str>,
        backend_url: Option<&str>,
        api_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let ty = backend_type.filter(|t| !t.is_empty());
        if ty.is_some_and(|t| t.eq_ignore_ascii_case("echo")) {
            return Ok(Backend::Echo);
        }
        // one reading of type and URL for every command (iicp_backends)
        let (kind, base_url) = iicp_backends::resolve_endpoint(ty, backend_url)
            .map_err(|e| UsageError(format!("--backend-type/--backend-url: {e}")))?;
        Ok(Backend::Server {
            kind,
            base_url,
            api_key: api_key.filter(|k| !k.is_empty()).map(Secret::new),
        })
    }

    /// `echo (built-in)` or `<type> <url>`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Backend::Echo => "echo (built-in test model)".to_owned(),
            Backend::Server { kind, base_url, .. } => format!("{kind} {base_url}"),
        }
    }

    /// The models the backend lists (`["echo"]` for the echo model).
    pub(crate) async fn models(&self, http: &HttpClient) -> Result<Vec<String>, String> {
        match self {
            Backend::Echo => Ok(vec!["echo".to_owned()]),
            Backend::Server {
                base_url, api_key, ..
            } => iicp_backends::list_models(http, base_url, api_key.as_ref())
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

fn replan_interval(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration_within(text, Duration::from_secs(1), Duration::from_secs(24 * 3600))
}

/// A duration of whole milliseconds, seconds or minutes (`500ms`, `30s`, `2m`; a bare
/// number is seconds) within `min..=max`.
fn duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{text:?}: use ms, s or m")),
    };
    if d < min || d > max {
        return Err(format!(
            "{text:?} is out of range ({}-{})",
            fmt_duration(min),
            fmt_duration(max)
        ));
    }
    Ok(d)
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn heartbeat_interval(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_millis(100), Duration::from_secs(60))
}

fn backoff_base(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_millis(10), Duration::from_secs(60))
}

/// An HTTP client for short probes (model lists, directory health).
pub(crate) fn probe_client() -> anyhow::Result<HttpClient> {
    let mut cfg = HttpClientConfig::default();
    cfg.request_timeout = Duration::from_secs(5);
    HttpClient::new(cfg).context("creating the HTTP client")
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The configuration root, as a usage error when it cannot be found.
pub(crate) fn home() -> anyhow::Result<Home> {
    Home::from_env().map_err(|e| UsageError(e.to_string()).into())
}

/// File problems the user must fix (permissions, bad JSON, bad names) are usage errors.
pub(crate) fn operator_error(e: OperatorError) -> anyhow::Error {
    match e {
        OperatorError::Read { .. }
        | OperatorError::Write { .. }
        | OperatorError::Directory { .. }
        | OperatorError::AtRest(_) => anyhow::Error::new(e),
        other => UsageError(other.to_string()).into(),
    }
}

fn parse_host(host: &str) -> anyhow::Result<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h {
        "" | "0.0.0.0" => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        "localhost" => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        _ => h
            .parse()
            .map_err(|_| UsageError(format!("--host must be an IP address, got {host:?}")).into()),
    }
}

/// The first port from `start` (up to 64) that `host` can bind; `start` when none.
fn first_free_port(host: IpAddr, start: u16) -> u16 {
    for p in start..start.saturating_add(PORT_TRIES) {
        if std::net::TcpListener::bind(SocketAddr::new(host, p)).is_ok() {
            return p;
        }
    }
    start
}

/// The endpoint advertised when no public endpoint is given.
fn local_endpoint(host: IpAddr, port: u16) -> String {
    match host {
        IpAddr::V6(v6) if v6 == Ipv6Addr::LOCALHOST => format!("http://[::1]:{port}"),
        h if h.is_unspecified() || h.is_loopback() => format!("http://127.0.0.1:{port}"),
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    }
}

/// The node's rule for LAN-only endpoints (one rule for node and CLI).
fn is_private_url(url: &str) -> bool {
    iicp_node::is_private_endpoint(url)
}

/// The operator identity for serving: `None` (anonymous, with a one-time notice) when
/// there is no key-backed identity. Never prompts; an encrypted key needs
/// `IICP_OPERATOR_PASSPHRASE`.
fn operator_identity(home: Option<&Home>) -> anyhow::Result<Option<OperatorIdentity>> {
    let file = match home
        .map(Home::load_operator)
        .transpose()
        .map_err(operator_error)?
    {
        Some(Some(f)) if f.is_key_backed() => f,
        _ => {
            anonymous_notice(home);
            return Ok(None);
        }
    };
    let pass = std::env::var(crate::prompt::PASSPHRASE_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .map(zeroize::Zeroizing::new);
    match file.unlock(pass.as_deref().map(String::as_str)) {
        Ok(identity) => Ok(Some(identity)),
        Err(OperatorError::PassphraseRequired) => Err(UsageError(format!(
            "the operator secret is encrypted: set {} (serve never prompts)",
            crate::prompt::PASSPHRASE_ENV
        ))
        .into()),
        Err(e) => Err(operator_error(e)),
    }
}

/// Printed once per configuration root (a marker file remembers it); later starts log a
/// single line.
fn anonymous_notice(home: Option<&Home>) {
    let marker = home.map(|h| h.root().join("state").join("anonymous-notice-shown"));
    if marker.as_ref().is_some_and(|m| m.exists()) {
        tracing::info!("no operator identity: registering anonymously (run `iicp init`)");
        return;
    }
    eprintln!(
        "NOTICE: no operator identity - this node registers anonymously.\n        \
         Run `iicp init` to create an operator identity (one key for all your nodes),\n        \
         then restart; the directory will show your nodes under your display name."
    );
    if let Some(m) = marker {
        let _ = iicp_node::operator::write_private_atomic(&m, b"1\n");
    }
}

struct Resolved {
    backend: Backend,
    model: Option<String>,
    directory: Option<String>,
    region: String,
    intent: String,
    max_concurrent: u32,
    node_id: String,
    port: u16,
    host: IpAddr,
    public_endpoint: Option<String>,
    access: access::Access,
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// flag/env > saved profile > default, validated.
fn resolve(
    args: &Args,
    profile: Option<&NodeProfile>,
    saved_auth: Option<&NodeAuth>,
) -> anyhow::Result<Resolved> {
    let p = |f: fn(&NodeProfile) -> &str| profile.and_then(|p| nonempty(Some(f(p))));
    let backend = Backend::from_flags(
        args.backend_type.as_deref(),
        nonempty(args.backend_url.as_deref())
            .or_else(|| p(|p| &p.backend_url))
            .as_deref(),
        args.backend_api_key.as_deref(),
    )?;
    let directory = if args.skip_registration {
        None
    } else {
        let d = nonempty(args.directory_url.as_deref())
            .or_else(|| p(|p| &p.directory_url))
            .unwrap_or_else(|| DEFAULT_DIRECTORY.to_owned());
        if !(d.starts_with("http://") || d.starts_with("https://")) {
            return Err(
                UsageError(format!("--directory-url must be an http(s) URL, got {d:?}")).into(),
            );
        }
        Some(d.trim_end_matches('/').to_owned())
    };
    let public_endpoint =
        nonempty(args.public_endpoint.as_deref()).or_else(|| p(|p| &p.public_endpoint));
    if let Some(e) = &public_endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(UsageError(format!(
                "--public-endpoint must be an http(s) URL, got {e:?}"
            ))
            .into());
        }
    }
    let intent = nonempty(args.intent.as_deref())
        .or_else(|| p(|p| &p.intent))
        .unwrap_or_else(|| CHAT.to_owned());
    iicp_proto::intent::Intent::new(intent.as_str())
        .map_err(|e| UsageError(format!("--intent {intent:?}: {e}")))?;
    let max_concurrent = args
        .max_concurrent
        .or_else(|| profile.map(|p| p.max_concurrent))
        .unwrap_or(4);
    if !(1..=256).contains(&max_concurrent) {
        return Err(UsageError("--max-concurrent must be 1-256".into()).into());
    }
    let region = nonempty(args.region.as_deref())
        .or_else(|| p(|p| &p.region))
        .unwrap_or_else(|| "unknown".to_owned());
    if region.chars().count() > 64 {
        return Err(UsageError("--region must be at most 64 characters".into()).into());
    }
    let node_id: String = nonempty(args.node_id.as_deref())
        .or_else(|| p(|p| &p.node_id))
        .unwrap_or_else(|| iicp_proto::ids::uuid_v4(&mut rand_core_rng()).to_string())
        .chars()
        .take(36)
        .collect();
    let host_text = nonempty(args.host.as_deref())
        .or_else(|| p(|p| &p.host))
        .unwrap_or_else(|| "::".to_owned());
    let host = parse_host(&host_text)?;
    let port = args
        .port
        .or_else(|| profile.map(|p| p.port))
        .unwrap_or(DEFAULT_PORT);
    if args.relay_capable && args.relay_accept_port.unwrap_or(9485) == port && port != 0 {
        return Err(UsageError(format!(
            "--relay-accept-port {port} collides with the node port; choose another"
        ))
        .into());
    }
    if let Some(w) = &args.relay_worker_endpoint {
        if w.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(UsageError(format!(
                "--relay-worker-endpoint must be host:port, got {w:?}"
            ))
            .into());
        }
    }
    let access = access::Access::resolve(&args.access, saved_auth, directory.is_some())?;
    Ok(Resolved {
        backend,
        model: nonempty(args.model.as_deref()).or_else(|| p(|p| &p.model)),
        directory,
        region,
        intent,
        max_concurrent,
        node_id,
        port,
        host,
        public_endpoint,
        access,
    })
}

fn rand_core_rng() -> rand_core::OsRng {
    rand_core::OsRng
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    // 1. configuration (no network I/O before it is valid)
    let home = match &args.node {
        Some(_) => Some(home()?),
        None => Home::from_env().ok(),
    };
    let profile = match (&args.node, &home) {
        (Some(name), Some(h)) => {
            Some(h.load_node(name).map_err(operator_error)?.ok_or_else(|| {
                UsageError(format!(
                    "no saved node {name:?} (expected {}); run `iicp init`",
                    h.node_path(name)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ))
            })?)
        }
        _ => None,
    };
    let saved_auth = access::load(home.as_ref(), args.node.as_deref())?;
    let cfg = resolve(&args, profile.as_ref(), saved_auth.as_ref())?;
    let mut run = RunState::start(
        home.as_ref(),
        &cfg.node_id,
        args.force,
        args.log_dir.as_deref(),
    )?;
    let operator = operator_identity(home.as_ref())?;
    let http = probe_client()?;

    // 2. model auto-selection (SEED-SDK §2.3 step 5), public names for GGUF paths,
    //    the context window as max_tokens (iicp_backends::plan_models)
    let plan = match &cfg.backend {
        Backend::Echo => iicp_backends::ModelPlan {
            model: cfg.model.clone().unwrap_or_else(|| "echo".to_owned()),
            models: vec![cfg.model.clone().unwrap_or_else(|| "echo".to_owned())],
            aliases: Vec::new(),
            context_length: None,
        },
        Backend::Server {
            base_url, api_key, ..
        } => iicp_backends::plan_models(&http, base_url, api_key.as_ref(), cfg.model.as_deref())
            .await
            .map_err(|e| UsageError(e.to_string()))?,
    };
    if plan.models.len() > 1 {
        tracing::info!("advertising {} additional model(s)", plan.models.len() - 1);
    }
    for (public, _) in &plan.aliases {
        tracing::info!(model = %public, "the backend lists this model by its file path; advertised by its file name");
    }
    let model = plan.model.clone();
    let models = plan.models.clone();
    if let Backend::Server {
        kind: BackendKind::OpenAiCompat,
        base_url,
        api_key,
    } = &cfg.backend
    {
        let flavour = iicp_backends::detect_flavour(&http, base_url, api_key.as_ref()).await;
        eprintln!("backend detected: {}", flavour.as_str());
    }

    // 3. port auto-increment (SEED-SDK §2.4)
    let port = if cfg.public_endpoint.is_none() && cfg.port != 0 {
        let free = first_free_port(cfg.host, cfg.port);
        if free != cfg.port {
            tracing::warn!(
                "port {} in use — auto-incremented to first free port {free}.",
                cfg.port
            );
        }
        free
    } else {
        cfg.port
    };
    let endpoint = cfg
        .public_endpoint
        .clone()
        .unwrap_or_else(|| local_endpoint(cfg.host, port));

    // 4. NAT: the node plans its reachability at start (iicp_node::reach)
    let reach = nat::reach_config(
        &args,
        cfg.public_endpoint.as_deref(),
        cfg.directory.as_deref(),
    );

    // 5. the node
    let mut register = cfg.directory.is_some();
    if register && reach.is_none() && is_private_url(&endpoint) {
        let dir_private = cfg.directory.as_deref().is_some_and(is_private_url);
        if !dir_private {
            tracing::warn!(
                "endpoint {endpoint} is private and no relay is configured: registration with {} skipped (pass --public-endpoint)",
                cfg.directory.as_deref().unwrap_or_default()
            );
            register = false;
        }
    }
    if !register {
        cfg.access.warn_without_directory();
    }
    let mut builder = Node::builder()
        .node_id(cfg.node_id.clone())
        .endpoint(endpoint.clone())
        .intent(cfg.intent.clone())
        .models(models.clone())
        .region(cfg.region.clone())
        .max_concurrent(cfg.max_concurrent)
        .native(!args.no_native)
        .relay_capable(args.relay_capable)
        .backend(match &cfg.backend {
            Backend::Echo => "echo".to_owned(),
            Backend::Server { kind, .. } => kind.to_string(),
        });
    if let Some(p) = args.relay_accept_port {
        builder = builder.relay_accept_port(p);
    }
    if let Some(ctx) = plan.context_length {
        builder = builder.max_tokens(ctx);
    }
    builder = cfg.access.apply(builder);
    if let (true, Some(d)) = (register, &cfg.directory) {
        builder = builder.directory_url(d.clone());
    }
    if let Some(d) = args.heartbeat_interval {
        builder = builder.heartbeat_interval(d);
    }
    if let Some(d) = args.directory_backoff_base {
        builder = builder.directory_backoff_base(d);
    }
    if let Some(op) = &operator {
        builder = builder.operator(op.clone());
    }
    // the CX key persists with a saved profile
    let persist = match (&args.node, &home) {
        (Some(_), Some(h)) => Some(h),
        _ => None,
    };
    if let Some(h) = persist {
        let key = match h.load_cx_key(&cfg.node_id).map_err(operator_error)? {
            Some(k) => k,
            None => {
                let k = CxKeyPair::generate(&mut rand_core_rng());
                h.save_cx_key(&cfg.node_id, &k).map_err(operator_error)?;
                k
            }
        };
        builder = builder.cx_key(key);
    }
    let node = builder
        .build()
        .map_err(|e| UsageError(format!("invalid node configuration: {e}")))?;
    run.watch(&node, home.as_ref(), args.node.as_deref());
    // before serving: the first registration result must not be missed
    let mut events = node.subscribe();
    let saved_token = profile.as_ref().and_then(|p| p.node_token.clone());
    if register {
        if let Some(t) = saved_token.clone() {
            node.set_node_token(t); // ownership proof for re-registration (§8.2.4)
        }
    }
    let mut options = ServeOptions::new(cfg.host, port).with_register(register);
    if let Some(r) = reach {
        options = options.with_reach(r);
    }
    let handle = match &cfg.backend {
        Backend::Echo => node.serve(EchoModel::default(), options).await,
        Backend::Server {
            kind,
            base_url,
            api_key,
        } => {
            let mut bc = BackendConfig::new(*kind);
            bc.base_url = Some(base_url.clone());
            bc.model = Some(model.clone());
            bc.api_key = api_key.clone();
            bc.model_aliases = plan.aliases.clone();
            let backend = iicp_backends::build(bc).map_err(|e| UsageError(e.to_string()))?;
            node.serve(BackendHandler::new(backend), options).await
        }
    }
    .with_context(|| format!("serving on port {port}"))?;
    run.serving(
        home.as_ref(),
        &cfg.node_id,
        args.node.as_deref(),
        handle.local_addr(),
    );

    // a signal from here on drains, deregisters and cleans up (also during step 6)
    let (trigger, mut stop) = shutdown::channel();
    crate::signal::on_terminate(trigger);

    // 6. the summary at once, then the registration result when it comes: with a saved
    //    token, register now (the background loop would only heartbeat); otherwise the
    //    background loop registers at once.
    let register = register && nat::registers(&handle);
    let tier = nat::tier_line(&handle, cfg.public_endpoint.is_some());
    let endpoint = nat::advertised(&handle, &endpoint);
    summary(
        &handle,
        &cfg,
        &endpoint,
        &tier,
        &models,
        operator.as_ref(),
        !args.no_native && nat::native_reachable(&handle),
    );
    run.tick(&node, Lifecycle::Running);
    let mut shown = Shown::default();
    let first = if register {
        let wait = async {
            if saved_token.is_some() {
                register_now(&node).await;
            }
            first_result(&mut events, FIRST_RESULT_WITHIN).await
        };
        tokio::select! {
            r = wait => r,
            () = stop.fired() => None,
        }
    } else {
        None
    };
    let dir = match (&cfg.directory, register, &first) {
        (None, _, _) => "none (--skip-registration)".to_owned(),
        (Some(d), false, _) => format!("{d} (registration skipped)"),
        (Some(d), true, Some(ev)) => format!("{d} {}", shown.first(ev)),
        (Some(d), true, None) => format!("{d} (registering in the background)"),
    };
    println!("  directory  {dir}");
    println!(
        "serving {} on {} (max_concurrent={})",
        cfg.intent,
        handle.local_addr(),
        cfg.max_concurrent
    );
    nat::print_guidance(&handle);

    // 7. report the directory's answers as they change, and persist the profile's node
    //    token when it changes, until a signal arrives
    let mut saved = saved_token;
    loop {
        if let (Some(h), Some(p)) = (persist, &profile) {
            let now = node.node_token();
            if now != saved {
                save_token(h, p, &cfg.node_id, now.clone());
                saved = now;
            }
        }
        run.tick(&node, Lifecycle::Running);
        tokio::select! {
            _ = stop.fired() => break,
            ev = events.recv(), if register || handle.reachability().is_some() => {
                match ev {
                    Ok(ev) => shown.later(&ev),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    run.tick(&node, Lifecycle::Stopping);
    let stopped = handle.stop().await;
    if stopped.deregistered {
        println!("deregistered {}", cfg.node_id);
        if let (Some(h), Some(p)) = (persist, &profile) {
            save_token(h, p, &cfg.node_id, None);
        }
    }
    run.finish().await;
    println!("stopped");
    Ok(())
}

fn save_token(home: &Home, profile: &NodeProfile, node_id: &str, token: Option<Secret>) {
    let mut p = profile.clone();
    p.node_id = node_id.to_owned();
    p.node_token = token;
    if let Err(e) = home.save_node(&p) {
        tracing::warn!(error = %e, "could not save the node profile");
    }
}

/// Refreshes the registration at start with the saved token as ownership proof. On
/// failure the node's background loop takes over: it heartbeats with the saved token and
/// registers again (sending it as `current_node_token`) when the directory lost the node.
async fn register_now(node: &Node) {
    if let Err(e) = node.register().await {
        tracing::warn!(error = %e, "registration failed; retrying in the background");
    }
}

/// How long the summary's directory line waits for the first registration result: a
/// directory call times out after 5 s, so a result comes well within this.
const FIRST_RESULT_WITHIN: Duration = Duration::from_secs(15);

/// The first registration result (`register_ok` or `register_fail`), or `None` when
/// none came within `within`.
async fn first_result(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    within: Duration,
) -> Option<NodeEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ev)) => {
                if matches!(
                    ev.kind,
                    EventKind::Registered { .. } | EventKind::RegisterFailed { .. }
                ) {
                    return Some(ev);
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => {
                tracing::warn!("not registered yet; retrying in the background");
                return None;
            }
        }
    }
}

/// `HTTP 403 IICP-E050: <message>` from a failed registration, or the error when the
/// directory did not answer.
fn failure_text(
    status: Option<u16>,
    code: Option<&str>,
    message: Option<&str>,
    error: &str,
) -> String {
    let Some(status) = status else {
        return error.to_owned();
    };
    let mut out = format!("HTTP {status}");
    if let Some(c) = code {
        out.push(' ');
        out.push_str(c);
    }
    if let Some(m) = message {
        out.push_str(": ");
        out.push_str(m);
    }
    out
}

/// What `serve` last printed about the directory, so each change is printed once.
#[derive(Default)]
struct Shown {
    last: Option<String>,
}

impl Shown {
    /// The summary's directory state for the first registration result:
    /// `(registered) node <id>` or `(registration refused: HTTP 403 IICP-E050: …)`.
    fn first(&mut self, ev: &NodeEvent) -> String {
        match &ev.kind {
            EventKind::RegisterFailed {
                status,
                code,
                message,
                error,
                ..
            } => {
                let text = failure_text(*status, code.as_deref(), message.as_deref(), error);
                self.last = Some(text.clone());
                let what = if status.is_some_and(|s| (400..500).contains(&s)) {
                    "registration refused"
                } else {
                    "registration failed"
                };
                format!("({what}: {text}; retrying in the background)")
            }
            _ => {
                self.last = Some(String::new());
                match &ev.node_id {
                    Some(id) => format!("(registered) node {id}"),
                    None => "(registered)".to_owned(),
                }
            }
        }
    }

    /// Prints a later directory event when it says something new.
    fn later(&mut self, ev: &NodeEvent) {
        let line = match &ev.kind {
            EventKind::Registered { directory_url, .. } => {
                if self.last.as_deref() == Some("") {
                    return; // a re-registration while registered: the log has it
                }
                self.last = Some(String::new());
                format!(
                    "registered with {} as node {}",
                    directory_url.as_deref().unwrap_or("the directory"),
                    ev.node_id.as_deref().unwrap_or("?")
                )
            }
            EventKind::RegisterFailed {
                status,
                code,
                message,
                error,
                ..
            } => {
                let text = failure_text(*status, code.as_deref(), message.as_deref(), error);
                if self.last.as_ref() == Some(&text) {
                    return;
                }
                self.last = Some(text.clone());
                let what = if status.is_some_and(|s| (400..500).contains(&s)) {
                    "refused"
                } else {
                    "failed"
                };
                format!("registration {what}: {text} (retrying in the background)")
            }
            EventKind::DirectoryUnavailable {
                failures,
                retry_in,
                error,
                ..
            } => {
                format!(
                    "directory unavailable: {failures} calls failed in a row (last: {error}); no directory calls for {}s, still serving",
                    retry_in.as_secs()
                )
            }
            EventKind::DirectoryRecovered { after_failures, .. } => {
                format!("directory reachable again after {after_failures} failed calls")
            }
            EventKind::ReachabilityChanged {
                tier,
                endpoint,
                registers,
            } => format!(
                "reachability changed: tier {tier}, endpoint {}{}",
                endpoint.as_deref().unwrap_or("none"),
                if *registers {
                    ""
                } else {
                    " (not registered: no public route)"
                }
            ),
            _ => return,
        };
        println!("{line}");
    }
}

fn summary(
    handle: &ServeHandle,
    cfg: &Resolved,
    endpoint: &str,
    tier: &str,
    models: &[String],
    operator: Option<&OperatorIdentity>,
    native: bool,
) {
    let node = handle.node();
    let native_ep = if native {
        iicp_transport::native::NativeEndpoint::from_http(endpoint)
            .map(|e| format!(" (native {e})"))
            .unwrap_or_default()
    } else {
        String::new()
    };
    println!(
        "IICP node {}",
        node.node_id().unwrap_or_else(|| cfg.node_id.clone())
    );
    println!("  listening  {}", handle.local_addr());
    println!("  endpoint   {endpoint}{native_ep}");
    println!("  tier       {tier}");
    println!("  backend    {}", cfg.backend.describe());
    println!("  models     {}", models.join(", "));
    println!("  intent     {}", cfg.intent);
    println!("  auth       {}", cfg.access.describe());
    println!("  rate limit {}", cfg.access.describe_limit());
    match operator {
        Some(op) => {
            let name = if op.display_name().is_empty() {
                "(no display name)".to_owned()
            } else {
                format!("{:?}", op.display_name())
            };
            let id = op.operator_id();
            println!("  operator   {name} {}…", id.get(..12).unwrap_or(&id));
        }
        None => println!("  operator   anonymous"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_defaults() {
        let Backend::Server { kind, base_url, .. } =
            Backend::from_flags(Some("anthropic"), None, None).expect("ok")
        else {
            panic!("server")
        };
        assert_eq!(kind, BackendKind::Anthropic);
        assert_eq!(base_url, "https://api.anthropic.com/v1");
        let Backend::Server { base_url, .. } =
            Backend::from_flags(None, Some("http://h:11434/"), None).expect("ok")
        else {
            panic!("server")
        };
        assert_eq!(base_url, "http://h:11434/v1");
        assert!(matches!(
            Backend::from_flags(Some("echo"), None, None),
            Ok(Backend::Echo)
        ));
        assert!(Backend::from_flags(Some("bogus"), None, None).is_err());
        assert!(Backend::from_flags(None, Some("ftp://x"), None).is_err());
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(heartbeat_interval("500ms"), Ok(ms(500)));
        assert_eq!(heartbeat_interval(" 30s "), Ok(ms(30_000)));
        assert_eq!(heartbeat_interval("45"), Ok(ms(45_000)));
        assert_eq!(heartbeat_interval("1m"), Ok(ms(60_000)));
        assert_eq!(backoff_base("10ms"), Ok(ms(10)));
        for bad in ["99ms", "2m", "-1s", "1.5s", "s", "", "10 parsecs"] {
            assert!(heartbeat_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            backoff_base("9ms"),
            Err("\"9ms\" is out of range (10ms-60s)".to_owned())
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            local_endpoint(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9484),
            "http://127.0.0.1:9484"
        );
        assert_eq!(
            local_endpoint("10.0.0.2".parse().expect("ip"), 1),
            "http://10.0.0.2:1"
        );
        assert!(is_private_url("http://127.0.0.1:9484"));
        assert!(is_private_url("http://[::1]:9484"));
        assert!(!is_private_url("https://node.example.com"));
    }
}
