//! A node's credit ledger as the directory reports it: `GET
//! {directory}/v1/credits/summary?node_id=…` with the node token as Bearer (PROTOCOL.md
//! §8.1 credits extension; SEED-SDK.md §2.5 `credits`).
//!
//! The figures come authenticated from the directory, not from local files. One
//! request takes at most 15 s; a transport failure, a 5xx or an undecodable body is
//! retried once after a short pause, a 4xx is final. The token is sent only to the
//! directory (redirects to another origin drop it) and never appears in errors.

use std::time::Duration;

use iicp_client::DirectoryClient;
use iicp_proto::secret::Secret;
use iicp_transport::http::client::HttpClient;
use serde_json::{Map, Value};

/// Timeout of one summary request.
pub const SUMMARY_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before the one retry.
pub const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// `tokens_per_credit` when the directory does not say.
pub const DEFAULT_TOKENS_PER_CREDIT: u64 = 1000;

/// Why the summary could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreditsError {
    /// The directory refused (4xx): a wrong or stale token, an unknown node, or a
    /// directory without the credits extension (404).
    #[error("the directory refused the credits summary with HTTP {status}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The directory's message.
        message: String,
    },
    /// Transport failure, 5xx or an undecodable answer, twice.
    #[error("the credits summary is unavailable: {0}")]
    Unavailable(String),
    /// The directory URL is not an absolute http(s) URL.
    #[error("the directory URL must be an http(s) URL")]
    InvalidUrl,
}

/// The directory's answer, kept whole (`--json` prints it as it came); accessors read
/// the members the seed SDK displays.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditsSummary {
    raw: Value,
}

impl CreditsSummary {
    /// Wraps a summary body.
    pub fn new(raw: Value) -> Self {
        Self { raw }
    }

    /// The body as the directory sent it.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    fn number(&self, key: &str) -> f64 {
        self.raw.get(key).and_then(Value::as_f64).unwrap_or(0.0)
    }

    /// `total_earned` (0 when absent).
    pub fn earned(&self) -> f64 {
        self.number("total_earned")
    }

    /// `total_spent` (0 when absent).
    pub fn spent(&self) -> f64 {
        self.number("total_spent")
    }

    /// `balance` (0 when absent).
    pub fn balance(&self) -> f64 {
        self.number("balance")
    }

    /// `tx_count` (0 when absent).
    pub fn tx_count(&self) -> u64 {
        self.raw
            .get("tx_count")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// `reconciles`: whether balance = earned − spent by the directory's own check
    /// (false when absent).
    pub fn reconciles(&self) -> bool {
        self.raw
            .get("reconciles")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// `tokens_per_credit` (1000 when absent).
    pub fn tokens_per_credit(&self) -> u64 {
        self.raw
            .get("tokens_per_credit")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_TOKENS_PER_CREDIT)
    }

    /// `operator_wallet`, when the node is bound to an operator identity.
    pub fn operator_wallet(&self) -> Option<&Map<String, Value>> {
        self.raw.get("operator_wallet").and_then(Value::as_object)
    }
}

/// Fetches the summary of `node_id`, retrying once after [`RETRY_PAUSE`].
///
/// # Errors
/// [`CreditsError::Rejected`] on a 4xx, [`CreditsError::Unavailable`] when both
/// attempts failed, [`CreditsError::InvalidUrl`] before any I/O.
pub async fn summary(
    http: &HttpClient,
    directory_url: &str,
    node_id: &str,
    node_token: &Secret,
) -> Result<CreditsSummary, CreditsError> {
    summary_with_pause(http, directory_url, node_id, node_token, RETRY_PAUSE).await
}

/// [`summary`] with another pause before the retry.
///
/// # Errors
/// As [`summary`].
pub async fn summary_with_pause(
    http: &HttpClient,
    directory_url: &str,
    node_id: &str,
    node_token: &Secret,
    pause: Duration,
) -> Result<CreditsSummary, CreditsError> {
    let dir = DirectoryClient::new(directory_url.trim(), http.clone())
        .map_err(|_| CreditsError::InvalidUrl)?
        .with_timeout(SUMMARY_TIMEOUT);
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
        }
        match dir.credits_summary(node_token, node_id).await {
            Ok(v) => return Ok(CreditsSummary::new(v)),
            Err(e) => match (e.status_code(), e.error_body()) {
                (Some(status @ 400..=499), Some(body)) => {
                    return Err(CreditsError::Rejected {
                        status,
                        message: body.message.clone(),
                    })
                }
                _ => {
                    last = chain(&e);
                    tracing::debug!(attempt, error = %last, "credits summary request failed");
                }
            },
        }
    }
    Err(CreditsError::Unavailable(last))
}

/// An error with its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accessors_default_sensibly() {
        let s = CreditsSummary::new(json!({"balance": 1.5, "tx_count": 3, "reconciles": true}));
        assert_eq!(s.balance(), 1.5);
        assert_eq!(s.earned(), 0.0);
        assert_eq!(s.tx_count(), 3);
        assert!(s.reconciles());
        assert_eq!(s.tokens_per_credit(), 1000);
        assert!(s.operator_wallet().is_none());
    }
}
