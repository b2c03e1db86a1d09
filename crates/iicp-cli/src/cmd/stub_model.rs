//! `stub-model`: serves `iicp_testkit::stub::StubModel`, the shared backend of node
//! benchmarks; prints the request counts per path on exit (Ctrl-C / SIGTERM).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use iicp_testkit::stub::StubModel;
use iicp_transport::http::server::{HttpServer, HttpServerConfig};
use iicp_transport::shutdown;
/// Arguments of `stub-model`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Port to listen on (0 = any free port; the bound address is printed).
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Fixed delay before every completion, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The model name listed by /v1/models and /api/tags.
    #[arg(long, default_value = "stub-model")]
    model: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let stub = StubModel::new(args.model.clone(), Duration::from_millis(args.delay_ms));
    let addr = SocketAddr::new(args.host, args.port);
    let mut config = HttpServerConfig::default();
    config.max_connections = config.max_connections.max(4096);
    let server = HttpServer::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?
        .with_config(config);
    let bound = server.local_addr()?;
    let (trigger, sd) = shutdown::channel();
    crate::signal::on_terminate(trigger);
    println!(
        "stub model server on http://{bound} (OpenAI base http://{bound}/v1), model {}, delay {} ms",
        args.model, args.delay_ms
    );
    server.serve(stub.router(), sd).await;
    println!("stub model server stopped; requests by path:");
    for (path, n) in stub.request_counts() {
        println!("  {n:>10}  {path}");
    }
    Ok(())
}
