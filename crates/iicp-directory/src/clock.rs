//! Time source of the directory.
//!
//! Every timer of PROTOCOL.md §8.12 (the 90 s stale-node window of §8.3, the register
//! rate-limit window of §8.2, token lifetimes of §8.5/§8.10) reads the time through a
//! [`Clock`], so tests drive expiry with a [`ManualClock`] instead of sleeping. The clock
//! is the workspace's one implementation, in [`iicp_transport::clock`].

pub use iicp_transport::clock::{Clock, ManualClock, SystemClock};
