//! `credits`: a node's credit ledger (and its operator's wallet) as the directory
//! reports it, `GET {dir}/v1/credits/summary?node_id=…` with the node token
//! (SEED-SDK.md §2.5). The node id, token and directory come from the flags, the
//! environment, or the saved node profile (`--node NAME`; without it the only saved
//! node, else `default`). The token is never printed.

use iicp_node::credits::{self, CreditsSummary};
use iicp_node::operator::{Home, NodeProfile};
use iicp_proto::secret::Secret;

use super::common::{home, operator_error, probe_client, DEFAULT_DIRECTORY};
use super::UsageError;

/// Arguments of `credits`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Saved node whose id, token and directory are used (~/.iicp/nodes/NAME.json).
    #[arg(long, env = "IICP_NODE_NAME", value_name = "NAME")]
    node: Option<String>,
    /// Node id (instead of a saved node's).
    #[arg(long, env = "IICP_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
    /// Node token (instead of the one `serve` saved in the profile).
    #[arg(
        long,
        env = "IICP_NODE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Directory base URL [default: the saved node's, else https://iicp.network/api].
    #[arg(long, env = "IICP_DIRECTORY_URL", value_name = "URL")]
    directory_url: Option<String>,
    /// Print the directory's summary as it came (JSON).
    #[arg(long)]
    json: bool,
}

/// The saved profile to use: `--node NAME`, else (with no `--node-id`) the only saved
/// node or `default`.
fn saved_profile(args: &Args, home: Option<&Home>) -> anyhow::Result<Option<NodeProfile>> {
    let Some(home) = home else { return Ok(None) };
    if let Some(name) = &args.node {
        return home
            .load_node(name)
            .map_err(operator_error)?
            .map(Some)
            .ok_or_else(|| UsageError(format!("no saved node {name:?} (run `iicp init`)")).into());
    }
    if args.node_id.is_some() {
        return Ok(None);
    }
    let all: Vec<NodeProfile> = home
        .list_nodes()
        .map_err(operator_error)?
        .into_iter()
        .filter_map(|(_, p)| p.ok())
        .collect();
    if all.len() == 1 {
        return Ok(all.into_iter().next());
    }
    Ok(all.into_iter().find(|p| p.name == "default"))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let home = match args.node {
        Some(_) => Some(home()?),
        None => Home::from_env().ok(),
    };
    let saved = saved_profile(&args, home.as_ref())?;
    let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let node_id = nonempty(&args.node_id)
        .or_else(|| saved.as_ref().map(|p| p.node_id.clone()))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            UsageError("a node id is required: pass --node NAME or --node-id ID".into())
        })?;
    let token = nonempty(&args.token)
        .map(Secret::new)
        .or_else(|| saved.as_ref().and_then(|p| p.node_token.clone()))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            UsageError(
                "no node token: run `iicp serve --node NAME` (it saves the token while serving), \
                 or pass --token / IICP_NODE_TOKEN"
                    .into(),
            )
        })?;
    let directory = nonempty(&args.directory_url)
        .or_else(|| saved.as_ref().map(|p| p.directory_url.clone()))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_DIRECTORY.to_owned());
    super::common::http_url("--directory-url", &directory)?;
    let http = probe_client()?;
    let summary = credits::summary(&http, &directory, &node_id, &token).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(summary.raw())?);
    } else {
        let label = saved.as_ref().map_or(node_id.as_str(), |p| p.name.as_str());
        print_summary(&summary, label);
    }
    Ok(())
}

fn print_summary(s: &CreditsSummary, label: &str) {
    let tpc = s.tokens_per_credit() as f64;
    let tokens = |credits: f64| (credits * tpc).round() as i64;
    if let Some(w) = s.operator_wallet() {
        let num = |k: &str| w.get(k).and_then(serde_json::Value::as_f64);
        let fingerprint = w
            .get("operator_fingerprint")
            .and_then(serde_json::Value::as_str)
            .map(|f| format!(" · operator {f}"))
            .unwrap_or_default();
        println!("IICP operator wallet{fingerprint}");
        if let Some(v) = num("total_earned") {
            println!("  Total earned      {v:>12.3}");
        }
        if let Some(v) = num("total_spent") {
            println!("  Total spent       {v:>12.3}");
        }
        let balance = num("total_balance").unwrap_or_else(|| s.balance());
        let check = match w.get("reconciles").and_then(serde_json::Value::as_bool) {
            Some(true) => "reconciles",
            Some(false) => "DOES NOT RECONCILE",
            None => "rollup",
        };
        println!(
            "  Wallet balance    {balance:>12.3}   {check}   (≈ {} tokens)",
            tokens(balance)
        );
        let nodes = w
            .get("node_count")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        println!("  {nodes} linked node(s)");
        println!();
        println!("Node ledger — {label}");
    } else {
        println!("IICP credits — {label}");
    }
    println!("  Earned (income)   {:>12.3}", s.earned());
    println!("  Spent             {:>12.3}", s.spent());
    let check = if s.reconciles() {
        "reconciles"
    } else {
        "DOES NOT RECONCILE"
    };
    println!(
        "  Balance           {:>12.3}   {check}   (≈ {} tokens)",
        s.balance(),
        tokens(s.balance())
    );
    println!("  {} transaction(s)", s.tx_count());
    if !s.reconciles() {
        eprintln!(
            "WARNING: balance != earned - spent: the ledger does not reconcile; do not trust these figures"
        );
    }
}
