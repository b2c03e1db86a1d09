//! Relay transport (PROTOCOL.md §14): the relay-accept server for `relay_capable` nodes
//! ([`RelayServer`], [`RelayHandle`]), the worker client for nodes without an inbound
//! route ([`RelayWorker`]), and relay election ([`elect`], §14.5).
//!
//! Type bytes 0x0B/0x0C mean RELAY_BIND/RELAY_ACK only on relay-accept connections
//! (§19 T4): both ends run their sessions with [`iicp_proto::message::Channel::Relay`].
//! The relay's HTTP side ([`RelayHandle::routes`]) also serves the HTTP long-poll worker
//! transport (§14.3: `POST /v1/relay/bind`, `GET /v1/relay/pull`, `POST /v1/relay/result`,
//! `POST /v1/relay/unbind`) under the same admission rules, and the legacy
//! `POST /v1/relay` `{target_node_id, task}` for bound workers (forwarding to gossip
//! peers is not done). Relayed tasks are rate-limited per source address.

mod election;
mod limits;
mod server;
mod worker;

use std::net::SocketAddr;

pub use election::{elect, parse_relay_endpoint, RelayCandidate, RelayTarget, MIN_REPUTATION};
pub use server::{check_ports, reason, ForwardError, RelayConfig, RelayHandle, RelayServer};
pub use worker::{RelayWorker, TicketSource, WorkerConfig, WorkerState};

/// Default relay accept port (PROTOCOL.md §14.2; collides with the node auto-increment
/// band, §19 T31 — check with [`check_ports`] and advertise the real port).
pub use iicp_proto::constants::DEFAULT_RELAY_ACCEPT_PORT as DEFAULT_RELAY_PORT;

/// Errors starting a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay accept port equals the node's port (§19 T31).
    #[error("relay accept port {port} collides with the node's port")]
    PortCollision {
        /// The port.
        port: u16,
    },
    /// The relay accept port is taken (another node or relay on this host).
    #[error("relay accept address {addr} is already in use")]
    PortInUse {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding failed otherwise.
    #[error("binding the relay accept address {addr} failed")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
