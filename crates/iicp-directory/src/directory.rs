//! The embeddable directory: configuration, builder, router and background tasks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::crypto::token::{DirectoryKey, DirectoryPublicKey};
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::http::server::Router;
use iicp_transport::listener::{Listener, Services};
use iicp_transport::shutdown::Shutdown;
use rand_core::OsRng;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::error::DirectoryError;
use crate::net::{parse_url, HTTP_SCHEMES};
use crate::state::{Core, Node, Registry, Settings};
use crate::store::{MemoryStore, Store};

/// Directory settings. `Default` gives the protocol defaults of PROTOCOL.md §8.12 for a
/// production (public-routing) directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Public base URL of this directory (`https://dir.example.com`, with or without
    /// `/api`). Its origin is the `iss` of dispatch tickets, consumer tokens and relay
    /// tickets, which clients check against the directory URL they were given (§8.5).
    /// Default: derived from the bound address in [`Directory::serve`], else from the
    /// request's `Host` header.
    pub public_url: Option<String>,
    /// Private-mesh directory (DESIGN §4.12): accept loopback/private/link-local node
    /// endpoints and `/v1/probe` targets. Default off (production refuses them with 422
    /// `IICP-E035`).
    pub private_mesh: bool,
    /// A node without a valid heartbeat for this long is dormant and not discovered
    /// (§8.3). Default 90 s.
    pub liveness_window: Duration,
    /// `next_heartbeat_ms` sent in PONGs. Default 30 s.
    pub heartbeat_interval: Duration,
    /// Probe `GET {endpoint}/iicp/health` at REGISTER and in the background. Default on.
    pub liveness_probe: bool,
    /// Time budget of one liveness probe (DNS + connect + answer). Default 2 s.
    pub probe_timeout: Duration,
    /// How long a node whose endpoint never answered a probe stays discoverable after
    /// REGISTER (peers register before they listen). Default 120 s.
    pub unverified_grace: Duration,
    /// Interval of the active probe of verified nodes (§8.12). Default 300 s.
    pub active_probe_interval: Duration,
    /// Lifetime of dispatch route tickets. Default 120 s.
    pub ticket_ttl: Duration,
    /// REGISTER requests per source IP per window (§8.2). Default 60.
    pub register_rate_limit: u32,
    /// The REGISTER rate-limit window. Default 60 s.
    pub register_rate_window: Duration,
    /// Most nodes stored; REGISTER of a new node beyond it → 503. Default 100 000.
    pub max_nodes: usize,
    /// Dormant nodes are deleted after this long without a heartbeat. Default 7 days.
    pub node_retention: Duration,
    /// Largest request body accepted. Default 256 KiB.
    pub max_body_bytes: usize,
    /// Take the client IP from `CF-Connecting-IP` / `X-Forwarded-For` (only behind a
    /// trusted reverse proxy: these headers are forgeable). Default off.
    pub trust_forwarded_headers: bool,
    /// `directory` member of the REGISTER ACK. Default `iicp-rs-directory`.
    pub name: String,
    /// Most liveness probes in flight at once. Default 16.
    pub max_concurrent_probes: usize,
    /// Period of the background sweep (re-probes, retention). Default 1 s. With a shared
    /// store the sweep runs in one process at a time (the one holding the sweep lease).
    pub sweep_interval: Duration,
    /// Shared stores (PostgreSQL): how often the node states other directory processes
    /// wrote (heartbeats, probes) are pulled into this one's working copy. Default 2 s.
    pub sync_interval: Duration,
    /// Shared stores: how often the whole working copy is compared with the store, as a
    /// safety net for missed announcements. Default 300 s.
    pub resync_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            public_url: None,
            private_mesh: false,
            liveness_window: Duration::from_secs(90),
            heartbeat_interval: Duration::from_secs(30),
            liveness_probe: true,
            probe_timeout: Duration::from_secs(2),
            unverified_grace: Duration::from_secs(120),
            active_probe_interval: Duration::from_secs(300),
            ticket_ttl: Duration::from_secs(120),
            register_rate_limit: 60,
            register_rate_window: Duration::from_secs(60),
            max_nodes: 100_000,
            node_retention: Duration::from_secs(7 * 24 * 3600),
            max_body_bytes: 256 * 1024,
            trust_forwarded_headers: false,
            name: "iicp-rs-directory".to_owned(),
            max_concurrent_probes: 16,
            sweep_interval: Duration::from_secs(1),
            sync_interval: Duration::from_secs(2),
            resync_interval: Duration::from_secs(300),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Builds a [`Directory`].
#[derive(Debug, Default)]
#[must_use]
pub struct DirectoryBuilder {
    config: Config,
    store: Option<Arc<dyn Store>>,
    clock: Option<Arc<dyn Clock>>,
}

impl DirectoryBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets [`Config::public_url`].
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.config.public_url = Some(url.into());
        self
    }

    /// Sets [`Config::private_mesh`].
    pub fn private_mesh(mut self, enabled: bool) -> Self {
        self.config.private_mesh = enabled;
        self
    }

    /// Sets [`Config::liveness_probe`].
    pub fn liveness_probe(mut self, enabled: bool) -> Self {
        self.config.liveness_probe = enabled;
        self
    }

    /// Sets [`Config::liveness_window`].
    pub fn liveness_window(mut self, window: Duration) -> Self {
        self.config.liveness_window = window;
        self
    }

    /// Sets [`Config::register_rate_limit`] and [`Config::register_rate_window`].
    pub fn register_rate_limit(mut self, limit: u32, window: Duration) -> Self {
        self.config.register_rate_limit = limit;
        self.config.register_rate_window = window;
        self
    }

    /// The storage back end (default: a fresh [`MemoryStore`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The storage back end, shared.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The time source (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Opens the store: loads the directory key (generating and persisting one on first
    /// start) and every stored node.
    ///
    /// # Errors
    /// [`DirectoryError::Store`] when the store fails, [`DirectoryError::PublicUrl`] for
    /// a malformed public URL, [`DirectoryError::HttpClient`] if the probe client cannot
    /// be built.
    pub async fn build(self) -> Result<Directory, DirectoryError> {
        let config = self.config;
        let public_url = match config.public_url.as_deref() {
            Some(url) => {
                parse_url(url, HTTP_SCHEMES).map_err(|_| DirectoryError::PublicUrl)?;
                Some(url.trim_end_matches('/').to_owned())
            }
            None => None,
        };
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));

        let candidate = DirectoryKey::generate(&mut OsRng).seed();
        let seed = store.directory_key_seed(*candidate).await?;
        let key = DirectoryKey::from_seed(&seed);

        // A shared store: listen for the other processes' changes before loading, so
        // that none made after the load is missed.
        let changes = store.subscribe().await?;
        let mut registry = Registry::default();
        registry.set_keys(
            store
                .key_statuses()
                .await?
                .into_iter()
                .map(|k| (k.key_sha256.clone(), k))
                .collect(),
        );
        let mut skipped = 0usize;
        let mut cursor = 0u64;
        for record in store.load_nodes().await? {
            cursor = cursor.max(record.rev);
            match Node::from_record(record) {
                Some(node) => registry.insert(node),
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "stored nodes with unreadable registrations were skipped"
            );
        }
        tracing::info!(nodes = registry.nodes.len(), public_key = %key.public_key().to_hex(), "directory loaded");

        let mut http_config = HttpClientConfig::default();
        http_config.connect_timeout = config.probe_timeout;
        http_config.request_timeout = config.probe_timeout;
        http_config.pool_max_idle_per_host = 1;
        http_config.user_agent =
            concat!("iicp-rs-directory/", env!("CARGO_PKG_VERSION")).to_owned();
        http_config.address_rule = crate::probe::address_rule(config.private_mesh);
        let http = HttpClient::new(http_config).map_err(DirectoryError::HttpClient)?;

        let settings = Settings {
            private_mesh: config.private_mesh,
            liveness_window_ms: ms(config.liveness_window),
            heartbeat_interval_ms: ms(config.heartbeat_interval).max(1000),
            liveness_probe: config.liveness_probe,
            probe_timeout_ms: ms(config.probe_timeout).max(100),
            unverified_grace_ms: ms(config.unverified_grace),
            active_probe_interval_ms: ms(config.active_probe_interval).max(1000),
            ticket_ttl_secs: config.ticket_ttl.as_secs().max(1),
            max_nodes: config.max_nodes.max(1),
            node_retention_ms: ms(config.node_retention),
            max_body_bytes: config.max_body_bytes.max(4096),
            trust_forwarded_headers: config.trust_forwarded_headers,
            name: config.name.clone(),
            max_concurrent_probes: config.max_concurrent_probes.max(1),
        };
        let core = Core::new(
            settings,
            store,
            clock,
            key,
            public_url,
            registry,
            (
                usize::try_from(config.register_rate_limit).unwrap_or(usize::MAX),
                ms(config.register_rate_window),
            ),
            http,
        );
        *core.changes.lock() = changes;
        Ok(Directory {
            core: Arc::new(core),
            sweep_interval: config.sweep_interval.max(Duration::from_millis(50)),
            sync: SyncSettings {
                cursor,
                interval: config.sync_interval.max(Duration::from_millis(50)),
                resync_interval: config.resync_interval.max(Duration::from_secs(1)),
            },
        })
    }
}

/// An IICP directory (PROTOCOL.md §8): mount [`Directory::router`] on any HTTP server,
/// or run it on its own port with [`Directory::serve`].
///
/// ```no_run
/// use iicp_directory::{Directory, SqliteStore};
/// use iicp_transport::listener::{Listener, ListenerConfig};
/// use iicp_transport::shutdown;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let directory = Directory::builder()
///     .store(SqliteStore::open_async("directory.db").await?)
///     .private_mesh(true)
///     .build()
///     .await?;
/// let listener = Listener::bind("127.0.0.1:8090".parse()?, ListenerConfig::default()).await?;
/// let (trigger, signal) = shutdown::channel();
/// let server = tokio::spawn(async move { directory.serve(listener, signal).await });
/// // … later
/// trigger.fire();
/// server.await??;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Directory {
    core: Arc<Core>,
    sweep_interval: Duration,
    sync: SyncSettings,
}

/// Settings of the shared-store sync task.
#[derive(Debug, Clone, Copy)]
struct SyncSettings {
    /// The highest revision loaded at start.
    cursor: u64,
    interval: Duration,
    resync_interval: Duration,
}

impl Directory {
    /// A builder with the default [`Config`], a [`MemoryStore`] and the system clock.
    pub fn builder() -> DirectoryBuilder {
        DirectoryBuilder::default()
    }

    /// The HTTP router serving every endpoint under `/v1/…` and `/api/v1/…`, plus
    /// `/health`.
    pub fn router(&self) -> Arc<Router> {
        Arc::new(crate::api::router(Arc::clone(&self.core)))
    }

    /// The directory's Ed25519 public key (as served by `GET /v1/directory-key`).
    pub fn public_key(&self) -> DirectoryPublicKey {
        self.core.key.public_key()
    }

    /// The public base URL, once known.
    pub fn public_url(&self) -> Option<&str> {
        self.core.public_url.get().map(String::as_str)
    }

    /// Sets the public base URL if none was configured; returns whether it was set.
    pub fn set_public_url(&self, url: impl Into<String>) -> bool {
        let url = url.into();
        parse_url(&url, HTTP_SCHEMES).is_ok()
            && self
                .core
                .public_url
                .set(url.trim_end_matches('/').to_owned())
                .is_ok()
    }

    /// Number of stored nodes (live and dormant).
    pub fn node_count(&self) -> usize {
        self.core.read().nodes.len()
    }

    /// Starts the background sweep (endpoint re-probes with backoff, active probes,
    /// retention of dormant nodes) and, with a shared store, the task that follows the
    /// other directory processes' changes (the first call only). They run until
    /// `shutdown` fires; at most [`Config::max_concurrent_probes`] probes run at once.
    /// With a shared store, call it (or [`Directory::serve`], which does) also when
    /// mounting [`Directory::router`] elsewhere: without it the working copy does not
    /// follow the other processes, and their announcements queue up unread.
    pub fn spawn_background(&self, shutdown: Shutdown) -> JoinHandle<()> {
        let core = Arc::clone(&self.core);
        let changes = core.changes.lock().take();
        let sweep = crate::sweep::run(Arc::clone(&core), self.sweep_interval, shutdown.clone());
        let sync = self.sync;
        tokio::spawn(async move {
            match changes {
                Some(changes) => {
                    let follow = crate::sync::run(
                        core,
                        changes,
                        sync.cursor,
                        sync.interval,
                        sync.resync_interval,
                        shutdown,
                    );
                    tokio::join!(sweep, follow);
                }
                None => sweep.await,
            }
        })
    }

    /// Whether this process ran the last background sweep. Always true after the first
    /// sweep with a single-process store; with a shared store, true in the one process
    /// holding the sweep lease.
    pub fn is_sweeper(&self) -> bool {
        self.core.sweeper.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Serves the directory on `listener` (HTTP only) with the background sweep until
    /// `shutdown` fires. Derives the public URL from the bound address if none was
    /// configured.
    ///
    /// # Errors
    /// [`DirectoryError::Io`] when the listener fails.
    pub async fn serve(
        &self,
        listener: Listener,
        shutdown: Shutdown,
    ) -> Result<(), DirectoryError> {
        let addr = listener.local_addr()?;
        self.set_public_url(base_url_for(addr));
        let background = self.spawn_background(shutdown.clone());
        let services = Services {
            http: Some(self.router()),
            native: None,
        };
        let result = listener.serve(services, shutdown).await;
        let _ = background.await;
        result.map_err(DirectoryError::Io)
    }
}

/// `http://ip:port` for a bound address (unspecified addresses become loopback).
pub(crate) fn base_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}
