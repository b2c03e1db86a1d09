//! The keep-alive pool under [`HttpClient`](super::HttpClient): HTTP/1.1 connections
//! driven by the task that uses them (ADR 0023).
//!
//! hyper splits a connection into a [`SendRequest`] handle and a [`Connection`] future
//! that does the I/O. hyper-util's pooled client spawns that future as a task of its
//! own, so each request crossed tasks on the way in, on the way out and once per body
//! frame, and a second spawned task per request waited to put the connection back. Here
//! the task that sends a request polls the connection itself, the response body polls
//! it while it is read, and the connection goes back to the pool as soon as the body has
//! ended. Nobody polls an idle connection: a server that closed it is noticed when it is
//! next used, and a request the connection never took is sent again on another one. That
//! is the only retry — a request that may have reached the server is never sent twice.
//!
//! Dropping a response body before its end closes the connection (the model server sees
//! the disconnect: how a cancelled stream reaches it).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::resolve::RuleResolver;

/// The connector: TCP (with the address rule and the connect timeout), then TLS for
/// `https`.
pub(super) type Connector = HttpsConnector<HttpConnector<RuleResolver>>;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Why the pool could not get a response head.
#[derive(Debug)]
pub(super) enum PoolError {
    /// No connection: resolving, the address rule, TCP, or the TLS handshake.
    Connect(Box<dyn StdError + Send + Sync>),
    /// The connection failed after it was established.
    Request(hyper::Error),
}

/// Where a connection goes: scheme and authority, and the `Host` header they give.
struct Origin {
    https: bool,
    authority: Box<str>,
    host: HeaderValue,
}

/// One connection: the handle requests go in by, and its I/O, polled by whoever uses it.
struct Conn {
    send: SendRequest<Full<Bytes>>,
    /// `None` once the connection has finished (closed, or failed).
    io: Option<Connection<Io, Full<Bytes>>>,
    origin: Arc<Origin>,
    /// The gate, and it as a waker: what the connection's I/O, the response and the body
    /// are polled with.
    gate: (Arc<Gate>, Waker),
}

/// Polling a connection from the task that uses it wakes that task for things the task
/// itself just did: the response head handed over, a body frame taken, the body asking
/// for more. Each would cost a second turn of the whole task (its HTTP server, the node's
/// pipeline …) for nothing. So the connection, its response and its body see a waker of
/// their own: while the task is polling them ([`Conn::drive`]) a wake-up only marks that
/// they should be polled again, which `drive` does before it returns; outside, it wakes
/// the task (socket readiness, the model server's next chunk).
#[derive(Default)]
struct Gate {
    /// [`BUSY`] while polled, [`MISSED`] when woken meanwhile.
    state: AtomicU8,
    task: AtomicWaker,
}

const BUSY: u8 = 1;
const MISSED: u8 = 2;

/// At most this many extra rounds per [`Conn::drive`] before it yields to the scheduler
/// (a connection that keeps waking itself must not starve other tasks).
const MAX_ROUNDS: usize = 8;

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let busy = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & BUSY != 0).then_some(s | MISSED)
            })
            .is_ok();
        if !busy {
            self.task.wake();
        }
    }
}

impl Conn {
    fn new(
        send: SendRequest<Full<Bytes>>,
        io: Connection<Io, Full<Bytes>>,
        origin: Arc<Origin>,
    ) -> Self {
        let gate = Arc::new(Gate::default());
        Self {
            send,
            io: Some(io),
            origin,
            gate: (Arc::clone(&gate), Waker::from(gate)),
        }
    }

    /// Runs `step` (which polls this connection and what it feeds) with the gate's
    /// waker, again while it was woken during the step, until it is ready or nothing
    /// new happened.
    fn drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Option<Connection<Io, Full<Bytes>>>, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let io = &mut self.io;
        drive_with(&self.gate, cx, |cx| step(io, cx))
    }

    /// Sends `request` and drives the connection until the response head is in.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Full<Bytes>>>> {
        let mut response = std::pin::pin!(self.send.try_send_request(request));
        std::future::poll_fn(|cx| {
            self.drive(cx, |io, cx| {
                // the connection first: it takes the request, writes it, reads the head
                let _ = poll_io(io, cx);
                response.as_mut().poll(cx)
            })
        })
        .await
    }

    /// Readies a connection whose response has ended for the pool: one more turn (it
    /// has read the response's end and goes back to waiting for a request), and the
    /// task that used it is no longer woken by it. Whether it can take a request.
    fn settle(&mut self) -> bool {
        self.gate.0.task.take();
        let idle = poll_io(&mut self.io, &mut Context::from_waker(Waker::noop())).is_pending();
        idle && self.send.is_ready()
    }
}

/// [`Conn::drive`] on a gate (and its waker): `step` polled with the gate's waker,
/// again while it was woken during the step, at most [`MAX_ROUNDS`] times.
fn drive_with<T>(
    (gate, gate_waker): &(Arc<Gate>, Waker),
    cx: &mut Context<'_>,
    mut step: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    gate.task.register(cx.waker());
    let mut inner = Context::from_waker(gate_waker);
    for _ in 0..MAX_ROUNDS {
        gate.state.store(BUSY, Ordering::Release);
        let polled = step(&mut inner);
        let state = gate.state.swap(0, Ordering::AcqRel);
        if polled.is_ready() || state & MISSED == 0 {
            return polled;
        }
    }
    // still waking itself: yield, and come back
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Polls a connection's I/O; drops it when it finishes, which also hands back a request
/// it never took and ends a body it was still feeding.
fn poll_io(io: &mut Option<Connection<Io, Full<Bytes>>>, cx: &mut Context<'_>) -> Poll<()> {
    let Some(conn) = io.as_mut() else {
        return Poll::Ready(());
    };
    match Pin::new(conn).poll(cx) {
        Poll::Ready(_) => {
            // an error has gone to the request or body it concerns
            *io = None;
            Poll::Ready(())
        }
        Poll::Pending => Poll::Pending,
    }
}

/// An idle connection and since when.
struct Parked {
    conn: Box<Conn>,
    since: Instant,
}

#[derive(Default)]
struct Idle {
    /// Per authority, `[http, https]`; the most recently used last.
    hosts: HashMap<Box<str>, [Vec<Parked>; 2]>,
    swept: Option<Instant>,
}

struct Shared {
    connector: Connector,
    idle: Mutex<Idle>,
    idle_timeout: Duration,
    max_idle_per_host: usize,
}

/// The pool. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub(super) struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    pub(super) fn new(
        connector: Connector,
        idle_timeout: Duration,
        max_idle_per_host: usize,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                connector,
                idle: Mutex::new(Idle::default()),
                idle_timeout,
                max_idle_per_host,
            }),
        }
    }

    /// Sends `request` (an absolute `http(s)` URI) and returns its response once the head
    /// is in; the body drives the connection while it is read, and hands it back to the
    /// pool at its end.
    pub(super) async fn request(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let uri = std::mem::take(request.uri_mut());
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let authority = uri.authority().map_or("", |a| a.as_str());
        *request.uri_mut() = origin_form(&uri);
        loop {
            let (mut conn, reused) = match self.checkout(https, authority) {
                Some(conn) => (conn, true),
                None => (self.connect(&uri, https, authority).await?, false),
            };
            if !request.headers().contains_key(HOST) {
                request.headers_mut().insert(HOST, conn.origin.host.clone());
            }
            match conn.exchange(request).await {
                Ok(response) => {
                    let pool = self.clone();
                    return Ok(response.map(|body| PooledBody {
                        body,
                        conn: Some(conn),
                        pool,
                    }));
                }
                Err(mut err) => match err.take_message() {
                    // an idle connection the server had closed: the request never left
                    Some(unsent) if reused => {
                        tracing::trace!("pooled connection was closed; sending on another");
                        request = unsent;
                    }
                    _ => return Err(PoolError::Request(err.into_error())),
                },
            }
        }
    }

    async fn connect(
        &self,
        uri: &Uri,
        https: bool,
        authority: &str,
    ) -> Result<Box<Conn>, PoolError> {
        let host = host_header(uri).map_err(|e| PoolError::Connect(Box::new(e)))?;
        let io = self
            .shared
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(PoolError::Connect)?;
        let (send, io) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(PoolError::Request)?;
        let origin = Arc::new(Origin {
            https,
            authority: authority.into(),
            host,
        });
        // boxed: a connection (hyper's state and buffers) is large, and moves with its
        // response and in and out of the pool
        Ok(Box::new(Conn::new(send, io, origin)))
    }

    /// The most recently used idle connection to `authority` that has not timed out.
    fn checkout(&self, https: bool, authority: &str) -> Option<Box<Conn>> {
        let mut idle = self.lock();
        let parked = idle.hosts.get_mut(authority)?;
        let list = &mut parked[usize::from(https)];
        let now = Instant::now();
        while let Some(p) = list.pop() {
            // (a parked connection was ready when parked; one closed since is found
            // when used, and its request sent again)
            if now.duration_since(p.since) < self.shared.idle_timeout {
                return Some(p.conn);
            }
        }
        None
    }

    /// Parks a connection whose last response has ended, if it can take another request.
    fn put(&self, mut conn: Box<Conn>) {
        if self.shared.max_idle_per_host == 0 || !conn.settle() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        self.sweep(&mut idle, now);
        let https = usize::from(conn.origin.https);
        let list = match idle.hosts.get_mut(&*conn.origin.authority) {
            Some(parked) => &mut parked[https],
            None => {
                let parked = idle.hosts.entry(conn.origin.authority.clone()).or_default();
                &mut parked[https]
            }
        };
        if list.len() >= self.shared.max_idle_per_host {
            list.remove(0);
        }
        list.push(Parked { conn, since: now });
    }

    /// Closes connections idle for longer than the idle timeout, at most once per
    /// second (idle connections to hosts no longer called would otherwise stay open).
    fn sweep(&self, idle: &mut Idle, now: Instant) {
        if idle
            .swept
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        idle.swept = Some(now);
        let timeout = self.shared.idle_timeout;
        idle.hosts.retain(|_, lists| {
            for list in lists.iter_mut() {
                list.retain(|p| now.duration_since(p.since) < timeout);
            }
            lists.iter().any(|l| !l.is_empty())
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // the pool's state stays consistent whatever panicked while it was held
        self.shared
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Idle connections, per scheme, to `authority` (tests).
    #[cfg(test)]
    fn idle_count(&self, https: bool, authority: &str) -> usize {
        self.lock()
            .hosts
            .get(authority)
            .map_or(0, |l| l[usize::from(https)].len())
    }
}

/// The request target in origin form (`/path?query`), as HTTP/1.1 sends it to a server.
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// `Host`: the host, with the port when it is not the scheme's default.
fn host_header(uri: &Uri) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let host = uri.host().unwrap_or_default();
    let default = if uri.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    match uri.port_u16() {
        Some(port) if port != default => HeaderValue::try_from(format!("{host}:{port}")),
        _ => HeaderValue::try_from(host),
    }
}

/// A response body that drives its connection while it is read, and gives the
/// connection back to the pool at its end. Dropped before its end, it closes the
/// connection.
pub(crate) struct PooledBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: Pool,
}

impl fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBody")
            .field("body", &self.body)
            .field("connection", &self.conn.is_some())
            .finish()
    }
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }

    /// What the body yielded, with the connection released when it was the end.
    fn seen(
        &mut self,
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            // a failed body leaves the connection unusable
            Some(Err(_)) => self.conn = None,
        }
        Poll::Ready(frame)
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let body = &mut this.body;
        let polled = match this.conn.as_mut() {
            // the connection is gone: its end has reached the body
            None => Pin::new(body).poll_frame(cx),
            Some(conn) => conn.drive(cx, |io, cx| loop {
                if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                    return Poll::Ready(frame);
                }
                if io.is_none() {
                    return Poll::Pending;
                }
                // the body waits for its connection: drive it, then look again
                if poll_io(io, cx).is_ready() {
                    // finished: the body now ends, or fails if it was cut short
                    continue;
                }
                return Pin::new(&mut *body).poll_frame(cx);
            }),
        };
        match polled {
            Poll::Ready(frame) => this.seen(frame),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn requests_go_out_in_origin_form() {
        let uri: Uri = "http://h.example:8080/v1/chat?x=1".parse().unwrap();
        assert_eq!(origin_form(&uri), "/v1/chat?x=1");
        let uri: Uri = "https://h.example".parse().unwrap();
        assert_eq!(origin_form(&uri), "/");
    }

    #[test]
    fn host_names_the_port_only_when_it_is_not_the_default() {
        let host = |u: &str| host_header(&u.parse().unwrap()).unwrap();
        assert_eq!(host("http://h.example/x"), "h.example");
        assert_eq!(host("http://h.example:80/x"), "h.example");
        assert_eq!(host("http://h.example:443/x"), "h.example:443");
        assert_eq!(host("https://h.example:443/x"), "h.example");
        assert_eq!(host("https://h.example:8443/"), "h.example:8443");
        assert_eq!(host("http://[::1]:9484/"), "[::1]:9484");
        assert_eq!(host("http://127.0.0.1:9484/"), "127.0.0.1:9484");
    }

    fn pool(idle_timeout: Duration, max_idle_per_host: usize) -> Pool {
        let connector = super::super::connector(&super::super::HttpClientConfig::default());
        Pool::new(connector.unwrap(), idle_timeout, max_idle_per_host)
    }

    /// A raw HTTP/1.1 server whose answer depends on the path. It counts connections
    /// and reports each connection's end (the client closed it, or it did).
    struct Server {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: mpsc::Receiver<&'static str>,
    }

    async fn server() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, closed) = mpsc::channel(64);
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            let _ = tx.send("client").await;
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        let host = head
                            .lines()
                            .find_map(|l| l.strip_prefix("host: "))
                            .unwrap_or("")
                            .to_owned();
                        let reply = match path.as_str() {
                            "/conn-close" => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned(),
                            "/half" | "/stall" => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf".to_owned(),
                            _ => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{host}", host.len()),
                        };
                        sock.write_all(reply.as_bytes()).await.unwrap();
                        if path == "/close-after" {
                            // after the client has parked the connection
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if matches!(path.as_str(), "/close-after" | "/conn-close" | "/half") {
                            let _ = sock.shutdown().await;
                            let _ = tx.send("server").await;
                            return;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            accepted,
            closed,
        }
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
        Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn text(pool: &Pool, request: Request<Full<Bytes>>) -> String {
        let response = pool.request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_has_ended() {
        let s = server().await;
        let pool = pool(Duration::from_secs(90), 4);
        let authority = s.addr.to_string();
        // the Host header is the URL's authority
        assert_eq!(text(&pool, get(s.addr, "/a")).await, authority);
        assert_eq!(pool.idle_count(false, &authority), 1);
        assert_eq!(text(&pool, get(s.addr, "/b")).await, authority);
        assert_eq!(text(&pool, get(s.addr, "/c")).await, authority);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(false, &authority), 1);
        // not shared across schemes
        assert_eq!(pool.idle_count(true, &authority), 0);
    }

    #[tokio::test]
    async fn a_request_on_a_connection_the_server_closed_goes_out_on_a_new_one() {
        let mut s = server().await;
        let pool = pool(Duration::from_secs(90), 4);
        assert_eq!(
            text(&pool, get(s.addr, "/close-after")).await,
            s.addr.to_string()
        );
        // the server has closed it; the pool has not noticed (nobody polls it)
        assert_eq!(s.closed.recv().await, Some("server"));
        assert_eq!(pool.idle_count(false, &s.addr.to_string()), 1);
        assert_eq!(text(&pool, get(s.addr, "/a")).await, s.addr.to_string());
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_is_not_parked() {
        let s = server().await;
        let pool = pool(Duration::from_secs(90), 4);
        assert_eq!(text(&pool, get(s.addr, "/conn-close")).await, "ok");
        assert_eq!(pool.idle_count(false, &s.addr.to_string()), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        let mut s = server().await;
        let pool = pool(Duration::from_secs(90), 4);
        let response = pool.request(get(s.addr, "/stall")).await.unwrap();
        drop(response);
        // the server sees the disconnect at once
        let end = tokio::time::timeout(Duration::from_secs(5), s.closed.recv()).await;
        assert_eq!(end.unwrap(), Some("client"));
        assert_eq!(pool.idle_count(false, &s.addr.to_string()), 0);
        assert_eq!(text(&pool, get(s.addr, "/a")).await, s.addr.to_string());
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_the_connection_is_dropped() {
        let s = server().await;
        let pool = pool(Duration::from_secs(90), 4);
        let response = pool.request(get(s.addr, "/half")).await.unwrap();
        // 4 of 10 bytes, then the server closes
        let read = response.into_body().collect().await;
        assert!(read.is_err(), "6 bytes are missing");
        assert_eq!(pool.idle_count(false, &s.addr.to_string()), 0);
        assert_eq!(text(&pool, get(s.addr, "/a")).await, s.addr.to_string());
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let mut s = server().await;
        let pool = pool(Duration::from_millis(50), 4);
        text(&pool, get(s.addr, "/a")).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        // expired: not used, and closed
        text(&pool, get(s.addr, "/b")).await;
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
        let end = tokio::time::timeout(Duration::from_secs(5), s.closed.recv()).await;
        assert_eq!(end.unwrap(), Some("client"));
    }

    #[tokio::test]
    async fn at_most_max_idle_per_host_are_kept() {
        let s = server().await;
        let pool = pool(Duration::from_secs(90), 2);
        let responses = futures_util::future::join_all(
            (0..4).map(|i| pool.request(get(s.addr, &format!("/{i}")))),
        )
        .await;
        assert_eq!(s.accepted.load(Ordering::SeqCst), 4);
        for r in responses {
            r.unwrap().into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(false, &s.addr.to_string()), 2);
        // with none kept, nothing is parked
        let none = super::Pool::new(pool.shared.connector.clone(), Duration::from_secs(90), 0);
        text(&none, get(s.addr, "/a")).await;
        assert_eq!(none.idle_count(false, &s.addr.to_string()), 0);
    }

    /// Counts its wake-ups.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_up_while_the_task_polls_is_kept_for_another_round_not_sent_to_the_task() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let task = Waker::from(Arc::clone(&counter));
        let gate = Arc::new(Gate::default());
        let gate_waker = Waker::from(Arc::clone(&gate));
        gate.task.register(&task);

        gate.state.store(BUSY, Ordering::Release);
        gate_waker.wake_by_ref();
        gate_waker.wake_by_ref();
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        assert_eq!(gate.state.swap(0, Ordering::AcqRel), BUSY | MISSED);

        // outside a poll, a wake-up reaches the task
        gate_waker.wake_by_ref();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        // once: the registration is used up until the task polls again
        gate_waker.wake_by_ref();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn drive_polls_again_while_woken_and_yields_after_a_bounded_number_of_rounds() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let task = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&task);
        let gate = Arc::new(Gate::default());
        let conn_gate = (Arc::clone(&gate), Waker::from(gate));

        // a step that wakes itself twice, then is ready
        let mut rounds = 0;
        let polled = drive_with(&conn_gate, &mut cx, |cx| {
            rounds += 1;
            if rounds < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(rounds)
            }
        });
        assert_eq!(polled, Poll::Ready(3));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);

        // a step that always wakes itself: the task is woken to come back later
        let mut rounds = 0;
        let polled: Poll<()> = drive_with(&conn_gate, &mut cx, |cx| {
            rounds += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(rounds, MAX_ROUNDS);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);

        // a step that is pending and not woken: one round, nothing sent to the task
        let mut rounds = 0;
        let polled: Poll<()> = drive_with(&conn_gate, &mut cx, |_| {
            rounds += 1;
            Poll::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(rounds, 1);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = pool(Duration::from_secs(90), 4)
            .request(get(addr, "/"))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
    }
}
