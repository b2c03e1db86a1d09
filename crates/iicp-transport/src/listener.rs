//! One TCP port for HTTP and the native transport (PROTOCOL.md §1.2 "single-port
//! multiplexing", DESIGN.md §4.2).
//!
//! Each accepted connection's first bytes decide: `IICP` → native session, anything
//! else → HTTP. The decision is made as soon as the bytes diverge from `IICP`, so an
//! HTTP client is never delayed, and a peer that sends its first bytes one at a time
//! still works. With a TLS configuration, a connection that opens with a TLS record
//! (`0x16`) is decrypted first and sniffed again inside, so `iicpsec://` and `https://`
//! share the port too. The sniffed bytes are replayed to the chosen protocol.
//!
//! Bounds: concurrent connections (a semaphore), the sniff timeout (a silent peer is cut),
//! and a drain deadline on shutdown.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::http::server::{self as http_server, HttpServerConfig, Router};
use crate::native::connection::{self, ConnectionConfig};
use crate::native::{CallContext, CallHandler};
use crate::shutdown::Shutdown;

/// What the port serves.
#[derive(Clone)]
pub struct Services {
    /// The HTTP router (`None`: HTTP connections are closed).
    pub http: Option<Arc<Router>>,
    /// The native CALL handler (`None`: native connections are closed).
    pub native: Option<Arc<dyn CallHandler>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("http", &self.http.is_some())
            .field("native", &self.native.is_some())
            .finish()
    }
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Most connections served at once; further connections wait in the accept queue.
    pub max_connections: usize,
    /// A connection must send enough bytes to be classified within this.
    pub sniff_timeout: Duration,
    /// After shutdown, how long in-flight connections may take to finish.
    pub drain_timeout: Duration,
    /// Native connection settings (server role).
    pub native: ConnectionConfig,
    /// HTTP connection settings.
    pub http: HttpServerConfig,
    /// TLS for `iicpsec://` and `https://` on the same port.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            sniff_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            native: ConnectionConfig::server(),
            http: HttpServerConfig::default(),
            tls: None,
        }
    }
}

/// A bound port serving HTTP and native IICP.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    config: ListenerConfig,
}

impl Listener {
    /// Binds `addr` (use port 0 for an ephemeral port).
    pub async fn bind(addr: SocketAddr, config: ListenerConfig) -> io::Result<Self> {
        Ok(Self {
            tcp: TcpListener::bind(addr).await?,
            config,
        })
    }

    /// Binds the first free port of `start`, `start + 1`, … on `host`: at most `tries`
    /// ports, none past 65535. The listener that bound is kept, so no other process can
    /// take the port between a check and the bind. Port 0 binds one ephemeral port.
    ///
    /// # Errors
    /// `AddrInUse`, naming the range, when every port tried is in use; any other bind
    /// error (no such address, a privileged port) at once.
    pub async fn bind_first_free(
        host: IpAddr,
        start: u16,
        tries: u16,
        config: ListenerConfig,
    ) -> io::Result<Self> {
        let last = if start == 0 {
            0
        } else {
            start.saturating_add(tries.max(1) - 1)
        };
        for port in start..=last {
            match TcpListener::bind(SocketAddr::new(host, port)).await {
                Ok(tcp) => return Ok(Self { tcp, config }),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("every port of {start}-{last} on {host} is in use"),
        ))
    }

    /// The settings connections are served with; adjust them before [`Listener::serve`].
    pub fn config_mut(&mut self) -> &mut ListenerConfig {
        &mut self.config
    }

    /// Binds `[::]:port` accepting IPv4 and IPv6 where the OS allows, else `0.0.0.0:port`.
    pub fn bind_dual_stack(port: u16, config: ListenerConfig) -> io::Result<Self> {
        let v6 = (|| {
            let s = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            s.set_only_v6(false)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            Ok::<_, io::Error>(std::net::TcpListener::from(s))
        })();
        let std_listener = match v6 {
            Ok(l) => l,
            Err(_) => {
                let s = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                s.set_reuse_address(true)?;
                s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                std::net::TcpListener::from(s)
            }
        };
        Ok(Self {
            tcp: TcpListener::from_std(std_listener)?,
            config,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts and serves connections until `shutdown` fires, then stops accepting and
    /// waits up to the drain timeout for open connections to finish.
    pub async fn serve(self, services: Services, shutdown: Shutdown) -> io::Result<()> {
        let config = Arc::new(self.config);
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let mut conns = JoinSet::new();
        let stop = shutdown.clone();
        let anchor = tokio::spawn(crate::clock::anchor_timers(shutdown.clone()));
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.cancelled() => break,
            };
            let accepted = tokio::select! {
                a = self.tcp.accept() => a,
                _ = stop.cancelled() => break,
            };
            while conns.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let services = services.clone();
            let config = Arc::clone(&config);
            let shutdown = shutdown.clone();
            conns.spawn(async move {
                handle(stream, peer, &services, &config, shutdown).await;
                drop(permit);
            });
        }
        drop(self.tcp);
        anchor.abort();
        let drained = tokio::time::timeout(config.drain_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = conns.len(),
                "drain deadline passed; closing remaining connections"
            );
            conns.abort_all();
        }
        Ok(())
    }
}

/// What the first bytes of a connection say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Native,
    Tls,
    Http,
}

/// Reads until the prefix is classified; returns the bytes read.
async fn sniff<S: AsyncRead + Unpin>(io: &mut S, allow_tls: bool) -> io::Result<(Kind, Vec<u8>)> {
    const MAGIC: &[u8; 4] = b"IICP";
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if allow_tls && buf[0] == 0x16 {
            return Ok((Kind::Tls, buf));
        }
        let k = buf.len().min(4);
        if buf[..k] != MAGIC[..k] {
            return Ok((Kind::Http, buf));
        }
        if buf.len() >= 4 {
            return Ok((Kind::Native, buf));
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    services: &Services,
    config: &ListenerConfig,
    shutdown: Shutdown,
) {
    // a connection that has not said anything yet is simply dropped on shutdown
    // (pooling clients open connections they may never use)
    let stop = shutdown.clone();
    let sniffed = tokio::select! {
        r = tokio::time::timeout(config.sniff_timeout, sniff(&mut stream, config.tls.is_some())) => r,
        () = stop.cancelled() => return,
    };
    let (kind, prefix) = match sniffed {
        Ok(Ok(x)) => x,
        Ok(Err(_)) | Err(_) => return,
    };
    let io = Rewind::new(prefix, stream);
    // Each path is boxed: the task of a connection then holds only the state of the
    // path it takes (the TLS path alone is several KiB), which matters for servers with
    // many thousands of idle connections.
    match kind {
        Kind::Native => Box::pin(serve_native(io, peer, false, services, config, shutdown)).await,
        Kind::Http => Box::pin(serve_http(io, peer, services, config, shutdown)).await,
        Kind::Tls => Box::pin(serve_tls(io, peer, services, config, shutdown)).await,
    }
}

async fn serve_tls(
    io: Rewind<TcpStream>,
    peer: SocketAddr,
    services: &Services,
    config: &ListenerConfig,
    shutdown: Shutdown,
) {
    let Some(tls) = config.tls.clone() else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let Ok(Ok(mut tls_stream)) =
        tokio::time::timeout(config.sniff_timeout, acceptor.accept(io)).await
    else {
        return;
    };
    let (kind, prefix) =
        match tokio::time::timeout(config.sniff_timeout, sniff(&mut tls_stream, false)).await {
            Ok(Ok(x)) => x,
            _ => return,
        };
    let inner = Rewind::new(prefix, tls_stream);
    match kind {
        Kind::Native => serve_native(inner, peer, true, services, config, shutdown).await,
        _ => serve_http(inner, peer, services, config, shutdown).await,
    }
}

async fn serve_native<IO>(
    io: IO,
    peer: SocketAddr,
    tls: bool,
    services: &Services,
    config: &ListenerConfig,
    shutdown: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(handler) = services.native.clone() else {
        tracing::debug!(%peer, "native connection refused: native transport disabled");
        return;
    };
    let mut native = config.native.clone();
    if let Some(id) = handler.node_id() {
        native.session.node_id = Some(id);
    }
    let info = connection::serve(io, CallContext { peer, tls }, native, handler, shutdown).await;
    tracing::trace!(%peer, reason = %info.reason, "native connection ended");
}

async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    services: &Services,
    config: &ListenerConfig,
    shutdown: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(router) = services.http.clone() else {
        return;
    };
    http_server::serve_connection(io, peer, router, &config.http, shutdown).await;
}

/// A stream that first replays bytes already read from it.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Replays `prefix`, then reads from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniffing() {
        let cases: [(&[u8], Kind); 4] = [
            (b"IICP\x01", Kind::Native),
            (b"GET / HTTP/1.1\r\n", Kind::Http),
            (b"IIX", Kind::Http),
            (b"\x16\x03\x01", Kind::Tls),
        ];
        for (input, want) in cases {
            let mut r = input;
            let (kind, prefix) = sniff(&mut r, true).await.expect("sniff");
            assert_eq!(kind, want);
            assert_eq!(prefix, input);
        }
        let mut short: &[u8] = b"II";
        assert!(
            sniff(&mut short, false).await.is_err(),
            "EOF before a decision"
        );
    }

    #[tokio::test]
    async fn bind_first_free_skips_ports_in_use() {
        let host = IpAddr::from([127, 0, 0, 1]);
        let cfg = ListenerConfig::default;
        let taken = Listener::bind(SocketAddr::new(host, 0), cfg())
            .await
            .expect("bind");
        let port = taken.local_addr().expect("addr").port();
        // the port in use is skipped, and the listener that bound is the one returned
        let next = Listener::bind_first_free(host, port, 64, cfg())
            .await
            .expect("a free port among the next 64");
        let got = next.local_addr().expect("addr").port();
        assert!(
            got > port && got < port.saturating_add(64),
            "{port} -> {got}"
        );
        // nothing free: a clear error naming the range
        let e = Listener::bind_first_free(host, port, 1, cfg())
            .await
            .expect_err("every port in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            e.to_string(),
            format!("every port of {port}-{port} on 127.0.0.1 is in use")
        );
        // port 0: one ephemeral port
        let any = Listener::bind_first_free(host, 0, 64, cfg())
            .await
            .expect("ephemeral");
        assert_ne!(any.local_addr().expect("addr").port(), 0);
    }

    #[tokio::test]
    async fn rewind_replays_prefix() {
        let mut r = Rewind::new(b"abc".to_vec(), &b"def"[..]);
        let mut out = String::new();
        r.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "abcdef");
    }
}
#[cfg(test)]
mod size_tests {
    /// Every accepted connection is one task holding this future; the TLS and HTTP
    /// paths are boxed so an idle native connection does not pay for them (the whole
    /// future was 11 KiB before).
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let services = super::Services {
            http: None,
            native: None,
        };
        let config = super::ListenerConfig::default();
        let (_t, sd) = crate::shutdown::channel();
        let f = super::handle(s, addr, &services, &config, sd);
        assert!(
            std::mem::size_of_val(&f) <= 1024,
            "{}",
            std::mem::size_of_val(&f)
        );
    }
}
