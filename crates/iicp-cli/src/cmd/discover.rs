//! `discover [INTENT]`: list the nodes a directory offers for an intent (the nodes a
//! `chat` could reach with the same options).

use iicp_client::{routing, DiscoverOptions};
use iicp_proto::directory::NodeEntry;

use super::chat::{ConsumerArgs, TransportArg};
use super::common::CHAT;

/// Arguments of `discover`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Intent URN.
    #[arg(default_value = CHAT, value_name = "INTENT")]
    intent: String,
    #[command(flatten)]
    consumer: ConsumerArgs,
    /// Only nodes offering this model.
    #[arg(long)]
    model: Option<String>,
    /// Most nodes listed (1-50).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50))]
    limit: u32,
}

fn reachable(n: &NodeEntry, args: &ConsumerArgs) -> bool {
    let native_ok =
        !matches!(args.transport, TransportArg::Native) || n.transport_endpoint.is_some();
    let cx_ok = args.allow_plaintext || n.cx_key().is_some();
    native_ok && cx_ok
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.consumer.client(None)?;
    let options = DiscoverOptions {
        model: args.model.clone(),
        limit: Some(args.limit),
        region: args.consumer.region.clone(),
        ..DiscoverOptions::default()
    };
    let all = client
        .discover(&args.intent, options)
        .await
        .map_err(|e| match e.code() {
            c if c.as_str() == "invalid_intent" => anyhow::Error::new(super::UsageError(format!(
                "invalid intent {:?}: {e}",
                args.intent
            ))),
            _ => anyhow::Error::new(e).context("discovery failed"),
        })?;
    let total = all.len();
    // the warning of debug_override was printed when the client was built
    let policy = args.consumer.routing.quiet_policy()?;
    let now = super::common::now_unix();
    let mut excluded: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let nodes: Vec<NodeEntry> = all
        .into_iter()
        .filter(|n| reachable(n, &args.consumer))
        .filter(|n| {
            let endpoint = n
                .endpoint
                .as_deref()
                .or(n.transport_endpoint.as_deref())
                .unwrap_or("");
            match routing::evaluate(&policy, n, endpoint, n.cx_key().is_some(), now) {
                Ok(()) => true,
                Err(e) => {
                    *excluded.entry(e.as_str()).or_default() += 1;
                    false
                }
            }
        })
        .collect();
    let refused: usize = excluded.values().sum();
    if args.consumer.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
    } else {
        if nodes.is_empty() {
            println!("no nodes for {}", args.intent);
        }
        for n in &nodes {
            let id = n
                .node_id
                .as_deref()
                .or(n.node_id_prefix.as_deref())
                .unwrap_or("?");
            let models = n.models.clone().unwrap_or_default().join(",");
            let operator = n
                .operator_display_name
                .as_deref()
                .map(|o| format!("  operator {o:?}"))
                .unwrap_or_default();
            println!(
                "{id}  {}  region {}  score {:.2}  models {}{}{operator}",
                n.endpoint.as_deref().unwrap_or("-"),
                n.region.as_deref().unwrap_or("-"),
                n.score.unwrap_or_default(),
                if models.is_empty() { "-" } else { &models },
                if n.cx_key().is_some() { "  cx" } else { "" },
            );
        }
    }
    if nodes.len() + refused < total {
        eprintln!(
            "{} node(s) hidden: without an IICP-CX key (--allow-plaintext) or without native transport",
            total - nodes.len() - refused
        );
    }
    if refused > 0 {
        let reasons: Vec<String> = excluded.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        eprintln!(
            "{refused} node(s) excluded by routing profile {} ({})",
            policy.profile,
            reasons.join(", ")
        );
    }
    Ok(())
}
