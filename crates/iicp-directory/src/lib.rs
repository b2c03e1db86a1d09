//! `iicp-directory`: an embeddable IICP-DIR directory server (PROTOCOL.md §8).
//!
//! What it is: the directory nodes register with and clients discover them through —
//! REGISTER with token rotation and a tolerant liveness probe, HEARTBEAT with the HMAC
//! challenge, DISCOVER with every filter of §8.4 and the score of §9.1, ticketed
//! dispatch (§8.5), consumer tokens and the directory key (§8.10), relay tickets
//! (§14.6), bootstrap, node detail, probe with an SSRF guard, credits receipts, operator
//! rename, stats and health — served under both `/v1/…` and `/api/v1/…`. State lives
//! behind the [`Store`] trait: [`MemoryStore`] for tests, [`SqliteStore`] for a
//! persistent single-machine directory (see `docs/adr/0003-directory-storage.md`),
//! [`PgStore`] for several directory processes sharing one PostgreSQL database
//! (`docs/adr/0015-postgresql-store.md`).
//!
//! What it is not: no node or client runtime, no federation (§8.1 Phase 6), no
//! gossip, no WebRTC signalling, no operator self-service beyond rename.
//!
//! Place in the crate graph: layer L3, on `iicp-proto` (wire types, crypto) and
//! `iicp-transport` (HTTP server and client, listener). No features.
//!
//! ```no_run
//! use iicp_directory::Directory;
//! use iicp_directory::{shutdown, Listener, ListenerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let directory = Directory::builder().private_mesh(true).build().await?;
//! let listener = Listener::bind("127.0.0.1:0".parse()?, ListenerConfig::default()).await?;
//! let (_trigger, signal) = shutdown::channel();
//! directory.serve(listener, signal).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod api;
mod auth;
mod cache;
pub mod clock;
mod directory;
pub mod error;
mod net;
mod probe;
mod rank;
mod ratelimit;
mod state;
pub mod store;
mod sweep;
mod sync;
mod view;

pub use clock::{Clock, ManualClock, SystemClock};
pub use directory::{Config, Directory, DirectoryBuilder};
pub use error::{DirectoryError, StoreError};
/// What `Directory::serve` takes: a bound listener and a shutdown signal (re-exported
/// so a first program needs no other crate).
pub use iicp_transport::listener::{Listener, ListenerConfig};
pub use iicp_transport::shutdown::{self, Shutdown, Trigger};
pub use store::{MemoryStore, PgStore, SqliteStore, Store};
