//! `iicp-transport`: the tokio drivers that carry `iicp-proto` over real sockets.
//!
//! What it is:
//! * [`native`] — the native binary transport (12-byte frames + CBOR over TCP, TLS for
//!   `iicpsec://`): a server driver that runs one [`iicp_proto::session::Session`] per
//!   connection and hands CALLs to a [`native::CallHandler`], and a pooled, multiplexing
//!   client ([`native::NativeClient`]).
//! * [`http`] — an HTTP/1.1 server over hyper with a small typed router and JSON helpers
//!   (used by the node and the directory), and a pooled rustls HTTP client.
//! * [`listener`] — one TCP port for both: the first bytes of each connection decide
//!   (`IICP` → native, anything else → HTTP).
//! * [`events`] — the event log of a service-lifecycle task and a bounded registry of
//!   them, shared by the node that runs streaming tasks and a relay that forwards them.
//! * [`shutdown`] — the graceful-shutdown signal shared by the servers.
//! * [`random`] — OS randomness drawn in blocks, for nonces and ids on hot paths.
//! * [`resolve`] — name resolution with an address rule checked on the addresses the
//!   clients actually dial (no DNS-rebinding window between a policy check and connect).
//!
//! What it is not: nothing here knows about directories, node selection, backends, NAT or
//! configuration files. Place in the crate graph: layer L1, above `iicp-proto` only.
#![forbid(unsafe_code)]

pub mod clock;
pub mod events;
pub mod http;
pub mod listener;
pub mod native;
pub mod random;
pub mod resolve;
pub mod shutdown;

pub use shutdown::CancellationToken;
