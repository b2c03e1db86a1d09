//! Errors that end the process with a given exit code (a leaf: commands and the
//! prompts both raise them).

/// An error that is the user's (bad flag value, invalid configuration): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// A command's verdict that it reported itself (a line on stderr): exit with this code
/// and print nothing more.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub(crate) struct Exit(pub(crate) u8);
