//! `iicp-client`: the IICP consumer SDK — discover nodes at a directory, select one,
//! submit tasks directly to it (HTTP or the native transport, IICP-CX encrypted), with
//! the retry, back-off and circuit-breaker rules of the protocol; plus the directory
//! client the node runtime and the CLI share.
//!
//! What it is:
//! * [`Client`] / [`ClientBuilder`] — `discover`, `submit`, `chat`, `chat_with`
//!   (PROTOCOL.md §4, §8.4–§8.5, §9, §16; DESIGN §4.5, §4.6, §4.8–§4.10, §4.12);
//! * [`DirectoryClient`] — register, heartbeat, deregister, discover, dispatch tickets,
//!   consumer tokens, the directory key (§8);
//! * [`Error`] — protocol codes as data ([`ErrorCode`]), never a token or payload;
//! * [`select`], [`endpoint`], [`time`] — selection profiles, the endpoint (SSRF) policy
//!   and the injected clock, sleeper and random source.
//!
//! What it is not: no server code, no NAT traversal, no backends. Place in the crate
//! graph: layer L2, above `iicp-proto` (wire types, crypto) and `iicp-transport` (HTTP
//! and native drivers). No optional features.
//!
//! ```no_run
//! use iicp_client::Client;
//! use iicp_proto::task::ChatMessage;
//!
//! # async fn run() -> Result<(), iicp_client::Error> {
//! let client = Client::new()?;
//! let reply = client.chat(vec![ChatMessage::new("user", "Hello")]).await?;
//! println!("{}", reply.text());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod breaker;
mod client;
pub mod directory;
pub mod endpoint;
pub mod error;
pub mod load;
mod options;
pub mod select;
mod submit;
pub mod time;

pub use breaker::{FAILURE_THRESHOLD as BREAKER_FAILURE_THRESHOLD, OPEN_FOR as BREAKER_OPEN_FOR};
pub use client::{
    backoff, Client, ClientBuilder, BACKOFF_BASE, BACKOFF_JITTER, DEFAULT_DISCOVERY_TTL,
    DEFAULT_TIMEOUT, MAX_ATTEMPTS_PER_NODE, MAX_TIMEOUT,
};
pub use directory::{DirectoryClient, TicketOutcome, VerifiedTicket, DEFAULT_DIRECTORY_URL};
pub use endpoint::{EndpointPolicy, EndpointRefusal};
pub use error::Error;
pub use iicp_proto::error::ErrorCode;
pub use options::{
    ChatOptions, ChatResult, DiscoverOptions, Encryption, RouteDiscovery, Task, TaskResult,
    Transport, TransportUsed, CHAT_INTENT,
};
pub use select::Strategy;
pub use submit::NATIVE_CX_V1;
