//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod chat;
pub(crate) mod completion;
pub(crate) mod dev;
pub(crate) mod directory;
pub(crate) mod discover;
pub(crate) mod doctor;
pub(crate) mod init;
pub(crate) mod operator;
pub(crate) mod serve;
pub(crate) mod stub_model;

/// An error that is the user's (bad flag value, invalid configuration): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);
