//! `doctor`: check what a node needs — backend reachability and models, directory
//! reachability, port availability, NAT, operator identity — and say what is wrong.
//! Exit 0 when every check passes, 1 otherwise.

use std::net::SocketAddr;

use iicp_client::DirectoryClient;
use iicp_proto::directory::DiscoverQuery;
use serde_json::{json, Value};

use super::common::{home, probe_client, Backend, CHAT, DEFAULT_DIRECTORY};
use super::runstate::serving_on;
use super::UsageError;

mod nat;

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Saved node profile to check (~/.iicp/nodes/NAME.json).
    #[arg(long, env = "IICP_NODE_NAME", value_name = "NAME")]
    node: Option<String>,
    /// Model server URL [default: the profile's, else the backend type's default].
    #[arg(long, env = "IICP_BACKEND_URL", value_name = "URL")]
    backend_url: Option<String>,
    /// Backend type [default: openai_compat].
    #[arg(long, env = "IICP_BACKEND_TYPE", value_name = "TYPE")]
    backend_type: Option<String>,
    /// API key of the backend.
    #[arg(
        long,
        env = "IICP_BACKEND_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    backend_api_key: Option<String>,
    /// Directory base URL [default: the profile's, else https://iicp.network/api].
    #[arg(long, env = "IICP_DIRECTORY_URL", value_name = "URL")]
    directory_url: Option<String>,
    /// Port to check [default: the profile's, else 9484].
    #[arg(long, env = "IICP_PORT", value_name = "N")]
    port: Option<u16>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    extra: Value,
}

/// How many relay-capable nodes the directory lists (`relay_capable=true`), or why it
/// could not say.
async fn relay_capable_nodes(
    http: &iicp_transport::http::client::HttpClient,
    directory: &str,
) -> Result<usize, String> {
    let dir = DirectoryClient::new(directory, http.clone()).map_err(|e| e.to_string())?;
    let intent = CHAT
        .parse()
        .map_err(|_| "the chat intent does not parse".to_owned())?;
    let mut q = DiscoverQuery::new(&intent);
    q.relay_capable = Some(true);
    q.limit = Some(50);
    dir.discover(&q, None)
        .await
        .map(|list| {
            list.nodes
                .iter()
                .filter(|n| n.relay_capable == Some(true))
                .count()
        })
        .map_err(|e| e.to_string())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let home = home().ok();
    let profile = match (&args.node, &home) {
        (Some(name), Some(h)) => Some(
            h.load_node(name)
                .map_err(super::common::operator_error)?
                .ok_or_else(|| UsageError(format!("no saved node {name:?}; run `iicp init`")))?,
        ),
        (Some(_), None) => {
            return Err(UsageError("cannot locate ~/.iicp: set IICP_HOME".into()).into())
        }
        _ => None,
    };
    let backend_url = args.backend_url.clone().or_else(|| {
        profile
            .as_ref()
            .map(|p| p.backend_url.clone())
            .filter(|u| !u.is_empty())
    });
    let backend = Backend::from_flags(
        args.backend_type.as_deref(),
        backend_url.as_deref(),
        args.backend_api_key.as_deref(),
    )?;
    let directory = args
        .directory_url
        .clone()
        .or_else(|| {
            profile
                .as_ref()
                .map(|p| p.directory_url.clone())
                .filter(|u| !u.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_DIRECTORY.to_owned());
    let port = args
        .port
        .or_else(|| profile.as_ref().map(|p| p.port))
        .unwrap_or(9484);
    let http = probe_client()?;
    let mut checks = Vec::new();

    // backend
    checks.push(match backend.models(&http).await {
        Ok(models) => Check {
            name: "backend",
            ok: !models.is_empty(),
            detail: if models.is_empty() {
                format!("{} answers but lists no model", backend.describe())
            } else {
                format!("{} — models: {}", backend.describe(), models.join(", "))
            },
            extra: json!({"models": models}),
        },
        Err(e) => Check {
            name: "backend",
            ok: false,
            detail: format!("{} unreachable: {e}", backend.describe()),
            extra: json!({}),
        },
    });

    // directory
    checks.push(match DirectoryClient::new(&directory, http.clone()) {
        Err(e) => Check {
            name: "directory",
            ok: false,
            detail: format!("{directory}: {e}"),
            extra: json!({}),
        },
        Ok(dir) => {
            let intent = CHAT.parse().map_err(|_| UsageError("bad intent".into()))?;
            let mut q = DiscoverQuery::new(&intent);
            q.limit = Some(50);
            match dir.discover(&q, None).await {
                Ok(list) => Check {
                    name: "directory",
                    ok: true,
                    detail: format!(
                        "{directory} answers ({} chat node(s) listed)",
                        list.nodes.len()
                    ),
                    extra: json!({"nodes": list.nodes.len()}),
                },
                Err(e) => Check {
                    name: "directory",
                    ok: false,
                    detail: format!("{directory} unreachable: {e}"),
                    extra: json!({}),
                },
            }
        }
    });

    // port: free, used by a node this configuration root serves, or by something else
    let free = std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).is_ok();
    let serving = (!free)
        .then(|| home.as_ref().and_then(|h| serving_on(h, port)))
        .flatten();
    // not ours: perhaps a node of another configuration root or SDK, which says so
    let other = match (free, &serving) {
        (false, None) => local_node_id(&http, port).await,
        _ => None,
    };
    checks.push(Check {
        name: "port",
        ok: true,
        detail: match (free, &serving) {
            (true, _) => format!("{port} is free"),
            (false, Some(n)) => format!(
                "{port} is used by the serving node {} (pid {}) — another `serve` takes the next free port",
                match &n.name {
                    Some(name) => format!("{name} ({})", n.node_id),
                    None => n.node_id.clone(),
                },
                n.pid
            ),
            (false, None) => match &other {
                Some(id) => format!(
                    "{port} is used by IICP node {id}, not served from this configuration root — `serve` will take the next free port (or pass --port)"
                ),
                None => format!(
                    "{port} is in use — `serve` will take the next free port (or pass --port)"
                ),
            },
        },
        extra: json!({
            "port": port,
            "free": free,
            "serving": serving.as_ref().map(|n| json!({"pid": n.pid, "node_id": n.node_id, "name": n.name}))
                .or_else(|| other.as_ref().map(|id| json!({"node_id": id}))),
        }),
    });

    // NAT: observations and plan, nothing mapped
    let relays = relay_capable_nodes(&http, &directory).await;
    checks.push(
        nat::check(
            port,
            relays.as_ref().copied().map_err(String::as_str),
            &directory,
        )
        .await,
    );

    // operator identity
    checks.push(match home.as_ref().map(iicp_node::operator::Home::load_operator) {
        None => Check {
            name: "operator",
            ok: false,
            detail: "cannot locate ~/.iicp: set IICP_HOME or HOME".into(),
            extra: json!({}),
        },
        Some(Ok(None)) => Check {
            name: "operator",
            ok: true,
            detail: "none — nodes register anonymously (run `iicp init`)".into(),
            extra: json!({"present": false}),
        },
        Some(Ok(Some(f))) => Check {
            name: "operator",
            ok: true,
            detail: format!(
                "{} {:?}{}",
                f.operator_id,
                f.display_name,
                match (f.is_key_backed(), f.is_encrypted()) {
                    (false, _) => ", keyless (cannot sign)",
                    (true, true) => ", encrypted at rest",
                    (true, false) => ", not encrypted at rest",
                }
            ),
            extra: json!({"present": true, "operator_id": f.operator_id, "key_backed": f.is_key_backed(), "encrypted": f.is_encrypted()}),
        },
        Some(Err(e)) => Check {
            name: "operator",
            ok: false,
            detail: e.to_string(),
            extra: json!({"present": true}),
        },
    });

    let all_ok = checks.iter().all(|c| c.ok);
    if args.json {
        let list: Vec<Value> = checks
            .iter()
            .map(|c| {
                let mut v = json!({"name": c.name, "ok": c.ok, "detail": c.detail});
                if let (Value::Object(m), Value::Object(x)) = (&mut v, &c.extra) {
                    m.extend(x.clone());
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": all_ok, "checks": list}))?
        );
    } else {
        for c in &checks {
            println!(
                "{} {:<10} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    if !all_ok {
        anyhow::bail!(
            "{} check(s) failed",
            checks.iter().filter(|c| !c.ok).count()
        );
    }
    Ok(())
}

/// The `node_id` that `/iicp/health` on 127.0.0.1:`port` reports, if an IICP node
/// answers there.
async fn local_node_id(
    http: &iicp_transport::http::client::HttpClient,
    port: u16,
) -> Option<String> {
    let reply = http
        .get(format!("http://127.0.0.1:{port}/iicp/health"))
        .send()
        .await
        .ok()?;
    if reply.status != 200 {
        return None;
    }
    let v: Value = serde_json::from_slice(&reply.body).ok()?;
    v["node_id"]
        .as_str()
        .filter(|id| !id.is_empty() && id.len() <= 64 && !id.chars().any(char::is_control))
        .map(str::to_owned)
}
