//! The one HTTP test server of the kit: serves a [`Router`] of iicp-transport on
//! 127.0.0.1:0, counts the TCP connections it accepts, keeps a copy of every byte it
//! receives, and stops when its [`Server`] is dropped. The scripted peers
//! ([`crate::scripted`]) and the fakes ([`crate::fake`]) run on it, and tests serve their
//! own routers with [`serve`].
//!
//! [`Recorded`] is how a handler keeps one request (method, path, headers, body, arrival
//! time); [`record`] reads the body and makes one.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use iicp_transport::http::server::{
    read_body, serve_connection, HttpServerConfig, Request, Router,
};
use iicp_transport::shutdown::{self, Trigger};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// Largest request body [`record`] keeps.
const MAX_RECORDED_BODY: usize = 4 << 20;

/// A stream that copies every byte it reads into `log`.
struct Tee<S> {
    inner: S,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            self.log.lock().extend_from_slice(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A running HTTP test server; stops accepting, and asks its connections to finish, when
/// dropped.
pub struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
    _trigger: Trigger,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("accepted", &self.accepted())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The bound address (127.0.0.1 and the port picked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every byte received so far, all connections concatenated, as text (invalid UTF-8
    /// replaced).
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock()).into_owned()
    }
}

/// Serves `router` on 127.0.0.1 and a free port with the default
/// [`HttpServerConfig`], until the returned [`Server`] is dropped.
///
/// # Errors
/// When no port can be bound.
pub async fn serve(router: Router) -> std::io::Result<Server> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr()?;
    let router = Arc::new(router);
    let connections = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (trigger, shutdown) = shutdown::channel();
    {
        let connections = Arc::clone(&connections);
        let bytes = Arc::clone(&bytes);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let config = HttpServerConfig::default();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, peer)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        connections.fetch_add(1, Ordering::SeqCst);
                        let io = Tee { inner: stream, log: Arc::clone(&bytes) };
                        let router = Arc::clone(&router);
                        let config = config.clone();
                        let sd = shutdown.clone();
                        tokio::spawn(async move {
                            serve_connection(io, peer, router, &config, sd).await;
                        });
                    }
                    () = stop.cancelled() => break,
                }
            }
        });
    }
    Ok(Server {
        addr,
        connections,
        bytes,
        _trigger: trigger,
    })
}

/// One request as a handler saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header's value as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether `needle` occurs anywhere in the request (path, header values, body).
    pub fn contains(&self, needle: &str) -> bool {
        let n = needle.as_bytes();
        let has = |hay: &[u8]| hay.windows(n.len().max(1)).any(|w| w == n);
        has(self.path.as_bytes())
            || self.headers.values().any(|v| has(v.as_bytes()))
            || has(&self.body)
    }
}

/// Reads the body of `req` (at most 4 MiB; a body that cannot be read counts as empty)
/// and records the request.
pub async fn record(req: &mut Request) -> Recorded {
    let body = read_body(req, MAX_RECORDED_BODY)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Recorded {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: req.headers().clone(),
        body,
        at: Instant::now(),
    }
}
