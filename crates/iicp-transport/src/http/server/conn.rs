//! Connection driving: one HTTP/1.1 connection over any byte stream
//! ([`serve_connection`]) and a standalone accept loop ([`HttpServer`]).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::json::BodyLimits;
use super::{PeerAddr, Request, RequestBody, Router};
use crate::shutdown::Shutdown;

/// Settings of the HTTP server. `Default` gives the production values.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpServerConfig {
    /// Time a client has to send a complete request head; also the idle timeout of a
    /// kept-alive connection between requests. The slowloris guard. Default 10 s.
    pub header_read_timeout: Duration,
    /// Keep connections open between requests. Default on.
    pub keep_alive: bool,
    /// Largest request head (request line and headers) in bytes; larger → 431.
    /// Default 32 KiB.
    pub max_header_bytes: usize,
    /// Ceiling on any request body read with [`read_body`](super::read_body) /
    /// [`read_json`](super::read_json), whatever limit the handler asks for.
    /// Default 16 MiB.
    pub max_body_bytes: usize,
    /// Time a handler may spend receiving one request body. Default 30 s.
    pub body_read_timeout: Duration,
    /// Concurrent connections of an [`HttpServer`] (further clients wait in the accept
    /// backlog). Default 1024.
    pub max_connections: usize,
    /// After shutdown, how long in-flight requests may take to finish before their
    /// connections are dropped. Default 30 s.
    pub drain_timeout: Duration,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive: true,
            max_header_bytes: 32 * 1024,
            max_body_bytes: super::DEFAULT_BODY_LIMIT,
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves HTTP/1.1 on one connection until the peer closes it, an error occurs, or
/// `shutdown` fires; then the in-flight request (if any) is finished, within
/// [`HttpServerConfig::drain_timeout`], and the connection is closed.
///
/// `io` is any byte stream: a `TcpStream`, a TLS stream, or the one-port listener's
/// stream that replays the bytes it sniffed. `peer` is put into every request's
/// extensions as [`PeerAddr`]. Errors are logged at debug level, never returned: a
/// broken connection concerns only its peer.
pub async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Arc<Router>,
    config: &HttpServerConfig,
    shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = BodyLimits {
        max_bytes: config.max_body_bytes,
        read_timeout: config.body_read_timeout,
    };
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let router = Arc::clone(&router);
        async move {
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(PeerAddr(peer));
            parts.extensions.insert(limits);
            let req = Request::from_parts(parts, RequestBody::from(body));
            Ok::<_, Infallible>(router.handle(req).await)
        }
    });

    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(config.keep_alive)
        .max_header_size(config.max_header_bytes.max(1024));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(config.drain_timeout, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(%peer, "HTTP connection did not drain in time; dropped");
                    return;
                }
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
    }
}

/// A standalone HTTP server: accept loop, connection bound, graceful shutdown. Use it
/// when the native transport need not share the port (the one-port listener calls
/// [`serve_connection`] itself).
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    config: HttpServerConfig,
}

impl HttpServer {
    /// Binds a TCP listener on `addr` (port 0 picks a free port) with the default
    /// configuration.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self::from_listener(TcpListener::bind(addr).await?))
    }

    /// Serves on an already bound listener.
    pub fn from_listener(listener: TcpListener) -> Self {
        Self {
            listener,
            config: HttpServerConfig::default(),
        }
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: HttpServerConfig) -> Self {
        self.config = config;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` fires, at most
    /// [`HttpServerConfig::max_connections`] at a time, each driven by
    /// [`serve_connection`]. After shutdown it stops accepting (closing the listener),
    /// lets in-flight requests finish for at most [`HttpServerConfig::drain_timeout`],
    /// aborts what is left, and returns.
    pub async fn serve(self, router: impl Into<Arc<Router>>, shutdown: Shutdown) {
        let Self { listener, config } = self;
        let router: Arc<Router> = router.into();
        let config = Arc::new(config);
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let mut connections = JoinSet::new();
        let stop = shutdown.clone();

        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(err) = joined {
                        if err.is_panic() {
                            tracing::error!("HTTP connection task panicked");
                        }
                    }
                }
                accepted = accept(&listener, &permits) => match accepted {
                    Ok((permit, stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let router = Arc::clone(&router);
                        let config = Arc::clone(&config);
                        let shutdown = shutdown.clone();
                        connections.spawn(async move {
                            let _permit = permit;
                            serve_connection(stream, peer, router, &config, shutdown).await;
                        });
                    }
                    Err(AcceptError::Closed) => break,
                    Err(AcceptError::Io(err)) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %err, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        drop(listener);

        let deadline = tokio::time::sleep(config.drain_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = connections.join_next() => {
                    if joined.is_none() {
                        break;
                    }
                }
                () = &mut deadline => {
                    tracing::warn!(
                        remaining = connections.len(),
                        "HTTP drain deadline reached; aborting connections"
                    );
                    connections.abort_all();
                    while connections.join_next().await.is_some() {}
                    break;
                }
            }
        }
    }
}

enum AcceptError {
    Closed,
    Io(io::Error),
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Result<
    (
        tokio::sync::OwnedSemaphorePermit,
        tokio::net::TcpStream,
        SocketAddr,
    ),
    AcceptError,
> {
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|_| AcceptError::Closed)?;
    let (stream, peer) = listener.accept().await.map_err(AcceptError::Io)?;
    Ok((permit, stream, peer))
}
