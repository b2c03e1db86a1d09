//! `iicp-conformance`: the conformance and interop suite; cases land with its issue.
//!
//! [`peers`] runs the other SDKs and our own crates side by side for the cross-SDK
//! interop matrix (`tests/interop_*.rs`, `docs/interop.md`).

pub mod peers;
