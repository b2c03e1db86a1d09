//! Discover the nodes serving an intent, then submit one task to the mesh.
//!
//! ```text
//! cargo run -p iicp-client --example discover_submit -- [DIRECTORY_URL] [INTENT]
//! ```
//!
//! The directory URL comes from the first argument, else `IICP_DIRECTORY_URL`, else the
//! public directory; the intent defaults to `urn:iicp:intent:llm:chat:v1`. Dev meshes:
//! `IICP_ALLOW_PRIVATE=1`, `IICP_CX_ALLOW_PLAINTEXT=1` (see `examples/chat.rs`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use iicp_client::{Client, DiscoverOptions, Encryption, Task};
use serde_json::json;

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let directory = args
        .next()
        .or_else(|| std::env::var("IICP_DIRECTORY_URL").ok())
        .unwrap_or_else(|| iicp_client::DEFAULT_DIRECTORY_URL.to_owned());
    let intent = args
        .next()
        .unwrap_or_else(|| iicp_client::CHAT_INTENT.to_owned());

    let mut builder = Client::builder()
        .directory_url(directory)
        .allow_private_endpoints(flag("IICP_ALLOW_PRIVATE"));
    if flag("IICP_CX_ALLOW_PLAINTEXT") {
        builder = builder.encryption(Encryption::AllowPlaintext);
    }
    let client = builder.build()?;

    let nodes = client
        .discover(
            &intent,
            DiscoverOptions {
                limit: Some(10),
                ..DiscoverOptions::default()
            },
        )
        .await?;
    println!("{} node(s) for {intent}:", nodes.len());
    for n in &nodes {
        println!(
            "  {:<36} score {:<5} region {:<12} cx {}  native {}",
            n.node_id.as_deref().unwrap_or("?"),
            n.score.map_or("-".to_owned(), |s| format!("{s:.2}")),
            n.region.as_deref().unwrap_or("-"),
            if n.cx_key().is_some() { "yes" } else { "no" },
            n.transport_endpoint.as_deref().unwrap_or("-"),
        );
    }

    let task = Task::new(
        intent,
        json!({"messages": [{"role": "user", "content": "What is 2 + 2? Answer with one number."}]}),
    )
    .with_timeout_ms(30_000);
    let done = client.submit(task).await?;
    println!(
        "node {} answered in {} ms over {:?} (encrypted: {}, attempts: {}, profile: {})",
        done.node_id,
        done.latency.as_millis(),
        done.transport,
        done.encrypted,
        done.attempts,
        done.selection_profile
    );
    println!("{}", serde_json::to_string_pretty(done.result())?);
    Ok(())
}
