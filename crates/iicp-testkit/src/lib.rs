//! `iicp-testkit`: what the workspace uses to exercise IICP implementations rather than
//! to be one — load generation, a stub model server, and scripted or fake peers.
//!
//! * [`load`] — the closed-loop load generator behind `iicp bench` (HTTP `POST /v1/task`
//!   or native CALLs; throughput, a bounded latency histogram, errors by code, and the
//!   CPU cost of the generator and of the node under test from `/proc`); `iicp dev`
//!   reports its rounds with the same [`load::Histogram`].
//! * [`stub`] — [`stub::StubModel`], a fast OpenAI-compatible model server: the backend
//!   of `iicp stub-model`, of benchmarks (ours and the other SDKs' nodes behind the same
//!   stub) and of tests that need a model server.
//! * [`scripted`] — scripted directories and nodes with canned replies per route, for
//!   the client-side cases of the conformance runner (`iicp-conformance`) and any test
//!   that needs a peer which misbehaves on cue.
//! * [`fake`] — protocol-aware fakes for `iicp-client`'s tests: a directory that signs
//!   dispatch tickets and mints consumer tokens, nodes that open and seal IICP-CX, a
//!   node on the one-port listener with a native CALL handler.
//! * [`model`] — the real model server of the tests (llama-cpp-python with SmolLM2),
//!   started on a free port and killed on drop.
//! * [`postgres`] — a throwaway PostgreSQL server (`initdb` + `postgres` on a free
//!   loopback port, as `nobody` when the tests run as root) for the directory's
//!   PostgreSQL store tests; skips outside CI and fails under CI without the binaries.
//! * [`server`] — the one HTTP test server they all run on (127.0.0.1:0, connection
//!   count, every received byte kept, stops on drop) and [`server::Recorded`] requests.
//! * [`stream`] — fake streaming nodes (native and HTTP, the service-lifecycle profile of
//!   ADR 0013) scripted frame by frame, recording CALLs, CONTROLs and requests.
//! * [`time`] — a recording sleeper and a fixed random source to inject into
//!   `iicp_client`.
//!
//! What it is not: part of any node, directory or client. It is `publish = false`, no
//! library crate of the workspace depends on it (only `iicp-cli`, for `iicp bench`,
//! `iicp dev` and `iicp stub-model`, and `iicp-conformance`), and the libraries use it
//! only as a dev-dependency of their tests; `scripts/check-layers` enforces this. Place
//! in the crate graph: above `iicp-proto`, `iicp-transport` and `iicp-client`.
#![forbid(unsafe_code)]

pub mod fake;
pub mod load;
pub mod model;
pub mod postgres;
pub mod raw_http;
pub mod scripted;
pub mod server;
pub mod stream;
pub mod stub;
pub mod time;
