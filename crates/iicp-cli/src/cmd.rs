//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod bench_proxy;
pub(crate) mod bench_stream;
pub(crate) mod chat;
pub(crate) mod common;
pub(crate) mod completion;
pub(crate) mod config;
pub(crate) mod credits;
pub(crate) mod dev;
pub(crate) mod directory;
pub(crate) mod discover;
pub(crate) mod doctor;
pub(crate) mod healthcheck;
pub(crate) mod init;
pub(crate) mod list;
pub(crate) mod operator;
pub(crate) mod proxy;
pub(crate) mod runstate;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod stub_model;

pub(crate) use crate::exit::{Exit, UsageError};
