//! A standalone node for benchmarks: serves `BackendHandler` over an OpenAI-compatible
//! backend (e.g. `iicp stub-model`) on one port (HTTP and native), with no directory
//! (no registration), the per-origin rate limit off and the concurrency cap at its
//! maximum, so load tests measure the node and not its admission limits.
//!
//! `cargo run --release -p iicp-node --example bench_node -- PORT BACKEND_URL [MODEL] [MAX_CONCURRENT] [MAX_CONNECTIONS] [THREADS]`
//!
//! `BACKEND_URL` is the OpenAI base, e.g. `http://127.0.0.1:18080/v1`. `MAX_CONNECTIONS`
//! (default 1024) caps open connections on the port. `THREADS` is the runtime's, as
//! `iicp --worker-threads` for `serve`: 0 (default) the cores less one (at least one), 1
//! single-threaded. Runs until killed.
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use iicp_backends::{BackendConfig, BackendKind};
use iicp_node::{BackendHandler, Node, RateLimit, ServeOptions};
use iicp_transport::listener::{Listener, ListenerConfig};

// the allocator of the `iicp` binary, so the benchmark measures what operators run
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args().nth(6).map_or(Ok(0), |s| s.parse())?;
    iicp_node::runtime::builder(threads)
        .build()?
        .block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: bench_node PORT BACKEND_URL [MODEL] [MAX_CONCURRENT]")?
        .parse()?;
    let backend_url = args.next().ok_or("missing BACKEND_URL")?;
    let model = args.next().unwrap_or_else(|| "stub-model".to_owned());
    let max_concurrent: u32 = args.next().map_or(Ok(256), |s| s.parse())?;
    let max_connections: usize = args.next().map_or(Ok(1024), |s| s.parse())?;

    let mut config = BackendConfig::new(BackendKind::OpenAiCompat);
    config.base_url = Some(backend_url.clone());
    config.model = Some(model.clone());
    let backend = iicp_backends::build(config)?;

    let node = Node::builder()
        .endpoint(format!("http://127.0.0.1:{port}"))
        .intent("urn:iicp:intent:llm:chat:v1")
        .model(model)
        .max_concurrent(max_concurrent)
        .rate_limit(RateLimit {
            max_requests: 0,
            window: Duration::from_secs(60),
        })
        .build()?;
    let listener = Listener::bind(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        ListenerConfig {
            max_connections,
            ..ListenerConfig::default()
        },
    )
    .await?;
    let options = ServeOptions::default().with_register(false);
    let handle = node
        .serve(listener, BackendHandler::new(backend), options)
        .await?;
    println!(
        "bench node on http://{} (native iicp://{}), backend {backend_url}",
        handle.local_addr(),
        handle.local_addr()
    );
    std::future::pending::<()>().await;
    Ok(())
}
