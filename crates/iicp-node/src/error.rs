//! Errors of the node's own operations (registration, serving). Task-level failures
//! are protocol answers, not Rust errors (PROTOCOL.md §6).

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::directory::DirectoryError;

/// A node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The operation needs a directory and none is configured.
    #[error("no directory is configured")]
    NoDirectory,
    /// The operation needs a node token and none is held.
    #[error("the node is not registered")]
    NotRegistered,
    /// The directory call failed.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The endpoint is loopback/private but the directory is public: nobody could reach
    /// the node (DESIGN §4.12).
    #[error("a private endpoint cannot be registered with a public directory")]
    PrivateEndpoint,
    /// The port could not be bound ([`crate::Node::bind_and_serve`], the relay accept
    /// port; a port is never auto-incremented by the library, DESIGN §4.15).
    #[error("could not bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A bound socket could not tell its address.
    #[error("the listening socket failed")]
    Listener(#[source] std::io::Error),
}

impl Error {
    /// Whether trying again later may succeed (directory transport failures, 429/5xx).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Directory(e) if e.is_retryable())
    }
}
