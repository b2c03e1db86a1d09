//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod chat;
pub(crate) mod common;
pub(crate) mod completion;
pub(crate) mod credits;
pub(crate) mod dev;
pub(crate) mod directory;
pub(crate) mod discover;
pub(crate) mod doctor;
pub(crate) mod healthcheck;
pub(crate) mod init;
pub(crate) mod list;
pub(crate) mod operator;
pub(crate) mod runstate;
pub(crate) mod serve;
pub(crate) mod stub_model;

/// An error that is the user's (bad flag value, invalid configuration): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// A command's verdict that it reported itself (a line on stderr): exit with this code
/// and print nothing more.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub(crate) struct Exit(pub(crate) u8);
