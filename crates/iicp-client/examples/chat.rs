//! Chat through an IICP mesh.
//!
//! ```text
//! cargo run -p iicp-client --example chat -- [DIRECTORY_URL] [PROMPT]
//! IICP_DIRECTORY_URL=http://127.0.0.1:8080/api cargo run -p iicp-client --example chat
//! ```
//!
//! The directory URL comes from the first argument, else `IICP_DIRECTORY_URL`, else the
//! public directory. For a dev mesh on this machine set `IICP_ALLOW_PRIVATE=1` (loopback
//! endpoints) and, if its nodes have no IICP-CX key, `IICP_CX_ALLOW_PLAINTEXT=1`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use iicp_client::{ChatMessage, Client, Encryption};

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
    let prompt = args
        .next()
        .unwrap_or_else(|| "Say hello in one short sentence.".to_owned());

    let mut builder = Client::builder()
        .directory_url(directory)
        .allow_private_endpoints(flag("IICP_ALLOW_PRIVATE"));
    if flag("IICP_CX_ALLOW_PLAINTEXT") {
        builder = builder.encryption(Encryption::AllowPlaintext);
    }
    let client = builder.build()?;

    match client.chat(vec![ChatMessage::new("user", prompt)]).await {
        Ok(reply) => {
            println!("{}", reply.text());
            eprintln!(
                "-- node {} model {} task {}",
                reply.node_id,
                reply.model.as_deref().unwrap_or("?"),
                reply.task_id
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("chat failed: {e} (code {})", e.code());
            if let Some(last) = e.last_node_error() {
                eprintln!("last node error: {last}");
            }
            Err(e.into())
        }
    }
}
