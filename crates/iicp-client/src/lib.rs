//! `iicp-client`: the IICP consumer SDK — discover nodes at a directory, select one,
//! submit tasks directly to it (HTTP or the native transport, IICP-CX encrypted), with
//! the retry, back-off and circuit-breaker rules of the protocol; plus the directory
//! client the node runtime and the CLI share.
//!
//! What it is:
//! * [`Client`] / [`ClientBuilder`] — `discover`, `submit`, `chat`, `chat_with`, and
//!   streamed `submit_stream` / `chat_stream`
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
//! use iicp_client::{ChatMessage, Client};
//!
//! # async fn run() -> Result<(), iicp_client::Error> {
//! let client = Client::new()?;
//! let reply = client.chat(vec![ChatMessage::new("user", "Hello")]).await?;
//! println!("{}", reply.text());
//! # Ok(()) }
//! ```
//!
//! Everything a caller names is re-exported here ([`ChatMessage`], [`NodeEntry`],
//! [`Qos`], [`Constraints`], [`TaskId`], [`ChatCompletion`], [`ErrorCode`], [`Secret`]),
//! so `iicp-client` is the one dependency an application needs.
//!
//! # Guide
//!
//! ## Talk to a local dev mesh
//!
//! `iicp dev` runs a directory and two nodes on this machine and prints the
//! directory URL. Nodes there listen on loopback, which the default endpoint (SSRF)
//! policy refuses, so opt in to private endpoints:
//!
//! ```no_run
//! use iicp_client::{ChatMessage, Client};
//!
//! # async fn run() -> Result<(), iicp_client::Error> {
//! let client = Client::builder()
//!     .directory_url("http://127.0.0.1:41669/api") // what `iicp dev` printed
//!     .allow_private_endpoints(true)
//!     .build()?;
//! let reply = client.chat(vec![ChatMessage::new("user", "Hello, mesh")]).await?;
//! println!("{} answered: {}", reply.node_id, reply.text());
//! # Ok(()) }
//! ```
//!
//! ## Handle errors
//!
//! Every failure is one [`Error`] with a protocol [`ErrorCode`], an [`ErrorKind`] to
//! match on, and predicates for the usual decisions. `is_retryable` is the rule the
//! client's own retry loop follows: after `all_nodes_failed` it is true exactly when
//! every node failed transiently (429, 503, 504, a timeout, a refused connection).
//!
//! ```no_run
//! use std::time::Duration;
//! use iicp_client::{ChatMessage, Client, ErrorKind};
//!
//! # async fn run(client: Client) -> Result<(), iicp_client::Error> {
//! match client.chat(vec![ChatMessage::new("user", "Hi")]).await {
//!     Ok(reply) => println!("{}", reply.text()),
//!     Err(e) if e.is_retryable() => {
//!         // the mesh is busy or changing: wait as asked, then try again
//!         let wait = e.retry_after().unwrap_or(Duration::from_secs(1));
//!         tokio::time::sleep(wait).await;
//!     }
//!     Err(e) => match e.kind() {
//!         ErrorKind::Config | ErrorKind::Input => return Err(e), // our mistake
//!         ErrorKind::NoNodes => eprintln!("no node serves this: {e}"),
//!         _ => eprintln!("failed: {e}"), // the message names the last cause
//!     },
//! }
//! # Ok(()) }
//! ```
//!
//! ## Pin a node
//!
//! A conversation often wants the node that answered its first turn (its cache, its
//! model). [`ChatOptions::node_id`] (for any task [`DiscoverOptions::node_id`]) makes
//! that node the only candidate; when it
//! has left the mesh the call fails with `no_nodes_available` instead of silently
//! landing elsewhere.
//!
//! ```no_run
//! use iicp_client::{ChatMessage, ChatOptions, Client};
//!
//! # async fn run(client: Client) -> Result<(), iicp_client::Error> {
//! let first = client.chat(vec![ChatMessage::new("user", "Remember: 42")]).await?;
//! let pinned = ChatOptions { node_id: Some(first.node_id.clone()), ..Default::default() };
//! let again = client
//!     .chat_with(vec![ChatMessage::new("user", "What did I say?")], pinned)
//!     .await?;
//! assert_eq!(again.node_id, first.node_id);
//! # Ok(()) }
//! ```
//!
//! ## Stream a chat
//!
//! [`Client::chat_stream`] prints the answer as it is generated: nodes that advertise
//! the service-lifecycle profile (`urn:iicp:profile:service-lifecycle:v1`) stream it
//! over the native transport or HTTP server-sent events; from a node that does not,
//! the whole answer comes as one delta. `Done` carries the same [`ChatResult`] that
//! [`Client::chat_request`] returns. A node that breaks the event rules, a stream that
//! ends before its terminal event, and the client's deadline all end the stream with
//! an error, never with a partial answer passed off as complete. Dropping the stream
//! early cancels the task on the node. [`Client::submit_stream`] is the same for any
//! intent, with the raw chunks ([`TaskEvent`]).
//!
//! ```no_run
//! use iicp_client::{ChatEvent, ChatMessage, ChatOptions, ChatRequest, Client};
//!
//! # async fn run(client: Client) -> Result<(), iicp_client::Error> {
//! let request = ChatRequest::new(vec![ChatMessage::new("user", "Write a haiku")]);
//! let mut chat = client.chat_stream(request, ChatOptions::default()).await?;
//! while let Some(event) = chat.next().await {
//!     match event? {
//!         ChatEvent::Delta(text) => print!("{text}"),
//!         ChatEvent::Done(reply) => println!("\n({} via node {})", reply.task_id, reply.node_id),
//!         _ => {} // tool-call fragments, usage
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Failures before the first chunk are retried on the next node like any submit; a
//! failure after it ends the stream, and its message says how many chunks and
//! characters had arrived.
#![forbid(unsafe_code)]

mod breaker;
mod client;
pub mod directory;
pub mod endpoint;
pub mod error;
mod options;
pub mod routing;
pub mod select;
mod stream;
mod submit;
pub mod time;

pub use breaker::{FAILURE_THRESHOLD as BREAKER_FAILURE_THRESHOLD, OPEN_FOR as BREAKER_OPEN_FOR};
pub use client::{
    backoff, Client, ClientBuilder, RetryPolicy, BACKOFF_BASE, BACKOFF_JITTER,
    DEFAULT_DISCOVERY_TTL, DEFAULT_TIMEOUT, MAX_ATTEMPTS_PER_NODE, MAX_TIMEOUT,
};
pub use directory::{DirectoryClient, TicketOutcome, VerifiedTicket, DEFAULT_DIRECTORY_URL};
pub use endpoint::{EndpointPolicy, EndpointRefusal};
pub use error::{Error, ErrorKind};
// what a caller of `chat`/`submit`/`discover` names, so that one dependency is enough
pub use iicp_proto::directory::NodeEntry;
pub use iicp_proto::error::ErrorCode;
pub use iicp_proto::ids::TaskId;
pub use iicp_proto::secret::Secret;
pub use iicp_proto::task::{ChatCompletion, ChatMessage, ChatRequest, Constraints, Qos};
pub use iicp_proto::task::{ToolCallDelta, Usage};
pub use options::{
    ChatOptions, ChatResult, DiscoverOptions, Encryption, RouteDiscovery, Task, TaskResult,
    Transport, TransportUsed, CHAT_INTENT,
};
pub use routing::{RoutingPolicy, RoutingProfile};
pub use select::Strategy;
pub use stream::{ChatEvent, ChatStream, StreamEnd, TaskEvent, TaskStream};
pub use submit::NATIVE_CX_V1;
