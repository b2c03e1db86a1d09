//! Who may call a node: the auth modes (PROTOCOL.md §4.3, §19 T6, DESIGN §4.5). A leaf
//! module, so configuration, the operator store and the pipeline can all name the mode.

use std::fmt;

/// Who may call `POST /v1/task` and native CALL (PROTOCOL.md §4.3, §19 T6, DESIGN §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMode {
    /// Anyone (the public mesh today), rate-limited per `Origin` and per source IP.
    #[default]
    Open,
    /// A bearer credential (`Authorization: Bearer`, `auth.node_token`, native key 11)
    /// equal, in constant time, to one of the configured API tokens or to the node's own
    /// directory-issued node token (TASK-1).
    Token,
    /// A directory-signed `X-IICP-Consumer-Token` for this node and intent; when the
    /// directory key is not known yet, or no consumer token is sent, [`AuthMode::Token`]
    /// rules apply.
    Consumer,
}

impl AuthMode {
    /// `open`, `token` or `consumer`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMode::Open => "open",
            AuthMode::Token => "token",
            AuthMode::Consumer => "consumer",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not `open`, `token` or `consumer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown auth mode {0:?} (expected open, token or consumer)")]
pub struct UnknownAuthMode(String);

impl std::str::FromStr for AuthMode {
    type Err = UnknownAuthMode;

    /// `open`, `token` or `consumer`, ASCII case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        [AuthMode::Open, AuthMode::Token, AuthMode::Consumer]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(t))
            // the message echoes a bounded prefix of the (mistyped) value
            .ok_or_else(|| UnknownAuthMode(t.chars().take(32).collect()))
    }
}
