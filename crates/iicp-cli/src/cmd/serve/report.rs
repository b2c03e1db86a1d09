//! What `serve` prints: the startup summary, and the directory's answers as they
//! change (each once).

use std::time::Duration;

use iicp_node::event::{EventKind, NodeEvent};
use iicp_node::operator::{Home, OperatorIdentity};
use iicp_node::ServeHandle;

use super::Resolved;

/// How long the summary's directory line waits for the first registration result: a
/// directory call times out after 5 s, so a result comes well within this.
pub(super) const FIRST_RESULT_WITHIN: Duration = Duration::from_secs(15);

/// The first registration result (`register_ok` or `register_fail`), or `None` when
/// none came within `within`.
pub(super) async fn first_result(
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
pub(super) struct Shown {
    last: Option<String>,
}

/// `refused` when the directory answered 4xx (it will not change its mind by itself),
/// else `failed`.
fn refused_or_failed(status: Option<u16>) -> &'static str {
    if status.is_some_and(|s| (400..500).contains(&s)) {
        "refused"
    } else {
        "failed"
    }
}

impl Shown {
    /// The summary's directory state for the first registration result:
    /// `(registered) node <id>` or `(registration refused: HTTP 403 IICP-E050: …)`.
    pub(super) fn first(&mut self, ev: &NodeEvent) -> String {
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
                format!(
                    "(registration {}: {text}; retrying in the background)",
                    refused_or_failed(*status)
                )
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
    pub(super) fn later(&mut self, ev: &NodeEvent) {
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
                format!(
                    "registration {}: {text} (retrying in the background)",
                    refused_or_failed(*status)
                )
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

/// The startup summary.
pub(super) fn summary(
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

/// The summary's last lines: the directory and its first answer, the `serving` line,
/// and the NAT guidance.
pub(super) fn serving(
    handle: &ServeHandle,
    cfg: &Resolved,
    register: bool,
    first: Option<&NodeEvent>,
    shown: &mut Shown,
) {
    let dir = match (&cfg.directory, register, first) {
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
    super::nat::print_guidance(handle);
}

/// Printed once per configuration root (a marker file remembers it); later starts log a
/// single line.
pub(super) fn anonymous_notice(home: Option<&Home>) {
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
