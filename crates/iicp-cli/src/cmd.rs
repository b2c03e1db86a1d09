//! One module per subcommand.

pub(crate) mod completion;
pub(crate) mod dev;
pub(crate) mod directory;

/// An error that is the user's (bad flag value, invalid configuration): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);
