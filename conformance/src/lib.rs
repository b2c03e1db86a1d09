//! `iicp-conformance`: the conformance and interop suite of IICP for Rust (publish =
//! false).
//!
//! * [`cases`] — the case library: every case with its id, spec source and target (a
//!   node's HTTP or native endpoint, a directory, or the client harness);
//! * [`report`] — one line per case and the `iicp.conformance_result.v1`-shaped JSON;
//! * [`peers`] — the other SDKs and our own crates side by side for the cross-SDK
//!   interop matrix (`tests/interop_*.rs`, `docs/interop.md`).
//!
//! The scripted directories and nodes of the client-side cases are
//! [`iicp_testkit::scripted`], shared with the crates' own tests.
//!
//! The runner binary `iicp-conformance` (`src/bin/iicp-conformance.rs`) targets any
//! implementation by URL; `docs/conformance.md` lists the cases and current results.

pub mod cases;
pub mod peers;
pub mod report;
