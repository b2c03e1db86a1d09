//! Wall-clock injection. The node reads Unix time for consumer-token expiry
//! (PROTOCOL.md §8.10), CIP receipt `expires_at` (§8.11) and the CX key's `not_after`
//! (§16.1); tests replace it. Monotonic timers (deadlines, TTLs, heartbeats) use tokio's
//! clock, which tests control with `tokio::time::pause`. The clock and the ISO-8601
//! form are the workspace's one implementation, in [`iicp_transport::clock`] and
//! [`iicp_proto::time`].

pub use iicp_proto::time::iso8601;
pub use iicp_transport::clock::{Clock, ManualClock, SystemClock};
