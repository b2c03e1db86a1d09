//! `healthcheck --node NAME [--json] [--ready]`: reads the runtime-health snapshot that
//! `serve --node NAME` rewrites every 5 s (`~/.iicp/run/NAME/health-v1.json`, the
//! Python SDK's schema) — SEED-SDK.md §2.5. Exit 0 live (with `--ready`: ready, which
//! includes being registered when the node registers), 1 stale, gone, not live, not
//! ready, or the node's recovery state is `restart_recommended` (it cannot recover by
//! itself: a supervisor should restart it), 2 no usable snapshot. The recovery state
//! (`iicp_node::recovery`) is printed with its action, reason and since when. No
//! network I/O, so it suits a Docker `HEALTHCHECK`.

use iicp_node::run::{read_health, HealthError, Verdict};

use super::common::home;
use super::{Exit, UsageError};
use crate::{EXIT_FAILURE, EXIT_USAGE};

/// Arguments of `healthcheck`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Saved node name (the one given to `serve --node`).
    #[arg(long, env = "IICP_NODE_NAME", value_name = "NAME")]
    node: String,
    /// Print the snapshot (JSON).
    #[arg(long)]
    json: bool,
    /// Check readiness (serving, capacity free, registered) instead of liveness.
    #[arg(long)]
    ready: bool,
}

/// Exit 0 healthy; 1 unhealthy, 2 indeterminate, as [`Exit`] after a line on stderr.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let home = home()?;
    let report = match read_health(&home, &args.node) {
        Ok(r) => r,
        Err(HealthError::Name(e)) => return Err(UsageError(e.to_string()).into()),
        Err(e) => {
            eprintln!("INDETERMINATE: {e}");
            return Err(Exit(EXIT_USAGE).into());
        }
    };
    let s = &report.snapshot;
    let field = |k: &str| {
        s.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown")
            .to_owned()
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        let reasons: Vec<&str> = s
            .get("reason_codes")
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        println!("IICP node health — {}", args.node);
        println!("  liveness   {}", field("liveness"));
        println!("  readiness  {}", field("readiness"));
        println!("  reasons    {}", reasons.join(", "));
        if let Some(d) = s.get("directory").filter(|d| d.is_object()) {
            println!("  directory  {}", directory_line(d));
        }
        if let Some(r) = s.get("recovery").filter(|r| r.is_object()) {
            println!("  recovery   {}", recovery_line(r));
        }
        println!("  age        {}s", report.age.as_secs());
    }
    let code = match report.verdict(args.ready) {
        Verdict::Healthy => return Ok(()),
        Verdict::Unhealthy(why) => {
            eprintln!("UNHEALTHY: {why}");
            EXIT_FAILURE
        }
        Verdict::Indeterminate(why) => {
            eprintln!("INDETERMINATE: {why}");
            EXIT_USAGE
        }
        other => {
            eprintln!("UNHEALTHY: {other:?}");
            EXIT_FAILURE
        }
    };
    Err(Exit(code).into())
}

/// `backend_attention (action backend_attention, since …): <reason>` from the
/// snapshot's `recovery` object.
fn recovery_line(r: &serde_json::Value) -> String {
    let text = |k: &str| {
        r.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown")
    };
    let mut line = format!(
        "{} (action {}, since {})",
        text("state"),
        text("action"),
        text("since")
    );
    let reason = text("reason");
    if !reason.is_empty() && reason != "unknown" {
        line.push_str(": ");
        line.push_str(reason);
    }
    line
}

/// `refused (HTTP 403 IICP-E050: <message>)` from the snapshot's `directory` object.
fn directory_line(d: &serde_json::Value) -> String {
    let state = d
        .get("state")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("unknown");
    let failing = d
        .get("consecutive_failures")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        > 0;
    let last = d.get("last_error").filter(|e| e.is_object());
    match last {
        Some(e) if failing => {
            let text = |k: &str| e.get(k).and_then(serde_json::Value::as_str);
            let what = match e.get("status").and_then(serde_json::Value::as_u64) {
                Some(status) => {
                    let mut t = format!("HTTP {status}");
                    if let Some(c) = text("code") {
                        t.push(' ');
                        t.push_str(c);
                    }
                    if let Some(m) = text("message") {
                        t.push_str(": ");
                        t.push_str(m);
                    }
                    t
                }
                None => text("error").unwrap_or("no answer").to_owned(),
            };
            format!("{state} ({what})")
        }
        _ => state.to_owned(),
    }
}
