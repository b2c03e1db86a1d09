//! `iicp-testkit`: what the workspace uses to exercise IICP implementations rather than
//! to be one — load generation and a stub model server.
//!
//! * [`load`] — the closed-loop load generator behind `iicp bench` (HTTP `POST /v1/task`
//!   or native CALLs; throughput, a bounded latency histogram, errors by code, and the
//!   CPU cost of the generator and of the node under test from `/proc`); `iicp dev`
//!   reports its rounds with the same [`load::Histogram`].
//! * [`stub`] — [`stub::StubModel`], a fast OpenAI-compatible model server: the backend
//!   of `iicp stub-model`, of benchmarks (ours and the other SDKs' nodes behind the same
//!   stub) and of tests that need a model server.
//!
//! What it is not: part of any node, directory or client. It is `publish = false`, no
//! library crate of the workspace depends on it (only `iicp-cli`, for `iicp bench`,
//! `iicp dev` and `iicp stub-model`), and the libraries use it only as a dev-dependency
//! of their tests; `scripts/check-layers` enforces this. Place in the crate graph: above
//! `iicp-proto`, `iicp-transport` and `iicp-client`.
#![forbid(unsafe_code)]

pub mod load;
pub mod stub;
