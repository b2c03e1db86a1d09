//! The native binary transport over TCP (PROTOCOL.md §10, §14.2; ADR 0002).
//!
//! * [`connection`] — one actor task per TCP (or TLS) connection that drives an
//!   [`iicp_proto::session::Session`]: it reads and writes frames, applies the session's
//!   timers, multiplexes outbound CALLs by call id, and hands inbound CALLs to a
//!   [`CallHandler`]. The same actor serves every role: task server, task client, relay
//!   worker and relay-accept server.
//! * [`client`] — [`NativeClient`], a pool of multiplexed connections per endpoint for
//!   `iicp://` and `iicpsec://` (TLS) targets.
//!
//! Servers are started through [`crate::listener`], which also shares the port with HTTP.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;

use iicp_proto::endpoint::{self, UrlError};
use iicp_proto::message::{Call, Control, Discover, Response};

pub mod client;
pub mod connection;

pub use client::{NativeClient, NativeClientConfig};
pub use connection::{CloseInfo, ConnectionConfig, ConnectionHandle, ResponseStream};

/// Default TCP port of the native transport (PROTOCOL.md §1.2).
pub use iicp_proto::constants::DEFAULT_PORT;

/// A boxed, sendable future, as returned by [`CallHandler::handle`].
pub use futures_util::future::BoxFuture;

/// What a handler knows about the CALL's connection.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// Remote address of the connection.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (`iicpsec://`).
    pub tls: bool,
}

/// Sends the non-final RESPONSEs of one streaming CALL to its connection, in order
/// ([`CallHandler::handle_streaming`]). Waits while the connection's queue is full, so
/// a slow reader slows the producer instead of growing memory.
#[derive(Clone, Debug)]
pub struct PartialSender(pub(crate) tokio::sync::mpsc::Sender<Response>);

impl PartialSender {
    /// Queues `response` (a non-final RESPONSE carrying the CALL's ids). `Err` when the
    /// connection is gone: stop producing.
    pub async fn send(&self, response: Response) -> Result<(), ConnectionGone> {
        self.0.send(response).await.map_err(|_| ConnectionGone)
    }

    /// A sender whose RESPONSEs go to `tx` (tests, relays that forward elsewhere).
    pub fn from_channel(tx: tokio::sync::mpsc::Sender<Response>) -> Self {
        Self(tx)
    }
}

/// The connection of a streaming CALL closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the native connection is gone")]
pub struct ConnectionGone;

/// Nodes listed in one DISCOVER answer when the request names no limit (framing §4.7).
pub const DISCOVER_DEFAULT_LIMIT: usize = 10;
/// Most nodes listed in one DISCOVER answer, whatever the request asks for.
pub const DISCOVER_MAX_LIMIT: usize = 100;

/// Executes native CALLs and answers DISCOVERs. The connection correlates the returned
/// RESPONSE with the CALL: a response without session or call id gets the CALL's.
pub trait CallHandler: Send + Sync + 'static {
    /// Runs one CALL to completion.
    fn handle(&self, call: Call, ctx: CallContext) -> BoxFuture<'static, Response>;

    /// Runs one CALL that may answer with several RESPONSEs (the service-lifecycle
    /// profile, PROTOCOL.md §11): non-final ones go through `partials`, in order, and the
    /// returned one is the last. The connection calls this; the default ignores
    /// `partials` and runs [`CallHandler::handle`].
    fn handle_streaming(
        &self,
        call: Call,
        ctx: CallContext,
        partials: PartialSender,
    ) -> BoxFuture<'static, Response> {
        let _ = partials;
        self.handle(call, ctx)
    }

    /// A CONTROL frame on this connection (PROTOCOL.md §10; the lifecycle profile's
    /// cancel). Called on the connection's task: act without blocking. The default
    /// ignores it.
    fn control(&self, control: &Control, ctx: &CallContext) {
        let _ = (control, ctx);
    }

    /// The nodes a DISCOVER on a task connection lists (PROTOCOL.md §10.5, §10.7): JSON
    /// objects with the directory's NODELIST field names, sent as string-keyed CBOR maps
    /// under key 20 of a RESPONSE `{2: session_id, 3: intent, 20: [...]}`.
    ///
    /// Called on the connection's task: answer from memory, without IO. The connection
    /// keeps at most the request's `limit` (default [`DISCOVER_DEFAULT_LIMIT`], at most
    /// [`DISCOVER_MAX_LIMIT`]). The default lists nothing, so a DISCOVER is still answered
    /// (an empty list) instead of leaving the client waiting.
    fn discover(&self, request: &Discover, ctx: &CallContext) -> Vec<serde_json::Value> {
        let _ = (request, ctx);
        Vec::new()
    }

    /// The node id announced in the ACK of each new connection, read when the connection
    /// is accepted; `None` (the default) keeps the configured
    /// [`session::Config::node_id`](iicp_proto::session::Config::node_id). For a server
    /// whose id is only known after it starts listening (a directory assigns it at
    /// registration).
    fn node_id(&self) -> Option<String> {
        None
    }
}

impl<F, Fut> CallHandler for F
where
    F: Fn(Call, CallContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn handle(&self, call: Call, ctx: CallContext) -> BoxFuture<'static, Response> {
        Box::pin(self(call, ctx))
    }
}

/// A native endpoint: `iicp://host:port` or `iicpsec://host:port` (default port 9484).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NativeEndpoint {
    /// Whether the connection uses TLS (`iicpsec://`).
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// An endpoint string that is not `iicp://` or `iicpsec://` `host[:port]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid native endpoint: {0}")]
pub struct EndpointError(&'static str);

impl FromStr for NativeEndpoint {
    type Err = EndpointError;

    /// `iicp://host[:port][/]` or `iicpsec://…`, parsed by the workspace's endpoint
    /// model ([`iicp_proto::endpoint::parse_url`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = endpoint::parse_url(s, endpoint::NATIVE_SCHEMES).map_err(|e| {
            EndpointError(match e {
                UrlError::Scheme => "scheme must be iicp:// or iicpsec://",
                UrlError::Extras => "user info, a query or a fragment is not allowed",
                _ => "malformed host or port",
            })
        })?;
        Ok(Self {
            tls: url.scheme == "iicpsec",
            host: url.host,
            port: url.port,
        })
    }
}

impl NativeEndpoint {
    /// The endpoint that shares host and port with an HTTP endpoint, as the SDKs derive
    /// it: `http://H:P` → `iicp://H:P`, `https://H:P` → `iicpsec://H:P`, the port
    /// defaulting to 80/443 (PROTOCOL.md §1.2).
    pub fn from_http(http_endpoint: &str) -> Option<Self> {
        let url = endpoint::parse_url(http_endpoint, endpoint::HTTP_SCHEMES).ok()?;
        Some(Self {
            tls: url.scheme == "https",
            host: url.host,
            port: url.port,
        })
    }

    /// `host:port` for connecting (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for NativeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "iicpsec" } else { "iicp" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl fmt::Debug for NativeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Errors of native calls and connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NativeError {
    /// TCP connect failed.
    #[error("connect to {endpoint} failed")]
    Connect {
        /// Target.
        endpoint: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TCP connect did not finish in time.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// The client's [`AddressRule`](crate::resolve::AddressRule) refused the endpoint's
    /// addresses; nothing was sent.
    #[error("connect to {0} refused: its address is not allowed")]
    AddressRefused(String),
    /// TLS handshake failed.
    #[error("TLS handshake with {endpoint} failed")]
    Tls {
        /// Target.
        endpoint: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint is in its 60 s back-off after an ACK timeout (PROTOCOL.md §10.3).
    #[error("{0} is backing off after a handshake timeout")]
    BackingOff(String),
    /// The connection closed before the answer arrived.
    #[error("connection closed: {0}")]
    Closed(String),
    /// No RESPONSE within the call's timeout.
    #[error("call timed out")]
    Timeout,
    /// The peer's RESPONSEs break the protocol for this call (a lifecycle frame to a
    /// buffered CALL).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The reader of a streamed call fell more than
    /// [`connection::STREAM_BUFFER`] RESPONSEs behind.
    #[error("the stream's reader fell behind")]
    Overflow,
    /// The session refused the request (duplicate id, too many in flight, …).
    #[error(transparent)]
    Session(#[from] iicp_proto::session::SessionError),
}

impl NativeError {
    /// Whether the failure is a timeout (connect or call).
    pub fn is_timeout(&self) -> bool {
        matches!(self, NativeError::Timeout | NativeError::ConnectTimeout(_))
    }

    /// Whether the failure happened before anything reached the peer.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            NativeError::Connect { .. }
                | NativeError::ConnectTimeout(_)
                | NativeError::AddressRefused(_)
                | NativeError::Tls { .. }
                | NativeError::BackingOff(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e: NativeEndpoint = "iicp://127.0.0.1:9500".parse().expect("ok");
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "127.0.0.1", 9500));
        let e: NativeEndpoint = "iicpsec://node.example".parse().expect("ok");
        assert_eq!((e.tls, e.port), (true, DEFAULT_PORT));
        let e: NativeEndpoint = "iicp://[::1]:7000".parse().expect("ok");
        assert_eq!((e.host.as_str(), e.port), ("::1", 7000));
        assert_eq!(e.to_string(), "iicp://[::1]:7000");
        assert_eq!(
            "iicp://[::1]".parse::<NativeEndpoint>().expect("ok").port,
            DEFAULT_PORT
        );
        for bad in [
            "http://x:1",
            "iicp://h:1?q",
            "iicp://h h",
            "iicp://",
            "iicp://h:0",
            "iicp://h:70000",
            "iicp://u@h:1",
            "iicp://[::1",
        ] {
            assert!(bad.parse::<NativeEndpoint>().is_err(), "{bad}");
        }
        assert_eq!(
            NativeEndpoint::from_http("http://10.0.0.1:9484")
                .expect("ok")
                .to_string(),
            "iicp://10.0.0.1:9484"
        );
        assert_eq!(
            NativeEndpoint::from_http("https://n.example/x")
                .expect("ok")
                .to_string(),
            "iicpsec://n.example:443"
        );
        assert_eq!(
            NativeEndpoint::from_http("http://[::1]:80")
                .expect("ok")
                .to_string(),
            "iicp://[::1]:80"
        );
        assert_eq!(
            NativeEndpoint::from_http("http://[::1]").expect("ok").port,
            80
        );
        assert!(NativeEndpoint::from_http("ftp://x").is_none());
    }
}
