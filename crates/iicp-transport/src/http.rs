//! HTTP: the server with its router and JSON helpers ([`server`], PROTOCOL.md §5, §6.1,
//! §8.0), and the pooled rustls HTTP client ([`client`], §8.0, §19 T9/T29, conf SDK-05).

pub mod client;
pub mod server;

pub use client::{HttpClient, HttpClientConfig, HttpClientError, HttpReply, HttpStream, Redirects};
pub use server::{HttpError, HttpServer, HttpServerConfig, Params, PeerAddr, Router};
