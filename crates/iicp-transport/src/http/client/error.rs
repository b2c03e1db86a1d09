//! [`HttpClientError`] and the URL redaction used in every error message.

use std::error::Error as StdError;
use std::time::Duration;

use http::Uri;
use iicp_proto::error::{is_retryable_status, ErrorBody};

/// Why an HTTP request failed. URLs in it carry no userinfo and no query string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpClientError {
    /// The client configuration was refused.
    #[error("invalid HTTP client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: &'static str,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// The URL is not an absolute `http(s)` URL with a host.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header name or value is invalid (the value is never shown).
    #[error("invalid header {name}")]
    InvalidHeader {
        /// The header name.
        name: String,
    },
    /// The request body could not be serialised as JSON.
    #[error("request body could not be serialised as JSON")]
    Serialize {
        /// The serialiser's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The connection could not be established (refused, DNS failure, TLS handshake).
    #[error("connecting to {url} failed")]
    Connect {
        /// The URL, redacted.
        url: String,
        /// The transport's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The [`AddressRule`](crate::resolve::AddressRule) refused the host's addresses;
    /// nothing was sent.
    #[error("connecting to {url} refused: its address is not allowed")]
    AddressRefused {
        /// The URL, redacted.
        url: String,
    },
    /// The TCP connect timed out.
    #[error("connecting to {url} timed out after {after:?}")]
    ConnectTimeout {
        /// The URL, redacted.
        url: String,
        /// The connect timeout.
        after: Duration,
    },
    /// The whole request did not finish in time.
    #[error("request to {url} timed out after {after:?}")]
    Timeout {
        /// The URL, redacted.
        url: String,
        /// The request timeout.
        after: Duration,
    },
    /// The request failed after connecting (connection reset, malformed response …).
    #[error("request to {url} failed")]
    Request {
        /// The URL, redacted.
        url: String,
        /// The transport's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// Reading the response body failed.
    #[error("reading the response body from {url} failed")]
    Body {
        /// The URL, redacted.
        url: String,
        /// The transport's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The response body exceeds the configured cap; it was not buffered.
    #[error("response body from {url} exceeds {limit} bytes")]
    BodyTooLarge {
        /// The URL, redacted.
        url: String,
        /// The cap.
        limit: usize,
    },
    /// More redirects than the policy allows.
    #[error("more than {max_hops} redirects, last from {url}")]
    TooManyRedirects {
        /// The URL that redirected once too often, redacted.
        url: String,
        /// The hop limit.
        max_hops: u8,
    },
    /// A redirect leads back to a URL already visited.
    #[error("redirect loop at {url}")]
    RedirectLoop {
        /// The repeated URL, redacted.
        url: String,
    },
    /// A redirect was not followed because the policy forbids it.
    #[error("redirect from {url} refused: {reason}")]
    RedirectRefused {
        /// The redirecting URL, redacted.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The response body is not the expected JSON.
    #[error("response from {url} is not the expected JSON (line {line}, column {column})")]
    Json {
        /// The URL, redacted.
        url: String,
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
    /// The server answered with a non-2xx status
    /// ([`HttpReply::error_for_status`](super::HttpReply::error_for_status)).
    #[error("HTTP {status} from {url}: {}", error.code)]
    Status {
        /// The URL, redacted.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The error body, parsed leniently.
        error: Box<ErrorBody>,
    },
}

impl HttpClientError {
    /// Whether a timeout (connect or whole request) caused the failure.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::ConnectTimeout { .. })
    }

    /// Whether the connection could not be established.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }

    /// Whether trying again (possibly elsewhere) may succeed: transport failures,
    /// timeouts, and HTTP 408/429/503/504 (§7.1). Other statuses, 502, invalid input,
    /// oversized bodies and redirect policy violations are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Timeout { .. }
            | Self::Request { .. }
            | Self::Body { .. } => true,
            Self::Status { status, .. } => is_retryable_status(*status),
            _ => false,
        }
    }

    /// The HTTP status, for [`HttpClientError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Maps a pool error to a typed error.
pub(super) fn classify(
    err: super::pool::PoolError,
    url: &Uri,
    connect_timeout: Duration,
) -> HttpClientError {
    let url = redact_uri(url);
    match err {
        super::pool::PoolError::Connect(source) => {
            if crate::resolve::ResolveError::refused_in(source.as_ref()) {
                HttpClientError::AddressRefused { url }
            } else if chain_has_timeout(source.as_ref()) {
                HttpClientError::ConnectTimeout {
                    url,
                    after: connect_timeout,
                }
            } else {
                HttpClientError::Connect { url, source }
            }
        }
        super::pool::PoolError::Request(source) => HttpClientError::Request {
            url,
            source: Box::new(source),
        },
    }
}

fn chain_has_timeout(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// `scheme://host[:port]/path`: no userinfo, no query, no fragment.
pub(super) fn redact_uri(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{}", uri.path())
}

/// Best-effort redaction of a string that did not parse as a URI.
pub(super) fn redact_str(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match without_query.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, without_query),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let mut out: String = match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}"),
        None => format!("{authority}{path}"),
    };
    if out.len() > 256 {
        let mut cut = 256;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let uri: Uri = "https://user:pw@example.com:8443/v1/x?token=abc#frag"
            .parse()
            .unwrap();
        assert_eq!(redact_uri(&uri), "https://example.com:8443/v1/x");
        assert_eq!(
            redact_str("ht tp://user:pw@host/p a?token=abc"),
            "ht tp://host/p a"
        );
        assert_eq!(redact_str("nonsense?secret"), "nonsense");
    }
}
