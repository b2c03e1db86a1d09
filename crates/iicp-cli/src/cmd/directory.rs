//! `directory serve`: the embedded directory as a standalone service.

use std::net::SocketAddr;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use iicp_directory::store::{redact_url, MemoryStore, PgStore, SqliteStore};
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
    /// Where the directory keeps its state: a SQLite database file, or a PostgreSQL
    /// URL (postgres://user[:password]@host[:port]/database, also postgresql://) that
    /// several directory instances may share. Without it everything stays in memory.
    #[arg(long, env = "IICP_DIRECTORY_DB", value_name = "FILE|URL")]
    db: Option<OsString>,
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
    let storage = match Storage::from_arg(args.db.as_ref()) {
        Storage::Postgres(url) => {
            let shown = redact_url(&url);
            builder = builder.store(
                PgStore::connect(&url)
                    .await
                    .with_context(|| format!("opening the PostgreSQL database {shown}"))?,
            );
            format!("postgresql {shown}")
        }
        Storage::Sqlite(path) => {
            builder = builder.store(
                SqliteStore::open_async(&path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            );
            format!("sqlite {}", path.display())
        }
        Storage::Memory => {
            builder = builder.store(MemoryStore::new());
            "memory".to_owned()
        }
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

/// What `--db` names.
#[derive(Debug, PartialEq)]
enum Storage {
    Memory,
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL (may hold a password: shown redacted only).
    Postgres(String),
}

impl Storage {
    fn from_arg(db: Option<&OsString>) -> Self {
        match db {
            None => Self::Memory,
            Some(v) => match v.to_str() {
                Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                    Self::Postgres(s.to_owned())
                }
                _ => Self::Sqlite(PathBuf::from(v)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Storage;
    use std::ffi::OsString;
    use std::path::PathBuf;

    #[test]
    fn db_names_a_file_or_a_postgresql_url() {
        let arg = |s: &str| Storage::from_arg(Some(&OsString::from(s)));
        assert_eq!(Storage::from_arg(None), Storage::Memory);
        assert_eq!(arg("dir.db"), Storage::Sqlite(PathBuf::from("dir.db")));
        assert_eq!(
            arg("/var/lib/iicp/postgres.db"),
            Storage::Sqlite(PathBuf::from("/var/lib/iicp/postgres.db"))
        );
        for url in ["postgres://u@127.0.0.1:5432/d", "postgresql://u:p@h/d"] {
            assert_eq!(arg(url), Storage::Postgres(url.to_owned()));
        }
    }
}
