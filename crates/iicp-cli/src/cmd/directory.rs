//! `directory serve`: the embedded directory as a standalone service.

use std::net::SocketAddr;

use anyhow::Context as _;
use iicp_directory::store::{MemoryStore, SqliteStore};
use iicp_directory::Directory;
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;

/// Arguments of `directory`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Serve the directory until SIGINT or SIGTERM.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IICP_DIRECTORY_LISTEN", default_value = "127.0.0.1:9480")]
    listen: SocketAddr,
    /// SQLite database file; without it the directory keeps everything in memory.
    #[arg(long, env = "IICP_DIRECTORY_DB")]
    db: Option<std::path::PathBuf>,
    /// The public base URL nodes and clients use (default: http://<listen address>);
    /// dispatch tickets name it as their issuer.
    #[arg(long, env = "IICP_DIRECTORY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Accept loopback and private node endpoints (a private mesh on one machine or a LAN).
    #[arg(long, env = "IICP_DIRECTORY_PRIVATE_MESH")]
    private_mesh: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Sub::Serve(a) => serve(a).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.public_url {
        super::common::http_url("--public-url", url)?;
    }
    let mut builder = Directory::builder().private_mesh(args.private_mesh);
    builder = match &args.db {
        Some(path) => builder.store(
            SqliteStore::open_async(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => builder.store(MemoryStore::new()),
    };
    if let Some(url) = &args.public_url {
        builder = builder.public_url(url.clone());
    }
    let directory = builder.build().await.context("starting the directory")?;
    let listener = Listener::bind(args.listen, ListenerConfig::default())
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    let (trigger, sd) = shutdown::channel();
    crate::signal::on_terminate(trigger);
    let storage = args.db.as_ref().map_or_else(
        || "memory".to_owned(),
        |p| format!("sqlite {}", p.display()),
    );
    let base = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    println!(
        "IICP directory listening on {bound} ({storage}, private mesh: {})",
        args.private_mesh
    );
    println!(
        "directory URL for nodes and clients: {}/api",
        base.trim_end_matches('/')
    );
    println!("directory key: {}", directory.public_key().to_hex());
    directory.serve(listener, sd).await.context("serving")?;
    Ok(())
}
