//! `list`: the saved node profiles (`~/.iicp/nodes/NAME.json`, written by `init` and
//! `serve --node NAME`), SEED-SDK.md §2.5: name, model, public endpoint (or `(dev)`),
//! and whether a process serves it now (its instance lock is held). No network I/O.

use iicp_node::operator::NodeProfile;
use iicp_node::run::lock_holder;
use iicp_node::AuthMode;
use serde_json::{json, Value};

use super::common::{home, operator_error};

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Machine-readable output (a JSON array with each node's auth mode; tokens are
    /// never shown).
    #[arg(long)]
    json: bool,
}

fn entry(p: &NodeProfile, pid: Option<u32>, auth: Option<&str>) -> Value {
    json!({
        "name": p.name,
        "node_id": p.node_id,
        "model": p.model,
        "backend_url": p.backend_url,
        "directory_url": p.directory_url,
        "public_endpoint": p.public_endpoint,
        "region": p.region,
        "port": p.port,
        "registered": p.node_token.is_some(),
        "auth": auth,
        "serving_pid": pid,
    })
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let home = home()?;
    let nodes = home.list_nodes().map_err(operator_error)?;
    let mut out = Vec::new();
    for (name, profile) in &nodes {
        match profile {
            Ok(p) => {
                // the saved auth mode (`null` when its file cannot be read)
                let auth = match home.load_node_auth(name) {
                    Ok(a) => Some(a.map_or(AuthMode::Open, |a| a.mode).as_str()),
                    Err(e) => {
                        eprintln!("WARNING: node {name:?}: {e}");
                        None
                    }
                };
                out.push(entry(p, lock_holder(&home, &p.node_id), auth));
            }
            Err(e) => eprintln!("WARNING: skipping node {name:?}: {e}"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!(
            "no saved nodes in {} (run `iicp init`)",
            home.root().join("nodes").display()
        );
        return Ok(());
    }
    for n in &out {
        let text = |k: &str| n[k].as_str().unwrap_or_default().to_owned();
        let model = Some(text("model"))
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "(auto)".into());
        let endpoint = Some(text("public_endpoint"))
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "(dev)".into());
        let status = n["serving_pid"]
            .as_u64()
            .map(|p| format!("  serving (PID {p})"))
            .unwrap_or_default();
        println!("{:<20} {model:<24} {endpoint}{status}", text("name"));
    }
    Ok(())
}
