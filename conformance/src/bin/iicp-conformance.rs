//! `iicp-conformance`: runs the IICP conformance cases against any implementation by
//! URL and prints one line per case (`PASS|FAIL|SKIP  ID  description  (detail)`);
//! `--json FILE` writes an `iicp.conformance_result.v1`-shaped report.
//!
//! Exit status: 0 when every case that ran passed (skips allowed), 1 when one failed,
//! 2 on a usage error. See `docs/conformance.md`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use iicp_conformance::cases::{self, Ctx, Target};
use iicp_conformance::report::{self, ReportMeta};
use serde_json::Value;

/// Run IICP conformance cases against a node, a native endpoint, a directory, or the
/// built-in client harness.
#[derive(Debug, Parser)]
#[command(name = "iicp-conformance", version)]
struct Args {
    /// A node's HTTP base URL, e.g. http://127.0.0.1:9484.
    #[arg(long, value_name = "URL")]
    node_http: Option<String>,
    /// A native endpoint, iicp://host:port.
    #[arg(long, value_name = "URL")]
    node_native: Option<String>,
    /// A directory base URL as SDKs are given it, e.g. http://127.0.0.1:8080/api.
    #[arg(long, value_name = "URL")]
    directory: Option<String>,
    /// Run the client-side cases (SDK-01..06, misbehaving directory, framing vectors)
    /// against our iicp_client / iicp_node with scripted peers on 127.0.0.1.
    #[arg(long)]
    client: bool,
    /// Run the SDK cases against an external client harness: `sh -c CMD` submits one
    /// task to $IICP_CONFORMANCE_DIRECTORY for $IICP_CONFORMANCE_INTENT (see
    /// docs/conformance.md), e.g. "$PY conformance/peers/py_peer.py submit".
    #[arg(long, value_name = "CMD")]
    client_cmd: Option<String>,
    /// An intent the node serves.
    #[arg(long, value_name = "URN", default_value = iicp_client::CHAT_INTENT)]
    intent: String,
    /// A valid payload (JSON object) for --intent.
    #[arg(long, value_name = "JSON")]
    payload: Option<String>,
    /// The node's task credential (token auth mode): enables NODE-TASK-05 / SEC-AUTH-02.
    #[arg(long, value_name = "TOKEN", env = "IICP_CONFORMANCE_NODE_TOKEN")]
    node_token: Option<String>,
    /// A payload (JSON object) the node's backend takes several seconds on: enables
    /// QOS-ADMIT-01 and NODE-DEADLINE-01.
    #[arg(long, value_name = "JSON")]
    slow_payload: Option<String>,
    /// The native endpoint's handshake/read timeouts, in seconds: enables NATIVE-TMO-*.
    #[arg(long, value_name = "SECS")]
    native_timeouts: Option<u64>,
    /// Run only these case ids (comma-separated).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    only: Vec<String>,
    /// Budget of one case, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    case_timeout: u64,
    /// Budget of one request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    request_timeout: u64,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// List the cases (id, target, spec source) and exit.
    #[arg(long)]
    list: bool,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("iicp-conformance: {msg}");
    ExitCode::from(2)
}

fn object(flag: &str, text: Option<&str>) -> Result<Option<Value>, String> {
    text.map(|t| match serde_json::from_str::<Value>(t) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(format!("{flag} must be a JSON object")),
    })
    .transpose()
}

fn native_addr(url: &str) -> Result<String, String> {
    let rest = if let Some(r) = url.strip_prefix("iicp://") {
        r
    } else if url.starts_with("iicpsec://") {
        return Err("iicpsec:// (TLS) endpoints are not supported by the runner yet".into());
    } else if url.contains("://") {
        return Err(format!(
            "--node-native must be iicp://host:port, got {url:?}"
        ));
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(rest.to_owned())
        }
        _ => Err(format!(
            "--node-native must be iicp://host:port, got {url:?}"
        )),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let all = cases::all();
    if args.list {
        for c in &all {
            println!(
                "{:<22} {:<12} {}  [{}]",
                c.id,
                c.target.role(),
                c.title,
                c.spec
            );
        }
        return ExitCode::SUCCESS;
    }
    let mut ctx = Ctx {
        node_http: args.node_http.map(|u| u.trim_end_matches('/').to_owned()),
        directory: args.directory.map(|u| u.trim_end_matches('/').to_owned()),
        intent: args.intent,
        node_token: args.node_token.filter(|t| !t.is_empty()),
        native_timeouts: args.native_timeouts.map(Duration::from_secs),
        client_cmd: args.client_cmd.filter(|c| !c.trim().is_empty()),
        case_timeout: Duration::from_secs(args.case_timeout.max(1)),
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        ..Ctx::default()
    };
    if let Some(n) = &args.node_native {
        match native_addr(n) {
            Ok(a) => ctx.node_native = Some(a),
            Err(e) => return usage(&e),
        }
    }
    match object("--payload", args.payload.as_deref()) {
        Ok(Some(p)) => ctx.payload = p,
        Ok(None) => {}
        Err(e) => return usage(&e),
    }
    match object("--slow-payload", args.slow_payload.as_deref()) {
        Ok(p) => ctx.slow_payload = p,
        Err(e) => return usage(&e),
    }
    let mut targets: Vec<Target> = Vec::new();
    for (on, t) in [
        (ctx.node_http.is_some(), Target::NodeHttp),
        (ctx.node_native.is_some(), Target::NodeNative),
        (ctx.directory.is_some(), Target::Directory),
        (args.client, Target::Client),
        (ctx.client_cmd.is_some(), Target::ClientCmd),
    ] {
        if on {
            targets.push(t);
        }
    }
    if targets.is_empty() {
        return usage(
            "give at least one of --node-http, --node-native, --directory, --client (see --help)",
        );
    }
    let unknown: Vec<&String> = args
        .only
        .iter()
        .filter(|id| !all.iter().any(|c| c.id == id.as_str()))
        .collect();
    if !unknown.is_empty() {
        return usage(&format!("unknown case id(s) {unknown:?} (see --list)"));
    }
    let selected: Vec<cases::Case> = all
        .into_iter()
        .filter(|c| targets.contains(&c.target))
        .filter(|c| args.only.is_empty() || args.only.iter().any(|id| id == c.id))
        .collect();

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iicp-conformance: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let started_at = SystemTime::now();
    let ctx = Arc::new(ctx);
    let mut reports = Vec::new();
    rt.block_on(async {
        for case in &selected {
            let r = cases::run_one(case, Arc::clone(&ctx)).await;
            println!("{r}");
            reports.push(r);
        }
    });
    let finished_at = SystemTime::now();
    let s = report::summarize(&reports);
    println!(
        "{} case(s): {} passed, {} failed, {} skipped",
        s.total, s.passed, s.failed, s.skipped
    );
    if let Some(path) = &args.json {
        let role = if targets.len() == 1 {
            targets[0].role().to_owned()
        } else {
            "mixed".to_owned()
        };
        let meta = ReportMeta {
            profile: format!("iicp-rs-{}-v1", role.replace('_', "-")),
            target_role: role,
            catalogue: selected
                .iter()
                .map(|c| (c.id.to_owned(), c.spec.to_owned()))
                .collect(),
            started_at,
            finished_at,
        };
        let json = report::to_json(&meta, &reports);
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("iicp-conformance: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if s.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
