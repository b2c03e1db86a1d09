//! `iicp-node`: the IICP provider runtime — what a provider runs in front of a model
//! server (the Rust counterpart of the seed SDK's `IicpNode`, SEED-SDK.md §1.7–§1.15).
//!
//! What it does:
//! * serves `POST /v1/task`, `GET /iicp/health`, `GET /metrics` and native CALLs on one
//!   port (PROTOCOL.md §4, §5, §10; DESIGN §4.2, §4.4), through one pipeline: lenient
//!   parsing, validation, auth modes (DESIGN §4.5), IICP-CX (§16), duplicate replay
//!   (§7.2), admission without queueing (§7.3), per-task deadlines, metrics;
//! * registers with a directory, heartbeats with the HMAC challenge, re-registers when
//!   the directory forgets it, survives directory outages, deregisters on stop (§8.2,
//!   §8.3, §8.6), and posts optional credit receipts (§8.11);
//! * advertises capabilities built from its models ([`capability`], §12);
//! * finds its public route at `serve` — NAT detection, UPnP mapping, directory probe,
//!   relay election and binding, lease keeping and cleanup ([`reach`], §13–§14) — serves
//!   relays for `relay_capable` nodes and gossips with peers (§15);
//! * keeps the operator identity and saved node profiles under `~/.iicp` and signs the
//!   operator → node delegation sent at REGISTER ([`operator`], §17);
//! * announces its lifecycle (registered, serving, deregistered, and their failures) to
//!   subscribers ([`Node::subscribe`], [`event`]), keeps the single-instance lock and the
//!   runtime-health snapshot under `~/.iicp/run` ([`run`]), speaks the service
//!   manager's notify protocol ([`notify`]), and reads the directory's credit summary
//!   of the node ([`credits`]).
//!
//! What it does not do: parse arguments, read the environment or files (except the
//! [`operator`] store and the [`run`] state under `$IICP_HOME`), print, prompt, pick
//! ports (the caller binds the listener [`Node::serve`] takes; DESIGN §4.15), talk to model servers (a
//! [`TaskHandler`] does; `iicp-backends` provides them), or implement NAT traversal itself (it drives `iicp-nat` from [`reach`]).
//!
//! Place in the crate graph: layer L3, over `iicp-proto` and `iicp-transport`.
//!
//! ```no_run
//! use iicp_node::{HandlerError, Node, ServeOptions, Task};
//! use iicp_node::{Listener, ListenerConfig};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Node::builder()
//!     .endpoint("https://node.example:9484")
//!     .intent("urn:iicp:intent:llm:chat:v1")
//!     .model("llama3")
//!     .directory_url("https://iicp.network/api")
//!     .build()?;
//! node.register().await?;
//! // the caller binds the port (`Listener::bind_first_free` takes the first free one)
//! let listener = Listener::bind("[::]:9484".parse()?, ListenerConfig::default()).await?;
//! let handle = node
//!     .serve(
//!         listener,
//!         |task: Task| async move {
//!             Ok::<_, HandlerError>(json!({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}))
//!         },
//!         ServeOptions::default(),
//!     )
//!     .await?;
//! // …
//! handle.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod access;
mod agent;
pub mod backend;
pub mod capability;
pub mod clock;
pub mod config;
pub mod credits;
mod dedup;
pub mod directory;
mod error;
pub mod event;
pub mod gossip;
pub mod handler;
mod mesh;
mod metrics;
mod models;
mod native;
mod node;
pub mod notify;
pub mod operator;
mod pipeline;
mod ratelimit;
pub mod reach;
mod receipt;
pub mod recovery;
mod registration;
mod routes;
pub mod run;
pub mod runtime;
mod serve;
mod state;
mod stream;

pub use backend::{BackendHandler, EchoModel};
pub use config::{
    is_private_endpoint, local_endpoint, may_register, AuthMode, Backoff, Breaker, ConfigError,
    NodeBuilder, NodeConfig, RateLimit, UnknownAuthMode,
};
pub use directory::{
    DirectoryApi, DirectoryError, DirectoryFailure, DirectoryStatus, HttpDirectory,
};
pub use error::Error;
pub use event::{EventKind, NodeEvent};
pub use handler::{Chunk, Chunks, HandlerError, StreamClosed, Task, TaskHandler, TaskOutput};
/// What `Node::serve` takes: a bound listener (re-exported so a first program needs no
/// other crate).
pub use iicp_transport::listener::{Listener, ListenerConfig};
pub use node::Node;
pub use reach::{Diagnosis, ReachConfig, Reachability};
pub use serve::{ServeHandle, ServeOptions, Stopped};
